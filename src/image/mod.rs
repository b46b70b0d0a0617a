//! OCI images without Docker: a registry client, a blob store by digest, layer unpacking
//! and local image names.
//!
//! Data flow of `pull`: [`reference::Reference`] → [`client::Registry`] resolves the
//! manifest (platform selection in an index) → layers and config are streamed into the
//! [`store::ImageStore`] (sha256-verified, resumable) → [`unpack`] applies the layers into
//! an image rootfs (whiteouts, no escapes) → the rootfs is prepared for the sandbox and the
//! name is recorded. [`builder`] runs the uv install of job-type snapshots in a builder
//! sandbox; [`import`] reads OCI layouts and `docker save` archives for air-gapped hosts.
//!
//! Everything here is blocking (threads for parallel layers); an async server calls it
//! from `spawn_blocking`.

pub mod blob;
pub mod builder;
pub mod client;
pub mod import;
pub mod progress;
pub mod reference;
pub mod store;
pub mod unpack;

use std::io;
use std::path::{Path, PathBuf};

pub use client::{Registry, RegistryConfig};
pub use progress::{NoProgress, Progress};
pub use reference::Reference;
pub use store::{ImageRecord, ImageStore};

/// Errors of the image layer. Messages are lower-case and say what to do.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference does not parse.
    #[error("invalid image reference {reference:?}: {why}")]
    InvalidReference {
        /// As given.
        reference: String,
        /// What is wrong.
        why: String,
    },
    /// The registry cannot be reached (DNS, connection, TLS).
    #[error("registry {registry} is unreachable: {detail} (check the network, registry_mirror or TAKO_VM_REGISTRY_MIRROR)")]
    Unreachable {
        /// Registry host.
        registry: String,
        /// Cause.
        detail: String,
    },
    /// Unknown tag or repository.
    #[error("image {reference} not found in the registry (unknown tag or repository)")]
    NotFound {
        /// The reference.
        reference: String,
    },
    /// Authentication failed or is required.
    #[error("authentication to {registry} failed: {detail} (set TAKO_VM_REGISTRY_USERNAME and TAKO_VM_REGISTRY_PASSWORD, or registry credentials in the config)")]
    Auth {
        /// Registry host.
        registry: String,
        /// What the registry said.
        detail: String,
    },
    /// Any other unexpected HTTP answer.
    #[error("registry {registry} answered {status} for {what}")]
    Http {
        /// Registry host.
        registry: String,
        /// HTTP status.
        status: u16,
        /// What was asked.
        what: String,
    },
    /// Plain HTTP to a non-loopback registry that is not configured as insecure.
    #[error("registry {0} would be reached over plain http; only loopback registries may use http unless listed in insecure_registries")]
    Insecure(String),
    /// A blob or manifest does not match its digest (corrupt or tampered): never used.
    #[error("{what} {expected} failed verification: got {actual}; the download was discarded")]
    DigestMismatch {
        /// blob or manifest.
        what: &'static str,
        /// Expected digest.
        expected: String,
        /// Computed digest (or size).
        actual: String,
    },
    /// No manifest for this host's platform in an index.
    #[error("image {reference} has no manifest for {platform} (available: {available})")]
    NoPlatform {
        /// The reference.
        reference: String,
        /// Wanted platform.
        platform: String,
        /// Platforms offered.
        available: String,
    },
    /// A media type we do not handle.
    #[error("unsupported media type {0}")]
    Unsupported(String),
    /// Malformed JSON (manifest, index, config, layout).
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// What was being parsed.
        what: String,
        /// Parser message.
        detail: String,
    },
    /// A layer that cannot be applied safely (escaping paths, bad entries).
    #[error("layer {layer} refused: {why}")]
    UnsafeLayer {
        /// Layer digest (or file).
        layer: String,
        /// Why.
        why: String,
    },
    /// The disk is full.
    #[error("no space left on device while writing {0}; free disk space (tako-vm gc) and retry")]
    DiskFull(PathBuf),
    /// Local I/O failure.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Path involved.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// No local image of that name.
    #[error("no local image {0}; pull it first (tako-vm pull {0})")]
    NotLocal(String),
}

impl ImageError {
    /// Wraps an I/O error, recognising a full disk.
    pub fn io(op: &'static str, path: &Path, source: io::Error) -> ImageError {
        if source.raw_os_error() == Some(libc::ENOSPC) {
            ImageError::DiskFull(path.to_path_buf())
        } else {
            ImageError::Io {
                op,
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

/// The tar crate's message for a bad archive, printable: it may quote raw header bytes.
pub(crate) fn tar_error_text(e: &io::Error) -> String {
    e.to_string()
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// Shorthand for results of this layer.
pub type Result<T> = std::result::Result<T, ImageError>;

/// The OCI architecture name of this host (`amd64`, `arm64`, …).
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}
