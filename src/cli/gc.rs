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
    // with subordinate ids removes it through the owner helper. Where the ids cannot be
    // told, plain removal (what gc did before).
    let (removed_snaps, bases) = match crate::sandbox::idmap::IdMap::detect() {
        Ok(idmap) => snaps.gc_with(&crate::sandbox::owner::Ownership::new(
            &std::env::current_exe()?,
            &idmap,
        ))?,
        Err(_) => snaps.gc()?,
    };
    let report = images.gc(&bases.into_iter().collect())?;
    println!(
        "removed {removed_snaps} snapshots, {} images, {} blobs ({:.1} MB)",
        report.images,
        report.blobs,
        report.bytes as f64 / 1e6
    );
    Ok(0)
}
