//! Registry client (distribution API v2) on blocking reqwest.
//!
//! Auth: a request without credentials; on `401` with `WWW-Authenticate: Bearer realm=…`
//! a token is fetched from the realm (anonymously, or with basic credentials when
//! configured: the Docker Hub flow) and cached per repository; on `Basic` the configured
//! credentials are sent. Transient failures (connection errors, 429, 5xx) are retried with
//! exponential back-off; blob downloads resume from their partial file with `Range`.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use reqwest::blocking::{Client, Response};
use reqwest::header::{ACCEPT, AUTHORIZATION, RANGE, WWW_AUTHENTICATE};
use reqwest::StatusCode;

use super::reference::{is_loopback_host, Reference, DOCKER_HUB, DOCKER_HUB_API};
use super::store::{digest_of, ImageRecord, ImageStore, LayerRef};
use super::{host_arch, ImageError, Progress, Result};

/// Media types we accept for manifests, best first.
pub const MANIFEST_TYPES: [&str; 4] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
const MAX_MANIFEST: usize = 4 << 20;

/// Credentials for one registry host.
#[derive(Debug, Clone, PartialEq)]
pub struct Credentials {
    /// Registry host (`docker.io`, `ghcr.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

/// How registries are reached.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Pull docker.io images from this registry instead (`registry_mirror`,
    /// `TAKO_VM_REGISTRY_MIRROR`), e.g. `mirror.example:5000` or `http://127.0.0.1:5000`.
    pub mirror: Option<String>,
    /// Hosts that may be reached over plain HTTP besides loopback ones.
    pub insecure: Vec<String>,
    /// Basic-auth credentials (also used at token realms).
    pub credentials: Vec<Credentials>,
    /// Layers downloaded at once.
    pub parallel: usize,
    /// Attempts per request (≥ 1).
    pub attempts: u32,
    /// First back-off delay (doubled per retry).
    pub backoff: Duration,
    /// Platform to select in an index: (architecture, variant).
    pub platform: (String, Option<String>),
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            mirror: None,
            insecure: Vec::new(),
            credentials: Vec::new(),
            parallel: 3,
            attempts: 4,
            backoff: Duration::from_millis(250),
            platform: (
                host_arch().to_string(),
                (host_arch() == "arm64").then(|| "v8".to_string()),
            ),
        }
    }
}

impl RegistryConfig {
    /// Defaults plus the environment: `TAKO_VM_REGISTRY_MIRROR`,
    /// `TAKO_VM_INSECURE_REGISTRIES` (comma-separated), and `TAKO_VM_REGISTRY_USERNAME` /
    /// `TAKO_VM_REGISTRY_PASSWORD` (for `TAKO_VM_REGISTRY_AUTH_HOST`, default: every host).
    pub fn from_env() -> RegistryConfig {
        let mut c = RegistryConfig::default();
        if let Ok(m) = std::env::var("TAKO_VM_REGISTRY_MIRROR") {
            if !m.trim().is_empty() {
                c.mirror = Some(m.trim().to_string());
            }
        }
        if let Ok(i) = std::env::var("TAKO_VM_INSECURE_REGISTRIES") {
            c.insecure = i
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
        }
        if let (Ok(u), Ok(p)) = (
            std::env::var("TAKO_VM_REGISTRY_USERNAME"),
            std::env::var("TAKO_VM_REGISTRY_PASSWORD"),
        ) {
            c.credentials.push(Credentials {
                registry: std::env::var("TAKO_VM_REGISTRY_AUTH_HOST")
                    .unwrap_or_else(|_| "*".into()),
                username: u,
                password: p,
            });
        }
        c
    }

    fn credentials_for(&self, host: &str) -> Option<&Credentials> {
        self.credentials
            .iter()
            .find(|c| c.registry == host)
            .or_else(|| self.credentials.iter().find(|c| c.registry == "*"))
    }
}

/// A resolved image: its manifest for our platform and the config.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Digest of the platform manifest.
    pub digest: String,
    /// Its raw bytes.
    pub manifest_bytes: Vec<u8>,
    /// The index it was selected from, when the reference named an index: (digest, bytes).
    pub index: Option<(String, Vec<u8>)>,
    /// Parsed manifest.
    pub manifest: ImageManifest,
}

/// A registry client (cheap to share between threads).
#[derive(Debug)]
pub struct Registry {
    http: Client,
    cfg: RegistryConfig,
    auth: Mutex<HashMap<String, String>>,
}

pub(super) struct Endpoint {
    pub(super) base: String,
    pub(super) host: String,
}

