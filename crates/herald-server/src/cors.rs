//! What a web page on another origin can make a visitor's browser do:
//! CORS, and dev mode's `Host` check.
//!
//! Two kinds of allowance, because credentials change what a page can do:
//! - `*` (the default) lets any page read answers *without* credentials:
//!   `Access-Control-Allow-Origin: *` and no `Allow-Credentials`, so the
//!   browser never attaches cookies (the `herald_token` cookie included) to
//!   a cross-origin request. A page can still pass a token it was given, in
//!   `?access_token=` or an `Authorization` header.
//! - An origin listed by name is echoed exactly with
//!   `Access-Control-Allow-Credentials: true`, which `withCredentials`
//!   EventSources and cookie auth need. `null` is never echoed, even when
//!   listed: every sandboxed frame and `file:` page sends it, so allowing it
//!   with credentials would allow any of them.
//!
//! Preflights allow the `Authorization` and `Last-Event-ID` headers that
//! fetch-based SSE clients add.
//!
//! Dev mode opens every route to whoever reaches the port, and a page can
//! reach a loopback port through DNS rebinding: its own host name,
//! re-pointed at 127.0.0.1, makes the browser treat Herald as the page's own
//! origin, where CORS does not apply. So in dev mode a request must name
//! Herald by a loopback name (`localhost`, `*.localhost`), an IP address (an
//! address cannot be rebound), or a name in `allowed_hosts`; any other
//! `Host` (or HTTP/2 `:authority`) gets `403 host_not_allowed`.

use std::sync::Arc;

use axum::extract::{Request, State};
use std::net::Ipv4Addr;

use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, ErrorCode};
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
    if text.eq_ignore_ascii_case("null") {
        return allowed.iter().any(|a| a == "*").then_some(Allowed::Any);
    }
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

/// Dev mode only: refuses a request that names Herald by a host name that is
/// not a loopback name (see the module doc: DNS rebinding).
pub(crate) async fn dev_host_guard(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    // HTTP/2 carries the name in `:authority`, which hyper puts in the URI.
    let host = request
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| request.headers().get(header::HOST)?.to_str().ok());
    match check_dev_host(&state.config.allowed_hosts, host) {
        Ok(()) => next.run(request).await,
        Err(err) => err.into_response(),
    }
}

/// Whether dev mode answers a request for `host` (a `Host` header value:
/// a name or address, with an optional port). A request without one (HTTP/1.0)
/// is answered: browsers always send it.
pub(crate) fn check_dev_host(allowed_hosts: &[String], host: Option<&str>) -> Result<(), ApiError> {
    let Some(host) = host else { return Ok(()) };
    let name = host_name(host);
    let name = name.strip_suffix('.').unwrap_or(name);
    let lower = name.to_ascii_lowercase();
    let loopback_name = lower == "localhost" || lower.ends_with(".localhost");
    let address = name.starts_with('[') || name.parse::<Ipv4Addr>().is_ok();
    if loopback_name || address || allowed_hosts.iter().any(|h| h.eq_ignore_ascii_case(name)) {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::HostNotAllowed,
        format!(
            "dev mode answers only requests for localhost or an IP address (a page could \
             otherwise reach it through DNS rebinding), not for {name:?}: add the name to \
             `allowed_hosts`, or run with tokens"
        ),
    ))
}

/// The host part of a `Host` value: `[::1]:8080` → `[::1]`, `a.b:80` → `a.b`.
fn host_name(host: &str) -> &str {
    if let Some(end) = host.find(']') {
        return &host[..=end];
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_mode_answers_loopback_names_and_addresses_only() {
        let listed = ["herald.internal".to_owned()];
        for host in [
            "localhost",
            "localhost:8080",
            "LOCALHOST.:8080",
            "app.localhost:3000",
            "127.0.0.1:8080",
            "10.1.2.3",
            "[::1]:8080",
            "[fe80::1]",
            "herald.internal:8080",
            "HERALD.internal",
        ] {
            assert!(check_dev_host(&listed, Some(host)).is_ok(), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "herald.internal.evil.example",
            "",
        ] {
            let err = check_dev_host(&listed, Some(host)).expect_err(host);
            assert_eq!(err.code(), ErrorCode::HostNotAllowed, "{host}");
        }
        assert!(check_dev_host(&[], None).is_ok());
    }

    #[test]
    fn null_is_never_echoed() {
        let mut request = HeaderMap::new();
        request.insert(header::ORIGIN, HeaderValue::from_static("null"));
        let listed = vec!["null".to_owned()];
        assert_eq!(allowed_origin(&listed, &request), None);
        let any = vec!["*".to_owned(), "null".to_owned()];
        assert_eq!(allowed_origin(&any, &request), Some(Allowed::Any));
    }
}
