//! Shared topic and type names, so a million retained events on `news` hold
//! one string, not a million. Used by every backend.

use std::collections::HashSet;
use std::sync::Arc;

use herald_core::Topic;

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
