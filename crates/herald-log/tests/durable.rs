//! The durable log beyond the shared conformance suite: restarts, crashes
//! (torn and damaged files), the directory lock, retention on disk, reads
//! from disk, and `Fsync` mode. A model-based property test drives appends,
//! reads, trims and reopens against a plain in-memory model.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
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

/// Appends 100 equal-sized records (data "e100".."e199") in one segment;
/// returns their ids, the segment's path and one record's length.
async fn hundred_equal_records(dir: &Path, opts: DurableOptions) -> (Vec<EventId>, PathBuf, usize) {
    let log = open(dir, opts);
    let batch = (100..200).map(|i| on("a", &format!("e{i}"))).collect();
    let written = append(&log, batch).await;
    drop(log);
    let last = segment_files(dir).pop().unwrap();
    let len = std::fs::metadata(&last).unwrap().len() as usize;
    assert_eq!((len - 8) % 100, 0);
    (written, last, (len - 8) / 100)
}

/// Flips bits of the byte at `at` of the file at `path`.
fn flip(path: &Path, at: usize, bits: u8) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= bits;
    std::fs::write(path, &bytes).unwrap();
}

/// Every id of `written` but those at `missing`.
fn all_but(written: &[EventId], missing: &[usize]) -> Vec<EventId> {
    (0..written.len())
        .filter(|i| !missing.contains(i))
        .map(|i| written[i])
        .collect()
}

/// Files next to `segment` whose names end with `suffix`.
fn beside(segment: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(segment.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_str().unwrap().ends_with(suffix))
        .collect();
    found.sort();
    found
}

#[tokio::test]
async fn a_bad_checksum_mid_segment_sets_that_record_aside_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    for cache_events in [1000, 3] {
        let sub = dir.path().join(format!("cache{cache_events}"));
        let opts = options(Retention::default(), cache_events);
        let (written, last, record) = hundred_equal_records(&sub, opts).await;
        let original = std::fs::read(&last).unwrap();
        // The last data byte of record 50 (of the last segment, not its tail).
        let start = 8 + 50 * record;
        flip(&last, start + record - 1, 0x01);

        let log = open(&sub, opts);
        let report = log.recovery_report().clone();
        assert_eq!(report.dropped_bytes, 0, "{report:?}");
        assert_eq!(report.damaged_bytes, record as u64, "{report:?}");
        assert_eq!(report.events, 99);
        let note = &report.notes[0];
        assert!(note.contains("checksum"), "{note}");
        assert!(
            note.contains(&format!("after id {}", written[49])),
            "{note}"
        );
        assert!(
            note.contains(&format!("{start}..{}", start + record)),
            "{note}"
        );
        // The damaged bytes are kept in a file named by segment and offsets.
        let corrupt = beside(&last, ".corrupt");
        assert_eq!(corrupt.len(), 1, "{corrupt:?}");
        assert!(corrupt[0]
            .to_str()
            .unwrap()
            .ends_with(&format!(".log.{start}-{}.corrupt", start + record)));
        let kept = std::fs::read(&corrupt[0]).unwrap();
        assert_eq!(kept.len(), record);
        assert_eq!(kept[..record - 1], original[start..start + record - 1]);

        // Every other record is served, from the start and across the hole.
        let expected = all_but(&written, &[50]);
        let (got, gap, _) = read_to_end(&log, Position::Oldest, &everything(), 7).await;
        assert_eq!(gap, None);
        assert_eq!(ids(&got), expected);
        assert_eq!(got[50].data(), "e151");
        for from in [49, 50] {
            // From before the hole, and from the lost id itself (a client
            // that saw it before the damage): no gap, the next good one.
            let (got, gap, _) =
                read_to_end(&log, Position::After(written[from]), &everything(), 4).await;
            assert_eq!(gap, None);
            assert_eq!(ids(&got), written[51..].to_vec());
        }
        // Ids go on above every id issued.
        let next = append(&log, vec![on("a", "next")]).await[0];
        assert!(next > written[99]);
        drop(log);
        // A restart finds the same damage, and serves the same.
        let log = open(&sub, opts);
        assert_eq!(log.recovery_report().damaged_bytes, record as u64);
        let (got, _, _) = read_to_end(&log, Position::Oldest, &everything(), 1000).await;
        let mut expected = expected;
        expected.push(next);
        assert_eq!(ids(&got), expected);
    }
}

