//! `herald bench fanout`: N subscribers on one topic, P publishers (one by
//! default) sharing its events.
//!
//! Each event's data is `"{seq} {publish_ts_us} {pad}"`. Every subscriber keeps
//! a bitset of the sequence numbers it has seen (E bits), so missing, duplicate
//! and out-of-order deliveries are counted exactly; latency is receive time
//! minus the publish timestamp (both from the same machine's clock).

use std::io::Write;

use clap::Args;

use crate::delivery::{Audience, DeliveryArgs, Plan};
use crate::template::Addressing;
use crate::tracker::Expect;
use crate::usage;

/// Flags of `herald bench fanout`.
#[derive(Debug, Args)]
pub(crate) struct FanoutArgs {
    #[command(flatten)]
    pub delivery: DeliveryArgs,
    /// Subscribers on the topic.
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// Publisher tasks, each with its own connection: event seq goes
    /// through publisher seq mod P, each sending its next request when the
    /// last is acknowledged (order is checked per publisher).
    #[arg(long, default_value_t = 1)]
    publishers: u32,
    /// Events per publish request, Herald's JSON body only
    /// [default: 100 flat out, 1 paced or with --publish-body].
    #[arg(long)]
    batch: Option<u32>,
}

pub(crate) async fn run(args: FanoutArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let events = args.delivery.events;
    if args.subscribers == 0 || events == 0 || args.publishers == 0 {
        return Err(usage(
            "--subscribers, --events and --publishers must be at least 1",
        ));
    }
    let herald_body = args
        .delivery
        .server
        .publish
        .body_template(Addressing::Topic)
        .is_none();
    let batch = args
        .batch
        .unwrap_or(match (herald_body, args.delivery.rate) {
            (true, None) => 100,
            _ => 1,
        });
    let plan = Plan {
        audience: Audience::Topic,
        expects: vec![
            Expect::All {
                events,
                publishers: args.publishers,
            };
            args.subscribers
        ],
        sends: shares(events, args.publishers),
        batch,
    };
    crate::delivery::run(&args.delivery, plan, out).await
}

/// Per publisher, its events in order: seq to publisher seq mod `publishers`
/// (the lanes the subscribers check order in, see [`Expect::All`]).
fn shares(events: u32, publishers: u32) -> Vec<Vec<u32>> {
    (0..publishers.max(1))
        .map(|p| (p..events).step_by(publishers.max(1) as usize).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::shares;

    #[test]
    fn publishers_share_the_events_by_seq_mod_p() {
        assert_eq!(shares(3, 1), vec![vec![0, 1, 2]]);
        assert_eq!(shares(7, 3), vec![vec![0, 3, 6], vec![1, 4], vec![2, 5]]);
        // More publishers than events: the extra ones send nothing.
        assert_eq!(shares(1, 2), vec![vec![0], vec![]]);
    }
}
