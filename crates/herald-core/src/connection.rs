//! One subscriber's stream: the writer side of a connection.
//!
//! A [`Connection`] turns its queue and the event log into the chunks of bytes
//! the HTTP layer writes. It is in one of two modes:
//! - **live**: it drains its queue, coalescing every ready frame into one chunk;
//! - **catch-up**: it reads the log after the last id it wrote, with its own
//!   filter, until it reaches the end; entered on resume and on queue overflow.
//!
//! Leaving catch-up without a gap or a duplicate: the writer clears the
//! `lagging` flag, *then* reads the log once more. An event the hub skipped
//! (it saw the flag set) was stored before the flag was cleared, so that last
//! read finds it; an event the hub queued may also come from that read, and is
//! dropped because its id is not above the last id written. Ids only grow, so
//! "id ≤ last written" is exactly "already sent".
//!
//! A stream the server ends for shutdown gets one last frame: a `retry:` of
//! its own, drawn from [`DRAIN_RETRY_MS`], so the clients of a restarting
//! server do not all come back in the same instant.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};

use crate::event::{Event, EventId};
use crate::filter::Filter;
use crate::log::{EventLog, Gap, Position};
use crate::stream::{
    age_seconds, latency_sampled, CloseReason, Outbound, StreamReceiver, WriteThrough,
};

/// Events read from the log per catch-up step. Small on purpose: the chunk it
/// makes is held per connection until the socket takes it, and when thousands
/// of streams catch up at once (a broadcast storm) that is the memory bill.
const CATCH_UP_BATCH: usize = 128;
/// A chunk stops growing past this many bytes, so one write stays bounded.
const MAX_CHUNK_BYTES: usize = 64 * 1024;
/// Longest part of an untrusted `Last-Event-ID` echoed back in `herald.gap`.
const MAX_ECHOED_ID_BYTES: usize = 128;
/// The heartbeat comment (a notice: no blank line, see `herald_sse::encode_notice`).
const HEARTBEAT: Bytes = Bytes::from_static(herald_sse::HEARTBEAT);

/// The range a shutting-down server's last `retry:` is drawn from, per
/// stream, in ms: clients reconnect spread over these 4.5 s instead of at
/// once.
pub const DRAIN_RETRY_MS: std::ops::RangeInclusive<u64> = 500..=5000;

/// Where a new stream starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// No `Last-Event-ID`: only events from now on.
    Live,
    /// Resume after this id.
    After(EventId),
    /// A `Last-Event-ID` that is not one of our ids: `herald.gap`, then
    /// everything retained.
    Unknown(String),
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Live,
    CatchUp {
        from: Position,
        /// The lagging flag has been cleared; one more read to the end, then live.
        final_pass: bool,
    },
}

/// The writer of one stream. Dropping it unregisters the stream from the hub
/// (its queue's receiving end is the drop guard).
#[derive(Debug)]
pub struct Connection {
    /// Where catch-up reads from.
    log: Arc<dyn EventLog>,
    queue: StreamReceiver,
    filter: Arc<Filter>,
    /// The `retry:` sent in the preamble, in ms.
    retry_ms: u64,
    mode: Mode,
    /// Whether the `retry:` preamble has been sent.
    opened: bool,
    /// Id of the last event written (or the log head when a live stream opened).
    last_written: Option<EventId>,
    /// A `herald.gap` owed to the client for an id we could not place.
    unknown_resume: Option<String>,
    /// When the subscriber's token expires (told in `herald.expired`).
    expires_at: Option<SystemTime>,
    /// Whether `herald.expired` has been sent (it is the stream's last frame).
    expiry_told: bool,
    /// Whether the shutdown `retry:` has been sent (the last frame too).
    drain_told: bool,
    /// Where sampled publish-to-write latencies go (see
    /// `crate::stream::LATENCY_SAMPLE_EVERY`).
    latency: metrics::Histogram,
    /// Whether the dispatcher may write to the socket while this writer is
    /// parked ([`Connection::write_through`]).
    write_through: bool,
}

