//! `tako-vm status [--url URL]`: asks a running server for `/health`.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;

/// Arguments of `tako-vm status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Server URL.
    #[arg(long, default_value = "http://localhost:8000")]
    url: String,
}

/// A minimal HTTP/1.1 GET (plain http only); returns status and body.
pub fn http_get(url: &str, timeout: Duration) -> anyhow::Result<(u16, String)> {
    let rest = url
        .strip_prefix("http://")
        .context("only http:// URLs are supported")?;
    let (hostport, path) = match rest.split_once('/') {
        Some((h, p)) => (h, format!("/{p}")),
        None => (rest, "/".to_string()),
    };
    let addr = if hostport.contains(':') && !hostport.ends_with(']') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    let sock = addr
        .to_socket_addrs()?
        .next()
        .with_context(|| format!("cannot resolve {addr}"))?;
    let mut s = TcpStream::connect_timeout(&sock, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\nAccept: application/json\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("invalid HTTP response")?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((code, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(len.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Runs `tako-vm status`.
pub fn run(a: StatusArgs) -> anyhow::Result<i32> {
    let url = format!("{}/health", a.url.trim_end_matches('/'));
    let (code, body) = match http_get(&url, Duration::from_secs(5)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Error: cannot reach {url}: {e}");
            return Ok(1);
        }
    };
    if code >= 400 {
        eprintln!("Error: {url} answered HTTP {code}: {body}");
        return Ok(1);
    }
    let v: serde_json::Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("Error: invalid JSON from {url}: {e}");
            return Ok(1);
        }
    };
    let Some(status) = v["status"].as_str() else {
        bail!("unexpected /health body: {body}");
    };
    println!("Status: {status}");
    println!(
        "Docker: {}",
        if v["docker_available"] == true {
            "available"
        } else {
            "unavailable"
        }
    );
    println!("Version: {}", v["version"].as_str().unwrap_or("?"));
    Ok(0)
}
