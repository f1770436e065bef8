//! What one connection wants to receive: the one matching rule.
//!
//! An event reaches a connection when its type passes the connection's
//! `types` filter and it is a broadcast or one of its topics is matched by one
//! of the connection's patterns ([`TopicPattern::matches`]). That rule is
//! written once, here ([`Filter::matches`] and the parts it is made of), and
//! everything that decides delivery uses it:
//! - catch-up and resume reads in every log backend call [`Filter::matches`]
//!   (a backend that pre-filters stored records before decoding them calls
//!   [`Filter::matches_targets`], the same rule without the type);
//! - live delivery's subscription index (`index.rs`) only narrows the
//!   candidates by the patterns' keys and then applies the type part; in
//!   debug builds it asserts [`Filter::matches`] for every event it offers,
//!   and a property test (`tests/live_vs_catch_up.rs`) checks that live
//!   delivery and catch-up deliver the same set to every connection.
//!
//! A new kind of pattern (e.g. URI templates) is one new [`TopicPattern`]
//! variant with its `matches` arm, which the filter asks for every non-exact
//! pattern; the index (`index.rs`) keys each kind it knows, and its
//! exhaustive matches make the compiler ask for the new one.

use std::collections::HashSet;
use std::sync::Arc;

use crate::event::Event;
use crate::topic::{Topic, TopicPattern};

/// A connection's subscriptions and its optional event-type filter.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    patterns: Vec<TopicPattern>,
    /// The exact topics of `patterns`, for O(1) matching of events with many
    /// topics (an `Exact` pattern matches exactly its own name).
    exact: HashSet<Arc<str>>,
    /// The other patterns, each asked through [`TopicPattern::matches`].
    scanned: Vec<TopicPattern>,
    /// `None`: every type. Untyped events count as type `message`.
    types: Option<HashSet<String>>,
}

/// The type an untyped event is dispatched as by EventSource.
const DEFAULT_TYPE: &str = "message";

impl Filter {
    /// A filter over `patterns` (duplicates removed, in one pass through a
    /// hash set: a subscription may name hundreds) and optional `types`.
    pub fn new(
        patterns: impl IntoIterator<Item = TopicPattern>,
        types: Option<Vec<String>>,
    ) -> Self {
        let mut filter = Self {
            types: types.map(|t| t.into_iter().collect()),
            ..Self::default()
        };
        let mut seen = HashSet::new();
        for pattern in patterns {
            if !seen.insert(pattern.clone()) {
                continue;
            }
            match &pattern {
                TopicPattern::Exact(t) => {
                    filter.exact.insert(t.as_arc().clone());
                }
                _ => filter.scanned.push(pattern.clone()),
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
            Some(types) => types.contains(event_type.unwrap_or(DEFAULT_TYPE)),
        }
    }

    /// Whether one of the subscriptions matches `topic`.
    pub fn matches_topic(&self, topic: &str) -> bool {
        self.exact.contains(topic) || self.scanned.iter().any(|p| p.matches(topic))
    }

    /// Whether an event with these targets is for this connection, whatever
    /// its type: a broadcast, or a topic one of the subscriptions matches.
    pub fn matches_targets<'a>(
        &self,
        broadcast: bool,
        topics: impl IntoIterator<Item = &'a str>,
    ) -> bool {
        broadcast || topics.into_iter().any(|t| self.matches_topic(t))
    }

    /// Whether `event` is delivered to a connection with this filter.
    pub fn matches(&self, event: &Event) -> bool {
        self.accepts_type(event.event_type.as_deref())
            && self.matches_targets(event.broadcast, event.topics.iter().map(Topic::as_str))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(spec: &str) -> TopicPattern {
        TopicPattern::parse(spec).unwrap_or_else(|e| panic!("{spec}: {e}"))
    }

    #[test]
    fn duplicates_are_dropped_and_the_order_kept() {
        let specs = ["b/*", "a", "b/*", "*", "a", "c", "*", "b/*"];
        let filter = Filter::new(specs.iter().map(|s| pattern(s)), None);
        let kept: Vec<String> = filter.patterns().iter().map(|p| p.to_string()).collect();
        assert_eq!(kept, ["b/*", "a", "*", "c"]);
        assert_eq!(filter.scanned.len(), 2, "b/* and * once each");
        assert_eq!(filter.exact.len(), 2);
    }
}
