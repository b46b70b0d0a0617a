//! Job types served from snapshots through the REST API (root): a real server, a real
//! registry process (scripts/registry on the image fixture) as the docker.io mirror, and uv
//! installing from PyPI in builder sandboxes. `data-processing` (pandas, numpy) is built
//! once per run of this binary; the other tests share a store whose base image was pulled
//! by `tako-vm pull` from the same registry, and install only small packages.

mod api_support;
#[macro_use]
mod common;
mod image_support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use api_support::Server;
use image_support::RegistryProc;
use serde_json::{json, Value};

/// Root, the rootfs and the image fixtures, or skip (a failure with TAKO_TEST_REQUIRE=1).
fn fixture() -> Option<PathBuf> {
    common::rootfs()?;
    image_support::fixture()
}

/// The store shared by this binary's tests: `python:3.11-slim` pulled once by the CLI
/// (`tako-vm pull`, reading `image_store` and `registry_mirror` from its `--config`). Stores
/// of earlier runs whose process is gone are removed first.
fn shared_store(fixture: &Path) -> &'static Path {
    static STORE: OnceLock<PathBuf> = OnceLock::new();
    STORE.get_or_init(|| {
        // Under /var/tmp, not the checkout: sandboxes mount snapshots from this store as an
        // unprivileged host uid, which must be able to traverse every parent directory.
        let base = Path::new("/var/tmp");
        for e in std::fs::read_dir(base).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(pid) = name.strip_prefix("job-types-store-") {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = base.join(format!("job-types-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        common::remove_at_exit(dir.clone());
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let reg = RegistryProc::start(fixture, "none", None);
        let cfg = dir.join("cli.yaml");
        std::fs::write(
            &cfg,
            format!(
                "image_store: {}\nregistry_mirror: {}\n",
                dir.join("store").display(),
                reg.host
            ),
        )
        .unwrap();
        let out = std::process::Command::new(common::bin())
            .arg("--config")
            .arg(&cfg)
            .args(["pull", "python:3.11-slim"])
            .env_remove("TAKO_VM_IMAGE_STORE")
            .env_remove("TAKO_VM_REGISTRY_MIRROR")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tako-vm pull: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir.join("store")
    })
}

/// `extra` YAML for a server on the shared store (no registry: pulls would fail).
fn on_shared_store(fixture: &Path, extra: &str) -> Server {
    let store = shared_store(fixture);
    Server::start(&format!("image_store: {}\n{extra}", store.display()))
}

fn execute(s: &Server, body: Value) -> Value {
    let r = s.post("/execute", &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

fn record(s: &Server, v: &Value) -> Value {
    s.get(&format!(
        "/executions/{}",
        v["execution_id"].as_str().unwrap()
    ))
    .json()
}

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn build_data_processing_over_http_then_the_doc_example() {
    let Some(fixture) = fixture() else { return };
    let reg = RegistryProc::start(&fixture, "token", None);
    let store = tempfile::tempdir().unwrap();
    // A fresh store: the server pulls python:3.11-slim through its registry_mirror.
    let s = Server::start(&format!(
        "image_store: {}\nregistry_mirror: {}\n",
        store.path().display(),
        reg.host
    ));
    let jt = s.get("/job-types/data-processing").json();
    assert_eq!(jt["image_exists"], false);

    // The build runs on the blocking pool: the server keeps answering meanwhile.
    let url = s.url.clone();
    let build = std::thread::spawn(move || {
        let r = ureq::post(&format!("{url}/job-types/data-processing/build"))
            .timeout(Duration::from_secs(900))
            .call();
        match r {
            Ok(r) => (r.status(), r.into_json::<Value>().unwrap()),
            Err(ureq::Error::Status(c, r)) => (c, r.into_json::<Value>().unwrap()),
            Err(e) => panic!("{e}"),
        }
    });
    // Health answers that came back while the build was still going. A server blocked by
    // the build would answer at most one (the one waiting when the build ends).
    let mut during = 0;
    while !build.is_finished() {
        assert_eq!(s.get("/health").status, 200);
        if !build.is_finished() {
            during += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, v) = build.join().unwrap();
    assert_eq!(status, 200, "{v}\n{}", s.log());
    assert!(
        during >= 2,
        "health answered {during} times during the build"
    );
    // Digest: the §1.5.14 hash of the job type's definition (not the snapshot key).
    let builtin = tako_vm::jobs::registry::builtins()
        .into_iter()
        .find(|j| j.name == "data-processing")
        .unwrap();
    let digest = tako_vm::jobs::env::definition_digest(&builtin);
    assert_eq!(
        v,
        json!({"status": "built", "job_type": "data-processing",
               "version": format!("data-processing@sha256:{}", &digest[..12]),
               "digest": &digest[..12], "image_ref": "tako-vm-data-processing:latest"})
    );
    let jt = s.get("/job-types/data-processing").json();
    assert_eq!(jt["image_exists"], true);
    assert_eq!(jt["image_digest"], digest.as_str());
    assert_eq!(count(&s.log(), "installing numpy pandas"), 1, "{}", s.log());

    // The job-types doc's example, as written.
    let v = execute(
        &s,
        json!({
            "code": "\nimport json\nimport numpy as np\nwith open(\"/input/data.json\") as f:\n    data = json.load(f)\nvalues = np.array(data[\"values\"])\nresult = {\"mean\": float(np.mean(values)), \"std\": float(np.std(values))}\nwith open(\"/output/result.json\", \"w\") as f:\n    json.dump(result, f)\n",
            "input_data": {"values": [1, 2, 3, 4, 5]},
            "job_type": "data-processing"
        }),
    );
    assert_eq!(v["success"], true, "{v}");
    assert_eq!(v["output"]["mean"], 3.0);
    let std = v["output"]["std"].as_f64().unwrap();
    assert!((std - std::f64::consts::SQRT_2).abs() < 1e-6, "{std}");
    assert_eq!(v["job_type"], "data-processing");

    // Building again is a no-op with the same answer (its speed is `scripts/bench-images
    // --cases noop`'s to measure, not a test's).
    let again = s.post("/job-types/data-processing/build", &json!({}));
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["digest"], &digest[..12]);
    assert_eq!(count(&s.log(), "installing numpy pandas"), 1);
}

#[test]
fn development_mode_builds_on_first_use_once_for_concurrent_requests() {
    let Some(fixture) = fixture() else { return };
    let s = on_shared_store(
        &fixture,
        "job_types:\n  - name: tiny\n    requirements: ['six==1.16.0']\n    environment: {TINY: 'yes'}\n",
    );
    assert_eq!(s.get("/job-types/tiny").json()["image_exists"], false);
    let code = "import os, six\nprint(six.__version__, os.environ['TINY'], os.environ['LANG'])";
    let body = json!({"code": code, "job_type": "tiny"});
    let results: Vec<Value> = std::thread::scope(|sc| {
        let a = sc.spawn(|| execute(&s, body.clone()));
        let b = sc.spawn(|| execute(&s, body.clone()));
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    for v in &results {
        assert_eq!(v["success"], true, "{v}\n{}", s.log());
        assert_eq!(v["stdout"], "1.16.0 yes C.UTF-8\n");
    }
    assert_eq!(
        count(&s.log(), "installing six==1.16.0"),
        1,
        "one build for both: {}",
        s.log()
    );
    assert_eq!(s.get("/job-types/tiny").json()["image_exists"], true);
    // The waiting is part of the run's duration.
    let rec = record(&s, &results[0]);
    assert_eq!(rec["status"], "succeeded");
    assert!(rec["duration_ms"].as_u64().unwrap() >= rec["timing"]["total_ms"].as_u64().unwrap());

    // Requests without a job type run on python:3.11-slim (in the store), with its Env.
    let v = execute(
        &s,
        json!({"code": "import os\nprint(os.environ.get('PYTHON_VERSION'))"}),
    );
    assert_eq!(v["stdout"], "3.11\n", "{v}");
    assert_eq!(v["job_type"], "default");
    // A failing build is the run's error (uv's message), and nothing is named.
    let s2 = on_shared_store(
        &fixture,
        "job_types:\n  - name: broken\n    requirements: [tako-vm-no-such-package-4d1c]\n",
    );
    let v = execute(&s2, json!({"code": "print(1)", "job_type": "broken"}));
    assert_eq!(v["success"], false);
    assert_eq!(v["exit_code"], -1);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("tako-vm-no-such-package-4d1c"),
        "{v}"
    );
    assert_eq!(record(&s2, &v)["error"]["type"], "dependency_error");
    assert_eq!(s2.get("/job-types/broken").json()["image_exists"], false);
}

#[test]
fn production_mode_refuses_unbuilt_job_types_and_runs_built_ones() {
    let Some(fixture) = fixture() else { return };
    let s = on_shared_store(
        &fixture,
        "production_mode: true\njob_types:\n  - name: plain-env\n    environment: {GREETING: hello}\n",
    );
    let v = execute(&s, json!({"code": "print(1)", "job_type": "ml-inference"}));
    assert_eq!(v["success"], false);
    assert_eq!(v["exit_code"], Value::Null);
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("tako-vm build ml-inference"), "{msg}");
    assert!(msg.contains("POST /job-types/ml-inference/build"), "{msg}");
    assert_eq!(record(&s, &v)["error"]["type"], "config_error");
    assert!(
        !s.log().contains("installing"),
        "no auto-build: {}",
        s.log()
    );
    assert_eq!(
        s.get("/job-types/ml-inference").json()["image_exists"],
        false
    );

    // Built explicitly (no requirements: the base image and the environment), it runs.
    let code = json!({"code": "import os\nprint(os.environ['GREETING'])", "job_type": "plain-env"});
    assert_eq!(execute(&s, code.clone())["success"], false);
    let r = s.post("/job-types/plain-env/build", &json!({}));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = execute(&s, code);
    assert_eq!(v["success"], true, "{v}");
    assert_eq!(v["stdout"], "hello\n");
}

#[test]
fn runtime_requirements_come_from_a_cached_snapshot() {
    let Some(fixture) = fixture() else { return };
    let s = on_shared_store(&fixture, "allow_runtime_requirements: true\n");
    let body =
        json!({"code": "import six\nprint(six.__version__)", "requirements": ["six==1.17.0"]});
    let first = execute(&s, body.clone());
    assert_eq!(first["success"], true, "{first}\n{}", s.log());
    assert_eq!(first["stdout"], "1.17.0\n");
    assert_eq!(count(&s.log(), "installing six==1.17.0"), 1);
    let second = execute(&s, body);
    assert_eq!(second["success"], true, "{second}");
    assert_eq!(
        count(&s.log(), "installing six==1.17.0"),
        1,
        "the second request installs nothing"
    );
    assert!(
        second["execution_time"].as_f64().unwrap() < first["execution_time"].as_f64().unwrap(),
        "{} vs {}",
        second["execution_time"],
        first["execution_time"]
    );
    // Invalid requirements are refused as in 0.3.0, before any install.
    let v = execute(
        &s,
        json!({"code": "print(1)", "requirements": ["six; rm -rf /"]}),
    );
    assert_eq!(v["error"], "Invalid pip requirement: 'six; rm -rf /'");
    assert_eq!(v["exit_code"], -1);
}

#[test]
fn network_job_type_gets_its_allowed_hosts() {
    let Some(fixture) = fixture() else { return };
    let s = on_shared_store(
        &fixture,
        "job_types:\n  - name: pypi-only\n    network_enabled: true\n    allowed_hosts: [pypi.org]\n",
    );
    // The allowed names are resolved by the host and pinned in the sandbox's /etc/hosts
    // (the policy itself is tested in tests/network.rs; here every public name of this CI
    // host resolves to one gateway address, so only the wiring is observable).
    let code = r#"
import urllib.request
def get(url):
    try:
        return urllib.request.urlopen(url, timeout=5).status
    except Exception as e:
        return type(e).__name__
pinned = any(l.split()[1:] == ["pypi.org"] for l in open("/etc/hosts") if l.strip())
print(get("https://pypi.org/simple/six/"), pinned)
"#;
    let v = execute(&s, json!({"code": code, "job_type": "pypi-only"}));
    assert_eq!(v["success"], true, "{v}\n{}", s.log());
    assert_eq!(v["stdout"], "200 True\n", "{v}");
    // Without network_enabled nothing is reachable.
    let v = execute(&s, json!({"code": code}));
    assert_eq!(v["stdout"], "URLError False\n", "{v}");
    assert_eq!(
        s.get("/job-types/pypi-only").json()["allowed_hosts"],
        json!(["pypi.org"])
    );
}

#[test]
fn cancel_while_the_job_type_is_built_on_first_use() {
    let Some(fixture) = fixture() else { return };
    let s = on_shared_store(
        &fixture,
        "job_types:\n  - name: slow-first\n    requirements: ['six==1.15.0']\n",
    );
    let r = s.post(
        "/execute/async",
        &json!({"code": "import time\ntime.sleep(60)", "job_type": "slow-first"}),
    );
    let id = r.json()["job_id"].as_str().unwrap().to_string();
    let st = s.poll(&format!("/jobs/{id}"), |v| v["status"] == "running");
    assert_eq!(st["status"], "running");
    let r = s.post(&format!("/jobs/{id}/cancel"), &json!({}));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let rec = s
        .get(&format!("/jobs/{id}/result?wait=true&timeout=60"))
        .json();
    assert_eq!(rec["status"], "cancelled", "{rec}");
    // The record stays cancelled once the build (or the run) ends.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        s.get(&format!("/executions/{id}")).json()["status"],
        "cancelled"
    );
}
