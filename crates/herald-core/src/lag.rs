//! Delivery lag: how far behind the streams are, as one number a publish can
//! be refused on (`max_delivery_lag_ms`) and an operator can watch.
//!
//! A stream's lag is the time until everything acknowledged so far that it
//! has to send is written: the age of the oldest event it is writing now
//! (its writer records when that event was stored), plus what it still has
//! to write — its queue, or, catching up, the ids between the log head and
//! the last one it wrote — at the rate it has been writing. The second part
//! is what makes the number lead instead of trail: publishers flat out
//! against 10,000 streams add seconds of backlog per 100 ms while the age of
//! what is being written grows only as fast as the clock.
//!
//! Invariants:
//! - The server's lag is the **median** stream's (the lower median: streams
//!   with nothing to write count as 0), or the dispatcher's when that is
//!   further behind. A stream whose socket has taken nothing for
//!   [`STALLED_AFTER`] (its writer is stuck in a write: the reader stopped)
//!   is left out of the median and shows only in the maximum. So neither a
//!   minority of slow readers nor a lone stalled one moves it: refusing
//!   publishes because a few clients read slowly would let one client hurt
//!   the others (those streams catch up from the log, or the write deadline
//!   ends them).
//! - Sampling reads atomics the writers keep anyway; it takes the index's
//!   read lock once per [`SAMPLE_EVERY`] and never blocks a writer.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::stream::StreamShared;

/// How often the hub samples every stream's lag.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// The write rate is an average over about this long: a catching-up stream
/// writes a page every few hundred milliseconds, so one sample interval
/// alone often sees no write at all.
const RATE_WINDOW: Duration = Duration::from_secs(1);
/// A stream with something to write is assumed to manage at least this many
/// events a second when it has not been writing (it just woke, or stalls).
const MIN_RATE_PER_SEC: f32 = 1.0;
/// No lag is reported above a day (keeps the arithmetic in range).
const MAX_LAG_MS: u64 = 86_400_000;
/// A stream with something to write that has written nothing for this long
/// is stalled on its reader, not on the server.
pub const STALLED_AFTER: Duration = Duration::from_secs(2);

/// One stream's lag, and whether it is stalled on its reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamLag {
    pub(crate) ms: u64,
    pub(crate) stalled: bool,
}

/// The last sample, for `/v1/stats`, `/metrics` and the publish route.
#[derive(Debug, Default)]
pub(crate) struct LagGauge {
    median_ms: AtomicU64,
    max_ms: AtomicU64,
    dispatch_ms: AtomicU64,
    streams_behind: AtomicU64,
}

/// The delivery lag at the last sample, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeliveryLag {
    /// The median stream's lag (half the streams are at most this far behind).
    pub median_ms: u64,
    /// The stream furthest behind (a slow reader, usually).
    pub max_ms: u64,
    /// The age of the oldest event the dispatcher has not yet offered to the
    /// streams (0 when it is caught up with the log).
    pub dispatch_ms: u64,
    /// Streams with anything left to write.
    pub streams_behind: u64,
}

impl DeliveryLag {
    /// The server's delivery lag: the median stream's, or the dispatcher's
    /// when that is further behind (its events have reached no stream yet).
    pub fn lag_ms(&self) -> u64 {
        self.median_ms.max(self.dispatch_ms)
    }
}

impl LagGauge {
    pub(crate) fn store(&self, lag: DeliveryLag) {
        self.median_ms.store(lag.median_ms, Ordering::Relaxed);
        self.max_ms.store(lag.max_ms, Ordering::Relaxed);
        self.dispatch_ms.store(lag.dispatch_ms, Ordering::Relaxed);
        self.streams_behind
            .store(lag.streams_behind, Ordering::Relaxed);
    }

    pub(crate) fn load(&self) -> DeliveryLag {
        DeliveryLag {
            median_ms: self.median_ms.load(Ordering::Relaxed),
            max_ms: self.max_ms.load(Ordering::Relaxed),
            dispatch_ms: self.dispatch_ms.load(Ordering::Relaxed),
            streams_behind: self.streams_behind.load(Ordering::Relaxed),
        }
    }
}

