//! The in-memory event log.
//!
//! Invariants:
//! - ids are contiguous within one process: the event at position `i` of the
//!   deque has id `front.id + i`, so finding a resume point is O(1);
//! - the first id is the wall clock in microseconds at start (`ids`), so ids
//!   keep increasing across restarts and a client holding an id from before
//!   a restart gets `herald.gap` instead of silently skipping new events;
//! - retention (count, bytes, age) only ever removes from the front;
//! - reads follow the shared rule of `page` (gaps, limits, the scan bound).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_core::{
    now_ms, Appended, Event, EventId, EventLog, Filter, FrameArena, LogError, NewEvent, Position,
    ReadBatch, Topic,
};
use parking_lot::RwLock;
use tokio::sync::watch;

use crate::idempotency::IdempotencyKeys;
use crate::ids;
use crate::names::Names;
use crate::page::{self, Page};

/// How much history a log keeps.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Events kept at most.
    pub max_events: usize,
    /// Bytes kept at most. `MemoryLog`: the memory its events hold
    /// (`Event::retained_bytes`: frame, topics with their allocations, type,
    /// the structs); the durable log: segment file bytes on disk.
    pub max_bytes: usize,
    /// Events older than this are dropped.
    pub max_age: Duration,
    /// How long an idempotency key is remembered.
    pub idempotency_window: Duration,
}

impl Retention {
    /// Default of [`Retention::max_events`].
    pub const DEFAULT_MAX_EVENTS: usize = 1_000_000;
    /// Default of [`Retention::max_bytes`] (1 GiB).
    pub const DEFAULT_MAX_BYTES: usize = 1 << 30;
    /// Default of [`Retention::max_age`], in seconds (a day).
    pub const DEFAULT_MAX_AGE_SECS: u64 = 24 * 3600;
    /// Default of [`Retention::idempotency_window`], in seconds.
    pub const DEFAULT_IDEMPOTENCY_WINDOW_SECS: u64 = 600;
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_events: Self::DEFAULT_MAX_EVENTS,
            max_bytes: Self::DEFAULT_MAX_BYTES,
            max_age: Duration::from_secs(Self::DEFAULT_MAX_AGE_SECS),
            idempotency_window: Duration::from_secs(Self::DEFAULT_IDEMPOTENCY_WINDOW_SECS),
        }
    }
}

/// An [`EventLog`] in process memory.
#[derive(Debug)]
pub struct MemoryLog {
    retention: Retention,
    inner: RwLock<Inner>,
    head: watch::Sender<Option<EventId>>,
}

#[derive(Debug)]
struct Inner {
    events: VecDeque<Arc<Event>>,
    /// The id the next appended event gets.
    next_id: u64,
    bytes: usize,
    idempotency: IdempotencyKeys,
    /// Shared topic and type names.
    names: Names,
    /// Where frames are encoded.
    frames: FrameArena,
}

/// What retention by bytes counts for one held event: what the event keeps
/// alive ([`Event::retained_bytes`]), its slot in the deque, and a slot per
/// topic in the name table (shared names are counted by every event that
/// holds them: an upper bound).
fn event_bytes(event: &Event) -> usize {
    event.retained_bytes()
        + std::mem::size_of::<Arc<Event>>()
        + event.topics.len() * crate::names::TABLE_SLOT_BYTES
}

impl MemoryLog {
    /// An empty log with the given retention.
    pub fn new(retention: Retention) -> Self {
        let first_id = ids::start_id(None, false);
        Self {
            retention,
            inner: RwLock::new(Inner {
                events: VecDeque::new(),
                next_id: first_id,
                bytes: 0,
                idempotency: IdempotencyKeys::default(),
                names: Names::default(),
                frames: FrameArena::new(),
            }),
            head: watch::channel(None).0,
        }
    }

    /// Drops what retention no longer allows (age is checked here; count and
    /// bytes also on every append). Call it periodically.
    pub fn trim(&self) {
        let mut inner = self.inner.write();
        inner.trim(&self.retention, now_ms());
    }

    /// Events currently retained.
    pub fn len(&self) -> usize {
        self.inner.read().events.len()
    }

    /// The bytes retention by bytes counts for the retained events (see
    /// [`Retention::max_bytes`]).
    pub fn bytes(&self) -> usize {
        self.inner.read().bytes
    }

