//! `/metrics`: every series Herald exports, through the `metrics` crate and
//! its Prometheus exporter.
//!
//! Invariants:
//! - Every handle is registered once, here, when the server state is made,
//!   and held; nothing is looked up by name on a request or an event.
//! - Counts that already exist as atomics on the hot paths (published,
//!   delivered, bytes written, lag switches, refusals, ...) are not counted a
//!   second time: [`Metrics::render`] copies them into their handles at
//!   scrape time (`Counter::absolute`, `Gauge::set`). Only what has no
//!   atomic of its own is recorded where it happens: the histograms, each
//!   sampled where it is recorded (see `herald_core::hub::HubMetrics`).
//! - The recorder is this server's own, not the process-global one: two
//!   servers in one process (tests) do not mix their series.
//! - Histogram samples are folded into their buckets at least every
//!   [`UPKEEP_EVERY`] ([`Metrics::run_upkeep`]), so memory stays bounded
//!   however rarely `/metrics` is scraped.

use std::sync::atomic::Ordering;
use std::time::Duration;

use herald_core::{CloseReason, HubMetrics};
use metrics::{Counter, Gauge, Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::error::ErrorCode;
use crate::AppState;

/// How often histogram samples are folded into their buckets.
pub(crate) const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Bucket bounds of the latency histograms, in seconds: 0.5 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Bucket bounds of the queue-depth histogram, in queued items.
const QUEUE_DEPTH_BUCKETS: &[f64] = &[
    0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0,
];

const PUBLISH_TO_WRITE: &str = "herald_publish_to_write_seconds";
const LOG_APPEND: &str = "herald_log_append_seconds";
const QUEUE_DEPTH: &str = "herald_stream_queue_depth";

/// The server's series and the exporter that renders them.
pub struct Metrics {
    handle: PrometheusHandle,
    series: Series,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A recorder of its own with every series registered and described.
    pub(crate) fn new() -> Self {
        let builder = PrometheusBuilder::new();
        // Constant, valid bucket lists: setting them cannot fail; if it
        // somehow did, the series would be summaries, still exported.
        let builder = builder
            .set_buckets_for_metric(Matcher::Full(PUBLISH_TO_WRITE.into()), LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(LOG_APPEND.into()), LATENCY_BUCKETS)
            })
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(QUEUE_DEPTH.into()), QUEUE_DEPTH_BUCKETS)
            })
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let series = metrics::with_local_recorder(&recorder, Self::register);
        Self { handle, series }
    }

    /// Registers and describes every series on the current (local) recorder.
    fn register() -> Series {
        use metrics::{
            counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
        };
        describe_gauge!("herald_connections", "Open event streams.");
        describe_gauge!("herald_users_online", "Users with an open stream.");
        describe_gauge!("herald_topics", "Subscribed topics and patterns.");
        describe_counter!(
            "herald_events_published_total",
            "Events stored via this node."
        );
        describe_counter!(
            "herald_events_dispatched_total",
            "Events fanned out by this node."
        );
        describe_counter!(
            "herald_events_delivered_total",
            "Event frames written to streams."
        );
        describe_counter!(
            "herald_written_bytes_total",
            Unit::Bytes,
            "Bytes of SSE frames written to streams (HTTP framing not counted)."
        );
        describe_counter!(
            "herald_stream_lagged_total",
            "Times a slow stream switched to catch-up from the log."
        );
        describe_counter!(
            "herald_catch_ups_total",
            "Streams that read from the log instead of live delivery: resumed with Last-Event-ID, or lagged."
        );
        describe_counter!(
            "herald_gaps_total",
            "herald.gap events sent: a resume point no longer retained."
        );
        describe_counter!("herald_connections_opened_total", "Streams opened.");
        describe_counter!(
            "herald_streams_write_timed_out_total",
            "Connections closed because their socket took no byte for write_timeout_secs."
        );
        describe_gauge!(
            "herald_uptime_seconds",
            Unit::Seconds,
            "Seconds since start."
        );
        describe_counter!("herald_refusals_total", "Requests refused, by error code.");
        describe_counter!(
            "herald_streams_turned_away_total",
            "Subscribers told to come back later, by limit."
        );
        describe_counter!("herald_disconnects_total", "Streams closed, by reason.");
        describe_gauge!(
            "herald_delivery_lag_seconds",
            Unit::Seconds,
            "How far behind streams are: the median stream, the furthest, and the dispatcher."
        );
        describe_gauge!(
            "herald_streams_behind",
            "Streams with events acknowledged but not yet written."
        );
        describe_gauge!(
            "process_resident_memory_bytes",
            Unit::Bytes,
            "Resident memory of the process."
        );
        describe_gauge!("process_open_fds", "Open file descriptors of the process.");
        describe_histogram!(
            PUBLISH_TO_WRITE,
            Unit::Seconds,
            "From an event's storing to its write to a stream (live deliveries, sampled: about 1 stream in 64 per event)."
        );
        describe_histogram!(
            LOG_APPEND,
            Unit::Seconds,
            "One publish request's append to the event log."
        );
        describe_histogram!(
            QUEUE_DEPTH,
            "Items queued per stream (sampled once a second, at most 256 streams)."
        );
        let turned_away =
            |limit: &'static str| counter!("herald_streams_turned_away_total", "limit" => limit);
        let lag = |of: &'static str| gauge!("herald_delivery_lag_seconds", "of" => of);
        Series {
            connections: gauge!("herald_connections"),
            users_online: gauge!("herald_users_online"),
            topics: gauge!("herald_topics"),
            published: counter!("herald_events_published_total"),
            dispatched: counter!("herald_events_dispatched_total"),
            delivered: counter!("herald_events_delivered_total"),
            written_bytes: counter!("herald_written_bytes_total"),
            lagged: counter!("herald_stream_lagged_total"),
            catch_ups_resume: counter!("herald_catch_ups_total", "reason" => "resume"),
            catch_ups_lagged: counter!("herald_catch_ups_total", "reason" => "lagged"),
            gaps: counter!("herald_gaps_total"),
            connections_opened: counter!("herald_connections_opened_total"),
            write_timed_out: counter!("herald_streams_write_timed_out_total"),
            uptime: gauge!("herald_uptime_seconds"),
            refusals: ErrorCode::ALL
                .iter()
                .map(|code| {
                    (
                        *code,
                        counter!("herald_refusals_total", "code" => code.as_str()),
                    )
                })
                .collect(),
            turned_away: [
                turned_away("max_connections"),
                turned_away("max_connections_per_ip"),
                turned_away("max_connections_per_user"),
            ],
            disconnects: CloseReason::ALL
                .iter()
                .map(|reason| {
                    (
                        *reason,
                        counter!("herald_disconnects_total", "reason" => reason.as_str()),
                    )
                })
                .collect(),
            delivery_lag: [lag("median"), lag("max"), lag("dispatch")],
            streams_behind: gauge!("herald_streams_behind"),
            resident_memory: gauge!("process_resident_memory_bytes"),
            open_fds: gauge!("process_open_fds"),
            log_append_seconds: histogram!(LOG_APPEND),
            hub: HubMetrics {
                publish_to_write_seconds: histogram!(PUBLISH_TO_WRITE),
                queue_depth: histogram!(QUEUE_DEPTH),
            },
        }
    }

    /// The Prometheus text of every series, the counts kept as atomics
    /// copied in first.
    pub(crate) fn render(&self, state: &AppState) -> String {
        let s = &self.series;
        let hub = &state.hub;
        let counts = hub.counts();
        s.connections.set(counts.connections as f64);
        s.users_online.set(counts.users_online as f64);
        s.topics.set(counts.topics as f64);
        s.published
            .absolute(state.published.load(Ordering::Relaxed));
        s.dispatched
            .absolute(hub.counters.dispatched.load(Ordering::Relaxed));
        s.delivered.absolute(hub.events_delivered());
        s.written_bytes.absolute(hub.bytes_written());
        let lagged = hub.streams_lagged();
        s.lagged.absolute(lagged);
        s.catch_ups_lagged.absolute(lagged);
        s.catch_ups_resume
            .absolute(hub.counters.resumed.load(Ordering::Relaxed));
        s.gaps.absolute(hub.gaps_sent());
        s.connections_opened
            .absolute(hub.counters.connections_opened.load(Ordering::Relaxed));
        s.write_timed_out.absolute(state.write_timeouts());
        s.uptime.set(hub.uptime().as_secs() as f64);
        for ((_, counter), (_, n)) in s.refusals.iter().zip(state.refusals.by_code()) {
            counter.absolute(n);
        }
        let refusals = &state.refusals;
        for (counter, n) in s.turned_away.iter().zip([
            &refusals.over_capacity,
            &refusals.over_ip_limit,
            &refusals.over_user_limit,
        ]) {
            counter.absolute(n.load(Ordering::Relaxed));
        }
        for ((_, counter), (_, n)) in s.disconnects.iter().zip(hub.disconnects()) {
            counter.absolute(n);
        }
        let lag = hub.delivery_lag();
        for (gauge, ms) in s
            .delivery_lag
            .iter()
            .zip([lag.median_ms, lag.max_ms, lag.dispatch_ms])
        {
            gauge.set(ms as f64 / 1000.0);
        }
        s.streams_behind.set(lag.streams_behind as f64);
        if let Some(rss) = process::resident_memory_bytes() {
            s.resident_memory.set(rss as f64);
        }
        if let Some(fds) = process::open_fds() {
            s.open_fds.set(fds as f64);
        }
        self.handle.render()
    }

    /// Folds histogram samples into their buckets every [`UPKEEP_EVERY`],
    /// forever.
    pub(crate) async fn run_upkeep(handle: PrometheusHandle) {
        let mut every = tokio::time::interval(UPKEEP_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            handle.run_upkeep();
        }
    }

    /// Where a publish records its log append's duration.
    pub(crate) fn log_append_seconds(&self) -> &Histogram {
        &self.series.log_append_seconds
    }

    /// The hub's histograms.
    pub(crate) fn hub(&self) -> HubMetrics {
        self.series.hub.clone()
    }

    /// The exporter's handle (for [`Metrics::run_upkeep`]).
    pub(crate) fn handle(&self) -> PrometheusHandle {
        self.handle.clone()
    }
}

