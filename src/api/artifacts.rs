//! `GET`/`HEAD /jobs/{id}/artifacts/{name}` (spec §1.5.9): streamed file, ETag, ranges.

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::Response;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::http::{error, internal};
use super::routes::Ctx;
use crate::jobs::lifecycle::{locate, Located};
use crate::store::time;

fn disposition(name: &str) -> String {
    if name.is_ascii() && !name.contains(['"', '\\']) {
        format!("attachment; filename=\"{name}\"")
    } else {
        let mut enc = String::new();
        for b in name.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                enc.push(b as char);
            } else {
                enc.push_str(&format!("%{b:02X}"));
            }
        }
        format!("attachment; filename*=utf-8''{enc}")
    }
}

/// `bytes=a-b` → inclusive range within `len`.
fn parse_range(v: &str, len: u64) -> Option<(u64, u64)> {
    let spec = v.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || len == 0 {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        (len.saturating_sub(n), len - 1)
    } else {
        let s: u64 = a.parse().ok()?;
        let e = if b.is_empty() {
            len - 1
        } else {
            b.parse::<u64>().ok()?.min(len - 1)
        };
        (s, e)
    };
    (start <= end && start < len).then_some((start, end))
}

fn set(r: &mut Response, k: header::HeaderName, v: &str) {
    if let Ok(v) = HeaderValue::from_str(v) {
        r.headers_mut().insert(k, v);
    }
}

/// Serves one output artifact.
pub async fn download(ctx: &Ctx, id: &str, name: &str) -> Response {
    let svc = &ctx.st.svc;
    let rec = match svc.store.get(id) {
        Ok(Some(r)) => r,
        Ok(None) => return error(StatusCode::NOT_FOUND, "Job not found", &ctx.cid),
        Err(e) => return internal(&ctx.cid, e),
    };
    let Some(art) = rec.artifacts.iter().find(|a| a.name == name).cloned() else {
        return error(StatusCode::NOT_FOUND, "Artifact not found", &ctx.cid);
    };
    let ctype = art
        .content_type
        .clone()
        .unwrap_or_else(|| "application/octet-stream".into());
    let etag = format!("\"{}\"", art.sha256);
    if ctx.method == Method::HEAD {
        let mut r = Response::new(Body::empty());
        set(&mut r, header::CONTENT_LENGTH, &art.size_bytes.to_string());
        set(&mut r, header::CONTENT_TYPE, &ctype);
        set(&mut r, header::ETAG, &etag);
        return r;
    }
    let path = svc.run_dir(id).join("artifacts").join(name);
    // §1.5.9 order: a path escaping the data dir (even through a link to nothing) before
    // a missing file.
    let path = match locate(svc.data_dir(), &path) {
        Located::Inside(p) => p,
        Located::Outside => {
            return error(StatusCode::BAD_REQUEST, "Invalid artifact path", &ctx.cid)
        }
        Located::Missing => {
            return error(StatusCode::NOT_FOUND, "Artifact file not found", &ctx.cid)
        }
    };
    let Ok(mut file) = tokio::fs::File::open(&path).await else {
        return error(StatusCode::NOT_FOUND, "Artifact file not found", &ctx.cid);
    };
    let meta = match file.metadata().await {
        Ok(m) => m,
        Err(_) => return error(StatusCode::NOT_FOUND, "Artifact file not found", &ctx.cid),
    };
    let len = meta.len();
    let range = ctx
        .headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_range(v, len));
    let (status, start, count) = match range {
        Some((s, e)) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
        None => (StatusCode::OK, 0, len),
    };
    if start > 0 && file.seek(std::io::SeekFrom::Start(start)).await.is_err() {
        return error(StatusCode::NOT_FOUND, "Artifact file not found", &ctx.cid);
    }
    let stream = ReaderStream::new(file.take(count));
    let mut r = Response::new(Body::from_stream(stream));
    *r.status_mut() = status;
    set(&mut r, header::CONTENT_TYPE, &ctype);
    set(&mut r, header::CONTENT_LENGTH, &count.to_string());
    set(&mut r, header::ETAG, &etag);
    set(&mut r, header::CONTENT_DISPOSITION, &disposition(name));
    set(&mut r, header::ACCEPT_RANGES, "bytes");
    if let Ok(m) = meta.modified() {
        set(&mut r, header::LAST_MODIFIED, &time::http_date(m));
    }
    if status == StatusCode::PARTIAL_CONTENT {
        set(
            &mut r,
            header::CONTENT_RANGE,
            &format!("bytes {start}-{}/{len}", start + count - 1),
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_names() {
        assert_eq!(parse_range("bytes=0-3", 10), Some((0, 3)));
        assert_eq!(parse_range("bytes=5-", 10), Some((5, 9)));
        assert_eq!(parse_range("bytes=-2", 10), Some((8, 9)));
        assert_eq!(parse_range("bytes=12-", 10), None);
        assert_eq!(disposition("a.txt"), "attachment; filename=\"a.txt\"");
        assert_eq!(
            disposition("é.txt"),
            "attachment; filename*=utf-8''%C3%A9.txt"
        );
    }
}
