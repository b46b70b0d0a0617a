//! HTTP-level contract of the REST API (spec §1): pipeline, routing, error envelopes,
//! validation items, auth, rate limit, payload limit. None of these needs a sandbox, so
//! they run without root too (runs that would need one are refused before it starts).

mod api_support;

use api_support::Server;
use serde_json::{json, Value};

fn detail(r: &api_support::Resp) -> Value {
    r.json()["detail"].clone()
}

#[test]
fn security_headers_and_correlation_id_on_every_response() {
    let s = Server::start("");
    for (method, path) in [("GET", "/health"), ("GET", "/nope"), ("POST", "/health")] {
        let r = s.raw(method, path, &[("X-Correlation-ID", "cid-123")], None);
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(r.header("x-frame-options"), Some("DENY"));
        assert_eq!(r.header("x-xss-protection"), Some("1; mode=block"));
        assert_eq!(r.header("x-correlation-id"), Some("cid-123"), "{path}");
    }
    let r = s.get("/health");
    let cid = r.header("x-correlation-id").unwrap();
    assert_eq!(cid.len(), 36, "generated uuid4: {cid}");
    let h = r.json();
    let keys: Vec<&str> = h.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "status",
            "docker_available",
            "gvisor_available",
            "circuit_breaker",
            "version",
            "production_mode",
            "queue_stats"
        ]
    );
    assert_eq!(h["version"], "0.3.0");
}

#[test]
fn routing_404_405_307_and_docs() {
    let s = Server::start("");
    let r = s.get("/nope");
    assert_eq!(r.status, 404);
    assert_eq!(r.json(), json!({"detail": "Not Found"}));
    let r = s.raw("DELETE", "/health", &[], None);
    assert_eq!(r.status, 405);
    assert_eq!(r.json(), json!({"detail": "Method Not Allowed"}));
    assert_eq!(r.header("allow"), Some("GET"));
    assert_eq!(s.raw("HEAD", "/health", &[], None).status, 405);
    let r = s.get("/health/");
    assert_eq!(r.status, 307);
    assert!(
        r.header("location").unwrap().ends_with("/health"),
        "{:?}",
        r.headers
    );
    let r = s.get("/");
    assert_eq!(r.status, 307);
    assert_eq!(r.header("location"), Some("/docs"));
    assert!(r.body.is_empty());
    let d = s.get("/docs");
    assert_eq!(d.status, 200);
    assert!(String::from_utf8_lossy(&d.body).contains("/openapi.json"));
    let o = s.get("/openapi.json").json();
    assert_eq!(o["info"]["title"], "Tako VM - Secure Code Executor API");
    assert!(o["paths"]["/execute/async"]["post"].is_object());
    assert!(o["paths"]["/dlq/{entry_id}"]["delete"].is_object());
}

#[test]
fn validation_items_are_pydantic_exact() {
    let s = Server::start("");
    let r = s.post("/execute", &json!({}));
    assert_eq!(r.status, 422);
    assert_eq!(
        r.json(),
        json!({"detail": [{"type": "missing", "loc": ["body", "code"], "msg": "Field required", "input": {}}]})
    );
    assert!(r.json().get("correlation_id").is_none());
    let r = s.post("/execute", &json!({"code": "   "}));
    assert_eq!(detail(&r)[0]["msg"], "Value error, Code cannot be empty");
    let r = s.post("/execute/async", &json!({"code": "x", "timeout": 86401}));
    assert_eq!(
        detail(&r)[0],
        json!({"type": "less_than_equal", "loc": ["body", "timeout"], "msg": "Input should be less than or equal to 86400", "input": 86401, "ctx": {"le": 86400}})
    );
    let r = s.post("/execute", &json!({"code": "x", "job_type": "bad type"}));
    assert_eq!(detail(&r)[0]["type"], "string_pattern_mismatch");
    let r = s.post(
        "/execute",
        &json!({"code": "x", "idempotency_key": "short"}),
    );
    assert_eq!(detail(&r)[0]["ctx"], json!({"min_length": 8}));
    let r = s.post("/execute", &json!({"code": "x", "input_data": [1]}));
    assert_eq!(detail(&r)[0]["msg"], "Input should be a valid dictionary");
    let r = s.post("/execute", &json!({"code": "x", "surprise": 1}));
    assert_eq!(detail(&r)[0]["msg"], "Extra inputs are not permitted");
    let r = s.raw(
        "POST",
        "/execute",
        &[],
        Some(("application/x-www-form-urlencoded", b"code=x")),
    );
    assert_eq!(detail(&r)[0]["type"], "model_attributes_type");
    let r = s.raw(
        "POST",
        "/execute",
        &[],
        Some(("application/json", b"{\"code\": ")),
    );
    assert_eq!(detail(&r)[0]["type"], "json_invalid");
    assert_eq!(detail(&r)[0]["msg"], "JSON decode error");
    let r = s.raw("POST", "/jobs/x/rerun", &[], None);
    assert_eq!(
        r.json(),
        json!({"detail": [{"type": "missing", "loc": ["body"], "msg": "Field required", "input": null}]})
    );
    let r = s.get("/jobs/x/result?wait=foo");
    assert_eq!(detail(&r)[0]["type"], "bool_parsing");
    assert_eq!(detail(&r)[0]["loc"], json!(["query", "wait"]));
    assert_eq!(s.get("/jobs/x/result?timeout=0.5").status, 422);
    let r = s.get("/executions?limit=0");
    assert_eq!(detail(&r)[0]["loc"], json!(["query", "limit"]));
    let r = s.raw("DELETE", "/dlq/abc", &[], None);
    assert_eq!(detail(&r)[0]["type"], "int_parsing");
    assert_eq!(detail(&r)[0]["loc"], json!(["path", "entry_id"]));
}

