//! Response bodies with the reference key order (spec §1.4); every key present.

use serde_json::{json, Map, Value};

use crate::jobs::{JobType, SnapshotState};
use crate::store::{time, DlqEntry, ExecutionRecord};

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// `ExecutionRecordResponse`, or `ExecutionRecordFullResponse` when `full`.
pub fn record(r: &ExecutionRecord, full: bool) -> Value {
    let mut m = Map::new();
    m.insert("execution_id".into(), r.execution_id.clone().into());
    m.insert("status".into(), r.status.as_str().into());
    m.insert("job_type".into(), r.job_type.clone().into());
    m.insert("job_version".into(), r.job_ref.clone().into());
    m.insert("created_at".into(), time::iso(r.created_us).into());
    m.insert("started_at".into(), r.started_us.map(time::iso).into());
    m.insert("ended_at".into(), r.ended_us.map(time::iso).into());
    m.insert("duration_ms".into(), r.duration_ms.into());
    m.insert("exit_code".into(), r.exit_code.into());
    m.insert("stdout".into(), r.stdout.clone().into());
    m.insert("stderr".into(), r.stderr.clone().into());
    m.insert("output".into(), r.output.clone().unwrap_or(Value::Null));
    m.insert("error".into(), to_value(&r.error));
    m.insert("timing".into(), to_value(&r.timing));
    m.insert("runtime".into(), r.runtime.clone().into());
    if full {
        m.insert("job_ref".into(), r.job_ref.clone().into());
        m.insert("artifacts".into(), to_value(&r.artifacts));
        m.insert("input_artifacts".into(), to_value(&r.input_artifacts));
        m.insert("resource_usage".into(), to_value(&r.resource_usage));
        m.insert("code_hash".into(), r.code_hash.clone().into());
        m.insert("input_hash".into(), r.input_hash.clone().into());
        m.insert(
            "parent_execution_id".into(),
            r.parent_execution_id.clone().into(),
        );
        m.insert("relationship".into(), r.relationship.clone().into());
        m.insert("stdout_truncated".into(), r.stdout_truncated.into());
        m.insert("stderr_truncated".into(), r.stderr_truncated.into());
        m.insert("idempotency_key".into(), r.idempotency_key.clone().into());
    }
    Value::Object(m)
}

/// `ExecuteResponse` of `POST /execute`.
pub fn execute_response(r: &ExecutionRecord, execution_time: f64) -> Value {
    json!({
        "success": r.status == crate::exec::record::Status::Succeeded,
        "output": r.output,
        "execution_time": execution_time,
        "stdout": r.stdout,
        "stderr": r.stderr,
        "exit_code": r.exit_code,
        "error": r.error.as_ref().map(|e| e.message.clone()),
        "job_type": r.job_type,
        "execution_id": r.execution_id,
        "runtime": r.runtime,
    })
}

/// `JobTypeResponse`, followed by our additions (the job-types doc's fields and the
/// snapshot state): `startup_timeout`, `network_enabled`, `allowed_hosts`, `base_image`,
/// `environment`, `shared_code`, `image_digest`.
pub fn job_type(jt: &JobType, state: &SnapshotState) -> Value {
    let (exists, digest) = match state {
        SnapshotState::Built { digest } => (true, Some(digest.clone())),
        SnapshotState::NotBuilt => (false, None),
    };
    json!({
        "name": jt.name,
        "requirements": jt.requirements,
        "python_version": jt.python_version,
        "memory_limit": jt.memory_limit,
        "cpu_limit": jt.cpu_limit,
        "timeout": jt.timeout,
        "session_enabled": jt.session_enabled,
        "gpu_enabled": jt.gpu.enabled,
        "gpu_vendor": jt.gpu.vendor,
        "image_exists": exists,
        "startup_timeout": jt.startup_timeout,
        "network_enabled": jt.network_enabled,
        "allowed_hosts": jt.allowed_hosts,
        "base_image": jt.base_image,
        "environment": jt.environment,
        "shared_code": jt.shared_code,
        "image_digest": digest,
    })
}

/// A DLQ entry (`created_at` with a `Z` suffix).
pub fn dlq_entry(e: &DlqEntry) -> Value {
    json!({
        "id": e.id,
        "job_id": e.job_id,
        "job_data": e.job_data,
        "error_type": e.error_type,
        "error_message": e.error_message,
        "retry_count": e.retry_count,
        "created_at": time::iso_z(e.created_us),
        "client_ip": e.client_ip,
        "correlation_id": e.correlation_id,
    })
}

/// `PaginatedResponse`.
pub fn page(items: Vec<Value>, limit: i64, offset: i64, has_more: bool) -> Value {
    let count = items.len();
    json!({"items": items, "limit": limit, "offset": offset, "has_more": has_more, "count": count})
}
