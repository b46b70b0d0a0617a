//! The same sandbox run by an unprivileged user (root creates the users; CI is root).

mod common;

use std::process::Command;

/// Creates `name` if needed; with `subids` it gets /etc/subuid and /etc/subgid ranges,
/// without it any ranges are removed.
fn ensure_user(name: &str, subids: Option<u32>) {
    // Tests of this file run in parallel threads: edit the shared files one at a time.
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = LOCK.lock().unwrap();
    if Command::new("id")
        .arg(name)
        .output()
        .unwrap()
        .status
        .success()
    {
        // exists
    } else {
        let st = Command::new("useradd")
            .args(["-M", "-s", "/bin/sh", name])
            .status()
            .unwrap();
        assert!(st.success(), "useradd {name}");
    }
    for f in ["/etc/subuid", "/etc/subgid"] {
        let old = std::fs::read_to_string(f).unwrap_or_default();
        let mut lines: Vec<String> = old
            .lines()
            .filter(|l| !l.starts_with(&format!("{name}:")))
            .map(String::from)
            .collect();
        if let Some(start) = subids {
            lines.push(format!("{name}:{start}:65536"));
        }
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(f, text).unwrap();
    }
}

/// A copy of the binary that any user can execute: the checkout (and so `target/`) may live
/// in a directory only root can enter.
fn shared_bin() -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    static BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        // Copies left by earlier runs.
        for e in std::fs::read_dir("/var/tmp").unwrap().flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with("tako-rootless-test-")
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let dir = std::path::PathBuf::from(format!(
            "/var/tmp/tako-rootless-test-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = dir.join("tako-vm");
        std::fs::copy(common::bin(), &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        bin
    })
    .clone()
}

fn run_as(user: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new("runuser")
        .args(["-u", user, "--"])
        .arg(shared_bin())
        .args(args)
        .current_dir("/")
        .env_remove("TAKO_VM_ALLOW_UNLIMITED_SANDBOXES")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const PROBE: &str = "import os\nst = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines() if ':\\t' in l)\nprint('uid', os.getuid(), 'capeff', st['CapEff'].strip(), 'nnp', st['NoNewPrivs'].strip(), 'seccomp', st['Seccomp'].strip())\nprint('map', ' '.join(open('/proc/self/uid_map').read().split()))";

#[test]
fn unprivileged_user_with_subordinate_ids() {
    let r = need_rootfs!();
    let user = "tako-rootless1";
    ensure_user(user, Some(300000));
    let root = r.to_str().unwrap();
    // No usable cgroup (v1 needs root): a clear refusal, not an unlimited sandbox.
    let (code, _, err) = run_as(
        user,
        &["run", "--rootfs", root, "--", "python3", "-c", PROBE],
    );
    if common::cgroup_v1() {
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("allow_unlimited_sandboxes"), "{err}");
    }
    // With the explicit opt-in the run works and maps onto the subordinate range.
    let (out, uid) = probe_unlimited(user, root);
    assert!(
        out.contains(&format!("map 0 {uid} 1 1 300000 65535")),
        "{out}"
    );
}

/// Runs the probe as `user` with `--allow-unlimited`; checks the sandbox posture and returns
/// the probe's output and the user's host uid.
fn probe_unlimited(user: &str, rootfs: &str) -> (String, String) {
    let args = [
        "run",
        "--allow-unlimited",
        "--rootfs",
        rootfs,
        "--",
        "python3",
        "-c",
        PROBE,
    ];
    let (code, out, err) = run_as(user, &args);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("uid 1000 capeff 0000000000000000 nnp 1 seccomp 2"),
        "{out}"
    );
    let id = Command::new("id")
        .args(["-u", user])
        .output()
        .unwrap()
        .stdout;
    (out, String::from_utf8(id).unwrap().trim().to_string())
}

#[test]
fn unprivileged_user_without_subordinate_ids_gets_a_single_mapping() {
    let r = need_rootfs!();
    let user = "tako-rootless2";
    ensure_user(user, None);
    let (out, uid) = probe_unlimited(user, r.to_str().unwrap());
    assert!(out.contains(&format!("map 1000 {uid} 1")), "{out}");
}
