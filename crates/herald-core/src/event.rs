//! Events as stored and delivered.
//!
//! Invariant: an [`Event`] has passed validation (topics, event type) before it
//! gets an id, so its SSE frame can always be encoded; the frame is encoded at
//! most once per process and shared by every connection that receives it.

use std::fmt;
use std::str::FromStr;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use herald_sse::{encode_event_into, EventFields};

use crate::topic::Topic;

/// Event types starting with this are Herald's own (`herald.gap`, ...);
/// publishers may not use them.
pub const RESERVED_EVENT_PREFIX: &str = "herald.";

/// The server-assigned position of an event in the log. On the wire it is an
/// opaque decimal string; ids only ever increase, also across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId(pub u64);

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for EventId {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Only plain digits: `+5` or ` 5` are not ids we ever issued.
        if !s.bytes().all(|b| b.is_ascii_digit()) {
            return "x".parse::<u64>().map(EventId);
        }
        s.parse().map(EventId)
    }
}

/// An event a publisher asked to store, before it has an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Target topics (users already turned into `user/{id}`), deduplicated.
    pub topics: Vec<Topic>,
    /// Whether every connection receives it.
    pub broadcast: bool,
    /// The SSE `event:` type; `None` is dispatched as `message`.
    pub event_type: Option<String>,
    /// The text sent as `data:` lines.
    pub data: String,
    /// The SSE `retry:` field, in milliseconds.
    pub retry: Option<u64>,
    /// A publisher-chosen key: a repeat within the dedupe window stores nothing.
    pub idempotency_key: Option<String>,
}

impl NewEvent {
    /// An untyped event for `topics` carrying `data`; set the other fields
    /// with struct update syntax (`NewEvent { retry: Some(5000), ..NewEvent::new(..) }`).
    pub fn new(topics: Vec<Topic>, data: impl Into<String>) -> Self {
        Self {
            topics,
            broadcast: false,
            event_type: None,
            data: data.into(),
            retry: None,
            idempotency_key: None,
        }
    }

    /// An untyped event for every connection.
    pub fn broadcast(data: impl Into<String>) -> Self {
        Self {
            broadcast: true,
            ..Self::new(Vec::new(), data)
        }
    }
}

/// A stored event.
///
/// It keeps its SSE frame rather than its data: the frame is what every
/// recipient gets, it is encoded once when the event is made, and holding the
/// data a second time would double what the log costs per event. The struct
/// is kept small (it is the per-event cost of a retained log): the type is a
/// shared string, the time is in seconds.
#[derive(Debug)]
pub struct Event {
    /// Its position in the log.
    pub id: EventId,
    /// Target topics.
    pub topics: Box<[Topic]>,
    /// The SSE `event:` type (for the `types` filter).
    pub event_type: Option<Arc<str>>,
    /// The encoded SSE frame: `id:`, `event:`, `data:`..., `retry:`, blank line.
    frame: Bytes,
    /// When it was stored, in seconds since the Unix epoch (retention by age).
    pub stored_at_s: u32,
    /// The milliseconds past `stored_at_s` (0–999; 0 for an event read back
    /// from disk, whose record keeps seconds): how old an event is when a
    /// stream writes it is the delivery lag. In the struct's padding.
    stored_at_ms_part: u16,
    /// Whether every connection receives it.
    pub broadcast: bool,
}

impl Event {
    /// Gives `new` its id and encodes its frame into `arena`. `new` must have
    /// been validated (event type without CR/LF): should the type still be
    /// refused, the event is sent without it rather than dropped.
    pub fn from_new(id: EventId, new: NewEvent, stored_at_ms: u64, arena: &mut FrameArena) -> Self {
        let event_type = new.event_type.map(Arc::from);
        Self::from_parts(
            id,
            new.topics.into(),
            new.broadcast,
            event_type,
            &new.data,
            new.retry,
            stored_at_ms,
            arena,
        )
    }

    /// Like [`Event::from_new`], for backends that share type names and
    /// topic lists between events.
    #[allow(clippy::too_many_arguments)]
    pub fn from_parts(
        id: EventId,
        topics: Box<[Topic]>,
        broadcast: bool,
        event_type: Option<Arc<str>>,
        data: &str,
        retry: Option<u64>,
        stored_at_ms: u64,
        arena: &mut FrameArena,
    ) -> Self {
        let id_text = id.to_string();
        let fields = EventFields {
            id: Some(&id_text),
            event: event_type.as_deref(),
            data,
            retry,
        };
        let frame = arena
            .encode(&fields)
            .or_else(|_| {
                arena.encode(&EventFields {
                    event: None,
                    ..fields
                })
            })
            .unwrap_or_default();
        Self {
            id,
            topics,
            event_type,
            frame,
            // Seconds fit a u32 until 2106; the ranges of the age options
            // keep every later sum exact.
            stored_at_s: u32::try_from(stored_at_ms / 1000).unwrap_or(u32::MAX),
            stored_at_ms_part: (stored_at_ms % 1000) as u16,
            broadcast,
        }
    }

    /// When it was stored, in milliseconds since the Unix epoch (seconds only
    /// for an event read back from disk).
    pub fn stored_at_ms(&self) -> u64 {
        u64::from(self.stored_at_s) * 1000 + u64::from(self.stored_at_ms_part)
    }

