//! `tako-vm import PATH [--name NAME] [--ref REF]`: images for air-gapped hosts.

use std::path::PathBuf;

use clap::Args;

use super::images::{CliProgress, StoreArgs};
use crate::image::import::{self, ImportOptions};

/// Arguments of `tako-vm import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// An OCI image layout directory, an OCI archive (tar, optionally gzip-compressed) or a
    /// `docker save` tarball.
    path: PathBuf,
    /// Local name of the image (default: the archive's org.opencontainers.image.ref.name
    /// annotation or docker RepoTags).
    #[arg(long)]
    name: Option<String>,
    /// Import only the image the archive names REF (when it holds several).
    #[arg(long = "ref", value_name = "REF")]
    reference: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
}

/// Verifies, stores and unpacks the images of PATH; prints each name and digest.
pub fn run(config: Option<&std::path::Path>, a: ImportArgs) -> anyhow::Result<i32> {
    let store = a.store.load(config)?.images()?;
    let opts = ImportOptions {
        name: a.name,
        reference: a.reference,
        ..ImportOptions::default()
    };
    for i in import::import(&store, &a.path, &opts, &CliProgress::new())? {
        for n in &i.names {
            println!("{n} {}", i.record.digest);
        }
    }
    Ok(0)
}
