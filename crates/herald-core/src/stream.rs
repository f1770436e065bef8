//! One stream's queue: the state the hub (producer) and the stream's writer
//! (consumer) share, and nothing else.
//!
//! Invariants:
//! - The queue holds at most `capacity` items, counted by [`StreamShared`]'s
//!   `queued`; the bound is soft by at most a heartbeat or two (those come
//!   from the housekeeping task, not the dispatcher). The queue is a deque
//!   under a lock of its own, inside the stream's shared state: a waiting
//!   stream's queue owns no allocation (a tokio channel keeps a block of 32
//!   slots and its own shared state per stream, about 0.5 KiB), and the
//!   writer is woken only when it waits, by the push that ends its wait —
//!   or, from the dispatcher, after the event has been offered to every
//!   stream (`Hub::dispatch`). The writer takes everything queued in one
//!   go by swapping buffers with the queue, and gives back what a burst
//!   grew only when it waits again, so a flood reallocates nothing.
//! - A full queue never blocks the producer: the stream is marked *lagging*
//!   and its writer catches up from the event log (see `connection.rs`).
//! - Each event is queued at most once per stream, however many of the
//!   stream's subscriptions match it: the dispatcher offers events in id
//!   order from a single task, so "the id last offered" is a complete dedupe.
//! - Dropping the [`StreamReceiver`] unregisters the stream from its
//!   [`Registry`], exactly once.
//! - *Write-through*: a stream whose writer registered a [`WriteThrough`]
//!   and is parked — in live mode, waiting on an empty queue, everything it
//!   was given written — may be handed an event by the dispatcher straight
//!   to its socket, instead of through the queue and a wake-up of its writer
//!   on another thread. Only then: with anything queued, or the writer awake
//!   (draining, writing, catching up), events go through the queue, so a
//!   stream's events reach its socket in id order either way. The slot's
//!   lock is held for the whole write and by the writer when it parks and
//!   wakes; the dispatcher only ever `try_lock`s it.

use std::collections::VecDeque;
use std::fmt;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

use crate::event::{now_ms, Event, EventId};

/// Identifies one open stream within this process.
pub type ConnId = u64;

/// One stream in this many records its publish-to-write latency for a given
/// event (which ones depends on the event's id and the stream's, so each
/// event is sampled by about 1/64 of its recipients and each stream samples
/// about 1/64 of its events): a broadcast to 10,000 streams records ~150
/// values, not 10,000.
pub const LATENCY_SAMPLE_EVERY: u64 = 64;
/// Whether stream `conn` records its publish-to-write latency for `event`
/// (see [`LATENCY_SAMPLE_EVERY`]).
pub(crate) fn latency_sampled(event: EventId, conn: ConnId) -> bool {
    event
        .0
        .wrapping_add(conn)
        .is_multiple_of(LATENCY_SAMPLE_EVERY)
}

/// Seconds since `event` was stored.
pub(crate) fn age_seconds(event: &Event) -> f64 {
    now_ms().saturating_sub(event.stored_at_ms()) as f64 / 1000.0
}

/// What a stream's queue carries.
#[derive(Debug, Clone)]
pub(crate) enum Outbound {
    /// A stored event; its frame is shared with every other recipient.
    Event(Arc<Event>),
    /// A heartbeat comment.
    Heartbeat,
}

/// Writes one event's frame straight to a stream's socket, now, without
/// blocking: the HTTP layer's framing (a chunk) included. `false` means
/// nothing was written (the socket was full, the frame too big, the peer
/// gone): the event then goes through the queue as usual.
pub trait WriteThrough: Send + Sync + fmt::Debug {
    /// Writes `frame` whole, or nothing.
    fn try_write_frame(&self, frame: &[u8]) -> bool;
}

/// Whether the dispatcher may write to a stream's socket itself.
#[derive(Debug, Default)]
pub(crate) struct WriteThroughSlot {
    pub(crate) to: Option<Box<dyn WriteThrough>>,
    /// The writer is waiting on an empty queue with everything written.
    pub(crate) parked: bool,
}

