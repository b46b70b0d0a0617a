//! Command line: `tako-vm run`, `tako-vm version`.

mod build;
mod config;
mod gc;
mod images;
mod import;
mod pull;
mod run;
mod run_image;
mod server;
mod setup;
mod status;
mod validate;

use clap::{Parser, Subcommand};

/// tako-vm: run untrusted Python in rootless Linux sandboxes.
#[derive(Debug, Parser)]
#[command(name = "tako-vm", disable_version_flag = true)]
pub struct Cli {
    /// Configuration file (must exist).
    #[arg(short = 'c', long = "config", global = true)]
    config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a command, or Python code under the tako-vm execution contract, in a sandbox.
    Run(Box<run::RunArgs>),
    /// Print the version.
    Version,
    /// Serve the REST API.
    Server(server::ServerArgs),
    /// Print the effective configuration.
    Config(config::ConfigArgs),
    /// Validate a configuration file.
    Validate {
        /// The file (default: --config or the searched file).
        file: Option<std::path::PathBuf>,
    },
    /// Ask a running server for its health.
    Status(status::StatusArgs),
    /// Check the host (and optionally install the systemd unit).
    Setup(setup::SetupArgs),
    /// Pull an image from a registry (verified, unpacked, named locally).
    Pull(pull::PullArgs),
    /// Import an OCI layout, OCI archive or docker save tarball (air-gapped hosts).
    Import(import::ImportArgs),
    /// Build job-type snapshots (tako-vm-<name>:latest) with uv.
    Build(build::BuildArgs),
    /// List pulled images and job-type snapshots.
    Images(images::ImagesArgs),
    /// Remove snapshots, images and blobs nothing references.
    Gc(gc::GcArgs),
}

/// Parses the command line and runs it; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    match cli.command {
        None => {
            use clap::CommandFactory;
            let _ = Cli::command().print_help();
            1
        }
        Some(Command::Version) => {
            println!("tako-vm {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Some(Command::Run(args)) => report(run::run(cli.config.as_deref(), *args)),
        Some(Command::Server(a)) => report(server::run(cli.config.as_deref(), a)),
        Some(Command::Config(a)) => report(config::run(cli.config.as_deref(), a)),
        Some(Command::Validate { file }) => {
            report(validate::run(cli.config.as_deref(), file.as_deref()))
        }
        Some(Command::Status(a)) => report(status::run(a)),
        Some(Command::Setup(a)) => report(setup::run(cli.config.as_deref(), a)),
        Some(Command::Pull(a)) => report(pull::run(cli.config.as_deref(), a)),
        Some(Command::Import(a)) => report(import::run(cli.config.as_deref(), a)),
        Some(Command::Build(a)) => report(build::run(cli.config.as_deref(), a)),
        Some(Command::Images(a)) => report(images::run(cli.config.as_deref(), a)),
        Some(Command::Gc(a)) => report(gc::run(cli.config.as_deref(), a)),
    }
}

fn report(r: anyhow::Result<i32>) -> i32 {
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            1
        }
    }
}