    /// Whether no event is retained.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn trim(&mut self, retention: &Retention, now: u64) {
        let max_age_ms = retention.max_age.as_millis() as u64;
        while let Some(front) = self.events.front() {
            let too_many = self.events.len() > retention.max_events;
            let too_big = self.bytes > retention.max_bytes;
            let stored_at_ms = u64::from(front.stored_at_s) * 1000;
            let too_old = now.saturating_sub(stored_at_ms) > max_age_ms;
            if !(too_many || too_big || too_old) {
                break;
            }
            self.bytes -= event_bytes(front);
            self.events.pop_front();
        }
        let window_ms = retention.idempotency_window.as_millis() as u64;
        self.idempotency.expire(now, window_ms);
        self.names.sweep_if_grown();
    }

    /// The id of the oldest event held, or the next id when none is.
    fn first_held(&self) -> u64 {
        self.events.front().map_or(self.next_id, |e| e.id.0)
    }
}

/// Reads see the deque: ids are contiguous, so the start is an index.
impl page::Source for Inner {
    type Error = std::convert::Infallible;

    fn next_id(&self) -> u64 {
        self.next_id
    }

    fn floor(&self) -> u64 {
        self.first_held()
    }

    fn oldest_at_most(&self) -> u64 {
        self.first_held()
    }

    fn oldest(&self) -> Result<Option<u64>, Self::Error> {
        Ok(self.events.front().map(|e| e.id.0))
    }

    fn scan(&self, start: u64, filter: &Filter, page: &mut Page) -> Result<bool, Self::Error> {
        // `start` is at least the first held id and at most the next id.
        let first = start.saturating_sub(self.first_held()) as usize;
        let first = first.min(self.events.len());
        Ok(page::scan_events(self.events.range(first..), filter, page))
    }
}

#[async_trait]
impl EventLog for MemoryLog {
    async fn append(&self, batch: Vec<NewEvent>) -> Result<Vec<Appended>, LogError> {
        let now = now_ms();
        let window_ms = self.retention.idempotency_window.as_millis() as u64;
        let mut results = Vec::with_capacity(batch.len());
        let newest = {
            let mut inner = self.inner.write();
            // Every event gets an id below u64::MAX, or none does: ids
            // never wrap.
            if inner.next_id.checked_add(batch.len() as u64).is_none() {
                return Err(LogError::Unavailable(ids::EXHAUSTED.to_owned()));
            }
            for mut new in batch {
                let inner = &mut *inner;
                if let Some(key) = &new.idempotency_key {
                    if let Some(id) = inner.idempotency.get(key, now, window_ms) {
                        results.push(Appended {
                            id,
                            duplicate: true,
                        });
                        continue;
                    }
                }
                let id = EventId(inner.next_id);
                // Checked above for the whole batch.
                inner.next_id = id.0.saturating_add(1);
                if let Some(key) = new.idempotency_key.take() {
                    inner.idempotency.insert(key, id, now);
                }
                let event = inner.names.new_event(id, new, now, &mut inner.frames);
                inner.bytes += event_bytes(&event);
                inner.events.push_back(Arc::new(event));
                results.push(Appended {
                    id,
                    duplicate: false,
                });
            }
            inner.trim(&self.retention, now);
            inner.next_id.checked_sub(1).map(EventId)
        };
        if results.iter().any(|r| !r.duplicate) {
            self.head.send_replace(newest);
        }
        Ok(results)
    }

    async fn read_after(
        &self,
        from: Position,
        filter: &Filter,
        limit: usize,
    ) -> Result<ReadBatch, LogError> {
        let inner = self.inner.read();
        let Ok(batch) = page::read(&*inner, from, filter, limit);
        Ok(batch)
    }

    fn head(&self) -> watch::Receiver<Option<EventId>> {
        self.head.subscribe()
    }

    async fn last_id_for_topic(&self, topic: &Topic) -> Result<Option<EventId>, LogError> {
        let inner = self.inner.read();
        Ok(inner
            .events
            .iter()
            .rev()
            .find(|e| e.topics.contains(topic))
            .map(|e| e.id))
    }

    async fn ready(&self) -> Result<(), LogError> {
        Ok(())
    }
}
