//! Import of OCI image layouts and `docker save` archives, for air-gapped hosts.
//!
//! Sources: an OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/…`),
//! the same layout in a tar (an OCI archive; plain, gzip or zstd), or a `docker save`
//! tarball: the legacy one (`manifest.json`, `<config>.json`, layer tars) and Docker 25+'s,
//! which is an OCI layout with a `manifest.json` besides (read as the OCI layout). An
//! extracted docker save directory works too.
//!
//! - A tarball is streamed once: each regular member is copied, while hashed, to a numbered
//!   file in a private staging directory of the store (`blobs/partial/import.*`), never to a
//!   path made from its name. A member named with `..` or an absolute path refuses the
//!   archive; symlinks and hard links between members are resolved by name inside it.
//! - Every blob an image uses is verified by sha256 and size against its descriptor (for
//!   legacy docker archives: the config against its file name, each layer against the
//!   config's `diff_ids`), and all images are verified before anything enters the store,
//!   so a corrupt archive leaves nothing behind. Layers then join the blob store by digest,
//!   the image is unpacked like a pulled one and named: `--name`, else the archive's
//!   `io.containerd.image.name` / `org.opencontainers.image.ref.name` annotation or docker
//!   `RepoTags`.
//! - In an index the host's platform is selected as in a pull.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::client::{no_platform, parse_json, select_platform, RegistryConfig};
use super::reference::{valid_digest, Reference};
use super::store::{digest_of, remove_any, write_atomic, ImageRecord, ImageStore, LayerRef};
use super::unpack::{self, Compression};
use super::{ImageError, Progress, Result};

const MAX_JSON: u64 = 4 << 20;
const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// What to import and how to name it.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Local name of the image (default: the names the archive gives it).
    pub name: Option<String>,
    /// Only the image the archive names so, when it holds several.
    pub reference: Option<String>,
    /// Platform selected in an index: (architecture, variant), as for pulls.
    pub platform: (String, Option<String>),
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            name: None,
            reference: None,
            platform: RegistryConfig::default().platform,
        }
    }
}

/// An imported image and the local names it got.
#[derive(Debug, Clone)]
pub struct Imported {
    /// Local names (`tako-vm images`, `run --image`).
    pub names: Vec<String>,
    /// The image record, as for a pulled image.
    pub record: ImageRecord,
}

/// Imports the images of an OCI layout directory, OCI archive or docker save tarball at
/// `path`: verified, stored by digest, unpacked and named.
pub fn import(
    store: &ImageStore,
    path: &Path,
    opts: &ImportOptions,
    progress: &dyn Progress,
) -> Result<Vec<Imported>> {
    let meta = fs::metadata(path).map_err(|e| ImageError::io("open", path, e))?;
    progress.step(&format!("reading {}", path.display()));
    let mut src = Source::open(store, path, meta.is_dir())?;
    let mut cands = if src.member("index.json")?.is_some() {
        oci_candidates(&mut src, opts, progress)?
    } else if src.member("manifest.json")?.is_some() {
        docker_candidates(&mut src)?
    } else {
        return Err(src.malformed(
            "neither an OCI image layout (oci-layout, index.json) nor a docker save archive (manifest.json)".into(),
        ));
    };
    if let Some(r) = &opts.reference {
        let canonical = archive_name(r);
        let all = list_names(&cands);
        cands.retain(|c| {
            c.names
                .iter()
                .any(|n| n == r || Some(n) == canonical.as_ref())
        });
        if cands.is_empty() {
            return Err(src.malformed(format!("no image named {r} (it holds: {all})")));
        }
    }
    if cands.is_empty() {
        return Err(src.malformed("it holds no image".into()));
    }
    if let Some(n) = &opts.name {
        if cands.len() > 1 {
            return Err(src.malformed(format!(
                "it holds {} images ({}); choose one for --name with --ref",
                cands.len(),
                list_names(&cands)
            )));
        }
        cands[0].names = vec![Reference::parse(n)?.to_string()];
    }
    if let Some(c) = cands.iter().find(|c| c.names.is_empty()) {
        return Err(src.malformed(format!(
            "image {} has no name in the archive; give one with --name",
            c.label
        )));
    }
    // Verify everything first: nothing enters the store from a corrupt archive.
    let mut plans = Vec::new();
    for c in cands {
        progress.step(&format!("verifying {}", c.names.join(", ")));
        plans.push(match &c.kind {
            Kind::Oci(d) => {
                let (manifest, index) = resolve_oci(&mut src, d, &c.label, &opts.platform, 0)?;
                plan_manifest(&mut src, c.names, manifest, index)?
            }
            Kind::Docker(e) => plan_docker(&mut src, c.names, e)?,
        });
    }
    let source = format!(
        "import:{}",
        fs::canonicalize(path)
            .unwrap_or_else(|_| path.to_path_buf())
            .display()
    );
    plans
        .into_iter()
        .map(|p| commit(store, p, &source, progress))
        .collect()
}

