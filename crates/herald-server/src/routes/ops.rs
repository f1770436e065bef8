//! Health, readiness, metrics, and the JSON answers for unknown routes.

use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::error::{ApiError, ErrorCode};
use crate::AppState;

/// `GET /healthz`: the process is alive.
pub(crate) async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// `GET /readyz`: the event log can take events.
pub(crate) async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.log.ready().await {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(e) => ApiError::unavailable(e.to_string()).into_response(),
    }
}

/// `GET /metrics`: Prometheus text format.
pub(crate) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let counts = state.hub.counts();
    let c = &state.hub.counters;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        );
    };
    metric(
        "herald_connections",
        "gauge",
        "Open event streams.",
        counts.connections as u64,
    );
    metric(
        "herald_users_online",
        "gauge",
        "Users with an open stream.",
        counts.users_online as u64,
    );
    metric(
        "herald_topics",
        "gauge",
        "Subscribed topics and patterns.",
        counts.topics as u64,
    );
    metric(
        "herald_events_published_total",
        "counter",
        "Events stored via this node.",
        state.published.load(Ordering::Relaxed),
    );
    metric(
        "herald_events_dispatched_total",
        "counter",
        "Events fanned out by this node.",
        c.dispatched.load(Ordering::Relaxed),
    );
    metric(
        "herald_events_delivered_total",
        "counter",
        "Event frames written to streams.",
        state.hub.events_delivered(),
    );
    metric(
        "herald_stream_lagged_total",
        "counter",
        "Times a slow stream switched to catch-up from the log.",
        state.hub.streams_lagged(),
    );
    metric(
        "herald_connections_opened_total",
        "counter",
        "Streams opened.",
        c.connections_opened.load(Ordering::Relaxed),
    );
    metric(
        "herald_streams_write_timed_out_total",
        "counter",
        "Connections closed because their socket took no byte for write_timeout_secs.",
        state.write_timeouts(),
    );
    metric(
        "herald_uptime_seconds",
        "gauge",
        "Seconds since start.",
        state.hub.uptime().as_secs(),
    );
    let _ = write!(
        out,
        "# HELP herald_refusals_total Requests refused, by error code.\n\
         # TYPE herald_refusals_total counter\n"
    );
    for (code, n) in state.refusals.by_code() {
        let _ = writeln!(out, "herald_refusals_total{{code=\"{code}\"}} {n}");
    }
    let _ = write!(
        out,
        "# HELP herald_streams_turned_away_total Subscribers told to come back later, by limit.\n\
         # TYPE herald_streams_turned_away_total counter\n\
         herald_streams_turned_away_total{{limit=\"max_connections\"}} {}\n\
         herald_streams_turned_away_total{{limit=\"max_connections_per_ip\"}} {}\n\
         herald_streams_turned_away_total{{limit=\"max_connections_per_user\"}} {}\n",
        state.refusals.over_capacity.load(Ordering::Relaxed),
        state.refusals.over_ip_limit.load(Ordering::Relaxed),
        state.refusals.over_user_limit.load(Ordering::Relaxed),
    );
    let lag = state.hub.delivery_lag();
    let _ = write!(
        out,
        "# HELP herald_delivery_lag_seconds How far behind streams are: the median stream, the furthest, and the dispatcher.\n\
         # TYPE herald_delivery_lag_seconds gauge\n\
         herald_delivery_lag_seconds{{of=\"median\"}} {:.3}\n\
         herald_delivery_lag_seconds{{of=\"max\"}} {:.3}\n\
         herald_delivery_lag_seconds{{of=\"dispatch\"}} {:.3}\n",
        lag.median_ms as f64 / 1000.0,
        lag.max_ms as f64 / 1000.0,
        lag.dispatch_ms as f64 / 1000.0,
    );
    let _ = write!(
        out,
        "# HELP herald_streams_behind Streams with events acknowledged but not yet written.\n\
         # TYPE herald_streams_behind gauge\n\
         herald_streams_behind {}\n",
        lag.streams_behind,
    );
    if let Some(cluster) = &state.cluster {
        out.push_str(&cluster.metrics_text());
    }
    // The event log backend's own figures (the Redis log's tail, ...).
    for m in state.log.metrics() {
        let kind = if m.counter { "counter" } else { "gauge" };
        let _ = write!(
            out,
            "# HELP {0} {1}\n# TYPE {0} {kind}\n{0} {2}\n",
            m.name, m.help, m.value
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// Any route not in docs/api.md.
pub(crate) async fn not_found() -> Response {
    ApiError::new(
        ErrorCode::NotFound,
        "no such route; the routes are listed in docs/api.md",
    )
    .into_response()
}

/// A known route with the wrong method.
pub(crate) async fn method_not_allowed() -> Response {
    let mut response = ApiError::method_not_allowed().into_response();
    // Keep the 405 status even though the handler is a fallback.
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
}
