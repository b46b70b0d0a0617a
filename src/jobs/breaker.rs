//! The sandbox circuit breaker (the effect of spec §4.8 for our backend): 5 consecutive
//! infrastructure failures open it; after 30 s it goes half-open; 2 successes close it,
//! any failure in half-open opens it again. While open, runs are refused.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Failures that open the breaker.
pub const FAILURE_THRESHOLD: u32 = 5;
/// Time before an open breaker lets a probe through.
pub const RECOVERY: Duration = Duration::from_secs(30);
/// Successes in half-open that close it.
pub const SUCCESS_THRESHOLD: u32 = 2;

/// Breaker state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Runs allowed.
    Closed,
    /// Runs refused.
    Open,
    /// Probing.
    HalfOpen,
}

impl State {
    /// Wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

/// The breaker.
#[derive(Debug)]
pub struct Breaker {
    state: State,
    failures: u32,
    successes: u32,
    opened: Option<Instant>,
    last_failure: Option<f64>,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            state: State::Closed,
            failures: 0,
            successes: 0,
            opened: None,
            last_failure: None,
        }
    }
}

impl Breaker {
    /// Current state (moves open → half-open once the recovery time passed).
    pub fn state(&mut self) -> State {
        if self.state == State::Open && self.opened.is_some_and(|t| t.elapsed() >= RECOVERY) {
            self.state = State::HalfOpen;
            self.successes = 0;
        }
        self.state
    }

    /// Whether a run may start.
    pub fn allows(&mut self) -> bool {
        self.state() != State::Open
    }

    /// A run reached the sandbox.
    pub fn success(&mut self) {
        match self.state() {
            State::HalfOpen => {
                self.successes += 1;
                if self.successes >= SUCCESS_THRESHOLD {
                    self.state = State::Closed;
                    self.failures = 0;
                }
            }
            _ => self.failures = 0,
        }
    }

    /// The sandbox backend failed.
    pub fn failure(&mut self) {
        self.last_failure = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs_f64());
        self.failures += 1;
        let st = self.state();
        if st == State::HalfOpen || self.failures >= FAILURE_THRESHOLD {
            self.state = State::Open;
            self.opened = Some(Instant::now());
        }
    }

    /// `(state, failure_count, success_count, last_failure)` for `/health`.
    pub fn snapshot(&mut self) -> (State, u32, u32, Option<f64>) {
        (
            self.state(),
            self.failures,
            self.successes,
            self.last_failure,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_five_failures() {
        let mut b = Breaker::default();
        for _ in 0..4 {
            b.failure();
        }
        assert!(b.allows());
        b.failure();
        assert!(!b.allows());
        assert_eq!(b.snapshot().0.as_str(), "open");
    }
}
