use super::*;

fn load_text(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let mut c = parse_yaml(text)?;
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    apply_env(&mut c, &|k| {
        env.iter().find(|(ek, _)| ek == k).map(|(_, v)| v.clone())
    })?;
    c.validate()?;
    Ok(c)
}

#[test]
fn empty_file_is_defaults() {
    let c = load_text("", &[]).unwrap();
    assert_eq!(c.server_port, 8000);
    assert_eq!(c.max_workers, 4);
    assert_eq!(c.container_limits.tmpfs_size, "100m");
}

#[test]
fn unknown_keys_are_rejected() {
    let e = load_text("nonsense: 1\n", &[]).unwrap_err().to_string();
    assert!(e.starts_with("Invalid configuration: "), "{e}");
    assert!(e.contains("nonsense"), "{e}");
    let e = load_text("container_limits:\n  bogus: 1\n", &[]).unwrap_err();
    assert!(e.to_string().contains("bogus"));
}

#[test]
fn bounds_and_cross_field_rules() {
    let e = load_text("server_port: 0\nmax_workers: 65\n", &[])
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "Invalid configuration: field server_port: Input should be greater than or equal to 1; field max_workers: Input should be less than or equal to 64"
    );
    let e = load_text("api_auth_enabled: true\n", &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("api_keys must contain at least one key when api_auth_enabled=true"));
    let e = load_text("max_timeout: 10\n", &[]).unwrap_err().to_string();
    assert!(e.contains("default_timeout must be <= max_timeout"), "{e}");
    let e = load_text(
        "max_timeout: 50\njob_types:\n  - name: big\n    timeout: 60\n",
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("job type timeout must be <= max_timeout for: big"),
        "{e}"
    );
}

#[test]
fn bind_guard() {
    let e = load_text("server_host: 0.0.0.0\n", &[])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("refusing to bind non-loopback host '0.0.0.0'"),
        "{e}"
    );
    load_text(
        "server_host: 0.0.0.0\nallow_unauthenticated_network_access: true\n",
        &[],
    )
    .unwrap();
    assert!(is_loopback(" LOCALHOST "));
    assert!(is_loopback("[::1]"));
    assert!(is_loopback("127.0.0.2"));
    assert!(!is_loopback("10.0.0.1"));
}

#[test]
fn env_overrides() {
    let c = load_text(
        "",
        &[
            ("TAKO_VM_API_AUTH_ENABLED", "YES"),
            ("TAKO_VM_API_KEYS", " aaaaaaaaaaaaaaaa , ,bbbbbbbbbbbbbbbb"),
            ("TAKO_VM_API_RATE_LIMIT_REQUESTS", "7"),
            ("TAKO_VM_SECURITY_MODE", "PERMISSIVE"),
        ],
    )
    .unwrap();
    assert!(c.api_auth_enabled);
    assert_eq!(c.api_keys, ["aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"]);
    assert_eq!(c.api_rate_limit_requests, 7);
    assert_eq!(c.security_mode, "permissive");
    let e = load_text("", &[("TAKO_VM_API_RATE_LIMIT_REQUESTS", "x")])
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "Invalid configuration: TAKO_VM_API_RATE_LIMIT_REQUESTS must be an integer (got 'x')"
    );
}

#[test]
fn repository_config_loads_with_the_three_job_types() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tako_vm.yaml");
    let mut c = read_file(std::path::Path::new(path)).unwrap();
    c.validate().unwrap();
    let names: Vec<&str> = c.job_types.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["data-processing", "ml-inference", "api-client"]);
    assert!(c.job_types[2].network_enabled);
}

#[test]
fn normalisation_and_sizes() {
    let c = load_text(
        "log_level: debug\ncontainer_limits:\n  tmpfs_size: 200M\njob_types:\n  - name: x\n    memory_limit: 1G\n",
        &[],
    )
    .unwrap();
    assert_eq!(c.log_level, "DEBUG");
    assert_eq!(c.container_limits.tmpfs_size, "200m");
    assert_eq!(c.job_types[0].memory_limit, "1g");
    assert_eq!(parse_size("1g"), Some(1 << 30));
    assert_eq!(parse_size("100"), Some(100));
    assert_eq!(parse_size("x"), None);
}

#[test]
fn image_keys_and_allowed_hosts_are_validated() {
    let e = load_text(
        "registry_username: u\ninsecure_registries: ['http://x/y']\njob_types:\n  - name: n\n    allowed_hosts: [pypi.org]\n  - name: m\n    network_enabled: true\n    allowed_hosts: ['10.0.0.0/8', 1.2.3.4, PyPI.org, 'bad host', '-x.org', '1.2.3.4/33']\n",
        &[],
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "Invalid configuration: field insecure_registries.0: insecure_registries entries must be registry hosts (host[:port]); field registry_username: registry_username and registry_password must be set together; field job_types.0.allowed_hosts: allowed_hosts requires network_enabled: true; field job_types.1.allowed_hosts.3: allowed_hosts entries must be domain names, IPv4 addresses or IPv4 CIDRs; field job_types.1.allowed_hosts.4: allowed_hosts entries must be domain names, IPv4 addresses or IPv4 CIDRs; field job_types.1.allowed_hosts.5: allowed_hosts entries must be domain names, IPv4 addresses or IPv4 CIDRs"
    );
    let c = load_text(
        "registry_mirror: ' '\njob_types:\n  - name: m\n    network_enabled: true\n    allowed_hosts: [' PyPI.org ', 10.0.0.0/8]\n",
        &[("TAKO_VM_REGISTRY_PASSWORD", "x"), ("TAKO_VM_REGISTRY_USERNAME", "u")],
    )
    .unwrap();
    assert_eq!(c.registry_mirror, None);
    assert_eq!(c.job_types[0].allowed_hosts, ["pypi.org", "10.0.0.0/8"]);
    assert_eq!(c.registry_password.as_ref().map(|s| s.expose()), Some("x"));
}

#[test]
fn the_network_pool_is_a_private_aligned_cidr() {
    let c = load_text("network_pool: 172.20.0.0/20\n", &[]).unwrap();
    assert_eq!(
        c.host_config().net_pool,
        ("172.20.0.0".parse().unwrap(), 20)
    );
    let c = load_text("", &[("TAKO_VM_NETWORK_POOL", "192.168.64.0/24")]).unwrap();
    assert_eq!(c.host_config().net_pool.1, 24);
    assert_eq!(
        load_text("", &[]).unwrap().host_config().net_pool,
        crate::sandbox::net::DEFAULT_POOL
    );
    for (bad, why) in [
        ("8.8.0.0/16", "private IPv4 CIDR"),
        ("10.200.0.1/16", "not aligned"),
        ("10.0.0.0/31", "private IPv4 CIDR"),
        ("10.200.0.0", "private IPv4 CIDR"),
    ] {
        let e = load_text(&format!("network_pool: {bad}\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("field network_pool: ") && e.contains(why),
            "{bad}: {e}"
        );
    }
}

#[test]
fn artifact_count_and_requirement_snapshots_are_bounded_keys() {
    let c = load_text("", &[]).unwrap();
    assert_eq!(c.max_artifacts, 1000);
    assert_eq!(c.max_requirement_snapshots, 32);
    let c = load_text("max_artifacts: 5\nmax_requirement_snapshots: 2\n", &[]).unwrap();
    assert_eq!((c.max_artifacts, c.max_requirement_snapshots), (5, 2));
    let e = load_text("max_artifacts: 0\nmax_requirement_snapshots: 0\n", &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("field max_artifacts"), "{e}");
    assert!(e.contains("field max_requirement_snapshots"), "{e}");
}
