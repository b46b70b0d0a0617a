//! Shared set-up of the integration tests: real namespaces, real cgroups, a real rootfs.
//!
//! Tests that need root and the Python rootfs fixture skip with a message when either is
//! missing, unless `TAKO_TEST_REQUIRE=1` (set by CI), where a missing piece is a failure.
#![allow(dead_code)]

pub mod peer;

use std::path::PathBuf;
use std::process::Command;

use tako_vm::exec::record::ExecutionResult;
use tako_vm::exec::runner::{self, CodeRun};
use tako_vm::sandbox::{host, HostConfig, Runner};

/// The tako-vm binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tako-vm"))
}

/// The Python rootfs, or None (with a message) when the test must be skipped.
pub fn rootfs() -> Option<PathBuf> {
    let required = std::env::var("TAKO_TEST_REQUIRE").as_deref() == Ok("1");
    if !nix::unistd::geteuid().is_root() {
        assert!(
            !required,
            "TAKO_TEST_REQUIRE=1 but the tests do not run as root"
        );
        eprintln!("SKIP: this test needs root (run the README's test command as root)");
        return None;
    }
    let p = std::env::var("TAKO_TEST_ROOTFS")
        .unwrap_or_else(|_| "/var/cache/tako-vm/fixtures/rootfs-py311".into());
    let p = PathBuf::from(p);
    if !p.join(".tako-rootfs-ready").exists() {
        assert!(
            !required,
            "TAKO_TEST_REQUIRE=1 but the rootfs fixture {} is missing (scripts/build-rootfs)",
            p.display()
        );
        eprintln!(
            "SKIP: no rootfs fixture at {} (run scripts/build-rootfs)",
            p.display()
        );
        return None;
    }
    Some(p)
}

/// Skips the test (returns) when root or the fixture is missing.
#[macro_export]
macro_rules! need_rootfs {
    () => {
        match common::rootfs() {
            Some(r) => r,
            None => return,
        }
    };
}

/// [`need_rootfs!`] on a host with cgroup v1 hierarchies; skips (returns) elsewhere, saying
/// `why`.
#[macro_export]
macro_rules! need_rootfs_on_v1 {
    ($why:expr) => {{
        let r = need_rootfs!();
        if !common::cgroup_v1() {
            eprintln!("SKIP: {}", $why);
            return;
        }
        r
    }};
}

/// A runner whose run cgroups live under `parent`.
pub fn runner_in(parent: &str) -> Runner {
    Runner::detect(&HostConfig {
        cgroup_parent: parent.into(),
        allow_unlimited: false,
        helper_exe: Some(bin()),
        ..HostConfig::default()
    })
    .expect("sandbox runner")
}

/// Runs code under the contract with defaults changed by `tweak`.
pub fn exec_with(
    rootfs: &std::path::Path,
    code: &str,
    tweak: impl FnOnce(&mut CodeRun),
) -> ExecutionResult {
    let mut run = CodeRun::new(host::new_run_id(), rootfs.to_path_buf(), code);
    run.timeout_s = 20;
    tweak(&mut run);
    runner::execute(&runner_in("tako-vm-test"), &run)
}

/// Runs code under the contract on a job-type snapshot (its layer over its base image,
/// with its environment), then `tweak`.
#[allow(dead_code)]
pub fn exec_snapshot(
    snap: &rootfs_builder::Snapshot,
    code: &str,
    tweak: impl FnOnce(&mut CodeRun),
) -> ExecutionResult {
    exec_with(&snap.rootfs, code, |run| {
        run.lower = snap.lower.iter().cloned().collect();
        run.env = snap.env.clone();
        tweak(run)
    })
}

/// Runs code under the contract with the defaults.
pub fn exec(rootfs: &std::path::Path, code: &str) -> ExecutionResult {
    exec_with(rootfs, code, |_| {})
}

