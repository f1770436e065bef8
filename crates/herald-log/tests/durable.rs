//! The durable log beyond the shared conformance suite: restarts, crashes
//! (torn and damaged files), the directory lock, retention on disk, reads
//! from disk, and `Fsync` mode. A model-based property test drives appends,
//! reads, trims and reopens against a plain in-memory model.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use herald_core::{EventId, EventLog, Filter, NewEvent, Position, Topic, TopicPattern};
use herald_log::{Durability, DurableError, DurableLog, DurableOptions, Retention};

use common::durable::{append_n, fill, open, open_clean, options, segment_files};
use common::{append, ids, keyed, on, read_to_end};

fn everything() -> Filter {
    Filter::everything()
}

// ---------------------------------------------------------------------------
// Restarts
// ---------------------------------------------------------------------------

#[tokio::test]
async fn ids_keep_increasing_across_reopen_and_resume_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(Retention::default(), 1000);
    let before = fill(dir.path(), opts, 50, 7, "before").await;
    let log = open_clean(dir.path(), opts);
    assert_eq!(log.recovery_report().events, 50);
    assert_eq!(*log.head().borrow(), before.last().copied());
    let after = append_n(&log, 50, 3, "after").await;
    assert!(after[0] > before[49], "ids went back after a restart");

    // A client that saw the last event before the restart gets exactly the new ones.
    let (got, gap, _) = read_to_end(&log, Position::After(before[49]), &everything(), 16).await;
    assert_eq!(gap, None);
    assert_eq!(ids(&got), after);
    // One from earlier gets the rest of the old ones, then the new ones.
    let (got, gap, _) = read_to_end(&log, Position::After(before[9]), &everything(), 16).await;
    assert_eq!(gap, None);
    let expected: Vec<EventId> = before[10..].iter().chain(&after).copied().collect();
    assert_eq!(ids(&got), expected);
    assert_eq!(got[0].data(), "before10");
    assert_eq!(got.last().unwrap().data(), "after49");
}

#[tokio::test]
async fn idempotency_key_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(Retention::default(), 1000);
    let first = {
        let log = open(dir.path(), opts);
        append(&log, vec![keyed("a", "original", "k1")]).await[0]
    };
    let log = open(dir.path(), opts);
    let bytes = log.disk_bytes();
    let again = log
        .append(vec![keyed("a", "retry", "k1"), keyed("a", "new", "k2")])
        .await
        .unwrap();
    assert!(again[0].duplicate);
    assert_eq!(again[0].id, first);
    assert!(!again[1].duplicate);
    let (got, _, _) = read_to_end(&log, Position::Oldest, &everything(), 10).await;
    assert_eq!(
        got.iter().map(|e| e.data()).collect::<Vec<_>>(),
        ["original", "new"]
    );
    assert!(log.disk_bytes() > bytes);
    drop(log);

    // Still known after another restart; a duplicate stores nothing.
    let log = open(dir.path(), opts);
    let bytes = log.disk_bytes();
    let head = *log.head().borrow();
    let r = log.append(vec![keyed("a", "x", "k2")]).await.unwrap();
    assert!(r[0].duplicate);
    assert_eq!(r[0].id, again[1].id);
    assert_eq!(log.disk_bytes(), bytes);
    assert_eq!(*log.head().borrow(), head);
}

#[tokio::test]
async fn a_second_open_of_the_same_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(Retention::default(), 10);
    let log = open(dir.path(), opts);
    match DurableLog::open(dir.path(), opts) {
        Err(DurableError::Locked(path)) => assert_eq!(path, dir.path()),
        other => panic!("expected Locked, got {other:?}"),
    }
    let message = DurableLog::open(dir.path(), opts).unwrap_err().to_string();
    assert!(message.contains("in use by another Herald"), "{message}");
    drop(log);
    // Released with the log.
    open(dir.path(), opts);
}

// ---------------------------------------------------------------------------
// Crashes
// ---------------------------------------------------------------------------

