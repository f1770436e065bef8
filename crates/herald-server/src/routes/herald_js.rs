//! `GET /herald.js`: the browser client (`web/herald.js`), served in every
//! mode so a page can load it from the Herald it talks to. Embedded at build
//! time like the dashboard, so the binary stays one file.

use axum::http::header;
use axum::response::{IntoResponse, Response};

const HERALD_JS: &str = include_str!("../../../../web/herald.js");

/// `GET /herald.js`.
pub(crate) async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            // Revalidated on every load, so a page picks up the client of the
            // Herald it talks to right after an upgrade.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        HERALD_JS,
    )
        .into_response()
}
