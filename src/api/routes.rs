//! Route table: matching (404, 405 + `Allow`, trailing-slash 307) and dispatch.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;

use super::http::{self, percent_decode, Query};
use super::{artifacts, handlers, openapi, AppState};

/// Everything a handler needs.
pub struct Ctx {
    /// Shared state.
    pub st: Arc<AppState>,
    /// Method.
    pub method: Method,
    /// Headers.
    pub headers: HeaderMap,
    /// URI.
    pub uri: Uri,
    /// Buffered body.
    pub body: Bytes,
    /// Correlation id.
    pub cid: String,
    /// Peer address.
    pub ip: Option<String>,
}

impl Ctx {
    /// Query parameters.
    pub fn query(&self) -> Query {
        Query::parse(self.uri.query())
    }
}

/// A matched route with its path parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// `GET /health`
    Health,
    /// `POST /execute`
    Execute,
    /// `POST /execute/async`
    ExecuteAsync,
    /// `GET /jobs/{id}`
    Job(String),
    /// `GET /jobs/{id}/result`
    JobResult(String),
    /// `POST /jobs/{id}/cancel`
    Cancel(String),
    /// `POST /jobs/{id}/rerun`
    Rerun(String),
    /// `POST /jobs/{id}/fork`
    Fork(String),
    /// `GET, HEAD /jobs/{id}/artifacts/{name}`
    Artifact(String, String),
    /// `GET /executions`
    Executions,
    /// `GET /executions/{id}`
    Execution(String),
    /// `GET /job-types`
    JobTypes,
    /// `GET /job-types/{name}`
    JobType(String),
    /// `POST /job-types/{name}/build`
    Build(String),
    /// `GET /pool/stats`
    PoolStats,
    /// `GET /dlq/stats`
    DlqStats,
    /// `GET /dlq`
    Dlq,
    /// `DELETE /dlq/{entry_id}`
    DlqDelete(String),
    /// `GET /`
    Root,
    /// `GET /docs`
    Docs,
    /// `GET /docs/oauth2-redirect`
    OAuthRedirect,
    /// `GET /redoc`
    Redoc,
    /// `GET /openapi.json`
    OpenApi,
}

/// Matches a path; returns the route and its allowed methods.
pub fn match_path(path: &str) -> Option<(Route, &'static [Method])> {
    const GET: &[Method] = &[Method::GET];
    const POST: &[Method] = &[Method::POST];
    const DELETE: &[Method] = &[Method::DELETE];
    const GET_HEAD: &[Method] = &[Method::GET, Method::HEAD];
    if path == "/" {
        return Some((Route::Root, GET));
    }
    let raw: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
    if raw.iter().any(|s| s.is_empty()) {
        return None;
    }
    let segs: Vec<String> = raw.iter().map(|s| percent_decode(s, false)).collect();
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let p = |i: usize| segs[i].clone();
    Some(match s.as_slice() {
        ["health"] => (Route::Health, GET),
        ["execute"] => (Route::Execute, POST),
        ["execute", "async"] => (Route::ExecuteAsync, POST),
        ["jobs", _] => (Route::Job(p(1)), GET),
        ["jobs", _, "result"] => (Route::JobResult(p(1)), GET),
        ["jobs", _, "cancel"] => (Route::Cancel(p(1)), POST),
        ["jobs", _, "rerun"] => (Route::Rerun(p(1)), POST),
        ["jobs", _, "fork"] => (Route::Fork(p(1)), POST),
        ["jobs", _, "artifacts", _] => (Route::Artifact(p(1), p(3)), GET_HEAD),
        ["executions"] => (Route::Executions, GET),
        ["executions", _] => (Route::Execution(p(1)), GET),
        ["job-types"] => (Route::JobTypes, GET),
        ["job-types", _] => (Route::JobType(p(1)), GET),
        ["job-types", _, "build"] => (Route::Build(p(1)), POST),
        ["pool", "stats"] => (Route::PoolStats, GET),
        ["dlq", "stats"] => (Route::DlqStats, GET),
        ["dlq"] => (Route::Dlq, GET),
        ["dlq", _] => (Route::DlqDelete(p(1)), DELETE),
        ["docs"] => (Route::Docs, GET),
        ["docs", "oauth2-redirect"] => (Route::OAuthRedirect, GET),
        ["redoc"] => (Route::Redoc, GET),
        ["openapi.json"] => (Route::OpenApi, GET),
        _ => return None,
    })
}

fn redirect(location: &str) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::TEMPORARY_REDIRECT;
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// Routes one request.
pub async fn route(ctx: Ctx) -> Response {
    let path = ctx.uri.path().to_string();
    let Some((route, allowed)) = match_path(&path) else {
        let trimmed = path.trim_end_matches('/');
        if path.len() > 1 && !trimmed.is_empty() && match_path(trimmed).is_some() {
            let host = ctx
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost");
            let q = ctx.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
            return redirect(&format!("http://{host}{trimmed}{q}"));
        }
        return http::plain(StatusCode::NOT_FOUND, "Not Found");
    };
    if !allowed.contains(&ctx.method) {
        let mut r = http::plain(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
        let allow: Vec<&str> = allowed.iter().map(Method::as_str).collect();
        if let Ok(v) = HeaderValue::from_str(&allow.join(", ")) {
            r.headers_mut().insert(header::ALLOW, v);
        }
        return r;
    }
    match route {
        Route::Root => redirect("/docs"),
        Route::Docs => openapi::docs_page(),
        Route::Redoc => openapi::redoc_page(),
        Route::OAuthRedirect => openapi::oauth_redirect_page(),
        Route::OpenApi => http::ok(openapi::document()),
        Route::Health => handlers::health(&ctx),
        Route::Execute => handlers::execute(&ctx).await,
        Route::ExecuteAsync => handlers::execute_async(&ctx).await,
        Route::Job(id) => handlers::job_status(&ctx, &id),
        Route::JobResult(id) => handlers::job_result(&ctx, &id).await,
        Route::Cancel(id) => handlers::cancel(&ctx, &id),
        Route::Rerun(id) => handlers::replay(&ctx, &id, false).await,
        Route::Fork(id) => handlers::replay(&ctx, &id, true).await,
        Route::Artifact(id, name) => artifacts::download(&ctx, &id, &name).await,
        Route::Executions => handlers::executions(&ctx),
        Route::Execution(id) => handlers::execution(&ctx, &id),
        Route::JobTypes => handlers::job_types(&ctx),
        Route::JobType(name) => handlers::job_type(&ctx, &name),
        Route::Build(name) => handlers::build(&ctx, &name).await,
        Route::PoolStats => handlers::pool_stats(&ctx),
        Route::DlqStats => handlers::dlq_stats(&ctx),
        Route::Dlq => handlers::dlq(&ctx),
        Route::DlqDelete(id) => handlers::dlq_delete(&ctx, &id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching() {
        assert_eq!(match_path("/health").unwrap().0, Route::Health);
        assert_eq!(
            match_path("/jobs/a%20b/artifacts/r%C3%A9.txt").unwrap().0,
            Route::Artifact("a b".into(), "ré.txt".into())
        );
        assert!(match_path("/health/").is_none());
        assert!(match_path("/nope").is_none());
        assert_eq!(match_path("/dlq/5").unwrap().1, &[Method::DELETE]);
    }
}
