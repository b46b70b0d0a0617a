//! Applying OCI layers to a directory, safely.
//!
//! - Entries are created component by component with `lstat` checks: a symlink (or any
//!   non-directory) on the way to an entry is replaced by a directory, as the upper
//!   directory of an overlay masks it, so nothing is ever written through a symlink.
//! - `..`, absolute paths and hard links that leave the root refuse the whole layer.
//! - `.wh.NAME` removes `NAME` of lower layers; `.wh..wh..opq` empties its directory of
//!   everything lower layers put there (entries of the same layer stay).
//! - Device nodes and fifos are skipped; setuid/setgid bits dropped; whatever the owner can
//!   read (execute) becomes readable (executable) for everybody, so the sandbox's uid 1000
//!   (which owns nothing here) can use it; `etc/shadow` and `etc/gshadow` keep their modes.
//!   Files belong to the unpacking user; mtimes are kept (Python checks `.pyc` against them).

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::store::{remove_any, ImageStore, LayerRef};
use super::{tar_error_text, ImageError, Progress, Result};

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Compression of a layer blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// From the media type, falling back to the blob's magic bytes.
    pub fn detect(media_type: &str, head: &[u8]) -> Compression {
        if media_type.ends_with("gzip") {
            Compression::Gzip
        } else if media_type.ends_with("zstd") {
            Compression::Zstd
        } else if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Opens a layer blob as a decompressed tar stream.
pub fn open_layer(path: &Path, media_type: &str) -> Result<Box<dyn Read>> {
    let mut f = File::open(path).map_err(|e| ImageError::io("open", path, e))?;
    let mut head = [0u8; 4];
    let n = f
        .read(&mut head)
        .map_err(|e| ImageError::io("read", path, e))?;
    let f = BufReader::new(File::open(path).map_err(|e| ImageError::io("open", path, e))?);
    Ok(match Compression::detect(media_type, &head[..n]) {
        Compression::None => Box::new(f),
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(f)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(f)
                .map_err(|e| ImageError::io("zstd", path, e))?,
        ),
    })
}

/// Normalises an entry path: relative, no `..`, `.` dropped. `None` for the root itself.
fn normalise(layer: &str, raw: &Path) -> Result<Option<PathBuf>> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(unsafe_layer(
                    layer,
                    format!("entry {} contains ..", raw.display()),
                ))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(unsafe_layer(
                    layer,
                    format!("entry {} is an absolute path", raw.display()),
                ))
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

fn unsafe_layer(layer: &str, why: String) -> ImageError {
    ImageError::UnsafeLayer {
        layer: layer.to_string(),
        why,
    }
}

/// Makes every parent directory of `rel` under `root` a real directory (never following or
/// writing through a symlink) and returns the absolute path of `rel`.
fn make_parents(root: &Path, rel: &Path) -> Result<PathBuf> {
    let mut cur = root.to_path_buf();
    let parent = rel.parent().unwrap_or(Path::new(""));
    for c in parent.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                remove_any(&cur)?;
                mkdir(&cur, 0o755)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => mkdir(&cur, 0o755)?,
            Err(e) => return Err(ImageError::io("stat", &cur, e)),
        }
    }
    Ok(root.join(rel))
}

/// The existing path of `rel` under `root` when every parent is a real directory.
fn existing_parents(root: &Path, rel: &Path) -> Option<PathBuf> {
    let mut cur = root.to_path_buf();
    for c in rel.parent().unwrap_or(Path::new("")).components() {
        cur.push(c);
        if !fs::symlink_metadata(&cur).is_ok_and(|m| m.is_dir()) {
            return None;
        }
    }
    Some(root.join(rel))
}

fn mkdir(p: &Path, mode: u32) -> Result<()> {
    fs::create_dir(p).map_err(|e| ImageError::io("mkdir", p, e))?;
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .map_err(|e| ImageError::io("chmod", p, e))
}

