//! Server-Sent Events wire format: an encoder and an incremental parser.
//!
//! This crate does no I/O and knows nothing of tokio or HTTP; it only turns
//! events into bytes ([`encode`]) and bytes back into events ([`parse`]),
//! following the WHATWG HTML "Server-sent events" section (§9.2).
//!
//! # Invariants of the encoder
//!
//! * **No input data can create an extra field or event.** Every line break
//!   in `data` (CR, LF or CRLF) starts a new `data: ` line, so data can never
//!   begin a line with another field name or produce a blank line. Event types
//!   and ids that contain line breaks (and ids that contain NUL) are refused
//!   rather than escaped, because the format has no escaping.
//! * **Each encoded event ends with a blank line**, so the output of every
//!   encoding function leaves the stream on an event boundary and pieces can be
//!   concatenated freely (events, comments and `retry` blocks in any order).
//!   The one exception is [`encode_notice`] (preambles and heartbeats), which
//!   ends with no blank line so that no lenient client dispatches an empty
//!   event for it.
//! * **Never emits a BOM.** Every piece starts with an ASCII field name or `:`,
//!   so a U+FEFF inside the data is never at the start of the stream, where a
//!   client would strip it.
//!
//! The parser accepts any chunking of the byte stream (including a CRLF or a
//! UTF-8 sequence split across reads) and yields the same events as if the
//! whole stream had arrived at once.
//!
//! ```
//! use herald_sse::{encode_event, EventFields, Parser};
//!
//! let wire = encode_event(&EventFields { id: Some("7"), data: "a\r\nb", ..Default::default() })?;
//! assert_eq!(&wire[..], b"id: 7\ndata: a\ndata: b\n\n");
//! let events = Parser::new().feed(&wire);
//! assert_eq!(events.len(), 1);
//! assert_eq!((events[0].id.as_str(), events[0].data.as_str()), ("7", "a\nb"));
//! # Ok::<(), herald_sse::EncodeError>(())
//! ```

pub mod encode;
pub mod parse;

pub use encode::{
    encode_comment, encode_event, encode_event_into, encode_notice, encode_retry,
    validate_event_type, validate_id, EncodeError, EventFields,
};
pub use parse::{ParsedEvent, Parser};

/// The heartbeat comment: the same bytes as `encode_notice(None, "")`, for
/// writers that want them without an allocation.
pub const HEARTBEAT: &[u8] = b":\n";
