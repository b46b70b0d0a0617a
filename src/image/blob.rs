//! Blob downloads: streamed straight to a partial file in the store, sha256-verified, and
//! resumed with `Range` after an interruption; a blob that fails verification is deleted
//! and never used.

use std::fs::{self, File};
use std::io::{Read, Write};

use reqwest::StatusCode;
use sha2::{Digest, Sha256};

use super::client::{Endpoint, Registry};
use super::reference::Reference;
use super::store::{FileLock, ImageStore};
use super::{ImageError, Progress, Result};

enum Retry {
    Yes(ImageError),
    No(ImageError),
}

impl Registry {
    /// Downloads a blob into the store (streamed to disk, sha256-verified, resumable).
    pub fn fetch_blob(
        &self,
        r: &Reference,
        digest: &str,
        size: u64,
        store: &ImageStore,
        progress: &dyn Progress,
    ) -> Result<()> {
        if store.has_blob(digest) {
            progress.blob_done(digest);
            return Ok(());
        }
        let ep = self.endpoint(r)?;
        let part = store.partial_path(digest)?;
        let _lock = FileLock::acquire(&part.with_extension("lock"))?;
        if store.has_blob(digest) {
            progress.blob_done(digest);
            return Ok(());
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.download_once(r, &ep, digest, size, &part, store, progress) {
                Ok(()) => break,
                Err(Retry::Yes(e)) if attempt < self.config().attempts => {
                    let _ = e;
                    self.sleep(attempt);
                }
                Err(Retry::Yes(e) | Retry::No(e)) => return Err(e),
            }
        }
        let _ = fs::remove_file(part.with_extension("lock"));
        progress.blob_done(digest);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn download_once(
        &self,
        r: &Reference,
        ep: &Endpoint,
        digest: &str,
        size: u64,
        part: &std::path::Path,
        store: &ImageStore,
        progress: &dyn Progress,
    ) -> std::result::Result<(), Retry> {
        let no = |e: ImageError| Retry::No(e);
        let mut have = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        if have > size {
            let _ = fs::remove_file(part);
            have = 0;
        }
        let resp = self
            .get(r, ep, &format!("blobs/{digest}"), None, have)
            .map_err(|e| match e {
                ImageError::Unreachable { .. } => Retry::Yes(e),
                e => Retry::No(e),
            })?;
        let status = resp.status();
        let append = match status {
            StatusCode::PARTIAL_CONTENT if have > 0 => true,
            StatusCode::OK => false,
            StatusCode::RANGE_NOT_SATISFIABLE => {
                let _ = fs::remove_file(part);
                return Err(Retry::Yes(ImageError::Http {
                    registry: ep.host.clone(),
                    status: 416,
                    what: format!("blob {digest}"),
                }));
            }
            s => {
                return Err(no(ImageError::Http {
                    registry: ep.host.clone(),
                    status: s.as_u16(),
                    what: format!("blob {digest}"),
                }))
            }
        };
        let mut hasher = Sha256::new();
        let mut file = if append {
            let mut f = File::open(part).map_err(|e| no(ImageError::io("open", part, e)))?;
            std::io::copy(&mut f, &mut hasher).map_err(|e| no(ImageError::io("read", part, e)))?;
            fs::OpenOptions::new().append(true).open(part)
        } else {
            have = 0;
            File::create(part)
        }
        .map_err(|e| no(ImageError::io("open", part, e)))?;
        progress.blob_start(digest, size, have);
        let mut body = resp.take(size - have + 1);
        let mut buf = vec![0u8; 256 << 10];
        let mut got = have;
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    // Keep what arrived: the next attempt resumes from it.
                    let _ = file.flush();
                    return Err(Retry::Yes(ImageError::Unreachable {
                        registry: ep.host.clone(),
                        detail: format!("download of {digest} interrupted: {e}"),
                    }));
                }
            };
            file.write_all(&buf[..n])
                .map_err(|e| no(ImageError::io("write", part, e)))?;
            hasher.update(&buf[..n]);
            got += n as u64;
            progress.blob_advance(digest, n as u64);
        }
        file.sync_all()
            .map_err(|e| no(ImageError::io("sync", part, e)))?;
        drop(file);
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if got < size {
            return Err(Retry::Yes(ImageError::Unreachable {
                registry: ep.host.clone(),
                detail: format!("download of {digest} ended after {got} of {size} bytes"),
            }));
        }
        if got != size || actual != digest {
            let _ = fs::remove_file(part);
            return Err(no(ImageError::DigestMismatch {
                what: "blob",
                expected: digest.to_string(),
                actual: if got != size {
                    format!("{got} bytes instead of {size}")
                } else {
                    actual
                },
            }));
        }
        let dest = store.blob_path(digest).map_err(no)?;
        rootfs_builder::durable::rename(part, &dest)
            .map_err(|e| no(ImageError::io("rename", &dest, e)))
    }
}
