//! What a connection's first bytes are: the HTTP/2 preface, a complete
//! HTTP/1.1 request head for the event-stream route, or something else.
//!
//! This is the byte-level half of the direct path (`crate::direct`): no I/O,
//! no server state, so every refusal can be tested on a buffer. The caller
//! peeks at the socket, passes what it saw, and serves the connection itself
//! only for [`Head::EventStream`]; everything else goes to hyper untouched.
//!
//! Invariants of [`classify`]:
//! - [`Head::EventStream`] only for a head that is complete within the first
//!   [`MAX_HEAD`] bytes: method `GET`, version HTTP/1.1, origin-form target
//!   whose path is exactly `/v1/events`, at most [`MAX_HEADERS`] headers, every
//!   name and value valid for httparse and the `http` crate, no `Content-Length`,
//!   `Transfer-Encoding` or `Upgrade` (a body or a protocol switch is hyper's
//!   business).
//! - Its `head_len` is the length of the head up to and including the blank
//!   line that ends it; bytes after it (a pipelined request, say) are not
//!   part of it.
//! - A buffer that is still a strict prefix of a head or of the preface is
//!   [`Head::Incomplete`], never accepted early.
//! - No input makes it panic.

use axum::http::{HeaderMap, HeaderName, HeaderValue};

/// Longest request head the direct path looks at; longer ones go to hyper.
pub(crate) const MAX_HEAD: usize = 8 * 1024;
/// Headers parsed at most; a head with more goes to hyper.
pub(crate) const MAX_HEADERS: usize = 64;
/// The client preface every HTTP/2 connection starts with (RFC 9113 §3.4).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The one route the direct path serves.
const EVENTS_PATH: &str = "/v1/events";

/// What the first bytes of a connection are.
#[derive(Debug)]
pub(crate) enum Head<'a> {
    /// The HTTP/2 client preface (prior knowledge h2c).
    Http2,
    /// A complete HTTP/1.1 `GET /v1/events` head the direct path may serve.
    EventStream {
        /// Bytes of the head, blank line included.
        head_len: usize,
        /// The raw query string (after `?`, not decoded), if the target has one.
        query: Option<&'a str>,
        /// The request headers, in order.
        headers: HeaderMap,
    },
    /// Not enough bytes yet to tell.
    Incomplete,
    /// Anything else, and why.
    Other(NotDirect),
}

/// Why a head is not one the direct path serves (logged at trace level).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotDirect {
    /// Not HTTP/1.x syntax: request line, header syntax, or a character
    /// a name or value may not hold.
    Malformed,
    /// More than [`MAX_HEADERS`] headers.
    TooManyHeaders,
    /// No complete head within [`MAX_HEAD`] bytes.
    TooLong,
    /// A method other than `GET`.
    NotGet,
    /// HTTP/1.0.
    NotHttp11,
    /// A target other than `/v1/events` (with or without a query).
    OtherPath,
    /// `Content-Length` or `Transfer-Encoding`: the request has a body.
    Body,
    /// `Upgrade` (h2c, WebSocket): a protocol switch.
    Upgrade,
}

