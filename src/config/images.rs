//! The image settings of the configuration (our extensions), turned into what the image
//! layer takes. The `TAKO_VM_*` variables are already applied by `apply_env`.
//!
//! | key | variable | meaning |
//! |---|---|---|
//! | `registry_mirror` | `TAKO_VM_REGISTRY_MIRROR` | docker.io pulls go to this registry |
//! | `insecure_registries` | `TAKO_VM_INSECURE_REGISTRIES` | plain-HTTP registries besides loopback |
//! | `registry_username` / `registry_password` | `TAKO_VM_REGISTRY_USERNAME` / `_PASSWORD` | basic credentials (also at token realms) |
//! | `registry_auth_host` | `TAKO_VM_REGISTRY_AUTH_HOST` | the host they are for (default: every registry) |
//! | `uv_path` | `TAKO_VM_UV_PATH` | the uv binary of snapshot builds |
//! | `image_store` | `TAKO_VM_IMAGE_STORE` | images and job-type snapshots |

use std::path::PathBuf;

use super::Config;
use crate::image::builder::BuilderConfig;
use crate::image::client::Credentials;
use crate::image::{ImageStore, RegistryConfig};

impl Config {
    /// How registries are reached.
    pub fn registry_config(&self) -> RegistryConfig {
        let mut c = RegistryConfig {
            mirror: self.registry_mirror.clone(),
            insecure: self.insecure_registries.clone(),
            ..RegistryConfig::default()
        };
        if let (Some(user), Some(password)) = (&self.registry_username, &self.registry_password) {
            c.credentials.push(Credentials {
                registry: self
                    .registry_auth_host
                    .clone()
                    .unwrap_or_else(|| "*".into()),
                username: user.clone(),
                password: password.expose().to_string(),
            });
        }
        c
    }

    /// The image and snapshot store.
    pub fn image_store_root(&self) -> PathBuf {
        self.image_store
            .clone()
            .unwrap_or_else(ImageStore::default_root)
    }

    /// Settings of snapshot builds (uv).
    pub fn builder_config(&self) -> BuilderConfig {
        let mut b = BuilderConfig::default();
        if self.uv_path.is_some() {
            b.uv_path = self.uv_path.clone();
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::super::{apply_env, Config, Secret};

    #[test]
    fn image_keys_come_from_the_file_and_the_environment_wins() {
        let mut cfg: Config = super::super::parse_yaml(
            "registry_mirror: 127.0.0.1:5000\ninsecure_registries: [reg.lan:5000]\nregistry_username: u\nregistry_password: p\nuv_path: /opt/uv\nimage_store: /srv/images\n",
        )
        .unwrap();
        let rc = cfg.registry_config();
        assert_eq!(rc.mirror.as_deref(), Some("127.0.0.1:5000"));
        assert_eq!(rc.insecure, ["reg.lan:5000"]);
        assert_eq!(rc.credentials[0].registry, "*");
        assert_eq!(rc.credentials[0].password, "p");
        assert_eq!(cfg.image_store_root(), std::path::Path::new("/srv/images"));
        assert_eq!(
            cfg.builder_config().uv_path.as_deref(),
            Some(std::path::Path::new("/opt/uv"))
        );
        assert!(!format!("{cfg:?}").contains("\"p\""), "password in Debug");
        let env = [
            ("TAKO_VM_REGISTRY_MIRROR", "mirror.example"),
            ("TAKO_VM_REGISTRY_PASSWORD", "s3cret"),
            ("TAKO_VM_REGISTRY_AUTH_HOST", "mirror.example"),
            ("TAKO_VM_IMAGE_STORE", "/var/x"),
            ("TAKO_VM_UV_PATH", " "),
        ];
        apply_env(&mut cfg, &|k| {
            env.iter()
                .find(|(ek, _)| *ek == k)
                .map(|(_, v)| v.to_string())
        })
        .unwrap();
        assert_eq!(cfg.registry_mirror.as_deref(), Some("mirror.example"));
        assert_eq!(cfg.registry_password, Some(Secret("s3cret".into())));
        assert_eq!(
            cfg.registry_config().credentials[0].registry,
            "mirror.example"
        );
        assert_eq!(cfg.image_store_root(), std::path::Path::new("/var/x"));
        assert_eq!(
            cfg.uv_path.as_deref(),
            Some(std::path::Path::new("/opt/uv"))
        );
    }
}
