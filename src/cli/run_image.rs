//! `tako-vm run --image REF | --job-type NAME`: which rootfs and environment a run uses.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::images::{CliProgress, StoreArgs};
use crate::image::builder::SandboxBuildHost;
use crate::image::{unpack, Registry};
use crate::sandbox::Runner;

/// What a run uses: the rootfs, the layers under it (a layered snapshot's base image), the
/// image/job-type environment, and for a snapshot a hold that keeps `tako-vm gc` away from
/// it while the run lasts.
pub type RunRootfs = (
    PathBuf,
    Vec<PathBuf>,
    Vec<(String, String)>,
    Option<rootfs_builder::SnapshotUse>,
);

/// The rootfs and the image/job-type environment of a run: `--rootfs` as given (no extra
/// environment), a pulled image with its config `Env`, or a job type's snapshot (built on
/// first use unless `production_mode`) with its baked environment.
pub fn rootfs_for(
    config: Option<&Path>,
    rootfs: &Option<PathBuf>,
    image: &Option<String>,
    job_type: &Option<String>,
    store: &StoreArgs,
) -> anyhow::Result<RunRootfs> {
    if let Some(r) = rootfs {
        return Ok((r.clone(), Vec::new(), Vec::new(), None));
    }
    let (cfg, _) = crate::config::load(config)?;
    let store = store.configured(&cfg);
    let images = store.images()?;
    if let Some(reference) = image {
        let Some(rec) = images.lookup(reference)? else {
            bail!("no local image {reference}; pull it first: tako-vm pull {reference}");
        };
        let progress = CliProgress::new();
        let dir = unpack::ensure_rootfs(&images, &rec, &progress)?;
        // Its Python byte-compiled once.
        if !rootfs_builder::bytecode::compiled(&dir) {
            let base = rootfs_builder::BaseImage {
                digest: rec.digest.clone(),
                rootfs: dir.clone(),
                env: rec.env_pairs(),
            };
            // Best effort: the run itself reports what is wrong with sandboxes.
            let done = Registry::new(store.registry_config())
                .map_err(anyhow::Error::from)
                .and_then(|reg| Ok((reg, Runner::detect(&cfg.host_config())?)))
                .and_then(|(reg, runner)| {
                    let host = SandboxBuildHost::new(
                        &runner,
                        &images,
                        &reg,
                        cfg.builder_config(),
                        &progress,
                    );
                    Ok(rootfs_builder::bytecode::compile_base(&host, &base)?)
                });
            if let Err(e) = done {
                eprintln!("tako-vm: byte-compiling the image's Python failed (runs on it compile what they import): {e}");
            }
        }
        return Ok((dir, Vec::new(), rec.env_pairs(), None));
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
    let Some(hold) = snaps.hold(&snap.key) else {
        bail!("the snapshot of {name} was removed meanwhile (tako-vm gc); run again");
    };
    Ok((
        snap.rootfs.clone(),
        snap.lower.iter().cloned().collect(),
        snap.env.clone(),
        Some(hold),
    ))
}
