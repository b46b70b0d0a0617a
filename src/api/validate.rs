//! Request validation with the error items of pydantic 2 (spec §1.1, §1.3): field order,
//! `type`/`loc`/`msg`/`input`/`ctx` exactly as the reference reports them.

use serde_json::{json, Map, Value};

use crate::exec::pyjson;

/// Maximum `code` length in characters.
pub const MAX_CODE_CHARS: usize = 100_000;
/// Maximum ASCII-escaped JSON length of `input_data`.
pub const MAX_INPUT_CHARS: usize = 1_048_576;
/// Pattern of `job_type`.
pub const JOB_TYPE_PATTERN: &str = "^[a-zA-Z0-9_-]+(@[a-zA-Z0-9_.@:-]+)?$";
/// Pattern of `idempotency_key`.
pub const IDEMPOTENCY_PATTERN: &str = "^[a-zA-Z0-9_-]+$";

/// Collected validation error items.
#[derive(Debug, Default)]
pub struct Errors(pub Vec<Value>);

impl Errors {
    /// Adds one item.
    pub fn push(&mut self, typ: &str, loc: Value, msg: &str, input: &Value, ctx: Option<Value>) {
        let mut m = Map::new();
        m.insert("type".into(), typ.into());
        m.insert("loc".into(), loc);
        m.insert("msg".into(), msg.into());
        m.insert("input".into(), input.clone());
        if let Some(c) = ctx {
            m.insert("ctx".into(), c);
        }
        self.0.push(Value::Object(m));
    }
    /// No errors.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Python `repr` of a pattern string as pydantic prints it.
fn pattern_msg(p: &str) -> String {
    format!("String should match pattern '{p}'")
}

fn loc(parts: &[&str]) -> Value {
    Value::from(parts.iter().map(|s| Value::from(*s)).collect::<Vec<_>>())
}

/// Lax integer: ints, integral floats, integer strings, booleans.
pub fn lax_int(v: &Value, l: Value, e: &mut Errors) -> Option<i64> {
    match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Some(i)
            } else if let Some(f) = n.as_f64() {
                if f.fract() == 0.0 && f.abs() < 9.2e18 {
                    Some(f as i64)
                } else {
                    e.push(
                        "int_from_float",
                        l,
                        "Input should be a valid integer, got a number with a fractional part",
                        v,
                        None,
                    );
                    None
                }
            } else {
                None
            }
        }
        Value::Bool(b) => Some(i64::from(*b)),
        Value::String(s) => match s.trim().parse::<i64>() {
            Ok(i) => Some(i),
            Err(_) => {
                e.push(
                    "int_parsing",
                    l,
                    "Input should be a valid integer, unable to parse string as an integer",
                    v,
                    None,
                );
                None
            }
        },
        _ => {
            e.push("int_type", l, "Input should be a valid integer", v, None);
            None
        }
    }
}

/// `ge <= i <= le` with pydantic's messages.
pub fn int_bounds(
    i: i64,
    ge: i64,
    le: Option<i64>,
    l: Value,
    input: &Value,
    e: &mut Errors,
) -> bool {
    if i < ge {
        e.push(
            "greater_than_equal",
            l,
            &format!("Input should be greater than or equal to {ge}"),
            input,
            Some(json!({ "ge": ge })),
        );
        return false;
    }
    if let Some(le) = le {
        if i > le {
            e.push(
                "less_than_equal",
                l,
                &format!("Input should be less than or equal to {le}"),
                input,
                Some(json!({ "le": le })),
            );
            return false;
        }
    }
    true
}

fn opt_int(
    body: &Map<String, Value>,
    field: &str,
    ge: i64,
    le: i64,
    e: &mut Errors,
) -> Option<u64> {
    let v = body.get(field)?;
    if v.is_null() {
        return None;
    }
    let l = loc(&["body", field]);
    let i = lax_int(v, l.clone(), e)?;
    int_bounds(i, ge, Some(le), l, v, e).then_some(i as u64)
}

fn string(v: &Value, l: Value, e: &mut Errors) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        _ => {
            e.push("string_type", l, "Input should be a valid string", v, None);
            None
        }
    }
}

fn string_len(s: &str, min: usize, max: usize, l: Value, input: &Value, e: &mut Errors) -> bool {
    let n = s.chars().count();
    if n < min {
        let msg = format!(
            "String should have at least {min} character{}",
            if min == 1 { "" } else { "s" }
        );
        e.push(
            "string_too_short",
            l,
            &msg,
            input,
            Some(json!({ "min_length": min })),
        );
        return false;
    }
    if n > max {
        e.push(
            "string_too_long",
            l,
            &format!("String should have at most {max} characters"),
            input,
            Some(json!({ "max_length": max })),
        );
        return false;
    }
    true
}

fn matches_pattern(s: &str, with_version: bool) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let (name, ver) = match s.split_once('@') {
        Some((n, v)) if with_version => (n, Some(v)),
        Some(_) => return false,
        None => (s, None),
    };
    !name.is_empty()
        && name.chars().all(ok)
        && ver.is_none_or(|v| {
            !v.is_empty()
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.@:-".contains(c))
        })
}

