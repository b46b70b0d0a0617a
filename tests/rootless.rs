//! The same sandbox run by an unprivileged user (root creates the users; CI is root).

mod common;
mod image_support;

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
        common::remove_at_exit(dir.clone());
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = dir.join("tako-vm");
        std::fs::copy(common::bin(), &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        bin
    })
    .clone()
}

fn run_as(user: &str, args: &[&str]) -> (i32, String, String) {
    run_as_with_umask(user, None, args)
}

/// [`run_as`], with the given umask when `Some`.
fn run_as_with_umask(user: &str, umask: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", user, "--"]);
    if let Some(m) = umask {
        cmd.args(["sh", "-c", &format!("umask {m} && exec \"$@\""), "sh"]);
    }
    let out = cmd
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

// ------------------------------------------------------------ network through pasta

/// The rootless network tests share the peer namespace.
static NET: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// pasta is installed and /dev/net/tun is usable by unprivileged users (the README's test
/// command makes it 0666, the default of most distributions; Debian ships 0600).
fn pasta_usable() -> bool {
    use std::os::unix::fs::PermissionsExt;
    let tun_open =
        std::fs::metadata("/dev/net/tun").is_ok_and(|m| m.permissions().mode() & 0o006 == 0o006);
    let pasta = std::path::Path::new("/usr/bin/pasta").exists();
    if tun_open && pasta {
        return true;
    }
    let why = format!("pasta installed: {pasta}, /dev/net/tun open to users: {tun_open}");
    if std::env::var("TAKO_TEST_REQUIRE").as_deref() == Ok("1") {
        panic!("rootless network tests need pasta and /dev/net/tun 0666 ({why})");
    }
    eprintln!("skipping: rootless network tests need pasta and /dev/net/tun 0666 ({why})");
    false
}

/// The common start of the pasta tests: the rootfs, the network lock and the test user with
/// subordinate ids (`tako-rootless1`); None when the test must be skipped.
fn pasta_prelude() -> Option<(std::path::PathBuf, std::sync::MutexGuard<'static, ()>)> {
    let r = common::rootfs()?;
    if !pasta_usable() {
        return None;
    }
    let g = NET.lock().unwrap_or_else(|e| e.into_inner());
    ensure_user("tako-rootless1", Some(300000));
    Some((r, g))
}

/// Runs `code` as `user` with `--network` (and `--allow-host`s); the execution record.
fn net_run_as(
    user: &str,
    rootfs: &str,
    code: &str,
    allowed: &[&str],
    env: &[(&str, &str)],
) -> serde_json::Value {
    let dir = shared_bin().parent().unwrap().to_path_buf();
    let file = dir.join(format!("code-{}.py", uuid::Uuid::new_v4().simple()));
    std::fs::write(&file, code).unwrap();
    let mut args = vec!["run", "--allow-unlimited", "--network"];
    for a in allowed {
        args.extend(["--allow-host", a]);
    }
    let f = file.to_str().unwrap();
    args.extend(["--rootfs", rootfs, "--timeout", "60", "--code", f]);
    let out = Command::new("runuser")
        .args(["-u", user, "--"])
        .arg(shared_bin())
        .args(&args)
        .envs(env.iter().copied())
        .current_dir("/")
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no record ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn uid_of(user: &str) -> String {
    let id = Command::new("id")
        .args(["-u", user])
        .output()
        .unwrap()
        .stdout;
    String::from_utf8(id).unwrap().trim().to_string()
}

/// Status files of the live (not zombie) pasta processes of `uid`.
fn live_pastas(uid: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .filter(|s| {
            s.contains("Name:\tpas")
                && !s.contains("State:\tZ")
                && s.lines()
                    .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some(uid))
        })
        .collect()
}

/// No pasta of `user` is alive and no pid file of ours is left.
fn no_pasta_left(user: &str) {
    let uid = uid_of(user);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let alive = live_pastas(&uid);
        if alive.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pasta left running: {alive:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let dir = format!("/tmp/tako-vm-{uid}");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in {dir}: {left:?}");
}

#[test]
fn rootless_network_reaches_pypi_but_not_the_host_or_private_ranges() {
    let Some((r, _g)) = pasta_prelude() else {
        return;
    };
    let user = "tako-rootless1";
    // The peer gives the host one more address (198.51.100.1) outside the private ranges:
    // pasta's sockets could reach the host's listener there, so the filter must stop it.
    let peer = common::peer::PeerHost::start();
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let targets = [
        "198.51.100.1",
        "192.0.2.1",
        "10.255.255.53",
        "127.0.0.1",
        "169.254.169.254",
        "172.17.0.1",
        "192.168.1.1",
        // IPv6 (when the host has it): the host's address facing the peer, a unique-local
        // gateway.
        "2a00:ffff::1",
        "fd00::1",
    ];
    let code = format!(
        r#"{fetch}
import socket
print(open("/etc/resolv.conf").read().strip())
for addr in {targets:?}:
    try:
        socket.create_connection((addr, {port}), timeout=2); print("REACHED", addr)
    except OSError as e:
        print("blocked", addr)
try:
    socket.create_connection(("::1", {port}), timeout=2); print("REACHED v6")
except OSError:
    print("blocked v6")
{to_peer}
"#,
        fetch = common::peer::FETCH_PYPI,
        to_peer = common::peer::to_peer4(),
    );
    let rec = net_run_as(user, r.to_str().unwrap(), &code, &[], &[]);
    drop(listener);
    let out = rec["stdout"].as_str().unwrap();
    assert_eq!(rec["status"], "succeeded", "{rec}");
    assert!(out.contains("ifaces ['eth0', 'lo']"), "{out}");
    assert!(out.contains("nameserver 169.254.0.53"), "{out}");
    assert!(out.contains("pypi 200 True"), "{out}");
    assert!(!out.contains("REACHED"), "{out}");
    // The peer sits on a subnet the host is attached to: an internal network, blocked too
    // (the public internet is shown by PyPI above).
    assert!(out.contains("peer blocked"), "{out}");
    assert_eq!(out.matches("blocked").count(), targets.len() + 2, "{out}");
    drop(peer);
    no_pasta_left(user);
}

#[test]
fn rootless_allowed_hosts_limit_egress() {
    let Some((r, _g)) = pasta_prelude() else {
        return;
    };
    let user = "tako-rootless1";
    let root = r.to_str().unwrap();
    let _peer = common::peer::PeerHost::start();
    let code = format!("{}\n{}", common::peer::to_peer4(), common::peer::FETCH_PYPI);
    let rec = net_run_as(user, root, &code, &["pypi.org"], &[]);
    let out = rec["stdout"].as_str().unwrap();
    assert_eq!(rec["status"], "succeeded", "{rec}");
    assert!(out.contains("peer blocked"), "{out}");
    assert!(out.contains("pypi 200 True"), "{out}");
    let rec = net_run_as(
        user,
        root,
        &common::peer::to_peer4(),
        &["198.51.100.0/24"],
        &[],
    );
    assert!(
        rec["stdout"].as_str().unwrap().contains("peer peer-hello"),
        "{rec}"
    );
    no_pasta_left(user);
}

#[test]
fn rootless_network_without_pasta_is_refused_never_open() {
    let r = need_rootfs!();
    let user = "tako-rootless2";
    ensure_user(user, None);
    let rec = net_run_as(
        user,
        r.to_str().unwrap(),
        "print('RAN')",
        &[],
        &[("TAKO_VM_PASTA", "/nonexistent/pasta")],
    );
    assert!(
        !rec["stdout"].as_str().unwrap_or("").contains("RAN"),
        "{rec}"
    );
    let msg = rec["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("pasta is not installed") && msg.contains("refused"),
        "{rec}"
    );
    no_pasta_left(user);
}

#[test]
fn pasta_of_a_killed_run_is_ended_by_the_next_start() {
    let Some((r, _g)) = pasta_prelude() else {
        return;
    };
    let user = "tako-rootless1";
    let root = r.to_str().unwrap();
    let dir = format!("/tmp/tako-vm-{}", uid_of(user));
    let code = shared_bin().parent().unwrap().join("sleep.py");
    std::fs::write(&code, "import time\ntime.sleep(60)\n").unwrap();
    let mut cli = Command::new("runuser")
        .args(["-u", user, "--"])
        .arg(shared_bin())
        .args([
            "run",
            "--allow-unlimited",
            "--network",
            "--rootfs",
            root,
            "--code",
        ])
        .arg(&code)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the run's pasta (its pid file), then kill the CLI the hard way.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::read_dir(&dir).map_or(true, |mut rd| rd.next().is_none()) {
        assert!(std::time::Instant::now() < deadline, "no pasta started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let tako = common::host_processes_with(shared_bin().to_str().unwrap())
        .into_iter()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "tako-vm")
                && std::fs::read(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| !String::from_utf8_lossy(&c).contains("__sandbox-helper"))
        })
        .expect("the CLI process");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(tako),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = cli.wait();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(
        live_pastas(&uid_of(user)).len(),
        1,
        "pasta outlives a killed CLI"
    );
    // The pasta outlived it; the next start of tako-vm (any run) ends it.
    let (code_rc, _, err) = run_as(
        user,
        &["run", "--allow-unlimited", "--rootfs", root, "--", "true"],
    );
    assert_eq!(code_rc, 0, "{err}");
    no_pasta_left(user);
}

