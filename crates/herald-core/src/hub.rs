//! The hub: registration, presence, and the fan-out of one node.
//!
//! Invariants:
//! - Events reach streams only through [`Hub::run_dispatcher`], which tails
//!   the event log and dispatches in id order from a single task; each
//!   stream's dedupe stamp (`crate::stream`) relies on that.
//! - Dispatch never waits: each event is offered to each matching stream's
//!   queue, whose bound is a per-stream counter (`crate::stream`), or written
//!   through to a parked stream's socket without blocking. A full
//!   queue marks the stream *lagging*; the hub then skips it, and its writer
//!   catches up from the log (see [`crate::connection`]). Publishers and other
//!   streams are never blocked, and nothing is dropped silently.
//! - Which stream matches which event is [`Filter::matches`]; the index
//!   (`crate::index`) only finds the candidates fast.
//! - Every count (connections, users, topics) is derived from the index under
//!   one lock, so it is exact the moment a stream is unregistered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Waker;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::RwLock;

use crate::connection::{Connection, Resume};
use crate::event::{now_ms, Event, EventId};
use crate::filter::Filter;
use crate::index::{Entry, Index};
use crate::lag::{self, DeliveryLag, LagGauge};
use crate::log::{EventLog, Position};
pub use crate::stream::LATENCY_SAMPLE_EVERY;
use crate::stream::{stream_queue, CloseReason, ConnId, Outbound, Registry, StreamShared};

/// How many events the log tail reads per step.
const TAIL_BATCH: usize = 1024;
/// Parked streams the dispatcher writes an event to itself, at most: an
/// event for a user or a small group reaches its sockets without waking a
/// writer on another thread (the tail latency of unicast under load is that
/// wake-up), while a broadcast's thousands of writes stay with the streams'
/// writers, spread over the streams runtime's workers.
const WRITE_THROUGHS_PER_EVENT: u32 = 4;
/// After an event for more candidate streams than this, the dispatcher lets
/// other tasks on its thread run.
const MAX_UNYIELDING_FAN_OUT: usize = 64;

/// Tunables of the hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Events a stream may have queued before it is switched to catch-up.
    pub queue_capacity: usize,
    /// An idle stream gets a comment this often (proxies cut silent ones, and a
    /// failed write is how a dead peer is found).
    pub heartbeat: Duration,
    /// Streams are closed after about this long (minus up to 10% jitter, so
    /// clients do not all come back at once). `None`: never.
    pub max_connection_lifetime: Option<Duration>,
    /// The `retry:` value (ms) sent when a stream opens.
    pub retry_ms: u64,
}

impl HubConfig {
    /// Default of [`HubConfig::queue_capacity`].
    pub const DEFAULT_QUEUE_CAPACITY: usize = 256;
    /// Default of [`HubConfig::heartbeat`], in seconds.
    pub const DEFAULT_HEARTBEAT_SECS: u64 = 15;
    /// Default of [`HubConfig::retry_ms`].
    pub const DEFAULT_RETRY_MS: u64 = 3000;
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            queue_capacity: Self::DEFAULT_QUEUE_CAPACITY,
            heartbeat: Duration::from_secs(Self::DEFAULT_HEARTBEAT_SECS),
            max_connection_lifetime: None,
            retry_ms: Self::DEFAULT_RETRY_MS,
        }
    }
}

/// Most streams whose queue depth the lag sampler records per second.
pub const QUEUE_DEPTH_SAMPLES: usize = 256;
/// Lag samples ([`lag::SAMPLE_EVERY`]) between two queue-depth samples.
const QUEUE_DEPTH_EVERY_SAMPLES: u64 = 20;

