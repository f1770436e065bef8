//! The conformance suite every [`EventLog`] backend must pass.
//!
//! The checks are plain async functions taking a [`Factory`]; the
//! `conformance_suite!` macro at the bottom turns them into tests for one
//! backend. A new backend adds one line: `conformance_suite!(name, factory);`.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use herald_core::{
    Appended, EventId, EventLog, Filter, LogError, NewEvent, Position, ReadBatch, Topic,
};
use herald_log::{DurableLog, DurableOptions, MemoryLog, Retention};

use common::{
    append, broadcast, check_page, datas, filter, ids, keyed, new_event, on, read_to_end,
};

/// Builds an empty log with the given retention.
pub type Factory = fn(Retention) -> Arc<dyn EventLog>;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn big() -> Retention {
    Retention::default()
}

fn keep(max_events: usize) -> Retention {
    Retention {
        max_events,
        ..Retention::default()
    }
}

/// Appends events one batch each, returning their (non-duplicate) ids.
async fn append_each(log: &Arc<dyn EventLog>, events: Vec<NewEvent>) -> Vec<EventId> {
    let mut out = Vec::new();
    for e in events {
        out.extend(append(&**log, vec![e]).await);
    }
    out
}

/// Appends `n` events on `topic` with data "0".."n-1" in one batch.
async fn append_n(log: &Arc<dyn EventLog>, topic: &str, n: usize) -> Vec<EventId> {
    let batch = (0..n).map(|i| on(topic, &i.to_string())).collect();
    append(&**log, batch).await
}

// ---------------------------------------------------------------------------
// The suite
// ---------------------------------------------------------------------------

pub async fn ids_strictly_increase(factory: Factory) {
    let log = factory(big());
    let mut all = Vec::new();
    for size in [1usize, 3, 5, 1, 2] {
        let batch = (0..size).map(|i| on("a", &i.to_string())).collect();
        let r = log.append(batch).await.unwrap();
        assert_eq!(r.len(), size);
        assert!(r.iter().all(|a| !a.duplicate));
        all.extend(r.iter().map(|a| a.id));
    }
    for w in all.windows(2) {
        assert!(w[0] < w[1], "ids not strictly increasing: {all:?}");
    }
    assert!(all[0] > EventId(0), "0 is never an id");
}

pub async fn empty_log_reads(factory: Factory) {
    let log = factory(big());
    let b = log
        .read_after(Position::Oldest, &Filter::everything(), 10)
        .await
        .unwrap();
    assert!(b.events.is_empty());
    assert_eq!(b.gap, None);
    assert_eq!(b.scanned_to, None);
    assert!(b.reached_end);
    assert_eq!(*log.head().borrow(), None);
    log.ready().await.unwrap();
}

pub async fn read_oldest_returns_all_in_order(factory: Factory) {
    let log = factory(big());
    let mut expected = append_n(&log, "a", 4).await;
    expected.extend(append_n(&log, "b", 6).await);
    let b = log
        .read_after(Position::Oldest, &Filter::everything(), 100)
        .await
        .unwrap();
    assert_eq!(ids(&b.events), expected);
    assert_eq!(
        datas(&b.events),
        ["0", "1", "2", "3", "0", "1", "2", "3", "4", "5"]
    );
    assert_eq!(b.gap, None);
    assert!(b.reached_end);
    assert_eq!(b.scanned_to, expected.last().copied());
    // Stored fields come back as given.
    let e = &b.events[4];
    assert_eq!(&*e.topics, &[Topic::new("b").unwrap()]);
    assert!(!e.broadcast);
    assert_eq!(e.event_type, None);
}

pub async fn read_after_returns_exactly_later_events(factory: Factory) {
    let log = factory(big());
    let all = append_n(&log, "a", 12).await;
    for k in 0..all.len() {
        let b = log
            .read_after(Position::After(all[k]), &Filter::everything(), 100)
            .await
            .unwrap();
        assert_eq!(b.gap, None, "after {}", all[k]);
        assert_eq!(ids(&b.events), all[k + 1..].to_vec(), "after {}", all[k]);
        assert!(b.reached_end);
    }
}