/// Why a stream ended, for the disconnect counters and the stream's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseReason {
    /// The client went away, or its socket failed or stopped taking bytes
    /// (whatever the server did not decide itself).
    Client = 0,
    /// An admin ended the user's streams.
    Kicked = 1,
    /// The subscriber's token expired.
    TokenExpired = 2,
    /// `max_connection_lifetime` was reached.
    Lifetime = 3,
    /// The server is shutting down (the stream was told to come back later).
    Shutdown = 4,
    /// Catch-up could not read the event log.
    LogFailed = 5,
}

impl CloseReason {
    /// Every reason, in the order of their numbers.
    pub const ALL: [CloseReason; 6] = [
        CloseReason::Client,
        CloseReason::Kicked,
        CloseReason::TokenExpired,
        CloseReason::Lifetime,
        CloseReason::Shutdown,
        CloseReason::LogFailed,
    ];

    /// The reason as metrics and logs name it.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Client => "client",
            CloseReason::Kicked => "kicked",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::Lifetime => "lifetime",
            CloseReason::Shutdown => "shutdown",
            CloseReason::LogFailed => "log_failed",
        }
    }

    fn from_u8(n: u8) -> CloseReason {
        Self::ALL
            .get(usize::from(n))
            .copied()
            .unwrap_or(CloseReason::Client)
    }
}

/// State shared between the hub and one stream's writer.
#[derive(Debug, Default)]
pub(crate) struct StreamShared {
    /// Set by kick or lifetime expiry: the writer ends the stream.
    pub(crate) closed: AtomicBool,
    /// Why the stream was closed ([`CloseReason`] as `u8`), set before
    /// `closed`; left at `Client` when the server did not end it.
    close_reason: AtomicU8,
    /// When the stream opened (ms since the epoch), for its close log line.
    pub(crate) opened_at_ms: AtomicU64,
    /// Set (before `closed`) when the subscriber's token expired: the writer
    /// sends `herald.expired` before it ends the stream.
    pub(crate) token_expired: AtomicBool,
    /// Set when the queue overflowed (or while resuming): the hub skips this
    /// stream and the writer reads from the log instead.
    pub(crate) lagging: AtomicBool,
    /// Set by the writer when it writes events, cleared by the heartbeat tick.
    pub(crate) wrote_recently: AtomicBool,
    /// Id of the last event offered by the dispatcher (the dedupe stamp).
    last_offered: AtomicU64,
    /// Events this stream has written. Per stream, not one global counter:
    /// every write would otherwise contend on one cache line across cores.
    pub(crate) delivered: AtomicU64,
    /// Times this stream switched from live delivery to catch-up.
    pub(crate) lagged: AtomicU64,
    /// Bytes of frames this stream handed to its socket (HTTP framing not
    /// counted); per stream for the same reason as `delivered`.
    pub(crate) bytes_written: AtomicU64,
    /// `herald.gap` events this stream sent.
    pub(crate) gaps: AtomicU64,
    /// Items in the queue (the bound is enforced with it).
    queued: AtomicUsize,
    /// When the oldest event of the write in progress was stored (ms since
    /// the epoch), 0 while the writer waits with nothing to write: its age is
    /// how far behind this stream is now (see `crate::lag`).
    pub(crate) writing_since_ms: AtomicU64,
    /// Id of the last event this stream wrote (0: none yet): how far a
    /// catching-up stream still has to go is the log head minus this.
    pub(crate) written_up_to: AtomicU64,
    /// The dispatcher's way to the socket, while the writer is parked.
    pub(crate) write_through: Mutex<WriteThroughSlot>,
    /// What the hub queued and the writer has yet to take.
    queue: Mutex<Queue>,
}

/// A stream's queue proper (see the module doc).
#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Outbound>,
    /// The writer, while it waits for an item.
    waiting: Option<Waker>,
    /// The hub forgot the stream: once `items` is empty, the writer ends.
    sender_gone: bool,
    /// The writer is gone: nothing more is kept.
    receiver_gone: bool,
}

