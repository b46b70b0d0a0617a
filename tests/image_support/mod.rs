//! Shared set-up of the image tests: the image fixture (scripts/build-image-fixture) and a
//! real registry process (scripts/registry: Debian's docker-registry with our config on
//! 127.0.0.1, token or basic auth), stopped by PID when dropped.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Whether missing pieces must fail instead of skipping (CI as root).
pub fn required() -> bool {
    std::env::var("TAKO_TEST_REQUIRE").as_deref() == Ok("1")
}

/// The image fixture directory, or None (with a message) when the test must be skipped.
pub fn fixture() -> Option<PathBuf> {
    let base =
        std::env::var("TAKO_VM_FIXTURES").unwrap_or_else(|_| "/var/cache/tako-vm/fixtures".into());
    let p = Path::new(&base).join("image-py311");
    let tools = ["docker-registry", "openssl"].iter().all(|t| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !p.join(".ready").exists() || !tools {
        assert!(
            !required(),
            "TAKO_TEST_REQUIRE=1 but the image fixture {} or docker-registry is missing (scripts/deps, scripts/build-image-fixture)",
            p.display()
        );
        eprintln!(
            "SKIP: no image fixture at {} or no docker-registry (scripts/build-image-fixture)",
            p.display()
        );
        return None;
    }
    Some(p)
}

/// Skips the test when the fixture is missing.
#[macro_export]
macro_rules! need_fixture {
    () => {
        match image_support::fixture() {
            Some(f) => f,
            None => return,
        }
    };
}

/// A running registry (and token server), killed by PID on drop.
pub struct RegistryProc {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub host: String,
}

impl RegistryProc {
    /// Starts `scripts/registry --auth AUTH` on `storage` (default: the fixture's).
    pub fn start(fixture: &Path, auth: &str, storage: Option<&Path>) -> RegistryProc {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/registry");
        let mut cmd = Command::new(script);
        cmd.args(["--auth", auth, "--fixture"]).arg(fixture);
        if let Some(s) = storage {
            cmd.arg("--storage").arg(s);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start scripts/registry");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("registry ready line");
        let url = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_else(|| panic!("registry did not start: {line:?}"));
        RegistryProc {
            host: url.trim_start_matches("http://").to_string(),
            child,
        }
    }
}

impl Drop for RegistryProc {
    fn drop(&mut self) {
        // Our own child, by PID: SIGTERM lets it stop docker-registry by its PID.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

/// A registry config that sends docker.io pulls to `host`.
pub fn mirror_config(host: &str) -> tako_vm::image::RegistryConfig {
    tako_vm::image::RegistryConfig {
        mirror: Some(host.to_string()),
        backoff: std::time::Duration::from_millis(20),
        ..Default::default()
    }
}

/// Copies a directory tree (the registry storage, to corrupt a copy).
pub fn copy_tree(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

/// Checks the record of the fixture's two-platform `3.11-slim` image: the host's
/// architecture, a gzip and a zstd layer, every layer blob in the store, the image's PATH.
pub fn assert_fixture_record(
    store: &tako_vm::image::ImageStore,
    rec: &tako_vm::image::ImageRecord,
) {
    assert_eq!(rec.architecture, tako_vm::image::host_arch());
    let types: Vec<&str> = rec.layers.iter().map(|l| l.media_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.oci.image.layer.v1.tar+zstd"
        ]
    );
    for l in &rec.layers {
        assert!(store.has_blob(&l.digest));
    }
    assert!(rec
        .env
        .iter()
        .any(|e| e.starts_with("PATH=/usr/local/bin:")));
}

/// A tmpfs of our own (root), unmounted when dropped: a disk that fills up.
pub struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    /// Mounts one of `size` (`2m`).
    pub fn mount(size: &str) -> SmallDisk {
        let d = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tako-vm-test",
            ])
            .arg(d.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
        SmallDisk(d)
    }

    /// Its mount point.
    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// Bytes in use.
    pub fn used(&self) -> u64 {
        let st = nix::sys::statvfs::statvfs(self.path()).unwrap();
        (st.blocks() - st.blocks_free()) * st.fragment_size()
    }

    /// Changes its size to `bytes` (never below what is in use).
    pub fn resize(&self, bytes: u64) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={bytes}")])
            .arg(self.path())
            .status()
            .unwrap();
        assert!(st.success(), "remount tmpfs");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.path()).status();
    }
}
