//! Byte-exact reproductions of the Python `json` behaviour the contract and the API show.
//!
//! | function | Python equivalent | used for |
//! |---|---|---|
//! | [`dumps_ascii`] | `json.dumps(v)` | `/input/data.json`, the 1 048 576-char `input_data` rule |
//! | [`canonical`] | `json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)` | `input_hash` (§4.9) |
//! | [`input_json_file`] | `json.dumps(v, sort_keys=True, separators=(",", ":"))` | the `_input.json` replay file (§4.6) |
//! | [`decode_error`] | `json.loads(b)` raising `JSONDecodeError` (`.pos`, `.msg`) | the API's `json_invalid` error |
//!
//! Object key order is the `Map`'s order (insertion order: serde_json is built with
//! `preserve_order`) unless sorted; sorting is by code point, like Python's `str` order.
//!
//! Numbers: integers are written as integers, floats like Python's `repr(float)`.
//! Limitations inherited from `serde_json::Value` (without `arbitrary_precision`):
//! integers outside the `i64`/`u64` range were already parsed as floats, and the
//! literal `-0` was parsed as the float `-0.0`, so they print as Python would print
//! those floats, not the original integers.

mod decode;

pub use decode::decode_error;

use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

#[derive(Clone, Copy)]
struct Style {
    ascii: bool,
    sort_keys: bool,
    item_sep: &'static str,
    key_sep: &'static str,
}

const DUMPS: Style = Style {
    ascii: true,
    sort_keys: false,
    item_sep: ", ",
    key_sep: ": ",
};

const CANONICAL: Style = Style {
    ascii: false,
    sort_keys: true,
    item_sep: ",",
    key_sep: ":",
};

const INPUT_FILE: Style = Style {
    ascii: true,
    sort_keys: true,
    item_sep: ",",
    key_sep: ":",
};

/// Python `json.dumps(v)`: ASCII escaping, separators `", "` and `": "`, keys in map order.
pub fn dumps_ascii(v: &Value) -> String {
    encode(v, DUMPS)
}

/// Python `json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`:
/// the canonical JSON of spec §4.9.
pub fn canonical(v: &Value) -> String {
    encode(v, CANONICAL)
}

/// sha256 hex of [`canonical`] (UTF-8): the `input_hash` of a record.
pub fn canonical_hash(v: &Value) -> String {
    sha256_hex(canonical(v).as_bytes())
}

/// Lowercase hex sha256 of `bytes` (e.g. `code_hash` of the code's UTF-8 bytes).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Python `json.dumps(v, sort_keys=True, separators=(",", ":"))`: sorted keys, compact,
/// ASCII escaping – the content of the `_input.json` replay file (§4.6).
pub fn input_json_file(v: &Value) -> String {
    encode(v, INPUT_FILE)
}

/// Python `repr(x)` of a float (shortest round-trip digits; exponent form when the
/// decimal exponent is < -4 or >= 16; `inf`, `-inf`, `nan` for non-finite values).
pub fn float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    let sci = python_digits(x);
    let (mantissa, exp) = sci
        .split_once('e')
        .expect("LowerExp always has an exponent");
    let exp: i32 = exp.parse().expect("LowerExp exponent is an integer");
    let (neg, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    // Python's decpt: value = 0.DIGITS * 10^decpt.
    let decpt = exp + 1;
    let mut out = String::with_capacity(digits.len() + 8);
    if neg {
        out.push('-');
    }
    if decpt <= -4 || decpt > 16 {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let e = decpt - 1;
        let _ = write!(
            out,
            "e{}{:02}",
            if e < 0 { '-' } else { '+' },
            e.unsigned_abs()
        );
    } else if decpt <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', decpt.unsigned_abs() as usize));
        out.push_str(&digits);
    } else {
        let d = decpt as usize;
        if d < digits.len() {
            out.push_str(&digits[..d]);
            out.push('.');
            out.push_str(&digits[d..]);
        } else {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', d - digits.len()));
            out.push_str(".0");
        }
    }
    out
}

/// Shortest round-trip digits of `x` in `LowerExp` form, with Python's tie rule.
///
/// Rust's shortest formatting and Python's `repr` agree on the number of significant
/// digits, but when `x` lies exactly halfway between the two nearest candidates of that
/// length Rust rounds the last digit up while Python rounds half to even
/// (`274564663099778.125` → Python `…778.12`). Re-formatting with exactly that many
/// digits (Rust's exact mode rounds half to even) gives Python's choice.
fn python_digits(x: f64) -> String {
    let shortest = format!("{x:e}"); // e.g. "-1.5e-7", "0e0"
    let mantissa = shortest.split_once('e').map_or("", |(m, _)| m);
    let n = mantissa.chars().filter(char::is_ascii_digit).count();
    if n <= 1 {
        return shortest;
    }
    let exact = format!("{:.*e}", n - 1, x);
    if exact.parse::<f64>() == Ok(x) {
        exact
    } else {
        shortest
    }
}