impl Registry {
    /// A client with `cfg`.
    pub fn new(cfg: RegistryConfig) -> Result<Registry> {
        let http = Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .timeout(None)
            .user_agent(concat!("tako-vm/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ImageError::Unreachable {
                registry: "-".into(),
                detail: e.to_string(),
            })?;
        Ok(Registry {
            http,
            cfg,
            auth: Mutex::new(HashMap::new()),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RegistryConfig {
        &self.cfg
    }

    pub(super) fn endpoint(&self, r: &Reference) -> Result<Endpoint> {
        let (explicit, host) = match (&self.cfg.mirror, r.registry.as_str()) {
            (Some(m), DOCKER_HUB) => {
                let m = m.trim_end_matches('/');
                match m.split_once("://") {
                    Some((s, h)) => (Some(s.to_string()), h.to_string()),
                    None => (None, m.to_string()),
                }
            }
            (_, DOCKER_HUB) => (None, DOCKER_HUB_API.to_string()),
            (_, h) => (None, h.to_string()),
        };
        let plain_ok = is_loopback_host(&host) || self.cfg.insecure.iter().any(|i| i == &host);
        let scheme = match explicit.as_deref() {
            Some("http") if !plain_ok => return Err(ImageError::Insecure(host)),
            Some(s @ ("http" | "https")) => s.to_string(),
            Some(s) => return Err(ImageError::Unsupported(format!("registry scheme {s}"))),
            None if plain_ok => "http".into(),
            None => "https".into(),
        };
        Ok(Endpoint {
            base: format!("{scheme}://{host}/v2/{}", r.repository),
            host,
        })
    }

    /// GET with auth and retries. `range_from` asks for the rest of a partial blob.
    pub(super) fn get(
        &self,
        r: &Reference,
        ep: &Endpoint,
        path: &str,
        accept: Option<&str>,
        range_from: u64,
    ) -> Result<Response> {
        let url = format!("{}/{path}", ep.base);
        let key = format!("{}/{}", ep.host, r.repository);
        let mut authed_once = false;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut req = self.http.get(&url);
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            if range_from > 0 {
                req = req.header(RANGE, format!("bytes={range_from}-"));
            }
            if let Some(h) = self.auth.lock().expect("auth cache").get(&key) {
                req = req.header(AUTHORIZATION, h.clone());
            }
            let resp = match req.send() {
                Ok(resp) => resp,
                Err(e) if attempt < self.cfg.attempts => {
                    let _ = e;
                    self.sleep(attempt);
                    continue;
                }
                Err(e) => {
                    return Err(ImageError::Unreachable {
                        registry: ep.host.clone(),
                        detail: error_chain(&e),
                    })
                }
            };
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && !authed_once {
                authed_once = true;
                let challenge = resp
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let header = self.authenticate(r, ep, &challenge)?;
                self.auth
                    .lock()
                    .expect("auth cache")
                    .insert(key.clone(), header);
                attempt -= 1;
                continue;
            }
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                return Err(ImageError::Auth {
                    registry: ep.host.clone(),
                    detail: format!("{status} for {}", r.repository),
                });
            }
            if (status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error())
                && attempt < self.cfg.attempts
            {
                self.sleep(attempt);
                continue;
            }
            return Ok(resp);
        }
    }

    pub(super) fn sleep(&self, attempt: u32) {
        std::thread::sleep(self.cfg.backoff * 2u32.saturating_pow(attempt.saturating_sub(1)));
    }

    /// Answers a `WWW-Authenticate` challenge; returns the `Authorization` header value.
    fn authenticate(&self, r: &Reference, ep: &Endpoint, challenge: &str) -> Result<String> {
        let creds = self.cfg.credentials_for(&ep.host).or_else(|| {
            // Credentials configured for docker.io also apply to its API host and mirror.
            (r.registry == DOCKER_HUB)
                .then(|| self.cfg.credentials_for(DOCKER_HUB))
                .flatten()
        });
        let (scheme, params) = parse_challenge(challenge);
        let auth_err = |detail: String| ImageError::Auth {
            registry: ep.host.clone(),
            detail,
        };
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => {
                let c = creds.ok_or_else(|| {
                    auth_err("the registry requires a user name and password".into())
                })?;
                Ok(basic(c))
            }
            "bearer" => {
                let realm = params
                    .get("realm")
                    .ok_or_else(|| auth_err("bearer challenge without realm".into()))?;
                let scope = params
                    .get("scope")
                    .cloned()
                    .unwrap_or_else(|| format!("repository:{}:pull", r.repository));
                let mut req = self.http.get(realm).query(&[("scope", scope.as_str())]);
                if let Some(s) = params.get("service") {
                    req = req.query(&[("service", s.as_str())]);
                }
                if let Some(c) = creds {
                    req = req.header(AUTHORIZATION, basic(c));
                }
                let resp = req.send().map_err(|e| ImageError::Unreachable {
                    registry: realm.clone(),
                    detail: error_chain(&e),
                })?;
                if !resp.status().is_success() {
                    return Err(auth_err(format!(
                        "token server {realm} answered {}",
                        resp.status()
                    )));
                }
                let v: serde_json::Value = resp
                    .json()
                    .map_err(|e| auth_err(format!("token server answer: {e}")))?;
                let tok = v
                    .get("token")
                    .or_else(|| v.get("access_token"))
                    .and_then(|t| t.as_str())
                    .ok_or_else(|| auth_err("token server sent no token".into()))?;
                Ok(format!("Bearer {tok}"))
            }
            _ => Err(auth_err(format!("unsupported challenge {challenge:?}"))),
        }
    }

