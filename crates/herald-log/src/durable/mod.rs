//! The durable event log: a segmented append-only log in a data directory,
//! written by one thread with group commit.
//!
//! # Invariants
//!
//! - An `append` is answered only after its records are written (`Process`)
//!   or written and `fdatasync`ed (`Fsync`): acknowledged = on disk (in the
//!   page cache for `Process`). A failed write or sync answers an error to
//!   every request of its group and cuts the files back: nothing of it is
//!   served (see Write failures).
//! - Ids strictly increase in append order, across restarts too: the first id
//!   of an empty directory is the wall clock in microseconds (like
//!   `MemoryLog`, so ids keep increasing even across a wiped directory), then
//!   last id + 1. Ids are compared, never counted: a cut in recovery can leave
//!   a hole, and after a cut ids jump to the wall clock (see Recovery).
//! - Readers never see past a segment's committed length, which the writer
//!   moves only after the write (and sync) returned; the disk always holds
//!   everything the cache holds (segment metadata is updated before the
//!   cache), so a read may mix or switch sources freely.
//! - Gap rules and paging are `MemoryLog`'s, from one home (`crate::page`):
//!   `After(x)` with `x` past the last issued id, or `x + 1` older than the
//!   oldest retained id, reports a gap and reads from the oldest.
//!
//! # On disk
//!
//! ```text
//! DIR/LOCK                          flock'ed for the life of the log (pid inside)
//! DIR/segments/{first_id:020}.log   names sort as ids; the last one is active
//! DIR/segments/*.corrupt            damaged bytes or headerless files set aside by recovery
//! DIR/segments/*.stray              files named like segments that are not, set aside
//! ```
//!
//! A segment is the 8-byte header `HERALDL1` (format version 1) followed by
//! records, all integers little-endian:
//!
//! ```text
//! len: u32 | crc32: u32 (crc32fast over body) | body (len bytes)
//! body = id: u64 | stored_at_s: u32 | flags: u8   (bit0 broadcast, bit1 retry,
//!                                                 bit2 type, bit3 key)
//!        | retry: u64                   if bit1
//!        | ntopics: u16 | (len: u16, utf-8)*
//!        | type (len: u16, utf-8)       if bit2
//!        | idempotency key (len: u16, utf-8) if bit3
//!        | data_len: u32 | data (utf-8, as published)
//! ```
//!
//! A record holds its data, not its SSE frame: the frame is rebuilt (once)
//! when the event is read, and the data is the smaller of the two. Records
//! in a segment have ids from its name on and below the next segment's first
//! record.
//!
//! # Writing: group commit
//!
//! `append` sends its batch and a oneshot over a channel to the writer thread.
//! The thread blocks for one request, then takes every request already waiting
//! (up to 8 MiB of payload) as one group: it gives ids, applies idempotency
//! (a key seen within `idempotency_window`, in an earlier group or earlier in
//! this one, returns the first id and stores nothing), encodes every record
//! into one buffer and writes it with one `pwrite` (two if the group crosses
//! a segment rollover), then `fdatasync` in `Fsync` mode. Only then does it
//! update the segments' metadata, build the `Event`s (frames encoded into a
//! `FrameArena`, topic and type names interned), push them into the cache,
//! move the `head` and answer. So a busy log costs one syscall (and one sync)
//! per group, not per event. A segment is closed when the next record would
//! take it past `segment_bytes` (a new segment's name is made durable with a
//! directory fsync in `Fsync` mode).
//!
//! Durability: `Process` survives `kill -9`, panics and OOM kills (the kernel
//! has the bytes); a power loss or kernel crash can lose the last
//! acknowledged events. `Fsync` survives that too. Either way, a torn tail is
//! repaired at open.
//!
//! # Reading
//!
//! The newest `cache_events` events are kept in memory (`VecDeque<Arc<Event>>`,
//! reloaded from the tail at open); `tail.cache_from` is the id from which
//! every record is in it. A read starting there is served under a read lock,
//! without I/O. Else it runs in `spawn_blocking`: the segment holding the
//! position is found in a `BTreeMap` by first id, its sparse index (every
//! 128th record: id, offset, time) gives where to start, and records are read
//! forward in 64 KiB `pread` blocks, checked (crc), decoded, filtered (names
//! first, so records that do not match cost no frame encoding) until `limit`
//! matches or 8192 examined events. Nothing is loaded whole. The cache and
//! the disk are two `page::Source`s: where a read starts, its gap and how a
//! page is filled are decided by `crate::page` for both (and for
//! `MemoryLog`), so they cannot disagree.
//!
//! # Write failures
//!
//! A group is all or nothing. When a write or a sync of a group fails:
//! - every request of the group is answered `LogError::Unavailable` (with the
//!   error), ids given to it are given again to the next group (none was
//!   seen: the head, the cache and the segment metadata were not touched),
//!   and `ready()` reports the error until a group is written again;
//! - the segments the group created are removed, and the segment that was
//!   active is cut back (`ftruncate`, then `fdatasync` in `Fsync` mode) to
//!   its length before the group, so neither readers nor a restart ever see
//!   a record of it. After a failed `fdatasync` the kernel may have dropped
//!   the unsynced pages; the cut removes exactly those, the acknowledged
//!   bytes before them were synced by their own group;
//! - the next group is tried as usual: a passing fault costs one group.
//!
//! When undoing fails too (the cut, its sync, or a removal), records of the
//! failed group may still be on disk. Writing on would put acknowledged
//! records after them, where no open could tell them apart, so the writer
//! refuses every later group ("could not undo a failed write (...);
//! refusing further writes until restart", also from `ready()`); reads go
//! on serving the acknowledged events. It also overwrites the record header
//! where the failed group starts with `record::CUT_MARK` (an impossible
//! length, then `CUT!`), so the next open cuts the file there and drops the
//! group, complete records included (damage elsewhere is resynced past,
//! a mark never is); a segment the group created and that could not be deleted
//! gets the same mark at its first record. Only if that write fails as
//! well (a disk that takes no write at all) can a restart find complete
//! records of the failed group and serve them: acknowledged events are
//! never lost, but those appends, answered with an error, may then be
//! stored after all (a publisher's retry with an idempotency key is still
//! deduplicated).
//!
//! # The filesystem seam
//!
//! Every change to segment files after open goes through the `Filesystem`
//! trait (`fs.rs`): the writer's `pwrite`, `fdatasync`, segment creation
//! (create, header, directory sync), the undo's `ftruncate` and unlink, and
//! retention's unlink. `StdFs` (plain `std::fs`) is the default; with the
//! `fault-injection` feature (enabled by this crate's tests only),
//! `DurableLog::open_with_filesystem` takes another, such as `FaultyFs`,
//! which fails chosen calls (torn writes included) so the rules above are
//! tested (`tests/faults.rs`). The seam works on real `File`s, which readers
//! `pread` directly; it costs one dynamic call per write or sync of a group,
//! never per event. Recovery at open repairs with `std::fs` directly: its
//! failures are errors of `open`, with nothing acknowledged at stake.
//!
//! # Retention
//!
//! `trim()` (call it every second) applies all three; reads apply the
//! resulting floor immediately, files go later:
//! - count: the oldest retained id is that of the `max_events`-th newest
//!   record, found from runs of consecutive ids (so holes and jumps count
//!   right); exact, and applied at read time even between trims;
//! - age: exact within the cache, at sparse-index granularity (128 records)
//!   on disk; a segment whose newest event is too old is entirely gone;
//! - bytes: the oldest segments are deleted while the segment files total more
//!   than `max_bytes` (also checked at each rollover), so disk use stays
//!   within `max_bytes` + one segment. `max_bytes` counts disk bytes here,
//!   not payload bytes as in `MemoryLog`.
//!
//! A segment whose events are all gone is deleted (unlink; readers holding it
//! keep their file handle) unless it holds an idempotency key still inside
//! the window: keys are rebuilt from the segments at open, so a restart keeps
//! deduplicating. Retention by bytes deletes such a segment all the same (the
//! disk bound wins); the key is then forgotten at the next restart only. The
//! active segment is never deleted: it carries the last id across restarts.
//!
//! # Recovery (at open)
//!
//! Every record of every segment is checked (length, crc, decoding, ids
//! increasing and within the segment's range), which also rebuilds the
//! sparse indexes, the id runs and the idempotency keys of the window.
//! Segment names are bounds only once the content bears them out:
//! - Entries named like a segment that are not regular files (a directory,
//!   a symlink) are skipped with a warning and left alone.
//! - A file without the `HERALDL1` header is renamed `*.corrupt`.
//! - A file whose first valid record is older than its name (a segment is
//!   named by the id it was created for: its first record's, or the next id
//!   of an idle log), or that holds no valid record, is renamed `*.stray`
//!   and never read, unless it is the empty active segment: the last file,
//!   above every segment with records and not ahead of the clock. A name
//!   never raises the next id; a stray `18446744073709551615.log` is just a
//!   file set aside.
//! - A bad record (bad length, crc, decoding or id) followed by a valid
//!   record is *damage*: recovery resyncs, scanning forward byte by byte for
//!   the next position where a whole record verifies (length, crc, decoding,
//!   and an id above the last good one and within the segment's range:
//!   random bytes pass all of it about once in 2^32 tries, and stale copies
//!   of older records fail the id test). The damaged range is copied to
//!   `{segment}.{start}-{end}.corrupt`, reported (an error naming the file,
//!   offsets and bytes), and becomes a *hole* of the segment (`SegMeta::
//!   holes`, in memory): every cursor steps over it, so it is never served,
//!   and the records after it are. The segment file is not rewritten, so a
//!   restart finds and reports the same damage again (until retention
//!   deletes the segment). Damage running to the end of a segment that is
//!   not the last is set aside the same way, then cut off.
//! - Only damage running to the end of the last segment, with no valid
//!   record after it, is a *torn write*: never acknowledged, cut, with a
//!   warning naming the file, offset and bytes. So is everything from a
//!   `record::CUT_MARK`, which the writer puts where a failed group it could
//!   not cut back starts (see Write failures).
//! - Ids lost in a hole are not reused (later ids are above them), and a
//!   reader crossing a hole gets no `herald.gap`: the gap rule (`page.rs`)
//!   is about retention, and ids are compared, never counted. The loss is
//!   an operator matter: it is in the error log and the `.corrupt` file.
//! - After any cut or set-aside file, the next id jumps to at least the wall
//!   clock in microseconds (`crate::ids`): ids of records no longer read may
//!   have been acknowledged and seen, and must never be issued again.
//! - Id arithmetic is checked: an append that would need an id past
//!   `u64::MAX - 1` is refused (`LogError::Unavailable`), never wrapped.
//!
//! Resync cost, measured with the release binary: start-up with 32 MiB of
//! random bytes after the last record of a segment, median of 5 runs,
//! 263 ms, against 49 ms for the same directory without them (5.4x).
//!
//! What was found is in [`DurableLog::recovery_report`].
//!
//! # Why not SQLite or fjall
//!
//! An event log needs append, read forward from an id, drop the oldest, and
//! survive a crash; it needs no updates, secondary indexes or compaction.
//! This is about 2,100 lines (without comments, tests and the test-only
//! `FaultyFs`) we can read end to end: one `write()` per group
//! commit (SQLite in WAL mode writes WAL frames plus B-tree pages and its own
//! locks; an LSM tree adds a memtable, a WAL and compactions that rewrite the
//! data we only ever append and delete whole), retention is an unlink, and
//! recovery reports record by record what it cut and why, which an opaque
//! engine cannot. It also adds no C build or large dependency (crc32fast is
//! the only new crate).
//!
//! # Measured
//!
//! `cargo run --release -p herald-log --example durable_bench -- --dir /tmp`
//! on the 2-core development VM (a virtual disk whose `fdatasync` takes
//! about 0.2 ms; expect more on real disks), 100-byte events:
//!
//! | acknowledged appends         | `Process`        | `Fsync`          |
//! |------------------------------|------------------|------------------|
//! | 1 appender, batches of 1     | 23,000–47,000/s (ack p50 15–45 µs, p99 85 µs) | 4,700/s (p50 0.2 ms, p99 0.5–0.7 ms) |
//! | 64 appenders, batches of 1   | 410,000–440,000/s (p50 0.14 ms, p99 0.3 ms) | 108,000–115,000/s (p50 0.5 ms, p99 1.2–1.7 ms) |
//! | 1 appender, batches of 100   | 550,000–580,000/s (p50 0.12 ms, p99 0.4 ms) | 290,000/s (p50 0.3 ms, p99 0.4 ms) |
//! | 64 appenders, batches of 100 | 1,050,000/s (p50 5.7 ms, p99 11 ms) | 1,000,000/s (p50 5.5 ms, p99 11 ms) |
//!
//! - Disk: 140 bytes per event with 100 bytes of data and one 11-byte topic.
//! - Open (full recovery scan) of 1,010,000 events: 0.2 s.
//! - Resume 1,000,000 events back, all from disk (cache of 1,000), following
//!   `scanned_to`: 0.65 s in pages of 128 (a connection's catch-up page),
//!   0.32 s in pages of 1,024 (about 1.5 and 3 million events/s).

