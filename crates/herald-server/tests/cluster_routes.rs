//! The admin routes of a node in a cluster, through the router (`oneshot`),
//! with a real `redis-server` and a second node (a hub joined to the same
//! cluster) whose users and streams the answers must include.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use herald_cluster::{url_connector, Cluster, ClusterConfig, NodeId, DEFAULT_PREFIX};
use herald_core::{
    Connection, EventLog, Filter, Hub, HubConfig, Resume, Subscriber, Topic, TopicPattern,
};
use herald_log::redis::testing::RedisServer;
use herald_log::{MemoryLog, Retention};
use herald_server::{AppState, Auth, ServerConfig};
use serde_json::{json, Value};
use tower::ServiceExt;

const EXPIRY: Duration = Duration::from_millis(3000);
const PATIENCE: Duration = Duration::from_secs(15);

fn join(id: &str, hub: &Arc<Hub>, redis: &RedisServer) -> Cluster {
    Cluster::start(
        hub.clone(),
        ClusterConfig {
            node_id: NodeId::new(id).expect("a valid node id"),
            prefix: DEFAULT_PREFIX.into(),
            presence_expiry: EXPIRY,
            listen: format!("127.0.0.1:{id}"),
        },
        url_connector(&redis.url()).expect("a valid Redis URL"),
    )
}

fn hub() -> Arc<Hub> {
    let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new(Retention::default()));
    let hub = Hub::new(log, HubConfig::default());
    tokio::spawn(hub.clone().run_dispatcher());
    hub
}

/// Node `a`, served by the router, and node `b`, a bare hub in the cluster.
struct TwoNodes {
    app: Router,
    a: Arc<Hub>,
    b: Arc<Hub>,
    _b_cluster: Cluster,
}

fn two_nodes(redis: &RedisServer) -> TwoNodes {
    let a = hub();
    let log = Arc::new(MemoryLog::new(Retention::default()));
    // Node a publishes into a log of its own: only its count matters here.
    let state = AppState::with_cluster(
        a.clone(),
        log,
        ServerConfig {
            dev: true,
            ..ServerConfig::default()
        },
        Auth::Dev,
        Some(Arc::new(join("a", &a, redis))),
    );
    let b = hub();
    let b_cluster = join("b", &b, redis);
    TwoNodes {
        app: herald_server::router(state),
        a,
        b,
        _b_cluster: b_cluster,
    }
}

fn stream(hub: &Arc<Hub>, user: &str) -> Connection {
    let topic = Topic::new(&format!("user/{user}")).expect("a valid topic");
    hub.connect(Subscriber {
        user: Some(Arc::from(user)),
        filter: Filter::new([TopicPattern::Exact(topic)], None),
        resume: Resume::Live,
        expires_at: None,
    })
}

async fn call(app: &Router, method: &str, uri: &str) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, "localhost")
        .body(Body::empty())
        .expect("a valid request");
    let response = app.clone().oneshot(request).await.expect("never fails");
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("a whole body");
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, json)
}

