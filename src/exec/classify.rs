//! Status and error classification of one execution (spec §2.6).
//!
//! [`decide`] implements the rows of the decision table that depend on how the run
//! ended (c timeout, d/e exit 137, f success, i everything else → [`classify`]).
//! The rows decided by callers before or around a run have constructors here:
//! [`config_error`] (a, b, h), [`service_unavailable`] (g) and [`internal_error`] (j).

use std::fmt::Write as _;
use std::sync::LazyLock;

use regex::Regex;

use super::record::{ErrorType, ExecError, Phase, Status};
use super::sanitize::sanitize;

/// Exit code reported when a phase hit its time limit.
pub const EXIT_TIMEOUT: i32 = 124;
/// Exit code of a SIGKILLed process (128 + 9).
pub const EXIT_SIGKILL: i32 = 137;
/// Exit code used for failures before/around the sandbox (refusals).
pub const EXIT_REFUSED: i32 = -1;
/// Number of stderr characters used for the `S` excerpt.
pub const EXCERPT_CHARS: usize = 200;

/// Message of rows e and the `oom` classifications.
pub const MSG_OOM: &str = "Execution exceeded memory limit";
/// Message of row d.
pub const MSG_KILLED_NOT_OOM: &str =
    "Process was killed (SIGKILL) but not by the memory limit (no OOM kill recorded for the container)";

/// The `killed` regex of the classify table, on lower-cased stderr, multi-line.
/// `\s` is Python's whitespace set (adds U+001C..U+001F to Rust's).
static KILLED_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?m)\boom-?kill(ed|er)\b|\bprocess killed\b|^[\s\x1C-\x1F]*killed\b|\bline \d+:[\s\x1C-\x1F]*\d+ killed\b",
    )
    .expect("valid killed regex")
});

