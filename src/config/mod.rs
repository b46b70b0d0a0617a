//! Configuration: `tako_vm.yaml` (spec §5).
//!
//! Loading is: find the file ([`find_config_file`]), parse it with unknown keys rejected,
//! apply the environment overrides of §5.3 ([`apply_env`]), then validate every bound and
//! cross-field rule ([`Config::validate`]). Errors read
//! `Invalid configuration: field <dotted.path>: <message>; field …` and never echo values.
//!
//! Docker-only keys of 0.3.0 (`docker_image`, `container_runtime`, `security_mode`,
//! `enable_seccomp`, `enable_cap_restrictions`, `enable_userns`, `seccomp_profile_path`)
//! load and validate as before but are ignored by our sandbox, which always applies its
//! full posture (see `docs/server.md`). `database_url` is validated; a `sqlite://PATH` value
//! selects the SQLite file, a PostgreSQL URL is accepted and ignored until that backend exists.
//!
//! Our extensions (documented, optional): `base_rootfs`, `cgroup_parent`, `network_pool`,
//! `allow_unlimited_sandboxes`, `shutdown_grace_seconds`, the image settings
//! (`registry_mirror`, `insecure_registries`, `registry_username`, `registry_password`,
//! `registry_auth_host`, `uv_path`, `image_store`; see `images`) and the job-type key
//! `allowed_hosts`.

mod env;
mod images;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use env::apply_env;
pub use validate::{is_loopback, job_type_errors, BIND_GUARD_MESSAGE};

/// Configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--config FILE` names a missing file.
    #[error("Config file not found: {0}")]
    NotFound(String),
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// YAML syntax, type errors or unknown keys.
    #[error("Invalid configuration: {0}")]
    Parse(String),
    /// Bounds and cross-field rules (already formatted `field x: msg; field y: msg`).
    #[error("Invalid configuration: {0}")]
    Invalid(String),
    /// An environment override could not be parsed.
    #[error("Invalid configuration: {var} must be an integer (got '{value}')")]
    EnvInt {
        /// Variable name.
        var: String,
        /// Raw value.
        value: String,
    },
}

/// `container_limits` (spec §5.2).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ContainerLimits {
    /// RLIMIT_NOFILE soft.
    pub nofile_soft: i64,
    /// RLIMIT_NOFILE hard.
    pub nofile_hard: i64,
    /// RLIMIT_NPROC soft.
    pub nproc_soft: i64,
    /// RLIMIT_NPROC hard.
    pub nproc_hard: i64,
    /// RLIMIT_FSIZE bytes.
    pub fsize: i64,
    /// `/tmp` tmpfs size (`100m`).
    pub tmpfs_size: String,
    /// cgroup pids.max.
    pub pids_limit: i64,
}

impl Default for ContainerLimits {
    fn default() -> Self {
        ContainerLimits {
            nofile_soft: 256,
            nofile_hard: 256,
            nproc_soft: 50,
            nproc_hard: 50,
            fsize: 104_857_600,
            tmpfs_size: "100m".into(),
            pids_limit: 100,
        }
    }
}

/// GPU settings of a job type (metadata only, as in 0.3.0).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GpuConfig {
    /// GPU requested.
    pub enabled: bool,
    /// `nvidia` or `amd`.
    pub vendor: Option<String>,
    /// Number of GPUs (nvidia only).
    pub count: Option<i64>,
    /// Explicit device ids.
    pub device_ids: Vec<String>,
}

