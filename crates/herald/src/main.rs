//! The `herald` binary: `serve`, `publish`, `subscribe`, `bench`.
//!
//! Exit codes: 0 success, 64 bad usage or configuration, 1 runtime failure.

#![forbid(unsafe_code)]

mod cmd;
mod config;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit code for bad usage or configuration (BSD `EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;

/// Herald: a Server-Sent Events push server.
#[derive(Debug, Parser)]
#[command(name = "herald", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve(Box<config::ServeArgs>),
    /// Publish one event and print its id.
    Publish(cmd::publish::PublishArgs),
    /// Print events as they arrive (reconnects and resumes by itself).
    Subscribe(cmd::subscribe::SubscribeArgs),
    /// Load generators: `conns` (memory per stream), `fanout` and `unicast`
    /// (delivery rate, loss, latency), `publish` (acknowledged publishes/s).
    Bench(cmd::bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match cli.command {
        Command::Serve(args) => cmd::serve::run(*args),
        Command::Publish(args) => cmd::publish::run(args),
        Command::Subscribe(args) => cmd::subscribe::run(args),
        Command::Bench(args) => cmd::bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("herald: {err:#}");
            match err.downcast_ref::<config::ConfigError>() {
                Some(_) => ExitCode::from(EXIT_USAGE),
                None => ExitCode::FAILURE,
            }
        }
    }
}
