//! Helpers shared by this crate's test suites (`conformance.rs`,
//! `durable.rs`, `faults.rs`): building events, appending, paging through a
//! read with the invariants every page keeps, opening and filling a durable
//! log, and the pieces of the model-based tests (positions, the model of
//! stored events, its checks), and the Redis log on real Redis servers
//! (`redis_server`).
//!
//! Every suite is its own crate and uses a part of this module.
#![allow(dead_code)]

pub mod redis_server;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use herald_core::{
    Event, EventId, EventLog, Filter, Gap, NewEvent, Position, ReadBatch, Topic, TopicPattern,
};

/// Upper bound on pages read by any paging loop, so a backend that never
/// reports `reached_end` fails instead of hanging.
pub const MAX_PAGES: usize = 100_000;

pub fn new_event(topics: &[&str], event_type: Option<&str>, data: &str) -> NewEvent {
    let topics = topics.iter().map(|t| Topic::new(t).unwrap()).collect();
    NewEvent {
        event_type: event_type.map(str::to_owned),
        ..NewEvent::new(topics, data)
    }
}

pub fn on(topic: &str, data: &str) -> NewEvent {
    new_event(&[topic], None, data)
}

pub fn keyed(topic: &str, data: &str, key: &str) -> NewEvent {
    NewEvent {
        idempotency_key: Some(key.to_owned()),
        ..on(topic, data)
    }
}

pub fn broadcast(data: &str) -> NewEvent {
    NewEvent {
        broadcast: true,
        ..new_event(&[], None, data)
    }
}

pub fn filter(patterns: &[&str], types: Option<&[&str]>) -> Filter {
    Filter::new(
        patterns.iter().map(|p| TopicPattern::parse(p).unwrap()),
        types.map(|t| t.iter().map(|s| (*s).to_owned()).collect()),
    )
}

pub fn ids(events: &[Arc<Event>]) -> Vec<EventId> {
    events.iter().map(|e| e.id).collect()
}

pub fn datas(events: &[Arc<Event>]) -> Vec<String> {
    events.iter().map(|e| e.data()).collect()
}

/// Appends `batch` as one call; every event must be new. Returns the ids.
pub async fn append(log: &dyn EventLog, batch: Vec<NewEvent>) -> Vec<EventId> {
    let n = batch.len();
    let r = log.append(batch).await.unwrap();
    assert_eq!(r.len(), n);
    assert!(r.iter().all(|a| !a.duplicate));
    r.iter().map(|a| a.id).collect()
}

/// Reads every page from `from` to the end, following `scanned_to` and
/// checking every page ([`check_page`], the limit, no gap after the first).
/// Returns the concatenated events, the gap of the first page and the
/// number of pages.
pub async fn read_to_end(
    log: &dyn EventLog,
    from: Position,
    filter: &Filter,
    limit: usize,
) -> (Vec<Arc<Event>>, Option<Gap>, usize) {
    let mut position = from;
    let mut all = Vec::new();
    let mut first_gap = None;
    for page in 0..MAX_PAGES {
        let batch = log.read_after(position, filter, limit).await.unwrap();
        assert!(
            batch.events.len() <= limit,
            "page larger than limit {limit}"
        );
        if page == 0 {
            first_gap = batch.gap.clone();
        } else {
            assert_eq!(batch.gap, None, "gap on a follow-up page at {position:?}");
        }
        check_page(&batch, position);
        all.extend(batch.events.iter().cloned());
        if batch.reached_end {
            return (all, first_gap, page + 1);
        }
        let next = batch
            .scanned_to
            .expect("a page that did not reach the end must say how far it scanned");
        position = Position::After(next);
    }
    panic!("no reached_end after {MAX_PAGES} pages");
}

/// Invariants of a single page.
pub fn check_page(batch: &ReadBatch, from: Position) {
    for w in batch.events.windows(2) {
        assert!(w[0].id < w[1].id, "events not in id order");
    }
    if let (Position::After(after), None) = (from, &batch.gap) {
        if let Some(first) = batch.events.first() {
            assert!(first.id > after, "event {} not after {after}", first.id);
        }
        if let Some(scanned) = batch.scanned_to {
            assert!(
                scanned > after,
                "scanned_to {scanned} did not advance past {after}"
            );
        }
    }
    if let (Some(last), Some(scanned)) = (batch.events.last(), batch.scanned_to) {
        assert!(
            scanned >= last.id,
            "scanned_to {scanned} behind the last returned {}",
            last.id
        );
    }
    if !batch.events.is_empty() {
        assert!(
            batch.scanned_to.is_some(),
            "events returned but scanned_to is None"
        );
    }
}

/// Opening, filling and inspecting a [`herald_log::DurableLog`].
pub mod durable {
    use std::path::{Path, PathBuf};

    use herald_core::EventId;
    use herald_log::{DurableLog, DurableOptions, Retention};

    use super::{append, on};