/// What the sampler remembers of one stream from one sample to the next.
/// Only the sampler reads or writes it, and it is kept beside the stream's
/// index entry, not in the [`StreamShared`] the writer updates on every
/// write: the sampler only reads the writer's cache lines, never dirties
/// them (atomics only because the index hands entries out shared).
#[derive(Debug, Default)]
pub(crate) struct StreamMemory {
    /// `delivered` at the last sample.
    delivered: AtomicU64,
    /// The write rate measured (events/s, `f32` bits).
    rate: AtomicU32,
    /// When `delivered` was last seen to move (ms since the epoch).
    progress_ms: AtomicU64,
}

/// One stream's lag now, updating its rate estimate in `memory`. `head` is
/// the newest id in the log.
pub(crate) fn sample_stream(
    shared: &StreamShared,
    memory: &StreamMemory,
    now_ms: u64,
    head: u64,
    dt: Duration,
) -> StreamLag {
    let delivered = shared.delivered.load(Ordering::Relaxed);
    let before = memory.delivered.swap(delivered, Ordering::Relaxed);
    if delivered != before {
        memory.progress_ms.store(now_ms, Ordering::Relaxed);
    }
    let rate = f32::from_bits(memory.rate.load(Ordering::Relaxed));
    let rate = updated_rate(rate, delivered.saturating_sub(before), dt);
    memory.rate.store(rate.to_bits(), Ordering::Relaxed);
    let since = shared.writing_since_ms.load(Ordering::Relaxed);
    let age_ms = if since == 0 {
        0
    } else {
        now_ms.saturating_sub(since)
    };
    let to_write = if shared.lagging.load(Ordering::Relaxed) {
        match shared.written_up_to.load(Ordering::Relaxed) {
            // Resuming, nothing written yet: where it starts is the
            // writer's; its age will show once it writes.
            0 => 0,
            last => head.saturating_sub(last),
        }
    } else {
        shared.queued() as u64
    };
    let ms = projected_ms(age_ms, to_write, rate);
    let progress = memory.progress_ms.load(Ordering::Relaxed);
    let stalled_after = STALLED_AFTER.as_millis() as u64;
    StreamLag {
        ms,
        stalled: ms > 0
            && age_ms > stalled_after
            && now_ms.saturating_sub(progress) > stalled_after,
    }
}

/// The write rate averaged over about [`RATE_WINDOW`], from the last
/// estimate and the events written in the `dt` since.
fn updated_rate(rate: f32, written: u64, dt: Duration) -> f32 {
    let dt_s = dt.as_secs_f32().max(1e-3);
    let now = written as f32 / dt_s;
    let weight = (dt_s / RATE_WINDOW.as_secs_f32()).min(1.0);
    let rate = if rate.is_finite() { rate } else { 0.0 };
    rate + (now - rate) * weight
}

/// A stream's lag: the age of what it writes now plus the time `to_write`
/// more events take at `rate` a second.
fn projected_ms(age_ms: u64, to_write: u64, rate: f32) -> u64 {
    let rate = rate.max(MIN_RATE_PER_SEC);
    let drain_ms = (to_write as f64 * 1000.0 / f64::from(rate)).min(MAX_LAG_MS as f64) as u64;
    age_ms.saturating_add(drain_ms).min(MAX_LAG_MS)
}

/// The lags of one sample: the non-zero lags of streams that are not
/// stalled (reordered by [`Sample::summarize`]), how many streams are not
/// stalled, and the stalled ones' count and maximum.
#[derive(Debug, Default)]
pub(crate) struct Sample {
    pub(crate) behind: Vec<u64>,
    pub(crate) counted: usize,
    pub(crate) stalled: u64,
    pub(crate) stalled_max_ms: u64,
}

impl Sample {
    pub(crate) fn clear(&mut self) {
        self.behind.clear();
        self.counted = 0;
        self.stalled = 0;
        self.stalled_max_ms = 0;
    }

    pub(crate) fn add(&mut self, lag: StreamLag) {
        if lag.stalled {
            self.stalled += 1;
            self.stalled_max_ms = self.stalled_max_ms.max(lag.ms);
            return;
        }
        self.counted += 1;
        if lag.ms > 0 {
            self.behind.push(lag.ms);
        }
    }

