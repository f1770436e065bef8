//! The event log: the one place events are stored and ordered.
//!
//! Every node delivers events by tailing its log ([`EventLog::head`] says when
//! there is more, [`EventLog::read_after`] fetches it), and catch-up after a
//! reconnect or a slow-reader overflow reads the same log. Backends live in
//! `herald-log`; this trait is all the hub and the HTTP layer know of them.
//!
//! Contract every backend keeps (checked by the shared conformance suite):
//! - ids are strictly increasing in append order, also across restarts;
//! - `append` returns only after the batch is stored at the backend's
//!   durability level; a returned id is never lost;
//! - `read_after(after, ..)` returns events with ids `> after` in id order, and
//!   reports a [`Gap`] when events after `after` have left retention or `after`
//!   is not an id this log could have issued.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::event::{Event, EventId, NewEvent};
use crate::filter::Filter;
use crate::topic::Topic;

/// Why the log could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The log cannot take or serve events right now; nothing was stored.
    #[error("event log unavailable: {0}")]
    Unavailable(String),
    /// The batch may be stored, but not at the durability the log is
    /// configured for, or the log could not confirm it (the Redis log: a
    /// `WAIT` that fewer replicas answered, a reply that never came). A
    /// retry with the same idempotency keys returns the stored ids.
    #[error("event log did not acknowledge: {0}")]
    NotAcknowledged(String),
}

/// What `append` did with one event of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The id of the stored event (the original one for a duplicate).
    pub id: EventId,
    /// True when the idempotency key was seen recently and nothing was stored.
    pub duplicate: bool,
}

/// The resume point was not in the retained history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The oldest id still retained, if any event is.
    pub oldest_available: Option<EventId>,
}

/// One page of a read.
#[derive(Debug, Default)]
pub struct ReadBatch {
    /// Matching events, in id order.
    pub events: Vec<Arc<Event>>,
    /// Set when events between `after` and the first returned one are gone.
    pub gap: Option<Gap>,
    /// The id up to which the log was examined: the next read continues after
    /// it, even when no event matched the filter. `None` when nothing was read.
    pub scanned_to: Option<EventId>,
    /// True when the read stopped at the end of the log (not at the limit).
    pub reached_end: bool,
}

/// Where to start reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// From the oldest retained event.
    Oldest,
    /// After this id.
    After(EventId),
}

/// One figure a backend reports about itself (`/metrics`, `/v1/stats`):
/// the Redis log's tail health and reconnects, for example.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogMetric {
    /// The Prometheus name (`herald_...`).
    pub name: &'static str,
    /// One line of help.
    pub help: &'static str,
    /// A counter (only grows) rather than a gauge.
    pub counter: bool,
    /// The value now.
    pub value: u64,
}

/// An ordered, retained store of events. See the module doc for the contract.
#[async_trait]
pub trait EventLog: Send + Sync + std::fmt::Debug + 'static {
    /// Stores a batch in order and returns what happened to each event.
    async fn append(&self, batch: Vec<NewEvent>) -> Result<Vec<Appended>, LogError>;

    /// Up to `limit` events after `from` that match `filter`, examining at most
    /// a bounded number of events per call so one read never stalls the log.
    async fn read_after(
        &self,
        from: Position,
        filter: &Filter,
        limit: usize,
    ) -> Result<ReadBatch, LogError>;

    /// The newest stored id; changes whenever events are appended (the tail).
    fn head(&self) -> watch::Receiver<Option<EventId>>;

    /// The id of the newest retained event on `topic`.
    async fn last_id_for_topic(&self, topic: &Topic) -> Result<Option<EventId>, LogError>;

    /// Whether the log can take events now (`/readyz`).
    async fn ready(&self) -> Result<(), LogError>;

    /// The backend's own figures; none unless it has some.
    fn metrics(&self) -> Vec<LogMetric> {
        Vec::new()
    }
}
