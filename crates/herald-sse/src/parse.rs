//! Incremental parser for the `text/event-stream` format (WHATWG HTML §9.2).
//!
//! Bytes may arrive in any chunking. Lines are assembled from raw bytes and
//! decoded as UTF-8 (with replacement) only once complete, which is equivalent
//! to decoding the whole stream first: CR and LF never occur inside a UTF-8
//! sequence, so a line boundary never splits a character.

/// UTF-8 encoding of U+FEFF, stripped once at the start of the stream.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedEvent {
    /// The last event id at dispatch time, `""` if none was ever set.
    pub id: String,
    /// The event type; `"message"` when the block had no (non-empty) `event` field.
    pub event: String,
    /// Data lines joined with LF.
    pub data: String,
    /// A valid `retry` field seen in this event's block, if any.
    pub retry: Option<u64>,
}

/// Incremental SSE parser: feed it bytes, get back dispatched events.
///
/// There is deliberately no `finish`: per the standard, an event whose
/// terminating blank line never arrives is discarded.
#[derive(Debug, Default)]
pub struct Parser {
    /// Bytes of a line not yet terminated, carried over between feeds.
    line: Vec<u8>,
    /// The previous feed ended with CR: that CR already ended its line, so an
    /// LF at the start of the next feed is the rest of a CRLF and is skipped.
    skip_lf: bool,
    /// A line has been completed, so the start-of-stream BOM check is done.
    started: bool,
    data: String,
    event_type: String,
    /// The "last event ID buffer": updated by `id` fields, kept across events.
    id_buffer: String,
    /// The "last event ID string": copied from the buffer at each blank line.
    last_event_id: String,
    /// A `retry` field seen in the current block.
    block_retry: Option<u64>,
    /// The reconnection time last set by any `retry` field.
    retry: Option<u64>,
    comments: u64,
}

