//! `herald bench publish`: C concurrent publishers send E events (B per
//! request); acknowledged publishes per second and acknowledgement latency.
//! Nothing is retried: every non-2xx answer and every transport error counts.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::http::Http;
use crate::progress::{note, Progress};
use crate::publisher::{Item, Outcome, Publisher};
use crate::template::{Addressing, PublishTemplateArgs};
use crate::tls::Tls;
use crate::tracker::event_data;
use crate::{
    epoch_micros, new_histogram, per_sec, record_first, round3, take_first, usage, write_report,
    CommonArgs, Latency,
};

/// Flags of `herald bench publish`.
#[derive(Debug, Args)]
pub(crate) struct PublishBenchArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub publish: PublishTemplateArgs,
    /// Events to publish.
    #[arg(long, default_value_t = 10_000)]
    events: u32,
    /// Requests in flight at the same time.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Events per publish request; Herald's JSON body only.
    #[arg(long, default_value_t = 1)]
    batch: u32,
    /// Topic to publish to ({topic}).
    #[arg(long, default_value = "bench")]
    topic: String,
    /// Bytes of data per event.
    #[arg(long, default_value_t = 100)]
    data_bytes: usize,
}

/// What one worker measured.
#[derive(Debug)]
struct Tally {
    per_request: Histogram<u64>,
    per_event: Histogram<u64>,
    requests: u64,
    acked_requests: u64,
    acked_events: u64,
    non_2xx: u64,
    errors: u64,
    statuses: BTreeMap<u16, u64>,
}

impl Tally {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            per_request: new_histogram()?,
            per_event: new_histogram()?,
            requests: 0,
            acked_requests: 0,
            acked_events: 0,
            non_2xx: 0,
            errors: 0,
            statuses: BTreeMap::new(),
        })
    }

    fn add(&mut self, other: &Tally) -> anyhow::Result<()> {
        self.per_request
            .add(&other.per_request)
            .context("merging histograms")?;
        self.per_event
            .add(&other.per_event)
            .context("merging histograms")?;
        self.requests += other.requests;
        self.acked_requests += other.acked_requests;
        self.acked_events += other.acked_events;
        self.non_2xx += other.non_2xx;
        self.errors += other.errors;
        for (status, n) in &other.statuses {
            *self.statuses.entry(*status).or_default() += n;
        }
        Ok(())
    }
}

