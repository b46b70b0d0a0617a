//! The tako-vm execution contract through a real sandbox (root + rootfs fixture).

mod common;

use tako_vm::exec::record::{ErrorType, Phase, Status};

#[test]
fn print_one_plus_one() {
    let r = need_rootfs!();
    let res = common::exec(&r, "print(1+1)");
    assert_eq!(res.status, Status::Succeeded, "{res:?}");
    assert_eq!(res.stdout, "2\n");
    assert_eq!(res.exit_code, Some(0));
    assert!(res.error.is_none());
    let t = res.timing.unwrap();
    assert_eq!(t.phase_at_exit, Some(Phase::Completed));
    assert!(t.total_ms.unwrap() >= t.execution_ms.unwrap());
    let u = res.resource_usage.unwrap();
    assert!(u.cpu_time_ms.is_some(), "cpu time from the cgroup");
    assert!(u.max_rss_mb.unwrap() > 1.0, "peak memory from the cgroup");
}

#[test]
fn input_output_and_artifacts() {
    let r = need_rootfs!();
    let dir = tempfile::tempdir().unwrap();
    let code = r#"
import json, os
raw = open("/input/data.json").read()
d = json.loads(raw)
print(raw)
print(os.getcwd(), os.getuid(), os.getgid(), os.environ["HOME"], os.environ["TAKO_EXECUTION_TIMEOUT"])
json.dump({"mean": sum(d["values"]) / len(d["values"])}, open("/output/result.json", "w"))
open("/output/report.csv", "w").write("a,b\n1,2\n")
open("/output/big.bin", "wb").write(b"x" * 5000)
open("/output/.hidden", "w").write("no")
os.mkdir("/output/sub"); open("/output/sub/inner.txt", "w").write("no")
os.symlink("/etc/passwd", "/output/link")
try:
    open("/input/data.json", "w")
except OSError as e:
    print("input ro", e.errno)
try:
    open("/code/main.py", "a")
except OSError as e:
    print("code ro", e.errno)
"#;
    let res = common::exec_with(&r, code, |run| {
        run.input = serde_json::json!({"values": [1, 2, 3, 4, 5], "name": "é"});
        run.max_artifact = 4096;
        run.artifacts_dir = Some(dir.path().to_path_buf());
    });
    assert_eq!(res.status, Status::Succeeded, "{res:?}");
    let mut lines = res.stdout.lines();
    assert_eq!(
        lines.next().unwrap(),
        r#"{"values": [1, 2, 3, 4, 5], "name": "\u00e9"}"#
    );
    assert_eq!(lines.next().unwrap(), "/app 1000 1000 /home/sandbox 20");
    assert!(res.stdout.contains("input ro 30"), "{}", res.stdout); // EROFS
    assert!(res.stdout.contains("code ro 30"), "{}", res.stdout);
    assert_eq!(res.output, Some(serde_json::json!({"mean": 3.0})));
    let mut names: Vec<_> = res.artifacts.iter().map(|a| a.name.as_str()).collect();
    names.sort();
    // big.bin is over the per-file limit; hidden files, directories and symlinks never count.
    assert_eq!(names, ["report.csv", "result.json"]);
    let csv = res
        .artifacts
        .iter()
        .find(|a| a.name == "report.csv")
        .unwrap();
    assert_eq!(csv.size_bytes, 8);
    let on_disk = std::fs::read(dir.path().join("report.csv")).unwrap();
    assert_eq!(on_disk, b"a,b\n1,2\n");
    assert_eq!(csv.sha256, tako_vm::exec::pyjson::sha256_hex(&on_disk));
    assert!(csv.content_type.is_none());
    assert!(!dir.path().join("link").exists() && !dir.path().join("big.bin").exists());
}

#[test]
fn artifact_total_limit_stops_collection() {
    let r = need_rootfs!();
    let code = r#"
for i in range(5):
    open(f"/output/f{i}.bin", "wb").write(b"y" * 3000)
"#;
    let res = common::exec_with(&r, code, |run| run.max_total_artifacts = 7000);
    assert_eq!(res.status, Status::Succeeded, "{res:?}");
    assert_eq!(res.artifacts.len(), 2, "{:?}", res.artifacts);
}

