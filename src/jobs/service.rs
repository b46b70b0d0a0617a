//! The job service: submission, the in-memory queue, cancel, status and waiting.
//! Workers and the run of one job are in `worker.rs`; restart, shutdown and retention in
//! `lifecycle.rs`.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use serde_json::json;
use tokio::sync::{watch, Notify};

use super::breaker::Breaker;
use super::env::Environments;
use super::plan;
use super::registry::Registry;
use crate::config::Config;
use crate::exec::pyjson;
use crate::exec::record::{ErrorType, ExecError, Status};
use crate::sandbox::Runner;
use crate::store::{time, ExecutionRecord, JobRequest, Store, StoreError};

/// Message of a queue-full refusal.
pub const QUEUE_FULL: &str = "Job queue is full, try again later";
/// Message of a user cancel.
pub const CANCELLED_BY_USER: &str = "Execution was cancelled by user";

/// Who submitted a job and why.
#[derive(Debug, Clone, Default)]
pub struct SubmitMeta {
    /// Idempotency key.
    pub idempotency_key: Option<String>,
    /// Peer address.
    pub client_ip: Option<String>,
    /// Correlation id.
    pub correlation_id: Option<String>,
    /// Lineage: parent id and `rerun`/`fork`.
    pub parent: Option<(String, String)>,
}

/// Submission failures.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// Same idempotency key, different payload.
    #[error("Idempotency key reused with different payload")]
    Conflict,
    /// The queue is full.
    #[error("Job queue is full, try again later")]
    QueueFull,
    /// The server is shutting down.
    #[error("server is shutting down")]
    ShuttingDown,
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The result of a submission.
#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    /// Job id.
    pub job_id: String,
    /// `queued` for new jobs, the stored status on an idempotency hit.
    pub status: Status,
}

/// What `GET /jobs/{id}` reports.
#[derive(Debug, Clone, PartialEq)]
pub struct JobStatus {
    /// `pending`, `running` or a record status.
    pub status: String,
    /// Submission time (µs).
    pub created_us: Option<i64>,
    /// Stored duration.
    pub duration_ms: Option<u64>,
    /// 1-based position among waiting jobs.
    pub queue_position: Option<usize>,
}

pub(super) struct LiveJob {
    pub(super) request: JobRequest,
    pub(super) meta: SubmitMeta,
    pub(super) created_us: i64,
    pub(super) running: bool,
    pub(super) cancelled: bool,
    pub(super) cancel: Arc<AtomicBool>,
    pub(super) done: watch::Sender<Option<Arc<ExecutionRecord>>>,
}

#[derive(Default)]
pub(super) struct Live {
    pub(super) pending: VecDeque<String>,
    pub(super) jobs: HashMap<String, LiveJob>,
    pub(super) running: usize,
}

/// The job service shared by the HTTP handlers and the workers.
pub struct Service {
    /// Configuration.
    pub cfg: Arc<Config>,
    /// History.
    pub store: Arc<dyn Store>,
    /// Job types.
    pub registry: RwLock<Registry>,
    /// Root filesystems of job types.
    pub envs: Arc<dyn Environments>,
    pub(super) runner: Result<Arc<Runner>, String>,
    pub(super) live: Mutex<Live>,
    pub(super) notify: Notify,
    idem: tokio::sync::Mutex<()>,
    pub(super) breaker: Mutex<Breaker>,
    pub(super) data_dir: PathBuf,
    pub(super) shutting_down: AtomicBool,
}

/// Idempotency fingerprint (§4.4).
pub fn fingerprint(req: &JobRequest) -> String {
    let v = json!({
        "code_hash": pyjson::sha256_hex(req.code.as_bytes()),
        "input_hash": pyjson::canonical_hash(&req.input),
        "job_type": req.job_type.clone().unwrap_or_else(|| "default".into()),
        "timeout": req.timeout,
        "startup_timeout": req.startup_timeout,
        "requirements": req.requirements.clone().unwrap_or_default(),
    });
    pyjson::canonical_hash(&v)
}

