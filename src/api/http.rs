//! Small HTTP helpers: responses, error envelopes, query and body parsing.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::{json, Map, Value};

use super::validate::Errors;
use crate::exec::sanitize::sanitize;

/// A JSON response.
pub fn json_response(status: StatusCode, v: &Value) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_else(|_| b"null".to_vec());
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// 200 with a JSON body.
pub fn ok(v: Value) -> Response {
    json_response(StatusCode::OK, &v)
}

/// A handler error: `{"detail": <sanitised>, "correlation_id": cid}`.
pub fn error(status: StatusCode, detail: &str, cid: &str) -> Response {
    json_response(
        status,
        &json!({"detail": sanitize(detail), "correlation_id": cid}),
    )
}

/// A layer error (auth, rate limit, size, 500): the detail is used verbatim.
pub fn layer_error(status: StatusCode, detail: &str, cid: &str) -> Response {
    json_response(status, &json!({"detail": detail, "correlation_id": cid}))
}

/// An unexpected failure (storage, a crashed task): logged, and the middleware's 500
/// `Internal server error.` (§1.2) is answered, never the cause.
pub fn internal(cid: &str, e: impl std::fmt::Display) -> Response {
    eprintln!("tako-vm: internal error ({cid}): {e}");
    layer_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Internal server error.",
        cid,
    )
}

/// 422 with pydantic items (no `correlation_id`).
pub fn validation(e: Errors) -> Response {
    json_response(StatusCode::UNPROCESSABLE_ENTITY, &json!({ "detail": e.0 }))
}

/// `{"detail": "Not Found"}` / `{"detail": "Method Not Allowed"}`.
pub fn plain(status: StatusCode, detail: &str) -> Response {
    json_response(status, &json!({ "detail": detail }))
}

/// Percent-decoding (`plus` turns `+` into a space, for query strings).
pub fn percent_decode(s: &str, plus: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' if plus => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parsed query parameters (first occurrence wins).
#[derive(Debug, Default)]
pub struct Query(Vec<(String, String)>);

impl Query {
    /// Parses a raw query string.
    pub fn parse(q: Option<&str>) -> Query {
        let mut v = Vec::new();
        for part in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, val) = part.split_once('=').unwrap_or((part, ""));
            v.push((percent_decode(k, true), percent_decode(val, true)));
        }
        Query(v)
    }

    /// A raw value.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(kk, _)| kk == k)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean (`true/false`, `1/0`, `yes/no`, `on/off`, `t/f`, `y/n`).
    pub fn bool(&self, k: &str, default: bool, e: &mut Errors) -> bool {
        let Some(v) = self.get(k) else {
            return default;
        };
        match v.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" | "t" | "y" => true,
            "false" | "0" | "no" | "off" | "f" | "n" => false,
            _ => {
                e.push(
                    "bool_parsing",
                    json!(["query", k]),
                    "Input should be a valid boolean, unable to interpret input",
                    &Value::from(v),
                    None,
                );
                default
            }
        }
    }

    /// An integer with bounds.
    pub fn int(&self, k: &str, default: i64, ge: i64, le: Option<i64>, e: &mut Errors) -> i64 {
        let Some(raw) = self.get(k) else {
            return default;
        };
        let input = Value::from(raw);
        let l = json!(["query", k]);
        match super::validate::lax_int(&input, l.clone(), e) {
            Some(i) if super::validate::int_bounds(i, ge, le, l, &input, e) => i,
            _ => default,
        }
    }

    /// A float with bounds.
    pub fn float(&self, k: &str, default: f64, ge: f64, le: f64, e: &mut Errors) -> f64 {
        let Some(raw) = self.get(k) else {
            return default;
        };
        let input = Value::from(raw);
        let l = json!(["query", k]);
        let Ok(f) = raw.trim().parse::<f64>() else {
            e.push(
                "float_parsing",
                l,
                "Input should be a valid number, unable to parse string as a number",
                &input,
                None,
            );
            return default;
        };
        if f < ge {
            e.push(
                "greater_than_equal",
                l,
                &format!("Input should be greater than or equal to {ge}"),
                &input,
                Some(json!({ "ge": ge })),
            );
            return default;
        }
        if f > le {
            e.push(
                "less_than_equal",
                l,
                &format!("Input should be less than or equal to {le}"),
                &input,
                Some(json!({ "le": le })),
            );
            return default;
        }
        f
    }
}