#[tokio::test]
async fn garbage_after_the_last_record_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(Retention::default(), 1000);
    let written = fill(dir.path(), opts, 100, 1, "e").await;
    let last = segment_files(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    let good_len = bytes.len() as u64;
    bytes.extend_from_slice(&[0x2a; 37]);
    std::fs::write(&last, &bytes).unwrap();

    let log = open(dir.path(), opts);
    let report = log.recovery_report().clone();
    assert_eq!(report.dropped_bytes, 37);
    assert_eq!(report.dropped_at_id, Some(written[99]));
    assert_eq!(report.events, 100);
    assert!(report.notes[0].contains("never acknowledged"), "{report:?}");
    assert_eq!(std::fs::metadata(&last).unwrap().len(), good_len);
    let (got, _, _) = read_to_end(&log, Position::Oldest, &everything(), 1000).await;
    assert_eq!(ids(&got), written);
    let next = append(&log, vec![on("a", "next")]).await[0];
    assert!(next > written[99]);
}

#[tokio::test]
async fn a_record_cut_in_half_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(Retention::default(), 1000);
    let written = fill(dir.path(), opts, 100, 10, "e").await;
    let last = segment_files(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&last).unwrap().len();
    // A clean reopen leaves the file as it is.
    drop(open(dir.path(), opts));
    assert_eq!(std::fs::metadata(&last).unwrap().len(), len);
    // Cut the last record (about 30 bytes) short by 10 bytes.
    let file = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
    file.set_len(len - 10).unwrap();
    drop(file);

    let log = open(dir.path(), opts);
    let report = log.recovery_report().clone();
    assert!(report.dropped_bytes > 0, "{report:?}");
    assert_eq!(report.dropped_at_id, Some(written[98]));
    assert_eq!(report.events, 99);
    let (got, _, _) = read_to_end(&log, Position::Oldest, &everything(), 1000).await;
    assert_eq!(ids(&got), written[..99].to_vec());
    let next = append(&log, vec![on("a", "next")]).await[0];
    assert!(next > written[98]);
    let (got, gap, _) = read_to_end(&log, Position::After(written[98]), &everything(), 10).await;
    assert_eq!(gap, None);
    assert_eq!(ids(&got), vec![next]);
    drop(log);
    // The repaired file opens clean.
    let log = open_clean(dir.path(), opts);
    assert_eq!(log.recovery_report().events, 100);
}

#[tokio::test]
async fn a_bad_checksum_mid_segment_cuts_there() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(Retention::default(), 1000);
    let written = {
        let log = open(dir.path(), opts);
        // Equal-sized records: data "e100".."e199".
        let batch = (100..200).map(|i| on("a", &format!("e{i}"))).collect();
        append(&log, batch).await
    };
    let last = segment_files(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    let record = (bytes.len() - 8) / 100;
    assert_eq!((bytes.len() - 8) % 100, 0);
    // The last data byte of record 50.
    let at = 8 + 51 * record - 1;
    bytes[at] ^= 0x01;
    std::fs::write(&last, &bytes).unwrap();

    let log = open(dir.path(), opts);
    let report = log.recovery_report().clone();
    assert_eq!(report.dropped_bytes, (50 * record) as u64);
    assert_eq!(report.dropped_at_id, Some(written[49]));
    assert_eq!(report.events, 50);
    assert!(report.notes[0].contains("checksum"), "{report:?}");
    let (got, _, _) = read_to_end(&log, Position::Oldest, &everything(), 1000).await;
    assert_eq!(ids(&got), written[..50].to_vec());
    assert_eq!(got[49].data(), "e149");
    // New ids are above every id ever issued, dropped ones included.
    let next = append(&log, vec![on("a", "next")]).await[0];
    assert!(next > written[99]);
}

