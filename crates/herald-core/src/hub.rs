//! The hub: which connection wants which event, and the fan-out itself.
//!
//! Invariants:
//! - Events reach the hub only through [`Hub::run_dispatcher`], which tails the
//!   event log and dispatches in id order from a single task; the per-connection
//!   dedupe stamp relies on that.
//! - Dispatch never waits: each event is offered to each matching connection's
//!   bounded queue with `try_send`. A full queue marks the connection
//!   *lagging*; the hub then skips it, and its writer catches up from the log
//!   (see [`crate::connection`]). Publishers and other connections are never
//!   blocked, and nothing is dropped silently.
//! - Every count (connections, users, topics) is derived from the index under
//!   one lock, so it is exact the moment a connection is unregistered.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::RwLock;
use tokio::sync::mpsc;

use crate::connection::{Connection, Resume};
use crate::event::{Event, EventId};
use crate::filter::Filter;
use crate::log::{EventLog, Position};
use crate::topic::TopicPattern;

/// Identifies one open stream within this process.
pub type ConnId = u64;

/// How many events the log tail reads per step.
const TAIL_BATCH: usize = 1024;

/// Tunables of the hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Events a connection may have queued before it is switched to catch-up.
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

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 256,
            heartbeat: Duration::from_secs(15),
            max_connection_lifetime: None,
            retry_ms: 3000,
        }
    }
}

/// What a connection's queue carries.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A stored event; its frame is shared with every other recipient.
    Event(Arc<Event>),
    /// A heartbeat comment.
    Heartbeat,
}

/// State shared between the hub (producer side) and one connection's writer.
#[derive(Debug, Default)]
pub struct ConnShared {
    /// Set by kick or lifetime expiry: the writer ends the stream.
    pub(crate) closed: AtomicBool,
    /// Set when the queue overflowed (or while resuming): the hub skips this
    /// connection and the writer reads from the log instead.
    pub(crate) lagging: AtomicBool,
    /// Set by the writer on every write, cleared by the heartbeat tick.
    pub(crate) wrote_recently: AtomicBool,
    /// Id of the last event offered by the dispatcher: one delivery per
    /// connection per event, however many subscriptions match.
    last_offered: AtomicU64,
    /// Events this stream has written. Per stream, not one global counter:
    /// every write would otherwise contend on one cache line across cores.
    pub(crate) delivered: AtomicU64,
    /// Items in the stream's queue. The hub enforces the queue's bound with
    /// it; the channel itself is unbounded because a bounded tokio channel
    /// takes a lock for every item received, on the hottest path there is.
    pub(crate) queued: AtomicUsize,
}

#[derive(Debug)]
struct ConnEntry {
    id: ConnId,
    user: Option<Arc<str>>,
    filter: Arc<Filter>,
    shared: Arc<ConnShared>,
    tx: mpsc::UnboundedSender<Outbound>,
    /// Items the queue may hold before the stream is switched to catch-up.
    capacity: usize,
    close_at: Option<Instant>,
}

impl ConnEntry {
    fn offer(&self, event: &Arc<Event>) {
        let id = event.id.0;
        if self.shared.last_offered.swap(id, Ordering::Relaxed) == id
            || !self.filter.accepts_type(event.event_type.as_deref())
            || self.shared.lagging.load(Ordering::SeqCst)
        {
            return;
        }
        if !self.push(Outbound::Event(event.clone())) {
            self.shared.lagging.store(true, Ordering::SeqCst);
        }
    }

    /// Queues `item` unless the queue is full; false if it was. The bound
    /// is soft by at most a heartbeat or two (those come from another task
    /// than the dispatcher's events).
    fn push(&self, item: Outbound) -> bool {
        if self.shared.queued.load(Ordering::Relaxed) >= self.capacity {
            return false;
        }
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        // Fails only once the writer is gone, and then nobody is counting.
        let _ = self.tx.send(item);
        true
    }

    /// Switches the stream to catch-up, and wakes its writer so it notices.
    fn force_catch_up(&self) {
        self.shared.lagging.store(true, Ordering::SeqCst);
        self.push(Outbound::Heartbeat);
    }

    fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
    }
}

type ConnSet = HashMap<ConnId, Arc<ConnEntry>>;