/// One job type as written in the config file or the registry file (spec §3.1).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JobTypeConfig {
    /// Unique name.
    pub name: String,
    /// pip requirements baked into the snapshot.
    #[serde(default)]
    pub requirements: Vec<String>,
    /// Python version of the base image.
    #[serde(default = "default_python")]
    pub python_version: String,
    /// Custom base image.
    #[serde(default)]
    pub base_image: Option<String>,
    /// Host files copied into the snapshot.
    #[serde(default)]
    pub shared_code: Vec<String>,
    /// Environment variables.
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// Memory limit (`512m`, `1g`).
    #[serde(default = "default_memory")]
    pub memory_limit: String,
    /// CPU cores.
    #[serde(default = "default_cpu")]
    pub cpu_limit: f64,
    /// Default execution timeout (s).
    #[serde(default = "default_jt_timeout")]
    pub timeout: i64,
    /// Default startup timeout (s).
    #[serde(default = "default_jt_startup")]
    pub startup_timeout: i64,
    /// Outbound network.
    #[serde(default)]
    pub network_enabled: bool,
    /// Extension: with `network_enabled`, only these destinations are reachable (domain
    /// names, IPv4 addresses or IPv4 CIDRs); empty: the public internet.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Sessions (metadata only).
    #[serde(default)]
    pub session_enabled: bool,
    /// GPU (metadata only).
    #[serde(default)]
    pub gpu: GpuConfig,
}

fn default_python() -> String {
    "3.11".into()
}
fn default_memory() -> String {
    "512m".into()
}
fn default_cpu() -> f64 {
    1.0
}
fn default_jt_timeout() -> i64 {
    30
}
fn default_jt_startup() -> i64 {
    120
}

impl JobTypeConfig {
    /// A job type with every default and the given name.
    pub fn named(name: &str) -> JobTypeConfig {
        JobTypeConfig {
            name: name.into(),
            requirements: vec![],
            python_version: default_python(),
            base_image: None,
            shared_code: vec![],
            environment: BTreeMap::new(),
            memory_limit: default_memory(),
            cpu_limit: default_cpu(),
            timeout: default_jt_timeout(),
            startup_timeout: default_jt_startup(),
            network_enabled: false,
            allowed_hosts: vec![],
            session_enabled: false,
            gpu: GpuConfig::default(),
        }
    }
}

