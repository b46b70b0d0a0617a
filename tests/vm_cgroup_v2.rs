//! tako-vm on a cgroup v2 host for real: `scripts/vm-check` boots Debian bookworm (systemd as
//! PID 1, Debian's kernel, unified hierarchy) in a QEMU virtual machine, installs the binary
//! under test there with `scripts/install`, and checks the v2 paths that this cgroup-v1 host
//! cannot run: the unprivileged service in its `Delegate=yes` subtree (limits written into
//! the run's cgroup, OOM, usage, clean-up, the sweep after a crash) and the root CLI (OOM,
//! pids, CPU quota, timeout with daemons, clean-up), and a network-enabled run of the
//! unprivileged user in a `Delegate=yes` unit (pasta and the sandbox's nftables filter). It
//! takes minutes under QEMU's emulation and needs root, so it runs only when `TAKO_TEST_VM=1`
//! (scripts/test sets it as root); otherwise it says so and passes.

mod common;

/// Every check of scripts/vm-guest-check; each must be reported as PASS.
const CHECKS: &[&str] = &[
    "the machine runs on the unified cgroup v2 hierarchy with memory, cpu and pids",
    "systemd boots",
    "the network device and the modules of network-enabled runs",
    "scripts/install (prebuilt binary) installs, enables and starts the unit",
    "tako-vm.service is active and answers /health",
    "the service runs as the unprivileged user tako-vm",
    "no allow_unlimited_sandboxes opt-in",
    "POST /execute print(1+1)",
    "a run's cgroup lives in the service's delegated subtree with the job's limits",
    "no run cgroup is left in the subtree after the runs",
    "a run of the service on this kernel",
    "the service's user imports python:3.11-slim",
    "POST /job-types/vm-shared/build by the unprivileged service, then a run on the snapshot",
    "POST /job-types/vm-wheel/build: uv in the service's builder sandbox installs a requirement",
    "a network-enabled job type of the service reaches its allowed host through pasta",
    "POST /execute over memory_limit",
    "the record's resource_usage comes from the run's cgroup",
    "tako-vm run --memory 64m",
    "tako-vm run --pids 20",
    "tako-vm run --cpus 0.5",
    "tako-vm run --timeout 2",
    "the CLI runs leave no cgroup below /sys/fs/cgroup/tako-vm",
    "tako-vm run --network as the unprivileged user in a Delegate=yes unit reaches its allowed host through pasta, and nothing else",
    "the run's pasta is gone after it",
    "after kill -9 of the main pid mid-run",
    "systemctl stop ends it cleanly",
];

#[test]
fn cgroup_v2_paths_in_a_virtual_machine() {
    let Some(stdout) = common::check_script("TAKO_TEST_VM", "vm-check") else {
        return;
    };
    assert!(stdout.contains("DONE failed=0"), "{stdout}");
    for c in CHECKS {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("PASS ") && l.contains(c)),
            "no PASS for {c:?}:\n{stdout}"
        );
    }
}