pub async fn limit_and_paging(factory: Factory) {
    let log = factory(big());
    let mut all = Vec::new();
    for i in 0..30 {
        let topic = if i % 3 == 0 { "hit" } else { "miss" };
        all.extend(append_each(&log, vec![on(topic, &i.to_string())]).await);
    }
    // Everything, 7 per page.
    let mut position = Position::Oldest;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages < 100);
        let b = log
            .read_after(position, &Filter::everything(), 7)
            .await
            .unwrap();
        assert!(b.events.len() <= 7);
        check_page(&b, position);
        seen.extend(ids(&b.events));
        if b.reached_end {
            break;
        }
        position = Position::After(b.scanned_to.unwrap());
    }
    assert_eq!(seen, all, "paging must reach every event exactly once");

    // A limit of 1 returns one event.
    let b = log
        .read_after(Position::Oldest, &Filter::everything(), 1)
        .await
        .unwrap();
    assert_eq!(ids(&b.events), vec![all[0]]);
    assert!(!b.reached_end);

    // Filtered, 2 per page: every match exactly once.
    let hits = filter(&["hit"], None);
    let (got, gap, _) = read_to_end(&*log, Position::Oldest, &hits, 2).await;
    assert_eq!(gap, None);
    let expected: Vec<EventId> = all.iter().copied().step_by(3).collect();
    assert_eq!(ids(&got), expected);
}

/// "Up to `limit` events": a limit of 0 returns none.
pub async fn limit_zero_returns_nothing(factory: Factory) {
    let log = factory(big());
    append_n(&log, "a", 3).await;
    let b = log
        .read_after(Position::Oldest, &Filter::everything(), 0)
        .await
        .unwrap();
    assert!(
        b.events.is_empty(),
        "limit 0 returned {} events",
        b.events.len()
    );
}

pub async fn filter_applies(factory: Factory) {
    let log = factory(big());
    let e = append_each(
        &log,
        vec![
            on("orders/1", "0"),                            // 0
            on("orders/2", "1"),                            // 1
            on("order", "2"),                               // 2
            on("news", "3"),                                // 3
            broadcast("4"),                                 // 4
            new_event(&["orders/1"], Some("created"), "5"), // 5
            new_event(&["news", "orders/3"], None, "6"),    // 6
            new_event(&["ordersX"], Some("deleted"), "7"),  // 7
            NewEvent {
                broadcast: true,
                ..new_event(&["zzz"], Some("created"), "8")
            }, // 8
        ],
    )
    .await;
    let pick = |idx: &[usize]| idx.iter().map(|&i| e[i]).collect::<Vec<_>>();
    let cases: Vec<(Filter, Vec<EventId>, &str)> = vec![
        (filter(&["news"], None), pick(&[3, 4, 6, 8]), "exact news"),
        (
            filter(&["orders/1"], None),
            pick(&[0, 4, 5, 8]),
            "exact orders/1",
        ),
        (filter(&["order"], None), pick(&[2, 4, 8]), "exact order"),
        (
            filter(&["orders/*"], None),
            pick(&[0, 1, 4, 5, 6, 8]),
            "prefix orders/",
        ),
        (
            filter(&["orders*"], None),
            pick(&[0, 1, 4, 5, 6, 7, 8]),
            "prefix orders",
        ),
        (
            filter(&["*"], None),
            pick(&[0, 1, 2, 3, 4, 5, 6, 7, 8]),
            "all",
        ),
        (filter(&["nothing"], None), pick(&[4, 8]), "broadcast only"),
        (
            filter(&["news", "order"], None),
            pick(&[2, 3, 4, 6, 8]),
            "two exact",
        ),
        (
            filter(&["*"], Some(&["created"])),
            pick(&[5, 8]),
            "type created",
        ),
        (
            filter(&["*"], Some(&["message"])),
            pick(&[0, 1, 2, 3, 4, 6]),
            "untyped is message",
        ),
        (
            filter(&["orders/*"], Some(&["message", "deleted"])),
            pick(&[0, 1, 4, 6]),
            "prefix + types",
        ),
        (
            filter(&["nothing"], Some(&["created"])),
            pick(&[8]),
            "typed broadcast",
        ),
    ];
    for (f, expected, name) in cases {
        for limit in [1, 3, 100] {
            let (got, gap, _) = read_to_end(&*log, Position::Oldest, &f, limit).await;
            assert_eq!(gap, None, "{name}");
            assert_eq!(ids(&got), expected, "{name}, limit {limit}");
        }
    }
}

