//! `herald bench connect`: a connect storm. N clients open their stream at
//! once (at most `--open-concurrency` connecting at a time), each waits for
//! the 200 response head and the first body bytes (Herald's `retry:`
//! preamble), and holds it until every client of the round is open or has
//! failed. The figure is subscribes per second: streams open over the time
//! from the first client's connect to the last one's first bytes; with it
//! the time to first byte of each client (connect, TLS handshake, request,
//! the server's admission, its first write) and the failures by cause. No
//! open is retried: a failure is a result here.
//!
//! With `--rounds 2` every stream is closed after the first round and every
//! client connects again with the same request and token: the second round
//! is the reconnect (a server that caches verified tokens answers it from
//! its cache).
//!
//! With `--http2` the clients are streams of `--connections` HTTP/2
//! connections (client `i` on connection `i mod C`), made afresh each round
//! by their first stream: that stream's time to first byte includes the
//! connection's handshake.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{watch, Semaphore};

use crate::client::{SseConn, StreamTarget};
use crate::mux::Mux;
use crate::progress::{note, Progress};
use crate::subs::stream_targets;
use crate::template::{TokenIn, DEFAULT_TOPIC_SUBSCRIBE};
use crate::tls::Tls;
use crate::{
    new_histogram, per_sec, record_first, round3, take_first, usage, write_report, Latency,
    ServerArgs,
};

/// Read buffer per stream: it sees the preamble and heartbeats only.
const IDLE_BUF: usize = 256;
/// Clients connecting at the same time unless `--open-concurrency` says: all
/// of them, up to this many (about half the open files a process may have
/// here, the server needing as many).
const MAX_DEFAULT_CONCURRENCY: usize = 10_000;
/// Most rounds one run may ask for.
const MAX_ROUNDS: u32 = 100;

/// Flags of `herald bench connect`.
#[derive(Debug, Args)]
pub(crate) struct ConnectArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Clients, one stream each, all connecting at once.
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// Rounds; after each every stream is closed and every client connects
    /// again with the same request and token (2: first connect, reconnect).
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Topic the clients subscribe to ({topic}).
    #[arg(long, default_value = "bench-connect")]
    topic: String,
    /// Seconds a client may take from connecting to its first bytes before it
    /// counts as failed (cause "timeout").
    #[arg(long, default_value_t = 30)]
    open_timeout_secs: u64,
    /// Seconds to hold each round's streams once every client is open or failed.
    #[arg(long, default_value_t = 0)]
    hold_secs: u64,
    /// Milliseconds between closing a round's streams and the next round.
    #[arg(long, default_value_t = 1000)]
    pause_ms: u64,
    /// The clients are streams of a few HTTP/2 connections (h2 over TLS, h2c
    /// over plain http).
    #[arg(long)]
    http2: bool,
    /// With --http2: the connections the streams share [default: 100, at
    /// most --clients].
    #[arg(long, value_name = "C", requires = "http2")]
    connections: Option<usize>,
}

