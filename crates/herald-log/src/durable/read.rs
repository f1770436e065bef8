//! Reads: from the in-memory cache when the position is in it, else from
//! the segment files (in a blocking task), streamed a block at a time.
//!
//! Both are a [`page::Source`], so the gap rule and the page loop are the
//! ones every backend shares (see `crate::page`). Ids are compared, never
//! counted: a recovered corruption can leave holes.

use std::io;
use std::ops::Bound;
use std::sync::Arc;

use herald_core::{Event, EventId, Filter, FrameArena, Position, ReadBatch};

use super::record::{decode, peek_id, Cursor, Next, RecordView};
use super::segment::Segment;
use super::{Shared, Tail, MAX_TOPIC_SCAN};
use crate::names::{Names, StoredFields};
use crate::page::{self, Page};

/// Serves a read from memory; `None` when it needs the disk.
pub(super) fn read_cached(
    shared: &Shared,
    from: Position,
    filter: &Filter,
    limit: usize,
) -> Option<ReadBatch> {
    let tail = shared.tail.read();
    let cache = Cached {
        floor: shared.effective_floor(&tail),
        tail: &tail,
    };
    page::read(&cache, from, filter, limit).ok()
}

/// The part of the log not in the cache is asked for.
#[derive(Debug)]
struct NotCached;

/// The cache as a read source. Every record with an id `>= cache_from` is
/// in it; it may still hold events below the floor (trimmed lazily).
#[derive(Debug)]
struct Cached<'a> {
    tail: &'a Tail,
    floor: u64,
}

impl Cached<'_> {
    /// Whether the oldest retained event is in the cache (or none is
    /// retained): only then does the cache know it.
    fn holds_oldest(&self) -> bool {
        self.floor >= self.tail.cache_from
    }

    fn oldest_cached(&self) -> Option<u64> {
        let i = self.tail.events.partition_point(|e| e.id.0 < self.floor);
        self.tail.events.get(i).map(|e| e.id.0)
    }
}

impl page::Source for Cached<'_> {
    type Error = NotCached;

    fn next_id(&self) -> u64 {
        self.tail.next_id
    }

    fn floor(&self) -> u64 {
        self.floor
    }

    fn oldest_at_most(&self) -> u64 {
        if self.holds_oldest() {
            self.oldest_cached().unwrap_or(self.tail.next_id)
        } else {
            // The cache's first event (or the next id, if it is empty) is
            // above the floor, so retained: the oldest is at or before it.
            self.tail.cache_from
        }
    }

    fn oldest(&self) -> Result<Option<u64>, NotCached> {
        if self.holds_oldest() {
            Ok(self.oldest_cached())
        } else {
            Err(NotCached)
        }
    }

    fn scan(&self, start: u64, filter: &Filter, page: &mut Page) -> Result<bool, NotCached> {
        if start < self.tail.cache_from {
            return Err(NotCached);
        }
        let first = self.tail.events.partition_point(|e| e.id.0 < start);
        Ok(page::scan_events(
            self.tail.events.range(first..),
            filter,
            page,
        ))
    }
}

/// Serves a read from the segment files. Blocking.
pub(super) fn read_disk(
    shared: &Shared,
    from: Position,
    filter: &Filter,
    limit: usize,
) -> io::Result<ReadBatch> {
    let (next_id, floor) = {
        let tail = shared.tail.read();
        (tail.next_id, shared.effective_floor(&tail))
    };
    let disk = Disk {
        shared,
        next_id,
        floor,
    };
    page::read(&disk, from, filter, limit)
}

/// The segment files as a read source, with the bounds taken when the read
/// started (the writer only adds events after them).
#[derive(Debug)]
struct Disk<'a> {
    shared: &'a Shared,
    next_id: u64,
    floor: u64,
}

impl page::Source for Disk<'_> {
    type Error = io::Error;

    fn next_id(&self) -> u64 {
        self.next_id
    }

    fn floor(&self) -> u64 {
        self.floor
    }

    fn oldest(&self) -> io::Result<Option<u64>> {
        first_at_or_after(self.shared, self.floor)
    }

    fn scan(&self, start: u64, filter: &Filter, page: &mut Page) -> io::Result<bool> {
        let shared = self.shared;
        let mut names = Names::default();
        let mut arena = FrameArena::new();
        let stopped = walk_from(shared, start, |seg, cursor| loop {
            if !page.wants_more() {
                return Ok(Some(cursor.at_end() && nothing_after(shared, seg.first_id)));
            }
            match cursor.next()? {
                Next::Record { .. } => {}
                Next::End => return Ok(None),
                Next::Bad { offset, reason } => {
                    damaged(seg, offset, reason);
                    return Ok(None);
                }
            }
            if peek_id(cursor.body()) < start {
                continue;
            }
            let Some(view) = decode(cursor.body()) else {
                damaged(seg, cursor.pos(), "record does not decode");
                return Ok(None);
            };
            let event = matching_event(&view, filter, &mut names, &mut arena);
            page.examined(EventId(view.id), event.map(Arc::new));
        })?;
        // Not stopped by the page: every segment was read to its end.
        Ok(stopped.unwrap_or(true))
    }
}