/// The whole configuration (spec §5.2 plus our extensions).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Production mode (§3.6 and the job-types doc).
    pub production_mode: bool,
    /// Log level.
    pub log_level: String,
    /// Bind host.
    pub server_host: String,
    /// Escape hatch of the bind guard.
    pub allow_unauthenticated_network_access: bool,
    /// Bind port.
    pub server_port: i64,
    /// HTTP body limit.
    pub api_max_payload_bytes: i64,
    /// API key authentication.
    pub api_auth_enabled: bool,
    /// Accepted API keys.
    pub api_keys: Vec<String>,
    /// Header carrying the API key.
    pub api_auth_header: String,
    /// Rate limiting.
    pub api_rate_limit_enabled: bool,
    /// Requests per window.
    pub api_rate_limit_requests: i64,
    /// Window length (s).
    pub api_rate_limit_window_seconds: i64,
    /// Attempts per execution on infrastructure failures.
    pub max_retry_attempts: i64,
    /// Base of the exponential retry back-off (s).
    pub retry_base_delay: f64,
    /// Worker poll interval (s).
    pub queue_wait_timeout: f64,
    /// Data directory (records, artifacts).
    #[serde(alias = "data_dir_str")]
    pub data_dir: Option<PathBuf>,
    /// Database URL (`sqlite://PATH` or an ignored PostgreSQL URL).
    pub database_url: String,
    /// \[Docker\] seccomp profile; ignored (our policy is compiled in).
    #[serde(alias = "seccomp_profile_path_str")]
    pub seccomp_profile_path: Option<PathBuf>,
    /// Concurrent async executions.
    pub max_workers: i64,
    /// Queue capacity.
    pub max_queue_size: i64,
    /// stdout cap.
    pub max_stdout_bytes: i64,
    /// stderr cap.
    pub max_stderr_bytes: i64,
    /// Per-artifact cap.
    pub max_artifact_bytes: i64,
    /// Total artifact cap.
    pub max_total_artifacts_bytes: i64,
    /// At most this many artifacts per run (beyond 0.3.0, which bounds only their bytes:
    /// empty files are free there). `/output` holds about twice as many entries.
    pub max_artifacts: i64,
    /// Unnamed snapshots kept (the most recently used) after a runtime-requirement build
    /// (beyond 0.3.0): every distinct `requirements` list makes one.
    pub max_requirement_snapshots: i64,
    /// Not enforced (as in 0.3.0).
    pub max_input_bytes: i64,
    /// Not enforced (as in 0.3.0).
    pub max_code_bytes: i64,
    /// Timeout when the request names no job type.
    pub default_timeout: i64,
    /// Unused at runtime (as in 0.3.0).
    pub default_startup_timeout: i64,
    /// Ceiling on effective timeouts.
    pub max_timeout: i64,
    /// Cleanup ages only.
    pub max_startup_timeout: i64,
    /// Runtime requirement installation.
    pub allow_runtime_requirements: bool,
    /// Egress proxy for runtime installs.
    pub dependency_proxy_url: Option<String>,
    /// Shared uv cache for runtime installs.
    pub enable_runtime_dependency_cache: bool,
    /// Sessions (no endpoints).
    pub sessions_enabled: bool,
    /// Session idle timeout.
    pub session_idle_timeout_seconds: i64,
    /// Session TTL.
    pub session_max_ttl_seconds: i64,
    /// Concurrent sessions.
    pub session_max_concurrent: i64,
    /// Record retention (days).
    pub execution_record_ttl_days: i64,
    /// DLQ retention (days).
    pub dlq_ttl_days: i64,
    /// \[Docker\] ignored.
    pub docker_image: String,
    /// \[Docker\] ignored: seccomp is always on.
    pub enable_seccomp: bool,
    /// \[Docker\] ignored: capabilities are always dropped.
    pub enable_cap_restrictions: bool,
    /// \[Docker\] ignored: user namespaces are always used.
    pub enable_userns: bool,
    /// \[Docker\] `runsc`/`runc`; ignored (reported runtime is `runc`).
    pub container_runtime: String,
    /// \[Docker\] `strict`/`permissive`; ignored (our posture is fixed).
    pub security_mode: String,
    /// Sandbox rlimits and sizes.
    pub container_limits: ContainerLimits,
    /// Job types.
    pub job_types: Vec<JobTypeConfig>,
    /// Extension: rootfs serving job types without requirements (env `TAKO_VM_BASE_ROOTFS`).
    pub base_rootfs: Option<PathBuf>,
    /// Extension: parent cgroup of the runs.
    pub cgroup_parent: String,
    /// Extension: IPv4 pool of network-enabled runs, one /30 each (`TAKO_VM_NETWORK_POOL`);
    /// validated by [`crate::sandbox::net::parse_pool`].
    pub network_pool: String,
    /// Extension: run without cgroup limits when none is usable (explicit opt-in).
    pub allow_unlimited_sandboxes: bool,
    /// Extension: seconds running jobs get on SIGTERM before they are killed.
    pub shutdown_grace_seconds: i64,
    /// Extension: send docker.io pulls to this registry (`TAKO_VM_REGISTRY_MIRROR`).
    pub registry_mirror: Option<String>,
    /// Extension: registries reachable over plain HTTP besides loopback ones
    /// (`TAKO_VM_INSECURE_REGISTRIES`, comma-separated).
    pub insecure_registries: Vec<String>,
    /// Extension: registry user name (`TAKO_VM_REGISTRY_USERNAME`).
    pub registry_username: Option<String>,
    /// Extension: registry password or token (`TAKO_VM_REGISTRY_PASSWORD`); never printed.
    pub registry_password: Option<Secret>,
    /// Extension: the registry host the credentials are for (`TAKO_VM_REGISTRY_AUTH_HOST`;
    /// default: every registry).
    pub registry_auth_host: Option<String>,
    /// Extension: the uv binary of snapshot builds (`TAKO_VM_UV_PATH`; default: `uv` on `PATH`).
    pub uv_path: Option<PathBuf>,
    /// Extension: the image and snapshot store (`TAKO_VM_IMAGE_STORE`; default:
    /// `/var/lib/tako-vm` as root, else `~/.local/share/tako-vm`).
    pub image_store: Option<PathBuf>,
}