/// What the message of a classify row is.
enum Msg {
    /// A fixed message.
    Fixed(&'static str),
    /// `S`: the first 200 characters of the raw stderr, sanitised.
    Excerpt,
}

/// Substring rows of the classify table, in order. A row matches if **any** of its
/// needles occurs in the lower-cased stderr.
const SUBSTRING_ROWS_BEFORE_KILLED: &[(&[&str], ErrorType, Msg)] = &[
    (
        &["memoryerror", "out of memory"],
        ErrorType::Oom,
        Msg::Fixed(MSG_OOM),
    ),
    (
        &["cannot allocate memory"],
        ErrorType::Oom,
        Msg::Fixed("Cannot allocate memory"),
    ),
];

const SUBSTRING_ROWS_AFTER_KILLED: &[(&[&str], ErrorType, Msg)] = &[
    (
        &["permission denied"],
        ErrorType::Permission,
        Msg::Fixed("Permission denied during execution"),
    ),
    (
        &["operation not permitted"],
        ErrorType::Permission,
        Msg::Fixed("Operation not permitted"),
    ),
    (&["syntaxerror"], ErrorType::SyntaxError, Msg::Excerpt),
    (&["indentationerror"], ErrorType::SyntaxError, Msg::Excerpt),
    (
        &["importerror", "modulenotfounderror"],
        ErrorType::ImportError,
        Msg::Excerpt,
    ),
    (&["typeerror"], ErrorType::TypeError, Msg::Excerpt),
    (&["valueerror"], ErrorType::ValueError, Msg::Excerpt),
    (&["keyerror"], ErrorType::KeyError, Msg::Excerpt),
    (&["indexerror"], ErrorType::IndexError, Msg::Excerpt),
    (&["attributeerror"], ErrorType::AttributeError, Msg::Excerpt),
    (&["nameerror"], ErrorType::NameError, Msg::Excerpt),
    (
        &["filenotfounderror"],
        ErrorType::FileNotFound,
        Msg::Excerpt,
    ),
    (
        &["isadirectoryerror"],
        ErrorType::FileError,
        Msg::Fixed("Expected file but found directory"),
    ),
    (
        &["notadirectoryerror"],
        ErrorType::FileError,
        Msg::Fixed("Expected directory but found file"),
    ),
    (&["oserror", "ioerror"], ErrorType::OsError, Msg::Excerpt),
    (
        &["recursionerror", "maximum recursion depth"],
        ErrorType::RecursionError,
        Msg::Fixed("Maximum recursion depth exceeded"),
    ),
    (&["assertionerror"], ErrorType::AssertionError, Msg::Excerpt),
    (
        &["zerodivisionerror"],
        ErrorType::DivisionError,
        Msg::Fixed("Division by zero"),
    ),
    (
        &["overflowerror"],
        ErrorType::OverflowError,
        Msg::Fixed("Numeric overflow"),
    ),
    (
        &["unicodeerror", "unicodedecodeerror", "unicodeencodeerror"],
        ErrorType::EncodingError,
        Msg::Fixed("Unicode encoding/decoding error"),
    ),
    (
        &["jsondecodeerror"],
        ErrorType::JsonError,
        Msg::Fixed("Invalid JSON format"),
    ),
    (
        &["connectionerror", "connectionrefusederror"],
        ErrorType::NetworkError,
        Msg::Fixed("Connection error"),
    ),
    (
        &["timeouterror"],
        ErrorType::NetworkTimeout,
        Msg::Fixed("Network request timed out"),
    ),
    (
        &["no matching distribution", "could not find a version"],
        ErrorType::DependencyError,
        Msg::Fixed("Failed to install required package (not found)"),
    ),
    (
        &["error: externally-managed-environment"],
        ErrorType::DependencyError,
        Msg::Fixed("Package installation failed (environment issue)"),
    ),
    (
        &["failed to download", "failed to fetch"],
        ErrorType::DependencyError,
        Msg::Fixed("Failed to download package (network issue)"),
    ),
];

/// `S`: the first 200 characters (code points) of the raw stderr, sanitised (§6.6).
pub fn stderr_excerpt(stderr: &str) -> String {
    let end = stderr
        .char_indices()
        .nth(EXCERPT_CHARS)
        .map_or(stderr.len(), |(i, _)| i);
    sanitize(&stderr[..end])
}

fn render(msg: &Msg, stderr: &str) -> String {
    match msg {
        Msg::Fixed(m) => (*m).to_owned(),
        Msg::Excerpt => stderr_excerpt(stderr),
    }
}

fn first_substring_row(
    rows: &[(&[&str], ErrorType, Msg)],
    lower: &str,
    stderr: &str,
) -> Option<(ErrorType, String)> {
    rows.iter()
        .find(|(needles, _, _)| needles.iter().any(|n| lower.contains(n)))
        .map(|(_, t, m)| (*t, render(m, stderr)))
}

/// `classify(exit_code, stderr)` of spec §2.6: the error type and message for a run
/// that ended with `exit_code` and printed `stderr` (uncapped, or the classification
/// window of [`super::truncate::CappedBuffer`]). Checks run in table order, first
/// match wins; substring tests are on the lower-cased stderr.
pub fn classify(exit_code: i32, stderr: &str) -> (ErrorType, String) {
    let fixed = |t: ErrorType, m: &str| (t, m.to_owned());
    match exit_code {
        137 => return fixed(ErrorType::Oom, MSG_OOM),
        143 => return fixed(ErrorType::Cancelled, "Execution was terminated"),
        139 => return fixed(ErrorType::Segfault, "Segmentation fault in executed code"),
        134 => {
            return fixed(
                ErrorType::Abort,
                "Process aborted (assertion failure or abort() called)",
            )
        }
        136 => {
            return fixed(
                ErrorType::ArithmeticError,
                "Floating point exception (division by zero)",
            )
        }
        135 => return fixed(ErrorType::BusError, "Bus error (invalid memory access)"),
        141 => return fixed(ErrorType::PipeError, "Broken pipe"),
        _ => {}
    }

    let lower = stderr.to_lowercase();
    if let Some(hit) = first_substring_row(SUBSTRING_ROWS_BEFORE_KILLED, &lower, stderr) {
        return hit;
    }
    if KILLED_RE.is_match(&lower) {
        return fixed(ErrorType::Killed, "Process was killed by system");
    }
    if let Some(hit) = first_substring_row(SUBSTRING_ROWS_AFTER_KILLED, &lower, stderr) {
        return hit;
    }
    if lower.contains("resolving dependencies") && lower.contains("conflict") {
        return fixed(ErrorType::DependencyError, "Package dependency conflict");
    }
    if lower.contains("docker") && lower.contains("not found") {
        return fixed(ErrorType::DockerError, "Docker image or command not found");
    }
    if lower.contains("circuit breaker") {
        return fixed(
            ErrorType::ServiceUnavailable,
            "Service temporarily unavailable",
        );
    }
    if exit_code != 0 {
        let msg = if stderr.is_empty() {
            format!("Exit code {exit_code}")
        } else {
            stderr_excerpt(stderr)
        };
        return (ErrorType::RuntimeError, msg);
    }
    fixed(ErrorType::Unknown, "Unknown error")
}

/// Facts about a finished sandboxed run, the input of [`decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunFacts<'a> {
    /// Exit code of the user process (124 after a phase timeout); `None` if unknown.
    pub exit_code: Option<i32>,
    /// The host killed the run because it exceeded `startup + timeout + 5` seconds.
    pub host_timeout: bool,
    /// `timing.phase_at_exit` from the phase file.
    pub phase_at_exit: Option<Phase>,
    /// From the cgroup: `Some(true)` an OOM kill was recorded, `Some(false)` none was
    /// recorded, `None` unknown.
    pub oom_killed: Option<bool>,
    /// Uncapped stderr (or its classification window).
    pub stderr: &'a str,
    /// `timing.startup_ms`.
    pub startup_ms: Option<u64>,
    /// `timing.execution_ms`.
    pub execution_ms: Option<u64>,
    /// Effective execution timeout in seconds.
    pub timeout_s: u64,
    /// Effective startup timeout in seconds.
    pub startup_timeout_s: u64,
}