/// The histograms the hub and its writers record into. The handles are
/// made once by whoever exports them (the HTTP layer's `/metrics`) and held
/// here and by each stream's writer; they record nothing until set
/// ([`Hub::set_metrics`]).
#[derive(Debug, Clone)]
pub struct HubMetrics {
    /// Seconds from an event's storing to its write to a stream, for live
    /// deliveries (through the stream's queue, or written through by the
    /// dispatcher), sampled (see [`LATENCY_SAMPLE_EVERY`]). Catch-up writes
    /// are not recorded: their age is the client's absence, not the
    /// server's latency.
    pub publish_to_write_seconds: metrics::Histogram,
    /// Items queued per stream, recorded by the lag sampler once a second
    /// for at most [`QUEUE_DEPTH_SAMPLES`] streams.
    pub queue_depth: metrics::Histogram,
}

impl Default for HubMetrics {
    fn default() -> Self {
        Self {
            publish_to_write_seconds: metrics::Histogram::noop(),
            queue_depth: metrics::Histogram::noop(),
        }
    }
}

/// Monotonic counters for `/v1/stats` and `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Events the dispatcher fanned out.
    pub dispatched: AtomicU64,
    /// Streams opened since start.
    pub connections_opened: AtomicU64,
    /// Streams opened with a `Last-Event-ID` (they start by catching up).
    pub resumed: AtomicU64,
    /// Streams closed, by [`CloseReason`] (indexed by its number).
    disconnects: [AtomicU64; CloseReason::ALL.len()],
    /// Frame bytes written by streams that have since closed.
    bytes_by_closed: AtomicU64,
    /// `herald.gap` events sent by streams that have since closed.
    gaps_by_closed: AtomicU64,
    /// Event frames written by streams that have since closed (the open
    /// ones keep their own count; see [`Hub::events_delivered`]).
    delivered_by_closed: AtomicU64,
    /// Catch-up switches of streams that have since closed (see
    /// [`Hub::streams_lagged`]).
    lagged_by_closed: AtomicU64,
}

/// A point-in-time view of the hub's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubCounts {
    /// Open streams.
    pub connections: usize,
    /// Distinct users with at least one open stream.
    pub users_online: usize,
    /// Distinct subscribed topics and patterns.
    pub topics: usize,
}

/// Subscriptions, presence and fan-out for one node.
#[derive(Debug)]
pub struct Hub {
    config: HubConfig,
    log: Arc<dyn EventLog>,
    index: RwLock<Index>,
    next_conn_id: AtomicU64,
    /// Counters shown by the stats and metrics routes.
    pub counters: Counters,
    started: Instant,
    /// Where the dispatcher starts: the log head when the hub was made, so an
    /// event stored between then and the dispatcher's first run is delivered.
    dispatch_from: Position,
    /// When the oldest event the dispatcher is offering now was stored (ms
    /// since the epoch); 0 while it waits for the log.
    dispatching_since_ms: AtomicU64,
    /// The delivery lag at the last sample ([`Hub::run_lag_sampler`]).
    lag: LagGauge,
    /// Set once by [`Hub::close_all`]: streams the hub does not hold (the
    /// stats stream) watch it to end with the others.
    closing: tokio::sync::watch::Sender<bool>,
    /// Where latencies and queue depths are recorded, once set.
    metrics: OnceLock<HubMetrics>,
}

/// Who is connecting and what they want.
#[derive(Debug)]
pub struct Subscriber {
    /// The subscriber's identity, if any (its personal topic is in the filter).
    pub user: Option<Arc<str>>,
    /// Subscriptions and type filter.
    pub filter: Filter,
    /// Where to resume from.
    pub resume: Resume,
    /// When the subscriber's credentials stop being valid (a token's `exp`
    /// plus leeway): the stream then gets `herald.expired` and ends.
    pub expires_at: Option<SystemTime>,
}

impl Hub {
    /// A hub delivering from `log`.
    pub fn new(log: Arc<dyn EventLog>, config: HubConfig) -> Arc<Self> {
        let dispatch_from = match *log.head().borrow() {
            Some(id) => Position::After(id),
            None => Position::Oldest,
        };
        Arc::new(Self {
            dispatch_from,
            config,
            log,
            index: RwLock::new(Index::default()),
            next_conn_id: AtomicU64::new(1),
            counters: Counters::default(),
            started: Instant::now(),
            dispatching_since_ms: AtomicU64::new(0),
            lag: LagGauge::default(),
            closing: tokio::sync::watch::Sender::new(false),
            metrics: OnceLock::new(),
        })
    }

