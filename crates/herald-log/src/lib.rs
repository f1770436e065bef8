//! Event log backends. Each implements [`herald_core::EventLog`] and passes
//! the same conformance suite (`tests/conformance.rs`).
//!
//! - [`MemoryLog`]: in process memory, bounded by count, bytes and age; history
//!   is lost on restart (ids still keep increasing, see its docs).

#![forbid(unsafe_code)]

mod memory;

pub use memory::{MemoryLog, Retention};
