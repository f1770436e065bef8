//! CORS: browsers on other origins may subscribe and publish.
//!
//! Two kinds of allowance, because credentials change what a page can do:
//! - `*` (the default) lets any page read answers *without* credentials:
//!   `Access-Control-Allow-Origin: *` and no `Allow-Credentials`, so the
//!   browser never attaches cookies (the `herald_token` cookie included) to
//!   a cross-origin request. A page can still pass a token it was given, in
//!   `?access_token=` or an `Authorization` header.
//! - An origin listed by name is echoed exactly with
//!   `Access-Control-Allow-Credentials: true`, which `withCredentials`
//!   EventSources and cookie auth need. `null` (sandboxed frames, `file:`)
//!   is allowed only if listed literally.
//!
//! Preflights allow the `Authorization` and `Last-Event-ID` headers that
//! fetch-based SSE clients add.

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

/// How a request's origin is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Allowed {
    /// Listed by name: echoed, with credentials.
    Named(HeaderValue),
    /// Allowed by `*`: without credentials.
    Any,
}

/// Whether the request's `Origin` is allowed, and how.
pub(crate) fn allowed_origin(allowed: &[String], request: &HeaderMap) -> Option<Allowed> {
    let origin = request.get(header::ORIGIN)?;
    let text = origin.to_str().ok()?;
    if allowed
        .iter()
        .any(|a| a != "*" && a.eq_ignore_ascii_case(text))
    {
        return Some(Allowed::Named(origin.clone()));
    }
    allowed.iter().any(|a| a == "*").then_some(Allowed::Any)
}

/// Adds `Vary: Origin` and, for an allowed origin, the headers that allow it.
pub(crate) fn set_cors_headers(response: &mut HeaderMap, origin: Option<Allowed>) {
    response.append(header::VARY, HeaderValue::from_static("Origin"));
    match origin {
        Some(Allowed::Named(origin)) => {
            response.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            response.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        Some(Allowed::Any) => {
            response.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        }
        None => {}
    }
    if response.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        // Let pages read the headers that explain a refusal or a retry.
        response.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("www-authenticate, retry-after"),
        );
    }
}
