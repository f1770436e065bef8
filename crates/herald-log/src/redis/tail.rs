//! The tail: one task per log, on its own connection, and the window of
//! recent events it keeps (the module doc of `redis` says why and how).
//!
//! Invariants:
//! - the window's events are contiguous in the stream: `base` is the entry
//!   right before the first (or `None` when that is not known), so a read
//!   after `base` or after one of its events can be answered from it;
//!   whenever the tail cannot vouch for that (a new epoch, the id it resumes
//!   after gone, retention past it, an entry it could not decode), the
//!   window is forgotten and reads ask Redis;
//! - `head` only grows, and only to ids the tail fetched (or the start
//!   position);
//! - every read is bounded by `block + TAIL_GRACE`: a silent connection is
//!   dropped, never waited on.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{RedisError, Value};
use herald_core::{Event, EventId, FrameArena};
use tokio::sync::watch;

use super::{
    codec, entry_raw_id, newest_entry, Shared, MAX_BACKOFF, TAIL_COUNT, TAIL_GRACE, WINDOW_EVENTS,
};
use crate::names::Names;

/// The most recent events the tail fetched, contiguous in the stream:
/// `base` is the entry right before the first one (`None` when unknown).
#[derive(Debug, Default)]
pub(super) struct Window {
    pub(super) events: VecDeque<Arc<Event>>,
    pub(super) base: Option<u64>,
    epoch: Option<u64>,
    names: Names,
    frames: FrameArena,
}

impl Window {
    pub(super) fn newest(&self) -> Option<u64> {
        self.events.back().map(|e| e.id.0).or(self.base)
    }

    /// Forgets everything: the history it belonged to is gone.
    fn forget(&mut self) {
        self.events.clear();
        self.base = None;
        self.epoch = None;
    }

    fn push(&mut self, event: Event, capacity: usize, max_age_ms: u64, now_ms: u64) {
        self.events.push_back(Arc::new(event));
        while let Some(front) = self.events.front() {
            let too_old = now_ms.saturating_sub(front.stored_at_ms()) > max_age_ms;
            if self.events.len() <= capacity && !too_old {
                break;
            }
            self.base = Some(front.id.0);
            self.events.pop_front();
        }
        self.names.sweep_if_grown();
    }
}

