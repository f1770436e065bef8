//! `herald bench`: load generators that print figures.
//!
//! Subscribers speak raw HTTP/1.1 over one `TcpStream` each (see [`client`]),
//! so the client stays cheap enough to hold tens of thousands of streams on the
//! same machine as the server. Every loop is bounded in count and in time.

mod client;
mod conns;
mod fanout;

use anyhow::Context;
use clap::{Args, Subcommand};

/// Flags of `herald bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Open N idle streams and measure the server's memory per stream.
    Conns(conns::ConnsArgs),
    /// N subscribers on one topic, one publisher: throughput, loss and latency.
    Fanout(fanout::FanoutArgs),
}

pub(crate) fn run(args: BenchArgs) -> anyhow::Result<()> {
    raise_open_files_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        match args.command {
            BenchCommand::Conns(args) => conns::run(args).await,
            BenchCommand::Fanout(args) => fanout::run(args).await,
        }
    })
}

/// Each stream is one file descriptor; the default soft limit (often 1024) is
/// far below what a benchmark opens, while the hard limit usually is not.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => eprintln!("bench: open files limit {limit}"),
        Err(err) => eprintln!("bench: could not raise the open files limit: {err}"),
    }
}

/// Microseconds since the Unix epoch (the clock shared with the publisher).
pub(crate) fn epoch_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
