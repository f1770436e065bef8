//! Admin routes: who is online, closing a user's streams, topic info, stats.
//! The router lets a request reach them only through [`require_admin`].

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
use herald_core::Topic;
use serde_json::json;
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
    Json(json!({
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
        "nodes": ["local"],
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
    }))
    .into_response()
}

/// `GET /v1/users?limit=100&cursor=...`: online users, sorted by id. The
/// cursor is the last id of the previous page.
pub(crate) async fn users(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> Result<Response, ApiError> {
    let query = QueryPairs::parse(request.uri().query());
    let limit = match query.first("limit") {
        None => DEFAULT_PAGE,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=MAX_PAGE).contains(l))
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidLimit,
                    format!("limit must be a whole number from 1 to {MAX_PAGE}"),
                )
            })?,
    };
    let cursor = query.first("cursor").filter(|c| !c.is_empty());
    // One more than asked tells whether there is a next page.
    let mut page = state.hub.users_page(cursor, limit + 1);
    let next = (page.len() > limit).then(|| {
        page.truncate(limit);
        page.last().map(|(id, _)| id.to_string())
    });
    let users: Vec<_> = page
        .iter()
        .map(|(id, n)| json!({"id": &**id, "connections": n}))
        .collect();
    Ok(Json(json!({"users": users, "next": next.flatten()})).into_response())
}

/// `GET /v1/users/{id}`.
pub(crate) async fn user(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let connections = state.hub.user_connections(&id);
    Json(json!({"id": id, "online": connections > 0, "connections": connections})).into_response()
}

/// `DELETE /v1/users/{id}/connections`: ends every stream of that user.
pub(crate) async fn kick(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let closed = state.hub.close_user(&id);
    Json(json!({"closed": closed})).into_response()
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
    let mut page = state.hub.subscriptions_page(cursor, limit + 1);
    let next = (page.len() > limit).then(|| {
        page.truncate(limit);
        page.last().map(|(name, _)| name.clone())
    });
    let topics: Vec<_> = page
        .iter()
        .map(|(name, n)| json!({"topic": name, "subscribers": n}))
        .collect();
    Ok(Json(json!({"topics": topics, "next": next.flatten()})).into_response())
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
