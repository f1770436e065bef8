//! `herald bench fanout`: N subscribers on one topic, one publisher.
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
    /// Events per publish request, Herald's JSON body only
    /// [default: 100 flat out, 1 paced or with --publish-body].
    #[arg(long)]
    batch: Option<u32>,
}

pub(crate) async fn run(args: FanoutArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let events = args.delivery.events;
    if args.subscribers == 0 || events == 0 {
        return Err(usage("--subscribers and --events must be at least 1"));
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
        expects: vec![Expect::All(events); args.subscribers],
        // One publisher sends every event, in order.
        sends: vec![(0..events).collect()],
        batch,
    };
    crate::delivery::run(&args.delivery, plan, out).await
}
