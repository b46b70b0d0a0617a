//! Workers and the run of one job: plan, replay files, sandbox attempts with retries
//! (§4.5), watchdog (§4.2), the final record, and the DLQ for worker failures (§4.10).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::plan::{self, Plan, Ready};
use super::service::{Service, SubmitMeta, CANCELLED_BY_USER};
use crate::exec::classify;
use crate::exec::pyjson;
use crate::exec::record::{Artifact, ErrorType, ExecError, ExecutionResult, Status};
use crate::exec::runner::{self, CodeRun};
use crate::exec::sanitize::sanitize;
use crate::sandbox::{host, Runner};
use crate::store::{time, DlqEntry, ExecutionRecord, JobRequest};

/// The isolation runtime reported on records (`runtime`): our namespaces sandbox is the
/// runc-class runtime of the contract; gVisor is never used.
pub const RUNTIME: &str = "runc";

/// A planned job and when its preparation started (a build on first use counts).
struct Planned {
    decided: Plan,
    start: Instant,
    started_us: i64,
}

/// Error message of the watchdog (§4.2).
pub fn watchdog_message(budget_s: u64) -> String {
    format!("Execution exceeded the watchdog budget of {budget_s}s (startup + execution + orchestration buffer); container was killed")
}

fn backoff(base: f64, attempt: u32) -> Duration {
    let d = (base * 2f64.powi(attempt as i32)).min(30.0);
    let jitter = 1.0 + (uuid::Uuid::new_v4().as_u128() % 2001) as f64 / 10000.0 - 0.1;
    Duration::from_secs_f64((d * jitter).max(0.0))
}

/// Writes the replay files of §4.6 and returns their input artifacts.
fn write_replay(dir: &std::path::Path, req: &JobRequest) -> std::io::Result<Vec<Artifact>> {
    std::fs::create_dir_all(dir.join("artifacts"))?;
    let code = req.code.as_bytes();
    std::fs::write(dir.join("_code.py"), code)?;
    let input = pyjson::input_json_file(&req.input);
    std::fs::write(dir.join("_input.json"), input.as_bytes())?;
    Ok(vec![
        Artifact {
            name: "_code.py".into(),
            size_bytes: code.len() as u64,
            sha256: pyjson::sha256_hex(code),
            content_type: Some("text/x-python".into()),
        },
        Artifact {
            name: "_input.json".into(),
            size_bytes: input.len() as u64,
            sha256: pyjson::canonical_hash(&req.input),
            content_type: Some("application/json".into()),
        },
    ])
}

/// Fills a record from a result.
pub fn apply_result(r: &mut ExecutionRecord, res: ExecutionResult) {
    r.status = res.status;
    r.exit_code = res.exit_code;
    r.stdout = res.stdout;
    r.stderr = res.stderr;
    r.stdout_truncated = res.stdout_truncated;
    r.stderr_truncated = res.stderr_truncated;
    r.output = res.output;
    r.artifacts = res.artifacts;
    r.error = res.error;
    r.timing = res.timing;
    r.resource_usage = res.resource_usage;
}

impl Service {
    /// Starts `max_workers` workers.
    pub fn start_workers(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        (0..self.cfg.max_workers)
            .map(|_| {
                let me = self.clone();
                tokio::spawn(async move { me.worker_loop().await })
            })
            .collect()
    }

    async fn worker_loop(self: Arc<Self>) {
        let poll = Duration::from_secs_f64(self.cfg.queue_wait_timeout);
        loop {
            if self.shutting_down.load(Ordering::SeqCst) {
                return;
            }
            let next = {
                let mut l = self.live();
                let id = l.pending.pop_front();
                if let Some(id) = &id {
                    l.running += 1;
                    if let Some(j) = l.jobs.get_mut(id) {
                        j.running = true;
                    }
                }
                id
            };
            match next {
                Some(id) => self.run_queued(&id).await,
                None => {
                    let _ = tokio::time::timeout(poll, self.notify.notified()).await;
                }
            }
        }
    }

    async fn run_queued(self: &Arc<Self>, id: &str) {
        let taken = {
            let l = self.live();
            l.jobs.get(id).map(|j| {
                (
                    j.request.clone(),
                    j.meta.clone(),
                    j.created_us,
                    j.cancel.clone(),
                )
            })
        };
        let final_rec = match taken {
            Some((req, meta, created_us, cancel)) => {
                self.run_tracked(id, req, meta, created_us, cancel).await
            }
            None => None,
        };
        let mut l = self.live();
        l.running = l.running.saturating_sub(1);
        if let Some(job) = l.jobs.remove(id) {
            if job.done.borrow().is_none() {
                let _ = job.done.send(final_rec.map(Arc::new));
            }
        }
    }

