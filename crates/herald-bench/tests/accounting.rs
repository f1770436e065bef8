//! The load generator against a deliberately misbehaving SSE server: the
//! counts of missing, duplicate and out-of-order deliveries it reports must be
//! exactly what the server did. Both run in this process: the bench through
//! [`herald_bench::run_to`], its report read from a buffer.
//!
//! The server (below, on 127.0.0.1:0) takes any publish request, finds the
//! `seq ts x…` data in its body, and sends it to its subscribers as plain
//! `data:` events with no `id:`. What it does to them depends on the publish
//! path:
//! - `/pub`: for the k-th event of each stream it drops k%10 == 3, sends
//!   k%10 == 5 twice, and swaps k%10 == 7 and 8;
//! - `/lanes/pub` (two publishers: even seqs are publisher 0's, odd ones
//!   publisher 1's): holds publisher 0's events back until publisher 1's
//!   next one has gone out (reordering *across* publishers, which is
//!   allowed), and swaps publisher 1's j%10 == 7 and 8 (reordering within
//!   one, which is not);
//! - `/late/pub`: acknowledges at once but writes even seqs 1 s and odd
//!   seqs 5 s after their publish, each parity in order (a backlog of known
//!   size at known times);
//! - `/refuse/pub`: answers the first [`State::refuse_first`] publishes `503`
//!   with `Retry-After: 1` and Herald's `overloaded` error, then delivers
//!   faithfully, and counts retries that came sooner than asked.
//!
//! Publishes with `?user=ID` go to the streams opened with `?user=ID`; others
//! to the streams opened without one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use herald_bench::{BenchArgs, UsageError};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// What the server did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    publishes: u64,
    dropped: u64,
    duplicated: u64,
    swapped: u64,
    /// Events held for a swap whose partner never came: never sent.
    held: u64,
    /// `/lanes`: publisher 0's events sent after a later one of publisher 1.
    interleaved: u64,
    /// `/refuse`: publishes answered 503.
    refused: u64,
    /// `/refuse`: publishes that came less than 0.9 s after a 503 on the
    /// same connection (`Retry-After: 1` not honoured).
    early_retries: u64,
}

/// `/late`: events of one parity and when to write each.
type LateQueue = mpsc::UnboundedSender<(Instant, Vec<u8>)>;

#[derive(Debug)]
struct Stream {
    k: u64,
    held: Option<String>,
    tx: mpsc::UnboundedSender<Vec<u8>>,
    /// `/lanes`: publisher 0's events waiting for publisher 1's next.
    lane0_waiting: Vec<String>,
    /// `/lanes`: publisher 1's events so far (its j).
    lane1_count: u64,
    /// `/late`: per parity, the events and when to write them, in order.
    late: Option<[LateQueue; 2]>,
}

