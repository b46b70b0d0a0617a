//! `tako-vm pull IMAGE`.

use clap::Args;

use super::images::{CliProgress, StoreArgs};
use crate::image::{client, Registry};

/// Arguments of `tako-vm pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// Image reference (`python:3.11-slim`, `registry:5000/repo:tag`, `…@sha256:…`).
    image: String,
    #[command(flatten)]
    store: StoreArgs,
}

/// Pulls, verifies and unpacks an image; prints its digest.
pub fn run(config: Option<&std::path::Path>, a: PullArgs) -> anyhow::Result<i32> {
    let opts = a.store.load(config)?;
    let store = opts.images()?;
    let registry = Registry::new(opts.registry_config())?;
    let progress = CliProgress::new();
    let rec = client::pull(&registry, &store, &a.image, &progress)?;
    println!("{} {}", rec.source, rec.digest);
    Ok(0)
}
