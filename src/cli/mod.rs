//! Command line: `tako-vm run`, `tako-vm version`.

mod run;

use clap::{Parser, Subcommand};

/// tako-vm: run untrusted Python in rootless Linux sandboxes.
#[derive(Debug, Parser)]
#[command(name = "tako-vm", disable_version_flag = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a command, or Python code under the tako-vm execution contract, in a sandbox.
    Run(Box<run::RunArgs>),
    /// Print the version.
    Version,
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
        Some(Command::Run(args)) => match run::run(*args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("Error: {e:#}");
                1
            }
        },
    }
}
