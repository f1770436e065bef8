//! `herald bench fanout`: N subscribers on one topic, one publisher.
//!
//! Each event's data is `"{seq} {publish_ts_us} {pad}"`. Every subscriber keeps
//! a bitset of the sequence numbers it has seen (E bits), so missing, duplicate
//! and out-of-order deliveries are counted exactly; latency is receive time
//! minus the publish timestamp (both from the same machine's clock).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use hdrhistogram::Histogram;
use herald_sse::{ParsedEvent, Parser};
use serde::Serialize;
use tokio::sync::{watch, Semaphore};

use super::client::{SseConn, Target};
use super::epoch_micros;

/// Read buffer per subscriber.
const SUB_BUF: usize = 4096;
/// Latency histograms are sharded to keep subscriber tasks from contending.
const SHARDS: usize = 16;
/// Per-stream timeout for connect + head + first bytes.
const OPEN_ONE_TIMEOUT: Duration = Duration::from_secs(15);
/// Streams being opened at the same time.
const OPEN_CONCURRENCY: usize = 64;
/// Attempts per publish request answered 429/503 or failed in transport.
const PUBLISH_ATTEMPTS: u32 = 5;

/// Flags of `herald bench fanout`.
#[derive(Debug, Args)]
pub(crate) struct FanoutArgs {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "HERALD_URL")]
    url: String,
    /// Subscribers on the topic.
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// Events to publish.
    #[arg(long, default_value_t = 1000)]
    events: u32,
    /// Events per second (paced); flat out when absent.
    #[arg(long, value_name = "PER_SEC")]
    rate: Option<f64>,
    /// Events per publish request [default: 100 flat out, 1 paced].
    #[arg(long)]
    batch: Option<u32>,
    /// Bytes of data per event (at least the sequence number and timestamp).
    #[arg(long, default_value_t = 100)]
    data_bytes: usize,
    /// Topic to publish to and subscribe to.
    #[arg(long, default_value = "bench")]
    topic: String,
    /// Seconds, from the first publish, to wait for every delivery.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// State shared by all subscriber tasks.
