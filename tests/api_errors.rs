//! The error strings and statuses of spec §1 that need a broken environment to appear: the
//! start-up 503, the middleware 500 (`Internal server error.`), `Submit error: …`,
//! `Execution error: …`, and the 400/404 replay and artifact path errors. Each is provoked
//! for real: a server that is not ready yet, a corrupt row or a dropped table in the
//! server's SQLite database, a run directory that cannot be created, replay and artifact
//! files removed, corrupted or swapped for symlinks leaving the data directory.

mod api_support;
#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use api_support::Server;
use serde_json::{json, Value};

/// A second connection to the server's database (SQLite in WAL mode: safe next to it).
fn db(s: &Server) -> rusqlite::Connection {
    rusqlite::Connection::open(s.dir.join("data/tako_vm.db")).unwrap()
}

/// Asserts a handler error envelope: status, exact detail, the request's correlation id.
fn assert_error(r: &api_support::Resp, status: u16, want: &str) {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json(),
        json!({"detail": want, "correlation_id": "c-err"}),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
}

fn call(s: &Server, method: &str, path: &str, body: Option<Value>) -> api_support::Resp {
    let b = body.map(|b| serde_json::to_vec(&b).unwrap());
    s.raw(
        method,
        path,
        &[("X-Correlation-ID", "c-err")],
        b.as_deref().map(|b| ("application/json", b)),
    )
}

#[test]
fn health_is_503_starting_until_start_up_completes() {
    use tako_vm::api::{app, AppState};
    use tako_vm::config::Config;
    use tako_vm::jobs::{BaseRootfsEnvironments, Registry, Service};
    use tako_vm::store::sqlite::SqliteStore;

    let tmp = tempfile::tempdir().unwrap();
    let cfg = Config {
        data_dir: Some(tmp.path().to_path_buf()),
        ..Config::default()
    };
    let store = SqliteStore::open(&tmp.path().join("t.db")).unwrap();
    let svc = Service::new(
        Arc::new(cfg.clone()),
        Arc::new(store),
        Registry::load_from(&tmp.path().join("none.json"), &cfg),
        Arc::new(BaseRootfsEnvironments::new(None)),
        Err("not needed".into()),
    );
    let state = AppState::new(svc);
    state
        .ready
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = app(state.clone());
    rt.spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
    });
    let agent = ureq::AgentBuilder::new().build();
    let get = |path: &str| match agent.get(&format!("{url}{path}")).call() {
        Err(ureq::Error::Status(code, r)) => (code, r.into_json::<Value>().unwrap()),
        Ok(r) => (r.status(), r.into_json::<Value>().unwrap()),
        Err(e) => panic!("{path}: {e}"),
    };
    assert_eq!(
        get("/health"),
        (
            503,
            json!({"status": "starting", "detail": "Server is not ready yet"})
        )
    );
    let (code, body) = get("/pool/stats");
    assert_eq!(code, 503);
    assert_eq!(body["detail"], "Server is not ready yet");
    state.ready.store(true, std::sync::atomic::Ordering::SeqCst);
    let (code, body) = get("/health");
    assert_eq!(code, 200);
    assert_eq!(body["status"], "degraded", "no sandbox backend");
}

#[test]
fn a_corrupt_record_is_the_middleware_500_on_every_route_reading_it() {
    let s = Server::start("");
    // Created now: a record older than `execution_record_ttl_days` is retention's to drop.
    db(&s)
        .execute(
            "INSERT INTO execution_records(execution_id, status, job_type, created_us, data) VALUES ('broken', 'succeeded', 'default', ?1, '{not json')",
            [tako_vm::store::time::now_us()],
        )
        .unwrap();
    for (method, path, body) in [
        ("GET", "/jobs/broken", None),
        ("GET", "/jobs/broken/result", None),
        ("GET", "/jobs/broken/result?wait=true&timeout=1", None),
        ("GET", "/executions/broken", None),
        ("GET", "/executions", None),
        ("GET", "/jobs/broken/artifacts/a.txt", None),
        ("POST", "/jobs/broken/rerun", Some(json!({}))),
        ("POST", "/jobs/broken/fork", Some(json!({"code": "x"}))),
    ] {
        let r = call(&s, method, path, body);
        assert_error(&r, 500, "Internal server error.");
        assert_eq!(r.header("x-correlation-id"), Some("c-err"), "{path}");
    }
    assert!(
        s.log().contains("corrupt stored record"),
        "the cause is logged, not answered"
    );
}

#[test]
fn a_failing_database_is_a_submit_error() {
    let s = Server::start("");
    db(&s)
        .execute_batch("DROP TABLE execution_records")
        .unwrap();
    let r = call(
        &s,
        "POST",
        "/execute/async",
        Some(json!({"code": "print(1)"})),
    );
    assert_error(
        &r,
        500,
        "Submit error: database error: no such table: execution_records",
    );
    let r = call(
        &s,
        "POST",
        "/execute/async",
        Some(json!({"code": "print(1)", "idempotency_key": "key-12345678"})),
    );
    assert_error(
        &r,
        500,
        "Submit error: database error: no such table: execution_records",
    );
}

