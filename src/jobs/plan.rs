//! Deciding how one job runs: job-type resolution (§3.5), timeouts (§1.5.2, §2.6 a/b),
//! requirements (§2.7) and the environment, before any sandbox starts.

use crate::config::{parse_size, Config};
use crate::exec::classify;
use crate::exec::record::{ErrorType, ExecError, ExecutionResult, Status};
use crate::sandbox::spec::{Limits, NetworkSpec};
use crate::store::JobRequest;

use super::env::{EnvError, Environments, ResolvedEnv};
use super::registry::{self, JobType, Registry};

/// Maximum number of runtime requirements.
pub const MAX_REQUIREMENTS: usize = 50;

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

/// A valid pip requirement (§2.7).
pub fn valid_requirement(r: &str) -> bool {
    let n = r.chars().count();
    if n == 0 || n > 256 {
        return false;
    }
    for bad in [
        "\n", "\r", "`", "$", "\\", "#", ";", "&&", "||", "/", "@", " ",
    ] {
        if r.contains(bad) {
            return false;
        }
    }
    let name_char = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
    let name_end = r.find(|c: char| !name_char(c)).unwrap_or(r.len());
    if name_end == 0 {
        return false;
    }
    let mut rest = &r[name_end..];
    if let Some(x) = rest.strip_prefix('[') {
        let Some(close) = x.find(']') else {
            return false;
        };
        if !x[..close]
            .split(',')
            .all(|e| !e.is_empty() && e.chars().all(name_char))
        {
            return false;
        }
        rest = &x[close + 1..];
    }
    if rest.is_empty() {
        return true;
    }
    rest.split(',').all(|spec| {
        let op_end = spec
            .find(|c: char| !"<>=!~".contains(c))
            .unwrap_or(spec.len());
        let ver = &spec[op_end..];
        op_end > 0
            && !ver.is_empty()
            && ver
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".*+!-".contains(c))
    })
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

/// Plans one job.
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
    let resolved = envs.resolve(&jt, !production);
    let mut effective: Vec<String> = Vec::new();
    let env = match resolved {
        Ok(env) => Some(env),
        Err(EnvError::NotBuilt(name)) if production => {
            let (s, e) = classify::config_error(EnvError::NotBuilt(name).to_string());
            return Plan::Refuse {
                result: ExecutionResult::refused(s, e, None),
                started: false,
            };
        }
        Err(EnvError::NotBuilt(_)) => {
            effective.extend(jt.requirements.iter().cloned());
            None
        }
        Err(e) => {
            let (s, err) = classify::service_unavailable(&e.to_string());
            return Plan::Refuse {
                result: ExecutionResult::refused(s, err, Some(classify::EXIT_REFUSED)),
                started: true,
            };
        }
    };
    effective.extend(req.requirements.iter().flatten().cloned());
    if !effective.is_empty() {
        let msg = if !cfg.allow_runtime_requirements {
            RUNTIME_REQS_DISABLED.to_string()
        } else if effective.len() > MAX_REQUIREMENTS {
            format!(
                "Too many requirements ({} > {MAX_REQUIREMENTS})",
                effective.len()
            )
        } else if let Some(bad) = effective.iter().find(|r| !valid_requirement(r)) {
            format!("Invalid pip requirement: {}", python_repr(bad))
        } else {
            "Runtime dependency installation is not available in this server yet. Pre-build the job type instead.".to_string()
        };
        return Plan::Refuse {
            result: runtime_refusal(&msg),
            started: true,
        };
    }
    let Some(env) = env else {
        let e = ExecError::new(ErrorType::InternalError, "no environment resolved", None);
        return Plan::Refuse {
            result: ExecutionResult::refused(Status::Failed, e, Some(-1)),
            started: true,
        };
    };
    Plan::Run(Ready {
        timeout_s: timeout,
        startup_timeout_s: startup,
        limits: limits_for(&jt, cfg),
        network: jt.network_enabled.then(NetworkSpec::default),
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
