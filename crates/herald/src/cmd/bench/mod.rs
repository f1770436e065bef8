//! `herald bench`: load generators that print figures.
//!
//! Subscribers speak raw HTTP/1.1 over one `TcpStream` each (see [`client`]),
//! so the client stays cheap enough to hold tens of thousands of streams on the
//! same machine as the server. Every loop is bounded in count and in time, and
//! every run by `--timeout-secs`.
//!
//! The same client measures other SSE servers too: subscribe and publish
//! requests are built from templates (see [`template`]), and the accounting
//! relies only on the sequence number carried in each event's data (see
//! [`tracker`]), never on the server's event ids.

mod client;
mod conns;
mod fanout;
mod progress;
mod publish;
mod publisher;
mod report;
mod subs;
mod template;
mod tracker;
mod unicast;

use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use serde::Serialize;

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
    /// N subscribers on personal streams, P publishers each sending to random users.
    Unicast(unicast::UnicastArgs),
    /// Acknowledged publishes per second and acknowledgement latency.
    Publish(publish::PublishBenchArgs),
}

impl BenchCommand {
    fn timeout_secs(&self) -> u64 {
        match self {
            BenchCommand::Conns(a) => a.common.timeout_secs,
            BenchCommand::Fanout(a) => a.common.timeout_secs,
            BenchCommand::Unicast(a) => a.common.timeout_secs,
            BenchCommand::Publish(a) => a.common.timeout_secs,
        }
    }
}

/// Flags every subcommand has.
#[derive(Debug, Clone, Args)]
pub(crate) struct CommonArgs {
    /// Server base URL (`{url}` in the templates; Herald's own API is reached here).
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "HERALD_URL")]
    pub url: String,
    /// Upper bound on the whole run, in seconds: it stops by itself and reports.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
    /// Print one JSON object on stdout instead of a table (and no progress bars).
    #[arg(long)]
    pub json: bool,
}

/// Extra time past `--timeout-secs` before the run is cut off hard.
const HARD_STOP_GRACE: Duration = Duration::from_secs(30);

pub(crate) fn run(args: BenchArgs) -> anyhow::Result<()> {
    raise_open_files_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let limit = Duration::from_secs(args.command.timeout_secs()) + HARD_STOP_GRACE;
    let result = runtime.block_on(async move {
        let run = async move {
            match args.command {
                BenchCommand::Conns(args) => conns::run(args).await,
                BenchCommand::Fanout(args) => fanout::run(args).await,
                BenchCommand::Unicast(args) => unicast::run(args).await,
                BenchCommand::Publish(args) => publish::run(args).await,
            }
        };
        match tokio::time::timeout(limit, run).await {
            Ok(result) => result,
            Err(_) => bail!("the run did not stop within --timeout-secs + 30 s; cut off"),
        }
    });
    // Streams still open are simply dropped; do not wait for stragglers.
    runtime.shutdown_timeout(Duration::from_secs(2));
    result
}

/// Each stream is one file descriptor; the default soft limit (often 1024) is
/// far below what a benchmark opens, while the hard limit usually is not.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => eprintln!("bench: open files limit {limit}"),
        Err(err) => eprintln!("bench: could not raise the open files limit: {err}"),
    }
}

/// A bad flag value: exit code 64, like every other usage error.
pub(crate) fn usage(message: impl Into<String>) -> anyhow::Error {
    crate::config::ConfigError(message.into()).into()
}

/// Microseconds since the Unix epoch (the clock shared with the publisher).
pub(crate) fn epoch_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A latency histogram in microseconds, 1 µs to 1 h, 3 significant digits.
pub(crate) fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).context("creating a latency histogram")
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Latency {
    pub samples: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    /// Percentiles of a histogram of microseconds.
    pub(crate) fn of(histogram: &Histogram<u64>) -> Self {
        Self {
            samples: histogram.len(),
            p50: ms(histogram.value_at_quantile(0.5)),
            p90: ms(histogram.value_at_quantile(0.9)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }

    /// One table line.
    pub(crate) fn line(&self) -> String {
        format!(
            "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  ({} samples)",
            self.p50, self.p90, self.p99, self.p999, self.max, self.samples
        )
    }
}

pub(crate) fn ms(us: u64) -> f64 {
    round3(us as f64 / 1000.0)
}

pub(crate) fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

pub(crate) fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `count / secs`, 0 when the window is empty.
pub(crate) fn per_sec(count: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        round1(count as f64 / secs)
    } else {
        0.0
    }
}

/// Keeps the first error of many tasks.
pub(crate) fn record_first(slot: &std::sync::Mutex<Option<String>>, err: String) {
    if let Ok(mut slot) = slot.lock() {
        slot.get_or_insert(err);
    }
}

/// The first error kept by [`record_first`].
pub(crate) fn take_first(slot: &std::sync::Mutex<Option<String>>) -> Option<String> {
    slot.lock().ok().and_then(|slot| slot.clone())
}
