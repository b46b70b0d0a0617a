//! Execution history: records, job versions and the dead-letter queue (spec §4.7, §4.10, §9).
//!
//! Storage sits behind the [`Store`] trait; [`sqlite::SqliteStore`] is the embedded default
//! (one file in `data_dir`, WAL). A PostgreSQL backend for many hosts can implement the same
//! trait later. Records are stored whole as JSON with the columns needed for lookups,
//! filters, ordering and uniqueness next to it.

pub mod sqlite;
pub mod time;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::exec::record::{Artifact, ExecError, ResourceUsage, Status, Timing};

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A record with this id or idempotency key exists.
    #[error("record already exists (duplicate id or idempotency key)")]
    Conflict,
    /// The database failed.
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    /// A stored document could not be decoded.
    #[error("corrupt stored record: {0}")]
    Decode(#[from] serde_json::Error),
    /// The database file or its directory could not be prepared.
    #[error("cannot open the database: {0}")]
    Io(#[from] std::io::Error),
}

/// What a job runs: everything needed to run it again (restart, rerun, fork).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRequest {
    /// Code of `/code/main.py`.
    pub code: String,
    /// `input_data`.
    pub input: Value,
    /// Requested timeout.
    pub timeout: Option<u64>,
    /// Requested startup timeout.
    pub startup_timeout: Option<u64>,
    /// Requested job type, raw (may carry `@version`).
    pub job_type: Option<String>,
    /// Request requirements.
    pub requirements: Option<Vec<String>>,
}

/// One execution record (spec §9), with the internal fields the API never shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionRecord {
    /// Id (`api-<uuid>` for sync runs, a uuid for async ones).
    pub execution_id: String,
    /// Record status.
    pub status: Status,
    /// Resolved job type name.
    pub job_type: String,
    /// `<requested job_type or default>@latest`.
    pub job_ref: String,
    /// Submission time (µs since the epoch).
    pub created_us: i64,
    /// Start of the first attempt.
    pub started_us: Option<i64>,
    /// End of the last attempt.
    pub ended_us: Option<i64>,
    /// Wall time of all attempts.
    pub duration_ms: Option<u64>,
    /// Exit code.
    pub exit_code: Option<i32>,
    /// Capped stdout.
    pub stdout: String,
    /// Capped stderr.
    pub stderr: String,
    /// Parsed result.json.
    pub output: Option<Value>,
    /// Error.
    pub error: Option<ExecError>,
    /// Timing.
    pub timing: Option<Timing>,
    /// Isolation runtime name.
    pub runtime: Option<String>,
    /// Output artifacts.
    pub artifacts: Vec<Artifact>,
    /// Replay files `_code.py`, `_input.json`.
    pub input_artifacts: Vec<Artifact>,
    /// Resource usage.
    pub resource_usage: Option<ResourceUsage>,
    /// sha256 of the code.
    pub code_hash: Option<String>,
    /// Canonical hash of the input.
    pub input_hash: Option<String>,
    /// Lineage parent.
    pub parent_execution_id: Option<String>,
    /// `rerun` or `fork`.
    pub relationship: Option<String>,
    /// stdout was capped.
    pub stdout_truncated: bool,
    /// stderr was capped.
    pub stderr_truncated: bool,
    /// Idempotency key (async submissions).
    pub idempotency_key: Option<String>,
    /// Idempotency fingerprint (§4.4).
    pub idempotency_fingerprint: Option<String>,
    /// Peer address of the submitter.
    pub client_ip: Option<String>,
    /// Correlation id of the submission.
    pub correlation_id: Option<String>,
    /// The request, kept while the job is not finished so a restart can run it again.
    pub request: Option<JobRequest>,
}

