//! `tako-vm validate [FILE]`: validates a config file (without environment overrides).

use std::path::Path;

use crate::config;

/// Runs `tako-vm validate`.
pub fn run(global: Option<&Path>, file: Option<&Path>) -> anyhow::Result<i32> {
    let explicit = file.or(global);
    let path = match config::find_config_file(explicit) {
        Ok(Some(p)) => p,
        Ok(None) => {
            println!("No configuration file found.");
            return Ok(1);
        }
        Err(e) => {
            eprintln!("Error: {e}");
            return Ok(1);
        }
    };
    println!("Validating: {}", path.display());
    let result = config::read_file(&path).and_then(|mut c| c.validate().map(|()| c));
    match result {
        Ok(c) => {
            println!("Configuration is valid!");
            println!(
                "  Mode: {}",
                if c.production_mode {
                    "production"
                } else {
                    "development"
                }
            );
            println!("  Workers: {}", c.max_workers);
            println!("  Max timeout: {}s", c.max_timeout);
            let names: Vec<&str> = c.job_types.iter().map(|j| j.name.as_str()).collect();
            println!(
                "  Job types: {}",
                if names.is_empty() {
                    "(none)".to_string()
                } else {
                    names.join(", ")
                }
            );
            Ok(0)
        }
        Err(e) => {
            println!("Validation FAILED:");
            let text = e.to_string();
            let body = text
                .strip_prefix("Invalid configuration: ")
                .unwrap_or(&text);
            for part in body.split("; field ") {
                let line = if part.starts_with("field ") || !body.starts_with("field ") {
                    part.to_string()
                } else {
                    format!("field {part}")
                };
                println!("  - {line}");
            }
            Ok(1)
        }
    }
}
