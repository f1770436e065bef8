//! Admin routes: who is online, closing a user's streams, topic info, stats.
//! The router lets a request reach them only through [`require_admin`].
//!
//! On a node of a cluster (`AppState::cluster`) the stats, users and kick
//! routes answer for every live node (`herald_cluster`). When Redis cannot
//! be reached in time the reads answer with this node's figures alone and
//! say so (`"cluster_view": "unavailable"`, `cluster_error`); a kick then
//! closes this node's streams and answers `503 log_unavailable`, since the
//! other nodes' were not closed.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::Version;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use herald_cluster::{Cluster, ClusterError};
use herald_core::Topic;
use serde_json::{json, Value};
use tokio::time::MissedTickBehavior;

use crate::error::{ApiError, ErrorCode};
use crate::query::QueryPairs;
use crate::routes::subscribe::set_stream_headers;
use crate::AppState;

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// Lets a request through to an admin route only with admin access.
pub(crate) async fn require_admin(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let query = QueryPairs::parse(request.uri().query());
    match state.auth.admin(&query, request.headers()).await {
        Ok(()) => next.run(request).await,
        Err(err) => err.into_response(),
    }
}

/// `GET /v1/stats`.
pub(crate) async fn stats(State(state): State<Arc<AppState>>) -> Response {
    let counts = state.hub.counts();
    let lag = state.hub.delivery_lag();
    let mut stats = json!({
        "connections": counts.connections,
        // The cap in force: `max_connections`, lowered to fit the fd limit.
        "max_connections": state.budget.streams,
        "fd_limit": state.budget.fd_limit,
        "users_online": counts.users_online,
        "topics": counts.topics,
        "events_published": state.published.load(Ordering::Relaxed),
        "events_delivered": state.hub.events_delivered(),
        "write_timeouts": state.write_timeouts(),
        "delivery_lag_ms": {
            "median": lag.median_ms,
            "max": lag.max_ms,
            "dispatch": lag.dispatch_ms,
        },
        "streams_behind": lag.streams_behind,
        "uptime_s": state.hub.uptime().as_secs(),
        "nodes": [LOCAL_NODE],
        // The event log backend's own figures, without the `herald_` prefix.
        "log": state.log.metrics().iter().map(|m| (m.name.trim_start_matches("herald_").to_owned(), json!(m.value))).collect::<serde_json::Map<_, _>>(),
        "refusals": state
            .refusals
            .by_code()
            .filter(|(_, n)| *n > 0)
            .map(|(code, n)| (code.as_str().to_owned(), json!(n)))
            .collect::<serde_json::Map<_, _>>(),
        "streams_turned_away": {
            "max_connections": state.refusals.over_capacity.load(Ordering::Relaxed),
            "max_connections_per_ip": state.refusals.over_ip_limit.load(Ordering::Relaxed),
            "max_connections_per_user": state.refusals.over_user_limit.load(Ordering::Relaxed),
        },
    });
    if let Some(cluster) = &state.cluster {
        cluster_stats(cluster, &mut stats).await;
    }
    Json(stats).into_response()
}

/// What `nodes` says on a single node.
const LOCAL_NODE: &str = "local";

/// Turns this node's `stats` into the cluster's: the counts summed over the
/// live nodes (users counted once however many nodes they are on), the
/// nodes listed, each node's figures under `node_stats`. The limits, lag
/// and refusals stay this node's.
async fn cluster_stats(cluster: &Cluster, stats: &mut Value) {
    stats["node"] = json!(cluster.node_id().as_str());
    match cluster.stats().await {
        Ok(view) => {
            stats["connections"] = json!(view.sum(|n| n.connections));
            stats["users_online"] = json!(view.users_online);
            stats["topics"] = json!(view.sum(|n| n.topics));
            stats["events_published"] = json!(view.sum(|n| n.events_published));
            stats["events_delivered"] = json!(view.sum(|n| n.events_delivered));
            stats["nodes"] = json!(view.node_ids());
            stats["node_stats"] = view
                .nodes
                .iter()
                .map(|n| {
                    json!({
                        "id": n.id,
                        "listen": n.listen,
                        "connections": n.connections,
                        "users_online": n.users_online,
                        "topics": n.topics,
                        "events_published": n.events_published,
                        "events_delivered": n.events_delivered,
                        "uptime_s": n.uptime_s,
                    })
                })
                .collect();
            stats["cluster_view"] = json!("complete");
        }
        Err(err) => {
            stats["nodes"] = json!([cluster.node_id().as_str()]);
            unavailable(stats, &err);
        }
    }
}

