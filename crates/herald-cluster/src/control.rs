//! The control stream: admin actions every node carries out. Today one,
//! the kick (`op=kick user=<id> from=<node>`): the kicking node closes the
//! user's streams itself, appends the kick, and waits (bounded) for the
//! other live nodes' reports in `{prefix}:kick:<entry id>`.
//!
//! Every node tails the stream on a connection of its own with `XREAD
//! BLOCK` [`CONTROL_BLOCK`]; a read that has not answered within the block
//! time plus [`WEDGE_SLACK`] means a wedged connection, which is dropped
//! and replaced (counted in `herald_cluster_control_tail_reconnects_total`).
//! The tail resumes after the last entry it read, so a kick made while a
//! node was briefly cut off still reaches it; one older than
//! [`MAX_KICK_AGE`] is skipped (its user may have come back since, and the
//! kicker has long answered).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use herald_core::now_ms;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use tokio::time::Instant;

use crate::view::{bounded, live_others, KickOutcome};
use crate::{
    ClusterError, Shared, ADMIN_DEADLINE, CONTROL_BLOCK, CONTROL_STREAM_LENGTH, KICK_REPLY_TTL,
    KICK_REPORT_WAIT, WEDGE_SLACK,
};

/// A kick older than this (by its entry id, Redis's clock, against this
/// node's) is not carried out.
pub const MAX_KICK_AGE: Duration = Duration::from_secs(30);
/// Entries read per `XREAD`.
const READ_COUNT: usize = 100;
/// The whole of a kick, the other nodes' reports included, takes at most this.
const KICK_DEADLINE: Duration = Duration::from_millis(1900);
/// How often a kick looks for the other nodes' reports.
const REPORT_POLL: Duration = Duration::from_millis(50);
/// First and longest wait between control-tail reconnects.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Tails the control stream forever, reconnecting after every failure.
pub(crate) async fn run_tail(shared: Arc<Shared>) {
    let mut last_id: Option<String> = None;
    let mut backoff = FIRST_BACKOFF;
    let mut failing = false;
    let mut first = true;
    loop {
        if !first {
            shared
                .metrics
                .control_tail_reconnects
                .fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        first = false;
        let err = match tokio::time::timeout(ADMIN_DEADLINE, (shared.connector)()).await {
            Err(_) => ClusterError::Timeout,
            Ok(Err(err)) => err.into(),
            Ok(Ok(mut conn)) => {
                // The client's own response timeout would end every
                // blocking read early; ours is the wedge detector.
                conn.set_response_timeout(CONTROL_BLOCK + WEDGE_SLACK);
                let mut on_read = || {
                    backoff = FIRST_BACKOFF;
                    if failing {
                        failing = false;
                        tracing::info!("the control stream's tail is reading again");
                    }
                };
                tail(&shared, conn, &mut last_id, &mut on_read).await
            }
        };
        if !failing {
            failing = true;
            tracing::warn!(%err, "the control stream's tail failed; reconnecting");
        }
    }
}

/// Reads the control stream after `last_id` until a read fails or wedges.
async fn tail(
    shared: &Shared,
    mut conn: MultiplexedConnection,
    last_id: &mut Option<String>,
    on_read: &mut impl FnMut(),
) -> ClusterError {
    let wedged_after = CONTROL_BLOCK + WEDGE_SLACK;
    let block_ms = CONTROL_BLOCK.as_millis() as u64;
    if last_id.is_none() {
        // From the newest entry on: kicks made before this node joined
        // are not for its streams.
        let mut newest = redis::cmd("XREVRANGE");
        newest
            .arg(&shared.keys.control)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1);
        let newest = newest.query_async::<StreamRangeReply>(&mut conn);
        match tokio::time::timeout(wedged_after, newest).await {
            Err(_) => return ClusterError::Timeout,
            Ok(Err(err)) => return err.into(),
            Ok(Ok(reply)) => {
                *last_id = Some(
                    reply
                        .ids
                        .first()
                        .map_or_else(|| "0-0".to_owned(), |e| e.id.clone()),
                );
                // Every kick from now on will be read: the node may show
                // itself to the others (see `presence::run`).
                shared.tail_positioned.send_replace(true);
            }
        }
    }
    loop {
        let after = last_id.clone().unwrap_or_else(|| "0-0".to_owned());
        let mut read = redis::cmd("XREAD");
        read.arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(&shared.keys.control)
            .arg(&after);
        let read = read.query_async::<Option<StreamReadReply>>(&mut conn);
        let reply = match tokio::time::timeout(wedged_after, read).await {
            Err(_) => return ClusterError::Timeout,
            Ok(Err(err)) => return err.into(),
            Ok(Ok(reply)) => reply,
        };
        on_read();
        for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
            if let Err(err) = carry_out(shared, &mut conn, &entry).await {
                return err;
            }
            *last_id = Some(entry.id);
        }
    }
}