#[test]
fn a_sync_run_whose_run_directory_cannot_be_made_is_an_execution_error() {
    let _rootfs = need_rootfs!();
    let s = Server::start("");
    s.block_run_dirs();
    let r = call(&s, "POST", "/execute", Some(json!({"code": "print(1)"})));
    assert_error(
        &r,
        500,
        "Execution error: cannot prepare the run directory: Not a directory (os error 20)",
    );
}

/// Submits a job and waits for its record.
fn run(s: &Server, body: Value) -> (String, Value) {
    let r = s.post("/execute/async", &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["job_id"].as_str().unwrap().to_string();
    let rec = s
        .get(&format!(
            "/jobs/{id}/result?wait=true&timeout=120&view=full"
        ))
        .json();
    (id, rec)
}

/// Moves a file aside for the duration of `f`.
fn without(file: &Path, f: impl FnOnce()) {
    let aside = PathBuf::from(format!("{}.aside", file.display()));
    std::fs::rename(file, &aside).unwrap();
    f();
    std::fs::rename(&aside, file).unwrap();
}

#[test]
fn replay_and_artifact_path_errors() {
    let _rootfs = need_rootfs!();
    let s = Server::start("");
    let (id, rec) = run(
        &s,
        json!({"code": "open('/output/a.txt','w').write('hi')", "input_data": {"n": 1}}),
    );
    assert_eq!(rec["status"], "succeeded", "{rec}");
    let dir = s.dir.join("data/runs").join(&id);
    let fork = format!("/jobs/{id}/fork");
    let rerun = format!("/jobs/{id}/rerun");
    let code_file = dir.join("_code.py");
    let input_file = dir.join("_input.json");
    // Sanity: replay works while everything is in place.
    assert_eq!(call(&s, "POST", &rerun, Some(json!({}))).status, 200);

    without(&code_file, || {
        let r = call(&s, "POST", &rerun, Some(json!({})));
        assert_error(&r, 400, "Original code file not found");
    });
    without(&input_file, || {
        let r = call(&s, "POST", &fork, Some(json!({"code": "print(1)"})));
        assert_error(&r, 400, "Original input file not found");
    });
    without(&input_file, || {
        std::fs::write(&input_file, "{not json").unwrap();
        let r = call(&s, "POST", &rerun, Some(json!({})));
        assert_error(&r, 400, "Failed to retrieve replay data");
        std::fs::remove_file(&input_file).unwrap();
    });
    // A stored file that resolves outside the data directory.
    without(&code_file, || {
        std::os::unix::fs::symlink("/etc/hostname", &code_file).unwrap();
        let r = call(&s, "POST", &rerun, Some(json!({})));
        assert_error(&r, 400, "Invalid artifact path");
        std::fs::remove_file(&code_file).unwrap();
    });
    let art = dir.join("artifacts/a.txt");
    let download = format!("/jobs/{id}/artifacts/a.txt");
    assert_eq!(s.get(&download).body, b"hi");
    without(&art, || {
        std::os::unix::fs::symlink("/etc/hostname", &art).unwrap();
        let r = call(&s, "GET", &download, None);
        assert_error(&r, 400, "Invalid artifact path");
        std::fs::remove_file(&art).unwrap();
        // Outside wins over missing, also for a link to nothing.
        std::os::unix::fs::symlink("/nonexistent/tako-vm-outside", &art).unwrap();
        let r = call(&s, "GET", &download, None);
        assert_error(&r, 400, "Invalid artifact path");
        std::fs::remove_file(&art).unwrap();
        // A file that is simply gone is 404.
        let r = call(&s, "GET", &download, None);
        assert_error(&r, 404, "Artifact file not found");
    });

    // The record no longer lists its replay input (edited in the database).
    let conn = db(&s);
    let data: String = conn
        .query_row(
            "SELECT data FROM execution_records WHERE execution_id = ?1",
            [&id],
            |r| r.get(0),
        )
        .unwrap();
    let mut doc: Value = serde_json::from_str(&data).unwrap();
    let key = doc
        .as_object()
        .unwrap()
        .keys()
        .find(|k| k.contains("input_artifacts"))
        .cloned()
        .expect("input artifacts stored");
    doc[&key]
        .as_array_mut()
        .unwrap()
        .retain(|a| a["name"] != "_input.json");
    conn.execute(
        "UPDATE execution_records SET data = ?1 WHERE execution_id = ?2",
        [doc.to_string(), id.clone()],
    )
    .unwrap();
    let r = call(&s, "POST", &rerun, Some(json!({})));
    assert_error(&r, 400, "Original input not available for replay");
}
