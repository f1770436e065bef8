//! Publish requests: built from the templates (or Herald's JSON), sent with
//! the run's HTTP client (`http.rs`), acknowledged by any 2xx.
//!
//! A `429` or `503` is the server asking the publisher to slow down, not a
//! failure: the same events are sent again after the answer's `Retry-After`
//! (capped), as often as it takes until `--timeout-secs`, and every such
//! answer is counted by status and error code ([`Refusals`]). An event counts
//! as published only once a 2xx acknowledged it. Transport errors are
//! retried a few times only ([`PUBLISH_ATTEMPTS`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http::header::HeaderValue;
use http::{Method, StatusCode};
use indicatif::ProgressBar;
use serde_json::json;
use url::Url;

use crate::http::Http;
use crate::progress::note;
use crate::template::{expand, parse_url, Addressing, Context, PublishTemplateArgs, Vars};
use crate::tracker::{event_data, AckSet};
use crate::{epoch_micros, usage};

/// Attempts per publish request that failed in transport (no answer).
const PUBLISH_ATTEMPTS: u32 = 5;
/// The longest `Retry-After` honoured: a server asking for more is retried
/// after this, so that a run still ends within its timeout.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);
/// The wait before retrying a 429/503 that names no `Retry-After`.
const REFUSED_BACKOFF: Duration = Duration::from_millis(200);

/// One event to publish.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    pub seq: u32,
    /// Addressee (user index, named `u{index}`), for unicast.
    pub user: Option<u32>,
    pub data: String,
}

/// How a request went.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// 2xx.
    Acked,
    /// Any other status, with the start of the body and the `Retry-After`
    /// the answer named (whole seconds; uncapped here).
    Refused {
        status: StatusCode,
        text: String,
        retry_after: Option<Duration>,
    },
    /// No answer (connection, timeout).
    Failed(String),
}

/// The `429`/`503` answers of a run's publishers, by cause, and how long
/// they waited because of them. Shared by every publisher of the run.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    /// `"503 overloaded"` (status and the JSON error's `code`), or `"503"`
    /// when the body is not `{"error":{"code":…}}`.
    by_cause: Mutex<BTreeMap<String, u64>>,
    waited_us: AtomicU64,
}

impl Refusals {
    /// Counts one refusal; returns how many the run has had.
    fn count(&self, status: StatusCode, body: &str) -> u64 {
        let code = serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
        let cause = match code {
            Some(code) => format!("{} {code}", status.as_u16()),
            None => status.as_u16().to_string(),
        };
        let mut by_cause = self.by_cause.lock().unwrap_or_else(|e| e.into_inner());
        *by_cause.entry(cause).or_default() += 1;
        by_cause.values().sum()
    }

    fn waited(&self, wait: Duration) {
        let us = u64::try_from(wait.as_micros()).unwrap_or(u64::MAX);
        self.waited_us.fetch_add(us, Ordering::Relaxed);
    }

    /// The counts by cause.
    pub(crate) fn by_cause(&self) -> BTreeMap<String, u64> {
        self.by_cause
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Seconds the publishers spent waiting before retrying refused
    /// publishes, summed over publishers.
    pub(crate) fn waited_secs(&self) -> f64 {
        self.waited_us.load(Ordering::Relaxed) as f64 / 1e6
    }
}

/// `Retry-After` in whole seconds (the HTTP-date form is not used by the
/// servers measured here, and is treated as absent).
fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// How long to wait before sending a refused publish again.
fn refused_wait(retry_after: Option<Duration>) -> Duration {
    retry_after.map_or(REFUSED_BACKOFF, |wait| wait.min(MAX_RETRY_AFTER))
}

/// Whether a publish ended up acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    Acked,
    /// Still refused (429/503) when `--publish-secs` was over: not published.
    GaveUp,
}

/// Builds and sends publish requests.
#[derive(Debug, Clone)]
pub(crate) struct Publisher {
    http: Http,
    refusals: Arc<Refusals>,
    method: Method,
    url_template: String,
    /// The URL when the template does not depend on the event.
    fixed_url: Option<Url>,
    /// `None`: Herald's JSON (one object, or an array for a batch).
    body_template: Option<String>,
    addressing: Addressing,
    content_type: HeaderValue,
    base: String,
    topic: String,
}