    /// Runs one queued job under the watchdog and stores its record (or the DLQ entry).
    async fn run_tracked(
        self: &Arc<Self>,
        id: &str,
        req: JobRequest,
        meta: SubmitMeta,
        created_us: i64,
        cancel: Arc<AtomicBool>,
    ) -> Option<ExecutionRecord> {
        let base = match self.store.get(id) {
            Ok(Some(r)) => r,
            _ => self.queued_record(id, &req, &meta),
        };
        if base.status.is_terminal() {
            return Some(base);
        }
        // Running from here on, a build on first use included: a crash now interrupts the
        // job rather than queueing it again.
        let mut running = base.clone();
        running.status = Status::Running;
        if let Err(e) = self.store.update(&running) {
            eprintln!("tako-vm: cannot store record {id}: {e}");
        }
        // Planning may build the job type's snapshot first (development mode): the
        // watchdog budget starts with the run.
        let planned = match self.plan_job(&req).await {
            Ok(p) => p,
            Err(msg) => return Some(self.worker_failure(&base, &req, &meta, &msg)),
        };
        if cancel.load(Ordering::SeqCst) {
            // Cancelled (or shut down) while its environment was prepared.
            let stored = self.store.get(id).ok().flatten();
            if stored.as_ref().is_some_and(|r| r.status.is_terminal()) {
                return stored;
            }
            let r = self.cancelled_record(id, CANCELLED_BY_USER)?;
            if let Err(e) = self.store.update(&r) {
                eprintln!("tako-vm: cannot store record {id}: {e}");
            }
            return Some(r);
        }
        let budget = plan::watchdog_budget_s(&req, &self.registry());
        let me = self.clone();
        let (id2, req2, cancel2) = (id.to_string(), req.clone(), cancel.clone());
        let base2 = base.clone();
        let mut task = tokio::spawn(async move {
            me.run_planned(&id2, &req2, base2, created_us, cancel2, planned)
                .await
        });
        let outcome = match tokio::time::timeout(Duration::from_secs(budget), &mut task).await {
            Ok(joined) => joined
                .map_err(|e| format!("worker crashed: {e}"))
                .and_then(|r| r),
            Err(_) => {
                // The run (retries and back-off included) overran its budget: it is killed
                // through the cancel flag and recorded as a timeout; its own result is
                // dropped (terminal records are immutable).
                cancel.store(true, Ordering::SeqCst);
                let mut r = self.store.get(id).ok().flatten().unwrap_or(base);
                r.status = Status::Timeout;
                r.error = Some(ExecError::new(
                    ErrorType::ExecutionTimeout,
                    watchdog_message(budget),
                    None,
                ));
                let now = time::now_us();
                r.ended_us = Some(now);
                r.duration_ms = r.started_us.map(|s| ((now - s).max(0) / 1000) as u64);
                if let Err(e) = self.store.update(&r) {
                    eprintln!("tako-vm: cannot store record {id}: {e}");
                }
                let _ = task.await;
                return self.store.get(id).ok().flatten();
            }
        };
        let rec = match outcome {
            Ok(done) => done,
            Err(msg) => return Some(self.worker_failure(&base, &req, &meta, &msg)),
        };
        if let Err(e) = self.store.update(&rec) {
            eprintln!("tako-vm: cannot store record {id}: {e}");
        }
        self.store.get(id).ok().flatten().or(Some(rec))
    }

    /// A failure of the worker itself: `internal_error` and a DLQ entry (§4.10).
    fn worker_failure(
        &self,
        base: &ExecutionRecord,
        req: &JobRequest,
        meta: &SubmitMeta,
        msg: &str,
    ) -> ExecutionRecord {
        let mut r = base.clone();
        let (status, err) = classify::internal_error(msg);
        r.status = status;
        r.error = Some(err);
        r.ended_us = Some(time::now_us());
        self.dead_letter(&r, req, meta, msg);
        if let Err(e) = self.store.update(&r) {
            eprintln!("tako-vm: cannot store record {}: {e}", r.execution_id);
        }
        self.store.get(&r.execution_id).ok().flatten().unwrap_or(r)
    }

