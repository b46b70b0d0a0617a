//! The local image store: blobs by digest, pulled images (manifest, config, unpacked
//! rootfs) by manifest digest, and local names.
//!
//! ```text
//! <root>/blobs/sha256/<hex>        verified blobs (layers, configs, manifests)
//! <root>/blobs/partial/<hex>       downloads in progress (resumed by the next pull)
//! <root>/images/<hex>/image.json   an image record (hex = manifest digest)
//! <root>/images/<hex>/rootfs/      its unpacked, sandbox-ready root filesystem
//! <root>/names.json                local name → manifest digest
//! ```
//! Writers take `flock`s (`*.lock`), so a server and a CLI can share one store.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{ImageError, Result};

/// One layer of an image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LayerRef {
    /// Digest of the (compressed) blob.
    pub digest: String,
    /// Media type (decides the decompression).
    pub media_type: String,
    /// Blob size in bytes.
    pub size: u64,
}

/// A pulled or imported image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageRecord {
    /// Manifest digest (the image's identity).
    pub digest: String,
    /// Config blob digest.
    pub config_digest: String,
    /// Layers, base first.
    pub layers: Vec<LayerRef>,
    /// `Env` of the image config (`KEY=VALUE`).
    pub env: Vec<String>,
    /// Architecture of the config.
    pub architecture: String,
    /// `created` of the config, when present.
    pub created: Option<String>,
    /// Where it came from (reference or archive).
    pub source: String,
}

impl ImageRecord {
    /// The record of a manifest whose config is `config` (Env, architecture, created).
    pub fn new(
        digest: String,
        config_digest: String,
        layers: Vec<LayerRef>,
        config: &oci_spec::image::ImageConfiguration,
        source: String,
    ) -> ImageRecord {
        ImageRecord {
            digest,
            config_digest,
            layers,
            env: config
                .config()
                .as_ref()
                .and_then(|c| c.env().clone())
                .unwrap_or_default(),
            architecture: config.architecture().to_string(),
            created: config.created().clone(),
            source,
        }
    }

    /// Total size of the layers in bytes (compressed).
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }

    /// The config `Env` as pairs.
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .filter_map(|e| e.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

/// An exclusive `flock` held until dropped.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// Blocks until `path` is locked exclusively (created if missing; an existing file is
    /// opened read-only, so one another user made does not lock this one out).
    pub fn acquire(path: &Path) -> Result<FileLock> {
        let f = rootfs_builder::flock_file(path, libc::LOCK_EX)
            .map_err(|e| ImageError::io("lock", path, e))?;
        Ok(FileLock { _file: f })
    }
}

/// Writes `bytes` to `path` atomically and durably (`rootfs_builder::durable::write_file`):
/// threads of one process may write the same path at once, and a crash leaves the old
/// content or the new.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    rootfs_builder::durable::write_file(path, bytes).map_err(|e| ImageError::io("write", path, e))
}

/// sha256 digest (`sha256:<hex>`) of bytes.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn hex_of(digest: &str) -> Result<&str> {
    if super::reference::valid_digest(digest) {
        Ok(&digest[7..])
    } else {
        Err(ImageError::Malformed {
            what: "digest".into(),
            detail: format!("{digest:?} is not sha256:<64 hex>"),
        })
    }
}

/// What `gc` removed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct GcReport {
    /// Image directories removed.
    pub images: usize,
    /// Blobs (and partial downloads) removed.
    pub blobs: usize,
    /// Bytes freed (approximate: file sizes).
    pub bytes: u64,
}

/// The local image store.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

impl ImageStore {
    /// The default store: `TAKO_VM_IMAGE_STORE`, else `/var/lib/tako-vm` for root, else
    /// `$XDG_DATA_HOME/tako-vm` (`~/.local/share/tako-vm`).
    pub fn default_root() -> PathBuf {
        if let Some(p) = std::env::var_os("TAKO_VM_IMAGE_STORE") {
            return PathBuf::from(p);
        }
        if nix::unistd::geteuid().is_root() {
            return PathBuf::from("/var/lib/tako-vm");
        }
        let base = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        base.join("tako-vm")
    }

