//! The load generator against a deliberately misbehaving SSE server: the
//! counts of missing, duplicate and out-of-order deliveries it reports must be
//! exactly what the server did. Both run in this process: the bench through
//! [`herald_bench::run_to`], its report read from a buffer.
//!
//! The server (below, on 127.0.0.1:0) takes any publish request, finds the
//! `seq ts x…` data in its body, and sends it to its subscribers as plain
//! `data:` events with no `id:`. For the k-th event of each stream it drops
//! k%10 == 3, sends k%10 == 5 twice, and swaps k%10 == 7 and 8. Publishes with
//! `?user=ID` go to the streams opened with `?user=ID`; others to the streams
//! opened without one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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
}

#[derive(Debug)]
struct Stream {
    k: u64,
    held: Option<String>,
    tx: mpsc::UnboundedSender<Vec<u8>>,
}

#[derive(Debug, Default)]
struct State {
    streams: HashMap<String, Vec<Stream>>,
    tally: Tally,
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
    let State { streams, tally } = &mut *state;
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

async fn handle(socket: TcpStream, state: Shared) {
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
            lock(&state).streams.entry(key).or_default().push(Stream {
                k: 0,
                held: None,
                tx,
            });
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
        let answer: &[u8] = match find_data(&String::from_utf8_lossy(&body)) {
            Some(data) => {
                deliver(&state, &key, &data);
                b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
            }
            None => b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\nno",
        };
        if write.write_all(answer).await.is_err() {
            return;
        }
    }
}

/// Starts the server; returns its base URL and state.
fn start(runtime: &tokio::runtime::Runtime) -> (String, Shared) {
    let state = Shared::default();
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
        .filter(|s| s.held.is_some())
        .count() as u64;
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
/// the bench), its plain-text body, short waits and the `more` flags. Returns
/// the bench's result and `--json` report, and what the server did.
fn bench_misbehaving(
    subcommand: &str,
    subscribe: &str,
    publish: &str,
    more: &str,
) -> (anyhow::Result<()>, serde_json::Value, Tally) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (url, state) = start(&runtime);
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
        "--quiet-ms",
        "1000",
    ];
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
            held: 0
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