/// Empty files count against no size limit: without a bound on their number, 100 000 of
/// them cost the host 35 s, as many files on its disk and a 17 MB record. Collection stops
/// at `MAX_ARTIFACTS`, and `/output` holds about twice as many entries at most.
#[test]
fn the_number_of_artifacts_and_of_output_entries_is_bounded() {
    let r = need_rootfs!();
    let max = tako_vm::sandbox::spec::MAX_ARTIFACTS;
    let code = r#"
import errno
n = 0
try:
    while True:
        open(f"/output/f{n}", "w").close()
        n += 1
except OSError as e:
    print("made", n, e.errno == errno.ENOSPC)
"#;
    let res = common::exec(&r, code);
    assert_eq!(res.status, Status::Succeeded, "{res:?}");
    assert_eq!(res.artifacts.len(), max as usize);
    let made: Vec<&str> = res.stdout.split_whitespace().collect();
    assert_eq!(made[0], "made", "{}", res.stdout);
    let n: u32 = made[1].parse().unwrap();
    assert!(n > max && n < 3 * max, "{}", res.stdout);
    assert_eq!(made[2], "True", "{}", res.stdout);

    // The bound is the run's (`max_artifacts` in the config).
    let code = "for i in range(20):\n    open(f'/output/f{i}', 'w').close()";
    let res = common::exec_with(&r, code, |run| run.max_artifacts = 5);
    assert_eq!(res.status, Status::Succeeded, "{res:?}");
    assert_eq!(res.artifacts.len(), 5);
}

#[test]
fn non_object_result_json_is_null_output() {
    let r = need_rootfs!();
    let res = common::exec(&r, "open('/output/result.json','w').write('[1, 2]')");
    assert_eq!(res.status, Status::Succeeded);
    assert_eq!(res.output, None);
    assert_eq!(res.artifacts.len(), 1);
}

#[test]
fn classification_rows_reachable_from_python() {
    let r = need_rootfs!();
    let cases: &[(&str, Status, ErrorType, Option<i32>)] = &[
        (
            "def f(:\n  pass",
            Status::Failed,
            ErrorType::SyntaxError,
            Some(1),
        ),
        (
            "import nosuchmodule_xyz",
            Status::Failed,
            ErrorType::ImportError,
            Some(1),
        ),
        ("1/0", Status::Failed, ErrorType::DivisionError, Some(1)),
        ("{}['k']", Status::Failed, ErrorType::KeyError, Some(1)),
        ("[][1]", Status::Failed, ErrorType::IndexError, Some(1)),
        ("None.x", Status::Failed, ErrorType::AttributeError, Some(1)),
        (
            "undefined_name",
            Status::Failed,
            ErrorType::NameError,
            Some(1),
        ),
        ("int('x')", Status::Failed, ErrorType::ValueError, Some(1)),
        (
            "open('/nope')",
            Status::Failed,
            ErrorType::FileNotFound,
            Some(1),
        ),
        (
            "raise MemoryError()",
            Status::Failed,
            ErrorType::Oom,
            Some(1),
        ),
        (
            "import sys; sys.exit(3)",
            Status::Failed,
            ErrorType::RuntimeError,
            Some(3),
        ),
        (
            "import sys; sys.exit(124)",
            Status::Timeout,
            ErrorType::ExecutionTimeout,
            Some(124),
        ),
        (
            "import os; os.kill(os.getpid(), 9)",
            Status::Failed,
            ErrorType::Killed,
            Some(137),
        ),
        (
            "import os; os.kill(os.getpid(), 11)",
            Status::Failed,
            ErrorType::Segfault,
            Some(139),
        ),
        (
            "import os; os.abort()",
            Status::Failed,
            ErrorType::Abort,
            Some(134),
        ),
        (
            "import os; os.kill(os.getpid(), 15)",
            Status::Failed,
            ErrorType::Cancelled,
            Some(143),
        ),
        (
            "def f(): f()\nf()",
            Status::Failed,
            ErrorType::RecursionError,
            Some(1),
        ),
        (
            "open('/etc/shadow')",
            Status::Failed,
            ErrorType::Permission,
            Some(1),
        ),
    ];
    for (code, status, etype, exit) in cases {
        let res = common::exec(&r, code);
        assert_eq!(res.status, *status, "{code}: {res:?}");
        assert_eq!(res.exit_code, *exit, "{code}: {res:?}");
        assert_eq!(
            res.error.as_ref().unwrap().error_type,
            *etype,
            "{code}: {res:?}"
        );
    }
    let res = common::exec(&r, "import sys; sys.exit(3)");
    assert_eq!(res.error.unwrap().message, "Exit code 3");
    let res = common::exec(&r, "1/0");
    assert_eq!(res.error.unwrap().message, "Division by zero");
}

