//! `herald bench unicast`: N subscribers, each on its own personal stream;
//! P publishers send E events in total, each to a random user.
//!
//! The addressee of every event is drawn up front from a seeded RNG, so every
//! subscriber knows exactly which sequence numbers are its own. Events for one
//! user all go through the same publisher (user mod P), which waits for each
//! acknowledgement before the next request: per user, publish order is
//! sequence order, and out-of-order deliveries are well defined.

use std::io::{self, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::client::Target;
use crate::progress::{note, Progress};
use crate::publisher::Publisher;
use crate::report::{DeliveryReport, UsersAffected};
use crate::subs::{stream_targets, Fleet, StopReason};
use crate::template::{Addressing, PublishTemplateArgs, SubscribeArgs, DEFAULT_USER_SUBSCRIBE};
use crate::tracker::{AckSet, Expect};
use crate::{usage, write_report, CommonArgs, Latency};

/// Flags of `herald bench unicast`.
#[derive(Debug, Args)]
pub(crate) struct UnicastArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub subscribe: SubscribeArgs,
    #[command(flatten)]
    pub publish: PublishTemplateArgs,
    /// Users, one personal stream each ({user} = u{i}).
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// Events to publish in total, each to a random user.
    #[arg(long, default_value_t = 1000)]
    events: u32,
    /// Publisher tasks (the events of user i go through publisher i mod P).
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Events per second in total (paced); flat out when absent.
    #[arg(long, value_name = "PER_SEC")]
    rate: Option<f64>,
    /// Events per publish request (each to its own random user); Herald's JSON body only.
    #[arg(long, default_value_t = 1)]
    batch: u32,
    /// Seed of the RNG that picks each event's user.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Bytes of data per event (at least the sequence number and timestamp).
    #[arg(long, default_value_t = 100)]
    data_bytes: usize,
    /// Value of {topic} in the templates (unused by the defaults).
    #[arg(long, default_value = "bench")]
    topic: String,
    /// Once publishing is over, stop waiting when nothing has arrived for this
    /// many milliseconds (events lost for good).
    #[arg(long, default_value_t = 5000)]
    quiet_ms: u64,
}

/// `owners[seq]`: the user each event goes to.
fn assign(users: usize, events: u32, seed: u64) -> Vec<u32> {
    let users = u32::try_from(users).unwrap_or(u32::MAX).max(1);
    let mut rng = StdRng::seed_from_u64(seed);
    (0..events).map(|_| rng.gen_range(0..users)).collect()
}

/// Per user, its sequence numbers in ascending order.
fn per_user(owners: &[u32], users: usize) -> Vec<Vec<u32>> {
    let mut lists = vec![Vec::new(); users];
    for (seq, &owner) in owners.iter().enumerate() {
        if let (Some(list), Ok(seq)) = (lists.get_mut(owner as usize), u32::try_from(seq)) {
            list.push(seq);
        }
    }
    lists
}

/// Per publisher, its sequence numbers in ascending order.
fn per_publisher(owners: &[u32], publishers: usize) -> Vec<Vec<u32>> {
    let mut lists = vec![Vec::new(); publishers];
    for (seq, &owner) in owners.iter().enumerate() {
        let p = owner as usize % publishers;
        if let (Some(list), Ok(seq)) = (lists.get_mut(p), u32::try_from(seq)) {
            list.push(seq);
        }
    }
    lists
}

