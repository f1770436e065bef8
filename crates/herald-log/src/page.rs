//! The read rule every backend keeps: where a read starts, when it reports a
//! gap, and how one page is filled. `MemoryLog`, the durable log's cache and
//! its disk reader each describe what they hold as a [`Source`]; [`read`]
//! does the rest, so the three cannot disagree.
//!
//! Invariants kept here:
//! - `Oldest` starts at the oldest retained event and never reports a gap;
//! - `After(x)` reports a gap when `x` is an id this log never issued
//!   (`x >= next_id`), or when events after `x` are gone (`x + 1` below the
//!   oldest retained id, or below `next_id` when nothing is retained); a gap
//!   carries the oldest retained id and the read starts there;
//! - otherwise the read starts at `x + 1`. Ids are compared, never counted:
//!   a backend may have holes (a recovery cut, a set-aside file);
//! - a page holds at most `limit` events, examines at most
//!   [`MAX_SCAN_PER_READ`] (so one read never stalls the log), says in
//!   `scanned_to` the last id it examined (the next read continues after it,
//!   even when nothing matched) and in `reached_end` whether nothing follows
//!   it. A limit of 0 examines nothing and never reaches the end.

use std::sync::Arc;

use herald_core::{Event, EventId, Filter, Gap, Position, ReadBatch};

/// Events examined per read at most, so one reader never holds a lock or a
/// blocking thread long.
pub(crate) const MAX_SCAN_PER_READ: usize = 8192;

/// What a read needs from a backend: the bounds of what it retains, for the
/// gap rule, and a forward scan.
pub(crate) trait Source {
    /// Why the source could not answer (I/O, or "not in memory").
    type Error;

    /// The id the next appended event gets (at least 1): ids at or above it
    /// were never issued.
    fn next_id(&self) -> u64;

    /// No retained event has an id below this (known without I/O).
    fn floor(&self) -> u64;

    /// An id at or above the oldest retained one (at or above `next_id`
    /// when nothing is retained), known without I/O. `next_id` is always
    /// right; a tighter bound spares calls to [`Source::oldest`].
    fn oldest_at_most(&self) -> u64 {
        self.next_id()
    }

    /// The oldest retained id, `None` when nothing is retained.
    fn oldest(&self) -> Result<Option<u64>, Self::Error>;

    /// Offers `page` the retained events with ids `>= start`, oldest first,
    /// while [`Page::wants_more`]; returns whether no event follows the last
    /// one offered (the end of the log was reached).
    fn scan(&self, start: u64, filter: &Filter, page: &mut Page) -> Result<bool, Self::Error>;
}

/// One page of a read: `read_after(from, filter, limit)` on `source`.
pub(crate) fn read<S: Source>(
    source: &S,
    from: Position,
    filter: &Filter,
    limit: usize,
) -> Result<ReadBatch, S::Error> {
    let (start, gap) = start(source, from)?;
    let mut page = Page {
        batch: ReadBatch {
            gap,
            ..ReadBatch::default()
        },
        limit,
        examined: 0,
    };
    if limit == 0 {
        return Ok(page.batch);
    }
    let reached_end = source.scan(start, filter, &mut page)?;
    page.batch.reached_end = reached_end;
    Ok(page.batch)
}

/// The first id a read from `from` examines, and its gap (see the module
/// doc). Asks [`Source::oldest`] only when the cheap bounds do not decide.
fn start<S: Source>(source: &S, from: Position) -> Result<(u64, Option<Gap>), S::Error> {
    let floor = source.floor();
    let Position::After(after) = from else {
        return Ok((floor, None));
    };
    let next_id = source.next_id();
    let mut oldest = None;
    if after.0 < next_id {
        // `after` was issued, so `after + 1 <= next_id` cannot overflow.
        let resume = after.0 + 1;
        if resume >= source.oldest_at_most() {
            return Ok((resume, None));
        }
        if resume >= floor {
            let found = source.oldest()?;
            if resume >= found.unwrap_or(next_id) {
                return Ok((resume, None));
            }
            oldest = Some(found);
        }
    }
    let oldest_available = match oldest {
        Some(found) => found,
        None => source.oldest()?,
    };
    let gap = Gap {
        oldest_available: oldest_available.map(EventId),
    };
    Ok((floor, Some(gap)))
}

/// The page being filled by a [`Source::scan`].
#[derive(Debug)]
pub(crate) struct Page {
    batch: ReadBatch,
    limit: usize,
    examined: usize,
}

impl Page {
    /// An empty page of at most `limit` events that reports `gap`, for a
    /// backend whose scan is asynchronous (the Redis log decides the start
    /// and the gap by the same rule in one round trip, then fills the page
    /// chunk by chunk).
    pub(crate) fn new(gap: Option<Gap>, limit: usize) -> Self {
        Self {
            batch: ReadBatch {
                gap,
                ..ReadBatch::default()
            },
            limit,
            examined: 0,
        }
    }

    /// The batch this page holds; `reached_end` says whether nothing
    /// follows the last event examined.
    pub(crate) fn finish(mut self, reached_end: bool) -> ReadBatch {
        self.batch.reached_end = reached_end;
        self.batch
    }

    /// Whether the page takes another event: fewer than `limit` matched and
    /// fewer than [`MAX_SCAN_PER_READ`] were examined.
    pub(crate) fn wants_more(&self) -> bool {
        self.batch.events.len() < self.limit && self.examined < MAX_SCAN_PER_READ
    }

    /// Accounts for the examined event `id`; `matched` is the event when the
    /// filter wants it.
    pub(crate) fn examined(&mut self, id: EventId, matched: Option<Arc<Event>>) {
        self.examined += 1;
        self.batch.scanned_to = Some(id);
        self.batch.events.extend(matched);
    }
}

/// [`Source::scan`] over events held in memory: `events` are the retained
/// events from the start id on, oldest first. True when every one of them
/// was examined.
pub(crate) fn scan_events<'a>(
    events: impl ExactSizeIterator<Item = &'a Arc<Event>>,
    filter: &Filter,
    page: &mut Page,
) -> bool {
    let mut left = events.len();
    for event in events {
        if !page.wants_more() {
            break;
        }
        left -= 1;
        page.examined(event.id, filter.matches(event).then(|| event.clone()));
    }
    left == 0
}