impl Connection {
    pub(crate) fn new(
        log: Arc<dyn EventLog>,
        queue: StreamReceiver,
        filter: Arc<Filter>,
        resume: Resume,
        live_from: Option<EventId>,
        retry_ms: u64,
        expires_at: Option<SystemTime>,
    ) -> Self {
        let (last_written, unknown_resume, mode) = match resume {
            Resume::Live => (live_from, None, Mode::Live),
            Resume::After(id) => (
                Some(id),
                None,
                Mode::CatchUp {
                    from: Position::After(id),
                    final_pass: false,
                },
            ),
            Resume::Unknown(raw) => (
                None,
                Some(truncate_utf8(&raw, MAX_ECHOED_ID_BYTES).to_owned()),
                // No real id is 0, so the log reports the gap and the oldest id.
                Mode::CatchUp {
                    from: Position::After(EventId(0)),
                    final_pass: false,
                },
            ),
        };
        Self {
            log,
            queue,
            filter,
            retry_ms,
            mode,
            opened: false,
            last_written,
            unknown_resume,
            expires_at,
            expiry_told: false,
            drain_told: false,
            latency: metrics::Histogram::noop(),
            write_through: false,
        }
    }

    /// Records sampled publish-to-write latencies into `histogram`.
    pub(crate) fn with_latency_histogram(mut self, histogram: metrics::Histogram) -> Self {
        self.latency = histogram;
        self
    }

    /// Lets the dispatcher write events to the socket through `to` while
    /// this writer waits with nothing queued (see `crate::stream`): an event
    /// for one user then costs no wake-up of this writer. The caller writes
    /// every chunk this connection returns before asking for the next, which
    /// is what makes "parked" mean "everything written".
    pub fn write_through(&mut self, to: Box<dyn WriteThrough>) {
        self.queue.shared.write_through.lock().to = Some(to);
        self.write_through = true;
    }

    /// Ends [`Connection::write_through`]: once this returns, the dispatcher
    /// writes nothing more to the socket. Call it before the socket is
    /// written to by anyone else, or handed on.
    pub fn end_write_through(&mut self) {
        if self.write_through {
            let mut slot = self.queue.shared.write_through.lock();
            slot.to = None;
            slot.parked = false;
            self.write_through = false;
        }
    }

    /// Parks (the queue is empty and everything is written) or wakes this
    /// writer for the dispatcher's write-through. On waking it takes over
    /// the last id the dispatcher wrote.
    fn park(&mut self, parked: bool) {
        if !self.write_through {
            return;
        }
        let shared = &self.queue.shared;
        let mut slot = shared.write_through.lock();
        if parked {
            // The dispatcher writes only events after this (a catch-up may
            // have written some it has yet to dispatch).
            let last = self.last_written.map_or(0, |id| id.0);
            shared.written_up_to.fetch_max(last, Ordering::Relaxed);
        }
        // Once `parked` is false (under the lock) the dispatcher writes no
        // more, so what it wrote is final when the lock is released.
        slot.parked = parked;
        drop(slot);
        if !parked {
            self.take_over_written();
        }
    }

    /// Takes over the last id the dispatcher wrote through, if it is newer
    /// than the last this writer wrote (a wait cut short by the caller skips
    /// [`Connection::park`]'s wake, so catch-up takes it over too).
    fn take_over_written(&mut self) {
        let written = self.queue.shared.written_up_to.load(Ordering::Relaxed);
        if written > 0 && self.last_written.is_none_or(|last| last.0 < written) {
            self.last_written = Some(EventId(written));
        }
    }

    /// The next bytes to write, waiting until there are some; `None` ends the
    /// stream (kicked, expired, or the log failed — the client reconnects and
    /// resumes). A single frame comes back as the shared `Bytes`, uncopied.
    pub async fn next_chunk(&mut self) -> Option<Bytes> {
        let mut chunk = SharedChunk::default();
        self.next_frames(&mut chunk).await.then(|| chunk.finish())
    }

