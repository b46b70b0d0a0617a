//! tako-vm: a rootless sandbox runtime for untrusted Python.
pub mod cli;
pub mod exec;
pub mod sandbox;
