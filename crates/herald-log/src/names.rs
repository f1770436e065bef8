//! Shared topic and type names, so a million retained events on `news` hold
//! one string, not a million, and the one place an [`Event`] is built from
//! stored parts. Used by every backend.
//!
//! Invariant: every event a backend holds or returns was built here, so its
//! topics and type name are the table's shared copies.

use std::collections::HashSet;
use std::sync::Arc;

use herald_core::{Event, EventId, FrameArena, NewEvent, Topic};

/// What one name costs in an interning table: its pointer in the hash set,
/// the set's control byte, at its load factor (at most 7/8, and half that
/// just after it grew).
pub(crate) const TABLE_SLOT_BYTES: usize = 32;

/// An event's stored fields other than its topics, as a backend keeps them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StoredFields<'a> {
    pub id: EventId,
    pub broadcast: bool,
    pub event_type: Option<&'a str>,
    pub data: &'a str,
    pub retry: Option<u64>,
    /// Milliseconds since the Unix epoch (whole seconds when read from disk).
    pub stored_at_ms: u64,
}

/// An interning table. A log's writer keeps one for the life of the log; a
/// disk read makes a short-lived one so the events of one page share names.
#[derive(Debug, Default)]
pub(crate) struct Names {
    topics: HashSet<Topic>,
    types: HashSet<Arc<str>>,
    /// Table size after the last sweep: sweep again when it has doubled.
    swept_at: usize,
}

impl Names {
    /// The shared copy of `topic`.
    pub(crate) fn topic(&mut self, topic: Topic) -> Topic {
        if let Some(shared) = self.topics.get(topic.as_str()) {
            return shared.clone();
        }
        self.topics.insert(topic.clone());
        topic
    }

    /// The shared topic named `name`; `None` if the name is not a valid
    /// topic (only damaged data on disk can be that).
    pub(crate) fn topic_str(&mut self, name: &str) -> Option<Topic> {
        if let Some(shared) = self.topics.get(name) {
            return Some(shared.clone());
        }
        let topic = Topic::new(name).ok()?;
        self.topics.insert(topic.clone());
        Some(topic)
    }

    /// The shared type name `name`.
    pub(crate) fn event_type(&mut self, name: &str) -> Arc<str> {
        if let Some(shared) = self.types.get(name) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(name);
        self.types.insert(shared.clone());
        shared
    }

    /// The event of `fields` on `topics` (shared copies already, from
    /// [`Names::topic`] or [`Names::topic_str`]), with its type name shared
    /// and its frame encoded into `arena`.
    pub(crate) fn event(
        &mut self,
        fields: StoredFields<'_>,
        topics: Box<[Topic]>,
        arena: &mut FrameArena,
    ) -> Event {
        let event_type = fields.event_type.map(|t| self.event_type(t));
        Event::from_parts(
            fields.id,
            topics,
            fields.broadcast,
            event_type,
            fields.data,
            fields.retry,
            fields.stored_at_ms,
            arena,
        )
    }

    /// The event `new` becomes when stored as `id` at `stored_at_ms`.
    pub(crate) fn new_event(
        &mut self,
        id: EventId,
        new: NewEvent,
        stored_at_ms: u64,
        arena: &mut FrameArena,
    ) -> Event {
        let topics = new.topics.into_iter().map(|t| self.topic(t)).collect();
        let fields = StoredFields {
            id,
            broadcast: new.broadcast,
            event_type: new.event_type.as_deref(),
            data: &new.data,
            retry: new.retry,
            stored_at_ms,
        };
        self.event(fields, topics, arena)
    }

    /// Forgets names no event holds any more, when the table has doubled
    /// since the last sweep (amortised O(1) per insert).
    pub(crate) fn sweep_if_grown(&mut self) {
        let size = self.topics.len() + self.types.len();
        if size < 1024 || size < self.swept_at * 2 {
            return;
        }
        self.topics.retain(|t| Arc::strong_count(t.as_arc()) > 1);
        self.types.retain(|t| Arc::strong_count(t) > 1);
        self.swept_at = self.topics.len() + self.types.len();
    }
}