#[derive(Debug, Default)]
struct Index {
    conns: ConnSet,
    exact: HashMap<Arc<str>, ConnSet>,
    prefixes: HashMap<Arc<str>, ConnSet>,
    everything: ConnSet,
    users: HashMap<Arc<str>, ConnSet>,
}

impl Index {
    fn dispatch(&self, event: &Arc<Event>) {
        if event.broadcast {
            self.conns.values().for_each(|e| e.offer(event));
            return;
        }
        for topic in &event.topics {
            if let Some(set) = self.exact.get(topic.as_str()) {
                set.values().for_each(|e| e.offer(event));
            }
            for (prefix, set) in &self.prefixes {
                if topic.as_str().starts_with(&**prefix) {
                    set.values().for_each(|e| e.offer(event));
                }
            }
        }
        // Once per event, not once per topic.
        self.everything.values().for_each(|e| e.offer(event));
    }

    fn insert(&mut self, entry: Arc<ConnEntry>) {
        for pattern in entry.filter.patterns() {
            let set = match pattern {
                TopicPattern::Exact(t) => self.exact.entry(t.as_arc().clone()).or_default(),
                TopicPattern::Prefix(p) => self.prefixes.entry(p.clone()).or_default(),
                TopicPattern::All => &mut self.everything,
            };
            set.insert(entry.id, entry.clone());
        }
        if let Some(user) = &entry.user {
            self.users
                .entry(user.clone())
                .or_default()
                .insert(entry.id, entry.clone());
        }
        self.conns.insert(entry.id, entry);
    }

    fn remove(&mut self, id: ConnId) -> Option<Arc<ConnEntry>> {
        let entry = self.conns.remove(&id)?;
        fn remove_from(map: &mut HashMap<Arc<str>, ConnSet>, key: &Arc<str>, id: ConnId) {
            if let Some(set) = map.get_mut(key) {
                set.remove(&id);
                if set.is_empty() {
                    map.remove(key);
                }
            }
        }
        for pattern in entry.filter.patterns() {
            match pattern {
                TopicPattern::Exact(t) => remove_from(&mut self.exact, t.as_arc(), id),
                TopicPattern::Prefix(p) => remove_from(&mut self.prefixes, p, id),
                TopicPattern::All => {
                    self.everything.remove(&id);
                }
            }
        }
        if let Some(user) = &entry.user {
            remove_from(&mut self.users, user, id);
        }
        Some(entry)
    }
}