/// The required `code` field (1–100 000 characters, not blank).
pub fn code_field(body: &Map<String, Value>, e: &mut Errors) -> Option<String> {
    let Some(v) = body.get("code") else {
        e.push(
            "missing",
            loc(&["body", "code"]),
            "Field required",
            &Value::Object(body.clone()),
            None,
        );
        return None;
    };
    let l = loc(&["body", "code"]);
    let s = string(v, l.clone(), e)?;
    if !string_len(&s, 1, MAX_CODE_CHARS, l.clone(), v, e) {
        return None;
    }
    if s.trim().is_empty() {
        e.push(
            "value_error",
            l,
            "Value error, Code cannot be empty",
            v,
            Some(json!({"error": {}})),
        );
        return None;
    }
    Some(s)
}

/// The optional `job_type` field.
pub fn job_type_field(body: &Map<String, Value>, e: &mut Errors) -> Option<String> {
    let v = body.get("job_type").filter(|v| !v.is_null())?;
    let l = loc(&["body", "job_type"]);
    let s = string(v, l.clone(), e)?;
    if !string_len(&s, 0, 128, l.clone(), v, e) {
        return None;
    }
    if !matches_pattern(&s, true) {
        e.push(
            "string_pattern_mismatch",
            l,
            &pattern_msg(JOB_TYPE_PATTERN),
            v,
            Some(json!({ "pattern": JOB_TYPE_PATTERN })),
        );
        return None;
    }
    Some(s)
}

/// The optional `timeout` field (1–86 400).
pub fn timeout_field(body: &Map<String, Value>, e: &mut Errors) -> Option<u64> {
    opt_int(body, "timeout", 1, 86_400, e)
}

/// Unknown fields → `extra_forbidden`.
pub fn forbid_extra(body: &Map<String, Value>, allowed: &[&str], e: &mut Errors) {
    for (k, v) in body {
        if !allowed.contains(&k.as_str()) {
            e.push(
                "extra_forbidden",
                loc(&["body", k]),
                "Extra inputs are not permitted",
                v,
                None,
            );
        }
    }
}

/// A validated `ExecuteRequest`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecuteRequest {
    /// Code.
    pub code: String,
    /// Input object.
    pub input_data: Value,
    /// Timeout.
    pub timeout: Option<u64>,
    /// Startup timeout.
    pub startup_timeout: Option<u64>,
    /// Job type (raw).
    pub job_type: Option<String>,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
    /// Requirements.
    pub requirements: Option<Vec<String>>,
}

/// Validates an `ExecuteRequest` body object.
pub fn execute_request(body: &Map<String, Value>) -> Result<ExecuteRequest, Errors> {
    let mut e = Errors::default();
    let code = code_field(body, &mut e);
    let input_data = match body.get("input_data") {
        None => Some(Value::Object(Map::new())),
        Some(v @ Value::Object(_)) => {
            if pyjson::dumps_ascii(v).len() > MAX_INPUT_CHARS {
                e.push(
                    "value_error",
                    loc(&["body", "input_data"]),
                    "Value error, input_data exceeds 1MB limit when serialized",
                    v,
                    Some(json!({"error": {}})),
                );
                None
            } else {
                Some(v.clone())
            }
        }
        Some(v) => {
            e.push(
                "dict_type",
                loc(&["body", "input_data"]),
                "Input should be a valid dictionary",
                v,
                None,
            );
            None
        }
    };
    let timeout = timeout_field(body, &mut e);
    let startup_timeout = opt_int(body, "startup_timeout", 10, 600, &mut e);
    let job_type = job_type_field(body, &mut e);
    let idempotency_key = body
        .get("idempotency_key")
        .filter(|v| !v.is_null())
        .and_then(|v| {
            let l = loc(&["body", "idempotency_key"]);
            let s = string(v, l.clone(), &mut e)?;
            if !string_len(&s, 8, 255, l.clone(), v, &mut e) {
                return None;
            }
            if !matches_pattern(&s, false) {
                e.push(
                    "string_pattern_mismatch",
                    l,
                    &pattern_msg(IDEMPOTENCY_PATTERN),
                    v,
                    Some(json!({ "pattern": IDEMPOTENCY_PATTERN })),
                );
                return None;
            }
            Some(s)
        });
    let requirements = match body.get("requirements").filter(|v| !v.is_null()) {
        None => None,
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            for (i, it) in items.iter().enumerate() {
                let l = json!(["body", "requirements", i]);
                if let Some(s) = string(it, l, &mut e) {
                    out.push(s);
                }
            }
            if items.len() > 50 {
                e.push(
                    "too_long",
                    loc(&["body", "requirements"]),
                    &format!(
                        "List should have at most 50 items after validation, not {}",
                        items.len()
                    ),
                    &Value::Array(items.clone()),
                    Some(json!({"field_type": "List", "max_length": 50, "actual_length": items.len()})),
                );
            }
            Some(out)
        }
        Some(v) => {
            e.push(
                "list_type",
                loc(&["body", "requirements"]),
                "Input should be a valid list",
                v,
                None,
            );
            None
        }
    };
    forbid_extra(
        body,
        &[
            "code",
            "input_data",
            "timeout",
            "startup_timeout",
            "job_type",
            "idempotency_key",
            "requirements",
        ],
        &mut e,
    );
    if !e.is_empty() {
        return Err(e);
    }
    Ok(ExecuteRequest {
        code: code.unwrap_or_default(),
        input_data: input_data.unwrap_or_default(),
        timeout,
        startup_timeout,
        job_type,
        idempotency_key,
        requirements,
    })
}