    /// Adds the DLQ entry of a job whose worker failed (`internal_error`, no retries; its
    /// `job_data` is a redacted summary, §4.10).
    fn dead_letter(&self, r: &ExecutionRecord, req: &JobRequest, meta: &SubmitMeta, msg: &str) {
        let mut data = serde_json::Map::new();
        data.insert(
            "job_type".into(),
            req.job_type
                .clone()
                .unwrap_or_else(|| "default".into())
                .into(),
        );
        data.insert("code_hash".into(), r.code_hash.clone().into());
        data.insert("input_hash".into(), r.input_hash.clone().into());
        data.insert("code_size_bytes".into(), req.code.len().into());
        data.insert(
            "input_size_bytes".into(),
            pyjson::canonical(&req.input).len().into(),
        );
        data.insert(
            "has_idempotency_key".into(),
            meta.idempotency_key.is_some().into(),
        );
        if let Some(t) = req.timeout {
            data.insert("timeout".into(), t.into());
        }
        if let Some(t) = req.startup_timeout {
            data.insert("startup_timeout".into(), t.into());
        }
        if let Some(rq) = &req.requirements {
            data.insert("requirements".into(), json!(rq));
        }
        if let Some(c) = &meta.correlation_id {
            data.insert("correlation_id".into(), c.clone().into());
        }
        if let Some((p, _)) = &meta.parent {
            data.insert("parent_execution_id".into(), p.clone().into());
        }
        let entry = DlqEntry {
            id: 0,
            job_id: r.execution_id.clone(),
            job_data: Value::Object(data),
            error_type: ErrorType::InternalError.as_str().into(),
            error_message: Some(sanitize(msg)),
            retry_count: 0,
            created_us: time::now_us(),
            client_ip: meta.client_ip.clone(),
            correlation_id: meta.correlation_id.clone(),
        };
        if let Err(e) = self.store.dlq_add(&entry) {
            eprintln!("tako-vm: cannot add DLQ entry for {}: {e}", r.execution_id);
        }
    }

    /// Runs a sync execution (`POST /execute`) to completion and stores its record.
    pub async fn execute_sync(
        self: &Arc<Self>,
        req: JobRequest,
        meta: SubmitMeta,
    ) -> Result<ExecutionRecord, String> {
        let id = format!("api-{}", uuid::Uuid::new_v4());
        let mut base = self.queued_record(&id, &req, &meta);
        base.idempotency_key = None;
        base.idempotency_fingerprint = None;
        let created = base.created_us;
        let rec = self
            .execute_job(&id, &req, base, created, Arc::new(AtomicBool::new(false)))
            .await?;
        if let Err(e) = self.store.update(&rec) {
            eprintln!("tako-vm: cannot store record {id}: {e}");
        }
        Ok(rec)
    }

    /// Plans and runs one job; returns its final record. `Err` is a worker failure (replay files, a
    /// crashed run), which an async job turns into `internal_error` + DLQ.
    async fn execute_job(
        self: &Arc<Self>,
        id: &str,
        req: &JobRequest,
        rec: ExecutionRecord,
        created_us: i64,
        cancel: Arc<AtomicBool>,
    ) -> Result<ExecutionRecord, String> {
        let planned = self.plan_job(req).await?;
        self.run_planned(id, req, rec, created_us, cancel, planned)
            .await
    }

    /// Plans a job on the blocking pool (its environment may be built first).
    async fn plan_job(self: &Arc<Self>, req: &JobRequest) -> Result<Planned, String> {
        let me = self.clone();
        let req = req.clone();
        let start = Instant::now();
        let started_us = time::now_us();
        let decided = tokio::task::spawn_blocking(move || {
            let registry = me.registry().clone();
            plan::plan(&req, &registry, me.envs.as_ref(), &me.cfg)
        })
        .await
        .map_err(|e| format!("worker crashed: {e}"))?;
        Ok(Planned {
            decided,
            start,
            started_us,
        })
    }

