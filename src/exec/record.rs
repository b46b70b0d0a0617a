//! Serde types of the execution contract (spec §1.4, §2.2, §2.6, §2.8).
//!
//! Every struct serialises **all** of its keys (nulls included) in the reference
//! key order, so the JSON produced here can be handed to clients unchanged.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Maximum length of [`ExecError::message`] in characters (spec §1.4: 1–4096).
pub const MAX_ERROR_MESSAGE_CHARS: usize = 4096;

macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident => $text:literal, )+ }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $text)] $variant, )+
        }

        impl $name {
            /// Every value, in the order of the spec's vocabulary.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The exact wire string of this value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }

            /// Parses the exact wire string (case-sensitive).
            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $( $text => Some($name::$variant), )+
                    _ => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum! {
    /// The 39-value `error.type` vocabulary (spec §2.6).
    pub enum ErrorType {
        /// Generic timeout (phase unknown).
        Timeout => "timeout",
        /// The startup (dependency install) phase exceeded `startup_timeout`.
        StartupTimeout => "startup_timeout",
        /// User code exceeded `timeout`.
        ExecutionTimeout => "execution_timeout",
        /// Memory limit exceeded.
        Oom => "oom",
        /// Cancelled (cancel, shutdown, or exit code 143).
        Cancelled => "cancelled",
        /// SIGSEGV (exit 139).
        Segfault => "segfault",
        /// SIGABRT (exit 134).
        Abort => "abort",
        /// SIGFPE (exit 136).
        ArithmeticError => "arithmetic_error",
        /// SIGBUS (exit 135).
        BusError => "bus_error",
        /// SIGPIPE (exit 141).
        PipeError => "pipe_error",
        /// Killed by something other than the memory limit.
        Killed => "killed",
        /// Permission denied / operation not permitted.
        Permission => "permission",
        /// `SyntaxError` / `IndentationError`.
        SyntaxError => "syntax_error",
        /// `ImportError` / `ModuleNotFoundError`.
        ImportError => "import_error",
        /// `TypeError`.
        TypeError => "type_error",
        /// `ValueError`.
        ValueError => "value_error",
        /// `KeyError`.
        KeyError => "key_error",
        /// `IndexError`.
        IndexError => "index_error",
        /// `AttributeError`.
        AttributeError => "attribute_error",
        /// `NameError`.
        NameError => "name_error",
        /// `FileNotFoundError`.
        FileNotFound => "file_not_found",
        /// `IsADirectoryError` / `NotADirectoryError`.
        FileError => "file_error",
        /// `OSError` / `IOError`.
        OsError => "os_error",
        /// `RecursionError`.
        RecursionError => "recursion_error",
        /// `AssertionError`.
        AssertionError => "assertion_error",
        /// `ZeroDivisionError`.
        DivisionError => "division_error",
        /// `OverflowError`.
        OverflowError => "overflow_error",
        /// Unicode encode/decode errors.
        EncodingError => "encoding_error",
        /// `JSONDecodeError`.
        JsonError => "json_error",
        /// Runtime requirement installation failed.
        DependencyError => "dependency_error",
        /// Connection errors.
        NetworkError => "network_error",
        /// `TimeoutError` raised by user code.
        NetworkTimeout => "network_timeout",
        /// Image or command not found.
        DockerError => "docker_error",
        /// Sandbox backend unavailable / queue full / breaker open.
        ServiceUnavailable => "service_unavailable",
        /// Job-type or limit configuration refused the run.
        ConfigError => "config_error",
        /// Unexpected failure inside the service.
        InternalError => "internal_error",
        /// Interrupted by a server restart.
        Interrupted => "interrupted",
        /// Any other non-zero exit.
        RuntimeError => "runtime_error",
        /// Nothing matched.
        Unknown => "unknown",
    }
}

string_enum! {
    /// Execution phase (`timing.phase_at_exit`, `error.phase`; spec §2.2).
    pub enum Phase {
        /// Container start / dependency installation.
        Startup => "startup",
        /// User code running.
        Execution => "execution",
        /// User code finished.
        Completed => "completed",
        /// Entry point failed outside a known phase.
        Failed => "failed",
    }
}

string_enum! {
    /// Record status (spec §0).
    pub enum Status {
        /// Waiting to run.
        Queued => "queued",
        /// Running.
        Running => "running",
        /// Exit code 0.
        Succeeded => "succeeded",
        /// Any failure that is not one of the specific statuses below.
        Failed => "failed",
        /// Time limit exceeded.
        Timeout => "timeout",
        /// Memory limit exceeded.
        Oom => "oom",
        /// Cancelled by the user or a shutdown.
        Cancelled => "cancelled",
    }
}

impl Status {
    /// `true` for `succeeded`, `failed`, `timeout`, `oom` and `cancelled`: a record in
    /// such a status is never modified afterwards.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Status::Queued | Status::Running)
    }
}

