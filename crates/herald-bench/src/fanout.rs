//! `herald bench fanout`: N subscribers on one topic, one publisher.
//!
//! Each event's data is `"{seq} {publish_ts_us} {pad}"`. Every subscriber keeps
//! a bitset of the sequence numbers it has seen (E bits), so missing, duplicate
//! and out-of-order deliveries are counted exactly; latency is receive time
//! minus the publish timestamp (both from the same machine's clock).

use std::io::{self, Write};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use serde::Serialize;

use crate::client::Target;
use crate::progress::{note, Progress};
use crate::publisher::Publisher;
use crate::report::DeliveryReport;
use crate::subs::{stream_targets, Fleet, StopReason};
use crate::template::{Addressing, PublishTemplateArgs, SubscribeArgs, DEFAULT_TOPIC_SUBSCRIBE};
use crate::tracker::{AckSet, Expect};
use crate::{usage, write_report, CommonArgs, Latency};

/// Flags of `herald bench fanout`.
#[derive(Debug, Args)]
pub(crate) struct FanoutArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub subscribe: SubscribeArgs,
    #[command(flatten)]
    pub publish: PublishTemplateArgs,
    /// Subscribers on the topic.
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// Events to publish.
    #[arg(long, default_value_t = 1000)]
    events: u32,
    /// Events per second (paced); flat out when absent.
    #[arg(long, value_name = "PER_SEC")]
    rate: Option<f64>,
    /// Events per publish request, Herald's JSON body only
    /// [default: 100 flat out, 1 paced or with --publish-body].
    #[arg(long)]
    batch: Option<u32>,
    /// Bytes of data per event (at least the sequence number and timestamp).
    #[arg(long, default_value_t = 100)]
    data_bytes: usize,
    /// Topic to publish to and subscribe to ({topic}).
    #[arg(long, default_value = "bench")]
    topic: String,
    /// Once publishing is over, stop waiting when nothing has arrived for this
    /// many milliseconds (events lost for good).
    #[arg(long, default_value_t = 5000)]
    quiet_ms: u64,
}