#[tokio::test]
async fn a_damaged_length_or_header_mid_segment_is_resynced_past() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(Retention::default(), 10);
    // (byte of the record to damage, bits): the length, the checksum, the id.
    for (case, (byte, bits)) in [(1usize, 0x40u8), (5, 0x01), (8, 0xff), (0, 0xff)]
        .into_iter()
        .enumerate()
    {
        let sub = dir.path().join(format!("case{case}"));
        let (written, last, record) = hundred_equal_records(&sub, opts).await;
        flip(&last, 8 + 30 * record + byte, bits);
        let log = open(&sub, opts);
        let report = log.recovery_report().clone();
        assert_eq!(report.dropped_bytes, 0, "case {case}: {report:?}");
        assert_eq!(report.events, 99, "case {case}: {report:?}");
        let (got, gap, _) = read_to_end(&log, Position::Oldest, &everything(), 16).await;
        assert_eq!(gap, None);
        assert_eq!(ids(&got), all_but(&written, &[30]), "case {case}");
    }
}

#[tokio::test]
async fn damage_in_the_last_record_is_a_torn_tail_and_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(Retention::default(), 1000);
    let (written, last, record) = hundred_equal_records(dir.path(), opts).await;
    flip(&last, 8 + 99 * record + 20, 0x01);
    let log = open(dir.path(), opts);
    let report = log.recovery_report().clone();
    assert_eq!(report.dropped_bytes, record as u64, "{report:?}");
    assert_eq!(report.damaged_bytes, 0, "{report:?}");
    assert!(report.notes[0].contains("never acknowledged"), "{report:?}");
    let (got, _, _) = read_to_end(&log, Position::Oldest, &everything(), 1000).await;
    assert_eq!(ids(&got), written[..99].to_vec());
}

#[tokio::test]
async fn resync_is_not_fooled_by_an_old_record_after_the_damage() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(Retention::default(), 1000);
    let (written, last, record) = hundred_equal_records(dir.path(), opts).await;
    // Record 10's bytes over records 60 and 61 (the header of 60 damaged):
    // a valid record, but older than the last good one, so not where
    // reading resumes; then the real record 62 is.
    let mut bytes = std::fs::read(&last).unwrap();
    let r10 = bytes[8 + 10 * record..8 + 11 * record].to_vec();
    let at = 8 + 60 * record;
    bytes[at] ^= 0xff;
    bytes[at + record..at + 2 * record].copy_from_slice(&r10);
    std::fs::write(&last, &bytes).unwrap();
    let log = open(dir.path(), opts);
    let report = log.recovery_report().clone();
    assert_eq!(report.damaged_bytes, 2 * record as u64, "{report:?}");
    // One range, from the damaged header to the real record 62: the copy
    // was never taken for where reading resumes.
    assert_eq!(report.set_aside.len(), 1, "{report:?}");
    let (start, end) = (8 + 60 * record, 8 + 62 * record);
    assert!(report.set_aside[0]
        .to_str()
        .unwrap()
        .ends_with(&format!(".{start}-{end}.corrupt")));
    let (got, _, _) = read_to_end(&log, Position::Oldest, &everything(), 1000).await;
    assert_eq!(ids(&got), all_but(&written, &[60, 61]));
}

#[tokio::test]
async fn damage_in_an_older_segment_loses_only_the_damaged_record() {
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
    let record = 8 + 8 + 4 + 1 + 2 + 3 + 4 + 1000;
    flip(&files[0], 8 + 9 * record + 20, 0xff);

    let log = open(dir.path(), opts);
    let report = log.recovery_report().clone();
    assert_eq!(report.damaged_bytes, record as u64, "{report:?}");
    assert_eq!(report.dropped_bytes, 0, "{report:?}");
    let expected = all_but(&written, &[9]);
    let (got, gap, _) = read_to_end(&log, Position::Oldest, &everything(), 7).await;
    assert_eq!(gap, None);
    assert_eq!(ids(&got), expected);
    // Reads across the hole work from any position.
    let (got, gap, _) = read_to_end(&log, Position::After(written[5]), &everything(), 3).await;
    assert_eq!(gap, None);
    assert_eq!(ids(&got), expected[6..].to_vec());
    let next = append(&log, vec![on("a", "next")]).await[0];
    assert!(next > written[199]);
}

