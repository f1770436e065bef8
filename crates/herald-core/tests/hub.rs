//! The hub and its connections over a real [`MemoryLog`]: fan-out, filters,
//! presence, resume, slow readers, concurrency, heartbeats and lifetimes.
//!
//! Every wait is bounded by a timeout; nothing asserts tight timing.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_core::{
    Connection, EventId, EventLog, Filter, Hub, HubConfig, HubCounts, NewEvent, Position, Resume,
    Subscriber, Topic, TopicPattern,
};
use herald_log::{MemoryLog, Retention};
use herald_sse::{ParsedEvent, Parser};
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Longest wait for one chunk or one small step.
const STEP: Duration = Duration::from_secs(10);
/// Longest wait for a bulk transfer (thousands of events).
const LONG: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// The counts of a hub with no stream open.
const NOBODY: HubCounts = HubCounts {
    connections: 0,
    users_online: 0,
    topics: 0,
};

fn ev(topics: &[&str], event_type: Option<&str>, data: &str) -> NewEvent {
    let topics = topics.iter().map(|t| Topic::new(t).unwrap()).collect();
    NewEvent {
        event_type: event_type.map(str::to_owned),
        ..NewEvent::new(topics, data)
    }
}

fn on(topic: &str, data: &str) -> NewEvent {
    ev(&[topic], None, data)
}

fn bcast(event_type: Option<&str>, data: &str) -> NewEvent {
    NewEvent {
        broadcast: true,
        ..ev(&[], event_type, data)
    }
}

fn filter(patterns: &[&str], types: Option<&[&str]>) -> Filter {
    Filter::new(
        patterns.iter().map(|p| TopicPattern::parse(p).unwrap()),
        types.map(|t| t.iter().map(|s| (*s).to_owned()).collect()),
    )
}

async fn publish(log: &MemoryLog, events: Vec<NewEvent>) -> Vec<EventId> {
    let r = log.append(events).await.unwrap();
    assert!(r.iter().all(|a| !a.duplicate));
    r.iter().map(|a| a.id).collect()
}

