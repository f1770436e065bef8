//! The subscription index: which open stream wants which event, found
//! without asking every stream.
//!
//! The index is an accelerator of [`Filter::matches`], not a rule of its own:
//! it keys each stream under its patterns, so the streams it finds for an
//! event are exactly those whose filter matches the event's targets; it then
//! applies the filter's type part. Debug builds assert the whole rule for
//! every event offered; `tests/live_vs_catch_up.rs` checks that nothing is
//! missed.
//!
//! Every kind of pattern is found by keyed lookups whose number follows the
//! event's topic, never the number of patterns on the server (one client can
//! hold hundreds, and many clients can hold different ones):
//! - an exact topic: one lookup by name;
//! - `*`: its streams are offered every event, once, not once per topic;
//! - a prefix (`orders/*`, `orders/4*`; [`TopicPattern::Prefix`] matches by
//!   plain string prefix, not by segment): streams keyed by the prefix text,
//!   and the set of distinct prefix lengths kept beside them; a topic is
//!   looked up once per distinct length up to its own length (at most
//!   [`crate::topic::MAX_TOPIC_BYTES`] lookups, a handful in practice). Only
//!   cuts on a character boundary are looked up: a prefix is valid UTF-8, so
//!   a topic that starts with it has a boundary at its end.
//!
//! The matches on [`TopicPattern`] here are exhaustive on purpose: a new kind
//! of pattern must be given a key, or a scanned list of its own, here.
//!
//! Invariant: every count (streams, users, topics, prefix lengths) is derived
//! from the index itself and no key is left with an empty set, so counts are
//! exact the moment a stream is removed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

use crate::event::Event;
use crate::filter::Filter;
use crate::lag::StreamMemory;
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
    /// The lag sampler's own record of the stream.
    pub(crate) sampled: StreamMemory,
}

impl Entry {
    /// Offers `event`, found through one of this stream's patterns.
    fn offer(&self, event: &Arc<Event>, write_throughs: &mut u32, wakes: &mut Vec<Waker>) {
        if !self.filter.accepts_type(event.event_type.as_deref()) {
            return;
        }
        debug_assert!(
            self.filter.matches(event),
            "the index offered event {} to stream {} whose filter does not match it",
            event.id,
            self.id
        );
        self.sender.offer(event, write_throughs, wakes);
    }
}

type StreamSet = HashMap<ConnId, Arc<Entry>>;

/// A subscribed topic or pattern as written: `text`, then `*` for a prefix
/// pattern (`*` alone is every topic). Ordered as that written form is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SubscriptionName<'a> {
    text: &'a str,
    star: bool,
}

impl SubscriptionName<'_> {
    fn bytes(&self) -> impl Iterator<Item = u8> + '_ {
        self.text.bytes().chain(self.star.then_some(b'*'))
    }

    /// How this name compares with the written form `other`.
    pub(crate) fn cmp_written(&self, other: &str) -> std::cmp::Ordering {
        self.bytes().cmp(other.bytes())
    }
}

impl Ord for SubscriptionName<'_> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.bytes().cmp(other.bytes())
    }
}

impl PartialOrd for SubscriptionName<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::fmt::Display for SubscriptionName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.text)?;
        if self.star {
            f.write_str("*")?;
        }
        Ok(())
    }
}

/// Streams keyed by what they subscribe to.
#[derive(Debug, Default)]
pub(crate) struct Index {
    /// Every stream (broadcasts go to all of them).
    pub(crate) streams: StreamSet,
    /// Streams by exact topic name.
    exact: HashMap<Arc<str>, StreamSet>,
    /// Streams subscribed to `*`: offered each event once, not once per topic.
    everything: StreamSet,
    /// Streams by prefix pattern: the prefix text, without the `*`.
    prefixes: HashMap<Arc<str>, StreamSet>,
    /// The byte length of every key of `prefixes`, with how many keys have
    /// it: the cuts of a topic that are worth looking up.
    prefix_lengths: BTreeMap<usize, usize>,
    /// Streams by user.
    pub(crate) users: HashMap<Arc<str>, StreamSet>,
}

