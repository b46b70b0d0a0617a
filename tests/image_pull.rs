//! Pulls from a real registry process (Debian's docker-registry on 127.0.0.1) serving the
//! Python 3.11 fixture: an OCI index with two platforms, a gzip and a zstd layer.

mod common;
mod image_support;

use std::fs;
use std::path::Path;

use image_support::{mirror_config, RegistryProc, SmallDisk};
use tako_vm::image::{client, ImageError, ImageStore, NoProgress, Reference, Registry};

fn pull(
    cfg: tako_vm::image::RegistryConfig,
    store: &ImageStore,
    r: &str,
) -> Result<tako_vm::image::ImageRecord, ImageError> {
    client::pull(&Registry::new(cfg).unwrap(), store, r, &NoProgress)
}

#[test]
fn pull_through_the_token_flow_selects_the_platform_and_unpacks_both_layers() {
    let fixture = need_fixture!();
    let reg = RegistryProc::start(&fixture, "token", None);
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(t.path()).unwrap();
    // `python:3.11-slim` is docker.io/library/python:3.11-slim, sent to the mirror.
    let rec = pull(mirror_config(&reg.host), &store, "python:3.11-slim").unwrap();
    image_support::assert_fixture_record(&store, &rec);
    let rootfs = store.rootfs_of(&rec.digest).unwrap();
    assert!(rootfs_builder::check(&rootfs).is_empty());
    assert_eq!(
        fs::read_link(rootfs.join("usr/local/bin/python3")).unwrap(),
        Path::new("/usr/bin/python3.11")
    );
    assert!(
        !rootfs.join("etc/motd").exists(),
        "whiteout of the zstd layer"
    );
    let doc: Vec<_> = fs::read_dir(rootfs.join("usr/share/doc"))
        .unwrap()
        .collect();
    assert_eq!(doc.len(), 1, "opaque directory of the zstd layer");
    // Local names: the normalised reference.
    let found = store.lookup("python:3.11-slim").unwrap().unwrap();
    assert_eq!(found.digest, rec.digest);

    // The arm64 entry of the index: another config, the same layers (no new downloads).
    let mut cfg = mirror_config(&reg.host);
    cfg.platform = ("arm64".into(), Some("v8".into()));
    let arm = Registry::new(cfg.clone()).unwrap();
    let arm_rec = arm
        .fetch_image(
            &Reference::parse("python:3.11-slim").unwrap(),
            &store,
            &NoProgress,
        )
        .unwrap();
    assert_eq!(arm_rec.architecture, "arm64");
    assert_ne!(arm_rec.digest, rec.digest);
    assert_eq!(arm_rec.layers, rec.layers);

    // A digest pins: pulling by digest gives the same image.
    let pinned = format!("python@{}", rec.digest);
    let again = pull(mirror_config(&reg.host), &store, &pinned).unwrap();
    assert_eq!(again.digest, rec.digest);

    // No platform: a clear error.
    cfg.platform = ("s390x".into(), None);
    let err = Registry::new(cfg)
        .unwrap()
        .resolve(&Reference::parse("python:3.11-slim").unwrap())
        .unwrap_err();
    assert!(matches!(err, ImageError::NoPlatform { .. }), "{err}");
}

#[test]
fn docker_schema2_basic_auth_and_clear_errors() {
    let fixture = need_fixture!();
    let reg = RegistryProc::start(&fixture, "basic", None);
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(t.path()).unwrap();
    let r = format!("{}/library/python:3.11-gzip", reg.host);
    let err = pull(Default::default(), &store, &r).unwrap_err();
    assert!(matches!(err, ImageError::Auth { .. }), "{err}");
    assert!(err.to_string().contains("TAKO_VM_REGISTRY_USERNAME"));

    let mut cfg = tako_vm::image::RegistryConfig::default();
    cfg.credentials.push(tako_vm::image::client::Credentials {
        registry: reg.host.clone(),
        username: "tako".into(),
        password: "tako-secret".into(),
    });
    let rec = pull(cfg.clone(), &store, &r).unwrap();
    assert_eq!(
        rec.layers[0].media_type,
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
    assert!(store
        .rootfs_of(&rec.digest)
        .unwrap()
        .join("usr/bin/python3")
        .exists());

    let err = pull(
        cfg.clone(),
        &store,
        &format!("{}/library/python:9.99", reg.host),
    )
    .unwrap_err();
    assert!(matches!(err, ImageError::NotFound { .. }), "{err}");

    drop(reg);
    cfg.attempts = 2;
    let err = pull(cfg, &store, &format!("{r}-gone")).unwrap_err();
    assert!(matches!(err, ImageError::Unreachable { .. }), "{err}");
}

#[test]
fn a_corrupt_blob_is_refused_and_never_stored() {
    let fixture = need_fixture!();
    let t = tempfile::tempdir().unwrap();
    let storage = t.path().join("storage");
    image_support::copy_tree(&fixture.join("storage"), &storage);
    // Flip bytes in the middle of the zstd layer (same size): the registry serves it as is.
    let layer = find_zstd_layer(&fixture);
    let data = storage.join(format!(
        "docker/registry/v2/blobs/sha256/{}/{}/data",
        &layer[7..9],
        &layer[7..]
    ));
    let mut bytes = fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&data, &bytes).unwrap();
    let reg = RegistryProc::start(&fixture, "token", Some(&storage));
    let store = ImageStore::open(t.path().join("store")).unwrap();
    let err = pull(mirror_config(&reg.host), &store, "python:3.11-slim").unwrap_err();
    assert!(
        matches!(err, ImageError::DigestMismatch { ref expected, .. } if *expected == layer),
        "{err}"
    );
    assert!(!store.has_blob(&layer));
    assert!(!store.partial_path(&layer).unwrap().exists());
    assert!(store.lookup("python:3.11-slim").unwrap().is_none());
}

