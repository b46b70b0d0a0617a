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

/// For a unit with `User=` systemd implies `NoNewPrivileges=yes` when any seccomp-based
/// option is set, and the setuid newuidmap/newgidmap that map the subuid range then fail
/// ("write to uid_map failed: Operation not permitted"; found by scripts/systemd-check).
#[test]
fn the_unit_sets_nothing_that_implies_no_new_privileges() {
    const IMPLY_NNP: [&str; 14] = [
        "NoNewPrivileges",
        "SystemCallFilter",
        "SystemCallArchitectures",
        "RestrictAddressFamilies",
        "RestrictNamespaces",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectClock",
        "MemoryDenyWriteExecute",
        "RestrictRealtime",
        "RestrictSUIDSGID",
        "LockPersonality",
    ];
    for line in UNIT.lines().map(str::trim) {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if IMPLY_NNP.contains(&key) {
            assert!(
                matches!(value.trim(), "no" | "false" | "0" | ""),
                "systemd/tako-vm.service: {line} implies NoNewPrivileges=yes for User=tako-vm"
            );
        }
    }
    assert!(!UNIT
        .lines()
        .any(|l| l.trim_start().starts_with("DynamicUser=yes")));
}