impl Service {
    /// A service; `runner` is the sandbox runner or why it is unavailable.
    pub fn new(
        cfg: Arc<Config>,
        store: Arc<dyn Store>,
        registry: Registry,
        envs: Arc<dyn Environments>,
        runner: Result<Arc<Runner>, String>,
    ) -> Arc<Service> {
        let data_dir = cfg.data_dir();
        Arc::new(Service {
            cfg,
            store,
            registry: RwLock::new(registry),
            envs,
            runner,
            live: Mutex::new(Live::default()),
            notify: Notify::new(),
            idem: tokio::sync::Mutex::new(()),
            breaker: Mutex::new(Breaker::default()),
            data_dir,
            shutting_down: AtomicBool::new(false),
        })
    }

    pub(super) fn live(&self) -> MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Read access to the registry.
    pub fn registry(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(|p| p.into_inner())
    }

    /// `<data_dir>/runs/<id>`.
    pub fn run_dir(&self, id: &str) -> PathBuf {
        self.data_dir.join("runs").join(id)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    /// Whether the sandbox backend is usable, and why not.
    pub fn backend(&self) -> Result<(), String> {
        self.runner.as_ref().map(|_| ()).map_err(Clone::clone)
    }

    /// `(state, failures, successes, last_failure)` of the breaker.
    pub fn breaker_snapshot(&self) -> (super::breaker::State, u32, u32, Option<f64>) {
        self.breaker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .snapshot()
    }

    /// `(pending, running)`.
    pub fn queue_stats(&self) -> (usize, usize) {
        let l = self.live();
        (l.pending.len(), l.running)
    }

    /// A new queued record for a submission.
    pub fn queued_record(&self, id: &str, req: &JobRequest, meta: &SubmitMeta) -> ExecutionRecord {
        let ident = plan::identity(req, &self.registry(), self.cfg.production_mode);
        let mut r = ExecutionRecord::new(
            id,
            Status::Queued,
            &ident.job_type,
            &ident.job_ref,
            time::now_us(),
        );
        r.code_hash = Some(pyjson::sha256_hex(req.code.as_bytes()));
        r.input_hash = Some(pyjson::canonical_hash(&req.input));
        r.idempotency_key = meta.idempotency_key.clone();
        if meta.idempotency_key.is_some() {
            r.idempotency_fingerprint = Some(fingerprint(req));
        }
        r.client_ip = meta.client_ip.clone();
        r.correlation_id = meta.correlation_id.clone();
        if let Some((p, rel)) = &meta.parent {
            r.parent_execution_id = Some(p.clone());
            r.relationship = Some(rel.clone());
        }
        r.request = Some(req.clone());
        r
    }

    /// `POST /execute/async` (and rerun/fork): idempotency, queued record, enqueue.
    pub async fn submit(
        &self,
        req: JobRequest,
        meta: SubmitMeta,
    ) -> Result<Submitted, SubmitError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        let _guard = match &meta.idempotency_key {
            Some(_) => Some(self.idem.lock().await),
            None => None,
        };
        if let Some(hit) = self.idempotency_hit(&req, &meta)? {
            return Ok(hit);
        }
        let id = uuid::Uuid::new_v4().to_string();
        let rec = self.queued_record(&id, &req, &meta);
        match self.store.insert(&rec) {
            Ok(()) => {}
            Err(StoreError::Conflict) => {
                if let Some(hit) = self.idempotency_hit(&req, &meta)? {
                    return Ok(hit);
                }
                return Err(SubmitError::Store(StoreError::Conflict));
            }
            Err(e) => return Err(e.into()),
        }
        if !self.enqueue(&id, req, meta, rec.created_us) {
            // Queue full: the record fails and the key is released (0.3.0 kept it, §10.2).
            let mut failed = rec;
            failed.status = Status::Failed;
            failed.error = Some(ExecError::new(
                ErrorType::ServiceUnavailable,
                QUEUE_FULL,
                None,
            ));
            failed.ended_us = Some(time::now_us());
            failed.idempotency_key = None;
            failed.idempotency_fingerprint = None;
            failed.request = None;
            self.store.update(&failed)?;
            return Err(SubmitError::QueueFull);
        }
        Ok(Submitted {
            job_id: id,
            status: Status::Queued,
        })
    }

    fn idempotency_hit(
        &self,
        req: &JobRequest,
        meta: &SubmitMeta,
    ) -> Result<Option<Submitted>, SubmitError> {
        let Some(key) = &meta.idempotency_key else {
            return Ok(None);
        };
        let Some(existing) = self.store.find_by_idempotency_key(key)? else {
            return Ok(None);
        };
        if let Some(fp) = &existing.idempotency_fingerprint {
            if *fp != fingerprint(req) {
                return Err(SubmitError::Conflict);
            }
        }
        Ok(Some(Submitted {
            job_id: existing.execution_id,
            status: existing.status,
        }))
    }

