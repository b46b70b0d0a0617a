//! Where and why Python's `json` module rejects a text: the `loc` offset and the `ctx.error`
//! message of the API's `json_invalid` error (FastAPI reports `JSONDecodeError.pos` and
//! `.msg`). A small re-implementation of the error paths of CPython's C scanner
//! (`Modules/_json.c`, Python 3.11), run only on bodies that serde_json refused.

/// Python's verdict on `text`: `None` when Python would parse it (NaN, Infinity, lone
/// surrogates, which serde_json refuses), else the character offset and the message.
pub fn decode_error(text: &str) -> Option<(usize, &'static str)> {
    // json.loads(bytes) decodes UTF-8 with "utf-8-sig": a leading BOM is not part of the text.
    let s: Vec<char> = text
        .strip_prefix('\u{feff}')
        .unwrap_or(text)
        .chars()
        .collect();
    let p = Scanner { s: &s };
    let start = p.ws(0);
    let end = match p.value(start) {
        Ok(end) => end,
        Err(Fail::NoValue(at)) => return Some((at, "Expecting value")),
        Err(Fail::Error(at, msg)) => return Some((at, msg)),
    };
    let end = p.ws(end);
    (end != s.len()).then_some((end, "Extra data"))
}

enum Fail {
    /// No JSON value starts here (Python's StopIteration): "Expecting value".
    NoValue(usize),
    /// A JSONDecodeError at this offset.
    Error(usize, &'static str),
}

struct Scanner<'a> {
    s: &'a [char],
}

