//! Limits that need an identity, the connection budget, and the counters of
//! every refusal.
//!
//! Invariants: the rate limiter's memory is bounded ([`MAX_PRINCIPALS`]
//! buckets; idle full buckets are the first forgotten, and forgetting a
//! bucket only ever lets a caller through, never refuses one wrongly); a
//! refusal is counted once, where its answer is made.
//!
//! The connection budget ([`ConnectionBudget`]) shares the process's file
//! descriptors out: event streams get at most `limit − reserve`, so however
//! many subscribers come, `reserve` descriptors stay for publishers, admin
//! and health checks, the log's files and connections still being read. A
//! stream holds a [`StreamSlot`] for as long as it is open; slots are taken
//! by compare-and-swap ([`StreamSlots::take`]), never by a check followed by
//! a take, so no burst of concurrent subscribes can overshoot the cap.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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

/// Descriptors the budget keeps out of every connection count: the
/// listener, the runtimes' epoll and wake-up descriptors, stdio, the log's
/// segment files, a certificate being reloaded, a JWKS fetch.
const FD_SPARE: usize = 64;
/// The smallest reserve of descriptors kept from event streams.
const MIN_FD_RESERVE: usize = 256;

/// How many connections of each kind the server holds at most, derived from
/// the file-descriptor limit (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionBudget {
    /// The process's open-file limit, when known.
    pub fd_limit: Option<usize>,
    /// Most open event streams: `max_connections`, lowered to
    /// `fd_limit − reserve`.
    pub streams: usize,
    /// Most TCP connections held at once, of every kind.
    pub connections: usize,
    /// Most connections whose first request head has not been seen yet
    /// (each waits at most the header-read timeout); when all are taken the
    /// accept loop waits, and new connections queue in the kernel's backlog,
    /// costing no descriptor.
    pub unclassified: usize,
}

impl ConnectionBudget {
    /// The budget for `max_connections` streams under `fd_limit` open files
    /// (`None`: unknown; then only `max_connections` bounds anything).
    pub fn new(max_connections: usize, fd_limit: Option<usize>) -> Self {
        let Some(limit) = fd_limit else {
            return Self {
                fd_limit,
                streams: max_connections,
                connections: max_connections.saturating_add(1024),
                unclassified: 1024,
            };
        };
        let reserve = Self::reserve(limit);
        let spare = FD_SPARE.min(reserve / 4);
        Self {
            fd_limit,
            streams: max_connections.min(limit - reserve),
            connections: limit - spare,
            // Half the reserve: the other half stays for requests that have
            // been read (publishes, health checks), whatever silent
            // connections do.
            unclassified: (reserve / 2).max(1),
        }
    }

    /// Descriptors kept from event streams under a limit of `limit`: 5 %, at
    /// least [`MIN_FD_RESERVE`], at most half the limit.
    pub fn reserve(limit: usize) -> usize {
        (limit / 20).max(MIN_FD_RESERVE).min(limit / 2)
    }
}

/// Which cap turned a subscriber away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TurnedAway {
    /// `max_connections` (as lowered by the connection budget).
    MaxConnections,
    /// `max_connections_per_ip`.
    PerIp,
    /// `max_connections_per_user`.
    PerUser,
}

/// The open streams, in total, per client address and per user, against
/// their caps.
///
/// Invariant: `open` and every count in `per_ip` and `per_user` are exactly
/// the live [`StreamSlot`]s (a slot gives back what it took when dropped),
/// and neither map holds a zero count, so their sizes are bounded by the open
/// streams.
#[derive(Debug)]
pub(crate) struct StreamSlots {
    max: usize,
    open: AtomicUsize,
    per_ip: KeyedCounts<IpAddr>,
    per_user: KeyedCounts<Arc<str>>,
}

/// Counts by key against one cap (0: no cap, nothing counted).
#[derive(Debug)]
struct KeyedCounts<K> {
    max: usize,
    counts: Mutex<HashMap<K, usize>>,
}

