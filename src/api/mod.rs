//! The REST API of tako-vm 0.3.0 on axum/hyper.
//!
//! One handler ([`dispatch`]) runs the request pipeline of spec §1.1–§1.2 in order:
//! security headers and correlation id (on every response), then — outside the exempt
//! paths — rate limit, authentication and the payload limit, then routing (404, 405 with
//! `Allow`, trailing-slash 307) and the route handlers (`handlers.rs`).

mod artifacts;
mod handlers;
pub mod http;
pub mod openapi;
mod routes;
pub mod validate;
pub mod views;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use http_body_util::BodyExt;

use crate::config::Config;
use crate::jobs::Service;

/// Shared state of the HTTP layer.
pub struct AppState {
    /// The job service.
    pub svc: Arc<Service>,
    /// Configuration.
    pub cfg: Arc<Config>,
    /// False until start-up (reconciliation, workers) is complete: `/health` answers 503.
    pub ready: std::sync::atomic::AtomicBool,
    limiter: Mutex<HashMap<String, (Instant, u64)>>,
}

impl AppState {
    /// State over a service.
    pub fn new(svc: Arc<Service>) -> Arc<AppState> {
        Arc::new(AppState {
            cfg: svc.cfg.clone(),
            svc,
            ready: std::sync::atomic::AtomicBool::new(true),
            limiter: Mutex::new(HashMap::new()),
        })
    }
}

/// The axum application: every request goes to [`dispatch`].
pub fn app(state: Arc<AppState>) -> axum::Router {
    axum::Router::new().fallback(dispatch).with_state(state)
}

/// Paths that are neither authenticated nor rate limited.
pub fn is_exempt(path: &str) -> bool {
    matches!(
        path,
        "/health" | "/openapi.json" | "/docs/oauth2-redirect" | "/docs" | "/redoc"
    ) || path.starts_with("/docs/")
        || path.starts_with("/redoc/")
}

/// A header value as UTF-8 text, trimmed (`to_str` would refuse any non-ASCII key).
fn utf8(v: &HeaderValue) -> Option<&str> {
    std::str::from_utf8(v.as_bytes()).ok().map(str::trim)
}

/// The API key of a request: the first relevant header decides (§1.2).
fn presented_key(headers: &HeaderMap, auth_header: &str) -> Option<String> {
    let auth_header = auth_header.to_ascii_lowercase();
    for (name, value) in headers {
        let n = name.as_str();
        if n == auth_header {
            let v = utf8(value)?;
            return (!v.is_empty()).then(|| v.to_string());
        }
        if n == "authorization" {
            let Some(v) = utf8(value) else { continue };
            let b = v.as_bytes();
            if b.len() >= 7 && b[..7].eq_ignore_ascii_case(b"bearer ") {
                let k = v[7..].trim();
                return (!k.is_empty()).then(|| k.to_string());
            }
        }
    }
    None
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

impl AppState {
    fn key_index(&self, headers: &HeaderMap) -> Option<usize> {
        let key = presented_key(headers, &self.cfg.api_auth_header)?;
        let mut found = None;
        for (i, k) in self.cfg.api_keys.iter().enumerate() {
            if ct_eq(k.as_bytes(), key.as_bytes()) && found.is_none() {
                found = Some(i);
            }
        }
        found
    }

    /// Fixed-window rate limit; `Err(retry_after_s)` when exceeded.
    fn rate_limit(&self, identity: String) -> Result<(), u64> {
        let window = self.cfg.api_rate_limit_window_seconds as u64;
        let mut m = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if m.len() > 100_000 {
            m.retain(|_, (start, _)| now.duration_since(*start).as_secs() < window);
        }
        let e = m.entry(identity).or_insert((now, 0));
        if now.duration_since(e.0).as_secs_f64() >= window as f64 {
            *e = (now, 0);
        }
        e.1 += 1;
        if e.1 <= self.cfg.api_rate_limit_requests as u64 {
            Ok(())
        } else {
            let left = window as f64 - now.duration_since(e.0).as_secs_f64();
            Err((left.ceil() as u64).max(1))
        }
    }
}

/// The request pipeline (see the module docs).
pub async fn dispatch(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.ip().to_string());
    // Used verbatim (§1.1): header bytes are latin-1 characters (as in Starlette), so any
    // byte sequence round-trips to the response header unchanged.
    let cid = req
        .headers()
        .get("x-correlation-id")
        .map(|v| v.as_bytes().iter().map(|&b| b as char).collect::<String>())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut resp = guarded(&st, req, &cid, ip).await;
    let h = resp.headers_mut();
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "x-xss-protection",
        HeaderValue::from_static("1; mode=block"),
    );
    let raw: Vec<u8> = cid.chars().map(|c| c as u32 as u8).collect();
    if let Ok(v) = HeaderValue::from_bytes(&raw) {
        h.insert("x-correlation-id", v);
    }
    resp
}

