//! The isolation posture seen from inside a sandbox, and attacks that must fail.

mod common;

use tako_vm::exec::record::Status;

fn inside(code: &str) -> String {
    let r = common::rootfs().expect("checked by the caller");
    let res = common::exec(&r, code);
    assert_eq!(res.status, Status::Succeeded, "{code}\n{res:?}");
    res.stdout
}

#[test]
fn identity_capabilities_and_seccomp() {
    let _ = need_rootfs!();
    let out = inside(
        r#"
import os
st = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
for k in ["Uid", "Gid", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp"]:
    print(k, st[k].split()[0])
print("groups", os.getgroups())
print("map", open("/proc/self/uid_map").read().split())
print("oom_score_adj", open("/proc/self/oom_score_adj").read().strip(), open("/proc/1/oom_score_adj").read().strip())
"#,
    );
    // The user's code, not the sandbox init, is the OOM killer's first choice.
    assert!(out.contains("oom_score_adj 1000 0"), "{out}");
    for want in [
        "Uid 1000",
        "Gid 1000",
        "CapInh 0000000000000000",
        "CapPrm 0000000000000000",
        "CapEff 0000000000000000",
        "CapBnd 0000000000000000",
        "CapAmb 0000000000000000",
        "NoNewPrivs 1",
        "Seccomp 2",
    ] {
        assert!(out.lines().any(|l| l == want), "missing {want:?} in\n{out}");
    }
    assert!(out.contains("groups []"), "{out}");
    // uid 0 inside maps to an unprivileged host id, never to host root.
    let map_line = out.lines().find(|l| l.starts_with("map")).unwrap();
    assert!(!map_line.contains("'0', '0'"), "{map_line}");
}

#[test]
fn filesystem_is_read_only_with_masked_proc() {
    let _ = need_rootfs!();
    let out = inside(
        r#"
import os
for p in ["/usr/evil", "/etc/evil", "/app/evil", "/evil", "/dev/evil", "/proc/sys/kernel/hostname"]:
    try:
        open(p, "w").write("x"); print("WROTE", p)
    except OSError as e:
        print("denied", p, e.errno)
for p in ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/kallsyms"]:
    print("masked", p, len(open(p, "rb").read(16)) if os.path.exists(p) else 0)
print("sys", os.listdir("/sys"))
print("dev", sorted(os.listdir("/dev")))
mounts = open("/proc/mounts").read().splitlines()
root = [m for m in mounts if m.split()[1] == "/"][0].split()[3].split(",")
print("rootopts", "ro" in root, "nosuid" in root, "nodev" in root)
tmp = [m for m in mounts if m.split()[1] == "/tmp"][0].split()[3].split(",")
print("tmpopts", "noexec" in tmp, "nosuid" in tmp)
open("/dev/shm/x", "w").write("ok"); print("shm ok")
open("/output/x", "w").write("ok"); print("output ok")
open("/dev/null", "w").write("x"); print("devs", len(open("/dev/zero", "rb").read(8)), len(open("/dev/urandom", "rb").read(8)))
try:
    os.execv("/dev/null", ["null"]); print("EXECUTED /dev/null")
except OSError as e:
    print("dev exec refused", e.errno)
"#,
    );
    assert!(!out.contains("WROTE"), "{out}");
    assert_eq!(out.matches("denied").count(), 6, "{out}");
    assert!(
        out.lines()
            .filter(|l| l.starts_with("masked"))
            .all(|l| l.ends_with(" 0")),
        "{out}"
    );
    assert!(out.contains("sys []"), "{out}");
    assert!(out.contains("dev ['fd', 'full', 'null', 'random', 'shm', 'stderr', 'stdin', 'stdout', 'tty', 'urandom', 'zero']"), "{out}");
    assert!(out.contains("rootopts True True True"), "{out}");
    assert!(out.contains("tmpopts True True"), "{out}");
    assert!(out.contains("shm ok") && out.contains("output ok"), "{out}");
    // The device nodes work, and none can be executed (EACCES: not a regular file).
    assert!(out.contains("devs 8 8"), "{out}");
    assert!(out.contains("dev exec refused 13"), "{out}");
}

#[test]
fn network_is_loopback_only_and_host_pids_are_invisible() {
    let _ = need_rootfs!();
    // A host listener on loopback that the sandbox must not reach.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let host_pid = std::process::id();
    let out = inside(&format!(
        r#"
import socket, os
print("ifaces", sorted(n for _, n in socket.if_nameindex()))
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2); print("REACHED host")
except OSError as e:
    print("host unreachable", e.errno)
try:
    socket.getaddrinfo("pypi.org", 443); print("RESOLVED")
except OSError:
    print("no dns")
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(); print("loopback ok")
pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
print("pid", os.getpid(), "maxpid", max(pids), "count", len(pids))
print("hostpid visible", os.path.exists("/proc/{host_pid}/cmdline") and b"tako" in open("/proc/{host_pid}/cmdline","rb").read())
print("hostname", socket.gethostname())
"#
    ));
    drop(listener);
    assert!(out.contains("ifaces ['lo']"), "{out}");
    assert!(out.contains("host unreachable"), "{out}");
    assert!(
        out.contains("no dns") && out.contains("loopback ok"),
        "{out}"
    );
    assert!(out.contains("hostpid visible False"), "{out}");
    assert!(out.contains("hostname tako-sandbox"), "{out}");
    let count: usize = out
        .split("count ")
        .nth(1)
        .unwrap()
        .trim()
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        count <= 3,
        "only the sandbox's own processes are visible: {out}"
    );
}

