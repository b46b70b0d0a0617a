//! Validation of requirement strings and job-type environments (spec §2.7, §3.1).

use std::collections::BTreeMap;

/// At most this many requirements per request.
pub const MAX_REQUIREMENTS: usize = 50;

/// Checks one requirement: `NAME[extra,…](OP VERSION)(,OP VERSION)*`, 1–256 chars, none of
/// the shell-ish characters of the spec.
pub fn validate_requirement(r: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("invalid requirement {r:?}: {why}"));
    if r.is_empty() || r.len() > 256 {
        return bad("length must be 1-256");
    }
    for forbidden in ["\n", "\r", "`", "$", "\\", "#", ";", "&&", "||", "/", "@"] {
        if r.contains(forbidden) {
            return bad(&format!("must not contain {forbidden:?}"));
        }
    }
    let name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let end = r.find(|c: char| !name_char(c)).unwrap_or(r.len());
    if end == 0 {
        return bad("must start with a package name");
    }
    let mut rest = &r[end..];
    if let Some(ex) = rest.strip_prefix('[') {
        let Some(close) = ex.find(']') else {
            return bad("unclosed extras");
        };
        if ex[..close]
            .split(',')
            .any(|e| e.is_empty() || !e.chars().all(name_char))
        {
            return bad("invalid extras");
        }
        rest = &ex[close + 1..];
    }
    if rest.is_empty() {
        return Ok(());
    }
    for clause in rest.split(',') {
        let op_end = clause
            .find(|c: char| !matches!(c, '<' | '>' | '=' | '!' | '~'))
            .unwrap_or(clause.len());
        let version = &clause[op_end..];
        let ver_char =
            |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '*' | '+' | '!' | '-');
        if op_end == 0 || version.is_empty() || !version.chars().all(ver_char) {
            return bad("version constraints must look like >=1.0,<2");
        }
    }
    Ok(())
}

/// Checks a list of requirements (count and each entry).
pub fn validate_requirements(rs: &[String]) -> Result<(), String> {
    if rs.len() > MAX_REQUIREMENTS {
        return Err(format!(
            "too many requirements ({}; at most {MAX_REQUIREMENTS})",
            rs.len()
        ));
    }
    rs.iter().try_for_each(|r| validate_requirement(r))
}

/// The valid entries of a job type's `environment` (invalid ones are skipped, as in 0.3.0):
/// keys `^[A-Za-z_][A-Za-z0-9_]*$` up to 256 chars, values up to 32 768 chars without
/// control characters, backtick, `$` or `\`.
pub fn valid_environment(env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    env.iter()
        .filter(|(k, v)| {
            k.len() <= 256
                && k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && v.len() <= 32_768
                && !v
                    .chars()
                    .any(|c| c.is_control() || matches!(c, '`' | '$' | '\\'))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_follow_the_spec_grammar() {
        for ok in [
            "pandas",
            "numpy==1.26.4",
            "pandas>=2.0,<3",
            "requests[socks,security]~=2.31",
            "a.b_c-d",
        ] {
            validate_requirement(ok).unwrap();
        }
        for bad in [
            "",
            "pandas; rm -rf",
            "git+https://x/y",
            "pkg @ file:///x",
            "$(id)",
            "pandas>=",
            "pandas 2.0",
            "[x]",
            "pkg[]",
        ] {
            assert!(validate_requirement(bad).is_err(), "{bad}");
        }
        assert!(validate_requirements(&vec!["a".to_string(); 51]).is_err());
    }

    #[test]
    fn invalid_environment_entries_are_skipped() {
        let env: BTreeMap<String, String> = [
            ("OMP_NUM_THREADS", "2"),
            ("1BAD", "x"),
            ("EVIL", "$(id)"),
            ("_OK", "a b"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let v = valid_environment(&env);
        assert_eq!(v.keys().collect::<Vec<_>>(), ["OMP_NUM_THREADS", "_OK"]);
    }
}
