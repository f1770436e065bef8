//! Encoding events, comments and `retry` blocks into SSE wire bytes.
//!
//! Every function here but [`encode_notice`] produces a whole block terminated
//! by a blank line, so outputs can be concatenated in any order without
//! merging blocks. [`encode_notice`] ends with no blank line on purpose (see
//! its doc); it only ever precedes whole blocks or other notices.

use bytes::{BufMut, Bytes, BytesMut};

/// One event to put on the wire.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventFields<'a> {
    /// Value of the `id` field; `Some("")` resets the client's last event id.
    pub id: Option<&'a str>,
    /// Value of the `event` field; `None` means the client sees `message`.
    pub event: Option<&'a str>,
    /// Payload; CR, LF and CRLF all become line breaks (LF on the client side).
    pub data: &'a str,
    /// Reconnection time in milliseconds sent with this event.
    pub retry: Option<u64>,
}

/// Why an event cannot be encoded without changing its meaning.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// A line break would end the `event` field early and start a new field.
    #[error("event type must not contain CR or LF")]
    EventTypeHasLineBreak,
    /// An empty `event` field is read as `message`, which is surely not meant.
    #[error("event type must not be empty")]
    EmptyEventType,
    /// A line break would inject fields; a NUL makes clients ignore the id.
    #[error("event id must not contain CR, LF or NUL")]
    IdHasForbiddenChar,
}

const ID_PREFIX: &[u8] = b"id: ";
const EVENT_PREFIX: &[u8] = b"event: ";
const DATA_PREFIX: &[u8] = b"data: ";
const RETRY_PREFIX: &[u8] = b"retry: ";

/// Checks that `t` can be sent as an `event` field unchanged.
pub fn validate_event_type(t: &str) -> Result<(), EncodeError> {
    if t.is_empty() {
        return Err(EncodeError::EmptyEventType);
    }
    if memchr::memchr2(b'\r', b'\n', t.as_bytes()).is_some() {
        return Err(EncodeError::EventTypeHasLineBreak);
    }
    Ok(())
}

/// Checks that `id` can be sent as an `id` field and be accepted by clients.
pub fn validate_id(id: &str) -> Result<(), EncodeError> {
    let b = id.as_bytes();
    if memchr::memchr3(b'\r', b'\n', 0, b).is_some() {
        return Err(EncodeError::IdHasForbiddenChar);
    }
    Ok(())
}

/// Encodes one event into a freshly allocated buffer of exactly the right size.
pub fn encode_event(fields: &EventFields<'_>) -> Result<Bytes, EncodeError> {
    validate(fields)?;
    let len = encoded_len(fields);
    let mut out = BytesMut::with_capacity(len);
    write_event(fields, &mut out);
    debug_assert_eq!(out.len(), len, "encoded_len must be exact");
    Ok(out.freeze())
}

/// Appends one encoded event to `out`, reserving the exact space first.
///
/// On error nothing is written.
pub fn encode_event_into(fields: &EventFields<'_>, out: &mut BytesMut) -> Result<(), EncodeError> {
    validate(fields)?;
    out.reserve(encoded_len(fields));
    write_event(fields, out);
    Ok(())
}

