//! Deciding how one job runs: job-type resolution (§3.5), timeouts (§1.5.2, §2.6 a/b),
//! requirements (§2.7) and the environment, before any sandbox starts.

use crate::config::{parse_size, Config};
use crate::exec::classify;
use crate::exec::record::{ErrorType, ExecError, ExecutionResult, Status};
use crate::exec::sanitize::sanitize;
use crate::sandbox::spec::{Limits, NetworkSpec};
use crate::store::JobRequest;

use super::env::{EnvError, Environments, ResolvedEnv};
use super::registry::{self, JobType, Registry};

/// Maximum number of runtime requirements.
pub const MAX_REQUIREMENTS: usize = rootfs_builder::requirements::MAX_REQUIREMENTS;

/// The refusal text when runtime requirements are needed but disabled (§2.6).
pub const RUNTIME_REQS_DISABLED: &str = "Runtime dependency installation is disabled. Use pre-built images or set allow_runtime_requirements=True.";

/// Record identity of a job: resolved job type name and `job_ref`.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// Resolved name (`default` for fallbacks; the raw string for production refusals).
    pub job_type: String,
    /// `<raw or default>@latest`.
    pub job_ref: String,
}

/// A job ready to run in a sandbox.
#[derive(Debug, Clone)]
pub struct Ready {
    /// Execution timeout (s).
    pub timeout_s: u64,
    /// Startup timeout (s).
    pub startup_timeout_s: u64,
    /// Limits.
    pub limits: Limits,
    /// Network for `network_enabled` job types.
    pub network: Option<NetworkSpec>,
    /// Rootfs and environment.
    pub env: ResolvedEnv,
}

/// The decision for one job.
#[derive(Debug, Clone)]
pub enum Plan {
    /// Run it.
    Run(Ready),
    /// Refused before any sandbox; `started` tells whether `started_at` is set (§2.8).
    Refuse {
        /// The refusal result.
        result: ExecutionResult,
        /// `started_at` is recorded (false for §2.6 a/b).
        started: bool,
    },
}

/// Resolves the record identity of a request (§3.5).
pub fn identity(req: &JobRequest, reg: &Registry, production: bool) -> Identity {
    match &req.job_type {
        None => Identity {
            job_type: "default".into(),
            job_ref: "default@latest".into(),
        },
        Some(raw) => {
            let name = raw.split('@').next().unwrap_or("");
            let job_type = if reg.get(name).is_some() {
                name.to_string()
            } else if production {
                raw.clone()
            } else {
                "default".into()
            };
            Identity {
                job_type,
                job_ref: format!("{raw}@latest"),
            }
        }
    }
}

/// The effective timeout of a request (§1.5.2): request, else job type (when named and
/// known), else `default_timeout`; `None` for unknown job types (no check).
pub fn effective_timeout(
    timeout: Option<u64>,
    job_type: Option<&str>,
    reg: &Registry,
    cfg: &Config,
) -> Option<u64> {
    if let Some(t) = timeout {
        return Some(t);
    }
    match job_type {
        None => Some(cfg.default_timeout as u64),
        Some(raw) => {
            let name = raw.split('@').next().unwrap_or("");
            reg.get(name).map(|jt| jt.timeout as u64)
        }
    }
}

/// The ceiling check of §1.5.2: `Err(detail)` when over `max_timeout`.
pub fn check_timeout_ceiling(
    timeout: Option<u64>,
    job_type: Option<&str>,
    reg: &Registry,
    cfg: &Config,
) -> Result<(), String> {
    match effective_timeout(timeout, job_type, reg, cfg) {
        Some(t) if t > cfg.max_timeout as u64 => Err(format!(
            "{}timeout must be less than or equal to the configured max_timeout ({} seconds)",
            if timeout.is_some() { "" } else { "effective " },
            cfg.max_timeout
        )),
        _ => Ok(()),
    }
}

/// A valid pip requirement (§2.7): the grammar the snapshot builder enforces.
pub fn valid_requirement(r: &str) -> bool {
    rootfs_builder::requirements::validate_requirement(r).is_ok()
}

