//! Events as stored and delivered.
//!
//! Invariant: an [`Event`] has passed validation (topics, event type) before it
//! gets an id, so its SSE frame can always be encoded; the frame is encoded at
//! most once per process and shared by every connection that receives it.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use bytes::Bytes;
use herald_sse::{encode_event, EventFields};

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

/// A stored event.
#[derive(Debug)]
pub struct Event {
    /// Its position in the log.
    pub id: EventId,
    /// Target topics.
    pub topics: Vec<Topic>,
    /// Whether every connection receives it.
    pub broadcast: bool,
    /// The SSE `event:` type.
    pub event_type: Option<String>,
    /// The payload text.
    pub data: String,
    /// The SSE `retry:` field.
    pub retry: Option<u64>,
    /// When it was stored, in milliseconds since the Unix epoch (retention by age).
    pub stored_at_ms: u64,
    /// The idempotency key it was stored with, if any.
    pub idempotency_key: Option<String>,
    /// The encoded SSE frame, made on first use and then shared.
    frame: OnceLock<Bytes>,
}

impl Event {
    /// Gives `new` its id.
    pub fn from_new(id: EventId, new: NewEvent, stored_at_ms: u64) -> Self {
        Self {
            id,
            topics: new.topics,
            broadcast: new.broadcast,
            event_type: new.event_type,
            data: new.data,
            retry: new.retry,
            stored_at_ms,
            idempotency_key: new.idempotency_key,
            frame: OnceLock::new(),
        }
    }

    /// The SSE frame of this event (`id:`, `event:`, `data:`..., `retry:`,
    /// blank line), encoded once and shared.
    pub fn frame(&self) -> &Bytes {
        self.frame.get_or_init(|| {
            let id = self.id.to_string();
            let fields = EventFields {
                id: Some(&id),
                event: self.event_type.as_deref(),
                data: &self.data,
                retry: self.retry,
            };
            // Validation before storing makes this infallible; should it ever
            // fail, sending the event without its type beats dropping it.
            encode_event(&fields).unwrap_or_else(|_| {
                encode_event(&EventFields {
                    event: None,
                    ..fields
                })
                .unwrap_or_default()
            })
        })
    }
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

    #[test]
    fn ids_parse_only_from_digits() {
        assert_eq!("42".parse::<EventId>(), Ok(EventId(42)));
        assert!("+42".parse::<EventId>().is_err());
        assert!("".parse::<EventId>().is_err());
        assert!("abc".parse::<EventId>().is_err());
        assert!("99999999999999999999999".parse::<EventId>().is_err());
    }
}
