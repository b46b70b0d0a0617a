//! `tako-vm gc`: removes snapshots, images and blobs that nothing references.

use clap::Args;

use super::images::StoreArgs;

/// Arguments of `tako-vm gc`.
#[derive(Debug, Args)]
pub struct GcArgs {
    #[command(flatten)]
    store: StoreArgs,
}

/// Unnamed snapshots (old builds, ad-hoc runtime-requirement snapshots), then images
/// neither named nor used by a remaining snapshot, then unreferenced blobs.
pub fn run(config: Option<&std::path::Path>, a: GcArgs) -> anyhow::Result<i32> {
    let store = a.store.load(config)?;
    let images = store.images()?;
    let snaps = store.snapshots(&images)?;
    // A dead build's staging tree holds what its sandbox user wrote: an unprivileged user
    // removes it through the owner helper.
    let owner = crate::sandbox::owner::Ownership::new(
        &std::env::current_exe()?,
        &crate::sandbox::idmap::IdMap::detect()?,
    );
    let (removed_snaps, bases) = snaps.gc_with(&|p| owner.discard(p))?;
    let report = images.gc(&bases.into_iter().collect())?;
    println!(
        "removed {removed_snaps} snapshots, {} images, {} blobs ({:.1} MB)",
        report.images,
        report.blobs,
        report.bytes as f64 / 1e6
    );
    Ok(0)
}
