//! The systemd unit of `systemd/` is valid for systemd itself (`systemd-analyze verify`, run
//! against the built binary) and keeps the posture the README promises.

mod common;

use std::process::Command;

const UNIT: &str = include_str!("../systemd/tako-vm.service");

#[test]
fn the_unit_verifies_with_systemd_analyze() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("TAKO_TEST_REQUIRE").as_deref() != Ok("1"),
            "TAKO_TEST_REQUIRE=1 but systemd-analyze is missing"
        );
        eprintln!("SKIP: systemd-analyze is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("tako-vm.service");
    let bin = common::bin();
    std::fs::write(
        &unit,
        UNIT.replace("/usr/local/bin/tako-vm", bin.to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.trim().is_empty(), "systemd-analyze complained:\n{err}");
}

#[test]
fn the_unit_runs_unprivileged_with_delegation_and_hardening() {
    for line in [
        "User=tako-vm",
        "Delegate=yes",
        "StateDirectory=tako-vm",
        "RuntimeDirectory=tako-vm",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "Restart=on-failure",
        "KillMode=mixed",
    ] {
        assert!(
            UNIT.lines().any(|l| l.trim() == line),
            "systemd/tako-vm.service lacks {line}"
        );
    }
    assert!(!UNIT.lines().any(|l| l.trim() == "User=root"));
}
