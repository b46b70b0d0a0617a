//! `tako-vm config`: the effective configuration.

use std::path::Path;

use clap::Args;
use serde_json::Value;

use crate::config::Config;

/// Arguments of `tako-vm config`.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Print every field as JSON.
    #[arg(long)]
    json: bool,
    /// Accepted for compatibility; has no effect.
    #[arg(long)]
    show_defaults: bool,
}

/// `postgresql://user:secret@host/db` → `postgresql://user:***@host/db`.
pub fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((auth, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

/// The JSON form (`data_dir_str`, `seccomp_profile_path_str` as in 0.3.0).
pub fn config_json(cfg: &Config) -> Value {
    let mut v = serde_json::to_value(cfg).unwrap_or(Value::Null);
    if let Some(m) = v.as_object_mut() {
        m.insert(
            "data_dir".into(),
            cfg.data_dir().display().to_string().into(),
        );
        m.insert(
            "data_dir_str".into(),
            cfg.data_dir().display().to_string().into(),
        );
        let sp = m
            .get("seccomp_profile_path")
            .cloned()
            .unwrap_or(Value::Null);
        m.insert("seccomp_profile_path_str".into(), sp);
        m.insert("database_url".into(), mask_url(&cfg.database_url).into());
        if cfg.registry_password.is_some() {
            m.insert("registry_password".into(), "***".into());
        }
    }
    v
}

/// Runs `tako-vm config`.
pub fn run(config_path: Option<&Path>, a: ConfigArgs) -> anyhow::Result<i32> {
    let _ = a.show_defaults;
    let (cfg, file) = match super::server::load_config(config_path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&config_json(&cfg))?);
        return Ok(0);
    }
    let file = file.map_or("(built-in defaults)".to_string(), |f| {
        f.display().to_string()
    });
    println!("Tako VM configuration ({file})\n");
    println!("Mode:");
    println!("  production_mode: {}", cfg.production_mode);
    println!("  log_level: {}", cfg.log_level);
    println!("  server: {}:{}", cfg.server_host, cfg.server_port);
    println!("  api_auth_enabled: {}", cfg.api_auth_enabled);
    println!("\nPaths:");
    println!("  data_dir: {}", cfg.data_dir().display());
    println!("  database: {}", cfg.sqlite_path().display());
    println!("  database_url: {}", mask_url(&cfg.database_url));
    let base = cfg.base_rootfs().map(|p| p.display().to_string());
    println!("  base_rootfs: {}", base.unwrap_or_else(|| "(none)".into()));
    println!("\nQueue & Workers:");
    println!("  max_workers: {}", cfg.max_workers);
    println!("  max_queue_size: {}", cfg.max_queue_size);
    println!("  max_retry_attempts: {}", cfg.max_retry_attempts);
    println!("\nLimits:");
    println!("  default_timeout: {}s", cfg.default_timeout);
    println!("  max_timeout: {}s", cfg.max_timeout);
    println!("  max_stdout_bytes: {}", cfg.max_stdout_bytes);
    println!("  max_stderr_bytes: {}", cfg.max_stderr_bytes);
    println!("  max_artifact_bytes: {}", cfg.max_artifact_bytes);
    println!("  max_artifacts: {}", cfg.max_artifacts);
    println!(
        "  max_requirement_snapshots: {}",
        cfg.max_requirement_snapshots
    );
    println!(
        "  max_total_artifacts_bytes: {}",
        cfg.max_total_artifacts_bytes
    );
    let l = &cfg.container_limits;
    println!("\nContainer Limits:");
    println!("  nofile: {}:{}", l.nofile_soft, l.nofile_hard);
    println!("  nproc: {}:{}", l.nproc_soft, l.nproc_hard);
    println!("  fsize: {}", l.fsize);
    println!("  tmpfs_size: {}", l.tmpfs_size);
    println!("  pids_limit: {}", l.pids_limit);
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
    println!("\nImages:");
    println!("  image_store: {}", cfg.image_store_root().display());
    println!("  registry_mirror: {}", opt(&cfg.registry_mirror));
    println!("  insecure_registries: {:?}", cfg.insecure_registries);
    println!("  registry_username: {}", opt(&cfg.registry_username));
    let password = cfg.registry_password.as_ref().map(|_| "***".to_string());
    println!("  registry_password: {}", opt(&password));
    let uv = cfg.uv_path.as_ref().map(|p| p.display().to_string());
    println!("  uv_path: {}", uv.unwrap_or_else(|| "(uv on PATH)".into()));
    println!("\nDocker (compatibility keys, ignored by the tako-vm sandbox):");
    println!("  docker_image: {}", cfg.docker_image);
    println!("  container_runtime: {}", cfg.container_runtime);
    println!("  security_mode: {}", cfg.security_mode);
    println!("\nJob Types:");
    if cfg.job_types.is_empty() {
        println!("  (none in the config file)");
    }
    for jt in &cfg.job_types {
        println!(
            "  {}: memory {}, cpu {}, timeout {}s, network {}, requirements {:?}",
            jt.name, jt.memory_limit, jt.cpu_limit, jt.timeout, jt.network_enabled, jt.requirements
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_passwords() {
        assert_eq!(
            mask_url("postgresql://postgres:postgres@localhost:5432/tako_vm"),
            "postgresql://postgres:***@localhost:5432/tako_vm"
        );
        assert_eq!(mask_url("sqlite:///x.db"), "sqlite:///x.db");
    }
}