pub(crate) async fn run(args: PublishBenchArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.common.timeout_secs);
    if args.events == 0 || args.concurrency == 0 {
        return Err(usage("--events and --concurrency must be at least 1"));
    }
    args.publish.check_batch(args.batch, Addressing::Topic)?;
    let tls = Tls::from_args(&args.common.tls)?;
    let publisher = Arc::new(Publisher::new(
        &args.common.url,
        &args.publish,
        Addressing::Topic,
        &args.topic,
        Http::new(tls),
    )?);
    let progress = Progress::new(args.common.json);
    let bar = progress.bar(u64::from(args.events), "publishing");
    let next = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let t0 = Instant::now();
    let mut workers = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency {
        let (publisher, next, first_error, bar) = (
            publisher.clone(),
            next.clone(),
            first_error.clone(),
            bar.clone(),
        );
        let (events, batch, data_bytes) = (
            u64::from(args.events),
            u64::from(args.batch),
            args.data_bytes,
        );
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::new()?;
            // Bounded: `next` grows by `batch` every round, and by the deadline.
            while Instant::now() < deadline {
                let start = next.fetch_add(batch, Ordering::Relaxed);
                if start >= events {
                    break;
                }
                let end = (start + batch).min(events);
                let ts = epoch_micros();
                let items: Vec<Item> = (start..end)
                    .filter_map(|seq| u32::try_from(seq).ok())
                    .map(|seq| Item {
                        seq,
                        user: None,
                        data: event_data(seq, ts, data_bytes),
                    })
                    .collect();
                let (url, body) = publisher.build(&items)?;
                let sent = Instant::now();
                let outcome =
                    tokio::time::timeout_at(deadline.into(), publisher.send_once(url, body))
                        .await
                        .unwrap_or_else(|_| Outcome::Failed("--timeout-secs passed".to_owned()));
                let us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                tally.requests += 1;
                match outcome {
                    Outcome::Acked => {
                        let n = items.len() as u64;
                        tally.acked_requests += 1;
                        tally.acked_events += n;
                        tally.per_request.saturating_record(us.max(1));
                        tally
                            .per_event
                            .saturating_record_n((us / n.max(1)).max(1), n);
                        bar.inc(n);
                    }
                    Outcome::Refused { status, text, .. } => {
                        tally.non_2xx += 1;
                        *tally.statuses.entry(status.as_u16()).or_default() += 1;
                        record_first(&first_error, format!("publish answered {status}: {text}"));
                    }
                    Outcome::Failed(err) => {
                        tally.errors += 1;
                        record_first(&first_error, err);
                    }
                }
            }
            anyhow::Ok(tally)
        }));
    }
    let mut total = Tally::new()?;
    let mut worker_failed = None;
    for worker in workers {
        match tokio::time::timeout_at((deadline + Duration::from_secs(5)).into(), worker).await {
            Ok(Ok(Ok(tally))) => total.add(&tally)?,
            Ok(Ok(Err(err))) => {
                worker_failed.get_or_insert(format!("{err:#}"));
            }
            Ok(Err(err)) => {
                worker_failed.get_or_insert(format!("a worker failed: {err}"));
            }
            Err(_) => {
                worker_failed.get_or_insert("a worker did not stop in time".to_owned());
            }
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let timed_out = Instant::now() >= deadline;
    let report = Report {
        events: args.events,
        concurrency: args.concurrency,
        batch: args.batch,
        topic: args.topic.clone(),
        data_bytes: args.data_bytes,
        requests: total.requests,
        acked_requests: total.acked_requests,
        acked_events: total.acked_events,
        non_2xx: total.non_2xx,
        errors: total.errors,
        statuses: total
            .statuses
            .iter()
            .map(|(status, n)| (status.to_string(), *n))
            .collect(),
        elapsed_secs: round3(elapsed),
        publishes_per_sec: per_sec(total.acked_events, elapsed),
        requests_per_sec: per_sec(total.acked_requests, elapsed),
        ack_latency_ms: Latency::of(&total.per_request),
        ack_latency_per_event_ms: (args.batch > 1).then(|| Latency::of(&total.per_event)),
        timed_out,
        first_error: take_first(&first_error).or(worker_failed.clone()),
    };
    write_report(out, args.common.json, &report, |out| {
        report.write_table(out)
    })?;
    if let Some(err) = worker_failed {
        bail!("{err}");
    }
    if report.non_2xx + report.errors > 0 || report.acked_events < u64::from(args.events) {
        if let Some(err) = &report.first_error {
            note(&bar, &format!("first error: {err}"));
        }
        bail!(
            "{} of {} events acknowledged ({} non-2xx answers, {} errors{})",
            report.acked_events,
            args.events,
            report.non_2xx,
            report.errors,
            if timed_out { ", timed out" } else { "" }
        );
    }
    Ok(())
}

/// The figures of one run (`--json` prints this).
#[derive(Debug, Serialize)]
struct Report {
    events: u32,
    concurrency: usize,
    batch: u32,
    topic: String,
    data_bytes: usize,
    requests: u64,
    acked_requests: u64,
    /// Events in requests answered 2xx.
    acked_events: u64,
    /// Requests answered with another status.
    non_2xx: u64,
    /// Requests with no answer (connection, timeout).
    errors: u64,
    /// Non-2xx answers by status.
    statuses: BTreeMap<String, u64>,
    elapsed_secs: f64,
    /// `acked_events / elapsed_secs`.
    publishes_per_sec: f64,
    requests_per_sec: f64,
    /// Per acknowledged request: send to answer.
    ack_latency_ms: Latency,
    /// With --batch > 1: per event, the request's latency divided by its events.
    ack_latency_per_event_ms: Option<Latency>,
    timed_out: bool,
    first_error: Option<String>,
}

impl Report {
    fn write_table(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(
            out,
            "events                   {} (batch {}, concurrency {}, {} bytes)",
            self.events, self.batch, self.concurrency, self.data_bytes
        )?;
        writeln!(
            out,
            "acknowledged             {} events in {} requests, {:.3} s",
            self.acked_events, self.acked_requests, self.elapsed_secs
        )?;
        writeln!(
            out,
            "publishes/s              {:.0} ({:.0} requests/s)",
            self.publishes_per_sec, self.requests_per_sec
        )?;
        writeln!(
            out,
            "non-2xx / errors         {} / {}",
            self.non_2xx, self.errors
        )?;
        for (status, n) in &self.statuses {
            writeln!(out, "  status {status}            {n}")?;
        }
        writeln!(
            out,
            "ack latency ms           {}",
            self.ack_latency_ms.line()
        )?;
        if let Some(l) = &self.ack_latency_per_event_ms {
            writeln!(out, "  per event ms           {}", l.line())?;
        }
        writeln!(out, "timed out                {}", self.timed_out)?;
        Ok(())
    }
}
