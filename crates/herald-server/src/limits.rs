//! Limits that need an identity, and the counters of every refusal.
//!
//! Invariants: the rate limiter's memory is bounded ([`MAX_PRINCIPALS`]
//! buckets; idle full buckets are the first forgotten, and forgetting a
//! bucket only ever lets a caller through, never refuses one wrongly); a
//! refusal is counted once, where its answer is made.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use parking_lot::Mutex;

use crate::error::ErrorCode;
use crate::AppState;

/// Most callers tracked by the publish rate limiter at once.
const MAX_PRINCIPALS: usize = 100_000;

/// A token bucket per caller: `rate` publish requests a second, bursts of
/// up to `rate`.
#[derive(Debug)]
pub(crate) struct PublishRate {
    rate: f64,
    buckets: Mutex<HashMap<Arc<str>, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl PublishRate {
    /// `per_sec` of 0 means no limit.
    pub(crate) fn new(per_sec: u32) -> Option<Self> {
        (per_sec > 0).then(|| Self {
            rate: f64::from(per_sec),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Takes one publish from `who`'s bucket; `Err(seconds)` to wait when empty.
    pub(crate) fn take(&self, who: &Arc<str>) -> Result<(), u32> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        if buckets.len() >= MAX_PRINCIPALS && !buckets.contains_key(who) {
            let rate = self.rate;
            buckets.retain(|_, b| b.refilled(now, rate).tokens < rate);
            if buckets.len() >= MAX_PRINCIPALS {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(who.clone()).or_insert(Bucket {
            tokens: self.rate,
            at: now,
        });
        *bucket = bucket.refilled(now, self.rate);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.rate;
            Err(wait.ceil().max(1.0) as u32)
        }
    }
}

impl Bucket {
    fn refilled(self, now: Instant, rate: f64) -> Self {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        Self {
            tokens: (self.tokens + elapsed * rate).min(rate),
            at: now,
        }
    }
}

/// Counters of refused requests, by error code, and of streams sent away.
#[derive(Debug, Default)]
pub struct Refusals {
    by_code: [AtomicU64; ErrorCode::ALL.len()],
    /// Subscribers told to come back later: over `max_connections`.
    pub over_capacity: AtomicU64,
    /// Subscribers told to come back later: over `max_connections_per_user`.
    pub over_user_limit: AtomicU64,
}

impl Refusals {
    pub(crate) fn count(&self, code: ErrorCode) {
        if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
            self.by_code[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `(code, count)` for every code, in declaration order.
    pub fn by_code(&self) -> impl Iterator<Item = (ErrorCode, u64)> + '_ {
        ErrorCode::ALL
            .iter()
            .zip(&self.by_code)
            .map(|(code, n)| (*code, n.load(Ordering::Relaxed)))
    }
}

/// Counts every error answer by its code (the code rides in the response's
/// extensions, put there by `ApiError::into_response`).
pub(crate) async fn count_refusals(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    if let Some(code) = response.extensions().get::<ErrorCode>() {
        state.refusals.count(*code);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_rate_then_says_how_long_to_wait() {
        let limit = PublishRate::new(5).expect("a limit");
        let a: Arc<str> = Arc::from("a");
        let b: Arc<str> = Arc::from("b");
        for _ in 0..5 {
            assert_eq!(limit.take(&a), Ok(()));
        }
        assert_eq!(limit.take(&a), Err(1));
        // Another caller has its own bucket.
        assert_eq!(limit.take(&b), Ok(()));
        assert!(PublishRate::new(0).is_none());
    }
}
