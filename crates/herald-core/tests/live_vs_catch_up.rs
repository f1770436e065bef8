//! Live delivery and catch-up deliver the same events to every connection.
//!
//! Live delivery goes through the hub's subscription index; catch-up (resume,
//! slow readers) reads the log with the connection's [`Filter`]. Random
//! subscriptions (exact topics, `prefix*` patterns, `*`, personal topics, a
//! `types` filter) and random events (several topics, broadcasts, types) are
//! run through both paths, and each connection must get the same set from
//! both — and the set the documented rule gives (`expected` below, written
//! from the API contract, not from the code). Changing either path alone
//! makes this fail.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use herald_core::{
    Connection, EventId, EventLog, Filter, Hub, HubConfig, NewEvent, Resume, Subscriber, Topic,
    TopicPattern,
};
use herald_log::{MemoryLog, Retention};
use herald_sse::Parser;
use proptest::prelude::*;

/// Topics events are published to (chosen so prefixes overlap, at several
/// depths, and so some cuts of a topic fall inside a multi-byte character).
const TOPICS: &[&str] = &[
    "a", "a/b", "a/c", "ab", "b", "b/a", "user/1", "user/2", "a/b/c", "a/b/cd", "a/bc", "a/b/c/d",
    "é", "é/a", "éa",
];
/// Subscription patterns besides the exact topics: prefixes of one to four
/// segments, ending on a `/` or inside a segment, nested in each other.
const PATTERNS: &[&str] = &[
    "a*", "a/*", "b/*", "user/*", "*", "a/b*", "a/b/*", "a/b/c*", "a/b/c/*", "ab*", "é*", "é/*",
];
/// Event types (None is dispatched as `message`).
const TYPES: &[&str] = &["t1", "t2"];

#[derive(Debug, Clone)]
struct Sub {
    user: Option<&'static str>,
    patterns: Vec<&'static str>,
    types: Option<Vec<&'static str>>,
}

#[derive(Debug, Clone)]
struct Ev {
    topics: Vec<&'static str>,
    broadcast: bool,
    event_type: Option<&'static str>,
}

fn sub() -> impl Strategy<Value = Sub> {
    let any_pattern = prop::sample::select([TOPICS, PATTERNS].concat());
    let any_type = prop::sample::select(vec!["message", "t1", "t2"]);
    (
        prop::option::of(prop::sample::select(vec!["1", "2"])),
        prop::collection::vec(any_pattern, 0..6),
        prop::option::of(prop::collection::vec(any_type, 1..3)),
    )
        .prop_filter("a subscription needs a topic or a user", |(user, p, _)| {
            user.is_some() || !p.is_empty()
        })
        .prop_map(|(user, patterns, types)| Sub {
            user,
            patterns,
            types,
        })
}

fn ev() -> impl Strategy<Value = Ev> {
    (
        prop::collection::vec(prop::sample::select(TOPICS.to_vec()), 0..4),
        any::<bool>(),
        prop::option::of(prop::sample::select(TYPES.to_vec())),
    )
        .prop_map(|(topics, broadcast, event_type)| Ev {
            broadcast: broadcast || topics.is_empty(),
            topics,
            event_type,
        })
}

/// The contract's rule, independently of `Filter`: the type passes the
/// `types` filter (untyped = `message`), and the event is a broadcast or one
/// of its topics is the personal topic, equal to an exact subscription,
/// starts with a pattern's prefix, or the pattern is `*`.
fn expected(sub: &Sub, ev: &Ev) -> bool {
    let type_ok = sub.types.as_ref().is_none_or(|types| {
        types
            .iter()
            .any(|t| *t == ev.event_type.unwrap_or("message"))
    });
    let personal = sub.user.map(|u| format!("user/{u}"));
    let topic_ok = |topic: &str| {
        personal.as_deref() == Some(topic)
            || sub.patterns.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => topic.starts_with(prefix),
                None => *p == topic,
            })
    };
    type_ok && (ev.broadcast || ev.topics.iter().any(|t| topic_ok(t)))
}