/// A validated rerun (`code: None`) or fork body.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayRequest {
    /// Fork code.
    pub code: Option<String>,
    /// Job type override.
    pub job_type: Option<String>,
    /// Timeout override.
    pub timeout: Option<u64>,
}

/// Validates a `RerunRequest` (`fork == false`) or `ForkRequest` body object.
pub fn replay_request(body: &Map<String, Value>, fork: bool) -> Result<ReplayRequest, Errors> {
    let mut e = Errors::default();
    let code = if fork { code_field(body, &mut e) } else { None };
    let job_type = job_type_field(body, &mut e);
    let timeout = timeout_field(body, &mut e);
    let allowed: &[&str] = if fork {
        &["code", "job_type", "timeout"]
    } else {
        &["job_type", "timeout"]
    };
    forbid_extra(body, allowed, &mut e);
    if !e.is_empty() {
        return Err(e);
    }
    Ok(ReplayRequest {
        code,
        job_type,
        timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn exact_items() {
        let e = execute_request(&obj(json!({}))).unwrap_err();
        assert_eq!(
            serde_json::to_string(&e.0).unwrap(),
            r#"[{"type":"missing","loc":["body","code"],"msg":"Field required","input":{}}]"#
        );
        let e = execute_request(&obj(json!({"code": "   "}))).unwrap_err();
        assert_eq!(
            serde_json::to_string(&e.0).unwrap(),
            r#"[{"type":"value_error","loc":["body","code"],"msg":"Value error, Code cannot be empty","input":"   ","ctx":{"error":{}}}]"#
        );
        let e = execute_request(&obj(json!({"code": "x", "timeout": 0}))).unwrap_err();
        assert_eq!(
            serde_json::to_string(&e.0).unwrap(),
            r#"[{"type":"greater_than_equal","loc":["body","timeout"],"msg":"Input should be greater than or equal to 1","input":0,"ctx":{"ge":1}}]"#
        );
        let e =
            execute_request(&obj(json!({"code": "x", "idempotency_key": "short"}))).unwrap_err();
        assert_eq!(e.0[0]["type"], "string_too_short");
        assert_eq!(e.0[0]["msg"], "String should have at least 8 characters");
        let e = execute_request(&obj(json!({"code": "x", "job_type": "a b"}))).unwrap_err();
        assert_eq!(
            e.0[0]["msg"],
            "String should match pattern '^[a-zA-Z0-9_-]+(@[a-zA-Z0-9_.@:-]+)?$'"
        );
        let e = execute_request(&obj(json!({"code": "x", "input_data": [1]}))).unwrap_err();
        assert_eq!(e.0[0]["type"], "dict_type");
        let e = execute_request(&obj(json!({"code": "x", "extra": 1}))).unwrap_err();
        assert_eq!(e.0[0]["type"], "extra_forbidden");
        let e = execute_request(&obj(json!({"code": "x", "timeout": 5.5}))).unwrap_err();
        assert_eq!(e.0[0]["type"], "int_from_float");
        let r = execute_request(&obj(
            json!({"code": "x", "timeout": "5", "job_type": "a@v1"}),
        ))
        .unwrap();
        assert_eq!(r.timeout, Some(5));
        let reqs: Vec<String> = (0..51).map(|i| format!("p{i}")).collect();
        let e = execute_request(&obj(json!({"code": "x", "requirements": reqs}))).unwrap_err();
        assert_eq!(
            e.0[0]["msg"],
            "List should have at most 50 items after validation, not 51"
        );
    }

    #[test]
    fn input_limit_is_on_ascii_escaped_json() {
        // {"a": "<s>"} is 9 chars of overhead.
        let ok = "x".repeat(MAX_INPUT_CHARS - 9);
        assert!(execute_request(&obj(json!({"code": "x", "input_data": {"a": ok}}))).is_ok());
        let big = "é".repeat(200_000); // 6 chars each when escaped
        let e = execute_request(&obj(json!({"code": "x", "input_data": {"a": big}}))).unwrap_err();
        assert_eq!(
            e.0[0]["msg"],
            "Value error, input_data exceeds 1MB limit when serialized"
        );
    }

    #[test]
    fn fork_requires_code_and_rerun_forbids_it() {
        assert!(replay_request(&obj(json!({})), false).is_ok());
        let e = replay_request(&obj(json!({"code": "x"})), false).unwrap_err();
        assert_eq!(e.0[0]["type"], "extra_forbidden");
        let e = replay_request(&obj(json!({})), true).unwrap_err();
        assert_eq!(e.0[0]["type"], "missing");
    }
}