    /// The memory this event keeps alive while a log holds it (behind an
    /// `Arc`), in bytes: what retention by bytes counts.
    ///
    /// It counts the frame (the data as sent), the struct and its `Arc`
    /// header, the topic list (one pointer per topic), and each topic's and
    /// the type's own allocation (`Arc` header and text, rounded to the
    /// allocator's 16-byte granule, plus its bookkeeping). Names are shared
    /// between events (interned), but each is counted in full by every event
    /// that holds it: an upper bound, so a log that keeps a byte budget never
    /// holds more than it says. For an event to 380,000 users the topics
    /// are over 30 MB: far more than its data.
    pub fn retained_bytes(&self) -> usize {
        let topics: usize = self
            .topics
            .iter()
            .map(|t| std::mem::size_of::<Topic>() + shared_str_bytes(t.as_str()))
            .sum();
        let event_type = self.event_type.as_deref().map_or(0, shared_str_bytes);
        ARC_HEADER + std::mem::size_of::<Self>() + self.frame.len() + topics + event_type
    }

    /// The SSE frame of this event, shared by every recipient.
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }

    /// The data as a client receives it (line breaks normalised to LF),
    /// decoded from the frame. For storage backends and tests, not hot paths.
    pub fn data(&self) -> String {
        self.decoded().map(|e| e.data).unwrap_or_default()
    }

    /// The `retry:` field, decoded from the frame.
    pub fn retry(&self) -> Option<u64> {
        self.decoded().and_then(|e| e.retry)
    }

    fn decoded(&self) -> Option<herald_sse::ParsedEvent> {
        herald_sse::Parser::new().feed(&self.frame).pop()
    }
}

/// The strong and weak counts in front of every `Arc` allocation.
const ARC_HEADER: usize = 2 * std::mem::size_of::<usize>();
/// What an allocator adds to a small allocation: its bookkeeping and the
/// rounding to its granule (16 bytes for glibc and jemalloc's small classes).
const ALLOCATION_OVERHEAD: usize = 8;

/// The heap bytes of an `Arc<str>` holding `text`.
fn shared_str_bytes(text: &str) -> usize {
    (ARC_HEADER + text.len()).next_multiple_of(16) + ALLOCATION_OVERHEAD
}

/// Frames encoded back to back into shared 64 KiB buffers: one allocation
/// per buffer instead of one per event, and no size-class slack. A buffer is
/// freed when the last frame in it is dropped; logs drop events oldest first,
/// so buffers are freed in order.
#[derive(Debug, Default)]
pub struct FrameArena {
    buf: BytesMut,
}

/// Size of one arena buffer.
const ARENA_BUFFER: usize = 64 * 1024;
/// Start a new buffer rather than split one with less room than this left.
const ARENA_MIN_ROOM: usize = 512;

impl FrameArena {
    /// An empty arena (allocates on first use).
    pub fn new() -> Self {
        Self::default()
    }

    fn encode(&mut self, fields: &EventFields<'_>) -> Result<Bytes, herald_sse::EncodeError> {
        if self.buf.capacity() - self.buf.len() < ARENA_MIN_ROOM {
            self.buf = BytesMut::with_capacity(ARENA_BUFFER);
        }
        encode_event_into(fields, &mut self.buf)?;
        Ok(self.buf.split().freeze())
    }
}

/// Seconds since the Unix epoch, by the wall clock (fits `u32` until 2106).
pub fn now_s() -> u32 {
    (now_ms() / 1000) as u32
}

/// Milliseconds since the Unix epoch, by the wall clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The struct is the per-event cost of a retained log (with the `Arc`
    /// header it must fit jemalloc's 96-byte class).
    #[test]
    fn event_stays_small() {
        assert!(
            std::mem::size_of::<Event>() <= 80,
            "{}",
            std::mem::size_of::<Event>()
        );
    }

    /// Counted from the known layout: per topic, its pointer in the list
    /// and its own allocation.
    #[test]
    fn retained_bytes_count_every_topic() {
        let mut arena = FrameArena::new();
        let topics: Vec<Topic> = (0..380_000)
            .map(|i| Topic::for_user(&format!("{i}")).expect("a valid user id"))
            .collect();
        let names: usize = topics.iter().map(|t| t.as_str().len()).sum();
        let new = NewEvent {
            event_type: Some("t".to_owned()),
            ..NewEvent::new(topics, "x".repeat(1000))
        };
        let event = Event::from_new(EventId(1), new, 0, &mut arena);
        let counted = event.retained_bytes();
        // At least the pointers, the Arc headers and the names themselves.
        let floor = 380_000 * (16 + 16) + names + 1000;
        assert!(counted >= floor, "{counted} < {floor}");
        // And at most that plus two granules a topic.
        assert!(counted <= floor + 380_000 * 32 + 200, "{counted}");
    }

    #[test]
    fn frames_round_trip_through_the_arena() {
        let mut arena = FrameArena::new();
        let events: Vec<Event> = (1..=1000)
            .map(|i| {
                let new = NewEvent {
                    topics: vec![],
                    broadcast: true,
                    event_type: (i % 2 == 0).then(|| "t".to_owned()),
                    data: format!("line {i}\r\nnext"),
                    retry: Some(i),
                    idempotency_key: None,
                };
                Event::from_new(EventId(i), new, 0, &mut arena)
            })
            .collect();
        for (i, event) in (1..).zip(&events) {
            assert_eq!(event.data(), format!("line {i}\nnext"));
            assert_eq!(event.retry(), Some(i));
            assert!(event.frame().starts_with(format!("id: {i}\n").as_bytes()));
        }
    }

    #[test]
    fn ids_parse_only_from_digits() {
        assert_eq!("42".parse::<EventId>(), Ok(EventId(42)));
        assert!("+42".parse::<EventId>().is_err());
        assert!("".parse::<EventId>().is_err());
        assert!("abc".parse::<EventId>().is_err());
        assert!("99999999999999999999999".parse::<EventId>().is_err());
    }
}
