//! The event log on Redis: many Herald nodes, one event order.
//!
//! # Keys
//!
//! Every key lives under one hash tag, `{<prefix>}` (option `redis_prefix`,
//! default `herald`), so a Redis Cluster would keep them in one slot:
//!
//! - `{herald}:events` — the Stream: one entry per event, entry id
//!   `<herald id>-0` (so Herald ids *are* Redis ids, identical on every
//!   node), fields as `codec.rs` describes;
//! - `{herald}:meta` — a hash: `epoch` (where the current history starts),
//!   `last` (the newest id issued);
//! - `{herald}:idem:<key>` — an idempotency record: the id the key stored,
//!   expiring after the idempotency window.
//!
//! # Append
//!
//! One Lua script per batch (`scripts.rs`, sent by hash, by text after a
//! `NOSCRIPT`), so dedupe, id and `XADD` are one atomic step on the
//! primary, whichever node the publish (or its retry) came through. Ids:
//! `next = max(last + 1, now_us, floor + 1)` — `now_us` from Redis `TIME`,
//! `floor` the highest id this node has seen (appended, or fetched by its
//! tail). So a Redis that lost data (flushed, restored from an old copy, a
//! failover to a replica that was behind) does not issue again an id that a
//! node handed out. This assumes the Redis primary's clock does not step
//! back by more than the ids it issued run ahead of it (ids run ahead only
//! beyond a million events a second); the floor covers what this node saw.
//!
//! **Epoch.** When `meta` has no `epoch` (a new or flushed Redis) the
//! script sets it to the first id it issues; ids at or above it belong to
//! this history, and every entry carries its epoch, so a tail notices a new
//! history (and counts it) the moment it fetches from one.
//!
//! **Durability** (`redis_durability`): `primary` acknowledges when the
//! script returned; `replicas=N` then sends `WAIT N timeout` on the same
//! connection and, if fewer replicas acknowledged in time, answers
//! [`LogError::NotAcknowledged`] (a 503): the batch *is* on the primary,
//! and a retry with the same `idempotency_key` returns its original id.
//! So does an append whose script was sent but whose reply never came.
//!
//! **Retention**, in the same script: the oldest entries beyond
//! `retention_events` (at most 10000 a batch, so a lowered retention never
//! stalls Redis long), and those older than `retention_secs` (ids are
//! clock-anchored, so an id says its age; at most 1000 a batch), are
//! removed with an exact `XTRIM MINID`, and the newest id removed is kept
//! as `meta.trimmed` — ids are not contiguous, so the oldest retained id
//! alone cannot tell whether a resume point right before it missed
//! anything. Age is applied when events are appended (an idle stream keeps
//! its last events). `retention_bytes` does not apply: Redis's `maxmemory`
//! does.
//!
//! # Reads and the gap rule
//!
//! `read_after` serves from the *window*: the most recent events the tail
//! fetched (at most [`WINDOW_EVENTS`], and never more than retention
//! keeps), kept decoded, so the dispatcher and fresh catch-ups do not ask
//! Redis per event. A read whose start the window does not hold asks Redis:
//! the read script decides the gap and returns the first entries in one
//! round trip, then `XRANGE` pages follow while the page wants more. The
//! gap rule (stated in `scripts.rs`) is the shared one of `page.rs` made
//! exact for ids that are not contiguous: `herald.gap` when `after` is
//! from an older history (`< epoch`), was never issued (above the stream's
//! last id), has events after it trimmed or deleted, or is not an entry of
//! the stream (the history that issued it was lost). Otherwise the read
//! starts right after it. Every read applies `Filter::matches` and the
//! shared page bounds (`page::Page`).
//!
//! # Tail
//!
//! One task per log on its own connection, with no response timeout:
//! `XREAD BLOCK <redis_tail_block_ms> COUNT 1024 STREAMS events <last>`,
//! each read bounded by `block +` [`TAIL_GRACE`]. A read that does not
//! return in time (a wedged connection) or fails drops the connection,
//! which is made again (through the sentinels, if any) with a backoff of at
//! most a second, resuming after the last id fetched, so nothing is
//! skipped. `head()` is the newest id the tail fetched; `append` returns
//! once the tail has fetched its batch (waiting at most
//! [`APPEND_TAIL_WAIT`], and not at all while the tail is down: the events
//! are stored either way), so a publisher reading its own write through
//! the same node finds it. When the tail finds that the id it resumes
//! after is no longer an entry, or fetches an entry of another epoch, the
//! history changed under it: it warns, counts, forgets its window (reads
//! go to Redis, which answers `herald.gap` for the lost ids) and goes on
//! tailing the new history, whose ids are above the floor.
//!
//! # Faults
//!
//! Each Redis command has a deadline: an append answers `Unavailable`
//! within about [`APPEND_BUDGET`] (plus the `WAIT` timeout), never an
//! acknowledgement of something not stored. A failed command drops its
//! connection, and the next one connects again to the current primary
//! (`READONLY` after a failover included). `ready()` fails while Redis does
//! not answer or the tail is not healthy.
//!
//! # last_id_for_topic
//!
//! The window first (newest first), then Redis backwards with `XREVRANGE`
//! pages, examining at most [`MAX_TOPIC_SCAN`] entries: a topic silent for
//! longer than that is answered as having no retained event. Nothing per
//! topic is stored, so memory stays bounded whatever the topics.
//!
//! # Decoding
//!
//! An entry that does not decode (another writer's, or garbled) is skipped
//! with a warning and counted (`entries_skipped`); it never stops delivery.