// ------------------------------------------------------------ job-type builds

/// [`run_as`] with umask 077 (a careful user, or a unit's `UMask=`): what tako-vm writes into
/// its store must still be readable by the sandbox's (subordinate) user.
fn run_strict_umask(user: &str, args: &[&str]) -> (i32, String, String) {
    run_as_with_umask(user, Some("077"), args)
}

/// The uv binary the builds use (`TAKO_VM_UV_PATH`, as scripts/test sets it), or None (a
/// failure with TAKO_TEST_REQUIRE=1).
fn uv_binary() -> Option<String> {
    match std::env::var("TAKO_VM_UV_PATH") {
        Ok(p) if std::path::Path::new(&p).is_file() => Some(p),
        _ => {
            assert!(
                !image_support::required(),
                "TAKO_TEST_REQUIRE=1 but TAKO_VM_UV_PATH names no uv binary"
            );
            eprintln!("SKIP: TAKO_VM_UV_PATH names no uv binary");
            None
        }
    }
}

/// Files under `dir` whose owner is not `uid`, `skip` and what is below it left out.
fn not_owned_by(dir: &std::path::Path, uid: u32, skip: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut odd = Vec::new();
    rootfs_builder::walk_tree(dir, |e, p| {
        if p == skip {
            return Ok(false);
        }
        let md = e.metadata()?;
        if md.uid() != uid {
            odd.push(format!("{} (uid {})", p.display(), md.uid()));
        }
        Ok(md.is_dir())
    })
    .unwrap();
    odd
}