#[test]
fn dangerous_syscalls_are_denied() {
    let _ = need_rootfs!();
    let out = inside(
        r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def sc(name, nr, *args):
    r = libc.syscall(nr, *args)
    print(name, r, ctypes.get_errno())
sc("mount", 165, b"none", b"/tmp", b"tmpfs", 0, 0)
sc("unshare", 272, 0x10000000)          # CLONE_NEWUSER
sc("unshare_net", 272, 0x40000000)      # CLONE_NEWNET
sc("setns", 308, 0, 0)
sc("ptrace", 101, 0, 0, 0, 0)           # PTRACE_TRACEME
sc("keyctl", 250, 0, 0, 0, 0)
sc("bpf", 321, 0, 0, 0)
sc("perf_event_open", 298, 0, 0, -1, -1, 0)
sc("userfaultfd", 323, 0)
sc("io_uring_setup", 425, 1, 0)
sc("chroot", 161, b"/tmp")
sc("x32_getpid", 0x40000000 | 39)
print("clone3", libc.syscall(435, 0, 0), ctypes.get_errno())
"#,
    );
    for name in [
        "mount",
        "unshare",
        "unshare_net",
        "setns",
        "ptrace",
        "keyctl",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "io_uring_setup",
        "chroot",
        "x32_getpid",
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap();
        assert_eq!(
            line,
            format!("{name} -1 1"),
            "{name} must fail with EPERM:\n{out}"
        );
    }
    // clone3 answers ENOSYS so libc falls back to clone(2), whose flags seccomp can inspect.
    assert!(out.contains("clone3 -1 38"), "{out}");
}

#[test]
fn the_sandbox_init_cannot_be_signalled_or_inspected() {
    let _ = need_rootfs!();
    let out = inside(
        r#"
import os, signal
for s in (signal.SIGTERM, signal.SIGKILL):
    try:
        os.kill(1, s); print("sent", s)
    except OSError as e:
        print("kill denied", e.errno)
for p in ["/proc/1/mem", "/proc/1/environ"]:
    try:
        open(p, "rb").read(1); print("READ", p)
    except OSError as e:
        print("denied", p)
print("alive")
"#,
    );
    assert!(!out.contains("READ"), "{out}");
    assert!(out.contains("alive"), "{out}");
}

#[test]
fn nothing_is_left_behind_after_runs() {
    let r = need_rootfs!();
    let runner = common::runner_in("tako-vm-test-cleanup");
    for code in [
        "print(1)",
        "import sys; sys.exit(2)",
        "import time; time.sleep(30)",
    ] {
        let mut run = tako_vm::exec::runner::CodeRun::new(
            tako_vm::sandbox::host::new_run_id(),
            r.clone(),
            code,
        );
        run.timeout_s = 1;
        tako_vm::exec::runner::execute(&runner, &run);
    }
    for ctl in ["memory", "cpu", "pids", "cpuacct", "freezer"] {
        let dir = std::path::Path::new("/sys/fs/cgroup")
            .join(ctl)
            .join("tako-vm-test-cleanup");
        if let Ok(rd) = std::fs::read_dir(&dir) {
            let subdirs: Vec<_> = rd.flatten().filter(|e| e.path().is_dir()).collect();
            assert!(
                subdirs.is_empty(),
                "leftover cgroups in {}: {subdirs:?}",
                dir.display()
            );
        }
    }
    // No mount of the rootfs is left in the host's mount table.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(r.to_str().unwrap()), "{mounts}");
}

#[test]
fn startup_sweep_kills_and_removes_leftovers_of_dead_owners() {
    let _ = need_rootfs!();
    let parent = "tako-vm-test-sweep";
    let dead = "999999999.1.deadbeef";
    let mem = std::path::Path::new("/sys/fs/cgroup/memory")
        .join(parent)
        .join(dead);
    // The crashed run had its pids directory too: it goes with the memory one.
    let pids = std::path::Path::new("/sys/fs/cgroup/pids")
        .join(parent)
        .join(dead);
    let mut sleeper = common::dead_run_leftover(&[&mem, &pids]);
    // A live owner's run (ours) must survive the sweep.
    let live = tako_vm::sandbox::host::new_run_id();
    let live_dir = std::path::Path::new("/sys/fs/cgroup/memory")
        .join(parent)
        .join(&live);
    std::fs::create_dir_all(&live_dir).unwrap();

    let _runner = common::runner_in(parent);
    let status = sleeper.wait().unwrap();
    assert!(!status.success(), "leftover process was killed");
    assert!(!mem.exists(), "leftover cgroup removed");
    assert!(!pids.exists(), "leftover pids cgroup removed");
    assert!(live_dir.exists(), "a live owner's cgroup is kept");
    std::fs::remove_dir(&live_dir).unwrap();
}

/// A library caller's limits that would switch a cgroup or tmpfs limit off are refused
/// before anything runs, instead of running the code without that limit.
#[test]
fn limits_of_zero_are_refused_not_unlimited() {
    let r = need_rootfs!();
    let zero_memory =
        common::exec_with(&r, "print('ran')", |run| run.limits.memory_bytes = Some(0));
    let zero_pids = common::exec_with(&r, "print('ran')", |run| run.limits.pids = Some(0));
    for res in [zero_memory, zero_pids] {
        assert_ne!(res.status, Status::Succeeded, "{res:?}");
        assert!(!res.stdout.contains("ran"), "{res:?}");
        let msg = res
            .error
            .as_ref()
            .map(|e| e.message.clone())
            .unwrap_or_default();
        assert!(msg.contains("of 0 would mean no limit"), "{res:?}");
    }
}
