//! The skeleton `fanout` and `unicast` share: open the subscribers, wait until
//! they are ready, publish, wait for the deliveries, report.
//!
//! The two differ in whom an event is addressed to, and so in who expects
//! what and which publisher sends which events: each builds a [`Plan`] that
//! says so, and [`run`] does the rest.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use indicatif::ProgressBar;

use crate::client::Target;
use crate::http::Http;
use crate::progress::{note, Progress};
use crate::publisher::{PublishJob, Publisher};
use crate::report::{Backlog, DeliveryReport, DeliveryRunReport, Population, UsersAffected};
use crate::subs::{stream_targets, BacklogSample, Fleet, StopReason};
use crate::template::{
    Addressing, DEFAULT_OPEN_CONCURRENCY, DEFAULT_TOPIC_SUBSCRIBE, DEFAULT_USER_SUBSCRIBE,
};
use crate::tls::Tls;
use crate::tracker::{AckSet, Expect, SeqTracker};
use crate::{usage, write_report, Latency, ServerArgs};

/// Flags `fanout` and `unicast` share. The help is fanout's; unicast rewords
/// `--events`, `--rate` and `--topic` for its own meaning.
#[derive(Debug, Args)]
pub(crate) struct DeliveryArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Events to publish.
    #[arg(long, default_value_t = 1000)]
    pub events: u32,
    /// Events per second (paced); flat out when absent.
    #[arg(long, value_name = "PER_SEC")]
    pub rate: Option<f64>,
    /// Bytes of data per event (at least the sequence number and timestamp).
    #[arg(long, default_value_t = 100)]
    pub data_bytes: usize,
    /// Topic to publish to and subscribe to ({topic}).
    #[arg(long, default_value = "bench")]
    pub topic: String,
    /// Once publishing is over, stop waiting when nothing has arrived for this
    /// many milliseconds (events lost for good).
    #[arg(long, default_value_t = 5000)]
    pub quiet_ms: u64,
    /// Stop publishing after this many seconds (not an error: the events not
    /// sent by then are not expected); no limit when absent.
    #[arg(long, value_name = "SECS")]
    pub publish_secs: Option<f64>,
    /// Also count the deliveries still outstanding this many seconds after
    /// the last acknowledged publish (the backlog a flood leaves); the wait
    /// for deliveries lasts at least that long. Not measured when absent.
    #[arg(long, value_name = "SECS")]
    pub backlog_after_secs: Option<f64>,
}

/// What sets a fanout run apart from a unicast run.
#[derive(Debug)]
pub(crate) struct Plan {
    pub audience: Audience,
    /// What subscriber `i` should receive: one entry per subscriber.
    pub expects: Vec<Expect>,
    /// The sequence numbers each publisher sends, ascending: one entry per
    /// publisher (some may be empty).
    pub sends: Vec<Vec<u32>>,
    /// Events per publish request.
    pub batch: u32,
}

/// Whom the events are addressed to.
#[derive(Debug)]
pub(crate) enum Audience {
    /// Every event to the topic, so every subscriber expects all (fanout).
    Topic,
    /// Event `seq` to user `owners[seq]`, drawn from an RNG seeded with
    /// `seed` (unicast).
    Users { owners: Arc<[u32]>, seed: u64 },
}

impl Audience {
    fn addressing(&self) -> Addressing {
        match self {
            Audience::Topic => Addressing::Topic,
            Audience::Users { .. } => Addressing::User,
        }
    }

    /// Herald's subscribe route for these streams.
    fn default_subscribe(&self) -> &'static str {
        match self {
            Audience::Topic => DEFAULT_TOPIC_SUBSCRIBE,
            Audience::Users { .. } => DEFAULT_USER_SUBSCRIBE,
        }
    }

    /// Deliveries the open subscribers should get in all: what the delivery
    /// progress bar counts to, and what subscribers that never reported back
    /// are charged with.
    fn deliveries(&self, connected: usize, published: u64) -> u64 {
        match self {
            Audience::Topic => connected as u64 * published,
            Audience::Users { .. } => published,
        }
    }
}

