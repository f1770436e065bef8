//! The subscription index: which open stream wants which event, found
//! without asking every stream.
//!
//! The index is an accelerator of [`Filter::matches`], not a rule of its own:
//! it keys each stream under its patterns (exact topics by name, `*` once,
//! every other pattern by the pattern itself, asked through
//! [`TopicPattern::matches`]), so the streams it finds for an event are
//! exactly those whose filter matches the event's targets; it then applies
//! the filter's type part. Debug builds assert the whole rule for every
//! event offered; `tests/live_vs_catch_up.rs` checks that nothing is missed.
//!
//! Invariant: every count (streams, users, topics) is derived from the index
//! itself, so it is exact the moment a stream is removed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::event::Event;
use crate::filter::Filter;
use crate::stream::{ConnId, StreamSender};
use crate::topic::TopicPattern;

/// One registered stream, as the hub sees it.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) id: ConnId,
    pub(crate) user: Option<Arc<str>>,
    pub(crate) filter: Arc<Filter>,
    pub(crate) sender: StreamSender,
    /// When the stream's lifetime ends, if it has one.
    pub(crate) close_at: Option<Instant>,
    /// When the subscriber's token expires, if it has one.
    pub(crate) expires_at: Option<Instant>,
}

impl Entry {
    /// Offers `event`, found through one of this stream's patterns.
    fn offer(&self, event: &Arc<Event>) {
        if !self.filter.accepts_type(event.event_type.as_deref()) {
            return;
        }
        debug_assert!(
            self.filter.matches(event),
            "the index offered event {} to stream {} whose filter does not match it",
            event.id,
            self.id
        );
        self.sender.offer(event);
    }
}

type StreamSet = HashMap<ConnId, Arc<Entry>>;

/// Streams keyed by what they subscribe to.
#[derive(Debug, Default)]
pub(crate) struct Index {
    /// Every stream (broadcasts go to all of them).
    pub(crate) streams: StreamSet,
    /// Streams by exact topic name.
    exact: HashMap<Arc<str>, StreamSet>,
    /// Streams subscribed to `*`: offered each event once, not once per topic.
    everything: StreamSet,
    /// Streams by every other pattern (prefixes, and any later kind).
    scanned: HashMap<TopicPattern, StreamSet>,
    /// Streams by user.
    pub(crate) users: HashMap<Arc<str>, StreamSet>,
}

impl Index {
    /// Offers `event` to every stream whose filter matches it, once each
    /// (the stream's dedupe stamp absorbs a second matching pattern).
    pub(crate) fn dispatch(&self, event: &Arc<Event>) {
        if event.broadcast {
            self.streams.values().for_each(|e| e.offer(event));
            return;
        }
        for topic in &event.topics {
            if let Some(set) = self.exact.get(topic.as_str()) {
                set.values().for_each(|e| e.offer(event));
            }
            for (pattern, set) in &self.scanned {
                if pattern.matches(topic.as_str()) {
                    set.values().for_each(|e| e.offer(event));
                }
            }
        }
        self.everything.values().for_each(|e| e.offer(event));
    }

    pub(crate) fn insert(&mut self, entry: Arc<Entry>) {
        for pattern in entry.filter.patterns() {
            let set = match pattern {
                TopicPattern::Exact(t) => self.exact.entry(t.as_arc().clone()).or_default(),
                TopicPattern::All => &mut self.everything,
                other => self.scanned.entry(other.clone()).or_default(),
            };
            set.insert(entry.id, entry.clone());
        }
        if let Some(user) = &entry.user {
            self.users
                .entry(user.clone())
                .or_default()
                .insert(entry.id, entry.clone());
        }
        self.streams.insert(entry.id, entry);
    }

    pub(crate) fn remove(&mut self, id: ConnId) -> Option<Arc<Entry>> {
        let entry = self.streams.remove(&id)?;
        for pattern in entry.filter.patterns() {
            match pattern {
                TopicPattern::Exact(t) => remove_from(&mut self.exact, t.as_arc(), id),
                TopicPattern::All => {
                    self.everything.remove(&id);
                }
                other => remove_from(&mut self.scanned, other, id),
            }
        }
        if let Some(user) = &entry.user {
            remove_from(&mut self.users, user, id);
        }
        Some(entry)
    }

    /// Distinct subscribed topics and patterns.
    pub(crate) fn topic_count(&self) -> usize {
        self.exact.len() + self.scanned.len() + usize::from(!self.everything.is_empty())
    }

    /// Streams whose subscriptions match `topic` (by the filter's own rule).
    pub(crate) fn topic_subscribers(&self, topic: &str) -> usize {
        self.streams
            .values()
            .filter(|e| e.filter.matches_topic(topic))
            .count()
    }
}

fn remove_from<K>(map: &mut HashMap<K, StreamSet>, key: &K, id: ConnId)
where
    K: std::hash::Hash + Eq,
{
    if let Some(set) = map.get_mut(key) {
        set.remove(&id);
        if set.is_empty() {
            map.remove(key);
        }
    }
}