    /// Puts a job into the in-memory queue; `false` when full.
    pub(super) fn enqueue(
        &self,
        id: &str,
        request: JobRequest,
        meta: SubmitMeta,
        created_us: i64,
    ) -> bool {
        let mut l = self.live();
        if l.pending.len() >= self.cfg.max_queue_size as usize {
            return false;
        }
        let (done, _) = watch::channel(None);
        l.pending.push_back(id.to_string());
        l.jobs.insert(
            id.to_string(),
            LiveJob {
                request,
                meta,
                created_us,
                running: false,
                cancelled: false,
                cancel: Arc::new(AtomicBool::new(false)),
                done,
            },
        );
        drop(l);
        self.notify.notify_one();
        true
    }

    /// A terminal `cancelled` record for a job, from its stored record.
    pub(super) fn cancelled_record(&self, id: &str, message: &str) -> Option<ExecutionRecord> {
        let mut r = self.store.get(id).ok().flatten()?;
        r.status = Status::Cancelled;
        r.error = Some(ExecError::new(ErrorType::Cancelled, message, None));
        r.ended_us = Some(time::now_us());
        Some(r)
    }

    /// `POST /jobs/{id}/cancel`: `true` when the job was waiting or running here. A running
    /// job's sandbox is killed (the flag is polled at least every 100 ms).
    pub fn cancel(&self, id: &str) -> bool {
        let mut l = self.live();
        let Some(job) = l.jobs.get_mut(id) else {
            return false;
        };
        if job.cancelled {
            return false;
        }
        job.cancelled = true;
        job.cancel.store(true, Ordering::SeqCst);
        let running = job.running;
        let done = job.done.clone();
        if !running {
            l.pending.retain(|p| p != id);
            l.jobs.remove(id);
        }
        drop(l);
        let rec = self.cancelled_record(id, CANCELLED_BY_USER);
        if let Some(r) = &rec {
            if let Err(e) = self.store.update(r) {
                eprintln!("tako-vm: cannot store the cancel of {id}: {e}");
            }
        }
        let _ = done.send(rec.map(Arc::new));
        true
    }

    /// `GET /jobs/{id}` resolution (§1.5.4).
    pub fn status(&self, id: &str) -> Result<Option<JobStatus>, StoreError> {
        {
            let l = self.live();
            if let Some(job) = l.jobs.get(id) {
                if job.running && !job.cancelled {
                    return Ok(Some(JobStatus {
                        status: "running".into(),
                        created_us: Some(job.created_us),
                        duration_ms: None,
                        queue_position: None,
                    }));
                }
                if !job.running {
                    let pos = l.pending.iter().position(|p| p == id).map(|p| p + 1);
                    return Ok(Some(JobStatus {
                        status: "pending".into(),
                        created_us: Some(job.created_us),
                        duration_ms: None,
                        queue_position: pos,
                    }));
                }
            }
        }
        Ok(self.store.get(id)?.map(|r| JobStatus {
            status: r.status.as_str().into(),
            created_us: Some(r.created_us),
            duration_ms: r.duration_ms,
            queue_position: None,
        }))
    }

    /// A receiver that resolves when a job of this process finishes; `None` when the job
    /// is not in memory.
    pub fn watch(&self, id: &str) -> Option<watch::Receiver<Option<Arc<ExecutionRecord>>>> {
        self.live().jobs.get(id).map(|j| j.done.subscribe())
    }

    /// Waits up to `timeout` for an in-memory job; `Ok(None)` on timeout, `Err(())` when the
    /// job is not in memory.
    pub async fn wait(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<Option<Arc<ExecutionRecord>>, ()> {
        let mut rx = self.watch(id).ok_or(())?;
        let res = tokio::time::timeout(timeout, rx.wait_for(|v| v.is_some())).await;
        match res {
            Ok(Ok(v)) => Ok(v.clone()),
            Ok(Err(_)) => Ok(self.store.get(id).ok().flatten().map(Arc::new)),
            Err(_) => Ok(None),
        }
    }
}
