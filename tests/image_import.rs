//! Import for air-gapped hosts from real artifacts made on this machine from the image
//! fixture (scripts/build-image-fixture) with skopeo: an OCI layout directory, an OCI
//! archive (plain and gzip), a `docker save` tarball (skopeo's docker-archive) and a Docker
//! 25+ style one (an OCI layout with manifest.json); each imported image runs
//! `python3 -c 'print(1+1)'` in the sandbox (as root). Corrupt blobs and escaping member
//! names are refused with nothing stored.

mod common;
mod image_support;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};
use tako_vm::image::import::{import, ImportOptions, Imported};
use tako_vm::image::{host_arch, ImageError, ImageStore, NoProgress};

/// The fixture's OCI layout, or None (skip) without the fixture or skopeo.
fn fixture_oci() -> Option<PathBuf> {
    let f = image_support::fixture()?;
    let skopeo = Command::new("skopeo")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !skopeo {
        assert!(
            !image_support::required(),
            "TAKO_TEST_REQUIRE=1 but no skopeo"
        );
        eprintln!("SKIP: no skopeo (scripts/deps)");
        return None;
    }
    Some(f.join("oci"))
}

macro_rules! need_oci {
    () => {
        match fixture_oci() {
            Some(f) => f,
            None => return,
        }
    };
}