    /// Fetches a manifest or index by tag or digest; verifies a digest reference.
    pub fn fetch_manifest(&self, r: &Reference, object: &str) -> Result<(Vec<u8>, String)> {
        let ep = self.endpoint(r)?;
        let resp = self.get(
            r,
            &ep,
            &format!("manifests/{object}"),
            Some(&MANIFEST_TYPES.join(", ")),
            0,
        )?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return Err(ImageError::NotFound {
                reference: r.to_string(),
            });
        }
        if !status.is_success() {
            return Err(ImageError::Http {
                registry: ep.host,
                status: status.as_u16(),
                what: format!("manifest {object}"),
            });
        }
        let mut bytes = Vec::new();
        resp.take(MAX_MANIFEST as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| ImageError::Unreachable {
                registry: ep.host.clone(),
                detail: e.to_string(),
            })?;
        if bytes.len() > MAX_MANIFEST {
            return Err(ImageError::Unsupported("manifest larger than 4 MiB".into()));
        }
        let digest = digest_of(&bytes);
        if object.starts_with("sha256:") && digest != object {
            return Err(ImageError::DigestMismatch {
                what: "manifest",
                expected: object.to_string(),
                actual: digest,
            });
        }
        Ok((bytes, digest))
    }

    /// Resolves a reference to the manifest of our platform.
    pub fn resolve(&self, r: &Reference) -> Result<Resolved> {
        let (bytes, digest) = self.fetch_manifest(r, r.object())?;
        if is_index(&bytes) {
            let index: ImageIndex = parse_json("image index", &bytes)?;
            let chosen = select_platform(&index, &self.cfg.platform)
                .ok_or_else(|| no_platform(&r.to_string(), &index, &self.cfg.platform))?;
            let (mbytes, mdigest) = self.fetch_manifest(r, &chosen)?;
            if is_index(&mbytes) {
                return Err(ImageError::Unsupported("nested image index".into()));
            }
            let manifest = parse_json("image manifest", &mbytes)?;
            return Ok(Resolved {
                digest: mdigest,
                manifest_bytes: mbytes,
                index: Some((digest, bytes)),
                manifest,
            });
        }
        let manifest = parse_json("image manifest", &bytes)?;
        Ok(Resolved {
            digest,
            manifest_bytes: bytes,
            index: None,
            manifest,
        })
    }

    /// Pulls an image into the store: manifest, config and layers (in parallel). Does not
    /// unpack or name it (see [`pull`]).
    pub fn fetch_image(
        &self,
        r: &Reference,
        store: &ImageStore,
        progress: &dyn Progress,
    ) -> Result<ImageRecord> {
        progress.step(&format!("resolving {r}"));
        let res = self.resolve(r)?;
        let m = &res.manifest;
        let config_digest = m.config().digest().to_string();
        self.fetch_blob(r, &config_digest, m.config().size(), store, progress)?;
        let config: ImageConfiguration =
            parse_json("image config", &store.read_bytes(&config_digest)?)?;
        let layers: Vec<LayerRef> = m
            .layers()
            .iter()
            .map(|l| LayerRef {
                digest: l.digest().to_string(),
                media_type: l.media_type().to_string(),
                size: l.size(),
            })
            .collect();
        for l in &layers {
            if !(l.media_type.contains("tar") || l.media_type.contains("rootfs.diff")) {
                return Err(ImageError::Unsupported(l.media_type.clone()));
            }
        }
        let queue = Mutex::new(layers.iter().collect::<Vec<_>>());
        let first_err: Mutex<Option<ImageError>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..self.cfg.parallel.max(1).min(layers.len().max(1)) {
                s.spawn(|| loop {
                    if first_err.lock().expect("err").is_some() {
                        return;
                    }
                    let Some(l) = queue.lock().expect("queue").pop() else {
                        return;
                    };
                    if let Err(e) = self.fetch_blob(r, &l.digest, l.size, store, progress) {
                        first_err.lock().expect("err").get_or_insert(e);
                        return;
                    }
                });
            }
        });
        if let Some(e) = first_err.into_inner().expect("err") {
            return Err(e);
        }
        store.put_bytes(&res.digest, &res.manifest_bytes)?;
        let rec = ImageRecord::new(
            res.digest.clone(),
            config_digest,
            layers,
            &config,
            r.to_string(),
        );
        store.save_record(&rec)?;
        if let Some((idx_digest, idx_bytes)) = &res.index {
            store.put_bytes(idx_digest, idx_bytes)?;
            super::store::write_atomic(
                &store.image_dir(&rec.digest)?.join("index-digest"),
                idx_digest.as_bytes(),
            )?;
        }
        Ok(rec)
    }
}

