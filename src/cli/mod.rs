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

/// `tako-vm [-c FILE] run …` parsed alone: the sandbox start is the hot path, and building
/// the whole command tree first costs about 0.1 ms.
#[derive(Debug, Parser)]
#[command(
    name = "tako-vm",
    disable_version_flag = true,
    disable_help_flag = true
)]
struct RunOnly {
    #[arg(short = 'c', long = "config", global = true)]
    config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: RunCommand,
}

#[derive(Debug, Subcommand)]
enum RunCommand {
    Run(Box<run::RunArgs>),
}

/// The `run` command line parsed by [`RunOnly`]; `None` for anything else, for help and for
/// errors, which the full parser then handles (so its messages and help are the only ones).
fn parse_run_only() -> Option<(Option<std::path::PathBuf>, Box<run::RunArgs>)> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let before_dashes = || args.iter().skip(1).take_while(|a| *a != "--");
    let is_run = before_dashes().any(|a| a == "run");
    let asks_help = before_dashes().any(|a| a == "-h" || a == "--help" || a == "help");
    if !is_run || asks_help {
        return None;
    }
    parse_run_only_from(&args)
}

fn parse_run_only_from(
    args: &[std::ffi::OsString],
) -> Option<(Option<std::path::PathBuf>, Box<run::RunArgs>)> {
    let RunOnly { config, command } = RunOnly::try_parse_from(args).ok()?;
    let RunCommand::Run(run) = command;
    Some((config, run))
}

/// Whatever umask tako-vm is started with (systemd units often give 0027, users 077), what
/// it writes keeps read and execute permission for everybody: images and snapshots are read
/// inside sandboxes by subordinate ids, which are other users on the host (a shared_code
/// file written 0640 was invisible to the run). Only the write bits of the umask are kept.
/// What must stay private is kept so by the mode of the directory that holds it (the
/// unit's state directory is 0750, a user's store lies in their home).
fn keep_files_readable() {
    use nix::sys::stat::{umask, Mode};
    let old = umask(Mode::from_bits_truncate(0o022));
    umask(Mode::from_bits_truncate(old.bits() & 0o022));
}

/// Parses the command line and runs it; returns the process exit code.
pub fn main() -> i32 {
    keep_files_readable();
    if let Some((config, args)) = parse_run_only() {
        return report(run::run(config.as_deref(), *args));
    }
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
            eprintln!("Error: {}", error_text(&e));
            1
        }
    }
}

/// An error and its causes on one line, as `{:#}` prints them, without a cause its message
/// already includes (most of our errors print their source themselves).
fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cause is printed once: after a context that lacks it, not after an error whose
    /// message already has it.
    #[test]
    fn error_text_prints_each_cause_once() {
        let io = || std::io::Error::from_raw_os_error(libc::ENOENT);
        let own = crate::image::ImageError::io("open", std::path::Path::new("/x"), io());
        assert_eq!(
            error_text(&anyhow::Error::new(own)),
            format!("open /x: {}", io())
        );
        let ctx = anyhow::Error::new(io()).context("cannot read /y");
        assert_eq!(error_text(&ctx), format!("cannot read /y: {}", io()));
    }

    /// The `run` fast path parses exactly as the full command line does, and leaves
    /// everything else (other commands, errors) to it.
    #[test]
    fn the_run_fast_path_agrees_with_the_full_parser() {
        let argvs: &[&[&str]] = &[
            &[
                "tako-vm", "run", "--rootfs", "/r", "--", "python3", "-c", "pass",
            ],
            &[
                "tako-vm",
                "-c",
                "/etc/t.yaml",
                "run",
                "--job-type",
                "x",
                "--code",
                "m.py",
            ],
            &[
                "tako-vm",
                "run",
                "--config",
                "/c",
                "--memory",
                "64m",
                "--cpus",
                "0.5",
                "--pids",
                "9",
                "--timeout",
                "3",
                "--network",
                "--allow-host",
                "pypi.org",
                "--rootfs",
                "/r",
                "--",
                "sh",
                "-c",
                "echo --help run",
            ],
        ];
        for argv in argvs {
            let args: Vec<std::ffi::OsString> = argv.iter().map(Into::into).collect();
            let (config, fast) = parse_run_only_from(&args).expect("parses");
            let full = Cli::try_parse_from(&args).expect("parses");
            let Some(Command::Run(slow)) = full.command else {
                panic!("not run: {argv:?}");
            };
            assert_eq!(config, full.config, "{argv:?}");
            assert_eq!(format!("{fast:?}"), format!("{slow:?}"), "{argv:?}");
        }
        for argv in [
            &["tako-vm", "pull", "run"][..],
            &["tako-vm", "run", "--no-such-flag"],
            &["tako-vm", "run"],
            &["tako-vm", "version"],
        ] {
            let args: Vec<std::ffi::OsString> = argv.iter().map(Into::into).collect();
            assert!(parse_run_only_from(&args).is_none(), "{argv:?}");
        }
    }
}