impl Stream {
    fn new(tx: mpsc::UnboundedSender<Vec<u8>>) -> Self {
        Self {
            k: 0,
            held: None,
            tx,
            lane0_waiting: Vec::new(),
            lane1_count: 0,
            late: None,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    streams: HashMap<String, Vec<Stream>>,
    tally: Tally,
    /// `/refuse`: how many publishes to refuse before accepting.
    refuse_first: u64,
}

type Shared = Arc<Mutex<State>>;

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// The first `digits SP digits SP x…` in `text`.
fn find_data(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let digits = |from: usize| b[from..].iter().take_while(|c| c.is_ascii_digit()).count();
    for i in 0..b.len() {
        if !b[i].is_ascii_digit() || (i > 0 && b[i - 1].is_ascii_digit()) {
            continue;
        }
        let a = i + digits(i);
        if b.get(a) != Some(&b' ') {
            continue;
        }
        let t = a + 1 + digits(a + 1);
        if t == a + 1 || b.get(t) != Some(&b' ') || b.get(t + 1) != Some(&b'x') {
            continue;
        }
        let end = t + 1 + b[t + 1..].iter().take_while(|&&c| c == b'x').count();
        return Some(text[i..end].to_owned());
    }
    None
}

fn query_param<'a>(target: &'a str, name: &str) -> Option<&'a str> {
    let query = target.split_once('?')?.1;
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn event(data: &str) -> String {
    format!("data: {data}\n\n")
}

/// Sends one event to every stream under `key`, misbehaving on schedule.
fn deliver(state: &Shared, key: &str, data: &str) {
    let mut state = lock(state);
    let State { streams, tally, .. } = &mut *state;
    tally.publishes += 1;
    for stream in streams.get_mut(key).into_iter().flatten() {
        let k = stream.k;
        stream.k += 1;
        let wire = match k % 10 {
            3 => {
                tally.dropped += 1;
                continue;
            }
            5 => {
                tally.duplicated += 1;
                event(data) + &event(data)
            }
            7 => {
                stream.held = Some(data.to_owned());
                continue;
            }
            8 => match stream.held.take() {
                Some(held) => {
                    tally.swapped += 1;
                    event(data) + &event(&held)
                }
                None => event(data),
            },
            _ => event(data),
        };
        let _ = stream.tx.send(wire.into_bytes());
    }
}

/// The sequence number of a `seq ts x…` data.
fn seq_of(data: &str) -> u64 {
    data.split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// `/lanes`: reorders across the two publishers, swaps within publisher 1.
fn deliver_lanes(state: &Shared, key: &str, data: &str) {
    let mut state = lock(state);
    let State { streams, tally, .. } = &mut *state;
    tally.publishes += 1;
    let seq = seq_of(data);
    for stream in streams.get_mut(key).into_iter().flatten() {
        if seq.is_multiple_of(2) {
            stream.lane0_waiting.push(data.to_owned());
            // Publisher 1 may be done already: do not wait for it forever.
            if stream.lane0_waiting.len() >= 3 {
                let wire: String = stream.lane0_waiting.drain(..).map(|d| event(&d)).collect();
                let _ = stream.tx.send(wire.into_bytes());
            }
            continue;
        }
        let j = stream.lane1_count;
        stream.lane1_count += 1;
        let mut wire = match j % 10 {
            7 => {
                stream.held = Some(data.to_owned());
                continue;
            }
            8 => match stream.held.take() {
                Some(held) => {
                    tally.swapped += 1;
                    event(data) + &event(&held)
                }
                None => event(data),
            },
            _ => event(data),
        };
        for waiting in stream.lane0_waiting.drain(..) {
            tally.interleaved += u64::from(seq_of(&waiting) < seq);
            wire += &event(&waiting);
        }
        let _ = stream.tx.send(wire.into_bytes());
    }
}

/// `/late`: writes even seqs 1 s and odd seqs 5 s after the publish.
fn deliver_late(state: &Shared, key: &str, data: &str) {
    let mut state = lock(state);
    state.tally.publishes += 1;
    let seq = seq_of(data);
    let delay = Duration::from_secs(if seq.is_multiple_of(2) { 1 } else { 5 });
    for stream in state.streams.get_mut(key).into_iter().flatten() {
        let tx = stream.tx.clone();
        let lanes = stream.late.get_or_insert_with(|| {
            // One forwarder per parity, each in order.
            [(); 2].map(|_| {
                let (late_tx, mut late_rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
                let tx = tx.clone();
                tokio::spawn(async move {
                    while let Some((at, bytes)) = late_rx.recv().await {
                        tokio::time::sleep_until(at.into()).await;
                        let _ = tx.send(bytes);
                    }
                });
                late_tx
            })
        });
        let at = Instant::now() + delay;
        let _ = lanes[(seq % 2) as usize].send((at, event(data).into_bytes()));
    }
}

/// Delivers faithfully.
fn deliver_all(state: &Shared, key: &str, data: &str) {
    let mut state = lock(state);
    state.tally.publishes += 1;
    for stream in state.streams.get_mut(key).into_iter().flatten() {
        let _ = stream.tx.send(event(data).into_bytes());
    }
}

const OVERLOADED: &str =
    r#"{"error":{"code":"overloaded","message":"delivery is behind; retry later"}}"#;

async fn handle(socket: TcpStream, state: Shared) {
    // `/refuse`: when this connection last got a 503.
    let mut refused_at: Option<Instant> = None;
    let (read, mut write) = socket.into_split();
    let mut read = BufReader::new(read);
    loop {
        let mut line = String::new();
        if read.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_owned();
        let target = parts.next().unwrap_or_default().to_owned();
        let mut content_length = 0usize;
        loop {
            let mut header = String::new();
            if read.read_line(&mut header).await.unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; content_length];
        if read.read_exact(&mut body).await.is_err() {
            return;
        }
        let key = query_param(&target, "user").unwrap_or("*").to_owned();
        if method == "GET" {
            let (tx, mut rx) = mpsc::unbounded_channel();
            lock(&state)
                .streams
                .entry(key)
                .or_default()
                .push(Stream::new(tx));
            let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                        Cache-Control: no-cache\r\n\r\n: hello\n\n";
            if write.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            while let Some(bytes) = rx.recv().await {
                if write.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            return;
        }
        let path = target.split('?').next().unwrap_or_default();
        if path == "/refuse/pub" {
            if refused_at.is_some_and(|at| at.elapsed() < Duration::from_millis(900)) {
                lock(&state).tally.early_retries += 1;
            }
            let refuse = {
                let mut state = lock(&state);
                let refuse = state.tally.refused < state.refuse_first;
                state.tally.refused += u64::from(refuse);
                refuse
            };
            if refuse {
                refused_at = Some(Instant::now());
                let answer = format!(
                    "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\
                     Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{OVERLOADED}",
                    OVERLOADED.len()
                );
                if write.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                continue;
            }
            refused_at = None;
        }
        let answer: &[u8] = match find_data(&String::from_utf8_lossy(&body)) {
            Some(data) => {
                match path {
                    "/lanes/pub" => deliver_lanes(&state, &key, &data),
                    "/late/pub" => deliver_late(&state, &key, &data),
                    "/refuse/pub" => deliver_all(&state, &key, &data),
                    _ => deliver(&state, &key, &data),
                }
                b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
            }
            None => b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\nno",
        };
        if write.write_all(answer).await.is_err() {
            return;
        }
    }
}

/// Starts the server, refusing the first `refuse_first` publishes to
/// `/refuse/pub`; returns its base URL and state.
fn start(runtime: &tokio::runtime::Runtime, refuse_first: u64) -> (String, Shared) {
    let state = Shared::default();
    lock(&state).refuse_first = refuse_first;
    let listener = runtime
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("binding the test server");
    let addr = listener.local_addr().expect("local address");
    let accept_state = state.clone();
    runtime.spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(handle(socket, accept_state.clone()));
        }
    });
    (format!("http://{addr}"), state)
}

fn tally(state: &Shared) -> Tally {
    let state = lock(state);
    let held = state
        .streams
        .values()
        .flatten()
        .map(|s| u64::from(s.held.is_some()) + s.lane0_waiting.len() as u64)
        .sum();
    Tally {
        held,
        ..state.tally
    }
}

/// `bench ARGS…` on the command line of a front end.
#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
}