/// Every registered handle.
struct Series {
    connections: Gauge,
    users_online: Gauge,
    topics: Gauge,
    published: Counter,
    dispatched: Counter,
    delivered: Counter,
    written_bytes: Counter,
    lagged: Counter,
    catch_ups_resume: Counter,
    catch_ups_lagged: Counter,
    gaps: Counter,
    connections_opened: Counter,
    write_timed_out: Counter,
    uptime: Gauge,
    refusals: Vec<(ErrorCode, Counter)>,
    turned_away: [Counter; 3],
    disconnects: Vec<(CloseReason, Counter)>,
    delivery_lag: [Gauge; 3],
    streams_behind: Gauge,
    resident_memory: Gauge,
    open_fds: Gauge,
    /// Seconds one publish request's append to the event log took.
    log_append_seconds: Histogram,
    /// The hub's histograms (handed to it by `AppState::new`).
    hub: HubMetrics,
}

/// The process's own figures, read from `/proc` at scrape time (`None`
/// where there is no `/proc`).
mod process {
    /// Resident memory, from `/proc/self/status`'s `VmRSS` (in kB there).
    pub(super) fn resident_memory_bytes() -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kb: u64 = line
            .trim_start_matches("VmRSS:")
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    }

    /// Open descriptors: the entries of `/proc/self/fd` (the directory
    /// handle that lists them included).
    pub(super) fn open_fds() -> Option<usize> {
        Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
    }
}