fn skopeo(args: &[&str]) {
    let st = Command::new("skopeo")
        .arg("copy")
        .arg("-q")
        .args(args)
        .status();
    assert!(st.unwrap().success(), "skopeo copy {args:?}");
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `skopeo copy` of the fixture's two-platform image to `dest` (`oci:DIR:REF`, …).
fn export(oci: &Path, dest: &str, all: bool) {
    let src = format!("oci:{}:3.11-slim", s(oci));
    let mut args = vec![src.as_str(), dest];
    if all {
        args.insert(0, "--all");
    }
    skopeo(&args);
}

/// A `docker save` style tarball (legacy layout) written by skopeo's docker-archive; the
/// zstd layer is recompressed with gzip first (docker archives cannot carry zstd).
fn docker_archive(oci: &Path, t: &Path) -> PathBuf {
    let gz = t.join("gz-layout");
    skopeo(&[
        "--dest-compress",
        "--dest-compress-format",
        "gzip",
        &format!("oci:{}:3.11-slim", s(oci)),
        &format!("oci:{}:x", s(&gz)),
    ]);
    let out = t.join("docker.tar");
    skopeo(&[
        &format!("oci:{}:x", s(&gz)),
        &format!("docker-archive:{}:python:3.11-slim", s(&out)),
    ]);
    out
}

fn run_import(
    store: &ImageStore,
    path: &Path,
    opts: ImportOptions,
) -> Result<Vec<Imported>, ImageError> {
    import(store, path, &opts, &NoProgress)
}

fn named(name: &str) -> ImportOptions {
    ImportOptions {
        name: Some(name.into()),
        ..Default::default()
    }
}

/// `python3 -c 'print(1+1)'` through `tako-vm run --image NAME` (as root; skipped otherwise).
fn runs_python(store: &ImageStore, name: &str) {
    if common::rootfs().is_none() {
        return;
    }
    let st = s(store.root());
    let (code, out, err) = common::cli(&[
        "run",
        "--store",
        st,
        "--image",
        name,
        "--",
        "python3",
        "-c",
        "print(1+1)",
    ]);
    assert_eq!((code, out.as_str()), (0, "2\n"), "{err}");
}

fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

fn store_is_empty(store: &ImageStore) -> bool {
    let n = |d: &str| fs::read_dir(store.root().join(d)).unwrap().count();
    n("blobs/sha256") == 0 && n("blobs/partial") == 0 && store.names().unwrap().is_empty()
}

#[test]
fn an_oci_layout_directory_imports_with_platform_selection_and_runs() {
    let oci = need_oci!();
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    // --all keeps the two-platform index: the import selects this host's manifest.
    export(&oci, &format!("oci:{}:python:3.11-slim", s(&layout)), true);
    let store = ImageStore::open(t.path().join("store")).unwrap();
    let got = run_import(&store, &layout, ImportOptions::default()).unwrap();
    assert_eq!(got.len(), 1);
    let rec = &got[0].record;
    assert_eq!(got[0].names, ["docker.io/library/python:3.11-slim"]);
    image_support::assert_fixture_record(&store, rec);
    let idx = fs::read_to_string(store.image_dir(&rec.digest).unwrap().join("index-digest"));
    assert!(
        store.has_blob(idx.unwrap().trim()),
        "the index is kept for gc"
    );
    let rootfs = store.rootfs_of(&rec.digest).unwrap();
    assert!(rootfs_builder::check(&rootfs).is_empty());
    assert!(
        !rootfs.join("etc/motd").exists(),
        "whiteout of the zstd layer"
    );
    assert_eq!(
        store.lookup("python:3.11-slim").unwrap().unwrap().digest,
        rec.digest
    );
    // The staging directory is gone; a second import stores nothing new.
    assert_eq!(
        fs::read_dir(store.root().join("blobs/partial"))
            .unwrap()
            .count(),
        0
    );
    let blobs = fs::read_dir(store.root().join("blobs/sha256"))
        .unwrap()
        .count();
    let again = run_import(&store, &layout, ImportOptions::default()).unwrap();
    assert_eq!(again[0].record, *rec);
    assert_eq!(
        fs::read_dir(store.root().join("blobs/sha256"))
            .unwrap()
            .count(),
        blobs
    );
    // `tako-vm images` lists it.
    let (code, out, err) = common::cli(&["images", "--store", s(store.root())]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("docker.io/library/python:3.11-slim"), "{out}");
    assert!(out.contains(&rec.digest[..19]), "{out}");
    runs_python(&store, "python:3.11-slim");

    // Another platform only: a clear error, nothing named.
    let other = ImportOptions {
        platform: ("s390x".into(), None),
        name: Some("other".into()),
        ..Default::default()
    };
    let err = run_import(&store, &layout, other).unwrap_err();
    assert!(matches!(err, ImageError::NoPlatform { .. }), "{err}");
    assert!(store.lookup("other").unwrap().is_none());
}

#[test]
fn a_layout_with_several_images_imports_each_under_its_ref_name() {
    let oci = need_oci!();
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(t.path().join("store")).unwrap();
    // The fixture layout itself: a nested index (3.11-slim) and a manifest (3.11-gzip),
    // named by bare tags in org.opencontainers.image.ref.name.
    let err = run_import(&store, &oci, named("mine")).unwrap_err();
    assert!(err.to_string().contains("--ref"), "{err}");
    let got = run_import(&store, &oci, ImportOptions::default()).unwrap();
    let names: Vec<&str> = got.iter().map(|i| i.names[0].as_str()).collect();
    assert_eq!(names, ["3.11-slim", "3.11-gzip"]);
    assert_eq!(got[1].record.layers.len(), 1);
    let opts = ImportOptions {
        reference: Some("3.11-gzip".into()),
        ..named("local/gzip-only:1")
    };
    let one = run_import(&store, &oci, opts).unwrap();
    assert_eq!(one[0].names, ["docker.io/local/gzip-only:1"]);
    assert_eq!(one[0].record.digest, got[1].record.digest);
    let err = run_import(
        &store,
        &oci,
        ImportOptions {
            reference: Some("9.99".into()),
            ..Default::default()
        },
    );
    assert!(err.unwrap_err().to_string().contains("no image named 9.99"));
    runs_python(&store, "local/gzip-only:1");
}

#[test]
fn an_oci_archive_plain_and_gzip_imports_and_runs() {
    let oci = need_oci!();
    let t = tempfile::tempdir().unwrap();
    let tar = t.path().join("python.tar");
    export(
        &oci,
        &format!("oci-archive:{}:python:3.11-slim", s(&tar)),
        true,
    );
    let gz = t.path().join("python.tar.gz");
    let mut enc =
        flate2::write::GzEncoder::new(fs::File::create(&gz).unwrap(), flate2::Compression::fast());
    std::io::copy(&mut fs::File::open(&tar).unwrap(), &mut enc).unwrap();
    enc.finish().unwrap();

    let store = ImageStore::open(t.path().join("store")).unwrap();
    let plain = run_import(&store, &tar, ImportOptions::default()).unwrap();
    assert_eq!(plain[0].names, ["docker.io/library/python:3.11-slim"]);
    assert_eq!(plain[0].record.architecture, host_arch());
    // Through the CLI: the gzip archive, named with --name.
    let (code, out, err) = common::cli(&[
        "import",
        s(&gz),
        "--name",
        "airgap/python:gz",
        "--store",
        s(store.root()),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        format!("docker.io/airgap/python:gz {}", plain[0].record.digest)
    );
    assert_eq!(
        fs::read_dir(store.root().join("blobs/partial"))
            .unwrap()
            .count(),
        0
    );
    runs_python(&store, "airgap/python:gz");
}

#[test]
fn a_docker_save_tarball_imports_with_its_repo_tag_and_runs() {
    let oci = need_oci!();
    let t = tempfile::tempdir().unwrap();
    let tar = docker_archive(&oci, t.path());
    let store = ImageStore::open(t.path().join("store")).unwrap();
    let (code, out, err) = common::cli(&["import", s(&tar), "--store", s(store.root())]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("docker.io/library/python:3.11-slim sha256:"),
        "{out}"
    );
    let rec = store.lookup("python:3.11-slim").unwrap().unwrap();
    // Layers as saved (uncompressed tars), verified against the config's diff_ids.
    assert_eq!(rec.layers.len(), 2);
    for l in &rec.layers {
        assert_eq!(l.media_type, "application/vnd.oci.image.layer.v1.tar");
        assert!(store.has_blob(&l.digest));
    }
    let config: serde_json::Value =
        serde_json::from_slice(&store.read_bytes(&rec.config_digest).unwrap()).unwrap();
    let diff_ids: Vec<&str> = config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    let digests: Vec<&str> = rec.layers.iter().map(|l| l.digest.as_str()).collect();
    assert_eq!(digests, diff_ids);
    assert!(
        store.has_blob(&rec.digest),
        "a manifest is written for the image"
    );
    let rootfs = store.rootfs_of(&rec.digest).unwrap();
    assert!(rootfs
        .join("usr/local/bin/python3")
        .symlink_metadata()
        .is_ok());
    runs_python(&store, "python:3.11-slim");
}

#[test]
fn a_docker_25_save_tarball_an_oci_layout_with_manifest_json_imports_and_runs() {
    let oci = need_oci!();
    let t = tempfile::tempdir().unwrap();
    // Docker 25+ writes uncompressed layers as blobs/sha256/<diff_id>, an OCI manifest and
    // index.json (annotated with io.containerd.image.name), and manifest.json besides:
    // made here from the legacy archive's files.
    let legacy = docker_archive(&oci, t.path());
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut ar = tar::Archive::new(fs::File::open(&legacy).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        if e.header().entry_type().is_file() && !name.contains('/') {
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut b).unwrap();
            files.push((name, b));
        }
    }
    let legacy_manifest: serde_json::Value =
        serde_json::from_slice(&files.iter().find(|f| f.0 == "manifest.json").unwrap().1).unwrap();
    let blob = |name: &str| files.iter().find(|f| f.0 == name).unwrap().1.as_slice();
    let config = blob(legacy_manifest[0]["Config"].as_str().unwrap()).to_vec();
    let layers: Vec<&[u8]> = legacy_manifest[0]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| blob(l.as_str().unwrap()))
        .collect();
    let desc = |mt: &str, b: &[u8]| serde_json::json!({"mediaType": mt, "digest": sha256(b), "size": b.len()});
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": desc("application/vnd.oci.image.config.v1+json", &config),
        "layers": layers.iter().map(|l| desc("application/vnd.oci.image.layer.v1.tar", l)).collect::<Vec<_>>(),
    }))
    .unwrap();
    let mut index = desc("application/vnd.oci.image.manifest.v1+json", &manifest);
    index["annotations"] = serde_json::json!({
        "io.containerd.image.name": "docker.io/library/python:3.11-slim",
        "org.opencontainers.image.ref.name": "3.11-slim",
    });
    let path = |b: &[u8]| format!("blobs/sha256/{}", &sha256(b)[7..]);
    let docker_manifest = serde_json::json!([{
        "Config": path(&config),
        "RepoTags": ["python:3.11-slim"],
        "Layers": layers.iter().map(|l| path(l)).collect::<Vec<_>>(),
    }]);
    let out = t.path().join("docker25.tar");
    let mut b = tar::Builder::new(fs::File::create(&out).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    };
    add("oci-layout", br#"{"imageLayoutVersion": "1.0.0"}"#);
    for l in &layers {
        add(&path(l), l);
    }
    add(&path(&config), &config);
    add(&path(&manifest), &manifest);
    add(
        "index.json",
        &serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [index]}))
            .unwrap(),
    );
    add(
        "manifest.json",
        &serde_json::to_vec(&docker_manifest).unwrap(),
    );
    b.into_inner().unwrap().flush().unwrap();

    let store = ImageStore::open(t.path().join("store")).unwrap();
    let got = run_import(&store, &out, ImportOptions::default()).unwrap();
    assert_eq!(got[0].names, ["docker.io/library/python:3.11-slim"]);
    assert_eq!(got[0].record.digest, sha256(&manifest));
    runs_python(&store, "python:3.11-slim");
}