fn nonzero(v: Option<u64>) -> Option<u64> {
    v.filter(|&ms| ms != 0)
}

/// Rows c–f and i of the §2.6 decision table for a run that reached the sandbox.
///
/// * c: host-level timeout or exit 124 → `timeout` with `startup_timeout`,
///   `execution_timeout` or `timeout` depending on `phase_at_exit`.
/// * d: exit 137 with `oom_killed == Some(false)` → `failed` / `killed`.
/// * e: exit 137 otherwise → `oom` / `oom`.
/// * f: exit 0 → `succeeded`, no error.
/// * i: anything else → `failed` / [`classify`] (an unknown exit code counts as -1).
///
/// `error.phase` is `phase_at_exit`. Rows g and h (infrastructure / configuration
/// refusals) must be decided by the caller before calling this.
pub fn decide(f: &RunFacts<'_>) -> (Status, Option<ExecError>) {
    let phase = f.phase_at_exit;
    if f.host_timeout || f.exit_code == Some(EXIT_TIMEOUT) {
        let (error_type, message) = match phase {
            Some(Phase::Startup) => {
                let mut m = format!(
                    "Startup phase exceeded time limit ({}s)",
                    f.startup_timeout_s
                );
                if let Some(ms) = nonzero(f.startup_ms) {
                    let _ = write!(m, " (startup took {ms}ms)");
                }
                (ErrorType::StartupTimeout, m)
            }
            Some(Phase::Execution) => {
                let mut m = format!("Code execution exceeded time limit ({}s)", f.timeout_s);
                if let (Some(s), Some(e)) = (nonzero(f.startup_ms), nonzero(f.execution_ms)) {
                    let _ = write!(m, " (startup: {s}ms, execution: {e}ms)");
                }
                (ErrorType::ExecutionTimeout, m)
            }
            _ if f.host_timeout => (
                ErrorType::Timeout,
                format!("Execution timeout exceeded ({}s)", f.timeout_s),
            ),
            _ => (
                ErrorType::Timeout,
                format!("Execution exceeded time limit ({}s)", f.timeout_s),
            ),
        };
        return (
            Status::Timeout,
            Some(ExecError::new(error_type, message, phase)),
        );
    }
    match f.exit_code {
        Some(EXIT_SIGKILL) if f.oom_killed == Some(false) => (
            Status::Failed,
            Some(ExecError::new(ErrorType::Killed, MSG_KILLED_NOT_OOM, phase)),
        ),
        Some(EXIT_SIGKILL) => (
            Status::Oom,
            Some(ExecError::new(ErrorType::Oom, MSG_OOM, phase)),
        ),
        Some(0) => (Status::Succeeded, None),
        other => {
            let (t, m) = classify(other.unwrap_or(EXIT_REFUSED), f.stderr);
            (Status::Failed, Some(ExecError::new(t, m, phase)))
        }
    }
}

/// Rows a, b, h: the run was refused because of configuration
/// (e.g. `Job type '<name>' not found (production mode)`). Message used as given.
pub fn config_error(msg: impl Into<String>) -> (Status, ExecError) {
    (
        Status::Failed,
        ExecError::new(ErrorType::ConfigError, msg, None),
    )
}

