//! `tako-vm gc`: removes snapshots, images and blobs that nothing references.

use clap::Args;

use super::images::StoreArgs;

/// Arguments of `tako-vm gc`.
#[derive(Debug, Args)]
pub struct GcArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Also empty the build caches job-type builds share (uv's downloads and the bytecode
    /// cache): the next build downloads and compiles again. Refused while a build runs.
    #[arg(long)]
    caches: bool,
}

/// Unnamed snapshots (old builds, ad-hoc runtime-requirement snapshots), then images
/// neither named nor used by a remaining snapshot, then unreferenced blobs.
pub fn run(config: Option<&std::path::Path>, a: GcArgs) -> anyhow::Result<i32> {
    let (cfg, _) = crate::config::load(config)?;
    let store = a.store.configured(&cfg);
    let Some(images) = store.existing_images()? else {
        println!("removed 0 snapshots, 0 images, 0 blobs (0.0 MB)");
        return Ok(0);
    };
    let snaps = store.snapshots(&images)?;
    // A dead build's staging tree, and uv's cache, hold what a builder sandbox's user wrote:
    // an unprivileged user with subordinate ids removes them through the owner helper. Where
    // the ids cannot be told, plain removal (what gc did before).
    let owner: Box<dyn rootfs_builder::SandboxOwner> = match crate::sandbox::idmap::IdMap::detect()
    {
        Ok(idmap) => Box::new(crate::sandbox::owner::Ownership::new(
            &std::env::current_exe()?,
            &idmap,
        )),
        Err(_) => Box::new(rootfs_builder::DirectOwner(0, 0)),
    };
    // The caches first: the whole bytecode cache is then counted as freed, before the
    // snapshot gc would prune its unused entries uncounted. Refused (and nothing else done)
    // while a build holds them.
    if a.caches {
        let freed = snaps.clear_caches(owner.as_ref())?;
        println!("emptied the build caches ({:.1} MB)", freed as f64 / 1e6);
    }
    let (removed_snaps, bases) = snaps.gc(owner.as_ref())?;
    let report = images.gc(&bases.into_iter().collect())?;
    println!(
        "removed {removed_snaps} snapshots, {} images, {} blobs ({:.1} MB)",
        report.images,
        report.blobs,
        report.bytes as f64 / 1e6
    );
    // Copies of uv that no build uses any more (the host's uv was upgraded, or a build
    // died while copying it). Without a uv on this host no version is removed.
    let current = crate::image::builder::find_uv(cfg.builder_config().uv_path.as_deref())
        .and_then(|p| crate::image::builder::uv_version(&p))
        .ok();
    let (files, bytes) = crate::image::builder::gc_tools(&images, current.as_deref());
    if files > 0 {
        println!(
            "removed {files} unused copies of uv ({:.1} MB)",
            bytes as f64 / 1e6
        );
    }
    Ok(0)
}
