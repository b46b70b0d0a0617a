//! The tako-vm execution contract on top of the sandbox: `/code/main.py`, `/input/data.json`,
//! `/output` → `output` and artifacts, the environment of spec §2.1, and the status/error
//! decision of §2.6.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::classify::{self, RunFacts};
use super::pyjson;
use super::record::{Artifact, ExecutionResult, Phase, ResourceUsage, Timing};
use crate::sandbox::spec::{
    InjectedDir, InjectedFile, Layers, Limits, NetworkSpec, OutputSpec, SandboxSpec,
};
use crate::sandbox::{Outcome, RunOptions, Runner, SandboxError};

/// Extra seconds the host waits beyond startup + timeout before killing the sandbox (§6.1).
pub const HOST_GRACE_S: u64 = 5;

/// One execution under the contract.
#[derive(Debug, Clone)]
pub struct CodeRun {
    /// Unique id (cgroup and artifact directory names).
    pub id: String,
    /// Rootfs (image or job-type snapshot).
    pub rootfs: PathBuf,
    /// Layers under `rootfs`, top first (a layered snapshot's base image); empty when
    /// `rootfs` is the whole tree.
    pub lower: Vec<PathBuf>,
    /// The code of `/code/main.py`.
    pub code: String,
    /// `input_data`, written to `/input/data.json` with Python's `json.dumps`.
    pub input: Value,
    /// Execution timeout in seconds.
    pub timeout_s: u64,
    /// Startup timeout in seconds.
    pub startup_timeout_s: u64,
    /// Image and job-type environment, applied under the contract's variables.
    pub env: Vec<(String, String)>,
    /// Limits.
    pub limits: Limits,
    /// stdout cap in bytes (`max_stdout_bytes`).
    pub max_stdout: usize,
    /// stderr cap in bytes (`max_stderr_bytes`).
    pub max_stderr: usize,
    /// Per-artifact limit.
    pub max_artifact: u64,
    /// Total artifact limit.
    pub max_total_artifacts: u64,
    /// At most this many artifacts (`max_artifacts`).
    pub max_artifacts: u32,
    /// Where artifacts are stored (`None`: hashed only).
    pub artifacts_dir: Option<PathBuf>,
    /// Echo stdout/stderr live (CLI).
    pub tee: bool,
    /// Outbound network (job type `network_enabled`); `None`: loopback only.
    pub network: Option<NetworkSpec>,
    /// Cancellation flag: setting it kills the running sandbox (see `RunOptions::cancel`).
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl CodeRun {
    /// Defaults of tako-vm 0.3.0 for everything but id, rootfs and code.
    pub fn new(id: impl Into<String>, rootfs: PathBuf, code: impl Into<String>) -> CodeRun {
        CodeRun {
            id: id.into(),
            rootfs,
            lower: Vec::new(),
            code: code.into(),
            input: Value::Object(Default::default()),
            timeout_s: 30,
            startup_timeout_s: 120,
            env: Vec::new(),
            limits: Limits::default(),
            max_stdout: 65536,
            max_stderr: 65536,
            max_artifact: 10_485_760,
            max_total_artifacts: 52_428_800,
            max_artifacts: crate::sandbox::spec::MAX_ARTIFACTS,
            artifacts_dir: None,
            tee: false,
            network: None,
            cancel: None,
        }
    }
}

/// The environment of user code (§2.1): image defaults, then the contract's variables, then
/// the job type's own `environment` on top. Nothing comes from the host.
pub fn contract_env(run: &CodeRun) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("HOME".into(), "/home/sandbox".into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("PYTHONUNBUFFERED".into(), "1".into()),
        ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
        ("XDG_CACHE_HOME".into(), "/tmp/.cache".into()),
        ("MPLCONFIGDIR".into(), "/tmp/.cache/matplotlib".into()),
        (
            "TAKO_STARTUP_TIMEOUT".into(),
            run.startup_timeout_s.to_string(),
        ),
        ("TAKO_EXECUTION_TIMEOUT".into(), run.timeout_s.to_string()),
    ];
    for (k, v) in &run.env {
        if k == "TAKO_DEPENDENCY_PROXY_URL" {
            continue;
        }
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }
    env
}

