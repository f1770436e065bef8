//! `herald publish`: one event from the command line.

use std::io::Read;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};

/// Flags of `herald publish`.
#[derive(Debug, Args)]
pub(crate) struct PublishArgs {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "HERALD_URL")]
    url: String,
    /// Bearer token.
    #[arg(long, env = "HERALD_TOKEN")]
    token: Option<String>,
    /// Send to this user (repeatable).
    #[arg(long = "user", value_name = "ID")]
    users: Vec<String>,
    /// Send to this topic (repeatable).
    #[arg(long = "topic", value_name = "TOPIC")]
    topics: Vec<String>,
    /// Send to every open connection.
    #[arg(long)]
    broadcast: bool,
    /// Event type.
    #[arg(long, value_name = "TYPE")]
    event: Option<String>,
    /// Idempotency key.
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
    /// The data; `-` or nothing reads standard input.
    data: Option<String>,
}

pub(crate) fn run(args: PublishArgs) -> anyhow::Result<()> {
    if args.users.is_empty() && args.topics.is_empty() && !args.broadcast {
        return Err(crate::config::ConfigError(
            "publish: give --user, --topic or --broadcast".into(),
        )
        .into());
    }
    let data = match args.data.as_deref() {
        Some("-") | None => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading data from standard input")?;
            s
        }
        Some(d) => d.to_owned(),
    };
    let mut body = json!({"data": data});
    if !args.users.is_empty() {
        body["users"] = json!(args.users);
    }
    if !args.topics.is_empty() {
        body["topics"] = json!(args.topics);
    }
    if args.broadcast {
        body["broadcast"] = json!(true);
    }
    if let Some(e) = &args.event {
        body["event"] = json!(e);
    }
    if let Some(k) = &args.idempotency_key {
        body["idempotency_key"] = json!(k);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let mut request = client
            .post(format!("{}/v1/publish", args.url.trim_end_matches('/')))
            .json(&body);
        if let Some(token) = &args.token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .context("sending the publish request")?;
        let status = response.status();
        let answer: Value = response.json().await.context("reading the answer")?;
        if !status.is_success() {
            let message = answer["error"]["message"]
                .as_str()
                .unwrap_or("unknown error");
            bail!("publish refused ({status}): {message}");
        }
        println!("{}", answer["id"].as_str().unwrap_or_default());
        Ok(())
    })
}