#[tokio::test]
async fn garbage_to_the_end_of_an_older_segment_is_set_aside_not_called_torn() {
    let dir = tempfile::tempdir().unwrap();
    let opts = DurableOptions {
        segment_bytes: 64 * 1024,
        ..options(Retention::default(), 10)
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
    let record = 8 + 8 + 4 + 1 + 2 + 3 + 4 + 1000;
    let per_segment = (64 * 1024 - 8) / record;
    // Its last record's header.
    flip(&files[0], 8 + (per_segment - 1) * record, 0xff);
    let log = open(dir.path(), opts);
    let report = log.recovery_report().clone();
    assert_eq!(report.damaged_bytes, record as u64, "{report:?}");
    assert_eq!(report.dropped_bytes, 0, "{report:?}");
    assert!(!report.notes[0].contains("torn"), "{report:?}");
    assert_eq!(beside(&files[0], ".corrupt").len(), 1);
    let (got, _, _) = read_to_end(&log, Position::Oldest, &everything(), 1000).await;
    assert_eq!(ids(&got), all_but(&written, &[per_segment - 1]));
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
    // Ids come from the records, not from the set-aside file's name.
    let next = append(&log, vec![on("a", "next")]).await[0];
    assert!(next > written[4]);
    assert!(next.0 < u64::MAX / 2);
}

#[tokio::test]
async fn a_stray_max_id_file_gives_no_ids() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(Retention::default(), 10);
    let stray_name = format!("{:020}.log", u64::MAX);
    // Empty; only our header; our header and garbage; a real record under
    // the wrong name.
    let mut real = Vec::new();
    let contents: Vec<Vec<u8>> = {
        let probe = dir.path().join("probe");
        fill(&probe, opts, 1, 1, "x").await;
        real.extend(std::fs::read(segment_files(&probe).pop().unwrap()).unwrap());
        vec![
            Vec::new(),
            b"HERALDL1".to_vec(),
            [b"HERALDL1".as_slice(), &[0x5a; 300]].concat(),
            real,
        ]
    };
    for (case, content) in contents.into_iter().enumerate() {
        let sub = dir.path().join(format!("case{case}"));
        let written = fill(&sub, opts, 5, 5, "e").await;
        let stray = sub.join("segments").join(&stray_name);
        std::fs::write(&stray, &content).unwrap();
        let log = open(&sub, opts);
        let report = log.recovery_report().clone();
        assert!(!stray.exists(), "case {case}: {report:?}");
        assert_eq!(report.set_aside.len(), 1, "case {case}: {report:?}");
        assert_eq!(report.events, 5, "case {case}: {report:?}");
        let next = append(&log, vec![on("a", "n1"), on("a", "n2"), on("a", "n3")]).await;
        assert!(next[0] > written[4], "case {case}");
        assert!(next[0].0 < u64::MAX / 2, "case {case}: {next:?}");
        assert!(next[0] < next[1] && next[1] < next[2], "case {case}");
        let (got, gap, _) = read_to_end(&log, Position::After(written[4]), &everything(), 10).await;
        assert_eq!(gap, None);
        assert_eq!(ids(&got), next, "case {case}");
        drop(log);
        // The set-aside file stays aside.
        let log = open_clean(&sub, opts);
        assert_eq!(log.recovery_report().events, 8);
    }
}

#[tokio::test]
async fn a_directory_named_like_a_segment_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(Retention::default(), 10);
    let written = fill(dir.path(), opts, 5, 5, "e").await;
    let odd = dir.path().join("segments").join(format!("{:020}.log", 42));
    std::fs::create_dir(&odd).unwrap();
    let log = open(dir.path(), opts);
    assert!(log.recovery_report().notes[0].contains("not a regular file"));
    assert!(odd.is_dir());
    let (got, _, _) = read_to_end(&log, Position::Oldest, &everything(), 10).await;
    assert_eq!(ids(&got), written);
    let next = append(&log, vec![on("a", "next")]).await[0];
    assert!(next > written[4]);
}

#[tokio::test]
async fn ids_stop_at_u64_max_with_an_error_never_a_wrap() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(Retention::default(), 10);
    // A log whose last record is u64::MAX - 2: forge one by hand.
    let seg_dir = dir.path().join("segments");
    std::fs::create_dir_all(&seg_dir).unwrap();
    let probe = dir.path().join("probe");
    fill(&probe, opts, 1, 1, "x").await;
    let mut bytes = std::fs::read(segment_files(&probe).pop().unwrap()).unwrap();
    let top = u64::MAX - 2;
    bytes[16..24].copy_from_slice(&top.to_le_bytes());
    let crc = crc32fast::hash(&bytes[16..]);
    bytes[12..16].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(seg_dir.join(format!("{top:020}.log")), &bytes).unwrap();

    let log = open_clean(dir.path(), opts);
    assert_eq!(*log.head().borrow(), Some(EventId(top)));
    // Two ids would pass u64::MAX - 1: refused, nothing stored.
    assert!(log.append(vec![on("a", "1"), on("a", "2")]).await.is_err());
    let last = append(&log, vec![on("a", "last")]).await[0];
    assert_eq!(last, EventId(u64::MAX - 1));
    let err = log.append(vec![on("a", "more")]).await.unwrap_err();
    assert!(err.to_string().contains("exhausted"), "{err}");
    let (got, _, _) = read_to_end(&log, Position::Oldest, &everything(), 10).await;
    assert_eq!(ids(&got), vec![EventId(top), last]);
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