#[tokio::test]
async fn damage_in_an_older_segment_keeps_later_segments() {
    let dir = tempfile::tempdir().unwrap();
    let retention = Retention {
        max_bytes: 1 << 20,
        ..Retention::default()
    };
    let opts = DurableOptions {
        segment_bytes: 64 * 1024,
        ..options(retention, 10)
    };
    let data = "x".repeat(1000);
    let written = {
        let log = open(dir.path(), opts);
        let mut ids = Vec::new();
        for _ in 0..20 {
            let batch = (0..10).map(|_| on("a", &data)).collect();
            ids.extend(append(&log, batch).await);
        }
        ids
    };
    let files = segment_files(dir.path());
    assert!(files.len() >= 3, "{files:?}");
    // Damage the 10th record of the first segment.
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let record = 8 + 8 + 4 + 1 + 2 + 3 + 4 + 1000;
    bytes[8 + 9 * record + 20] ^= 0xff;
    std::fs::write(&files[0], &bytes).unwrap();

    let log = open(dir.path(), opts);
    let report = log.recovery_report().clone();
    assert_eq!(report.dropped_at_id, Some(written[8]));
    assert!(
        report.notes[0].contains("not the last segment"),
        "{report:?}"
    );
    let per_segment = (64 * 1024 - 8) / record;
    let (got, gap, _) = read_to_end(&log, Position::Oldest, &everything(), 7).await;
    assert_eq!(gap, None);
    let expected: Vec<EventId> = written[..9]
        .iter()
        .chain(&written[per_segment..])
        .copied()
        .collect();
    assert_eq!(ids(&got), expected);
    // Reads across the hole work from any position.
    let (got, gap, _) = read_to_end(&log, Position::After(written[5]), &everything(), 3).await;
    assert_eq!(gap, None);
    assert_eq!(ids(&got), expected[6..].to_vec());
    let next = append(&log, vec![on("a", "next")]).await[0];
    assert!(next > written[199]);
}

#[tokio::test]
async fn a_file_without_our_header_is_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(Retention::default(), 10);
    let written = fill(dir.path(), opts, 5, 5, "e").await;
    let bogus = dir
        .path()
        .join("segments")
        .join(format!("{:020}.log", u64::MAX / 2));
    std::fs::write(&bogus, b"not a herald segment").unwrap();
    let log = open(dir.path(), opts);
    let report = log.recovery_report().clone();
    assert!(report.notes[0].contains("header"), "{report:?}");
    assert!(!bogus.exists());
    assert!(bogus.with_extension("log.corrupt").exists());
    let (got, _, _) = read_to_end(&log, Position::Oldest, &everything(), 10).await;
    assert_eq!(ids(&got), written);
    // Ids stay above the name of the set-aside file.
    let next = append(&log, vec![on("a", "next")]).await[0];
    assert!(next.0 >= u64::MAX / 2);
}

// ---------------------------------------------------------------------------
// Retention and disk reads
// ---------------------------------------------------------------------------

#[tokio::test]
async fn retention_by_bytes_bounds_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let max_bytes = 256 * 1024;
    let segment_bytes = 64 * 1024;
    let retention = Retention {
        max_bytes,
        ..Retention::default()
    };
    let opts = DurableOptions {
        segment_bytes,
        ..options(retention, 100)
    };
    let log = open(dir.path(), opts);
    let data = "y".repeat(200);
    let mut written = Vec::new();
    for round in 0..100 {
        let batch = (0..50).map(|_| on("a", &data)).collect();
        written.extend(append(&log, batch).await);
        if round % 10 == 0 {
            log.trim();
        }
        assert!(
            log.disk_bytes() <= (max_bytes + segment_bytes as usize) as u64,
            "{} bytes on disk",
            log.disk_bytes()
        );
    }
    log.trim();
    assert!(log.disk_bytes() <= max_bytes as u64 + segment_bytes);
    let on_disk: u64 = segment_files(dir.path())
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(on_disk, log.disk_bytes());

    let (got, gap, _) = read_to_end(&log, Position::Oldest, &everything(), 500).await;
    assert_eq!(gap, None);
    assert!(got.len() < written.len() / 3, "old events still there");
    let retained = ids(&got);
    let k = written.len() - retained.len();
    assert_eq!(retained, written[k..].to_vec(), "not the newest events");
    // Reading from the first id: a gap, then the retained events.
    let b = log
        .read_after(Position::After(written[0]), &everything(), 10)
        .await
        .unwrap();
    assert_eq!(b.gap.unwrap().oldest_available, Some(retained[0]));
    assert_eq!(ids(&b.events), retained[..10].to_vec());
    // Right before the oldest retained: no gap.
    let b = log
        .read_after(Position::After(written[k - 1]), &everything(), 10)
        .await
        .unwrap();
    assert_eq!(b.gap, None);
    assert_eq!(b.events[0].id, retained[0]);

    // The same after a restart.
    drop(log);
    let log = open(dir.path(), opts);
    let (got, _, _) = read_to_end(&log, Position::Oldest, &everything(), 500).await;
    assert_eq!(ids(&got), retained);
    let b = log
        .read_after(Position::After(written[0]), &everything(), 10)
        .await
        .unwrap();
    assert_eq!(b.gap.unwrap().oldest_available, Some(retained[0]));
}