#[cfg(feature = "fault-injection")]
mod fault;
mod fs;
mod open;
mod read;
mod record;
mod segment;
mod writer;

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use async_trait::async_trait;
use herald_core::{
    now_ms, Appended, Event, EventId, EventLog, Filter, LogError, NewEvent, Position, ReadBatch,
    Topic,
};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{oneshot, watch};

use crate::memory::Retention;
use segment::Segment;

#[cfg(feature = "fault-injection")]
pub use fault::{FaultyFs, FsOp};
pub use fs::{Filesystem, StdFs};
pub use record::FORMAT_VERSION;
pub use record::{
    MAX_BODY, MAX_RECORD_STRING_BYTES, MAX_RECORD_TOPICS, RECORD_FIXED_BYTES,
    RECORD_STRING_OVERHEAD,
};

/// Events `last_id_for_topic` examines on disk at most before it answers
/// "none retained" (a topic silent for longer than this is treated as new).
const MAX_TOPIC_SCAN: u64 = 1_000_000;
/// The smallest segment: smaller would mean a file per few hundred events.
const MIN_SEGMENT_BYTES: u64 = 64 * 1024;

/// When `append` returns, relative to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// After `write()`: the event is in the kernel's page cache and survives
    /// the process being killed (`kill -9`, a panic, an OOM kill), not a
    /// power loss or kernel crash.
    #[default]
    Process,
    /// After `fdatasync()`: the event survives a power loss too.
    Fsync,
}