/// The mode we give an entry: no setuid/setgid, owner bits shared with group and others.
pub fn readable_mode(mode: u32, is_dir: bool, rel: &Path) -> u32 {
    let keep_private = matches!(
        rel.to_str(),
        Some("etc/shadow" | "etc/gshadow" | "etc/shadow-" | "etc/gshadow-")
    );
    let mut m = mode & 0o1777;
    if !is_dir {
        // Never writable by group or others: a file's inode is shared (hard links) by every
        // snapshot built on the image, and a builder sandbox sees those links in its
        // writable install directories; only the owner (the store's user) may write it.
        m &= 0o755;
    } else {
        m |= 0o700;
    }
    if keep_private {
        return m;
    }
    if m & 0o400 != 0 {
        m |= 0o044;
    }
    if m & 0o100 != 0 {
        m |= 0o011;
    }
    m
}

/// Applies one layer (a tar stream) on top of `root`.
pub fn apply_layer(root: &Path, tar: impl Read, layer: &str) -> Result<()> {
    let mut archive = tar::Archive::new(tar);
    let mut written: HashSet<PathBuf> = HashSet::new();
    let entries = archive
        .entries()
        .map_err(|e| unsafe_layer(layer, format!("not a tar stream: {}", tar_error_text(&e))))?;
    for entry in entries {
        let mut entry = entry
            .map_err(|e| unsafe_layer(layer, format!("corrupt tar: {}", tar_error_text(&e))))?;
        let raw = entry
            .path()
            .map_err(|e| unsafe_layer(layer, format!("bad path: {e}")))?
            .into_owned();
        let Some(rel) = normalise(layer, &raw)? else {
            continue; // the root directory itself
        };
        let file_name = rel
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        if file_name == OPAQUE {
            let dir = rel.parent().unwrap_or(Path::new(""));
            let abs = make_parents(root, &dir.join("x"))?;
            let abs_dir = abs.parent().unwrap_or(root).to_path_buf();
            for child in fs::read_dir(&abs_dir)
                .map_err(|e| ImageError::io("read", &abs_dir, e))?
                .flatten()
            {
                if !written.contains(&dir.join(child.file_name())) {
                    remove_any(&child.path())?;
                }
            }
            continue;
        }
        if let Some(victim) = file_name.strip_prefix(WHITEOUT) {
            if victim.is_empty() || victim == "." || victim == ".." || victim.contains('/') {
                return Err(unsafe_layer(
                    layer,
                    format!("bad whiteout {}", raw.display()),
                ));
            }
            if let Some(p) = existing_parents(root, &rel.with_file_name(victim)) {
                remove_any(&p)?;
            }
            continue;
        }
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode().unwrap_or(0o644);
        let mtime = header.mtime().ok();
        use tar::EntryType as T;
        match kind {
            T::Directory => {
                let abs = make_parents(root, &rel)?;
                match fs::symlink_metadata(&abs) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        remove_any(&abs)?;
                        mkdir(&abs, 0o755)?;
                    }
                    Err(_) => mkdir(&abs, 0o755)?,
                }
                fs::set_permissions(
                    &abs,
                    fs::Permissions::from_mode(readable_mode(mode, true, &rel)),
                )
                .map_err(|e| ImageError::io("chmod", &abs, e))?;
            }
            T::Regular | T::Continuous => {
                let abs = make_parents(root, &rel)?;
                remove_any(&abs)?;
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&abs)
                    .map_err(|e| ImageError::io("create", &abs, e))?;
                io::copy(&mut entry, &mut f).map_err(|e| ImageError::io("write", &abs, e))?;
                f.set_permissions(fs::Permissions::from_mode(readable_mode(mode, false, &rel)))
                    .map_err(|e| ImageError::io("chmod", &abs, e))?;
                if let Some(t) = mtime {
                    let _ = f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(t));
                }
            }
            T::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| unsafe_layer(layer, format!("bad link: {e}")))?
                    .ok_or_else(|| {
                        unsafe_layer(layer, format!("symlink {} without target", raw.display()))
                    })?
                    .into_owned();
                let abs = make_parents(root, &rel)?;
                remove_any(&abs)?;
                symlink(&target, &abs).map_err(|e| ImageError::io("symlink", &abs, e))?;
            }
            T::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| unsafe_layer(layer, format!("bad link: {e}")))?
                    .ok_or_else(|| {
                        unsafe_layer(layer, format!("hard link {} without target", raw.display()))
                    })?
                    .into_owned();
                let target_rel = normalise(layer, &target)
                    .map_err(|_| {
                        unsafe_layer(
                            layer,
                            format!(
                                "hard link {} points outside the root ({})",
                                raw.display(),
                                target.display()
                            ),
                        )
                    })?
                    .ok_or_else(|| {
                        unsafe_layer(layer, format!("hard link {} to the root", raw.display()))
                    })?;
                let Some(src) = existing_parents(root, &target_rel)
                    .filter(|p| fs::symlink_metadata(p).is_ok_and(|m| !m.is_dir()))
                else {
                    return Err(unsafe_layer(
                        layer,
                        format!(
                            "hard link {} to missing {}",
                            raw.display(),
                            target.display()
                        ),
                    ));
                };
                let abs = make_parents(root, &rel)?;
                if abs != src {
                    remove_any(&abs)?;
                    fs::hard_link(&src, &abs).map_err(|e| ImageError::io("link", &abs, e))?;
                }
            }
            // Device nodes and fifos have no place in a sandbox rootfs; pax/GNU extension
            // headers are consumed by the tar reader.
            _ => continue,
        }
        written.insert(rel);
    }
    Ok(())
}