/// A secret string (a registry password): read from the config, shown as `***` by `Debug`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    /// The secret itself (for the registry client only).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            production_mode: false,
            log_level: "INFO".into(),
            server_host: "127.0.0.1".into(),
            allow_unauthenticated_network_access: false,
            server_port: 8000,
            api_max_payload_bytes: 2_097_152,
            api_auth_enabled: false,
            api_keys: vec![],
            api_auth_header: "X-API-Key".into(),
            api_rate_limit_enabled: true,
            api_rate_limit_requests: 120,
            api_rate_limit_window_seconds: 60,
            max_retry_attempts: 2,
            retry_base_delay: 1.0,
            queue_wait_timeout: 1.0,
            data_dir: None,
            database_url: "postgresql://postgres:postgres@localhost:5432/tako_vm".into(),
            seccomp_profile_path: None,
            max_workers: 4,
            max_queue_size: 100,
            max_stdout_bytes: 65536,
            max_stderr_bytes: 65536,
            max_artifact_bytes: 10_485_760,
            max_total_artifacts_bytes: 52_428_800,
            max_artifacts: crate::sandbox::spec::MAX_ARTIFACTS as i64,
            max_requirement_snapshots: rootfs_builder::snapshot::KEEP_UNNAMED as i64,
            max_input_bytes: 1_048_576,
            max_code_bytes: 102_400,
            default_timeout: 30,
            default_startup_timeout: 120,
            max_timeout: 300,
            max_startup_timeout: 600,
            allow_runtime_requirements: false,
            dependency_proxy_url: None,
            enable_runtime_dependency_cache: false,
            sessions_enabled: false,
            session_idle_timeout_seconds: 1800,
            session_max_ttl_seconds: 86400,
            session_max_concurrent: 50,
            execution_record_ttl_days: 30,
            dlq_ttl_days: 30,
            docker_image: "code-executor:latest".into(),
            enable_seccomp: true,
            enable_cap_restrictions: true,
            enable_userns: false,
            container_runtime: "runsc".into(),
            security_mode: "strict".into(),
            container_limits: ContainerLimits::default(),
            job_types: vec![],
            base_rootfs: None,
            cgroup_parent: "tako-vm".into(),
            network_pool: "10.200.0.0/16".into(),
            allow_unlimited_sandboxes: false,
            shutdown_grace_seconds: 30,
            registry_mirror: None,
            insecure_registries: vec![],
            registry_username: None,
            registry_password: None,
            registry_auth_host: None,
            uv_path: None,
            image_store: None,
        }
    }
}

/// The rootfs fixture used as the default base rootfs when present.
pub const FIXTURE_ROOTFS: &str = "/var/cache/tako-vm/fixtures/rootfs-py311";

/// Default data directory: `$XDG_DATA_HOME/tako_vm`, else `~/.tako_vm`.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("tako_vm");
    }
    home_dir().join(".tako_vm")
}

fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// Directory of the registry file (§3.2): `TAKO_VM_DATA_DIR`, else the default data dir.
pub fn registry_dir() -> PathBuf {
    match std::env::var_os("TAKO_VM_DATA_DIR").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => default_data_dir(),
    }
}

