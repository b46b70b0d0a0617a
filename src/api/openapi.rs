//! `/openapi.json` (every route of §1.5) and the `/docs`, `/redoc` pages.

use axum::body::Body;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use serde_json::{json, Map, Value};

fn html(body: String) -> Response {
    let mut r = Response::new(Body::from(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// Swagger UI (`/docs`), loading the UI from the same CDN FastAPI uses.
pub fn docs_page() -> Response {
    html(r#"<!DOCTYPE html>
<html><head><title>Tako VM - Secure Code Executor API - Swagger UI</title>
<link type="text/css" rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css">
</head><body><div id="swagger-ui"></div>
<noscript>The OpenAPI document of this server is at <a href="/openapi.json">/openapi.json</a>.</noscript>
<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>
const ui = SwaggerUIBundle({url: '/openapi.json', dom_id: '#swagger-ui', layout: 'BaseLayout', deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  oauth2RedirectUrl: window.location.origin + '/docs/oauth2-redirect'})
</script></body></html>"#
        .to_string())
}

/// ReDoc (`/redoc`).
pub fn redoc_page() -> Response {
    html(
        r#"<!DOCTYPE html>
<html><head><title>Tako VM - Secure Code Executor API - ReDoc</title></head>
<body><redoc spec-url="/openapi.json"></redoc>
<script src="https://cdn.jsdelivr.net/npm/redoc@2/bundles/redoc.standalone.js"></script>
</body></html>"#
            .to_string(),
    )
}

/// `/docs/oauth2-redirect`.
pub fn oauth_redirect_page() -> Response {
    html("<!DOCTYPE html><html><head><title>Swagger UI: OAuth2 Redirect</title></head><body><script>window.close && window.opener && window.close();</script></body></html>".to_string())
}

fn sref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn content(schema: Value) -> Value {
    json!({"application/json": {"schema": schema}})
}

fn op(
    summary: &str,
    op_id: &str,
    params: Vec<Value>,
    body: Option<&str>,
    ok: Value,
    errors: &[(&str, &str)],
) -> Value {
    let mut responses = Map::new();
    responses.insert(
        "200".into(),
        json!({"description": "Successful Response", "content": content(ok)}),
    );
    for (code, desc) in errors {
        responses.insert(
            (*code).into(),
            json!({"description": desc, "content": content(sref("ErrorResponse"))}),
        );
    }
    if body.is_some() || !params.is_empty() {
        responses.insert(
            "422".into(),
            json!({"description": "Validation Error", "content": content(sref("HTTPValidationError"))}),
        );
    }
    let mut o = Map::new();
    o.insert("summary".into(), summary.into());
    o.insert("operationId".into(), op_id.into());
    if !params.is_empty() {
        o.insert("parameters".into(), Value::Array(params));
    }
    if let Some(b) = body {
        o.insert(
            "requestBody".into(),
            json!({"required": true, "content": content(sref(b))}),
        );
    }
    o.insert("responses".into(), Value::Object(responses));
    Value::Object(o)
}

fn path_p(name: &str, typ: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "schema": {"type": typ, "title": name}})
}

fn query_p(name: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "schema": schema})
}

fn obj(props: Value, required: &[&str]) -> Value {
    json!({"type": "object", "properties": props, "required": required})
}

fn nullable(t: &str) -> Value {
    json!({"anyOf": [{"type": t}, {"type": "null"}]})
}

