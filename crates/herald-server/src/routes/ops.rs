//! Health, readiness, metrics, and the JSON answers for unknown routes.

use std::fmt::Write as _;
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

/// `GET /metrics`: Prometheus text format (the series are in `crate::metrics`).
pub(crate) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut out = state.metrics.render(&state);
    // Figures of the parts that exist only in some deployments, written as
    // text after the registered series: the cluster's presence and control
    // tail, and the event log backend's own (the Redis log's tail, ...).
    if let Some(cluster) = &state.cluster {
        out.push_str(&cluster.metrics_text());
    }
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

/// The OpenAPI 3.1 document of every route, written by hand and kept true
/// by `tests/api_reference.rs` (the same routes as the router) and
/// `tests/python/test_openapi.py` (every answer against its schema).
const OPENAPI: &str = include_str!("../openapi.json");

/// `GET /v1/openapi.json`.
pub(crate) async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
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