#[test]
fn memory_limit_is_an_oom_from_the_cgroup() {
    let r = need_rootfs!();
    let res = common::exec_with(
        &r,
        "x = bytearray(400 * 1024 * 1024)\nprint('survived')",
        |run| {
            run.limits.memory_bytes = Some(64 << 20);
        },
    );
    assert_eq!(res.status, Status::Oom, "{res:?}");
    assert_eq!(res.exit_code, Some(137));
    let e = res.error.unwrap();
    assert_eq!(e.error_type, ErrorType::Oom);
    assert_eq!(e.message, "Execution exceeded memory limit");
    assert!(!res.stdout.contains("survived"));
}

#[test]
fn timeout_kills_the_whole_tree_including_daemons() {
    let r = need_rootfs!();
    let marker = format!("tako-daemon-{}", std::process::id());
    let code = format!(
        r#"
import os, time, subprocess
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        subprocess.Popen(["sleep", "1000"], start_new_session=True)
        os.execvp("python3", ["python3", "-c", "import time; time.sleep(1000)", "{marker}"])
    os._exit(0)
print("started", flush=True)
time.sleep(1000)
"#
    );
    let t0 = std::time::Instant::now();
    let res = common::exec_with(&r, &code, |run| run.timeout_s = 2);
    assert!(t0.elapsed().as_secs() < 15, "took {:?}", t0.elapsed());
    assert_eq!(res.status, Status::Timeout, "{res:?}");
    assert_eq!(res.exit_code, Some(124));
    assert!(res.stdout.contains("started"));
    let e = res.error.unwrap();
    assert_eq!(e.error_type, ErrorType::ExecutionTimeout);
    assert_eq!(e.phase, Some(Phase::Execution));
    assert!(
        e.message
            .starts_with("Code execution exceeded time limit (2s)"),
        "{}",
        e.message
    );
    assert!(
        common::host_processes_with(&marker).is_empty(),
        "daemon survived the timeout"
    );
}

#[test]
fn leftover_processes_die_with_the_main_process() {
    let r = need_rootfs!();
    let marker = format!("tako-orphan-{}", std::process::id());
    let code = format!(
        "import subprocess\nsubprocess.Popen(['python3','-c','import time; time.sleep(1000)','{marker}'], start_new_session=True)\nprint('bye')"
    );
    let res = common::exec(&r, &code);
    assert_eq!(res.status, Status::Succeeded, "{res:?}");
    assert!(common::host_processes_with(&marker).is_empty());
}

#[test]
fn fork_bomb_is_stopped_by_the_pids_limit() {
    let r = need_rootfs!();
    let code = r#"
import os, time, errno
n = 0
while True:
    try:
        pid = os.fork()
    except OSError as e:
        print("stopped", n, e.errno == errno.EAGAIN)
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    n += 1
"#;
    let res = common::exec_with(&r, code, |run| {
        run.limits.pids = Some(20);
        run.limits.nproc = (1000, 1000);
    });
    assert_eq!(res.status, Status::Succeeded, "{res:?}");
    let line = res
        .stdout
        .lines()
        .find(|l| l.starts_with("stopped"))
        .expect("fork failed");
    let n: u32 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(n < 20, "{line}");
    assert!(line.ends_with("True"), "{line}");
}