/// Monotonic counters for `/v1/stats` and `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Events stored through this node's publish route.
    pub published: AtomicU64,
    /// Event frames written by streams that have since closed (the open
    /// ones keep their own count; see [`Hub::events_delivered`]).
    delivered_by_closed: AtomicU64,
    /// Events the dispatcher fanned out.
    pub dispatched: AtomicU64,
    /// Times a connection's queue overflowed and it switched to catch-up.
    pub lagged: AtomicU64,
    /// Streams opened since start.
    pub connections_opened: AtomicU64,
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
        })
    }

    /// The hub's configuration.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// The log this hub delivers from.
    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.log
    }

    /// Time since the hub was created.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Registers a new stream; dropping the returned [`Connection`] unregisters it.
    pub fn connect(self: &Arc<Self>, subscriber: Subscriber) -> Connection {
        let id = self.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(ConnShared::default());
        // A resuming stream starts in catch-up: the hub must not queue live
        // events ahead of the replay.
        let resuming = !matches!(subscriber.resume, Resume::Live);
        shared.lagging.store(resuming, Ordering::SeqCst);
        let filter = Arc::new(subscriber.filter);
        let close_at = self.config.max_connection_lifetime.map(|life| {
            let jitter = life.mul_f64(0.1 * rand::random::<f64>());
            Instant::now() + life - jitter
        });
        let entry = Arc::new(ConnEntry {
            id,
            user: subscriber.user,
            filter: filter.clone(),
            shared: shared.clone(),
            tx,
            capacity: self.config.queue_capacity.max(1),
            close_at,
        });
        self.index.write().insert(entry);
        self.counters
            .connections_opened
            .fetch_add(1, Ordering::Relaxed);
        // Read after registering: any event newer than this is dispatched to us.
        let live_from = *self.log.head().borrow();
        Connection::new(
            self.clone(),
            id,
            shared,
            filter,
            rx,
            subscriber.resume,
            live_from,
        )
    }

    /// Removes a stream and folds its delivery count into the total, under
    /// one lock so [`Hub::events_delivered`] never counts it twice or not at all.
    pub(crate) fn unregister(&self, id: ConnId, shared: &ConnShared) {
        let mut index = self.index.write();
        index.remove(id);
        self.counters
            .delivered_by_closed
            .fetch_add(shared.delivered.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Event frames written to streams since start.
    pub fn events_delivered(&self) -> u64 {
        let index = self.index.read();
        let open: u64 = index
            .conns
            .values()
            .map(|e| e.shared.delivered.load(Ordering::Relaxed))
            .sum();
        open + self.counters.delivered_by_closed.load(Ordering::Relaxed)
    }

    /// Offers each event, in order, to every connection it matches, once each.
    pub fn dispatch(&self, events: &[Arc<Event>]) {
        self.counters
            .dispatched
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        // One lock per batch, not per event.
        let index = self.index.read();
        for event in events {
            index.dispatch(event);
        }
    }

    /// Tails the log and dispatches every new event, forever. Run it once per hub.
    pub async fn run_dispatcher(self: Arc<Self>) {
        let mut head = self.log.head();
        let everything = Filter::everything();
        let mut position = self.dispatch_from;
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
                            .conns
                            .values()
                            .for_each(|e| e.force_catch_up());
                    }
                    self.dispatch(&batch.events);
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
            // Checks the current value first, so an append that raced the
            // read above is not missed.
            if head.wait_for(|newest| !caught_up(newest)).await.is_err() {
                return;
            }
        }
    }

    /// Heartbeats idle streams and closes expired ones, from one shared
    /// ticker (no per-connection timers). Runs forever.
    pub async fn run_housekeeping(self: Arc<Self>) {
        let tick = Duration::from_secs(1).min(self.config.heartbeat);
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heartbeat = Instant::now();
        loop {
            interval.tick().await;
            let now = Instant::now();
            let heartbeat_due = now.duration_since(last_heartbeat) >= self.config.heartbeat;
            if heartbeat_due {
                last_heartbeat = now;
            }
            let mut expired = Vec::new();
            {
                let index = self.index.read();
                for entry in index.conns.values() {
                    if entry.close_at.is_some_and(|at| at <= now) {
                        expired.push(entry.id);
                    } else if heartbeat_due
                        && !entry.shared.wrote_recently.swap(false, Ordering::Relaxed)
                    {
                        // A full queue means the stream is busy, not idle.
                        entry.push(Outbound::Heartbeat);
                    }
                }
            }
            if !expired.is_empty() {
                let mut index = self.index.write();
                for id in expired {
                    if let Some(entry) = index.remove(id) {
                        entry.close();
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
                entry.close();
            }
        }
        ids.len()
    }

    /// Ends every stream (shutdown).
    pub fn close_all(&self) {
        let mut index = self.index.write();
        for entry in std::mem::take(&mut *index).conns.into_values() {
            entry.close();
        }
    }

    /// Current counts, taken under one lock.
    pub fn counts(&self) -> HubCounts {
        let index = self.index.read();
        HubCounts {
            connections: index.conns.len(),
            users_online: index.users.len(),
            topics: index.exact.len()
                + index.prefixes.len()
                + usize::from(!index.everything.is_empty()),
        }
    }

    /// Open streams of `user`.
    pub fn user_connections(&self, user: &str) -> usize {
        self.index.read().users.get(user).map_or(0, HashMap::len)
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

    /// Connections whose subscriptions match `topic` (exact, prefix or `*`).
    pub fn topic_subscribers(&self, topic: &str) -> usize {
        let index = self.index.read();
        index
            .conns
            .values()
            .filter(|e| {
                index
                    .exact
                    .get(topic)
                    .is_some_and(|s| s.contains_key(&e.id))
                    || e.filter
                        .patterns()
                        .iter()
                        .any(|p| !matches!(p, TopicPattern::Exact(_)) && p.matches(topic))
            })
            .count()
    }

    /// The comment sent as a heartbeat.
    pub fn heartbeat_frame() -> Bytes {
        Bytes::from_static(b":\n\n")
    }
}
