//! `herald-bench`: a load generator for Server-Sent Events servers, and the
//! library behind `herald bench`.
//!
//! One subcommand per measurement: `conns` holds idle streams open (the
//! server's memory per stream), `connect` opens N streams at once, round
//! after round (subscribes per second and time to first byte of a connect
//! storm, and of the reconnect after it), `fanout` puts N subscribers on one
//! topic with P publishers (one by default), `unicast` gives N users a
//! personal stream each and sends every event to one of them, `publish`
//! counts acknowledged
//! publishes per second. Figures print as a table, or as one JSON object
//! with `--json`.
//!
//! It measures any SSE server and knows nothing of Herald's internals.
//! Subscribe and publish requests are built from templates; the defaults are
//! Herald's public HTTP routes, and only with those defaults does it ask the
//! server (`GET /v1/topics/{topic}`, `GET /v1/stats`) whether every subscriber
//! is registered. The crate depends on no Herald crate but the neutral SSE
//! parser, `herald-sse`, so the compiler keeps it that way.
//!
//! Subscribers speak raw HTTP/1.1 over one `TcpStream` each, so the client
//! stays cheap enough to hold tens of thousands of streams on the same machine
//! as the server; on loopback their source addresses are spread over
//! 127.0.0.1–254 so that ephemeral ports do not run out. `conns --http2`
//! and `connect --http2` multiplex their streams over a few HTTP/2
//! connections instead (the `h2` crate: h2 over TLS, h2c with prior
//! knowledge over plain TCP). Publishes
//! and the stats requests go through hyper's pooled HTTP/1.1 client.
//!
//! A cluster is measured by giving its other nodes with `--node`: subscriber
//! `i` opens its stream on node `i mod n` (`--url` is node 0), publishes
//! and stats go to `--url`, and the readiness check asks each node for the
//! subscribers opened on it.
//!
//! Transport and tokens, for every subcommand:
//! - TLS (`tls.rs`): a URL goes over TLS when its scheme is `https`;
//!   `--tls` makes every URL of the run TLS, without verifying the server's
//!   certificate (the server is on this machine and what is measured is its
//!   cost); `--tls-ca FILE` verifies against the CAs in the file. One
//!   `rustls` configuration per ALPN (`http/1.1`, `h2`) is shared by every
//!   connection, SNI is the URL's host, sessions are not resumed.
//! - Tokens: `--token` (every subscriber) or `--tokens-file` (subscriber
//!   `i` sends line `i mod n`), in the `Authorization: Bearer` header or, with
//!   `--token-in query`, as `access_token=` in the URL; a `--subscribe-url`
//!   with the `{token}` placeholder places it itself.
//!
//! # Invariants
//!
//! - The accounting trusts only the event data, `"{seq} {publish_ts_us} {pad}"`:
//!   a subscriber finds the first such run anywhere in the data (servers may
//!   wrap it, in JSON say) and never looks at event ids.
//! - Every subscriber knows up front which sequence numbers are addressed to
//!   it, in publish order (fanout: all of them; unicast: its user's, drawn from
//!   a seeded RNG), and keeps one bit per position. Hence, per subscriber:
//!   *expected* are the events the server acknowledged (2xx) that address it;
//!   *missing* are expected events never received; a *duplicate* is a position
//!   received again; *out of order* is a position received after a later one
//!   of the same publisher (order is promised per publisher only; fanout's
//!   publisher k sends the events with seq mod P = k);
//!   *unexpected* is a bench event not addressed to it; *other events* carry
//!   no bench data (`herald.*` control events among them). The report sums
//!   them over the subscribers.
//! - Unicast sends all of one user's events through one publisher, which
//!   waits for each acknowledgement before its next request: per user, publish
//!   order is sequence order, so reordering is well defined.
//! - Latency is receive time minus the publish timestamp in the data, both
//!   read from this machine's clock.
//! - A publish answered `429`/`503` is sent again after its `Retry-After`
//!   (capped) until `--timeout-secs`, and counted by cause; it is expected
//!   only once acknowledged. The backlog (deliveries due but not received at
//!   the last acknowledgement, and `--backlog-after-secs` later) is counted
//!   from one shared counter of new deliveries, not by scanning subscribers.
//! - Every loop is bounded in count or in time, and every run by
//!   `--timeout-secs` (cut off 30 s later whatever happens).
//! - Whatever the server under test does (a wrong status, bad chunking,
//!   streams it ends, no answer) is counted or reported, never a panic.
//! - `connect` retries nothing: an open that fails is counted under its cause
//!   (`status 401`, `connect: …`, `tls: …`, `timeout`); the other
//!   subcommands retry an open a few times and count the retries.
//! - A bad flag is a [`UsageError`]. A run that lost deliveries, or could not
//!   open a stream or publish, returns an error after printing its report.

#![forbid(unsafe_code)]

mod client;
mod connect;
mod conns;
mod delivery;
mod fanout;
mod http;
mod mux;
mod progress;
mod publish;
mod publisher;
mod report;
mod subs;
mod template;
mod tls;
mod tracker;
mod unicast;

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::template::{PublishTemplateArgs, SubscribeArgs};
use crate::tls::TlsArgs;