impl Scanner<'_> {
    fn at(&self, i: usize) -> Option<char> {
        self.s.get(i).copied()
    }

    fn ws(&self, mut i: usize) -> usize {
        while matches!(self.at(i), Some(' ' | '\t' | '\n' | '\r')) {
            i += 1;
        }
        i
    }

    fn lit(&self, i: usize, word: &str) -> bool {
        word.chars()
            .enumerate()
            .all(|(k, c)| self.at(i + k) == Some(c))
    }

    /// One value at `i` (no whitespace skipped); its end.
    fn value(&self, i: usize) -> Result<usize, Fail> {
        match self.at(i) {
            None => Err(Fail::NoValue(i)),
            Some('"') => self.string(i + 1),
            Some('{') => self.object(i + 1),
            Some('[') => self.array(i + 1),
            Some(_) => {
                for word in ["null", "true", "false", "NaN", "Infinity", "-Infinity"] {
                    if self.lit(i, word) {
                        return Ok(i + word.chars().count());
                    }
                }
                self.number(i).ok_or(Fail::NoValue(i))
            }
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?` at `i`.
    fn number(&self, i: usize) -> Option<usize> {
        let digit = |k: usize| self.at(k).is_some_and(|c| c.is_ascii_digit());
        let mut k = i;
        if self.at(k) == Some('-') {
            k += 1;
        }
        match self.at(k) {
            Some('0') => k += 1,
            Some('1'..='9') => {
                while digit(k) {
                    k += 1;
                }
            }
            _ => return None,
        }
        if self.at(k) == Some('.') && digit(k + 1) {
            k += 1;
            while digit(k) {
                k += 1;
            }
        }
        if matches!(self.at(k), Some('e' | 'E')) {
            let mut e = k + 1;
            if matches!(self.at(e), Some('+' | '-')) {
                e += 1;
            }
            if digit(e) {
                while digit(e) {
                    e += 1;
                }
                k = e;
            }
        }
        Some(k)
    }

    /// A string whose opening quote is at `i - 1`; its end.
    fn string(&self, i: usize) -> Result<usize, Fail> {
        let begin = i - 1;
        let unterminated = Fail::Error(begin, "Unterminated string starting at");
        let mut k = i;
        loop {
            match self.at(k) {
                None => return Err(unterminated),
                Some('"') => return Ok(k + 1),
                Some(c) if (c as u32) < 0x20 => {
                    return Err(Fail::Error(k, "Invalid control character at"))
                }
                Some('\\') => {
                    let Some(esc) = self.at(k + 1) else {
                        return Err(unterminated);
                    };
                    if esc != 'u' {
                        if !matches!(esc, '"' | '\\' | '/' | 'b' | 'f' | 'n' | 'r' | 't') {
                            return Err(Fail::Error(k, "Invalid \\escape"));
                        }
                        k += 2;
                        continue;
                    }
                    // `\uXXXX`: the four digits must end before the end of the text.
                    let u = k + 1;
                    let bad = Fail::Error(u, "Invalid \\uXXXX escape");
                    if u + 5 >= self.s.len() {
                        return Err(bad);
                    }
                    if !(u + 1..u + 5).all(|d| self.at(d).is_some_and(|c| c.is_ascii_hexdigit())) {
                        return Err(bad);
                    }
                    k = u + 5;
                }
                Some(_) => k += 1,
            }
        }
    }

    /// An object whose `{` is at `i - 1`; its end.
    fn object(&self, i: usize) -> Result<usize, Fail> {
        let mut k = self.ws(i);
        if self.at(k) == Some('}') {
            return Ok(k + 1);
        }
        loop {
            if self.at(k) != Some('"') {
                return Err(Fail::Error(
                    k,
                    "Expecting property name enclosed in double quotes",
                ));
            }
            k = self.ws(self.string(k + 1)?);
            if self.at(k) != Some(':') {
                return Err(Fail::Error(k, "Expecting ':' delimiter"));
            }
            k = self.ws(k + 1);
            k = self.ws(self.value(k)?);
            match self.at(k) {
                Some('}') => return Ok(k + 1),
                Some(',') => k = self.ws(k + 1),
                _ => return Err(Fail::Error(k, "Expecting ',' delimiter")),
            }
        }
    }

    /// An array whose `[` is at `i - 1`; its end.
    fn array(&self, i: usize) -> Result<usize, Fail> {
        let mut k = self.ws(i);
        if self.at(k) == Some(']') {
            return Ok(k + 1);
        }
        loop {
            k = self.ws(self.value(k)?);
            match self.at(k) {
                Some(']') => return Ok(k + 1),
                Some(',') => k = self.ws(k + 1),
                _ => return Err(Fail::Error(k, "Expecting ',' delimiter")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::decode_error;

    /// Expected values printed by CPython 3.11: `json.loads(b)` → `(e.pos, e.msg)`.
    #[test]
    fn offsets_and_messages_are_pythons() {
        let cases: &[(&str, Option<(usize, &str)>)] = &[
            ("", Some((0, "Expecting value"))),
            ("   ", Some((3, "Expecting value"))),
            (
                "{",
                Some((1, "Expecting property name enclosed in double quotes")),
            ),
            ("{\"code\": ", Some((9, "Expecting value"))),
            (
                "{\"code\": \"abc",
                Some((9, "Unterminated string starting at")),
            ),
            ("{\"code\" 1}", Some((8, "Expecting ':' delimiter"))),
            (
                "{\"code\": 1,}",
                Some((11, "Expecting property name enclosed in double quotes")),
            ),
            ("{\"a\":1 \"b\":2}", Some((7, "Expecting ',' delimiter"))),
            ("[1,]", Some((3, "Expecting value"))),
            ("[1 2]", Some((3, "Expecting ',' delimiter"))),
            ("[", Some((1, "Expecting value"))),
            ("{\"a\": tru}", Some((6, "Expecting value"))),
            ("{\"a\": \"x\\qy\"}", Some((8, "Invalid \\escape"))),
            ("{\"a\": \"\\u12\"}", Some((8, "Invalid \\uXXXX escape"))),
            ("{\"a\": \"\\u12x4\"}", Some((8, "Invalid \\uXXXX escape"))),
            (
                "{\"a\": \"\u{1}\"}",
                Some((7, "Invalid control character at")),
            ),
            ("{} x", Some((3, "Extra data"))),
            ("{\"a\": 01}", Some((7, "Expecting ',' delimiter"))),
            ("{\"a\": -}", Some((6, "Expecting value"))),
            ("{\"a\": 1.}", Some((7, "Expecting ',' delimiter"))),
            ("{\"a\": 1e}", Some((7, "Expecting ',' delimiter"))),
            (
                "{\"é\": \"é\", x}",
                Some((11, "Expecting property name enclosed in double quotes")),
            ),
            ("\u{feff}{\"a\" 1}", Some((5, "Expecting ':' delimiter"))),
            ("{\"a\": [1, {\"b\": }]}", Some((16, "Expecting value"))),
            ("{\"a\": \"\\ud800\"}", None),
            ("nul", Some((0, "Expecting value"))),
            ("{\"a\": NaN", Some((9, "Expecting ',' delimiter"))),
            (
                "{1: 2}",
                Some((1, "Expecting property name enclosed in double quotes")),
            ),
            ("{\"a\": \"\\", Some((6, "Unterminated string starting at"))),
            ("{\"a\": \"\\u0041", Some((8, "Invalid \\uXXXX escape"))),
            ("\"abc", Some((0, "Unterminated string starting at"))),
            ("{\"a\": 1}}", Some((8, "Extra data"))),
            ("{\"a\":1,\n \"b\":\n}", Some((14, "Expecting value"))),
            (
                "{\"a\": [1.5e-3, -0, true, null, {}], \"b\": Infinity}",
                None,
            ),
        ];
        for (text, want) in cases {
            assert_eq!(decode_error(text), *want, "{text:?}");
        }
    }
}
