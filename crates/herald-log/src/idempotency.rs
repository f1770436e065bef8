//! The idempotency table every backend keeps: key -> (id, stored at), with
//! keys forgotten once they leave the window (or past a hard cap, so memory
//! stays bounded whatever the window).

use std::collections::{HashMap, VecDeque};

use herald_core::EventId;

/// Idempotency keys remembered at most, whatever the window.
const MAX_IDEMPOTENCY_KEYS: usize = 1_000_000;

/// Recently used idempotency keys.
#[derive(Debug, Default)]
pub(crate) struct IdempotencyKeys {
    map: HashMap<String, (EventId, u64)>,
    /// Keys in insertion order, for expiry.
    order: VecDeque<(u64, String)>,
}

impl IdempotencyKeys {
    /// Remembers that `key` stored `id` at `at_ms`.
    pub(crate) fn insert(&mut self, key: String, id: EventId, at_ms: u64) {
        self.map.insert(key.clone(), (id, at_ms));
        self.order.push_back((at_ms, key));
    }

    /// The id `key` stored, if that was within `window_ms` of `now_ms`.
    pub(crate) fn get(&self, key: &str, now_ms: u64, window_ms: u64) -> Option<EventId> {
        self.map
            .get(key)
            .filter(|(_, at)| now_ms.saturating_sub(*at) <= window_ms)
            .map(|(id, _)| *id)
    }

    /// Forgets keys older than the window, and the oldest past the cap.
    pub(crate) fn expire(&mut self, now_ms: u64, window_ms: u64) {
        while let Some((at, _)) = self.order.front() {
            let expired = now_ms.saturating_sub(*at) > window_ms;
            if !expired && self.order.len() <= MAX_IDEMPOTENCY_KEYS {
                break;
            }
            if let Some((at, key)) = self.order.pop_front() {
                // Only forget the key if this is the entry that set it.
                if self.map.get(&key).is_some_and(|(_, t)| *t == at) {
                    self.map.remove(&key);
                }
            }
        }
    }
}
