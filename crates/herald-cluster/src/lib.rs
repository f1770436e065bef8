//! What the Herald nodes of one cluster share besides the event log: who
//! the nodes are, who is connected to each, and the admin actions that must
//! reach every node.
//!
//! Every node keeps its own presence in Redis, under one hash tag
//! (`{prefix}`, so a Redis Cluster keeps every key on one slot):
//!
//! | key | type | what |
//! |---|---|---|
//! | `{prefix}:nodes` | sorted set | node id → when its presence expires (ms since the epoch, the writer's clock): the index of nodes |
//! | `{prefix}:node:<id>` | hash | the node's figures: connections, users_online, topics, events_published, events_delivered, started_at_ms, uptime_s, listen |
//! | `{prefix}:node:<id>:users` | hash | user → that user's open streams on the node |
//! | `{prefix}:control` | stream | admin actions every node carries out (`op=kick user=… from=…`), `MAXLEN ~` [`CONTROL_STREAM_LENGTH`] |
//! | `{prefix}:kick:<entry id>` | hash | node → streams it closed for that kick (expires after [`KICK_REPLY_TTL`]) |
//!
//! Invariants:
//! - A node is *live* while its `node:<id>` hash exists. The hash and the
//!   users hash get `PEXPIRE presence_expiry` in the same transaction as
//!   every refresh ([`presence`]), so a node that stops refreshing vanishes
//!   within `presence_expiry`, judged by Redis's own clock (no two nodes'
//!   clocks are compared). The sorted set is only the index to find them;
//!   its entries older than an expiry are pruned by every writer, so it
//!   holds live nodes and the recently dead.
//! - A node's users hash is exactly its online users (changes are written
//!   each refresh, HSET of changed users and HDEL of gone ones; after any
//!   failure, or when its length does not match, the whole hash is
//!   rewritten): nothing grows without bound.
//! - The local node's figures in every admin view come from its hub, fresh;
//!   only the other nodes' come from Redis (at most one refresh old).
//! - A node writes its presence only once its control tail knows where it
//!   starts reading, so every kick made while the node is visible reaches it.
//! - No call into Redis made for an admin request waits longer than
//!   [`ADMIN_DEADLINE`]; the control tail's reads are bounded by their
//!   block time plus [`WEDGE_SLACK`], after which the connection is thought
//!   wedged and replaced.
//!
//! Redis is reached through a [`Connector`], so the binary decides how
//! (a URL, or the event log's endpoint that follows sentinels).

#![forbid(unsafe_code)]

mod control;
mod keys;
mod presence;
mod view;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use herald_core::Hub;
use redis::aio::MultiplexedConnection;
use redis::RedisError;
use tokio::task::AbortHandle;

pub use view::{ClusterStats, KickOutcome, NodeFigures};

use keys::Keys;

/// Opens a new connection to the Redis primary. Called again after every
/// failure; each call should make a fresh connection.
pub type Connector = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<MultiplexedConnection, RedisError>> + Send>>
        + Send
        + Sync,
>;

/// The default key prefix (the `{herald}` hash tag).
pub const DEFAULT_PREFIX: &str = "herald";
/// Default of [`ClusterConfig::presence_expiry`], in ms: a dead node's
/// connections are gone from every count within 15 s.
pub const DEFAULT_PRESENCE_EXPIRY_MS: u64 = 15_000;
/// The range `presence_expiry_ms` may be set in: at least three refreshes
/// fit in the shortest, and the longest keeps a dead node for a minute.
pub const PRESENCE_EXPIRY_RANGE_MS: std::ops::RangeInclusive<u64> = 1_000..=60_000;
/// Most bytes of a node id.
pub const MAX_NODE_ID_BYTES: usize = 64;
/// The longest any Redis work done for one admin request may take; past
/// it the request is answered with what this node knows alone.
pub const ADMIN_DEADLINE: Duration = Duration::from_millis(1500);
/// How long a kick waits for the other live nodes to say how many streams
/// they closed.
pub const KICK_REPORT_WAIT: Duration = Duration::from_secs(1);
/// How long a kick's reports are kept in Redis.
pub const KICK_REPLY_TTL: Duration = Duration::from_secs(30);
/// Entries kept in the control stream (approximately: `MAXLEN ~`).
pub const CONTROL_STREAM_LENGTH: usize = 1000;
/// How long one `XREAD BLOCK` of the control tail waits for an entry.
pub const CONTROL_BLOCK: Duration = Duration::from_secs(1);
/// A control read that has not answered within its block time plus this is
/// taken as a wedged connection: it is dropped and a new one made.
pub const WEDGE_SLACK: Duration = Duration::from_secs(3);
/// Longest refresh period of the presence (admin counts are meant to be
/// exact within a second).
pub const MAX_REFRESH_EVERY: Duration = Duration::from_secs(1);