/// Encodes a comment block: one `:` line per line of `text`, then a blank line.
///
/// Clients ignore comments (they are used as heartbeats); the trailing blank
/// line dispatches nothing because no data precedes it, and it keeps the stream
/// on an event boundary.
pub fn encode_comment(text: &str) -> Bytes {
    let len: usize = Lines::new(text.as_bytes())
        .map(|l| l.len() + 2)
        .sum::<usize>()
        + 1;
    let mut out = BytesMut::with_capacity(len);
    for line in Lines::new(text.as_bytes()) {
        out.put_u8(b':');
        out.put_slice(line);
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    debug_assert_eq!(out.len(), len);
    out.freeze()
}

/// Encodes a block that only sets the client's reconnection time: `retry: N\n\n`.
pub fn encode_retry(ms: u64) -> Bytes {
    let mut out = BytesMut::with_capacity(RETRY_PREFIX.len() + decimal_len(ms) + 2);
    out.put_slice(RETRY_PREFIX);
    put_decimal(&mut out, ms);
    out.put_slice(b"\n\n");
    out.freeze()
}

/// Encodes lines that dispatch no event in any common client: an optional
/// `retry: N` line, then one `:` comment line per line of `comment` (none if
/// it is empty and `retry_ms` is given; `:` alone if both are empty). No
/// blank line follows.
///
/// Why no blank line: a WHATWG parser applies `retry:` as soon as it reads
/// the line and ignores a blank line that follows no data, but some clients
/// (httpx-sse) dispatch an empty `message` event on a blank line once any
/// field has been seen — `retry:`, or an `id:` they keep from an earlier
/// event. Stream preambles, heartbeats and "come back later" answers are
/// therefore notices, never blocks.
pub fn encode_notice(retry_ms: Option<u64>, comment: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(RETRY_PREFIX.len() + 21 + comment.len() + 4);
    if let Some(ms) = retry_ms {
        out.put_slice(RETRY_PREFIX);
        put_decimal(&mut out, ms);
        out.put_u8(b'\n');
    }
    if !comment.is_empty() || retry_ms.is_none() {
        for line in Lines::new(comment.as_bytes()) {
            out.put_u8(b':');
            out.put_slice(line);
            out.put_u8(b'\n');
        }
    }
    out.freeze()
}

fn validate(fields: &EventFields<'_>) -> Result<(), EncodeError> {
    if let Some(id) = fields.id {
        validate_id(id)?;
    }
    if let Some(t) = fields.event {
        validate_event_type(t)?;
    }
    Ok(())
}

/// Exact number of bytes [`write_event`] produces for already-validated fields.
fn encoded_len(fields: &EventFields<'_>) -> usize {
    let mut len = 1; // the blank line that ends the event
    if let Some(id) = fields.id {
        len += ID_PREFIX.len() + id.len() + 1;
    }
    if let Some(t) = fields.event {
        len += EVENT_PREFIX.len() + t.len() + 1;
    }
    len += Lines::new(fields.data.as_bytes())
        .map(|l| DATA_PREFIX.len() + l.len() + 1)
        .sum::<usize>();
    if let Some(ms) = fields.retry {
        len += RETRY_PREFIX.len() + decimal_len(ms) + 1;
    }
    len
}

fn write_event(fields: &EventFields<'_>, out: &mut BytesMut) {
    if let Some(id) = fields.id {
        out.put_slice(ID_PREFIX);
        out.put_slice(id.as_bytes());
        out.put_u8(b'\n');
    }
    if let Some(t) = fields.event {
        out.put_slice(EVENT_PREFIX);
        out.put_slice(t.as_bytes());
        out.put_u8(b'\n');
    }
    // Always "data: " with the space: the parser strips exactly one leading
    // space, so data that itself starts with a space or colon survives intact.
    for line in Lines::new(fields.data.as_bytes()) {
        out.put_slice(DATA_PREFIX);
        out.put_slice(line);
        out.put_u8(b'\n');
    }
    if let Some(ms) = fields.retry {
        out.put_slice(RETRY_PREFIX);
        put_decimal(out, ms);
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
}

/// Splits bytes into lines at CRLF, lone CR or lone LF, exactly as an SSE
/// client does. Always yields at least one (possibly empty) line, and a
/// trailing line break yields a final empty line, so that the client's
/// "remove one trailing LF" step restores the break.
struct Lines<'a> {
    bytes: &'a [u8],
    /// Start of the next line; `None` once the last line has been yielded.
    start: Option<usize>,
    breaks: memchr::Memchr2<'a>,
}

impl<'a> Lines<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            start: Some(0),
            breaks: memchr::memchr2_iter(b'\r', b'\n', bytes),
        }
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let start = self.start?;
        for pos in self.breaks.by_ref() {
            if pos < start {
                // The LF of a CRLF whose CR already ended the previous line.
                continue;
            }
            let crlf = self.bytes[pos] == b'\r' && self.bytes.get(pos + 1) == Some(&b'\n');
            self.start = Some(pos + if crlf { 2 } else { 1 });
            return Some(&self.bytes[start..pos]);
        }
        self.start = None;
        Some(&self.bytes[start..])
    }
}

fn decimal_len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 10 {
        n /= 10;
        len += 1;
    }
    len
}