/// `tako-vm run` with arguments; returns (exit code, stdout, stderr).
pub fn cli(args: &[&str]) -> (i32, String, String) {
    cli_env(args, &[])
}

/// The two ways a sandbox is started: the CLI clones its init itself; a server (and
/// `TAKO_VM_HELPER_EXEC=1`) execs a helper. (name, environment that selects it)
pub const SPAWN_PATHS: [(&str, &[(&str, &str)]); 2] = [
    ("cloned init", &[]),
    ("exec'd helper", &[("TAKO_VM_HELPER_EXEC", "1")]),
];

/// [`cli`] with extra environment variables.
pub fn cli_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run tako-vm");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Host processes whose command line contains `marker`.
pub fn host_processes_with(marker: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(c) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            if String::from_utf8_lossy(&c).contains(marker) {
                found.push(pid);
            }
        }
    }
    found
}

/// True on a host whose resource controllers are cgroup v1.
pub fn cgroup_v1() -> bool {
    std::path::Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists()
        || std::path::Path::new("/sys/fs/cgroup/memory").is_dir()
}

/// What a crashed run leaves behind for the start-up sweep: its cgroup directory `dirs` (one
/// per hierarchy) with a process (`sleep 1000`) still in them. The caller reaps the child.
pub fn dead_run_leftover(dirs: &[&std::path::Path]) -> std::process::Child {
    for d in dirs {
        std::fs::create_dir_all(d).unwrap();
    }
    let sleeper = Command::new("sleep").arg("1000").spawn().unwrap();
    for d in dirs {
        std::fs::write(d.join("cgroup.procs"), sleeper.id().to_string()).unwrap();
    }
    sleeper
}

/// A hard-link copy of the tree `from` at `to` (`cp -al`): a rootfs to alter in a test
/// (unlinking and replacing entries leaves `from` as it was).
pub fn hardlink_copy(from: &std::path::Path, to: &std::path::Path) {
    let st = std::process::Command::new("cp")
        .arg("-al")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success(), "cp -al {} {}", from.display(), to.display());
}

/// Runs one of the root-only check scripts of `scripts/` (a real systemd, a virtual machine)
/// with the binary under test, when the environment variable `gate` is `1` and the tests
/// run as root; otherwise says why it skips and returns None. The script must exit 0 and
/// print no FAIL line; its stdout (PASS/FAIL lines) is returned.
pub fn check_script(gate: &str, script: &str) -> Option<String> {
    if std::env::var(gate).as_deref() != Ok("1") {
        eprintln!("SKIP: set {gate}=1 (as root) to run scripts/{script}");
        return None;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: scripts/{script} needs root");
        return None;
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(script);
    let out = Command::new(&path)
        .env("TAKO_VM_BINARY", bin())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", path.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/{script} failed:\n{stdout}\n{stderr}"
    );
    assert!(!stdout.lines().any(|l| l.starts_with("FAIL")), "{stdout}");
    Some(stdout)
}

/// Directories to remove when the test binary exits (see [`remove_at_exit`]).
static AT_EXIT: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

extern "C" fn remove_registered() {
    let dirs = std::mem::take(&mut *AT_EXIT.lock().unwrap_or_else(|e| e.into_inner()));
    for d in dirs {
        let _ = std::fs::remove_dir_all(&d);
    }
}

/// Removes `dir` when this test binary exits, whether its tests passed or failed: for what
/// the tests of one binary share (a pulled store, a copy of the binary) and so cannot be
/// removed by any one test. The harness ends through `exit(3)`, which runs the handler.
pub fn remove_at_exit(dir: PathBuf) {
    static REGISTER: std::sync::Once = std::sync::Once::new();
    // SAFETY: atexit(3) with a handler that takes no arguments and never unwinds (it ignores
    // every error and a poisoned lock).
    REGISTER.call_once(|| unsafe {
        libc::atexit(remove_registered);
    });
    AT_EXIT.lock().unwrap_or_else(|e| e.into_inner()).push(dir);
}
