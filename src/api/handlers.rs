//! Route handlers (spec §1.5).
//!
//! Helpers return `Result<_, Response>` so a ready error response short-circuits a handler.
#![allow(clippy::result_large_err)]

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Map, Value};

use super::http::{self, error, json_body, ok, validation};
use super::routes::Ctx;
use super::validate::{self, Errors};
use super::views;
use crate::jobs::lifecycle::ReplayError;
use crate::jobs::{plan, SubmitError, SubmitMeta};
use crate::store::{time, JobRequest, JobVersion, RecordFilter};

/// The API version served (the SDK's contract).
pub const API_VERSION: &str = "0.3.0";

fn not_found(ctx: &Ctx, what: &str) -> Response {
    error(StatusCode::NOT_FOUND, what, &ctx.cid)
}

fn internal(ctx: &Ctx, e: impl std::fmt::Display) -> Response {
    http::internal(&ctx.cid, e)
}

fn meta(ctx: &Ctx, key: Option<String>) -> SubmitMeta {
    SubmitMeta {
        idempotency_key: key,
        client_ip: ctx.ip.clone(),
        correlation_id: Some(ctx.cid.clone()),
        parent: None,
    }
}

fn body_object(ctx: &Ctx) -> Result<Map<String, Value>, Response> {
    json_body(&ctx.headers, &ctx.body).map_err(validation)
}

/// `GET /health`.
pub fn health(ctx: &Ctx) -> Response {
    let svc = &ctx.st.svc;
    let available = svc.backend().is_ok();
    let (state, failures, successes, last) = svc.breaker_snapshot();
    let degraded = !available || state == crate::jobs::breaker::State::Open;
    ok(json!({
        "status": if degraded { "degraded" } else { "healthy" },
        "docker_available": available,
        "gvisor_available": false,
        "circuit_breaker": {
            "state": state.as_str(),
            "failure_count": failures,
            "success_count": successes,
            "last_failure": last,
        },
        "version": API_VERSION,
        "production_mode": ctx.st.cfg.production_mode,
        "queue_stats": pool_json(ctx),
    }))
}

fn pool_json(ctx: &Ctx) -> Value {
    let (pending, running) = ctx.st.svc.queue_stats();
    json!({
        "pending": pending,
        "running": running,
        "max_workers": ctx.st.cfg.max_workers,
        "max_queue_size": ctx.st.cfg.max_queue_size,
    })
}

/// `GET /pool/stats`.
pub fn pool_stats(ctx: &Ctx) -> Response {
    ok(pool_json(ctx))
}

fn parse_execute(ctx: &Ctx) -> Result<validate::ExecuteRequest, Response> {
    let body = body_object(ctx)?;
    let req = validate::execute_request(&body).map_err(validation)?;
    plan::check_timeout_ceiling(
        req.timeout,
        req.job_type.as_deref(),
        &ctx.st.svc.registry(),
        &ctx.st.cfg,
    )
    .map_err(|d| error(StatusCode::UNPROCESSABLE_ENTITY, &d, &ctx.cid))?;
    Ok(req)
}

fn job_request(r: &validate::ExecuteRequest) -> JobRequest {
    JobRequest {
        code: r.code.clone(),
        input: r.input_data.clone(),
        timeout: r.timeout,
        startup_timeout: r.startup_timeout,
        job_type: r.job_type.clone(),
        requirements: r.requirements.clone(),
    }
}

/// `POST /execute`.
pub async fn execute(ctx: &Ctx) -> Response {
    let req = match parse_execute(ctx) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let t0 = Instant::now();
    match ctx
        .st
        .svc
        .execute_sync(job_request(&req), meta(ctx, None))
        .await
    {
        Ok(rec) => ok(views::execute_response(&rec, t0.elapsed().as_secs_f64())),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("Execution error: {e}"),
            &ctx.cid,
        ),
    }
}

/// `POST /execute/async`.
pub async fn execute_async(ctx: &Ctx) -> Response {
    let req = match parse_execute(ctx) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let key = req.idempotency_key.clone();
    match ctx.st.svc.submit(job_request(&req), meta(ctx, key)).await {
        Ok(s) => ok(json!({"job_id": s.job_id, "status": s.status.as_str()})),
        Err(e) => submit_error(ctx, e),
    }
}

