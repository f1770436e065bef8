//! Herald's core: what an event is, where it is stored (the [`EventLog`]
//! trait), and how it reaches connections (the [`Hub`] and each
//! [`Connection`]'s writer). Nothing here knows about HTTP or sockets.
//!
//! The flow of one event: a publisher's [`NewEvent`] is appended to the log,
//! which assigns its [`EventId`]; [`Hub::run_dispatcher`] tails the log and
//! offers the event to each matching stream's queue; each [`Connection`]
//! turns its queue (or, when it lags or resumes, the log) into bytes for the
//! wire.
//!
//! Files, and which way they depend (no cycles):
//! - `filter.rs` — the one rule of who receives what ([`Filter::matches`]);
//! - `index.rs` — the subscription index, an accelerator of that rule;
//! - `stream.rs` — one stream's queue and the state hub and writer share;
//! - `connection.rs` — the writer (queue or log → bytes); knows the log and
//!   its queue, not the hub;
//! - `hub.rs` — registration, presence, the dispatcher and housekeeping; uses
//!   all of the above.

#![forbid(unsafe_code)]

pub mod connection;
pub mod event;
pub mod filter;
pub mod hub;
mod index;
pub mod lag;
pub mod log;
mod stream;
pub mod topic;

pub use connection::{Connection, Resume};
pub use event::{now_ms, now_s, Event, EventId, FrameArena, NewEvent, RESERVED_EVENT_PREFIX};
pub use filter::Filter;
pub use hub::{Hub, HubConfig, HubCounts, HubMetrics, Subscriber};
pub use lag::DeliveryLag;
pub use log::{Appended, EventLog, Gap, LogError, LogMetric, Position, ReadBatch};
pub use stream::{CloseReason, ConnId, WriteThrough};
pub use topic::{Topic, TopicError, TopicPattern, MAX_TOPIC_BYTES};