#[test]
fn a_corrupt_blob_in_a_layout_is_refused_and_nothing_is_stored() {
    let oci = need_oci!();
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    export(&oci, &format!("oci:{}:python:3.11-slim", s(&layout)), false);
    let manifest: serde_json::Value = {
        let idx: serde_json::Value =
            serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
        let d = idx["manifests"][0]["digest"].as_str().unwrap();
        serde_json::from_slice(&fs::read(layout.join("blobs/sha256").join(&d[7..])).unwrap())
            .unwrap()
    };
    let zstd = manifest["layers"][1]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let file = layout.join("blobs/sha256").join(&zstd[7..]);
    let good = fs::read(&file).unwrap();
    // Same size, one byte flipped.
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    fs::write(&file, &bad).unwrap();
    let store = ImageStore::open(t.path().join("store")).unwrap();
    let err = run_import(&store, &layout, ImportOptions::default()).unwrap_err();
    assert!(
        matches!(err, ImageError::DigestMismatch { ref expected, .. } if *expected == zstd),
        "{err}"
    );
    assert!(!store.has_blob(&zstd));
    assert!(
        store_is_empty(&store),
        "nothing of a refused image enters the store"
    );
    // Through the CLI: exit 1 and the reason.
    let (code, _, err) = common::cli(&["import", s(&layout), "--store", s(store.root())]);
    assert_eq!(code, 1);
    assert!(err.contains("failed verification"), "{err}");
    // Truncated: refused by size; missing: refused by name.
    fs::write(&file, &good[..good.len() - 1]).unwrap();
    let err = run_import(&store, &layout, ImportOptions::default()).unwrap_err();
    assert!(err.to_string().contains("bytes instead of"), "{err}");
    fs::remove_file(&file).unwrap();
    let err = run_import(&store, &layout, ImportOptions::default()).unwrap_err();
    assert!(
        err.to_string().contains(&format!("blob {zstd} is missing")),
        "{err}"
    );
    assert!(store_is_empty(&store));
}

