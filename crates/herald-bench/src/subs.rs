//! A fleet of subscribers: opened a few at a time (with retries), each
//! checking its own deliveries, until told to stop.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use herald_sse::{ParsedEvent, Parser};
use indicatif::ProgressBar;
use serde::Serialize;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::client::{Resolver, SseConn, StreamTarget, Target};
use crate::http::Http;
use crate::mux::Mux;
use crate::progress::note;
use crate::template::{expand, parse_url, Context, SubscribeArgs, TokenIn, Vars};
use crate::tls::Tls;
use crate::tracker::{parse_data, Expect, SeqTracker};
use crate::{epoch_micros, new_histogram, record_first, take_first, usage};

/// Read buffer per subscriber.
const SUB_BUF: usize = 4096;
/// Latency histograms are sharded to keep subscriber tasks from contending.
const SHARDS: usize = 16;
/// Per-attempt timeout for connect + head + first bytes.
const OPEN_ONE_TIMEOUT: Duration = Duration::from_secs(15);
/// Attempts to open one stream.
const OPEN_ATTEMPTS: u32 = 4;
/// Once everyone has everything, keep reading this long for late duplicates.
const LINGER: Duration = Duration::from_millis(100);

/// Expands the subscribe template for subscribers `0..n`, gives each its
/// token (`--token`, `--tokens-file`, `--token-in`) and resolves them.
pub(crate) async fn stream_targets(
    args: &SubscribeArgs,
    template: &str,
    nodes: &[&str],
    topic: &str,
    n: usize,
    tls: &Arc<Tls>,
) -> anyhow::Result<Vec<StreamTarget>> {
    let tokens = args.tokens()?;
    let in_template = template.contains("{token}");
    if in_template && tokens.len() == 0 {
        return Err(usage(
            "--subscribe-url uses {token}: give --token or --tokens-file",
        ));
    }
    let mut resolver = Resolver::new(tls.clone());
    let mut targets = Vec::with_capacity(n);
    for i in 0..n {
        let token = tokens.get(i);
        let vars = Vars {
            url: nodes[i % nodes.len()],
            i: Some(i),
            topic,
            user: None,
            token: token.map(|t| &**t),
            data: None,
        };
        let expanded = expand(template, &vars, Context::Url);
        let mut url = parse_url("--subscribe-url", &expanded, tls)?;
        let mut bearer = None;
        if let (Some(token), false) = (token, in_template) {
            match args.token_in {
                TokenIn::Header => bearer = Some(token.clone()),
                TokenIn::Query => {
                    url.query_pairs_mut().append_pair("access_token", token);
                }
            }
        }
        targets.push(resolver.stream_target(&url, bearer).await?);
    }
    Ok(targets)
}

/// How streams are carried.
#[derive(Debug)]
pub(crate) enum Transport {
    /// One HTTP/1.1 connection per stream.
    Http1,
    /// Streams of a few shared HTTP/2 connections.
    Http2(Mux),
}

/// Opens one stream, retrying a few times with a short backoff (a proxy may
/// refuse bursts). Returns the stream, the body bytes so far and the attempts
/// it took, or the last error.
async fn open_with_retry(
    transport: &Transport,
    target: &StreamTarget,
    idx: usize,
    buf_size: usize,
    head_only: bool,
) -> Result<(SseConn, Vec<u8>, u32), String> {
    let mut attempt = 0;
    // Bounded: at most OPEN_ATTEMPTS rounds.
    loop {
        attempt += 1;
        let opening = async {
            match transport {
                Transport::Http1 => SseConn::open(target, idx, buf_size, head_only).await,
                Transport::Http2(mux) => mux.open(target, idx, head_only).await,
            }
        };
        let err = match tokio::time::timeout(OPEN_ONE_TIMEOUT, opening).await {
            Ok(Ok((conn, first))) => return Ok((conn, first, attempt)),
            Ok(Err(err)) => err.to_string(),
            Err(_) => "timed out opening".to_owned(),
        };
        if attempt >= OPEN_ATTEMPTS {
            return Err(format!("{err} (after {attempt} attempts)"));
        }
        let jitter = (idx % 50) as u64;
        tokio::time::sleep(Duration::from_millis(150 * u64::from(attempt) + jitter)).await;
    }
}

/// A set of streams opened alike, a few at a time, by one task each: how
/// opening went, and the first error any of them met.
#[derive(Debug)]
pub(crate) struct Streams {
    /// Bounds the streams being opened at the same time.
    gate: Semaphore,
    transport: Transport,
    /// Read buffer per stream.
    buf_size: usize,
    /// Open once the response head arrived (see [`SseConn::open`]).
    head_only: bool,
    pub opened: AtomicUsize,
    pub failed: AtomicUsize,
    /// Opens that needed more than one attempt.
    pub retried: AtomicUsize,
    first_error: Mutex<Option<String>>,
}

