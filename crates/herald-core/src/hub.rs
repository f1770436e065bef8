//! The hub: which connection wants which event, and the fan-out itself.
//!
//! Invariants:
//! - Events reach the hub only through [`Hub::run_dispatcher`], which tails the
//!   event log and dispatches in id order. Streams are split into *shards*
//!   (one per thread that runs streams, [`HubConfig::shards`]); each shard has
//!   its own dispatcher task, on that thread, offering events to that shard's
//!   streams only. So every stream is fed by exactly one dispatcher (the
//!   per-connection dedupe stamp relies on that), and waking a stream's
//!   writer never crosses threads. With one shard the dispatcher follows the
//!   log's head; with several, a shard's dispatcher is woken only for events
//!   that have recipients in it ([`Hub::wake_dispatchers`], called by the
//!   publisher after appending), and once a second regardless, so every
//!   shard reads the whole log in order but no thread wakes for nothing.
//! - Dispatch never waits: each event is offered to each matching connection's
//!   bounded queue with `try_send`. A full queue marks the connection
//!   *lagging*; the hub then skips it, and its writer catches up from the log
//!   (see [`crate::connection`]). Publishers and other connections are never
//!   blocked, and nothing is dropped silently.
//! - Every count (connections, users, topics) is derived from the index under
//!   one lock, so it is exact the moment a connection is unregistered.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::RwLock;
use tokio::sync::mpsc;

use crate::connection::{Connection, Resume};
use crate::event::{Event, EventId};
use crate::filter::Filter;
use crate::log::{EventLog, Position};
use crate::topic::{Topic, TopicPattern};

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
    /// Dispatch shards: one per thread that runs streams, each with its own
    /// [`Hub::run_dispatcher`]. A stream joins the shard of the thread that
    /// opens it (see [`enter_shard`]).
    pub shards: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 256,
            heartbeat: Duration::from_secs(15),
            max_connection_lifetime: None,
            retry_ms: 3000,
            shards: 1,
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
}

thread_local! {
    /// The dispatch shard of streams opened on this thread.
    static THREAD_SHARD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Declares that streams opened on the current thread belong to dispatch
/// shard `shard` (call it once at the start of each thread that runs
/// streams; threads that never call it use shard 0).
pub fn enter_shard(shard: usize) {
    THREAD_SHARD.with(|s| s.set(shard));
}

#[derive(Debug)]
struct ConnEntry {
    id: ConnId,
    /// The dispatch shard whose dispatcher feeds this stream.
    shard: usize,
    user: Option<Arc<str>>,
    filter: Arc<Filter>,
    shared: Arc<ConnShared>,
    tx: mpsc::Sender<Outbound>,
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
        if let Err(mpsc::error::TrySendError::Full(_)) =
            self.tx.try_send(Outbound::Event(event.clone()))
        {
            self.shared.lagging.store(true, Ordering::SeqCst);
        }
    }

    /// Switches the stream to catch-up, and wakes its writer so it notices.
    fn force_catch_up(&self) {
        self.shared.lagging.store(true, Ordering::SeqCst);
        let _ = self.tx.try_send(Outbound::Heartbeat);
    }

    fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
    }
}

type ConnSet = HashMap<ConnId, Arc<ConnEntry>>;

#[derive(Debug, Default)]
struct Index {
    /// Every stream, and every stream by user: presence and admin.
    conns: ConnSet,
    users: HashMap<Arc<str>, ConnSet>,
    /// Streams per subscribed exact topic, prefix, and `*`, over all shards
    /// (the topic count of `/v1/stats`).
    topic_refs: HashMap<Arc<str>, usize>,
    prefix_refs: HashMap<Arc<str>, usize>,
    everything_refs: usize,
    /// Who wants what, one part per dispatch shard.
    shards: Vec<ShardIndex>,
}

/// The subscriptions of one dispatch shard's streams.
#[derive(Debug, Default)]
struct ShardIndex {
    /// Every stream of the shard (broadcasts).
    conns: ConnSet,
    exact: HashMap<Arc<str>, ConnSet>,
    prefixes: HashMap<Arc<str>, ConnSet>,
    everything: ConnSet,
}

