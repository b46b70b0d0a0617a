//! The job-type registry (spec §3.2): the registry file, else the packaged built-ins, with
//! the config file's `job_types` merged on top (same name replaces, keeping its position).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::{self, Config, JobTypeConfig};

/// A job type (the config schema of §3.1).
pub type JobType = JobTypeConfig;

/// The packaged built-ins served when no registry file exists.
pub fn builtins() -> Vec<JobType> {
    let mut dp = JobType::named("data-processing");
    dp.requirements = vec!["pandas".into(), "numpy".into()];
    dp.memory_limit = "1g".into();
    dp.cpu_limit = 2.0;
    dp.timeout = 60;
    let mut ml = JobType::named("ml-inference");
    ml.requirements = vec!["numpy".into(), "scikit-learn".into()];
    ml.memory_limit = "2g".into();
    ml.cpu_limit = 2.0;
    ml.timeout = 120;
    vec![JobType::named("default"), dp, ml]
}

/// The hard-coded job type of a request without `job_type` (§3.5).
pub fn request_default(cfg: &Config) -> JobType {
    let mut d = JobType::named("default");
    d.timeout = cfg.default_timeout;
    d
}

/// The set of job types known to the server, in registry order.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    types: Vec<JobType>,
}

/// Path of the registry file: `<registry dir>/job_types.json`.
pub fn registry_file() -> PathBuf {
    config::registry_dir().join("job_types.json")
}

/// Moves flat `gpu_*` keys of a registry entry into its `gpu` object (flat wins).
fn normalise_gpu(entry: &mut Value) {
    let Some(obj) = entry.as_object_mut() else {
        return;
    };
    let mut gpu = obj
        .remove("gpu")
        .filter(Value::is_object)
        .unwrap_or_else(|| Value::Object(Default::default()));
    for (flat, key) in [
        ("gpu_enabled", "enabled"),
        ("gpu_vendor", "vendor"),
        ("gpu_count", "count"),
        ("gpu_device_ids", "device_ids"),
    ] {
        if let Some(v) = obj.remove(flat) {
            gpu[key] = v;
        }
    }
    obj.insert("gpu".into(), gpu);
}

/// Parses the registry file format `{"job_types": [...]}`; invalid entries are skipped
/// with a log line.
pub fn parse_registry_file(text: &str) -> Result<Vec<JobType>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let list = v
        .get("job_types")
        .and_then(Value::as_array)
        .ok_or("missing \"job_types\" list")?;
    let mut out: Vec<JobType> = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        let mut e = entry.clone();
        normalise_gpu(&mut e);
        match serde_json::from_value::<JobType>(e) {
            Ok(mut jt) => {
                let errs = config::job_type_errors(&mut jt, &format!("job_types.{i}"));
                if errs.is_empty() {
                    out.retain(|o| o.name != jt.name);
                    out.push(jt);
                } else {
                    eprintln!("tako-vm: skipping invalid job type: {}", errs.join("; "));
                }
            }
            Err(err) => eprintln!("tako-vm: skipping invalid job type entry {i}: {err}"),
        }
    }
    Ok(out)
}

impl Registry {
    /// Loads the registry file (or the built-ins) and merges the config's job types.
    pub fn load(cfg: &Config) -> Registry {
        Self::load_from(&registry_file(), cfg)
    }

    /// As [`Registry::load`] with an explicit registry file.
    pub fn load_from(file: &Path, cfg: &Config) -> Registry {
        let mut types = match std::fs::read_to_string(file) {
            Ok(text) => parse_registry_file(&text).unwrap_or_else(|e| {
                eprintln!("tako-vm: ignoring registry file {}: {e}", file.display());
                builtins()
            }),
            Err(_) => builtins(),
        };
        for jt in &cfg.job_types {
            match types.iter_mut().find(|t| t.name == jt.name) {
                Some(slot) => *slot = jt.clone(),
                None => types.push(jt.clone()),
            }
        }
        Registry { types }
    }

    /// A job type by exact name.
    pub fn get(&self, name: &str) -> Option<&JobType> {
        self.types.iter().find(|t| t.name == name)
    }

    /// Every job type, in registry order.
    pub fn all(&self) -> &[JobType] {
        &self.types
    }
}

/// Valid job-type environment entries (§3.1; invalid ones are skipped silently).
pub fn valid_environment(jt: &JobType) -> Vec<(String, String)> {
    jt.environment
        .iter()
        .filter(|(k, v)| {
            let key_ok = k.len() <= 256
                && k.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            let val_ok = v.chars().count() <= 32768
                && !v
                    .chars()
                    .any(|c| c.is_control() || matches!(c, '`' | '$' | '\\'));
            key_ok && val_ok
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_types_merge_on_top_of_the_file_keeping_position() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("job_types.json");
        std::fs::write(
            &f,
            r#"{"job_types":[{"name":"a","timeout":5},{"name":"b","gpu_enabled":true,"gpu_vendor":"NVIDIA"},{"name":"bad name!"}]}"#,
        )
        .unwrap();
        let mut cfg = Config::default();
        let mut a = JobType::named("a");
        a.timeout = 7;
        cfg.job_types = vec![JobType::named("c"), a];
        let r = Registry::load_from(&f, &cfg);
        let names: Vec<&str> = r.all().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(r.get("a").unwrap().timeout, 7);
        assert_eq!(r.get("b").unwrap().gpu.vendor.as_deref(), Some("nvidia"));
        let r = Registry::load_from(&dir.path().join("missing.json"), &Config::default());
        let names: Vec<&str> = r.all().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["default", "data-processing", "ml-inference"]);
    }

    #[test]
    fn invalid_environment_entries_are_skipped() {
        let mut jt = JobType::named("x");
        jt.environment.insert("OK_1".into(), "v".into());
        jt.environment.insert("1BAD".into(), "v".into());
        jt.environment.insert("DOLLAR".into(), "$HOME".into());
        assert_eq!(valid_environment(&jt), [("OK_1".into(), "v".into())]);
    }
}