mod codec;
mod endpoint;
mod scripts;
mod tail;
/// Real `redis-server` processes for tests.
#[cfg(feature = "test-support")]
pub mod testing;

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{RedisError, Value};
use async_trait::async_trait;
use herald_core::{
    Appended, EventId, EventLog, Filter, FrameArena, Gap, LogError, LogMetric, NewEvent, Position,
    ReadBatch, Topic,
};
use parking_lot::RwLock;
use tokio::sync::{watch, Mutex};

pub use endpoint::{RedisConfigError, RedisEndpoint, CONNECT_TIMEOUT, RESPONSE_TIMEOUT};

use crate::ids;
use crate::memory::Retention;
use crate::names::Names;
use crate::page::{self, Page, MAX_SCAN_PER_READ};

/// Events the window keeps at most.
pub const WINDOW_EVENTS: usize = 8192;
/// How much longer than its block time a tail read may take before the
/// connection is treated as wedged.
pub const TAIL_GRACE: Duration = Duration::from_secs(3);
/// How long an append waits for its batch to reach this node's tail.
pub const APPEND_TAIL_WAIT: Duration = Duration::from_secs(1);
/// How long an append may take (connecting, the script), besides `WAIT`.
pub const APPEND_BUDGET: Duration = Duration::from_secs(2);
/// Entries `last_id_for_topic` examines in Redis at most.
pub const MAX_TOPIC_SCAN: usize = 100_000;
/// Entries one tail read fetches at most.
const TAIL_COUNT: usize = 1024;
/// The longest pause between two tail reconnects.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// When `append` acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RedisDurability {
    /// When the primary ran the append script.
    #[default]
    Primary,
    /// When also this many replicas acknowledged it (`WAIT`).
    Replicas(u32),
}

impl FromStr for RedisDurability {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "primary" {
            return Ok(Self::Primary);
        }
        let n = s.strip_prefix("replicas=").ok_or_else(|| {
            format!("`{s}`: expected `primary` or `replicas=N` (N from 1 to 100)")
        })?;
        match n.parse::<u32>() {
            Ok(n @ 1..=100) => Ok(Self::Replicas(n)),
            _ => Err(format!("`{s}`: N of replicas=N must be from 1 to 100")),
        }
    }
}

impl fmt::Display for RedisDurability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Primary => f.write_str("primary"),
            Self::Replicas(n) => write!(f, "replicas={n}"),
        }
    }
}

/// How a [`RedisLog`] stores and tails.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Count and age retention and the idempotency window (the byte bound
    /// does not apply: Redis's `maxmemory` does).
    pub retention: Retention,
    /// The hash tag of every key: `{prefix}:events`, ...
    pub prefix: String,
    /// When an append is acknowledged.
    pub durability: RedisDurability,
    /// How long `WAIT` waits for replicas.
    pub wait_timeout: Duration,
    /// How long one tail read blocks in Redis.
    pub tail_block: Duration,
}