fn put_decimal(out: &mut BytesMut, mut n: u64) {
    // u64::MAX has 20 digits; formatting on the stack avoids a String.
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&buf[i..]);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn enc(fields: EventFields<'_>) -> String {
        String::from_utf8(encode_event(&fields).unwrap().to_vec()).unwrap()
    }

    fn lines(s: &str) -> Vec<&str> {
        Lines::new(s.as_bytes())
            .map(|l| std::str::from_utf8(l).unwrap())
            .collect()
    }

    #[test]
    fn full_event_layout() {
        let s = enc(EventFields {
            id: Some("42"),
            event: Some("update"),
            data: "hello",
            retry: Some(1500),
        });
        assert_eq!(s, "id: 42\nevent: update\ndata: hello\nretry: 1500\n\n");
    }

    #[test]
    fn data_only_event() {
        assert_eq!(
            enc(EventFields {
                data: "x",
                ..Default::default()
            }),
            "data: x\n\n"
        );
    }

    #[test]
    fn empty_data_is_one_empty_data_line() {
        assert_eq!(enc(EventFields::default()), "data: \n\n");
    }

    #[test]
    fn all_line_break_kinds_split_data() {
        let s = enc(EventFields {
            data: "a\r\nb\rc\nd",
            ..Default::default()
        });
        assert_eq!(s, "data: a\ndata: b\ndata: c\ndata: d\n\n");
    }

    #[test]
    fn trailing_line_break_becomes_trailing_empty_line() {
        assert_eq!(
            enc(EventFields {
                data: "a\n",
                ..Default::default()
            }),
            "data: a\ndata: \n\n"
        );
        assert_eq!(
            enc(EventFields {
                data: "\r\n",
                ..Default::default()
            }),
            "data: \ndata: \n\n"
        );
    }

    #[test]
    fn leading_space_and_colon_in_data_kept() {
        assert_eq!(
            enc(EventFields {
                data: " :x",
                ..Default::default()
            }),
            "data:  :x\n\n"
        );
    }

    #[test]
    fn empty_id_is_written() {
        assert_eq!(
            enc(EventFields {
                id: Some(""),
                data: "d",
                ..Default::default()
            }),
            "id: \ndata: d\n\n"
        );
    }

    #[test]
    fn lines_splitter() {
        assert_eq!(lines(""), vec![""]);
        assert_eq!(lines("a"), vec!["a"]);
        assert_eq!(lines("\r"), vec!["", ""]);
        assert_eq!(lines("\n\r"), vec!["", "", ""]);
        assert_eq!(lines("\r\n\r\n"), vec!["", "", ""]);
        assert_eq!(lines("a\r\r\nb"), vec!["a", "", "b"]);
    }

    #[test]
    fn validation_errors() {
        assert_eq!(validate_event_type(""), Err(EncodeError::EmptyEventType));
        assert_eq!(
            validate_event_type("a\nb"),
            Err(EncodeError::EventTypeHasLineBreak)
        );
        assert_eq!(
            validate_event_type("a\rb"),
            Err(EncodeError::EventTypeHasLineBreak)
        );
        assert_eq!(validate_event_type("a\0b"), Ok(()));
        assert_eq!(validate_id("a\nb"), Err(EncodeError::IdHasForbiddenChar));
        assert_eq!(validate_id("a\rb"), Err(EncodeError::IdHasForbiddenChar));
        assert_eq!(validate_id("a\0b"), Err(EncodeError::IdHasForbiddenChar));
        assert_eq!(validate_id(""), Ok(()));
        let bad = EventFields {
            event: Some("x\ny"),
            ..Default::default()
        };
        assert_eq!(encode_event(&bad), Err(EncodeError::EventTypeHasLineBreak));
    }

    #[test]
    fn encode_into_appends_and_writes_nothing_on_error() {
        let mut buf = BytesMut::from(&b"prefix"[..]);
        encode_event_into(
            &EventFields {
                data: "x",
                ..Default::default()
            },
            &mut buf,
        )
        .unwrap();
        assert_eq!(&buf[..], b"prefixdata: x\n\n");
        let bad = EventFields {
            id: Some("\0"),
            data: "y",
            ..Default::default()
        };
        assert_eq!(
            encode_event_into(&bad, &mut buf),
            Err(EncodeError::IdHasForbiddenChar)
        );
        assert_eq!(&buf[..], b"prefixdata: x\n\n");
    }

    #[test]
    fn encoded_len_is_exact() {
        for data in ["", "a", "\r\n", "a\rb\nc\r\nd\n", "é😀\r"] {
            for retry in [None, Some(0), Some(9), Some(10), Some(u64::MAX)] {
                let f = EventFields {
                    id: Some("i"),
                    event: Some("e"),
                    data,
                    retry,
                };
                assert_eq!(encode_event(&f).unwrap().len(), encoded_len(&f));
            }
        }
    }

    #[test]
    fn comment_lines() {
        assert_eq!(&encode_comment("")[..], b":\n\n");
        assert_eq!(&encode_comment("hb")[..], b":hb\n\n");
        assert_eq!(&encode_comment("a\r\nb\rc\nd")[..], b":a\n:b\n:c\n:d\n\n");
    }

    #[test]
    fn retry_block() {
        assert_eq!(&encode_retry(0)[..], b"retry: 0\n\n");
        assert_eq!(&encode_retry(3000)[..], b"retry: 3000\n\n");
        assert_eq!(
            &encode_retry(u64::MAX)[..],
            b"retry: 18446744073709551615\n\n"
        );
    }

    #[test]
    fn decimal_helpers() {
        for n in [0, 1, 9, 10, 99, 100, 12345, u64::MAX] {
            let mut b = BytesMut::new();
            put_decimal(&mut b, n);
            assert_eq!(&b[..], n.to_string().as_bytes());
            assert_eq!(decimal_len(n), n.to_string().len());
        }
    }

    #[test]
    fn never_starts_with_bom() {
        let s = enc(EventFields {
            data: "\u{FEFF}x",
            ..Default::default()
        });
        assert!(s.starts_with("data: \u{FEFF}x"));
        assert!(encode_comment("\u{FEFF}").starts_with(b":"));
    }
}
