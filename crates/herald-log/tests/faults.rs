//! The durable log's storage failure rules, through the filesystem seam: a
//! log opened on a [`FaultyFs`] is a real log in a real directory whose
//! writes, syncs and truncates fail on request. Each test makes one group
//! of appends fail (several appends, queued behind a held write, except for
//! the rollover case), checks what the log answers and serves, then reopens
//! the directory on the real filesystem and checks what recovery keeps.

#![allow(clippy::unwrap_used)]

mod common;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;

use herald_core::{Appended, EventId, EventLog, Filter, LogError, Position};
use herald_log::{Durability, DurableLog, DurableOptions, FaultyFs, FsOp, Retention};

use common::durable::{append_n, open, open_clean, options, segment_files};
use common::{append, datas, ids, on, read_to_end};

type Answer<'a> = Pin<Box<dyn Future<Output = Result<Vec<Appended>, LogError>> + Send + 'a>>;

/// Appends this many requests (of two events each) as the failing group.
const GROUP: usize = 3;

/// Bytes of the record of a one-topic event on "a" with `data_len` bytes of
/// data (see the record format in the `durable` module doc).
fn record_len(data_len: usize) -> u64 {
    (8 + 8 + 4 + 1 + 2 + (2 + 1) + 4 + data_len) as u64
}

fn open_faulty(dir: &Path, options: DurableOptions) -> (DurableLog, Arc<FaultyFs>) {
    let fs = Arc::new(FaultyFs::new());
    let log = DurableLog::open_with_filesystem(dir, options, fs.clone()).unwrap();
    (log, fs)
}

/// The length of the active (last) segment file.
fn active_len(dir: &Path) -> u64 {
    let last = segment_files(dir).pop().unwrap();
    std::fs::metadata(last).unwrap().len()
}

/// Polls `answer` once: an append sends its request on the first poll.
fn send(answer: &mut Answer<'_>) {
    let mut cx = Context::from_waker(Waker::noop());
    assert!(
        answer.as_mut().poll(&mut cx).is_pending(),
        "answered at once"
    );
}

/// What the log answered for the held group and the failing one.
struct Outcome {
    /// The event of the group written before the failing one.
    held: EventId,
    /// The answers to the failing group's appends.
    failed: Vec<Result<Vec<Appended>, LogError>>,
}

/// Makes one group of [`GROUP`] appends (events "failed{i}/{j}") meet the
/// faults `arm` sets: the writer is held in `held_op` of the group before
/// (one event, "held", which is not affected), the appends are queued
/// behind it so they form the next group, then `arm` runs and the writer
/// goes on.
async fn fail_one_group(
    log: &DurableLog,
    fs: &FaultyFs,
    held_op: FsOp,
    arm: impl FnOnce(&FaultyFs),
) -> Outcome {
    fs.hold(held_op);
    let mut held: Answer<'_> = log.append(vec![on("a", "held")]);
    send(&mut held);
    assert!(
        fs.wait_held(Duration::from_secs(10)),
        "the writer never reached {held_op:?}"
    );
    let mut group: Vec<Answer<'_>> = (0..GROUP)
        .map(|i| {
            let batch = (0..2).map(|j| on("a", &format!("failed{i}/{j}"))).collect();
            log.append(batch)
        })
        .collect();
    for answer in &mut group {
        send(answer);
    }
    arm(fs);
    fs.release();
    let held = held.await.unwrap();
    assert_eq!(held.len(), 1);
    let mut failed = Vec::new();
    for answer in group {
        failed.push(answer.await);
    }
    Outcome {
        held: held[0].id,
        failed,
    }
}

/// Every answer is `Unavailable`; returns the messages.
fn unavailable(answers: &[Result<Vec<Appended>, LogError>]) -> Vec<String> {
    answers
        .iter()
        .map(|answer| match answer {
            Err(LogError::Unavailable(why)) => why.clone(),
            other => panic!("expected Unavailable, got {other:?}"),
        })
        .collect()
}

