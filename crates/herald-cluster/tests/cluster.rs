//! Two or three nodes in one process — each a real `Hub` on its own
//! `MemoryLog`, each joined to the cluster through a real `redis-server` —
//! seen through each other's admin views.
//!
//! Every wait is bounded ([`eventually`]); the bounds are generous (the
//! machine is shared), the order of what happens is what is asserted.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_cluster::{Cluster, ClusterConfig, Connector, NodeId, DEFAULT_PREFIX};
use herald_core::{Connection, EventLog, Filter, Hub, HubConfig, Resume, Subscriber, TopicPattern};
use herald_log::redis::testing::RedisServer;
use herald_log::{MemoryLog, Retention};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The presence expiry of these tests: short, so a dead node goes quickly.
const EXPIRY: Duration = Duration::from_millis(2000);
/// Longest any condition below is waited for.
const PATIENCE: Duration = Duration::from_secs(15);

struct Node {
    hub: Arc<Hub>,
    cluster: Cluster,
}

fn node(id: &str, redis: &RedisServer) -> Node {
    node_with(id, &redis.url(), EXPIRY)
}

/// A node reaching Redis at `url`, its presence expiring after `expiry`.
fn node_with(id: &str, url: &str, expiry: Duration) -> Node {
    let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new(Retention::default()));
    let hub = Hub::new(log, HubConfig::default());
    let cluster = Cluster::start(
        hub.clone(),
        ClusterConfig {
            node_id: NodeId::new(id).expect("a valid node id"),
            prefix: DEFAULT_PREFIX.into(),
            presence_expiry: expiry,
            listen: format!("127.0.0.1:{id}"),
        },
        patient_connector(url),
    );
    Node { hub, cluster }
}

/// Connections with neither a connect nor a response timeout of their own
/// (the client's defaults would hide a missing bound of the cluster's):
/// every bound the tests see is the cluster's.
fn patient_connector(url: &str) -> Connector {
    let client = redis::Client::open(url).expect("a valid Redis URL");
    Arc::new(move || {
        let client = client.clone();
        Box::pin(async move {
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(None)
                .set_response_timeout(None);
            client
                .get_multiplexed_async_connection_with_config(&config)
                .await
        })
    })
}

