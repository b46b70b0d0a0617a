//! The unit of `systemd/` under a real systemd: `scripts/systemd-check` boots Debian's systemd
//! as PID 1 in a systemd-nspawn container, installs the binary under test with
//! `scripts/install` and checks the service (active, unprivileged, `POST /execute`, clean
//! stop, restart after kill -9). It takes minutes and needs root, so it runs only when
//! `TAKO_TEST_SYSTEMD=1`; otherwise it says so and passes.

mod common;

use std::process::Command;

#[test]
fn the_unit_runs_under_a_real_systemd() {
    if std::env::var("TAKO_TEST_SYSTEMD").as_deref() != Ok("1") {
        eprintln!(
            "SKIP: set TAKO_TEST_SYSTEMD=1 (as root) to boot systemd and run scripts/systemd-check"
        );
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: scripts/systemd-check needs root");
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/systemd-check");
    let out = Command::new(script)
        .env("TAKO_VM_BINARY", common::bin())
        .output()
        .expect("run scripts/systemd-check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/systemd-check failed:\n{stdout}\n{stderr}"
    );
    assert!(!stdout.contains("FAIL"), "{stdout}");
    assert!(stdout.contains("PASS POST /execute"), "{stdout}");
}