/// An unprivileged server with subordinate ids builds job types (the unit of scripts/install
/// runs as such a user): its builder sandbox's user is a subordinate id, which the server
/// cannot chown to or delete for itself, so the hand-over of the build's directories goes
/// through the owner helper (src/sandbox/owner.rs). Builds with shared code (no network), a
/// failing build (cleaned up), and, where pasta works, one with a requirement from PyPI;
/// every file of the store (but uv's cache) is the user's afterwards, and runs use them.
#[test]
fn unprivileged_user_with_subordinate_ids_builds_job_types() {
    use std::os::unix::fs::MetadataExt;
    let _rootfs = need_rootfs!();
    let Some(fixture) = image_support::fixture() else {
        return;
    };
    let Some(uv) = uv_binary() else {
        return;
    };
    let user = "tako-rootless1";
    ensure_user(user, Some(300000));
    let uid: u32 = uid_of(user).parse().unwrap();
    let reg = image_support::RegistryProc::start(&fixture, "none", None);
    let dir = std::path::PathBuf::from(format!(
        "/var/tmp/tako-rootless-build-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("wheels")).unwrap();
    common::remove_at_exit(dir.clone());
    std::fs::write(dir.join("helper.py"), "def helper():\n    return 42\n").unwrap();
    std::fs::write(
        dir.join("use.py"),
        "import helper\nprint(helper.helper(), helper.__file__)\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("six.py"),
        "import six\nprint(six.__name__, six.__file__)\n",
    )
    .unwrap();
    let cfg = dir.join("cfg.yaml");
    std::fs::write(
        &cfg,
        format!(
            "allow_unlimited_sandboxes: true\njob_types:\n  - name: shared-only\n    shared_code: [{}]\n  - name: with-six\n    requirements: [six]\n  - name: after-clear\n    requirements: [tako-absent-package]\n",
            dir.join("helper.py").display()
        ),
    )
    .unwrap();
    let st = Command::new("chown")
        .args(["-R", &format!("{user}:"), dir.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success());
    let store = dir.join("store");
    let (cfg_s, store_s) = (cfg.to_str().unwrap(), store.to_str().unwrap());
    let build = |name: &str, extra: &[&str]| {
        let mut args = vec![
            "--config",
            cfg_s,
            "build",
            name,
            "--store",
            store_s,
            "--registry-mirror",
            &reg.host,
            "--uv-path",
            &uv,
        ];
        args.extend(extra);
        run_strict_umask(user, &args)
    };
    let run = |name: &str, code: &str| {
        let code = dir.join(code);
        run_strict_umask(
            user,
            &[
                "--config",
                cfg_s,
                "run",
                "--allow-unlimited",
                "--store",
                store_s,
                "--job-type",
                name,
                "--code",
                code.to_str().unwrap(),
            ],
        )
    };

    // shared_code only: the base image pulled, its Python byte-compiled, the snapshot built.
    let (rc, _, err) = build("shared-only", &[]);
    assert_eq!(rc, 0, "{err}");
    assert!(!err.contains("Operation not permitted"), "{err}");
    assert!(
        !err.contains("not byte-compiling"),
        "the base image's Python: {err}"
    );
    let (rc, out, err) = run("shared-only", "use.py");
    assert_eq!(rc, 0, "{out} {err}");
    assert!(out.contains("42 /app/shared_code/helper.py"), "{out}");

    // A failing build (nothing to install from): uv's error, and no staging left.
    let wheels = dir.join("wheels");
    let (rc, _, err) = build("with-six", &["--find-links", wheels.to_str().unwrap()]);
    assert_ne!(rc, 0, "{err}");
    assert!(err.contains("six"), "uv's error: {err}");
    let snapshots = store.join("snapshots");
    let staging: Vec<_> = std::fs::read_dir(&snapshots)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".staging-"))
        .map(|e| e.path())
        .collect();
    assert!(staging.is_empty(), "left: {staging:?}");

    // A requirement from PyPI, through pasta (the builder sandbox's network).
    if pasta_usable() {
        let _net = NET.lock().unwrap_or_else(|e| e.into_inner());
        let (rc, _, err) = build("with-six", &[]);
        assert_eq!(rc, 0, "{err}");
        let (rc, out, err) = run("with-six", "six.py");
        assert_eq!(rc, 0, "{out} {err}");
        // Installed into the image's own Python (the fixture's is Debian's: dist-packages).
        assert!(
            out.contains("\"six /usr/local/lib/python3.11/") && out.contains("/six.py"),
            "{out}"
        );
    }

    // A dead build's staging tree, with what its sandbox user (a subordinate id) wrote in a
    // directory of its own: gc removes it through the owner helper.
    let stale = snapshots.join(".staging-0000-999999999");
    std::fs::create_dir_all(stale.join("rootfs/deep")).unwrap();
    std::fs::write(stale.join("rootfs/deep/file"), "x").unwrap();
    let st = Command::new("chown")
        .args([
            "-R",
            "300999:300999",
            stale.join("rootfs").to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(st.success());
    std::os::unix::fs::chown(&stale, Some(uid), Some(uid)).unwrap();
    let (rc, out, err) = run_as(user, &["--config", cfg_s, "gc", "--store", store_s]);
    assert_eq!(rc, 0, "{out} {err}");
    assert!(!stale.exists(), "gc left {}", stale.display());

    // Everything but uv's shared cache (its files are the sandbox user's, as on a root
    // server: uv rewrites its lock and index files) is the user's own.
    let odd = not_owned_by(&store, uid, &snapshots.join("uv-cache"));
    assert!(
        odd.is_empty(),
        "not the user's: {:?}",
        &odd[..odd.len().min(10)]
    );
    assert_eq!(std::fs::metadata(&store).unwrap().uid(), uid);

    // uv's cache belongs to the sandbox user, a subordinate id the user cannot remove files
    // of: `gc --caches` empties it through the owner helper.
    let uv_cache = snapshots.join("uv-cache");
    assert_ne!(std::fs::metadata(&uv_cache).unwrap().uid(), uid);
    let (rc, out, err) = run_as(
        user,
        &["--config", cfg_s, "gc", "--caches", "--store", store_s],
    );
    assert_eq!(rc, 0, "{out} {err}");
    assert!(out.contains("emptied the build caches ("), "{out}");
    assert!(
        !uv_cache.exists(),
        "gc --caches left {}",
        uv_cache.display()
    );
    // Snapshots keep what they hold: a job type built before still runs.
    let (rc, out, err) = run("shared-only", "use.py");
    assert_eq!(rc, 0, "{out} {err}");
    assert!(out.contains("42 /app/shared_code/helper.py"), "{out}");
    // Root ran gc on this store and made its lock file: the user's builds still take it.
    let lock = snapshots.join("locks/caches");
    std::fs::remove_file(&lock).unwrap();
    let (code, out, err) = common::cli(&["gc", "--store", store_s]);
    assert_eq!(code, 0, "{out} {err}");
    assert_eq!(std::fs::metadata(&lock).unwrap().uid(), 0);
    // The next build makes the cache again and hands it over (it fails at uv, which has
    // nothing to install from, not before).
    let (rc, _, err) = build("after-clear", &["--find-links", wheels.to_str().unwrap()]);
    assert_ne!(rc, 0, "{err}");
    assert!(
        err.contains("tako-absent-package")
            && !err.contains("Operation not permitted")
            && !err.contains("Permission denied"),
        "{err}"
    );
    assert_ne!(std::fs::metadata(&uv_cache).unwrap().uid(), uid);
}