impl<K: std::hash::Hash + Eq> KeyedCounts<K> {
    fn new(max: usize) -> Self {
        Self {
            max,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one more for `key` if that stays within the cap; whether it did.
    fn try_add(&self, key: &K) -> bool
    where
        K: Clone,
    {
        let mut counts = self.counts.lock();
        match counts.get_mut(key) {
            Some(count) if *count >= self.max => false,
            Some(count) => {
                *count += 1;
                true
            }
            None => {
                counts.insert(key.clone(), 1);
                true
            }
        }
    }

    /// Gives back one counted for `key`, forgetting the key at zero.
    fn remove(&self, key: &K) {
        let mut counts = self.counts.lock();
        if let Some(count) = counts.get_mut(key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(key);
            }
        }
    }
}

/// One open stream's place in [`StreamSlots`]; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct StreamSlot {
    slots: Arc<StreamSlots>,
    /// The address counted against the per-address cap, if one was.
    ip: Option<IpAddr>,
    /// The user counted against the per-user cap, if one was.
    user: Option<Arc<str>>,
}

impl StreamSlots {
    pub(crate) fn new(max: usize, max_per_ip: usize, max_per_user: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: AtomicUsize::new(0),
            per_ip: KeyedCounts::new(max_per_ip),
            per_user: KeyedCounts::new(max_per_user),
        })
    }

    /// Takes a place for a stream from `peer` (`None`: address unknown,
    /// not counted per address) of `user` (`None`: anonymous, not counted
    /// per user).
    pub(crate) fn take(
        self: &Arc<Self>,
        peer: Option<IpAddr>,
        user: Option<&Arc<str>>,
    ) -> Result<StreamSlot, TurnedAway> {
        let max = self.max;
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < max).then_some(open + 1)
            })
            .map_err(|_| TurnedAway::MaxConnections)?;
        // From here on the slot owns one place in `open` (and then in each
        // map it is counted in): an early return drops it, which gives each
        // place back.
        let mut slot = StreamSlot {
            slots: self.clone(),
            ip: None,
            user: None,
        };
        if let (Some(peer), true) = (peer, self.per_ip.max > 0) {
            let ip = per_ip_key(peer);
            if !self.per_ip.try_add(&ip) {
                return Err(TurnedAway::PerIp);
            }
            slot.ip = Some(ip);
        }
        if let (Some(user), true) = (user, self.per_user.max > 0) {
            if !self.per_user.try_add(user) {
                return Err(TurnedAway::PerUser);
            }
            slot.user = Some(user.clone());
        }
        Ok(slot)
    }

    /// Open streams holding a slot.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Some(ip) = &self.ip {
            self.slots.per_ip.remove(ip);
        }
        if let Some(user) = &self.user {
            self.slots.per_user.remove(user);
        }
        self.slots.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The address a client is counted under: IPv4 as it is (an IPv4-mapped
/// IPv6 address as its IPv4 one); IPv6 by its /64, since one host commonly
/// holds a whole /64 and could otherwise take a fresh address per stream.
fn per_ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

/// Counters of refused requests, by error code, and of streams sent away.
#[derive(Debug, Default)]
pub struct Refusals {
    by_code: [AtomicU64; ErrorCode::ALL.len()],
    /// Subscribers told to come back later: over `max_connections`.
    pub over_capacity: AtomicU64,
    /// Subscribers told to come back later: over `max_connections_per_ip`.
    pub over_ip_limit: AtomicU64,
    /// Subscribers told to come back later: over `max_connections_per_user`.
    pub over_user_limit: AtomicU64,
}

impl Refusals {
    pub(crate) fn count(&self, code: ErrorCode) {
        if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
            self.by_code[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a subscriber told to come back later.
    pub(crate) fn turned_away(&self, why: TurnedAway) {
        let counter = match why {
            TurnedAway::MaxConnections => &self.over_capacity,
            TurnedAway::PerIp => &self.over_ip_limit,
            TurnedAway::PerUser => &self.over_user_limit,
        };
        counter.fetch_add(1, Ordering::Relaxed);
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

    #[test]
    fn the_budget_keeps_a_reserve_below_the_fd_limit() {
        let budget = ConnectionBudget::new(100_000, Some(20_000));
        assert_eq!(budget.streams, 19_000, "5 % kept");
        assert_eq!(budget.unclassified, 500);
        assert_eq!(budget.connections, 20_000 - 64);
        // What streams and connections being read can hold leaves room for
        // other requests.
        assert!(budget.streams + budget.unclassified + 64 < budget.connections);
        // A configured cap below the budget stays.
        assert_eq!(ConnectionBudget::new(100, Some(20_000)).streams, 100);
        // Small limits: at least 256 kept, but never more than half.
        assert_eq!(ConnectionBudget::new(100_000, Some(1024)).streams, 768);
        assert_eq!(ConnectionBudget::new(100_000, Some(256)).streams, 128);
        let tiny = ConnectionBudget::new(100_000, Some(8));
        assert!(tiny.streams >= 1 && tiny.unclassified >= 1 && tiny.connections <= 8);
        // Unknown limit: the configuration alone.
        assert_eq!(ConnectionBudget::new(100, None).streams, 100);
    }

    #[test]
    fn slots_never_exceed_the_cap_and_come_back_when_dropped() {
        let slots = StreamSlots::new(3, 0, 0);
        let held: Vec<_> = (0..3)
            .map(|_| slots.take(None, None).expect("room"))
            .collect();
        assert_eq!(
            slots.take(None, None).map(drop),
            Err(TurnedAway::MaxConnections)
        );
        drop(held);
        assert_eq!(slots.open(), 0);
        assert!(slots.take(None, None).is_ok());
    }

    /// Eight threads each trying `attempts` takes at once; what each got.
    fn take_from_8_threads(
        slots: &Arc<StreamSlots>,
        attempts: usize,
        user: Option<&Arc<str>>,
    ) -> Vec<Vec<StreamSlot>> {
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        (0..attempts)
                            .filter_map(|_| slots.take(None, user).ok())
                            .collect()
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("no panic"))
                .collect()
        })
    }

    #[test]
    fn concurrent_takes_never_overshoot() {
        let slots = StreamSlots::new(100, 0, 0);
        let taken = take_from_8_threads(&slots, 100, None);
        assert_eq!(taken.iter().map(Vec::len).sum::<usize>(), 100);
        assert_eq!(slots.open(), 100);
    }

    #[test]
    fn the_per_ip_cap_counts_each_address_and_forgets_empty_ones() {
        let slots = StreamSlots::new(100, 2, 0);
        let a: IpAddr = "127.0.0.2".parse().expect("ip");
        let b: IpAddr = "127.0.0.3".parse().expect("ip");
        let first = slots.take(Some(a), None).expect("room");
        let _second = slots.take(Some(a), None).expect("room");
        assert_eq!(slots.take(Some(a), None).map(drop), Err(TurnedAway::PerIp));
        assert_eq!(slots.open(), 2, "a refusal gives its place back");
        let _other = slots
            .take(Some(b), None)
            .expect("another address has its own count");
        drop(first);
        assert!(slots.take(Some(a), None).is_ok());
        // Addresses of one IPv6 /64 share a count; IPv4-mapped is IPv4.
        let v6a: IpAddr = "2001:db8::1".parse().expect("ip");
        let v6b: IpAddr = "2001:db8::ffff:1".parse().expect("ip");
        assert_eq!(per_ip_key(v6a), per_ip_key(v6b));
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().expect("ip");
        assert_eq!(per_ip_key(mapped), a);
        let slots = StreamSlots::new(100, 1, 0);
        let held = slots.take(Some(a), None).expect("room");
        drop(held);
        assert!(slots.per_ip.counts.lock().is_empty(), "no zero counts kept");
    }

    #[test]
    fn the_per_user_cap_is_taken_not_checked() {
        let slots = StreamSlots::new(1_000, 0, 5);
        let alice: Arc<str> = Arc::from("alice");
        let bob: Arc<str> = Arc::from("bob");
        let taken = take_from_8_threads(&slots, 20, Some(&alice));
        assert_eq!(taken.iter().map(Vec::len).sum::<usize>(), 5);
        assert_eq!(
            slots.take(None, Some(&alice)).map(drop),
            Err(TurnedAway::PerUser)
        );
        assert_eq!(slots.open(), 5, "a refusal gives its place back");
        let _other = slots
            .take(None, Some(&bob))
            .expect("another user has its own count");
        assert!(
            slots.take(None, None).is_ok(),
            "anonymous streams are not counted per user"
        );
        drop(taken);
        assert!(slots.take(None, Some(&alice)).is_ok());
        assert_eq!(slots.per_user.counts.lock().len(), 1, "no zero counts kept");
    }
}