impl Publisher {
    /// Checks the flags; every problem is a usage error (exit 64).
    pub(crate) fn new(
        base: &str,
        args: &PublishTemplateArgs,
        addressing: Addressing,
        topic: &str,
        http: Http,
    ) -> anyhow::Result<Self> {
        let method = Method::from_bytes(args.publish_method.to_ascii_uppercase().as_bytes())
            .map_err(|_| {
                usage(format!(
                    "--publish-method {:?} is not an HTTP method",
                    args.publish_method
                ))
            })?;
        let content_type = HeaderValue::from_str(&args.publish_content_type).map_err(|_| {
            usage(format!(
                "--publish-content-type {:?} is not a header value",
                args.publish_content_type
            ))
        })?;
        let per_event = ["{user}", "{data}"]
            .iter()
            .any(|p| args.publish_url.contains(p));
        let sample = Vars {
            url: base,
            i: None,
            topic,
            user: Some("u0"),
            token: None,
            data: Some("0 0 x"),
        };
        let sample_url = parse_url(
            "--publish-url",
            &expand(&args.publish_url, &sample, Context::Url),
            http.tls(),
        )?;
        Ok(Self {
            http,
            refusals: Arc::default(),
            method,
            fixed_url: (!per_event).then_some(sample_url),
            url_template: args.publish_url.clone(),
            body_template: args.body_template(addressing).map(str::to_owned),
            addressing,
            content_type,
            base: base.to_owned(),
            topic: topic.to_owned(),
        })
    }

    /// The same publisher on a connection pool of its own: one per
    /// publisher task, so that each keeps its own keep-alive connection.
    /// The refusal counts stay shared.
    pub(crate) fn with_own_connection(&self) -> Self {
        Self {
            http: self.http.with_own_pool(),
            ..self.clone()
        }
    }

    /// The `429`/`503` answers so far, shared with every copy.
    pub(crate) fn refusals(&self) -> &Refusals {
        &self.refusals
    }

    /// URL and body of one request carrying `items` (several only with Herald's JSON).
    pub(crate) fn build(&self, items: &[Item]) -> anyhow::Result<(Url, Vec<u8>)> {
        let first = items.first().context("a publish request needs an event")?;
        let user = first.user.map(|u| format!("u{u}"));
        let vars = Vars {
            url: &self.base,
            i: None,
            topic: &self.topic,
            user: Some(user.as_deref().unwrap_or("")),
            token: None,
            data: Some(&first.data),
        };
        let url = match &self.fixed_url {
            Some(url) => url.clone(),
            None => parse_url(
                "--publish-url",
                &expand(&self.url_template, &vars, Context::Url),
                self.http.tls(),
            )?,
        };
        let body = match &self.body_template {
            Some(template) => {
                if items.len() > 1 {
                    bail!("a --publish-body request carries one event");
                }
                expand(template, &vars, Context::Body).into_bytes()
            }
            None => {
                let object = |item: &Item| match (self.addressing, item.user) {
                    (Addressing::User, Some(u)) => {
                        json!({"users": [format!("u{u}")], "data": item.data})
                    }
                    _ => json!({"topics": [self.topic], "data": item.data}),
                };
                let value = match items {
                    [one] => object(one),
                    many => serde_json::Value::Array(many.iter().map(object).collect()),
                };
                serde_json::to_vec(&value).context("encoding a publish")?
            }
        };
        Ok((url, body))
    }

    /// Sends one request, once.
    pub(crate) async fn send_once(&self, url: Url, body: Vec<u8>) -> Outcome {
        let sent = self
            .http
            .send(
                self.method.clone(),
                &url,
                Some(&self.content_type),
                Bytes::from(body),
            )
            .await;
        match sent {
            Ok(reply) if reply.status.is_success() => Outcome::Acked,
            Ok(reply) => {
                let mut text = String::from_utf8_lossy(&reply.body).into_owned();
                if let Some((cut, _)) = text.char_indices().nth(300) {
                    text.truncate(cut);
                }
                Outcome::Refused {
                    status: reply.status,
                    text,
                    retry_after: retry_after(&reply.headers),
                }
            }
            Err(err) => Outcome::Failed(format!("{err}")),
        }
    }