/// Unpacks the layers of an image into `dest` (which must not exist), through a temporary
/// directory renamed at the end, and prepares it for the sandbox.
pub fn unpack_layers(
    store: &ImageStore,
    layers: &[LayerRef],
    dest: &Path,
    progress: &dyn Progress,
) -> Result<()> {
    let tmp = dest.with_file_name(format!(
        "{}.unpack.{}",
        dest.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    remove_any(&tmp)?;
    mkdir(&tmp, 0o755)?;
    let res = (|| {
        for (i, l) in layers.iter().enumerate() {
            progress.step(&format!(
                "unpacking layer {}/{} {}",
                i + 1,
                layers.len(),
                super::progress::short(&l.digest)
            ));
            let path = store.blob_path(&l.digest)?;
            apply_layer(&tmp, open_layer(&path, &l.media_type)?, &l.digest)?;
        }
        rootfs_builder::prepare(&tmp).map_err(|e| ImageError::io("prepare", &tmp, e))?;
        // On disk before it is published (rootfs_builder::durable).
        rootfs_builder::durable::sync_fs(&tmp).map_err(|e| ImageError::io("sync", &tmp, e))?;
        rootfs_builder::durable::rename(&tmp, dest).map_err(|e| ImageError::io("rename", dest, e))
    })();
    if res.is_err() {
        let _ = remove_any(&tmp);
    }
    res
}

/// The unpacked rootfs of an image, unpacking it on first use (one unpack per image, also
/// across processes).
pub fn ensure_rootfs(
    store: &ImageStore,
    rec: &super::ImageRecord,
    progress: &dyn Progress,
) -> Result<PathBuf> {
    let dest = store.rootfs_of(&rec.digest)?;
    if dest.is_dir() {
        return Ok(dest);
    }
    let dir = store.image_dir(&rec.digest)?;
    fs::create_dir_all(&dir).map_err(|e| ImageError::io("create", &dir, e))?;
    let _lock = super::store::FileLock::acquire(&dir.join("unpack.lock"))?;
    if !dest.is_dir() {
        unpack_layers(store, &rec.layers, &dest, progress)?;
    }
    Ok(dest)
}
