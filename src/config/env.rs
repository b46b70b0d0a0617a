//! Environment overrides (spec §5.3), applied on top of the file before validation.

use std::path::PathBuf;

use super::{Config, ConfigError, Secret};

fn env_bool(v: &str) -> bool {
    matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes")
}

fn env_int(var: &str, v: &str) -> Result<i64, ConfigError> {
    v.trim().parse::<i64>().map_err(|_| ConfigError::EnvInt {
        var: var.into(),
        value: v.into(),
    })
}

/// Applies the `TAKO_VM_*` overrides read through `get` (the process environment in
/// production, a map in tests).
pub fn apply_env(
    cfg: &mut Config,
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    if let Some(v) = get("TAKO_VM_DATA_DIR").filter(|v| !v.is_empty()) {
        cfg.data_dir = Some(PathBuf::from(v));
    }
    if let Some(v) = get("TAKO_VM_DATABASE_URL") {
        cfg.database_url = v;
    }
    if let Some(v) = get("TAKO_VM_SECURITY_MODE") {
        cfg.security_mode = v.to_lowercase();
    }
    if let Some(v) = get("TAKO_VM_CONTAINER_RUNTIME") {
        cfg.container_runtime = v.to_lowercase();
    }
    let bools: [(&str, &mut bool); 8] = [
        ("TAKO_VM_ENABLE_SECCOMP", &mut cfg.enable_seccomp),
        (
            "TAKO_VM_ENABLE_CAP_RESTRICTIONS",
            &mut cfg.enable_cap_restrictions,
        ),
        ("TAKO_VM_API_AUTH_ENABLED", &mut cfg.api_auth_enabled),
        (
            "TAKO_VM_ALLOW_UNAUTHENTICATED_NETWORK_ACCESS",
            &mut cfg.allow_unauthenticated_network_access,
        ),
        (
            "TAKO_VM_API_RATE_LIMIT_ENABLED",
            &mut cfg.api_rate_limit_enabled,
        ),
        (
            "TAKO_VM_ALLOW_RUNTIME_REQUIREMENTS",
            &mut cfg.allow_runtime_requirements,
        ),
        (
            "TAKO_VM_ENABLE_RUNTIME_DEPENDENCY_CACHE",
            &mut cfg.enable_runtime_dependency_cache,
        ),
        ("TAKO_VM_SESSIONS_ENABLED", &mut cfg.sessions_enabled),
    ];
    for (var, slot) in bools {
        if let Some(v) = get(var) {
            *slot = env_bool(&v);
        }
    }
    let ints: [(&str, &mut i64); 6] = [
        (
            "TAKO_VM_API_MAX_PAYLOAD_BYTES",
            &mut cfg.api_max_payload_bytes,
        ),
        (
            "TAKO_VM_API_RATE_LIMIT_REQUESTS",
            &mut cfg.api_rate_limit_requests,
        ),
        (
            "TAKO_VM_API_RATE_LIMIT_WINDOW_SECONDS",
            &mut cfg.api_rate_limit_window_seconds,
        ),
        (
            "TAKO_VM_SESSION_IDLE_TIMEOUT_SECONDS",
            &mut cfg.session_idle_timeout_seconds,
        ),
        (
            "TAKO_VM_SESSION_MAX_TTL_SECONDS",
            &mut cfg.session_max_ttl_seconds,
        ),
        (
            "TAKO_VM_SESSION_MAX_CONCURRENT",
            &mut cfg.session_max_concurrent,
        ),
    ];
    for (var, slot) in ints {
        if let Some(v) = get(var) {
            *slot = env_int(var, &v)?;
        }
    }
    if let Some(v) = get("TAKO_VM_API_KEYS") {
        cfg.api_keys = v
            .split(',')
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
            .collect();
    }
    if let Some(v) = get("TAKO_VM_API_AUTH_HEADER") {
        cfg.api_auth_header = v;
    }
    if let Some(v) = get("TAKO_VM_DEPENDENCY_PROXY_URL") {
        cfg.dependency_proxy_url = Some(v);
    }
    apply_image_env(cfg, get);
    Ok(())
}

/// The image settings (our extensions): the variables the image commands always read.
/// Blank values are ignored.
fn apply_image_env(cfg: &mut Config, get: &dyn Fn(&str) -> Option<String>) {
    let set = |var: &str| {
        get(var)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    if let Some(v) = set("TAKO_VM_REGISTRY_MIRROR") {
        cfg.registry_mirror = Some(v);
    }
    if let Some(v) = set("TAKO_VM_INSECURE_REGISTRIES") {
        cfg.insecure_registries = v
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
    }
    if let Some(v) = set("TAKO_VM_REGISTRY_USERNAME") {
        cfg.registry_username = Some(v);
    }
    if let Some(v) = get("TAKO_VM_REGISTRY_PASSWORD").filter(|v| !v.is_empty()) {
        cfg.registry_password = Some(Secret(v));
    }
    if let Some(v) = set("TAKO_VM_REGISTRY_AUTH_HOST") {
        cfg.registry_auth_host = Some(v);
    }
    if let Some(v) = set("TAKO_VM_NETWORK_POOL") {
        cfg.network_pool = v;
    }
    if let Some(v) = set("TAKO_VM_UV_PATH") {
        cfg.uv_path = Some(PathBuf::from(v));
    }
    if let Some(v) = set("TAKO_VM_IMAGE_STORE") {
        cfg.image_store = Some(PathBuf::from(v));
    }
    // The same variable as `tako-vm run --allow-unlimited`.
    if let Some(v) = set("TAKO_VM_ALLOW_UNLIMITED_SANDBOXES") {
        cfg.allow_unlimited_sandboxes = env_bool(&v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_unlimited_sandboxes_comes_from_the_same_variable_as_the_cli_flag() {
        let run = |value: &str| {
            let mut cfg = Config::default();
            apply_env(&mut cfg, &|k| {
                (k == "TAKO_VM_ALLOW_UNLIMITED_SANDBOXES").then(|| value.to_string())
            })
            .unwrap();
            cfg.allow_unlimited_sandboxes
        };
        assert!(run("1") && run("true"));
        assert!(!run("0") && !run("false"));
        assert!(!Config::default().allow_unlimited_sandboxes);
    }
}
