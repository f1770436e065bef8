//! The cluster-wide admin views: this node's figures from its hub, every
//! other live node's from Redis (at most one refresh old).
//!
//! A node is live while its `node:<id>` hash exists (see the crate doc);
//! the sorted set only says which ids to look at.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;

use redis::aio::MultiplexedConnection;

use crate::{ClusterError, Shared, ADMIN_DEADLINE};

/// One node's figures, as `/v1/stats` lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFigures {
    /// The node's id.
    pub id: String,
    /// Open streams.
    pub connections: u64,
    /// Distinct users with an open stream on that node.
    pub users_online: u64,
    /// Distinct topics and patterns subscribed on that node.
    pub topics: u64,
    /// Events stored through that node's publish route.
    pub events_published: u64,
    /// Event frames that node wrote to its streams.
    pub events_delivered: u64,
    /// Seconds since the node started.
    pub uptime_s: u64,
    /// Where the node listens.
    pub listen: String,
}

impl NodeFigures {
    /// A node's figures from its `node:<id>` hash (a missing or garbled
    /// field counts 0: a newer node may write fields this one does not know).
    fn from_hash(id: String, hash: &HashMap<String, String>) -> Self {
        let number = |field: &str| {
            hash.get(field)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Self {
            connections: number("connections"),
            users_online: number("users_online"),
            topics: number("topics"),
            events_published: number("events_published"),
            events_delivered: number("events_delivered"),
            uptime_s: number("uptime_s"),
            listen: hash.get("listen").cloned().unwrap_or_default(),
            id,
        }
    }
}

/// Every live node's figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStats {
    /// This node first, then the others by id.
    pub nodes: Vec<NodeFigures>,
    /// Distinct users online on any node (a user on two nodes counts once).
    pub users_online: u64,
}

impl ClusterStats {
    /// The sum of one figure over the nodes.
    pub fn sum(&self, figure: impl Fn(&NodeFigures) -> u64) -> u64 {
        self.nodes.iter().map(figure).sum()
    }

    /// The ids of the nodes counted, in the order of [`ClusterStats::nodes`].
    pub fn node_ids(&self) -> Vec<&str> {
        self.nodes.iter().map(|n| n.id.as_str()).collect()
    }
}

/// What a kick did.
///
/// `closed()` counts the streams this node closed plus those each other
/// live node reported closing within [`crate::KICK_REPORT_WAIT`]; a node in
/// `pending` had not reported by then (it still closes them when it reads
/// the kick, unless it is dead, when its streams are gone anyway).
#[derive(Debug, Clone, Default)]
pub struct KickOutcome {
    /// Streams closed on this node.
    pub closed_here: usize,
    /// Other nodes that reported in time, with what they closed, by id.
    pub reports: Vec<(String, usize)>,
    /// Live nodes that had not reported in time, by id.
    pub pending: Vec<String>,
    /// Set when the other nodes could not be told (Redis unreachable):
    /// only this node's streams were closed.
    pub error: Option<ClusterError>,
}

impl KickOutcome {
    /// Streams closed, as far as is known (see the type's doc).
    pub fn closed(&self) -> usize {
        self.closed_here + self.reports.iter().map(|(_, n)| n).sum::<usize>()
    }
}

/// This node's figures, from its hub.
pub(crate) fn local_figures(shared: &Shared) -> NodeFigures {
    let hub = &shared.hub;
    let counts = hub.counts();
    NodeFigures {
        id: shared.config.node_id.to_string(),
        connections: counts.connections as u64,
        users_online: counts.users_online as u64,
        topics: counts.topics as u64,
        events_published: shared.events_published(),
        events_delivered: hub.events_delivered(),
        uptime_s: hub.uptime().as_secs(),
        listen: shared.config.listen.clone(),
    }
}

/// Runs `work` (which uses Redis) within [`ADMIN_DEADLINE`]; after any
/// failure the commands connection is dropped, so the next call reconnects.
pub(crate) async fn bounded<T>(
    shared: &Shared,
    work: impl Future<Output = Result<T, ClusterError>>,
) -> Result<T, ClusterError> {
    let result = match tokio::time::timeout(ADMIN_DEADLINE, work).await {
        Ok(result) => result,
        Err(_) => Err(ClusterError::Timeout),
    };
    if result.is_err() {
        shared.forget_commands();
    }
    result
}

