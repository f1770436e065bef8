//! `herald bench conns`: hold N idle streams; the server's RSS per stream.
//!
//! Over HTTP/1.1 every stream is a connection of its own. With `--http2` the
//! `--streams` are spread over `--connections` HTTP/2 connections (stream `i`
//! on connection `i mod C`): h2 with ALPN over TLS, h2c with prior knowledge
//! over plain TCP.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use tokio::sync::watch;

use crate::client::Target;
use crate::http::Http;
use crate::mux::Mux;
use crate::progress::{note, Progress};
use crate::subs::{stream_targets, Streams, Transport};
use crate::template::{DEFAULT_OPEN_CONCURRENCY, DEFAULT_TOPIC_SUBSCRIBE};
use crate::tls::Tls;
use crate::{round2, usage, write_report, ServerArgs};

/// Read buffer per idle stream: it only ever sees heartbeats.
const IDLE_BUF: usize = 256;

/// Flags of `herald bench conns`.
#[derive(Debug, Args)]
pub(crate) struct ConnsArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Connections to open [default: 1000; with --http2, 10]. Over HTTP/1.1
    /// each carries one stream, so this is the number of streams.
    #[arg(long, value_name = "C")]
    connections: Option<usize>,
    /// Streams to open [default: 1000]. Over HTTP/1.1 the same as
    /// --connections; with --http2, spread over the --connections.
    #[arg(long, value_name = "N")]
    streams: Option<usize>,
    /// Open the streams over HTTP/2: h2 (ALPN) over TLS, h2c with prior
    /// knowledge over plain http.
    #[arg(long)]
    http2: bool,
    /// Seconds to hold the streams open after the measurement.
    #[arg(long, default_value_t = 5)]
    hold_secs: u64,
    /// The server's process id, to read its VmRSS from /proc.
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// Topic the idle streams subscribe to ({topic}).
    #[arg(long, default_value = "bench-idle")]
    topic: String,
    /// Give up opening after this many seconds.
    #[arg(long, default_value_t = 120)]
    open_timeout_secs: u64,
    /// Seconds to wait after opening before the second RSS reading.
    #[arg(long, default_value_t = 2)]
    settle_secs: u64,
}

