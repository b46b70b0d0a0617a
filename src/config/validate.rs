//! Bounds, normalisation and cross-field rules of the configuration (spec §5.2, §3.1).

use std::collections::HashSet;

use super::{parse_size, Config, ConfigError, JobTypeConfig};

/// The bind-guard refusal; `<host>` is replaced by the host.
pub const BIND_GUARD_MESSAGE: &str = "refusing to bind non-loopback host '<host>' with api_auth_enabled=false: this exposes an unauthenticated code-execution endpoint to the network. Fix it in one of three ways: set api_auth_enabled=true and populate api_keys; bind loopback (server_host: 127.0.0.1 in the config, or --host 127.0.0.1); or set allow_unauthenticated_network_access=true if access control is enforced outside Tako VM";

/// `localhost`, `::1`, `[::1]` or `127.*` (trimmed, case-insensitive).
pub fn is_loopback(host: &str) -> bool {
    let h = host.trim().to_ascii_lowercase();
    h == "localhost" || h == "::1" || h == "[::1]" || h.starts_with("127.")
}

struct Errs(Vec<String>);

impl Errs {
    fn add(&mut self, field: &str, msg: impl Into<String>) {
        self.0.push(format!("field {field}: {}", msg.into()));
    }
    fn range_i(&mut self, field: &str, v: i64, lo: i64, hi: i64) {
        if v < lo {
            self.add(
                field,
                format!("Input should be greater than or equal to {lo}"),
            );
        } else if v > hi {
            self.add(field, format!("Input should be less than or equal to {hi}"));
        }
    }
    fn range_f(&mut self, field: &str, v: f64, lo: f64, hi: f64) {
        if v.is_nan() || v < lo {
            self.add(
                field,
                format!("Input should be greater than or equal to {lo:?}"),
            );
        } else if v > hi {
            self.add(
                field,
                format!("Input should be less than or equal to {hi:?}"),
            );
        }
    }
}

/// Validates a job type's own fields (§3.1); errors are prefixed with `prefix`.
pub fn job_type_errors(jt: &mut JobTypeConfig, prefix: &str) -> Vec<String> {
    let mut e = Errs(vec![]);
    let f = |n: &str| format!("{prefix}.{n}");
    let stripped: String = jt.name.chars().filter(|c| *c != '-' && *c != '_').collect();
    let n = jt.name.chars().count();
    if n == 0 || n > 64 {
        e.add(&f("name"), "job type name must be 1-64 characters");
    } else if stripped.is_empty() || !stripped.chars().all(char::is_alphanumeric) {
        e.add(
            &f("name"),
            "job type name must contain only letters, digits, '-' and '_'",
        );
    }
    jt.memory_limit = jt.memory_limit.trim().to_lowercase();
    let mem_ok = (jt.memory_limit.ends_with('m') || jt.memory_limit.ends_with('g'))
        && parse_size(&jt.memory_limit).is_some_and(|b| (64u64 << 20..=32u64 << 30).contains(&b));
    if !mem_ok {
        e.add(
            &f("memory_limit"),
            "memory_limit must end in 'm' or 'g' and be between 64m and 32g",
        );
    }
    e.range_f(&f("cpu_limit"), jt.cpu_limit, 0.1, 16.0);
    e.range_i(&f("timeout"), jt.timeout, 1, 3600);
    e.range_i(&f("startup_timeout"), jt.startup_timeout, 10, 600);
    if let Some(v) = &jt.gpu.vendor {
        let v = v.to_lowercase();
        if v != "nvidia" && v != "amd" {
            e.add(&f("gpu.vendor"), "gpu vendor must be 'nvidia' or 'amd'");
        }
        jt.gpu.vendor = Some(v);
    }
    let any_gpu =
        jt.gpu.vendor.is_some() || jt.gpu.count.is_some() || !jt.gpu.device_ids.is_empty();
    if any_gpu && !jt.gpu.enabled {
        e.add(&f("gpu"), "gpu settings require gpu.enabled=true");
    }
    if jt.gpu.enabled && jt.gpu.vendor.is_none() {
        e.add(
            &f("gpu.vendor"),
            "gpu vendor is required when gpu is enabled",
        );
    }
    if jt.gpu.count.is_some() && !jt.gpu.device_ids.is_empty() {
        e.add(&f("gpu"), "gpu count and device_ids are mutually exclusive");
    }
    if let Some(c) = jt.gpu.count {
        e.range_i(&f("gpu.count"), c, 1, 16);
    }
    for (i, h) in jt.allowed_hosts.iter_mut().enumerate() {
        *h = h.trim().to_ascii_lowercase();
        if !valid_allowed_host(h) {
            e.add(
                &f(&format!("allowed_hosts.{i}")),
                "allowed_hosts entries must be domain names, IPv4 addresses or IPv4 CIDRs",
            );
        }
    }
    if !jt.allowed_hosts.is_empty() && !jt.network_enabled {
        e.add(
            &f("allowed_hosts"),
            "allowed_hosts requires network_enabled: true",
        );
    }
    e.0
}