impl RedisOptions {
    /// Default of [`RedisOptions::prefix`].
    pub const DEFAULT_PREFIX: &'static str = "herald";
    /// Default of [`RedisOptions::wait_timeout`], in milliseconds.
    pub const DEFAULT_WAIT_TIMEOUT_MS: u64 = 1000;
    /// Default of [`RedisOptions::tail_block`], in milliseconds.
    pub const DEFAULT_TAIL_BLOCK_MS: u64 = 1000;
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            retention: Retention::default(),
            prefix: Self::DEFAULT_PREFIX.to_owned(),
            durability: RedisDurability::Primary,
            wait_timeout: Duration::from_millis(Self::DEFAULT_WAIT_TIMEOUT_MS),
            tail_block: Duration::from_millis(Self::DEFAULT_TAIL_BLOCK_MS),
        }
    }
}

/// The key names of one prefix.
#[derive(Debug)]
struct Keys {
    stream: String,
    meta: String,
    idem: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Self {
            stream: format!("{{{prefix}}}:events"),
            meta: format!("{{{prefix}}}:meta"),
            idem: format!("{{{prefix}}}:idem:"),
        }
    }
}

/// A connection kept for reuse, made again after a failure.
struct Link {
    endpoint: RedisEndpoint,
    response_timeout: Duration,
    connection: Mutex<Option<MultiplexedConnection>>,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("response_timeout", &self.response_timeout)
            .finish_non_exhaustive()
    }
}

impl Link {
    fn new(endpoint: RedisEndpoint, response_timeout: Duration) -> Self {
        Self {
            endpoint,
            response_timeout,
            connection: Mutex::new(None),
        }
    }

    /// The kept connection, or a new one.
    async fn get(&self) -> Result<MultiplexedConnection, RedisError> {
        let mut kept = self.connection.lock().await;
        if let Some(connection) = &*kept {
            return Ok(connection.clone());
        }
        let connection = self
            .endpoint
            .connect_with_response_timeout(Some(self.response_timeout))
            .await?;
        *kept = Some(connection.clone());
        Ok(connection)
    }

    /// Forgets the kept connection after a failure on it: the next command
    /// connects again, to the primary of the moment.
    async fn broken(&self) {
        *self.connection.lock().await = None;
    }
}

/// The figures the log's owner may export (`/metrics`, `/v1/stats`).
#[derive(Debug, Default)]
struct Stats {
    tail_reconnects: AtomicU64,
    tail_wedged: AtomicU64,
    epoch_changes: AtomicU64,
    history_breaks: AtomicU64,
    entries_skipped: AtomicU64,
    round_trip_failures: AtomicU64,
    replica_timeouts: AtomicU64,
}

/// What the log's handle and its tail share.
#[derive(Debug)]
struct Shared {
    endpoint: RedisEndpoint,
    options: RedisOptions,
    keys: Keys,
    /// Appends (and their `WAIT`).
    writer: Link,
    /// Reads, `ready`'s `PING`.
    reader: Link,
    head: watch::Sender<Option<EventId>>,
    /// The highest id this node has seen.
    floor: AtomicU64,
    /// A position set when Redis could not be asked for its newest id at
    /// start-up (see [`RedisLog::connect`]): reads after it are served
    /// without a gap check (every id above it is new).
    start_position: AtomicU64,
    window: RwLock<tail::Window>,
    /// Whether the tail is connected and reading (a watch, so `ready()`
    /// and `append` can wait for a tail that is still starting).
    tail_healthy: watch::Sender<bool>,
    /// Set once the tail's first connection attempt ended, either way.
    tail_attempted: AtomicBool,
    /// Why the tail is not healthy, for `ready()`.
    tail_problem: parking_lot::Mutex<String>,
    stats: Stats,
}

/// An [`EventLog`] on a Redis Stream shared by every node. See the module
/// doc for the design.
#[derive(Debug)]
pub struct RedisLog {
    shared: Arc<Shared>,
    /// Set to true when the log is dropped: the tail ends.
    stop: watch::Sender<bool>,
    tail_started: OnceLock<()>,
}

impl Drop for RedisLog {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

fn unavailable(what: &str, err: impl fmt::Display) -> LogError {
    LogError::Unavailable(format!("Redis {what}: {err}"))
}

fn as_bytes(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn as_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => std::str::from_utf8(as_bytes(other)?).ok()?.parse().ok(),
    }
}

