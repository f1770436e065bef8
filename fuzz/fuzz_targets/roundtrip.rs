//! Arbitrary text as event data: encoding then parsing must give back exactly
//! one event whose data is the input with CRLF and lone CR turned into LF.
#![no_main]

use herald_sse::{encode_event, EventFields, Parser};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let data = String::from_utf8_lossy(bytes);
    let fields = EventFields {
        data: &data,
        ..Default::default()
    };
    let wire = match encode_event(&fields) {
        Ok(wire) => wire,
        Err(e) => panic!("data alone can always be encoded: {e}"),
    };

    // Also vary the chunking, so split CRLFs and UTF-8 sequences get exercised.
    let split = bytes
        .first()
        .map_or(0, |&b| usize::from(b) % (wire.len() + 1));
    let mut parser = Parser::new();
    let mut events = parser.feed(&wire[..split]);
    parser.feed_into(&wire[split..], &mut events);

    let want = data.replace("\r\n", "\n").replace('\r', "\n");
    assert_eq!(events.len(), 1, "wire {wire:?}");
    assert_eq!(events[0].data, want);
    assert_eq!(events[0].event, "message");
    assert_eq!(events[0].id, "");
    assert_eq!(events[0].retry, None);
});