pub(crate) async fn run(args: ConnectArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let started = Instant::now();
    let ServerArgs {
        common, subscribe, ..
    } = &args.server;
    let deadline = started + Duration::from_secs(common.timeout_secs);
    if args.clients == 0 {
        return Err(usage("--clients must be at least 1"));
    }
    if args.rounds == 0 || args.rounds > MAX_ROUNDS {
        return Err(usage(format!("--rounds must be 1 to {MAX_ROUNDS}")));
    }
    if args.open_timeout_secs == 0 {
        return Err(usage("--open-timeout-secs must be at least 1"));
    }
    let concurrency = subscribe.open_concurrency(args.clients.min(MAX_DEFAULT_CONCURRENCY))?;
    let connections = match (args.http2, args.connections) {
        (false, _) => None,
        (true, Some(0)) => return Err(usage("--connections must be at least 1")),
        (true, Some(c)) if c > args.clients => {
            return Err(usage(format!(
                "--connections {c} is more than --clients {}: an HTTP/2 connection \
                 carries at least one stream",
                args.clients
            )))
        }
        (true, c) => Some(c.unwrap_or(100).min(args.clients)),
    };
    let tls = Tls::from_args(&common.tls)?;
    let (template, herald_subscribe) = subscribe.template(DEFAULT_TOPIC_SUBSCRIBE);
    let targets = stream_targets(
        subscribe,
        template,
        &common.node_urls(),
        &args.topic,
        args.clients,
        &tls,
    )
    .await?;
    let tokens = subscribe.tokens()?.len();
    let token_in = match (tokens, template.contains("{token}"), subscribe.token_in) {
        (0, _, _) => None,
        (_, true, _) => Some("template"),
        (_, false, TokenIn::Header) => Some("header"),
        (_, false, TokenIn::Query) => Some("query"),
    };
    let over_tls = targets.iter().any(|t| t.tls.is_some());
    let targets: Arc<[StreamTarget]> = targets.into();
    let progress = Progress::new(common.json);
    let storm = Storm {
        targets,
        concurrency,
        head_only: subscribe.ready_on_head,
        open_timeout: Duration::from_secs(args.open_timeout_secs),
        deadline,
        connections,
    };

    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        if Instant::now() >= deadline {
            break;
        }
        let bar = progress.bar(args.clients as u64, "connecting");
        let report = storm.round(round, args.hold_secs, &bar).await?;
        bar.finish_and_clear();
        note(
            &bar,
            &format!(
                "round {round}: {} open, {} failed, {:.0} subscribes/s",
                report.opened, report.failed, report.subscribes_per_sec
            ),
        );
        rounds.push(report);
        if round < args.rounds {
            let pause = Duration::from_millis(args.pause_ms);
            tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }

    let timed_out = rounds.len() < args.rounds as usize || rounds.iter().any(|r| r.timed_out);
    let report = Report {
        server_api: herald_subscribe,
        subscribe_url: template.to_owned(),
        clients: args.clients,
        concurrency,
        http2_connections: connections,
        tls: over_tls,
        tls_verified: over_tls && tls.verified(),
        tokens,
        token_in,
        rounds,
        timed_out,
    };
    write_report(out, common.json, &report, |out| report.write_table(out))?;
    let failed: usize = report.rounds.iter().map(|r| r.failed).sum();
    let missing: usize = report
        .rounds
        .iter()
        .map(|r| args.clients - r.opened.min(args.clients))
        .sum();
    if let Some(err) = report.rounds.iter().find_map(|r| r.first_error.as_ref()) {
        eprintln!("bench: first open error: {err}");
    }
    if failed > 0 || missing > 0 || timed_out {
        bail!(
            "{missing} of {} opens did not succeed ({failed} failed{})",
            args.clients * args.rounds as usize,
            if timed_out { ", timed out" } else { "" }
        );
    }
    Ok(())
}

/// What every round shares.
#[derive(Debug)]
struct Storm {
    targets: Arc<[StreamTarget]>,
    concurrency: usize,
    head_only: bool,
    open_timeout: Duration,
    deadline: Instant,
    /// HTTP/2 connections the streams share, or `None` for one HTTP/1.1
    /// connection per client.
    connections: Option<usize>,
}

/// What the clients of one round record.
#[derive(Debug)]
struct RoundState {
    /// Round start; times below are microseconds since it.
    t0: Instant,
    first_connect_us: AtomicU64,
    last_first_byte_us: AtomicU64,
    opened: AtomicUsize,
    /// Clients open or failed.
    done: AtomicUsize,
    /// Open streams the server ended before the round was over.
    closed_early: AtomicUsize,
    failures: Mutex<BTreeMap<String, u64>>,
    ttfb: Mutex<Histogram<u64>>,
    first_error: Mutex<Option<String>>,
}