/// The queue was full.
#[derive(Debug)]
struct Full;

/// A writer that waits keeps buffers of at most this many items for the
/// next ones; bigger ones (left by a burst) are given back.
const KEPT_QUEUE_ROOM: usize = 8;

/// `items` emptied, keeping its buffer only if it is small.
fn shrunk(items: &mut VecDeque<Outbound>) {
    if items.capacity() > KEPT_QUEUE_ROOM {
        *items = VecDeque::new();
    }
}

impl StreamShared {
    /// Items queued now (heartbeats included).
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Why the stream ended (`Client` unless the server ended it).
    pub(crate) fn close_reason(&self) -> CloseReason {
        CloseReason::from_u8(self.close_reason.load(Ordering::SeqCst))
    }
}

/// Where a stream is registered; told when the stream's writer goes away.
pub(crate) trait Registry: Send + Sync + fmt::Debug {
    /// Removes stream `id`, folding its counts (in `shared`) into the totals.
    fn unregister(&self, id: ConnId, shared: &StreamShared);
}

/// The hub's end of a stream's queue.
#[derive(Debug)]
pub(crate) struct StreamSender {
    shared: Arc<StreamShared>,
    /// Items the queue may hold before the stream is switched to catch-up.
    capacity: usize,
    /// The stream's id, for the latency sampling rule ([`LATENCY_SAMPLE_EVERY`]).
    id: ConnId,
    /// Where a write-through records its sampled publish-to-write latency.
    latency: metrics::Histogram,
}

impl Drop for StreamSender {
    fn drop(&mut self) {
        // The writer sends what is left, then ends the stream.
        let waiting = {
            let mut queue = self.shared.queue.lock();
            queue.sender_gone = true;
            queue.waiting.take()
        };
        if let Some(writer) = waiting {
            writer.wake();
        }
    }
}

/// The writer's end of a stream's queue. Dropping it unregisters the stream.
#[derive(Debug)]
pub(crate) struct StreamReceiver {
    pub(crate) id: ConnId,
    pub(crate) shared: Arc<StreamShared>,
    /// Items taken from the shared queue in one go, by swapping buffers:
    /// the writer takes the lock once per batch, not once per item, and
    /// the buffers go back and forth instead of being reallocated.
    taken_batch: VecDeque<Outbound>,
    registry: Arc<dyn Registry>,
}

/// A new stream's queue of at most `capacity` items (at least 1). A resuming
/// stream starts `lagging`, so no live event is queued ahead of its replay.
pub(crate) fn stream_queue(
    id: ConnId,
    capacity: usize,
    lagging: bool,
    registry: Arc<dyn Registry>,
) -> (StreamSender, StreamReceiver) {
    let shared = Arc::new(StreamShared::default());
    shared.lagging.store(lagging, Ordering::SeqCst);
    let sender = StreamSender {
        shared: shared.clone(),
        capacity: capacity.max(1),
        id,
        latency: metrics::Histogram::noop(),
    };
    let receiver = StreamReceiver {
        id,
        shared,
        taken_batch: VecDeque::new(),
        registry,
    };
    (sender, receiver)
}

impl StreamSender {
    /// Records sampled publish-to-write latencies of write-throughs into `histogram`.
    pub(crate) fn record_latency_into(&mut self, histogram: metrics::Histogram) {
        self.latency = histogram;
    }

    /// The state shared with the writer.
    pub(crate) fn shared(&self) -> &StreamShared {
        &self.shared
    }

    /// Queues `event` unless it was already offered or the stream is
    /// lagging; a full queue switches the stream to catch-up. With
    /// `write_throughs` left and the writer parked, writes it to the socket
    /// instead (see the module doc), using one. The caller has decided that
    /// the stream's filter matches `event`. A writer waiting for its queue
    /// is not woken here but added to `wakes`, for the caller to wake.
    pub(crate) fn offer(
        &self,
        event: &Arc<Event>,
        write_throughs: &mut u32,
        wakes: &mut Vec<Waker>,
    ) {
        let id = event.id.0;
        if self.shared.last_offered.swap(id, Ordering::Relaxed) == id
            || self.shared.lagging.load(Ordering::SeqCst)
        {
            return;
        }
        if *write_throughs > 0
            && self.shared.queued.load(Ordering::Relaxed) == 0
            && self.write_through(event)
        {
            *write_throughs -= 1;
            return;
        }
        match self.enqueue(Outbound::Event(event.clone())) {
            Err(Full) => self.shared.lagging.store(true, Ordering::SeqCst),
            Ok(Some(writer)) => wakes.push(writer),
            Ok(None) => {}
        }
    }