/// Runs `plan`: open, ready, publish, deliver, report. Fails after the report
/// when publishing failed, a delivery is missing or a subscriber did not open.
pub(crate) async fn run(
    args: &DeliveryArgs,
    plan: Plan,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let server = &args.server;
    let deadline = started + Duration::from_secs(server.common.timeout_secs);
    if args.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        return Err(usage("--rate must be a positive number"));
    }
    let positive_secs = |flag: &str, secs: Option<f64>| match secs {
        Some(s) if !(s.is_finite() && s > 0.0 && s < 1e7) => Err(usage(format!(
            "{flag} must be a positive number of seconds"
        ))),
        _ => Ok(secs.map(Duration::from_secs_f64)),
    };
    let publish_for = positive_secs("--publish-secs", args.publish_secs)?;
    let backlog_after = positive_secs("--backlog-after-secs", args.backlog_after_secs)?;
    let Plan {
        audience,
        expects,
        sends,
        batch,
    } = plan;
    let addressing = audience.addressing();
    server.publish.check_batch(batch, addressing)?;
    let herald_body = server.publish.body_template(addressing).is_none();
    let open_concurrency = server
        .subscribe
        .open_concurrency(DEFAULT_OPEN_CONCURRENCY)?;
    let tls = Tls::from_args(&server.common.tls)?;
    let target = Target::parse(&server.common.url, &tls)?;
    let http = Http::new(tls.clone());
    let publisher = Arc::new(Publisher::new(
        &server.common.url,
        &server.publish,
        addressing,
        &args.topic,
        http.clone(),
    )?);
    let (template, herald_subscribe) = server.subscribe.template(audience.default_subscribe());
    let subscribers = expects.len();
    let publishers = sends.len();
    let nodes = server.common.node_urls();
    let targets = stream_targets(
        &server.subscribe,
        template,
        &nodes,
        &args.topic,
        subscribers,
        &tls,
    )
    .await?;
    let over_tls = targets.iter().any(|t| t.tls.is_some());
    let progress = Progress::new(server.common.json);

    // Open.
    let bar = progress.bar(subscribers as u64, "opening");
    let fleet = Fleet::spawn(
        targets,
        expects,
        open_concurrency,
        server.subscribe.ready_on_head,
        (deadline + Duration::from_secs(20)).into(),
    )?;
    fleet.wait_open(deadline, &bar).await;
    bar.finish_and_clear();
    let shared = fleet.shared.clone();
    let connected = shared.streams.opened.load(Ordering::Relaxed);
    let failed = shared.streams.failed.load(Ordering::Relaxed);
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
        match audience {
            Audience::Topic => {
                let node_targets = nodes
                    .iter()
                    .map(|url| Target::parse(url, &tls))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                // Subscriber i is on node i mod n; with failed opens the
                // shares are unknown, and the check waits for them all anyway.
                let share = |k: usize| (connected + nodes.len() - 1 - k) / nodes.len();
                let want: Vec<usize> = (0..nodes.len()).map(share).collect();
                Fleet::herald_topic_ready(&http, &node_targets, &args.topic, &want, deadline, &bar)
                    .await
            }
            Audience::Users { .. } => {
                Fleet::herald_users_ready(&http, &target, connected, deadline, &bar).await
            }
        }
    } else {
        let settle = Duration::from_millis(server.subscribe.settle_ms);
        tokio::time::sleep(settle.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
    let acked = Arc::new(AckSet::new(args.events));
    let first_publish_us = shared.since_t0_us();
    let bar = progress.bar(u64::from(args.events), "publishing");
    let publish_error = if connected > 0 {
        let owners = match &audience {
            Audience::Topic => None,
            Audience::Users { owners, .. } => Some(owners.clone()),
        };
        let publishing = Publishing {
            publisher: publisher.clone(),
            owners,
            acked: acked.clone(),
            batch,
            deadline,
            stop_at: publish_for.map(|secs| Instant::now() + secs),
            bar: bar.clone(),
        };
        publishing.run(args, sends).await
    } else {
        Some("no subscriber opened; nothing published".to_owned())
    };
    bar.finish_and_clear();
    let publish_end_us = shared.since_t0_us();
    let published = acked.count();
    // What the subscribers still had to receive when the last publish was
    // acknowledged: the backlog the server built while acknowledging.
    let due = audience.deliveries(connected, published);
    let outstanding_at_last_ack = due.saturating_sub(shared.unique.load(Ordering::Relaxed));

    // Wait for the deliveries, then stop whoever is still waiting.
    let bar = progress.bar(due, "delivering");
    let backlog_sample = backlog_after.map(|after| BacklogSample {
        at_us: publish_end_us.saturating_add(u64::try_from(after.as_micros()).unwrap_or(u64::MAX)),
        due,
    });
    let (stop_reason, outstanding_after) = if connected > 0 {
        fleet
            .wait_deliveries(
                publish_end_us,
                Duration::from_millis(args.quiet_ms),
                deadline,
                backlog_sample,
                &bar,
            )
            .await
    } else if Instant::now() >= deadline {
        (StopReason::Timeout, None)
    } else {
        (StopReason::StreamsEnded, backlog_sample.map(|_| 0))
    };
    bar.finish_and_clear();
    let histogram = fleet.latency()?;
    let first_subscriber_error = fleet.first_error();
    let retried_opens = shared.streams.retried.load(Ordering::Relaxed);
    let trackers = fleet.stop().await;

    // Report.
    let mut delivery = DeliveryReport::new(
        stop_reason,
        Latency::of(&histogram),
        publish_error,
        first_subscriber_error,
    );
    account(
        &mut delivery,
        &audience,
        &trackers,
        &acked,
        connected,
        published,
    );
    let last_receive_us = shared.last_receive_us.load(Ordering::Relaxed);
    delivery.set_times(published, first_publish_us, publish_end_us, last_receive_us);
    delivery.set_backlog(Backlog {
        outstanding_at_last_ack,
        after_secs: args.backlog_after_secs,
        outstanding_after,
    });
    delivery.set_refusals(publisher.refusals());
    let (population, seed) = match audience {
        Audience::Topic => (Population::Subscribers(subscribers), None),
        Audience::Users { seed, .. } => (Population::Users(subscribers), Some(seed)),
    };
    let report = DeliveryRunReport {
        server_api: herald_subscribe && herald_body,
        subscribe_url: template.to_owned(),
        tls: over_tls,
        population,
        connected,
        failed,
        retried_opens,
        events: args.events,
        published,
        publishers: Some(publishers),
        batch,
        rate: args.rate,
        seed,
        data_bytes: args.data_bytes,
        delivery,
    };
    write_report(out, server.common.json, &report, |out| {
        report.write_table(out)
    })?;
    if let Some(err) = &report.delivery.first_subscriber_error {
        eprintln!("bench: first subscriber error: {err}");
    }
    if let Some(err) = &report.delivery.publish_error {
        bail!("publishing failed: {err}");
    }
    if report.delivery.missing > 0 || failed > 0 {
        bail!(
            "{} deliveries missing, {failed} subscribers failed to open",
            report.delivery.missing
        );
    }
    Ok(())
}

/// Adds what every subscriber saw to `delivery`, against the `published`
/// events in `acked`. Subscribers that did not report back (should not
/// happen) miss everything addressed to them.
fn account(
    delivery: &mut DeliveryReport,
    audience: &Audience,
    trackers: &[SeqTracker],
    acked: &AckSet,
    connected: usize,
    published: u64,
) {
    if let Audience::Users { .. } = audience {
        // Every user has its own events: count the users each fault touched.
        delivery.users = Some(UsersAffected::default());
    }
    let mut reported = 0u64;
    for tracker in trackers {
        reported += delivery.add(tracker, acked);
    }
    if trackers.len() < connected {
        let lost = u64::try_from(connected - trackers.len()).unwrap_or(u64::MAX);
        if let Some(users) = &mut delivery.users {
            users.missing += lost;
        }
        let unaccounted = audience
            .deliveries(connected, published)
            .saturating_sub(reported);
        delivery.expected += unaccounted;
        delivery.missing += unaccounted;
    }
}

/// The publishers of one run and what they share.
struct Publishing {
    publisher: Arc<Publisher>,
    /// The user of each event, for unicast.
    owners: Option<Arc<[u32]>>,
    acked: Arc<AckSet>,
    batch: u32,
    deadline: Instant,
    /// `--publish-secs`: when publishing ends.
    stop_at: Option<Instant>,
    bar: ProgressBar,
}

impl Publishing {
    /// One task per publisher with events to send (`sends`, as in [`Plan`]),
    /// each on its own connection and paced at its share of `--rate`, their
    /// first requests spread over one period of the whole rate so that they
    /// take turns; returns the first error.
    async fn run(self, args: &DeliveryArgs, sends: Vec<Vec<u32>>) -> Option<String> {
        let mut sends: Vec<Vec<u32>> = sends.into_iter().filter(|s| !s.is_empty()).collect();
        let share = |seqs: &[u32]| seqs.len() as f64 / f64::from(args.events);
        if let [seqs] = sends.as_mut_slice() {
            // One publisher runs in this task, not a spawned one: this task
            // is the runtime's `block_on`, on a thread of its own, while a
            // spawned task would wait behind thousands of subscriber tasks
            // on the workers and each publish would be acknowledged later
            // (measured: a 1,000-subscriber fanout 30-40% slower).
            let seqs = std::mem::take(seqs);
            let job = PublishJob {
                seqs: &seqs,
                owners: self.owners.as_deref(),
                batch: self.batch,
                rate: args.rate.map(|rate| rate * share(&seqs)),
                phase: Duration::ZERO,
                data_bytes: args.data_bytes,
                acked: &self.acked,
                deadline: self.deadline,
                stop_at: self.stop_at,
                bar: &self.bar,
            };
            let result = self.publisher.publish_all(job).await;
            return result.err().map(|err| {
                note(&self.bar, &format!("a publisher stopped: {err:#}"));
                format!("{err:#}")
            });
        }
        let mut tasks = Vec::with_capacity(sends.len());
        for (index, seqs) in sends.into_iter().enumerate() {
            let rate = args.rate.map(|rate| rate * share(&seqs));
            // Publisher k starts k periods of the whole rate late.
            let phase = args.rate.map_or(Duration::ZERO, |rate| {
                Duration::from_secs_f64(index as f64 / rate * f64::from(self.batch.max(1)))
            });
            let publisher = self.publisher.with_own_connection();
            let (owners, acked, bar) = (self.owners.clone(), self.acked.clone(), self.bar.clone());
            let (batch, data_bytes, deadline, stop_at) =
                (self.batch, args.data_bytes, self.deadline, self.stop_at);
            tasks.push(tokio::spawn(async move {
                let job = PublishJob {
                    seqs: &seqs,
                    owners: owners.as_deref(),
                    batch,
                    rate,
                    phase,
                    data_bytes,
                    acked: &acked,
                    deadline,
                    stop_at,
                    bar: &bar,
                };
                publisher.publish_all(job).await
            }));
        }
        let mut first_error = None;
        for task in tasks {
            let stop_by = (self.deadline + Duration::from_secs(5)).into();
            let result = match tokio::time::timeout_at(stop_by, task).await {
                Ok(Ok(result)) => result.map(|_| ()),
                Ok(Err(join)) => Err(anyhow::anyhow!("a publisher task failed: {join}")),
                Err(_) => Err(anyhow::anyhow!("a publisher did not stop in time")),
            };
            if let Err(err) = result {
                note(&self.bar, &format!("a publisher stopped: {err:#}"));
                first_error.get_or_insert(format!("{err:#}"));
            }
        }
        first_error
    }
}