/// Builds the sandbox spec of a code run.
pub fn sandbox_spec(run: &CodeRun) -> SandboxSpec {
    SandboxSpec {
        rootfs: run.rootfs.clone(),
        argv: vec!["python3".into(), "-u".into(), "/code/main.py".into()],
        env: contract_env(run),
        cwd: "/app".into(),
        hostname: "tako-sandbox".into(),
        limits: run.limits.clone(),
        injected: vec![
            InjectedDir {
                path: "/code".into(),
                files: vec![InjectedFile {
                    name: "main.py".into(),
                    contents: run.code.as_bytes().to_vec(),
                }],
            },
            InjectedDir {
                path: "/input".into(),
                files: vec![InjectedFile {
                    name: "data.json".into(),
                    contents: pyjson::dumps_ascii(&run.input).into_bytes(),
                }],
            },
        ],
        output: Some(OutputSpec {
            // Room for the total plus file-system overhead; limits are enforced on collection.
            tmpfs_bytes: run.max_total_artifacts + (1 << 20),
            max_file_bytes: run.max_artifact,
            max_total_bytes: run.max_total_artifacts,
            max_files: run.max_artifacts,
        }),
        timeout_ms: run.timeout_s * 1000,
        kill_grace_ms: 1000,
        tmp_dirs: vec!["/tmp/.cache/matplotlib".into()],
        network: run.network.clone(),
        binds: vec![],
        layers: Layers::under(run.lower.clone()),
    }
}

/// Host-side options of a code run.
pub fn run_options(run: &CodeRun) -> RunOptions {
    RunOptions {
        run_id: run.id.clone(),
        host_deadline: Duration::from_secs(run.startup_timeout_s + run.timeout_s + HOST_GRACE_S),
        stdout_keep: run.max_stdout,
        stderr_keep: run.max_stderr,
        tee: run.tee,
        artifacts_dir: run.artifacts_dir.clone(),
        cancel: run.cancel.clone(),
    }
}

/// Runs code under the contract and interprets the outcome.
pub fn execute(runner: &Runner, run: &CodeRun) -> ExecutionResult {
    try_execute(runner, run).unwrap_or_else(|e| sandbox_failure(&e))
}

/// [`execute`], telling a sandbox that could not be started (an infrastructure failure,
/// which a server retries) from a run that happened, whatever its own outcome.
pub fn try_execute(runner: &Runner, run: &CodeRun) -> Result<ExecutionResult, SandboxError> {
    let outcome = runner.run(&sandbox_spec(run), &run_options(run))?;
    Ok(interpret(run, outcome))
}

/// The record of a run whose sandbox could not be started (or no sandbox backend at all).
pub fn sandbox_failure(e: &dyn std::fmt::Display) -> ExecutionResult {
    let (status, err) = classify::service_unavailable(&format!("sandbox unavailable: {e}"));
    ExecutionResult::refused(status, err, Some(-1))
}

/// `output`: the parsed `result.json` when it is a JSON object; anything else is `null`
/// (0.3.0 answered 500 for non-objects; the SDK only works with objects).
pub fn parse_output(bytes: Option<&[u8]>) -> Option<Value> {
    match serde_json::from_slice::<Value>(bytes?) {
        Ok(v @ Value::Object(_)) => Some(v),
        _ => None,
    }
}

