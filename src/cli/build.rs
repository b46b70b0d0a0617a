//! `tako-vm build NAME` / `tako-vm build --all`: job-type snapshots.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use rootfs_builder::{JobTypeSpec, Snapshot};

use super::images::{CliProgress, StoreArgs};
use crate::image::builder::{BuilderConfig, SandboxBuildHost};
use crate::image::Registry;
use crate::jobs::registry::JobType;
use crate::sandbox::{HostConfig, Runner};

/// Arguments of `tako-vm build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Job type to build.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    name: Option<String>,
    /// Build every registered job type.
    #[arg(long)]
    all: bool,
    /// The uv binary (default: TAKO_VM_UV_PATH, then uv on PATH).
    #[arg(long, env = "TAKO_VM_UV_PATH")]
    uv_path: Option<PathBuf>,
    /// Install only from this directory of wheels (offline builds).
    #[arg(long, env = "TAKO_VM_UV_FIND_LINKS")]
    find_links: Option<PathBuf>,
    #[command(flatten)]
    store: StoreArgs,
}

/// The snapshot input of a job type; `shared_code` paths are relative to `base_dir`.
pub fn spec_of(jt: &JobType, base_dir: &Path) -> JobTypeSpec {
    JobTypeSpec {
        name: jt.name.clone(),
        python_version: jt.python_version.clone(),
        base_image: jt.base_image.clone(),
        requirements: jt.requirements.clone(),
        environment: jt.environment.clone(),
        shared_code: jt.shared_code.iter().map(|p| base_dir.join(p)).collect(),
    }
}

/// The job types of the configuration (registry file + config, as the server sees them).
pub fn job_types(config: Option<&Path>) -> anyhow::Result<Vec<JobType>> {
    let (cfg, _) = crate::config::load(config)?;
    Ok(crate::jobs::registry::Registry::load(&cfg).all().to_vec())
}

/// Builds one or all job types; prints `tako-vm-<name>:latest <digest>` per snapshot.
pub fn run(config: Option<&Path>, a: BuildArgs) -> anyhow::Result<i32> {
    let all = job_types(config)?;
    let chosen: Vec<&JobType> = match &a.name {
        Some(n) => match all.iter().find(|j| &j.name == n) {
            Some(j) => vec![j],
            None => bail!(
                "unknown job type {n:?} (known: {})",
                all.iter()
                    .map(|j| j.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
        None => all.iter().collect(),
    };
    let images = a.store.images()?;
    let snaps = a.store.snapshots(&images)?;
    let registry = Registry::new(a.store.registry_config())?;
    let runner = Runner::detect(&HostConfig::default()).context("builder sandbox")?;
    let progress = CliProgress::new();
    let mut bcfg = BuilderConfig::default();
    if a.uv_path.is_some() {
        bcfg.uv_path = a.uv_path.clone();
    }
    if a.find_links.is_some() {
        bcfg.find_links = a.find_links.clone();
    }
    let host = SandboxBuildHost::new(&runner, &images, &registry, bcfg, &progress);
    let cwd = std::env::current_dir()?;
    let mut failed = 0;
    for jt in chosen {
        match snaps.build(&spec_of(jt, &cwd), &host) {
            Ok(s) => println!(
                "{} sha256:{}",
                Snapshot::image_name(&jt.name),
                s.short_digest()
            ),
            Err(e) => {
                eprintln!("Error: {e}");
                failed += 1;
            }
        }
    }
    Ok(if failed > 0 { 1 } else { 0 })
}