/// Marks an answer as this node's alone.
fn unavailable(answer: &mut Value, err: &ClusterError) {
    answer["cluster_view"] = json!("unavailable");
    answer["cluster_error"] = json!(format!("{err}; these figures are this node's alone"));
}

/// `GET /v1/users?limit=100&cursor=...`: online users, sorted by id. The
/// cursor is the last id of the previous page.
pub(crate) async fn users(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> Result<Response, ApiError> {
    let query = QueryPairs::parse(request.uri().query());
    let limit = page_limit(&query)?;
    let cursor = query.first("cursor").filter(|c| !c.is_empty());
    // One more than asked tells whether there is a next page.
    let local_page = |state: &AppState| {
        state
            .hub
            .users_page(cursor, limit + 1)
            .into_iter()
            .map(|(id, n)| (id.to_string(), n))
            .collect::<Vec<_>>()
    };
    let (page, cluster_error) = match &state.cluster {
        None => (local_page(&state), None),
        Some(cluster) => match cluster.users_page(cursor, limit + 1).await {
            Ok(page) => (page, None),
            Err(err) => (local_page(&state), Some(err)),
        },
    };
    let (users, next) = page_rows(page, limit, "id", "connections");
    let mut answer = json!({"users": users, "next": next});
    mark_view(&state, &mut answer, cluster_error.as_ref());
    Ok(Json(answer).into_response())
}

/// On a cluster, says whether `answer` covers every live node.
fn mark_view(state: &AppState, answer: &mut Value, err: Option<&ClusterError>) {
    match (&state.cluster, err) {
        (None, _) => {}
        (Some(_), None) => answer["cluster_view"] = json!("complete"),
        (Some(_), Some(err)) => unavailable(answer, err),
    }
}

/// `GET /v1/users/{id}`.
pub(crate) async fn user(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let (connections, cluster_error) = match &state.cluster {
        None => (state.hub.user_connections(&id), None),
        Some(cluster) => match cluster.user_connections(&id).await {
            Ok(n) => (n, None),
            Err(err) => (state.hub.user_connections(&id), Some(err)),
        },
    };
    let mut answer = json!({"id": id, "online": connections > 0, "connections": connections});
    mark_view(&state, &mut answer, cluster_error.as_ref());
    Json(answer).into_response()
}

/// `DELETE /v1/users/{id}/connections`: ends every stream of that user (on
/// a cluster, on every node: `closed` counts this node's and those the
/// other nodes reported within a second; `pending_nodes` lists the live
/// nodes that had not reported by then).
pub(crate) async fn kick(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let Some(cluster) = &state.cluster else {
        let closed = state.hub.close_user(&id);
        return Json(json!({"closed": closed})).into_response();
    };
    let outcome = cluster.kick(&id).await;
    if let Some(err) = &outcome.error {
        return ApiError::unavailable(format!(
            "closed {} stream(s) of this user on this node, but the other nodes could not be told ({err}); retry",
            outcome.closed_here
        ))
        .into_response();
    }
    Json(json!({
        "closed": outcome.closed(),
        "pending_nodes": outcome.pending,
    }))
    .into_response()
}

/// `GET /v1/topics/{topic}` (the topic URL-encoded; a raw `/` works too).
pub(crate) async fn topic(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let topic = Topic::new(&name).map_err(|e| ApiError::invalid_topic(&name, e))?;
    let last = state
        .log
        .last_id_for_topic(&topic)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok(Json(json!({
        "topic": name,
        "subscribers": state.hub.topic_subscribers(&name),
        "last_event_id": last.map(|id| id.to_string()),
    }))
    .into_response())
}

/// `GET /v1/topics?limit=100&cursor=...`: the subscribed topics and patterns
/// as subscribers wrote them (personal topics included), sorted by name,
/// each with the number of open streams that name it. Paged like
/// [`users`]: the cursor is the last name of the previous page.
pub(crate) async fn topics(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> Result<Response, ApiError> {
    let query = QueryPairs::parse(request.uri().query());
    let limit = page_limit(&query)?;
    let cursor = query.first("cursor").filter(|c| !c.is_empty());
    // One more than asked tells whether there is a next page.
    let page = state.hub.subscriptions_page(cursor, limit + 1);
    let (topics, next) = page_rows(page, limit, "topic", "subscribers");
    Ok(Json(json!({"topics": topics, "next": next})).into_response())
}

/// A page of `(name, count)` rows read with one row more than `limit` (which
/// tells whether there is a next page): at most `limit` rows as objects
/// `{name_key: name, count_key: count}`, and the next page's cursor (the last
/// name shown), `None` at the end.
fn page_rows<N: serde::Serialize + Clone>(
    mut rows: Vec<(N, usize)>,
    limit: usize,
    name_key: &str,
    count_key: &str,
) -> (Vec<Value>, Option<N>) {
    let next = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|(name, _)| name.clone())
    } else {
        None
    };
    let rows = rows
        .iter()
        .map(|(name, n)| json!({ name_key: name, count_key: n }))
        .collect();
    (rows, next)
}

