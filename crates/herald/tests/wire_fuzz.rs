//! Arbitrary bytes on a socket against the real binary: random bytes,
//! request heads assembled from hostile pieces (bare CR or LF, NUL, duplicate
//! and conflicting lengths, chunked bodies, pipelined requests, absurd
//! versions), valid requests with one byte changed, and the HTTP/2 preface
//! followed by junk. Whatever arrives, no answer is a 5xx, nothing panics,
//! and the server keeps serving. It drives the first-bytes classifier
//! (`http1_head`), the direct stream path, hyper and the router together,
//! which in-process tests reach only one at a time.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::Server;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const METHODS: &[&str] = &[
    "GET", "POST", "DELETE", "OPTIONS", "HEAD", "PRI", "get", "G\0T", "",
];
const TARGETS: &[&str] = &[
    "/v1/events?user=7777",
    "/v1/events?topic=news&topic=a/*&types=x,y",
    "/v1/events?lastEventId=99999999999999999999999",
    "/v1/publish?topic=news",
    "/v1/stats",
    "/v1/users/7777/connections",
    "/healthz",
    "*",
    "http://localhost/v1/events?user=1",
    "/v1/events?user=%FF%00",
    "",
];
const VERSIONS: &[&str] = &[
    "HTTP/1.1",
    "HTTP/1.0",
    "HTTP/2.0",
    "HTTP/1.1 ",
    "HTTP/9",
    "HTTP/1.1\0",
    "",
];
const LINE_ENDS: &[&str] = &["\r\n", "\n", "\r", "\r\r\n"];
const HEADERS: &[&str] = &[
    "Host: localhost",
    "Host: 127.0.0.1:8080",
    "Content-Length: 5",
    "Content-Length: 0",
    "Content-Length: -1",
    "Content-Length: 5, 6",
    "Content-Length: 99999999999999999999",
    "Transfer-Encoding: chunked",
    "Transfer-Encoding: gzip, chunked",
    "Content-Type: application/json",
    "Content-Type: text/plain",
    "Accept: text/event-stream",
    "Last-Event-ID: 42",
    "Last-Event-ID: \u{0}\u{1}",
    "Connection: upgrade",
    "Upgrade: h2c",
    "Expect: 100-continue",
    "Authorization: Bearer x.y.z",
    "Cookie: herald_token=a.b.c",
    " folded: continuation",
    ": empty name",
    "X",
];
const BODIES: &[&str] = &[
    "hello",
    "{\"topics\":[\"news\"],\"data\":\"x\"}",
    "5\r\nhello\r\n0\r\n\r\n",
    "ffffffffffffffff\r\n",
    "0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
];
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One request head (and body) assembled from the pieces above and junk.
fn assembled() -> impl Strategy<Value = Vec<u8>> {
    let junk = proptest::collection::vec(any::<u8>(), 0..16);
    let piece = |set: &'static [&'static str]| {
        prop_oneof![
            4 => proptest::sample::select(set).prop_map(|s| s.as_bytes().to_vec()),
            1 => proptest::collection::vec(any::<u8>(), 0..16),
        ]
    };
    let request = (
        piece(METHODS),
        piece(TARGETS),
        junk.clone(),
        piece(VERSIONS),
        proptest::sample::select(LINE_ENDS),
        proptest::collection::vec(piece(HEADERS), 0..6),
        piece(BODIES),
    )
        .prop_map(|(method, target, suffix, version, end, headers, body)| {
            let mut out = method;
            out.push(b' ');
            out.extend(target);
            out.extend(suffix);
            out.push(b' ');
            out.extend(version);
            out.extend(end.as_bytes());
            for header in headers {
                out.extend(header);
                out.extend(end.as_bytes());
            }
            out.extend(end.as_bytes());
            out.extend(body);
            out
        });
    // Sometimes two, pipelined.
    proptest::collection::vec(request, 1..3).prop_map(|requests| requests.concat())
}

