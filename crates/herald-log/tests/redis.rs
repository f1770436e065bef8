//! The Redis log against real `redis-server` processes: ids and epochs
//! across data loss, idempotency and ids across nodes, `replicas=N`, and
//! faults (Redis killed and restarted, a wedged tail connection, Redis down
//! at start-up). The conformance suite runs on it too (`conformance.rs`).

#![allow(clippy::unwrap_used)]

mod common;

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_core::{EventId, EventLog, Filter, LogError, Position};
use herald_log::redis::testing::{info, RedisServer};
use herald_log::redis::{RedisDurability, RedisEndpoint, RedisLog, RedisOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::redis_server::unique_prefix;
use common::{datas, ids, keyed, on, read_to_end};

fn options(prefix: &str) -> RedisOptions {
    RedisOptions {
        prefix: prefix.to_owned(),
        ..RedisOptions::default()
    }
}

fn log_on(endpoint: RedisEndpoint, options: RedisOptions) -> Arc<RedisLog> {
    Arc::new(RedisLog::new(endpoint, options))
}

/// Appends `n` events on `topic` one batch each, returning their ids.
async fn append_each(log: &RedisLog, topic: &str, n: usize) -> Vec<EventId> {
    let mut out = Vec::new();
    for i in 0..n {
        let r = log.append(vec![on(topic, &i.to_string())]).await.unwrap();
        out.push(r[0].id);
    }
    out
}

/// Polls `check` every 50 ms until it holds or `limit` passes.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every event after `from`, paging, with the gap of the first page.
async fn all_after(log: &RedisLog, from: Position) -> (Vec<EventId>, bool) {
    let (events, gap, _) = read_to_end(log, from, &Filter::everything(), 7).await;
    (ids(&events), gap.is_some())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_redis_starts_a_new_epoch_above_every_earlier_id() {
    let server = RedisServer::start();
    let prefix = unique_prefix("flush");
    let log = log_on(server.endpoint(), options(&prefix));
    let before = append_each(&log, "a", 3).await;

    server.cmd("FLUSHALL");
    let after = append_each(&log, "a", 2).await;
    assert!(
        after[0] > before[2],
        "new ids {after:?} above old ones {before:?}"
    );

    // Every old id is from a lost history: a gap, then the new events.
    for &old in &before {
        let (got, gap) = all_after(&log, Position::After(old)).await;
        assert!(gap, "no gap after {old}, an id of the flushed history");
        assert_eq!(got, after);
    }
    // A node that never saw the old history says the same.
    let other = log_on(server.endpoint(), options(&prefix));
    let (got, gap) = all_after(&other, Position::After(before[1])).await;
    assert!(gap);
    assert_eq!(got, after);
    // And the tail noticed the new history.
    eventually(
        Duration::from_secs(5),
        "the tail counts the new epoch",
        || async { log.epoch_changes() >= 1 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_in_range_that_is_not_an_entry_is_a_gap() {
    let server = RedisServer::start();
    let prefix = unique_prefix("hole");
    let log = log_on(server.endpoint(), options(&prefix));
    let first = append_each(&log, "a", 1).await[0];
    tokio::time::sleep(Duration::from_millis(5)).await;
    let rest = append_each(&log, "a", 2).await;
    // Ids come from the clock: 5 ms later is far more than one id later.
    let hole = EventId(first.0 + 1);
    assert!(hole < rest[0]);
    for reader in [log.clone(), log_on(server.endpoint(), options(&prefix))] {
        let (got, gap) = all_after(&reader, Position::After(hole)).await;
        assert!(gap, "no gap after {hole}, which is no entry of the stream");
        assert_eq!(got, [vec![first], rest.clone()].concat());
        // A real entry resumes exactly.
        let (got, gap) = all_after(&reader, Position::After(first)).await;
        assert!(!gap);
        assert_eq!(got, rest);
    }
}

/// Copies a directory tree (the server's AOF directory).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_from_an_older_copy_gives_a_gap_for_lost_ids_and_new_ids_above_them() {
    let mut server = RedisServer::start_with_aof();
    let prefix = unique_prefix("restore");
    let log = log_on(server.endpoint(), options(&prefix));
    let kept = append_each(&log, "a", 3).await;
    // The copy a restore brings back: everything up to here.
    let aof = server.dir().join("appendonlydir");
    let copy = server.dir().join("aof-copy");
    copy_dir(&aof, &copy);
    let lost = append_each(&log, "a", 2).await;

    server.kill();
    std::fs::remove_dir_all(&aof).unwrap();
    copy_dir(&copy, &aof);
    server.restart();

    // The log's tail comes back, finds its last id gone, and says so.
    eventually(
        Duration::from_secs(10),
        "the tail notices the lost history",
        || async { log.epoch_changes() >= 1 && log.ready().await.is_ok() },
    )
    .await;
    let fresh = append_each(&log, "a", 2).await;
    assert!(
        fresh[0] > lost[1],
        "new ids {fresh:?} must stay above the lost {lost:?}"
    );
    // A node that never saw the lost ids issues above them too (the clock).
    let other = log_on(server.endpoint(), options(&prefix));
    let other_id = append_each(&other, "a", 1).await[0];
    assert!(other_id > lost[1]);
    let new_events = [fresh.clone(), vec![other_id]].concat();

    for reader in [&log, &other] {
        for &gone in &lost {
            let (got, gap) = all_after(reader, Position::After(gone)).await;
            assert!(gap, "no gap after the lost id {gone}");
            assert_eq!(got, [kept.clone(), new_events.clone()].concat());
        }
        // The newest id the copy kept resumes exactly.
        let (got, gap) = all_after(reader, Position::After(kept[2])).await;
        assert!(!gap);
        assert_eq!(got, new_events);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_ids_and_idempotency_keys() {
    let server = RedisServer::start();
    let prefix = unique_prefix("nodes");
    let a = log_on(server.endpoint(), options(&prefix));
    let b = log_on(server.endpoint(), options(&prefix));
    let mut b_head = b.head();
    let b_start = *b_head.borrow_and_update();
    let _ = b.ready().await;

    let first = a.append(vec![keyed("t", "original", "k1")]).await.unwrap();
    assert!(!first[0].duplicate);
    // B's tail fetches it, with the same id.
    tokio::time::timeout(
        Duration::from_secs(5),
        b_head.wait_for(|h| *h == Some(first[0].id)),
    )
    .await
    .expect("B's head reaches A's event")
    .unwrap();
    let from = b_start.map_or(Position::Oldest, Position::After);
    let (events, _, _) = read_to_end(&*b, from, &Filter::everything(), 10).await;
    assert_eq!(ids(&events), vec![first[0].id]);
    assert_eq!(datas(&events), ["original"]);

    // The retry lands on B: the original id, nothing stored.
    let retry = b.append(vec![keyed("t", "retry", "k1")]).await.unwrap();
    assert!(retry[0].duplicate);
    assert_eq!(retry[0].id, first[0].id);
    let (events, _, _) = read_to_end(&*a, Position::Oldest, &Filter::everything(), 10).await;
    assert_eq!(datas(&events), ["original"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_1_acknowledges_with_a_replica_and_refuses_without_one() {
    let primary = RedisServer::start();
    let replica_args = [
        "--save",
        "",
        "--appendonly",
        "no",
        "--replicaof",
        "127.0.0.1",
    ];
    let port = primary.port().to_string();
    let mut replica = RedisServer::start_with(&[&replica_args[..], &[port.as_str()]].concat());
    eventually(
        Duration::from_secs(10),
        "the replica is connected",
        || async { info(primary.port(), "slave0").is_some_and(|s| s.contains("state=online")) },
    )
    .await;
    // Generous: the machine is shared, and a replica under load acks late.
    let wait = Duration::from_millis(2000);
    let log = log_on(
        primary.endpoint(),
        RedisOptions {
            durability: RedisDurability::Replicas(1),
            wait_timeout: wait,
            ..options(&unique_prefix("wait"))
        },
    );
    let acked = log.append(vec![keyed("a", "acked", "k0")]).await.unwrap();
    assert!(!acked[0].duplicate);

    replica.kill();
    let started = Instant::now();
    let err = log
        .append(vec![keyed("a", "unacked", "k1")])
        .await
        .expect_err("no replica: not acknowledged");
    let took = started.elapsed();
    assert!(
        matches!(&err, LogError::NotAcknowledged(m) if m.contains("replicas")),
        "{err}"
    );
    assert!(
        took >= wait && took < wait + Duration::from_secs(3),
        "{took:?}"
    );

    // It is on the primary; with the replica back, the retry gets its id.
    let (events, _, _) = read_to_end(&*log, Position::Oldest, &Filter::everything(), 10).await;
    assert_eq!(datas(&events), ["acked", "unacked"]);
    replica.restart();
    eventually(Duration::from_secs(10), "the replica is back", || async {
        info(primary.port(), "slave0").is_some_and(|s| s.contains("state=online"))
    })
    .await;
    let retry = log.append(vec![keyed("a", "unacked", "k1")]).await.unwrap();
    assert!(retry[0].duplicate);
    assert_eq!(retry[0].id, events[1].id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_then_restarted_with_its_aof_loses_nothing_acknowledged() {
    let mut server = RedisServer::start_with_aof();
    let prefix = unique_prefix("crash");
    let log = log_on(server.endpoint(), options(&prefix));
    let other = log_on(server.endpoint(), options(&prefix));
    let before = append_each(&log, "a", 3).await;
    eventually(
        Duration::from_secs(5),
        "the other node's tail is current",
        || async { other.ready().await.is_ok() && *other.head().borrow() == Some(before[2]) },
    )
    .await;
    let dispatched = Position::After(before[2]);

    server.kill();
    let started = Instant::now();
    let err = log
        .append(vec![on("a", "lost?")])
        .await
        .expect_err("Redis is down");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Nothing was acknowledged, whatever the error says about storage.
    assert!(matches!(
        err,
        LogError::Unavailable(_) | LogError::NotAcknowledged(_)
    ));
    let started = Instant::now();
    assert!(log.ready().await.is_err(), "ready() while Redis is down");
    assert!(started.elapsed() < Duration::from_secs(5));
    // A second try is a fresh connection attempt: refused at once.
    let started = Instant::now();
    let err = log
        .append(vec![on("a", "refused")])
        .await
        .expect_err("Redis is down");
    assert!(
        matches!(err, LogError::Unavailable(ref m) if m.contains("nothing was stored")),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));

    server.restart();
    eventually(
        Duration::from_secs(10),
        "both logs are ready again",
        || async { log.ready().await.is_ok() && other.ready().await.is_ok() },
    )
    .await;
    let after = append_each(&log, "a", 5).await;
    let (kept, _, _) = read_to_end(&*log, Position::Oldest, &Filter::everything(), 10).await;
    assert_eq!(
        &ids(&kept)[..3],
        &before[..],
        "the acknowledged events survived"
    );
    // Both tails deliver every event appended since, nothing skipped.
    for node in [&log, &other] {
        eventually(
            Duration::from_secs(5),
            "the tail reaches the newest",
            || async { *node.head().borrow() == Some(after[4]) },
        )
        .await;
        let (got, gap) = all_after(node, dispatched).await;
        assert!(!gap);
        // The event of the failed append may or may not be there (it was
        // never acknowledged); every acknowledged one is, in order.
        let got: Vec<EventId> = got.into_iter().filter(|id| after.contains(id)).collect();
        assert_eq!(got, after);
        assert!(node.tail_reconnects() >= 1);
    }
}

/// A TCP proxy to `target` that can stop forwarding on the connections it
/// holds (a wedged connection: open, silent), or on every connection.
struct Proxy {
    port: u16,
    /// Connections numbered below this forward nothing.
    frozen_below: Arc<AtomicU64>,
    next: Arc<AtomicU64>,
    stopped: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let proxy = Self {
            port,
            frozen_below: Arc::new(AtomicU64::new(0)),
            next: Arc::new(AtomicU64::new(0)),
            stopped: Arc::new(AtomicBool::new(false)),
        };
        let (frozen_below, next, stopped) = (
            proxy.frozen_below.clone(),
            proxy.next.clone(),
            proxy.stopped.clone(),
        );
        tokio::spawn(async move {
            while !stopped.load(Ordering::Relaxed) {
                let Ok(Ok((client, _))) =
                    tokio::time::timeout(Duration::from_millis(100), listener.accept()).await
                else {
                    continue;
                };
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", target)).await else {
                    continue;
                };
                let number = next.fetch_add(1, Ordering::Relaxed);
                let (cr, cw) = client.into_split();
                let (ur, uw) = upstream.into_split();
                for (mut from, mut to) in [
                    (
                        Box::new(cr) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                        Box::new(uw) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
                    ),
                    (Box::new(ur), Box::new(cw)),
                ] {
                    let (frozen_below, stopped) = (frozen_below.clone(), stopped.clone());
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        while !stopped.load(Ordering::Relaxed) {
                            if number < frozen_below.load(Ordering::Relaxed) {
                                // Wedged: hold the socket, move nothing.
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                continue;
                            }
                            match tokio::time::timeout(
                                Duration::from_millis(20),
                                from.read(&mut buf),
                            )
                            .await
                            {
                                Err(_) => continue,
                                Ok(Ok(0)) | Ok(Err(_)) => return,
                                Ok(Ok(n)) => {
                                    if to.write_all(&buf[..n]).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    });
                }
            }
        });
        proxy
    }

    /// The connections open now stop forwarding; new ones work.
    fn wedge_open_connections(&self) {
        self.frozen_below
            .store(self.next.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// No connection forwards, also new ones.
    fn wedge_everything(&self) {
        self.frozen_below.store(u64::MAX, Ordering::Relaxed);
    }

    /// Connections made from now on forward again (wedged ones stay so).
    fn unwedge_new_connections(&self) {
        self.frozen_below
            .store(self.next.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_tail_is_detected_within_seconds_and_reconnected() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port()).await;
    let prefix = unique_prefix("wedge");
    let through_proxy =
        RedisEndpoint::parse(&format!("redis://127.0.0.1:{}", proxy.port), None).unwrap();
    let tail_block = Duration::from_millis(200);
    let log = log_on(
        through_proxy,
        RedisOptions {
            tail_block,
            ..options(&prefix)
        },
    );
    let direct = log_on(server.endpoint(), options(&prefix));
    let first = append_each(&direct, "a", 1).await[0];
    eventually(
        Duration::from_secs(5),
        "the proxied tail is current",
        || async { log.ready().await.is_ok() && *log.head().borrow() == Some(first) },
    )
    .await;

    // The tail's connection goes silent: events appended meanwhile must
    // still arrive, once the tail has noticed and connected again.
    proxy.wedge_open_connections();
    let started = Instant::now();
    let during = append_each(&direct, "a", 3).await;
    eventually(Duration::from_secs(10), "the wedge is detected", || async {
        log.tail_wedged() >= 1
    })
    .await;
    let detected = started.elapsed();
    assert!(
        detected >= tail_block && detected < tail_block + Duration::from_secs(6),
        "detected after {detected:?}"
    );
    eventually(Duration::from_secs(10), "the tail catches up", || async {
        *log.head().borrow() == Some(during[2])
    })
    .await;
    assert!(log.tail_reconnects() >= 1);
    let (got, gap) = all_after(&log, Position::After(first)).await;
    assert!(!gap);
    assert_eq!(got, during);

    // Everything silent, new connections too: ready() fails within seconds.
    proxy.wedge_everything();
    let started = Instant::now();
    eventually(Duration::from_secs(10), "ready() fails", || async {
        log.ready().await.is_err()
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    // A publish through a Redis that accepts connections but never answers
    // is refused within the append's deadline, not left hanging.
    let started = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(10), log.append(vec![on("a", "silent")]))
        .await
        .expect("the publish is not left hanging")
        .expect_err("Redis is silent");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}: {err}",
        started.elapsed()
    );
    let while_down = append_each(&direct, "a", 2).await;
    proxy.unwedge_new_connections();
    eventually(
        Duration::from_secs(15),
        "ready again and current",
        || async { log.ready().await.is_ok() && *log.head().borrow() == Some(while_down[1]) },
    )
    .await;
    let (got, gap) = all_after(&log, Position::After(during[2])).await;
    assert!(!gap);
    assert_eq!(got, while_down);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_while_redis_is_down_serves_once_it_is_up() {
    // A port with nothing on it, then a server on that port.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let endpoint = RedisEndpoint::parse(&format!("redis://127.0.0.1:{port}"), None).unwrap();
    let log = log_on(endpoint, options(&unique_prefix("late")));
    let started = Instant::now();
    assert!(log.connect().await.is_err());
    assert!(started.elapsed() < Duration::from_secs(3));
    let start = log.head().borrow().expect("a start position");
    assert!(log.append(vec![on("a", "x")]).await.is_err());
    assert!(log.ready().await.is_err());

    let server = RedisServer::start_on(port);
    eventually(
        Duration::from_secs(10),
        "ready once Redis is up",
        || async { log.ready().await.is_ok() },
    )
    .await;
    let appended = append_each(&log, "a", 2).await;
    // The dispatcher reads after the start position: no gap, every event.
    let (got, gap) = all_after(&log, Position::After(start)).await;
    assert!(!gap);
    assert_eq!(got, appended);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_that_are_not_events_are_skipped_and_counted() {
    let server = RedisServer::start();
    let prefix = unique_prefix("foreign");
    let log = log_on(server.endpoint(), options(&prefix));
    let first = append_each(&log, "a", 1).await[0];
    // Another writer's entry, with an id above ours.
    let foreign = first.0 + 10;
    server.cmd(&format!(
        "XADD {{{prefix}}}:events {foreign}-0 temperature 21"
    ));
    let next = append_each(&log, "a", 1).await[0];
    assert!(next.0 > foreign);
    let (got, gap) = all_after(&log, Position::After(first)).await;
    assert!(!gap);
    assert_eq!(got, vec![next]);
    assert!(log.entries_skipped() >= 1);
}

#[test]
fn redis_durability_parses() {
    assert_eq!("primary".parse(), Ok(RedisDurability::Primary));
    assert_eq!("replicas=2".parse(), Ok(RedisDurability::Replicas(2)));
    for bad in [
        "",
        "replicas",
        "replicas=0",
        "replicas=x",
        "all",
        "replicas=101",
    ] {
        assert!(bad.parse::<RedisDurability>().is_err(), "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_stay_above_what_a_node_has_seen_even_when_redis_lost_it_and_its_clock_is_behind() {
    let server = RedisServer::start();
    let prefix = unique_prefix("floor");
    let log = log_on(server.endpoint(), options(&prefix));
    let first = append_each(&log, "a", 1).await[0];
    // An event an hour ahead of the clock (another node's, written while
    // Redis's clock was ahead): this node's tail fetches it.
    let ahead = first.0 + 3_600_000_000;
    server.cmd(&format!(
        "XADD {{{prefix}}}:events {ahead}-0 e {first} s 1 d ahead b 1"
    ));
    eventually(Duration::from_secs(5), "the tail fetches it", || async {
        *log.head().borrow() == Some(EventId(ahead))
    })
    .await;
    // Redis loses everything; the clock alone would give ids below `ahead`.
    server.cmd("FLUSHALL");
    let next = append_each(&log, "a", 1).await[0];
    assert!(
        next.0 > ahead,
        "{next} must be above {ahead}, which this node handed out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_sentinels_a_failover_keeps_what_replicas_1_acknowledged() {
    let mut primary = RedisServer::start();
    let port = primary.port().to_string();
    let replica = RedisServer::start_with(&[
        "--save",
        "",
        "--appendonly",
        "no",
        "--replicaof",
        "127.0.0.1",
        &port,
    ]);
    eventually(
        Duration::from_secs(10),
        "the replica is in sync",
        || async { info(primary.port(), "slave0").is_some_and(|s| s.contains("state=online")) },
    )
    .await;
    let service = "herald-test";
    let sentinels: Vec<RedisServer> = (0..3)
        .map(|_| RedisServer::start_sentinel(primary.port(), service))
        .collect();
    eventually(
        Duration::from_secs(20),
        "the sentinels know each other and the replica",
        || async {
            sentinels.iter().all(|s| {
                info(s.port(), "master0")
                    .is_some_and(|m| m.contains("slaves=1") && m.contains("sentinels=3"))
            })
        },
    )
    .await;
    let url = format!(
        "redis+sentinel://{}/{service}",
        sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port()))
            .collect::<Vec<_>>()
            .join(",")
    );
    let endpoint = RedisEndpoint::parse(&url, None).unwrap();
    let prefix = unique_prefix("sentinel");
    let acked_log = log_on(
        endpoint.clone(),
        RedisOptions {
            durability: RedisDurability::Replicas(1),
            wait_timeout: Duration::from_secs(3),
            ..options(&prefix)
        },
    );
    let mut acked = append_each(&acked_log, "a", 3).await;
    // A log whose connections are made before the failover.
    let log = log_on(endpoint, options(&prefix));
    acked.extend(append_each(&log, "a", 1).await);
    eventually(
        Duration::from_secs(10),
        "the last one is on the replica",
        || async {
            let on_primary = info(primary.port(), "master_repl_offset");
            let on_replica = info(replica.port(), "slave_repl_offset");
            on_primary.is_some() && on_primary == on_replica
        },
    )
    .await;

    primary.kill();
    // Publishes fail until the sentinels promote the replica, then work
    // through it (the log asks the sentinels again after the failure).
    let mut after = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while after.is_empty() {
        assert!(
            Instant::now() < deadline,
            "no publish succeeded within 30 s of the primary's death"
        );
        if let Ok(r) = log.append(vec![on("a", "after")]).await {
            after.push(r[0].id);
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert_eq!(
        info(replica.port(), "role").as_deref(),
        Some("master"),
        "the publish went to the promoted replica"
    );
    let (events, _, _) = read_to_end(&*log, Position::Oldest, &Filter::everything(), 10).await;
    assert_eq!(
        ids(&events),
        [acked, after].concat(),
        "every acknowledged event survived"
    );
    eventually(
        Duration::from_secs(10),
        "the log is ready on the new primary",
        || async { log.ready().await.is_ok() },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca_works_and_without_it_is_refused() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    let cert = params.signed_by(&key, &issuer).unwrap();
    let dir = std::env::temp_dir().join(unique_prefix("herald-log-redis-tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca_file, cert_file, key_file) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();

    let server = RedisServer::start_tls(&cert_file, &key_file);
    let url = format!("rediss://localhost:{}", server.port());
    let prefix = unique_prefix("tls");
    let log = log_on(
        RedisEndpoint::parse(&url, Some(&ca_file)).unwrap(),
        options(&prefix),
    );
    let appended = append_each(&log, "a", 2).await;
    let (got, _) = all_after(&log, Position::Oldest).await;
    assert_eq!(got, appended);
    eventually(
        Duration::from_secs(5),
        "the tail reads over TLS",
        || async { log.ready().await.is_ok() && *log.head().borrow() == Some(appended[1]) },
    )
    .await;

    // The system's roots do not know this CA: refused, nothing stored.
    let untrusting = log_on(RedisEndpoint::parse(&url, None).unwrap(), options(&prefix));
    let err = untrusting
        .append(vec![on("a", "x")])
        .await
        .expect_err("an unknown CA");
    assert!(
        matches!(&err, LogError::Unavailable(m) if m.contains("nothing was stored")),
        "{err}"
    );
    let (got, _) = all_after(&log, Position::Oldest).await;
    assert_eq!(got, appended);
    let _ = std::fs::remove_dir_all(&dir);
}