    pub fn options(retention: Retention, cache_events: usize) -> DurableOptions {
        DurableOptions {
            retention,
            cache_events,
            ..DurableOptions::default()
        }
    }

    pub fn open(dir: &Path, options: DurableOptions) -> DurableLog {
        DurableLog::open(dir, options).unwrap()
    }

    /// Opens the log in `dir` and checks recovery had nothing to repair.
    pub fn open_clean(dir: &Path, options: DurableOptions) -> DurableLog {
        let log = open(dir, options);
        assert!(
            log.recovery_report().is_clean(),
            "{:?}",
            log.recovery_report()
        );
        log
    }

    /// Appends `n` events on "a" with data `{prefix}{i}`, `per_batch` per call.
    pub async fn append_n(
        log: &DurableLog,
        n: usize,
        per_batch: usize,
        prefix: &str,
    ) -> Vec<EventId> {
        let mut ids = Vec::with_capacity(n);
        let mut i = 0;
        while i < n {
            let batch = (i..n.min(i + per_batch))
                .map(|k| on("a", &format!("{prefix}{k}")))
                .collect();
            ids.extend(append(log, batch).await);
            i += per_batch;
        }
        ids
    }

    /// Opens the log in `dir`, appends as [`append_n`] does, and closes it.
    pub async fn fill(
        dir: &Path,
        options: DurableOptions,
        n: usize,
        per_batch: usize,
        prefix: &str,
    ) -> Vec<EventId> {
        let log = open(dir, options);
        append_n(&log, n, per_batch, prefix).await
    }

    /// The segment files of the log in `dir`, oldest first.
    pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("segments"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        files.sort();
        files
    }
}

/// The parts of the model-based tests that do not depend on the backend.
pub mod model {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    /// Where a model read starts.
    #[derive(Debug, Clone)]
    pub enum Pos {
        Oldest,
        /// After the n-th stored event (mod the count).
        AfterStored(usize),
        /// After id 0: never issued.
        Zero,
        /// After an id beyond the newest.
        Future(u64),
    }

    pub fn pos() -> impl Strategy<Value = Pos> {
        prop_oneof![
            2 => Just(Pos::Oldest),
            6 => any::<usize>().prop_map(Pos::AfterStored),
            1 => Just(Pos::Zero),
            1 => (1u64..1000).prop_map(Pos::Future),
        ]
    }

    /// An event as the model expects it stored.
    #[derive(Debug, Clone)]
    pub struct Stored {
        pub id: EventId,
        pub topics: Vec<&'static str>,
        pub broadcast: bool,
        pub event_type: Option<&'static str>,
        pub data: String,
    }

    /// An event the model appends: what it is, and its idempotency key
    /// (`key-{n}`) if it has one.
    #[derive(Debug, Clone)]
    pub struct Sent {
        pub topics: Vec<&'static str>,
        pub broadcast: bool,
        pub event_type: Option<&'static str>,
        pub data: String,
        pub key: Option<u8>,
    }

    impl Sent {
        fn new_event(&self) -> NewEvent {
            NewEvent {
                topics: self.topics.iter().map(|t| Topic::new(t).unwrap()).collect(),
                broadcast: self.broadcast,
                event_type: self.event_type.map(str::to_owned),
                data: self.data.clone(),
                retry: None,
                idempotency_key: self.key.map(|k| format!("key-{k}")),
            }
        }
    }

    /// The model's idea of a filter, written from the spec, not from `Filter`.
    pub fn model_matches(e: &Stored, patterns: &[&str], types: Option<&[&str]>) -> bool {
        let type_ok = types.is_none_or(|ts| ts.contains(&e.event_type.unwrap_or("message")));
        let topic_ok = e.broadcast
            || e.topics.iter().any(|t| {
                patterns.iter().any(|p| match p.strip_suffix('*') {
                    Some(prefix) => t.starts_with(prefix),
                    None => t == p,
                })
            });
        type_ok && topic_ok
    }

    /// What a log should hold: every event stored, oldest first, and the
    /// idempotency keys seen.
    #[derive(Debug, Default)]
    pub struct Model {
        pub stored: Vec<Stored>,
        keys: HashMap<u8, EventId>,
        /// Events sent so far, duplicates included.
        sent: u64,
    }