impl RedisLog {
    /// A log on `endpoint`. Makes no connection yet: the first call (or
    /// [`RedisLog::connect`]) does, and the tail starts with it.
    pub fn new(endpoint: RedisEndpoint, options: RedisOptions) -> Self {
        let writer_timeout = RESPONSE_TIMEOUT
            + match options.durability {
                RedisDurability::Primary => Duration::ZERO,
                RedisDurability::Replicas(_) => options.wait_timeout,
            };
        let shared = Arc::new(Shared {
            writer: Link::new(endpoint.clone(), writer_timeout),
            reader: Link::new(endpoint.clone(), RESPONSE_TIMEOUT),
            keys: Keys::new(&options.prefix),
            endpoint,
            options,
            head: watch::channel(None).0,
            floor: AtomicU64::new(0),
            start_position: AtomicU64::new(0),
            window: RwLock::new(tail::Window::default()),
            tail_healthy: watch::channel(false).0,
            tail_attempted: AtomicBool::new(false),
            tail_problem: parking_lot::Mutex::new("the tail has not connected yet".into()),
            stats: Stats::default(),
        });
        Self {
            shared,
            stop: watch::channel(false).0,
            tail_started: OnceLock::new(),
        }
    }

    /// Asks Redis for its newest event (so `head()` is right before the
    /// hub starts dispatching) and starts the tail. When Redis does not
    /// answer, the log still works once it does: `head()` is then a
    /// position at the current time, the error is returned for the caller
    /// to log, and `ready()` fails until Redis and the tail are back.
    pub async fn connect(&self) -> Result<(), LogError> {
        let newest = tokio::time::timeout(APPEND_BUDGET, async {
            let mut connection = self.shared.reader.get().await?;
            newest_entry(&mut connection, &self.shared.keys.stream).await
        })
        .await;
        let result = match newest {
            Ok(Ok(newest)) => {
                if let Some(id) = newest {
                    self.shared.seen(id);
                    self.shared.head.send_replace(Some(EventId(id)));
                }
                Ok(())
            }
            Ok(Err(e)) => {
                self.shared.reader.broken().await;
                Err(unavailable("is not reachable", e))
            }
            Err(_) => Err(unavailable(
                "is not reachable",
                format!("no answer within {APPEND_BUDGET:?}"),
            )),
        };
        if result.is_err() {
            let position = ids::clock_id();
            self.shared
                .start_position
                .store(position, Ordering::Relaxed);
            self.shared.seen(position);
            self.shared.head.send_replace(Some(EventId(position)));
        }
        self.ensure_tail();
        result
    }

    /// Starts the tail task if it is not running and a runtime is at hand.
    fn ensure_tail(&self) {
        if self.tail_started.get().is_some() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.tail_started.set(()).is_ok() {
            runtime.spawn(tail::run_tail(self.shared.clone(), self.stop.subscribe()));
        }
    }

    /// Whether the tail is connected and reading.
    pub fn tail_healthy(&self) -> bool {
        *self.shared.tail_healthy.borrow()
    }

    /// Waits (at most `limit`) for a tail that is still making its first
    /// connection; true when the tail is healthy.
    async fn tail_settled(&self, limit: Duration) -> bool {
        if self.shared.tail_attempted.load(Ordering::Acquire) {
            return self.tail_healthy();
        }
        let mut healthy = self.shared.tail_healthy.subscribe();
        let attempted = &self.shared.tail_attempted;
        let _ = tokio::time::timeout(limit, async {
            while !attempted.load(Ordering::Acquire) {
                // Woken when the first attempt succeeds; polled otherwise.
                let _ = tokio::time::timeout(Duration::from_millis(20), healthy.changed()).await;
            }
        })
        .await;
        self.tail_healthy()
    }

    /// Times the tail connected again after a failure or a wedge.
    pub fn tail_reconnects(&self) -> u64 {
        self.shared.stats.tail_reconnects.load(Ordering::Relaxed)
    }

    /// Times a tail read did not return in time (a wedged connection).
    pub fn tail_wedged(&self) -> u64 {
        self.shared.stats.tail_wedged.load(Ordering::Relaxed)
    }

    /// Times the tail found a new history (another epoch, or the id it
    /// resumed after gone).
    pub fn epoch_changes(&self) -> u64 {
        let s = &self.shared.stats;
        s.epoch_changes.load(Ordering::Relaxed) + s.history_breaks.load(Ordering::Relaxed)
    }