/// The config file to load: `explicit` (must exist) → `TAKO_VM_CONFIG` (if it exists) →
/// `./tako_vm.yaml` → `./config/tako_vm.yaml` → `~/.tako_vm/config.yaml` →
/// `/etc/tako_vm/config.yaml`; `None` means built-in defaults.
pub fn find_config_file(explicit: Option<&Path>) -> Result<Option<PathBuf>, ConfigError> {
    if let Some(p) = explicit {
        if !p.is_file() {
            return Err(ConfigError::NotFound(p.display().to_string()));
        }
        return Ok(Some(p.to_path_buf()));
    }
    if let Some(p) = std::env::var_os("TAKO_VM_CONFIG").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(Some(p));
        }
    }
    let candidates = [
        PathBuf::from("tako_vm.yaml"),
        PathBuf::from("config/tako_vm.yaml"),
        home_dir().join(".tako_vm/config.yaml"),
        PathBuf::from("/etc/tako_vm/config.yaml"),
    ];
    Ok(candidates.into_iter().find(|p| p.is_file()))
}

/// Parses YAML text (empty → defaults), rejecting unknown keys. No env, no validation.
pub fn parse_yaml(text: &str) -> Result<Config, ConfigError> {
    if text.trim().is_empty() {
        return Ok(Config::default());
    }
    let v: yaml_serde::Value =
        yaml_serde::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
    if v.is_null() {
        return Ok(Config::default());
    }
    yaml_serde::from_value(v).map_err(|e| ConfigError::Parse(e.to_string()))
}

/// Reads and parses a file (no env, no validation).
pub fn read_file(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_yaml(&text)
}

/// Loads the effective configuration: file (searched), environment overrides, validation.
/// Returns the config and the file it came from.
pub fn load(explicit: Option<&Path>) -> Result<(Config, Option<PathBuf>), ConfigError> {
    let file = find_config_file(explicit)?;
    let mut cfg = match &file {
        Some(p) => read_file(p)?,
        None => Config::default(),
    };
    apply_env(&mut cfg, &|k| std::env::var(k).ok())?;
    cfg.validate()?;
    Ok((cfg, file))
}

impl Config {
    /// The sandbox host settings these options select (pool, cgroup parent, opt-ins).
    pub fn host_config(&self) -> crate::sandbox::HostConfig {
        crate::sandbox::HostConfig {
            cgroup_parent: self.cgroup_parent.clone(),
            allow_unlimited: self.allow_unlimited_sandboxes,
            // Validated at load time.
            net_pool: crate::sandbox::net::parse_pool(&self.network_pool)
                .unwrap_or(crate::sandbox::net::DEFAULT_POOL),
            ..crate::sandbox::HostConfig::default()
        }
    }

    /// The data directory (default when unset).
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(default_data_dir)
    }

    /// Path of the SQLite database.
    pub fn sqlite_path(&self) -> PathBuf {
        match self.database_url.strip_prefix("sqlite://") {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => self.data_dir().join("tako_vm.db"),
        }
    }

    /// The base rootfs: config, else `TAKO_VM_BASE_ROOTFS`, else the fixture if present.
    pub fn base_rootfs(&self) -> Option<PathBuf> {
        if let Some(p) = &self.base_rootfs {
            return Some(p.clone());
        }
        if let Some(p) = std::env::var_os("TAKO_VM_BASE_ROOTFS").filter(|v| !v.is_empty()) {
            return Some(PathBuf::from(p));
        }
        let f = PathBuf::from(FIXTURE_ROOTFS);
        f.is_dir().then_some(f)
    }

    /// Bind guard (§5.2) for the host actually used.
    pub fn check_bind(&self, host: &str) -> Result<(), String> {
        if is_loopback(host) || self.api_auth_enabled || self.allow_unauthenticated_network_access {
            return Ok(());
        }
        Err(BIND_GUARD_MESSAGE.replace("<host>", host))
    }
}

/// Parses a size such as `512m`, `1g`, `100k` or a plain byte count.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let (num, mult) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1u64 << 10),
        'm' => (&s[..s.len() - 1], 1 << 20),
        'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (&s[..], 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

#[cfg(test)]
mod tests;