#[derive(Debug)]
struct Shared {
    /// Start of the run; times below are microseconds since it.
    t0: Instant,
    last_receive_us: AtomicU64,
    connected: AtomicUsize,
    failed: AtomicUsize,
    /// Subscribers that have everything, or stopped.
    finished: AtomicUsize,
    latency: Vec<Mutex<Histogram<u64>>>,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn since_t0_us(&self) -> u64 {
        u64::try_from(self.t0.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

/// What one subscriber saw.
#[derive(Debug, Default, Clone, Copy)]
struct SubResult {
    received: u64,
    unique: u64,
    duplicates: u64,
    out_of_order: u64,
    /// Events that are not bench events (e.g. `herald.gap`), or unparsable.
    other: u64,
    /// The server ended the stream before all events arrived.
    disconnected: bool,
}

/// Seen sequence numbers of one subscriber.
#[derive(Debug)]
struct SeqTracker {
    seen: Vec<u64>,
    events: u32,
    max: Option<u32>,
    result: SubResult,
}

impl SeqTracker {
    fn new(events: u32) -> Self {
        Self {
            seen: vec![0; (events as usize).div_ceil(64)],
            events,
            max: None,
            result: SubResult::default(),
        }
    }

    fn record(&mut self, seq: u32) {
        let r = &mut self.result;
        r.received += 1;
        let (word, bit) = (seq as usize / 64, 1u64 << (seq % 64));
        let slot = match self.seen.get_mut(word) {
            Some(slot) if seq < self.events => slot,
            _ => {
                r.other += 1;
                return;
            }
        };
        if *slot & bit != 0 {
            r.duplicates += 1;
            return;
        }
        *slot |= bit;
        r.unique += 1;
        match self.max {
            Some(max) if seq < max => r.out_of_order += 1,
            _ => self.max = Some(seq),
        }
    }
}

/// One published event as the publish route takes it.
#[derive(Serialize)]
struct PublishItem<'a> {
    topics: [&'a str; 1],
    data: String,
}

pub(crate) async fn run(args: FanoutArgs) -> anyhow::Result<()> {
    if args.subscribers == 0 || args.events == 0 {
        bail!("--subscribers and --events must be at least 1");
    }
    if args.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        bail!("--rate must be a positive number");
    }
    let batch = args
        .batch
        .unwrap_or(if args.rate.is_some() { 1 } else { 100 })
        .max(1);
    let target = Arc::new(Target::resolve(&args.url).await?);
    let path: Arc<str> = target.events_path(&args.topic)?.into();

    let mut latency = Vec::with_capacity(SHARDS);
    for _ in 0..SHARDS {
        let histogram = Histogram::new_with_bounds(1, 3_600_000_000, 3)
            .context("creating a latency histogram")?;
        latency.push(Mutex::new(histogram));
    }
    let shared = Arc::new(Shared {
        t0: Instant::now(),
        last_receive_us: AtomicU64::new(0),
        connected: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        finished: AtomicUsize::new(0),
        latency,
        first_error: Mutex::new(None),
    });
    let gate = Arc::new(Semaphore::new(OPEN_CONCURRENCY));
    let (stop_tx, stop_rx) = watch::channel(false);
    // Hard bound on every subscriber, whatever happens to the stop signal.
    let hard_deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout_secs + 300);

    let mut tasks = Vec::with_capacity(args.subscribers);
    for idx in 0..args.subscribers {
        let (target, path, gate, shared) =
            (target.clone(), path.clone(), gate.clone(), shared.clone());
        let stop = stop_rx.clone();
        let events = args.events;
        tasks.push(tokio::spawn(async move {
            let run = subscriber(idx, &target, &path, events, &gate, &shared, stop);
            let result = tokio::time::timeout_at(hard_deadline, run)
                .await
                .unwrap_or_default();
            shared.finished.fetch_add(1, Ordering::Relaxed);
            result
        }));
    }

    // Wait for every subscriber to be open (bounded by the per-stream timeout).
    let open_deadline = Instant::now()
        + OPEN_ONE_TIMEOUT
            * u32::try_from(args.subscribers / OPEN_CONCURRENCY + 2).unwrap_or(u32::MAX);
    while shared.connected.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed)
        < args.subscribers
        && Instant::now() < open_deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connected = shared.connected.load(Ordering::Relaxed);
    let failed = shared.failed.load(Ordering::Relaxed);
    eprintln!(
        "bench: {connected} subscribers open, {failed} failed, in {:.1} s",
        shared.t0.elapsed().as_secs_f64()
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTP client")?;
    wait_for_topic_subscribers(&http, &target, &args.topic, connected).await;

    // Publish.
    let publish_url = target.url("/v1/publish")?;
    let first_publish_us = shared.since_t0_us();
    let publish_deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let publish_result = publish(&http, &publish_url, &args, batch, publish_deadline).await;
    let publish_secs = (shared.since_t0_us() - first_publish_us) as f64 / 1e6;
    if let Err(err) = &publish_result {
        eprintln!("bench: publishing stopped: {err:#}");
    }
    let published = publish_result.as_ref().copied().unwrap_or(0);

    // Wait for the deliveries, then stop whoever is still waiting.
    while shared.finished.load(Ordering::Relaxed) < args.subscribers
        && Instant::now() < publish_deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let timed_out = shared.finished.load(Ordering::Relaxed) < args.subscribers;
    let _ = stop_tx.send(true);
    let mut total = SubResult::default();
    let mut disconnected = 0u64;
    for task in tasks {
        let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(10), task).await else {
            continue;
        };
        total.received += r.received;
        total.unique += r.unique;
        total.duplicates += r.duplicates;
        total.out_of_order += r.out_of_order;
        total.other += r.other;
        disconnected += u64::from(r.disconnected);
    }

    let mut histogram = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
        .context("creating a latency histogram")?;
    for shard in &shared.latency {
        let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        histogram
            .add(&*shard)
            .context("merging latency histograms")?;
    }
    let last_receive_us = shared.last_receive_us.load(Ordering::Relaxed);
    let window_secs = last_receive_us.saturating_sub(first_publish_us) as f64 / 1e6;
    let expected = connected as u64 * u64::from(args.events);
    let report = Report {
        subscribers: args.subscribers,
        connected,
        failed,
        events: args.events,
        published,
        batch,
        rate: args.rate,
        data_bytes: args.data_bytes,
        expected,
        received: total.received,
        missing: expected.saturating_sub(total.unique),
        duplicates: total.duplicates,
        out_of_order: total.out_of_order,
        other_events: total.other,
        disconnected,
        timed_out,
        publish_secs: round3(publish_secs),
        publish_events_per_sec: round1(f64::from(published) / publish_secs.max(1e-9)),
        delivery_window_secs: round3(window_secs),
        deliveries_per_sec: round1(if window_secs > 0.0 {
            total.received as f64 / window_secs
        } else {
            0.0
        }),
        latency_ms: Latency {
            samples: histogram.len(),
            p50: ms(histogram.value_at_quantile(0.5)),
            p90: ms(histogram.value_at_quantile(0.9)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        },
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).context("encoding the report")?
        );
    } else {
        report.print();
    }
    if let Ok(Some(err)) = shared.first_error.lock().map(|e| e.clone()) {
        eprintln!("bench: first subscriber error: {err}");
    }
    publish_result?;
    if report.missing > 0 || failed > 0 {
        bail!(
            "{} deliveries missing, {failed} subscribers failed to open",
            report.missing
        );
    }
    Ok(())
}

