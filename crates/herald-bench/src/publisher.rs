//! Publish requests: built from the templates (or Herald's JSON), sent with
//! the run's HTTP client (`http.rs`), acknowledged by any 2xx.

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

/// Attempts per publish request answered 429/503 or failed in transport.
const PUBLISH_ATTEMPTS: u32 = 5;

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
    /// Any other status, with the start of the body.
    Refused(StatusCode, String),
    /// No answer (connection, timeout).
    Failed(String),
}

/// Builds and sends publish requests.
#[derive(Debug)]
pub(crate) struct Publisher {
    http: Http,
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
                Outcome::Refused(reply.status, text)
            }
            Err(err) => Outcome::Failed(format!("{err}")),
        }
    }

    /// Sends one request, retrying 429, 503 and transport errors a few times.
    /// A transport error may hide a stored publish: the retry may then be
    /// delivered twice, which the subscribers count as a duplicate.
    pub(crate) async fn send_retrying(
        &self,
        items: &[Item],
        deadline: Instant,
        bar: &ProgressBar,
    ) -> anyhow::Result<()> {
        let (url, body) = self.build(items)?;
        let mut attempt = 0;
        // Bounded: at most PUBLISH_ATTEMPTS rounds.
        loop {
            attempt += 1;
            let why = match self.send_once(url.clone(), body.clone()).await {
                Outcome::Acked => return Ok(()),
                Outcome::Refused(status, text) => {
                    let retryable = matches!(status.as_u16(), 429 | 503);
                    if !retryable || attempt >= PUBLISH_ATTEMPTS {
                        bail!("publish answered {status}: {text}");
                    }
                    format!("{status}")
                }
                Outcome::Failed(err) if attempt < PUBLISH_ATTEMPTS => err,
                Outcome::Failed(err) => bail!("publishing: {err}"),
            };
            if Instant::now() >= deadline {
                bail!("--timeout-secs passed while retrying a publish ({why})");
            }
            note(
                bar,
                &format!("publish attempt {attempt} failed ({why}); retrying"),
            );
            tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
        }
    }

    /// Publishes `seqs` in order, `batch` per request, paced at `rate` events/s
    /// if given; marks acknowledged sequence numbers in `acked`. Stops at the
    /// first request that fails for good, or at `deadline`. Returns how many
    /// events were acknowledged.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn publish_all(
        &self,
        seqs: &[u32],
        owners: Option<&[u32]>,
        batch: u32,
        rate: Option<f64>,
        data_bytes: usize,
        acked: &AckSet,
        deadline: Instant,
        bar: &ProgressBar,
    ) -> anyhow::Result<u64> {
        let batch = batch.max(1) as usize;
        let mut ticker = rate.map(|rate| {
            let period = Duration::from_secs_f64((batch as f64 / rate).max(1e-6));
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            ticker
        });
        let mut published = 0u64;
        let mut items = Vec::with_capacity(batch);
        // Bounded: one round per chunk of `seqs`.
        for chunk in seqs.chunks(batch) {
            if Instant::now() >= deadline {
                bail!("--timeout-secs passed after {published} events were published");
            }
            if let Some(ticker) = ticker.as_mut() {
                tokio::time::timeout_at(deadline.into(), ticker.tick())
                    .await
                    .ok();
            }
            let ts = epoch_micros();
            items.clear();
            items.extend(chunk.iter().map(|&seq| Item {
                seq,
                user: owners.and_then(|o| o.get(seq as usize).copied()),
                data: event_data(seq, ts, data_bytes),
            }));
            self.send_retrying(&items, deadline, bar).await?;
            for item in &items {
                acked.mark(item.seq);
            }
            published += items.len() as u64;
            bar.inc(items.len() as u64);
        }
        Ok(published)
    }
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