fn encode(v: &Value, style: Style) -> String {
    let mut out = String::new();
    write_value(&mut out, v, style);
    out
}

fn write_value(out: &mut String, v: &Value, style: Style) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_string(out, s, style.ascii),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(style.item_sep);
                }
                write_value(out, item, style);
            }
            out.push(']');
        }
        Value::Object(map) => write_object(out, map, style),
    }
}

fn write_object(out: &mut String, map: &Map<String, Value>, style: Style) {
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    if style.sort_keys {
        // Byte order of UTF-8 equals code point order, which is Python's str order.
        entries.sort_by(|a, b| a.0.cmp(b.0));
    }
    out.push('{');
    for (i, (k, val)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push_str(style.item_sep);
        }
        write_string(out, k, style.ascii);
        out.push_str(style.key_sep);
        write_value(out, val, style);
    }
    out.push('}');
}

fn write_number(out: &mut String, n: &Number) {
    if let Some(u) = n.as_u64() {
        let _ = write!(out, "{u}");
    } else if let Some(i) = n.as_i64() {
        let _ = write!(out, "{i}");
    } else {
        let text = n.to_string();
        if !text.contains(['.', 'e', 'E']) {
            // An integer literal too big for i64/u64 (only with `arbitrary_precision`).
            out.push_str(if text == "-0" { "0" } else { &text });
        } else {
            match n.as_f64() {
                Some(x) if x.is_nan() => out.push_str("NaN"),
                Some(x) if x.is_infinite() => {
                    out.push_str(if x > 0.0 { "Infinity" } else { "-Infinity" })
                }
                Some(x) => out.push_str(&float_repr(x)),
                None => out.push_str(&text),
            }
        }
    }
}

