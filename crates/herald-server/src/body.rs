//! Reading a request body: within the size limit, within a deadline, and
//! within the server's budget of body bytes being read at once.
//!
//! Invariants:
//! - memory follows the bytes that arrived, never the declared
//!   `Content-Length`: a client that announces 4 MiB and sends 10 bytes
//!   costs 10 bytes here (a declared length over the limit is refused before
//!   anything is read);
//! - the whole body arrives within `body_read_timeout`, or the answer is
//!   `408 body_timeout` and the connection is closed (the rest of the body
//!   is not waited for);
//! - the bytes held by all bodies being read never exceed
//!   `max_body_bytes_in_flight`: a chunk that would go over it is answered
//!   `503 body_capacity_full` with `Retry-After` at once (waiting would only
//!   hold the socket and its bytes longer). A body's bytes leave the budget
//!   when its reading ends, whatever the outcome.
//!
//! Waiting for a body is a plain await: it never blocks the runtime the
//! request runs on (publishes run on the control runtime).

use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::http::{header, HeaderMap};
use bytes::Bytes;
use http_body_util::BodyExt;

use crate::error::{ApiError, ErrorCode};
use crate::AppState;

/// The body bytes held by every request body being read, and their cap.
#[derive(Debug)]
pub(crate) struct BodyBudget {
    held: AtomicUsize,
    cap: usize,
}

impl BodyBudget {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            held: AtomicUsize::new(0),
            cap,
        }
    }

    /// Bytes held now by bodies being read.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

/// One body's share of the budget, given back when dropped.
#[derive(Debug)]
struct Share<'a> {
    budget: &'a BodyBudget,
    bytes: usize,
}

impl Share<'_> {
    /// Takes `more` bytes from the budget, or `false` (taking nothing) when
    /// that would put the budget over its cap.
    fn grow(&mut self, more: usize) -> bool {
        let taken = self
            .budget
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(more).filter(|&h| h <= self.budget.cap)
            });
        if taken.is_ok() {
            self.bytes += more;
        }
        taken.is_ok()
    }
}

impl Drop for Share<'_> {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// The whole body of a request with `headers`, under `state`'s limits (see
/// the module doc).
pub(crate) async fn read(
    body: Body,
    headers: &HeaderMap,
    state: &AppState,
) -> Result<Bytes, ApiError> {
    let limit = state.config.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    let timeout = state.config.body_read_timeout;
    match tokio::time::timeout(timeout, collect(body, limit, &state.bodies)).await {
        Ok(read) => read,
        Err(_) => Err(ApiError::new(
            ErrorCode::BodyTimeout,
            format!(
                "the request body did not arrive within {} s (`body_read_timeout_secs`); \
                 send it in one go, or send less",
                timeout.as_secs_f64()
            ),
        )),
    }
}

/// The body's bytes as they arrive, at most `limit` of them, each one
/// counted in `budget` until the body is read.
async fn collect(mut body: Body, limit: usize, budget: &BodyBudget) -> Result<Bytes, ApiError> {
    let mut share = Share { budget, bytes: 0 };
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| {
            ApiError::new(
                ErrorCode::BodyIncomplete,
                format!("the request body could not be read to its end: {err}"),
            )
        })?;
        // Trailers carry nothing a publish reads.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if bytes.len() + data.len() > limit {
            return Err(too_large(limit));
        }
        if !share.grow(data.len()) {
            return Err(ApiError::new(
                ErrorCode::BodyCapacityFull,
                format!(
                    "the server is already reading {} bytes of request bodies \
                     (`max_body_bytes_in_flight`); retry in a moment",
                    budget.cap
                ),
            ));
        }
        bytes.extend_from_slice(&data);
    }
    Ok(Bytes::from(bytes))
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        ErrorCode::BodyTooLarge,
        format!(
            "the request body is over the {limit}-byte limit; \
             send less data per event, or split the batch"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_refuses_what_would_go_over_its_cap_and_frees_on_drop() {
        let budget = BodyBudget::new(100);
        let mut a = Share {
            budget: &budget,
            bytes: 0,
        };
        assert!(a.grow(60));
        let mut b = Share {
            budget: &budget,
            bytes: 0,
        };
        assert!(!b.grow(41), "60 + 41 is over 100");
        assert!(b.grow(40));
        assert_eq!(budget.held(), 100);
        drop(a);
        assert_eq!(budget.held(), 40);
        drop(b);
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn bytes_are_collected_as_they_arrive_up_to_the_limit() {
        let budget = BodyBudget::new(1 << 20);
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"{\"a\":")),
            Ok(Bytes::from_static(b"1}")),
        ];
        let body = Body::from_stream(futures_util::stream::iter(chunks));
        let read = collect(body, 1024, &budget).await.expect("a body");
        assert_eq!(&read[..], b"{\"a\":1}");
        assert_eq!(budget.held(), 0, "the share is given back");

        let body = Body::from(vec![b'x'; 2000]);
        let err = collect(body, 1024, &budget)
            .await
            .expect_err("over the limit");
        assert_eq!(err.code(), ErrorCode::BodyTooLarge);
        assert_eq!(budget.held(), 0);
    }
}