/// A domain name, an IPv4 address or an IPv4 CIDR (what the sandbox network resolves).
pub fn valid_allowed_host(h: &str) -> bool {
    if h.contains('/') {
        return crate::sandbox::net::parse_cidr4(h).is_some();
    }
    if h.parse::<std::net::Ipv4Addr>().is_ok() {
        return true;
    }
    let label = |l: &str| {
        (1..=63).contains(&l.len())
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    (1..=253).contains(&h.len())
        && h.split('.').all(label)
        && h.chars().any(|c| c.is_ascii_alphabetic())
}

impl Config {
    /// Validates and normalises every key; all failures are reported together.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        let mut e = Errs(vec![]);
        let lvl = self.log_level.trim().to_uppercase();
        if !["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"].contains(&lvl.as_str()) {
            e.add(
                "log_level",
                "log_level must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL",
            );
        }
        self.log_level = lvl;
        e.range_i("server_port", self.server_port, 1, 65535);
        e.range_i(
            "api_max_payload_bytes",
            self.api_max_payload_bytes,
            1024,
            104_857_600,
        );
        let mut seen = HashSet::new();
        for (i, k) in self.api_keys.iter_mut().enumerate() {
            *k = k.trim().to_string();
            let field = format!("api_keys.{i}");
            if k.is_empty() {
                e.add(&field, "API keys must not be empty");
            } else if k.contains(['\n', '\r', '\0']) {
                e.add(&field, "API keys must not contain control characters");
            } else if k.chars().count() < 16 {
                e.add(&field, "API keys must be at least 16 characters");
            } else if !seen.insert(k.clone()) {
                e.add(&field, "API keys must be unique");
            }
        }
        self.api_auth_header = self.api_auth_header.trim().to_string();
        if self.api_auth_header.is_empty()
            || !self
                .api_auth_header
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            e.add(
                "api_auth_header",
                "api_auth_header must be a non-empty header name of letters, digits, '-' and '_'",
            );
        }
        e.range_i(
            "api_rate_limit_requests",
            self.api_rate_limit_requests,
            1,
            100_000,
        );
        e.range_i(
            "api_rate_limit_window_seconds",
            self.api_rate_limit_window_seconds,
            1,
            3600,
        );
        e.range_i("max_retry_attempts", self.max_retry_attempts, 1, 10);
        e.range_f("retry_base_delay", self.retry_base_delay, 0.1, 60.0);
        e.range_f("queue_wait_timeout", self.queue_wait_timeout, 0.1, 30.0);
        self.validate_database_url(&mut e);
        e.range_i("max_workers", self.max_workers, 1, 64);
        e.range_i("max_queue_size", self.max_queue_size, 1, 10_000);
        e.range_i("max_stdout_bytes", self.max_stdout_bytes, 1024, 104_857_600);
        e.range_i("max_stderr_bytes", self.max_stderr_bytes, 1024, 104_857_600);
        e.range_i(
            "max_artifact_bytes",
            self.max_artifact_bytes,
            1024,
            1_073_741_824,
        );
        e.range_i(
            "max_total_artifacts_bytes",
            self.max_total_artifacts_bytes,
            1024,
            10_737_418_240,
        );
        e.range_i("max_artifacts", self.max_artifacts, 1, 100_000);
        e.range_i(
            "max_requirement_snapshots",
            self.max_requirement_snapshots,
            1,
            10_000,
        );
        e.range_i("max_input_bytes", self.max_input_bytes, 1024, 104_857_600);
        e.range_i("max_code_bytes", self.max_code_bytes, 1024, 10_485_760);
        e.range_i("default_timeout", self.default_timeout, 1, 3600);
        e.range_i(
            "default_startup_timeout",
            self.default_startup_timeout,
            10,
            600,
        );
        e.range_i("max_timeout", self.max_timeout, 1, 86400);
        e.range_i("max_startup_timeout", self.max_startup_timeout, 30, 1800);
        self.validate_proxy(&mut e);
        e.range_i(
            "session_idle_timeout_seconds",
            self.session_idle_timeout_seconds,
            30,
            86400,
        );
        e.range_i(
            "session_max_ttl_seconds",
            self.session_max_ttl_seconds,
            60,
            604_800,
        );
        if self.session_max_concurrent < 1 {
            e.add(
                "session_max_concurrent",
                "Input should be greater than or equal to 1",
            );
        }
        e.range_i(
            "execution_record_ttl_days",
            self.execution_record_ttl_days,
            1,
            3650,
        );
        e.range_i("dlq_ttl_days", self.dlq_ttl_days, 1, 365);
        if !["runsc", "runc"].contains(&self.container_runtime.as_str()) {
            e.add(
                "container_runtime",
                "container_runtime must be 'runsc' or 'runc'",
            );
        }
        if !["strict", "permissive"].contains(&self.security_mode.as_str()) {
            e.add(
                "security_mode",
                "security_mode must be 'strict' or 'permissive'",
            );
        }
        self.validate_limits(&mut e);
        e.range_i(
            "shutdown_grace_seconds",
            self.shutdown_grace_seconds,
            0,
            3600,
        );
        self.validate_images(&mut e);
        let mut too_long = vec![];
        for (i, jt) in self.job_types.iter_mut().enumerate() {
            e.0.extend(job_type_errors(jt, &format!("job_types.{i}")));
            if jt.timeout > self.max_timeout {
                too_long.push(jt.name.clone());
            }
        }
        // Cross-field rules.
        if self.api_auth_enabled && self.api_keys.is_empty() {
            e.add(
                "api_keys",
                "api_keys must contain at least one key when api_auth_enabled=true",
            );
        }
        if self.default_timeout > self.max_timeout {
            e.add("default_timeout", "default_timeout must be <= max_timeout");
        }
        if !too_long.is_empty() {
            e.add(
                "job_types",
                format!(
                    "job type timeout must be <= max_timeout for: {}",
                    too_long.join(", ")
                ),
            );
        }
        if self.default_startup_timeout > self.max_startup_timeout {
            e.add(
                "default_startup_timeout",
                "default_startup_timeout must be <= max_startup_timeout",
            );
        }
        if self.session_idle_timeout_seconds > self.session_max_ttl_seconds {
            e.add(
                "session_idle_timeout_seconds",
                "session_idle_timeout_seconds must be <= session_max_ttl_seconds",
            );
        }
        if let Err(m) = self.check_bind(&self.server_host.clone()) {
            e.add("server_host", m);
        }
        if e.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(e.0.join("; ")))
        }
    }

    fn validate_database_url(&mut self, e: &mut Errs) {
        let url = self.database_url.trim().to_string();
        if let Some(p) = url.strip_prefix("sqlite://") {
            if p.is_empty() {
                e.add("database_url", "sqlite database_url needs a file path");
            }
            return;
        }
        let rest = if let Some(r) = url.strip_prefix("postgresql+psycopg://") {
            self.database_url = format!("postgresql://{r}");
            r.to_string()
        } else if let Some(r) = url.strip_prefix("postgresql://") {
            r.to_string()
        } else {
            e.add(
                "database_url",
                "database_url must use the postgresql:// (or sqlite://) scheme",
            );
            return;
        };
        let (main, query) = rest.split_once('?').unwrap_or((&rest, ""));
        let (authority, db) = main.split_once('/').unwrap_or((main, ""));
        let host = authority.rsplit('@').next().unwrap_or("");
        if host.is_empty() && !query.split('&').any(|kv| kv.starts_with("host=")) {
            e.add("database_url", "database_url must include a host");
        }
        if db.is_empty() {
            e.add("database_url", "database_url must include a database name");
        }
    }

    fn validate_proxy(&mut self, e: &mut Errs) {
        let Some(p) = self.dependency_proxy_url.clone() else {
            return;
        };
        let p = p.trim().to_string();
        if p.is_empty() {
            self.dependency_proxy_url = None;
            return;
        }
        const F: &str = "dependency_proxy_url";
        let ok_chars = p
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._:/=,+-[]{}@%".contains(c));
        let Some((scheme, rest)) = p.split_once("://") else {
            e.add(
                F,
                "dependency_proxy_url must be an http, https or socks5 URL",
            );
            return;
        };
        if !["http", "https", "socks5"].contains(&scheme) {
            e.add(
                F,
                "dependency_proxy_url must be an http, https or socks5 URL",
            );
        } else if !ok_chars {
            e.add(F, "dependency_proxy_url contains forbidden characters");
        } else {
            let (host, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
            if host.rsplit('@').next().unwrap_or("").is_empty() {
                e.add(F, "dependency_proxy_url must include a host");
            } else if !path.is_empty() || p.contains('?') || p.contains('#') {
                e.add(
                    F,
                    "dependency_proxy_url must not include a path, query or fragment",
                );
            }
        }
        self.dependency_proxy_url = Some(p);
    }

    fn validate_images(&mut self, e: &mut Errs) {
        if let Err(m) = crate::sandbox::net::parse_pool(&self.network_pool) {
            e.add("network_pool", &m);
        }
        for v in [&mut self.registry_mirror, &mut self.registry_auth_host] {
            *v = v
                .take()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty());
        }
        for (i, r) in self.insecure_registries.iter_mut().enumerate() {
            *r = r.trim().to_string();
            if r.is_empty() || r.contains(['/', ' ']) {
                e.add(
                    &format!("insecure_registries.{i}"),
                    "insecure_registries entries must be registry hosts (host[:port])",
                );
            }
        }
        if self.registry_username.is_some() != self.registry_password.is_some() {
            e.add(
                "registry_username",
                "registry_username and registry_password must be set together",
            );
        }
    }

    fn validate_limits(&mut self, e: &mut Errs) {
        let l = &mut self.container_limits;
        e.range_i("container_limits.nofile_soft", l.nofile_soft, 64, 65536);
        e.range_i("container_limits.nofile_hard", l.nofile_hard, 64, 65536);
        if l.nofile_hard < l.nofile_soft {
            e.add(
                "container_limits.nofile_hard",
                "nofile_hard must be >= nofile_soft",
            );
        }
        e.range_i("container_limits.nproc_soft", l.nproc_soft, 10, 1000);
        e.range_i("container_limits.nproc_hard", l.nproc_hard, 10, 1000);
        if l.nproc_hard < l.nproc_soft {
            e.add(
                "container_limits.nproc_hard",
                "nproc_hard must be >= nproc_soft",
            );
        }
        e.range_i("container_limits.fsize", l.fsize, 1_048_576, 1_073_741_824);
        l.tmpfs_size = l.tmpfs_size.trim().to_lowercase();
        let ok = parse_size(&l.tmpfs_size).is_some_and(|b| (10u64 << 20..=2u64 << 30).contains(&b));
        if !ok {
            e.add(
                "container_limits.tmpfs_size",
                "tmpfs_size must be a size (<n>g, <n>m, <n>k or bytes) between 10m and 2g",
            );
        }
        e.range_i("container_limits.pids_limit", l.pids_limit, 10, 1000);
    }
}