// ---- sources: a directory, or a tarball staged member by member -------------------------

/// A regular member, copied into the staging directory and hashed.
#[derive(Debug, Clone)]
struct Member {
    file: PathBuf,
    digest: String,
    size: u64,
}

struct Source {
    what: String,
    dir: Option<PathBuf>,
    staging: PathBuf,
    members: HashMap<String, Member>,
    /// Symlinks and hard links: member name → the member they lead to.
    links: HashMap<String, String>,
    next: usize,
}

impl Drop for Source {
    fn drop(&mut self) {
        let _ = remove_any(&self.staging);
    }
}

impl Source {
    fn open(store: &ImageStore, path: &Path, is_dir: bool) -> Result<Source> {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let staging = store.root().join("blobs/partial").join(format!(
            "import.{}.{}.{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&staging)
            .map_err(|e| ImageError::io("create", &staging, e))?;
        let mut src = Source {
            what: path.display().to_string(),
            dir: is_dir.then(|| path.to_path_buf()),
            staging,
            members: HashMap::new(),
            links: HashMap::new(),
            next: 0,
        };
        if !is_dir {
            src.stream_tar(path)?;
        }
        Ok(src)
    }

    fn malformed(&self, detail: String) -> ImageError {
        ImageError::Malformed {
            what: format!("archive {}", self.what),
            detail,
        }
    }

    /// Reads the tarball once, staging every regular member and noting links.
    fn stream_tar(&mut self, path: &Path) -> Result<()> {
        let f = File::open(path).map_err(|e| ImageError::io("open", path, e))?;
        let mut r = BufReader::with_capacity(1 << 20, f);
        let head = r.fill_buf().map_err(|e| ImageError::io("read", path, e))?;
        let reader: Box<dyn Read> = match Compression::detect("", head) {
            Compression::None => Box::new(r),
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::with_buffer(r)
                    .map_err(|e| ImageError::io("zstd", path, e))?,
            ),
        };
        let mut archive = tar::Archive::new(reader);
        let entries = archive
            .entries()
            .map_err(|e| self.malformed(format!("not a tar archive: {e}")))?;
        for entry in entries {
            // The tar crate reports a bad or cut-short archive as an I/O error without an
            // OS error code.
            let mut entry = entry.map_err(|e| match e.raw_os_error() {
                Some(_) => ImageError::io("read", path, e),
                None => self.malformed(format!(
                    "not a tar archive, or a truncated one: {}",
                    super::tar_error_text(&e)
                )),
            })?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let name = self.member_name(&raw)?;
            if name.is_empty() {
                continue;
            }
            let target = entry
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned())
                .unwrap_or_default();
            use tar::EntryType as T;
            let target = match entry.header().entry_type() {
                T::Regular | T::Continuous => {
                    let m = self.stage(&mut entry, path)?;
                    self.links.remove(&name);
                    self.members.insert(name, m);
                    continue;
                }
                T::Symlink => self.follow(&name, &target)?,
                T::Link => self.member_name(&target)?,
                _ => continue,
            };
            self.members.remove(&name);
            self.links.insert(name, target);
        }
        Ok(())
    }

