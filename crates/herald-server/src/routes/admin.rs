//! Admin routes: who is online, closing a user's streams, topic info, stats.
//! The router lets a request reach them only through [`require_admin`].

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_core::Topic;
use serde_json::json;

use crate::error::{ApiError, ErrorCode};
use crate::query::QueryPairs;
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
