//! Executions through the REST API with real sandboxes (root + the rootfs fixture):
//! sync and async runs, queue limits, waiting, cancel, rerun/fork, artifacts, the DLQ.

mod api_support;
#[macro_use]
mod common;

use api_support::Server;
use serde_json::{json, Value};

fn submit(s: &Server, body: Value) -> String {
    let r = s.post("/execute/async", &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["job_id"].as_str().unwrap().to_string()
}

fn result(s: &Server, id: &str) -> Value {
    let r = s.get(&format!(
        "/jobs/{id}/result?wait=true&timeout=120&view=full"
    ));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

#[test]
fn sync_execute_runs_and_classifies() {
    let _rootfs = need_rootfs!();
    let s = Server::start("");
    let v = s
        .post(
            "/execute",
            &json!({"code": "import json\nd=json.load(open('/input/data.json'))\nprint(d['n'])\njson.dump({'sq': d['n']**2}, open('/output/result.json','w'))", "input_data": {"n": 7}}),
        )
        .json();
    assert_eq!(v["success"], true, "{v}");
    assert_eq!(v["output"], json!({"sq": 49}));
    assert_eq!(v["stdout"], "7\n");
    assert!(v["execution_id"].as_str().unwrap().starts_with("api-"));
    let v = s
        .post("/execute", &json!({"code": "raise ValueError('bad')"}))
        .json();
    assert_eq!(v["success"], false);
    assert_eq!(v["exit_code"], 1);
    let rec = s
        .get(&format!(
            "/executions/{}",
            v["execution_id"].as_str().unwrap()
        ))
        .json();
    assert_eq!(rec["error"]["type"], "value_error");
    let v = s
        .post(
            "/execute",
            &json!({"code": "import time\ntime.sleep(30)", "timeout": 1}),
        )
        .json();
    let rec = s
        .get(&format!(
            "/executions/{}",
            v["execution_id"].as_str().unwrap()
        ))
        .json();
    assert_eq!(rec["status"], "timeout", "{rec}");
    assert_eq!(rec["error"]["type"], "execution_timeout");
}

#[test]
fn queue_full_pending_positions_cancel_and_wait_timeout() {
    let _rootfs = need_rootfs!();
    let s = Server::start("max_workers: 1\nmax_queue_size: 2\n");
    let sleeper = json!({"code": "import time\ntime.sleep(600)"});
    let running = submit(&s, sleeper.clone());
    let st = s.poll(&format!("/jobs/{running}"), |v| v["status"] == "running");
    assert_eq!(st["status"], "running");
    let q1 = submit(&s, sleeper.clone());
    let q2 = submit(&s, json!({"code": "print('second')"}));
    let st = s.get(&format!("/jobs/{q2}")).json();
    assert_eq!(st["status"], "pending");
    assert_eq!(st["queue_position"], 2);
    // The stored record says queued.
    assert_eq!(
        s.get(&format!("/jobs/{q2}/result")).json()["status"],
        "queued"
    );
    let r = s.post("/execute/async", &json!({"code": "print(3)"}));
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["detail"], "Job queue is full, try again later");
    let failed = s.get("/executions?status=failed").json();
    assert_eq!(failed["items"][0]["error"]["type"], "service_unavailable");
    // A long poll that times out leaves the job alone.
    let r = s.get(&format!("/jobs/{running}/result?wait=true&timeout=1"));
    assert_eq!(r.status, 408, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["detail"], "Timeout waiting for job");
    // Cancel a pending job: gone from the queue at once.
    assert_eq!(
        s.post(&format!("/jobs/{q1}/cancel"), &json!(null)).status,
        200
    );
    assert_eq!(s.get(&format!("/jobs/{q2}")).json()["queue_position"], 1);
    let r = s.post(&format!("/jobs/{q1}/cancel"), &json!(null));
    assert_eq!(r.status, 404, "cancelled twice");
    // Rerun of an unfinished job, fork of a job that never ran.
    let r = s.post(&format!("/jobs/{running}/rerun"), &json!({}));
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["detail"], "Cannot rerun job that hasn't completed");
    let r = s.post(&format!("/jobs/{q2}/fork"), &json!({"code": "print(1)"}));
    assert_eq!(r.json()["detail"], "Original code not available for replay");
    // Cancel the running job: its sandbox is killed and the queue moves on.
    let r = s.post(&format!("/jobs/{running}/cancel"), &json!(null));
    assert_eq!(r.json(), json!({"status": "cancelled", "job_id": running}));
    let rec = result(&s, &running);
    assert_eq!(rec["status"], "cancelled");
    assert_eq!(rec["error"]["message"], "Execution was cancelled by user");
    let rec = result(&s, &q2);
    assert_eq!(rec["status"], "succeeded", "{rec}");
    assert_eq!(rec["stdout"], "second\n");
    let p = s.poll("/pool/stats", |v| v["running"] == 0);
    assert_eq!(p["running"], 0);
}

