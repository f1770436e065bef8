//! The dev-mode demo page: subscribe as a user and watch events arrive.

use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};

const DEMO_HTML: &str = include_str!("../../../../web/demo.html");

/// `GET /demo`.
pub(crate) async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        DEMO_HTML,
    )
        .into_response()
}

/// `GET /` in dev mode: the demo (the dashboard comes later).
pub(crate) async fn root() -> Response {
    Redirect::temporary("/demo").into_response()
}
