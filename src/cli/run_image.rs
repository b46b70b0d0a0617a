//! `tako-vm run --image REF | --job-type NAME`: which rootfs and environment a run uses.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::images::{CliProgress, StoreArgs};
use crate::image::builder::SandboxBuildHost;
use crate::image::{unpack, Registry};
use crate::sandbox::Runner;

/// The rootfs and the image/job-type environment of a run: `--rootfs` as given (no extra
/// environment), a pulled image with its config `Env`, or a job type's snapshot (built on
/// first use unless `production_mode`) with its baked environment.
pub fn rootfs_for(
    config: Option<&Path>,
    rootfs: &Option<PathBuf>,
    image: &Option<String>,
    job_type: &Option<String>,
    store: &StoreArgs,
) -> anyhow::Result<(PathBuf, Vec<(String, String)>)> {
    if let Some(r) = rootfs {
        return Ok((r.clone(), Vec::new()));
    }
    let (cfg, _) = crate::config::load(config)?;
    let store = store.configured(&cfg);
    let images = store.images()?;
    if let Some(reference) = image {
        let Some(rec) = images.lookup(reference)? else {
            bail!("no local image {reference}; pull it first: tako-vm pull {reference}");
        };
        let dir = unpack::ensure_rootfs(&images, &rec, &CliProgress::new())?;
        return Ok((dir, rec.env_pairs()));
    }
    let Some(name) = job_type else {
        bail!("give --rootfs DIR, --image REF or --job-type NAME");
    };
    let registry = crate::jobs::registry::Registry::load(&cfg);
    let Some(jt) = registry.get(name) else {
        bail!("job type '{name}' not found");
    };
    let snaps = store.snapshots(&images)?;
    let spec = crate::jobs::snapshots::spec_of(jt, &std::env::current_dir()?);
    let reg = Registry::new(store.registry_config())?;
    let runner = Runner::detect(&cfg.host_config()).context("builder sandbox")?;
    let progress = CliProgress::new();
    let host = SandboxBuildHost::new(&runner, &images, &reg, cfg.builder_config(), &progress);
    let snap = snaps.resolve(&spec, &host, !cfg.production_mode)?;
    Ok((snap.rootfs.clone(), snap.env.clone()))
}