#[test]
fn rerun_keeps_timeout_and_fork_changes_code() {
    let _rootfs = need_rootfs!();
    let s = Server::start("");
    let parent = submit(
        &s,
        json!({"code": "import time, json\nd=json.load(open('/input/data.json'))\ntime.sleep(d['s'])\nprint('slept')", "input_data": {"s": 5}, "timeout": 1}),
    );
    assert_eq!(result(&s, &parent)["status"], "timeout");
    let child = s.post(&format!("/jobs/{parent}/rerun"), &json!({})).json();
    let rec = result(&s, child["job_id"].as_str().unwrap());
    assert_eq!(rec["status"], "timeout", "the rerun kept timeout=1: {rec}");
    assert_eq!(rec["relationship"], "rerun");
    assert_eq!(rec["parent_execution_id"], parent.as_str());
    let longer = s
        .post(&format!("/jobs/{parent}/rerun"), &json!({"timeout": 30}))
        .json();
    assert_eq!(
        result(&s, longer["job_id"].as_str().unwrap())["status"],
        "succeeded"
    );
    let fork = s
        .post(
            &format!("/jobs/{parent}/fork"),
            &json!({"code": "import json\nprint(json.load(open('/input/data.json'))['s'] * 2)"}),
        )
        .json();
    let rec = result(&s, fork["job_id"].as_str().unwrap());
    assert_eq!(rec["stdout"], "10\n");
    assert_eq!(rec["relationship"], "fork");
    assert_eq!(rec["input_hash"], result(&s, &parent)["input_hash"]);
}

#[test]
fn artifacts_download_head_range_and_errors() {
    let _rootfs = need_rootfs!();
    let s = Server::start("");
    let id = submit(
        &s,
        json!({"code": "open('/output/data.bin','wb').write(bytes(range(256)))\nopen('/output/.hidden','w').write('x')"}),
    );
    let rec = result(&s, &id);
    assert_eq!(rec["status"], "succeeded");
    let art = rec["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "data.bin")
        .cloned()
        .expect("artifact listed");
    assert_eq!(
        rec["artifacts"].as_array().unwrap().len(),
        1,
        "hidden files are skipped"
    );
    let r = s.get(&format!("/jobs/{id}/artifacts/data.bin"));
    assert_eq!(r.status, 200);
    assert_eq!(r.body, (0..=255u8).collect::<Vec<_>>());
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    let etag = format!("\"{}\"", art["sha256"].as_str().unwrap());
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert_eq!(
        r.header("content-disposition"),
        Some("attachment; filename=\"data.bin\"")
    );
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    let h = s.raw("HEAD", &format!("/jobs/{id}/artifacts/data.bin"), &[], None);
    assert_eq!(h.status, 200);
    assert_eq!(h.header("content-length"), Some("256"));
    let r = s.raw(
        "GET",
        &format!("/jobs/{id}/artifacts/data.bin"),
        &[("Range", "bytes=10-13")],
        None,
    );
    assert_eq!(r.status, 206);
    assert_eq!(r.body, [10, 11, 12, 13]);
    assert_eq!(r.header("content-range"), Some("bytes 10-13/256"));
    let r = s.get(&format!("/jobs/{id}/artifacts/_code.py"));
    assert_eq!(r.json()["detail"], "Artifact not found");
    std::fs::remove_file(s.dir.join("data/runs").join(&id).join("artifacts/data.bin")).unwrap();
    let r = s.get(&format!("/jobs/{id}/artifacts/data.bin"));
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["detail"], "Artifact file not found");
}