/// Polls `GET /v1/topics/{topic}` until the server counts `want` subscribers
/// (at most 10 s), so that no event is published before everyone listens.
async fn wait_for_topic_subscribers(
    http: &reqwest::Client,
    target: &Target,
    topic: &str,
    want: usize,
) {
    let Ok(mut url) = target.url("/v1/topics/") else {
        return;
    };
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.pop_if_empty().push(topic);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = None;
    while Instant::now() < deadline {
        if let Ok(response) = http.get(url.clone()).send().await {
            if let Ok(body) = response.json::<serde_json::Value>().await {
                seen = body.get("subscribers").and_then(|n| n.as_u64());
                if seen.is_some_and(|n| n >= want as u64) {
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("bench: the server counts {seen:?} subscribers on {topic:?}, expected {want}; publishing anyway");
}

/// Publishes `--events` events in batches; returns how many were acknowledged.
async fn publish(
    http: &reqwest::Client,
    url: &reqwest::Url,
    args: &FanoutArgs,
    batch: u32,
    deadline: Instant,
) -> anyhow::Result<u32> {
    let mut ticker = args.rate.map(|rate| {
        let period = Duration::from_secs_f64(f64::from(batch) / rate);
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        ticker
    });
    let mut items = Vec::with_capacity(batch as usize);
    let mut seq = 0u32;
    // Bounded: `seq` grows by at least one per round.
    while seq < args.events {
        if Instant::now() >= deadline {
            bail!("--timeout-secs passed after {seq} events were published");
        }
        if let Some(ticker) = ticker.as_mut() {
            ticker.tick().await;
        }
        let end = seq.saturating_add(batch).min(args.events);
        let ts = epoch_micros();
        items.clear();
        for s in seq..end {
            items.push(PublishItem {
                topics: [&args.topic],
                data: event_data(s, ts, args.data_bytes),
            });
        }
        let body = serde_json::to_vec(&items).context("encoding a publish")?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = http
                .post(url.clone())
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            let retryable = match sent {
                Ok(response) if response.status() == reqwest::StatusCode::CREATED => break,
                Ok(response)
                    if matches!(response.status().as_u16(), 429 | 503)
                        && attempt < PUBLISH_ATTEMPTS =>
                {
                    format!("{}", response.status())
                }
                Ok(response) => {
                    let status = response.status();
                    let text = response.text().await.unwrap_or_default();
                    bail!("publish answered {status}: {text}");
                }
                // A transport error may hide a stored publish: retrying could
                // duplicate, which the subscribers would then count.
                Err(err) if attempt < PUBLISH_ATTEMPTS => format!("{err}"),
                Err(err) => return Err(err).context("publishing"),
            };
            eprintln!("bench: publish attempt {attempt} failed ({retryable}); retrying");
            tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
        }
        seq = end;
    }
    Ok(seq)
}

/// `"{seq} {ts} xxx…"`, padded to `size` bytes when that is longer.
fn event_data(seq: u32, ts: u64, size: usize) -> String {
    let mut data = format!("{seq} {ts} ");
    let pad = size.saturating_sub(data.len()).max(1);
    data.push_str(&"x".repeat(pad));
    data
}

/// Parses `"{seq} {ts} …"`.
fn parse_data(data: &str) -> Option<(u32, u64)> {
    let mut parts = data.splitn(3, ' ');
    let seq = parts.next()?.parse().ok()?;
    let ts = parts.next()?.parse().ok()?;
    Some((seq, ts))
}

async fn subscriber(
    idx: usize,
    target: &Target,
    path: &str,
    events: u32,
    gate: &Semaphore,
    shared: &Shared,
    mut stop: watch::Receiver<bool>,
) -> SubResult {
    let permit = gate.acquire().await;
    let opened =
        tokio::time::timeout(OPEN_ONE_TIMEOUT, SseConn::open(target, idx, path, SUB_BUF)).await;
    drop(permit);
    let (mut conn, first) = match opened {
        Ok(Ok(open)) => open,
        Ok(Err(err)) => return failed(shared, format!("{err:#}")),
        Err(_) => return failed(shared, "timed out opening".to_owned()),
    };
    shared.connected.fetch_add(1, Ordering::Relaxed);

    let mut parser = Parser::new();
    let mut parsed: Vec<ParsedEvent> = Vec::new();
    let mut tracker = SeqTracker::new(events);
    let mut latencies: Vec<u64> = Vec::new();
    parser.feed_into(&first, &mut parsed);
    let shard = &shared.latency[idx % SHARDS];
    // Bounded: ends when every event is in, at end of stream, or at stop.
    loop {
        if !parsed.is_empty() {
            let now = epoch_micros();
            for event in parsed.drain(..) {
                match parse_data(&event.data) {
                    Some((seq, ts)) if event.event == "message" => {
                        tracker.record(seq);
                        latencies.push(now.saturating_sub(ts));
                    }
                    _ => tracker.result.other += 1,
                }
            }
            if !latencies.is_empty() {
                let mut histogram = shard.lock().unwrap_or_else(|e| e.into_inner());
                for &latency in &latencies {
                    histogram.saturating_record(latency.max(1));
                }
                drop(histogram);
                latencies.clear();
                shared
                    .last_receive_us
                    .fetch_max(shared.since_t0_us(), Ordering::Relaxed);
            }
        }
        if tracker.result.unique >= u64::from(events) {
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
                    record_error(shared, format!("{err:#}"));
                    tracker.result.disconnected = true;
                    break;
                }
            },
            _ = stop.changed() => break,
        }
    }
    tracker.result
}

fn failed(shared: &Shared, err: String) -> SubResult {
    record_error(shared, err);
    shared.failed.fetch_add(1, Ordering::Relaxed);
    SubResult::default()
}

fn record_error(shared: &Shared, err: String) {
    if let Ok(mut slot) = shared.first_error.lock() {
        slot.get_or_insert(err);
    }
}

fn ms(us: u64) -> f64 {
    round3(us as f64 / 1000.0)
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The figures of one run (`--json` prints this).
#[derive(Debug, Serialize)]
struct Report {
    subscribers: usize,
    connected: usize,
    failed: usize,
    events: u32,
    published: u32,
    batch: u32,
    rate: Option<f64>,
    data_bytes: usize,
    /// `connected × events`.
    expected: u64,
    /// Bench events received by all subscribers, duplicates included.
    received: u64,
    missing: u64,
    duplicates: u64,
    out_of_order: u64,
    other_events: u64,
    disconnected: u64,
    timed_out: bool,
    publish_secs: f64,
    publish_events_per_sec: f64,
    /// From the first publish to the last receive.
    delivery_window_secs: f64,
    /// `received / delivery_window_secs`.
    deliveries_per_sec: f64,
    latency_ms: Latency,
}

#[derive(Debug, Serialize)]
struct Latency {
    samples: u64,
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

impl Report {
    fn print(&self) {
        let rate = self
            .rate
            .map_or("flat out".to_owned(), |r| format!("{r} events/s"));
        println!(
            "subscribers              {} ({} open, {} failed)",
            self.subscribers, self.connected, self.failed
        );
        println!(
            "events                   {} published of {}, batch {}, {rate}",
            self.published, self.events, self.batch
        );
        println!(
            "publish time             {:.3} s ({:.0} events/s)",
            self.publish_secs, self.publish_events_per_sec
        );
        println!(
            "deliveries               {} of {} expected in {:.3} s",
            self.received, self.expected, self.delivery_window_secs
        );
        println!("deliveries/s             {:.0}", self.deliveries_per_sec);
        println!("missing                  {}", self.missing);
        println!("duplicates               {}", self.duplicates);
        println!("out of order             {}", self.out_of_order);
        println!("other events             {}", self.other_events);
        println!("streams ended early      {}", self.disconnected);
        println!("timed out                {}", self.timed_out);
        let l = &self.latency_ms;
        println!(
            "latency ms               p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  ({} samples)",
            l.p50, l.p90, l.p99, l.p999, l.max, l.samples
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_round_trips_and_pads() {
        let data = event_data(42, 1_700_000_000_000_000, 100);
        assert_eq!(data.len(), 100);
        assert_eq!(parse_data(&data), Some((42, 1_700_000_000_000_000)));
    }

    #[test]
    fn tracker_counts_duplicates_and_reordering() {
        let mut t = SeqTracker::new(100);
        for seq in [0, 2, 1, 2, 99, 100] {
            t.record(seq);
        }
        let r = t.result;
        assert_eq!(
            (r.received, r.unique, r.duplicates, r.out_of_order, r.other),
            (6, 4, 1, 1, 1)
        );
    }
}