/// Everything the log serves, as (id, data), oldest first.
async fn served(log: &DurableLog) -> (Vec<EventId>, Vec<String>) {
    let (got, gap, _) = read_to_end(log, Position::Oldest, &Filter::everything(), 7).await;
    assert_eq!(gap, None);
    (ids(&got), datas(&got))
}

/// The acknowledged events of a test: ids and data.
#[derive(Debug, Default)]
struct Acked {
    ids: Vec<EventId>,
    datas: Vec<String>,
}

impl Acked {
    fn add(&mut self, ids: Vec<EventId>, datas: impl IntoIterator<Item = String>) {
        self.ids.extend(ids);
        self.datas.extend(datas);
    }

    fn last(&self) -> EventId {
        *self.ids.last().unwrap()
    }
}

/// Fills the log with 10 acknowledged events ("ok0".."ok9").
async fn start(log: &DurableLog) -> Acked {
    let mut acked = Acked::default();
    let written = append_n(log, 10, 4, "ok").await;
    acked.add(written, (0..10).map(|i| format!("ok{i}")));
    acked
}

/// The checks after a group failed and was cut back: every append of it
/// got an error, nothing of it is served or on disk, the next append works
/// and after a reopen exactly the acknowledged events are there.
async fn check_cut_back(
    dir: &Path,
    opts: DurableOptions,
    log: DurableLog,
    fs: &FaultyFs,
    mut acked: Acked,
    len_before: u64,
    outcome: Outcome,
) {
    acked.add(vec![outcome.held], ["held".to_owned()]);
    for why in unavailable(&outcome.failed) {
        assert!(why.contains("injected"), "{why}");
    }
    assert_eq!(*log.head().borrow(), Some(acked.last()), "head moved");
    assert_eq!(served(&log).await, (acked.ids.clone(), acked.datas.clone()));
    assert_eq!(
        active_len(dir),
        len_before + record_len("held".len()),
        "the failed group was not cut back"
    );
    assert!(
        log.ready().await.is_err(),
        "ready while the last write failed"
    );

    // The fault clears: the next append works, with a greater id.
    fs.heal();
    let next = append(&log, vec![on("a", "after")]).await;
    assert!(
        next[0] > acked.last(),
        "id {} not above {}",
        next[0],
        acked.last()
    );
    acked.add(next, ["after".to_owned()]);
    log.ready().await.unwrap();
    assert_eq!(served(&log).await, (acked.ids.clone(), acked.datas.clone()));

    // After a restart: exactly the acknowledged events, nothing to repair.
    drop(log);
    let log = open_clean(dir, opts);
    assert_eq!(served(&log).await, (acked.ids, acked.datas));
}

#[tokio::test]
async fn a_failed_write_fails_its_group_and_is_cut_back() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(Retention::default(), 1000);
    let (log, fs) = open_faulty(dir.path(), opts);
    let acked = start(&log).await;
    let len_before = active_len(dir.path());

    // The write writes half the group, then fails.
    let outcome = fail_one_group(&log, &fs, FsOp::Write, FaultyFs::tear_next_write).await;
    assert_eq!(fs.calls(FsOp::SetLen), 1, "no cut back");
    check_cut_back(dir.path(), opts, log, &fs, acked, len_before, outcome).await;
}

#[tokio::test]
async fn a_failed_fsync_fails_its_group_and_is_cut_back() {
    let dir = tempfile::tempdir().unwrap();
    let opts = DurableOptions {
        durability: Durability::Fsync,
        ..options(Retention::default(), 1000)
    };
    let (log, fs) = open_faulty(dir.path(), opts);
    let acked = start(&log).await;
    let len_before = active_len(dir.path());

    // The whole group is written, its sync fails (the held group's sync,
    // decided before the fault was set, succeeds; so does the cut's).
    let syncs = fs.calls(FsOp::SyncData);
    let outcome = fail_one_group(&log, &fs, FsOp::SyncData, |fs| {
        fs.fail_next(FsOp::SyncData, 1);
    })
    .await;
    // Held group, failed group, the cut.
    assert_eq!(fs.calls(FsOp::SyncData), syncs + 3);
    check_cut_back(dir.path(), opts, log, &fs, acked, len_before, outcome).await;
}