/// The other live nodes: their ids (sorted) and `node:<id>` hashes.
pub(crate) async fn live_others(
    shared: &Shared,
    conn: &mut MultiplexedConnection,
) -> Result<Vec<(String, HashMap<String, String>)>, ClusterError> {
    let ids: Vec<String> = redis::cmd("ZRANGE")
        .arg(&shared.keys.nodes)
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await?;
    let mut ids: Vec<String> = ids
        .into_iter()
        .filter(|id| id != shared.config.node_id.as_str())
        .collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    ids.sort();
    let mut pipe = redis::pipe();
    for id in &ids {
        pipe.cmd("HGETALL").arg(shared.keys.node(id));
    }
    let hashes: Vec<HashMap<String, String>> = pipe.query_async(conn).await?;
    Ok(ids
        .into_iter()
        .zip(hashes)
        // An expired node's hash is gone: HGETALL answers an empty one.
        .filter(|(_, hash)| !hash.is_empty())
        .collect())
}

pub(crate) async fn stats(shared: &Shared) -> Result<ClusterStats, ClusterError> {
    bounded(shared, async {
        let mut conn = shared.commands().await?;
        let others = live_others(shared, &mut conn).await?;
        let mut users: HashSet<String> = shared
            .hub
            .users_online()
            .into_iter()
            .map(|(id, _)| id.to_string())
            .collect();
        if !others.is_empty() {
            let mut pipe = redis::pipe();
            for (id, _) in &others {
                pipe.cmd("HKEYS").arg(shared.keys.users(id));
            }
            let keys: Vec<Vec<String>> = pipe.query_async(&mut conn).await?;
            users.extend(keys.into_iter().flatten());
        }
        let mut nodes = vec![local_figures(shared)];
        nodes.extend(
            others
                .into_iter()
                .map(|(id, hash)| NodeFigures::from_hash(id, &hash)),
        );
        Ok(ClusterStats {
            nodes,
            users_online: users.len() as u64,
        })
    })
    .await
}

pub(crate) async fn users_page(
    shared: &Shared,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<(String, usize)>, ClusterError> {
    bounded(shared, async {
        let mut conn = shared.commands().await?;
        let others = live_others(shared, &mut conn).await?;
        let mut users: BTreeMap<String, usize> = shared
            .hub
            .users_online()
            .into_iter()
            .map(|(id, n)| (id.to_string(), n))
            .collect();
        if !others.is_empty() {
            let mut pipe = redis::pipe();
            for (id, _) in &others {
                pipe.cmd("HGETALL").arg(shared.keys.users(id));
            }
            let hashes: Vec<HashMap<String, usize>> = pipe.query_async(&mut conn).await?;
            for (user, n) in hashes.into_iter().flatten() {
                *users.entry(user).or_default() += n;
            }
        }
        let start = match after {
            Some(after) => std::ops::Bound::Excluded(after.to_owned()),
            None => std::ops::Bound::Unbounded,
        };
        Ok(users
            .range((start, std::ops::Bound::Unbounded))
            .filter(|(_, n)| **n > 0)
            .take(limit)
            .map(|(id, n)| (id.clone(), *n))
            .collect())
    })
    .await
}

pub(crate) async fn user_connections(shared: &Shared, user: &str) -> Result<usize, ClusterError> {
    bounded(shared, async {
        let mut conn = shared.commands().await?;
        let others = live_others(shared, &mut conn).await?;
        let mut total = shared.hub.user_connections(user);
        if !others.is_empty() {
            let mut pipe = redis::pipe();
            for (id, _) in &others {
                pipe.cmd("HGET").arg(shared.keys.users(id)).arg(user);
            }
            let counts: Vec<Option<usize>> = pipe.query_async(&mut conn).await?;
            total += counts.into_iter().flatten().sum::<usize>();
        }
        Ok(total)
    })
    .await
}