fn write_string(out: &mut String, s: &str, ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ascii && (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn observed_hash_vectors() {
        assert_eq!(
            canonical_hash(&json!({})),
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        assert_eq!(
            sha256_hex(b"print(1)"),
            "d287bb7f9d15abdc5b6e98536263815744b6ef21c8f3c839fc434ca70d8efe99"
        );
    }

    // Expected strings below were produced by CPython 3.11 `json.dumps`.

    #[test]
    fn dumps_ascii_mixed() {
        let v = parse(r#"{"a": 1, "é": [1.5, "x😀"]}"#);
        assert_eq!(
            dumps_ascii(&v),
            r#"{"a": 1, "\u00e9": [1.5, "x\ud83d\ude00"]}"#
        );
        assert_eq!(canonical(&v), "{\"a\":1,\"é\":[1.5,\"x😀\"]}");
        assert_eq!(
            input_json_file(&v),
            r#"{"a":1,"\u00e9":[1.5,"x\ud83d\ude00"]}"#
        );
    }

    #[test]
    fn floats_like_python_repr() {
        let v = parse(
            "[1e16, 1e-7, 0.30000000000000004, -0.0, 5e-324, 1.7976931348623157e308, \
             123456789012345.0, 1234567890123456.0, 1e15, 0.0001, 0.00001, 1.5e-07, \
             1e22, 1e23, 2.5, 100.0, -1.25e-10]",
        );
        assert_eq!(
            dumps_ascii(&v),
            "[1e+16, 1e-07, 0.30000000000000004, -0.0, 5e-324, 1.7976931348623157e+308, \
             123456789012345.0, 1234567890123456.0, 1000000000000000.0, 0.0001, 1e-05, \
             1.5e-07, 1e+22, 1e+23, 2.5, 100.0, -1.25e-10]"
        );
        assert_eq!(
            canonical(&v),
            "[1e+16,1e-07,0.30000000000000004,-0.0,5e-324,1.7976931348623157e+308,\
             123456789012345.0,1234567890123456.0,1000000000000000.0,0.0001,1e-05,\
             1.5e-07,1e+22,1e+23,2.5,100.0,-1.25e-10]"
        );
    }

    #[test]
    fn float_repr_direct() {
        assert_eq!(float_repr(0.1 + 0.2), "0.30000000000000004");
        assert_eq!(float_repr(0.0), "0.0");
        assert_eq!(float_repr(-0.0), "-0.0");
        assert_eq!(float_repr(1.0), "1.0");
        assert_eq!(float_repr(0.1), "0.1");
        assert_eq!(float_repr(1e16), "1e+16");
        assert_eq!(float_repr(1.5e-7), "1.5e-07");
        assert_eq!(float_repr(123.456), "123.456");
        assert_eq!(float_repr(1e100), "1e+100");
        assert_eq!(float_repr(-2.5e-5), "-2.5e-05");
        assert_eq!(float_repr(f64::INFINITY), "inf");
        assert_eq!(float_repr(f64::NAN), "nan");
        // Halfway ties: Python rounds the last shortest digit half to even.
        assert_eq!(float_repr(274564663099778.12), "274564663099778.12");
        assert_eq!(float_repr(4.026380313612261e293), "4.026380313612261e+293");
        assert_eq!(float_repr(9.5367431640625e-7), "9.5367431640625e-07");
        assert_eq!(float_repr(2f64.powi(60)), "1.152921504606847e+18");
    }

    #[test]
    fn negative_zero_literal_is_a_float_in_serde_json() {
        // Python prints json.loads("-0") as 0; serde_json already made it -0.0.
        assert_eq!(dumps_ascii(&parse("-0")), "-0.0");
        assert_eq!(dumps_ascii(&parse("-0.0")), "-0.0");
    }

    #[test]
    fn big_integers() {
        let v = parse("[18446744073709551615, -9223372036854775808, 0, -1]");
        assert_eq!(
            dumps_ascii(&v),
            "[18446744073709551615, -9223372036854775808, 0, -1]"
        );
        assert_eq!(
            canonical(&v),
            "[18446744073709551615,-9223372036854775808,0,-1]"
        );
    }

    #[test]
    fn string_escapes() {
        let v = Value::String(
            "\u{0}\u{1}\u{1f}\u{7f}\"\\/\n\r\t\u{8}\u{c}\u{2028}\u{d7ff}\u{e000}\u{ffff}".into(),
        );
        assert_eq!(
            dumps_ascii(&v),
            r#""\u0000\u0001\u001f\u007f\"\\/\n\r\t\b\f\u2028\ud7ff\ue000\uffff""#
        );
        assert_eq!(
            canonical(&v),
            "\"\\u0000\\u0001\\u001f\u{7f}\\\"\\\\/\\n\\r\\t\\b\\f\u{2028}\u{d7ff}\u{e000}\u{ffff}\""
        );
        assert_eq!(input_json_file(&v), dumps_ascii(&v));
    }

    #[test]
    fn containers_and_literals() {
        let v = parse(r#"{"z": {}, "a": [], "m": [{}, []], "b": null, "t": true, "f": false}"#);
        assert_eq!(
            dumps_ascii(&v),
            r#"{"z": {}, "a": [], "m": [{}, []], "b": null, "t": true, "f": false}"#
        );
        assert_eq!(
            canonical(&v),
            r#"{"a":[],"b":null,"f":false,"m":[{},[]],"t":true,"z":{}}"#
        );
    }

    #[test]
    fn key_sorting_is_code_point_order() {
        let v = parse(r#"{"b": 1, "a": 2, "é": 3, "Z": 4, "😀": 5, "\uffff": 6, "": 7}"#);
        assert_eq!(
            dumps_ascii(&v),
            r#"{"b": 1, "a": 2, "\u00e9": 3, "Z": 4, "\ud83d\ude00": 5, "\uffff": 6, "": 7}"#
        );
        assert_eq!(
            canonical(&v),
            "{\"\":7,\"Z\":4,\"a\":2,\"b\":1,\"é\":3,\"\u{ffff}\":6,\"😀\":5}"
        );
        assert_eq!(
            input_json_file(&v),
            r#"{"":7,"Z":4,"a":2,"b":1,"\u00e9":3,"\uffff":6,"\ud83d\ude00":5}"#
        );
    }

    #[test]
    fn nested_sorting_and_data_json_default() {
        let v = parse(r#"{"b": {"y": 1, "x": [{"d": 1, "c": 2}]}, "a": "x"}"#);
        assert_eq!(
            canonical(&v),
            r#"{"a":"x","b":{"x":[{"c":2,"d":1}],"y":1}}"#
        );
        assert_eq!(
            dumps_ascii(&v),
            r#"{"b": {"y": 1, "x": [{"d": 1, "c": 2}]}, "a": "x"}"#
        );
        assert_eq!(dumps_ascii(&json!({})), "{}");
        assert_eq!(dumps_ascii(&json!({"a": 1})), r#"{"a": 1}"#);
    }

    #[test]
    fn size_rule_counts_escapes() {
        // 400 KB of 'é' → each becomes \u00e9 (6 chars): well over 1 048 576.
        let v = json!({ "k": "é".repeat(200_000) });
        assert_eq!(dumps_ascii(&v).len(), 200_000 * 6 + r#"{"k": ""}"#.len());
    }
}
