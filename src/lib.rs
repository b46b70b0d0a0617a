//! tako-vm: a rootless sandbox runtime for untrusted Python.
pub mod api;
pub mod cli;
pub mod config;
pub mod exec;
pub mod image;
pub mod jobs;
pub mod sandbox;
pub mod store;