/// Runs the bench with `args`; its result and what it wrote as its report.
fn run_bench(args: &[&str]) -> (anyhow::Result<()>, String) {
    let cli = Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("bench flags {args:?}: {e}"));
    let mut report = Vec::new();
    let result = herald_bench::run_to(cli.bench, &mut report);
    (result, String::from_utf8_lossy(&report).into_owned())
}

/// Runs the bench with `args`; its result and its `--json` report.
fn bench(args: &[&str]) -> (anyhow::Result<()>, serde_json::Value) {
    let (result, stdout) = run_bench(args);
    let report = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("no JSON report ({e}); stdout: {stdout}\nresult: {result:?}"));
    (result, report)
}

/// The run failed, and not over a bad flag (the `herald` binary: exit code 1).
fn failed_at_run_time(result: &anyhow::Result<()>) -> bool {
    result.as_ref().is_err_and(|e| !e.is::<UsageError>())
}

fn count(report: &serde_json::Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no {field} in {report}"))
}

/// Starts the misbehaving server and runs `subcommand` against it, with
/// `subscribe` and `publish` (URLs under the server's, `{i}`/`{user}` left to
/// the bench), its plain-text body, short waits (unless `more` sets
/// `--quiet-ms`) and the `more` flags. Returns
/// the bench's result and `--json` report, and what the server did.
fn bench_misbehaving(
    subcommand: &str,
    subscribe: &str,
    publish: &str,
    more: &str,
) -> (anyhow::Result<()>, serde_json::Value, Tally) {
    bench_refusing(0, subcommand, subscribe, publish, more)
}