/// The `error` object of a record: `{"type", "message", "phase"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecError {
    /// Error classification.
    #[serde(rename = "type")]
    pub error_type: ErrorType,
    /// Human-readable message (1–4096 characters).
    pub message: String,
    /// Phase the error happened in, if known.
    pub phase: Option<Phase>,
}

impl ExecError {
    /// Builds an error, enforcing the 1–4096 character message rule: longer messages are
    /// cut to 4096 characters and an empty message is replaced by the type's wire string.
    pub fn new(error_type: ErrorType, message: impl Into<String>, phase: Option<Phase>) -> Self {
        let mut message = message.into();
        if let Some((idx, _)) = message.char_indices().nth(MAX_ERROR_MESSAGE_CHARS) {
            message.truncate(idx);
        }
        if message.is_empty() {
            message = error_type.as_str().to_owned();
        }
        ExecError {
            error_type,
            message,
            phase,
        }
    }
}

impl fmt::Display for ExecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error_type, self.message)
    }
}

/// The `timing` object of a record (spec §2.2, parsed from the phase file).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    /// Milliseconds from container start to the start of user code.
    pub startup_ms: Option<u64>,
    /// Milliseconds spent installing runtime requirements (0 when none).
    pub dep_install_ms: Option<u64>,
    /// Milliseconds of user code.
    pub execution_ms: Option<u64>,
    /// Milliseconds of the whole sandboxed run.
    pub total_ms: Option<u64>,
    /// Phase the run was in when it ended.
    pub phase_at_exit: Option<Phase>,
}

/// The `resource_usage` object of a full record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceUsage {
    /// Peak resident memory in MiB.
    pub max_rss_mb: Option<f64>,
    /// CPU time in milliseconds.
    pub cpu_time_ms: Option<u64>,
    /// Wall time in milliseconds (= `duration_ms` in the reference).
    pub wall_time_ms: Option<u64>,
}

/// One output (or input replay) artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// File name (top level of `/output`).
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Lowercase hex sha256 of the content.
    pub sha256: String,
    /// MIME type; null for output artifacts.
    pub content_type: Option<String>,
}

/// What one sandboxed run yields (CLI `run --json`, and the input of a record).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionResult {
    /// Terminal status of the run.
    pub status: Status,
    /// Exit code of the user process (124 on timeouts; -1 for refusals; null if unknown).
    pub exit_code: Option<i32>,
    /// Captured stdout, capped (§2.5).
    pub stdout: String,
    /// Captured stderr, capped (§2.5).
    pub stderr: String,
    /// Whether `stdout` was capped.
    pub stdout_truncated: bool,
    /// Whether `stderr` was capped.
    pub stderr_truncated: bool,
    /// Parsed `/output/result.json`, if any.
    pub output: Option<serde_json::Value>,
    /// Output artifacts.
    pub artifacts: Vec<Artifact>,
    /// Error, null on success.
    pub error: Option<ExecError>,
    /// Timing from the phase file, null if the run never started.
    pub timing: Option<Timing>,
    /// Resource usage, if measured.
    pub resource_usage: Option<ResourceUsage>,
}

