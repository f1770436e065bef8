//! `herald bench unicast`: N subscribers, each on its own personal stream;
//! P publishers send E events in total, each to a random user.
//!
//! The addressee of every event is drawn up front from a seeded RNG, so every
//! subscriber knows exactly which sequence numbers are its own. Events for one
//! user all go through the same publisher (user mod P), which waits for each
//! acknowledgement before the next request: per user, publish order is
//! sequence order, and out-of-order deliveries are well defined.

use std::io::Write;
use std::sync::Arc;

use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::delivery::{Audience, DeliveryArgs, Plan};
use crate::tracker::Expect;
use crate::usage;

/// Flags of `herald bench unicast`.
#[derive(Debug, Args)]
#[command(
    mut_arg("events", |a| a.help("Events to publish in total, each to a random user")),
    mut_arg("rate", |a| a.help("Events per second in total (paced); flat out when absent")),
    mut_arg("topic", |a| a.help("Value of {topic} in the templates (unused by the defaults)")),
)]
pub(crate) struct UnicastArgs {
    #[command(flatten)]
    pub delivery: DeliveryArgs,
    /// Users, one personal stream each ({user} = u{i}).
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// Publisher tasks (the events of user i go through publisher i mod P).
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Events per publish request (each to its own random user); Herald's JSON body only.
    #[arg(long, default_value_t = 1)]
    batch: u32,
    /// Seed of the RNG that picks each event's user.
    #[arg(long, default_value_t = 1)]
    seed: u64,
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
    let events = args.delivery.events;
    if args.users == 0 || events == 0 || args.publishers == 0 {
        return Err(usage(
            "--users, --events and --publishers must be at least 1",
        ));
    }
    if u32::try_from(args.users).is_err() {
        return Err(usage("--users is too large"));
    }
    let owners: Arc<[u32]> = assign(args.users, events, args.seed).into();
    let plan = Plan {
        expects: per_user(&owners, args.users)
            .into_iter()
            .map(Expect::List)
            .collect(),
        sends: per_publisher(&owners, args.publishers),
        batch: args.batch,
        audience: Audience::Users {
            owners,
            seed: args.seed,
        },
    };
    crate::delivery::run(&args.delivery, plan, out).await
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