/// [`bench_misbehaving`], the server refusing the first `refuse_first`
/// publishes to `/refuse/pub`.
fn bench_refusing(
    refuse_first: u64,
    subcommand: &str,
    subscribe: &str,
    publish: &str,
    more: &str,
) -> (anyhow::Result<()>, serde_json::Value, Tally) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (url, state) = start(&runtime, refuse_first);
    let (subscribe, publish) = (format!("{url}{subscribe}"), format!("{url}{publish}"));
    let mut args = vec![
        subcommand,
        "--url",
        &url,
        "--subscribe-url",
        &subscribe,
        "--publish-url",
        &publish,
        "--publish-body",
        "{data}",
        "--publish-content-type",
        "text/plain",
        "--json",
        "--timeout-secs",
        "20",
        "--settle-ms",
        "200",
    ];
    if !more.contains("--quiet-ms") {
        args.extend(["--quiet-ms", "1000"]);
    }
    args.extend(more.split_whitespace());
    let (result, report) = bench(&args);
    (result, report, tally(&state))
}

/// The report counts what the server did, no more: every event dropped or
/// held back missing, every duplicate and swap counted, nothing unexpected.
fn assert_counts_what_the_server_did(
    report: &serde_json::Value,
    did: Tally,
    connected: u64,
    published: u64,
    expected: u64,
) {
    assert_eq!(count(report, "connected"), connected, "{report}");
    assert_eq!(count(report, "published"), published, "{report}");
    assert_eq!(count(report, "expected"), expected, "{report}");
    assert_eq!(count(report, "missing"), did.dropped + did.held, "{report}");
    assert_eq!(count(report, "duplicates"), did.duplicated, "{report}");
    assert_eq!(count(report, "out_of_order"), did.swapped, "{report}");
    assert_eq!(count(report, "unexpected"), 0, "{report}");
    assert_eq!(count(report, "other_events"), 0, "{report}");
}

#[test]
fn fanout_counts_exactly_what_the_server_did() {
    let (result, report, did) = bench_misbehaving(
        "fanout",
        "/sub?i={i}",
        "/pub",
        "--subscribers 3 --events 50",
    );
    // Each of the 3 streams: 3, 13, 23, 33, 43 dropped; 5, 15, … doubled;
    // 7 and 8, 17 and 18, … swapped.
    assert_eq!(
        did,
        Tally {
            publishes: 50,
            dropped: 15,
            duplicated: 15,
            swapped: 15,
            ..Tally::default()
        }
    );
    assert_counts_what_the_server_did(&report, did, 3, 50, 150);
    assert_eq!(count(&report, "received"), 150 - 15 + 15, "{report}");
    assert_eq!(report["server_api"], false, "{report}");
    // Missing deliveries make the run fail, after the report.
    assert!(failed_at_run_time(&result), "{result:?} {report}");
}

#[test]
fn unicast_counts_exactly_what_the_server_did() {
    let (result, report, did) = bench_misbehaving(
        "unicast",
        "/sub?user={user}",
        "/pub?user={user}",
        "--users 4 --events 80 --publishers 3 --seed 7",
    );
    assert_eq!(did.publishes, 80);
    // With ~20 events per user every kind of misbehaviour happens.
    assert!(
        did.dropped > 0 && did.duplicated > 0 && did.swapped > 0,
        "{did:?}"
    );
    assert_counts_what_the_server_did(&report, did, 4, 80, 80);
    assert!(failed_at_run_time(&result), "{result:?} {report}");
}

/// With several publishers, order is promised per publisher only: the
/// server reorders across the two at will (allowed, not counted) and swaps
/// within publisher 1 (counted, exactly).
#[test]
fn order_is_checked_per_publisher() {
    let (result, report, did) = bench_misbehaving(
        "fanout",
        "/sub?i={i}",
        "/lanes/pub",
        // Paced, so that the publishers take turns and the server has a
        // later publisher-1 event to send ahead of every held one.
        "--subscribers 3 --events 60 --publishers 2 --rate 100",
    );
    assert_eq!(did.publishes, 60);
    // 30 publisher-1 events per stream: j = 7/8, 17/18, 27/28 swapped.
    assert_eq!(did.swapped, 9, "{did:?}");
    assert!(
        did.interleaved > 0,
        "nothing reordered across publishers: {did:?}"
    );
    assert_eq!(count(&report, "publishers"), 2, "{report}");
    assert_counts_what_the_server_did(&report, did, 3, 60, 180);
    // Held events (if publisher 1 finished first) are missing: a failure.
    assert_eq!(result.is_ok(), did.held == 0, "{result:?} {report}");
}