impl Index {
    /// Offers `event` to every stream whose filter matches it, once each
    /// (the stream's dedupe stamp absorbs a second matching pattern), the
    /// first `write_throughs` parked ones straight to their sockets (see
    /// `crate::stream`). The writers to wake are added to `wakes`.
    pub(crate) fn dispatch(&self, event: &Arc<Event>, write_throughs: u32, wakes: &mut Vec<Waker>) {
        let mut left = write_throughs;
        let mut offer = |e: &Arc<Entry>| e.offer(event, &mut left, wakes);
        if event.broadcast {
            self.streams.values().for_each(offer);
            return;
        }
        for topic in &event.topics {
            if let Some(set) = self.exact.get(topic.as_str()) {
                set.values().for_each(&mut offer);
            }
            for set in self.prefixes_of(topic.as_str()) {
                set.values().for_each(&mut offer);
            }
        }
        self.everything.values().for_each(offer);
    }

    pub(crate) fn insert(&mut self, entry: Arc<Entry>) {
        for pattern in entry.filter.patterns() {
            let set = match pattern {
                TopicPattern::Exact(t) => self.exact.entry(t.as_arc().clone()).or_default(),
                TopicPattern::All => &mut self.everything,
                TopicPattern::Prefix(prefix) => {
                    if !self.prefixes.contains_key(prefix) {
                        *self.prefix_lengths.entry(prefix.len()).or_default() += 1;
                    }
                    self.prefixes.entry(prefix.clone()).or_default()
                }
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
                TopicPattern::Exact(t) => {
                    remove_from(&mut self.exact, t.as_arc(), id);
                }
                TopicPattern::All => {
                    self.everything.remove(&id);
                }
                TopicPattern::Prefix(prefix) => {
                    if remove_from(&mut self.prefixes, prefix, id) {
                        forget_length(&mut self.prefix_lengths, prefix.len());
                    }
                }
            }
        }
        if let Some(user) = &entry.user {
            remove_from(&mut self.users, user, id);
        }
        Some(entry)
    }

    /// At least how many streams `event` is offered to (an upper bound of
    /// its recipients; a stream matched twice is counted twice): a few hash
    /// lookups, for deciding where to dispatch it.
    pub(crate) fn candidates(&self, event: &Event) -> usize {
        if event.broadcast {
            return self.streams.len();
        }
        let mut n = self.everything.len();
        for topic in &event.topics {
            n += self.exact.get(topic.as_str()).map_or(0, HashMap::len);
            n += self
                .prefixes_of(topic.as_str())
                .map(HashMap::len)
                .sum::<usize>();
        }
        n
    }

    /// Distinct subscribed topics and patterns.
    pub(crate) fn topic_count(&self) -> usize {
        self.exact.len() + self.prefixes.len() + usize::from(!self.everything.is_empty())
    }

    /// The stream sets of every prefix pattern `topic` starts with: one
    /// lookup per distinct prefix length that fits in the topic.
    fn prefixes_of<'a>(&'a self, topic: &'a str) -> impl Iterator<Item = &'a StreamSet> + 'a {
        self.prefix_lengths
            .range(..=topic.len())
            .filter_map(move |(&len, _)| topic.get(..len))
            .filter_map(|cut| self.prefixes.get(cut))
    }

    /// Every subscribed topic and pattern, named as a subscriber wrote it
    /// (`orders/*`, `*`), with how many streams name it; unordered, and
    /// borrowed, so a caller that keeps a few allocates only those.
    pub(crate) fn subscriptions(&self) -> Vec<(SubscriptionName<'_>, usize)> {
        let exact = self.exact.iter().map(|(t, set)| {
            let name = SubscriptionName {
                text: t,
                star: false,
            };
            (name, set.len())
        });
        let prefixes = self.prefixes.iter().map(|(p, set)| {
            let name = SubscriptionName {
                text: p,
                star: true,
            };
            (name, set.len())
        });
        let everything = (!self.everything.is_empty()).then(|| {
            let name = SubscriptionName {
                text: "",
                star: true,
            };
            (name, self.everything.len())
        });
        exact.chain(prefixes).chain(everything).collect()
    }

    /// Streams whose subscriptions match `topic` (by the filter's own rule).
    pub(crate) fn topic_subscribers(&self, topic: &str) -> usize {
        self.streams
            .values()
            .filter(|e| e.filter.matches_topic(topic))
            .count()
    }
}