async fn check_newest_100(log: &DurableLog, written: &[EventId]) {
    let (got, gap, _) = read_to_end(log, Position::Oldest, &everything(), 30).await;
    assert_eq!(gap, None);
    assert_eq!(ids(&got), written[900..].to_vec());
    assert_eq!(got[0].data(), "e900");
    let b = log
        .read_after(Position::After(written[0]), &everything(), 5)
        .await
        .unwrap();
    assert_eq!(b.gap.unwrap().oldest_available, Some(written[900]));
    assert_eq!(ids(&b.events), written[900..905].to_vec());
    let b = log
        .read_after(Position::After(written[899]), &everything(), 5)
        .await
        .unwrap();
    assert_eq!(b.gap, None);
    assert_eq!(ids(&b.events), written[900..905].to_vec());
    let a = Topic::new("a").unwrap();
    assert_eq!(log.last_id_for_topic(&a).await.unwrap(), Some(written[999]));
}

#[tokio::test]
async fn retention_by_count_keeps_exactly_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let retention = Retention {
        max_events: 100,
        ..Retention::default()
    };
    // A cache of 10: most of these reads come from disk.
    let opts = options(retention, 10);
    let log = open(dir.path(), opts);
    let written = append_n(&log, 1000, 64, "e").await;
    check_newest_100(&log, &written).await;
    log.trim();
    check_newest_100(&log, &written).await;
    drop(log);
    let log = open(dir.path(), opts);
    check_newest_100(&log, &written).await;
}

#[tokio::test]
async fn retention_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let retention = Retention {
        max_age: Duration::from_secs(1),
        ..Retention::default()
    };
    let opts = options(retention, 1000);
    let log = open(dir.path(), opts);
    let old = append_n(&log, 10, 10, "old").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let new = append_n(&log, 5, 5, "new").await;
    log.trim();
    let (got, gap, _) = read_to_end(&log, Position::Oldest, &everything(), 100).await;
    assert_eq!(gap, None);
    assert_eq!(ids(&got), new);
    let b = log
        .read_after(Position::After(old[0]), &everything(), 100)
        .await
        .unwrap();
    assert_eq!(b.gap.unwrap().oldest_available, Some(new[0]));
    let b = log
        .read_after(Position::After(old[9]), &everything(), 100)
        .await
        .unwrap();
    assert_eq!(b.gap, None);
    assert_eq!(ids(&b.events), new);
}