    /// Copies `r` into a new staging file, hashing it.
    fn stage(&mut self, r: &mut dyn Read, from: &Path) -> Result<Member> {
        self.next += 1;
        let file = self.staging.join(self.next.to_string());
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&file)
            .map_err(|e| ImageError::io("create", &file, e))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 << 10];
        let mut size = 0u64;
        loop {
            let n = r
                .read(&mut buf)
                .map_err(|e| ImageError::io("read", from, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|e| ImageError::io("write", &file, e))?;
            size += n as u64;
        }
        Ok(Member {
            file,
            digest: format!("sha256:{}", hex::encode(hasher.finalize())),
            size,
        })
    }

    /// Normalises a member name (`./a//b` → `a/b`); `..` and absolute names are refused.
    fn member_name(&self, raw: &str) -> Result<String> {
        if raw.starts_with('/') {
            return Err(self.malformed(format!("member {raw:?} is an absolute path; refused")));
        }
        let mut parts = Vec::new();
        for c in raw.split('/') {
            match c {
                "" | "." => {}
                ".." => return Err(self.malformed(format!("member {raw:?} contains ..; refused"))),
                c => parts.push(c),
            }
        }
        Ok(parts.join("/"))
    }

    /// Where the symlink member `name` → `target` points, inside the archive.
    fn follow(&self, name: &str, target: &str) -> Result<String> {
        let outside = || self.malformed(format!("symlink {name} -> {target} leaves the archive"));
        if target.starts_with('/') {
            return Err(outside());
        }
        let mut parts: Vec<&str> = name.split('/').collect();
        parts.pop();
        for c in target.split('/') {
            match c {
                "" | "." => {}
                ".." => {
                    parts.pop().ok_or_else(outside)?;
                }
                c => parts.push(c),
            }
        }
        Ok(parts.join("/"))
    }

    /// A regular member by name (links followed inside the archive), staged and hashed.
    fn member(&mut self, name: &str) -> Result<Option<Member>> {
        let mut name = self.member_name(name)?;
        for _ in 0..16 {
            if let Some(m) = self.members.get(&name) {
                return Ok(Some(m.clone()));
            }
            if let Some(dir) = self.dir.clone() {
                let p = dir.join(&name);
                if name.is_empty() || !p.is_file() {
                    return Ok(None);
                }
                let mut f = File::open(&p).map_err(|e| ImageError::io("open", &p, e))?;
                let m = self.stage(&mut f, &p)?;
                self.members.insert(name, m.clone());
                return Ok(Some(m));
            }
            match self.links.get(&name) {
                Some(target) => name = target.clone(),
                None => return Ok(None),
            }
        }
        Err(self.malformed(format!("too many levels of links at {name}")))
    }

    /// A small member's bytes (manifests, configs, `index.json`).
    fn read_small(&self, m: &Member, name: &str) -> Result<Vec<u8>> {
        if m.size > MAX_JSON {
            return Err(self.malformed(format!("{name} is larger than 4 MiB")));
        }
        fs::read(&m.file).map_err(|e| ImageError::io("read", &m.file, e))
    }

    fn json(&mut self, name: &str) -> Result<Option<Vec<u8>>> {
        match self.member(name)? {
            Some(m) => self.read_small(&m, name).map(Some),
            None => Ok(None),
        }
    }

    /// The blob of a descriptor, verified against its digest and size.
    fn blob(&mut self, digest: &str, size: Option<u64>) -> Result<Member> {
        if !valid_digest(digest) {
            return Err(ImageError::Unsupported(format!("blob digest {digest}")));
        }
        let m = self
            .member(&format!("blobs/sha256/{}", &digest[7..]))?
            .ok_or_else(|| self.malformed(format!("blob {digest} is missing")))?;
        check(&m, digest, size)?;
        Ok(m)
    }

    fn blob_bytes(&mut self, d: &Descriptor) -> Result<(String, Vec<u8>)> {
        let digest = d.digest().to_string();
        let m = self.blob(&digest, Some(d.size()))?;
        Ok((digest.clone(), self.read_small(&m, &digest)?))
    }
}

fn check(m: &Member, digest: &str, size: Option<u64>) -> Result<()> {
    let actual = match size {
        Some(s) if s != m.size => format!("{} bytes instead of {s}", m.size),
        _ if m.digest != digest => m.digest.clone(),
        _ => return Ok(()),
    };
    Err(ImageError::DigestMismatch {
        what: "blob",
        expected: digest.to_string(),
        actual,
    })
}

// ---- what the archive holds ---------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

enum Kind {
    Oci(Box<Descriptor>),
    Docker(DockerEntry),
}

struct Candidate {
    names: Vec<String>,
    label: String,
    kind: Kind,
}

fn list_names(cands: &[Candidate]) -> String {
    let names: Vec<String> = cands
        .iter()
        .map(|c| match c.names.is_empty() {
            true => c.label.clone(),
            false => c.names.join(", "),
        })
        .collect();
    names.join("; ")
}

/// A name the archive gives: references are normalised as for pulls; a bare tag (an OCI
/// `ref.name` such as `3.11-slim`) is kept as it is.
fn archive_name(raw: &str) -> Option<String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return None;
    }
    if raw.contains(['/', ':', '@']) {
        if let Ok(r) = Reference::parse(raw) {
            return Some(r.to_string());
        }
    }
    Some(raw.to_string())
}