impl ExecutionResult {
    /// A result for a run refused or failed before any sandbox was started:
    /// the given status and error, `exit_code` as given, everything else empty.
    pub fn refused(status: Status, error: ExecError, exit_code: Option<i32>) -> Self {
        ExecutionResult {
            status,
            exit_code,
            stdout: String::new(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            output: None,
            artifacts: Vec::new(),
            error: Some(error),
            timing: None,
            resource_usage: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn error_type_vocabulary_is_complete_and_exact() {
        let expected = [
            "timeout",
            "startup_timeout",
            "execution_timeout",
            "oom",
            "cancelled",
            "segfault",
            "abort",
            "arithmetic_error",
            "bus_error",
            "pipe_error",
            "killed",
            "permission",
            "syntax_error",
            "import_error",
            "type_error",
            "value_error",
            "key_error",
            "index_error",
            "attribute_error",
            "name_error",
            "file_not_found",
            "file_error",
            "os_error",
            "recursion_error",
            "assertion_error",
            "division_error",
            "overflow_error",
            "encoding_error",
            "json_error",
            "dependency_error",
            "network_error",
            "network_timeout",
            "docker_error",
            "service_unavailable",
            "config_error",
            "internal_error",
            "interrupted",
            "runtime_error",
            "unknown",
        ];
        assert_eq!(ErrorType::ALL.len(), 39);
        let got: Vec<&str> = ErrorType::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(got, expected);
        for t in ErrorType::ALL {
            let j = serde_json::to_string(t).unwrap();
            assert_eq!(j, format!("\"{}\"", t.as_str()));
            let back: ErrorType = serde_json::from_str(&j).unwrap();
            assert_eq!(back, *t);
            assert_eq!(ErrorType::parse(t.as_str()), Some(*t));
            assert_eq!(t.to_string(), t.as_str());
        }
        assert_eq!(ErrorType::parse("Timeout"), None);
    }

    #[test]
    fn phase_and_status_strings() {
        let phases: Vec<&str> = Phase::ALL.iter().map(|p| p.as_str()).collect();
        assert_eq!(phases, ["startup", "execution", "completed", "failed"]);
        let statuses: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            statuses,
            [
                "queued",
                "running",
                "succeeded",
                "failed",
                "timeout",
                "oom",
                "cancelled"
            ]
        );
        assert_eq!(
            serde_json::to_string(&Phase::Startup).unwrap(),
            "\"startup\""
        );
        assert_eq!(serde_json::to_string(&Status::Oom).unwrap(), "\"oom\"");
    }

    #[test]
    fn terminal_statuses() {
        assert!(!Status::Queued.is_terminal());
        assert!(!Status::Running.is_terminal());
        for s in [
            Status::Succeeded,
            Status::Failed,
            Status::Timeout,
            Status::Oom,
            Status::Cancelled,
        ] {
            assert!(s.is_terminal(), "{s}");
        }
    }

    #[test]
    fn exec_error_json_shape() {
        let e = ExecError::new(ErrorType::FileNotFound, "boom", None);
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"type":"file_not_found","message":"boom","phase":null}"#
        );
        let e = ExecError::new(ErrorType::Oom, "x", Some(Phase::Execution));
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"type":"oom","message":"x","phase":"execution"}"#
        );
        let back: ExecError =
            serde_json::from_str(r#"{"type":"killed","message":"m","phase":"startup"}"#).unwrap();
        assert_eq!(back.error_type, ErrorType::Killed);
        assert_eq!(back.phase, Some(Phase::Startup));
    }

    #[test]
    fn exec_error_message_length_rule() {
        let long = "é".repeat(5000);
        let e = ExecError::new(ErrorType::RuntimeError, long, None);
        assert_eq!(e.message.chars().count(), MAX_ERROR_MESSAGE_CHARS);
        let e = ExecError::new(ErrorType::InternalError, "", None);
        assert_eq!(e.message, "internal_error");
    }

    #[test]
    fn timing_and_usage_keys_in_order_with_nulls() {
        assert_eq!(
            serde_json::to_string(&Timing::default()).unwrap(),
            r#"{"startup_ms":null,"dep_install_ms":null,"execution_ms":null,"total_ms":null,"phase_at_exit":null}"#
        );
        let t = Timing {
            startup_ms: Some(5),
            dep_install_ms: Some(0),
            execution_ms: Some(30),
            total_ms: Some(40),
            phase_at_exit: Some(Phase::Completed),
        };
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"startup_ms":5,"dep_install_ms":0,"execution_ms":30,"total_ms":40,"phase_at_exit":"completed"}"#
        );
        let u = ResourceUsage {
            max_rss_mb: Some(1.0),
            cpu_time_ms: None,
            wall_time_ms: Some(12),
        };
        assert_eq!(
            serde_json::to_string(&u).unwrap(),
            r#"{"max_rss_mb":1.0,"cpu_time_ms":null,"wall_time_ms":12}"#
        );
    }

    #[test]
    fn artifact_shape() {
        let a = Artifact {
            name: "result.json".into(),
            size_bytes: 2,
            sha256: "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a".into(),
            content_type: None,
        };
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"name":"result.json","size_bytes":2,"sha256":"44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","content_type":null}"#
        );
    }

    #[test]
    fn execution_result_key_order() {
        let r = ExecutionResult {
            status: Status::Succeeded,
            exit_code: Some(0),
            stdout: "1\n".into(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            output: Some(json!({"b": 1, "a": 2})),
            artifacts: vec![],
            error: None,
            timing: None,
            resource_usage: None,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"status":"succeeded","exit_code":0,"stdout":"1\n","stderr":"","stdout_truncated":false,"stderr_truncated":false,"output":{"b":1,"a":2},"artifacts":[],"error":null,"timing":null,"resource_usage":null}"#
        );
        let back: ExecutionResult =
            serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn refused_result() {
        let r = ExecutionResult::refused(
            Status::Failed,
            ExecError::new(ErrorType::ConfigError, "nope", None),
            None,
        );
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["status"], "failed");
        assert_eq!(v["exit_code"], serde_json::Value::Null);
        assert_eq!(v["error"]["type"], "config_error");
        assert_eq!(v["timing"], serde_json::Value::Null);
    }
}