/// How a [`DurableLog`] is kept.
#[derive(Debug, Clone, Copy)]
pub struct DurableOptions {
    /// How much history is kept (count, disk bytes, age, idempotency window).
    pub retention: Retention,
    /// When an append is acknowledged.
    pub durability: Durability,
    /// Size at which a segment file is closed and a new one started. Clamped
    /// to `retention.max_bytes / 8` (so retention by bytes is fine-grained)
    /// and to at least 64 KiB.
    pub segment_bytes: u64,
    /// The newest events kept in memory, ready to serve without a disk read.
    pub cache_events: usize,
}

impl Default for DurableOptions {
    fn default() -> Self {
        Self {
            retention: Retention::default(),
            durability: Durability::Process,
            segment_bytes: 64 << 20,
            cache_events: 100_000,
        }
    }
}

/// Why a data directory could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DurableError {
    /// Another process (or another log in this one) holds the directory.
    #[error(
        "the data directory {} is in use by another Herald (its LOCK file is locked); stop that process or choose another data directory",
        .0.display()
    )]
    Locked(PathBuf),
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl DurableError {
    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}

/// What [`DurableLog::open`] found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files in use after recovery.
    pub segments: usize,
    /// Events found on disk.
    pub events: u64,
    /// The oldest id on disk.
    pub first_id: Option<EventId>,
    /// The newest id on disk.
    pub last_id: Option<EventId>,
    /// Bytes cut off a torn write at the tail of the log (never
    /// acknowledged).
    pub dropped_bytes: u64,
    /// The last good id before the torn tail, if one was cut.
    pub dropped_at_id: Option<EventId>,
    /// Bytes of damaged records set aside (copied to `.corrupt` files and
    /// never served); acknowledged events may have been among them.
    pub damaged_bytes: u64,
    /// Files recovery wrote or renamed aside (`.corrupt`, `.stray`).
    pub set_aside: Vec<PathBuf>,
    /// One line per repair, naming the file and offset.
    pub notes: Vec<String>,
}