fn submit_error(ctx: &Ctx, e: SubmitError) -> Response {
    match e {
        SubmitError::Conflict => error(StatusCode::CONFLICT, &e.to_string(), &ctx.cid),
        SubmitError::QueueFull => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string(), &ctx.cid),
        SubmitError::ShuttingDown => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Server is shutting down, try again later",
            &ctx.cid,
        ),
        SubmitError::Store(s) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("Submit error: {s}"),
            &ctx.cid,
        ),
    }
}

/// `GET /jobs/{id}`.
pub fn job_status(ctx: &Ctx, id: &str) -> Response {
    match ctx.st.svc.status(id) {
        Ok(Some(s)) => ok(json!({
            "job_id": id,
            "status": s.status,
            "created_at": s.created_us.map(time::iso),
            "duration_ms": s.duration_ms,
            "queue_position": s.queue_position,
        })),
        Ok(None) => not_found(ctx, "Job not found"),
        Err(e) => internal(ctx, e),
    }
}

/// `GET /jobs/{id}/result`.
pub async fn job_result(ctx: &Ctx, id: &str) -> Response {
    let q = ctx.query();
    let mut e = Errors::default();
    let wait = q.bool("wait", false, &mut e);
    let timeout = q.float("timeout", 30.0, 1.0, 300.0, &mut e);
    if !e.is_empty() {
        return validation(e);
    }
    let full = q.get("view") == Some("full");
    let svc = &ctx.st.svc;
    if wait {
        match svc.wait(id, Duration::from_secs_f64(timeout)).await {
            Ok(Some(rec)) => return ok(views::record(&rec, full)),
            Ok(None) => {
                return error(
                    StatusCode::REQUEST_TIMEOUT,
                    "Timeout waiting for job",
                    &ctx.cid,
                )
            }
            Err(()) => {}
        }
        return match svc.store.get(id) {
            Ok(Some(r)) if r.status.is_terminal() => ok(views::record(&r, full)),
            Ok(_) => not_found(ctx, "Job not found"),
            Err(e) => internal(ctx, e),
        };
    }
    match svc.store.get(id) {
        Ok(Some(r)) => ok(views::record(&r, full)),
        Ok(None) => match svc.status(id) {
            Ok(Some(s)) if s.status == "pending" || s.status == "running" => ok(json!({
                "job_id": id,
                "status": s.status,
                "message": "Job still in progress",
                "queue_position": s.queue_position,
            })),
            Ok(_) => not_found(ctx, "Job not found"),
            Err(e) => internal(ctx, e),
        },
        Err(e) => internal(ctx, e),
    }
}

/// `POST /jobs/{id}/cancel`.
pub fn cancel(ctx: &Ctx, id: &str) -> Response {
    if ctx.st.svc.cancel(id) {
        ok(json!({"status": "cancelled", "job_id": id}))
    } else {
        not_found(ctx, "Job not found or already completed")
    }
}

/// `POST /jobs/{id}/rerun` and `/fork`.
pub async fn replay(ctx: &Ctx, id: &str, fork: bool) -> Response {
    let body = match body_object(ctx) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let r = match validate::replay_request(&body, fork) {
        Ok(r) => r,
        Err(e) => return validation(e),
    };
    match ctx
        .st
        .svc
        .replay(id, r.code, r.job_type, r.timeout, meta(ctx, None))
        .await
    {
        Ok(s) => ok(json!({"job_id": s.job_id, "status": s.status.as_str()})),
        Err(ReplayError::Ceiling(d)) => error(StatusCode::UNPROCESSABLE_ENTITY, &d, &ctx.cid),
        Err(ReplayError::NotFound) => not_found(ctx, "Job not found"),
        Err(ReplayError::Submit(s)) => submit_error(ctx, s),
        Err(ReplayError::Store(s)) => internal(ctx, s),
        Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string(), &ctx.cid),
    }
}

fn page_params(ctx: &Ctx) -> Result<(i64, i64), Response> {
    let q = ctx.query();
    let mut e = Errors::default();
    let limit = q.int("limit", 100, 1, Some(1000), &mut e);
    let offset = q.int("offset", 0, 0, None, &mut e);
    if e.is_empty() {
        Ok((limit, offset))
    } else {
        Err(validation(e))
    }
}