#[tokio::test]
async fn resume_from_far_back_pages_through_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let opts = DurableOptions {
        segment_bytes: 256 * 1024,
        ..options(Retention::default(), 10)
    };
    let log = open(dir.path(), opts);
    let mut written = Vec::new();
    let mut rare = Vec::new();
    for round in 0..40 {
        let batch: Vec<NewEvent> = (0..500)
            .map(|i| {
                let n = round * 500 + i;
                if n % 1000 == 999 {
                    on("rare", &format!("rare {n}"))
                } else {
                    on("a", &format!("{n:0>100}"))
                }
            })
            .collect();
        let got = append(&log, batch).await;
        for (i, id) in got.iter().enumerate() {
            if (round * 500 + i) % 1000 == 999 {
                rare.push(*id);
            }
        }
        written.extend(got);
    }
    assert!(
        std::fs::read_dir(dir.path().join("segments"))
            .unwrap()
            .count()
            > 4,
        "expected several segments"
    );
    // Everything after an early id, 128 per page (a catch-up page).
    let (got, gap, pages) =
        read_to_end(&log, Position::After(written[100]), &everything(), 128).await;
    assert_eq!(gap, None);
    assert_eq!(ids(&got), written[101..].to_vec());
    assert!(pages >= (written.len() - 101) / 128, "{pages} pages");
    for (i, e) in got.iter().enumerate().step_by(997) {
        let n = 101 + i;
        if n % 1000 != 999 {
            assert_eq!(e.data(), format!("{n:0>100}"));
        }
    }
    // A rare topic: the scan is bounded per read, yet every page advances.
    let (got, gap, pages) = read_to_end(
        &log,
        Position::After(written[0]),
        &Filter::new([TopicPattern::parse("rare").unwrap()], None),
        10,
    )
    .await;
    assert_eq!(gap, None);
    assert_eq!(ids(&got), rare);
    assert_eq!(got[0].data(), "rare 999");
    assert!(
        pages >= 3,
        "a read examined more than 8192 events: {pages} pages"
    );
    // From the middle of a segment and right at segment edges.
    for k in [0, 1, 127, 128, 129, 4999, 5000, 19_998] {
        let b = log
            .read_after(Position::After(written[k]), &everything(), 3)
            .await
            .unwrap();
        assert_eq!(b.gap, None);
        let want: Vec<EventId> = written[k + 1..].iter().take(3).copied().collect();
        assert_eq!(ids(&b.events), want, "after #{k}");
    }
    let a = Topic::new("a").unwrap();
    let r = Topic::new("rare").unwrap();
    assert_eq!(
        log.last_id_for_topic(&a).await.unwrap(),
        Some(written[19_998])
    );
    assert_eq!(
        log.last_id_for_topic(&r).await.unwrap(),
        Some(written[19_999])
    );
    let gone = Topic::new("never").unwrap();
    assert_eq!(log.last_id_for_topic(&gone).await.unwrap(), None);
}