/// A faulty-fs log with 64 KiB segments whose first segment holds 63
/// records of 1030 bytes: less than one such record of room is left.
/// Returns the directory, the options, the log, its filesystem, the data of
/// each record and what was acknowledged.
async fn nearly_full_segment() -> (
    tempfile::TempDir,
    DurableOptions,
    DurableLog,
    Arc<FaultyFs>,
    String,
    Acked,
) {
    let dir = tempfile::tempdir().unwrap();
    let opts = DurableOptions {
        segment_bytes: 64 * 1024,
        ..options(Retention::default(), 1000)
    };
    let (log, fs) = open_faulty(dir.path(), opts);
    let data = "x".repeat(1000);
    let mut acked = Acked::default();
    for _ in 0..7 {
        let written = append(&log, (0..9).map(|_| on("a", &data)).collect()).await;
        acked.add(written, std::iter::repeat_n(data.clone(), 9));
    }
    (dir, opts, log, fs, data, acked)
}

#[tokio::test]
async fn a_failed_rollover_removes_the_new_segment_and_cuts_the_old_one_back() {
    let (dir, opts, log, fs, data, mut acked) = nearly_full_segment().await;
    assert_eq!(segment_files(dir.path()).len(), 1);
    let len_before = active_len(dir.path());
    assert!(65536 - len_before < record_len(1000));

    // A small event that fits, then one that needs a new segment: writes
    // are the small one's, the new segment's header, then the big one's.
    let writes = fs.calls(FsOp::Write);
    fs.fail_after(FsOp::Write, 2, 1);
    let answer = log.append(vec![on("a", "small"), on("a", &data)]).await;
    unavailable(&[answer]);
    assert_eq!(fs.calls(FsOp::Write), writes + 3);
    assert_eq!(
        segment_files(dir.path()).len(),
        1,
        "new segment left behind"
    );
    assert_eq!(active_len(dir.path()), len_before, "not cut back");
    assert_eq!(served(&log).await, (acked.ids.clone(), acked.datas.clone()));

    fs.heal();
    let next = append(&log, vec![on("a", "small"), on("a", &data)]).await;
    assert!(next[0] > acked.last());
    acked.add(next, ["small".to_owned(), data.clone()]);
    assert_eq!(segment_files(dir.path()).len(), 2);
    drop(log);
    let log = open_clean(dir.path(), opts);
    assert_eq!(served(&log).await, (acked.ids, acked.datas));
}

/// After a failed write whose cut back failed too: every later append is
/// refused with a clear error, readers get the acknowledged events.
async fn check_refusing(log: &DurableLog, fs: &FaultyFs, acked: &Acked, outcome: &Outcome) {
    for why in unavailable(&outcome.failed) {
        assert!(why.contains("refusing further writes"), "{why}");
    }
    // Even once the disk works again.
    fs.heal();
    for _ in 0..3 {
        let answer = log.append(vec![on("a", "refused")]).await;
        let why = unavailable(&[answer]).remove(0);
        assert!(
            why.contains("could not undo a failed write")
                && why.contains("refusing further writes until restart"),
            "{why}"
        );
    }
    let why = log.ready().await.unwrap_err().to_string();
    assert!(why.contains("refusing further writes"), "{why}");
    assert_eq!(*log.head().borrow(), Some(acked.last()));
    assert_eq!(served(log).await, (acked.ids.clone(), acked.datas.clone()));
}

/// Bytes of the failed group's buffer (six records of "failed{i}/{j}").
fn group_len() -> u64 {
    2 * GROUP as u64 * record_len("failed0/0".len())
}

