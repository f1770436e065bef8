//! The writer thread: the only code that appends to segment files.
//!
//! It takes every request waiting in the channel as one group, gives ids,
//! encodes every record into one buffer, writes it with one `pwrite` per
//! segment touched (one, unless the group crosses a rollover), syncs it in
//! `Fsync` mode, and only then publishes the events (segment metadata,
//! cache, head) and answers. A failed write or sync answers an error to
//! the whole group and cuts the files back, so no record of a failed group
//! is served or survives; if the cut fails too, the writer refuses every
//! later group until a restart (see "Write failures" in the module doc of
//! `durable`). Files are changed only through `shared.fs`.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};

use herald_core::{now_ms, Appended, Event, EventId, FrameArena, LogError};

use super::fs::Filesystem;
use super::record::{self, SEGMENT_HEADER};
use super::segment::Segment;
use super::{Durability, Request, Shared};
use crate::idempotency::IdempotencyKeys;
use crate::names::Names;

/// A group stops taking requests past this many bytes of payload, so one
/// write (and the memory it needs) stays bounded under a burst.
const MAX_GROUP_BYTES: usize = 8 << 20;
/// Everything the writer thread owns.
#[derive(Debug)]
pub(super) struct Writer {
    pub shared: Arc<Shared>,
    pub rx: mpsc::Receiver<Request>,
    /// The segment being appended to (the last one in the map).
    pub active: Arc<Segment>,
    pub next_id: u64,
    pub keys: IdempotencyKeys,
    pub names: Names,
    pub arena: FrameArena,
    /// Set when a failed write could not be cut back: the file may hold
    /// records that were never acknowledged, so nothing more is written
    /// until a restart (whose recovery cleans the tail).
    pub poisoned: Option<String>,
}

/// One encoded record of the group buffer.
#[derive(Debug, Clone, Copy)]
struct Rec {
    id: u64,
    /// Its bytes are `buf[end - len..end]`.
    end: usize,
    len: usize,
    keyed: bool,
}

/// Records `range` of the group, written at `offset` of `seg`.
#[derive(Debug)]
struct Chunk {
    seg: Arc<Segment>,
    offset: u64,
    range: std::ops::Range<usize>,
}

/// Marks the writer dead however its thread ends (panics included), so
/// `ready()` reports it.
struct AliveGuard(Arc<Shared>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.writer_alive.store(false, Ordering::Release);
    }
}

impl Writer {
    /// Serves requests until every sender is gone.
    pub(super) fn run(mut self) {
        let _alive = AliveGuard(self.shared.clone());
        let mut buf = Vec::new();
        while let Ok(first) = self.rx.recv() {
            let mut bytes = payload(&first);
            let mut group = vec![first];
            while bytes < MAX_GROUP_BYTES {
                match self.rx.try_recv() {
                    Ok(next) => {
                        bytes += payload(&next);
                        group.push(next);
                    }
                    Err(_) => break,
                }
            }
            self.commit_group(group, &mut buf);
            // Do not keep a burst's buffer for ever.
            if buf.capacity() > 2 * MAX_GROUP_BYTES {
                buf = Vec::new();
            }
        }
    }