    /// Where the hub and the writers of streams opened from now on record
    /// their histograms; only the first call counts.
    pub fn set_metrics(&self, metrics: HubMetrics) {
        let _ = self.metrics.set(metrics);
    }

    fn metrics(&self) -> HubMetrics {
        self.metrics.get().cloned().unwrap_or_default()
    }

    /// The hub's configuration.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// Time since the hub was created.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Registers a new stream; dropping the returned [`Connection`] unregisters it.
    pub fn connect(self: &Arc<Self>, subscriber: Subscriber) -> Connection {
        let id = self.next_conn_id.fetch_add(1, Ordering::Relaxed);
        // A resuming stream starts in catch-up: the hub must not queue live
        // events ahead of the replay.
        let resuming = !matches!(subscriber.resume, Resume::Live);
        let registry: Arc<dyn Registry> = self.clone();
        let (mut sender, receiver) =
            stream_queue(id, self.config.queue_capacity, resuming, registry);
        let metrics = self.metrics();
        sender.record_latency_into(metrics.publish_to_write_seconds.clone());
        sender
            .shared()
            .opened_at_ms
            .store(now_ms(), Ordering::Relaxed);
        tracing::debug!(
            conn = id,
            user = subscriber.user.as_deref().unwrap_or("-"),
            patterns = subscriber.filter.patterns().len(),
            resume = ?subscriber.resume,
            "stream opened"
        );
        let filter = Arc::new(subscriber.filter);
        // Checked: a deadline past what `Instant` can hold is no deadline
        // (the stream is never closed for it), not a panic.
        let close_at = self.config.max_connection_lifetime.and_then(|life| {
            let jitter = life.mul_f64(0.1 * rand::random::<f64>());
            Instant::now().checked_add(life.saturating_sub(jitter))
        });
        // Wall-clock expiry as a monotonic deadline (the ticker's clock); a
        // token already expired ends at the next tick.
        let expires_at = subscriber.expires_at.and_then(|at| {
            let left = at.duration_since(SystemTime::now()).unwrap_or_default();
            Instant::now().checked_add(left)
        });
        let entry = Arc::new(Entry {
            id,
            user: subscriber.user,
            filter: filter.clone(),
            sender,
            close_at,
            expires_at,
            sampled: lag::StreamMemory::default(),
        });
        self.index.write().insert(entry);
        self.counters
            .connections_opened
            .fetch_add(1, Ordering::Relaxed);
        if resuming {
            self.counters.resumed.fetch_add(1, Ordering::Relaxed);
        }
        // Read after registering: any event newer than this is dispatched to us.
        let live_from = *self.log.head().borrow();
        Connection::new(
            self.log.clone(),
            receiver,
            filter,
            subscriber.resume,
            live_from,
            self.config.retry_ms,
            subscriber.expires_at,
        )
        .with_latency_histogram(metrics.publish_to_write_seconds)
    }

    /// Event frames written to streams since start.
    pub fn events_delivered(&self) -> u64 {
        self.per_stream_total(|s| &s.delivered, &self.counters.delivered_by_closed)
    }

    /// Times a stream's queue overflowed (or the log tail fell behind) and it
    /// switched to catch-up from the log, since start.
    pub fn streams_lagged(&self) -> u64 {
        self.per_stream_total(|s| &s.lagged, &self.counters.lagged_by_closed)
    }

    /// Frame bytes written to streams since start (HTTP framing not counted).
    pub fn bytes_written(&self) -> u64 {
        self.per_stream_total(|s| &s.bytes_written, &self.counters.bytes_by_closed)
    }

    /// `herald.gap` events sent since start.
    pub fn gaps_sent(&self) -> u64 {
        self.per_stream_total(|s| &s.gaps, &self.counters.gaps_by_closed)
    }