fn oci_candidates(
    src: &mut Source,
    opts: &ImportOptions,
    progress: &dyn Progress,
) -> Result<Vec<Candidate>> {
    if let Some(b) = src.json("oci-layout")? {
        let v: serde_json::Value = parse_json("oci-layout", &b)?;
        let version = v["imageLayoutVersion"].as_str().unwrap_or("");
        if !version.starts_with("1.") {
            return Err(ImageError::Unsupported(format!(
                "OCI image layout version {version:?}"
            )));
        }
    }
    let bytes = src.json("index.json")?.unwrap_or_default();
    let index: ImageIndex = parse_json("index.json", &bytes)?;
    let mut cands = Vec::new();
    let mut skipped = Vec::new();
    for d in index.manifests() {
        if let Some(p) = d.platform() {
            let ours =
                p.os().to_string() == "linux" && p.architecture().to_string() == opts.platform.0;
            if !ours {
                let plat = format!("{}/{}", p.os(), p.architecture());
                progress.step(&format!("skipping {} ({plat})", d.digest()));
                skipped.push(plat);
                continue;
            }
        }
        let ann = d.annotations().clone().unwrap_or_default();
        let names = ann
            .get(CONTAINERD_NAME)
            .or_else(|| ann.get(REF_NAME))
            .and_then(|n| archive_name(n))
            .into_iter()
            .collect();
        cands.push(Candidate {
            names,
            label: d.digest().to_string(),
            kind: Kind::Oci(Box::new(d.clone())),
        });
    }
    if cands.is_empty() && !skipped.is_empty() {
        return Err(ImageError::NoPlatform {
            reference: src.what.clone(),
            platform: format!("linux/{}", opts.platform.0),
            available: skipped.join(", "),
        });
    }
    Ok(cands)
}

fn docker_candidates(src: &mut Source) -> Result<Vec<Candidate>> {
    let bytes = src.json("manifest.json")?.unwrap_or_default();
    let entries: Vec<DockerEntry> = parse_json("docker manifest.json", &bytes)?;
    Ok(entries
        .into_iter()
        .map(|e| Candidate {
            names: e
                .repo_tags
                .iter()
                .flatten()
                .filter_map(|t| archive_name(t))
                .collect(),
            label: e.config.clone(),
            kind: Kind::Docker(e),
        })
        .collect())
}

fn is_index(media_type: &str, bytes: &[u8]) -> bool {
    media_type.contains("image.index")
        || media_type.contains("manifest.list")
        || serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .is_some_and(|v| v.get("manifests").is_some())
}

type Blob = (String, Vec<u8>);

/// The platform manifest a descriptor leads to, and the index it was selected from.
fn resolve_oci(
    src: &mut Source,
    d: &Descriptor,
    label: &str,
    platform: &(String, Option<String>),
    depth: usize,
) -> Result<(Blob, Option<Blob>)> {
    let (digest, bytes) = src.blob_bytes(d)?;
    if !is_index(d.media_type().as_ref(), &bytes) {
        return Ok(((digest, bytes), None));
    }
    if depth >= 3 {
        return Err(ImageError::Unsupported(
            "image index nested too deep".into(),
        ));
    }
    let index: ImageIndex = parse_json("image index", &bytes)?;
    let no_platform = || no_platform(label, &index, platform);
    let chosen = select_platform(&index, platform).ok_or_else(no_platform)?;
    let inner = index
        .manifests()
        .iter()
        .find(|m| m.digest().to_string() == chosen)
        .ok_or_else(no_platform)?;
    let (manifest, nested) = resolve_oci(src, inner, label, platform, depth + 1)?;
    Ok((manifest, nested.or(Some((digest, bytes)))))
}

/// A verified image, ready to be committed to the store.
struct Plan {
    names: Vec<String>,
    manifest: Blob,
    index: Option<Blob>,
    config: Blob,
    layers: Vec<(LayerRef, PathBuf)>,
}

fn plan_manifest(
    src: &mut Source,
    names: Vec<String>,
    manifest: Blob,
    index: Option<Blob>,
) -> Result<Plan> {
    let m: ImageManifest = parse_json("image manifest", &manifest.1)?;
    let config = src.blob_bytes(m.config())?;
    let mut layers = Vec::new();
    for l in m.layers() {
        let media_type = l.media_type().to_string();
        if !(media_type.contains("tar") || media_type.contains("rootfs.diff")) {
            return Err(ImageError::Unsupported(media_type));
        }
        let digest = l.digest().to_string();
        let staged = src.blob(&digest, Some(l.size()))?;
        let layer = LayerRef {
            digest,
            media_type,
            size: l.size(),
        };
        layers.push((layer, staged.file));
    }
    Ok(Plan {
        names,
        manifest,
        index,
        config,
        layers,
    })
}

