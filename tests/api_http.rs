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
    assert_eq!(detail(&r)[0]["loc"], json!(["body", 9]), "Python's offset");
    assert_eq!(detail(&r)[0]["ctx"], json!({"error": "Expecting value"}));
    let r = s.raw(
        "POST",
        "/execute",
        &[],
        Some(("application/json", "{\"code\": \"é".as_bytes())),
    );
    // Python's JSONDecodeError: the string's start, in characters.
    assert_eq!(detail(&r)[0]["loc"], json!(["body", 9]));
    assert_eq!(
        detail(&r)[0]["ctx"],
        json!({"error": "Unterminated string starting at"})
    );
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
    assert_eq!(r.header("connection"), None, "nothing unread: kept alive");
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
    // Answers given before the body was read close the connection and say so: a client
    // must not reuse it (it did, and its next request met a closed socket).
    let r = s.raw("POST", "/execute", &[], Some(("application/json", &big)));
    assert_eq!(r.status, 401, "unauthenticated oversized requests get 401");
    assert_eq!(r.header("connection"), Some("close"));
    let r = s.raw(
        "POST",
        "/execute",
        &[("x-api-key", "key-aaaaaaaaaaaaaaaa")],
        Some(("application/json", &big)),
    );
    assert_eq!(r.status, 413);
    assert_eq!(r.header("connection"), Some("close"));
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