    /// Streams whose writer has not finished yet: open ones, and ones the
    /// hub has let go of (kicked, expired, shut down) that are still
    /// writing their last frame. A drain waits for this to reach 0.
    pub fn streams_writing(&self) -> u64 {
        let closed: u64 = self.disconnects().map(|(_, n)| n).sum();
        self.counters
            .connections_opened
            .load(Ordering::Relaxed)
            .saturating_sub(closed)
    }

    /// Streams closed since start, for each reason.
    pub fn disconnects(&self) -> impl Iterator<Item = (CloseReason, u64)> + '_ {
        CloseReason::ALL
            .iter()
            .zip(&self.counters.disconnects)
            .map(|(reason, n)| (*reason, n.load(Ordering::Relaxed)))
    }

    /// A count kept per stream: the open streams' sum plus what closed ones
    /// left in `closed`, read under one lock (see [`Registry::unregister`]).
    fn per_stream_total(
        &self,
        count: impl Fn(&StreamShared) -> &AtomicU64,
        closed: &AtomicU64,
    ) -> u64 {
        let index = self.index.read();
        let open: u64 = index
            .streams
            .values()
            .map(|e| count(e.sender.shared()).load(Ordering::Relaxed))
            .sum();
        open + closed.load(Ordering::Relaxed)
    }

    /// Offers each event, in order, to every stream it matches, once each.
    /// Private: only the dispatcher, a single task reading the log in id
    /// order, may call it (the dedupe stamp relies on that order).
    ///
    /// The writers an event was queued for are woken after it has been
    /// offered to every stream, together, not one by one as it is queued:
    /// a wake-up hands the writer's task to the streams runtime, and
    /// interleaving 10,000 of them with the offers made both slower (the
    /// paced 10,000-stream broadcast's p99 was lower in each of 6
    /// interleaved runs with the wake-ups together). `wakes` is the
    /// dispatcher's buffer for them, empty between calls.
    fn dispatch(&self, events: &[Arc<Event>], write_throughs: u32, wakes: &mut Vec<Waker>) {
        self.counters
            .dispatched
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        // One lock per batch, not per event.
        let index = self.index.read();
        for event in events {
            index.dispatch(event, write_throughs, wakes);
            wakes.drain(..).for_each(Waker::wake);
        }
    }

    /// [`Hub::dispatch`], one event at a time, letting the thread's other
    /// tasks run after each event for many streams: the dispatcher shares
    /// its thread with publishes and admin requests, and offering an event
    /// to 10,000 streams takes milliseconds.
    async fn dispatch_yielding(&self, events: &[Arc<Event>], wakes: &mut Vec<Waker>) {
        let mut start = 0;
        while start < events.len() {
            let (end, many) = {
                let index = self.index.read();
                let mut end = start;
                let mut many = false;
                while end < events.len() && !many {
                    many = index.candidates(&events[end]) > MAX_UNYIELDING_FAN_OUT;
                    end += 1;
                }
                (end, many)
            };
            self.dispatch(&events[start..end], WRITE_THROUGHS_PER_EVENT, wakes);
            if many {
                tokio::task::yield_now().await;
            }
            start = end;
        }
    }

    /// Tails the log and dispatches every new event, forever. Run it once
    /// per hub, on the thread publishes run on: an append then wakes it
    /// without waking another thread, and an event for a user is written
    /// through to its socket from there (see `crate::stream`).
    pub async fn run_dispatcher(self: Arc<Self>) {
        let mut head = self.log.head();
        let everything = Filter::everything();
        let mut position = self.dispatch_from;
        let mut wakes = Vec::new();
        loop {
            match self.log.read_after(position, &everything, TAIL_BATCH).await {
                Ok(batch) => {
                    if batch.gap.is_some() {
                        // Events left retention before the tail read them:
                        // every stream catches up on its own and so learns
                        // of the gap (herald.gap) instead of missing them.
                        tracing::warn!(
                            "the log tail fell behind retention; all streams catch up from the log"
                        );
                        self.index
                            .read()
                            .streams
                            .values()
                            .for_each(|e| e.sender.force_catch_up());
                    }
                    if let Some(first) = batch.events.first() {
                        self.dispatching_since_ms
                            .store(first.stored_at_ms().max(1), Ordering::Relaxed);
                    }
                    self.dispatch_yielding(&batch.events, &mut wakes).await;
                    // A broadcast to tens of thousands of streams that
                    // have since gone leaves a big buffer: give it back.
                    if wakes.capacity() > 4 * self.index.read().streams.len().max(1024) {
                        wakes = Vec::new();
                    }
                    if let Some(id) = batch.scanned_to {
                        position = Position::After(id);
                    }
                    if !batch.reached_end {
                        continue;
                    }
                }
                Err(err) => {
                    tracing::warn!(%err, "reading the event log tail failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
            let caught_up = |newest: &Option<EventId>| match (position, newest) {
                (_, None) => true,
                (Position::After(at), Some(newest)) => at >= *newest,
                (Position::Oldest, Some(_)) => false,
            };
            self.dispatching_since_ms.store(0, Ordering::Relaxed);
            // Checks the current value first, so an append that raced the
            // read above is not missed.
            if head.wait_for(|newest| !caught_up(newest)).await.is_err() {
                return;
            }
        }
    }

    /// The delivery lag at the last sample (see [`crate::lag`]).
    pub fn delivery_lag(&self) -> DeliveryLag {
        self.lag.load()
    }

    /// Samples every stream's delivery lag each [`lag::SAMPLE_EVERY`], for
    /// [`Hub::delivery_lag`]. Runs forever.
    pub async fn run_lag_sampler(self: Arc<Self>) {
        let mut interval = tokio::time::interval(lag::SAMPLE_EVERY);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let head = self.log.head();
        let mut sample = lag::Sample::default();
        let mut last = Instant::now();
        let mut samples = 0u64;
        loop {
            interval.tick().await;
            samples += 1;
            // Looked up each time: the metrics may be set after this starts.
            let queue_depth = samples
                .is_multiple_of(QUEUE_DEPTH_EVERY_SAMPLES)
                .then(|| self.metrics.get())
                .flatten()
                .map(|m| &m.queue_depth);
            let dt = last.elapsed();
            last = Instant::now();
            let now = now_ms();
            let head_id = head.borrow().map_or(0, |id| id.0);
            sample.clear();
            let streams = {
                let index = self.index.read();
                // Every stride-th stream's queue depth, at most
                // QUEUE_DEPTH_SAMPLES of them.
                let stride = index.streams.len().div_ceil(QUEUE_DEPTH_SAMPLES).max(1);
                for (i, entry) in index.streams.values().enumerate() {
                    let shared = entry.sender.shared();
                    sample.add(lag::sample_stream(shared, &entry.sampled, now, head_id, dt));
                    if let (Some(depth), 0) = (queue_depth, i % stride) {
                        depth.record(shared.queued() as f64);
                    }
                }
                index.streams.len()
            };
            let dispatching_since = self.dispatching_since_ms.load(Ordering::Relaxed);
            let dispatch_ms = match dispatching_since {
                0 => 0,
                since => now.saturating_sub(since),
            };
            self.lag.store(sample.summarize(dispatch_ms));
            // A burst of tens of thousands of streams leaves a big buffer:
            // give it back once it is mostly unused.
            if sample.behind.capacity() > 4 * streams.max(1024) {
                sample = lag::Sample::default();
            }
        }
    }

    /// Heartbeats idle streams and closes expired ones, from one shared
    /// ticker (no per-stream timers). Runs forever.
    pub async fn run_housekeeping(self: Arc<Self>) {
        let tick = Duration::from_secs(1).min(self.config.heartbeat);
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Counted in ticks, not measured in time: a tick that fires a little
        // late must not push the heartbeat to the tick after (which made a
        // 1 s heartbeat come every 2 s).
        let ticks_per_heartbeat = (self.config.heartbeat.as_secs_f64() / tick.as_secs_f64())
            .round()
            .max(1.0) as u64;
        let mut ticks = 0u64;
        // The first tick is immediate: the ticks counted start one interval in.
        interval.tick().await;
        loop {
            interval.tick().await;
            let now = Instant::now();
            ticks += 1;
            let heartbeat_due = ticks.is_multiple_of(ticks_per_heartbeat);
            let mut expired = Vec::new();
            {
                let index = self.index.read();
                for entry in index.streams.values() {
                    if entry.expires_at.is_some_and(|at| at <= now) {
                        // Told before it is closed: the writer sends
                        // `herald.expired` instead of just ending.
                        entry
                            .sender
                            .shared()
                            .token_expired
                            .store(true, Ordering::SeqCst);
                        expired.push((entry.id, CloseReason::TokenExpired));
                    } else if entry.close_at.is_some_and(|at| at <= now) {
                        expired.push((entry.id, CloseReason::Lifetime));
                    } else if heartbeat_due
                        && !entry
                            .sender
                            .shared()
                            .wrote_recently
                            .swap(false, Ordering::Relaxed)
                    {
                        // A full queue means the stream is busy, not idle.
                        entry.sender.push(Outbound::Heartbeat);
                    }
                }
            }
            if !expired.is_empty() {
                let mut index = self.index.write();
                for (id, reason) in expired {
                    if let Some(entry) = index.remove(id) {
                        entry.sender.close(reason);
                    }
                }
            }
        }
    }

    /// Ends every stream of `user`; returns how many were open.
    pub fn close_user(&self, user: &str) -> usize {
        let mut index = self.index.write();
        let ids: Vec<ConnId> = index
            .users
            .get(user)
            .map(|set| set.keys().copied().collect())
            .unwrap_or_default();
        for id in &ids {
            // Dropping the entry drops the queue's sender, which wakes the writer.
            if let Some(entry) = index.remove(*id) {
                entry.sender.close(CloseReason::Kicked);
            }
        }
        ids.len()
    }

    /// Ends every stream (shutdown): each writer sends a last `retry:` of
    /// its own (see `crate::connection`) so clients spread their reconnects.
    pub fn close_all(&self) {
        self.closing.send_replace(true);
        let mut index = self.index.write();
        for entry in std::mem::take(&mut *index).streams.into_values() {
            entry.sender.close(CloseReason::Shutdown);
        }
    }

    /// Resolves once [`Hub::close_all`] has been called (at once if it was).
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut closing = self.closing.subscribe();
        async move {
            // An error means the hub is gone, which is as closed as it gets.
            let _ = closing.wait_for(|closed| *closed).await;
        }
    }

    /// Current counts, taken under one lock.
    pub fn counts(&self) -> HubCounts {
        let index = self.index.read();
        HubCounts {
            connections: index.streams.len(),
            users_online: index.users.len(),
            topics: index.topic_count(),
        }
    }

    /// Open streams of `user`.
    pub fn user_connections(&self, user: &str) -> usize {
        self.index.read().users.get(user).map_or(0, |set| set.len())
    }

    /// Online users with their stream counts, sorted by id, starting after
    /// `after`, at most `limit`.
    pub fn users_page(&self, after: Option<&str>, limit: usize) -> Vec<(Arc<str>, usize)> {
        let index = self.index.read();
        let mut users: Vec<(Arc<str>, usize)> = index
            .users
            .iter()
            .filter(|(id, _)| after.is_none_or(|a| &***id > a))
            .map(|(id, set)| (id.clone(), set.len()))
            .collect();
        users.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        users.truncate(limit);
        users
    }

    /// Every online user with its stream count, in no order (the cluster's
    /// presence writer diffs it against what it last wrote).
    pub fn users_online(&self) -> Vec<(Arc<str>, usize)> {
        let index = self.index.read();
        index
            .users
            .iter()
            .map(|(id, set)| (id.clone(), set.len()))
            .collect()
    }

    /// Subscribed topics and patterns as written (`news`, `orders/*`, `*`;
    /// personal topics included), each with the number of streams that name
    /// it, sorted by name; starting after `after`, at most `limit`.
    pub fn subscriptions_page(&self, after: Option<&str>, limit: usize) -> Vec<(String, usize)> {
        let index = self.index.read();
        let mut all = index.subscriptions();
        if let Some(after) = after {
            all.retain(|(name, _)| name.cmp_written(after).is_gt());
        }
        first(all, limit, |a, b| a.0.cmp(&b.0))
            .into_iter()
            .map(|(name, n)| (name.to_string(), n))
            .collect()
    }

    /// The `limit` subscribed topics and patterns named by the most streams,
    /// busiest first (ties by name).
    pub fn busiest_subscriptions(&self, limit: usize) -> Vec<(String, usize)> {
        let index = self.index.read();
        first(index.subscriptions(), limit, |a, b| {
            b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0))
        })
        .into_iter()
        .map(|(name, n)| (name.to_string(), n))
        .collect()
    }

    /// The first `limit` online users by id, with their stream counts (what
    /// [`Hub::users_page`] gives for a first page, without sorting them all).
    pub fn first_users(&self, limit: usize) -> Vec<(Arc<str>, usize)> {
        let index = self.index.read();
        let all: Vec<(&Arc<str>, usize)> = index
            .users
            .iter()
            .map(|(id, set)| (id, set.len()))
            .collect();
        first(all, limit, |a, b| a.0.cmp(b.0))
            .into_iter()
            .map(|(id, n)| (id.clone(), n))
            .collect()
    }

    /// Streams whose subscriptions match `topic` (exact, prefix or `*`).
    pub fn topic_subscribers(&self, topic: &str) -> usize {
        self.index.read().topic_subscribers(topic)
    }
}

