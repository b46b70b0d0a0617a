//! Error-message sanitisation (spec §6.6).
//!
//! Applied to handler error details, internal/infrastructure error messages and to
//! the `S` excerpt of the stderr classification (§2.6) – never to stdout/stderr.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::Regex;

/// Python's `\S` for `str` patterns. Python's whitespace set is Unicode `White_Space`
/// plus U+001C..U+001F, which Rust's `\s` lacks.
const NON_SPACE: &str = r"[^\s\x1C-\x1F]";
/// Python's `[^/\s]`.
const NON_SLASH_SPACE: &str = r"[^/\s\x1C-\x1F]";

static RULES: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
    let rules: [(String, &'static str); 8] = [
        (r"/tmp/job-[A-Za-z0-9_-]+".into(), "/tmp/job-***"),
        (format!("/var/folders/{NON_SPACE}+"), "/var/folders/***"),
        (format!("/Users/{NON_SLASH_SPACE}+"), "/home/***"),
        (format!("/home/{NON_SLASH_SPACE}+"), "/home/***"),
        (format!("/app/{NON_SPACE}+"), "/app/***"),
        (r"172\.\d+\.\d+\.\d+".into(), "172.***.***"),
        (r"10\.\d+\.\d+\.\d+".into(), "10.***.***"),
        (r"192\.168\.\d+\.\d+".into(), "192.168.***.***"),
    ];
    rules
        .into_iter()
        .map(|(pat, rep)| (Regex::new(&pat).expect("valid sanitiser regex"), rep))
        .collect()
});

/// Replacement for container-id-like hex runs.
pub const CONTAINER_ID_PLACEHOLDER: &str = "<container-id>";