/// The backlog: every delivery is still due at the last acknowledgement
/// (the server writes nothing sooner than 1 s after a publish); 3 s later
/// the even seqs (written after 1 s) are in and the odd ones (5 s) still
/// out; the last arrives about 5 s after the last acknowledgement.
#[test]
fn the_backlog_is_counted_at_the_last_ack_and_after() {
    let (result, report, did) = bench_misbehaving(
        "fanout",
        "/sub?i={i}",
        "/late/pub",
        "--subscribers 3 --events 20 --publishers 2 --backlog-after-secs 3 --quiet-ms 8000",
    );
    assert_eq!(did.publishes, 20);
    assert!(result.is_ok(), "{result:?} {report}");
    assert_counts_what_the_server_did(&report, did, 3, 20, 60);
    assert_eq!(count(&report, "outstanding_at_last_ack"), 60, "{report}");
    assert_eq!(report["backlog_after_secs"], 3.0, "{report}");
    assert_eq!(count(&report, "outstanding_after"), 30, "{report}");
    let drain = report["drain_secs"].as_f64().unwrap_or_default();
    // The server's own delay, not a speed: the odd seqs wait 5 s.
    assert!((4.0..20.0).contains(&drain), "{report}");
}

/// Refused with `503 overloaded` and `Retry-After: 1` more times than a
/// transport error may be retried: the publisher waits as asked, sends the
/// same event again, counts every refusal by its code, and the event is
/// expected (and delivered) once, once acknowledged.
#[test]
fn refused_publishes_are_retried_after_retry_after_and_counted() {
    let (result, report, did) = bench_refusing(
        6,
        "fanout",
        "/sub?i={i}",
        "/refuse/pub",
        "--subscribers 2 --events 10",
    );
    assert!(result.is_ok(), "{result:?} {report}");
    assert_eq!(did.refused, 6, "{did:?}");
    assert_eq!(did.early_retries, 0, "Retry-After not honoured: {did:?}");
    assert_eq!(did.publishes, 10, "{did:?}");
    assert_eq!(
        report["publish_refused"],
        serde_json::json!({"503 overloaded": 6}),
        "{report}"
    );
    assert!(
        report["publish_retry_wait_secs"].as_f64() >= Some(6.0),
        "{report}"
    );
    assert_counts_what_the_server_did(&report, did, 2, 10, 20);
}

/// `--publish-secs` ends publishing without an error: the events not sent,
/// or sent and refused to the end, are not expected; those acknowledged are.
#[test]
fn publish_secs_ends_publishing_and_refused_events_are_not_expected() {
    // Paced at 20/s for 1 s: far fewer than the 1,000 events.
    let (result, report, did) = bench_refusing(
        0,
        "fanout",
        "/sub?i={i}",
        "/refuse/pub",
        "--subscribers 2 --events 1000 --rate 20 --publish-secs 1",
    );
    assert!(result.is_ok(), "{result:?} {report}");
    let published = count(&report, "published");
    assert!((1..1000).contains(&published), "{report}");
    assert_eq!(did.publishes, published, "{did:?}");
    assert_counts_what_the_server_did(&report, did, 2, published, 2 * published);

    // Refused to the end: nothing acknowledged, nothing expected, no error.
    let (result, report, did) = bench_refusing(
        u64::MAX,
        "fanout",
        "/sub?i={i}",
        "/refuse/pub",
        "--subscribers 2 --events 10 --publish-secs 2",
    );
    assert!(result.is_ok(), "{result:?} {report}");
    assert_eq!(did.publishes, 0, "{did:?}");
    assert_counts_what_the_server_did(&report, did, 2, 0, 0);
    assert_eq!(
        report["publish_refused"]["503 overloaded"], did.refused,
        "{report}"
    );
}

/// The library's side of a bad flag (the `herald` binary's exit code 64 is
/// checked in its smoke tests): a [`UsageError`] naming the flag, and no
/// report.
#[test]
fn batch_with_a_custom_body_is_a_usage_error() {
    let (result, stdout) = run_bench(&[
        "unicast",
        "--url",
        "http://127.0.0.1:9",
        "--publish-body",
        "{data}",
        "--batch",
        "4",
    ]);
    let err = result
        .err()
        .map(|e| (e.is::<UsageError>(), format!("{e:#}")));
    let (usage, message) = err.unwrap_or_else(|| panic!("accepted; report: {stdout}"));
    assert!(usage, "{message}");
    assert!(message.contains("--batch"), "{message}");
    assert!(stdout.is_empty());
}