/// Pulls `reference`, unpacks it and records its name; returns the record.
pub fn pull(
    registry: &Registry,
    store: &ImageStore,
    reference: &str,
    progress: &dyn Progress,
) -> Result<ImageRecord> {
    let r = Reference::parse(reference)?;
    // One pull of a reference at a time per store (threads and processes): concurrent
    // builds of job types on the same base otherwise race on the image's directory.
    let lock_name = format!(
        "pull-{}.lock",
        &super::store::digest_of(r.to_string().as_bytes())[7..23]
    );
    let _lock = super::store::FileLock::acquire(&store.root().join(lock_name))?;
    let rec = registry.fetch_image(&r, store, progress)?;
    super::unpack::ensure_rootfs(store, &rec, progress)?;
    store.tag(&r.to_string(), &rec.digest)?;
    Ok(rec)
}

fn basic(c: &Credentials) -> String {
    let raw = format!("{}:{}", c.username, c.password);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Splits `Bearer realm="…",service="…"` into the scheme and its parameters.
pub fn parse_challenge(h: &str) -> (String, HashMap<String, String>) {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((k, v)) = rest.split_once('=') else {
            break;
        };
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let v = v.trim_start();
        let (val, next) = if let Some(q) = v.strip_prefix('"') {
            let end = q.find('"').unwrap_or(q.len());
            (&q[..end], q.get(end + 1..).unwrap_or(""))
        } else {
            let end = v.find(',').unwrap_or(v.len());
            (&v[..end], &v[end..])
        };
        params.insert(k, val.to_string());
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    (scheme.to_string(), params)
}

fn is_index(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .is_some_and(|v| v.get("manifests").is_some())
}

/// Parses JSON into an oci-spec type, with a readable error.
pub fn parse_json<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| ImageError::Malformed {
        what: what.to_string(),
        detail: e.to_string(),
    })
}

/// The error for an index that has no manifest for `platform` (pull and import).
pub fn no_platform(
    reference: &str,
    index: &ImageIndex,
    platform: &(String, Option<String>),
) -> ImageError {
    ImageError::NoPlatform {
        reference: reference.to_string(),
        platform: platform_string(platform),
        available: index
            .manifests()
            .iter()
            .filter_map(|m| m.platform().as_ref())
            .map(|p| format!("{}/{}", p.os(), p.architecture()))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn platform_string(p: &(String, Option<String>)) -> String {
    match &p.1 {
        Some(v) => format!("linux/{}/{v}", p.0),
        None => format!("linux/{}", p.0),
    }
}

/// Picks the manifest of `platform` (linux, architecture, preferring the variant).
pub fn select_platform(index: &ImageIndex, platform: &(String, Option<String>)) -> Option<String> {
    let candidates: Vec<_> = index
        .manifests()
        .iter()
        .filter(|m| {
            m.platform().as_ref().is_some_and(|p| {
                p.os().to_string() == "linux" && p.architecture().to_string() == platform.0
            })
        })
        .collect();
    let exact = candidates
        .iter()
        .find(|m| m.platform().as_ref().and_then(|p| p.variant().clone()) == platform.1);
    exact.or(candidates.first()).map(|m| m.digest().to_string())
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
