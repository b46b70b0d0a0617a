//! Unit tests of the registry client (no network).

use super::*;

#[test]
fn challenges_parse() {
    let (s, p) = parse_challenge(
        r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/python:pull""#,
    );
    assert_eq!(s, "Bearer");
    assert_eq!(p["realm"], "https://auth.docker.io/token");
    assert_eq!(p["service"], "registry.docker.io");
    assert_eq!(p["scope"], "repository:library/python:pull");
    let (s, p) = parse_challenge(r#"Basic realm="tako-test""#);
    assert_eq!(s, "Basic");
    assert_eq!(p["realm"], "tako-test");
}

#[test]
fn platforms_are_selected_from_oci_and_docker_lists() {
    for mt in [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ] {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let json = serde_json::json!({
            "schemaVersion": 2, "mediaType": mt,
            "manifests": [
                {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": d('a'), "size": 1,
                 "platform": {"architecture": "arm", "os": "linux", "variant": "v7"}},
                {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": d('b'), "size": 1,
                 "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
                {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": d('c'), "size": 1,
                 "platform": {"architecture": "amd64", "os": "linux"}},
                {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": d('e'), "size": 1,
                 "platform": {"architecture": "amd64", "os": "windows"}}
            ]
        });
        let idx: ImageIndex = serde_json::from_value(json).unwrap();
        assert_eq!(select_platform(&idx, &("amd64".into(), None)), Some(d('c')));
        assert_eq!(
            select_platform(&idx, &("arm64".into(), Some("v8".into()))),
            Some(d('b'))
        );
        assert_eq!(select_platform(&idx, &("s390x".into(), None)), None);
    }
}

#[test]
fn mirrors_and_plain_http() {
    let mut cfg = RegistryConfig::default();
    let reg = Registry::new(cfg.clone()).unwrap();
    let hub = Reference::parse("python:3.11-slim").unwrap();
    assert_eq!(
        reg.endpoint(&hub).unwrap().base,
        "https://registry-1.docker.io/v2/library/python"
    );
    let local = Reference::parse("127.0.0.1:5000/x/y:1").unwrap();
    assert_eq!(
        reg.endpoint(&local).unwrap().base,
        "http://127.0.0.1:5000/v2/x/y"
    );
    let remote = Reference::parse("registry.example:5000/x:1").unwrap();
    assert!(reg.endpoint(&remote).unwrap().base.starts_with("https://"));
    cfg.mirror = Some("http://mirror.example".into());
    let reg = Registry::new(cfg.clone()).unwrap();
    assert!(matches!(reg.endpoint(&hub), Err(ImageError::Insecure(_))));
    cfg.insecure = vec!["mirror.example".into()];
    let reg = Registry::new(cfg).unwrap();
    assert_eq!(
        reg.endpoint(&hub).unwrap().base,
        "http://mirror.example/v2/library/python"
    );
}