#[test]
fn tmp_is_a_small_noexec_tmpfs() {
    let r = need_rootfs!();
    let code = r##"
import os, errno, stat
written = 0
try:
    with open("/tmp/fill", "wb") as f:
        while True:
            f.write(b"z" * 65536); f.flush(); written += 65536
except OSError as e:
    print("full", written, e.errno == errno.ENOSPC)
os.remove("/tmp/fill")
open("/tmp/x.sh", "w").write("#!/bin/sh\necho ran\n")
os.chmod("/tmp/x.sh", 0o755)
try:
    os.execv("/tmp/x.sh", ["/tmp/x.sh"])
except PermissionError:
    print("noexec")
"##;
    let res = common::exec_with(&r, code, |run| run.limits.tmpfs_bytes = 8 << 20);
    assert_eq!(res.status, Status::Succeeded, "{res:?}");
    let line = res.stdout.lines().find(|l| l.starts_with("full")).unwrap();
    let written: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(written <= 8 << 20, "{line}");
    assert!(line.ends_with("True"));
    assert!(res.stdout.contains("noexec"));
}

#[test]
fn huge_stdout_is_truncated_with_bounded_host_memory() {
    let r = need_rootfs!();
    let code = "import sys\nchunk = 'x' * 1048576\nfor _ in range(100):\n    sys.stdout.write(chunk)\nsys.stderr.write('done')";
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("main.py");
    std::fs::write(&f, code).unwrap();
    // Measure the peak RSS of the whole CLI process tree (the supervisor included).
    let out = std::process::Command::new(common::bin())
        .args([
            "run",
            "--rootfs",
            r.to_str().unwrap(),
            "--code",
            f.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(v["stdout_truncated"], true);
    let s = v["stdout"].as_str().unwrap();
    assert!(s.len() <= 65536);
    assert!(s.ends_with("\n\n[TRUNCATED: output exceeded 65536 bytes]"));
    assert_eq!(v["stderr"], "done");
    let max_rss_mb = ru.ru_maxrss / 1024;
    assert!(
        max_rss_mb < 64,
        "peak RSS of a child process was {max_rss_mb} MiB"
    );
}

#[test]
fn prestarted_helpers_run_with_the_limits_of_their_run() {
    let r = need_rootfs!();
    let runner = tako_vm::sandbox::Runner::detect(&tako_vm::sandbox::HostConfig {
        cgroup_parent: "tako-vm-test-pool".into(),
        helper_exe: Some(common::bin()),
        prestart: 2,
        ..Default::default()
    })
    .unwrap();
    let pool = runner.pool.clone().expect("pool");
    for _ in 0..200 {
        if pool.ready() == 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(pool.ready(), 2, "the pool fills up");
    let run = |code: &str, mem: u64| {
        let mut run = tako_vm::exec::runner::CodeRun::new(
            tako_vm::sandbox::host::new_run_id(),
            r.clone(),
            code,
        );
        run.limits.memory_bytes = Some(mem);
        tako_vm::exec::runner::execute(&runner, &run)
    };
    for i in 0..4 {
        let res = run(&format!("print({i} * 2)"), 256 << 20);
        assert_eq!(res.status, Status::Succeeded, "{res:?}");
        assert_eq!(res.stdout, format!("{}\n", i * 2));
    }
    // A pre-started helper gets the limits of the run that takes it.
    let res = run("x = bytearray(300 * 1024 * 1024)", 64 << 20);
    assert_eq!(res.status, Status::Oom, "{res:?}");
    // Closed (a server at shutdown), the pool leaves no helper and no cgroup behind, even
    // one its refill thread was starting just then.
    pool.close();
    assert_eq!(pool.ready(), 0);
    for c in ["memory", "pids"] {
        let dir = std::path::Path::new("/sys/fs/cgroup")
            .join(c)
            .join("tako-vm-test-pool");
        let left: Vec<_> = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name())
                    .collect()
            })
            .unwrap_or_default();
        assert!(left.is_empty(), "{}: {left:?}", dir.display());
    }
}