impl RecoveryReport {
    /// Whether anything had to be repaired.
    pub fn is_clean(&self) -> bool {
        self.dropped_bytes == 0 && self.damaged_bytes == 0 && self.notes.is_empty()
    }
}

/// State shared by the handle, the writer thread and blocking reads.
#[derive(Debug)]
struct Shared {
    /// Where segment files are changed (see `fs`).
    fs: Arc<dyn Filesystem>,
    seg_dir: PathBuf,
    retention: Retention,
    durability: Durability,
    segment_bytes: u64,
    cache_events: usize,
    /// Every segment by its first id; the last one is the active one.
    segments: RwLock<BTreeMap<u64, Arc<Segment>>>,
    /// The newest events and the next id, changed together by the writer.
    tail: RwLock<Tail>,
    /// Ids below this are gone (deleted segments, age). Only grows. Count
    /// retention is applied on top of it at read time.
    floor: AtomicU64,
    /// The newest stored id.
    head: watch::Sender<Option<EventId>>,
    /// Cleared when the writer thread exits for any reason.
    writer_alive: AtomicBool,
    /// Why the last group write failed; cleared by the next success.
    write_error: Mutex<Option<String>>,
}

/// The in-memory end of the log.
#[derive(Debug)]
struct Tail {
    /// The newest `cache_events` events, oldest first.
    events: VecDeque<Arc<Event>>,
    /// Every record with an id `>= cache_from` is in `events`: reads from
    /// there need no disk.
    cache_from: u64,
    /// The id the next stored event gets; `next_id - 1` is the last issued.
    next_id: u64,
    /// The ids of the records on disk as runs of consecutive ids, oldest
    /// first, so retention by count can find the `max_events`-th newest
    /// record without assuming ids have no holes (a cut in recovery or a
    /// set-aside file makes ids jump). Usually one run.
    runs: VecDeque<Run>,
}