#[test]
fn not_found_strings_and_timeout_ceiling() {
    let s = Server::start("max_timeout: 100\n");
    let cases: [(&str, &str, Option<Value>, &str); 9] = [
        ("GET", "/jobs/nope", None, "Job not found"),
        ("GET", "/jobs/nope/result", None, "Job not found"),
        (
            "POST",
            "/jobs/nope/cancel",
            None,
            "Job not found or already completed",
        ),
        ("POST", "/jobs/nope/rerun", Some(json!({})), "Job not found"),
        (
            "POST",
            "/jobs/nope/fork",
            Some(json!({"code": "x"})),
            "Job not found",
        ),
        ("GET", "/jobs/nope/artifacts/a.txt", None, "Job not found"),
        ("GET", "/executions/nope", None, "Execution not found"),
        ("GET", "/job-types/nope", None, "Job type 'nope' not found"),
        ("DELETE", "/dlq/12345", None, "DLQ entry not found"),
    ];
    for (m, p, body, want) in cases {
        let b = body.map(|b| serde_json::to_vec(&b).unwrap());
        let r = s.raw(
            m,
            p,
            &[("X-Correlation-ID", "c1")],
            b.as_deref().map(|b| ("application/json", b)),
        );
        assert_eq!(r.status, 404, "{m} {p}");
        assert_eq!(
            r.json(),
            json!({"detail": want, "correlation_id": "c1"}),
            "{m} {p}"
        );
    }
    let r = s.post("/job-types/nope/build", &json!({}));
    assert_eq!(detail(&r), "Job type 'nope' not found");
    let r = s.get("/job-types/10.1.2.3");
    assert_eq!(detail(&r), "Job type '10.***.***' not found", "sanitised");
    let r = s.post("/execute", &json!({"code": "x", "timeout": 101}));
    assert_eq!(r.status, 422);
    assert_eq!(
        detail(&r),
        "timeout must be less than or equal to the configured max_timeout (100 seconds)"
    );
    let r = s.post(
        "/execute/async",
        &json!({"code": "x", "job_type": "ml-inference@v2"}),
    );
    assert_eq!(
        detail(&r),
        "effective timeout must be less than or equal to the configured max_timeout (100 seconds)"
    );
    let r = s.post("/jobs/nope/rerun", &json!({"timeout": 101}));
    assert_eq!(r.status, 422);
}

#[test]
fn auth_rate_limit_and_payload_limit() {
    let s = Server::start(
        "api_auth_enabled: true\napi_keys: [\"key-aaaaaaaaaaaaaaaa\"]\napi_rate_limit_requests: 4\napi_max_payload_bytes: 1024\n",
    );
    assert_eq!(s.get("/health").status, 200, "exempt");
    assert_eq!(s.get("/openapi.json").status, 200, "exempt");
    let r = s.get("/job-types");
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["detail"], "Missing or invalid API key.");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let r = s.raw(
        "GET",
        "/job-types",
        &[("x-api-key", "key-aaaaaaaaaaaaaaaa")],
        None,
    );
    assert_eq!(r.status, 200);
    let r = s.raw(
        "GET",
        "/pool/stats",
        &[("Authorization", "bearer key-aaaaaaaaaaaaaaaa")],
        None,
    );
    assert_eq!(r.status, 200);
    let big = vec![b'x'; 2000];
    let r = s.raw("POST", "/execute", &[], Some(("application/json", &big)));
    assert_eq!(r.status, 401, "unauthenticated oversized requests get 401");
    let r = s.raw(
        "POST",
        "/execute",
        &[("x-api-key", "key-aaaaaaaaaaaaaaaa")],
        Some(("application/json", &big)),
    );
    assert_eq!(r.status, 413);
    assert_eq!(
        r.json()["detail"],
        "Payload too large. Maximum allowed size is 1024 bytes."
    );
    // The key identity used 3 requests; one more is allowed, then 429.
    let ok = s.raw(
        "GET",
        "/dlq/stats",
        &[("x-api-key", "key-aaaaaaaaaaaaaaaa")],
        None,
    );
    assert_eq!(ok.status, 200);
    let r = s.raw(
        "GET",
        "/dlq/stats",
        &[("x-api-key", "key-aaaaaaaaaaaaaaaa")],
        None,
    );
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["detail"], "Rate limit exceeded. Try again later.");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    // Failed-auth requests are metered per IP before the 401 decision.
    let mut statuses = vec![];
    for _ in 0..4 {
        statuses.push(s.get("/dlq").status);
    }
    assert_eq!(statuses[..2], [401, 401]);
    assert_eq!(*statuses.last().unwrap(), 429, "{statuses:?}");
}

