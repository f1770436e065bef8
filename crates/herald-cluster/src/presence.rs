//! The presence writer: this node's figures and online users in Redis,
//! refreshed every [`ClusterConfig::refresh_every`](crate::ClusterConfig::refresh_every),
//! each refresh one `MULTI` that also renews the keys' expiry.
//!
//! Only this task (and [`remove`] at shutdown) writes this node's keys, so
//! what it last wrote is known without reading it back; the `HLEN` in every
//! refresh checks that, and any doubt (a failure, a length that does not
//! match, a Redis that lost its data) makes the next refresh rewrite the
//! users hash whole.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use herald_core::now_ms;
use redis::Pipeline;

use crate::{ClusterError, Shared, ADMIN_DEADLINE};

/// Users per `HSET`/`HDEL`: a big rewrite is many moderate commands, not
/// one with a million arguments.
const USERS_PER_COMMAND: usize = 1000;

/// What the users hash holds, as far as this node knows; `None`: unknown,
/// rewrite it whole.
type Written = Option<HashMap<Arc<str>, usize>>;

/// Refreshes the presence forever.
pub(crate) async fn run(shared: Arc<Shared>) {
    // Visible only once kicks can reach this node (see the crate doc).
    let mut positioned = shared.tail_positioned.subscribe();
    if positioned.wait_for(|ready| *ready).await.is_err() {
        return;
    }
    let mut interval = tokio::time::interval(shared.config.refresh_every());
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut written: Written = None;
    let mut failing = false;
    loop {
        interval.tick().await;
        let result =
            match tokio::time::timeout(ADMIN_DEADLINE, refresh(&shared, &mut written)).await {
                Ok(result) => result,
                Err(_) => Err(ClusterError::Timeout),
            };
        match result {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("presence written to Redis again (rewritten whole)");
            }
            Ok(()) => {}
            Err(err) => {
                shared
                    .metrics
                    .presence_write_failures
                    .fetch_add(1, Ordering::Relaxed);
                written = None;
                shared.forget_commands();
                if !failing {
                    failing = true;
                    tracing::warn!(%err, "writing this node's presence to Redis failed; retrying every refresh");
                }
            }
        }
    }
}

/// One refresh: the figures, the users that changed since `written` (or
/// all of them), the expiries and the node index, in one transaction.
async fn refresh(shared: &Shared, written: &mut Written) -> Result<(), ClusterError> {
    let mut conn = shared.commands().await?;
    let hub = &shared.hub;
    let users: HashMap<Arc<str>, usize> = hub.users_online().into_iter().collect();
    let counts = hub.counts();
    let keys = &shared.keys;
    let expiry_ms = u64::try_from(shared.config.presence_expiry.as_millis()).unwrap_or(u64::MAX);
    let now = now_ms();
    let mut pipe = redis::pipe();
    pipe.atomic();
    pipe.cmd("HSET")
        .arg(&keys.own_node)
        .arg("connections")
        .arg(counts.connections)
        .arg("users_online")
        .arg(counts.users_online)
        .arg("topics")
        .arg(counts.topics)
        .arg("events_published")
        .arg(shared.events_published())
        .arg("events_delivered")
        .arg(hub.events_delivered())
        .arg("started_at_ms")
        .arg(shared.started_at_ms)
        .arg("uptime_s")
        .arg(hub.uptime().as_secs())
        .arg("listen")
        .arg(&shared.config.listen)
        .ignore();
    pipe.cmd("PEXPIRE")
        .arg(&keys.own_node)
        .arg(expiry_ms)
        .ignore();
    let mut rewrite = false;
    match written.as_ref() {
        None => {
            rewrite = true;
            pipe.cmd("DEL").arg(&keys.own_users).ignore();
            let all: Vec<_> = users.iter().collect();
            set_users(&mut pipe, &keys.own_users, &all);
        }
        Some(before) => {
            let changed: Vec<_> = users
                .iter()
                .filter(|(user, n)| before.get(*user) != Some(n))
                .collect();
            set_users(&mut pipe, &keys.own_users, &changed);
            let gone: Vec<&Arc<str>> = before
                .keys()
                .filter(|user| !users.contains_key(*user))
                .collect();
            for chunk in gone.chunks(USERS_PER_COMMAND) {
                pipe.cmd("HDEL")
                    .arg(&keys.own_users)
                    .arg(chunk.iter().map(|u| &***u).collect::<Vec<&str>>())
                    .ignore();
            }
        }
    }
    pipe.cmd("PEXPIRE")
        .arg(&keys.own_users)
        .arg(expiry_ms)
        .ignore();
    pipe.cmd("ZADD")
        .arg(&keys.nodes)
        .arg(now.saturating_add(expiry_ms))
        .arg(shared.config.node_id.as_str())
        .ignore();
    // Entries that expired an expiry ago: their nodes are long gone (the
    // margin is for clocks that disagree), and the index stays small.
    pipe.cmd("ZREMRANGEBYSCORE")
        .arg(&keys.nodes)
        .arg("-inf")
        .arg(format!("({}", now.saturating_sub(expiry_ms)))
        .ignore();
    pipe.cmd("HLEN").arg(&keys.own_users);
    pipe.cmd("ZCOUNT").arg(&keys.nodes).arg(now).arg("+inf");
    let (stored, alive): (usize, u64) = pipe.query_async(&mut conn).await?;
    shared.metrics.nodes_alive.store(alive, Ordering::Relaxed);
    if rewrite {
        shared
            .metrics
            .presence_rewrites
            .fetch_add(1, Ordering::Relaxed);
    }
    *written = (stored == users.len()).then_some(users);
    Ok(())
}

/// `HSET`s of `users` (user → streams) into `key`, in chunks.
fn set_users(pipe: &mut Pipeline, key: &str, users: &[(&Arc<str>, &usize)]) {
    for chunk in users.chunks(USERS_PER_COMMAND) {
        let cmd = pipe.cmd("HSET").arg(key);
        for (user, n) in chunk {
            cmd.arg(&***user).arg(**n);
        }
        cmd.ignore();
    }
}

/// Removes this node's presence (graceful shutdown), within [`ADMIN_DEADLINE`].
pub(crate) async fn remove(shared: &Shared) -> Result<(), ClusterError> {
    let work = async {
        let mut conn = shared.commands().await?;
        let keys = &shared.keys;
        redis::pipe()
            .atomic()
            .cmd("DEL")
            .arg(&keys.own_node)
            .arg(&keys.own_users)
            .ignore()
            .cmd("ZREM")
            .arg(&keys.nodes)
            .arg(shared.config.node_id.as_str())
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    };
    tokio::time::timeout(ADMIN_DEADLINE, work)
        .await
        .map_err(|_| ClusterError::Timeout)?
}