/// Sanitises one message: the §6.6 rules, in order.
///
/// 1. `/tmp/job-[A-Za-z0-9_-]+` → `/tmp/job-***`
/// 2. `/var/folders/\S+` → `/var/folders/***`
/// 3. `/Users/[^/\s]+` → `/home/***`
/// 4. `/home/[^/\s]+` → `/home/***`
/// 5. `/app/\S+` → `/app/***`
/// 6. `172\.\d+\.\d+\.\d+` → `172.***.***`
/// 7. `10\.\d+\.\d+\.\d+` → `10.***.***`
/// 8. `192\.168\.\d+\.\d+` → `192.168.***.***`
/// 9. a run of exactly 64 lowercase hex chars not adjacent to other lowercase hex →
///    `<container-id>`
/// 10. a run of exactly 12 lowercase hex chars with at least one of `a`–`f`, not
///     adjacent to other lowercase hex → `<container-id>`
pub fn sanitize(s: &str) -> String {
    let mut out: Cow<'_, str> = Cow::Borrowed(s);
    for (re, rep) in RULES.iter() {
        if let Cow::Owned(replaced) = re.replace_all(&out, *rep) {
            out = Cow::Owned(replaced);
        }
    }
    replace_hex_ids(&out)
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

/// Rules 9 and 10. Both concern *maximal* runs of `[0-9a-f]` (that is what "not
/// adjacent to other lowercase hex" means), so one scan handles them: replacing a
/// 64-run never changes any other run, because the placeholder starts with `<` and
/// ends with `>`.
fn replace_hex_ids(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut last = 0; // start of the not-yet-copied text
    let mut i = 0;
    while i < bytes.len() {
        if !is_lower_hex(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && is_lower_hex(bytes[i]) {
            i += 1;
        }
        let run = &bytes[start..i];
        let is_id =
            run.len() == 64 || (run.len() == 12 && run.iter().any(|b| (b'a'..=b'f').contains(b)));
        if is_id {
            // Run boundaries are ASCII bytes, hence char boundaries.
            out.push_str(&s[last..start]);
            out.push_str(CONTAINER_ID_PLACEHOLDER);
            last = i;
        }
    }
    out.push_str(&s[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observed_vector() {
        assert_eq!(
            sanitize("Job type '10.1.2.3' not found"),
            "Job type '10.***.***' not found"
        );
    }

    #[test]
    fn paths() {
        assert_eq!(
            sanitize("open /tmp/job-ab_C-9/x failed"),
            "open /tmp/job-***/x failed"
        );
        assert_eq!(
            sanitize("at /var/folders/xy/T/abc.py line"),
            "at /var/folders/*** line"
        );
        assert_eq!(
            sanitize("/Users/alice/project/x.py"),
            "/home/***/project/x.py"
        );
        assert_eq!(sanitize("/home/bob/.cache"), "/home/***/.cache");
        assert_eq!(
            sanitize("File \"/app/main.py\", line 1"),
            "File \"/app/*** line 1"
        );
        assert_eq!(sanitize("cwd /app/x y"), "cwd /app/*** y");
    }

    #[test]
    fn python_whitespace_set() {
        // U+001F is whitespace for Python's \s: it ends the \S+ run.
        assert_eq!(sanitize("/app/a\u{1f}b"), "/app/***\u{1f}b");
        assert_eq!(sanitize("/app/a\u{3000}b"), "/app/***\u{3000}b");
    }

    #[test]
    fn ip_addresses() {
        assert_eq!(sanitize("host 172.17.0.2:80"), "host 172.***.***:80");
        assert_eq!(sanitize("host 10.0.0.1"), "host 10.***.***");
        assert_eq!(sanitize("host 192.168.1.20"), "host 192.168.***.***");
        // No word boundary in the reference patterns.
        assert_eq!(sanitize("v110.1.2.3"), "v110.***.***");
        assert_eq!(sanitize("10.1.2"), "10.1.2");
        assert_eq!(sanitize("8.8.8.8"), "8.8.8.8");
    }

    #[test]
    fn sixty_four_hex() {
        let id = "a".repeat(32) + &"0".repeat(32);
        assert_eq!(sanitize(&format!("c {id} x")), "c <container-id> x");
        assert_eq!(sanitize(&id), "<container-id>");
        // 65 or 63 hex: not a container id.
        let long = format!("{id}b");
        assert_eq!(sanitize(&long), long);
        let short = &id[..63];
        assert_eq!(sanitize(short), short);
        // Uppercase hex is not lowercase hex: adjacency only counts [0-9a-f].
        assert_eq!(sanitize(&format!("G{id}Z")), "G<container-id>Z");
        assert_eq!(sanitize(&format!("A{id}")), "A<container-id>");
        // Digits-only 64-run is still replaced (rule 9 needs no letter).
        let digits = "1".repeat(64);
        assert_eq!(sanitize(&digits), "<container-id>");
    }

    #[test]
    fn twelve_hex() {
        assert_eq!(
            sanitize("container 3f2a1b0c9d8e exited"),
            "container <container-id> exited"
        );
        // Needs a letter a-f.
        assert_eq!(sanitize("id 123456789012 x"), "id 123456789012 x");
        // Adjacent hex: run is 13 long.
        assert_eq!(sanitize("3f2a1b0c9d8ea"), "3f2a1b0c9d8ea");
        assert_eq!(sanitize("3f2a1b0c9d8"), "3f2a1b0c9d8");
        // Non-hex neighbours are fine.
        assert_eq!(sanitize("x3f2a1b0c9d8ez"), "x<container-id>z");
        assert_eq!(sanitize("tako-3f2a1b0c9d8e."), "tako-<container-id>.");
        // Two ids separated by a non-hex char.
        assert_eq!(
            sanitize("3f2a1b0c9d8e:3f2a1b0c9d8e"),
            "<container-id>:<container-id>"
        );
    }

    #[test]
    fn order_and_untouched_text() {
        assert_eq!(sanitize("plain message"), "plain message");
        assert_eq!(sanitize(""), "");
        assert_eq!(sanitize("héllo wörld"), "héllo wörld");
        // Rules run in order: the uuid's 12-char tail is a container-id look-alike.
        assert_eq!(
            sanitize("job 08404147-92dc-4fcb-87e5-1358a754838c"),
            "job 08404147-92dc-4fcb-87e5-<container-id>"
        );
    }
}