/// Runs `visit` on each segment from the one that would hold `id` on, with
/// a cursor at a record boundary at or before the first record `>= id` (the
/// sparse index's), until it returns `Some`. Blocking.
fn walk_from<T>(
    shared: &Shared,
    id: u64,
    mut visit: impl FnMut(&Segment, &mut Cursor<'_>) -> io::Result<Option<T>>,
) -> io::Result<Option<T>> {
    let mut seg = segment_for(shared, id);
    while let Some(s) = seg {
        let (end, offset, holes) = {
            let meta = s.meta.read();
            (meta.len, meta.offset_for(id), meta.holes.clone())
        };
        let mut cursor = Cursor::new(&s.file, offset, end).skipping(&holes);
        if let Some(found) = visit(&s, &mut cursor)? {
            return Ok(Some(found));
        }
        seg = segment_after(shared, s.first_id);
    }
    Ok(None)
}

/// The id of the oldest record with an id `>= id`, from disk. Blocking.
fn first_at_or_after(shared: &Shared, id: u64) -> io::Result<Option<u64>> {
    walk_from(shared, id, |_, cursor| {
        while let Next::Record { .. } = cursor.next()? {
            let found = peek_id(cursor.body());
            if found >= id {
                return Ok(Some(found));
            }
        }
        Ok(None)
    })
}

/// The id of the newest record on `topic` with `floor <= id < below`,
/// scanning segments newest first. Blocking; bounded by [`MAX_TOPIC_SCAN`].
pub(super) fn last_for_topic_on_disk(
    shared: &Shared,
    topic: &str,
    floor: u64,
    below: u64,
) -> io::Result<Option<u64>> {
    let segments: Vec<Arc<Segment>> = shared
        .segments
        .read()
        .range(..below)
        .rev()
        .map(|(_, s)| s.clone())
        .collect();
    let mut scanned = 0u64;
    for s in segments {
        let (end, offset, last, holes) = {
            let meta = s.meta.read();
            (
                meta.len,
                meta.offset_for(floor),
                meta.last,
                meta.holes.clone(),
            )
        };
        if last.is_none_or(|last| last < floor) {
            // Older segments are all below the floor too.
            break;
        }
        let mut found = None;
        let mut cursor = Cursor::new(&s.file, offset, end).skipping(&holes);
        while let Next::Record { .. } = cursor.next()? {
            let id = peek_id(cursor.body());
            if id < floor {
                continue;
            }
            if id >= below {
                break;
            }
            scanned += 1;
            if decode(cursor.body()).is_some_and(|v| v.topics.contains(&topic)) {
                found = Some(id);
            }
        }
        if found.is_some() {
            return Ok(found);
        }
        if scanned >= MAX_TOPIC_SCAN {
            break;
        }
    }
    Ok(None)
}

/// The event of `view` if `filter` wants it: [`Filter::matches`], in its
/// two parts, asked of the decoded names before the event is built, so
/// events that do not match cost no frame encoding.
fn matching_event(
    view: &RecordView<'_>,
    filter: &Filter,
    names: &mut Names,
    arena: &mut FrameArena,
) -> Option<Event> {
    if !filter.accepts_type(view.event_type) {
        return None;
    }
    let topics: Box<[_]> = view
        .topics
        .iter()
        .filter_map(|t| names.topic_str(t))
        .collect();
    if !filter.matches_targets(
        view.broadcast,
        topics.iter().map(herald_core::Topic::as_str),
    ) {
        return None;
    }
    Some(event_of(view, topics, names, arena))
}

/// Builds the event of a decoded record whose topics are shared already.
pub(super) fn event_of(
    view: &RecordView<'_>,
    topics: Box<[herald_core::Topic]>,
    names: &mut Names,
    arena: &mut FrameArena,
) -> Event {
    let fields = StoredFields {
        id: EventId(view.id),
        broadcast: view.broadcast,
        event_type: view.event_type,
        data: view.data,
        retry: view.retry,
        stored_at_ms: u64::from(view.stored_at_s) * 1000,
    };
    names.event(fields, topics, arena)
}

fn damaged(seg: &Segment, offset: u64, reason: &str) {
    tracing::warn!(
        path = %seg.path.display(),
        offset,
        reason,
        "damaged record on disk (it was valid when the log opened); skipping the rest of this segment"
    );
}

/// The segment that would hold `id`: the last one starting at or before
/// it, else the first.
fn segment_for(shared: &Shared, id: u64) -> Option<Arc<Segment>> {
    let segments = shared.segments.read();
    segments
        .range(..=id)
        .next_back()
        .or_else(|| segments.iter().next())
        .map(|(_, s)| s.clone())
}

fn segment_after(shared: &Shared, first_id: u64) -> Option<Arc<Segment>> {
    shared
        .segments
        .read()
        .range((Bound::Excluded(first_id), Bound::Unbounded))
        .next()
        .map(|(_, s)| s.clone())
}

/// Whether no segment after `first_id` holds a record.
fn nothing_after(shared: &Shared, first_id: u64) -> bool {
    shared
        .segments
        .read()
        .range((Bound::Excluded(first_id), Bound::Unbounded))
        .all(|(_, s)| s.meta.read().count == 0)
}