/// A log, a hub over it, and the hub's background tasks (aborted on drop).
struct Env {
    log: Arc<MemoryLog>,
    hub: Arc<Hub>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Env {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Env {
    async fn new(config: HubConfig) -> Self {
        Self::with(Retention::default(), config, false).await
    }

    async fn with(retention: Retention, config: HubConfig, housekeeping: bool) -> Self {
        Self::over(Arc::new(MemoryLog::new(retention)), config, housekeeping).await
    }

    /// A hub over `log` as it is (it may already hold events).
    async fn over(log: Arc<MemoryLog>, config: HubConfig, housekeeping: bool) -> Self {
        let (hub, dispatcher) = start_hub(&log, config).await;
        let mut tasks = vec![dispatcher];
        if housekeeping {
            tasks.push(tokio::spawn(hub.clone().run_housekeeping()));
        }
        Self { log, hub, tasks }
    }

    async fn open(&self, user: Option<&str>, patterns: &[&str], resume: Resume) -> Reader {
        Reader::open(&self.hub, user, filter(patterns, None), resume).await
    }

    async fn live(&self, patterns: &[&str]) -> Reader {
        self.open(None, patterns, Resume::Live).await
    }

    async fn publish(&self, events: Vec<NewEvent>) -> Vec<EventId> {
        publish(&self.log, events).await
    }
}

/// Creates a hub over `log` and spawns its dispatcher. No warm-up is
/// needed: the dispatcher starts from the log head as it was when the hub
/// was made, so an event appended before its task first runs is still
/// dispatched.
async fn start_hub(log: &Arc<MemoryLog>, config: HubConfig) -> (Arc<Hub>, JoinHandle<()>) {
    let hub = Hub::new(log.clone() as Arc<dyn EventLog>, config);
    let dispatcher = tokio::spawn(hub.clone().run_dispatcher());
    (hub, dispatcher)
}

/// One connection plus an SSE parser over everything it wrote.
struct Reader {
    conn: Connection,
    parser: Parser,
    events: Vec<ParsedEvent>,
}

impl Reader {
    async fn open(hub: &Arc<Hub>, user: Option<&str>, filter: Filter, resume: Resume) -> Self {
        let conn = hub.connect(Subscriber {
            user: user.map(Arc::from),
            filter,
            resume,
            expires_at: None,
        });
        let mut reader = Self {
            conn,
            parser: Parser::new(),
            events: Vec::new(),
        };
        let first = reader
            .chunk()
            .await
            .expect("the stream ended before its preamble");
        let expected = format!("retry: {}\n:ok\n", hub.config().retry_ms);
        assert_eq!(&first[..], expected.as_bytes(), "preamble");
        assert_eq!(reader.parser.retry(), Some(hub.config().retry_ms));
        reader
    }

    /// The next chunk (at most [`STEP`]); `None` when the stream ended.
    async fn chunk(&mut self) -> Option<Bytes> {
        let chunk = timeout(STEP, self.conn.next_chunk())
            .await
            .expect("no chunk within the timeout");
        if let Some(bytes) = &chunk {
            self.parser.feed_into(bytes, &mut self.events);
        }
        chunk
    }

    /// Reads until `done` holds for the events so far (at most [`LONG`]).
    async fn until(&mut self, what: &str, done: impl Fn(&[ParsedEvent]) -> bool) {
        let result = timeout(LONG, async {
            while !done(&self.events) {
                assert!(
                    self.chunk().await.is_some(),
                    "stream ended while waiting for {what}"
                );
            }
        })
        .await;
        assert!(
            result.is_ok(),
            "timed out waiting for {what}; got {} events",
            self.events.len()
        );
    }

    /// Reads until an event with this data arrives, waiting at most `limit`.
    async fn until_within(&mut self, data: &str, limit: Duration) {
        let result = timeout(limit, self.until_data(data)).await;
        assert!(
            result.is_ok(),
            "timed out waiting for {data}; got {:?}",
            self.datas()
        );
    }

    async fn until_data(&mut self, data: &str) {
        self.until(data, |events| events.iter().any(|e| e.data == data))
            .await;
    }

    async fn until_count(&mut self, n: usize) {
        self.until(&format!("{n} events"), |events| events.len() >= n)
            .await;
    }

    /// Lets the writer look for more and wait with nothing to write, as a
    /// server's writer does right after every write.
    async fn wait_for_more(&mut self) {
        if let Ok(Some(bytes)) = timeout(Duration::from_millis(50), self.conn.next_chunk()).await {
            self.parser.feed_into(&bytes, &mut self.events);
        }
    }

    /// Reads until the stream ends (at most [`STEP`] in all, 100 chunks).
    async fn until_closed(&mut self) {
        let result = timeout(STEP, async {
            for _ in 0..100 {
                if self.conn.next_chunk().await.is_none() {
                    return;
                }
            }
            panic!("the stream kept producing chunks after it was closed");
        })
        .await;
        assert!(result.is_ok(), "the stream did not end");
    }

    fn datas(&self) -> Vec<&str> {
        self.events.iter().map(|e| e.data.as_str()).collect()
    }

    fn gaps(&self) -> Vec<&ParsedEvent> {
        self.events
            .iter()
            .filter(|e| e.event == "herald.gap")
            .collect()
    }

    /// The ids of the (non-gap) events, checked to be strictly increasing.
    fn ids(&self) -> Vec<EventId> {
        let ids: Vec<EventId> = self
            .events
            .iter()
            .filter(|e| e.event != "herald.gap")
            .map(|e| e.id.parse().unwrap_or_else(|_| panic!("bad id {:?}", e.id)))
            .collect();
        for w in ids.windows(2) {
            assert!(
                w[0] < w[1],
                "ids not strictly increasing: {} then {}",
                w[0],
                w[1]
            );
        }
        ids
    }
}

fn capacity_config(queue_capacity: usize) -> HubConfig {
    HubConfig {
        queue_capacity,
        ..HubConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Fan-out and filters
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_stream_gets_only_events_after_connect() {
    let env = Env::new(HubConfig::default()).await;
    env.publish(vec![on("a", "before")]).await;
    let mut r = env.live(&["a"]).await;
    let ids = env
        .publish(vec![on("a", "after-1"), on("a", "after-2")])
        .await;
    r.until_data("after-2").await;
    assert_eq!(r.datas(), ["after-1", "after-2"]);
    assert_eq!(r.ids(), ids);
    assert_eq!(r.events[0].event, "message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn event_for_two_topics_arrives_once() {
    let env = Env::new(HubConfig::default()).await;
    let mut both = env.live(&["a", "b"]).await;
    let mut overlapping = env.live(&["a", "a*", "*", "b"]).await;
    let mut only_b = env.live(&["b"]).await;
    env.publish(vec![ev(&["a", "b"], None, "both")]).await;
    env.publish(vec![ev(&["b", "a", "c"], None, "again")]).await;
    env.publish(vec![on("b", "end")]).await;
    for r in [&mut both, &mut overlapping, &mut only_b] {
        r.until_data("end").await;
        assert_eq!(r.datas(), ["both", "again", "end"]);
        r.ids();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prefix_pattern_matches_its_children_only() {
    let env = Env::new(HubConfig::default()).await;
    let mut r = env.live(&["orders/*"]).await;
    env.publish(vec![on("order", "order")]).await;
    env.publish(vec![on("orders/42", "orders/42")]).await;
    env.publish(vec![on("ordersX", "ordersX")]).await;
    env.publish(vec![on("orders/42/items", "items")]).await;
    env.publish(vec![on("orders/end", "end")]).await;
    r.until_data("end").await;
    assert_eq!(r.datas(), ["orders/42", "items", "end"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broadcast_reaches_every_connection() {
    let env = Env::new(HubConfig::default()).await;
    let mut readers = [
        env.live(&["x"]).await,
        env.live(&["y/*"]).await,
        env.live(&["*"]).await,
        env.open(Some("u1"), &["user/u1"], Resume::Live).await,
        env.open(None, &["nothing"], Resume::Live).await,
    ];
    env.publish(vec![bcast(None, "all")]).await;
    env.publish(vec![on("x", "x-only")]).await;
    env.publish(vec![bcast(Some("notice"), "end")]).await;
    for (i, r) in readers.iter_mut().enumerate() {
        r.until_data("end").await;
        let expected: &[&str] = if i == 0 || i == 2 {
            &["all", "x-only", "end"]
        } else {
            &["all", "end"]
        };
        assert_eq!(r.datas(), expected, "reader {i}");
        assert_eq!(r.events.last().unwrap().event, "notice");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn types_filter_applies_live() {
    let env = Env::new(HubConfig::default()).await;
    let open = |types: Option<&'static [&'static str]>| {
        Reader::open(&env.hub, None, filter(&["t"], types), Resume::Live)
    };
    let mut created = open(Some(&["created"])).await;
    let mut message = open(Some(&["message"])).await;
    let mut both = open(Some(&["message", "created"])).await;
    let mut all = open(None).await;
    env.publish(vec![
        ev(&["t"], Some("created"), "c1"),
        ev(&["t"], Some("deleted"), "d1"),
        ev(&["t"], None, "m1"),
    ])
    .await;
    env.publish(vec![bcast(Some("deleted"), "bd")]).await;
    env.publish(vec![bcast(None, "bm")]).await;
    env.publish(vec![
        ev(&["t"], Some("created"), "c-end"),
        ev(&["t"], None, "m-end"),
    ])
    .await;

    created.until_data("c-end").await;
    message.until_data("m-end").await;
    both.until_data("m-end").await;
    all.until_data("m-end").await;
    assert_eq!(created.datas(), ["c1", "c-end"]);
    assert!(created.events.iter().all(|e| e.event == "created"));
    assert_eq!(message.datas(), ["m1", "bm", "m-end"]);
    assert!(message.events.iter().all(|e| e.event == "message"));
    assert_eq!(both.datas(), ["c1", "m1", "bm", "c-end", "m-end"]);
    assert_eq!(
        all.datas(),
        ["c1", "d1", "m1", "bd", "bm", "c-end", "m-end"]
    );
}

// ---------------------------------------------------------------------------
// Presence
// ---------------------------------------------------------------------------

fn page(hub: &Hub, after: Option<&str>, limit: usize) -> Vec<(String, usize)> {
    hub.users_page(after, limit)
        .into_iter()
        .map(|(u, n)| (u.to_string(), n))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn presence_counts_and_close_user() {
    let env = Env::new(HubConfig::default()).await;
    let hub = &env.hub;
    let mut a = Vec::new();
    for _ in 0..3 {
        a.push(env.open(Some("a"), &["user/a"], Resume::Live).await);
    }
    let mut b = env.open(Some("b"), &["user/b"], Resume::Live).await;
    assert_eq!(
        hub.counts(),
        HubCounts {
            connections: 4,
            users_online: 2,
            topics: 2
        }
    );
    assert_eq!(
        page(hub, None, 10),
        [("a".to_owned(), 3), ("b".to_owned(), 1)]
    );
    assert_eq!(page(hub, Some("a"), 10), [("b".to_owned(), 1)]);
    assert_eq!(page(hub, None, 1), [("a".to_owned(), 3)]);
    assert_eq!(hub.user_connections("a"), 3);
    assert_eq!(hub.topic_subscribers("user/a"), 3);
    assert_eq!(hub.topic_subscribers("user/b"), 1);
    assert_eq!(hub.topic_subscribers("user/c"), 0);

    // Something queued for a's streams when they are closed.
    env.publish(vec![on("user/a", "pending")]).await;
    assert_eq!(hub.close_user("a"), 3);
    for r in &mut a {
        r.until_closed().await;
    }
    assert_eq!(
        hub.counts(),
        HubCounts {
            connections: 1,
            users_online: 1,
            topics: 1
        }
    );
    assert_eq!(page(hub, None, 10), [("b".to_owned(), 1)]);
    assert_eq!(hub.close_user("a"), 0);
    assert_eq!(hub.close_user("nobody"), 0);

    // b is unaffected.
    env.publish(vec![on("user/b", "hi b")]).await;
    b.until_data("hi b").await;
    assert_eq!(b.datas(), ["hi b"]);

    drop(a);
    drop(b);
    assert_eq!(hub.counts(), NOBODY);
    assert!(hub.users_page(None, 10).is_empty());
    assert_eq!(hub.topic_subscribers("user/a"), 0);
    assert_eq!(hub.topic_subscribers("user/b"), 0);
    assert_eq!(hub.user_connections("a"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropping_connections_unregisters_them() {
    let env = Env::new(HubConfig::default()).await;
    let hub = &env.hub;
    let r1 = env.open(Some("a"), &["x", "y/*"], Resume::Live).await;
    let r2 = env.open(Some("a"), &["*"], Resume::Live).await;
    let r3 = env.open(None, &["x"], Resume::Live).await;
    assert_eq!(hub.counts().connections, 3);
    assert_eq!(hub.counts().users_online, 1);
    assert_eq!(hub.topic_subscribers("x"), 3);
    assert_eq!(hub.topic_subscribers("y/1"), 2);
    assert_eq!(hub.topic_subscribers("z"), 1);
    drop(r2);
    assert_eq!(hub.counts().connections, 2);
    assert_eq!(hub.user_connections("a"), 1);
    assert_eq!(hub.topic_subscribers("z"), 0);
    drop(r1);
    assert_eq!(hub.counts().users_online, 0);
    assert_eq!(hub.topic_subscribers("x"), 1);
    drop(r3);
    assert_eq!(hub.counts(), NOBODY);
    // Publishing with nobody connected is fine.
    env.publish(vec![on("x", "nobody")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn close_all_ends_every_stream() {
    let env = Env::new(HubConfig::default()).await;
    let mut readers = [
        env.live(&["a"]).await,
        env.open(Some("u"), &["*"], Resume::Live).await,
        env.open(None, &["a"], Resume::After(EventId(0))).await,
    ];
    env.hub.close_all();
    for r in &mut readers {
        r.until_closed().await;
    }
    assert_eq!(env.hub.counts().connections, 0);
    assert_eq!(env.hub.counts().users_online, 0);
}

// ---------------------------------------------------------------------------
// Resume
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resume_after_id_replays_then_continues_live() {
    let env = Env::new(HubConfig::default()).await;
    let mut r_ids = Vec::new();
    for i in 0..5 {
        r_ids.extend(
            env.publish(vec![on("r", &format!("r{i}")), on("x", "noise")])
                .await
                .into_iter()
                .step_by(2),
        );
    }
    let mut r = env.open(None, &["r"], Resume::After(r_ids[1])).await;
    // Published after connecting but before the first read: the boundary
    // between catch-up and live.
    r_ids.extend(
        env.publish(vec![on("r", "r5"), on("x", "noise")])
            .await
            .into_iter()
            .step_by(2),
    );
    r_ids.extend(env.publish(vec![on("r", "r6")]).await);
    r.until_data("r6").await;
    r_ids.extend(env.publish(vec![on("r", "r7")]).await);
    r.until_data("r7").await;
    for i in 8..12 {
        r_ids.extend(env.publish(vec![on("r", &format!("r{i}"))]).await);
        if i % 2 == 0 {
            r.until_data(&format!("r{i}")).await;
        }
    }
    r.until_data("r11").await;
    // A marker proves nothing else is in flight.
    r_ids.extend(env.publish(vec![on("r", "end")]).await);
    r.until_data("end").await;
    assert!(r.gaps().is_empty());
    let expected: Vec<String> = (2..12)
        .map(|i| format!("r{i}"))
        .chain(["end".to_owned()])
        .collect();
    assert_eq!(r.datas(), expected);
    assert_eq!(r.ids(), r_ids[2..].to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resume_at_the_newest_id_or_a_filtered_out_id() {
    let env = Env::new(HubConfig::default()).await;
    let ids = env.publish(vec![on("r", "r0"), on("x", "x0")]).await;
    // At the newest id (which this filter does not even match).
    let mut at_newest = env.open(None, &["r"], Resume::After(ids[1])).await;
    // After r0: nothing matching is left to replay.
    let mut after_r0 = env.open(None, &["r"], Resume::After(ids[0])).await;
    let later = env
        .publish(vec![on("r", "r1"), on("x", "x1"), on("r", "r2")])
        .await;
    for r in [&mut at_newest, &mut after_r0] {
        r.until_data("r2").await;
        assert!(r.gaps().is_empty());
        assert_eq!(r.datas(), ["r1", "r2"]);
        assert_eq!(r.ids(), [later[0], later[2]]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resume_unknown_id_yields_gap_then_everything_retained() {
    let env = Env::new(HubConfig::default()).await;
    env.publish(vec![on("t/1", "t1"), on("other", "other"), on("t/2", "t2")])
        .await;
    env.publish(vec![on("t/3", "t3")]).await;
    let oldest = env
        .log
        .read_after(Position::Oldest, &Filter::everything(), 1)
        .await
        .unwrap()
        .events[0]
        .id;
    let mut r = env
        .open(None, &["t/*"], Resume::Unknown("garbage".to_owned()))
        .await;
    r.until_data("t3").await;
    env.publish(vec![on("t/4", "t4")]).await;
    r.until_data("t4").await;

    let gap = &r.events[0];
    assert_eq!(gap.event, "herald.gap");
    assert_eq!(gap.id, "", "herald.gap carries no id");
    assert!(
        gap.data.contains(r#""last_event_id":"garbage""#),
        "{}",
        gap.data
    );
    assert!(
        gap.data
            .contains(&format!(r#""oldest_available":"{oldest}""#)),
        "{}",
        gap.data
    );
    assert_eq!(r.gaps().len(), 1);
    assert_eq!(r.datas()[1..], ["t1", "t2", "t3", "t4"]);
    r.ids();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resume_from_a_trimmed_id_yields_gap_then_the_retained_events() {
    let retention = Retention {
        max_events: 5,
        ..Retention::default()
    };
    let env = Env::with(retention, HubConfig::default(), false).await;
    let ids = env
        .publish((0..10).map(|i| on("t", &format!("e{i}"))).collect())
        .await;
    let mut r = env.open(None, &["t"], Resume::After(ids[1])).await;
    r.until_data("e9").await;
    let gap = &r.events[0];
    assert_eq!(gap.event, "herald.gap");
    assert_eq!(gap.id, "");
    assert!(
        gap.data
            .contains(&format!(r#""last_event_id":"{}""#, ids[1])),
        "{}",
        gap.data
    );
    assert!(
        gap.data
            .contains(&format!(r#""oldest_available":"{}""#, ids[5])),
        "{}",
        gap.data
    );
    assert_eq!(r.datas()[1..], ["e5", "e6", "e7", "e8", "e9"]);
    assert_eq!(r.ids(), ids[5..].to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resume_from_an_id_never_issued_yields_gap_then_everything_retained() {
    let env = Env::new(HubConfig::default()).await;
    let ids = env
        .publish(vec![on("t", "t1"), on("t", "t2"), on("t", "t3")])
        .await;
    // An id this log never issued, e.g. from another node or before a clock
    // step: the log reports a gap and returns everything retained.
    let bogus = EventId(ids[2].0 + 1_000_000);
    let mut r = env.open(None, &["t"], Resume::After(bogus)).await;
    let later = env.publish(vec![on("t", "t4")]).await;
    r.until_within("t4", Duration::from_secs(5)).await;
    let gap = &r.events[0];
    assert_eq!(gap.event, "herald.gap");
    assert!(
        gap.data.contains(&format!(r#""last_event_id":"{bogus}""#)),
        "{}",
        gap.data
    );
    assert_eq!(r.datas()[1..], ["t1", "t2", "t3", "t4"]);
    assert_eq!(r.ids(), [ids[0], ids[1], ids[2], later[0]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_trimmed_before_dispatch_are_not_dropped_silently() {
    let retention = Retention {
        max_events: 5,
        ..Retention::default()
    };
    // The hub starts after an event already stored: the dispatcher then
    // reads "after that id", which is how it can tell that events went
    // missing. (From an empty log it reads "from the oldest", and a first
    // append larger than retention, trimmed before the dispatcher's first
    // read, would not be noticed.)
    let log = Arc::new(MemoryLog::new(retention));
    publish(&log, vec![on("before-the-hub", "x")]).await;
    let env = Env::over(log, HubConfig::default(), false).await;
    let mut r = env.live(&["t"]).await;
    // One append larger than retention: the first five are trimmed before
    // the dispatcher can read them.
    let ids = env
        .publish((0..10).map(|i| on("t", &format!("e{i}"))).collect())
        .await;
    r.until_within("e9", Duration::from_secs(5)).await;
    let got_all = r.datas() == ["e0", "e1", "e2", "e3", "e4", "e5", "e6", "e7", "e8", "e9"];
    let told_of_gap = r.events.first().is_some_and(|e| e.event == "herald.gap");
    assert!(
        got_all || told_of_gap,
        "a live stream lost events without a herald.gap: got {:?}",
        r.datas()
    );
    assert_eq!(r.ids().last(), ids.last());
}

// ---------------------------------------------------------------------------
// Slow readers and concurrency
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_reader_catches_up_from_the_log() {
    const TOTAL: usize = 5_000;
    let env = Env::new(capacity_config(4)).await;
    let mut slow = env.live(&["s"]).await;
    let mut eager = env.live(&["s"]).await;
    let eager_task = tokio::spawn(async move {
        eager.until_count(TOTAL).await;
        eager
    });

    let mut published = Vec::new();
    for batch in 0..TOTAL / 50 {
        let events = (0..50)
            .map(|i| on("s", &(batch * 50 + i).to_string()))
            .collect();
        published.extend(env.publish(events).await);
        if batch % 10 == 9 {
            assert!(slow.chunk().await.is_some());
        }
    }
    slow.until_count(TOTAL).await;
    let mut eager = timeout(LONG, eager_task)
        .await
        .expect("eager reader timed out")
        .unwrap();

    let end = env.publish(vec![on("s", "end")]).await;
    published.extend(end);
    slow.until_data("end").await;
    eager.until_data("end").await;

    let expected: Vec<String> = (0..TOTAL)
        .map(|i| i.to_string())
        .chain(["end".to_owned()])
        .collect();
    for (name, r) in [("slow", &slow), ("eager", &eager)] {
        assert!(r.gaps().is_empty(), "{name}: unexpected herald.gap");
        assert_eq!(r.datas(), expected, "{name}: events");
        assert_eq!(r.ids(), published, "{name}: ids");
    }
    assert!(
        env.hub.streams_lagged() > 0,
        "the slow reader never switched to catch-up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishers_and_readers_at_different_speeds() {
    const PUBLISHERS: usize = 4;
    const PER_PUBLISHER: usize = 2_000;
    const TOTAL: usize = PUBLISHERS * PER_PUBLISHER;

    let log = Arc::new(MemoryLog::new(Retention::default()));
    // queue_capacity is per hub: one hub (and dispatcher) per reader, all on one log.
    let mut tasks = Vec::new();
    let mut readers = Vec::new();
    for capacity in [1usize, 8, 256] {
        let (hub, dispatcher) = start_hub(&log, capacity_config(capacity)).await;
        tasks.push(dispatcher);
        readers.push((
            hub.clone(),
            Reader::open(&hub, None, filter(&["c/*"], None), Resume::Live).await,
        ));
    }

    // Readers: eager, pausing every few chunks, pausing every chunk.
    let reader_tasks: Vec<_> = readers
        .into_iter()
        .enumerate()
        .map(|(speed, (hub, mut r))| {
            tokio::spawn(async move {
                let result = timeout(LONG, async {
                    let mut chunks = 0usize;
                    while r.events.len() < TOTAL {
                        assert!(r.chunk().await.is_some(), "stream ended");
                        chunks += 1;
                        match speed {
                            0 => tokio::task::yield_now().await,
                            1 if chunks.is_multiple_of(4) => {
                                tokio::time::sleep(Duration::from_millis(1)).await
                            }
                            2 => tokio::time::sleep(Duration::from_millis(1)).await,
                            _ => {}
                        }
                    }
                })
                .await;
                assert!(
                    result.is_ok(),
                    "reader {speed} timed out with {} events",
                    r.events.len()
                );
                (hub, r)
            })
        })
        .collect();

    let publisher_tasks: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let log = log.clone();
            tokio::spawn(async move {
                let topic = format!("c/{p}");
                let mut ids = Vec::new();
                let mut i = 0;
                let mut round = 0;
                while i < PER_PUBLISHER {
                    let size = (round % 7 + 1).min(PER_PUBLISHER - i);
                    let mut batch: Vec<NewEvent> = (i..i + size)
                        .map(|n| on(&topic, &format!("p{p}-{n}")))
                        .collect();
                    // Some noise nobody subscribes to, inside the batch.
                    batch.insert(size / 2, on("noise", "noise"));
                    let r = publish(&log, batch).await;
                    ids.extend(
                        r.into_iter()
                            .enumerate()
                            .filter(|(k, _)| *k != size / 2)
                            .map(|(_, id)| id),
                    );
                    i += size;
                    round += 1;
                    tokio::task::yield_now().await;
                }
                ids
            })
        })
        .collect();

    let mut all_ids = HashSet::new();
    for t in publisher_tasks {
        let ids = timeout(LONG, t)
            .await
            .expect("publisher timed out")
            .unwrap();
        assert_eq!(ids.len(), PER_PUBLISHER);
        all_ids.extend(ids);
    }
    assert_eq!(all_ids.len(), TOTAL);
    let mut sorted: Vec<EventId> = all_ids.into_iter().collect();
    sorted.sort_unstable();

    for (speed, t) in reader_tasks.into_iter().enumerate() {
        let (hub, mut r) = timeout(LONG, t).await.expect("reader timed out").unwrap();
        // Nothing extra after the last one.
        let end = publish(&log, vec![on("c/end", &format!("end-{speed}"))]).await;
        r.until_data(&format!("end-{speed}")).await;
        assert!(r.gaps().is_empty(), "reader {speed}: unexpected herald.gap");
        let ids = r.ids();
        assert_eq!(ids.len(), TOTAL + speed + 1, "reader {speed}: count");
        assert_eq!(
            ids[..TOTAL],
            sorted[..],
            "reader {speed}: exactly the published set, in order"
        );
        assert_eq!(ids.last(), end.last(), "reader {speed}: the marker");
        // Each publisher's events in its own order.
        for p in 0..PUBLISHERS {
            let prefix = format!("p{p}-");
            let seq: Vec<usize> = r
                .datas()
                .iter()
                .filter_map(|d| d.strip_prefix(&prefix))
                .map(|n| n.parse().unwrap())
                .collect();
            assert_eq!(
                seq,
                (0..PER_PUBLISHER).collect::<Vec<_>>(),
                "reader {speed}, publisher {p}"
            );
        }
        drop(r);
        drop(hub);
    }
    for t in tasks {
        t.abort();
    }
}

// ---------------------------------------------------------------------------
// Housekeeping: heartbeats and lifetimes
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_stream_gets_heartbeats() {
    let config = HubConfig {
        heartbeat: Duration::from_secs(1),
        ..HubConfig::default()
    };
    let env = Env::with(Retention::default(), config, true).await;
    let mut r = env.live(&["idle"]).await;
    let comments = r.parser.comments_seen();
    let chunk = r
        .chunk()
        .await
        .expect("stream ended instead of a heartbeat");
    assert!(chunk.starts_with(b":"), "not a comment: {chunk:?}");
    assert!(r.parser.comments_seen() > comments);
    assert!(r.events.is_empty());
    // And it keeps coming.
    r.chunk()
        .await
        .expect("stream ended instead of a second heartbeat");
    assert!(r.parser.comments_seen() > comments + 1);
    assert!(r.events.is_empty());
}

/// On a paused clock (virtual time, so this is no timing test): an idle
/// stream gets one heartbeat per interval, not one every other interval.
#[tokio::test(start_paused = true)]
async fn idle_stream_gets_a_heartbeat_every_interval() {
    let config = HubConfig {
        heartbeat: Duration::from_secs(1),
        ..HubConfig::default()
    };
    let env = Env::with(Retention::default(), config, true).await;
    let mut r = env.live(&["idle"]).await;
    let start = tokio::time::Instant::now();
    for _ in 0..5 {
        let chunk = r
            .chunk()
            .await
            .expect("stream ended instead of a heartbeat");
        assert_eq!(&chunk[..], herald_sse::HEARTBEAT);
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed <= Duration::from_millis(5_500),
        "5 heartbeats of 1 s took {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stream_is_closed_after_its_lifetime() {
    let config = HubConfig {
        max_connection_lifetime: Some(Duration::from_secs(1)),
        ..HubConfig::default()
    };
    let env = Env::with(Retention::default(), config, true).await;
    let mut r = env.open(Some("u"), &["a"], Resume::Live).await;
    let ended = timeout(Duration::from_secs(5), async {
        while r.conn.next_chunk().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived max_connection_lifetime");
    assert_eq!(env.hub.counts().connections, 0);
    assert_eq!(env.hub.counts().users_online, 0);
}

/// A stream whose token expires gets one `herald.expired` event, without an
/// id (the client resumes from its last event), as its last frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stream_whose_token_expires_is_told_then_closed() {
    let env = Env::with(Retention::default(), HubConfig::default(), true).await;
    let conn = env.hub.connect(Subscriber {
        user: Some(Arc::from("u")),
        filter: filter(&["a"], None),
        resume: Resume::Live,
        expires_at: Some(std::time::SystemTime::now() + Duration::from_millis(1500)),
    });
    let mut r = Reader {
        conn,
        parser: Parser::new(),
        events: Vec::new(),
    };
    assert!(r.chunk().await.is_some(), "preamble");
    env.publish(vec![ev(&["a"], None, "before")]).await;
    r.until_data("before").await;
    let before_id = r.events[0].id.clone();
    let ended = timeout(Duration::from_secs(5), async {
        while r.chunk().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived its token");
    let last = r.events.last().expect("events");
    assert_eq!(last.event, "herald.expired");
    // No `id:` line of its own: the last event id is still the event's.
    assert_eq!(last.id, before_id, "herald.expired carries no id");
    let data: serde_json::Value = serde_json::from_str(&last.data).expect("JSON data");
    assert!(data["expired_at"].is_u64(), "{data}");
    assert_eq!(
        r.events
            .iter()
            .filter(|e| e.event == "herald.expired")
            .count(),
        1
    );
    assert_eq!(env.hub.counts().connections, 0);
}

/// A lifetime or a token expiry too far away for `Instant` is no deadline:
/// the stream opens and delivers (it used to panic on the addition).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deadlines_beyond_the_clock_do_not_panic() {
    let config = HubConfig {
        max_connection_lifetime: Some(Duration::MAX),
        ..HubConfig::default()
    };
    let env = Env::with(Retention::default(), config, true).await;
    let far = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(i64::MAX as u64 / 2);
    let conn = env.hub.connect(Subscriber {
        user: Some(Arc::from("u")),
        filter: filter(&["a"], None),
        resume: Resume::Live,
        expires_at: Some(far),
    });
    let mut r = Reader {
        conn,
        parser: Parser::new(),
        events: Vec::new(),
    };
    assert!(r.chunk().await.is_some(), "preamble");
    env.publish(vec![ev(&["a"], None, "delivered")]).await;
    r.until_data("delivered").await;
    assert_eq!(env.hub.counts().connections, 1);
}

// ---------------------------------------------------------------------------
// Write-through
// ---------------------------------------------------------------------------

/// A socket both the stream's writer and the dispatcher's write-through
/// write to, in the order the writes happen; the write-through refuses
/// every `refuse_every`-th frame (a full socket), sending it the queue's way.
#[derive(Debug, Default)]
struct SharedSocket {
    bytes: parking_lot::Mutex<Vec<u8>>,
    through: std::sync::atomic::AtomicUsize,
    tried: std::sync::atomic::AtomicUsize,
    refuse_every: usize,
}

#[derive(Debug)]
struct Through(Arc<SharedSocket>);

impl herald_core::WriteThrough for Through {
    fn try_write_frame(&self, frame: &[u8]) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let tried = self.0.tried.fetch_add(1, Relaxed) + 1;
        if self.0.refuse_every > 0 && tried.is_multiple_of(self.0.refuse_every) {
            return false;
        }
        self.0.bytes.lock().extend_from_slice(frame);
        self.0.through.fetch_add(1, Relaxed);
        true
    }
}

/// Publishers racing a writer that keeps parking and waking (and, with a
/// small queue, lagging into catch-up): whoever writes each event, the
/// stream carries every event once, in id order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn written_through_or_queued_every_event_arrives_once_in_order() {
    use std::sync::atomic::Ordering::Relaxed;
    for (queue_capacity, refuse_every) in [(256, 0), (256, 3), (2, 5)] {
        let env = Env::new(HubConfig {
            queue_capacity,
            ..HubConfig::default()
        })
        .await;
        let socket = Arc::new(SharedSocket {
            refuse_every,
            ..SharedSocket::default()
        });
        let mut conn = env.hub.connect(Subscriber {
            user: Some(Arc::from("u")),
            filter: filter(&["user/u"], None),
            resume: Resume::Live,
            expires_at: None,
        });
        conn.write_through(Box::new(Through(socket.clone())));
        // The writer: every chunk goes to the socket before the next is asked
        // for, as the direct path does; it sometimes dawdles between chunks.
        let writer_socket = socket.clone();
        let writer = tokio::spawn(async move {
            let mut n = 0u64;
            while let Some(chunk) = conn.next_chunk().await {
                writer_socket.bytes.lock().extend_from_slice(&chunk);
                n += 1;
                if n.is_multiple_of(7) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        });
        const PER_PUBLISHER: usize = 1500;
        let publishers: Vec<_> = (0..3)
            .map(|p| {
                let log = env.log.clone();
                tokio::spawn(async move {
                    for i in 0..PER_PUBLISHER {
                        publish(&log, vec![on("user/u", &format!("{p}-{i}"))]).await;
                        if i % 50 == 0 {
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        } else if i % 5 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                })
            })
            .collect();
        for p in publishers {
            p.await.unwrap();
        }
        let total = 3 * PER_PUBLISHER;
        let mut events = Vec::new();
        let deadline = tokio::time::Instant::now() + LONG;
        while events.len() < total && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            events.clear();
            Parser::new().feed_into(&socket.bytes.lock(), &mut events);
        }
        writer.abort();
        let ids: Vec<u64> = events
            .iter()
            .filter(|e| !e.event.starts_with("herald."))
            .map(|e| e.id.parse().unwrap())
            .collect();
        assert_eq!(
            ids.len(),
            total,
            "queue {queue_capacity}, refusing every {refuse_every}: every event once"
        );
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "in id order");
        let through = socket.through.load(Relaxed);
        assert!(through > 0, "some events were written through");
        if refuse_every > 0 {
            assert!(
                through < total,
                "and some through the writer ({through} of {total} through)"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Delivery lag
// ---------------------------------------------------------------------------

/// Samples until `done` holds for the hub's delivery lag (at most [`STEP`]).
async fn lag_until(hub: &Hub, what: &str, done: impl Fn(&herald_core::DeliveryLag) -> bool) {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let lag = hub.delivery_lag();
        if done(&lag) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: last {lag:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The lag is the median stream's: one stream that stops reading shows in
/// the maximum, not in the lag; once most streams are behind, it is theirs;
/// and it falls back to 0 when they have written everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_delivery_lag_is_the_median_streams_and_falls_back() {
    let env = Env::new(HubConfig::default()).await;
    let sampler = tokio::spawn(env.hub.clone().run_lag_sampler());
    let mut readers = Vec::new();
    for _ in 0..3 {
        readers.push(env.live(&["news"]).await);
    }
    for i in 0..50 {
        env.publish(vec![on("news", &format!("{i}"))]).await;
    }
    // Streams 0 and 1 read everything; stream 2 reads nothing.
    for reader in &mut readers[..2] {
        reader.until_count(50).await;
        reader.wait_for_more().await;
    }
    lag_until(&env.hub, "one stream behind", |lag| {
        lag.streams_behind == 1 && lag.max_ms > 0 && lag.lag_ms() == 0
    })
    .await;
    // Now only stream 0 reads: two of three behind.
    for i in 50..100 {
        env.publish(vec![on("news", &format!("{i}"))]).await;
    }
    readers[0].until_count(100).await;
    readers[0].wait_for_more().await;
    lag_until(&env.hub, "most streams behind", |lag| {
        lag.streams_behind == 2 && lag.median_ms > 0 && lag.lag_ms() == lag.median_ms
    })
    .await;
    // Everyone reads: nothing is behind.
    for reader in &mut readers[1..] {
        reader.until_count(100).await;
        reader.wait_for_more().await;
    }
    lag_until(&env.hub, "caught up", |lag| {
        lag.streams_behind == 0 && lag.lag_ms() == 0
    })
    .await;
    sampler.abort();
}