    /// Writes `event` to the socket if the writer is parked; true if done.
    fn write_through(&self, event: &Event) -> bool {
        let Some(slot) = self.shared.write_through.try_lock() else {
            return false;
        };
        let (true, Some(to)) = (slot.parked, &slot.to) else {
            return false;
        };
        let shared = &self.shared;
        if event.id.0 <= shared.written_up_to.load(Ordering::Relaxed) {
            // Written already (by a catch-up read ahead of the dispatcher),
            // or from before the stream began: nothing to do.
            return true;
        }
        if !to.try_write_frame(event.frame()) {
            return false;
        }
        // Under the lock: the writer reads `written_up_to` when it wakes.
        shared
            .written_up_to
            .fetch_max(event.id.0, Ordering::Relaxed);
        shared.delivered.fetch_add(1, Ordering::Relaxed);
        shared
            .bytes_written
            .fetch_add(event.frame().len() as u64, Ordering::Relaxed);
        shared.wrote_recently.store(true, Ordering::Relaxed);
        if latency_sampled(event.id, self.id) {
            self.latency.record(age_seconds(event));
        }
        true
    }

    /// Queues `item` unless the queue is full; false if it was.
    pub(crate) fn push(&self, item: Outbound) -> bool {
        match self.enqueue(item) {
            Ok(writer) => {
                if let Some(writer) = writer {
                    writer.wake();
                }
                true
            }
            Err(Full) => false,
        }
    }

    /// Queues `item` unless the queue is full, and hands back the writer if
    /// it was waiting: whoever queued must wake it (outside the queue's
    /// lock: the writer's first act is to take it).
    fn enqueue(&self, item: Outbound) -> Result<Option<Waker>, Full> {
        if self.shared.queued.load(Ordering::Relaxed) >= self.capacity {
            return Err(Full);
        }
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        let mut queue = self.shared.queue.lock();
        // Once the writer is gone nobody is counting, or taking.
        if !queue.receiver_gone {
            queue.items.push_back(item);
        }
        Ok(queue.waiting.take())
    }

    /// Switches the stream to catch-up, and wakes its writer so it notices.
    pub(crate) fn force_catch_up(&self) {
        self.shared.lagging.store(true, Ordering::SeqCst);
        self.push(Outbound::Heartbeat);
    }

    /// Tells the writer to end the stream, for `reason`. Dropping the
    /// sender (the hub forgets the stream) then wakes it.
    pub(crate) fn close(&self, reason: CloseReason) {
        self.shared
            .close_reason
            .store(reason as u8, Ordering::SeqCst);
        self.shared.closed.store(true, Ordering::SeqCst);
    }
}