    /// What a model read expects.
    #[derive(Debug)]
    pub struct Expected<'a> {
        /// Index in `stored` of the first event the read may return.
        pub start: usize,
        /// The model's matches from `start` on.
        pub events: Vec<&'a Stored>,
        /// `Some(oldest available)` when a gap is expected.
        pub gap: Option<Option<EventId>>,
    }

    impl Model {
        /// Appends one batch, the event `make(spec, n)` for each of
        /// `specs` (`n` counts the events sent, from 1), and checks the
        /// answer: a key seen before returns its id as a duplicate, every
        /// new event gets an id above all before, and the head moves to the
        /// newest.
        pub async fn append<T>(
            &mut self,
            log: &dyn EventLog,
            specs: &[T],
            make: impl Fn(&T, u64) -> Sent,
        ) {
            let sent: Vec<Sent> = specs
                .iter()
                .map(|spec| {
                    self.sent += 1;
                    make(spec, self.sent)
                })
                .collect();
            let batch: Vec<NewEvent> = sent.iter().map(Sent::new_event).collect();
            let result = log.append(batch).await.unwrap();
            assert_eq!(result.len(), sent.len());
            for (s, r) in sent.into_iter().zip(&result) {
                match s.key.and_then(|k| self.keys.get(&k).copied()) {
                    Some(id) => {
                        assert!(r.duplicate, "key {:?} repeated but not a duplicate", s.key);
                        assert_eq!(r.id, id);
                    }
                    None => {
                        assert!(!r.duplicate, "fresh event marked duplicate");
                        if let Some(last) = self.stored.last() {
                            assert!(r.id > last.id, "ids must increase");
                        }
                        if let Some(k) = s.key {
                            self.keys.insert(k, r.id);
                        }
                        self.stored.push(Stored {
                            id: r.id,
                            topics: s.topics,
                            broadcast: s.broadcast,
                            event_type: s.event_type,
                            data: s.data,
                        });
                    }
                }
            }
            assert_eq!(*log.head().borrow(), self.stored.last().map(|e| e.id));
        }

        /// The model's matches of `patterns`/`types` from `stored[start..]`.
        pub fn expect(
            &self,
            start: usize,
            patterns: &[&str],
            types: Option<&[&str]>,
            gap: Option<Option<EventId>>,
        ) -> Expected<'_> {
            let events = self.stored[start..]
                .iter()
                .filter(|e| model_matches(e, patterns, types))
                .collect();
            Expected { start, events, gap }
        }

        /// Reads one page from `position` and checks it against `expected`
        /// (the gap, exactly the matches up to `scanned_to`, their fields,
        /// `reached_end`), then pages from the same position to the end and
        /// checks every match comes exactly once.
        pub async fn check_read(
            &self,
            log: &dyn EventLog,
            position: Position,
            filter: &Filter,
            limit: usize,
            expected: &Expected<'_>,
            what: &str,
        ) {
            let b = log.read_after(position, filter, limit).await.unwrap();
            check_page(&b, position);
            assert!(b.events.len() <= limit);
            match expected.gap {
                Some(oldest) => {
                    let g = b.gap.clone().expect("gap expected");
                    assert_eq!(g.oldest_available, oldest);
                }
                None => assert_eq!(b.gap, None, "unexpected gap from {position:?}"),
            }
            // Exactly the matches up to scanned_to, in order.
            let upto: Vec<EventId> = expected
                .events
                .iter()
                .filter(|e| b.scanned_to.is_some_and(|s| e.id <= s))
                .map(|e| e.id)
                .collect();
            assert_eq!(ids(&b.events), upto, "first page for {what}");
            for (got, want) in b.events.iter().zip(&expected.events) {
                assert_eq!(got.data(), want.data);
                assert_eq!(got.event_type.as_deref(), want.event_type);
                assert_eq!(got.broadcast, want.broadcast);
                let topics: Vec<&str> = got.topics.iter().map(|t| t.as_str()).collect();
                assert_eq!(topics, want.topics);
            }
            if b.reached_end {
                assert_eq!(
                    b.events.len(),
                    expected.events.len(),
                    "reached_end but matches missing"
                );
                // Everything after the start position was examined.
                if expected.start < self.stored.len() {
                    assert_eq!(b.scanned_to, self.stored.last().map(|e| e.id));
                }
            } else {
                assert!(b.scanned_to.is_some(), "no progress and not at the end");
            }

            // Paging from the same position reaches every match once.
            let (all, _, _) = read_to_end(log, position, filter, limit).await;
            let want: Vec<EventId> = expected.events.iter().map(|e| e.id).collect();
            assert_eq!(ids(&all), want, "paged read for {what}");
        }

        /// Checks `last_id_for_topic(topic)` against `stored[from..]`.
        pub async fn check_last_id(&self, log: &dyn EventLog, topic: &str, from: usize) {
            let want = self.stored[from..]
                .iter()
                .rev()
                .find(|e| e.topics.contains(&topic))
                .map(|e| e.id);
            let got = log
                .last_id_for_topic(&Topic::new(topic).unwrap())
                .await
                .unwrap();
            assert_eq!(got, want, "last_id_for_topic({topic})");
        }
    }

    /// Runs `case` on 128 values of `strategy` (shrinking a failure), on
    /// one current-thread runtime.
    pub fn run_cases<S, F>(strategy: S, case: impl Fn(S::Value) -> F)
    where
        S: Strategy,
        F: Future<Output = ()>,
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut runner = TestRunner::new(Config {
            cases: 128,
            failure_persistence: None,
            ..Config::default()
        });
        let result = runner.run(&strategy, |value| {
            rt.block_on(case(value));
            Ok(())
        });
        if let Err(err) = result {
            panic!("{err}");
        }
    }
}
