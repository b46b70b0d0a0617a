//! Durability of what the stores publish by rename. After a crash (power loss, kernel
//! panic) a published snapshot, unpacked image, name or record must not point at data that
//! never reached the disk: a rename can reach the journal before the data of the files it
//! publishes, and a snapshot with empty files would be reused under its unchanged key. So
//! what a rename publishes is flushed first, and the directory after it.

use std::fs;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

/// Flushes the whole file system that holds `path` (`syncfs(2)`): one flush for the
/// thousands of files a build or an unpack wrote, where an fsync each would commit the
/// journal thousands of times.
pub fn sync_fs(path: &Path) -> io::Result<()> {
    let f = fs::File::open(path)?;
    // SAFETY: syncfs on a descriptor we own; no memory is passed.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Flushes the directory `dir` itself, so that a rename into it (or out of it) survives a
/// crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Renames `from` to `to` and flushes `to`'s directory, so the new name survives a crash.
/// What `from` holds must be on disk already ([`sync_fs`], or an fsync of the file).
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)?;
    sync_dir(to.parent().unwrap_or(Path::new(".")))
}

/// Writes `bytes` to `path` atomically and durably: a temporary file unique to this call
/// (so threads may write the same path at once), flushed, renamed over `path`, and the
/// directory flushed. A crash leaves the old content or the new, never a torn or empty file.
pub fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_file_mode(path, bytes, 0o644)
}

/// [`write_file`] creating the file with `mode` (less the umask), e.g. 0o755 for a program
/// that must never be seen under its name without its execute bits.
pub fn write_file_mode(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}{TEMP}{}.{n}", std::process::id()));
    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// What [`write_file`]'s temporary names carry between the file name and the writer's pid.
const TEMP: &str = ".tmp.";

/// Whether `name` is a temporary file of [`write_file`] whose writer is gone (killed while
/// writing): what a store's clean-up may remove.
pub fn is_stale_temp(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    let Some((_, pid_n)) = rest.rsplit_once(TEMP) else {
        return false;
    };
    let pid = pid_n.split('.').next().unwrap_or("");
    pid.parse::<u32>()
        .is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_replaced_whole_and_leave_no_temporary_file() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("name");
        write_file(&p, b"first").unwrap();
        write_file(&p, b"second").unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "second");
        let left: Vec<_> = fs::read_dir(t.path()).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "{left:?}");
        // Threads writing the same path at once: one of the contents wins, whole.
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let p = p.clone();
                std::thread::spawn(move || write_file(&p, format!("writer {i}").as_bytes()))
            })
            .collect();
        for h in handles {
            h.join().unwrap().unwrap();
        }
        assert!(fs::read_to_string(&p).unwrap().starts_with("writer "));
        assert_eq!(fs::read_dir(t.path()).unwrap().count(), 1);
    }

    #[test]
    fn failures_are_reported_and_clean_up() {
        let t = tempfile::tempdir().unwrap();
        // The target is a directory: the rename fails, the temporary file goes.
        let d = t.path().join("dir");
        fs::create_dir(&d).unwrap();
        fs::write(d.join("keep"), "x").unwrap();
        assert!(write_file(&d, b"data").is_err());
        assert_eq!(fs::read_dir(t.path()).unwrap().count(), 1);
        assert!(write_file(&t.path().join("missing/name"), b"data").is_err());
        assert!(sync_fs(&t.path().join("missing")).is_err());
        assert!(sync_dir(&t.path().join("missing")).is_err());
        assert!(rename(&t.path().join("missing"), &t.path().join("to")).is_err());
        rename(&d, &t.path().join("moved")).unwrap();
        assert!(t.path().join("moved/keep").is_file() && !d.exists());
        sync_fs(t.path()).unwrap();
        sync_dir(t.path()).unwrap();
    }

    /// A program is never seen under its name without its mode; a temporary name is stale
    /// only when its writer is gone.
    #[test]
    fn modes_and_stale_temporary_names() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("uv-1.0");
        write_file_mode(&p, b"#!", 0o755).unwrap();
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o111, 0o111, "{mode:o}");
        let me = std::process::id();
        assert!(is_stale_temp(".uv-1.0.tmp.999999999.3"));
        assert!(!is_stale_temp(&format!(".uv-1.0.tmp.{me}.3")));
        assert!(!is_stale_temp("uv-1.0"));
        assert!(!is_stale_temp(".uv-1.0.tmp.notapid.3"));
    }
}