async fn eventually<T, Fut: Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> Fut,
) -> T {
    let started = Instant::now();
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(started.elapsed() < PATIENCE, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_users_answer_for_every_node() {
    let redis = RedisServer::start();
    let nodes = two_nodes(&redis);
    let app = &nodes.app;
    let _streams = [
        stream(&nodes.a, "alice"),
        stream(&nodes.b, "alice"),
        stream(&nodes.b, "bob"),
    ];
    let request = Request::post("/v1/publish?topic=news")
        .header(header::CONTENT_TYPE, "text/plain")
        .header(header::HOST, "localhost")
        .body(Body::from("hi"))
        .expect("a valid request");
    let published = app.clone().oneshot(request).await.expect("never fails");
    assert_eq!(published.status(), StatusCode::CREATED);

    let stats = eventually("the stats to count both nodes", || async {
        let (status, stats) = call(app, "GET", "/v1/stats").await;
        assert_eq!(status, StatusCode::OK, "{stats}");
        (stats["connections"] == 3).then_some(stats)
    })
    .await;
    assert_eq!(stats["nodes"], json!(["a", "b"]), "{stats}");
    assert_eq!(stats["node"], "a", "{stats}");
    assert_eq!(stats["cluster_view"], "complete", "{stats}");
    assert_eq!(stats["users_online"], 2, "alice counts once: {stats}");
    assert_eq!(stats["events_published"], 1, "{stats}");
    assert_eq!(stats["node_stats"][0]["id"], "a", "{stats}");
    assert_eq!(stats["node_stats"][0]["connections"], 1, "{stats}");
    assert_eq!(stats["node_stats"][0]["events_published"], 1, "{stats}");
    assert_eq!(stats["node_stats"][1]["id"], "b", "{stats}");
    assert_eq!(stats["node_stats"][1]["connections"], 2, "{stats}");
    assert_eq!(stats["node_stats"][1]["listen"], "127.0.0.1:b", "{stats}");

    let (status, page) = call(app, "GET", "/v1/users?limit=1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        page,
        json!({"users": [{"id": "alice", "connections": 2}], "next": "alice", "cluster_view": "complete"})
    );
    let (_, page) = call(app, "GET", "/v1/users?limit=1&cursor=alice").await;
    assert_eq!(
        page,
        json!({"users": [{"id": "bob", "connections": 1}], "next": null, "cluster_view": "complete"})
    );
    let (_, bob) = call(app, "GET", "/v1/users/bob").await;
    assert_eq!(
        bob,
        json!({"id": "bob", "online": true, "connections": 1, "cluster_view": "complete"})
    );
    // Counted at node a's refresh: one after node b's first.
    let metrics = eventually("the metrics to count both nodes", || async {
        let request = Request::get("/metrics")
            .header(header::HOST, "localhost")
            .body(Body::empty())
            .expect("a valid request");
        let response = app.clone().oneshot(request).await.expect("never fails");
        assert_eq!(response.status(), StatusCode::OK);
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("a whole body");
        let metrics = String::from_utf8_lossy(&body).into_owned();
        metrics
            .contains("\nherald_cluster_nodes_alive 2\n")
            .then_some(metrics)
    })
    .await;
    assert!(metrics.contains("herald_cluster_presence_write_failures_total 0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kick_closes_the_users_streams_on_the_other_node_and_counts_them() {
    let redis = RedisServer::start();
    let nodes = two_nodes(&redis);
    let app = &nodes.app;
    let _here = stream(&nodes.a, "carol");
    let mut there = stream(&nodes.b, "carol");
    eventually("carol's two streams to be seen", || async {
        let (_, carol) = call(app, "GET", "/v1/users/carol").await;
        (carol["connections"] == 2).then_some(())
    })
    .await;
    let (status, kicked) = call(app, "DELETE", "/v1/users/carol/connections").await;
    assert_eq!(status, StatusCode::OK, "{kicked}");
    assert_eq!(kicked, json!({"closed": 2, "pending_nodes": []}));
    let ended = tokio::time::timeout(PATIENCE, async {
        while there.next_chunk().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "carol's stream on node b did not end");
    assert_eq!(nodes.b.user_connections("carol"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_the_reads_answer_for_this_node_and_a_kick_is_503() {
    let mut redis = RedisServer::start();
    let nodes = two_nodes(&redis);
    let app = &nodes.app;
    let _here = stream(&nodes.a, "dan");
    let _there = stream(&nodes.b, "eve");
    eventually("eve to be seen", || async {
        let (_, eve) = call(app, "GET", "/v1/users/eve").await;
        (eve["connections"] == 1).then_some(())
    })
    .await;
    redis.kill();
    let bound = Duration::from_millis(2500);
    for uri in ["/v1/stats", "/v1/users", "/v1/users/dan"] {
        let started = Instant::now();
        let (status, answer) = call(app, "GET", uri).await;
        assert!(
            started.elapsed() < bound,
            "{uri} took {:?}",
            started.elapsed()
        );
        assert_eq!(status, StatusCode::OK, "{uri}: {answer}");
        assert_eq!(answer["cluster_view"], "unavailable", "{uri}: {answer}");
        let error = answer["cluster_error"].as_str().unwrap_or_default();
        assert!(error.contains("this node's alone"), "{uri}: {answer}");
    }
    let (_, stats) = call(app, "GET", "/v1/stats").await;
    assert_eq!(stats["nodes"], json!(["a"]), "{stats}");
    assert_eq!(stats["connections"], 1, "{stats}");
    let (_, users) = call(app, "GET", "/v1/users").await;
    assert_eq!(users["users"], json!([{"id": "dan", "connections": 1}]));

    let started = Instant::now();
    let (status, kicked) = call(app, "DELETE", "/v1/users/dan/connections").await;
    assert!(
        started.elapsed() < bound,
        "the kick took {:?}",
        started.elapsed()
    );
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{kicked}");
    assert_eq!(kicked["error"]["code"], "log_unavailable", "{kicked}");
    let message = kicked["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("closed 1 stream(s)"), "{message}");
    assert_eq!(
        nodes.a.user_connections("dan"),
        0,
        "closed here all the same"
    );
}