/// A tar with raw headers (so that `..`, absolute names and links can be crafted).
fn crafted(entries: &[(&str, tar::EntryType, &[u8], &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, data, link) in entries {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// A minimal legacy docker save archive: one layer `<id>/layer.tar` reached through a
/// symlink, as docker writes shared layers.
fn tiny_docker_save(layer: &[u8], diff_id: &str) -> Vec<u8> {
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": host_arch(), "os": "linux",
        "config": {"Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }))
    .unwrap();
    let cfg_name = format!("{}.json", &sha256(&config)[7..]);
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": cfg_name, "RepoTags": ["tiny:1"], "Layers": ["abc/layer.tar"],
    }]))
    .unwrap();
    use tar::EntryType as T;
    crafted(&[
        ("manifest.json", T::Regular, &manifest, ""),
        (&cfg_name, T::Regular, &config, ""),
        ("def/layer.tar", T::Regular, layer, ""),
        ("abc/layer.tar", T::Symlink, b"", "../def/layer.tar"),
    ])
}

#[test]
fn escaping_member_names_links_and_mismatched_diff_ids_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(t.path().join("store")).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = t.path().join(name);
        fs::write(&p, bytes).unwrap();
        p
    };
    use tar::EntryType as T;
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "dotdot.tar",
            crafted(&[
                ("oci-layout", T::Regular, layout, ""),
                ("../escaped", T::Regular, b"x", ""),
            ]),
            "contains ..",
        ),
        (
            "absolute.tar",
            crafted(&[("/tmp/escaped", T::Regular, b"x", "")]),
            "absolute path",
        ),
        (
            "symlink.tar",
            crafted(&[
                ("oci-layout", T::Regular, layout, ""),
                ("index.json", T::Symlink, b"", "../../etc/hostname"),
            ]),
            "leaves the archive",
        ),
        (
            "abslink.tar",
            crafted(&[("index.json", T::Symlink, b"", "/etc/hostname")]),
            "leaves the archive",
        ),
    ];
    for (name, bytes, why) in cases {
        let err = run_import(&store, &write(name, &bytes), named("evil")).unwrap_err();
        assert!(err.to_string().contains(why), "{name}: {err}");
        assert!(store_is_empty(&store), "{name}");
    }
    assert!(!t.path().join("escaped").exists() && !Path::new("/tmp/escaped").exists());

    // A legacy docker save whose layer does not match its diff_id is refused …
    let mut layer = crafted(&[("hello.txt", T::Regular, b"hello\n", "")]);
    let diff_id = sha256(&layer);
    let last = layer.len() - 1;
    layer[last] ^= 1;
    let err = run_import(
        &store,
        &write("bad.tar", &tiny_docker_save(&layer, &diff_id)),
        ImportOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(err, ImageError::DigestMismatch { ref expected, .. } if *expected == diff_id),
        "{err}"
    );
    assert!(store_is_empty(&store));
    // … and the intact one imports through its symlinked layer, named by RepoTags.
    layer[last] ^= 1;
    let got = run_import(
        &store,
        &write("ok.tar", &tiny_docker_save(&layer, &diff_id)),
        ImportOptions::default(),
    )
    .unwrap();
    assert_eq!(got[0].names, ["docker.io/library/tiny:1"]);
    assert_eq!(got[0].record.layers[0].digest, diff_id);
    let rootfs = store.rootfs_of(&got[0].record.digest).unwrap();
    assert_eq!(
        fs::read_to_string(rootfs.join("hello.txt")).unwrap(),
        "hello\n"
    );
    // Neither an OCI layout nor a docker save: a clear error.
    let err = run_import(
        &store,
        &write("empty.tar", &crafted(&[])),
        ImportOptions::default(),
    );
    assert!(err
        .unwrap_err()
        .to_string()
        .contains("neither an OCI image layout"));
}

/// What is neither an archive nor a layout, or is missing, is a clear error printed once
/// (the CLI used to print an error's cause twice), and imports nothing.
#[test]
fn a_file_that_is_not_an_image_is_a_clear_error() {
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(t.path().join("store")).unwrap();
    let bogus = t.path().join("bogus.tar");
    fs::write(&bogus, b"not a tar at all").unwrap();
    let cut = t.path().join("cut.tar.gz");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&[0xa5; 700]).unwrap();
    fs::write(&cut, gz.finish().unwrap()).unwrap();
    for f in [&bogus, &cut] {
        let (code, _, err) = common::cli(&["import", s(f), "--store", s(store.root())]);
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains("not a tar archive, or a truncated one"),
            "{err}"
        );
        assert!(err.is_ascii(), "{err}");
    }
    let missing = t.path().join("missing.tar");
    let (code, _, err) = common::cli(&["import", s(&missing), "--store", s(store.root())]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert!(store_is_empty(&store));
}
