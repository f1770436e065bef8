//! `herald status`: one screen of what the dashboard shows, for a terminal
//! (an SSH login on the server's machine).
//!
//! It reads the dashboard's own source, `GET /v1/stats/stream`, for two
//! frames: the stream sends one at once and the next a second later, so the
//! rates are those of the last second, and the counts, the busiest topics and
//! the online users are the second frame's.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use futures_util::StreamExt;
use herald_sse::Parser;
use serde::Deserialize;

/// How long the whole command may wait on the server (two frames come a
/// second apart; the rest is slack for a loaded machine).
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Flags of `herald status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "HERALD_URL")]
    url: String,
    /// Admin token (a JWT with `"herald.admin": true` or an admin API key);
    /// not needed in dev mode.
    #[arg(long, env = "HERALD_TOKEN")]
    token: Option<String>,
    /// Topics and users listed, at most (the server sends up to 10 topics
    /// and 100 users).
    #[arg(long, default_value_t = 10, value_name = "N")]
    rows: usize,
}

/// One `stats` frame, the fields this screen shows.
#[derive(Debug, Deserialize)]
struct Frame {
    at_ms: u64,
    connections: u64,
    max_connections: u64,
    users_online: u64,
    topics: u64,
    events_published: u64,
    events_delivered: u64,
    delivery_lag_ms: Lag,
    streams_behind: u64,
    uptime_s: u64,
    top_topics: Vec<TopicRow>,
    users: Vec<UserRow>,
}

#[derive(Debug, Deserialize)]
struct Lag {
    median: u64,
    max: u64,
    dispatch: u64,
}

#[derive(Debug, Deserialize)]
struct TopicRow {
    topic: String,
    subscribers: u64,
}

#[derive(Debug, Deserialize)]
struct UserRow {
    id: String,
    connections: u64,
}

pub(crate) fn run(args: StatusArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let base = args.url.trim_end_matches('/').to_owned();
    let (first, second) = runtime.block_on(async {
        tokio::time::timeout(STATUS_TIMEOUT, two_frames(&base, args.token.as_deref()))
            .await
            .map_err(|_| {
                anyhow!(
                    "{base} sent no figures within {} s",
                    STATUS_TIMEOUT.as_secs()
                )
            })?
    })?;
    print!("{}", screen(&base, &first, &second, args.rows));
    Ok(())
}

/// The first two `stats` frames of the server's stats stream.
async fn two_frames(base: &str, token: Option<&str>) -> anyhow::Result<(Frame, Frame)> {
    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        .context("building the HTTP client")?;
    let url = format!("{base}/v1/stats/stream");
    let mut request = client.get(&url).header("accept", "text/event-stream");
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .map_err(|e| anyhow!("cannot reach {base}: {}", root_cause(&e)))?;
    let status = response.status();
    if !status.is_success() {
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let code = body["error"]["code"].as_str().unwrap_or("");
        let message = body["error"]["message"].as_str().unwrap_or("");
        let hint = match status.as_u16() {
            401 | 403 => "; give an admin token with --token or HERALD_TOKEN",
            404 => "; is this a Herald server of this version?",
            _ => "",
        };
        bail!("{base} refused the status request ({status} {code}): {message}{hint}");
    }
    let mut parser = Parser::new();
    let mut body = response.bytes_stream();
    let mut events = Vec::new();
    let mut frames = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| anyhow!("reading from {base}: {}", root_cause(&e)))?;
        parser.feed_into(&chunk, &mut events);
        for event in events.drain(..).filter(|e| e.event == "stats") {
            let frame: Frame = serde_json::from_str(&event.data)
                .with_context(|| format!("{base} sent a stats frame this version cannot read"))?;
            frames.push(frame);
        }
        if frames.len() >= 2 {
            let second = frames.swap_remove(1);
            let first = frames.swap_remove(0);
            return Ok((first, second));
        }
    }
    bail!("{base} ended the stats stream before two frames")
}

/// The innermost error: reqwest's outer ones say only "error sending request".
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Events a second between two frames' counters.
fn per_second(earlier: u64, later: u64, first: &Frame, second: &Frame) -> f64 {
    let seconds = second.at_ms.saturating_sub(first.at_ms) as f64 / 1000.0;
    if seconds <= 0.0 {
        return 0.0;
    }
    later.saturating_sub(earlier) as f64 / seconds
}

/// `1234567` as `1,234,567`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn rate(r: f64) -> String {
    if r >= 10.0 {
        grouped(r.round() as u64)
    } else {
        format!("{r:.1}")
    }
}

fn uptime(s: u64) -> String {
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// The screen, as printed.
fn screen(base: &str, first: &Frame, now: &Frame, rows: usize) -> String {
    let published = per_second(first.events_published, now.events_published, first, now);
    let delivered = per_second(first.events_delivered, now.events_delivered, first, now);
    let lag = &now.delivery_lag_ms;
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(out, "Herald at {base}, up {}", uptime(now.uptime_s));
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "  connections   {:>12}  of {} allowed",
        grouped(now.connections),
        grouped(now.max_connections)
    );
    let _ = writeln!(out, "  users online  {:>12}", grouped(now.users_online));
    let _ = writeln!(out, "  topics        {:>12}", grouped(now.topics));
    let _ = writeln!(
        out,
        "  published/s   {:>12}  {} since start",
        rate(published),
        grouped(now.events_published)
    );
    let _ = writeln!(
        out,
        "  delivered/s   {:>12}  {} since start",
        rate(delivered),
        grouped(now.events_delivered)
    );
    let _ = writeln!(
        out,
        "  delivery lag  {:>9} ms  median; max {} ms, dispatch {} ms, {} streams behind",
        grouped(lag.median),
        grouped(lag.max),
        grouped(lag.dispatch),
        grouped(now.streams_behind)
    );
    let _ = writeln!(out);
    table(
        &mut out,
        "Busiest topics",
        now.topics,
        now.top_topics
            .iter()
            .map(|t| (t.topic.as_str(), t.subscribers)),
        rows,
        "no subscriptions",
    );
    let _ = writeln!(out);
    table(
        &mut out,
        "Online users",
        now.users_online,
        now.users.iter().map(|u| (u.id.as_str(), u.connections)),
        rows,
        "nobody is connected",
    );
    out
}

/// A titled two-column list: name and stream count, at most `rows` rows.
fn table<'a>(
    out: &mut String,
    title: &str,
    total: u64,
    items: impl Iterator<Item = (&'a str, u64)>,
    rows: usize,
    empty: &str,
) {
    let items: Vec<_> = items.take(rows).collect();
    let shown = if total > items.len() as u64 {
        format!(" (first {} of {})", items.len(), grouped(total))
    } else {
        String::new()
    };
    let width = 44usize.saturating_sub(title.len() + shown.len());
    let _ = writeln!(out, "{title}{shown}{:>width$}", "streams");
    if items.is_empty() {
        let _ = writeln!(out, "  {empty}");
    }
    for (name, n) in items {
        let _ = writeln!(out, "  {name:<34} {:>7}", grouped(n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(at_ms: u64, published: u64, delivered: u64) -> Frame {
        Frame {
            at_ms,
            connections: 3,
            max_connections: 19_000,
            users_online: 2,
            topics: 4,
            events_published: published,
            events_delivered: delivered,
            delivery_lag_ms: Lag {
                median: 0,
                max: 12,
                dispatch: 1,
            },
            streams_behind: 0,
            uptime_s: 75,
            top_topics: vec![TopicRow {
                topic: "group/sales".into(),
                subscribers: 2,
            }],
            users: vec![UserRow {
                id: "7777".into(),
                connections: 1,
            }],
        }
    }

    #[test]
    fn rates_are_the_counters_difference_over_the_frames_interval() {
        let text = screen(
            "http://h",
            &frame(1_000, 10, 10),
            &frame(3_000, 30, 2_010),
            10,
        );
        assert!(text.contains("published/s             10"), "{text}");
        assert!(text.contains("delivered/s          1,000"), "{text}");
        assert!(text.contains("up 1m 15s"), "{text}");
        assert!(text.contains("group/sales"), "{text}");
        assert!(text.contains("Online users (first 1 of 2)"), "{text}");
    }

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1_000), "1,000");
        assert_eq!(grouped(12_345_678), "12,345,678");
    }
}
