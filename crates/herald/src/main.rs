//! The `herald` binary: `serve`, `publish`, `subscribe`, `bench`, `token`,
//! `status`.
//!
//! Exit codes: 0 success, 64 bad usage or configuration, 1 runtime failure.

#![forbid(unsafe_code)]

mod cmd;
mod config;

use std::process::ExitCode;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

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
    Serve(Box<config::Config>),
    /// Publish one event and print its id.
    Publish(cmd::publish::PublishArgs),
    /// Print events as they arrive (reconnects and resumes by itself).
    Subscribe(cmd::subscribe::SubscribeArgs),
    /// Load generators: `conns` (memory per stream), `fanout` and `unicast`
    /// (delivery rate, loss, latency), `publish` (acknowledged publishes/s).
    Bench(cmd::bench::BenchArgs),
    /// Mint a token signed with the server's secret or a private key.
    Token(cmd::token::TokenArgs),
    /// One screen of a running server: connections, users, rates, lag,
    /// busiest topics, online users (what the dashboard at `/` shows).
    Status(cmd::status::StatusArgs),
}

fn main() -> ExitCode {
    // One TLS implementation for the whole process (the HTTP clients of
    // `publish`/`subscribe` and the JWKS fetcher build on it). Fails only if
    // one is already installed, which is as good.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // Parsed through the matches, which `serve` also needs: they tell which
    // flags were given (and so override the file and the environment).
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|matches| Cli::from_arg_matches(&matches).map(|cli| (cli, matches)));
    let (cli, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(err) => {
            let _ = err.print();
            if let Some(hint) = usage_hint(&err) {
                eprintln!("\n{hint}");
            }
            return if err.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match cli.command {
        Command::Serve(args) => {
            let serve_matches = matches.subcommand_matches("serve").unwrap_or(&matches);
            cmd::serve::run(*args, serve_matches)
        }
        Command::Publish(args) => cmd::publish::run(args),
        Command::Subscribe(args) => cmd::subscribe::run(args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::Token(args) => cmd::token::run(args),
        Command::Status(args) => cmd::status::run(args),
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

/// A hint for flags people reach for that Herald spells differently.
fn usage_hint(err: &clap::Error) -> Option<&'static str> {
    if err.kind() != ErrorKind::UnknownArgument {
        return None;
    }
    let Some(ContextValue::String(arg)) = err.get(ContextKind::InvalidArg) else {
        return None;
    };
    let name = arg.split('=').next().unwrap_or(arg);
    match name {
        "--port" | "-p" | "--host" | "--bind" | "--addr" | "--address" => Some(
            "tip: address and port are one option: --listen 127.0.0.1:8080 (or HERALD_LISTEN, or `listen` in the config file)",
        ),
        _ => None,
    }
}
