//! Every `herald bench` subcommand against the real server, tiny and fast:
//! exit 0, nothing missing, figures that make sense; and a bad bench flag
//! exits 64, like every other usage error of the binary.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running `herald serve`; killed when dropped, even on panic.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server() -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--dev", "--memory", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting herald serve");
    let mut server = Server {
        child,
        url: String::new(),
    };
    let stdout = server.child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    // Reads the address, then keeps draining stdout so the server never blocks.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if let Some(addr) = line.strip_prefix("herald listening on ") {
                let _ = tx.send(addr.trim().to_owned());
            }
        }
    });
    server.url = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("herald serve did not print its address");
    assert!(server.url.starts_with("http://"), "{}", server.url);
    server
}

/// `herald bench ARGS --url … --json --timeout-secs 20`, ARGS split at
/// spaces; its report.
fn bench(server: &Server, args: &str) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("bench")
        .args(args.split_whitespace())
        .args(["--url", &server.url, "--json", "--timeout-secs", "20"])
        .stdin(Stdio::null())
        .output()
        .expect("running herald bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench {args:?} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("bench {args:?}: not one JSON object ({e}): {stdout}"))
}

fn count(report: &serde_json::Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no {field} in {report}"))
}

fn assert_sane_latency(latency: &serde_json::Value, samples: u64) {
    assert_eq!(latency["samples"].as_u64(), Some(samples), "{latency}");
    let p50 = latency["p50"].as_f64().unwrap_or(-1.0);
    let p99 = latency["p99"].as_f64().unwrap_or(-1.0);
    let max = latency["max"].as_f64().unwrap_or(-1.0);
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{latency}");
}

#[test]
fn conns() {
    let server = start_server();
    let r = bench(
        &server,
        "conns --connections 20 --hold-secs 0 --settle-secs 0",
    );
    assert_eq!(count(&r, "opened"), 20, "{r}");
    assert_eq!(count(&r, "failed"), 0, "{r}");
    assert_eq!(count(&r, "still_open_after_hold"), 20, "{r}");
    assert_eq!(count(&r, "server_connections"), 20, "{r}");
    assert_eq!(r["timed_out"], false, "{r}");
}

/// HTTP/2 streams over h2c (prior knowledge) on Herald's plain port: 20
/// streams on 4 connections, each counted by the server.
#[test]
fn conns_http2() {
    let server = start_server();
    let r = bench(
        &server,
        "conns --http2 --streams 20 --connections 4 --hold-secs 0 --settle-secs 0",
    );
    assert_eq!(count(&r, "opened"), 20, "{r}");
    assert_eq!(count(&r, "connections"), 4, "{r}");
    assert_eq!(count(&r, "still_open_after_hold"), 20, "{r}");
    assert_eq!(count(&r, "server_connections"), 20, "{r}");
    assert_eq!(r["http2"], true, "{r}");
    assert_eq!(r["tls"], false, "{r}");
}

/// A connect storm, first connect and reconnect: every client open in each
/// round, each with its time to first byte, no failure.
#[test]
fn connect() {
    let server = start_server();
    let r = bench(&server, "connect --clients 50 --rounds 2 --pause-ms 100");
    let rounds = r["rounds"].as_array().cloned().unwrap_or_default();
    assert_eq!(rounds.len(), 2, "{r}");
    for round in &rounds {
        assert_eq!(count(round, "opened"), 50, "{r}");
        assert_eq!(count(round, "failed"), 0, "{r}");
        assert_eq!(count(round, "closed_early"), 0, "{r}");
        assert!(
            round["subscribes_per_sec"].as_f64().unwrap_or(0.0) > 0.0,
            "{r}"
        );
        assert_sane_latency(&round["ttfb_ms"], 50);
    }
    assert_eq!(r["server_api"], true, "{r}");
}

/// The same storm as streams of 4 h2c connections.
#[test]
fn connect_http2() {
    let server = start_server();
    let r = bench(
        &server,
        "connect --http2 --clients 40 --connections 4 --rounds 2 --pause-ms 100",
    );
    assert_eq!(count(&r, "http2_connections"), 4, "{r}");
    let rounds = r["rounds"].as_array().cloned().unwrap_or_default();
    assert_eq!(rounds.len(), 2, "{r}");
    for round in &rounds {
        assert_eq!(count(round, "opened"), 40, "{r}");
        assert_eq!(count(round, "failed"), 0, "{r}");
        assert_sane_latency(&round["ttfb_ms"], 40);
    }
}

/// A fanout or unicast report in which every one of `expected` deliveries
/// arrived once, in order, each with its latency.
fn assert_all_delivered(r: &serde_json::Value, connected: u64, published: u64, expected: u64) {
    assert_eq!(count(r, "connected"), connected, "{r}");
    assert_eq!(count(r, "published"), published, "{r}");
    assert_eq!(count(r, "expected"), expected, "{r}");
    assert_eq!(count(r, "unique"), expected, "{r}");
    assert_eq!(count(r, "missing"), 0, "{r}");
    assert_eq!(count(r, "duplicates"), 0, "{r}");
    assert_eq!(count(r, "out_of_order"), 0, "{r}");
    assert_eq!(count(r, "unexpected"), 0, "{r}");
    assert_eq!(r["stop_reason"], "complete", "{r}");
    assert!(r["deliveries_per_sec"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
    assert_sane_latency(&r["latency_ms"], expected);
}

#[test]
fn fanout() {
    let server = start_server();
    let r = bench(&server, "fanout --subscribers 5 --events 50");
    assert_all_delivered(&r, 5, 50, 250);
    assert_eq!(r["server_api"], true, "{r}");
}

#[test]
fn unicast() {
    let server = start_server();
    let r = bench(&server, "unicast --users 5 --events 50");
    assert_all_delivered(&r, 5, 50, 50);
}

#[test]
fn unicast_batched() {
    let server = start_server();
    let r = bench(&server, "unicast --users 5 --events 50 --batch 4");
    assert_eq!(count(&r, "published"), 50, "{r}");
    assert_eq!(count(&r, "missing"), 0, "{r}");
    assert_eq!(count(&r, "out_of_order"), 0, "{r}");
    assert_eq!(count(&r, "unexpected"), 0, "{r}");
}

#[test]
fn publish() {
    let server = start_server();
    let r = bench(&server, "publish --events 200 --concurrency 4");
    assert_eq!(count(&r, "acked_events"), 200, "{r}");
    assert_eq!(count(&r, "acked_requests"), 200, "{r}");
    assert_eq!(count(&r, "non_2xx"), 0, "{r}");
    assert_eq!(count(&r, "errors"), 0, "{r}");
    assert!(r["publishes_per_sec"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
    assert_sane_latency(&r["ack_latency_ms"], 200);
    assert!(r["ack_latency_per_event_ms"].is_null(), "{r}");

    let r = bench(&server, "publish --events 200 --concurrency 4 --batch 10");
    assert_eq!(count(&r, "acked_events"), 200, "{r}");
    assert_eq!(count(&r, "acked_requests"), 20, "{r}");
    assert_sane_latency(&r["ack_latency_per_event_ms"], 200);
}

#[test]
fn batch_with_a_custom_body_is_a_usage_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "bench",
            "fanout",
            "--url",
            "http://127.0.0.1:9",
            "--publish-body",
            "{data}",
            "--batch",
            "10",
            "--json",
        ])
        .output()
        .expect("running herald bench");
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--batch"), "{stderr}");
    assert!(output.stdout.is_empty());
}
