//! Property tests: whatever goes through the encoder comes back out of the
//! parser unchanged (up to line-break normalisation), in any chunking, and no
//! data can create extra events or fields.
#![allow(clippy::unwrap_used)]

use bytes::BytesMut;
use herald_sse::{
    encode_comment, encode_event, encode_event_into, encode_notice, encode_retry, EncodeError,
    EventFields, ParsedEvent, Parser,
};
use proptest::prelude::*;

/// Characters that are interesting to the wire format, weighted heavily, plus
/// arbitrary ones.
fn tricky_char() -> impl Strategy<Value = char> {
    prop_oneof![
        3 => Just('\r'),
        3 => Just('\n'),
        1 => Just('\0'),
        2 => Just(' '),
        2 => Just(':'),
        1 => Just('é'),
        1 => Just('😀'),
        1 => Just('\u{FEFF}'),
        2 => prop::sample::select(vec!['a', 'd', 'i', 't', 'e', 'v', 'n', 'r', 'y']),
        3 => any::<char>(),
    ]
}

fn tricky_string(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(tricky_char(), 0..max).prop_map(|v| v.into_iter().collect())
}

/// Strings acceptable as ids: anything but CR, LF and NUL.
fn id_string() -> impl Strategy<Value = String> {
    tricky_string(16).prop_map(|s| s.replace(['\r', '\n', '\0'], "_"))
}

/// Strings acceptable as event types: non-empty, no CR or LF.
fn event_type() -> impl Strategy<Value = String> {
    tricky_string(16).prop_map(|s| format!("t{}", s.replace(['\r', '\n'], "_")))
}

#[derive(Debug, Clone)]
struct OwnedEvent {
    id: Option<String>,
    event: Option<String>,
    data: String,
    retry: Option<u64>,
}

impl OwnedEvent {
    fn fields(&self) -> EventFields<'_> {
        EventFields {
            id: self.id.as_deref(),
            event: self.event.as_deref(),
            data: &self.data,
            retry: self.retry,
        }
    }
}

fn owned_event() -> impl Strategy<Value = OwnedEvent> {
    (
        prop::option::of(id_string()),
        prop::option::of(event_type()),
        tricky_string(64),
        prop::option::of(any::<u64>()),
    )
        .prop_map(|(id, event, data, retry)| OwnedEvent {
            id,
            event,
            data,
            retry,
        })
}

/// What a client sees as data: CRLF and lone CR become LF.
fn normalise(data: &str) -> String {
    data.replace("\r\n", "\n").replace('\r', "\n")
}

/// Feeds `bytes` split at the given cut points (taken modulo the length).
fn parse_chunked(bytes: &[u8], cuts: &[usize]) -> (Parser, Vec<ParsedEvent>) {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let mut parser = Parser::new();
    let mut out = Vec::new();
    let mut start = 0;
    for cut in cuts {
        parser.feed_into(&bytes[start..cut], &mut out);
        start = cut;
    }
    parser.feed_into(&bytes[start..], &mut out);
    (parser, out)
}

fn cuts() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(any::<usize>(), 0..8)
}