/// Records with the consecutive ids `first..first + len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    first: u64,
    len: u64,
}

impl Tail {
    /// Keeps `cache_from` true after events were added or removed.
    fn reset_cache_from(&mut self) {
        self.cache_from = self.events.front().map_or(self.next_id, |e| e.id.0);
    }

    /// Accounts for records `first..first + len` (newer than all others).
    fn push_run(&mut self, first: u64, len: u64) {
        match self.runs.back_mut() {
            Some(run) if run.first + run.len == first => run.len += len,
            _ => self.runs.push_back(Run { first, len }),
        }
    }

    /// The oldest id retention by count keeps: that of the `max_events`-th
    /// newest record (past the newest when `max_events` is 0).
    fn count_floor(&self, max_events: usize) -> u64 {
        let mut keep = max_events as u64;
        for run in self.runs.iter().rev() {
            if run.len > keep {
                return run.first + (run.len - keep);
            }
            keep -= run.len;
        }
        0
    }

    /// Forgets runs below `floor` (they can never count again).
    fn prune_runs(&mut self, floor: u64) {
        while let Some(run) = self.runs.front_mut() {
            if run.first >= floor {
                break;
            }
            if run.first + run.len <= floor {
                self.runs.pop_front();
            } else {
                run.len -= floor - run.first;
                run.first = floor;
            }
        }
    }
}

impl Shared {
    /// The oldest id reads may return: `floor`, raised by count retention.
    fn effective_floor(&self, tail: &Tail) -> u64 {
        let by_count = tail.count_floor(self.retention.max_events);
        self.floor.load(Ordering::Acquire).max(by_count)
    }

    fn raise_floor(&self, to: u64) {
        self.floor.fetch_max(to, Ordering::AcqRel);
    }

    fn disk_bytes(&self) -> u64 {
        self.segments
            .read()
            .values()
            .map(|s| s.meta.read().len)
            .sum()
    }