/// Sends raw bytes on a fresh connection and returns the whole response text.
fn raw_tcp(s: &Server, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let addr = s.url.trim_start_matches("http://");
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn every_body_and_query_validation_item_over_http() {
    let s = Server::start("");
    let item = |path: &str, body: Value| {
        let r = s.post(path, &body);
        assert_eq!(r.status, 422, "{path} {body}");
        assert!(r.json().get("correlation_id").is_none());
        detail(&r)[0].clone()
    };
    let long = "x".repeat(100_001);
    let v = item("/execute", json!({ "code": long }));
    assert_eq!(
        (&v["type"], &v["msg"], &v["ctx"]),
        (
            &json!("string_too_long"),
            &json!("String should have at most 100000 characters"),
            &json!({"max_length": 100000})
        )
    );
    let v = item("/execute/async", json!({"code": "x", "startup_timeout": 9}));
    assert_eq!(
        v,
        json!({"type": "greater_than_equal", "loc": ["body", "startup_timeout"], "msg": "Input should be greater than or equal to 10", "input": 9, "ctx": {"ge": 10}})
    );
    let v = item("/execute", json!({"code": "x", "startup_timeout": 601}));
    assert_eq!(v["msg"], "Input should be less than or equal to 600");
    let v = item("/execute", json!({"code": "x", "timeout": 5.5}));
    assert_eq!(
        (&v["type"], &v["loc"]),
        (&json!("int_from_float"), &json!(["body", "timeout"]))
    );
    let v = item("/execute", json!({"code": 5}));
    assert_eq!(
        (&v["type"], &v["msg"]),
        (
            &json!("string_type"),
            &json!("Input should be a valid string")
        )
    );
    let reqs: Vec<String> = (0..51).map(|i| format!("p{i}")).collect();
    let v = item("/execute/async", json!({"code": "x", "requirements": reqs}));
    assert_eq!(
        (&v["type"], &v["loc"], &v["msg"]),
        (
            &json!("too_long"),
            &json!(["body", "requirements"]),
            &json!("List should have at most 50 items after validation, not 51")
        )
    );
    // 400 000 × "é": 800 kB of UTF-8 (under the payload limit), 2.4 MB ASCII-escaped.
    let v = item(
        "/execute",
        json!({"code": "x", "input_data": {"a": "é".repeat(400_000)}}),
    );
    assert_eq!(
        (&v["type"], &v["loc"], &v["msg"]),
        (
            &json!("value_error"),
            &json!(["body", "input_data"]),
            &json!("Value error, input_data exceeds 1MB limit when serialized")
        )
    );
    let v = item(
        "/execute",
        json!({"code": "x", "job_type": "a".repeat(129)}),
    );
    assert_eq!(v["msg"], "String should have at most 128 characters");
    let v = item(
        "/execute/async",
        json!({"code": "x", "idempotency_key": "has space"}),
    );
    assert_eq!(v["msg"], "String should match pattern '^[a-zA-Z0-9_-]+$'");
    // Rerun and fork bodies.
    let v = item("/jobs/x/fork", json!({}));
    assert_eq!(
        v,
        json!({"type": "missing", "loc": ["body", "code"], "msg": "Field required", "input": {}})
    );
    let v = item("/jobs/x/rerun", json!({"input_data": {}}));
    assert_eq!(
        v,
        json!({"type": "extra_forbidden", "loc": ["body", "input_data"], "msg": "Extra inputs are not permitted", "input": {}})
    );
    let v = item("/jobs/x/fork", json!({"code": "x", "timeout": 0}));
    assert_eq!(v["loc"], json!(["body", "timeout"]));
    let r = s.raw("POST", "/jobs/x/fork", &[], None);
    assert_eq!(detail(&r)[0]["loc"], json!(["body"]));
    let r = s.raw("POST", "/execute", &[], Some(("application/json", b"[1]")));
    assert_eq!(
        detail(&r)[0],
        json!({"type": "model_attributes_type", "loc": ["body"], "msg": "Input should be a valid dictionary or object to extract fields from", "input": [1]})
    );
    let r = s.raw(
        "POST",
        "/execute",
        &[],
        Some(("application/vnd.api+json", b"{\"code\": \"\"}")),
    );
    assert_eq!(detail(&r)[0]["type"], "string_too_short", "+json is parsed");
    // Query parameters.
    let q = |path: &str| {
        let r = s.get(path);
        assert_eq!(r.status, 422, "{path}");
        detail(&r)[0].clone()
    };
    assert_eq!(
        q("/jobs/x/result?timeout=300.5"),
        json!({"type": "less_than_equal", "loc": ["query", "timeout"], "msg": "Input should be less than or equal to 300", "input": "300.5", "ctx": {"le": 300.0}})
    );
    assert_eq!(
        q("/jobs/x/result?wait=false&timeout=abc")["type"],
        "float_parsing",
        "validated even without wait"
    );
    assert_eq!(
        q("/executions?offset=-1"),
        json!({"type": "greater_than_equal", "loc": ["query", "offset"], "msg": "Input should be greater than or equal to 0", "input": "-1", "ctx": {"ge": 0}})
    );
    assert_eq!(
        q("/dlq?limit=1001"),
        json!({"type": "less_than_equal", "loc": ["query", "limit"], "msg": "Input should be less than or equal to 1000", "input": "1001", "ctx": {"le": 1000}})
    );
    assert_eq!(
        q("/executions?limit=abc")["msg"],
        "Input should be a valid integer, unable to parse string as an integer"
    );
}

#[test]
fn auth_covers_every_non_exempt_path_and_accepts_non_ascii_keys() {
    let key = "schlüssel-ключ-0123456789";
    let s = Server::start(&format!(
        "api_auth_enabled: true\napi_keys: [\"{key}\", \"second-key-bbbbbbbbbbbb\"]\napi_auth_header: X-Tako-Key\n"
    ));
    for path in ["/", "/nope", "/jobs/x/artifacts/a.txt", "/dlq/stats"] {
        let r = s.raw("GET", path, &[("X-Correlation-ID", "c-auth")], None);
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(
            r.json(),
            json!({"detail": "Missing or invalid API key.", "correlation_id": "c-auth"}),
            "{path}"
        );
        assert_eq!(r.header("x-correlation-id"), Some("c-auth"));
        assert_eq!(r.header("x-frame-options"), Some("DENY"));
    }
    for path in ["/docs", "/redoc", "/docs/oauth2-redirect", "/health"] {
        assert_eq!(s.get(path).status, 200, "{path} is exempt");
    }
    // The configured header (any case); X-API-Key is not it.
    let r = s.raw(
        "GET",
        "/pool/stats",
        &[("x-tako-key", "second-key-bbbbbbbbbbbb")],
        None,
    );
    assert_eq!(r.status, 200);
    let r = s.raw(
        "GET",
        "/pool/stats",
        &[("X-API-Key", "second-key-bbbbbbbbbbbb")],
        None,
    );
    assert_eq!(r.status, 401);
    // A non-Bearer Authorization header is skipped, a later Bearer one decides.
    let resp = raw_tcp(
        &s,
        b"GET /pool/stats HTTP/1.1\r\nHost: x\r\nAuthorization: Basic Zm9v\r\nAuthorization: Bearer second-key-bbbbbbbbbbbb\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    // Keys are compared as UTF-8 bytes: a non-ASCII key authenticates, a wrong one or
    // bytes that are not UTF-8 get 401 (never 500).
    let with_key = |k: &[u8]| {
        let mut req = b"GET /pool/stats HTTP/1.1\r\nHost: x\r\nX-Tako-Key: ".to_vec();
        req.extend_from_slice(k);
        req.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
        raw_tcp(&s, &req)
    };
    let resp = with_key(key.as_bytes());
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let resp = with_key("schlüssel-ключ-0123456780".as_bytes());
    assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");
    let resp = with_key(b"\xff\xfe-not-utf8-0123456789");
    assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");
}

#[test]
fn without_auth_rate_limiting_is_per_client_ip_whatever_the_key() {
    let s = Server::start(
        "api_keys: [\"key-aaaaaaaaaaaaaaaa\"]\napi_rate_limit_requests: 2\napi_rate_limit_window_seconds: 3600\n",
    );
    let with_key = [("x-api-key", "key-aaaaaaaaaaaaaaaa")];
    assert_eq!(s.raw("GET", "/pool/stats", &with_key, None).status, 200);
    assert_eq!(s.raw("GET", "/pool/stats", &with_key, None).status, 200);
    // Authentication is off: the key is not an identity, the client IP is.
    let r = s.get("/pool/stats");
    assert_eq!(r.status, 429, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["detail"], "Rate limit exceeded. Try again later.");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((3590..=3600).contains(&retry), "{retry}");
    assert_eq!(s.get("/health").status, 200, "exempt from the limit");
}

#[test]
fn chunked_bodies_over_the_payload_limit_get_413() {
    let s = Server::start("api_max_payload_bytes: 1024\n");
    let chunk = format!("{:x}\r\n{}\r\n", 800, "x".repeat(800));
    let mut req = b"POST /execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Correlation-ID: c-413\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    req.extend_from_slice(chunk.as_bytes());
    req.extend_from_slice(chunk.as_bytes());
    req.extend_from_slice(b"0\r\n\r\n");
    let resp = raw_tcp(&s, &req);
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(
        resp.ends_with(
            "{\"detail\":\"Payload too large. Maximum allowed size is 1024 bytes.\",\"correlation_id\":\"c-413\"}"
        ),
        "{resp}"
    );
    // On a keep-alive connection the 413, answered before the rest of the body was read,
    // says `Connection: close` and the server closes (EOF, not a hang or a reset).
    {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(s.url.trim_start_matches("http://")).unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(60)))
            .unwrap();
        let keep = String::from_utf8(req.clone())
            .unwrap()
            .replace("Connection: close\r\n", "");
        c.write_all(keep.as_bytes()).unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out)
            .expect("the server closes the connection");
        let resp = String::from_utf8_lossy(&out).to_ascii_lowercase();
        assert!(resp.starts_with("http/1.1 413"), "{resp}");
        assert!(resp.contains("\r\nconnection: close\r\n"), "{resp}");
    }
    // Exactly at the limit is accepted (and then validated).
    let body = format!("{{\"code\": \"{}\"}}", " ".repeat(1024 - 12));
    assert_eq!(body.len(), 1024);
    let r = s.raw(
        "POST",
        "/execute",
        &[],
        Some(("application/json", body.as_bytes())),
    );
    assert_eq!(r.status, 422);
    assert_eq!(detail(&r)[0]["msg"], "Value error, Code cannot be empty");
}