async fn guarded(st: &Arc<AppState>, req: Request, cid: &str, ip: Option<String>) -> Response {
    // An answer given before the request's body was read in full closes the connection,
    // and says so: hyper drops a connection with unread body bytes, and a client that had
    // pooled it would send its next request into a closed socket.
    let unread = !axum::body::HttpBody::is_end_stream(req.body());
    match refused(st, &req, cid, ip.as_deref()) {
        Some(r) if unread => closing(r),
        Some(r) => r,
        None => admitted(st, req, cid, ip).await,
    }
}

/// `r` with `Connection: close`.
fn closing(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

fn too_large(limit: u64, cid: &str) -> Response {
    http::layer_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("Payload too large. Maximum allowed size is {limit} bytes."),
        cid,
    )
}

/// The answer to a request refused on its head alone, before its body is read: not ready
/// yet, rate-limited, unauthenticated, or declaring a body over the payload limit.
fn refused(st: &AppState, req: &Request, cid: &str, ip: Option<&str>) -> Option<Response> {
    let path = req.uri().path();
    if !st.ready.load(std::sync::atomic::Ordering::SeqCst) {
        if path == "/health" {
            return Some(http::json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"status": "starting", "detail": "Server is not ready yet"}),
            ));
        }
        return Some(http::layer_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Server is not ready yet",
            cid,
        ));
    }
    if !is_exempt(path) {
        // Keys only identify a client when authentication is on (§1.2).
        let key = if st.cfg.api_auth_enabled {
            st.key_index(req.headers())
        } else {
            None
        };
        if st.cfg.api_rate_limit_enabled {
            let identity = match key {
                Some(i) => format!("api_key:{i}"),
                None => ip.unwrap_or("unknown").to_string(),
            };
            if let Err(retry) = st.rate_limit(identity) {
                let mut r = http::layer_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "Rate limit exceeded. Try again later.",
                    cid,
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry));
                return Some(r);
            }
        }
        if st.cfg.api_auth_enabled && key.is_none() {
            let mut r =
                http::layer_error(StatusCode::UNAUTHORIZED, "Missing or invalid API key.", cid);
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return Some(r);
        }
    }
    let limit = st.cfg.api_max_payload_bytes as u64;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    declared
        .is_some_and(|n| n > limit)
        .then(|| too_large(limit, cid))
}

/// Reads the body of an admitted request (within the payload limit) and routes it.
async fn admitted(st: &Arc<AppState>, req: Request, cid: &str, ip: Option<String>) -> Response {
    let limit = st.cfg.api_max_payload_bytes as u64;
    let (parts, body) = req.into_parts();
    let body = match read_limited(body, limit).await {
        Ok(b) => b,
        // The rest of the body was not read (or could not be).
        Err(true) => return closing(too_large(limit, cid)),
        Err(false) => {
            return closing(http::layer_error(
                StatusCode::BAD_REQUEST,
                "Invalid request body.",
                cid,
            ))
        }
    };
    let ctx = routes::Ctx {
        st: st.clone(),
        method: parts.method,
        headers: parts.headers,
        uri: parts.uri,
        body,
        cid: cid.to_string(),
        ip,
    };
    // A panicking handler becomes the middleware's 500, never a dropped connection.
    match tokio::spawn(routes::route(ctx)).await {
        Ok(r) => r,
        Err(e) => http::internal(cid, format_args!("handler failed: {e}")),
    }
}

/// Reads the whole body; `Err(true)` when it exceeds `limit`, `Err(false)` on I/O errors.
async fn read_limited(mut body: Body, limit: u64) -> Result<Bytes, bool> {
    let mut buf: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| false)?;
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
            if buf.len() as u64 > limit {
                return Err(true);
            }
        }
    }
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_sources() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Basic abc"));
        h.insert("x-api-key", HeaderValue::from_static("  k1  "));
        assert_eq!(presented_key(&h, "X-API-Key").as_deref(), Some("k1"));
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("BEARER  tok "));
        assert_eq!(presented_key(&h, "X-API-Key").as_deref(), Some("tok"));
        let mut h = HeaderMap::new();
        let key = "schlüssel-ключ-0123456789";
        h.insert(
            "x-api-key",
            HeaderValue::from_bytes(key.as_bytes()).unwrap(),
        );
        assert_eq!(presented_key(&h, "X-API-Key").as_deref(), Some(key));
        let mut h = HeaderMap::new();
        h.insert(
            "x-api-key",
            HeaderValue::from_bytes(b"\xff\xfe-key").unwrap(),
        );
        assert_eq!(presented_key(&h, "X-API-Key"), None, "not UTF-8: no key");
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
        assert!(is_exempt("/docs/x") && is_exempt("/health") && !is_exempt("/"));
    }
}