/// The flags: one subcommand per measurement.
#[derive(Debug, Args)]
pub struct BenchArgs {
    // Boxed: the flags of the largest subcommand are hundreds of bytes, and
    // a front end holds `BenchArgs` in an enum beside much smaller commands.
    #[command(subcommand)]
    command: Box<BenchCommand>,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Open N idle streams and measure the server's memory per stream.
    Conns(conns::ConnsArgs),
    /// N clients connect at once: subscribes per second, time to first byte.
    Connect(connect::ConnectArgs),
    /// N subscribers on one topic, P publishers: throughput, loss, latency, backlog.
    Fanout(fanout::FanoutArgs),
    /// N subscribers on personal streams, P publishers each sending to random users.
    Unicast(unicast::UnicastArgs),
    /// Acknowledged publishes per second and acknowledgement latency.
    Publish(publish::PublishBenchArgs),
}

impl CommonArgs {
    /// Every node's base URL: `--url`, then each `--node`.
    pub(crate) fn node_urls(&self) -> Vec<&str> {
        std::iter::once(self.url.as_str())
            .chain(self.nodes.iter().map(String::as_str))
            .collect()
    }
}

impl BenchCommand {
    fn timeout_secs(&self) -> u64 {
        match self {
            BenchCommand::Conns(a) => a.server.common.timeout_secs,
            BenchCommand::Connect(a) => a.server.common.timeout_secs,
            BenchCommand::Fanout(a) => a.delivery.server.common.timeout_secs,
            BenchCommand::Unicast(a) => a.delivery.server.common.timeout_secs,
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
    /// Another node of the same cluster (repeatable): subscriber i opens its
    /// stream on node i mod n, `--url` being node 0 (`{url}` in the
    /// subscribe template is that node); publishes and stats go to `--url`.
    #[arg(long = "node", value_name = "URL")]
    pub nodes: Vec<String>,
    /// Upper bound on the whole run, in seconds: it stops by itself and reports.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
    /// Print one JSON object on stdout instead of a table (and no progress bars).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// Where the server is and how to talk to it: the flags of every subcommand
/// that opens streams. `conns` publishes nothing but takes the publish flags
/// too, so that one set of server flags fits every subcommand.
#[derive(Debug, Clone, Args)]
pub(crate) struct ServerArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub subscribe: SubscribeArgs,
    #[command(flatten)]
    pub publish: PublishTemplateArgs,
}

/// Extra time past `--timeout-secs` before the run is cut off hard.
const HARD_STOP_GRACE: Duration = Duration::from_secs(30);

/// Runs one measurement and prints its report on stdout; progress and notes
/// go to stderr.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    run_to(args, &mut std::io::stdout())
}

/// [`run`], with the report (the table, or the `--json` object) written to
/// `report` instead of stdout.
pub fn run_to(args: BenchArgs, report: &mut dyn Write) -> anyhow::Result<()> {
    raise_open_files_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let limit = Duration::from_secs(args.command.timeout_secs()) + HARD_STOP_GRACE;
    let result = runtime.block_on(async move {
        let run = async move {
            match *args.command {
                BenchCommand::Conns(args) => conns::run(args, report).await,
                BenchCommand::Connect(args) => connect::run(args, report).await,
                BenchCommand::Fanout(args) => fanout::run(args, report).await,
                BenchCommand::Unicast(args) => unicast::run(args, report).await,
                BenchCommand::Publish(args) => publish::run(args, report).await,
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

/// Writes a report: one JSON object with `--json`, else the table `table`
/// writes.
pub(crate) fn write_report<R: Serialize>(
    out: &mut dyn Write,
    json: bool,
    report: &R,
    table: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string(report)?)?;
    } else {
        table(out)?;
    }
    out.flush().context("writing the report")
}

/// Each stream is one file descriptor; the default soft limit (often 1024) is
/// far below what a benchmark opens, while the hard limit usually is not.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => eprintln!("bench: open files limit {limit}"),
        Err(err) => eprintln!("bench: could not raise the open files limit: {err}"),
    }
}

/// A bad flag value; the message names the flag. A front end exits with its
/// usage status for it (the `herald` binary: 64).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

pub(crate) fn usage(message: impl Into<String>) -> anyhow::Error {
    UsageError(message.into()).into()
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

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::BenchArgs;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    /// Catches what clap checks only at run time: a flag reworded by a name
    /// that no longer exists, two flags by one name.
    #[test]
    fn flags_are_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn unicast_rewords_the_shared_flags() {
        let mut cli = Cli::command();
        let unicast = cli.find_subcommand_mut("unicast");
        let help = unicast
            .map(|c| c.render_help().to_string())
            .unwrap_or_default();
        assert!(
            help.contains("Events to publish in total, each to a random user"),
            "{help}"
        );
        assert!(help.contains("Value of {topic} in the templates"), "{help}");
    }
}