/// Carries out one control entry and reports it.
async fn carry_out(
    shared: &Shared,
    conn: &mut MultiplexedConnection,
    entry: &StreamId,
) -> Result<(), ClusterError> {
    let field = |name: &str| entry.get::<String>(name);
    if field("op").as_deref() != Some("kick") {
        // Written by a newer node: not ours to understand.
        return Ok(());
    }
    let (Some(user), Some(from)) = (field("user"), field("from")) else {
        return Ok(());
    };
    if from == shared.config.node_id.as_str() {
        return Ok(());
    }
    let made_at_ms = entry
        .id
        .split('-')
        .next()
        .and_then(|ms| ms.parse::<u64>().ok())
        .unwrap_or(0);
    if now_ms().saturating_sub(made_at_ms) > MAX_KICK_AGE.as_millis() as u64 {
        return Ok(());
    }
    let closed = shared.hub.close_user(&user);
    shared
        .metrics
        .kicks_received
        .fetch_add(1, Ordering::Relaxed);
    tracing::info!(%user, %from, closed, "kick from another node");
    let reports = shared.keys.kick_reports(&entry.id);
    let mut report = redis::pipe();
    report
        .cmd("HSET")
        .arg(&reports)
        .arg(shared.config.node_id.as_str())
        .arg(closed)
        .ignore()
        .cmd("PEXPIRE")
        .arg(&reports)
        .arg(KICK_REPLY_TTL.as_millis() as u64)
        .ignore();
    let report = report.query_async::<()>(conn);
    tokio::time::timeout(CONTROL_BLOCK + WEDGE_SLACK, report)
        .await
        .map_err(|_| ClusterError::Timeout)??;
    Ok(())
}

/// Closes `user`'s streams here, tells the other nodes, and waits (at most
/// [`KICK_REPORT_WAIT`], all of it within [`KICK_DEADLINE`]) for their reports.
pub(crate) async fn kick(shared: &Shared, user: &str) -> KickOutcome {
    let deadline = Instant::now() + KICK_DEADLINE;
    let mut outcome = KickOutcome {
        closed_here: shared.hub.close_user(user),
        ..KickOutcome::default()
    };
    let told = bounded(shared, async {
        let mut conn = shared.commands().await?;
        let others: Vec<String> = live_others(shared, &mut conn)
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        // Appended even with no other node known: one that has just
        // started and not yet written its presence still reads it.
        let entry: String = redis::cmd("XADD")
            .arg(&shared.keys.control)
            .arg("MAXLEN")
            .arg("~")
            .arg(CONTROL_STREAM_LENGTH)
            .arg("*")
            .arg("op")
            .arg("kick")
            .arg("user")
            .arg(user)
            .arg("from")
            .arg(shared.config.node_id.as_str())
            .query_async(&mut conn)
            .await?;
        Ok((entry, others))
    })
    .await;
    let (entry, others) = match told {
        Ok(told) => told,
        Err(err) => {
            tracing::warn!(%err, %user, "a kick could not be passed to the other nodes; only this node's streams were closed");
            outcome.error = Some(err);
            return outcome;
        }
    };
    let wait_until = deadline.min(Instant::now() + KICK_REPORT_WAIT);
    let key = shared.keys.kick_reports(&entry);
    let mut reports: HashMap<String, usize> = HashMap::new();
    while !others.is_empty() {
        let poll = async {
            let mut conn = shared.commands().await?;
            let got: HashMap<String, usize> = redis::cmd("HGETALL")
                .arg(&key)
                .query_async(&mut conn)
                .await?;
            Ok::<_, ClusterError>(got)
        };
        match tokio::time::timeout_at(deadline, poll).await {
            Ok(Ok(got)) => reports = got,
            // Redis went away after the kick was appended: the nodes that
            // read it still close the streams; they are reported pending.
            Ok(Err(_)) | Err(_) => {
                shared.forget_commands();
                break;
            }
        }
        if others.iter().all(|id| reports.contains_key(id)) || Instant::now() >= wait_until {
            break;
        }
        tokio::time::sleep_until(wait_until.min(Instant::now() + REPORT_POLL)).await;
    }
    for id in others {
        match reports.get(&id) {
            Some(n) => outcome.reports.push((id, *n)),
            None => outcome.pending.push(id),
        }
    }
    outcome
}