pub(crate) async fn run(args: ConnsArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let started = Instant::now();
    let ServerArgs {
        common, subscribe, ..
    } = &args.server;
    let deadline = started + Duration::from_secs(common.timeout_secs);
    let (streams_n, connections) = shape(args.streams, args.connections, args.http2)?;
    let open_concurrency = subscribe.open_concurrency(DEFAULT_OPEN_CONCURRENCY)?;
    let tls = Tls::from_args(&common.tls)?;
    let target = Target::parse(&common.url, &tls)?;
    let (template, herald_subscribe) = subscribe.template(DEFAULT_TOPIC_SUBSCRIBE);
    let targets = stream_targets(
        subscribe,
        template,
        &common.node_urls(),
        &args.topic,
        streams_n,
        &tls,
    )
    .await?;
    let over_tls = targets.iter().any(|t| t.tls.is_some());
    // Hard bound on every task, whatever happens to the release signal.
    let hard_deadline = tokio::time::Instant::from(deadline) + Duration::from_secs(20);
    let transport = if args.http2 {
        Transport::Http2(Mux::new(connections, hard_deadline))
    } else {
        Transport::Http1
    };
    let rss_before = args.server_pid.map(read_rss_kib).transpose()?;
    let progress = Progress::new(common.json);
    let bar = progress.bar(streams_n as u64, "opening");

    let streams = Arc::new(Streams::new(
        open_concurrency,
        IDLE_BUF,
        subscribe.ready_on_head,
        transport,
    ));
    let closed_early = Arc::new(AtomicUsize::new(0));
    let (release_tx, release_rx) = watch::channel(false);

    let mut tasks = Vec::with_capacity(streams_n);
    for (idx, target) in targets.into_iter().enumerate() {
        let (streams, closed_early) = (streams.clone(), closed_early.clone());
        let mut release = release_rx.clone();
        tasks.push(tokio::spawn(async move {
            let run = async {
                let opened = streams.open("stream", idx, &target, &mut release).await;
                let Some((mut conn, _)) = opened else {
                    return;
                };
                // Bounded: ends at end of stream, on error, or at release.
                loop {
                    tokio::select! {
                        more = conn.read_some(|_| {}) => {
                            if !matches!(more, Ok(true)) {
                                closed_early.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                        }
                        _ = release.changed() => return,
                    }
                }
            };
            let _ = tokio::time::timeout_at(hard_deadline, run).await;
        }));
    }

    let open_deadline = deadline.min(started + Duration::from_secs(args.open_timeout_secs));
    streams.wait_open(streams_n, open_deadline, &bar).await;
    bar.finish_and_clear();
    let open_secs = started.elapsed().as_secs_f64();
    let opened_n = streams.opened.load(Ordering::Relaxed);
    note(
        &bar,
        &format!(
            "{opened_n} streams open, {} failed, in {open_secs:.1} s",
            streams.failed.load(Ordering::Relaxed)
        ),
    );
    let rss_open = args.server_pid.map(read_rss_kib).transpose()?;
    let left = |d: Duration| d.min(deadline.saturating_duration_since(Instant::now()));
    tokio::time::sleep(left(Duration::from_secs(args.settle_secs))).await;
    let rss_settled = args.server_pid.map(read_rss_kib).transpose()?;
    let server_connections = if herald_subscribe {
        let http = Http::new(tls.clone());
        tokio::time::timeout(
            left(Duration::from_secs(5)),
            server_connections(&http, &target),
        )
        .await
        .ok()
        .flatten()
    } else {
        None
    };
    tokio::time::sleep(left(Duration::from_secs(args.hold_secs))).await;
    let timed_out = Instant::now() >= deadline;
    let still_open = streams.opened.load(Ordering::Relaxed) - closed_early.load(Ordering::Relaxed);
    let failed_n = streams.failed.load(Ordering::Relaxed);

    let _ = release_tx.send(true);
    let join_all = async {
        for task in tasks {
            let _ = task.await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), join_all)
        .await
        .is_err()
    {
        eprintln!("bench: some streams did not close within 10 s");
    }

    let per_conn = |after: Option<u64>| match (rss_before, after) {
        (Some(before), Some(after)) if opened_n > 0 => {
            Some((after as f64 - before as f64) / opened_n as f64)
        }
        _ => None,
    };
    let first_error = streams.first_error();
    let report = serde_json::json!({
        "server_api": herald_subscribe,
        "subscribe_url": template,
        "tls": over_tls,
        "http2": args.http2,
        "connections": connections,
        "streams": streams_n,
        "opened": opened_n,
        "failed": failed_n,
        "retried_opens": streams.retried.load(Ordering::Relaxed),
        "still_open_after_hold": still_open,
        "open_secs": round2(open_secs),
        "server_connections": server_connections,
        "rss_before_kib": rss_before,
        "rss_open_kib": rss_open,
        "rss_settled_kib": rss_settled,
        "rss_per_conn_kib": per_conn(rss_open).map(round2),
        "rss_per_conn_settled_kib": per_conn(rss_settled).map(round2),
        "timed_out": timed_out,
        "first_error": first_error,
    });
    write_report(out, common.json, &report, |out| {
        let over = match (args.http2, over_tls) {
            (true, true) => format!(" over {connections} HTTP/2 connections (TLS)"),
            (true, false) => format!(" over {connections} HTTP/2 connections (h2c)"),
            (false, true) => " (HTTP/1.1 over TLS)".to_owned(),
            (false, false) => String::new(),
        };
        writeln!(out, "streams requested        {streams_n}{over}")?;
        writeln!(
            out,
            "opened / failed          {opened_n} / {failed_n}  (in {open_secs:.1} s)"
        )?;
        writeln!(out, "still open after hold    {still_open}")?;
        if let Some(n) = server_connections {
            writeln!(out, "server /v1/stats conns   {n}")?;
        }
        if let (Some(before), Some(open), Some(settled)) = (rss_before, rss_open, rss_settled) {
            writeln!(out, "server RSS before        {before} KiB")?;
            writeln!(out, "server RSS all open      {open} KiB")?;
            writeln!(out, "server RSS after settle  {settled} KiB")?;
            if let Some(per) = per_conn(Some(settled)) {
                writeln!(out, "RSS per stream           {per:.2} KiB (settled)")?;
            }
        }
        if timed_out {
            writeln!(out, "timed out                true (--timeout-secs)")?;
        }
        Ok(())
    })?;
    if let Some(err) = first_error {
        eprintln!("bench: first open error: {err}");
    }
    if failed_n > 0 || opened_n < streams_n {
        bail!(
            "{} of {streams_n} streams did not open",
            streams_n.saturating_sub(opened_n),
        );
    }
    Ok(())
}

/// Streams and connections from `--streams` and `--connections`: over
/// HTTP/1.1 they are one number; over HTTP/2 at least one stream per
/// connection.
fn shape(
    streams: Option<usize>,
    connections: Option<usize>,
    http2: bool,
) -> anyhow::Result<(usize, usize)> {
    let (n, c) = match (http2, streams, connections) {
        (false, Some(n), Some(c)) if n != c => {
            return Err(usage(format!(
                "--streams {n} and --connections {c}: over HTTP/1.1 each stream is a \
                 connection (give one of them, or --http2 to share connections)"
            )))
        }
        (false, n, c) => {
            let n = n.or(c).unwrap_or(1000);
            (n, n)
        }
        (true, n, c) => (n.unwrap_or(1000), c.unwrap_or(10)),
    };
    if n == 0 || c == 0 {
        return Err(usage("--streams and --connections must be at least 1"));
    }
    if c > n {
        return Err(usage(format!(
            "--connections {c} is more than --streams {n}: an HTTP/2 connection \
             carries at least one stream"
        )));
    }
    Ok((n, c))
}

/// `VmRSS` of a process, in KiB.
fn read_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))
}

/// The server's own count of open streams, if it answers.
async fn server_connections(http: &Http, target: &Target) -> Option<u64> {
    let url = target.url("/v1/stats").ok()?;
    let stats = http.get_json(&url).await?;
    stats.get("connections")?.as_u64()
}

#[cfg(test)]
mod tests {
    use super::shape;

    #[test]
    fn streams_and_connections() {
        let ok = |s, c, h2| shape(s, c, h2).ok();
        assert_eq!(ok(None, None, false), Some((1000, 1000)));
        assert_eq!(ok(Some(5), None, false), Some((5, 5)));
        assert_eq!(ok(None, Some(7), false), Some((7, 7)));
        assert_eq!(ok(Some(7), Some(7), false), Some((7, 7)));
        assert_eq!(ok(None, None, true), Some((1000, 10)));
        assert_eq!(ok(Some(10_000), Some(100), true), Some((10_000, 100)));
        for (s, c, h2) in [
            (Some(5), Some(7), false),
            (Some(0), None, false),
            (Some(5), Some(7), true),
            (None, Some(0), true),
        ] {
            let err = shape(s, c, h2).err().map(|e| e.is::<crate::UsageError>());
            assert_eq!(err, Some(true), "{s:?} {c:?} {h2}");
        }
    }
}