/// The tail: see the module doc.
pub(super) async fn run_tail(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(50);
    // The stream id the next read continues after; `None` until the first
    // connection found the newest entry.
    let mut resume: Option<String> = None;
    let mut first = true;
    loop {
        if *stop.borrow() {
            return;
        }
        if !first {
            tokio::select! {
                _ = stop.changed() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            shared.stats.tail_reconnects.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        let connected = tokio::select! {
            _ = stop.changed() => return,
            c = tokio::time::timeout(TAIL_GRACE, start_tail(&shared, &mut resume)) => c,
        };
        let mut connection = match connected {
            Ok(Ok(connection)) => connection,
            Ok(Err(e)) => {
                shared
                    .stats
                    .round_trip_failures
                    .fetch_add(1, Ordering::Relaxed);
                tail_down(&shared, format!("cannot connect: {e}")).await;
                continue;
            }
            Err(_) => {
                shared
                    .stats
                    .round_trip_failures
                    .fetch_add(1, Ordering::Relaxed);
                tail_down(&shared, format!("connecting took over {TAIL_GRACE:?}")).await;
                continue;
            }
        };
        if shared.tail_attempted.load(Ordering::Acquire) && !*shared.tail_healthy.borrow() {
            tracing::info!(after = ?resume, "the Redis tail is reading again");
        }
        shared.set_tail_health(true, String::new);
        backoff = Duration::from_millis(50);
        let block_ms = shared.options.tail_block.as_millis() as u64;
        let deadline = shared.options.tail_block + TAIL_GRACE;
        loop {
            let after = resume.clone().unwrap_or_else(|| "0-0".to_owned());
            // `meta.trimmed`, read right after the entries: if retention
            // removed `after` or anything past it, entries may have gone
            // before this read saw them, and the window is not contiguous.
            let mut pipe = ::redis::pipe();
            pipe.cmd("XREAD")
                .arg("BLOCK")
                .arg(block_ms)
                .arg("COUNT")
                .arg(TAIL_COUNT)
                .arg("STREAMS")
                .arg(&shared.keys.stream)
                .arg(&after)
                .cmd("HGET")
                .arg(&shared.keys.meta)
                .arg("trimmed");
            let read = pipe.query_async::<(Value, Option<u64>)>(&mut connection);
            let reply = tokio::select! {
                _ = stop.changed() => return,
                r = tokio::time::timeout(deadline, read) => r,
            };
            match reply {
                Ok(Ok((Value::Nil, _))) => {}
                Ok(Ok((reply, trimmed))) => {
                    let after_id = codec::parse_entry_id(after.as_bytes()).unwrap_or(0);
                    if trimmed.is_some_and(|t| t >= after_id) {
                        shared.window.write().forget();
                    }
                    if let Some(last) = take_entries(&shared, &reply) {
                        resume = Some(last);
                    }
                }
                Ok(Err(e)) => {
                    shared
                        .stats
                        .round_trip_failures
                        .fetch_add(1, Ordering::Relaxed);
                    tail_down(&shared, format!("a read failed: {e}")).await;
                    break;
                }
                Err(_) => {
                    shared.stats.tail_wedged.fetch_add(1, Ordering::Relaxed);
                    tail_down(
                        &shared,
                        format!("a read did not return within {deadline:?} (a wedged connection)"),
                    )
                    .await;
                    break;
                }
            }
        }
    }
}

/// Marks the tail down; warns once per outage (each retry after is a
/// debug line). The writer's and reader's kept connections go too: Redis
/// is likely gone for them as well, and a fresh connection attempt tells
/// a publish at once that nothing was stored (a dead kept connection could
/// only say "maybe").
async fn tail_down(shared: &Shared, why: String) {
    shared.writer.broken().await;
    shared.reader.broken().await;
    let was_up = *shared.tail_healthy.borrow() || !shared.tail_attempted.load(Ordering::Acquire);
    if was_up {
        tracing::warn!(%why, "the Redis tail is not reading; retrying (at least every second)");
    } else {
        tracing::debug!(%why, "the Redis tail is still not reading");
    }
    shared.set_tail_health(false, || why);
}

/// Connects the tail and decides where it continues: after the newest
/// entry on its first connection, else after the last id it fetched,
/// checking that id is still an entry (if not, the history changed).
async fn start_tail(
    shared: &Shared,
    resume: &mut Option<String>,
) -> Result<MultiplexedConnection, RedisError> {
    let mut connection = shared.endpoint.connect_with_response_timeout(None).await?;
    match resume {
        None => {
            let newest = newest_entry(&mut connection, &shared.keys.stream).await?;
            let start = newest.max(shared.head_id()).unwrap_or(0);
            *resume = Some(format!("{start}-0"));
            {
                let mut window = shared.window.write();
                window.forget();
                // The start position is not an entry of the stream unless
                // it is the newest entry.
                window.base = newest.filter(|n| *n == start);
            }
            if start > 0 {
                shared.seen(start);
                shared.head.send_if_modified(|h| {
                    let raise = h.is_none_or(|h| h.0 < start);
                    if raise {
                        *h = Some(EventId(start));
                    }
                    raise
                });
            }
        }
        Some(last) => {
            let still: Value = ::redis::cmd("XRANGE")
                .arg(&shared.keys.stream)
                .arg(last.as_str())
                .arg(last.as_str())
                .query_async(&mut connection)
                .await?;
            let gone = matches!(&still, Value::Array(list) if list.is_empty());
            if gone && shared.window.read().newest().is_some() {
                shared.stats.history_breaks.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    after = %last,
                    "the last event the Redis tail fetched is no longer in the stream: Redis lost history (restart without its data, failover to a replica that was behind); resuming after it, resumes from the lost ids get herald.gap"
                );
                shared.window.write().forget();
            }
        }
    }
    Ok(connection)
}

/// Takes the entries of an `XREAD` reply into the window and the head;
/// returns the raw id of the last one.
fn take_entries(shared: &Shared, reply: &Value) -> Option<String> {
    // [[stream, [entry, ...]]], or a map in RESP3.
    let entries = match reply {
        Value::Array(streams) => match streams.first() {
            Some(Value::Array(pair)) => pair.get(1),
            _ => None,
        },
        Value::Map(streams) => streams.first().map(|(_, v)| v),
        _ => None,
    };
    let Some(Value::Array(entries)) = entries else {
        return None;
    };
    let retention = &shared.options.retention;
    let capacity = WINDOW_EVENTS.min(retention.max_events.max(1));
    let max_age_ms = retention.max_age.as_millis() as u64;
    let now = herald_core::now_ms();
    let mut last_raw = None;
    let mut newest = None;
    let mut window = shared.window.write();
    for entry in entries {
        let Some(raw) = entry_raw_id(entry) else {
            continue;
        };
        let window = &mut *window;
        match codec::decode(entry, &mut window.names, &mut window.frames) {
            Ok(decoded) => {
                if window.epoch.is_some_and(|e| e != decoded.epoch) {
                    shared.stats.epoch_changes.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        old_epoch = window.epoch,
                        new_epoch = decoded.epoch,
                        "the Redis stream has a new history (flushed or replaced): resumes from ids of the old one get herald.gap"
                    );
                    window.forget();
                }
                window.epoch = Some(decoded.epoch);
                newest = Some(decoded.id);
                window.push(decoded.event, capacity, max_age_ms, now);
            }
            Err(e) => {
                shared.skipped(&e);
                // The window must stay contiguous: restart it after the
                // skipped entry.
                window.forget();
                window.base = codec::parse_entry_id(&raw);
            }
        }
        last_raw = Some(String::from_utf8_lossy(&raw).into_owned());
    }
    drop(window);
    if let Some(newest) = newest {
        shared.seen(newest.0);
        shared.head.send_if_modified(|h| {
            let raise = h.is_none_or(|h| h < newest);
            if raise {
                *h = Some(newest);
            }
            raise
        });
    }
    last_raw
}
