//! A real `tako-vm server` process on 127.0.0.1 with a temp config and data dir, and a
//! small blocking HTTP client for the API tests.
#![allow(dead_code)]

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A response: status, headers (lower-case names), raw body.
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A running server.
pub struct Server {
    pub child: Option<Child>,
    pub url: String,
    pub dir: PathBuf,
    pub cfg: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    agent: ureq::Agent,
}

/// A port for a server to bind, free when checked. Taken below the kernel's ephemeral range
/// (32768 and up by default): between this check and the server's bind, a port from that
/// range can go to any outgoing connection (a test's own HTTP clients make many), which
/// would leave the server unable to bind.
fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Server {
    /// Starts a server with `extra` YAML appended to the test config.
    pub fn start(extra: &str) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut s = Server::start_in(&dir, extra);
        s._tmp = Some(tmp);
        s
    }

    /// Starts (or restarts) a server whose config and data live in `dir`. Unless `extra`
    /// says otherwise, its image store is `dir/images` (empty: requests without a job type
    /// run on the base rootfs) and docker.io pulls go to a closed loopback port (never to
    /// Docker Hub).
    pub fn start_in(dir: &Path, extra: &str) -> Server {
        let port = free_port();
        let rootfs = std::env::var("TAKO_TEST_ROOTFS")
            .unwrap_or_else(|_| "/var/cache/tako-vm/fixtures/rootfs-py311".into());
        let cfg = dir.join("tako_vm.yaml");
        let mut yaml = format!(
            "server_port: {port}\ndata_dir: {}\nbase_rootfs: {rootfs}\ncgroup_parent: tako-vm-api-test\n{extra}",
            dir.join("data").display()
        );
        if !extra.contains("image_store:") {
            yaml.push_str(&format!(
                "\nimage_store: {}\n",
                dir.join("images").display()
            ));
        }
        if !extra.contains("registry_mirror:") {
            yaml.push_str("\nregistry_mirror: 127.0.0.1:9\n");
        }
        std::fs::write(&cfg, yaml).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tako-vm"))
            .args(["server", "--config"])
            .arg(&cfg)
            .env("TAKO_VM_DATA_DIR", dir.join("data"))
            .env_remove("TAKO_VM_REGISTRY_MIRROR")
            .env_remove("TAKO_VM_IMAGE_STORE")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let agent = ureq::AgentBuilder::new()
            .redirects(0)
            .timeout(Duration::from_secs(600))
            .build();
        let s = Server {
            child: Some(child),
            url: format!("http://127.0.0.1:{port}"),
            dir: dir.to_path_buf(),
            cfg,
            _tmp: None,
            agent,
        };
        s.wait_ready();
        s
    }

    fn wait_ready(&self) {
        let end = Instant::now() + Duration::from_secs(60);
        while Instant::now() < end {
            if let Ok(r) = self.agent.get(&format!("{}/health", self.url)).call() {
                if r.status() == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server did not start: {}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Sends a request; `body` is sent as given with `content_type` (if any).
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, &[u8])>,
    ) -> Resp {
        let mut req = self.agent.request(method, &format!("{}{path}", self.url));
        for (k, v) in headers {
            req = req.set(k, v);
        }
        let res = match body {
            Some((ct, b)) => {
                if !ct.is_empty() {
                    req = req.set("Content-Type", ct);
                }
                req.send_bytes(b)
            }
            None => req.call(),
        };
        let r = match res {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = r.status();
        let headers = r
            .headers_names()
            .into_iter()
            .map(|n| {
                let v = r.header(&n).unwrap_or("").to_string();
                (n.to_ascii_lowercase(), v)
            })
            .collect();
        let mut body = Vec::new();
        r.into_reader().read_to_end(&mut body).unwrap();
        Resp {
            status,
            headers,
            body,
        }
    }

    pub fn get(&self, path: &str) -> Resp {
        self.raw("GET", path, &[], None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Resp {
        let b = serde_json::to_vec(body).unwrap();
        self.raw("POST", path, &[], Some(("application/json", &b)))
    }

    /// Polls `GET path` until `ok(json)` (generous deadline; the caller asserts).
    pub fn poll(&self, path: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + Duration::from_secs(120);
        loop {
            let v = self.get(path).json();
            if ok(&v) || Instant::now() > end {
                return v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Replaces the data directory's `runs/` by a file: no run directory can be created,
    /// so the worker itself fails before any sandbox starts.
    pub fn block_run_dirs(&self) {
        let runs = self.dir.join("data/runs");
        std::fs::remove_dir_all(&runs).unwrap();
        std::fs::write(&runs, "not a directory").unwrap();
    }

    /// SIGKILL, no clean-up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        c.wait().ok().and_then(|s| s.code())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.terminate();
    }
}
