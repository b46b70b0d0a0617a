//! The base image's own Python, byte-compiled once per image.
//!
//! The official `python:<version>-slim` images ship no `.pyc` files: their Dockerfile
//! deletes every one after `make install`. A sandbox's rootfs is read-only, so Python could
//! never cache what it compiles, and every run would compile each standard-library module it
//! imports again: here `import json, re, collections, datetime, decimal, pathlib, typing,
//! dataclasses` in a sandbox takes 72 ms with the `.pyc` files and 301 ms without them.
//!
//! So the first build on a base image (and the first run straight on it) compiles the
//! image's standard library, with the site-packages under it, in a sandbox, in place in the
//! image store. Every snapshot, a layer over that rootfs, shares the result.
//! A marker file beside the rootfs records that it was done; a lock makes concurrent first
//! uses share one compile.
//!
//! The compile runs the image's own `python3` (untrusted, like everything in the image) in a
//! sandbox without network, with only the standard-library directory writable; the host
//! reaches that directory without following symlinks, and hands every entry the sandbox user
//! owns back to itself afterwards, on every path.

use std::fs;
use std::path::Path;

use crate::build::{base_paths, bind, set_env};
use crate::snapshot::{io_err, BaseImage, BuildHost, InstallRun, Lock, SnapshotError};
use crate::tree;

/// The marker file, in the directory holding the image's rootfs.
pub const MARKER: &str = "bytecode-compiled";

/// True when the Python of the image rootfs `rootfs` was byte-compiled (or cannot be:
/// a rootfs without a directory of its own).
pub fn compiled(rootfs: &Path) -> bool {
    rootfs.parent().is_none_or(|d| d.join(MARKER).exists())
}

/// Byte-compiles the Python of `base` unless that was done before (a file check).
///
/// Best effort: the image stays usable without it, only slower. When the compile cannot be
/// done (no `python3` in the image, a directory that cannot be handed to the sandbox user
/// as an unprivileged server, a failed compile), the marker records why and it is not
/// tried again for this image; the step message says so. Only when the sandbox itself could
/// not run (or our own store fails) is an error returned, and nothing recorded.
pub fn compile_base(host: &dyn BuildHost, base: &BaseImage) -> Result<(), SnapshotError> {
    if compiled(&base.rootfs) {
        return Ok(());
    }
    let dir = base.rootfs.parent().expect("checked by compiled()");
    let marker = dir.join(MARKER);
    let _lock = Lock::acquire(&dir.join("bytecode.lock"))?;
    if marker.exists() {
        return Ok(()); // compiled by whoever held the lock
    }
    host.step("byte-compiling the Python of the base image (once per image)");
    let outcome = match attempt(host, base) {
        Ok(status) => status,
        Err(e @ SnapshotError::Sandbox(_)) => return Err(e),
        Err(e) => {
            host.step(&format!(
                "not byte-compiling the base image's Python (runs on it compile what they import): {e}"
            ));
            format!("skipped: {e}")
        }
    };
    fs::write(&marker, format!("{outcome}\n")).map_err(io_err("write", &marker))?;
    Ok(())
}

fn attempt(host: &dyn BuildHost, base: &BaseImage) -> Result<String, SnapshotError> {
    let paths = base_paths(host, base)?;
    let stdlib =
        tree::dir_within(&base.rootfs, &paths.stdlib, tree::Want::Existing).map_err(|e| {
            SnapshotError::Invalid(format!("python standard library {}: {e}", paths.stdlib))
        })?;
    let handed = host
        .owner()
        .hand_over(&stdlib)
        .map_err(io_err("chown", &stdlib));
    let run = handed.and_then(|()| compile(host, base, &paths.executable, &paths.stdlib, &stdlib));
    // Back to us whatever happened: nothing in the image store stays the sandbox user's.
    host.owner()
        .take_back(&stdlib)
        .map_err(io_err("reclaim", &stdlib))?;
    run
}

/// Runs `compileall` in a sandbox; returns how it ended. Source files that do not compile
/// (compileall exits 1) stay source only, as with any install, and do not fail the build.
fn compile(
    host: &dyn BuildHost,
    base: &BaseImage,
    python: &str,
    stdlib: &str,
    host_dir: &Path,
) -> Result<String, SnapshotError> {
    let mut env = base.env.clone();
    env.retain(|(k, _)| k != "PYTHONDONTWRITEBYTECODE");
    set_env(&mut env, "HOME", "/home/sandbox");
    let out = host
        .run(&InstallRun {
            rootfs: base.rootfs.clone(),
            argv: vec![
                python.to_string(),
                "-m".into(),
                "compileall".into(),
                "-q".into(),
                "-j0".into(),
                stdlib.to_string(),
            ],
            env,
            binds: vec![bind(host_dir, stdlib, true)],
            network: false,
            tmp_dirs: vec![],
            layers: None,
        })
        .map_err(SnapshotError::Sandbox)?;
    // compileall exits 1 when a file does not compile; a crash (a traceback) exits 1 too.
    let crashed = out.stderr.contains("Traceback (most recent call last)");
    if out.exit_code == Some(0) || (out.exit_code == Some(1) && !crashed) {
        return Ok(out.status);
    }
    Err(SnapshotError::BuildFailed {
        name: format!("(byte-compiling the base image's {stdlib})"),
        status: out.status,
        stderr: out.stderr.chars().take(4000).collect(),
    })
}