impl Streams {
    pub(crate) fn new(
        open_concurrency: usize,
        buf_size: usize,
        head_only: bool,
        transport: Transport,
    ) -> Self {
        Self {
            gate: Semaphore::new(open_concurrency.max(1)),
            transport,
            buf_size,
            head_only,
            opened: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            retried: AtomicUsize::new(0),
            first_error: Mutex::new(None),
        }
    }

    /// Opens stream `idx` (`{kind} {idx}` in errors) with retries, once the
    /// gate lets it; gives up when `stop` changes first. Counts the outcome;
    /// returns the stream and its first body bytes.
    pub(crate) async fn open(
        &self,
        kind: &str,
        idx: usize,
        target: &StreamTarget,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<(SseConn, Vec<u8>)> {
        let opened = {
            let _permit = self.gate.acquire().await;
            tokio::select! {
                opened = open_with_retry(&self.transport, target, idx, self.buf_size, self.head_only) => opened,
                _ = stop.changed() => Err("stopped before it opened".to_owned()),
            }
        };
        match opened {
            Ok((conn, first, attempts)) => {
                if attempts > 1 {
                    self.retried.fetch_add(1, Ordering::Relaxed);
                }
                self.opened.fetch_add(1, Ordering::Relaxed);
                Some((conn, first))
            }
            Err(err) => {
                self.record_error(format!("{kind} {idx}: {err}"));
                self.failed.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Waits until each of `n` streams has opened or failed, or `deadline`;
    /// `bar` shows those opened.
    pub(crate) async fn wait_open(&self, n: usize, deadline: Instant, bar: &ProgressBar) {
        let opened = || self.opened.load(Ordering::Relaxed);
        // Bounded by `deadline`.
        while opened() + self.failed.load(Ordering::Relaxed) < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            bar.set_position(opened() as u64);
        }
        bar.set_position(opened() as u64);
    }

    /// Keeps `err` if it is the first.
    pub(crate) fn record_error(&self, err: String) {
        record_first(&self.first_error, err);
    }

    pub(crate) fn first_error(&self) -> Option<String> {
        take_first(&self.first_error)
    }
}

/// State shared by all subscriber tasks.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Start of the run; times below are microseconds since it.
    t0: Instant,
    pub streams: Streams,
    /// Subscribers that have everything they expect.
    pub complete: AtomicUsize,
    /// Subscribers that have everything, or stopped, or failed to open.
    pub done: AtomicUsize,
    /// Bench events received by everyone (progress).
    pub received: AtomicU64,
    /// Distinct expected deliveries so far (duplicates and strays left out):
    /// what the outstanding deliveries of the backlog are counted against.
    pub unique: AtomicU64,
    pub last_receive_us: AtomicU64,
    latency: Vec<Mutex<Histogram<u64>>>,
}

impl Shared {
    pub(crate) fn since_t0_us(&self) -> u64 {
        u64::try_from(self.t0.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

/// Why the wait for deliveries ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum StopReason {
    /// Every open subscriber has everything it expects.
    Complete,
    /// Every subscriber is complete or its stream ended.
    StreamsEnded,
    /// Publishing was over and nothing arrived for `--quiet-ms`.
    Quiet,
    /// `--timeout-secs` passed.
    Timeout,
}

/// When to count the deliveries still outstanding, and of how many.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BacklogSample {
    /// Microseconds since the run's start.
    pub at_us: u64,
    /// The deliveries due in all (acknowledged events × their subscribers).
    pub due: u64,
}

/// The running subscribers.
#[derive(Debug)]
pub(crate) struct Fleet {
    pub shared: Arc<Shared>,
    tasks: Vec<JoinHandle<Option<SeqTracker>>>,
    stop: watch::Sender<bool>,
    n: usize,
}

impl Fleet {
    /// Starts one task per target; `expects[i]` is what subscriber `i` should get.
    pub(crate) fn spawn(
        targets: Vec<StreamTarget>,
        expects: Vec<Expect>,
        open_concurrency: usize,
        head_only: bool,
        hard_deadline: tokio::time::Instant,
    ) -> anyhow::Result<Self> {
        let mut latency = Vec::with_capacity(SHARDS);
        for _ in 0..SHARDS {
            latency.push(Mutex::new(new_histogram()?));
        }
        let shared = Arc::new(Shared {
            t0: Instant::now(),
            streams: Streams::new(open_concurrency, SUB_BUF, head_only, Transport::Http1),
            complete: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            received: AtomicU64::new(0),
            unique: AtomicU64::new(0),
            last_receive_us: AtomicU64::new(0),
            latency,
        });
        let n = targets.len();
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::with_capacity(n);
        for (idx, (target, expect)) in targets.into_iter().zip(expects).enumerate() {
            let (shared, stop) = (shared.clone(), stop_rx.clone());
            tasks.push(tokio::spawn(async move {
                let run = subscriber(idx, target, expect, &shared, stop);
                tokio::time::timeout_at(hard_deadline, run)
                    .await
                    .ok()
                    .flatten()
            }));
        }
        Ok(Self {
            shared,
            tasks,
            stop,
            n,
        })
    }

    /// Waits until every subscriber is open or failed, or `deadline`.
    pub(crate) async fn wait_open(&self, deadline: Instant, bar: &ProgressBar) {
        self.shared.streams.wait_open(self.n, deadline, bar).await;
    }

    /// Waits for the deliveries: until every subscriber is done, or nothing
    /// arrived for `quiet` since max(last receive, `publish_end_us`), or
    /// `deadline`. With a `backlog` sample to take, the quiet rule waits
    /// until it is taken (at its time, or as soon as nothing is outstanding);
    /// returns why the wait ended and the deliveries
    /// outstanding at the sample (`None` if the run ended before it without
    /// every delivery in: the backlog then was not measured).
    pub(crate) async fn wait_deliveries(
        &self,
        publish_end_us: u64,
        quiet: Duration,
        deadline: Instant,
        backlog: Option<BacklogSample>,
        bar: &ProgressBar,
    ) -> (StopReason, Option<u64>) {
        let s = &self.shared;
        let quiet_us = u64::try_from(quiet.as_micros()).unwrap_or(u64::MAX);
        let outstanding = |due: u64| due.saturating_sub(s.unique.load(Ordering::Relaxed));
        let mut sampled = None;
        // Bounded by `deadline`.
        let reason = loop {
            bar.set_position(s.received.load(Ordering::Relaxed));
            if let Some(sample) = backlog.filter(|_| sampled.is_none()) {
                // Publishing is over, so nothing becomes due any more: once
                // everything due is in, the backlog at the sample is 0
                // already (no need to wait for it; the quiet rule applies).
                let left = outstanding(sample.due);
                if left == 0 || s.since_t0_us() >= sample.at_us {
                    sampled = Some(left);
                }
            }
            if s.done.load(Ordering::Relaxed) >= self.n {
                let connected = s.streams.opened.load(Ordering::Relaxed);
                break if s.complete.load(Ordering::Relaxed) >= connected {
                    StopReason::Complete
                } else {
                    StopReason::StreamsEnded
                };
            }
            let last = s
                .last_receive_us
                .load(Ordering::Relaxed)
                .max(publish_end_us);
            let sample_pending = backlog.is_some() && sampled.is_none();
            if !sample_pending && s.since_t0_us().saturating_sub(last) >= quiet_us {
                break StopReason::Quiet;
            }
            if Instant::now() >= deadline {
                break StopReason::Timeout;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // Every subscriber done (complete, or its stream over): nothing more
        // can arrive, so what is outstanding now is outstanding at the sample.
        if let (Some(sample), None, StopReason::Complete | StopReason::StreamsEnded) =
            (backlog, sampled, reason)
        {
            sampled = Some(outstanding(sample.due));
        }
        if reason == StopReason::Complete {
            let linger = LINGER.min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(linger).await;
        }
        bar.set_position(s.received.load(Ordering::Relaxed));
        (reason, sampled)
    }

    /// Stops every subscriber and returns the trackers of those that opened.
    pub(crate) async fn stop(self) -> Vec<SeqTracker> {
        let _ = self.stop.send(true);
        let mut trackers = Vec::with_capacity(self.n);
        for task in self.tasks {
            if let Ok(Ok(Some(tracker))) = tokio::time::timeout(Duration::from_secs(10), task).await
            {
                trackers.push(tracker);
            }
        }
        trackers
    }

    /// All latencies, merged.
    pub(crate) fn latency(&self) -> anyhow::Result<Histogram<u64>> {
        let mut histogram = new_histogram()?;
        for shard in &self.shared.latency {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            histogram
                .add(&*shard)
                .map_err(|e| anyhow::anyhow!("merging latency histograms: {e}"))?;
        }
        Ok(histogram)
    }

    pub(crate) fn first_error(&self) -> Option<String> {
        self.shared.streams.first_error()
    }

    /// Herald's readiness: polls each node's `GET /v1/topics/{topic}` until
    /// it counts the subscribers opened on it (`want[k]` on `nodes[k]`; at
    /// most 10 s in all).
    pub(crate) async fn herald_topic_ready(
        http: &Http,
        nodes: &[Target],
        topic: &str,
        want: &[usize],
        deadline: Instant,
        bar: &ProgressBar,
    ) {
        let deadline = deadline.min(Instant::now() + Duration::from_secs(10));
        for (target, &want) in nodes.iter().zip(want) {
            let Ok(mut url) = target.url("/v1/topics/") else {
                return;
            };
            if let Ok(mut segments) = url.path_segments_mut() {
                segments.pop_if_empty().push(topic);
            }
            let seen = poll_count(http, url, "subscribers", want, deadline).await;
            if seen.is_none_or(|n| n < want as u64) {
                note(bar, &format!("{} counts {seen:?} subscribers on {topic:?}, expected {want}; publishing anyway", target.base));
            }
        }
    }

    /// Herald's readiness for personal streams: polls `GET /v1/stats` until
    /// `users_online` reaches `want` (at most 10 s).
    pub(crate) async fn herald_users_ready(
        http: &Http,
        target: &Target,
        want: usize,
        deadline: Instant,
        bar: &ProgressBar,
    ) {
        let Ok(url) = target.url("/v1/stats") else {
            return;
        };
        let seen = poll_count(http, url, "users_online", want, deadline).await;
        if seen.is_none_or(|n| n < want as u64) {
            note(
                bar,
                &format!(
                    "the server counts {seen:?} users online, expected {want}; publishing anyway"
                ),
            );
        }
    }
}

/// Polls a JSON count until it reaches `want`; returns the last value seen.
async fn poll_count(
    http: &Http,
    url: url::Url,
    field: &str,
    want: usize,
    deadline: Instant,
) -> Option<u64> {
    let deadline = deadline.min(Instant::now() + Duration::from_secs(10));
    let mut seen = None;
    // Bounded by `deadline`.
    while Instant::now() < deadline {
        let answer = tokio::time::timeout(Duration::from_secs(2), http.get_json(&url))
            .await
            .ok()
            .flatten();
        if let Some(body) = answer {
            seen = body.get(field).and_then(|n| n.as_u64());
            if seen.is_some_and(|n| n >= want as u64) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen
}

async fn subscriber(
    idx: usize,
    target: StreamTarget,
    expect: Expect,
    shared: &Shared,
    mut stop: watch::Receiver<bool>,
) -> Option<SeqTracker> {
    let opened = shared
        .streams
        .open("subscriber", idx, &target, &mut stop)
        .await;
    let Some((mut conn, first)) = opened else {
        shared.done.fetch_add(1, Ordering::Relaxed);
        return None;
    };

    let mut parser = Parser::new();
    let mut parsed: Vec<ParsedEvent> = Vec::new();
    let mut tracker = SeqTracker::new(expect);
    let mut latencies: Vec<u64> = Vec::new();
    let mut counted_done = false;
    parser.feed_into(&first, &mut parsed);
    let shard = &shared.latency[idx % SHARDS];
    // Bounded: ends at end of stream, on error, or at stop.
    loop {
        if !parsed.is_empty() {
            let now = epoch_micros();
            let mut new_deliveries = 0u64;
            for event in parsed.drain(..) {
                let bench = if event.event.starts_with("herald.") {
                    None
                } else {
                    parse_data(&event.data)
                };
                match bench {
                    Some((seq, ts)) => {
                        new_deliveries += u64::from(tracker.record(seq));
                        latencies.push(now.saturating_sub(ts));
                    }
                    None => tracker.record_other(),
                }
            }
            if new_deliveries > 0 {
                shared.unique.fetch_add(new_deliveries, Ordering::Relaxed);
            }
            if !latencies.is_empty() {
                let mut histogram = shard.lock().unwrap_or_else(|e| e.into_inner());
                for &latency in &latencies {
                    histogram.saturating_record(latency.max(1));
                }
                drop(histogram);
                shared
                    .received
                    .fetch_add(latencies.len() as u64, Ordering::Relaxed);
                latencies.clear();
                shared
                    .last_receive_us
                    .fetch_max(shared.since_t0_us(), Ordering::Relaxed);
            }
        }
        if !counted_done && tracker.complete() {
            counted_done = true;
            shared.complete.fetch_add(1, Ordering::Relaxed);
            shared.done.fetch_add(1, Ordering::Relaxed);
        }
        if *stop.borrow() {
            break;
        }
        tokio::select! {
            more = conn.read_some(|bytes| parser.feed_into(bytes, &mut parsed)) => match more {
                Ok(true) => {}
                Ok(false) => {
                    tracker.result.disconnected = true;
                    break;
                }
                Err(err) => {
                    shared.streams.record_error(format!("subscriber {idx}: {err:#}"));
                    tracker.result.disconnected = true;
                    break;
                }
            },
            _ = stop.changed() => break,
        }
    }
    if !counted_done {
        shared.done.fetch_add(1, Ordering::Relaxed);
    }
    Some(tracker)
}