#[test]
fn a_full_disk_is_a_clear_error_and_leaves_no_image() {
    let fixture = need_fixture!();
    let reg = RegistryProc::start(&fixture, "token", None);
    // Far smaller than the image's layers.
    let disk = SmallDisk::mount("2m");
    let store = ImageStore::open(disk.path().join("store")).unwrap();
    let err = pull(mirror_config(&reg.host), &store, "python:3.11-slim").unwrap_err();
    assert!(matches!(err, ImageError::DiskFull(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("no space left on device") && msg.contains("tako-vm gc"),
        "{msg}"
    );
    assert!(store.lookup("python:3.11-slim").unwrap().is_none());
}

#[test]
fn a_partial_download_is_resumed() {
    let fixture = need_fixture!();
    let reg = RegistryProc::start(&fixture, "token", None);
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(t.path()).unwrap();
    // The first half of the base layer, as an interrupted pull leaves it.
    let oci_index: serde_json::Value =
        serde_json::from_slice(&fs::read(fixture.join("oci/index.json")).unwrap()).unwrap();
    assert!(oci_index["manifests"].is_array());
    let base = largest_blob(&fixture);
    let full = fs::read(fixture.join("oci/blobs/sha256").join(&base[7..])).unwrap();
    fs::write(store.partial_path(&base).unwrap(), &full[..full.len() / 2]).unwrap();
    let rec = pull(mirror_config(&reg.host), &store, "python:3.11-slim").unwrap();
    assert_eq!(rec.layers[0].digest, base);
    assert_eq!(
        fs::read(store.blob_path(&base).unwrap()).unwrap().len(),
        full.len()
    );
}

#[test]
fn the_pulled_image_runs_in_the_sandbox_with_its_env() {
    let fixture = need_fixture!();
    let _rootfs = need_rootfs!();
    let reg = RegistryProc::start(&fixture, "token", None);
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(t.path()).unwrap();
    let rec = pull(mirror_config(&reg.host), &store, "python:3.11-slim").unwrap();
    let rootfs = store.rootfs_of(&rec.digest).unwrap();
    let res = common::exec_with(
        &rootfs,
        "import os, shutil, sys\nprint(shutil.which('python3'), os.environ['LANG'], sys.version_info[:2])",
        |run| run.env = rec.env_pairs(),
    );
    assert_eq!(
        res.status,
        tako_vm::exec::record::Status::Succeeded,
        "{res:?}"
    );
    assert_eq!(res.stdout.trim(), "/usr/local/bin/python3 C.UTF-8 (3, 11)");
}

fn blobs(fixture: &Path) -> Vec<(String, u64)> {
    fs::read_dir(fixture.join("oci/blobs/sha256"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                format!("sha256:{}", e.file_name().to_string_lossy()),
                e.metadata().unwrap().len(),
            )
        })
        .collect()
}

fn largest_blob(fixture: &Path) -> String {
    blobs(fixture).into_iter().max_by_key(|b| b.1).unwrap().0
}

fn find_zstd_layer(fixture: &Path) -> String {
    for (d, _) in blobs(fixture) {
        let b = fs::read(fixture.join("oci/blobs/sha256").join(&d[7..])).unwrap();
        if b.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            return d;
        }
    }
    panic!("no zstd layer in the fixture");
}
