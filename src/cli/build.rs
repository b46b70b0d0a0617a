//! `tako-vm build NAME` / `tako-vm build --all`: job-type snapshots.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use rootfs_builder::Snapshot;

use super::images::{CliProgress, StoreArgs};
use crate::image::builder::SandboxBuildHost;
use crate::image::Registry;
use crate::jobs::registry::JobType;
use crate::jobs::snapshots::spec_of;
use crate::sandbox::Runner;

/// Arguments of `tako-vm build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Job type to build.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    name: Option<String>,
    /// Build every registered job type.
    #[arg(long)]
    all: bool,
    /// The uv binary (default: TAKO_VM_UV_PATH, then uv_path, then uv on PATH).
    #[arg(long, env = "TAKO_VM_UV_PATH")]
    uv_path: Option<PathBuf>,
    /// Install only from this directory of wheels (offline builds).
    #[arg(long, env = "TAKO_VM_UV_FIND_LINKS")]
    find_links: Option<PathBuf>,
    #[command(flatten)]
    store: StoreArgs,
}

/// Builds one or all job types; prints `tako-vm-<name>:latest <digest>` per snapshot.
pub fn run(config: Option<&Path>, a: BuildArgs) -> anyhow::Result<i32> {
    let (cfg, _) = crate::config::load(config)?;
    // The job types as the server sees them (registry file + config).
    let all = crate::jobs::registry::Registry::load(&cfg).all().to_vec();
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
    let store = a.store.configured(&cfg);
    let images = store.images()?;
    let snaps = store.snapshots(&images)?;
    let registry = Registry::new(store.registry_config())?;
    let runner = Runner::detect(&cfg.host_config()).context("builder sandbox")?;
    let progress = CliProgress::new();
    let mut bcfg = cfg.builder_config();
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