/// `limit` of a paged admin route: 1 to [`MAX_PAGE`], [`DEFAULT_PAGE`] when
/// absent.
fn page_limit(query: &QueryPairs) -> Result<usize, ApiError> {
    let Some(raw) = query.first("limit") else {
        return Ok(DEFAULT_PAGE);
    };
    raw.parse::<usize>()
        .ok()
        .filter(|l| (1..=MAX_PAGE).contains(l))
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidLimit,
                format!("limit must be a whole number from 1 to {MAX_PAGE}"),
            )
        })
}

/// How often `GET /v1/stats/stream` sends a frame.
pub const STATS_STREAM_PERIOD: Duration = Duration::from_secs(1);
/// Topics in each stats frame's `top_topics`.
const STATS_FRAME_TOPICS: usize = 10;
/// Users in each stats frame's `users` (the first by id).
const STATS_FRAME_USERS: usize = 100;

/// `GET /v1/stats/stream`: the dashboard's figures as an event stream, one
/// `stats` event a second, the first at once. The frames are made for this
/// stream alone and never enter the event log (they have no id), and the
/// stream holds nothing but a timer: it ends when the client goes, and when
/// the server shuts down (with the hub's streams, so it holds no shutdown
/// up; the client reconnects as after any ended stream).
pub(crate) async fn stats_stream(State(state): State<Arc<AppState>>, version: Version) -> Response {
    let preamble = herald_sse::encode_notice(Some(state.hub.config().retry_ms), "ok");
    let mut ticks = tokio::time::interval(STATS_STREAM_PERIOD);
    // A late frame is sent late, not followed by a burst of catch-up frames.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let closed = state.hub.closed();
    let frames = stream::unfold((state, ticks), |(state, mut ticks)| async move {
        ticks.tick().await;
        let frame = stats_frame(&state);
        Some((Ok::<Bytes, Infallible>(frame), (state, ticks)))
    })
    .take_until(closed);
    let body = stream::once(std::future::ready(Ok(preamble))).chain(frames);
    let mut response = Body::from_stream(body).into_response();
    set_stream_headers(response.headers_mut(), version);
    response
}

/// One `stats` event of [`stats_stream`]: the counts, the cumulative event
/// counters (a reader derives rates from two frames and their `at_ms`), the
/// delivery lag, the busiest topics and the first online users.
fn stats_frame(state: &AppState) -> Bytes {
    let counts = state.hub.counts();
    let lag = state.hub.delivery_lag();
    let top_topics: Vec<_> = state
        .hub
        .busiest_subscriptions(STATS_FRAME_TOPICS)
        .into_iter()
        .map(|(name, n)| json!({"topic": name, "subscribers": n}))
        .collect();
    let users: Vec<_> = state
        .hub
        .first_users(STATS_FRAME_USERS)
        .iter()
        .map(|(id, n)| json!({"id": &**id, "connections": n}))
        .collect();
    let data = json!({
        "at_ms": herald_core::now_ms(),
        "connections": counts.connections,
        "max_connections": state.budget.streams,
        "users_online": counts.users_online,
        "topics": counts.topics,
        "events_published": state.published.load(Ordering::Relaxed),
        "events_delivered": state.hub.events_delivered(),
        "delivery_lag_ms": {
            "median": lag.median_ms,
            "max": lag.max_ms,
            "dispatch": lag.dispatch_ms,
        },
        "streams_behind": lag.streams_behind,
        "uptime_s": state.hub.uptime().as_secs(),
        "top_topics": top_topics,
        "users": users,
    })
    .to_string();
    let fields = herald_sse::EventFields {
        event: Some("stats"),
        data: &data,
        ..Default::default()
    };
    // A fixed type and no id: nothing here can be refused by the encoder.
    herald_sse::encode_event(&fields).unwrap_or_else(|_| herald_sse::encode_comment("stats"))
}