fn schemas() -> Value {
    let record_props = json!({
        "execution_id": {"type": "string"}, "status": {"type": "string"},
        "job_type": {"type": "string"}, "job_version": {"type": "string"},
        "created_at": {"type": "string"}, "started_at": nullable("string"), "ended_at": nullable("string"),
        "duration_ms": nullable("integer"), "exit_code": nullable("integer"),
        "stdout": {"type": "string"}, "stderr": {"type": "string"}, "output": nullable("object"),
        "error": nullable("object"), "timing": nullable("object"), "runtime": nullable("string")
    });
    let mut full = record_props.as_object().cloned().unwrap_or_default();
    for (k, v) in json!({
        "job_ref": {"type": "string"}, "artifacts": {"type": "array", "items": sref("Artifact")},
        "input_artifacts": {"type": "array", "items": sref("Artifact")}, "resource_usage": nullable("object"),
        "code_hash": nullable("string"), "input_hash": nullable("string"),
        "parent_execution_id": nullable("string"), "relationship": nullable("string"),
        "stdout_truncated": {"type": "boolean"}, "stderr_truncated": {"type": "boolean"},
        "idempotency_key": nullable("string")
    })
    .as_object()
    .cloned()
    .unwrap_or_default()
    {
        full.insert(k, v);
    }
    json!({
        "ExecuteRequest": obj(json!({
            "code": {"type": "string", "minLength": 1, "maxLength": 100000},
            "input_data": {"type": "object", "default": {}},
            "timeout": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 86400}, {"type": "null"}]},
            "startup_timeout": {"anyOf": [{"type": "integer", "minimum": 10, "maximum": 600}, {"type": "null"}]},
            "job_type": {"anyOf": [{"type": "string", "maxLength": 128, "pattern": super::validate::JOB_TYPE_PATTERN}, {"type": "null"}]},
            "idempotency_key": {"anyOf": [{"type": "string", "minLength": 8, "maxLength": 255, "pattern": super::validate::IDEMPOTENCY_PATTERN}, {"type": "null"}]},
            "requirements": {"anyOf": [{"type": "array", "items": {"type": "string"}, "maxItems": 50}, {"type": "null"}]}
        }), &["code"]),
        "RerunRequest": obj(json!({"job_type": nullable("string"), "timeout": nullable("integer")}), &[]),
        "ForkRequest": obj(json!({"code": {"type": "string"}, "job_type": nullable("string"), "timeout": nullable("integer")}), &["code"]),
        "ExecuteResponse": obj(json!({
            "success": {"type": "boolean"}, "output": nullable("object"), "execution_time": {"type": "number"},
            "stdout": {"type": "string"}, "stderr": {"type": "string"}, "exit_code": nullable("integer"),
            "error": nullable("string"), "job_type": nullable("string"), "execution_id": nullable("string"),
            "runtime": nullable("string")
        }), &["success", "execution_time"]),
        "AsyncExecuteResponse": obj(json!({"job_id": {"type": "string"}, "status": {"type": "string"}}), &["job_id", "status"]),
        "JobStatusResponse": obj(json!({"job_id": {"type": "string"}, "status": {"type": "string"},
            "created_at": nullable("string"), "duration_ms": nullable("integer"), "queue_position": nullable("integer")}), &["job_id", "status"]),
        "ExecutionRecordResponse": obj(record_props, &["execution_id", "status"]),
        "ExecutionRecordFullResponse": obj(Value::Object(full), &["execution_id", "status"]),
        "Artifact": obj(json!({"name": {"type": "string"}, "size_bytes": {"type": "integer"}, "sha256": {"type": "string"}, "content_type": nullable("string")}), &["name", "size_bytes", "sha256"]),
        "JobTypeResponse": obj(json!({"name": {"type": "string"}, "requirements": {"type": "array", "items": {"type": "string"}},
            "python_version": {"type": "string"}, "memory_limit": {"type": "string"}, "cpu_limit": {"type": "number"},
            "timeout": {"type": "integer"}, "session_enabled": {"type": "boolean"}, "gpu_enabled": {"type": "boolean"},
            "gpu_vendor": nullable("string"), "image_exists": {"type": "boolean"}}), &["name"]),
        "QueueStats": obj(json!({"pending": {"type": "integer"}, "running": {"type": "integer"}, "max_workers": {"type": "integer"}, "max_queue_size": {"type": "integer"}}), &["pending", "running", "max_workers", "max_queue_size"]),
        "HealthResponse": obj(json!({"status": {"type": "string"}, "docker_available": {"type": "boolean"}, "gvisor_available": {"type": "boolean"},
            "circuit_breaker": {"type": "object"}, "version": {"type": "string"}, "production_mode": {"type": "boolean"}, "queue_stats": sref("QueueStats")}), &["status"]),
        "PaginatedResponse": obj(json!({"items": {"type": "array", "items": {}}, "limit": {"type": "integer"}, "offset": {"type": "integer"}, "has_more": {"type": "boolean"}, "count": {"type": "integer"}}), &["items", "limit", "offset", "has_more", "count"]),
        "DLQStats": obj(json!({"total": {"type": "integer"}, "by_error_type": {"type": "object", "additionalProperties": {"type": "integer"}}}), &["total", "by_error_type"]),
        "BuildResponse": obj(json!({"status": {"type": "string"}, "job_type": {"type": "string"}, "version": {"type": "string"}, "digest": {"type": "string"}, "image_ref": {"type": "string"}}), &["status"]),
        "ErrorResponse": obj(json!({"detail": {"type": "string"}, "correlation_id": {"type": "string"}}), &["detail"]),
        "ValidationError": obj(json!({"loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}}, "msg": {"type": "string"}, "type": {"type": "string"}}), &["loc", "msg", "type"]),
        "HTTPValidationError": obj(json!({"detail": {"type": "array", "items": sref("ValidationError")}}), &[])
    })
}