impl Index {
    fn with_shards(shards: usize) -> Self {
        Self {
            shards: (0..shards.max(1)).map(|_| ShardIndex::default()).collect(),
            ..Self::default()
        }
    }

    /// The index of dispatch shard `shard` (entries are made with a valid
    /// shard; an index always has at least one).
    fn shard_mut(&mut self, shard: usize) -> &mut ShardIndex {
        if self.shards.is_empty() {
            self.shards.push(ShardIndex::default());
        }
        let last = self.shards.len() - 1;
        &mut self.shards[shard.min(last)]
    }
}

impl ShardIndex {
    /// Whether a stream of this shard would be offered an event with these
    /// targets.
    fn wants(&self, topics: &[Topic], broadcast: bool) -> bool {
        if broadcast {
            return !self.conns.is_empty();
        }
        !self.everything.is_empty()
            || topics.iter().any(|topic| {
                self.exact.contains_key(topic.as_str())
                    || self
                        .prefixes
                        .keys()
                        .any(|p| topic.as_str().starts_with(&**p))
            })
    }

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
}

impl Index {
    fn insert(&mut self, entry: Arc<ConnEntry>) {
        for pattern in entry.filter.patterns() {
            match pattern {
                TopicPattern::Exact(t) => {
                    *self.topic_refs.entry(t.as_arc().clone()).or_default() += 1
                }
                TopicPattern::Prefix(p) => *self.prefix_refs.entry(p.clone()).or_default() += 1,
                TopicPattern::All => self.everything_refs += 1,
            }
        }
        let shard = self.shard_mut(entry.shard);
        for pattern in entry.filter.patterns() {
            let set = match pattern {
                TopicPattern::Exact(t) => shard.exact.entry(t.as_arc().clone()).or_default(),
                TopicPattern::Prefix(p) => shard.prefixes.entry(p.clone()).or_default(),
                TopicPattern::All => &mut shard.everything,
            };
            set.insert(entry.id, entry.clone());
        }
        shard.conns.insert(entry.id, entry.clone());
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
        fn release(refs: &mut HashMap<Arc<str>, usize>, key: &Arc<str>) {
            if let Some(count) = refs.get_mut(key) {
                *count -= 1;
                if *count == 0 {
                    refs.remove(key);
                }
            }
        }
        for pattern in entry.filter.patterns() {
            match pattern {
                TopicPattern::Exact(t) => release(&mut self.topic_refs, t.as_arc()),
                TopicPattern::Prefix(p) => release(&mut self.prefix_refs, p),
                TopicPattern::All => self.everything_refs -= 1,
            }
        }
        let shard = self.shard_mut(entry.shard);
        shard.conns.remove(&id);
        for pattern in entry.filter.patterns() {
            match pattern {
                TopicPattern::Exact(t) => remove_from(&mut shard.exact, t.as_arc(), id),
                TopicPattern::Prefix(p) => remove_from(&mut shard.prefixes, p, id),
                TopicPattern::All => {
                    shard.everything.remove(&id);
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
    /// Events the dispatcher fanned out (counted by shard 0's).
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
    /// Per shard (when there are several): "new events for your streams".
    shard_wake: Box<[tokio::sync::Notify]>,
}

/// The dispatch shards that have recipients for some events; see
/// [`Hub::shards_for`] and [`Hub::wake_dispatchers`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardSet(u64);

impl ShardSet {
    fn insert(&mut self, shard: usize) {
        self.0 |= 1 << (shard % 64);
    }

    /// Whether `shard` is in the set.
    pub fn contains(self, shard: usize) -> bool {
        self.0 & (1 << (shard % 64)) != 0
    }
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
        let config = HubConfig {
            shards: config.shards.max(1),
            ..config
        };
        Arc::new(Self {
            dispatch_from,
            index: RwLock::new(Index::with_shards(config.shards)),
            shard_wake: (0..config.shards)
                .map(|_| tokio::sync::Notify::new())
                .collect(),
            config,
            log,
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
        let (tx, rx) = mpsc::channel(self.config.queue_capacity.max(1));
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
            shard: THREAD_SHARD.with(std::cell::Cell::get) % self.config.shards,
            user: subscriber.user,
            filter: filter.clone(),
            shared: shared.clone(),
            tx,
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

    /// Whether there are several dispatch shards, so publishers should tell
    /// them about new events ([`Hub::shards_for`], [`Hub::wake_dispatchers`]).
    pub fn is_sharded(&self) -> bool {
        self.config.shards > 1
    }

    /// The shards with a stream that events with these targets (topics,
    /// broadcast) reach. Ask *after* appending them: every stream open
    /// before the append is in the index by then, and one opened later
    /// starts past them.
    pub fn shards_for<'a>(
        &self,
        targets: impl IntoIterator<Item = (&'a [Topic], bool)>,
    ) -> ShardSet {
        let mut set = ShardSet::default();
        if !self.is_sharded() {
            // One dispatcher, which follows the log's head by itself.
            return set;
        }
        let index = self.index.read();
        for (topics, broadcast) in targets {
            for (i, shard) in index.shards.iter().enumerate() {
                if !set.contains(i) && shard.wants(topics, broadcast) {
                    set.insert(i);
                }
            }
        }
        set
    }

    /// Wakes the dispatchers of `shards` (after the events that reach them
    /// were appended). A wake-up is kept if the dispatcher is busy, so none
    /// is lost.
    pub fn wake_dispatchers(&self, shards: ShardSet) {
        for (i, wake) in self.shard_wake.iter().enumerate() {
            if shards.contains(i) {
                wake.notify_one();
            }
        }
    }

    /// Offers each event, in order, to every stream of `shard` it matches,
    /// once each.
    fn dispatch(&self, shard: usize, events: &[Arc<Event>]) {
        if shard == 0 {
            self.counters
                .dispatched
                .fetch_add(events.len() as u64, Ordering::Relaxed);
        }
        // One lock per batch, not per event.
        let index = self.index.read();
        let Some(shard) = index.shards.get(shard) else {
            return;
        };
        for event in events {
            shard.dispatch(event);
        }
    }

    /// Tails the log and dispatches every new event to the streams of
    /// `shard`, forever. Run one per shard, on the thread whose streams
    /// belong to it (then every wake-up of a writer stays on its thread).
    pub async fn run_dispatcher(self: Arc<Self>, shard: usize) {
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
                        if let Some(shard) = self.index.read().shards.get(shard) {
                            shard.conns.values().for_each(|e| e.force_catch_up());
                        }
                    }
                    self.dispatch(shard, &batch.events);
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
            if self.config.shards > 1 {
                // Woken for events with recipients here, and once a second
                // by housekeeping; a wake-up that came while dispatching was
                // kept, so nothing appended before it is missed.
                if let Some(wake) = self.shard_wake.get(shard) {
                    wake.notified().await;
                }
                continue;
            }
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
            // Every shard's dispatcher reads the log at least this often, so
            // one whose streams want nothing lately stays near the head.
            if self.config.shards > 1 {
                self.shard_wake
                    .iter()
                    .for_each(tokio::sync::Notify::notify_one);
            }
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
                        let _ = entry.tx.try_send(Outbound::Heartbeat);
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
        let emptied = std::mem::replace(&mut *index, Index::with_shards(self.config.shards));
        for entry in emptied.conns.into_values() {
            entry.close();
        }
    }

    /// Current counts, taken under one lock.
    pub fn counts(&self) -> HubCounts {
        let index = self.index.read();
        HubCounts {
            connections: index.conns.len(),
            users_online: index.users.len(),
            topics: index.topic_refs.len()
                + index.prefix_refs.len()
                + usize::from(index.everything_refs > 0),
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
            .filter(|e| e.filter.patterns().iter().any(|p| p.matches(topic)))
            .count()
    }

    /// The comment sent as a heartbeat.
    pub fn heartbeat_frame() -> Bytes {
        Bytes::from_static(b":\n\n")
    }
}