/// A node's name in the cluster: ASCII letters, digits, `.`, `_` and `-`,
/// 1 to [`MAX_NODE_ID_BYTES`] bytes (it is part of Redis keys, and `:`
/// would let one node's keys collide with another's).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(Arc<str>);

/// Why a node id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeIdError {
    /// Empty.
    #[error("a node id must not be empty")]
    Empty,
    /// Over [`MAX_NODE_ID_BYTES`].
    #[error("a node id is at most {MAX_NODE_ID_BYTES} bytes; this one has {0}")]
    TooLong(usize),
    /// A character outside the allowed set.
    #[error(
        "a node id may hold only ASCII letters, digits, `.`, `_` and `-`; {0:?} is not allowed"
    )]
    BadCharacter(char),
}

impl NodeId {
    /// `id`, if it is a valid node id.
    pub fn new(id: &str) -> Result<Self, NodeIdError> {
        if id.is_empty() {
            return Err(NodeIdError::Empty);
        }
        if id.len() > MAX_NODE_ID_BYTES {
            return Err(NodeIdError::TooLong(id.len()));
        }
        if let Some(bad) = id.chars().find(|c| !Self::allowed(*c)) {
            return Err(NodeIdError::BadCharacter(bad));
        }
        Ok(Self(id.into()))
    }

    /// A readable id unique enough for one cluster: the host name, the
    /// listening port and four random hex digits (`web-3-8080-1a2b`), so a
    /// restarted node is a new node and two on one host differ.
    pub fn generate(listen_port: u16) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .unwrap_or_default();
        let host: String = host
            .trim()
            .chars()
            .map(|c| if Self::allowed(c) { c } else { '-' })
            .take(MAX_NODE_ID_BYTES - 12)
            .collect();
        let host = if host.is_empty() {
            "herald".into()
        } else {
            host
        };
        let suffix: u16 = rand::random();
        Self(format!("{host}-{listen_port}-{suffix:04x}").into())
    }

    fn allowed(c: char) -> bool {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How one node takes part in the cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This node's id (unique in the cluster).
    pub node_id: NodeId,
    /// The key prefix: every key is under the `{prefix}` hash tag.
    pub prefix: String,
    /// How long a node's presence outlives its last refresh.
    pub presence_expiry: Duration,
    /// Where this node listens, as shown to admins.
    pub listen: String,
}

impl ClusterConfig {
    /// How often the presence is refreshed: every second, or three times
    /// per expiry when that is shorter, so a live node never expires.
    pub fn refresh_every(&self) -> Duration {
        MAX_REFRESH_EVERY.min(self.presence_expiry / 3)
    }
}

/// Why the cluster view could not be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    /// Redis answered with an error, or could not be reached.
    #[error("Redis is unavailable: {0}")]
    Redis(String),
    /// Redis did not answer within [`ADMIN_DEADLINE`].
    #[error("Redis did not answer within {} ms", ADMIN_DEADLINE.as_millis())]
    Timeout,
}