    /// Opens (creating) a store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<ImageStore> {
        let root = root.into();
        for d in ["blobs/sha256", "blobs/partial", "images"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(|e| ImageError::io("create", &p, e))?;
        }
        Ok(ImageStore { root })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of a verified blob.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.root.join("blobs/sha256").join(hex_of(digest)?))
    }

    /// Path of a partial download of a blob.
    pub fn partial_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.root.join("blobs/partial").join(hex_of(digest)?))
    }

    /// Whether a verified blob is present.
    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.is_file())
    }

    /// Stores small bytes (manifests, configs) after checking their digest.
    pub fn put_bytes(&self, digest: &str, bytes: &[u8]) -> Result<()> {
        let actual = digest_of(bytes);
        if actual != digest {
            return Err(ImageError::DigestMismatch {
                what: "blob",
                expected: digest.into(),
                actual,
            });
        }
        let p = self.blob_path(digest)?;
        if !p.is_file() {
            write_atomic(&p, bytes)?;
        }
        Ok(())
    }

    /// Reads a small blob, re-checking its digest.
    pub fn read_bytes(&self, digest: &str) -> Result<Vec<u8>> {
        let p = self.blob_path(digest)?;
        let mut v = Vec::new();
        File::open(&p)
            .and_then(|mut f| f.read_to_end(&mut v))
            .map_err(|e| ImageError::io("read", &p, e))?;
        if digest_of(&v) != digest {
            return Err(ImageError::DigestMismatch {
                what: "blob",
                expected: digest.into(),
                actual: digest_of(&v),
            });
        }
        Ok(v)
    }

    /// Directory of an image (by manifest digest).
    pub fn image_dir(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.root.join("images").join(hex_of(digest)?))
    }

    /// The unpacked rootfs of an image (present once [`super::unpack::ensure_rootfs`] ran).
    pub fn rootfs_of(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.image_dir(digest)?.join("rootfs"))
    }

    /// Saves an image record.
    pub fn save_record(&self, rec: &ImageRecord) -> Result<()> {
        let dir = self.image_dir(&rec.digest)?;
        fs::create_dir_all(&dir).map_err(|e| ImageError::io("create", &dir, e))?;
        let json = serde_json::to_vec_pretty(rec).expect("record serialises");
        write_atomic(&dir.join("image.json"), &json)
    }

    /// Loads the record of a manifest digest.
    pub fn record_by_digest(&self, digest: &str) -> Result<Option<ImageRecord>> {
        let p = self.image_dir(digest)?.join("image.json");
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| ImageError::Malformed {
                    what: p.display().to_string(),
                    detail: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ImageError::io("read", &p, e)),
        }
    }

    /// Local names → manifest digests.
    pub fn names(&self) -> Result<BTreeMap<String, String>> {
        let p = self.root.join("names.json");
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| ImageError::Malformed {
                what: p.display().to_string(),
                detail: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(ImageError::io("read", &p, e)),
        }
    }

    /// Points the local `name` at an image.
    pub fn tag(&self, name: &str, digest: &str) -> Result<()> {
        let _l = FileLock::acquire(&self.root.join("names.lock"))?;
        let mut names = self.names()?;
        names.insert(name.to_string(), digest.to_string());
        let json = serde_json::to_vec_pretty(&names).expect("names serialise");
        write_atomic(&self.root.join("names.json"), &json)
    }

    /// Removes a local name (the image stays until `gc`).
    pub fn untag(&self, name: &str) -> Result<bool> {
        let _l = FileLock::acquire(&self.root.join("names.lock"))?;
        let mut names = self.names()?;
        let had = names.remove(name).is_some();
        let json = serde_json::to_vec_pretty(&names).expect("names serialise");
        write_atomic(&self.root.join("names.json"), &json)?;
        Ok(had)
    }

    /// The record a local name points at; `name` may be a reference in any spelling
    /// (`python:3.11-slim`), a full digest, or a unique digest prefix of 12+ hex.
    pub fn lookup(&self, name: &str) -> Result<Option<ImageRecord>> {
        let names = self.names()?;
        let canonical = super::Reference::parse(name).ok().map(|r| r.to_string());
        let digest = names
            .get(name)
            .or_else(|| canonical.as_ref().and_then(|c| names.get(c)))
            .cloned()
            .or_else(|| {
                let h = name.strip_prefix("sha256:").unwrap_or(name);
                (h.len() >= 12 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                    .then(|| {
                        let m: BTreeSet<&String> =
                            names.values().filter(|d| d[7..].starts_with(h)).collect();
                        (m.len() == 1).then(|| m.into_iter().next().unwrap().clone())
                    })
                    .flatten()
            });
        match digest {
            Some(d) => self.record_by_digest(&d),
            None => Ok(None),
        }
    }

    /// Removes images no name (nor `keep`) references, and blobs no kept image uses.
    /// `keep` holds manifest digests referenced from elsewhere (job-type snapshots).
    pub fn gc(&self, keep: &BTreeSet<String>) -> Result<GcReport> {
        let _l = FileLock::acquire(&self.root.join("gc.lock"))?;
        let mut report = GcReport::default();
        let mut live: BTreeSet<String> = self.names()?.into_values().collect();
        live.extend(keep.iter().cloned());
        let mut blobs: BTreeSet<String> = BTreeSet::new();
        let images = self.root.join("images");
        for e in fs::read_dir(&images)
            .map_err(|e| ImageError::io("read", &images, e))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().to_string();
            let digest = format!("sha256:{name}");
            if live.contains(&digest) {
                if let Ok(Some(rec)) = self.record_by_digest(&digest) {
                    blobs.insert(rec.digest.clone());
                    blobs.insert(rec.config_digest.clone());
                    blobs.extend(rec.layers.iter().map(|l| l.digest.clone()));
                    if let Ok(idx) = fs::read_to_string(e.path().join("index-digest")) {
                        blobs.insert(idx.trim().to_string());
                    }
                }
                continue;
            }
            report.bytes += dir_size(&e.path());
            remove_any(&e.path())?;
            report.images += 1;
        }
        for sub in ["blobs/sha256", "blobs/partial"] {
            let dir = self.root.join(sub);
            for e in fs::read_dir(&dir)
                .map_err(|e| ImageError::io("read", &dir, e))?
                .flatten()
            {
                let name = e.file_name().to_string_lossy().to_string();
                if sub == "blobs/sha256" && blobs.contains(&format!("sha256:{name}")) {
                    continue;
                }
                report.bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
                remove_any(&e.path())?;
                report.blobs += 1;
            }
        }
        Ok(report)
    }
}

/// Removes a file or a directory tree without following symlinks, however deep the tree
/// (`rootfs_builder::remove_path`: no recursion, no full paths below `p`).
pub fn remove_any(p: &Path) -> Result<()> {
    rootfs_builder::remove_path(p).map_err(|e| ImageError::io("remove", p, e))
}

/// Sum of file sizes under `p` (not following symlinks; hard links counted once per link).
pub fn dir_size(p: &Path) -> u64 {
    let Ok(m) = fs::symlink_metadata(p) else {
        return 0;
    };
    if !m.is_dir() {
        return m.len();
    }
    // Snapshot trees hold what build code made: the walk does not recurse.
    let mut total = 0;
    let _ = rootfs_builder::walk_tree(p, |e, _| {
        let m = e.metadata()?;
        if !m.is_dir() {
            total += m.len();
        }
        Ok(m.is_dir())
    });
    total
}