pub async fn scanned_to_advances_without_matches(factory: Factory) {
    let log = factory(big());
    let all = append_n(&log, "a", 5).await;
    let none = filter(&["zzz"], None);
    let b = log.read_after(Position::Oldest, &none, 10).await.unwrap();
    assert!(b.events.is_empty());
    assert_eq!(b.scanned_to, Some(all[4]));
    assert!(b.reached_end);
    let b = log
        .read_after(Position::After(all[1]), &none, 10)
        .await
        .unwrap();
    assert!(b.events.is_empty());
    assert_eq!(b.gap, None);
    assert_eq!(b.scanned_to, Some(all[4]));
    assert!(b.reached_end);

    // Many non-matching events: a reader following scanned_to always makes
    // progress and reaches the end (even if the backend bounds its scan).
    let log = factory(big());
    let mut last = EventId(0);
    for _ in 0..4 {
        last = *append_n(&log, "a", 5_000).await.last().unwrap();
    }
    let hit = append_each(&log, vec![on("zzz", "hit")]).await[0];
    append_n(&log, "a", 10).await;
    let mut position = Position::Oldest;
    let mut found = Vec::new();
    let mut previous: Option<EventId> = None;
    for pages in 0.. {
        assert!(pages < 1_000, "reader does not reach the end");
        let b = log.read_after(position, &none, 10).await.unwrap();
        check_page(&b, position);
        found.extend(ids(&b.events));
        if b.reached_end {
            break;
        }
        let scanned = b
            .scanned_to
            .expect("not at the end, so something was scanned");
        assert!(
            previous.is_none_or(|p| scanned > p),
            "scanned_to did not advance"
        );
        previous = Some(scanned);
        position = Position::After(scanned);
    }
    assert!(hit > last);
    assert_eq!(found, vec![hit]);
}

pub async fn gap_when_after_is_older_than_retention(factory: Factory) {
    let log = factory(keep(5));
    let mut all = append_n(&log, "a", 4).await;
    all.extend(append_n(&log, "a", 8).await);
    assert_eq!(all.len(), 12);
    let retained = all[7..].to_vec();
    let everything = Filter::everything();

    let (got, gap, _) = read_to_end(&*log, Position::Oldest, &everything, 100).await;
    assert_eq!(gap, None, "Oldest never reports a gap");
    assert_eq!(ids(&got), retained);

    for &trimmed in &all[..6] {
        let b = log
            .read_after(Position::After(trimmed), &everything, 100)
            .await
            .unwrap();
        let gap = b
            .gap
            .unwrap_or_else(|| panic!("no gap after trimmed id {trimmed}"));
        assert_eq!(gap.oldest_available, Some(retained[0]));
        assert_eq!(ids(&b.events), retained, "after a gap: the retained events");
    }
    // all[6] was trimmed, but nothing after it is missing: no gap.
    let b = log
        .read_after(Position::After(all[6]), &everything, 100)
        .await
        .unwrap();
    assert_eq!(b.gap, None);
    assert_eq!(ids(&b.events), retained);
    // A filtered read after a trimmed id still reports the gap.
    let b = log
        .read_after(Position::After(all[0]), &filter(&["zzz"], None), 100)
        .await
        .unwrap();
    assert_eq!(b.gap.map(|g| g.oldest_available), Some(Some(retained[0])));
    assert!(b.events.is_empty());
}

pub async fn gap_for_ids_never_issued(factory: Factory) {
    let log = factory(big());
    let all = append_n(&log, "a", 3).await;
    let newest = all[2];
    for bogus in [
        EventId(0),
        EventId(newest.0 + 1),
        EventId(newest.0 + 1_000),
        EventId(u64::MAX),
    ] {
        let b = log
            .read_after(Position::After(bogus), &Filter::everything(), 100)
            .await
            .unwrap();
        let gap = b
            .gap
            .unwrap_or_else(|| panic!("no gap for never-issued id {bogus}"));
        assert_eq!(gap.oldest_available, Some(all[0]), "for {bogus}");
        assert_eq!(
            ids(&b.events),
            all,
            "after a gap for {bogus}: everything retained"
        );
        assert!(b.reached_end);
    }

    // An empty log reports the gap with nothing available.
    let log = factory(big());
    let b = log
        .read_after(Position::After(EventId(0)), &Filter::everything(), 100)
        .await
        .unwrap();
    assert_eq!(b.gap.map(|g| g.oldest_available), Some(None));
    assert!(b.events.is_empty());
}

