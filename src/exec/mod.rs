//! Execution contract.
//!
//! Pure, kernel-free logic of one execution (spec §1.4, §2.2–§2.8, §4.9, §6.6):
//! record types, stdout/stderr capping, Python-compatible JSON encodings and hashes,
//! error-message sanitisation and status/error classification.

pub mod classify;
pub mod pyjson;
pub mod record;
pub mod runner;
pub mod sanitize;
pub mod truncate;