/// Whether a content type is parsed as JSON (absent, `application/json`, `application/*+json`).
fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return true;
    };
    let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
    let main = ct.split(';').next().unwrap_or("").trim();
    main == "application/json" || (main.starts_with("application/") && main.ends_with("+json"))
}

/// Parses a JSON request body into an object, or the 422 items of §1.1.
pub fn json_body(headers: &HeaderMap, body: &[u8]) -> Result<Map<String, Value>, Errors> {
    let mut e = Errors::default();
    if body.is_empty() {
        e.push(
            "missing",
            json!(["body"]),
            "Field required",
            &Value::Null,
            None,
        );
        return Err(e);
    }
    let not_object = |e: &mut Errors, input: &Value| {
        e.push(
            "model_attributes_type",
            json!(["body"]),
            "Input should be a valid dictionary or object to extract fields from",
            input,
            None,
        );
    };
    if !is_json(headers) {
        not_object(
            &mut e,
            &Value::from(String::from_utf8_lossy(body).into_owned()),
        );
        return Err(e);
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => {
            not_object(&mut e, &other);
            Err(e)
        }
        Err(err) => {
            // Python's offset and message (FastAPI reports JSONDecodeError.pos and .msg).
            // Where Python would have parsed the text (NaN, Infinity, lone surrogates) or it
            // is not UTF-8: serde's position, as a character offset, and its message.
            let python = std::str::from_utf8(body)
                .ok()
                .and_then(crate::exec::pyjson::decode_error);
            let (pos, msg) = python.map_or_else(
                || {
                    let end = if err.is_eof() {
                        body.len()
                    } else {
                        let line_start: usize = body
                            .split_inclusive(|b| *b == b'\n')
                            .take(err.line().saturating_sub(1))
                            .map(<[u8]>::len)
                            .sum();
                        (line_start + err.column().saturating_sub(1)).min(body.len())
                    };
                    let pos = String::from_utf8_lossy(&body[..end]).chars().count();
                    (pos, err.to_string())
                },
                |(pos, msg)| (pos, msg.to_string()),
            );
            e.push(
                "json_invalid",
                json!(["body", pos]),
                "JSON decode error",
                &json!({}),
                Some(json!({ "error": msg })),
            );
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_and_queries() {
        assert_eq!(percent_decode("a%20b+c", true), "a b c");
        assert_eq!(percent_decode("r%C3%A9sum%C3%A9.txt", false), "résumé.txt");
        assert_eq!(percent_decode("bad%zz%", false), "bad%zz%");
        let q = Query::parse(Some("wait=Yes&timeout=2.5&x"));
        let mut e = Errors::default();
        assert!(q.bool("wait", false, &mut e));
        assert_eq!(q.float("timeout", 30.0, 1.0, 300.0, &mut e), 2.5);
        assert!(e.is_empty());
        let q = Query::parse(Some("wait=foo&limit=0"));
        q.bool("wait", false, &mut e);
        q.int("limit", 100, 1, Some(1000), &mut e);
        assert_eq!(e.0[0]["type"], "bool_parsing");
        assert_eq!(e.0[1]["type"], "greater_than_equal");
    }

    #[test]
    fn json_error_offsets_are_pythons() {
        let h = HeaderMap::new();
        for (body, pos) in [
            ("{\"code\": ", 9),
            ("{\"code\": \"x\"", 12),
            ("{\"code\": \"x\",}", 13),
            ("{\"code\" \"x\"}", 8),
            ("{\n\"é\": }", 7),
        ] {
            let e = json_body(&h, body.as_bytes()).unwrap_err();
            assert_eq!(e.0[0]["loc"], json!(["body", pos]), "{body}");
            assert_eq!(e.0[0]["msg"], "JSON decode error");
        }
    }
}
