//! `herald subscribe`: print events as they arrive; reconnect and resume with
//! `Last-Event-ID` like a browser's EventSource does. With `--count N`, exit 0
//! once N events are printed (Herald's own `herald.*` events, such as
//! `herald.gap`, are printed but not counted).

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use futures_util::StreamExt;
use herald_core::RESERVED_EVENT_PREFIX;
use herald_sse::{ParsedEvent, Parser};

/// Reconnection delay until the server sends `retry:` (as in browsers).
const DEFAULT_RETRY: Duration = Duration::from_secs(3);

/// Flags of `herald subscribe`.
#[derive(Debug, Args)]
pub(crate) struct SubscribeArgs {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "HERALD_URL")]
    url: String,
    /// Bearer token.
    #[arg(long, env = "HERALD_TOKEN")]
    token: Option<String>,
    /// Subscribe as this user (dev mode).
    #[arg(long, value_name = "ID")]
    user: Option<String>,
    /// Topic or pattern (repeatable).
    #[arg(long = "topic", value_name = "TOPIC")]
    topics: Vec<String>,
    /// Only these event types (comma-separated).
    #[arg(long, value_name = "TYPES")]
    types: Option<String>,
    /// Resume after this id.
    #[arg(long, value_name = "ID")]
    last_event_id: Option<String>,
    /// One JSON object per line: {"id", "event", "data"}.
    #[arg(long)]
    json: bool,
    /// Exit 0 after printing this many events (`herald.*` events, such as
    /// herald.gap, are printed but not counted).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
}

pub(crate) fn run(args: SubscribeArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(subscribe(args))
}

async fn subscribe(args: SubscribeArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let mut url = reqwest::Url::parse(&format!("{}/v1/events", args.url.trim_end_matches('/')))
        .context("--url is not a URL")?;
    {
        let mut query = url.query_pairs_mut();
        if let Some(user) = &args.user {
            query.append_pair("user", user);
        }
        for topic in &args.topics {
            query.append_pair("topic", topic);
        }
        if let Some(types) = &args.types {
            query.append_pair("types", types);
        }
    }
    let mut last_event_id = args.last_event_id.clone().unwrap_or_default();
    let mut retry = DEFAULT_RETRY;
    let mut counted = 0u64;
    let stdout = std::io::stdout();
    loop {
        let mut request = client
            .get(url.clone())
            .header("accept", "text/event-stream");
        if let Some(token) = &args.token {
            request = request.bearer_auth(token);
        }
        if !last_event_id.is_empty() {
            request = request.header("last-event-id", &last_event_id);
        }
        match request.send().await {
            Ok(response) if response.status() == reqwest::StatusCode::NO_CONTENT => {
                eprintln!("herald: the server asked us to stop (204)");
                return Ok(());
            }
            Ok(response) if !response.status().is_success() => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                bail!("subscribe refused ({status}): {body}");
            }
            Ok(response) => {
                let mut parser = Parser::new();
                let mut body = response.bytes_stream();
                let mut events = Vec::new();
                while let Some(chunk) = body.next().await {
                    let Ok(chunk) = chunk else { break };
                    events.clear();
                    parser.feed_into(&chunk, &mut events);
                    let mut out = stdout.lock();
                    for event in &events {
                        print_event(&mut out, event, args.json)?;
                        if event.event.starts_with(RESERVED_EVENT_PREFIX) {
                            continue;
                        }
                        counted += 1;
                        if args.count.is_some_and(|n| counted >= n) {
                            out.flush()?;
                            return Ok(());
                        }
                    }
                    out.flush()?;
                    last_event_id = parser.last_event_id().to_owned();
                    if let Some(ms) = parser.retry() {
                        retry = Duration::from_millis(ms);
                    }
                }
                eprintln!("herald: stream ended; reconnecting in {retry:?}");
            }
            Err(err) => eprintln!("herald: {err}; reconnecting in {retry:?}"),
        }
        tokio::time::sleep(retry).await;
    }
}

fn print_event(out: &mut impl Write, event: &ParsedEvent, json: bool) -> std::io::Result<()> {
    if json {
        let line = serde_json::json!({"id": event.id, "event": event.event, "data": event.data});
        writeln!(out, "{line}")
    } else {
        writeln!(out, "[{}] {}: {}", event.id, event.event, event.data)
    }
}
