//! Arbitrary bytes into the SSE parser: it must never panic, and its result
//! must not depend on how the stream is chunked.
#![no_main]

use herald_sse::Parser;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(&first) = data.first() else {
        return;
    };
    let split = usize::from(first) % data.len();

    let mut chunked = Parser::new();
    let mut got = chunked.feed(&data[..split]);
    chunked.feed_into(&data[split..], &mut got);

    let mut whole = Parser::new();
    let want = whole.feed(data);

    assert_eq!(got, want);
    assert_eq!(chunked.last_event_id(), whole.last_event_id());
    assert_eq!(chunked.retry(), whole.retry());
    assert_eq!(chunked.comments_seen(), whole.comments_seen());
});