    /// Like [`Connection::next_chunk`], but appends the bytes to `out` after
    /// `room` zeroed bytes (the caller's framing goes there), for a writer
    /// that copies frames into its own buffer anyway (it saves taking and
    /// releasing a reference on each shared frame). `out` grows only once
    /// there is something to write, so a waiting stream can hold an empty,
    /// unallocated buffer. `false` ends the stream.
    pub async fn next_chunk_into(&mut self, out: &mut Vec<u8>, room: usize) -> bool {
        let start = out.len() + room;
        let mut chunk = CopiedChunk { out, start };
        self.next_frames(&mut chunk).await
    }

    /// Adds the next frames to `chunk`, waiting until there are some, and
    /// counts their bytes. A stream ended because its token expired, or for
    /// a shutdown, says so in one last frame.
    async fn next_frames(&mut self, chunk: &mut impl ChunkSink) -> bool {
        let more = self.stream_frames(chunk).await || self.last_frame(chunk);
        if more {
            self.queue
                .shared
                .bytes_written
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        more
    }

    /// The frame that says why the server ended the stream, once: a token
    /// expired (`herald.expired`) or a shutdown (a `retry:` with jitter).
    fn last_frame(&mut self, chunk: &mut impl ChunkSink) -> bool {
        let shared = &self.queue.shared;
        if shared.token_expired.load(Ordering::SeqCst) && !self.expiry_told {
            self.expiry_told = true;
            chunk.push(&expired_frame(self.expires_at));
            return true;
        }
        if shared.close_reason() == CloseReason::Shutdown && !self.drain_told {
            self.drain_told = true;
            let retry = rand::Rng::gen_range(&mut rand::thread_rng(), DRAIN_RETRY_MS);
            chunk.push(&drain_frame(retry));
            return true;
        }
        false
    }

    /// The frames of the open stream; `false` once it is closed.
    async fn stream_frames(&mut self, chunk: &mut impl ChunkSink) -> bool {
        if !self.opened {
            self.opened = true;
            chunk.push(&herald_sse::encode_notice(Some(self.retry_ms), "ok"));
            return true;
        }
        loop {
            if self.queue.shared.closed.load(Ordering::SeqCst) {
                return false;
            }
            let more = match self.mode {
                Mode::Live => self.next_live(chunk).await,
                Mode::CatchUp { from, final_pass } => {
                    self.next_catch_up(from, final_pass, chunk).await
                }
            };
            if !more {
                return false;
            }
            if chunk.len() > 0 {
                return true;
            }
        }
    }

    /// Drains the queue into `chunk`; adding nothing means "look again".
    async fn next_live(&mut self, chunk: &mut impl ChunkSink) -> bool {
        if self.queue.shared.lagging.load(Ordering::SeqCst) && self.queue.is_empty() {
            self.start_catch_up();
            return true;
        }
        if self.queue.is_empty() {
            // Nothing left to write: this stream is not behind while it waits.
            self.behind_since(None);
            self.park(true);
        }
        let first = self.queue.recv().await;
        self.park(false);
        let Some(first) = first else {
            return false;
        };
        if self.queue.shared.closed.load(Ordering::SeqCst) {
            return false;
        }
        let mut events = 0u64;
        let mut taken = 0usize;
        let mut oldest_ms = None;
        let mut item = Some(first);
        while let Some(outbound) = item.take() {
            taken += 1;
            match outbound {
                Outbound::Heartbeat => chunk.push(&HEARTBEAT),
                Outbound::Event(event) => {
                    oldest_ms.get_or_insert(event.stored_at_ms());
                    let written = self.write_event(&event, chunk);
                    events += u64::from(written);
                    if written && latency_sampled(event.id, self.queue.id) {
                        self.latency.record(age_seconds(&event));
                    }
                }
            }
            if chunk.len() < MAX_CHUNK_BYTES {
                item = self.queue.try_recv();
            }
        }
        self.queue.taken(taken);
        if oldest_ms.is_some() {
            self.behind_since(oldest_ms);
        }
        self.count_delivered(events);
        true
    }

    /// Records when the oldest event of the write being made was stored
    /// (`None`: nothing to write), for the hub's lag sampler. A store only
    /// when it changes: an idle stream costs nothing.
    fn behind_since(&self, stored_at_ms: Option<u64>) {
        // 0 means "nothing to write", so a time of 0 (tests) is kept as 1.
        let value = stored_at_ms.map_or(0, |ms| ms.max(1));
        let since = &self.queue.shared.writing_since_ms;
        if since.load(Ordering::Relaxed) != value {
            since.store(value, Ordering::Relaxed);
        }
    }

    /// Adds `event`'s frame unless it was already written (ids only grow, so
    /// "already written" is "id not above the last written"); true if added.
    fn write_event(&mut self, event: &Event, chunk: &mut impl ChunkSink) -> bool {
        if self.last_written.is_some_and(|last| event.id <= last) {
            return false;
        }
        self.last_written = Some(event.id);
        chunk.push(event.frame());
        true
    }

    fn start_catch_up(&mut self) {
        if self.write_through {
            self.queue.shared.write_through.lock().parked = false;
            self.take_over_written();
        }
        let from = self.last_written.map_or(Position::Oldest, Position::After);
        self.queue.shared.lagged.fetch_add(1, Ordering::Relaxed);
        self.mode = Mode::CatchUp {
            from,
            final_pass: false,
        };
    }

    /// One page of catch-up from the log, into `chunk`.
    async fn next_catch_up(
        &mut self,
        from: Position,
        final_pass: bool,
        chunk: &mut impl ChunkSink,
    ) -> bool {
        // One page per turn: a stream with megabytes to catch up on whose
        // socket keeps taking them would otherwise write them all in one
        // poll, while every other task on its worker (live streams, the
        // dispatcher) waits — seconds, with thousands catching up at once.
        tokio::task::yield_now().await;
        let batch = match self
            .log
            .read_after(from, &self.filter, CATCH_UP_BATCH)
            .await
        {
            Ok(batch) => batch,
            Err(err) => {
                tracing::warn!(%err, conn = self.queue.id, "catch-up read failed; closing the stream so the client resumes");
                self.queue.closing(CloseReason::LogFailed);
                return false;
            }
        };
        let gap = match (batch.gap, self.unknown_resume.take()) {
            (Some(gap), raw) => Some((gap, raw.unwrap_or_else(|| describe(from)))),
            (None, Some(raw)) => Some((
                Gap {
                    oldest_available: None,
                },
                raw,
            )),
            (None, None) => None,
        };
        if let Some((gap, last_event_id)) = gap {
            chunk.push(&gap_frame(&last_event_id, &gap));
            self.queue.shared.gaps.fetch_add(1, Ordering::Relaxed);
            // The resume point is not in the log (trimmed, or never issued
            // here): what follows is new to the client, whatever its ids.
            self.last_written = None;
        }
        let mut events = 0u64;
        for event in &batch.events {
            events += u64::from(self.write_event(event, chunk));
        }
        if let Some(oldest) = batch.events.first() {
            self.behind_since(Some(oldest.stored_at_ms()));
        }
        self.count_delivered(events);
        let from = batch.scanned_to.map_or(from, Position::After);
        self.mode = if !batch.reached_end {
            Mode::CatchUp { from, final_pass }
        } else if final_pass {
            Mode::Live
        } else {
            self.queue.shared.lagging.store(false, Ordering::SeqCst);
            Mode::CatchUp {
                from,
                final_pass: true,
            }
        };
        true
    }

    /// Counts written events. Only events make a stream "not idle": a
    /// heartbeat does not, or an idle stream would get one every other beat.
    fn count_delivered(&self, events: u64) {
        if events > 0 {
            let shared = &self.queue.shared;
            shared.delivered.fetch_add(events, Ordering::Relaxed);
            shared.wrote_recently.store(true, Ordering::Relaxed);
            if let Some(last) = self.last_written {
                shared.written_up_to.store(last.0, Ordering::Relaxed);
            }
        }
    }
}

/// Where a writer gathers the frames of one write.
trait ChunkSink {
    fn push(&mut self, frame: &Bytes);
    /// Bytes gathered so far.
    fn len(&self) -> usize;
}

/// Frames gathered into one `Bytes`: a single frame is passed on as the
/// shared `Bytes` (no copy); only a second frame makes a buffer.
#[derive(Debug, Default)]
struct SharedChunk {
    single: Option<Bytes>,
    buf: BytesMut,
}

impl ChunkSink for SharedChunk {
    fn push(&mut self, frame: &Bytes) {
        if self.single.is_none() && self.buf.is_empty() {
            self.single = Some(frame.clone());
            return;
        }
        if let Some(first) = self.single.take() {
            self.buf.reserve(first.len() + frame.len() * 4);
            self.buf.extend_from_slice(&first);
        }
        self.buf.extend_from_slice(frame);
    }