impl Parser {
    /// Creates a parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes (any chunking, even splitting a CRLF or a UTF-8 sequence across calls); returns the events dispatched by them.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<ParsedEvent> {
        let mut out = Vec::new();
        self.feed_into(bytes, &mut out);
        out
    }

    /// Same as [`Parser::feed`], pushing into a caller's `Vec` so it can be reused.
    pub fn feed_into(&mut self, bytes: &[u8], out: &mut Vec<ParsedEvent>) {
        let mut rest = bytes;
        if self.skip_lf {
            // An empty feed tells us nothing, so the flag survives it.
            match rest.first() {
                None => return,
                Some(&b'\n') => rest = &rest[1..],
                Some(_) => {}
            }
            self.skip_lf = false;
        }
        while let Some(pos) = memchr::memchr2(b'\r', b'\n', rest) {
            if self.line.is_empty() {
                // Common case: the whole line is in this chunk, no copy needed.
                self.process_line(&rest[..pos], out);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&rest[..pos]);
                self.process_line(&line, out);
                line.clear();
                self.line = line; // keep the allocation for the next partial line
            }
            let mut next = pos + 1;
            if rest[pos] == b'\r' {
                match rest.get(next) {
                    Some(&b'\n') => next += 1,
                    // Can't tell yet whether this CR is half of a CRLF.
                    None => self.skip_lf = true,
                    Some(_) => {}
                }
            }
            rest = &rest[next..];
        }
        self.line.extend_from_slice(rest);
    }

    /// The last event id string, as of the most recent blank line.
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// The reconnection time (milliseconds) last set by a `retry` field.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    /// Number of comment lines seen so far (heartbeats show up here).
    pub fn comments_seen(&self) -> u64 {
        self.comments
    }

    fn process_line(&mut self, mut line: &[u8], out: &mut Vec<ParsedEvent>) {
        if !self.started {
            self.started = true;
            // The BOM can only be at the very start, so it is always inside
            // the first line; checking here also covers a BOM split over feeds.
            if let Some(stripped) = line.strip_prefix(BOM) {
                line = stripped;
            }
        }
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line[0] == b':' {
            self.comments += 1;
            return;
        }
        let (name, value) = match memchr::memchr(b':', line) {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        // Comparing raw bytes equals comparing decoded text here: the names are
        // ASCII, and invalid bytes would decode to U+FFFD, matching nothing.
        match name {
            b"event" => {
                self.event_type.clear();
                self.event_type.push_str(&String::from_utf8_lossy(value));
            }
            b"data" => {
                self.data.push_str(&String::from_utf8_lossy(value));
                self.data.push('\n');
            }
            // Clients ignore ids with NUL so a server can't plant one that
            // would break the Last-Event-ID request header.
            b"id" if memchr::memchr(0, value).is_none() => {
                self.id_buffer.clear();
                self.id_buffer.push_str(&String::from_utf8_lossy(value));
            }
            b"retry" => {
                if let Some(ms) = parse_retry(value) {
                    self.retry = Some(ms);
                    self.block_retry = Some(ms);
                }
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<ParsedEvent>) {
        // The id counts even when no event is dispatched.
        if self.last_event_id != self.id_buffer {
            self.last_event_id.clone_from(&self.id_buffer);
        }
        let retry = self.block_retry.take();
        if self.data.is_empty() {
            self.event_type.clear();
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        if data.ends_with('\n') {
            data.pop();
        }
        let event = if self.event_type.is_empty() {
            String::from("message")
        } else {
            std::mem::take(&mut self.event_type)
        };
        out.push(ParsedEvent {
            id: self.last_event_id.clone(),
            event,
            data,
            retry,
        });
    }
}

/// A `retry` value counts only if it is all ASCII digits. Empty values and
/// values too large for `u64` are ignored rather than guessed at.
fn parse_retry(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ev(id: &str, event: &str, data: &str) -> ParsedEvent {
        ParsedEvent {
            id: id.into(),
            event: event.into(),
            data: data.into(),
            retry: None,
        }
    }

    fn parse_all(bytes: &[u8]) -> Vec<ParsedEvent> {
        Parser::new().feed(bytes)
    }

    fn parse_bytewise(bytes: &[u8]) -> Vec<ParsedEvent> {
        let mut p = Parser::new();
        let mut out = Vec::new();
        for b in bytes {
            p.feed_into(std::slice::from_ref(b), &mut out);
        }
        out
    }

    #[test]
    fn simple_event() {
        assert_eq!(parse_all(b"data: hi\n\n"), vec![ev("", "message", "hi")]);
    }

    #[test]
    fn bom_stripped_at_start() {
        assert_eq!(
            parse_all(b"\xEF\xBB\xBFdata: x\n\n"),
            vec![ev("", "message", "x")]
        );
    }

    #[test]
    fn bom_split_across_feeds() {
        let mut p = Parser::new();
        assert!(p.feed(b"\xEF").is_empty());
        assert!(p.feed(b"\xBB").is_empty());
        assert_eq!(p.feed(b"\xBFdata: x\n\n"), vec![ev("", "message", "x")]);
    }

    #[test]
    fn only_one_bom_stripped() {
        // A second BOM becomes part of the field name, which then matches nothing.
        assert!(parse_all(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: x\n\n").is_empty());
    }

    #[test]
    fn bom_not_stripped_mid_stream() {
        assert!(parse_all(b"\n\xEF\xBB\xBFdata: x\n\n").is_empty());
        assert!(parse_all(b":c\n\xEF\xBB\xBFdata: x\n\n").is_empty());
    }

    #[test]
    fn bom_alone_then_blank_line() {
        let mut p = Parser::new();
        assert_eq!(
            p.feed(b"\xEF\xBB\xBF\ndata: y\n\n"),
            vec![ev("", "message", "y")]
        );
    }

    #[test]
    fn lf_cr_and_crlf_line_endings() {
        let want = vec![ev("", "message", "a\nb")];
        assert_eq!(parse_all(b"data: a\ndata: b\n\n"), want);
        assert_eq!(parse_all(b"data: a\rdata: b\r\r"), want);
        assert_eq!(parse_all(b"data: a\r\ndata: b\r\n\r\n"), want);
        assert_eq!(parse_all(b"data: a\rdata: b\r\n\n"), want);
    }

    #[test]
    fn crlf_split_across_feeds() {
        let mut p = Parser::new();
        assert!(p.feed(b"data: a\r").is_empty());
        // The LF completes the CRLF; it must not count as a blank line.
        assert!(p.feed(b"\ndata: b\r").is_empty());
        assert!(p.feed(b"\n").is_empty());
        assert_eq!(p.feed(b"\r"), vec![ev("", "message", "a\nb")]);
        // The LF finishing that blank line's CRLF must not be another blank line.
        assert!(p.feed(b"\ndata: c\n").is_empty());
        assert_eq!(p.feed(b"\r\n"), vec![ev("", "message", "c")]);
    }

    #[test]
    fn lone_cr_at_chunk_end_ends_line() {
        let mut p = Parser::new();
        assert!(p.feed(b"data: a\r").is_empty());
        // Next chunk starts with a non-LF: the CR was a line end on its own.
        assert_eq!(p.feed(b"\r"), vec![ev("", "message", "a")]);
    }

    #[test]
    fn cr_then_empty_feed_then_lf() {
        let mut p = Parser::new();
        assert!(p.feed(b"data: a\r").is_empty());
        assert!(p.feed(b"").is_empty());
        assert!(p.feed(b"\n").is_empty());
        assert_eq!(p.feed(b"\n"), vec![ev("", "message", "a")]);
    }

    #[test]
    fn cr_cr_is_blank_line() {
        let mut p = Parser::new();
        assert!(p.feed(b"data: a\r").is_empty());
        assert_eq!(p.feed(b"\r\n"), vec![ev("", "message", "a")]);
        // The LF after the second CR belongs to it, not a new blank line.
        assert!(p.feed(b"data: b\n").is_empty());
    }

    #[test]
    fn bytewise_feeding_matches_whole() {
        let stream: &[u8] = b"\xEF\xBB\xBFid: 1\r\nevent: e\rdata: a\r\ndata:b\n\r\n:c\r\rdata: \xC3\xA9\xF0\x9F\x98\x80\r\nretry: 10\r\n\r\nid\n\n";
        let whole = parse_all(stream);
        assert_eq!(whole.len(), 2);
        assert_eq!(parse_bytewise(stream), whole);
    }

    #[test]
    fn utf8_split_across_feeds() {
        let mut p = Parser::new();
        assert!(p.feed(b"data: \xF0\x9F").is_empty());
        assert!(p.feed(b"\x98").is_empty());
        assert_eq!(p.feed(b"\x80\xC3\xA9\n\n"), vec![ev("", "message", "😀é")]);
    }

    #[test]
    fn invalid_utf8_replaced() {
        assert_eq!(
            parse_all(b"data: a\xFFb\xF0\x9F\n\n"),
            vec![ev("", "message", "a\u{FFFD}b\u{FFFD}")]
        );
    }

    #[test]
    fn comments_counted_not_dispatched() {
        let mut p = Parser::new();
        assert!(p.feed(b":heartbeat\n\n: another\n\n").is_empty());
        assert_eq!(p.comments_seen(), 2);
        // A comment inside a block does not disturb it.
        assert_eq!(
            p.feed(b"data: a\n:mid\ndata: b\n\n"),
            vec![ev("", "message", "a\nb")]
        );
        assert_eq!(p.comments_seen(), 3);
    }

    #[test]
    fn one_leading_space_stripped() {
        assert_eq!(parse_all(b"data:x\n\n")[0].data, "x");
        assert_eq!(parse_all(b"data: x\n\n")[0].data, "x");
        assert_eq!(parse_all(b"data:  x\n\n")[0].data, " x");
        assert_eq!(parse_all(b"data: a: b\n\n")[0].data, "a: b");
        assert_eq!(parse_all(b"data:\tx\n\n")[0].data, "\tx");
    }

    #[test]
    fn no_colon_line_is_field_with_empty_value() {
        assert_eq!(parse_all(b"data\n\n"), vec![ev("", "message", "")]);
        assert_eq!(parse_all(b"data\ndata\n\n"), vec![ev("", "message", "\n")]);
        // "event" with empty value leaves the type at its default.
        assert_eq!(
            parse_all(b"event\ndata: x\n\n"),
            vec![ev("", "message", "x")]
        );
        let mut p = Parser::new();
        p.feed(b"id: 7\n\n");
        assert_eq!(p.last_event_id(), "7");
        p.feed(b"id\n\n");
        assert_eq!(p.last_event_id(), "");
    }

    #[test]
    fn field_names_case_sensitive_and_unknown_ignored() {
        assert!(parse_all(b"Data: x\n\n").is_empty());
        assert!(parse_all(b"DATA: x\nfoo: bar\n\n").is_empty());
        assert_eq!(
            parse_all(b"Event: e\nID: 1\nRetry: 5\ndata: x\n\n"),
            vec![ev("", "message", "x")]
        );
        assert!(parse_all(b" data: x\n\n").is_empty());
    }

    #[test]
    fn event_type_applies_to_one_event() {
        assert_eq!(
            parse_all(b"event: a\nevent: b\ndata: 1\n\ndata: 2\n\n"),
            vec![ev("", "b", "1"), ev("", "message", "2")]
        );
    }

    #[test]
    fn id_persists_until_changed() {
        assert_eq!(
            parse_all(b"id: 1\ndata: a\n\ndata: b\n\nid: \ndata: c\n\n"),
            vec![
                ev("1", "message", "a"),
                ev("1", "message", "b"),
                ev("", "message", "c")
            ]
        );
    }

    #[test]
    fn id_with_nul_ignored() {
        let mut p = Parser::new();
        assert_eq!(
            p.feed(b"id: 1\ndata: a\n\nid: 2\0x\ndata: b\n\n"),
            vec![ev("1", "message", "a"), ev("1", "message", "b")]
        );
        assert_eq!(p.last_event_id(), "1");
    }

    #[test]
    fn id_updates_only_at_blank_line() {
        let mut p = Parser::new();
        p.feed(b"id: 9\ndata: x\n");
        assert_eq!(p.last_event_id(), "");
        p.feed(b"\n");
        assert_eq!(p.last_event_id(), "9");
    }

    #[test]
    fn no_data_block_not_dispatched_but_id_counts() {
        let mut p = Parser::new();
        assert!(p.feed(b"id: 5\nevent: e\n\n").is_empty());
        assert_eq!(p.last_event_id(), "5");
        // The event type of the dropped block was reset.
        assert_eq!(p.feed(b"data: x\n\n"), vec![ev("5", "message", "x")]);
    }

    #[test]
    fn retry_valid_sets_reconnection_time() {
        let mut p = Parser::new();
        assert!(p.feed(b"retry: 3000\n\n").is_empty());
        assert_eq!(p.retry(), Some(3000));
        let got = p.feed(b"retry: 10\ndata: x\n\ndata: y\n\n");
        assert_eq!(got[0].retry, Some(10));
        // The field belongs to its own block only.
        assert_eq!(got[1].retry, None);
        assert_eq!(p.retry(), Some(10));
    }

    #[test]
    fn retry_invalid_ignored() {
        let mut p = Parser::new();
        p.feed(b"retry: 100\n\n");
        for bad in [
            &b"retry: 1a\n"[..],
            b"retry: -5\n",
            b"retry: +5\n",
            b"retry: 5 \n",
            b"retry:  5\n",
            b"retry: \n",
            b"retry\n",
            b"retry: 1.5\n",
            b"retry: 99999999999999999999999\n",
        ] {
            let mut block = bad.to_vec();
            block.extend_from_slice(b"data: x\n\n");
            let got = p.feed(&block);
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].retry, None, "{:?}", String::from_utf8_lossy(bad));
            assert_eq!(p.retry(), Some(100));
        }
        p.feed(b"retry:0\n\n");
        assert_eq!(p.retry(), Some(0));
    }

    #[test]
    fn trailing_lf_removed_once() {
        assert_eq!(parse_all(b"data: a\ndata: \n\n")[0].data, "a\n");
        assert_eq!(parse_all(b"data: \n\n")[0].data, "");
    }

    #[test]
    fn incomplete_event_never_dispatched() {
        let mut p = Parser::new();
        assert!(p.feed(b"data: a\n").is_empty());
        assert!(p.feed(b"data: b").is_empty());
        assert!(p.feed(b"").is_empty());
    }

    #[test]
    fn feed_into_appends() {
        let mut p = Parser::new();
        let mut out = vec![ev("", "x", "y")];
        p.feed_into(b"data: z\n\n", &mut out);
        assert_eq!(out, vec![ev("", "x", "y"), ev("", "message", "z")]);
    }

    #[test]
    fn nul_in_data_kept() {
        assert_eq!(parse_all(b"data: a\0b\n\n")[0].data, "a\0b");
    }
}