    /// Entries skipped because they do not decode.
    pub fn entries_skipped(&self) -> u64 {
        self.shared.stats.entries_skipped.load(Ordering::Relaxed)
    }

    /// Redis commands that failed (unreachable, timed out, refused).
    pub fn round_trip_failures(&self) -> u64 {
        self.shared
            .stats
            .round_trip_failures
            .load(Ordering::Relaxed)
    }

    /// The newest id the tail fetched (or the start position).
    pub fn last_fetched(&self) -> Option<EventId> {
        *self.shared.head.borrow()
    }

    /// Where this log connects.
    pub fn endpoint(&self) -> &RedisEndpoint {
        &self.shared.endpoint
    }

    async fn append_in_redis(&self, batch: &[NewEvent]) -> Result<Vec<Appended>, LogError> {
        let shared = &self.shared;
        let options = &shared.options;
        let floor = shared.floor.load(Ordering::Relaxed);
        if floor.saturating_add(batch.len() as u64) >= scripts::MAX_LUA_ID {
            return Err(LogError::Unavailable(scripts::EXHAUSTED.to_owned()));
        }
        let mut invocation = scripts::APPEND.prepare_invoke();
        invocation.key(&shared.keys.stream).key(&shared.keys.meta);
        let mut key_index = 2;
        let window_ms = options.retention.idempotency_window.as_millis() as u64;
        let max_age_us = u64::try_from(options.retention.max_age.as_micros()).unwrap_or(u64::MAX);
        invocation
            .arg(floor)
            .arg(window_ms)
            .arg(options.retention.max_events.max(1))
            .arg(max_age_us)
            .arg(batch.len());
        for event in batch {
            let index = match &event.idempotency_key {
                Some(key) => {
                    invocation.key(format!("{}{key}", shared.keys.idem));
                    key_index += 1;
                    key_index
                }
                None => 0,
            };
            let topics: Vec<&str> = event.topics.iter().map(Topic::as_str).collect();
            invocation
                .arg(index)
                .arg(&event.data)
                .arg(topics.join("\n"))
                .arg(event.event_type.as_deref().unwrap_or(""))
                .arg(event.retry.map(|r| r.to_string()).unwrap_or_default())
                .arg(if event.broadcast { "1" } else { "0" });
        }
        let mut connection = shared.writer.get().await.map_err(|e| {
            shared
                .stats
                .round_trip_failures
                .fetch_add(1, Ordering::Relaxed);
            unavailable("is not reachable; nothing was stored", e)
        })?;
        let reply: Result<Vec<Value>, RedisError> = invocation.invoke_async(&mut connection).await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) if e.code() == Some(scripts::EXHAUSTED_REPLY) => {
                return Err(LogError::Unavailable(scripts::EXHAUSTED.to_owned()));
            }
            Err(e) => {
                shared
                    .stats
                    .round_trip_failures
                    .fetch_add(1, Ordering::Relaxed);
                shared.writer.broken().await;
                return Err(LogError::NotAcknowledged(format!(
                    "Redis did not confirm the append ({e}); it may be stored: a retry with the same idempotency_key returns its id"
                )));
            }
        };
        let results = parse_appended(&reply, batch.len()).ok_or_else(|| {
            LogError::Unavailable(format!(
                "Redis answered the append script with something else: {reply:?}"
            ))
        })?;
        if let RedisDurability::Replicas(n) = options.durability {
            let acknowledged: Result<u64, RedisError> = ::redis::cmd("WAIT")
                .arg(n)
                .arg(options.wait_timeout.as_millis() as u64)
                .query_async(&mut connection)
                .await;
            match acknowledged {
                Ok(k) if k >= u64::from(n) => {}
                Ok(k) => {
                    shared
                        .stats
                        .replica_timeouts
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(LogError::NotAcknowledged(format!(
                        "only {k} of {n} Redis replicas acknowledged within {} ms: the event is on the primary but not acknowledged; a retry with the same idempotency_key returns its id",
                        options.wait_timeout.as_millis()
                    )));
                }
                Err(e) => {
                    shared
                        .stats
                        .round_trip_failures
                        .fetch_add(1, Ordering::Relaxed);
                    shared.writer.broken().await;
                    return Err(LogError::NotAcknowledged(format!(
                        "Redis did not answer WAIT ({e}): the event is on the primary but not acknowledged; a retry with the same idempotency_key returns its id"
                    )));
                }
            }
        }
        Ok(results)
    }

    /// A read the window holds: `after` is its base or one of its events.
    fn read_window(&self, from: Position, filter: &Filter, limit: usize) -> Option<ReadBatch> {
        let Position::After(after) = from else {
            return None;
        };
        let window = self.shared.window.read();
        let start = if window.base == Some(after.0) {
            0
        } else {
            window.events.binary_search_by_key(&after, |e| e.id).ok()? + 1
        };
        if start == window.events.len() && self.shared.head_id() > window.newest() {
            // Nothing here after `after`, but more was appended: Redis has it.
            return None;
        }
        let mut page = Page::new(None, limit);
        let all = page::scan_events(window.events.range(start..), filter, &mut page);
        let current = window.newest() >= self.shared.head_id();
        Some(page.finish(all && current))
    }

    async fn read_from_redis(
        &self,
        from: Position,
        filter: &Filter,
        limit: usize,
    ) -> Result<ReadBatch, LogError> {
        let shared = &self.shared;
        let (after, trusted) = match from {
            Position::Oldest => (String::new(), false),
            Position::After(id) => {
                let start = shared.start_position.load(Ordering::Relaxed);
                (id.0.to_string(), start != 0 && id.0 == start)
            }
        };
        let chunk = limit.clamp(32, 1024).min(MAX_SCAN_PER_READ);
        let failed = |e: RedisError| {
            shared
                .stats
                .round_trip_failures
                .fetch_add(1, Ordering::Relaxed);
            unavailable("read failed", e)
        };
        let mut connection = shared.reader.get().await.map_err(failed)?;
        let first: Result<Vec<Value>, RedisError> = if trusted {
            ::redis::cmd("XRANGE")
                .arg(&shared.keys.stream)
                .arg(format!("({after}-0"))
                .arg("+")
                .arg("COUNT")
                .arg(chunk)
                .query_async(&mut connection)
                .await
                .map(|entries: Value| vec![Value::Int(0), Value::Nil, entries])
        } else {
            scripts::READ
                .key(&shared.keys.stream)
                .key(&shared.keys.meta)
                .arg(&after)
                .arg(chunk)
                .invoke_async(&mut connection)
                .await
        };
        let first = match first {
            Ok(first) => first,
            Err(e) => {
                shared.reader.broken().await;
                return Err(failed(e));
            }
        };
        let [gap, oldest, entries] = first.as_slice() else {
            return Err(LogError::Unavailable(format!(
                "Redis answered the read script with something else: {first:?}"
            )));
        };
        let gap = (as_u64(gap) == Some(1)).then(|| Gap {
            oldest_available: as_u64(oldest).map(EventId),
        });
        let mut page = Page::new(gap, limit);
        if limit == 0 {
            return Ok(page.finish(false));
        }
        let mut names = Names::default();
        let mut arena = FrameArena::new();
        let mut entries = entries.clone();
        loop {
            let Value::Array(list) = entries else {
                return Err(LogError::Unavailable(
                    "Redis answered XRANGE with something else".into(),
                ));
            };
            let fetched = list.len();
            let mut last_raw = None;
            let mut consumed = 0;
            for entry in &list {
                if !page.wants_more() {
                    break;
                }
                consumed += 1;
                last_raw = entry_raw_id(entry);
                match codec::decode(entry, &mut names, &mut arena) {
                    Ok(decoded) => {
                        let event = Arc::new(decoded.event);
                        let matched = filter.matches(&event).then(|| event.clone());
                        page.examined(decoded.id, matched);
                    }
                    Err(e) => {
                        shared.skipped(&e);
                        if let Some(id) = last_raw.as_deref().and_then(codec::parse_entry_id) {
                            page.examined(EventId(id), None);
                        }
                    }
                }
            }
            if consumed < fetched {
                return Ok(page.finish(false));
            }
            if fetched < chunk {
                return Ok(page.finish(true));
            }
            if !page.wants_more() {
                return Ok(page.finish(false));
            }
            let Some(last) = last_raw else {
                return Ok(page.finish(true));
            };
            let next: Result<Value, RedisError> = ::redis::cmd("XRANGE")
                .arg(&shared.keys.stream)
                .arg(format!("({}", String::from_utf8_lossy(&last)))
                .arg("+")
                .arg("COUNT")
                .arg(chunk)
                .query_async(&mut connection)
                .await;
            entries = match next {
                Ok(next) => next,
                Err(e) => {
                    shared.reader.broken().await;
                    return Err(failed(e));
                }
            };
        }
    }
}