    /// Removes a segment (never the active one) and unlinks its file.
    fn delete_segment(&self, first_id: u64, why: &str) {
        let removed = {
            let mut segments = self.segments.write();
            if segments.keys().next_back() == Some(&first_id) {
                return;
            }
            if let Some(seg) = segments.get(&first_id) {
                // Raise the floor before the segment disappears, so no
                // reader sees its events gone without a gap.
                let next = seg
                    .meta
                    .read()
                    .last
                    .map_or(first_id, |l| l.saturating_add(1));
                self.raise_floor(next);
            }
            segments.remove(&first_id)
        };
        if let Some(seg) = removed {
            tracing::debug!(path = %seg.path.display(), why, "deleting a segment");
            if let Err(err) = self.fs.remove_file(&seg.path) {
                tracing::warn!(path = %seg.path.display(), %err, "could not delete a segment file");
            }
        }
    }

    /// Deletes the oldest segments while the log is over its byte budget.
    fn trim_bytes(&self) {
        loop {
            let oldest = {
                let segments = self.segments.read();
                let total: u64 = segments.values().map(|s| s.meta.read().len).sum();
                if segments.len() < 2 || total <= self.retention.max_bytes as u64 {
                    return;
                }
                segments.keys().next().copied()
            };
            match oldest {
                Some(first_id) => self.delete_segment(first_id, "retention by bytes"),
                None => return,
            }
        }
    }

    /// Applies retention by age and count, then by bytes.
    fn trim(&self) {
        let now = now_ms();
        let max_age_ms = self.retention.max_age.as_millis() as u64;
        let too_old =
            |stored_at_s: u32| now.saturating_sub(u64::from(stored_at_s) * 1000) > max_age_ms;

        // Age: where the first event young enough is, at index granularity
        // on disk and exactly in the cache.
        let segments: Vec<Arc<Segment>> = self.segments.read().values().cloned().collect();
        for seg in &segments {
            let meta = seg.meta.read();
            let Some(last) = meta.last else { continue };
            if too_old(meta.newest_s) {
                self.raise_floor(last.saturating_add(1));
                continue;
            }
            let old = meta.index.partition_point(|e| too_old(e.stored_at_s));
            if let Some(e) = old.checked_sub(1).and_then(|i| meta.index.get(i)) {
                self.raise_floor(e.id.saturating_add(1));
            }
            break;
        }
        {
            let tail = self.tail.read();
            let old = tail.events.partition_point(|e| too_old(e.stored_at_s));
            if old > 0 {
                let to = tail.events.get(old).map_or(tail.next_id, |e| e.id.0);
                self.raise_floor(to);
            }
        }

        // Count and age: segments whose every event is below the floor,
        // once their idempotency keys have expired (the keys are rebuilt
        // from the segments at open).
        let floor = self.effective_floor(&self.tail.read());
        let window_ms = self.retention.idempotency_window.as_millis() as u64;
        for seg in &segments {
            let (gone, keys_live) = {
                let meta = seg.meta.read();
                let key_ms = u64::from(meta.newest_key_s) * 1000;
                (
                    meta.last.is_none_or(|last| last < floor),
                    meta.newest_key_s > 0 && now.saturating_sub(key_ms) <= window_ms,
                )
            };
            if !gone {
                break;
            }
            if !keys_live {
                self.delete_segment(seg.first_id, "retention by count or age");
            }
        }
        self.trim_bytes();

        // The cache keeps no event reads would skip.
        let mut tail = self.tail.write();
        let floor = self.effective_floor(&tail);
        // Pruned runs no longer count, so the count floor is kept in `floor`.
        self.raise_floor(floor);
        tail.prune_runs(floor);
        let below = tail.events.partition_point(|e| e.id.0 < floor);
        if below > 0 {
            tail.events.drain(..below);
            tail.reset_cache_from();
        }
    }
}

/// A request to the writer thread.
#[derive(Debug)]
struct Request {
    batch: Vec<NewEvent>,
    reply: oneshot::Sender<Result<Vec<Appended>, LogError>>,
}

/// An [`EventLog`] stored in a data directory. See the module doc.
#[derive(Debug)]
pub struct DurableLog {
    shared: Arc<Shared>,
    /// `None` only while dropping: closing it stops the writer.
    tx: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    report: RecoveryReport,
    /// Held (and locked) for the life of the log; dropped last.
    _lock: File,
}