#[test]
fn worker_failures_go_to_the_dead_letter_queue() {
    let _rootfs = need_rootfs!();
    let s = Server::start("");
    s.block_run_dirs();
    let id = submit(
        &s,
        json!({"code": "print(1)", "timeout": 5, "idempotency_key": "dlq-key-1"}),
    );
    let rec = result(&s, &id);
    assert_eq!(rec["status"], "failed");
    assert_eq!(rec["error"]["type"], "internal_error");
    assert_eq!(
        s.get("/dlq/stats").json(),
        json!({"total": 1, "by_error_type": {"internal_error": 1}})
    );
    let page = s.get("/dlq?error_type=internal_error").json();
    let e = &page["items"][0];
    assert_eq!(e["job_id"], id.as_str());
    assert_eq!(e["retry_count"], 0);
    assert!(e["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(e["job_data"]["has_idempotency_key"], true);
    assert_eq!(e["job_data"]["timeout"], 5);
    assert!(e["job_data"].get("code").is_none(), "never raw code");
    let eid = e["id"].as_i64().unwrap();
    let r = s.raw("DELETE", &format!("/dlq/{eid}"), &[], None);
    assert_eq!(r.json(), json!({"status": "removed", "entry_id": eid}));
    assert_eq!(s.get("/dlq/stats").json()["total"], 0);
}

/// A server whose network-enabled job type `flaky` cannot get its sandbox started: its
/// allowed host never resolves (`.invalid`, RFC 6761), and a sandbox whose egress filter
/// cannot be built is refused (fail closed) — a real infrastructure failure of the sandbox
/// start, before any user code runs. The image store is unusable, so job types run on the
/// base rootfs (no snapshot build is attempted).
fn flaky_server(extra: &str) -> Server {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("blocker"), "a file, not a directory").unwrap();
    let s = Server::start(&format!(
        "image_store: {}\njob_types:\n  - name: flaky\n    network_enabled: true\n    allowed_hosts: [tako-vm-test.invalid]\n{extra}",
        tmp.path().join("blocker/images").display()
    ));
    // The server keeps its own temp dir; this one only held the blocker file.
    drop(tmp);
    s
}

fn breaker(s: &Server) -> Value {
    s.get("/health").json()["circuit_breaker"].clone()
}

#[test]
fn infrastructure_failures_are_retried_with_back_off_and_open_the_breaker() {
    let _rootfs = need_rootfs!();
    let s = flaky_server("max_retry_attempts: 3\nretry_base_delay: 0.5\n");
    let id = submit(
        &s,
        json!({"code": "print('never runs')", "job_type": "flaky", "idempotency_key": "flaky-0001"}),
    );
    let rec = result(&s, &id);
    assert_eq!(rec["status"], "failed", "{rec}");
    assert_eq!(rec["error"]["type"], "service_unavailable", "{rec}");
    let msg = rec["error"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with("sandbox unavailable: ") && msg.contains("tako-vm-test.invalid"),
        "{msg}"
    );
    assert_eq!(rec["exit_code"], -1);
    assert_eq!(rec["stdout"], "");
    // Three attempts, each one a breaker failure; back-off 0.5 s then 1 s (±10 %).
    assert_eq!(breaker(&s)["failure_count"], 3);
    let ms = rec["duration_ms"].as_u64().unwrap();
    assert!(ms >= 1350, "back-off between attempts: {ms} ms");
    // A sanity bound, not a speed claim: each attempt resolves the allowed host, which
    // takes seconds on a host with a slow resolver.
    assert!(ms < 60_000, "{ms} ms");
    // Retries exhausted on infrastructure: a failed record, no DLQ entry (§4.10: the DLQ
    // is for jobs whose worker itself failed, not for failed executions).
    assert_eq!(s.get("/dlq/stats").json()["total"], 0);
    // A sync run is retried too; its 2nd failure is the 5th in a row, which opens the
    // breaker, so its 3rd attempt is refused at once.
    let open = "Sandbox service unavailable (circuit breaker open)";
    let v = s
        .post(
            "/execute",
            &json!({"code": "print(1)", "job_type": "flaky"}),
        )
        .json();
    assert_eq!(
        (&v["success"], &v["exit_code"]),
        (&json!(false), &json!(-1))
    );
    assert_eq!(v["error"], open);
    let b = breaker(&s);
    assert_eq!(
        (&b["state"], &b["failure_count"]),
        (&json!("open"), &json!(5))
    );
    assert_eq!(s.get("/dlq/stats").json()["total"], 0);
    assert_eq!(s.get("/health").json()["status"], "degraded");
    // While open, every run is refused, also on a healthy job type.
    let v = s.post("/execute", &json!({"code": "print(1)"})).json();
    assert_eq!(v["error"], open);
}

#[test]
fn a_runs_own_output_is_never_an_infrastructure_failure() {
    let _rootfs = need_rootfs!();
    let s = Server::start("max_retry_attempts: 3\nretry_base_delay: 0.1\n");
    // stderr mentioning the breaker classifies as service_unavailable (§2.6) but the run
    // happened: no retry (the code would run again), no breaker failure, no DLQ entry.
    let id = submit(
        &s,
        json!({"code": "import sys\nprint('ran')\nsys.stderr.write('circuit breaker')\nsys.exit(3)"}),
    );
    let rec = result(&s, &id);
    assert_eq!(rec["exit_code"], 3);
    assert_eq!(rec["stdout"], "ran\n");
    assert_eq!(rec["error"]["type"], "service_unavailable");
    let b = breaker(&s);
    assert_eq!(
        (&b["failure_count"], &b["state"]),
        (&json!(0), &json!("closed")),
        "{b}"
    );
    assert_eq!(s.get("/dlq/stats").json()["total"], 0);
}

#[test]
fn the_watchdog_times_out_a_run_that_overruns_its_budget() {
    let _rootfs = need_rootfs!();
    // Back-offs of 30 s (the cap, ±10 %) between four failing attempts: the run (retries
    // included) cannot finish within startup 10 + timeout 1 + 60 = 71 s.
    let s = flaky_server("max_retry_attempts: 4\nretry_base_delay: 30\nmax_workers: 1\n");
    let t0 = std::time::Instant::now();
    let id = submit(
        &s,
        json!({"code": "print(1)", "job_type": "flaky", "timeout": 1, "startup_timeout": 10}),
    );
    let rec = result(&s, &id);
    let took = t0.elapsed().as_secs_f64();
    assert_eq!(rec["status"], "timeout", "{rec}");
    assert_eq!(
        rec["error"],
        json!({"type": "execution_timeout", "message": "Execution exceeded the watchdog budget of 71s (startup + execution + orchestration buffer); container was killed", "phase": null})
    );
    assert!((70.0..90.0).contains(&took), "{took} s");
    assert!(rec["started_at"].is_string() && rec["ended_at"].is_string());
    assert!(rec["duration_ms"].as_u64().unwrap() >= 70_000, "{rec}");
    assert_eq!(
        breaker(&s)["failure_count"],
        3,
        "attempts at ~0, ~30 and ~60 s, none after the watchdog"
    );
    // The overrun run was stopped (its back-off ended), freeing the worker; its own
    // outcome was dropped: no DLQ entry, the record stays a timeout.
    let p = s.poll("/pool/stats", |v| v["running"] == 0);
    assert_eq!(p["running"], 0);
    let v = s.post("/execute", &json!({"code": "print(2)"})).json();
    assert_eq!(v["stdout"], "2\n", "{v}");
    assert_eq!(s.get("/dlq/stats").json()["total"], 0);
    assert_eq!(
        s.get(&format!("/executions/{id}")).json()["status"],
        "timeout"
    );
}

#[test]
fn cancel_during_the_back_off_stops_the_retries_without_dead_lettering() {
    let _rootfs = need_rootfs!();
    let s = flaky_server("max_retry_attempts: 5\nretry_base_delay: 30\n");
    let id = submit(&s, json!({"code": "print(1)", "job_type": "flaky"}));
    // The first attempt failed; the job now waits ~30 s before the next one.
    let b = s.poll("/health", |v| v["circuit_breaker"]["failure_count"] == 1);
    assert_eq!(b["circuit_breaker"]["failure_count"], 1);
    assert_eq!(s.get(&format!("/jobs/{id}")).json()["status"], "running");
    let r = s.post(&format!("/jobs/{id}/cancel"), &json!(null));
    assert_eq!(r.json(), json!({"status": "cancelled", "job_id": id}));
    let t0 = std::time::Instant::now();
    let p = s.poll("/pool/stats", |v| v["running"] == 0);
    assert_eq!(p["running"], 0);
    // The back-off is 27-33 s: ending well before it means the cancel interrupted it
    // (a bound with room for a loaded machine, not a speed claim).
    assert!(t0.elapsed().as_secs() < 20, "the back-off was interrupted");
    let rec = result(&s, &id);
    assert_eq!(rec["status"], "cancelled");
    assert_eq!(rec["error"]["message"], "Execution was cancelled by user");
    assert_eq!(
        breaker(&s)["failure_count"],
        1,
        "no attempt after the cancel"
    );
    assert_eq!(s.get("/dlq/stats").json()["total"], 0);
}

#[test]
fn a_full_queue_is_503_for_rerun_and_fork_and_releases_idempotency_keys() {
    let _rootfs = need_rootfs!();
    let s = Server::start("max_workers: 1\nmax_queue_size: 1\n");
    let parent = submit(&s, json!({"code": "print('p')"}));
    assert_eq!(result(&s, &parent)["status"], "succeeded");
    let sleeper = submit(&s, json!({"code": "import time\ntime.sleep(600)"}));
    s.poll(&format!("/jobs/{sleeper}"), |v| v["status"] == "running");
    let queued = submit(&s, json!({"code": "print('q')"}));
    let full = |r: api_support::Resp| {
        assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(
            r.json(),
            json!({"detail": "Job queue is full, try again later", "correlation_id": "c-full"})
        );
    };
    let send = |path: &str, body: &Value| {
        let b = serde_json::to_vec(body).unwrap();
        s.raw(
            "POST",
            path,
            &[("X-Correlation-ID", "c-full")],
            Some(("application/json", &b)),
        )
    };
    // 0.3.0 answered 500 for rerun/fork here (§10.9).
    full(send(&format!("/jobs/{parent}/rerun"), &json!({})));
    full(send(
        &format!("/jobs/{parent}/fork"),
        &json!({"code": "print(2)"}),
    ));
    let keyed = json!({"code": "print('k')", "idempotency_key": "full-queue-key"});
    full(send("/execute/async", &keyed));
    let failed = s.get("/executions?status=failed&view=full").json();
    assert_eq!(failed["count"], 3, "{failed}");
    for rec in failed["items"].as_array().unwrap() {
        assert_eq!(rec["error"]["type"], "service_unavailable");
        assert_eq!(rec["idempotency_key"], Value::Null, "key released");
    }
    // Once there is room, the same key and payload make a new job (0.3.0 returned the
    // failed one, §10.2).
    s.post(&format!("/jobs/{sleeper}/cancel"), &json!(null));
    assert_eq!(result(&s, &queued)["status"], "succeeded");
    let r = s.post("/execute/async", &keyed);
    assert_eq!(r.status, 200);
    let id = r.json()["job_id"].as_str().unwrap().to_string();
    assert_eq!(r.json()["status"], "queued");
    assert!(failed["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["execution_id"] != id.as_str()));
    assert_eq!(result(&s, &id)["stdout"], "k\n");
}