/// The §2.6 refusal of per-request `requirements`, if any: disabled, too many, invalid.
/// They are installed into a cached ad-hoc snapshot, not at run time, so the job type's
/// own (baked) requirements never count.
pub fn requirements_refusal(extra: &[String], cfg: &Config) -> Option<String> {
    if extra.is_empty() {
        None
    } else if !cfg.allow_runtime_requirements {
        Some(RUNTIME_REQS_DISABLED.to_string())
    } else if extra.len() > MAX_REQUIREMENTS {
        Some(format!(
            "Too many requirements ({} > {MAX_REQUIREMENTS})",
            extra.len()
        ))
    } else {
        extra
            .iter()
            .find(|r| !valid_requirement(r))
            .map(|bad| format!("Invalid pip requirement: {}", python_repr(bad)))
    }
}

fn python_repr(s: &str) -> String {
    if s.contains('\'') && !s.contains('"') {
        format!("\"{s}\"")
    } else {
        format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

/// A refusal that goes through classification with `exit_code: -1` and the text as stderr.
pub fn runtime_refusal(msg: &str) -> ExecutionResult {
    let (t, m) = classify::classify(classify::EXIT_REFUSED, msg);
    let mut r = ExecutionResult::refused(
        Status::Failed,
        ExecError::new(t, m, None),
        Some(classify::EXIT_REFUSED),
    );
    r.stderr = msg.to_string();
    r
}

fn limits_for(jt: &JobType, cfg: &Config) -> Limits {
    let cl = &cfg.container_limits;
    Limits {
        memory_bytes: parse_size(&jt.memory_limit),
        cpus: Some(jt.cpu_limit),
        pids: Some(cl.pids_limit as u64),
        nofile: (cl.nofile_soft as u64, cl.nofile_hard as u64),
        nproc: (cl.nproc_soft as u64, cl.nproc_hard as u64),
        fsize: cl.fsize as u64,
        tmpfs_bytes: parse_size(&cl.tmpfs_size).unwrap_or(100 << 20),
    }
}

/// Plans one job. Blocking: in development mode the job type's snapshot (or the ad-hoc
/// snapshot of per-request requirements) may be built first.
pub fn plan(req: &JobRequest, reg: &Registry, envs: &dyn Environments, cfg: &Config) -> Plan {
    let production = cfg.production_mode;
    let (jt, named) = match &req.job_type {
        None => (registry::request_default(cfg), false),
        Some(raw) => {
            let name = raw.split('@').next().unwrap_or("");
            match reg.get(name) {
                Some(jt) => (jt.clone(), true),
                None if production => {
                    let (s, e) = classify::config_error(format!(
                        "Job type '{raw}' not found (production mode)"
                    ));
                    return Plan::Refuse {
                        result: ExecutionResult::refused(s, e, None),
                        started: false,
                    };
                }
                None => (registry::request_default(cfg), false),
            }
        }
    };
    let timeout = req.timeout.unwrap_or(if named {
        jt.timeout as u64
    } else {
        cfg.default_timeout as u64
    });
    if timeout > cfg.max_timeout as u64 {
        let (s, e) = classify::config_error(format!(
            "effective timeout must be less than or equal to the configured max_timeout ({} seconds)",
            cfg.max_timeout
        ));
        return Plan::Refuse {
            result: ExecutionResult::refused(s, e, None),
            started: false,
        };
    }
    let startup = req.startup_timeout.unwrap_or(jt.startup_timeout as u64);
    let extra: &[String] = req.requirements.as_deref().unwrap_or_default();
    if let Some(msg) = requirements_refusal(extra, cfg) {
        return Plan::Refuse {
            result: runtime_refusal(&msg),
            started: true,
        };
    }
    let resolved = if named && production {
        // Production mode: job types must be pre-built (the job-types doc).
        envs.resolve(&jt, false).and_then(|env| {
            if extra.is_empty() {
                Ok(env)
            } else {
                envs.resolve_with_requirements(&jt, extra)
            }
        })
    } else if !extra.is_empty() {
        envs.resolve_with_requirements(&jt, extra)
    } else if named {
        envs.resolve(&jt, true)
    } else {
        envs.resolve_default(&jt)
    };
    let env = match resolved {
        Ok(env) => env,
        Err(e @ EnvError::NotBuilt(_)) => {
            let (s, e) = classify::config_error(e.to_string());
            return Plan::Refuse {
                result: ExecutionResult::refused(s, e, None),
                started: false,
            };
        }
        Err(EnvError::Build(msg)) => {
            let e = ExecError::new(ErrorType::DependencyError, sanitize(&msg), None);
            let mut result =
                ExecutionResult::refused(Status::Failed, e, Some(classify::EXIT_REFUSED));
            result.stderr = msg;
            return Plan::Refuse {
                result,
                started: true,
            };
        }
        Err(e) => {
            let (s, err) = classify::service_unavailable(&e.to_string());
            return Plan::Refuse {
                result: ExecutionResult::refused(s, err, Some(classify::EXIT_REFUSED)),
                started: true,
            };
        }
    };
    Plan::Run(Ready {
        timeout_s: timeout,
        startup_timeout_s: startup,
        limits: limits_for(&jt, cfg),
        network: jt.network_enabled.then(|| NetworkSpec {
            allowed_hosts: jt.allowed_hosts.clone(),
        }),
        env,
    })
}

/// The watchdog budget of §4.2: startup + timeout (request, else named job type, else
/// 120/30) + 60 s.
pub fn watchdog_budget_s(req: &JobRequest, reg: &Registry) -> u64 {
    let jt = req
        .job_type
        .as_deref()
        .and_then(|raw| reg.get(raw.split('@').next().unwrap_or("")));
    let t = req
        .timeout
        .unwrap_or_else(|| jt.map_or(30, |j| j.timeout as u64));
    let s = req
        .startup_timeout
        .unwrap_or_else(|| jt.map_or(120, |j| j.startup_timeout as u64));
    s + t + 60
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirement_grammar() {
        for ok in ["numpy", "pandas>=2.0", "a[b,c]==1.0,<2", "x_y.z~=1.4"] {
            assert!(valid_requirement(ok), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "x;rm",
            "git+https://x",
            "a@b",
            "==1",
            "a>=",
            "a$",
        ] {
            assert!(!valid_requirement(bad), "{bad}");
        }
        assert_eq!(python_repr("a b"), "'a b'");
        assert_eq!(python_repr("it's"), "\"it's\"");
    }

    /// Environments that record what the plan asked for.
    #[derive(Default)]
    struct Fake {
        calls: std::sync::Mutex<Vec<String>>,
    }

    impl Environments for Fake {
        fn resolve(&self, jt: &JobType, may_build: bool) -> Result<ResolvedEnv, EnvError> {
            self.log(format!("resolve {} {may_build}", jt.name));
            match jt.name.as_str() {
                "broken" => Err(EnvError::Build("uv: no solution for nope".into())),
                "built" => Ok(env()),
                n if !may_build => Err(EnvError::NotBuilt(n.into())),
                _ => Ok(env()),
            }
        }
        fn status(&self, _: &JobType) -> super::super::SnapshotState {
            super::super::SnapshotState::NotBuilt
        }
        fn build(&self, _: &JobType) -> Result<super::super::BuildInfo, EnvError> {
            Err(EnvError::Unavailable("no".into()))
        }
        fn resolve_default(&self, jt: &JobType) -> Result<ResolvedEnv, EnvError> {
            self.log(format!("default {}", jt.name));
            Ok(env())
        }
        fn resolve_with_requirements(
            &self,
            jt: &JobType,
            extra: &[String],
        ) -> Result<ResolvedEnv, EnvError> {
            self.log(format!("adhoc {} {}", jt.name, extra.join(",")));
            Ok(env())
        }
    }

    impl Fake {
        fn log(&self, s: String) {
            self.calls.lock().unwrap().push(s);
        }
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.calls.lock().unwrap())
        }
    }

    fn env() -> ResolvedEnv {
        ResolvedEnv {
            rootfs: "/r".into(),
            lower: vec![],
            env: vec![],
            digest: None,
            hold: None,
        }
    }

    fn req(job_type: Option<&str>, reqs: Option<&[&str]>) -> JobRequest {
        JobRequest {
            code: "print(1)".into(),
            input: serde_json::json!({}),
            timeout: None,
            startup_timeout: None,
            job_type: job_type.map(Into::into),
            requirements: reqs.map(|r| r.iter().map(|s| s.to_string()).collect()),
        }
    }

    fn refusal(p: Plan) -> (ExecutionResult, bool) {
        match p {
            Plan::Refuse { result, started } => (result, started),
            Plan::Run(_) => panic!("expected a refusal"),
        }
    }

    #[test]
    fn environments_asked_per_mode_and_requirements() {
        let mut cfg = Config::default();
        let mut net = JobType::named("net");
        net.network_enabled = true;
        net.allowed_hosts = vec!["pypi.org".into()];
        cfg.job_types = vec![net, JobType::named("broken"), JobType::named("built")];
        let reg = Registry::load_from(std::path::Path::new("/nonexistent"), &cfg);
        let f = Fake::default();
        assert!(matches!(
            plan(&req(None, None), &reg, &f, &cfg),
            Plan::Run(_)
        ));
        assert!(matches!(
            plan(&req(Some("nope"), None), &reg, &f, &cfg),
            Plan::Run(_)
        ));
        let Plan::Run(r) = plan(&req(Some("net"), None), &reg, &f, &cfg) else {
            panic!()
        };
        assert_eq!(r.network.unwrap().allowed_hosts, ["pypi.org"]);
        assert_eq!(
            f.take(),
            ["default default", "default default", "resolve net true"]
        );

        // Per-request requirements: refused as in 0.3.0 unless allowed, then ad-hoc.
        let six = Some(&["six"][..]);
        let (r, started) = refusal(plan(&req(Some("data-processing"), six), &reg, &f, &cfg));
        assert_eq!(r.error.unwrap().message, RUNTIME_REQS_DISABLED);
        assert_eq!(
            (r.exit_code, r.stderr.as_str(), started),
            (Some(-1), RUNTIME_REQS_DISABLED, true)
        );
        assert!(f.take().is_empty());
        cfg.allow_runtime_requirements = true;
        assert!(matches!(
            plan(&req(None, six), &reg, &f, &cfg),
            Plan::Run(_)
        ));
        assert!(matches!(
            plan(&req(None, Some(&[])), &reg, &f, &cfg),
            Plan::Run(_)
        ));
        let (r, _) = refusal(plan(&req(None, Some(&["a b"])), &reg, &f, &cfg));
        assert_eq!(r.error.unwrap().message, "Invalid pip requirement: 'a b'");
        let many: Vec<&str> = vec!["six"; 51];
        let (r, _) = refusal(plan(&req(None, Some(&many)), &reg, &f, &cfg));
        assert_eq!(r.error.unwrap().message, "Too many requirements (51 > 50)");
        assert_eq!(f.take(), ["adhoc default six", "default default"]);

        // A failed build is a dependency error with uv's message.
        let (r, started) = refusal(plan(&req(Some("broken"), None), &reg, &f, &cfg));
        let e = r.error.unwrap();
        assert_eq!(
            (e.error_type, e.message.as_str(), started),
            (ErrorType::DependencyError, "uv: no solution for nope", true)
        );

        // Production mode: only built job types, then the ad-hoc snapshot.
        cfg.production_mode = true;
        f.take();
        let (r, started) = refusal(plan(&req(Some("net"), None), &reg, &f, &cfg));
        let e = r.error.unwrap();
        assert_eq!(e.error_type, ErrorType::ConfigError);
        assert!(e.message.contains("tako-vm build net"), "{}", e.message);
        assert!(!started && r.exit_code.is_none());
        assert!(matches!(
            plan(&req(Some("built"), six), &reg, &f, &cfg),
            Plan::Run(_)
        ));
        assert_eq!(
            f.take(),
            [
                "resolve net false",
                "resolve built false",
                "adhoc built six"
            ]
        );
    }

    #[test]
    fn ceiling_messages() {
        let cfg = Config::default();
        let reg = Registry::load_from(std::path::Path::new("/nonexistent"), &cfg);
        assert!(check_timeout_ceiling(Some(300), None, &reg, &cfg).is_ok());
        assert_eq!(
            check_timeout_ceiling(Some(301), None, &reg, &cfg).unwrap_err(),
            "timeout must be less than or equal to the configured max_timeout (300 seconds)"
        );
        let mut small = cfg.clone();
        small.max_timeout = 100;
        assert_eq!(
            check_timeout_ceiling(None, Some("ml-inference@v1"), &reg, &small).unwrap_err(),
            "effective timeout must be less than or equal to the configured max_timeout (100 seconds)"
        );
        assert!(check_timeout_ceiling(None, Some("unknown"), &reg, &small).is_ok());
    }
}