    fn commit_group(&mut self, group: Vec<Request>, buf: &mut Vec<u8>) {
        if let Some(why) = &self.poisoned {
            let why = why.clone();
            for req in group {
                let _ = req.reply.send(Err(LogError::Unavailable(why.clone())));
            }
            return;
        }
        let now = now_ms();
        let stored_at_s = (now / 1000) as u32;
        let window_ms = self.shared.retention.idempotency_window.as_millis() as u64;
        self.keys.expire(now, window_ms);

        // Ids, idempotency and encoding, for the whole group.
        buf.clear();
        let first_new_id = self.next_id;
        let mut records = Vec::new();
        let mut fresh_keys: HashMap<&str, EventId> = HashMap::new();
        let mut outcomes: Vec<Result<Vec<Appended>, String>> = Vec::with_capacity(group.len());
        for req in &group {
            if let Err(why) = req.batch.iter().try_for_each(record::check) {
                outcomes.push(Err(why));
                continue;
            }
            // Every event of the request gets an id below u64::MAX (so the
            // next id stays representable), or none does: ids never wrap.
            if self.next_id.checked_add(req.batch.len() as u64).is_none() {
                outcomes.push(Err(crate::ids::EXHAUSTED.to_owned()));
                continue;
            }
            let mut results = Vec::with_capacity(req.batch.len());
            for new in &req.batch {
                if let Some(key) = &new.idempotency_key {
                    let known = fresh_keys
                        .get(key.as_str())
                        .copied()
                        .or_else(|| self.keys.get(key, now, window_ms));
                    if let Some(id) = known {
                        results.push(Appended {
                            id,
                            duplicate: true,
                        });
                        continue;
                    }
                }
                let id = self.next_id;
                // Checked above for the whole request.
                self.next_id = id.saturating_add(1);
                let len = record::encode(buf, id, stored_at_s, new);
                records.push(Rec {
                    id,
                    end: buf.len(),
                    len,
                    keyed: new.idempotency_key.is_some(),
                });
                if let Some(key) = &new.idempotency_key {
                    fresh_keys.insert(key, EventId(id));
                }
                results.push(Appended {
                    id: EventId(id),
                    duplicate: false,
                });
            }
            outcomes.push(Ok(results));
        }

        if !records.is_empty() {
            if let Err(err) = self.write(buf, &records, stored_at_s) {
                self.next_id = first_new_id;
                // A poisoned writer says why it stopped writing.
                let why = self
                    .poisoned
                    .clone()
                    .unwrap_or_else(|| format!("writing to {}: {err}", self.active.path.display()));
                tracing::error!("{why}; nothing of this group was acknowledged");
                *self.shared.write_error.lock() = Some(why.clone());
                for req in group {
                    let _ = req.reply.send(Err(LogError::Unavailable(why.clone())));
                }
                return;
            }
            *self.shared.write_error.lock() = None;
        }
        let fresh_keys: Vec<(String, EventId)> = fresh_keys
            .into_iter()
            .map(|(k, id)| (k.to_owned(), id))
            .collect();
        for (key, id) in fresh_keys {
            self.keys.insert(key, id, now);
        }

        // On disk: make the events, publish them, answer.
        let mut events = Vec::with_capacity(records.len());
        let mut replies = Vec::with_capacity(group.len());
        for (req, outcome) in group.into_iter().zip(outcomes) {
            match outcome {
                Ok(results) => {
                    // Without a cache, events are made when read from disk.
                    if self.shared.cache_events > 0 {
                        for (new, result) in req.batch.into_iter().zip(&results) {
                            if !result.duplicate {
                                let event =
                                    self.names.new_event(result.id, new, now, &mut self.arena);
                                events.push(Arc::new(event));
                            }
                        }
                    }
                    replies.push((req.reply, Ok(results)));
                }
                Err(why) => replies.push((req.reply, Err(LogError::Unavailable(why)))),
            }
        }
        if !records.is_empty() {
            self.publish(events, first_new_id);
        }
        for (reply, answer) in replies {
            // The caller may have gone (its request was cancelled): the
            // events are stored all the same, as for any lost response.
            let _ = reply.send(answer);
        }
        self.names.sweep_if_grown();
    }

    /// Puts written events in the cache and moves the head.
    fn publish(&mut self, events: Vec<Arc<Event>>, first_new_id: u64) {
        let shared = &self.shared;
        let newest = EventId(self.next_id - 1);
        {
            let mut tail = shared.tail.write();
            tail.next_id = self.next_id;
            tail.push_run(first_new_id, self.next_id - first_new_id);
            if shared.cache_events > 0 {
                tail.events.extend(events);
                let floor = shared.effective_floor(&tail);
                while tail
                    .events
                    .front()
                    .is_some_and(|e| tail.events.len() > shared.cache_events || e.id.0 < floor)
                {
                    tail.events.pop_front();
                }
            }
            tail.reset_cache_from();
        }
        shared.head.send_replace(Some(newest));
    }

    /// Writes the group's records, rolling segments as needed, and commits
    /// them to the segments' metadata. On error nothing is committed and the
    /// files are cut back.
    fn write(&mut self, buf: &[u8], records: &[Rec], stored_at_s: u32) -> io::Result<()> {
        let start_active = self.active.clone();
        let start_len = start_active.meta.read().len;
        let mut created = Vec::new();
        let mut chunks = Vec::new();
        if let Err(err) = self.write_chunks(buf, records, &mut chunks, &mut created) {
            self.undo(&start_active, start_len, created);
            return Err(err);
        }
        let rolled = !created.is_empty();
        for chunk in &chunks {
            let mut meta = chunk.seg.meta.write();
            let mut offset = chunk.offset;
            for rec in &records[chunk.range.clone()] {
                meta.push(rec.id, offset, rec.len as u64, stored_at_s, rec.keyed);
                offset += rec.len as u64;
            }
        }
        if let Some(last) = chunks.last() {
            self.active = last.seg.clone();
        }
        if rolled {
            // Disk use stays within budget between the caller's trims.
            self.shared.trim_bytes();
        }
        Ok(())
    }

