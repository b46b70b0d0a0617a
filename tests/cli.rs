//! `tako-vm run` from the command line.

mod common;

/// `tako-vm run --rootfs ROOTFS -- CMD…`
fn run_args<'a>(rootfs: &'a std::path::Path, cmd: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run", "--rootfs", rootfs.to_str().unwrap(), "--"];
    args.extend_from_slice(cmd);
    args
}

#[test]
fn command_mode_passes_output_and_exit_codes() {
    let r = need_rootfs!();
    let root = r.to_str().unwrap();
    let (code, out, _) =
        common::cli(&["run", "--rootfs", root, "--", "python3", "-c", "print(1+1)"]);
    assert_eq!((code, out.as_str()), (0, "2\n"));
    let (code, _, err) = common::cli(&[
        "run",
        "--rootfs",
        root,
        "--",
        "sh",
        "-c",
        "echo oops >&2; exit 7",
    ]);
    assert_eq!(code, 7);
    assert_eq!(err, "oops\n");
    let (code, _, _) = common::cli(&[
        "run",
        "--rootfs",
        root,
        "--timeout",
        "1",
        "--",
        "sleep",
        "30",
    ]);
    assert_eq!(code, 124);
    let (code, _, _) = common::cli(&["run", "--rootfs", root, "--", "sh", "-c", "kill -9 $$"]);
    assert_eq!(code, 137);
    let (code, _, err) = common::cli(&["run", "--rootfs", root, "--", "no-such-binary"]);
    assert_eq!(code, 127, "{err}");
    assert!(err.contains("no-such-binary"), "{err}");
}