pub(crate) async fn run(args: UnicastArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.common.timeout_secs);
    if args.users == 0 || args.events == 0 || args.publishers == 0 {
        return Err(usage(
            "--users, --events and --publishers must be at least 1",
        ));
    }
    if u32::try_from(args.users).is_err() {
        return Err(usage("--users is too large"));
    }
    if args.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        return Err(usage("--rate must be a positive number"));
    }
    args.publish.check_batch(args.batch, Addressing::User)?;
    let herald_body = args.publish.body_template(Addressing::User).is_none();
    let target = Target::parse(&args.common.url)?;
    let http = Publisher::client()?;
    let publisher = Arc::new(Publisher::new(
        &args.common.url,
        &args.publish,
        Addressing::User,
        &args.topic,
        http.clone(),
    )?);
    let (template, herald_subscribe) = args.subscribe.template(DEFAULT_USER_SUBSCRIBE);
    let targets = stream_targets(template, &args.common.url, &args.topic, args.users).await?;
    let owners: Arc<[u32]> = assign(args.users, args.events, args.seed).into();
    let expects = per_user(&owners, args.users)
        .into_iter()
        .map(Expect::List)
        .collect();
    let progress = Progress::new(args.common.json);

    // Open.
    let bar = progress.bar(args.users as u64, "opening");
    let fleet = Fleet::spawn(
        targets,
        expects,
        args.subscribe.open_concurrency,
        args.subscribe.ready_on_head,
        (deadline + Duration::from_secs(20)).into(),
    )?;
    fleet.wait_open(deadline, &bar).await;
    bar.finish_and_clear();
    let shared = fleet.shared.clone();
    let connected = shared.connected.load(Ordering::Relaxed);
    let failed = shared.failed.load(Ordering::Relaxed);
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
        Fleet::herald_users_ready(&http, &target, connected, deadline, &bar).await;
    } else {
        let settle = Duration::from_millis(args.subscribe.settle_ms);
        tokio::time::sleep(settle.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
    let acked = Arc::new(AckSet::new(args.events));
    let first_publish_us = shared.since_t0_us();
    let bar = progress.bar(u64::from(args.events), "publishing");
    let mut publish_error = None;
    if connected > 0 {
        let mut tasks = Vec::with_capacity(args.publishers);
        for seqs in per_publisher(&owners, args.publishers) {
            if seqs.is_empty() {
                continue;
            }
            let rate = args
                .rate
                .map(|r| r * seqs.len() as f64 / f64::from(args.events));
            let (publisher, owners, acked, bar) = (
                publisher.clone(),
                owners.clone(),
                acked.clone(),
                bar.clone(),
            );
            let (batch, data_bytes) = (args.batch, args.data_bytes);
            tasks.push(tokio::spawn(async move {
                publisher
                    .publish_all(
                        &seqs,
                        Some(&owners),
                        batch,
                        rate,
                        data_bytes,
                        &acked,
                        deadline,
                        &bar,
                    )
                    .await
            }));
        }
        for task in tasks {
            let result =
                match tokio::time::timeout_at((deadline + Duration::from_secs(5)).into(), task)
                    .await
                {
                    Ok(Ok(result)) => result.map(|_| ()),
                    Ok(Err(join)) => Err(anyhow::anyhow!("a publisher task failed: {join}")),
                    Err(_) => Err(anyhow::anyhow!("a publisher did not stop in time")),
                };
            if let Err(err) = result {
                note(&bar, &format!("a publisher stopped: {err:#}"));
                publish_error.get_or_insert(format!("{err:#}"));
            }
        }
    } else {
        publish_error = Some("no subscriber opened; nothing published".to_owned());
    }
    bar.finish_and_clear();
    let publish_end_us = shared.since_t0_us();
    let published = acked.count();

    // Wait for the deliveries.
    let bar = progress.bar(published, "delivering");
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
    let first_subscriber_error = fleet.first_error();
    let retried_opens = shared.retried_opens.load(Ordering::Relaxed);
    let trackers = fleet.stop().await;

    let mut delivery = DeliveryReport::new(
        stop_reason,
        Latency::of(&histogram),
        publish_error,
        first_subscriber_error,
    );
    // Every user has its own events: count the users each fault touched.
    delivery.users = Some(UsersAffected::default());
    let mut reported = 0u64;
    for tracker in &trackers {
        reported += delivery.add(tracker, &acked);
    }
    if trackers.len() < connected {
        // Subscribers that did not report back (should not happen): count
        // every acknowledged event as missing for them, once.
        let lost = u64::try_from(connected - trackers.len()).unwrap_or(u64::MAX);
        delivery.users.get_or_insert_with(Default::default).missing += lost;
        let unaccounted = published.saturating_sub(reported);
        delivery.expected += unaccounted;
        delivery.missing += unaccounted;
    }
    let last_receive_us = shared.last_receive_us.load(Ordering::Relaxed);
    delivery.set_times(published, first_publish_us, publish_end_us, last_receive_us);
    let report = Report {
        server_api: herald_subscribe && herald_body,
        subscribe_url: template.to_owned(),
        users: args.users,
        connected,
        failed,
        retried_opens,
        events: args.events,
        published,
        publishers: args.publishers,
        batch: args.batch,
        rate: args.rate,
        seed: args.seed,
        data_bytes: args.data_bytes,
        delivery,
    };

    write_report(out, args.common.json, &report, |out| {
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

/// The figures of one run (`--json` prints this).
#[derive(Debug, Serialize)]
struct Report {
    /// Herald's own subscribe route and publish body were used.
    server_api: bool,
    subscribe_url: String,
    users: usize,
    connected: usize,
    failed: usize,
    retried_opens: usize,
    events: u32,
    /// Events acknowledged (2xx) by the server.
    published: u64,
    publishers: usize,
    batch: u32,
    rate: Option<f64>,
    seed: u64,
    data_bytes: usize,
    /// What the users got (fields shared with fanout, flattened so the JSON
    /// keeps them at the top level), with the `users_*` counts.
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
            "users                    {} ({} open, {} failed, {} retried)",
            self.users, self.connected, self.failed, self.retried_opens
        )?;
        writeln!(
            out,
            "events                   {} published of {} by {} publishers, batch {}, {rate}, seed {}",
            self.published, self.events, self.publishers, self.batch, self.seed
        )?;
        self.delivery.write_table(out, "to the wrong user")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignment_is_deterministic_and_partitioned() {
        let a = assign(7, 500, 42);
        assert_eq!(a, assign(7, 500, 42));
        assert_ne!(a, assign(7, 500, 43));
        assert!(a.iter().all(|&u| u < 7));
        let users = per_user(&a, 7);
        assert_eq!(users.iter().map(Vec::len).sum::<usize>(), 500);
        assert!(users.iter().all(|l| l.windows(2).all(|w| w[0] < w[1])));
        let pubs = per_publisher(&a, 3);
        assert_eq!(pubs.iter().map(Vec::len).sum::<usize>(), 500);
        // Every user's events go through exactly one publisher.
        for (u, list) in users.iter().enumerate() {
            let p = &pubs[u % 3];
            assert!(list.iter().all(|s| p.binary_search(s).is_ok()));
        }
    }
}
