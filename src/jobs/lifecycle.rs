//! Restart reconciliation (§4.7), graceful shutdown, retention, and rerun/fork (§4.6).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::plan;
use super::service::{Service, SubmitError, SubmitMeta, Submitted};
use crate::exec::record::{ErrorType, ExecError, Status};
use crate::store::{time, JobRequest, StoreError};

/// Error message of records interrupted by a restart.
pub const INTERRUPTED_RESTART: &str = "job interrupted by server restart before completion";
/// Error message of running jobs killed at shutdown after the grace period.
pub const INTERRUPTED_SHUTDOWN: &str = "job interrupted by server shutdown before completion";
/// Error message of queued jobs at shutdown.
pub const SHUTDOWN_BEFORE_START: &str = "Job cancelled: server shut down before execution started";

/// Why a rerun or fork was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Timeout over the ceiling (422).
    #[error("{0}")]
    Ceiling(String),
    /// No parent (404).
    #[error("Job not found")]
    NotFound,
    /// Parent not terminal (400, rerun only).
    #[error("Cannot rerun job that hasn't completed")]
    NotTerminal,
    /// 400.
    #[error("Original code not available for replay")]
    NoCode,
    /// 400.
    #[error("Original code file not found")]
    CodeFileMissing,
    /// 400.
    #[error("Original input not available for replay")]
    NoInput,
    /// 400.
    #[error("Original input file not found")]
    InputFileMissing,
    /// 400.
    #[error("Invalid artifact path")]
    InvalidPath,
    /// 400.
    #[error("Failed to retrieve replay data")]
    Failed,
    /// Submission failed.
    #[error(transparent)]
    Submit(#[from] SubmitError),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where a stored path leads, checked against `root`.
#[derive(Debug, PartialEq)]
pub enum Located {
    /// An existing file inside `root` (canonical path).
    Inside(std::path::PathBuf),
    /// It resolves outside `root`, also through a link to nothing.
    Outside,
    /// Nothing there, and nothing pointing outside.
    Missing,
}

/// Resolves `p` against `root`: existing paths are canonicalised; a dangling symlink is
/// followed lexically, so "outside the data dir" is known even when its target is missing.
pub fn locate(root: &Path, p: &Path) -> Located {
    use std::path::Component;
    let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    if let Ok(c) = p.canonicalize() {
        return if c.starts_with(&root) {
            Located::Inside(c)
        } else {
            Located::Outside
        };
    }
    let Ok(target) = std::fs::read_link(p) else {
        return Located::Missing;
    };
    // An absolute target replaces the base; `..` is applied lexically.
    let mut n = std::path::PathBuf::new();
    for c in p
        .parent()
        .unwrap_or(Path::new("/"))
        .join(target)
        .components()
    {
        match c {
            Component::ParentDir => {
                n.pop();
            }
            Component::CurDir => {}
            other => n.push(other),
        }
    }
    if n.starts_with(&root) {
        Located::Missing
    } else {
        Located::Outside
    }
}

impl Service {
    /// Start-up reconciliation: `running` records of a dead process fail as interrupted;
    /// `queued` ones are queued again (or fail as interrupted when they cannot be).
    pub fn reconcile(&self) -> Result<(usize, usize), StoreError> {
        let (mut requeued, mut failed) = (0, 0);
        for mut r in self.store.unfinished()? {
            if r.status == Status::Queued {
                if let Some(req) = r.request.clone() {
                    let meta = SubmitMeta {
                        idempotency_key: r.idempotency_key.clone(),
                        client_ip: r.client_ip.clone(),
                        correlation_id: r.correlation_id.clone(),
                        parent: r.parent_execution_id.clone().zip(r.relationship.clone()),
                    };
                    if self.enqueue(&r.execution_id, req, meta, r.created_us) {
                        requeued += 1;
                        continue;
                    }
                }
            }
            r.status = Status::Failed;
            r.ended_us = Some(time::now_us());
            if r.error.is_none() {
                r.error = Some(ExecError::new(
                    ErrorType::Interrupted,
                    INTERRUPTED_RESTART,
                    None,
                ));
            }
            self.store.update(&r)?;
            failed += 1;
        }
        Ok((requeued, failed))
    }

    /// Graceful shutdown: queued jobs are cancelled; running jobs get `grace` to finish,
    /// then their sandboxes are killed and they are recorded as interrupted.
    pub async fn shutdown(&self, grace: Duration) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
        let queued: Vec<String> = {
            let mut l = self.live();
            let ids: Vec<String> = l.pending.drain(..).collect();
            for id in &ids {
                l.jobs.remove(id);
            }
            ids
        };
        for id in queued {
            if let Some(r) = self.cancelled_record(&id, SHUTDOWN_BEFORE_START) {
                let _ = self.store.update(&r);
            }
        }
        let deadline = tokio::time::Instant::now() + grace;
        while self.queue_stats().1 > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let running: Vec<String> = {
            let l = self.live();
            for j in l.jobs.values() {
                j.cancel.store(true, Ordering::SeqCst);
            }
            l.jobs.keys().cloned().collect()
        };
        for id in &running {
            if let Ok(Some(mut r)) = self.store.get(id) {
                r.status = Status::Failed;
                r.ended_us = Some(time::now_us());
                r.error = Some(ExecError::new(
                    ErrorType::Interrupted,
                    INTERRUPTED_SHUTDOWN,
                    None,
                ));
                let _ = self.store.update(&r);
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.queue_stats().1 > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One retention pass: records and run directories older than
    /// `execution_record_ttl_days`, DLQ entries older than `dlq_ttl_days`.
    pub fn retention_pass(&self) -> Result<(usize, usize), StoreError> {
        let day = 86_400_000_000i64;
        let now = time::now_us();
        let ids = self
            .store
            .purge_records(now - self.cfg.execution_record_ttl_days * day)?;
        for id in &ids {
            let _ = std::fs::remove_dir_all(self.run_dir(id));
        }
        let runs = self.data_dir.join("runs");
        let max_age = Duration::from_secs(self.cfg.execution_record_ttl_days as u64 * 86_400);
        if let Ok(rd) = std::fs::read_dir(&runs) {
            for e in rd.flatten() {
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|m| m.elapsed().ok())
                    .is_some_and(|a| a > max_age);
                if old {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dlq = self.store.purge_dlq(now - self.cfg.dlq_ttl_days * day)?;
        Ok((ids.len(), dlq))
    }

    /// Runs [`Service::retention_pass`] now, before returning (so a server that is ready
    /// has already dropped what expired while it was down, and no request races the
    /// first pass), then every hour in a task.
    pub fn start_retention(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let pass = |svc: &Service| {
            if let Err(e) = svc.retention_pass() {
                eprintln!("tako-vm: retention pass failed: {e}");
            }
        };
        pass(self);
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                let svc = me.clone();
                let _ = tokio::task::spawn_blocking(move || pass(&svc)).await;
            }
        })
    }

    fn replay_data(
        &self,
        parent: &crate::store::ExecutionRecord,
    ) -> Result<(String, Value), ReplayError> {
        let dir = self.run_dir(&parent.execution_id);
        let has = |n: &str| parent.input_artifacts.iter().any(|a| a.name == n);
        if !has("_code.py") {
            return Err(ReplayError::NoCode);
        }
        let code_path = dir.join("_code.py");
        if !code_path.exists() {
            return Err(ReplayError::CodeFileMissing);
        }
        if !has("_input.json") {
            return Err(ReplayError::NoInput);
        }
        let input_path = dir.join("_input.json");
        if !input_path.exists() {
            return Err(ReplayError::InputFileMissing);
        }
        // §1.5.7 order: the missing files above, then a path escaping the data dir.
        let within = |p: &Path| match locate(&self.data_dir, p) {
            Located::Inside(c) => Ok(c),
            _ => Err(ReplayError::InvalidPath),
        };
        let code_path = within(&code_path)?;
        let input_path = within(&input_path)?;
        let code = std::fs::read_to_string(code_path).map_err(|_| ReplayError::Failed)?;
        let input = std::fs::read(input_path).map_err(|_| ReplayError::Failed)?;
        let input: Value = serde_json::from_slice(&input).map_err(|_| ReplayError::Failed)?;
        Ok((code, input))
    }

    /// `POST /jobs/{id}/rerun` (`code: None`) and `/fork` (`code: Some`): a new async job
    /// with the parent's input (and code), keeping the parent's timeout, startup timeout
    /// and requirements unless overridden (0.3.0 dropped them, §10.9).
    pub async fn replay(
        &self,
        parent_id: &str,
        code: Option<String>,
        job_type: Option<String>,
        timeout: Option<u64>,
        meta: SubmitMeta,
    ) -> Result<Submitted, ReplayError> {
        if timeout.is_some() {
            plan::check_timeout_ceiling(timeout, Some("default"), &self.registry(), &self.cfg)
                .map_err(ReplayError::Ceiling)?;
        }
        let parent = self.store.get(parent_id)?.ok_or(ReplayError::NotFound)?;
        let fork = code.is_some();
        if !fork && !parent.status.is_terminal() {
            return Err(ReplayError::NotTerminal);
        }
        let (orig_code, input) = self.replay_data(&parent)?;
        let orig = parent.request.clone();
        let job_type = job_type.or_else(|| match &orig {
            Some(o) => o.job_type.clone(),
            None => Some(parent.job_type.clone()),
        });
        let timeout_given = timeout;
        let timeout = timeout.or(orig.as_ref().and_then(|o| o.timeout));
        let eff =
            plan::effective_timeout(timeout, job_type.as_deref(), &self.registry(), &self.cfg);
        if let Some(t) = eff {
            if t > self.cfg.max_timeout as u64 {
                return Err(ReplayError::Ceiling(format!(
                    "{}timeout must be less than or equal to the configured max_timeout ({} seconds)",
                    if timeout_given.is_some() { "" } else { "effective " },
                    self.cfg.max_timeout
                )));
            }
        }
        let req = JobRequest {
            code: code.unwrap_or(orig_code),
            input,
            timeout,
            startup_timeout: orig.as_ref().and_then(|o| o.startup_timeout),
            job_type,
            requirements: orig.and_then(|o| o.requirements),
        };
        let meta = SubmitMeta {
            idempotency_key: None,
            parent: Some((
                parent_id.to_string(),
                if fork { "fork" } else { "rerun" }.to_string(),
            )),
            ..meta
        };
        Ok(self.submit(req, meta).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::jobs::{BaseRootfsEnvironments, Registry};
    use crate::store::sqlite::SqliteStore;
    use crate::store::ExecutionRecord;

    fn service(dir: &Path) -> Arc<Service> {
        let cfg = Config {
            data_dir: Some(dir.to_path_buf()),
            ..Config::default()
        };
        let store = SqliteStore::open(&dir.join("t.db")).unwrap();
        Service::new(
            Arc::new(cfg.clone()),
            Arc::new(store),
            Registry::load_from(&dir.join("none.json"), &cfg),
            Arc::new(BaseRootfsEnvironments::new(None)),
            Err("no sandbox in unit tests".into()),
        )
    }

    fn record(id: &str, status: Status, created_us: i64, with_request: bool) -> ExecutionRecord {
        let mut r = ExecutionRecord::new(id, status, "default", "default@latest", created_us);
        if with_request {
            r.request = Some(JobRequest {
                code: "print(1)".into(),
                input: serde_json::json!({}),
                timeout: None,
                startup_timeout: None,
                job_type: None,
                requirements: None,
            });
        }
        r
    }

    #[test]
    fn reconcile_requeues_queued_and_interrupts_running() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path());
        let now = time::now_us();
        svc.store
            .insert(&record("q", Status::Queued, now, true))
            .unwrap();
        svc.store
            .insert(&record("old", Status::Queued, now, false))
            .unwrap();
        svc.store
            .insert(&record("r", Status::Running, now, true))
            .unwrap();
        svc.store
            .insert(&record("done", Status::Succeeded, now, true))
            .unwrap();
        assert_eq!(svc.reconcile().unwrap(), (1, 2));
        assert_eq!(svc.queue_stats(), (1, 0));
        assert_eq!(svc.status("q").unwrap().unwrap().status, "pending");
        for id in ["old", "r"] {
            let r = svc.store.get(id).unwrap().unwrap();
            assert_eq!(r.status, Status::Failed);
            assert_eq!(r.error.unwrap().message, INTERRUPTED_RESTART);
        }
        assert_eq!(
            svc.store.get("done").unwrap().unwrap().status,
            Status::Succeeded
        );
    }

    #[test]
    fn retention_removes_old_records_runs_and_dlq_entries() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path());
        let now = time::now_us();
        let day = 86_400_000_000i64;
        svc.store
            .insert(&record("old", Status::Succeeded, now - 31 * day, false))
            .unwrap();
        svc.store
            .insert(&record("new", Status::Succeeded, now - day, false))
            .unwrap();
        std::fs::create_dir_all(svc.run_dir("old")).unwrap();
        std::fs::create_dir_all(svc.run_dir("new")).unwrap();
        let entry = |created_us| crate::store::DlqEntry {
            id: 0,
            job_id: "x".into(),
            job_data: serde_json::json!({}),
            error_type: "internal_error".into(),
            error_message: None,
            retry_count: 0,
            created_us,
            client_ip: None,
            correlation_id: None,
        };
        svc.store.dlq_add(&entry(now - 40 * day)).unwrap();
        svc.store.dlq_add(&entry(now)).unwrap();
        assert_eq!(svc.retention_pass().unwrap(), (1, 1));
        assert!(svc.store.get("old").unwrap().is_none());
        assert!(svc.store.get("new").unwrap().is_some());
        assert!(!svc.run_dir("old").exists());
        assert!(svc.run_dir("new").exists());
        assert_eq!(
            svc.store.dlq_stats().unwrap(),
            [("internal_error".to_string(), 1)]
        );
    }
}

#[cfg(test)]
mod locate_tests {
    use super::*;

    #[test]
    fn outside_missing_and_inside_are_told_apart_also_through_dangling_links() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::write(root.join("f"), "x").unwrap();
        let link = |name: &str, to: &str| {
            std::os::unix::fs::symlink(to, root.join(name)).unwrap();
            locate(root, &root.join(name))
        };
        assert_eq!(
            locate(root, &root.join("f")),
            Located::Inside(root.canonicalize().unwrap().join("f"))
        );
        assert_eq!(locate(root, &root.join("nothing")), Located::Missing);
        assert_eq!(link("out", "/etc/hostname"), Located::Outside);
        assert_eq!(link("out-dangling", "/nonexistent/x"), Located::Outside);
        assert_eq!(link("up-dangling", "../../nonexistent"), Located::Outside);
        assert_eq!(link("in-dangling", "gone"), Located::Missing);
        assert!(matches!(link("in", "f"), Located::Inside(_)));
    }
}