    fn write_chunks(
        &mut self,
        buf: &[u8],
        records: &[Rec],
        chunks: &mut Vec<Chunk>,
        created: &mut Vec<Arc<Segment>>,
    ) -> io::Result<()> {
        let segment_bytes = self.shared.segment_bytes;
        let mut seg = self.active.clone();
        let mut seg_len = seg.meta.read().len;
        let mut i = 0;
        while i < records.len() {
            if seg_len > SEGMENT_HEADER && seg_len + records[i].len as u64 > segment_bytes {
                seg = self.create_segment(records[i].id)?;
                created.push(seg.clone());
                seg_len = SEGMENT_HEADER;
            }
            // As many records as fit (at least one: a huge record gets a
            // segment of its own rather than being refused).
            let mut j = i + 1;
            let mut size = records[i].len as u64;
            while j < records.len() && seg_len + size + records[j].len as u64 <= segment_bytes {
                size += records[j].len as u64;
                j += 1;
            }
            let from = records[i].end - records[i].len;
            let fs = &*self.shared.fs;
            fs.write_all_at(&seg.file, &buf[from..records[j - 1].end], seg_len)?;
            if self.shared.durability == Durability::Fsync {
                fs.sync_data(&seg.file)?;
            }
            chunks.push(Chunk {
                seg: seg.clone(),
                offset: seg_len,
                range: i..j,
            });
            seg_len += size;
            i = j;
        }
        Ok(())
    }

    /// Starts a segment whose first record will be `first_id`.
    fn create_segment(&mut self, first_id: u64) -> io::Result<Arc<Segment>> {
        let sync = self.shared.durability == Durability::Fsync;
        let seg = Segment::create(&*self.shared.fs, &self.shared.seg_dir, first_id, sync)?;
        let seg = Arc::new(seg);
        self.shared.segments.write().insert(first_id, seg.clone());
        Ok(seg)
    }

    /// Removes what a failed group wrote: the segments it created, and the
    /// bytes past `start_len` of the segment that was active. If any of that
    /// fails, records of the group may still be on disk, so the writer stops
    /// writing (a later group would bury them mid-segment, where the next
    /// open could not tell them from acknowledged ones), and marks the first
    /// of them damaged, so the next open cuts the file there.
    fn undo(&mut self, start_active: &Arc<Segment>, start_len: u64, created: Vec<Arc<Segment>>) {
        let fs = &*self.shared.fs;
        let fsync = self.shared.durability == Durability::Fsync;
        let mut failed = Vec::new();
        // Where a damage mark was needed, and those that could not be written.
        let mut marks = 0;
        let mut unmarked = Vec::new();
        for seg in created {
            self.shared.segments.write().remove(&seg.first_id);
            if let Err(err) = fs.remove_file(&seg.path) {
                failed.push(format!("removing {}: {err}", seg.path.display()));
                marks += 1;
                if let Err(err) = mark_damaged(fs, &seg, SEGMENT_HEADER, fsync) {
                    unmarked.push(format!("{}: {err}", seg.path.display()));
                }
            }
        }
        let file = &start_active.file;
        match fs.set_len(file, start_len) {
            Ok(()) => {
                let synced = if fsync { fs.sync_data(file) } else { Ok(()) };
                if let Err(err) = synced {
                    failed.push(format!(
                        "syncing {} after cutting it back to {start_len} bytes: {err}",
                        start_active.path.display()
                    ));
                }
            }
            Err(err) => {
                failed.push(format!(
                    "cutting {} back to {start_len} bytes: {err}",
                    start_active.path.display()
                ));
                marks += 1;
                if let Err(err) = mark_damaged(fs, start_active, start_len, fsync) {
                    unmarked.push(format!("{}: {err}", start_active.path.display()));
                }
            }
        }
        if !failed.is_empty() {
            let why = format!(
                "could not undo a failed write ({}); refusing further writes until restart",
                failed.join("; ")
            );
            if marks == 0 {
                tracing::error!("{why}");
            } else if unmarked.is_empty() {
                tracing::error!(
                    "{why}; the failed records are marked damaged, so the next open drops them"
                );
            } else {
                tracing::error!(
                    "{why}; could not mark the failed records damaged either ({}): the next open may serve complete records of the failed group",
                    unmarked.join("; ")
                );
            }
            *self.shared.write_error.lock() = Some(why.clone());
            self.poisoned = Some(why);
        }
        self.active = start_active.clone();
    }
}

/// Overwrites the record header at `offset` of `seg` with
/// [`record::CUT_MARK`], so recovery cuts the segment there and drops what
/// follows (bytes of a failed group that could not be cut back).
fn mark_damaged(fs: &dyn Filesystem, seg: &Segment, offset: u64, fsync: bool) -> io::Result<()> {
    fs.write_all_at(&seg.file, &record::CUT_MARK, offset)?;
    if fsync {
        fs.sync_data(&seg.file)?;
    }
    Ok(())
}

/// Roughly the bytes a request adds to a group.
fn payload(req: &Request) -> usize {
    req.batch.iter().map(|e| e.data.len() + 64).sum()
}