/// Removes stream `id` from the set under `key`, and the key with its set
/// when that was the set's last stream; returns whether the key went.
fn remove_from<K>(map: &mut HashMap<K, StreamSet>, key: &K, id: ConnId) -> bool
where
    K: std::hash::Hash + Eq,
{
    let Some(set) = map.get_mut(key) else {
        return false;
    };
    set.remove(&id);
    if !set.is_empty() {
        return false;
    }
    map.remove(key);
    true
}

/// One fewer prefix of `len` bytes; the length goes when it was the last.
fn forget_length(lengths: &mut BTreeMap<usize, usize>, len: usize) {
    if let Some(count) = lengths.get_mut(&len) {
        *count -= 1;
        if *count == 0 {
            lengths.remove(&len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventId, FrameArena, NewEvent};
    use crate::stream::{stream_queue, Registry, StreamReceiver, StreamShared};
    use crate::topic::Topic;

    /// Receivers here are dropped by the test, not by a hub.
    #[derive(Debug)]
    struct NoRegistry;

    impl Registry for NoRegistry {
        fn unregister(&self, _: ConnId, _: &StreamShared) {}
    }

    fn pattern(spec: &str) -> TopicPattern {
        TopicPattern::parse(spec).unwrap_or_else(|e| panic!("{spec}: {e}"))
    }

    /// Registers stream `id` subscribed to `specs`; its receiver shows what
    /// the index offered it.
    fn subscribe(index: &mut Index, id: ConnId, specs: &[&str]) -> StreamReceiver {
        let (sender, receiver) = stream_queue(id, 1000, false, Arc::new(NoRegistry));
        index.insert(Arc::new(Entry {
            id,
            user: None,
            filter: Arc::new(Filter::new(specs.iter().map(|s| pattern(s)), None)),
            sender,
            close_at: None,
            expires_at: None,
            sampled: StreamMemory::default(),
        }));
        receiver
    }

    fn event(id: u64, topics: &[&str]) -> Arc<Event> {
        let new = NewEvent::new(
            topics
                .iter()
                .map(|t| Topic::new(t).unwrap_or_else(|e| panic!("{t}: {e}")))
                .collect(),
            "x".to_owned(),
        );
        Arc::new(Event::from_new(EventId(id), new, 0, &mut FrameArena::new()))
    }

    /// How many events the index offered the stream since the last call.
    fn offered(receiver: &mut StreamReceiver) -> usize {
        std::iter::from_fn(|| receiver.try_recv()).count()
    }

    #[test]
    fn prefixes_match_by_string_prefix_at_any_depth() {
        let mut index = Index::default();
        let mut orders = subscribe(&mut index, 1, &["orders/*"]);
        let mut orders4 = subscribe(&mut index, 2, &["orders/4*"]);
        let mut ord = subscribe(&mut index, 3, &["ord*"]);
        let mut unicode = subscribe(&mut index, 4, &["é*"]);
        let mut deep = subscribe(&mut index, 5, &["orders/42/items/*"]);
        for (n, (topic, wanted)) in [
            ("orders/42", [1, 1, 1, 0, 0]),
            ("orders/42/items/7", [1, 1, 1, 0, 1]),
            ("orders/5", [1, 0, 1, 0, 0]),
            ("orders", [0, 0, 1, 0, 0]),
            ("order", [0, 0, 1, 0, 0]),
            // A topic as long as the prefix: `ord*` matches `ord` itself.
            ("ord", [0, 0, 1, 0, 0]),
            ("or", [0, 0, 0, 0, 0]),
            ("éa", [0, 0, 0, 1, 0]),
            // The 1- and 3-byte cuts of this topic are not char boundaries.
            ("ée/orders", [0, 0, 0, 1, 0]),
        ]
        .into_iter()
        .enumerate()
        {
            index.dispatch(&event(n as u64 + 1, &[topic]), 0, &mut Vec::new());
            let got = [
                offered(&mut orders),
                offered(&mut orders4),
                offered(&mut ord),
                offered(&mut unicode),
                offered(&mut deep),
            ];
            assert_eq!(got, wanted, "who got an event on {topic:?}");
        }
    }

    #[test]
    fn an_event_matched_by_several_prefixes_is_offered_once() {
        let mut index = Index::default();
        let mut both = subscribe(&mut index, 1, &["a/*", "a/b*", "a/b/c"]);
        index.dispatch(&event(1, &["a/b/c", "a/bx"]), 0, &mut Vec::new());
        assert_eq!(offered(&mut both), 1);
    }

    #[test]
    fn removal_leaves_no_empty_prefix_or_length() {
        let mut index = Index::default();
        let _a = subscribe(&mut index, 1, &["a/*", "a/b*", "news"]);
        let _b = subscribe(&mut index, 2, &["a/*", "bb/*", "*"]);
        let _c = subscribe(&mut index, 3, &["a/b*"]);
        // a/, a/b, bb/, news, *
        assert_eq!(index.topic_count(), 5);
        assert_eq!(index.prefix_lengths, BTreeMap::from([(2, 1), (3, 2)]));

        assert!(index.remove(2).is_some());
        assert_eq!(
            index.topic_count(),
            3,
            "bb/ and * went with their only stream"
        );
        assert_eq!(index.prefix_lengths, BTreeMap::from([(2, 1), (3, 1)]));
        assert_eq!(index.prefixes["a/"].len(), 1);

        assert!(index.remove(1).is_some());
        assert_eq!(index.topic_count(), 1);
        assert_eq!(index.prefix_lengths, BTreeMap::from([(3, 1)]));
        assert!(!index.prefixes.contains_key("a/"));

        assert!(index.remove(3).is_some());
        assert!(index.remove(3).is_none(), "a second removal is a no-op");
        assert_eq!(index.topic_count(), 0);
        assert!(index.prefixes.is_empty() && index.prefix_lengths.is_empty());
        assert!(index.exact.is_empty() && index.everything.is_empty() && index.streams.is_empty());
    }

    #[test]
    fn subscriptions_are_listed_as_written_with_their_stream_counts() {
        let mut index = Index::default();
        let _a = subscribe(&mut index, 1, &["news", "orders/*", "*"]);
        let _b = subscribe(&mut index, 2, &["news", "orders/*"]);
        let _c = subscribe(&mut index, 3, &["news"]);
        let mut listed: Vec<(String, usize)> = index
            .subscriptions()
            .into_iter()
            .map(|(name, n)| (name.to_string(), n))
            .collect();
        listed.sort();
        let expected = [("*", 1), ("news", 3), ("orders/*", 2)];
        let expected: Vec<(String, usize)> =
            expected.iter().map(|(t, n)| (t.to_string(), *n)).collect();
        assert_eq!(listed, expected);
        assert_eq!(listed.len(), index.topic_count());
    }

    #[test]
    fn lookups_follow_the_topic_not_the_number_of_prefixes() {
        let mut index = Index::default();
        let specs: Vec<String> = (0..16_000).map(|i| format!("a{i}/*")).collect();
        let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
        let _many = subscribe(&mut index, 1, &specs);
        // `a0/` .. `a15999/`: five distinct lengths (3 to 7 bytes), whatever their number.
        assert_eq!(index.prefix_lengths.len(), 5);
        let topic = "a123/x";
        assert_eq!(index.prefixes_of(topic).count(), 1);
        assert_eq!(index.prefixes_of("b").count(), 0);
    }
}