#[test]
fn refusals_before_any_sandbox_and_idempotency() {
    let s = Server::start("");
    // Per-request requirements without allow_runtime_requirements: the 0.3.0 refusal,
    // before any build or sandbox.
    let r = s.post(
        "/execute",
        &json!({"code": "print(1)", "job_type": "data-processing", "requirements": ["six"]}),
    );
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["success"], false);
    assert_eq!(v["exit_code"], -1);
    assert_eq!(
        v["error"],
        "Runtime dependency installation is disabled. Use pre-built images or set allow_runtime_requirements=True."
    );
    assert_eq!(v["job_type"], "data-processing");
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "success",
            "output",
            "execution_time",
            "stdout",
            "stderr",
            "exit_code",
            "error",
            "job_type",
            "execution_id",
            "runtime"
        ]
    );
    let rec = s
        .get(&format!(
            "/executions/{}",
            v["execution_id"].as_str().unwrap()
        ))
        .json();
    assert_eq!(rec["error"]["type"], "runtime_error");
    assert_eq!(rec["job_version"], "data-processing@latest");

    let body = json!({"code": "print(1)", "job_type": "data-processing", "requirements": ["six"], "idempotency_key": "key-000001"});
    let a = s.post("/execute/async", &body).json();
    let b = s.post("/execute/async", &body).json();
    assert_eq!(a["job_id"], b["job_id"]);
    let mut other = body.clone();
    other["code"] = json!("print(2)");
    let r = s.post("/execute/async", &other);
    assert_eq!(r.status, 409);
    assert_eq!(detail(&r), "Idempotency key reused with different payload");
}

#[test]
fn production_mode_refuses_unknown_and_unbuilt_job_types() {
    let s = Server::start("production_mode: true\n");
    let v = s
        .post(
            "/execute",
            &json!({"code": "print(1)", "job_type": "nope@v1"}),
        )
        .json();
    assert_eq!(v["success"], false);
    assert_eq!(v["error"], "Job type 'nope@v1' not found (production mode)");
    assert_eq!(v["job_type"], "nope@v1");
    assert_eq!(v["exit_code"], Value::Null);
    let v = s
        .post(
            "/execute",
            &json!({"code": "print(1)", "job_type": "ml-inference"}),
        )
        .json();
    assert_eq!(
        v["error"],
        "job type 'ml-inference' has no built snapshot: run 'tako-vm build ml-inference' or POST /job-types/ml-inference/build"
    );
    assert_eq!(s.get("/health").json()["production_mode"], true);
}

#[test]
fn job_types_registry_and_stats() {
    let s = Server::start(
        "job_types:\n  - name: api-client\n    requirements: [requests]\n    memory_limit: 256m\n    network_enabled: true\n",
    );
    let list = s.get("/job-types").json();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["default", "data-processing", "ml-inference", "api-client"]
    );
    let jt = s.get("/job-types/default").json();
    let keys: Vec<&str> = jt
        .as_object()
        .unwrap()
        .keys()
        .take(10)
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "name",
            "requirements",
            "python_version",
            "memory_limit",
            "cpu_limit",
            "timeout",
            "session_enabled",
            "gpu_enabled",
            "gpu_vendor",
            "image_exists"
        ]
    );
    assert_eq!(serde_json::to_string(&jt["cpu_limit"]).unwrap(), "1.0");
    assert_eq!(
        s.get("/job-types/api-client").json()["network_enabled"],
        true
    );
    assert_eq!(
        s.get("/job-types/data-processing").json()["image_exists"],
        false
    );
    let r = s.post("/job-types/data-processing/build", &json!({}));
    assert_eq!(r.status, 500);
    assert!(detail(&r).as_str().unwrap().starts_with("Build failed: "));
    assert_eq!(
        s.get("/dlq/stats").json(),
        json!({"total": 0, "by_error_type": {}})
    );
    let p = s.get("/dlq?limit=5").json();
    assert_eq!(
        p,
        json!({"items": [], "limit": 5, "offset": 0, "has_more": false, "count": 0})
    );
    let p = s.get("/pool/stats").json();
    assert_eq!(
        p,
        json!({"pending": 0, "running": 0, "max_workers": 4, "max_queue_size": 100})
    );
}
