//! `MemoryLog`'s byte accounting against the memory it really uses: an
//! event to 380,000 users, measured as the growth of this process's RSS.
//! One test in its own binary, so no other test allocates meanwhile.

#![allow(clippy::unwrap_used)]

use herald_core::{EventLog, NewEvent, Topic};
use herald_log::{MemoryLog, Retention};

const USERS: usize = 380_000;

/// This process's resident set, in bytes (Linux).
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// An event to 380,000 users of its own (`user/{round}-{i}`), with 100 KB
/// of data: the topics, not the data, are what it costs.
fn to_many_users(round: usize) -> NewEvent {
    let topics = (0..USERS)
        .map(|i| Topic::for_user(&format!("{round}-{i}")).unwrap())
        .collect();
    NewEvent::new(topics, "x".repeat(100_000))
}

#[tokio::test]
async fn bytes_counted_match_the_memory_held_and_bound_it() {
    // Counted within 2x of the RSS it costs.
    let log = MemoryLog::new(Retention::default());
    let before = rss();
    for round in 0..3 {
        log.append(vec![to_many_users(round)]).await.unwrap();
    }
    let grown = rss().saturating_sub(before) as f64;
    let counted = log.bytes() as f64;
    let ratio = grown / counted;
    println!(
        "3 events to {USERS} users: RSS +{grown} bytes, counted {counted} (RSS/counted {ratio:.2})"
    );
    assert!(
        (0.5..=2.0).contains(&ratio),
        "RSS grew {grown} bytes for {counted} counted (ratio {ratio:.2})"
    );
    let one_event = log.bytes() / 3;
    drop(log);

    // Retention by bytes then bounds the memory: a budget of 2.5 events
    // holds 2, and RSS stays near it however many are published.
    let max_bytes = one_event * 5 / 2;
    let log = MemoryLog::new(Retention {
        max_bytes,
        ..Retention::default()
    });
    let before = rss();
    for round in 3..13 {
        log.append(vec![to_many_users(round)]).await.unwrap();
        assert!(log.len() <= 2, "{} events held", log.len());
        assert!(log.bytes() <= max_bytes);
    }
    let grown = rss().saturating_sub(before);
    println!("10 events, budget {max_bytes}: RSS +{grown} bytes");
    assert!(
        grown <= 2 * max_bytes,
        "RSS grew {grown} bytes with a budget of {max_bytes}"
    );
}