impl ExecutionRecord {
    /// A fresh record in `status` with the submission fields only.
    pub fn new(id: &str, status: Status, job_type: &str, job_ref: &str, created_us: i64) -> Self {
        ExecutionRecord {
            execution_id: id.into(),
            status,
            job_type: job_type.into(),
            job_ref: job_ref.into(),
            created_us,
            started_us: None,
            ended_us: None,
            duration_ms: None,
            exit_code: None,
            stdout: String::new(),
            stderr: String::new(),
            output: None,
            error: None,
            timing: None,
            runtime: None,
            artifacts: vec![],
            input_artifacts: vec![],
            resource_usage: None,
            code_hash: None,
            input_hash: None,
            parent_execution_id: None,
            relationship: None,
            stdout_truncated: false,
            stderr_truncated: false,
            idempotency_key: None,
            idempotency_fingerprint: None,
            client_ip: None,
            correlation_id: None,
            request: None,
        }
    }
}

/// A built job-type snapshot (`job_versions`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobVersion {
    /// Job type name.
    pub job_type: String,
    /// `<name>@sha256:<12 hex>`.
    pub version: String,
    /// Digest (12 hex).
    pub digest: String,
    /// `tako-vm-<name>:latest`.
    pub image_ref: String,
    /// `manual` (POST build) or `auto`.
    pub built_by: String,
    /// When (µs).
    pub created_us: i64,
}

/// A dead-letter entry (spec §4.10).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DlqEntry {
    /// Id (assigned by the store).
    pub id: i64,
    /// Job id.
    pub job_id: String,
    /// Redacted job summary.
    pub job_data: Value,
    /// Error type.
    pub error_type: String,
    /// Error message.
    pub error_message: Option<String>,
    /// Retries so far.
    pub retry_count: i64,
    /// When (µs).
    pub created_us: i64,
    /// Submitter address.
    pub client_ip: Option<String>,
    /// Correlation id.
    pub correlation_id: Option<String>,
}

/// Filters of `GET /executions`.
#[derive(Debug, Clone, Default)]
pub struct RecordFilter {
    /// Exact status.
    pub status: Option<String>,
    /// Exact resolved job type.
    pub job_type: Option<String>,
}

/// The storage interface of the service.
pub trait Store: Send + Sync {
    /// Inserts a new record; [`StoreError::Conflict`] on a duplicate id or idempotency key.
    fn insert(&self, r: &ExecutionRecord) -> Result<(), StoreError>;
    /// Writes `r` over a stored non-terminal record, or inserts it when absent. Terminal
    /// records are never overwritten: returns `false` when the write was dropped.
    fn update(&self, r: &ExecutionRecord) -> Result<bool, StoreError>;
    /// One record.
    fn get(&self, id: &str) -> Result<Option<ExecutionRecord>, StoreError>;
    /// The record holding an idempotency key.
    fn find_by_idempotency_key(&self, key: &str) -> Result<Option<ExecutionRecord>, StoreError>;
    /// A page of records, newest first, and whether more exist.
    fn list(
        &self,
        f: &RecordFilter,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<ExecutionRecord>, bool), StoreError>;
    /// Records still `queued` or `running`, oldest first.
    fn unfinished(&self) -> Result<Vec<ExecutionRecord>, StoreError>;
    /// Deletes records created before `before_us`; returns their ids.
    fn purge_records(&self, before_us: i64) -> Result<Vec<String>, StoreError>;
    /// Stores a job version.
    fn add_job_version(&self, v: &JobVersion) -> Result<(), StoreError>;
    /// Adds a DLQ entry; returns its id.
    fn dlq_add(&self, e: &DlqEntry) -> Result<i64, StoreError>;
    /// A page of DLQ entries, newest first, and whether more exist.
    fn dlq_list(
        &self,
        error_type: Option<&str>,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<DlqEntry>, bool), StoreError>;
    /// `(error_type, count)`, count descending.
    fn dlq_stats(&self) -> Result<Vec<(String, i64)>, StoreError>;
    /// Deletes one DLQ entry; `false` when absent.
    fn dlq_delete(&self, id: i64) -> Result<bool, StoreError>;
    /// Deletes DLQ entries created before `before_us`; returns how many.
    fn purge_dlq(&self, before_us: i64) -> Result<usize, StoreError>;
}
