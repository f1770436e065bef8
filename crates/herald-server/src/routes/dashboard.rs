//! The dashboard: static files embedded at build time (`web/dashboard/`),
//! served in both modes. The page holds no secret and reads nothing by
//! itself: what it shows comes from the admin routes and
//! `GET /v1/stats/stream`, with the admin token the operator types in (dev
//! mode needs none).

use axum::extract::{Path, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::routes::ops::not_found;

/// The files under `/dashboard/`: name, content type, content.
const FILES: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../../web/dashboard/app.js"),
    ),
    (
        "sse.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../../web/dashboard/sse.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../../../web/dashboard/style.css"),
    ),
];

const INDEX_HTML: &str = include_str!("../../../../web/dashboard/index.html");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Always asked again, so an upgraded server never runs an old page.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// What the page may load and who may frame it: only its own files and
/// routes, and no one (the page holds an admin token and has buttons that
/// act with it: nothing injected may run, no other site may overlay it).
const PAGE_POLICY: &str = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'";

/// `GET /`.
pub(crate) async fn page() -> Response {
    let mut response = asset("text/html; charset=utf-8", INDEX_HTML);
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_POLICY),
    );
    response
}

/// `GET /dashboard/{file}`.
pub(crate) async fn file(Path(name): Path<String>) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, body)) => asset(content_type, body),
        None => not_found().await,
    }
}

/// `GET /demo`: the demo page became the dashboard's console; its links
/// (`/demo?user=7777`) keep working.
pub(crate) async fn demo(request: Request) -> Response {
    let target = request
        .uri()
        .query()
        .map(|query| format!("/?{query}#console"))
        .and_then(|target| HeaderValue::try_from(target).ok())
        .unwrap_or(HeaderValue::from_static("/#console"));
    (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, target)]).into_response()
}
