//! What one connection wants to receive.
//!
//! The same [`Filter::matches`] decides live delivery (in the hub) and catch-up
//! reads (in the log), so a resumed stream and a live one see the same events.

use std::collections::HashSet;
use std::sync::Arc;

use crate::event::Event;
use crate::topic::{Topic, TopicPattern};

/// A connection's subscriptions and its optional event-type filter.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    patterns: Vec<TopicPattern>,
    /// Exact topics, for O(1) matching of events with many topics.
    exact: HashSet<Arc<str>>,
    prefixes: Vec<Arc<str>>,
    all: bool,
    /// `None`: every type. Untyped events count as type `message`.
    types: Option<HashSet<String>>,
}

impl Filter {
    /// A filter over `patterns` (duplicates removed) and optional `types`.
    pub fn new(
        patterns: impl IntoIterator<Item = TopicPattern>,
        types: Option<Vec<String>>,
    ) -> Self {
        let mut filter = Self {
            types: types.map(|t| t.into_iter().collect()),
            ..Self::default()
        };
        for pattern in patterns {
            if filter.patterns.contains(&pattern) {
                continue;
            }
            match &pattern {
                TopicPattern::Exact(t) => {
                    filter.exact.insert(t.as_arc().clone());
                }
                TopicPattern::Prefix(p) => filter.prefixes.push(p.clone()),
                TopicPattern::All => filter.all = true,
            }
            filter.patterns.push(pattern);
        }
        filter
    }

    /// Matches every event: what the log tail reads with.
    pub fn everything() -> Self {
        Self::new([TopicPattern::All], None)
    }

    /// The subscriptions, deduplicated, in the order given.
    pub fn patterns(&self) -> &[TopicPattern] {
        &self.patterns
    }

    /// Whether an event of this type passes the `types` filter.
    pub fn accepts_type(&self, event_type: Option<&str>) -> bool {
        match &self.types {
            None => true,
            Some(types) => types.contains(event_type.unwrap_or("message")),
        }
    }

    /// Whether one of the subscriptions matches `topic`.
    pub fn matches_topic(&self, topic: &Topic) -> bool {
        self.all
            || self.exact.contains(topic.as_str())
            || self
                .prefixes
                .iter()
                .any(|p| topic.as_str().starts_with(&**p))
    }

    /// Whether `event` is delivered to a connection with this filter.
    pub fn matches(&self, event: &Event) -> bool {
        self.accepts_type(event.event_type.as_deref())
            && (event.broadcast || event.topics.iter().any(|t| self.matches_topic(t)))
    }
}