/// Classifies the first bytes of a connection (see the module invariants).
pub(crate) fn classify(buf: &[u8]) -> Head<'_> {
    if buf.starts_with(HTTP2_PREFACE) {
        return Head::Http2;
    }
    // Also true of an empty buffer: nothing has been said yet.
    if HTTP2_PREFACE.starts_with(buf) {
        return Head::Incomplete;
    }
    let window = &buf[..buf.len().min(MAX_HEAD)];
    let mut parsed_headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut parsed_headers);
    let head_len = match request.parse(window) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if window.len() == MAX_HEAD => {
            return Head::Other(NotDirect::TooLong)
        }
        Ok(httparse::Status::Partial) => return Head::Incomplete,
        Err(httparse::Error::TooManyHeaders) => return Head::Other(NotDirect::TooManyHeaders),
        Err(_) => return Head::Other(NotDirect::Malformed),
    };
    if request.method != Some("GET") {
        return Head::Other(NotDirect::NotGet);
    }
    if request.version != Some(1) {
        return Head::Other(NotDirect::NotHttp11);
    }
    // A complete parse always has a path; an absent one is treated as any
    // other path rather than trusted.
    let Some(target) = request.path else {
        return Head::Other(NotDirect::OtherPath);
    };
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    if path != EVENTS_PATH {
        return Head::Other(NotDirect::OtherPath);
    }
    let mut headers = HeaderMap::with_capacity(request.headers.len());
    for h in request.headers.iter() {
        // httparse allows the same characters as `http` does, so this does
        // not fail today; should the two ever differ, hyper gets the request.
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Head::Other(NotDirect::Malformed);
        };
        headers.append(name, value);
    }
    if headers.contains_key("content-length") || headers.contains_key("transfer-encoding") {
        return Head::Other(NotDirect::Body);
    }
    if headers.contains_key("upgrade") {
        return Head::Other(NotDirect::Upgrade);
    }
    Head::EventStream {
        head_len,
        query,
        headers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A head as a browser's EventSource sends it.
    const BROWSER_HEAD: &[u8] = b"GET /v1/events?topic=news&user=7777 HTTP/1.1\r\n\
Host: localhost:8080\r\n\
Accept: text/event-stream\r\n\
Cache-Control: no-cache\r\n\
Last-Event-ID: 42\r\n\
Origin: https://app.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n\
\r\n";

    /// The head line by line, with the blank line added.
    fn head_of(lines: &[&str]) -> Vec<u8> {
        let mut head = String::new();
        for line in lines {
            head.push_str(line);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        head.into_bytes()
    }

    /// `GET {target} HTTP/1.1` with a Host header and `extra` headers.
    fn get(target: &str, extra: &[&str]) -> Vec<u8> {
        let request_line = format!("GET {target} HTTP/1.1");
        let mut lines = vec![request_line.as_str(), "Host: localhost"];
        lines.extend_from_slice(extra);
        head_of(&lines)
    }

    /// The refusal, or a panic naming what came out instead.
    fn refusal(buf: &[u8]) -> NotDirect {
        match classify(buf) {
            Head::Other(why) => why,
            other => panic!(
                "expected a refusal for {:?}, got {other:?}",
                String::from_utf8_lossy(buf)
            ),
        }
    }

    /// `(head_len, query, headers)`, or a panic naming what came out instead.
    fn accepted(buf: &[u8]) -> (usize, Option<&str>, HeaderMap) {
        match classify(buf) {
            Head::EventStream {
                head_len,
                query,
                headers,
            } => (head_len, query, headers),
            other => panic!(
                "expected an event-stream head for {:?}, got {other:?}",
                String::from_utf8_lossy(buf)
            ),
        }
    }

    #[test]
    fn a_browser_head_is_accepted_whole() {
        let (head_len, query, headers) = accepted(BROWSER_HEAD);
        assert_eq!(head_len, BROWSER_HEAD.len());
        assert_eq!(query, Some("topic=news&user=7777"));
        assert_eq!(headers.len(), 6);
        assert_eq!(headers["last-event-id"], "42");
        assert_eq!(headers["origin"], "https://app.example.com");
        assert_eq!(headers["host"], "localhost:8080");
    }

    #[test]
    fn a_head_cut_anywhere_is_incomplete() {
        for cut in 0..BROWSER_HEAD.len() {
            let head = classify(&BROWSER_HEAD[..cut]);
            assert!(
                matches!(head, Head::Incomplete),
                "cut at {cut} of {}: {head:?}",
                BROWSER_HEAD.len()
            );
        }
        // The minimal head, too: it has no header to lean on.
        let minimal = b"GET /v1/events HTTP/1.1\r\n\r\n";
        for cut in 0..minimal.len() {
            let head = classify(&minimal[..cut]);
            assert!(matches!(head, Head::Incomplete), "cut at {cut}: {head:?}");
        }
        assert_eq!(accepted(minimal).0, minimal.len());
    }

    #[test]
    fn pipelined_bytes_are_not_part_of_the_head() {
        let mut buf = BROWSER_HEAD.to_vec();
        buf.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n");
        assert_eq!(accepted(&buf).0, BROWSER_HEAD.len());

        // A partial second request, or plain garbage, after the head.
        let mut buf = BROWSER_HEAD.to_vec();
        buf.extend_from_slice(b"POST /v1/pub");
        assert_eq!(accepted(&buf).0, BROWSER_HEAD.len());
        let mut buf = BROWSER_HEAD.to_vec();
        buf.extend_from_slice(&[0, 0xff, b'\r']);
        assert_eq!(accepted(&buf).0, BROWSER_HEAD.len());
    }

    #[test]
    fn query_strings_are_passed_raw() {
        for (target, want) in [
            ("/v1/events", None),
            ("/v1/events?", Some("")),
            ("/v1/events?topic=a&topic=b", Some("topic=a&topic=b")),
            (
                "/v1/events?topic=orders%2F42&types=a,b",
                Some("topic=orders%2F42&types=a,b"),
            ),
            ("/v1/events?lastEventId=%FF%FE", Some("lastEventId=%FF%FE")),
            // Only the first `?` splits; the rest belongs to the query.
            ("/v1/events?a=1?b=2", Some("a=1?b=2")),
        ] {
            let head = get(target, &[]);
            let (head_len, query, _) = accepted(&head);
            assert_eq!(head_len, head.len(), "{target}");
            assert_eq!(query, want, "{target}");
        }
    }

    #[test]
    fn the_http2_preface_is_recognised_whole_or_followed_by_frames() {
        assert!(matches!(classify(HTTP2_PREFACE), Head::Http2));
        let mut with_settings = HTTP2_PREFACE.to_vec();
        // An empty SETTINGS frame.
        with_settings.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert!(matches!(classify(&with_settings), Head::Http2));
    }

    #[test]
    fn a_preface_split_in_two_is_incomplete_then_http2() {
        for cut in 0..HTTP2_PREFACE.len() {
            let first = classify(&HTTP2_PREFACE[..cut]);
            assert!(matches!(first, Head::Incomplete), "cut at {cut}: {first:?}");
        }
        // Its first line alone looks like an HTTP/1 request line with an
        // unknown version: it must not be refused before the rest arrives.
        assert!(matches!(
            classify(b"PRI * HTTP/2.0\r\n\r\n"),
            Head::Incomplete
        ));
        // Something that starts like the preface and then is not.
        assert_eq!(
            refusal(b"PRI * HTTP/2.0\r\n\r\nXY\r\n\r\n"),
            NotDirect::Malformed
        );
    }

    #[test]
    fn malformed_heads_are_refused() {
        let cases: &[(&str, &[u8])] = &[
            ("not HTTP", b"HELLO\r\n\r\n"),
            ("no version", b"GET /v1/events\r\n\r\n"),
            ("unknown version", b"GET /v1/events HTTP/1.2\r\n\r\n"),
            (
                "HTTP/2 on a request line",
                b"GET /v1/events HTTP/2.0\r\n\r\n",
            ),
            ("two spaces", b"GET  /v1/events HTTP/1.1\r\n\r\n"),
            ("space in the target", b"GET /v1/ev ents HTTP/1.1\r\n\r\n"),
            (
                "header without colon",
                b"GET /v1/events HTTP/1.1\r\nHost localhost\r\n\r\n",
            ),
            (
                "space before the colon",
                b"GET /v1/events HTTP/1.1\r\nHost : localhost\r\n\r\n",
            ),
            (
                "separator in a header name",
                b"GET /v1/events HTTP/1.1\r\nX(y): 1\r\n\r\n",
            ),
            (
                "NUL in a header value",
                b"GET /v1/events HTTP/1.1\r\nX-A: a\0b\r\n\r\n",
            ),
            (
                "bare CR in a header value",
                b"GET /v1/events HTTP/1.1\r\nX-A: a\rb\r\n\r\n",
            ),
            ("non-UTF-8 path", b"GET /v1/events\xff\xfe HTTP/1.1\r\n\r\n"),
            (
                "non-UTF-8 query",
                b"GET /v1/events?topic=\xc3 HTTP/1.1\r\n\r\n",
            ),
        ];
        for (what, head) in cases {
            assert_eq!(refusal(head), NotDirect::Malformed, "{what}");
        }
    }

    #[test]
    fn header_characters_are_those_of_rfc_9110() {
        // DEL and other controls in a value, separators or non-ASCII in a
        // name: refused.
        for extra in [
            "X-A: a\x7fb",
            "X-A: a\x01b",
            "X-\u{e9}: 1",
            "X/A: 1",
            "X\"A: 1",
        ] {
            let head = get("/v1/events", &[extra]);
            assert_eq!(refusal(&head), NotDirect::Malformed, "{extra:?}");
        }
        let empty_name = b"GET /v1/events HTTP/1.1\r\n: v\r\n\r\n";
        assert_eq!(refusal(empty_name), NotDirect::Malformed);
        // Tabs and obs-text (non-ASCII bytes) in a value: kept as they are,
        // with the surrounding whitespace trimmed.
        let head = get("/v1/events", &["X-A: \tcaf\u{e9}\tau lait ", "X-B:"]);
        let (_, _, headers) = accepted(&head);
        assert_eq!(headers["x-a"].as_bytes(), "caf\u{e9}\tau lait".as_bytes());
        assert_eq!(headers["x-b"], "");
    }

    #[test]
    fn bodies_and_upgrades_go_to_hyper() {
        for (extra, want) in [
            ("Content-Length: 0", NotDirect::Body),
            ("content-length: 5", NotDirect::Body),
            ("Transfer-Encoding: chunked", NotDirect::Body),
            ("TRANSFER-ENCODING: gzip, chunked", NotDirect::Body),
            ("Upgrade: h2c", NotDirect::Upgrade),
            ("Upgrade: websocket", NotDirect::Upgrade),
        ] {
            let head = get("/v1/events?topic=a", &[extra]);
            assert_eq!(refusal(&head), want, "{extra}");
        }
        // The full h2c upgrade request, as curl --http2 sends it.
        let h2c = get(
            "/v1/events?topic=a",
            &[
                "Connection: Upgrade, HTTP2-Settings",
                "Upgrade: h2c",
                "HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA",
            ],
        );
        assert_eq!(refusal(&h2c), NotDirect::Upgrade);
    }

    #[test]
    fn other_methods_versions_and_paths_go_to_hyper() {
        let cases: [(NotDirect, &[&str]); 3] = [
            (
                NotDirect::NotGet,
                &[
                    "POST /v1/events",
                    "HEAD /v1/events",
                    "OPTIONS /v1/events",
                    "get /v1/events",
                ],
            ),
            (NotDirect::NotHttp11, &["GET /v1/events HTTP/1.0"]),
            (
                NotDirect::OtherPath,
                &[
                    "GET /v1/eventsX",
                    "GET /v1/eventsX?topic=a",
                    "GET /v1/events/",
                    "GET /v1/events/x",
                    "GET /V1/events",
                    "GET /v1/publish",
                    "GET /",
                    "GET *",
                    "GET http://localhost/v1/events",
                ],
            ),
        ];
        for (want, request_lines) in cases {
            for line in request_lines {
                // HTTP/1.1 unless the line names its version.
                let line = if line.contains(" HTTP/") {
                    line.to_string()
                } else {
                    format!("{line} HTTP/1.1")
                };
                assert_eq!(refusal(&head_of(&[&line])), want, "{line}");
            }
        }
    }

    #[test]
    fn at_most_64_headers() {
        let names: Vec<String> = (0..MAX_HEADERS).map(|i| format!("X-H{i}: v")).collect();
        let lines: Vec<&str> = std::iter::once("GET /v1/events HTTP/1.1")
            .chain(names.iter().map(String::as_str))
            .collect();
        let head = head_of(&lines);
        let (_, _, headers) = accepted(&head);
        assert_eq!(headers.len(), MAX_HEADERS);

        let mut lines = lines;
        lines.push("X-One-Too-Many: v");
        assert_eq!(refusal(&head_of(&lines)), NotDirect::TooManyHeaders);
    }

    #[test]
    fn at_most_8_kib_of_head() {
        // A head of exactly MAX_HEAD bytes is still read whole.
        let short = get("/v1/events", &["X-Pad: "]);
        let pad = "p".repeat(MAX_HEAD - short.len());
        let exact = get("/v1/events", &[&format!("X-Pad: {pad}")]);
        assert_eq!(exact.len(), MAX_HEAD);
        assert_eq!(accepted(&exact).0, MAX_HEAD);

        // One byte more, even with the whole head in the buffer, is too long.
        let over = get("/v1/events", &[&format!("X-Pad: {pad}p")]);
        assert_eq!(over.len(), MAX_HEAD + 1);
        assert_eq!(refusal(&over), NotDirect::TooLong);

        // So is a head still open after MAX_HEAD bytes (a long target).
        let mut open = b"GET /v1/events?topic=".to_vec();
        open.resize(MAX_HEAD, b'a');
        assert_eq!(refusal(&open), NotDirect::TooLong);
        // But the same bytes short of the limit may still complete.
        assert!(matches!(classify(&open[..MAX_HEAD - 1]), Head::Incomplete));
    }

    #[test]
    fn bare_lf_line_ends_are_read_as_httparse_reads_them() {
        // httparse accepts LF for CRLF, as RFC 9112 §2.2 allows; head_len
        // still covers exactly the head.
        let head = b"GET /v1/events?topic=a HTTP/1.1\nHost: x\n\nrest";
        let (head_len, query, _) = accepted(head);
        assert_eq!(
            &head[..head_len],
            b"GET /v1/events?topic=a HTTP/1.1\nHost: x\n\n"
        );
        assert_eq!(query, Some("topic=a"));
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        /// Pieces of heads, good and bad, so that random sequences of them
        /// often complete a head (about a third of the cases; random bytes
        /// alone almost never do).
        fn pieces() -> impl Strategy<Value = Vec<u8>> {
            let piece = prop_oneof![
                4 => Just(b"\r\n".to_vec()),
                1 => Just(b"\n".to_vec()),
                1 => Just(b" HTTP/1.1".to_vec()),
                1 => Just(b"?topic=a".to_vec()),
                1 => Just(b"Host: a".to_vec()),
                1 => Just(b"X-A:  b ".to_vec()),
                1 => Just(b"Content-Length: 0".to_vec()),
                1 => Just(b"Upgrade: h2c".to_vec()),
                1 => any::<u8>().prop_map(|b| vec![b]),
            ];
            proptest::collection::vec(piece, 0..16).prop_map(|p| p.concat())
        }

        proptest! {
            /// No panic, and an accepted head is exactly the first
            /// `head_len` bytes: accepted alone, and incomplete one byte short.
            #[test]
            fn an_accepted_head_is_exactly_its_head_len(
                line in prop::sample::select(vec!["", " HTTP/1.1\r\n", "?a=b HTTP/1.1\r\n"]),
                tail in pieces(),
            ) {
                let mut buf = format!("GET /v1/events{line}").into_bytes();
                buf.extend_from_slice(&tail);
                if let Head::EventStream { head_len, .. } = classify(&buf) {
                    prop_assert!(head_len <= buf.len());
                    let alone = classify(&buf[..head_len]);
                    prop_assert!(
                        matches!(alone, Head::EventStream { head_len: h, .. } if h == head_len),
                        "the head alone: {:?}", alone
                    );
                    let short = classify(&buf[..head_len - 1]);
                    prop_assert!(matches!(short, Head::Incomplete), "one byte short: {:?}", short);
                }
            }

            #[test]
            fn arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..600)) {
                let _ = classify(&buf);
            }
        }
    }
}