/// A docker save entry: the config checked against its name, each layer against its
/// `diff_id` (after decompression if it is compressed); an OCI manifest is written for it.
fn plan_docker(src: &mut Source, names: Vec<String>, e: &DockerEntry) -> Result<Plan> {
    let cm = src
        .member(&e.config)?
        .ok_or_else(|| src.malformed(format!("config {} is missing", e.config)))?;
    let stem = e.config.rsplit('/').next().unwrap_or("");
    let named = format!("sha256:{}", stem.trim_end_matches(".json"));
    if valid_digest(&named) {
        check(&cm, &named, None)?;
    }
    let config = (cm.digest.clone(), src.read_small(&cm, &e.config)?);
    let parsed: ImageConfiguration = parse_json("image config", &config.1)?;
    let diff_ids = parsed.rootfs().diff_ids();
    if diff_ids.len() != e.layers.len() {
        return Err(src.malformed(format!(
            "{} lists {} layers, its config {} diff_ids",
            e.config,
            e.layers.len(),
            diff_ids.len()
        )));
    }
    let mut layers = Vec::new();
    for (path, diff_id) in e.layers.iter().zip(diff_ids) {
        let m = src
            .member(path)?
            .ok_or_else(|| src.malformed(format!("layer {path} is missing")))?;
        let mut head = [0u8; 4];
        let n = File::open(&m.file)
            .and_then(|mut f| f.read(&mut head))
            .map_err(|e| ImageError::io("read", &m.file, e))?;
        let (compression, uncompressed) = match Compression::detect("", &head[..n]) {
            Compression::None => ("", m.digest.clone()),
            c => {
                let mut r = unpack::open_layer(&m.file, "")?;
                let mut h = Sha256::new();
                std::io::copy(&mut r, &mut h).map_err(|e| ImageError::io("read", &m.file, e))?;
                let suffix = if c == Compression::Gzip {
                    "+gzip"
                } else {
                    "+zstd"
                };
                (suffix, format!("sha256:{}", hex::encode(h.finalize())))
            }
        };
        if &uncompressed != diff_id {
            return Err(ImageError::DigestMismatch {
                what: "layer",
                expected: diff_id.clone(),
                actual: uncompressed,
            });
        }
        let layer = LayerRef {
            digest: m.digest.clone(),
            media_type: format!("application/vnd.oci.image.layer.v1.tar{compression}"),
            size: m.size,
        };
        layers.push((layer, m.file));
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config.0,
            "size": config.1.len(),
        },
        "layers": layers.iter().map(|(l, _)| serde_json::json!({
            "mediaType": l.media_type, "digest": l.digest, "size": l.size,
        })).collect::<Vec<_>>(),
    });
    let bytes = serde_json::to_vec(&manifest).expect("manifest serialises");
    Ok(Plan {
        names,
        manifest: (digest_of(&bytes), bytes),
        index: None,
        config,
        layers,
    })
}

/// Moves a verified image into the store, unpacks it and names it.
fn commit(store: &ImageStore, p: Plan, source: &str, progress: &dyn Progress) -> Result<Imported> {
    for (l, file) in &p.layers {
        if store.has_blob(&l.digest) {
            continue; // stored before, or by an earlier image of this archive
        }
        let dest = store.blob_path(&l.digest)?;
        File::open(file)
            .and_then(|f| f.sync_all())
            .map_err(|e| ImageError::io("sync", file, e))?;
        rootfs_builder::durable::rename(file, &dest)
            .map_err(|e| ImageError::io("rename", &dest, e))?;
        progress.step(&format!(
            "stored layer {}",
            super::progress::short(&l.digest)
        ));
    }
    store.put_bytes(&p.config.0, &p.config.1)?;
    store.put_bytes(&p.manifest.0, &p.manifest.1)?;
    let config: ImageConfiguration = parse_json("image config", &p.config.1)?;
    let record = ImageRecord::new(
        p.manifest.0.clone(),
        p.config.0.clone(),
        p.layers.into_iter().map(|(l, _)| l).collect(),
        &config,
        source.to_string(),
    );
    store.save_record(&record)?;
    if let Some((digest, bytes)) = &p.index {
        store.put_bytes(digest, bytes)?;
        let marker = store.image_dir(&record.digest)?.join("index-digest");
        write_atomic(&marker, digest.as_bytes())?;
    }
    unpack::ensure_rootfs(store, &record, progress)?;
    for n in &p.names {
        store.tag(n, &record.digest)?;
    }
    Ok(Imported {
        names: p.names,
        record,
    })
}