/// The raw id of an `XRANGE` entry.
fn entry_raw_id(entry: &Value) -> Option<Vec<u8>> {
    match entry {
        Value::Array(parts) => parts.first().and_then(as_bytes).map(<[u8]>::to_vec),
        _ => None,
    }
}

/// `{epoch, id, dup, ...}` as [`Appended`]s.
fn parse_appended(reply: &[Value], n: usize) -> Option<Vec<Appended>> {
    let (_epoch, pairs) = reply.split_first()?;
    if pairs.len() != n * 2 {
        return None;
    }
    pairs
        .chunks(2)
        .map(|pair| {
            Some(Appended {
                id: EventId(as_u64(&pair[0])?),
                duplicate: as_u64(&pair[1])? == 1,
            })
        })
        .collect()
}

/// The id of the stream's newest entry.
async fn newest_entry(
    connection: &mut MultiplexedConnection,
    stream: &str,
) -> Result<Option<u64>, RedisError> {
    let newest: Value = ::redis::cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(connection)
        .await?;
    Ok(match newest {
        Value::Array(list) => list
            .first()
            .and_then(entry_raw_id)
            .and_then(|raw| codec::parse_entry_id(&raw)),
        _ => None,
    })
}

impl Shared {
    fn head_id(&self) -> Option<u64> {
        self.head.borrow().map(|id| id.0)
    }