/// The OpenAPI 3.1 document.
pub fn document() -> Value {
    let id = |n: &str| path_p(n, "string");
    let view = query_p("view", nullable("string"));
    let limit = query_p(
        "limit",
        json!({"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}),
    );
    let offset = query_p(
        "offset",
        json!({"type": "integer", "minimum": 0, "default": 0}),
    );
    let artifact = op(
        "Download Artifact",
        "download_artifact_jobs__job_id__artifacts__artifact_name__get",
        vec![id("job_id"), id("artifact_name")],
        None,
        json!({}),
        &[("400", "Invalid artifact path"), ("404", "Not found")],
    );
    let mut head = artifact.clone();
    head["operationId"] = "head_artifact_jobs__job_id__artifacts__artifact_name__head".into();
    head["summary"] = "Head Artifact".into();
    let paths = json!({
        "/health": {"get": op("Health", "health_health_get", vec![], None, sref("HealthResponse"), &[])},
        "/execute": {"post": op("Execute", "execute_execute_post", vec![], Some("ExecuteRequest"), sref("ExecuteResponse"), &[("500", "Execution error")])},
        "/execute/async": {"post": op("Execute Async", "execute_async_execute_async_post", vec![], Some("ExecuteRequest"), sref("AsyncExecuteResponse"), &[("409", "Idempotency key reused with different payload"), ("503", "Job queue is full")])},
        "/jobs/{job_id}": {"get": op("Get Job Status", "get_job_status_jobs__job_id__get", vec![id("job_id")], None, sref("JobStatusResponse"), &[("404", "Job not found")])},
        "/jobs/{job_id}/result": {"get": op("Get Job Result", "get_job_result_jobs__job_id__result_get", vec![id("job_id"),
            query_p("wait", json!({"type": "boolean", "default": false})),
            query_p("timeout", json!({"type": "number", "minimum": 1.0, "maximum": 300.0, "default": 30.0})), view.clone()],
            None, sref("ExecutionRecordFullResponse"), &[("404", "Job not found"), ("408", "Timeout waiting for job")])},
        "/jobs/{job_id}/cancel": {"post": op("Cancel Job", "cancel_job_jobs__job_id__cancel_post", vec![id("job_id")], None, json!({"type": "object"}), &[("404", "Job not found or already completed")])},
        "/jobs/{job_id}/rerun": {"post": op("Rerun Job", "rerun_job_jobs__job_id__rerun_post", vec![id("job_id")], Some("RerunRequest"), sref("AsyncExecuteResponse"), &[("400", "Not replayable"), ("404", "Job not found")])},
        "/jobs/{job_id}/fork": {"post": op("Fork Job", "fork_job_jobs__job_id__fork_post", vec![id("job_id")], Some("ForkRequest"), sref("AsyncExecuteResponse"), &[("400", "Not replayable"), ("404", "Job not found")])},
        "/jobs/{job_id}/artifacts/{artifact_name}": {"get": artifact, "head": head},
        "/executions": {"get": op("List Executions", "list_executions_executions_get", vec![
            query_p("status", nullable("string")), query_p("job_type", nullable("string")), limit.clone(), offset.clone(), view.clone()],
            None, sref("PaginatedResponse"), &[])},
        "/executions/{execution_id}": {"get": op("Get Execution", "get_execution_executions__execution_id__get", vec![id("execution_id"), view], None, sref("ExecutionRecordFullResponse"), &[("404", "Execution not found")])},
        "/job-types": {"get": op("List Job Types", "list_job_types_job_types_get", vec![], None, json!({"type": "array", "items": sref("JobTypeResponse")}), &[])},
        "/job-types/{name}": {"get": op("Get Job Type", "get_job_type_job_types__name__get", vec![id("name")], None, sref("JobTypeResponse"), &[("404", "Job type not found")])},
        "/job-types/{name}/build": {"post": op("Build Job Type", "build_job_type_job_types__name__build_post", vec![id("name"), query_p("version_tag", nullable("string"))], None, sref("BuildResponse"), &[("404", "Job type not found"), ("500", "Build failed")])},
        "/pool/stats": {"get": op("Pool Stats", "pool_stats_pool_stats_get", vec![], None, sref("QueueStats"), &[])},
        "/dlq/stats": {"get": op("Dlq Stats", "dlq_stats_dlq_stats_get", vec![], None, sref("DLQStats"), &[])},
        "/dlq": {"get": op("List Dlq", "list_dlq_dlq_get", vec![query_p("error_type", nullable("string")), limit, offset], None, sref("PaginatedResponse"), &[])},
        "/dlq/{entry_id}": {"delete": op("Remove Dlq Entry", "remove_dlq_entry_dlq__entry_id__delete", vec![path_p("entry_id", "integer")], None, json!({"type": "object"}), &[("404", "DLQ entry not found")])}
    });
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Tako VM - Secure Code Executor API",
            "description": "Execute AI-generated Python code in isolated containers",
            "version": "0.3.0"
        },
        "paths": paths,
        "components": {"schemas": schemas()}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_described() {
        let d = document();
        let paths = d["paths"].as_object().unwrap();
        assert_eq!(paths.len(), 18);
        assert!(paths["/jobs/{job_id}/artifacts/{artifact_name}"]["head"].is_object());
        assert_eq!(d["info"]["version"], "0.3.0");
    }
}
