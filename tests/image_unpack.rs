//! Layer unpacking on real files: whiteouts, opaque directories, refused escapes, symlinks
//! never followed, device nodes skipped, modes readable for the sandbox user.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tako_vm::image::unpack::{apply_layer, Compression};
use tako_vm::image::ImageError;

/// A tar built entry by entry (raw headers, so `..` and absolute names can be crafted).
struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    fn new() -> Tar {
        Tar(tar::Builder::new(Vec::new()))
    }
    fn header(name: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        // Written into the raw name field so that nothing normalises it.
        let raw = &mut h.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        h
    }
    fn dir(mut self, name: &str) -> Tar {
        let h = Self::header(name, tar::EntryType::Directory, 0o755, 0);
        self.0.append(&h, std::io::empty()).unwrap();
        self
    }
    fn file(mut self, name: &str, data: &str, mode: u32) -> Tar {
        let h = Self::header(name, tar::EntryType::Regular, mode, data.len() as u64);
        self.0.append(&h, data.as_bytes()).unwrap();
        self
    }
    fn link(mut self, name: &str, kind: tar::EntryType, target: &str) -> Tar {
        let mut h = Self::header(name, kind, 0o777, 0);
        h.set_link_name(target).unwrap();
        h.set_cksum();
        self.0.append(&h, std::io::empty()).unwrap();
        self
    }
    fn device(mut self, name: &str) -> Tar {
        let mut h = Self::header(name, tar::EntryType::Char, 0o666, 0);
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
        h.set_cksum();
        self.0.append(&h, std::io::empty()).unwrap();
        self
    }
    fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

fn apply(root: &Path, t: Tar) -> Result<(), ImageError> {
    apply_layer(root, &t.bytes()[..], "test-layer")
}

#[test]
fn whiteouts_remove_lower_entries_and_opaque_dirs_hide_them() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    apply(
        root,
        Tar::new()
            .dir("etc/")
            .file("etc/motd", "hello", 0o644)
            .file("etc/keep", "k", 0o644)
            .dir("usr/share/doc/")
            .dir("usr/share/doc/pkg/")
            .file("usr/share/doc/pkg/README", "r", 0o644)
            .file("usr/share/doc/old", "o", 0o644),
    )
    .unwrap();
    apply(
        root,
        Tar::new()
            .file("etc/.wh.motd", "", 0o644)
            .dir("usr/share/doc/")
            .file("usr/share/doc/new", "n", 0o644)
            .file("usr/share/doc/.wh..wh..opq", "", 0o644)
            .file("usr/share/doc/after", "a", 0o644),
    )
    .unwrap();
    assert!(!root.join("etc/motd").exists());
    assert!(root.join("etc/keep").exists());
    assert!(!root.join("etc/.wh.motd").exists());
    let mut doc: Vec<String> = fs::read_dir(root.join("usr/share/doc"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    doc.sort();
    // Lower entries gone, entries of the same layer (before and after the marker) kept.
    assert_eq!(doc, ["after", "new"]);
}

#[test]
fn escaping_entries_refuse_the_layer() {
    for (what, tar) in [
        ("dotdot", Tar::new().file("../escape", "x", 0o644)),
        (
            "nested dotdot",
            Tar::new().dir("a/").file("a/../../escape", "x", 0o644),
        ),
        ("absolute", Tar::new().file("/etc/escape", "x", 0o644)),
        (
            "hard link out",
            Tar::new().link("passwd", tar::EntryType::Link, "../../etc/passwd"),
        ),
        (
            "absolute hard link",
            Tar::new().link("passwd", tar::EntryType::Link, "/etc/passwd"),
        ),
    ] {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir(&root).unwrap();
        let err = apply(&root, tar).expect_err(what);
        assert!(
            matches!(err, ImageError::UnsafeLayer { .. }),
            "{what}: {err}"
        );
        assert!(!t.path().join("escape").exists(), "{what}");
    }
}

#[test]
fn symlinks_are_kept_but_never_followed() {
    let t = tempfile::tempdir().unwrap();
    let outside = t.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let root = t.path().join("root");
    fs::create_dir(&root).unwrap();
    // A symlink pointing outside, then entries written "through" it.
    apply(
        &root,
        Tar::new()
            .link("evil", tar::EntryType::Symlink, outside.to_str().unwrap())
            .link("rel", tar::EntryType::Symlink, "../outside"),
    )
    .unwrap();
    assert_eq!(fs::read_link(root.join("evil")).unwrap(), outside);
    apply(
        &root,
        Tar::new()
            .file("evil/pwned", "x", 0o644)
            .file("rel/pwned", "x", 0o644),
    )
    .unwrap();
    assert!(!outside.join("pwned").exists());
    // Like an overlay's upper directory, the directory replaced the symlink.
    assert!(root.join("evil").is_dir() && !root.join("evil").is_symlink());
    assert!(root.join("evil/pwned").is_file());
    // A file entry over a symlink replaces the link, it does not write its target.
    apply(
        &root,
        Tar::new().link(
            "to-out",
            tar::EntryType::Symlink,
            outside.join("f").to_str().unwrap(),
        ),
    )
    .unwrap();
    apply(&root, Tar::new().file("to-out", "y", 0o644)).unwrap();
    assert!(!outside.join("f").exists());
    assert_eq!(fs::read_to_string(root.join("to-out")).unwrap(), "y");
}

#[test]
fn devices_are_skipped_hard_links_work_and_modes_are_readable() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    apply(
        root,
        Tar::new()
            .dir("dev/")
            .device("dev/null")
            .dir("bin/")
            .file("bin/tool", "#!/bin/sh\n", 0o4700)
            .file("bin/data", "d", 0o600)
            .file("bin/shared", "w", 0o666)
            .link("bin/tool2", tar::EntryType::Link, "bin/tool")
            .dir("etc/")
            .file("etc/shadow", "root:*:", 0o640),
    )
    .unwrap();
    assert!(!root.join("dev/null").exists());
    let mode = |p: &str| fs::metadata(root.join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(
        mode("bin/tool"),
        0o755,
        "setuid dropped, readable and executable for all"
    );
    assert_eq!(mode("bin/data"), 0o644);
    // Never writable by others: snapshots share the inode, builders see it.
    assert_eq!(mode("bin/shared"), 0o644);
    assert_eq!(mode("etc/shadow"), 0o640);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::metadata(root.join("bin/tool")).unwrap().ino(),
        fs::metadata(root.join("bin/tool2")).unwrap().ino()
    );
    let mtime = fs::metadata(root.join("bin/data")).unwrap().mtime();
    assert_eq!(mtime, 1_700_000_000, "mtimes kept (.pyc validation)");
}

#[test]
fn compression_is_detected() {
    assert_eq!(
        Compression::detect("application/vnd.oci.image.layer.v1.tar+zstd", b""),
        Compression::Zstd
    );
    assert_eq!(
        Compression::detect("application/vnd.docker.image.rootfs.diff.tar.gzip", b""),
        Compression::Gzip
    );
    assert_eq!(
        Compression::detect("application/octet-stream", &[0x1f, 0x8b, 8, 0]),
        Compression::Gzip
    );
    assert_eq!(
        Compression::detect("application/vnd.oci.image.layer.v1.tar", b"usr/"),
        Compression::None
    );
}