    /// Sends one request until it is acknowledged. A 429 or 503 is sent
    /// again after its `Retry-After` (at most [`MAX_RETRY_AFTER`]; absent:
    /// [`REFUSED_BACKOFF`]) for as long as it takes, until `deadline` (an
    /// error) or `stop_at` (gives up: [`Sent::GaveUp`]); a transport error
    /// is retried [`PUBLISH_ATTEMPTS`] times in all. A transport error may
    /// hide a stored publish: the retry may then be delivered twice, which
    /// the subscribers count as a duplicate.
    pub(crate) async fn send_retrying(
        &self,
        items: &[Item],
        deadline: Instant,
        stop_at: Option<Instant>,
        bar: &ProgressBar,
    ) -> anyhow::Result<Sent> {
        let (url, body) = self.build(items)?;
        let mut failures = 0;
        // Bounded: by PUBLISH_ATTEMPTS transport failures, and refusals by
        // `deadline` (each waits at least REFUSED_BACKOFF).
        loop {
            let (why, wait, refused) = match self.send_once(url.clone(), body.clone()).await {
                Outcome::Acked => return Ok(Sent::Acked),
                Outcome::Refused {
                    status,
                    text,
                    retry_after,
                } => {
                    if !matches!(status.as_u16(), 429 | 503) {
                        bail!("publish answered {status}: {text}");
                    }
                    let first_of_run = self.refusals.count(status, &text) == 1;
                    if first_of_run {
                        // Only the first: an overloaded server may refuse
                        // thousands of times, all counted in the report.
                        note(
                            bar,
                            &format!("publish answered {status} ({text}); retrying"),
                        );
                    }
                    (format!("{status}"), refused_wait(retry_after), true)
                }
                Outcome::Failed(err) => {
                    failures += 1;
                    if failures >= PUBLISH_ATTEMPTS {
                        bail!("publishing: {err}");
                    }
                    note(
                        bar,
                        &format!("publish attempt {failures} failed ({err}); retrying"),
                    );
                    (err, Duration::from_millis(100 * u64::from(failures)), false)
                }
            };
            let now = Instant::now();
            if refused && stop_at.is_some_and(|stop| now + wait >= stop) {
                return Ok(Sent::GaveUp);
            }
            if now + wait >= deadline {
                bail!("--timeout-secs passed while retrying a publish ({why})");
            }
            if refused {
                self.refusals.waited(wait);
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Publishes `job.seqs` in order, `job.batch` per request, paced at
    /// `job.rate` events/s if given (the first request after `job.phase`);
    /// marks acknowledged sequence numbers in `job.acked`. Stops at the
    /// first request that fails for good or at `job.deadline` (errors), or
    /// at `job.stop_at` (done). Returns how many events were acknowledged.
    pub(crate) async fn publish_all(&self, job: PublishJob<'_>) -> anyhow::Result<u64> {
        let batch = job.batch.max(1) as usize;
        let mut ticker = job.rate.map(|rate| {
            let period = Duration::from_secs_f64((batch as f64 / rate).max(1e-6));
            let start = tokio::time::Instant::now() + job.phase;
            let mut ticker = tokio::time::interval_at(start, period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            ticker
        });
        let stopped = || job.stop_at.is_some_and(|stop| Instant::now() >= stop);
        let mut published = 0u64;
        let mut items = Vec::with_capacity(batch);
        // Bounded: one round per chunk of `seqs`.
        for chunk in job.seqs.chunks(batch) {
            if stopped() {
                break;
            }
            if Instant::now() >= job.deadline {
                bail!("--timeout-secs passed after {published} events were published");
            }
            if let Some(ticker) = ticker.as_mut() {
                let until = job.stop_at.map_or(job.deadline, |s| s.min(job.deadline));
                tokio::time::timeout_at(until.into(), ticker.tick())
                    .await
                    .ok();
                if stopped() {
                    break;
                }
            }
            let ts = epoch_micros();
            items.clear();
            items.extend(chunk.iter().map(|&seq| Item {
                seq,
                user: job.owners.and_then(|o| o.get(seq as usize).copied()),
                data: event_data(seq, ts, job.data_bytes),
            }));
            match self
                .send_retrying(&items, job.deadline, job.stop_at, job.bar)
                .await?
            {
                Sent::Acked => {}
                Sent::GaveUp => break,
            }
            for item in &items {
                job.acked.mark(item.seq);
            }
            published += items.len() as u64;
            job.bar.inc(items.len() as u64);
        }
        Ok(published)
    }
}

/// What one publisher sends, how fast, and until when.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PublishJob<'a> {
    /// Sequence numbers, in the order to send them.
    pub seqs: &'a [u32],
    /// The user of each event, for unicast.
    pub owners: Option<&'a [u32]>,
    pub batch: u32,
    /// Events per second; flat out when `None`.
    pub rate: Option<f64>,
    /// Paced only: the delay before the first request, so that several
    /// publishers sharing a rate take turns instead of sending together.
    pub phase: Duration,
    pub data_bytes: usize,
    pub acked: &'a AckSet,
    /// `--timeout-secs`: reaching it is an error.
    pub deadline: Instant,
    /// `--publish-secs`: reaching it ends publishing, not an error.
    pub stop_at: Option<Instant>,
    pub bar: &'a ProgressBar,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::DEFAULT_PUBLISH_URL;
    use crate::tls::Tls;

    fn args(url: &str, body: Option<&str>) -> PublishTemplateArgs {
        PublishTemplateArgs {
            publish_url: url.into(),
            publish_method: "post".into(),
            publish_body: body.map(str::to_owned),
            publish_content_type: "application/json".into(),
        }
    }

    /// A publisher to `base` for topic `t`.
    fn publisher(
        base: &str,
        args: &PublishTemplateArgs,
        addressing: Addressing,
    ) -> anyhow::Result<Publisher> {
        Publisher::new(base, args, addressing, "t", Http::new(Tls::plain()))
    }

    fn item(seq: u32, user: Option<u32>) -> Item {
        Item {
            seq,
            user,
            data: event_data(seq, 5, 1),
        }
    }

    #[test]
    fn herald_json_single_and_batch() -> anyhow::Result<()> {
        let p = publisher(
            "http://h:1/",
            &args(DEFAULT_PUBLISH_URL, None),
            Addressing::Topic,
        )?;
        let (url, body) = p.build(&[item(1, None)])?;
        assert_eq!(url.as_str(), "http://h:1/v1/publish");
        let value: serde_json::Value = serde_json::from_slice(&body)?;
        assert_eq!(value, json!({"topics": ["t"], "data": "1 5 x"}));
        let (_, body) = p.build(&[item(1, None), item(2, None)])?;
        let value: serde_json::Value = serde_json::from_slice(&body)?;
        assert_eq!(value.as_array().map(Vec::len), Some(2));

        let u = publisher(
            "http://h:1",
            &args(DEFAULT_PUBLISH_URL, None),
            Addressing::User,
        )?;
        let (_, body) = u.build(&[item(3, Some(9))])?;
        let value: serde_json::Value = serde_json::from_slice(&body)?;
        assert_eq!(value, json!({"users": ["u9"], "data": "3 5 x"}));
        Ok(())
    }

    #[test]
    fn templates_per_event() -> anyhow::Result<()> {
        let body = r#"{"items":[{"channel":"{user}","formats":{"http-stream":{"content":"data: {data}\n\n"}}}]}"#;
        let p = publisher(
            "http://h:1",
            &args("{url}/pub?channel={user}", Some(body)),
            Addressing::User,
        )?;
        let (url, body) = p.build(&[item(4, Some(2))])?;
        assert_eq!(url.as_str(), "http://h:1/pub?channel=u2");
        assert_eq!(
            String::from_utf8(body)?,
            r#"{"items":[{"channel":"u2","formats":{"http-stream":{"content":"data: 4 5 x\n\n"}}}]}"#
        );
        assert!(p.build(&[item(1, Some(1)), item(2, Some(2))]).is_err());
        Ok(())
    }

    #[test]
    fn retry_after_is_whole_seconds_capped_with_a_default() {
        let headers = |value: &str| {
            let mut h = http::HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(value) {
                h.insert(http::header::RETRY_AFTER, v);
            }
            h
        };
        assert_eq!(retry_after(&headers("1")), Some(Duration::from_secs(1)));
        assert_eq!(retry_after(&headers(" 3 ")), Some(Duration::from_secs(3)));
        // The HTTP-date form and nonsense are treated as absent.
        assert_eq!(retry_after(&headers("Wed, 21 Oct 2015 07:28:00 GMT")), None);
        assert_eq!(retry_after(&headers("-1")), None);
        assert_eq!(retry_after(&http::HeaderMap::new()), None);
        assert_eq!(
            refused_wait(Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            refused_wait(Some(Duration::from_secs(3600))),
            MAX_RETRY_AFTER
        );
        assert_eq!(refused_wait(None), REFUSED_BACKOFF);
    }

    #[test]
    fn refusals_are_counted_by_status_and_error_code() {
        let refusals = Refusals::default();
        let overloaded = r#"{"error":{"code":"overloaded","message":"behind"}}"#;
        assert_eq!(
            refusals.count(StatusCode::SERVICE_UNAVAILABLE, overloaded),
            1
        );
        refusals.count(StatusCode::SERVICE_UNAVAILABLE, overloaded);
        refusals.count(StatusCode::SERVICE_UNAVAILABLE, "<html>busy</html>");
        refusals.count(StatusCode::TOO_MANY_REQUESTS, r#"{"error":{}}"#);
        let counted: Vec<(String, u64)> = refusals.by_cause().into_iter().collect();
        assert_eq!(
            counted,
            [
                ("429".to_owned(), 1),
                ("503".to_owned(), 1),
                ("503 overloaded".to_owned(), 2)
            ]
        );
    }

    #[test]
    fn bad_flags_are_usage_errors() -> anyhow::Result<()> {
        for (url, method) in [("ftp://x/{topic}", "POST"), ("{url}/p", "BAD METHOD")] {
            let mut a = args(url, None);
            a.publish_method = method.into();
            let err = publisher("http://h:1", &a, Addressing::Topic)
                .err()
                .map(|e| e.is::<crate::UsageError>());
            assert_eq!(err, Some(true), "{url} {method}");
        }
        Ok(())
    }
}