/// A valid request with one byte replaced, inserted or removed, or cut short.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    const VALID: &[&str] = &[
        "GET /v1/events?user=7777 HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n",
        "POST /v1/publish HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 31\r\n\r\n{\"topics\":[\"news\"],\"data\":\"x\"}",
        "GET /v1/stats HTTP/1.1\r\nHost: localhost\r\n\r\n",
    ];
    (
        proptest::sample::select(VALID),
        any::<prop::sample::Index>(),
        any::<u8>(),
        0..4u8,
    )
        .prop_map(|(valid, at, byte, how)| {
            let mut bytes = valid.as_bytes().to_vec();
            let i = at.index(bytes.len());
            match how {
                0 => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                2 => {
                    bytes.remove(i);
                }
                _ => bytes.truncate(i),
            }
            bytes
        })
}

fn input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        assembled(),
        mutated(),
        proptest::collection::vec(any::<u8>(), 0..256).prop_map(|junk| [PREFACE, &junk].concat()),
    ]
}

/// Sends `bytes`, half-closes when `half_close` (so an incomplete head
/// ends at once, instead of at the header-read timeout; hyper may then drop
/// the answer, which is why the health check does not), and reads what
/// comes back until the server closes or is silent for `patience` (an
/// admitted event stream stays open: its head is enough).
fn exchange(addr: SocketAddr, bytes: &[u8], half_close: bool, patience: Duration) -> Vec<u8> {
    let mut socket = TcpStream::connect(addr).expect("connect");
    socket
        .set_read_timeout(Some(patience))
        .expect("a read timeout");
    // The server may answer and close before it has read everything.
    let _ = socket.write_all(bytes);
    if half_close {
        let _ = socket.shutdown(Shutdown::Write);
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + patience + Duration::from_secs(2);
    while Instant::now() < deadline && answer.len() < 64 * 1024 {
        match socket.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    answer
}

/// Every HTTP/1.x status code in `answer` (pipelined answers included).
fn statuses(answer: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(answer);
    let mut found = Vec::new();
    for (at, _) in text.match_indices("HTTP/1.") {
        if at != 0 && !text[..at].ends_with("\r\n") {
            continue;
        }
        let code = text[at..].get(9..12).and_then(|c| c.parse::<u16>().ok());
        found.extend(code);
    }
    found
}

#[test]
fn arbitrary_bytes_never_get_a_server_error_and_never_stop_the_server() {
    let server = Server::start(&[]);
    let mut runner = TestRunner::new(Config {
        cases: 800,
        failure_persistence: None,
        ..Config::default()
    });
    let answered = std::cell::Cell::new(0usize);
    let result = runner.run(&input(), |bytes| {
        let answer = exchange(server.addr, &bytes, true, Duration::from_millis(300));
        let codes = statuses(&answer);
        answered.set(answered.get() + usize::from(!codes.is_empty()));
        for code in codes {
            if (500..600).contains(&code) {
                return Err(TestCaseError::fail(format!(
                    "{code} for {:?}: {:?}",
                    String::from_utf8_lossy(&bytes),
                    String::from_utf8_lossy(&answer)
                )));
            }
        }
        Ok(())
    });
    if let Err(err) = result {
        panic!("{err}\n--- server log ---\n{}", server.log());
    }
    // The generators reach the routes, not just the parser's refusals.
    let answered = answered.get();
    assert!(answered > 200, "only {answered} inputs got an HTTP answer");
    let health = exchange(
        server.addr,
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        false,
        // However busy the fuzzing left it, it answers.
        Duration::from_secs(5),
    );
    assert_eq!(
        statuses(&health),
        [200],
        "{:?}\n--- server log ---\n{}",
        String::from_utf8_lossy(&health),
        server.log()
    );
    let log = server.log();
    assert!(!log.contains("panicked"), "{log}");
}