#[test]
fn long_job_types_keys_and_correlation_ids_are_not_500() {
    // 0.3.0 answered 500 for job_type 65–128 chars, idempotency keys of 129–255 chars and
    // correlation ids over 64 chars (§10.4); the schema limits are the only limits here.
    let s = Server::start("");
    let cid = "c".repeat(100);
    let body = json!({"code": "print(1)", "job_type": "j".repeat(128), "idempotency_key": "k".repeat(255)});
    let b = serde_json::to_vec(&body).unwrap();
    let r = s.raw(
        "POST",
        "/execute/async",
        &[("X-Correlation-ID", &cid)],
        Some(("application/json", &b)),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-correlation-id"), Some(cid.as_str()));
    let id = r.json()["job_id"].as_str().unwrap().to_string();
    let rec = s.get(&format!("/executions/{id}?view=full")).json();
    assert_eq!(rec["job_version"], format!("{}@latest", "j".repeat(128)));
    assert_eq!(rec["idempotency_key"], "k".repeat(255));
    let again = s.raw(
        "POST",
        "/execute/async",
        &[("X-Correlation-ID", &cid)],
        Some(("application/json", &b)),
    );
    assert_eq!(again.json()["job_id"], id.as_str(), "idempotency hit");
}

/// A correlation id is used verbatim (§1.1), also with bytes outside ASCII: the response
/// header carries the same bytes, and error bodies carry them as latin-1 characters (what
/// the Starlette server of 0.3.0 does).
#[test]
fn non_ascii_correlation_ids_are_echoed_byte_for_byte() {
    use std::io::{Read, Write};
    let s = Server::start("api_auth_enabled: true\napi_keys: [\"key-aaaaaaaaaaaaaaaa\"]\n");
    let host = s.url.trim_start_matches("http://").to_string();
    let mut c = std::net::TcpStream::connect(&host).unwrap();
    let mut req =
        b"GET /executions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Correlation-ID: caf"
            .to_vec();
    req.extend_from_slice(&[0xc3, 0xa9]);
    req.extend_from_slice(b"\r\n\r\n");
    c.write_all(&req).unwrap();
    let mut resp = Vec::new();
    c.read_to_end(&mut resp).unwrap();
    let mut echoed = b"x-correlation-id: caf".to_vec();
    echoed.extend_from_slice(&[0xc3, 0xa9, b'\r']);
    let lower: Vec<u8> = resp.iter().map(|b| b.to_ascii_lowercase()).collect();
    assert!(
        lower.windows(echoed.len()).any(|w| w == echoed.as_slice()),
        "{}",
        String::from_utf8_lossy(&resp)
    );
    // The 401 body names it as the two latin-1 characters of those bytes.
    let text = String::from_utf8_lossy(&resp);
    assert!(
        text.contains("\"correlation_id\":\"caf\u{c3}\u{a9}\""),
        "{text}"
    );
}