    fn len(&self) -> usize {
        self.single.as_ref().map_or(self.buf.len(), Bytes::len)
    }
}

impl SharedChunk {
    fn finish(self) -> Bytes {
        self.single.unwrap_or_else(|| self.buf.freeze())
    }
}

/// Frames copied onto the end of a caller's buffer, from `start`; the
/// buffer is filled up to `start` (the caller's room) with the first frame.
struct CopiedChunk<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
}

impl ChunkSink for CopiedChunk<'_> {
    fn push(&mut self, frame: &Bytes) {
        if self.out.len() < self.start {
            // The room, and space for a few more frames and the caller's
            // trailer: one allocation for the usual write.
            self.out
                .reserve(self.start - self.out.len() + frame.len() * 2 + 16);
            self.out.resize(self.start, 0);
        }
        self.out.extend_from_slice(frame);
    }

    fn len(&self) -> usize {
        self.out.len().saturating_sub(self.start)
    }
}

fn describe(position: Position) -> String {
    match position {
        Position::Oldest => String::new(),
        Position::After(id) => id.to_string(),
    }
}

/// The `herald.expired` event: no `id:` line, so the client resumes from the
/// last event it got once it has a new token.
fn expired_frame(expires_at: Option<SystemTime>) -> Bytes {
    let expired_at = expires_at
        .and_then(|at| at.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_secs());
    let data = serde_json::json!({
        "reason": "the token expired; reconnect with a new token and the last event id",
        "expired_at": expired_at,
    })
    .to_string();
    herald_sse::encode_event(&herald_sse::EventFields {
        id: None,
        event: Some("herald.expired"),
        data: &data,
        retry: None,
    })
    .unwrap_or_default()
}

/// The last frame of a stream ended by a shutdown: a notice (`retry:`,
/// which a client takes as soon as it reads the line, and a comment) with no
/// blank line, as the preamble: some clients dispatch an empty event on a
/// blank line once they have seen any field.
fn drain_frame(retry_ms: u64) -> Bytes {
    herald_sse::encode_notice(Some(retry_ms), "server shutting down; reconnect")
}

/// The `herald.gap` event: no `id:` line, so the client's last id is kept.
fn gap_frame(last_event_id: &str, gap: &Gap) -> Bytes {
    let data = serde_json::json!({
        "last_event_id": last_event_id,
        "oldest_available": gap.oldest_available.map(|id| id.to_string()),
    })
    .to_string();
    herald_sse::encode_event(&herald_sse::EventFields {
        id: None,
        event: Some("herald.gap"),
        data: &data,
        retry: None,
    })
    .unwrap_or_default()
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