pub async fn no_gap_after_newest(factory: Factory) {
    // Also when retention has trimmed everything but the newest.
    for retention in [big(), keep(1)] {
        let log = factory(retention);
        let all = append_n(&log, "a", 3).await;
        let b = log
            .read_after(Position::After(all[2]), &Filter::everything(), 100)
            .await
            .unwrap();
        assert_eq!(b.gap, None);
        assert!(b.events.is_empty());
        assert!(b.reached_end);
        assert!(b.scanned_to.is_none_or(|s| s <= all[2]));
    }
}

pub async fn idempotency_keys(factory: Factory) {
    let log = factory(big());
    let first = log
        .append(vec![keyed("a", "original", "k1")])
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    assert!(!first[0].duplicate);
    let head_before = *log.head().borrow();

    let again = log.append(vec![keyed("a", "retry", "k1")]).await.unwrap();
    assert_eq!(again.len(), 1);
    assert!(again[0].duplicate);
    assert_eq!(again[0].id, first[0].id);
    assert_eq!(
        *log.head().borrow(),
        head_before,
        "a duplicate stores nothing"
    );

    // Repeated within one batch, mixed with a new key, an unkeyed event and an old key.
    let r = log
        .append(vec![
            keyed("a", "k2-first", "k2"),
            keyed("a", "k2-second", "k2"),
            on("a", "plain"),
            keyed("a", "k1-again", "k1"),
            keyed("a", "k2-third", "k2"),
        ])
        .await
        .unwrap();
    assert_eq!(r.len(), 5);
    assert!(!r[0].duplicate);
    assert!(r[1].duplicate);
    assert_eq!(r[1].id, r[0].id);
    assert!(!r[2].duplicate);
    assert!(r[2].id > r[0].id);
    assert!(r[3].duplicate);
    assert_eq!(r[3].id, first[0].id);
    assert!(r[4].duplicate);
    assert_eq!(r[4].id, r[0].id);

    let (got, _, _) = read_to_end(&*log, Position::Oldest, &Filter::everything(), 100).await;
    assert_eq!(datas(&got), ["original", "k2-first", "plain"]);
    assert_eq!(ids(&got), vec![first[0].id, r[0].id, r[2].id]);

    assert_eq!(*log.head().borrow(), Some(r[2].id));
}

pub async fn head_follows_appends(factory: Factory) {
    let log = factory(big());
    let mut head = log.head();
    assert_eq!(*head.borrow_and_update(), None);

    let a = append_n(&log, "a", 1).await;
    tokio::time::timeout(Duration::from_secs(5), head.changed())
        .await
        .expect("head did not change after append")
        .unwrap();
    assert_eq!(*head.borrow_and_update(), Some(a[0]));

    let b = append_n(&log, "a", 3).await;
    tokio::time::timeout(Duration::from_secs(5), head.changed())
        .await
        .expect("head did not change after append")
        .unwrap();
    assert_eq!(*head.borrow_and_update(), Some(b[2]));

    // A receiver taken later sees the current value.
    assert_eq!(*log.head().borrow(), Some(b[2]));

    // A waiter parked before the append is woken.
    let waiter = {
        let mut head = log.head();
        head.borrow_and_update();
        tokio::spawn(async move {
            head.changed().await.unwrap();
            *head.borrow()
        })
    };
    tokio::task::yield_now().await;
    let c = append_n(&log, "a", 2).await;
    let seen = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("waiter not woken")
        .unwrap();
    assert_eq!(seen, Some(c[1]));
}

pub async fn last_id_for_topic(factory: Factory) {
    let log = factory(big());
    let t = |s: &str| Topic::new(s).unwrap();
    assert_eq!(log.last_id_for_topic(&t("a")).await.unwrap(), None);
    let e = append_each(
        &log,
        vec![
            on("a", "0"),
            on("b", "1"),
            new_event(&["a", "c"], None, "2"),
            on("b", "3"),
            on("a/1", "4"),
        ],
    )
    .await;
    assert_eq!(log.last_id_for_topic(&t("a")).await.unwrap(), Some(e[2]));
    assert_eq!(log.last_id_for_topic(&t("b")).await.unwrap(), Some(e[3]));
    assert_eq!(log.last_id_for_topic(&t("c")).await.unwrap(), Some(e[2]));
    assert_eq!(log.last_id_for_topic(&t("a/1")).await.unwrap(), Some(e[4]));
    assert_eq!(log.last_id_for_topic(&t("zzz")).await.unwrap(), None);

    // Only retained events count.
    let log = factory(keep(2));
    let e = append_each(&log, vec![on("a", "0"), on("b", "1"), on("b", "2")]).await;
    assert_eq!(log.last_id_for_topic(&t("a")).await.unwrap(), None);
    assert_eq!(log.last_id_for_topic(&t("b")).await.unwrap(), Some(e[2]));
}