impl DurableLog {
    /// Opens (or creates) the log in `dir`, recovering from a crash if needed.
    pub fn open(dir: &Path, options: DurableOptions) -> Result<Self, DurableError> {
        open::open(dir, options, Arc::new(StdFs))
    }

    /// [`DurableLog::open`], with segment files changed through `fs` (a
    /// [`FaultyFs`] in tests) instead of the real filesystem.
    #[cfg(feature = "fault-injection")]
    pub fn open_with_filesystem(
        dir: &Path,
        options: DurableOptions,
        fs: Arc<dyn Filesystem>,
    ) -> Result<Self, DurableError> {
        open::open(dir, options, fs)
    }

    /// Applies retention (count, age, bytes). Call it about every second; it
    /// only briefly takes locks the writer needs, but may unlink segment
    /// files (a blocking call of a few milliseconds at most).
    pub fn trim(&self) {
        self.shared.trim();
    }

    /// What opening found and repaired.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    /// Bytes of segment files in use.
    pub fn disk_bytes(&self) -> u64 {
        self.shared.disk_bytes()
    }
}

impl Drop for DurableLog {
    fn drop(&mut self) {
        // Closing the channel lets the writer finish queued groups and exit;
        // joining it means the files are closed before the lock is released.
        self.tx.take();
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                tracing::error!("the durable log writer thread panicked");
            }
        }
    }
}

fn unavailable(what: &str) -> LogError {
    LogError::Unavailable(what.to_owned())
}

#[async_trait]
impl EventLog for DurableLog {
    async fn append(&self, batch: Vec<NewEvent>) -> Result<Vec<Appended>, LogError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| unavailable("the durable log is closing"))?;
        let (reply, answer) = oneshot::channel();
        tx.send(Request { batch, reply })
            .map_err(|_| unavailable("the durable log writer has stopped"))?;
        answer
            .await
            .map_err(|_| unavailable("the durable log writer has stopped"))?
    }

    async fn read_after(
        &self,
        from: Position,
        filter: &Filter,
        limit: usize,
    ) -> Result<ReadBatch, LogError> {
        if let Some(batch) = read::read_cached(&self.shared, from, filter, limit) {
            return Ok(batch);
        }
        let shared = self.shared.clone();
        let filter = filter.clone();
        tokio::task::spawn_blocking(move || read::read_disk(&shared, from, &filter, limit))
            .await
            .map_err(|err| LogError::Unavailable(format!("disk read failed: {err}")))?
            .map_err(|err| LogError::Unavailable(format!("disk read failed: {err}")))
    }

    fn head(&self) -> watch::Receiver<Option<EventId>> {
        self.shared.head.subscribe()
    }

    async fn last_id_for_topic(&self, topic: &Topic) -> Result<Option<EventId>, LogError> {
        let (floor, cache_from) = {
            let tail = self.shared.tail.read();
            let floor = self.shared.effective_floor(&tail);
            let found = tail
                .events
                .iter()
                .rev()
                .take_while(|e| e.id.0 >= floor)
                .find(|e| e.topics.contains(topic));
            if let Some(e) = found {
                return Ok(Some(e.id));
            }
            (floor, tail.cache_from)
        };
        if floor >= cache_from {
            return Ok(None);
        }
        let shared = self.shared.clone();
        let topic = topic.clone();
        tokio::task::spawn_blocking(move || {
            read::last_for_topic_on_disk(&shared, topic.as_str(), floor, cache_from)
        })
        .await
        .map_err(|err| LogError::Unavailable(format!("disk read failed: {err}")))?
        .map(|id| id.map(EventId))
        .map_err(|err| LogError::Unavailable(format!("disk read failed: {err}")))
    }

    async fn ready(&self) -> Result<(), LogError> {
        if !self.shared.writer_alive.load(Ordering::Acquire) {
            return Err(unavailable("the durable log writer has stopped"));
        }
        match &*self.shared.write_error.lock() {
            Some(err) => Err(LogError::Unavailable(format!(
                "the last write to the durable log failed: {err}"
            ))),
            None => Ok(()),
        }
    }
}