/// Turns a sandbox outcome into the record fields of the contract.
pub fn interpret(run: &CodeRun, o: Outcome) -> ExecutionResult {
    let stdout = o.stdout.finish(run.max_stdout);
    let stderr = o.stderr.finish(run.max_stderr);
    let artifacts: Vec<Artifact> = o
        .artifacts
        .iter()
        .map(|a| Artifact {
            name: a.name.clone(),
            size_bytes: a.size,
            sha256: a.sha256.clone(),
            content_type: None,
        })
        .collect();
    let usage = ResourceUsage {
        max_rss_mb: o.usage.max_rss_mb,
        cpu_time_ms: o.usage.cpu_time_ms,
        wall_time_ms: Some(o.total_ms),
    };
    if let Some(msg) = &o.setup_error {
        if o.exit.is_none() {
            let (status, err) = classify::internal_error(&format!("sandbox setup failed: {msg}"));
            let mut r = ExecutionResult::refused(status, err, Some(-1));
            r.stderr = stderr.text;
            r.resource_usage = Some(usage);
            return r;
        }
    }
    let (exit_code, phase) = match &o.exit {
        Some(x) if x.timed_out => (Some(classify::EXIT_TIMEOUT), Some(Phase::Execution)),
        Some(x) => {
            let code = x.code.or(x.signal.map(|s| 128 + s));
            let phase = if code == Some(0) {
                Phase::Completed
            } else {
                Phase::Execution
            };
            (code, Some(phase))
        }
        // The init vanished: killed by the host deadline, or by the kernel (OOM).
        None if o.host_timeout => (
            Some(classify::EXIT_TIMEOUT),
            Some(if o.startup_ms.is_some() {
                Phase::Execution
            } else {
                Phase::Startup
            }),
        ),
        None => (
            Some(classify::EXIT_SIGKILL),
            o.startup_ms.map(|_| Phase::Execution),
        ),
    };
    let execution_ms = o.exit.as_ref().map(|x| x.execution_ms);
    let facts = RunFacts {
        exit_code,
        host_timeout: o.host_timeout,
        phase_at_exit: phase,
        oom_killed: o.usage.oom_killed,
        stderr: &stderr.classify_text,
        startup_ms: o.startup_ms,
        execution_ms,
        timeout_s: run.timeout_s,
        startup_timeout_s: run.startup_timeout_s,
    };
    let (status, error) = classify::decide(&facts);
    ExecutionResult {
        status,
        exit_code,
        stdout: stdout.text,
        stderr: stderr.text,
        stdout_truncated: stdout.truncated,
        stderr_truncated: stderr.truncated,
        output: parse_output(o.result_json.as_deref()),
        artifacts,
        error,
        timing: Some(Timing {
            startup_ms: o.startup_ms,
            dep_install_ms: Some(0),
            execution_ms,
            total_ms: Some(o.total_ms),
            phase_at_exit: phase,
        }),
        resource_usage: Some(usage),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_environment_overrides_defaults_and_proxy_is_removed() {
        let mut run = CodeRun::new("x", "/r".into(), "print(1)");
        run.env = vec![
            ("HOME".into(), "/elsewhere".into()),
            ("OMP_NUM_THREADS".into(), "2".into()),
            ("TAKO_DEPENDENCY_PROXY_URL".into(), "http://p".into()),
        ];
        let env = contract_env(&run);
        assert!(env.contains(&("HOME".into(), "/elsewhere".into())));
        assert!(env.contains(&("OMP_NUM_THREADS".into(), "2".into())));
        assert!(env.iter().all(|(k, _)| k != "TAKO_DEPENDENCY_PROXY_URL"));
        assert_eq!(env.iter().filter(|(k, _)| k == "HOME").count(), 1);
    }

    #[test]
    fn input_is_written_like_python_json_dumps() {
        let mut run = CodeRun::new("x", "/r".into(), "print(1)");
        run.input = serde_json::json!({"b": 1, "a": "é"});
        let spec = sandbox_spec(&run);
        let input = &spec.injected[1].files[0];
        assert_eq!(input.name, "data.json");
        assert_eq!(
            String::from_utf8_lossy(&input.contents),
            r#"{"b": 1, "a": "\u00e9"}"#
        );
        assert_eq!(spec.argv, ["python3", "-u", "/code/main.py"]);
    }

    #[test]
    fn only_json_objects_become_output() {
        assert_eq!(
            parse_output(Some(b"{\"a\": 1}")),
            Some(serde_json::json!({"a": 1}))
        );
        assert_eq!(parse_output(Some(b"[1, 2]")), None);
        assert_eq!(parse_output(Some(b"not json")), None);
        assert_eq!(parse_output(None), None);
    }
}