/// `GET /executions`.
pub fn executions(ctx: &Ctx) -> Response {
    let (limit, offset) = match page_params(ctx) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let q = ctx.query();
    let full = q.get("view") == Some("full");
    let f = RecordFilter {
        status: q.get("status").map(str::to_string),
        job_type: q.get("job_type").map(str::to_string),
    };
    match ctx.st.svc.store.list(&f, limit as u32, offset as u64) {
        Ok((items, more)) => ok(views::page(
            items.iter().map(|r| views::record(r, full)).collect(),
            limit,
            offset,
            more,
        )),
        Err(e) => internal(ctx, e),
    }
}

/// `GET /executions/{id}`.
pub fn execution(ctx: &Ctx, id: &str) -> Response {
    let full = ctx.query().get("view") == Some("full");
    match ctx.st.svc.store.get(id) {
        Ok(Some(r)) => ok(views::record(&r, full)),
        Ok(None) => not_found(ctx, "Execution not found"),
        Err(e) => internal(ctx, e),
    }
}

/// `GET /job-types`.
pub fn job_types(ctx: &Ctx) -> Response {
    let svc = &ctx.st.svc;
    let types: Vec<_> = svc.registry().all().to_vec();
    ok(Value::Array(
        types
            .iter()
            .map(|jt| views::job_type(jt, &svc.envs.status(jt)))
            .collect(),
    ))
}

/// `GET /job-types/{name}`.
pub fn job_type(ctx: &Ctx, name: &str) -> Response {
    let svc = &ctx.st.svc;
    let jt = svc.registry().get(name).cloned();
    match jt {
        Some(jt) => ok(views::job_type(&jt, &svc.envs.status(&jt))),
        None => not_found(ctx, &format!("Job type '{name}' not found")),
    }
}

/// `POST /job-types/{name}/build`: builds without blocking other requests.
pub async fn build(ctx: &Ctx, name: &str) -> Response {
    let svc = ctx.st.svc.clone();
    let Some(jt) = svc.registry().get(name).cloned() else {
        return not_found(ctx, &format!("Job type '{name}' not found"));
    };
    let envs = svc.envs.clone();
    let built = tokio::task::spawn_blocking(move || envs.build(&jt)).await;
    let info = match built {
        Ok(Ok(i)) => i,
        Ok(Err(e)) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("Build failed: {e}"),
                &ctx.cid,
            )
        }
        Err(e) => return internal(ctx, e),
    };
    let short: String = info.digest.chars().take(12).collect();
    let version = format!("{name}@sha256:{short}");
    let image_ref = format!("tako-vm-{name}:latest");
    let v = JobVersion {
        job_type: name.into(),
        version: version.clone(),
        digest: short.clone(),
        image_ref: image_ref.clone(),
        built_by: "manual".into(),
        created_us: time::now_us(),
    };
    if let Err(e) = svc.store.add_job_version(&v) {
        eprintln!("tako-vm: cannot record job version {version}: {e}");
    }
    ok(json!({
        "status": "built",
        "job_type": name,
        "version": version,
        "digest": short,
        "image_ref": image_ref,
    }))
}

/// `GET /dlq/stats`.
pub fn dlq_stats(ctx: &Ctx) -> Response {
    match ctx.st.svc.store.dlq_stats() {
        Ok(rows) => {
            let total: i64 = rows.iter().map(|(_, n)| n).sum();
            let mut by = Map::new();
            for (t, n) in rows {
                by.insert(t, n.into());
            }
            ok(json!({"total": total, "by_error_type": by}))
        }
        Err(e) => internal(ctx, e),
    }
}

/// `GET /dlq`.
pub fn dlq(ctx: &Ctx) -> Response {
    let (limit, offset) = match page_params(ctx) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let q = ctx.query();
    match ctx
        .st
        .svc
        .store
        .dlq_list(q.get("error_type"), limit as u32, offset as u64)
    {
        Ok((items, more)) => ok(views::page(
            items.iter().map(views::dlq_entry).collect(),
            limit,
            offset,
            more,
        )),
        Err(e) => internal(ctx, e),
    }
}

/// `DELETE /dlq/{entry_id}`.
pub fn dlq_delete(ctx: &Ctx, raw: &str) -> Response {
    let mut e = Errors::default();
    let input = Value::from(raw);
    let Some(id) = validate::lax_int(&input, json!(["path", "entry_id"]), &mut e) else {
        return validation(e);
    };
    match ctx.st.svc.store.dlq_delete(id) {
        Ok(true) => ok(json!({"status": "removed", "entry_id": id})),
        Ok(false) => not_found(ctx, "DLQ entry not found"),
        Err(e) => internal(ctx, e),
    }
}