    /// Raises the floor to `id`.
    fn seen(&self, id: u64) {
        self.floor.fetch_max(id, Ordering::Relaxed);
    }

    fn skipped(&self, err: &codec::DecodeError) {
        self.stats.entries_skipped.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%err, "skipping a Redis stream entry that is not a Herald event");
    }

    fn set_tail_health(&self, healthy: bool, problem: impl FnOnce() -> String) {
        if !healthy {
            *self.tail_problem.lock() = problem();
        }
        self.tail_attempted.store(true, Ordering::Release);
        self.tail_healthy
            .send_if_modified(|h| std::mem::replace(h, healthy) != healthy);
    }
}

#[async_trait]
impl EventLog for RedisLog {
    async fn append(&self, batch: Vec<NewEvent>) -> Result<Vec<Appended>, LogError> {
        self.ensure_tail();
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let budget = APPEND_BUDGET
            + match self.shared.options.durability {
                RedisDurability::Primary => Duration::ZERO,
                RedisDurability::Replicas(_) => self.shared.options.wait_timeout,
            };
        let results = match tokio::time::timeout(budget, self.append_in_redis(&batch)).await {
            Ok(results) => results?,
            Err(_) => {
                self.shared
                    .stats
                    .round_trip_failures
                    .fetch_add(1, Ordering::Relaxed);
                self.shared.writer.broken().await;
                return Err(LogError::NotAcknowledged(format!(
                    "Redis did not answer the append within {budget:?}; it may be stored: a retry with the same idempotency_key returns its id"
                )));
            }
        };
        let newest = results.iter().filter(|r| !r.duplicate).map(|r| r.id).max();
        if let Some(newest) = newest {
            self.shared.seen(newest.0);
            if self.tail_settled(APPEND_TAIL_WAIT).await {
                let mut head = self.shared.head.subscribe();
                let _ = tokio::time::timeout(
                    APPEND_TAIL_WAIT,
                    head.wait_for(|h| h.is_some_and(|h| h >= newest)),
                )
                .await;
            }
        }
        Ok(results)
    }

    async fn read_after(
        &self,
        from: Position,
        filter: &Filter,
        limit: usize,
    ) -> Result<ReadBatch, LogError> {
        self.ensure_tail();
        if limit == 0 {
            return Ok(ReadBatch::default());
        }
        if let Some(batch) = self.read_window(from, filter, limit) {
            return Ok(batch);
        }
        self.read_from_redis(from, filter, limit).await
    }

    fn head(&self) -> watch::Receiver<Option<EventId>> {
        self.ensure_tail();
        self.shared.head.subscribe()
    }