    /// The lower median of the counted streams' lags, and the maximum of all.
    pub(crate) fn summarize(&mut self, dispatch_ms: u64) -> DeliveryLag {
        let zeros = self.counted.saturating_sub(self.behind.len());
        let middle = self.counted.saturating_sub(1) / 2;
        let median_ms = if self.counted == 0 || middle < zeros {
            0
        } else {
            let (_, median, _) = self.behind.select_nth_unstable(middle - zeros);
            *median
        };
        let counted_max = self.behind.iter().copied().max().unwrap_or(0);
        DeliveryLag {
            median_ms,
            max_ms: counted_max.max(self.stalled_max_ms),
            dispatch_ms,
            streams_behind: self.behind.len() as u64 + self.stalled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(lags: &[u64], stalled: &[u64]) -> Sample {
        let mut sample = Sample::default();
        for &ms in lags {
            sample.add(StreamLag { ms, stalled: false });
        }
        for &ms in stalled {
            sample.add(StreamLag { ms, stalled: true });
        }
        sample
    }

    #[test]
    fn the_median_ignores_a_minority_far_behind() {
        // 10 streams: 4 slow readers 60 s behind, 6 current.
        let lag = sample(&[60_000, 60_000, 60_000, 60_000, 0, 0, 0, 0, 0, 0], &[]).summarize(0);
        assert_eq!(lag.median_ms, 0);
        assert_eq!(lag.max_ms, 60_000);
        assert_eq!(lag.streams_behind, 4);
        // 6 of 10 behind: the median is one of them.
        let lags = [5_000, 7_000, 9_000, 60_000, 2_000, 3_000, 0, 0, 0, 0];
        let lag = sample(&lags, &[]).summarize(0);
        assert_eq!(lag.median_ms, 2_000, "0 0 0 0 [2] 3 5 7 9 60 s");
        assert_eq!(sample(&[1, 2, 3], &[]).summarize(0).median_ms, 2);
        // Half behind is not a majority.
        assert_eq!(sample(&[0, 9_000], &[]).summarize(0).median_ms, 0);
        assert_eq!(Sample::default().summarize(0), DeliveryLag::default());
    }

    #[test]
    fn stalled_streams_show_in_the_maximum_only() {
        // A lone stalled reader: nothing counted, the lag is 0.
        let lag = sample(&[], &[40_000]).summarize(0);
        assert_eq!(
            (lag.median_ms, lag.max_ms, lag.streams_behind),
            (0, 40_000, 1)
        );
        // Three stalled, two current: the current ones decide.
        let lag = sample(&[0, 0], &[40_000, 50_000, 60_000]).summarize(0);
        assert_eq!((lag.median_ms, lag.max_ms), (0, 60_000));
        let lag = sample(&[3_000, 4_000], &[60_000]).summarize(0);
        assert_eq!(lag.median_ms, 3_000);
    }

    #[test]
    fn the_lag_is_the_dispatchers_when_it_is_further_behind() {
        let lag = sample(&[0; 10], &[]).summarize(1_500);
        assert_eq!(lag.lag_ms(), 1_500);
        let lag = sample(
            &[4_000, 4_000, 4_000, 4_000, 4_000, 4_000, 4_000, 4_000, 0, 0],
            &[],
        )
        .summarize(1_500);
        assert_eq!(lag.lag_ms(), 4_000);
    }

    #[test]
    fn a_backlog_counts_at_the_rate_the_stream_writes() {
        // 3,000 events to go at 300/s: 10 s, on top of what it writes now.
        assert_eq!(projected_ms(500, 3_000, 300.0), 10_500);
        // Nothing to write: only the age (a write still in progress).
        assert_eq!(projected_ms(250, 0, 0.0), 250);
        // No rate measured yet: at least one event a second is assumed.
        assert_eq!(projected_ms(0, 2, 0.0), 2_000);
        assert_eq!(projected_ms(u64::MAX, u64::MAX, 0.0), MAX_LAG_MS);
    }

    #[test]
    fn the_rate_follows_writes_over_about_a_second() {
        let step = Duration::from_millis(100);
        let mut rate = 0.0;
        for _ in 0..30 {
            rate = updated_rate(rate, 100, step); // 1,000 events/s
        }
        assert!((rate - 1_000.0).abs() < 50.0, "{rate}");
        // A stream that stops writing decays instead of dropping to 0 at once.
        let after = updated_rate(rate, 0, step);
        assert!(after > 800.0 && after < rate, "{after}");
        assert_eq!(updated_rate(f32::NAN, 0, step), 0.0);
    }
}