#[test]
fn code_mode_prints_the_execution_record() {
    let r = need_rootfs!();
    let dir = tempfile::tempdir().unwrap();
    let code = dir.path().join("main.py");
    let input = dir.path().join("in.json");
    std::fs::write(&code, "import json\nd = json.load(open('/input/data.json'))\njson.dump({'n': d['n'] * 2}, open('/output/result.json', 'w'))\nprint('ok')").unwrap();
    std::fs::write(&input, r#"{"n": 21}"#).unwrap();
    let (status, out, err) = common::cli(&[
        "run",
        "--rootfs",
        r.to_str().unwrap(),
        "--memory",
        "256m",
        "--cpus",
        "0.5",
        "--pids",
        "50",
        "--code",
        code.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(status, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "status",
            "exit_code",
            "stdout",
            "stderr",
            "stdout_truncated",
            "stderr_truncated",
            "output",
            "artifacts",
            "error",
            "timing",
            "resource_usage"
        ]
    );
    assert_eq!(v["status"], "succeeded");
    assert_eq!(v["output"]["n"], 42);
    assert_eq!(v["stdout"], "ok\n");
    assert_eq!(v["artifacts"][0]["name"], "result.json");
}

#[test]
fn bad_arguments_are_clear_errors() {
    let (code, _, err) = common::cli(&["run", "--rootfs", "/nonexistent-rootfs", "--", "true"]);
    assert_eq!(code, 1);
    assert!(err.contains("is not a directory"), "{err}");
    let empty = tempfile::tempdir().unwrap();
    let (code, _, err) = common::cli(&[
        "run",
        "--rootfs",
        empty.path().to_str().unwrap(),
        "--",
        "true",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("not prepared for tako-vm") && err.contains("/code"),
        "{err}"
    );
    let r = match common::rootfs() {
        Some(r) => r,
        None => return,
    };
    let (code, _, err) = common::cli(&[
        "run",
        "--rootfs",
        r.to_str().unwrap(),
        "--memory",
        "lots",
        "--",
        "true",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("invalid size"), "{err}");
    // 0 means "no limit" to the cgroup (memory, pids) and to tmpfs: refused.
    for (flag, message) in [
        ("--memory", "--memory must be at least 1m"),
        ("--pids", "--pids must be between 1 and 4194304"),
        ("--tmpfs-size", "--tmpfs-size must be at least 1m"),
    ] {
        let (code, out, err) = common::cli(&[
            "run",
            "--rootfs",
            r.to_str().unwrap(),
            flag,
            "0",
            "--",
            "echo",
            "ran",
        ]);
        assert_eq!((code, out.as_str()), (1, ""), "{flag} 0: {err}");
        assert!(err.contains(message), "{flag} 0: {err}");
    }
    // Too large to compute deadlines or cgroup values from (they used to wrap around).
    for (flag, value, message) in [
        (
            "--timeout",
            "18446744073709552",
            "--timeout must be between 1 and 604800",
        ),
        (
            "--pids",
            "18446744073709551615",
            "--pids must be between 1 and 4194304",
        ),
    ] {
        let (code, out, err) = common::cli(&[
            "run",
            "--rootfs",
            r.to_str().unwrap(),
            flag,
            value,
            "--",
            "echo",
            "ran",
        ]);
        assert_eq!((code, out.as_str()), (1, ""), "{flag} {value}: {err}");
        assert!(err.contains(message), "{flag} {value}: {err}");
    }
    // A mount point that is a symlink (here to the host's /) is refused, not followed.
    let scratch = tempfile::tempdir().unwrap();
    let linked = scratch.path().join("rootfs");
    common::hardlink_copy(&r, &linked);
    std::fs::remove_dir(linked.join("tmp")).unwrap();
    std::os::unix::fs::symlink("/", linked.join("tmp")).unwrap();
    let (code, _, err) = common::cli(&["run", "--rootfs", linked.to_str().unwrap(), "--", "true"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("not prepared for tako-vm") && err.contains("/tmp"),
        "{err}"
    );
    let (code, out, _) = common::cli(&["version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("tako-vm "));
}

/// As root on a cgroup v1 host the CLI launches its sandbox's init before it checks the
/// rootfs (`launch_init`), born in the run's cgroup: when the run is refused, neither that
/// init nor the cgroup directories its launcher made may outlive the CLI.
#[test]
fn a_refused_run_leaves_no_launched_init_behind() {
    let empty = tempfile::tempdir().unwrap();
    let marker = empty.path().to_str().unwrap().to_string();
    let parent = format!("tako-vm-test-refused-{}", std::process::id());
    let (code, _, err) = common::cli(&[
        "run",
        "--cgroup-parent",
        &parent,
        "--rootfs",
        &marker,
        "--",
        "true",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("not prepared for tako-vm"), "{err}");
    // The parent in every hierarchy is empty (or was never made), then removed.
    for h in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let dir = h.path().join(&parent);
        let runs: Vec<_> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        let _ = std::fs::remove_dir(&dir);
        assert!(runs.is_empty(), "cgroups left behind: {runs:?}");
    }
    // The init is a copy of the CLI process: same command line, so the same marker.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !common::host_processes_with(&marker).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let left = common::host_processes_with(&marker);
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Both spawn paths (the CLI's cloned init, and the exec'd helper a server uses) hand the
/// payload fds 0-2 only.
#[test]
fn both_helper_spawn_paths_leave_the_payload_only_fds_0_to_2() {
    let r = need_rootfs!();
    let root = r.to_str().unwrap();
    let probe = "import os; print(sorted(int(f) for f in os.listdir('/proc/self/fd')))";
    for (path, env) in common::SPAWN_PATHS {
        let (code, stdout, err) = common::cli_env(
            &["run", "--rootfs", root, "--", "python3", "-c", probe],
            env,
        );
        assert_eq!(code, 0, "{path}: {err}");
        // 3 is the listing's own directory descriptor.
        assert_eq!(stdout.trim(), "[0, 1, 2, 3]", "{path}");
    }
}

/// The payload starts with default signal dispositions, nothing blocked and an empty
/// capability bounding set (our own processes ignore SIGPIPE, and execve would pass that on;
/// the init sheds both before it forks the payload), on both spawn paths.
#[test]
fn the_payload_starts_with_default_signals() {
    let r = need_rootfs!();
    let probe = "grep -E '^(Sig(Ign|Blk)|CapBnd)' /proc/self/status; yes | head -1";
    for (path, env) in common::SPAWN_PATHS {
        let args = run_args(&r, &["sh", "-c", probe]);
        let (code, out, err) = common::cli_env(&args, env);
        assert_eq!(code, 0, "{path}: {err}");
        assert!(out.contains("SigIgn:\t0000000000000000"), "{out}");
        assert!(out.contains("SigBlk:\t0000000000000000"), "{out}");
        assert!(out.contains("CapBnd:\t0000000000000000"), "{out}");
        assert!(!err.contains("Broken pipe"), "{err}");
    }
}

/// The command starts only once the run's limits hold: while the CLI holds its "limited"
/// message back (a test hook), every task in the run's cgroup (the init, built on another
/// CPU meanwhile) is still tako-vm and the limits are already written; then the command
/// runs.
#[test]
fn the_command_starts_only_once_the_limits_hold() {
    let r = need_rootfs_on_v1!("no cgroup v1 hierarchies here");
    let pids_root = std::path::Path::new("/sys/fs/cgroup/pids");
    let parent = "tako-vm-test-hold";
    let dir = pids_root.join(parent);
    let root = r.to_str().unwrap();
    let mut cli = std::process::Command::new(common::bin())
        .args(["run", "--cgroup-parent", parent, "--pids", "33"])
        .args(["--rootfs", root, "--", "sleep", "1.5"])
        .env("TAKO_VM_TEST_HOLD_LIMITED_MS", "3000")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ours = std::fs::canonicalize(common::bin()).unwrap();
    let tasks = || -> Vec<(i32, std::path::PathBuf, String)> {
        let Ok(runs) = std::fs::read_dir(&dir) else {
            return vec![];
        };
        let mut v = vec![];
        for run in runs.flatten().filter(|e| e.path().is_dir()) {
            let max = std::fs::read_to_string(run.path().join("pids.max")).unwrap_or_default();
            let procs =
                std::fs::read_to_string(run.path().join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
                if let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) {
                    v.push((pid, exe, max.trim().to_string()));
                }
            }
        }
        v
    };
    // From the first look at the run's cgroup with its limits written (the hold starts right
    // after they are) for 1.2 s, inside the three-second hold: every task must be tako-vm.
    // A command started early (a 1.5 s sleep) would be seen.
    let t0 = std::time::Instant::now();
    let mut limited_at = None;
    let mut seen = 0;
    while t0.elapsed() < std::time::Duration::from_secs(20) {
        let now = tasks();
        if !now.is_empty() && now.iter().all(|(_, _, max)| max == "33") {
            let since = *limited_at.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() > std::time::Duration::from_millis(1200) {
                break;
            }
            for (pid, exe, _) in &now {
                assert_eq!(exe, &ours, "task {pid} runs {exe:?} before the limits hold");
            }
            seen = seen.max(now.len());
        }
        if limited_at.is_none() && cli.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let status = cli.wait().unwrap();
    assert!(
        limited_at.is_some(),
        "never saw the run's cgroup with its limits"
    );
    assert!(status.success(), "{status:?}");
    eprintln!("tasks seen waiting in the run's cgroup: {seen}");
}

/// A CLI run sweeps the cgroups of crashed runs while its own payload starts (not before
/// it): a dead owner's leftover is killed and removed by the time the CLI exits, a live
/// owner's is kept.
#[test]
fn a_cli_run_sweeps_dead_runs_leftovers() {
    let r =
        need_rootfs_on_v1!("no cgroup v1 hierarchies here (the v2 sweep runs in the QEMU test)");
    let v1 = std::path::Path::new("/sys/fs/cgroup/memory");
    let parent = "tako-vm-test-cli-sweep";
    let dead = v1.join(parent).join("999999999.1.deadbeef");
    let mut sleeper = common::dead_run_leftover(&[&dead]);
    let live = v1.join(parent).join(tako_vm::sandbox::host::new_run_id());
    std::fs::create_dir_all(&live).unwrap();

    let root = r.to_str().unwrap();
    let args = [
        "run",
        "--cgroup-parent",
        parent,
        "--rootfs",
        root,
        "--",
        "true",
    ];
    let (code, _, err) = common::cli(&args);
    let gone = !dead.exists();
    // SIGKILLed by the sweep: gone within moments.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut killed = false;
    while !killed && std::time::Instant::now() < until {
        killed = sleeper.try_wait().unwrap().is_some();
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let kept = live.exists();
    let _ = std::fs::remove_dir(&live);
    let _ = std::fs::remove_dir(&dead);
    assert_eq!(code, 0, "{err}");
    assert!(killed, "the leftover's process was killed");
    assert!(gone, "the leftover cgroup was removed");
    assert!(kept, "a live owner's cgroup is kept");
}

/// The CLI builds a run's namespaces on another CPU (`sandbox::cpus`): the init takes the
/// caller's CPU mask back before anything of the sandbox runs, so the payload may use the
/// caller's CPUs, no fewer, on both spawn paths.
#[test]
fn the_payload_gets_the_callers_cpus() {
    let r = need_rootfs!();
    // The caller's own mask, as the test process has it (the CLI inherits it).
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let want = status
        .lines()
        .find(|l| l.starts_with("Cpus_allowed_list:"))
        .unwrap()
        .to_string();
    for (path, env) in common::SPAWN_PATHS {
        let args = run_args(&r, &["grep", "^Cpus_allowed_list:", "/proc/self/status"]);
        let (code, out, err) = common::cli_env(&args, env);
        assert_eq!(code, 0, "{path}: {err}");
        assert_eq!(out.trim(), want, "{path}");
    }
}

/// The CLI clones the sandbox's init itself and puts it into its cgroup while the init builds
/// the filesystem; the limits must hold before the payload starts, on both spawn paths: the
/// pids limit stops a fork loop, the memory limit ends a 200 MB allocation as `oom`, and the
/// cgroup namespace is rooted at the run's cgroup.
#[test]
fn both_spawn_paths_start_the_payload_inside_its_limits() {
    let r = need_rootfs!();
    let root = r.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let forks = dir.path().join("forks.py");
    std::fs::write(
        &forks,
        "import os, time\nn = 0\ntry:\n    for _ in range(100):\n        if os.fork() == 0:\n            time.sleep(5); os._exit(0)\n        n += 1\nexcept OSError as e:\n    print('stopped', n, e.errno)\nprint([l for l in open('/proc/self/cgroup').read().split() if ':memory:' in l or ':pids:' in l])\n",
    )
    .unwrap();
    let hog = dir.path().join("hog.py");
    std::fs::write(&hog, "x = bytearray(200 << 20)\nprint('survived')\n").unwrap();
    for (path, env) in common::SPAWN_PATHS {
        let run = |extra: &[&str], code: &std::path::Path| {
            let mut args = vec!["run", "--rootfs", root];
            args.extend_from_slice(extra);
            args.extend(["--code", code.to_str().unwrap()]);
            let (_, out, err) = common::cli_env(&args, env);
            serde_json::from_str::<serde_json::Value>(&out)
                .unwrap_or_else(|e| panic!("{path}: {e}: {out} {err}"))
        };
        let v = run(&["--pids", "20"], &forks);
        let stdout = v["stdout"].as_str().unwrap();
        assert!(stdout.contains("stopped"), "{path}: {v}");
        assert!(stdout.contains(":memory:/'"), "{path}: {v}");
        let v = run(&["--memory", "64m"], &hog);
        assert_eq!(v["status"], "oom", "{path}: {v}");
        assert!(!v["stdout"].as_str().unwrap().contains("survived"), "{v}");
    }
}

/// The caller's environment reaches neither the payload (whose environment is the contract's)
/// nor, readable, the memory of the sandbox's init (cloned from the CLI, which zeroes its copy
/// of the environment strings; `/proc/1/environ` is refused anyway), on both spawn paths.
#[test]
fn the_callers_environment_stays_outside() {
    let r = need_rootfs!();
    let secret = "tako-test-secret-7c1d9e";
    let probe = format!(
        "import os\nprint('env', any('{secret}' in v for v in os.environ.values()))\ntry:\n    print('init env', '{secret}' in open('/proc/1/environ', 'rb').read().decode('latin-1'))\nexcept OSError as e:\n    print('init env refused', e.errno)\n"
    );
    for (path, env) in common::SPAWN_PATHS {
        let args = run_args(&r, &["python3", "-c", &probe]);
        let mut env = env.to_vec();
        env.push(("TAKO_TEST_SECRET", secret));
        let (code, out, err) = common::cli_env(&args, &env);
        assert_eq!(code, 0, "{path}: {err}");
        assert!(out.contains("env False"), "{path}: {out}");
        assert!(
            out.contains("init env refused 13") || out.contains("init env False"),
            "{path}: {out}"
        );
    }
}

/// A command run hands its spec to the launched init (the launcher writes the id maps and
/// answers for the CLI); where the spec cannot be handed over (here a frame over 64 KiB),
/// the init whose maps were written is discarded and the run starts a fresh one, with the
/// same result. Only where the CLI launches its init early: root on a cgroup v1 host.
#[test]
fn a_command_run_hands_its_spec_over_or_starts_a_fresh_init() {
    let r = need_rootfs_on_v1!("the CLI launches its init early only on a cgroup v1 host");
    let root = r.to_str().unwrap();
    let handed = "spec and id maps handed over by the launcher";
    let trace = [("TAKO_VM_TRACE", "1")];
    let (code, out, err) = common::cli_env(
        &["run", "--rootfs", root, "--", "python3", "-c", "print(6*7)"],
        &trace,
    );
    assert_eq!((code, out.as_str()), (0, "42\n"), "{err}");
    assert!(err.contains(handed), "{err}");
    // 70 000 bytes of argument: over the hand-off's 64 KiB, under the kernel's 128 KiB.
    let long = "y".repeat(70_000);
    let (code, out, err) =
        common::cli_env(&["run", "--rootfs", root, "--", "/bin/echo", &long], &trace);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("{long}\n"));
    assert!(!err.contains(handed), "{err}");
}