/// Many appenders at once: each gets increasing ids, all are stored once,
/// in id order, and survive a reopen.
async fn concurrent_appends(durability: Durability, tasks: usize, per_task: usize) {
    let dir = tempfile::tempdir().unwrap();
    let opts = DurableOptions {
        durability,
        ..options(Retention::default(), 1000)
    };
    let log = Arc::new(open(dir.path(), opts));
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let log = log.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                for i in 0..per_task {
                    let id = append(&*log, vec![on("a", &format!("{t}/{i}"))]).await[0];
                    mine.push(id);
                }
                mine
            })
        })
        .collect();
    let mut by_id = HashMap::new();
    for (t, h) in handles.into_iter().enumerate() {
        let mine = h.await.unwrap();
        for w in mine.windows(2) {
            assert!(w[0] < w[1]);
        }
        for (i, id) in mine.into_iter().enumerate() {
            assert!(
                by_id.insert(id, format!("{t}/{i}")).is_none(),
                "id issued twice"
            );
        }
    }
    drop(Arc::into_inner(log).unwrap());
    let log = open_clean(dir.path(), opts);
    let (got, _, _) = read_to_end(&log, Position::Oldest, &everything(), 1000).await;
    assert_eq!(got.len(), tasks * per_task);
    for e in &got {
        assert_eq!(by_id[&e.id], e.data());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_process_durability() {
    concurrent_appends(Durability::Process, 32, 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_durability_works_the_same() {
    concurrent_appends(Durability::Fsync, 8, 25).await;
}

// ---------------------------------------------------------------------------
// Model-based property test: appends, reads, trims and reopens
// ---------------------------------------------------------------------------

mod model {
    use super::*;
    use common::model::{pos, run_cases, Model, Pos, Sent};
    use proptest::prelude::*;

    const TOPICS: &[&str] = &["a", "a/1", "b"];
    const PATTERNS: &[&str] = &["a", "a/*", "b", "*", "zzz"];
    const TYPE_FILTERS: &[Option<&[&str]>] = &[None, Some(&["t"]), Some(&["message"])];

    #[derive(Debug, Clone)]
    struct Spec {
        topic: usize,
        broadcast: bool,
        typed: bool,
        key: Option<u8>,
        /// About 6 KB of data, so a case spans several 64 KiB segments.
        big: bool,
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append(Vec<Spec>),
        Read {
            pos: Pos,
            pattern: usize,
            types: usize,
            limit: usize,
        },
        LastId(usize),
        Trim,
        Reopen,
    }

    #[derive(Debug, Clone, Copy)]
    struct Setup {
        max_events: usize,
        cache_events: usize,
    }

    fn setup() -> impl Strategy<Value = Setup> {
        (
            prop_oneof![3usize..40, Just(1_000_000)],
            prop_oneof![Just(0usize), 1usize..20, Just(100_000)],
        )
            .prop_map(|(max_events, cache_events)| Setup {
                max_events,
                cache_events,
            })
    }

    fn op() -> impl Strategy<Value = Op> {
        let spec = (
            0..TOPICS.len(),
            proptest::bool::weighted(0.15),
            proptest::bool::ANY,
            proptest::option::weighted(0.3, 0u8..6),
            proptest::bool::weighted(0.3),
        )
            .prop_map(|(topic, broadcast, typed, key, big)| Spec {
                topic,
                broadcast,
                typed,
                key,
                big,
            });
        prop_oneof![
            4 => proptest::collection::vec(spec, 1..=6).prop_map(Op::Append),
            4 => (pos(), 0..PATTERNS.len(), 0..TYPE_FILTERS.len(), 1usize..=8).prop_map(
                |(pos, pattern, types, limit)| Op::Read {
                    pos,
                    pattern,
                    types,
                    limit,
                }
            ),
            1 => (0..TOPICS.len()).prop_map(Op::LastId),
            1 => Just(Op::Trim),
            1 => Just(Op::Reopen),
        ]
    }

    fn sent(s: &Spec, n: u64) -> Sent {
        let data = if s.big {
            format!("big {n}\n{}", "x".repeat(6000))
        } else {
            format!("d{n}\nline")
        };
        Sent {
            topics: vec![TOPICS[s.topic]],
            broadcast: s.broadcast,
            event_type: s.typed.then_some("t"),
            data,
            key: s.key,
        }
    }

    async fn run(setup: Setup, ops: Vec<Op>) {
        let dir = tempfile::tempdir().unwrap();
        let opts = DurableOptions {
            retention: Retention {
                max_events: setup.max_events,
                ..Retention::default()
            },
            segment_bytes: 64 * 1024,
            cache_events: setup.cache_events,
            ..DurableOptions::default()
        };
        let mut log = open(dir.path(), opts);
        let mut model = Model::default();
        for op in ops {
            // The newest `max_events` are retained.
            let r = model.stored.len().saturating_sub(setup.max_events);
            match op {
                Op::Append(specs) => model.append(&log, &specs, sent).await,
                Op::Read {
                    pos,
                    pattern,
                    types,
                    limit,
                } => {
                    let pattern = PATTERNS[pattern];
                    let types = TYPE_FILTERS[types];
                    let filter = common::filter(&[pattern], types);
                    let stored = &model.stored;
                    let newest = stored.last().map_or(0, |e| e.id.0);
                    // (position, index of the first event expected, gap)
                    let (position, start, gap) = match pos {
                        Pos::Oldest => (Position::Oldest, r, false),
                        Pos::AfterStored(n) if !stored.is_empty() => {
                            let k = n % stored.len();
                            let gone = k + 1 < r;
                            let start = if gone { r } else { k + 1 };
                            (Position::After(stored[k].id), start, gone)
                        }
                        Pos::AfterStored(_) | Pos::Zero => (Position::After(EventId(0)), r, true),
                        Pos::Future(d) => (
                            Position::After(EventId(if newest == 0 {
                                u64::MAX - d
                            } else {
                                newest + d
                            })),
                            r,
                            true,
                        ),
                    };
                    let gap = gap.then(|| stored.get(r).map(|e| e.id));
                    let expected = model.expect(start, &[pattern], types, gap);
                    let what = format!("{pattern} {types:?}");
                    model
                        .check_read(&log, position, &filter, limit, &expected, &what)
                        .await;
                }
                Op::LastId(t) => model.check_last_id(&log, TOPICS[t], r).await,
                Op::Trim => log.trim(),
                Op::Reopen => {
                    drop(log);
                    log = open_clean(dir.path(), opts);
                    assert_eq!(*log.head().borrow(), model.stored.last().map(|e| e.id));
                }
            }
        }
    }

    #[test]
    fn durable_log_matches_the_model_across_reopens() {
        let strategy = (setup(), proptest::collection::vec(op(), 1..60));
        run_cases(strategy, |(setup, ops)| run(setup, ops));
    }
}