impl From<RedisError> for ClusterError {
    fn from(err: RedisError) -> Self {
        Self::Redis(err.to_string())
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
struct Metrics {
    presence_write_failures: AtomicU64,
    /// Refreshes that rewrote the users hash whole (the first, and after
    /// any doubt); every other one writes only the changes.
    presence_rewrites: AtomicU64,
    control_tail_reconnects: AtomicU64,
    /// Live nodes counted at the last presence refresh (0 before the first).
    nodes_alive: AtomicU64,
    kicks_received: AtomicU64,
}

/// What the cluster's tasks and the admin calls share.
struct Shared {
    config: ClusterConfig,
    keys: Keys,
    hub: Arc<Hub>,
    connector: Connector,
    /// The connection for presence writes and admin reads (the control
    /// tail has its own: a blocking read would hold up the others). `None`
    /// after a failure: the next user reconnects.
    commands: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    /// Events published through this node (set by the HTTP layer, which
    /// counts them); 0 until set.
    published: OnceLock<Box<dyn Fn() -> u64 + Send + Sync>>,
    started_at_ms: u64,
    metrics: Metrics,
    /// Set once the control tail knows where it starts reading: until
    /// then the node writes no presence, so no kick made while the node
    /// is visible can miss it.
    tail_positioned: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// The commands connection, made if there is none (within `deadline`).
    async fn commands(&self) -> Result<MultiplexedConnection, ClusterError> {
        let mut slot = self.commands.lock().await;
        if let Some(conn) = &*slot {
            return Ok(conn.clone());
        }
        let conn = tokio::time::timeout(ADMIN_DEADLINE, (self.connector)())
            .await
            .map_err(|_| ClusterError::Timeout)??;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Forgets the commands connection after a failure on it. Never waits:
    /// when the slot is busy, its holder is making a new connection anyway.
    fn forget_commands(&self) {
        if let Ok(mut slot) = self.commands.try_lock() {
            *slot = None;
        }
    }

    fn events_published(&self) -> u64 {
        self.published.get().map_or(0, |count| count())
    }
}

/// A node's membership of the cluster: its presence and control tasks run
/// while this handle lives (dropping it stops them, as a crash would: the
/// node's presence then expires; [`Cluster::leave`] removes it at once).
#[derive(Debug)]
pub struct Cluster {
    shared: Arc<Shared>,
    tasks: Vec<AbortHandle>,
}

impl Cluster {
    /// Joins the cluster: starts the presence writer and the control tail
    /// on the current tokio runtime.
    pub fn start(hub: Arc<Hub>, config: ClusterConfig, connector: Connector) -> Self {
        let keys = Keys::new(&config.prefix, &config.node_id);
        let started_at_ms = herald_core::event::now_ms();
        let shared = Arc::new(Shared {
            config,
            keys,
            hub,
            connector,
            commands: tokio::sync::Mutex::new(None),
            published: OnceLock::new(),
            started_at_ms,
            metrics: Metrics::default(),
            tail_positioned: tokio::sync::watch::Sender::new(false),
        });
        let tasks = vec![
            tokio::spawn(presence::run(shared.clone())).abort_handle(),
            tokio::spawn(control::run_tail(shared.clone())).abort_handle(),
        ];
        tracing::info!(node_id = %shared.config.node_id, "joined the cluster");
        Self { shared, tasks }
    }

    /// Where the count of events published through this node comes from
    /// (the HTTP layer counts them). Only the first call counts.
    pub fn count_published_with(&self, count: impl Fn() -> u64 + Send + Sync + 'static) {
        let _ = self.shared.published.set(Box::new(count));
    }

    /// This node's id.
    pub fn node_id(&self) -> &NodeId {
        &self.shared.config.node_id
    }

    /// Stops the tasks and removes this node's presence (graceful
    /// shutdown), within [`ADMIN_DEADLINE`].
    pub async fn leave(&self) {
        self.stop();
        if let Err(err) = presence::remove(&self.shared).await {
            tracing::warn!(%err, "the node's presence could not be removed; it expires by itself");
        }
    }

    fn stop(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }

    /// This node's figures, fresh from the hub.
    pub fn local_figures(&self) -> NodeFigures {
        view::local_figures(&self.shared)
    }

    /// `GET /v1/stats`: every live node's figures, this node's first.
    pub async fn stats(&self) -> Result<ClusterStats, ClusterError> {
        view::stats(&self.shared).await
    }

    /// `GET /v1/users`: online users of every live node, connections
    /// summed, sorted by id, after `after`, at most `limit`.
    pub async fn users_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, usize)>, ClusterError> {
        view::users_page(&self.shared, after, limit).await
    }

    /// `GET /v1/users/{id}`: the user's open streams on every live node.
    pub async fn user_connections(&self, user: &str) -> Result<usize, ClusterError> {
        view::user_connections(&self.shared, user).await
    }

    /// `DELETE /v1/users/{id}/connections`: closes the user's streams here
    /// at once, and on every other node through the control stream (see
    /// [`KickOutcome`] for what is counted).
    pub async fn kick(&self, user: &str) -> KickOutcome {
        control::kick(&self.shared, user).await
    }

    /// The cluster's lines of `/metrics` (Prometheus text format).
    pub fn metrics_text(&self) -> String {
        let m = &self.shared.metrics;
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        };
        metric(
            "herald_cluster_presence_write_failures_total",
            "counter",
            "Presence refreshes that Redis did not take.",
            m.presence_write_failures.load(Ordering::Relaxed),
        );
        metric(
            "herald_cluster_presence_rewrites_total",
            "counter",
            "Presence refreshes that wrote the node's users whole (at start, after a failure or a mismatch); the others write changes only.",
            m.presence_rewrites.load(Ordering::Relaxed),
        );
        metric(
            "herald_cluster_control_tail_reconnects_total",
            "counter",
            "Times the control stream's tail reconnected (an error, or a read wedged past its block time).",
            m.control_tail_reconnects.load(Ordering::Relaxed),
        );
        metric(
            "herald_cluster_nodes_alive",
            "gauge",
            "Live nodes at the last presence refresh, this one included.",
            m.nodes_alive.load(Ordering::Relaxed),
        );
        metric(
            "herald_cluster_kicks_received_total",
            "counter",
            "Kicks of other nodes carried out here.",
            m.kicks_received.load(Ordering::Relaxed),
        );
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A [`Connector`] for a Redis URL (`redis://`, `rediss://`). Its
/// connections keep the client's default response timeout; the control
/// tail sets its own.
pub fn url_connector(url: &str) -> Result<Connector, RedisError> {
    let client = redis::Client::open(url)?;
    Ok(Arc::new(move || {
        let client = client.clone();
        Box::pin(async move {
            let config =
                redis::AsyncConnectionConfig::new().set_connection_timeout(Some(ADMIN_DEADLINE));
            client
                .get_multiplexed_async_connection_with_config(&config)
                .await
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_checked() {
        assert!(NodeId::new("web-1.eu_west").is_ok());
        assert_eq!(NodeId::new(""), Err(NodeIdError::Empty));
        assert_eq!(NodeId::new(&"a".repeat(65)), Err(NodeIdError::TooLong(65)));
        assert!(NodeId::new(&"a".repeat(64)).is_ok());
        for bad in ["a:users", "a b", "é", "a}", "a\n"] {
            assert!(
                matches!(NodeId::new(bad), Err(NodeIdError::BadCharacter(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn generated_ids_are_valid_and_differ() {
        let a = NodeId::generate(8080);
        assert!(NodeId::new(a.as_str()).is_ok(), "{a}");
        assert!(a.as_str().contains("-8080-"), "{a}");
        let differ = (0..10).any(|_| NodeId::generate(8080) != a);
        assert!(differ);
    }

    #[test]
    fn the_refresh_fits_three_times_in_the_expiry() {
        let config = |ms| ClusterConfig {
            node_id: NodeId::generate(1),
            prefix: DEFAULT_PREFIX.into(),
            presence_expiry: Duration::from_millis(ms),
            listen: String::new(),
        };
        assert_eq!(config(15_000).refresh_every(), Duration::from_secs(1));
        assert_eq!(config(1_500).refresh_every(), Duration::from_millis(500));
    }
}