    /// Runs a planned job (see [`Service::execute_job`]).
    async fn run_planned(
        self: &Arc<Self>,
        id: &str,
        req: &JobRequest,
        mut rec: ExecutionRecord,
        created_us: i64,
        cancel: Arc<AtomicBool>,
        planned: Planned,
    ) -> Result<ExecutionRecord, String> {
        rec.created_us = created_us;
        rec.runtime = Some(RUNTIME.into());
        let ident = plan::identity(req, &self.registry(), self.cfg.production_mode);
        rec.job_type = ident.job_type;
        rec.job_ref = ident.job_ref;
        let Planned {
            decided,
            start,
            started_us,
        } = planned;
        let ready = match decided {
            Plan::Refuse { result, started } => {
                if started {
                    rec.started_us = Some(started_us);
                } else {
                    rec.runtime = None;
                }
                apply_result(&mut rec, result);
                rec.ended_us = Some(time::now_us());
                rec.duration_ms = started.then(|| start.elapsed().as_millis() as u64);
                return Ok(rec);
            }
            Plan::Run(r) => r,
        };
        let runner = match &self.runner {
            Ok(r) => r.clone(),
            Err(e) => {
                rec.started_us = Some(started_us);
                apply_result(&mut rec, runner::sandbox_failure(e));
                rec.ended_us = Some(time::now_us());
                rec.duration_ms = Some(start.elapsed().as_millis() as u64);
                return Ok(rec);
            }
        };
        let dir = self.run_dir(id);
        rec.input_artifacts = write_replay(&dir, req)
            .map_err(|e| format!("cannot prepare the run directory: {e}"))?;
        rec.started_us = Some(started_us);
        rec.status = Status::Running;
        if !id.starts_with("api-") {
            let _ = self.store.update(&rec);
        }
        let me = self.clone();
        let req2 = req.clone();
        let artifacts_dir = dir.join("artifacts");
        let result = tokio::task::spawn_blocking(move || {
            me.attempts(&runner, &req2, &ready, artifacts_dir, &cancel)
        })
        .await
        .map_err(|e| format!("worker crashed: {e}"))?;
        apply_result(&mut rec, result);
        rec.ended_us = Some(time::now_us());
        let dur = start.elapsed().as_millis() as u64;
        rec.duration_ms = Some(dur);
        if let Some(u) = rec.resource_usage.as_mut() {
            u.wall_time_ms = Some(dur);
        }
        Ok(rec)
    }

    /// Sandbox attempts with retries on infrastructure failures (blocking): a sandbox that
    /// cannot be started (helper, cgroup, id maps, network set-up) is tried again, up to
    /// `max_retry_attempts` in all, after a back-off of `retry_base_delay × 2^k` (±10 %,
    /// at most 30 s). A run that started is never retried, whatever its outcome or output.
    /// Returns the last result (a failed one stays a failed record: no DLQ entry, §4.10).
    fn attempts(
        &self,
        runner: &Runner,
        req: &JobRequest,
        ready: &Ready,
        artifacts_dir: std::path::PathBuf,
        cancel: &Arc<AtomicBool>,
    ) -> ExecutionResult {
        let max = self.cfg.max_retry_attempts.max(1) as u32;
        let mut attempt = 0;
        loop {
            if !self.breaker_allows() {
                let (s, e) = classify::service_unavailable(
                    "Sandbox service unavailable (circuit breaker open)",
                );
                return ExecutionResult::refused(s, e, Some(-1));
            }
            let _ = std::fs::remove_dir_all(&artifacts_dir);
            let _ = std::fs::create_dir_all(&artifacts_dir);
            let mut run = CodeRun::new(
                host::new_run_id(),
                ready.env.rootfs.clone(),
                req.code.clone(),
            );
            run.input = req.input.clone();
            run.timeout_s = ready.timeout_s;
            run.startup_timeout_s = ready.startup_timeout_s;
            run.lower = ready.env.lower.clone();
            run.env = ready.env.env.clone();
            run.limits = ready.limits.clone();
            run.max_stdout = self.cfg.max_stdout_bytes as usize;
            run.max_stderr = self.cfg.max_stderr_bytes as usize;
            run.max_artifact = self.cfg.max_artifact_bytes as u64;
            run.max_total_artifacts = self.cfg.max_total_artifacts_bytes as u64;
            run.max_artifacts = self.cfg.max_artifacts as u32;
            run.artifacts_dir = Some(artifacts_dir.clone());
            run.network = ready.network.clone();
            run.cancel = Some(cancel.clone());
            // Only a sandbox that could not be started is an infrastructure failure: the
            // classification of a run's own output (e.g. "circuit breaker" on stderr) never
            // retries it nor counts against the breaker.
            let ran = runner::try_execute(runner, &run);
            {
                let mut b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
                match &ran {
                    Ok(_) => b.success(),
                    Err(_) => b.failure(),
                }
            }
            attempt += 1;
            let failure = match ran {
                Ok(result) => return result,
                Err(e) => runner::sandbox_failure(&e),
            };
            if attempt >= max {
                return failure;
            }
            let wait = backoff(self.cfg.retry_base_delay, attempt - 1);
            let until = Instant::now() + wait;
            while Instant::now() < until && !cancel.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
            }
            // Cancelled during the back-off (cancel, watchdog, shutdown): no new attempt.
            if cancel.load(Ordering::SeqCst) {
                return failure;
            }
        }
    }

    fn breaker_allows(&self) -> bool {
        self.breaker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .allows()
    }
}
