//! `tako-vm images`, and what the image commands share: the store, the registry settings
//! and progress output (indicatif bars on a terminal, plain lines otherwise).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use rootfs_builder::SnapshotStore;

use crate::config::Config;
use crate::image::progress::short;
use crate::image::{ImageStore, Progress, RegistryConfig};

/// Options every image command takes.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Image and snapshot store (default: /var/lib/tako-vm as root, else ~/.local/share/tako-vm).
    #[arg(long, env = "TAKO_VM_IMAGE_STORE", global = true)]
    pub store: Option<PathBuf>,
    /// Send docker.io pulls to this registry (host[:port] or http(s)://host[:port]).
    #[arg(long, env = "TAKO_VM_REGISTRY_MIRROR", global = true)]
    pub registry_mirror: Option<String>,
    /// Registry settings of the configuration (see [`StoreArgs::configured`]).
    #[arg(skip)]
    pub registry: Option<RegistryConfig>,
}

impl StoreArgs {
    /// These options over the configuration's image settings (`image_store`,
    /// `registry_mirror`, credentials …): flags and variables first, then the file.
    pub fn configured(&self, cfg: &Config) -> StoreArgs {
        StoreArgs {
            store: self.store.clone().or_else(|| cfg.image_store.clone()),
            registry_mirror: self.registry_mirror.clone(),
            registry: Some(cfg.registry_config()),
        }
    }

    /// [`StoreArgs::configured`] with the configuration file of `tako-vm --config` (or the
    /// searched one).
    pub fn load(&self, config: Option<&Path>) -> anyhow::Result<StoreArgs> {
        let (cfg, _) = crate::config::load(config)?;
        Ok(self.configured(&cfg))
    }

    /// The store's directory.
    pub fn root(&self) -> PathBuf {
        self.store.clone().unwrap_or_else(ImageStore::default_root)
    }

    /// Opens the image store (creating it).
    pub fn images(&self) -> anyhow::Result<ImageStore> {
        Ok(ImageStore::open(self.root())?)
    }

    /// Opens the image store if it exists: commands that only read or remove (`images`,
    /// `gc`) do not create one where a mistyped `--store` points.
    pub fn existing_images(&self) -> anyhow::Result<Option<ImageStore>> {
        let root = self.root();
        if !root.exists() {
            eprintln!(
                "no image store at {} yet (tako-vm pull or tako-vm build makes it)",
                root.display()
            );
            return Ok(None);
        }
        self.images().map(Some)
    }

    /// Opens the snapshot store (beside the images).
    pub fn snapshots(&self, images: &ImageStore) -> anyhow::Result<SnapshotStore> {
        Ok(SnapshotStore::open(images.root())?)
    }

    /// Registry settings: the configuration (or the environment), then our flags.
    pub fn registry_config(&self) -> RegistryConfig {
        let mut c = self
            .registry
            .clone()
            .unwrap_or_else(RegistryConfig::from_env);
        if let Some(m) = &self.registry_mirror {
            c.mirror = Some(m.clone());
        }
        c
    }
}

/// Progress on stderr: bars on a terminal, one line per event otherwise.
pub struct CliProgress {
    multi: Option<MultiProgress>,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl CliProgress {
    /// Bars when stderr is a terminal.
    pub fn new() -> CliProgress {
        CliProgress {
            multi: std::io::stderr().is_terminal().then(MultiProgress::new),
            bars: Mutex::new(HashMap::new()),
        }
    }
}

impl Default for CliProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress for CliProgress {
    fn blob_start(&self, digest: &str, size: u64, done: u64) {
        match &self.multi {
            Some(m) => {
                let bar = m.add(ProgressBar::new(size));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                    )
                    .expect("template")
                    .progress_chars("=> "),
                );
                bar.set_prefix(short(digest).to_string());
                bar.set_position(done);
                self.bars.lock().expect("bars").insert(digest.into(), bar);
            }
            None => eprintln!(
                "downloading {} ({:.1} MB{})",
                short(digest),
                size as f64 / 1e6,
                if done > 0 {
                    format!(", resuming at {:.1} MB", done as f64 / 1e6)
                } else {
                    String::new()
                }
            ),
        }
    }

    fn blob_advance(&self, digest: &str, n: u64) {
        if let Some(b) = self.bars.lock().expect("bars").get(digest) {
            b.inc(n);
        }
    }

    fn blob_done(&self, digest: &str) {
        match self.bars.lock().expect("bars").remove(digest) {
            Some(b) => b.finish(),
            None if self.multi.is_none() => eprintln!("have {}", short(digest)),
            None => {}
        }
    }

    fn step(&self, message: &str) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(message);
            }
            None => eprintln!("{message}"),
        }
    }
}

/// Arguments of `tako-vm images`.
#[derive(Debug, Args)]
pub struct ImagesArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn human_size(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.1} GB", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MB", b as f64 / (1u64 << 20) as f64)
    }
}

fn unix_to_iso(secs: u64) -> String {
    chrono::DateTime::from_timestamp(secs as i64, 0)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// `tako-vm images`: pulled images and job-type snapshots (name, digest, size, created).
pub fn run(config: Option<&Path>, a: ImagesArgs) -> anyhow::Result<i32> {
    let store = a.store.load(config)?;
    let mut rows: Vec<[String; 4]> = Vec::new();
    let Some(images) = store.existing_images()? else {
        print_rows(&rows, a.json)?;
        return Ok(0);
    };
    let snaps = store.snapshots(&images)?;
    for (name, digest) in images.names()? {
        if let Some(rec) = images.record_by_digest(&digest)? {
            rows.push([
                name,
                short(&rec.digest).to_string(),
                human_size(rec.size()),
                rec.created.clone().unwrap_or_default(),
            ]);
        }
    }
    for (name, s) in snaps.list() {
        // As for images: everything a run sees (its layer and the base under it).
        let size = crate::image::store::dir_size(&s.rootfs)
            + s.lower.as_deref().map_or(0, crate::image::store::dir_size);
        rows.push([
            rootfs_builder::Snapshot::image_name(&name),
            format!("sha256:{}", s.short_digest()),
            human_size(size),
            unix_to_iso(s.created),
        ]);
    }
    print_rows(&rows, a.json)?;
    Ok(0)
}

/// The image list: a table, or JSON objects.
fn print_rows(rows: &[[String; 4]], json: bool) -> anyhow::Result<()> {
    if json {
        let v: Vec<_> = rows
            .iter()
            .map(|r| serde_json::json!({"name": r[0], "digest": r[1], "size": r[2], "created": r[3]}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let w0 = rows.iter().map(|r| r[0].len()).max().unwrap_or(4).max(4);
    println!("{:w0$}  {:19}  {:>9}  CREATED", "NAME", "DIGEST", "SIZE");
    for r in rows {
        println!("{:w0$}  {:19}  {:>9}  {}", r[0], r[1], r[2], r[3]);
    }
    Ok(())
}
