//! Reads: from the in-memory cache when the position is in it, else from
//! the segment files (in a blocking task), streamed a block at a time.
//!
//! Gap rules are `MemoryLog`'s: `After(x)` with `x` past the last issued id,
//! or with events after `x` gone (`x + 1` below the oldest retained id),
//! reports a gap and reads from the oldest. Ids are compared, never counted:
//! a recovered corruption can leave holes.

use std::io;
use std::ops::Bound;
use std::sync::Arc;

use herald_core::{Event, EventId, Filter, FrameArena, Gap, Position, ReadBatch};

use super::record::{decode, peek_id, Cursor, Next, RecordView};
use super::segment::Segment;
use super::{Shared, MAX_SCAN_PER_READ, MAX_TOPIC_SCAN};
use crate::names::{Names, StoredFields};

/// Serves a read from memory; `None` when it needs the disk.
pub(super) fn read_cached(
    shared: &Shared,
    from: Position,
    filter: &Filter,
    limit: usize,
) -> Option<ReadBatch> {
    let tail = shared.tail.read();
    let next_id = tail.next_id;
    let last_issued = next_id.saturating_sub(1);
    let floor = shared.effective_floor(&tail);
    let cache_from = tail.cache_from;
    // Valid only when `floor >= cache_from`: then the oldest retained event
    // is in the cache (or there is none).
    let oldest_cached = || {
        let i = tail.events.partition_point(|e| e.id.0 < floor);
        tail.events.get(i).map(|e| e.id)
    };
    let (start, gap) = match from {
        Position::Oldest => (floor, None),
        Position::After(x) if x.0 > last_issued || x.0 + 1 < floor => {
            if floor < cache_from {
                return None;
            }
            let gap = Gap {
                oldest_available: oldest_cached(),
            };
            (floor, Some(gap))
        }
        Position::After(x) if x.0 + 1 >= cache_from => {
            // Every retained event up to `x + 1` would be in the cache or
            // on disk below `cache_from`; in the latter case there is one
            // at or before `cache_from <= x + 1`, so no gap.
            if floor >= cache_from && x.0 + 1 < oldest_cached().map_or(next_id, |id| id.0) {
                let gap = Gap {
                    oldest_available: oldest_cached(),
                };
                (floor, Some(gap))
            } else {
                (x.0 + 1, None)
            }
        }
        Position::After(_) => return None,
    };
    if start < cache_from {
        return None;
    }
    let mut batch = ReadBatch {
        gap,
        ..ReadBatch::default()
    };
    if limit == 0 {
        return Some(batch);
    }
    let first = tail.events.partition_point(|e| e.id.0 < start);
    let mut examined = 0;
    for event in tail.events.range(first..).take(MAX_SCAN_PER_READ) {
        examined += 1;
        batch.scanned_to = Some(event.id);
        if filter.matches(event) {
            batch.events.push(event.clone());
            if batch.events.len() >= limit {
                break;
            }
        }
    }
    batch.reached_end = first + examined >= tail.events.len();
    Some(batch)
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
    let last_issued = next_id.saturating_sub(1);
    let (start, gap) = match from {
        Position::Oldest => (floor, None),
        Position::After(x) => {
            let gone = x.0 > last_issued
                || x.0 + 1 < floor
                || x.0 + 1 < first_at_or_after(shared, floor)?.unwrap_or(next_id);
            if gone {
                let gap = Gap {
                    oldest_available: first_at_or_after(shared, floor)?.map(EventId),
                };
                (floor, Some(gap))
            } else {
                (x.0 + 1, None)
            }
        }
    };
    let mut batch = ReadBatch {
        gap,
        ..ReadBatch::default()
    };
    if limit == 0 {
        return Ok(batch);
    }
    let mut names = Names::default();
    let mut arena = FrameArena::new();
    let mut examined = 0;
    let mut seg = segment_for(shared, start);
    while let Some(s) = seg {
        let (end, offset) = {
            let meta = s.meta.read();
            (meta.len, meta.offset_for(start))
        };
        let mut cursor = Cursor::new(&s.file, offset, end);
        let mut stopped = false;
        loop {
            match cursor.next()? {
                Next::Record { .. } => {}
                Next::End => break,
                Next::Bad { offset, reason } => {
                    damaged(&s, offset, reason);
                    break;
                }
            }
            if peek_id(cursor.body()) < start {
                continue;
            }
            let Some(view) = decode(cursor.body()) else {
                damaged(&s, cursor.pos(), "record does not decode");
                break;
            };
            examined += 1;
            batch.scanned_to = Some(EventId(view.id));
            if let Some(event) = matching_event(&view, filter, &mut names, &mut arena) {
                batch.events.push(Arc::new(event));
            }
            if batch.events.len() >= limit || examined >= MAX_SCAN_PER_READ {
                stopped = true;
                break;
            }
        }
        let next = segment_after(shared, s.first_id);
        if stopped {
            batch.reached_end = cursor.at_end() && nothing_after(shared, s.first_id);
            return Ok(batch);
        }
        seg = next;
    }
    batch.reached_end = true;
    Ok(batch)
}

/// The id of the oldest record with an id `>= id`, from disk. Blocking.
fn first_at_or_after(shared: &Shared, id: u64) -> io::Result<Option<u64>> {
    let mut seg = segment_for(shared, id);
    while let Some(s) = seg {
        let (end, offset) = {
            let meta = s.meta.read();
            (meta.len, meta.offset_for(id))
        };
        let mut cursor = Cursor::new(&s.file, offset, end);
        while let Next::Record { .. } = cursor.next()? {
            let found = peek_id(cursor.body());
            if found >= id {
                return Ok(Some(found));
            }
        }
        seg = segment_after(shared, s.first_id);
    }
    Ok(None)
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
        let (end, offset, last) = {
            let meta = s.meta.read();
            (meta.len, meta.offset_for(floor), meta.last)
        };
        if last.is_none_or(|last| last < floor) {
            // Older segments are all below the floor too.
            break;
        }
        let mut found = None;
        let mut cursor = Cursor::new(&s.file, offset, end);
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

/// The event of `view` if `filter` wants it. The check mirrors
/// [`Filter::matches`] on the decoded names, so events that do not match
/// cost no frame encoding.
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
    if !(view.broadcast || topics.iter().any(|t| filter.matches_topic(t))) {
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
        stored_at_s: view.stored_at_s,
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
