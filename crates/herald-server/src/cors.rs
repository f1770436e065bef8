//! CORS: browsers on other origins may subscribe and publish.
//!
//! An allowed origin is echoed exactly (never `*`) with
//! `Access-Control-Allow-Credentials: true`, because `withCredentials`
//! EventSources and cookie auth need both. Preflights allow the
//! `Authorization` and `Last-Event-ID` headers that fetch-based SSE clients add.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;

/// Adds CORS headers, and answers preflights itself.
pub(crate) async fn cors(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let origin = allowed_origin(&state.config.allowed_origins, request.headers());
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, last-event-id, content-type, cache-control"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        r
    } else {
        next.run(request).await
    };
    set_cors_headers(response.headers_mut(), origin);
    response
}

/// The request's `Origin`, if it is allowed.
pub(crate) fn allowed_origin(allowed: &[String], request: &HeaderMap) -> Option<HeaderValue> {
    request
        .get(header::ORIGIN)
        .filter(|o| origin_allowed(allowed, o))
        .cloned()
}

/// Adds `Vary: Origin` and, for an allowed origin, the exact-echo headers.
pub(crate) fn set_cors_headers(response: &mut HeaderMap, origin: Option<HeaderValue>) {
    response.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = origin {
        response.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        response.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
}

fn origin_allowed(allowed: &[String], origin: &HeaderValue) -> bool {
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
}