fn subscriber(sub: &Sub, resume: Resume) -> Subscriber {
    let mut patterns: Vec<TopicPattern> = sub
        .patterns
        .iter()
        .map(|p| TopicPattern::parse(p).unwrap())
        .collect();
    if let Some(user) = sub.user {
        patterns.push(TopicPattern::Exact(Topic::for_user(user).unwrap()));
    }
    let types = sub
        .types
        .as_ref()
        .map(|t| t.iter().map(|s| (*s).to_owned()).collect());
    Subscriber {
        user: sub.user.map(Arc::from),
        filter: Filter::new(patterns, types),
        resume,
        expires_at: None,
    }
}

fn new_event(ev: &Ev, n: usize) -> NewEvent {
    let topics = ev.topics.iter().map(|t| Topic::new(t).unwrap()).collect();
    NewEvent {
        broadcast: ev.broadcast,
        event_type: ev.event_type.map(str::to_owned),
        ..NewEvent::new(topics, format!("event {n}"))
    }
}

/// Every event id the connection writes until it has nothing more to say
/// (time is paused: the timeout fires as soon as every task is idle).
async fn drain(conn: &mut Connection) -> Vec<EventId> {
    let mut parser = Parser::new();
    let mut ids = Vec::new();
    while let Ok(Some(chunk)) =
        tokio::time::timeout(Duration::from_secs(5), conn.next_chunk()).await
    {
        for event in parser.feed(&chunk) {
            assert!(
                !event.event.starts_with("herald."),
                "unexpected {}",
                event.event
            );
            ids.push(event.id.parse().unwrap());
        }
    }
    ids
}

/// Runs both paths; returns, per subscription, (live ids, catch-up ids, expected ids).
async fn deliver(subs: &[Sub], events: &[Ev], batch: usize) -> Vec<[Vec<EventId>; 3]> {
    let log = Arc::new(MemoryLog::new(Retention::default()));
    // An event before everything else: catch-up resumes after it.
    let start = log
        .append(vec![new_event(
            &Ev {
                topics: vec!["before"],
                broadcast: false,
                event_type: None,
            },
            0,
        )])
        .await
        .unwrap()[0]
        .id;
    let config = HubConfig {
        // Room for every event: live streams never fall back to catch-up.
        queue_capacity: 10_000,
        ..HubConfig::default()
    };
    let hub = Hub::new(log.clone() as Arc<dyn EventLog>, config);
    let dispatcher = tokio::spawn(hub.clone().run_dispatcher());
    let mut live: Vec<Connection> = subs
        .iter()
        .map(|s| hub.connect(subscriber(s, Resume::Live)))
        .collect();
    let mut stored = Vec::new();
    for chunk in events.chunks(batch.max(1)) {
        let batch = chunk
            .iter()
            .enumerate()
            .map(|(i, e)| new_event(e, stored.len() + i + 1))
            .collect();
        stored.extend(log.append(batch).await.unwrap().into_iter().map(|a| a.id));
    }
    let dispatched = tokio::time::timeout(Duration::from_secs(60), async {
        while hub.counters.dispatched.load(Ordering::SeqCst) < events.len() as u64 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert!(
        dispatched.is_ok(),
        "the dispatcher did not read every event"
    );
    let mut out = Vec::new();
    for (sub, conn) in subs.iter().zip(&mut live) {
        let live_ids = drain(conn).await;
        let mut replay = hub.connect(subscriber(sub, Resume::After(start)));
        let catch_up_ids = drain(&mut replay).await;
        let expected_ids = events
            .iter()
            .zip(&stored)
            .filter(|(e, _)| expected(sub, e))
            .map(|(_, id)| *id)
            .collect();
        out.push([live_ids, catch_up_ids, expected_ids]);
    }
    dispatcher.abort();
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn live_and_catch_up_deliver_the_same_events(
        subs in prop::collection::vec(sub(), 1..6),
        events in prop::collection::vec(ev(), 1..30),
        batch in 1usize..8,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let results = runtime.block_on(deliver(&subs, &events, batch));
        for (sub, [live, catch_up, expected]) in subs.iter().zip(results) {
            let unique: BTreeSet<_> = live.iter().collect();
            prop_assert_eq!(unique.len(), live.len(), "live duplicates for {:?}", sub);
            prop_assert_eq!(&live, &catch_up, "live vs catch-up for {:?}", sub);
            prop_assert_eq!(&live, &expected, "live vs the rule for {:?}", sub);
        }
    }
}