    async fn last_id_for_topic(&self, topic: &Topic) -> Result<Option<EventId>, LogError> {
        self.ensure_tail();
        let shared = &self.shared;
        let mut before = {
            let window = shared.window.read();
            if let Some(e) = window
                .events
                .iter()
                .rev()
                .find(|e| e.topics.contains(topic))
            {
                return Ok(Some(e.id));
            }
            // Entries at or above the window's first are in the window.
            window.events.front().map(|e| e.id.0)
        };
        let failed = |e: RedisError| {
            shared
                .stats
                .round_trip_failures
                .fetch_add(1, Ordering::Relaxed);
            unavailable("read failed", e)
        };
        let mut connection = shared.reader.get().await.map_err(failed)?;
        let mut examined = 0;
        while examined < MAX_TOPIC_SCAN {
            let end = before.map_or_else(|| "+".to_owned(), |id| format!("({id}-0"));
            let page: Result<Value, RedisError> = ::redis::cmd("XREVRANGE")
                .arg(&shared.keys.stream)
                .arg(end)
                .arg("-")
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut connection)
                .await;
            let page = match page {
                Ok(Value::Array(page)) => page,
                Ok(_) => return Ok(None),
                Err(e) => {
                    shared.reader.broken().await;
                    return Err(failed(e));
                }
            };
            for entry in &page {
                let id = entry_raw_id(entry).and_then(|raw| codec::parse_entry_id(&raw));
                if let Some(id) = id {
                    if codec::has_topic(entry, topic.as_str()) {
                        return Ok(Some(EventId(id)));
                    }
                    before = Some(id);
                }
            }
            examined += page.len();
            if page.len() < 1000 {
                break;
            }
        }
        Ok(None)
    }

    async fn ready(&self) -> Result<(), LogError> {
        self.ensure_tail();
        let shared = &self.shared;
        let ping = async {
            let mut connection = shared.reader.get().await?;
            ::redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
        };
        match tokio::time::timeout(RESPONSE_TIMEOUT, ping).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                shared.reader.broken().await;
                return Err(unavailable("is not reachable", e));
            }
            Err(_) => {
                shared.reader.broken().await;
                return Err(unavailable(
                    "is not reachable",
                    format!("no PONG within {RESPONSE_TIMEOUT:?}"),
                ));
            }
        }
        if !self.tail_settled(TAIL_GRACE).await {
            return Err(LogError::Unavailable(format!(
                "the Redis tail is not reading: {}",
                shared.tail_problem.lock()
            )));
        }
        Ok(())
    }

    fn metrics(&self) -> Vec<LogMetric> {
        let s = &self.shared.stats;
        let counter = |name, help, value: &AtomicU64| LogMetric {
            name,
            help,
            counter: true,
            value: value.load(Ordering::Relaxed),
        };
        vec![
            LogMetric {
                name: "herald_redis_tail_healthy",
                help: "1 while the Redis tail is connected and reading.",
                counter: false,
                value: u64::from(self.tail_healthy()),
            },
            LogMetric {
                name: "herald_redis_tail_last_id",
                help: "The newest event id the Redis tail fetched.",
                counter: false,
                value: self.last_fetched().map_or(0, |id| id.0),
            },
            counter(
                "herald_redis_tail_reconnects_total",
                "Times the Redis tail connected again after a failure or a wedge.",
                &s.tail_reconnects,
            ),
            counter(
                "herald_redis_tail_wedged_total",
                "Tail reads that did not return within the block time plus grace.",
                &s.tail_wedged,
            ),
            counter(
                "herald_redis_epoch_changes_total",
                "Times the tail found a new Redis history (flushed, replaced or restored).",
                &s.epoch_changes,
            ),
            counter(
                "herald_redis_history_breaks_total",
                "Times the id the tail resumed after was no longer in the stream.",
                &s.history_breaks,
            ),
            counter(
                "herald_redis_entries_skipped_total",
                "Stream entries skipped because they are not Herald events.",
                &s.entries_skipped,
            ),
            counter(
                "herald_redis_round_trip_failures_total",
                "Redis commands that failed or timed out.",
                &s.round_trip_failures,
            ),
            counter(
                "herald_redis_replica_timeouts_total",
                "Appends refused because fewer replicas than redis_durability asks acknowledged in time.",
                &s.replica_timeouts,
            ),
        ]
    }
}
