//! `tako-vm config`, `validate`, `status` and the bind guard of `server --host`.

mod api_support;

use std::process::Command;

fn tako(args: &[&str], cwd: &std::path::Path) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_tako-vm"))
        .args(args)
        .current_dir(cwd)
        .env_remove("TAKO_VM_CONFIG")
        .env("HOME", cwd)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn validate_reports_each_error_and_the_summary() {
    let d = tempfile::tempdir().unwrap();
    let (code, out, _) = tako(&["validate"], d.path());
    assert_eq!((code, out.trim()), (1, "No configuration file found."));
    std::fs::write(
        d.path().join("bad.yaml"),
        "server_port: 0\nmax_workers: 100\n",
    )
    .unwrap();
    let (code, out, _) = tako(&["validate", "bad.yaml"], d.path());
    assert_eq!(code, 1);
    assert!(
        out.starts_with("Validating: bad.yaml\nValidation FAILED:\n"),
        "{out}"
    );
    assert!(
        out.contains("  - field server_port: Input should be greater than or equal to 1\n"),
        "{out}"
    );
    assert!(
        out.contains("  - field max_workers: Input should be less than or equal to 64"),
        "{out}"
    );
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/tako_vm.yaml");
    let (code, out, _) = tako(&["validate", repo], d.path());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Configuration is valid!"));
    assert!(
        out.contains("Job types: data-processing, ml-inference, api-client"),
        "{out}"
    );
    let (code, _, err) = tako(&["--config", "missing.yaml", "config"], d.path());
    assert_eq!(code, 1);
    assert!(err.contains("Config file not found: missing.yaml"), "{err}");
}

#[test]
fn config_json_masks_the_password_and_server_refuses_open_binds() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("tako_vm.yaml"),
        "database_url: postgresql://u:secret@db:5432/tako\nregistry_username: u\nregistry_password: hunter2-secret\nregistry_mirror: 127.0.0.1:5000\n",
    )
    .unwrap();
    let (code, out, _) = tako(&["config", "--json"], d.path());
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["database_url"], "postgresql://u:***@db:5432/tako");
    assert_eq!(v["registry_password"], "***");
    assert_eq!(v["registry_mirror"], "127.0.0.1:5000");
    assert!(v.get("data_dir_str").is_some());
    assert!(!out.contains("secret"));
    let (code, out, _) = tako(&["config"], d.path());
    assert_eq!(code, 0);
    assert!(out.contains("registry_password: ***"), "{out}");
    assert!(!out.contains("secret"));
    let (code, _, err) = tako(&["server", "--host", "0.0.0.0", "--port", "1"], d.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("refusing to bind non-loopback host '0.0.0.0'"),
        "{err}"
    );
    std::fs::write(d.path().join("tako_vm.yaml"), "bogus_key: 1\n").unwrap();
    let (code, _, err) = tako(&["server"], d.path());
    assert_eq!(code, 1);
    assert!(
        err.starts_with("Configuration error: Invalid configuration: "),
        "{err}"
    );
}

#[test]
fn status_reads_health() {
    let s = api_support::Server::start("");
    let d = tempfile::tempdir().unwrap();
    let (code, out, err) = tako(&["status", "--url", &s.url], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("Status: "), "{out}");
    assert!(out.contains("Version: 0.3.0"));
    let (code, _, err) = tako(&["status", "--url", "http://127.0.0.1:1"], d.path());
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach"), "{err}");
}