pub(crate) async fn run(args: FanoutArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.common.timeout_secs);
    if args.subscribers == 0 || args.events == 0 {
        return Err(usage("--subscribers and --events must be at least 1"));
    }
    if args.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        return Err(usage("--rate must be a positive number"));
    }
    let herald_body = args.publish.body_template(Addressing::Topic).is_none();
    let batch = args.batch.unwrap_or(match (herald_body, args.rate) {
        (true, None) => 100,
        _ => 1,
    });
    args.publish.check_batch(batch, Addressing::Topic)?;
    let target = Target::parse(&args.common.url)?;
    let http = Publisher::client()?;
    let publisher = Publisher::new(
        &args.common.url,
        &args.publish,
        Addressing::Topic,
        &args.topic,
        http.clone(),
    )?;
    let (template, herald_subscribe) = args.subscribe.template(DEFAULT_TOPIC_SUBSCRIBE);
    let targets = stream_targets(template, &args.common.url, &args.topic, args.subscribers).await?;
    let progress = Progress::new(args.common.json);

    // Open.
    let bar = progress.bar(args.subscribers as u64, "opening");
    let fleet = Fleet::spawn(
        targets,
        vec![Expect::All(args.events); args.subscribers],
        args.subscribe.open_concurrency,
        args.subscribe.ready_on_head,
        (deadline + Duration::from_secs(20)).into(),
    )?;
    fleet.wait_open(deadline, &bar).await;
    bar.finish_and_clear();
    let shared = fleet.shared.clone();
    let connected = shared.connected.load(std::sync::atomic::Ordering::Relaxed);
    let failed = shared.failed.load(std::sync::atomic::Ordering::Relaxed);
    note(
        &bar,
        &format!(
            "{connected} subscribers open, {failed} failed, in {:.1} s",
            started.elapsed().as_secs_f64()
        ),
    );

    // Ready, then publish.
    if connected == 0 {
        // Nothing to wait for.
    } else if herald_subscribe {
        Fleet::herald_topic_ready(&http, &target, &args.topic, connected, deadline, &bar).await;
    } else {
        let settle = Duration::from_millis(args.subscribe.settle_ms);
        tokio::time::sleep(settle.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
    let acked = AckSet::new(args.events);
    let seqs: Vec<u32> = (0..args.events).collect();
    let first_publish_us = shared.since_t0_us();
    let bar = progress.bar(u64::from(args.events), "publishing");
    let publish_result = if connected > 0 {
        publisher
            .publish_all(
                &seqs,
                None,
                batch,
                args.rate,
                args.data_bytes,
                &acked,
                deadline,
                &bar,
            )
            .await
    } else {
        Err(anyhow::anyhow!("no subscriber opened; nothing published"))
    };
    bar.finish_and_clear();
    let publish_end_us = shared.since_t0_us();
    if let Err(err) = &publish_result {
        note(&bar, &format!("publishing stopped: {err:#}"));
    }
    let published = acked.count();

    // Wait for the deliveries, then stop whoever is still waiting.
    let bar = progress.bar(connected as u64 * published, "delivering");
    let stop_reason = if connected > 0 {
        fleet
            .wait_deliveries(
                publish_end_us,
                Duration::from_millis(args.quiet_ms),
                deadline,
                &bar,
            )
            .await
    } else if Instant::now() >= deadline {
        StopReason::Timeout
    } else {
        StopReason::StreamsEnded
    };
    bar.finish_and_clear();
    let histogram = fleet.latency()?;
    let first_error = fleet.first_error();
    let retried_opens = shared
        .retried_opens
        .load(std::sync::atomic::Ordering::Relaxed);
    let trackers = fleet.stop().await;

    let mut delivery = DeliveryReport::new(
        stop_reason,
        Latency::of(&histogram),
        publish_result.as_ref().err().map(|e| format!("{e:#}")),
        first_error,
    );
    for tracker in &trackers {
        delivery.add(tracker, &acked);
    }
    // Subscribers that did not report back (should not happen) miss everything.
    let lost = connected.saturating_sub(trackers.len()) as u64;
    delivery.expected += lost * published;
    delivery.missing += lost * published;
    let last_receive_us = shared
        .last_receive_us
        .load(std::sync::atomic::Ordering::Relaxed);
    delivery.set_times(published, first_publish_us, publish_end_us, last_receive_us);
    let report = Report {
        server_api: herald_subscribe && herald_body,
        subscribe_url: template.to_owned(),
        subscribers: args.subscribers,
        connected,
        failed,
        retried_opens,
        events: args.events,
        published,
        batch,
        rate: args.rate,
        data_bytes: args.data_bytes,
        delivery,
    };

    write_report(out, args.common.json, &report, |out| {
        report.write_table(out)
    })?;
    if let Some(err) = &report.delivery.first_subscriber_error {
        eprintln!("bench: first subscriber error: {err}");
    }
    publish_result?;
    if report.delivery.missing > 0 || failed > 0 {
        bail!(
            "{} deliveries missing, {failed} subscribers failed to open",
            report.delivery.missing
        );
    }
    Ok(())
}

/// The figures of one run (`--json` prints this).
#[derive(Debug, Serialize)]
struct Report {
    /// Herald's own subscribe route and publish body were used.
    server_api: bool,
    subscribe_url: String,
    subscribers: usize,
    connected: usize,
    failed: usize,
    /// Streams that opened only after a retry.
    retried_opens: usize,
    events: u32,
    /// Events acknowledged (2xx) by the server.
    published: u64,
    batch: u32,
    rate: Option<f64>,
    data_bytes: usize,
    /// What the subscribers got (fields shared with unicast, flattened so the
    /// JSON keeps them at the top level); `users` is `None` here.
    #[serde(flatten)]
    delivery: DeliveryReport,
}

impl Report {
    fn write_table(&self, out: &mut dyn Write) -> io::Result<()> {
        let rate = self
            .rate
            .map_or("flat out".to_owned(), |r| format!("{r} events/s"));
        writeln!(
            out,
            "subscribers              {} ({} open, {} failed, {} retried)",
            self.subscribers, self.connected, self.failed, self.retried_opens
        )?;
        writeln!(
            out,
            "events                   {} published of {}, batch {}, {rate}",
            self.published, self.events, self.batch
        )?;
        self.delivery.write_table(out, "unexpected events")
    }
}