pub async fn retention_by_count(factory: Factory) {
    let log = factory(keep(10));
    let mut all = Vec::new();
    for size in [3usize, 1, 15, 4, 2] {
        all.extend(append_n(&log, "a", size).await);
        let (got, gap, _) = read_to_end(&*log, Position::Oldest, &Filter::everything(), 100).await;
        assert_eq!(gap, None);
        let keep_from = all.len().saturating_sub(10);
        assert_eq!(
            ids(&got),
            all[keep_from..].to_vec(),
            "after {} events",
            all.len()
        );
    }
    assert_eq!(*log.head().borrow(), all.last().copied());
}

// ---------------------------------------------------------------------------
// Model-based property test
// ---------------------------------------------------------------------------

mod model {
    use super::*;
    use common::model::{pos, run_cases, Model, Pos, Sent};
    use proptest::prelude::*;

    const TOPICS: &[&str] = &["a", "a/1", "a/2", "b", "ab"];
    const PATTERNS: &[&str] = &["a", "a/1", "b", "a/*", "a*", "*", "zzz"];
    const TYPES: &[Option<&str>] = &[None, Some("t1"), Some("t2")];
    const TYPE_FILTERS: &[Option<&[&str]>] = &[
        None,
        Some(&["message"]),
        Some(&["t1"]),
        Some(&["message", "t1"]),
    ];

    #[derive(Debug, Clone)]
    struct Spec {
        topics: Vec<usize>,
        broadcast: bool,
        event_type: usize,
        key: Option<u8>,
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append(Vec<Spec>),
        Read {
            pos: Pos,
            patterns: Vec<usize>,
            types: usize,
            limit: usize,
        },
        LastId(usize),
    }

    fn spec() -> impl Strategy<Value = Spec> {
        (
            proptest::collection::vec(0..TOPICS.len(), 0..3),
            proptest::bool::weighted(0.15),
            0..TYPES.len(),
            proptest::option::weighted(0.4, 0u8..4),
        )
            .prop_map(|(mut topics, broadcast, event_type, key)| {
                topics.sort_unstable();
                topics.dedup();
                // A targeted event needs a topic.
                if topics.is_empty() && !broadcast {
                    topics.push(0);
                }
                Spec {
                    topics,
                    broadcast,
                    event_type,
                    key,
                }
            })
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => proptest::collection::vec(spec(), 1..=5).prop_map(Op::Append),
            5 => (
                pos(),
                proptest::collection::vec(0..PATTERNS.len(), 1..=3),
                0..TYPE_FILTERS.len(),
                1usize..=8,
            )
                .prop_map(|(pos, patterns, types, limit)| Op::Read {
                    pos,
                    patterns,
                    types,
                    limit,
                }),
            1 => (0..TOPICS.len()).prop_map(Op::LastId),
        ]
    }

    fn sent(s: &Spec, n: u64) -> Sent {
        Sent {
            topics: s.topics.iter().map(|&i| TOPICS[i]).collect(),
            broadcast: s.broadcast,
            event_type: TYPES[s.event_type],
            data: format!("d{n}"),
            key: s.key,
        }
    }

    async fn run(log: Arc<dyn EventLog>, ops: Vec<Op>) {
        let mut model = Model::default();
        for op in ops {
            match op {
                Op::Append(specs) => model.append(&*log, &specs, sent).await,
                Op::Read {
                    pos,
                    patterns,
                    types,
                    limit,
                } => {
                    let patterns: Vec<&str> = patterns.iter().map(|&i| PATTERNS[i]).collect();
                    let types = TYPE_FILTERS[types];
                    let f = filter(&patterns, types);
                    let stored = &model.stored;
                    let newest = stored.last().map_or(0, |e| e.id.0);
                    // (position, index of the first event after it, gap expected)
                    let (position, start, gap) = match pos {
                        Pos::Oldest => (Position::Oldest, 0, false),
                        Pos::AfterStored(n) if !stored.is_empty() => {
                            let k = n % stored.len();
                            (Position::After(stored[k].id), k + 1, false)
                        }
                        Pos::AfterStored(_) | Pos::Zero => (Position::After(EventId(0)), 0, true),
                        Pos::Future(d) => {
                            (Position::After(EventId(newest.saturating_add(d))), 0, true)
                        }
                    };
                    let gap = gap.then(|| stored.first().map(|e| e.id));
                    let expected = model.expect(start, &patterns, types, gap);
                    let what = format!("{patterns:?} {types:?}");
                    model
                        .check_read(&*log, position, &f, limit, &expected, &what)
                        .await;
                }
                Op::LastId(t) => model.check_last_id(&*log, TOPICS[t], 0).await,
            }
        }
    }

    pub fn model_check(factory: Factory) {
        let strategy = proptest::collection::vec(op(), 1..60);
        run_cases(strategy, |ops| run(factory(big()), ops));
    }
}

