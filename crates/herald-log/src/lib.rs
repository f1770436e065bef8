//! Event log backends. Each implements [`herald_core::EventLog`] and passes
//! the same conformance suite (`tests/conformance.rs`).
//!
//! - [`MemoryLog`]: in process memory, bounded by count, bytes and age; history
//!   is lost on restart (ids still keep increasing, see its docs).
//! - [`DurableLog`]: a segmented append-only log in a data directory, with
//!   group commit; acknowledged events survive `kill -9` (or a power loss
//!   with [`Durability::Fsync`]). Its module doc is its design doc.
//! - [`redis::RedisLog`]: one Redis Stream shared by many nodes, tailed by
//!   each; ids identical on every node and never reissued after Redis lost
//!   data. Its module doc (`src/redis/mod.rs`) is its design doc.
//!
//! What the backends share has one home each: the read rule (gaps, pages,
//! the scan bound) in `page`, where ids start in `ids`, building events with
//! shared names in `names`, and the idempotency table in `idempotency`.

#![forbid(unsafe_code)]

mod durable;
mod idempotency;
mod ids;
mod memory;
mod names;
mod page;
pub mod redis;

pub use durable::{
    Durability, DurableError, DurableLog, DurableOptions, RecoveryReport, FORMAT_VERSION,
};
/// Storage fault injection for tests of the durable log's failure rules.
#[cfg(feature = "fault-injection")]
pub use durable::{FaultyFs, Filesystem, FsOp, StdFs};
pub use memory::{MemoryLog, Retention};

/// What one event may hold at most, as the durable record format stores it
/// (`src/durable/record.rs`). The publish route refuses an event over these
/// before it asks any log, so both backends give the same answer.
pub mod record_limits {
    pub use crate::durable::{
        MAX_BODY, MAX_RECORD_STRING_BYTES, MAX_RECORD_TOPICS, RECORD_FIXED_BYTES,
        RECORD_STRING_OVERHEAD,
    };
}