/// The first `limit` of `items` in `order`, in order: a selection, then a
/// sort of those few only. The stats stream asks for ten topics and a
/// hundred users a second, of a server that may hold 100,000 of each.
fn first<T>(
    mut items: Vec<T>,
    limit: usize,
    order: impl Fn(&T, &T) -> std::cmp::Ordering,
) -> Vec<T> {
    if limit == 0 {
        return Vec::new();
    }
    if items.len() > limit {
        items.select_nth_unstable_by(limit - 1, &order);
        items.truncate(limit);
    }
    items.sort_unstable_by(order);
    items
}

impl Registry for Hub {
    /// Removes a stream and folds its counts into the totals, under one lock
    /// so [`Hub::events_delivered`] never counts it twice or not at all.
    fn unregister(&self, id: ConnId, shared: &StreamShared) {
        let mut index = self.index.write();
        index.remove(id);
        let totals = &self.counters;
        totals
            .delivered_by_closed
            .fetch_add(shared.delivered.load(Ordering::Relaxed), Ordering::Relaxed);
        totals
            .lagged_by_closed
            .fetch_add(shared.lagged.load(Ordering::Relaxed), Ordering::Relaxed);
        totals.bytes_by_closed.fetch_add(
            shared.bytes_written.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        totals
            .gaps_by_closed
            .fetch_add(shared.gaps.load(Ordering::Relaxed), Ordering::Relaxed);
        drop(index);
        let reason = shared.close_reason();
        totals.disconnects[reason as usize].fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            conn = id,
            reason = reason.as_str(),
            duration_ms = now_ms().saturating_sub(shared.opened_at_ms.load(Ordering::Relaxed)),
            delivered = shared.delivered.load(Ordering::Relaxed),
            "stream closed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::first;
    use proptest::prelude::*;

    proptest! {
        /// The selection gives what sorting everything and keeping the
        /// first `limit` gives, ties included.
        #[test]
        fn first_is_the_head_of_the_whole_sort(
            items in proptest::collection::vec((0u8..8, 0u8..4), 0..60),
            limit in 0usize..70,
        ) {
            let order = |a: &(u8, u8), b: &(u8, u8)| b.1.cmp(&a.1).then(a.0.cmp(&b.0));
            let mut sorted = items.clone();
            sorted.sort_by(order);
            sorted.truncate(limit);
            prop_assert_eq!(first(items, limit, order), sorted);
        }
    }
}