pub use model::model_check;

// ---------------------------------------------------------------------------
// Instantiation
// ---------------------------------------------------------------------------

/// Generates the whole suite as tests for one backend.
macro_rules! conformance_suite {
    ($backend:ident, $factory:expr) => {
        mod $backend {
            use super::Factory;

            const FACTORY: Factory = $factory;

            conformance_suite!(@async FACTORY;
                ids_strictly_increase,
                empty_log_reads,
                read_oldest_returns_all_in_order,
                read_after_returns_exactly_later_events,
                limit_and_paging,
                filter_applies,
                scanned_to_advances_without_matches,
                gap_when_after_is_older_than_retention,
                gap_for_ids_never_issued,
                no_gap_after_newest,
                idempotency_keys,
                head_follows_appends,
                last_id_for_topic,
                retention_by_count,
            );

            #[tokio::test]
            async fn limit_zero_returns_nothing() {
                super::limit_zero_returns_nothing(FACTORY).await;
            }

            #[test]
            fn model_check() {
                super::model_check(FACTORY);
            }
        }
    };
    (@async $factory:ident; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                super::$name($factory).await;
            }
        )*
    };
}

fn memory_log(retention: Retention) -> Arc<dyn EventLog> {
    Arc::new(MemoryLog::new(retention))
}

conformance_suite!(memory, super::memory_log);

/// A [`DurableLog`] in a fresh temporary directory, removed when the log
/// is dropped (after the log itself, so its files are closed first).
#[derive(Debug)]
struct TempDurable {
    log: DurableLog,
    _dir: tempfile::TempDir,
}

#[async_trait::async_trait]
impl EventLog for TempDurable {
    async fn append(&self, batch: Vec<NewEvent>) -> Result<Vec<Appended>, LogError> {
        self.log.append(batch).await
    }
    async fn read_after(
        &self,
        from: Position,
        filter: &Filter,
        limit: usize,
    ) -> Result<ReadBatch, LogError> {
        self.log.read_after(from, filter, limit).await
    }
    fn head(&self) -> tokio::sync::watch::Receiver<Option<EventId>> {
        self.log.head()
    }
    async fn last_id_for_topic(&self, topic: &Topic) -> Result<Option<EventId>, LogError> {
        self.log.last_id_for_topic(topic).await
    }
    async fn ready(&self) -> Result<(), LogError> {
        self.log.ready().await
    }
}

fn durable_with_cache(retention: Retention, cache_events: usize) -> Arc<dyn EventLog> {
    let dir = tempfile::tempdir().unwrap();
    let options = DurableOptions {
        retention,
        cache_events,
        ..DurableOptions::default()
    };
    let log = DurableLog::open(dir.path(), options).unwrap();
    Arc::new(TempDurable { log, _dir: dir })
}

fn durable_log(retention: Retention) -> Arc<dyn EventLog> {
    durable_with_cache(retention, DurableOptions::default().cache_events)
}

/// No cache: every read goes to the segment files.
fn durable_log_from_disk(retention: Retention) -> Arc<dyn EventLog> {
    durable_with_cache(retention, 0)
}

conformance_suite!(durable, super::durable_log);
conformance_suite!(durable_from_disk, super::durable_log_from_disk);

/// A [`herald_log::redis::RedisLog`] with its own prefix on the binary's
/// one `redis-server`.
fn redis_log(retention: Retention) -> Arc<dyn EventLog> {
    common::redis_server::redis_log(common::redis_server::shared_server(), retention)
}

conformance_suite!(redis, super::redis_log);