proptest! {
    #[test]
    fn single_event_roundtrips(ev in owned_event(), cuts in cuts()) {
        let wire = encode_event(&ev.fields()).unwrap();
        prop_assert!(!wire.starts_with(b"\xEF\xBB\xBF"));
        prop_assert!(wire.ends_with(b"\n\n"));
        let (parser, got) = parse_chunked(&wire, &cuts);
        prop_assert_eq!(got.len(), 1);
        let want = ParsedEvent {
            id: ev.id.clone().unwrap_or_default(),
            event: ev.event.clone().unwrap_or_else(|| "message".into()),
            data: normalise(&ev.data),
            retry: ev.retry,
        };
        prop_assert_eq!(&got[0], &want);
        prop_assert_eq!(parser.retry(), ev.retry);
        prop_assert_eq!(parser.last_event_id(), want.id.as_str());
        prop_assert_eq!(parser.comments_seen(), 0);
    }

    #[test]
    fn data_only_roundtrips(data in tricky_string(128), cuts in cuts()) {
        let wire = encode_event(&EventFields { data: &data, ..Default::default() }).unwrap();
        let (_, got) = parse_chunked(&wire, &cuts);
        prop_assert_eq!(got.len(), 1);
        prop_assert_eq!(&got[0].data, &normalise(&data));
        prop_assert_eq!(got[0].event.as_str(), "message");
        prop_assert_eq!(got[0].id.as_str(), "");
        prop_assert_eq!(got[0].retry, None);
    }

    #[test]
    fn sequence_roundtrips(
        events in prop::collection::vec(owned_event(), 1..8),
        comments in prop::collection::vec(prop::option::of(tricky_string(16)), 8),
        cuts in cuts(),
    ) {
        // Interleave comments, which must be invisible apart from the counter.
        let mut wire = BytesMut::new();
        let mut comment_lines = 0u64;
        for (ev, comment) in events.iter().zip(&comments) {
            if let Some(text) = comment {
                wire.extend_from_slice(&encode_comment(text));
                comment_lines += normalise(text).split('\n').count() as u64;
            }
            encode_event_into(&ev.fields(), &mut wire).unwrap();
        }
        let (parser, got) = parse_chunked(&wire, &cuts);
        prop_assert_eq!(got.len(), events.len());
        prop_assert_eq!(parser.comments_seen(), comment_lines);
        let mut last_id = String::new();
        for (ev, g) in events.iter().zip(&got) {
            if let Some(id) = &ev.id {
                last_id.clone_from(id);
            }
            prop_assert_eq!(&g.id, &last_id);
            prop_assert_eq!(g.event.as_str(), ev.event.as_deref().unwrap_or("message"));
            prop_assert_eq!(&g.data, &normalise(&ev.data));
            prop_assert_eq!(g.retry, ev.retry);
        }
    }

    #[test]
    fn injected_fields_stay_data(
        id in id_string(),
        prefix in tricky_string(16),
        suffix in tricky_string(16),
        cuts in cuts(),
    ) {
        let data = format!("{prefix}\n\nid: x\n\ndata: y\r\n\r\nevent: e\rretry: 1\n{suffix}");
        let ev = EventFields { id: Some(&id), data: &data, ..Default::default() };
        let wire = encode_event(&ev).unwrap();
        let (parser, got) = parse_chunked(&wire, &cuts);
        prop_assert_eq!(got.len(), 1);
        prop_assert_eq!(&got[0].id, &id);
        prop_assert_eq!(got[0].event.as_str(), "message");
        prop_assert_eq!(got[0].retry, None);
        prop_assert_eq!(&got[0].data, &normalise(&data));
        prop_assert_eq!(parser.retry(), None);
    }

    #[test]
    fn event_type_with_line_break_refused(
        a in tricky_string(8),
        b in tricky_string(8),
        brk in prop::sample::select(vec!["\r", "\n", "\r\n"]),
    ) {
        let t = format!("{a}{brk}{b}");
        let ev = EventFields { event: Some(&t), data: "d", ..Default::default() };
        prop_assert_eq!(encode_event(&ev), Err(EncodeError::EventTypeHasLineBreak));
        let mut buf = BytesMut::new();
        prop_assert_eq!(encode_event_into(&ev, &mut buf), Err(EncodeError::EventTypeHasLineBreak));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn id_with_forbidden_char_refused(
        a in tricky_string(8),
        b in tricky_string(8),
        bad in prop::sample::select(vec!["\r", "\n", "\0"]),
        event in prop::option::of(event_type()),
    ) {
        let id = format!("{a}{bad}{b}");
        let ev = EventFields { id: Some(&id), event: event.as_deref(), data: "d", retry: None };
        prop_assert_eq!(encode_event(&ev), Err(EncodeError::IdHasForbiddenChar));
    }

    #[test]
    fn comment_never_dispatches(text in tricky_string(64), cuts in cuts()) {
        let wire = encode_comment(&text);
        prop_assert!(wire.ends_with(b"\n\n"));
        let (parser, got) = parse_chunked(&wire, &cuts);
        prop_assert!(got.is_empty());
        prop_assert_eq!(parser.comments_seen(), normalise(&text).split('\n').count() as u64);
        prop_assert_eq!(parser.retry(), None);
    }

    #[test]
    fn notice_has_no_blank_line_and_never_dispatches(
        retry in prop::option::of(any::<u64>()),
        text in tricky_string(64),
        data in tricky_string(32),
        cuts in cuts(),
    ) {
        let notice = encode_notice(retry, &text);
        // No blank line anywhere: a lenient client dispatches on any blank line.
        prop_assert!(!notice.starts_with(b"\n"));
        prop_assert!(!notice.windows(2).any(|w| w == b"\n\n"));
        prop_assert!(notice.ends_with(b"\n"));
        let (parser, got) = parse_chunked(&notice, &cuts);
        prop_assert!(got.is_empty());
        prop_assert_eq!(parser.retry(), retry);
        // The event after it arrives whole and alone.
        let mut wire = BytesMut::from(&notice[..]);
        encode_event_into(&EventFields { id: Some("1"), data: &data, ..Default::default() }, &mut wire).unwrap();
        let (_, got) = parse_chunked(&wire, &cuts);
        prop_assert_eq!(got.len(), 1);
        prop_assert_eq!(&got[0].data, &normalise(&data));
    }

    #[test]
    fn retry_block_sets_retry_only(ms in any::<u64>(), cuts in cuts()) {
        let wire = encode_retry(ms);
        let (parser, got) = parse_chunked(&wire, &cuts);
        prop_assert!(got.is_empty());
        prop_assert_eq!(parser.retry(), Some(ms));
    }

    #[test]
    fn parser_chunking_invariant(
        bytes in prop::collection::vec(
            prop_oneof![
                4 => prop::sample::select(b"\r\n: dataeviy\0".to_vec()),
                1 => Just(0xEF), 1 => Just(0xBB), 1 => Just(0xBF),
                2 => any::<u8>(),
            ],
            0..256,
        ),
        cuts in cuts(),
    ) {
        let mut whole = Parser::new();
        let want = whole.feed(&bytes);
        let (chunked, got) = parse_chunked(&bytes, &cuts);
        prop_assert_eq!(&got, &want);
        prop_assert_eq!(chunked.last_event_id(), whole.last_event_id());
        prop_assert_eq!(chunked.retry(), whole.retry());
        prop_assert_eq!(chunked.comments_seen(), whole.comments_seen());
    }
}

#[test]
fn injection_example_from_spec_of_invariants() {
    let data = "\n\nid: x\n\ndata: y";
    let wire = encode_event(&EventFields {
        id: Some("orig"),
        data,
        ..Default::default()
    })
    .unwrap();
    let got = Parser::new().feed(&wire);
    assert_eq!(
        got,
        vec![ParsedEvent {
            id: "orig".into(),
            event: "message".into(),
            data: data.into(),
            retry: None,
        }]
    );
}

#[test]
fn trailing_line_break_roundtrips() {
    for (data, want) in [
        ("a\n", "a\n"),
        ("a\r", "a\n"),
        ("a\r\n", "a\n"),
        ("\n", "\n"),
        ("", ""),
    ] {
        let wire = encode_event(&EventFields {
            data,
            ..Default::default()
        })
        .unwrap();
        let got = Parser::new().feed(&wire);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].data, want, "data {data:?}");
    }
}

#[test]
fn heartbeat_constant_is_the_empty_notice() {
    assert_eq!(&encode_notice(None, "")[..], herald_sse::HEARTBEAT);
    assert_eq!(&encode_notice(Some(3000), "ok")[..], b"retry: 3000\n:ok\n");
}