#[tokio::test]
async fn a_failed_write_that_cannot_be_cut_back_stops_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(Retention::default(), 1000);
    let (log, fs) = open_faulty(dir.path(), opts);
    let mut acked = start(&log).await;
    let acked_len = active_len(dir.path()) + record_len("held".len());

    let outcome = fail_one_group(&log, &fs, FsOp::Write, |fs| {
        fs.tear_next_write();
        fs.fail_always(FsOp::SetLen);
    })
    .await;
    acked.add(vec![outcome.held], ["held".to_owned()]);
    // Half the group is on disk (three complete records), its first record
    // header zeroed to mark it damaged.
    assert_eq!(active_len(dir.path()), acked_len + group_len() / 2);
    check_refusing(&log, &fs, &acked, &outcome).await;

    // A restart drops exactly the failed group's bytes, its complete
    // records included, and takes appends again.
    drop(log);
    let log = open(dir.path(), opts);
    let report = log.recovery_report().clone();
    assert_eq!(report.dropped_at_id, Some(acked.last()), "{report:?}");
    assert_eq!(report.dropped_bytes, group_len() / 2, "{report:?}");
    assert_eq!(report.events, acked.ids.len() as u64);
    assert_eq!(active_len(dir.path()), acked_len);
    assert_eq!(served(&log).await, (acked.ids.clone(), acked.datas.clone()));
    let next = append(&log, vec![on("a", "after restart")]).await;
    assert!(next[0] > acked.last());
}

#[tokio::test]
async fn when_nothing_can_be_written_a_restart_keeps_every_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(Retention::default(), 1000);
    let (log, fs) = open_faulty(dir.path(), opts);
    let mut acked = start(&log).await;

    // Neither the cut nor the damage mark can be written.
    let outcome = fail_one_group(&log, &fs, FsOp::Write, |fs| {
        fs.tear_next_write();
        fs.fail_always(FsOp::Write);
        fs.fail_always(FsOp::SetLen);
    })
    .await;
    acked.add(vec![outcome.held], ["held".to_owned()]);
    check_refusing(&log, &fs, &acked, &outcome).await;

    // Recovery keeps every acknowledged event. The limit of what it can do
    // (see "Write failures" in the design doc): the complete records of the
    // failed group that reached the disk look like any other and are
    // served after the restart; nothing else is.
    drop(log);
    let log = open(dir.path(), opts);
    let (ids, datas) = served(&log).await;
    assert_eq!(ids[..acked.ids.len()], acked.ids[..]);
    assert_eq!(datas[..acked.datas.len()], acked.datas[..]);
    assert_eq!(
        datas[acked.datas.len()..],
        ["failed0/0", "failed0/1", "failed1/0"]
    );
    let next = append(&log, vec![on("a", "after restart")]).await;
    assert!(next[0] > *ids.last().unwrap());
}

#[tokio::test]
async fn a_new_segment_that_cannot_be_removed_is_marked_and_cut_at_restart() {
    let (dir, opts, log, fs, data, acked) = nearly_full_segment().await;
    // Four records that need a new segment: its header is written, then
    // half of the records (two complete ones) before the write fails, and
    // removing the segment fails too: the writer marks its first record
    // instead (and stops writing).
    fs.tear_write_after(1);
    fs.fail_always(FsOp::RemoveFile);
    let answer = log.append((0..4).map(|_| on("a", &data)).collect()).await;
    unavailable(&[answer]);
    assert_eq!(segment_files(dir.path()).len(), 2, "the new segment stays");
    drop(log);

    // A restart cuts at the mark (never resyncs past it to the complete
    // records of the failed group), serves exactly the acknowledged events,
    // and appends again.
    let log = open(dir.path(), opts);
    let report = log.recovery_report().clone();
    assert!(report.set_aside.is_empty(), "{report:?}");
    assert_eq!(report.damaged_bytes, 0, "{report:?}");
    assert_eq!(served(&log).await, (acked.ids.clone(), acked.datas.clone()));
    let next = append(&log, vec![on("a", "after restart")]).await;
    assert!(next[0] > acked.last());
}