/// Row g: the sandbox backend is unavailable. The message is sanitised (§6.6).
pub fn service_unavailable(msg: &str) -> (Status, ExecError) {
    (
        Status::Failed,
        ExecError::new(ErrorType::ServiceUnavailable, sanitize(msg), None),
    )
}

/// Row j: unexpected failure during the run. The message is sanitised (§6.6).
pub fn internal_error(msg: &str) -> (Status, ExecError) {
    (
        Status::Failed,
        ExecError::new(ErrorType::InternalError, sanitize(msg), None),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(exit_code: Option<i32>) -> RunFacts<'static> {
        RunFacts {
            exit_code,
            host_timeout: false,
            phase_at_exit: Some(Phase::Completed),
            oom_killed: None,
            stderr: "",
            startup_ms: Some(12),
            execution_ms: Some(345),
            timeout_s: 30,
            startup_timeout_s: 120,
        }
    }

    fn err(r: (Status, Option<ExecError>)) -> (Status, ErrorType, String, Option<Phase>) {
        let e = r.1.expect("error expected");
        (r.0, e.error_type, e.message, e.phase)
    }

    // ---- decision table -------------------------------------------------------

    #[test]
    fn row_c_startup_timeout() {
        let f = RunFacts {
            exit_code: Some(124),
            phase_at_exit: Some(Phase::Startup),
            ..facts(None)
        };
        assert_eq!(
            err(decide(&f)),
            (
                Status::Timeout,
                ErrorType::StartupTimeout,
                "Startup phase exceeded time limit (120s) (startup took 12ms)".into(),
                Some(Phase::Startup)
            )
        );
        let f = RunFacts {
            startup_ms: None,
            ..f
        };
        assert_eq!(
            err(decide(&f)).2,
            "Startup phase exceeded time limit (120s)"
        );
        let f = RunFacts {
            startup_ms: Some(0),
            ..f
        };
        assert_eq!(
            err(decide(&f)).2,
            "Startup phase exceeded time limit (120s)"
        );
    }

    #[test]
    fn row_c_execution_timeout() {
        let f = RunFacts {
            exit_code: Some(124),
            phase_at_exit: Some(Phase::Execution),
            ..facts(None)
        };
        assert_eq!(
            err(decide(&f)),
            (
                Status::Timeout,
                ErrorType::ExecutionTimeout,
                "Code execution exceeded time limit (30s) (startup: 12ms, execution: 345ms)".into(),
                Some(Phase::Execution)
            )
        );
        for (s, e) in [(Some(0), Some(5)), (Some(5), Some(0)), (None, Some(5))] {
            let g = RunFacts {
                startup_ms: s,
                execution_ms: e,
                ..f
            };
            assert_eq!(
                err(decide(&g)).2,
                "Code execution exceeded time limit (30s)"
            );
        }
        // Host-level timeout with a known phase uses the phase message too.
        let g = RunFacts {
            exit_code: None,
            host_timeout: true,
            ..f
        };
        assert_eq!(err(decide(&g)).1, ErrorType::ExecutionTimeout);
    }

    #[test]
    fn row_c_generic_timeouts() {
        let f = RunFacts {
            exit_code: None,
            host_timeout: true,
            phase_at_exit: None,
            ..facts(None)
        };
        assert_eq!(
            err(decide(&f)),
            (
                Status::Timeout,
                ErrorType::Timeout,
                "Execution timeout exceeded (30s)".into(),
                None
            )
        );
        // exit 124 without a startup/execution phase (e.g. sys.exit(124)).
        let f = facts(Some(124));
        assert_eq!(
            err(decide(&f)),
            (
                Status::Timeout,
                ErrorType::Timeout,
                "Execution exceeded time limit (30s)".into(),
                Some(Phase::Completed)
            )
        );
        // host timeout wins over any exit code
        let f = RunFacts {
            exit_code: Some(137),
            host_timeout: true,
            phase_at_exit: None,
            ..facts(None)
        };
        assert_eq!(decide(&f).0, Status::Timeout);
    }

    #[test]
    fn row_d_killed_not_oom() {
        let f = RunFacts {
            oom_killed: Some(false),
            phase_at_exit: Some(Phase::Execution),
            ..facts(Some(137))
        };
        assert_eq!(
            err(decide(&f)),
            (
                Status::Failed,
                ErrorType::Killed,
                "Process was killed (SIGKILL) but not by the memory limit (no OOM kill recorded for the container)".into(),
                Some(Phase::Execution)
            )
        );
    }

    #[test]
    fn row_e_oom() {
        for oom in [Some(true), None] {
            let f = RunFacts {
                oom_killed: oom,
                phase_at_exit: Some(Phase::Execution),
                ..facts(Some(137))
            };
            assert_eq!(
                err(decide(&f)),
                (
                    Status::Oom,
                    ErrorType::Oom,
                    "Execution exceeded memory limit".into(),
                    Some(Phase::Execution)
                )
            );
        }
    }

    #[test]
    fn row_f_success() {
        // stderr content does not matter on exit 0
        let f = RunFacts {
            stderr: "MemoryError",
            ..facts(Some(0))
        };
        assert_eq!(decide(&f), (Status::Succeeded, None));
    }

    #[test]
    fn row_i_classified_failure() {
        let f = RunFacts {
            stderr: "Traceback (most recent call last):\nZeroDivisionError: division by zero\n",
            phase_at_exit: Some(Phase::Completed),
            ..facts(Some(1))
        };
        assert_eq!(
            err(decide(&f)),
            (
                Status::Failed,
                ErrorType::DivisionError,
                "Division by zero".into(),
                Some(Phase::Completed)
            )
        );
        // exit 143: status stays failed
        assert_eq!(err(decide(&facts(Some(143)))).0, Status::Failed);
        // unknown exit code → classify(-1, …)
        let f = RunFacts {
            phase_at_exit: None,
            ..facts(None)
        };
        assert_eq!(
            err(decide(&f)),
            (
                Status::Failed,
                ErrorType::RuntimeError,
                "Exit code -1".into(),
                None
            )
        );
    }

    #[test]
    fn caller_rows_constructors() {
        let (s, e) = config_error("Job type 'x' not found (production mode)");
        assert_eq!(s, Status::Failed);
        assert_eq!(e.error_type, ErrorType::ConfigError);
        assert_eq!(e.message, "Job type 'x' not found (production mode)");
        assert_eq!(e.phase, None);

        let (s, e) = service_unavailable("sandbox backend failure: cannot reach 10.0.0.1");
        assert_eq!(s, Status::Failed);
        assert_eq!(e.error_type, ErrorType::ServiceUnavailable);
        assert_eq!(
            e.message,
            "sandbox backend failure: cannot reach 10.***.***"
        );

        let (s, e) = internal_error("boom in /tmp/job-abc/x");
        assert_eq!(s, Status::Failed);
        assert_eq!(e.error_type, ErrorType::InternalError);
        assert_eq!(e.message, "boom in /tmp/job-***/x");
    }

    // ---- classify table -------------------------------------------------------

    fn c(exit: i32, stderr: &str) -> (ErrorType, String) {
        classify(exit, stderr)
    }

    fn t(exit: i32, stderr: &str) -> ErrorType {
        classify(exit, stderr).0
    }

    #[test]
    fn classify_exit_code_rows() {
        // exit codes win over any stderr content
        let noise = "SyntaxError MemoryError";
        assert_eq!(c(137, noise), (ErrorType::Oom, MSG_OOM.into()));
        assert_eq!(
            c(143, noise),
            (ErrorType::Cancelled, "Execution was terminated".into())
        );
        assert_eq!(
            c(139, noise),
            (
                ErrorType::Segfault,
                "Segmentation fault in executed code".into()
            )
        );
        assert_eq!(
            c(134, noise),
            (
                ErrorType::Abort,
                "Process aborted (assertion failure or abort() called)".into()
            )
        );
        assert_eq!(
            c(136, noise),
            (
                ErrorType::ArithmeticError,
                "Floating point exception (division by zero)".into()
            )
        );
        assert_eq!(
            c(135, noise),
            (
                ErrorType::BusError,
                "Bus error (invalid memory access)".into()
            )
        );
        assert_eq!(c(141, noise), (ErrorType::PipeError, "Broken pipe".into()));
    }

    #[test]
    fn classify_memory_rows() {
        assert_eq!(c(1, "MemoryError"), (ErrorType::Oom, MSG_OOM.into()));
        assert_eq!(
            c(1, "fatal: Out Of Memory"),
            (ErrorType::Oom, MSG_OOM.into())
        );
        assert_eq!(
            c(1, "OSError: [Errno 12] Cannot allocate memory"),
            (ErrorType::Oom, "Cannot allocate memory".into())
        );
    }

    #[test]
    fn classify_killed_regex() {
        let k = (
            ErrorType::Killed,
            "Process was killed by system".to_string(),
        );
        assert_eq!(c(1, "OOM-Killed"), k);
        assert_eq!(c(1, "oomkiller invoked"), k);
        assert_eq!(c(1, "the oom-killer ran"), k);
        assert_eq!(c(1, "Process killed by signal"), k);
        assert_eq!(c(1, "some output\n   Killed\n"), k);
        assert_eq!(c(1, "Killed"), k);
        assert_eq!(c(1, "/entry.sh: line 12:   345 Killed  python"), k);
        // not at line start, no other pattern
        assert_ne!(c(1, "we Killed it").0, ErrorType::Killed);
        assert_ne!(c(1, "killedx").0, ErrorType::Killed);
        assert_ne!(c(1, "oomkilling").0, ErrorType::Killed);
        // memory rows come first
        assert_eq!(c(1, "Killed\nMemoryError").0, ErrorType::Oom);
        // killed before permission
        assert_eq!(c(1, "Killed\npermission denied").0, ErrorType::Killed);
    }

    #[test]
    fn classify_fixed_message_rows() {
        let cases: &[(&str, ErrorType, &str)] = &[
            (
                "PermissionError: [Errno 13] Permission denied: '/x'",
                ErrorType::Permission,
                "Permission denied during execution",
            ),
            (
                "PermissionError: Operation not permitted",
                ErrorType::Permission,
                "Operation not permitted",
            ),
            (
                "IsADirectoryError: [Errno 21]",
                ErrorType::FileError,
                "Expected file but found directory",
            ),
            (
                "NotADirectoryError: [Errno 20]",
                ErrorType::FileError,
                "Expected directory but found file",
            ),
            (
                "RecursionError: maximum recursion depth exceeded",
                ErrorType::RecursionError,
                "Maximum recursion depth exceeded",
            ),
            (
                "maximum recursion depth exceeded while calling",
                ErrorType::RecursionError,
                "Maximum recursion depth exceeded",
            ),
            (
                "ZeroDivisionError: division by zero",
                ErrorType::DivisionError,
                "Division by zero",
            ),
            (
                "OverflowError: math range error",
                ErrorType::OverflowError,
                "Numeric overflow",
            ),
            (
                "UnicodeError: x",
                ErrorType::EncodingError,
                "Unicode encoding/decoding error",
            ),
            (
                "UnicodeDecodeError: 'utf-8' codec",
                ErrorType::EncodingError,
                "Unicode encoding/decoding error",
            ),
            (
                "UnicodeEncodeError: 'ascii' codec",
                ErrorType::EncodingError,
                "Unicode encoding/decoding error",
            ),
            (
                "json.decoder.JSONDecodeError: Expecting value",
                ErrorType::JsonError,
                "Invalid JSON format",
            ),
            (
                "requests.exceptions.ConnectionError: x",
                ErrorType::NetworkError,
                "Connection error",
            ),
            (
                "ConnectionRefusedError: [Errno 111]",
                ErrorType::NetworkError,
                "Connection error",
            ),
            (
                "TimeoutError: timed out",
                ErrorType::NetworkTimeout,
                "Network request timed out",
            ),
            (
                "ERROR: No matching distribution found for nope",
                ErrorType::DependencyError,
                "Failed to install required package (not found)",
            ),
            (
                "ERROR: Could not find a version that satisfies",
                ErrorType::DependencyError,
                "Failed to install required package (not found)",
            ),
            (
                "error: externally-managed-environment",
                ErrorType::DependencyError,
                "Package installation failed (environment issue)",
            ),
            (
                "error: Failed to download `x`",
                ErrorType::DependencyError,
                "Failed to download package (network issue)",
            ),
            (
                "error: Failed to fetch: https://pypi.org",
                ErrorType::DependencyError,
                "Failed to download package (network issue)",
            ),
            (
                "  × No solution found when resolving dependencies: conflict on x",
                ErrorType::DependencyError,
                "Package dependency conflict",
            ),
            (
                "docker: image not found",
                ErrorType::DockerError,
                "Docker image or command not found",
            ),
            (
                "circuit breaker open",
                ErrorType::ServiceUnavailable,
                "Service temporarily unavailable",
            ),
        ];
        for (stderr, ty, msg) in cases {
            assert_eq!(c(1, stderr), (*ty, (*msg).to_string()), "{stderr}");
        }
        // both words needed
        assert_eq!(t(1, "resolving dependencies"), ErrorType::RuntimeError);
        assert_eq!(t(1, "docker is fine"), ErrorType::RuntimeError);
    }

    #[test]
    fn classify_excerpt_rows() {
        let cases: &[(&str, ErrorType)] = &[
            ("SyntaxError: invalid syntax", ErrorType::SyntaxError),
            (
                "IndentationError: unexpected indent",
                ErrorType::SyntaxError,
            ),
            ("ImportError: cannot import name", ErrorType::ImportError),
            (
                "ModuleNotFoundError: No module named 'x'",
                ErrorType::ImportError,
            ),
            ("TypeError: unsupported operand", ErrorType::TypeError),
            ("ValueError: invalid literal", ErrorType::ValueError),
            ("KeyError: 'a'", ErrorType::KeyError),
            ("IndexError: list index out of range", ErrorType::IndexError),
            ("AttributeError: 'x' object", ErrorType::AttributeError),
            ("NameError: name 'x' is not defined", ErrorType::NameError),
            (
                "FileNotFoundError: [Errno 2] No such file",
                ErrorType::FileNotFound,
            ),
            ("OSError: [Errno 5]", ErrorType::OsError),
            ("IOError: x", ErrorType::OsError),
            ("AssertionError: boom", ErrorType::AssertionError),
        ];
        for (line, ty) in cases {
            let stderr = format!("Traceback (most recent call last):\n  File \"/code/main.py\", line 1, in <module>\n{line}\n");
            let expected: String = stderr.chars().take(200).collect();
            assert_eq!(c(1, &stderr), (*ty, expected), "{line}");
        }
    }

    #[test]
    fn classify_table_order() {
        // permission before syntax_error
        assert_eq!(
            t(1, "SyntaxError\nPermission denied"),
            ErrorType::Permission
        );
        // syntax before import, import before type ...
        assert_eq!(t(1, "TypeError\nImportError"), ErrorType::ImportError);
        assert_eq!(t(1, "KeyError\nValueError"), ErrorType::ValueError);
        // filenotfounderror is checked before oserror
        assert_eq!(t(1, "OSError FileNotFoundError"), ErrorType::FileNotFound);
        // "unicodedecodeerror" contains "decodeerror" but also matches before json
        assert_eq!(t(1, "UnicodeDecodeError"), ErrorType::EncodingError);
        // ConnectionRefusedError contains no "timeouterror"
        assert_eq!(t(1, "ConnectionRefusedError"), ErrorType::NetworkError);
        // user output can trigger classification
        assert_eq!(t(2, "user printed typeerror"), ErrorType::TypeError);
    }

    #[test]
    fn classify_excerpt_is_200_chars_sanitised() {
        let stderr = format!("ValueError: {} at 10.1.2.3", "é".repeat(300));
        let (ty, msg) = c(1, &stderr);
        assert_eq!(ty, ErrorType::ValueError);
        assert_eq!(msg.chars().count(), 200);
        assert!(msg.starts_with("ValueError: éé"));
        // sanitising applies to the first 200 chars only
        let stderr = "ValueError in /home/alice/x.py".to_string();
        assert_eq!(c(1, &stderr).1, "ValueError in /home/***/x.py");
        assert_eq!(stderr_excerpt(""), "");
    }

    #[test]
    fn classify_fallbacks() {
        assert_eq!(
            c(2, "something bad happened"),
            (ErrorType::RuntimeError, "something bad happened".into())
        );
        assert_eq!(c(3, ""), (ErrorType::RuntimeError, "Exit code 3".into()));
        assert_eq!(c(-1, ""), (ErrorType::RuntimeError, "Exit code -1".into()));
        assert_eq!(
            c(
                -1,
                "Runtime dependency installation is disabled. Use pre-built images or set allow_runtime_requirements=True."
            ),
            (
                ErrorType::RuntimeError,
                "Runtime dependency installation is disabled. Use pre-built images or set allow_runtime_requirements=True.".into()
            )
        );
        assert_eq!(c(0, ""), (ErrorType::Unknown, "Unknown error".into()));
        assert_eq!(c(0, "hello"), (ErrorType::Unknown, "Unknown error".into()));
        // exit 0 still runs the substring rows
        assert_eq!(t(0, "MemoryError"), ErrorType::Oom);
    }
}