impl StreamReceiver {
    /// The next item, waiting for one; `None` once the hub forgot the stream.
    pub(crate) async fn recv(&mut self) -> Option<Outbound> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Outbound>> {
        if let Some(item) = self.taken_batch.pop_front() {
            return Poll::Ready(Some(item));
        }
        let mut queue = self.shared.queue.lock();
        if !queue.items.is_empty() {
            std::mem::swap(&mut queue.items, &mut self.taken_batch);
            drop(queue);
            return Poll::Ready(self.taken_batch.pop_front());
        }
        if queue.sender_gone {
            return Poll::Ready(None);
        }
        // About to wait with nothing queued: what a burst grew goes back.
        shrunk(&mut queue.items);
        shrunk(&mut self.taken_batch);
        match &queue.waiting {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => queue.waiting = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// The next item if one is queued.
    pub(crate) fn try_recv(&mut self) -> Option<Outbound> {
        if let Some(item) = self.taken_batch.pop_front() {
            return Some(item);
        }
        let mut queue = self.shared.queue.lock();
        if queue.items.is_empty() {
            return None;
        }
        std::mem::swap(&mut queue.items, &mut self.taken_batch);
        drop(queue);
        self.taken_batch.pop_front()
    }

    /// Whether nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.taken_batch.is_empty() && self.shared.queue.lock().items.is_empty()
    }

    /// Gives back room for `taken` items. Once per drain, not per item: one
    /// atomic write on the hot path.
    pub(crate) fn taken(&self, taken: usize) {
        self.shared.queued.fetch_sub(taken, Ordering::Relaxed);
    }

    /// Marks the stream ended by its writer for `reason` (a failed log
    /// read), unless the hub gave a reason first.
    pub(crate) fn closing(&self, reason: CloseReason) {
        let _ = self.shared.close_reason.compare_exchange(
            CloseReason::Client as u8,
            reason as u8,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }
}

impl Drop for StreamReceiver {
    fn drop(&mut self) {
        // No write to the socket once its writer is gone.
        self.shared.write_through.lock().to = None;
        let mut queue = self.shared.queue.lock();
        queue.receiver_gone = true;
        queue.items = VecDeque::new();
        queue.waiting = None;
        drop(queue);
        self.registry.unregister(self.id, &self.shared);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{stream_queue, ConnId, Outbound, Registry, StreamShared, KEPT_QUEUE_ROOM};

    #[derive(Debug)]
    struct Nowhere;
    impl Registry for Nowhere {
        fn unregister(&self, _: ConnId, _: &StreamShared) {}
    }

    fn room(shared: &StreamShared) -> usize {
        shared.queue.lock().items.capacity()
    }

    #[test]
    fn a_waiting_stream_s_queue_owns_no_buffer() {
        let (sender, mut receiver) = stream_queue(1, 1000, false, Arc::new(Nowhere));
        assert_eq!(room(&receiver.shared), 0, "a new stream allocates no queue");
        for _ in 0..300 {
            assert!(sender.push(Outbound::Heartbeat));
        }
        assert!(room(&receiver.shared) >= 300);
        let mut taken = 0;
        while receiver.try_recv().is_some() {
            taken += 1;
        }
        receiver.taken(taken);
        assert_eq!(taken, 300);
        // The writer waits again: what the burst grew is given back.
        let waker = std::task::Waker::noop();
        let pending = receiver.poll_recv(&mut std::task::Context::from_waker(waker));
        assert!(pending.is_pending());
        assert!(
            room(&receiver.shared) <= KEPT_QUEUE_ROOM
                && receiver.taken_batch.capacity() <= KEPT_QUEUE_ROOM,
            "a drained burst's buffers are given back"
        );
    }

    #[tokio::test]
    async fn the_writer_takes_what_is_left_then_learns_the_hub_forgot_it() {
        let (sender, mut receiver) = stream_queue(1, 10, false, Arc::new(Nowhere));
        let writer = tokio::spawn(async move {
            let mut got = 0;
            while let Some(item) = receiver.recv().await {
                assert!(matches!(item, Outbound::Heartbeat));
                got += 1;
            }
            got
        });
        // The writer is waiting (or about to): each push must wake it.
        for _ in 0..3 {
            tokio::task::yield_now().await;
            assert!(sender.push(Outbound::Heartbeat));
        }
        drop(sender);
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), writer).await;
        assert_eq!(
            got.ok().and_then(Result::ok),
            Some(3),
            "a push or the end woke no one"
        );
    }

    #[test]
    fn nothing_is_kept_for_a_writer_that_is_gone() {
        let (sender, receiver) = stream_queue(1, 10, false, Arc::new(Nowhere));
        let shared = receiver.shared.clone();
        drop(receiver);
        assert!(sender.push(Outbound::Heartbeat));
        assert!(shared.queue.lock().items.is_empty());
    }
}