impl RoundState {
    fn since_t0_us(&self) -> u64 {
        u64::try_from(self.t0.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn fail(&self, idx: usize, cause: String, err: String) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        *failures.entry(cause).or_default() += 1;
        drop(failures);
        record_first(&self.first_error, format!("client {idx}: {err}"));
        self.done.fetch_add(1, Ordering::Relaxed);
    }
}

impl Storm {
    /// One round: every client connects, then all are closed.
    async fn round(
        &self,
        round: u32,
        hold_secs: u64,
        bar: &indicatif::ProgressBar,
    ) -> anyhow::Result<RoundReport> {
        let n = self.targets.len();
        let state = Arc::new(RoundState {
            t0: Instant::now(),
            first_connect_us: AtomicU64::new(u64::MAX),
            last_first_byte_us: AtomicU64::new(0),
            opened: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            closed_early: AtomicUsize::new(0),
            failures: Mutex::new(BTreeMap::new()),
            ttfb: Mutex::new(new_histogram()?),
            first_error: Mutex::new(None),
        });
        let gate = Arc::new(Semaphore::new(self.concurrency.max(1)));
        let (release_tx, release_rx) = watch::channel(false);
        let hard_deadline = tokio::time::Instant::from(self.deadline) + Duration::from_secs(20);
        // New connections every round; dropped with the round's streams.
        let mux = self
            .connections
            .map(|c| Arc::new(Mux::new(c, hard_deadline)));
        let mut tasks = Vec::with_capacity(n);
        for idx in 0..n {
            let (state, gate, targets) = (state.clone(), gate.clone(), self.targets.clone());
            let mux = mux.clone();
            let mut release = release_rx.clone();
            let (head_only, open_timeout) = (self.head_only, self.open_timeout);
            tasks.push(tokio::spawn(async move {
                let run = async {
                    let Some(target) = targets.get(idx) else {
                        return;
                    };
                    let permit = gate.acquire().await;
                    let start = state.since_t0_us();
                    state.first_connect_us.fetch_min(start, Ordering::Relaxed);
                    let opening = async {
                        match &mux {
                            Some(mux) => mux.open(target, idx, head_only).await,
                            None => SseConn::open(target, idx, IDLE_BUF, head_only).await,
                        }
                    };
                    let opened = tokio::select! {
                        opened = tokio::time::timeout(open_timeout, opening) => opened,
                        _ = release.changed() => return,
                    };
                    drop(permit);
                    let mut conn = match opened {
                        Ok(Ok((conn, _))) => conn,
                        Ok(Err(err)) => return state.fail(idx, err.cause(), err.to_string()),
                        Err(_) => {
                            let why = format!("no first bytes within {open_timeout:?}");
                            return state.fail(idx, "timeout".to_owned(), why);
                        }
                    };
                    let end = state.since_t0_us();
                    state.last_first_byte_us.fetch_max(end, Ordering::Relaxed);
                    state
                        .ttfb
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .saturating_record(end.saturating_sub(start).max(1));
                    state.opened.fetch_add(1, Ordering::Relaxed);
                    state.done.fetch_add(1, Ordering::Relaxed);
                    // Keep reading (heartbeats) until the round is over, so
                    // that no stream backs up; bounded by the release, the
                    // end of the stream, or an error.
                    loop {
                        tokio::select! {
                            more = conn.read_some(|_| {}) => {
                                if !matches!(more, Ok(true)) {
                                    state.closed_early.fetch_add(1, Ordering::Relaxed);
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

        // Bounded by the deadline.
        while state.done.load(Ordering::Relaxed) < n && Instant::now() < self.deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
            bar.set_position(state.opened.load(Ordering::Relaxed) as u64);
        }
        let timed_out = state.done.load(Ordering::Relaxed) < n;
        let left = self.deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(Duration::from_secs(hold_secs).min(left)).await;
        let closed_early = state.closed_early.load(Ordering::Relaxed);
        // Close every stream: the tasks drop their connections.
        let _ = release_tx.send(true);
        drop(mux);
        let join_all = async {
            for task in tasks {
                let _ = task.await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(10), join_all)
            .await
            .is_err()
        {
            note(bar, "some streams did not close within 10 s");
        }

        let opened = state.opened.load(Ordering::Relaxed);
        let failures = state
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let failed = failures.values().sum::<u64>() as usize;
        let first = state.first_connect_us.load(Ordering::Relaxed);
        let last = state.last_first_byte_us.load(Ordering::Relaxed);
        let window_us = if opened > 0 {
            last.saturating_sub(first)
        } else {
            0
        };
        let window_secs = window_us as f64 / 1e6;
        let ttfb = state.ttfb.lock().unwrap_or_else(|e| e.into_inner());
        Ok(RoundReport {
            round,
            opened,
            failed,
            failures,
            window_secs: round3(window_secs),
            subscribes_per_sec: per_sec(opened as u64, window_secs),
            ttfb_ms: Latency::of(&ttfb),
            closed_early,
            timed_out,
            first_error: take_first(&state.first_error),
        })
    }
}

/// The figures of one round.
#[derive(Debug, Serialize)]
struct RoundReport {
    /// 1 for the first connect, 2 for the first reconnect, ….
    round: u32,
    opened: usize,
    failed: usize,
    /// Failed clients by cause (`status 401`, `connect: connection refused`,
    /// `tls: …`, `timeout`, …).
    failures: BTreeMap<String, u64>,
    /// From the first client's connect to the last one's first bytes.
    window_secs: f64,
    /// `opened / window_secs`.
    subscribes_per_sec: f64,
    /// Per open client: connect to first body bytes (to the response head
    /// with --ready-on-head).
    ttfb_ms: Latency,
    /// Streams the server ended while the round was still opening or holding.
    closed_early: usize,
    /// `--timeout-secs` passed before every client was open or failed.
    timed_out: bool,
    first_error: Option<String>,
}

/// The figures of a run (`--json` prints this).
#[derive(Debug, Serialize)]
struct Report {
    /// Herald's own subscribe route was used.
    server_api: bool,
    subscribe_url: String,
    clients: usize,
    /// Clients connecting at the same time.
    concurrency: usize,
    /// With --http2: the connections the streams share.
    http2_connections: Option<usize>,
    tls: bool,
    /// The server's certificate was verified (`--tls-ca`).
    tls_verified: bool,
    /// Distinct tokens the clients send (0: none).
    tokens: usize,
    /// `header`, `query` or `template`; none without tokens.
    token_in: Option<&'static str>,
    rounds: Vec<RoundReport>,
    timed_out: bool,
}

impl Report {
    fn write_table(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let tls = match (self.tls, self.tls_verified) {
            (true, true) => ", TLS (verified)",
            (true, false) => ", TLS",
            _ => "",
        };
        let tokens = match self.token_in {
            Some(place) if self.tokens == 1 => format!(", one token in the {place}"),
            Some(place) => format!(", {} tokens in the {place}", self.tokens),
            None => String::new(),
        };
        let h2 = match self.http2_connections {
            Some(c) => format!(", streams of {c} HTTP/2 connections"),
            None => String::new(),
        };
        writeln!(
            out,
            "clients                  {} ({} at a time{h2}{tls}{tokens})",
            self.clients, self.concurrency
        )?;
        for r in &self.rounds {
            let kind = if r.round == 1 { "connect" } else { "reconnect" };
            writeln!(
                out,
                "round {} ({kind:<9})    {} open, {} failed in {:.3} s: {:.0} subscribes/s",
                r.round, r.opened, r.failed, r.window_secs, r.subscribes_per_sec
            )?;
            writeln!(out, "  time to first byte ms  {}", r.ttfb_ms.line())?;
            for (cause, n) in &r.failures {
                writeln!(out, "  failed: {cause:<16} {n}")?;
            }
            if r.closed_early > 0 {
                writeln!(out, "  closed by the server   {}", r.closed_early)?;
            }
        }
        if self.timed_out {
            writeln!(out, "timed out                true (--timeout-secs)")?;
        }
        Ok(())
    }
}