/// A TCP proxy in front of Redis that can wedge the connections it
/// carries: they stay open and nothing more passes either way (a dead NAT
/// entry, a peer that vanished without a reset). Connections made after
/// the wedge pass again.
struct WedgingProxy {
    port: u16,
    generation: Arc<AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

impl WedgingProxy {
    async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let port = listener.local_addr().expect("bound").port();
        let generation = Arc::new(AtomicU64::new(0));
        let current = generation.clone();
        let accept = tokio::spawn(async move {
            // Dropped with this task: every forwarding task goes with it.
            let mut pipes = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                let born = current.load(Ordering::SeqCst);
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                pipes.spawn(forward(client_read, server_write, born, current.clone()));
                pipes.spawn(forward(server_read, client_write, born, current.clone()));
            }
        });
        Self {
            port,
            generation,
            accept,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Every connection open now stops passing bytes, for good.
    fn wedge(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for WedgingProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies `from` to `to` until the proxy is wedged, then holds both open
/// without passing anything.
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    born: u64,
    generation: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if generation.load(Ordering::SeqCst) != born {
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A stream of `user` on `node` (its personal topic only).
fn connect(node: &Node, user: &str) -> Connection {
    let topic = herald_core::Topic::new(&format!("user/{user}")).expect("a valid topic");
    node.hub.connect(Subscriber {
        user: Some(Arc::from(user)),
        filter: Filter::new([TopicPattern::Exact(topic)], None),
        resume: Resume::Live,
        expires_at: None,
    })
}

/// Polls `check` until it returns `Some`, for at most `PATIENCE`.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "gave up after {PATIENCE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of one of `node`'s cluster metrics.
fn metric(node: &Node, name: &str) -> u64 {
    let text = node.cluster.metrics_text();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from {text}"))
}

fn page(users: &[(&str, usize)]) -> Vec<(String, usize)> {
    users.iter().map(|(u, n)| (u.to_string(), *n)).collect()
}

/// Whether `conn` ends (the hub closed it) within `PATIENCE`.
async fn ends(conn: &mut Connection) -> bool {
    let drained = async {
        // The preamble, maybe a heartbeat, then the end.
        while conn.next_chunk().await.is_some() {}
    };
    tokio::time::timeout(PATIENCE, drained).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_two_nodes_show_in_one_page_and_the_stats_sum_both() {
    let redis = RedisServer::start();
    let a = node("a", &redis);
    let b = node("b", &redis);
    let _streams = [
        connect(&a, "alice"),
        connect(&a, "alice"),
        connect(&a, "bob"),
        connect(&b, "alice"),
        connect(&b, "carol"),
    ];
    let everyone = page(&[("alice", 3), ("bob", 1), ("carol", 1)]);
    for (name, viewer) in [("a", &a), ("b", &b)] {
        eventually(&format!("node {name} to see both nodes' users"), || async {
            let seen = viewer.cluster.users_page(None, 100).await.ok()?;
            (seen == everyone).then_some(())
        })
        .await;
    }
    // Paged by id, the cursor being the last id of the previous page.
    assert_eq!(
        a.cluster.users_page(None, 1).await.ok(),
        Some(page(&[("alice", 3)]))
    );
    assert_eq!(
        a.cluster.users_page(Some("alice"), 1).await.ok(),
        Some(page(&[("bob", 1)]))
    );
    assert_eq!(
        a.cluster.users_page(Some("bob"), 10).await.ok(),
        Some(page(&[("carol", 1)]))
    );
    assert_eq!(a.cluster.user_connections("alice").await.ok(), Some(3));
    assert_eq!(b.cluster.user_connections("carol").await.ok(), Some(1));
    assert_eq!(b.cluster.user_connections("nobody").await.ok(), Some(0));

    let stats = a.cluster.stats().await.expect("the cluster view");
    assert_eq!(
        stats.node_ids(),
        ["a", "b"],
        "this node first, then the others"
    );
    assert_eq!(stats.sum(|n| n.connections), 5);
    // alice is on both nodes: counted once.
    assert_eq!(stats.users_online, 3);
    assert_eq!(stats.nodes[0].connections, 3);
    assert_eq!(stats.nodes[1].connections, 2);
    assert_eq!(stats.nodes[1].listen, "127.0.0.1:b");
    let from_b = b.cluster.stats().await.expect("the cluster view");
    assert_eq!(from_b.node_ids(), ["b", "a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_node_reaches_the_others_view() {
    let redis = RedisServer::start();
    let a = node("a", &redis);
    let b = node("b", &redis);
    let bob = connect(&b, "bob");
    let _carol = connect(&b, "carol");
    eventually("node a to see bob and carol", || async {
        let seen = a.cluster.users_page(None, 100).await.ok()?;
        (seen == page(&[("bob", 1), ("carol", 1)])).then_some(())
    })
    .await;
    // Gone users are deleted from the node's users hash, not left behind.
    drop(bob);
    let _dave = connect(&b, "dave");
    eventually("node a to see bob gone and dave come", || async {
        let seen = a.cluster.users_page(None, 100).await.ok()?;
        (seen == page(&[("carol", 1), ("dave", 1)])).then_some(())
    })
    .await;
    // Written as changes: the users hash was written whole once, at start.
    assert_eq!(metric(&b, "herald_cluster_presence_rewrites_total"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_vanishes_within_the_expiry_and_not_while_it_lives() {
    let redis = RedisServer::start();
    let a = node("a", &redis);
    let b = node("b", &redis);
    let _dave = connect(&b, "dave");
    eventually("node a to see dave on node b", || async {
        (a.cluster.user_connections("dave").await.ok()? == 1).then_some(())
    })
    .await;
    // Alive, node b stays for three expiries and more: its refreshes keep it.
    let alive_until = Instant::now() + EXPIRY * 3;
    while Instant::now() < alive_until {
        let stats = a.cluster.stats().await.expect("the cluster view");
        assert_eq!(stats.node_ids(), ["a", "b"], "a live node must not expire");
        assert_eq!(a.cluster.user_connections("dave").await.ok(), Some(1));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Its tasks stop as in a crash (the hub and dave's stream live on, so
    // only the missing refreshes can make it go).
    let Node {
        hub: _b_hub,
        cluster,
    } = b;
    let stopped = Instant::now();
    drop(cluster);
    let vanished = eventually("node b to vanish from node a's view", || async {
        let stats = a.cluster.stats().await.ok()?;
        (stats.node_ids() == ["a"]).then(|| stopped.elapsed())
    })
    .await;
    assert!(
        vanished <= EXPIRY + Duration::from_secs(2),
        "node b took {vanished:?} to vanish; the expiry is {EXPIRY:?}"
    );
    // Its last refresh was at most a refresh period before it stopped.
    assert!(
        vanished >= EXPIRY / 2,
        "node b vanished after {vanished:?}, before its presence could have expired ({EXPIRY:?})"
    );
    assert_eq!(a.cluster.user_connections("dave").await.ok(), Some(0));
    assert_eq!(a.cluster.users_page(None, 100).await.ok(), Some(Vec::new()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kick_through_one_node_closes_the_users_streams_on_every_node() {
    let redis = RedisServer::start();
    let a = node("a", &redis);
    let b = node("b", &redis);
    let c = node("c", &redis);
    let mut on_a = connect(&a, "eve");
    let mut on_b = [connect(&b, "eve"), connect(&b, "eve")];
    let mut on_c = connect(&c, "eve");
    let _other = connect(&c, "frank");
    eventually("node a to see eve's four streams", || async {
        (a.cluster.user_connections("eve").await.ok()? == 4).then_some(())
    })
    .await;
    // The other nodes' control tails must be reading before the kick.
    let outcome = a.cluster.kick("eve").await;
    assert!(outcome.error.is_none(), "{outcome:?}");
    assert_eq!(outcome.closed_here, 1);
    assert_eq!(
        outcome.reports,
        [("b".to_owned(), 2), ("c".to_owned(), 1)],
        "{outcome:?}"
    );
    assert!(outcome.pending.is_empty(), "{outcome:?}");
    assert_eq!(outcome.closed(), 4);
    assert!(ends(&mut on_a).await, "eve's stream on node a did not end");
    for conn in &mut on_b {
        assert!(ends(conn).await, "eve's stream on node b did not end");
    }
    assert!(ends(&mut on_c).await, "eve's stream on node c did not end");
    assert_eq!(c.hub.user_connections("frank"), 1, "only eve is kicked");
    eventually("eve to be gone from the cluster view", || async {
        (a.cluster.user_connections("eve").await.ok()? == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kick_counts_a_dead_node_as_pending_not_closed() {
    let redis = RedisServer::start();
    let a = node("a", &redis);
    let b = node("b", &redis);
    let _on_b = connect(&b, "gina");
    eventually("node a to see gina", || async {
        (a.cluster.user_connections("gina").await.ok()? == 1).then_some(())
    })
    .await;
    // Node b's tasks stop; its presence lives on until it expires.
    let Node {
        hub: _b_hub,
        cluster,
    } = b;
    drop(cluster);
    let started = Instant::now();
    let outcome = a.cluster.kick("gina").await;
    let took = started.elapsed();
    assert!(outcome.error.is_none(), "{outcome:?}");
    assert_eq!(outcome.closed(), 0, "{outcome:?}");
    assert_eq!(outcome.pending, ["b".to_owned()], "{outcome:?}");
    assert!(took < Duration::from_secs(3), "the kick took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_the_views_fail_fast_and_after_it_is_back_all_works_again() {
    let mut redis = RedisServer::start();
    let a = node("a", &redis);
    let b = node("b", &redis);
    let _here = connect(&a, "hal");
    let _there = connect(&b, "ivy");
    eventually("node a to see ivy", || async {
        (a.cluster.user_connections("ivy").await.ok()? == 1).then_some(())
    })
    .await;

    redis.kill();
    let bound = Duration::from_millis(2500);
    let started = Instant::now();
    let stats = a.cluster.stats().await;
    assert!(stats.is_err(), "{stats:?}");
    let users = a.cluster.users_page(None, 100).await;
    assert!(users.is_err(), "{users:?}");
    let user = a.cluster.user_connections("ivy").await;
    assert!(user.is_err(), "{user:?}");
    assert!(started.elapsed() < bound * 3, "{:?}", started.elapsed());
    // A kick still closes this node's streams, and says the others were not told.
    let started = Instant::now();
    let outcome = a.cluster.kick("hal").await;
    assert!(started.elapsed() < bound, "{:?}", started.elapsed());
    assert_eq!(outcome.closed_here, 1);
    assert!(outcome.error.is_some(), "{outcome:?}");
    assert_eq!(a.hub.user_connections("hal"), 0);
    // Local figures need no Redis.
    assert_eq!(a.cluster.local_figures().connections, 0);

    // Back, empty: every node writes its presence whole again, and the
    // control tails read again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.restart();
    eventually("node a to see ivy again", || async {
        (a.cluster.user_connections("ivy").await.ok()? == 1).then_some(())
    })
    .await;
    let mut ivy = connect(&b, "ivy");
    eventually("node a to see ivy's second stream", || async {
        (a.cluster.user_connections("ivy").await.ok()? == 2).then_some(())
    })
    .await;
    // Node a's Redis connection may still be coming back: retried until
    // the kick is appended. Node b carries it out when its tail reads it,
    // at once or after its reconnect (so what it reports in time varies).
    eventually("a kick to reach node b again", || async {
        a.cluster.kick("ivy").await.error.is_none().then_some(())
    })
    .await;
    assert!(ends(&mut ivy).await, "ivy's stream on node b did not end");
    assert_eq!(b.hub.user_connections("ivy"), 0);
    assert!(metric(&a, "herald_cluster_presence_write_failures_total") > 0);
    assert!(metric(&b, "herald_cluster_presence_rewrites_total") > 1);
    assert!(metric(&b, "herald_cluster_control_tail_reconnects_total") > 0);
    eventually("node a to count both nodes alive", || async {
        (metric(&a, "herald_cluster_nodes_alive") == 2).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_frozen_nothing_waits_past_the_bound() {
    let redis = RedisServer::start();
    let a = node("a", &redis);
    let b = node("b", &redis);
    let _there = connect(&b, "jo");
    eventually("node a to see jo", || async {
        (a.cluster.user_connections("jo").await.ok()? == 1).then_some(())
    })
    .await;
    // Nothing answers, and no connection is refused: only deadlines help.
    redis.freeze();
    let bound = Duration::from_millis(2500);
    let started = Instant::now();
    let stats = a.cluster.stats().await;
    assert!(stats.is_err(), "{stats:?}");
    assert!(
        started.elapsed() < bound,
        "stats took {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    let outcome = a.cluster.kick("nobody").await;
    assert!(
        started.elapsed() < bound,
        "the kick took {:?}",
        started.elapsed()
    );
    assert!(outcome.error.is_some(), "{outcome:?}");
    // Long enough for the control tails to see their reads wedged.
    tokio::time::sleep(herald_cluster::CONTROL_BLOCK + herald_cluster::WEDGE_SLACK * 2).await;
    redis.thaw();
    let mut jo = connect(&b, "jo");
    // Node a's Redis connection may still be coming back: retried until
    // the kick is appended. Node b carries it out when its tail reads it,
    // at once or after its reconnect (so what it reports in time varies).
    eventually("a kick to reach node b after the freeze", || async {
        a.cluster.kick("jo").await.error.is_none().then_some(())
    })
    .await;
    assert!(ends(&mut jo).await, "jo's stream on node b did not end");
    assert_eq!(b.hub.user_connections("jo"), 0);
    assert!(
        metric(&b, "herald_cluster_control_tail_reconnects_total") > 0,
        "the wedged tail was not replaced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_refresh_makes_the_next_one_rewrite_the_presence_whole() {
    let redis = RedisServer::start();
    // An expiry long enough that nothing expires while Redis is frozen:
    // Redis keeps all it had, and only the failure can call for a rewrite
    // (what a Redis restored from an old snapshot needs).
    let expiry = Duration::from_secs(20);
    let b = node_with("b", &redis.url(), expiry);
    let _jo = connect(&b, "jo");
    eventually("node b's first refresh", || async {
        (metric(&b, "herald_cluster_presence_rewrites_total") == 1).then_some(())
    })
    .await;
    redis.freeze();
    // Longer than a refresh may take: one fails.
    tokio::time::sleep(herald_cluster::ADMIN_DEADLINE + Duration::from_secs(1)).await;
    redis.thaw();
    eventually(
        "node b to rewrite its presence after the failure",
        || async {
            let failed = metric(&b, "herald_cluster_presence_write_failures_total") > 0;
            (failed && metric(&b, "herald_cluster_presence_rewrites_total") > 1).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_control_tail_is_replaced_and_the_kick_made_meanwhile_reaches_its_node() {
    let redis = RedisServer::start();
    let proxy = WedgingProxy::start(redis.port()).await;
    let a = node("a", &redis);
    let b = node_with("b", &proxy.url(), EXPIRY);
    let mut kate = connect(&b, "kate");
    eventually("node a to see kate", || async {
        (a.cluster.user_connections("kate").await.ok()? == 1).then_some(())
    })
    .await;
    // Node b's connections stay open and go silent: no error will come.
    proxy.wedge();
    let outcome = a.cluster.kick("kate").await;
    assert!(outcome.error.is_none(), "{outcome:?}");
    assert!(
        ends(&mut kate).await,
        "the kick never reached node b: its wedged control tail was not replaced"
    );
    assert_eq!(b.hub.user_connections("kate"), 0);
    assert!(metric(&b, "herald_cluster_control_tail_reconnects_total") > 0);
}
