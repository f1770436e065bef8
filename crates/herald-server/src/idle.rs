//! When a connection served by hyper is closed for carrying nothing.
//!
//! hyper's HTTP/1.1 has a header-read timeout, but nothing bounds the wait
//! before it knows the protocol (a client that sends half the HTTP/2
//! preface), and its HTTP/2 has no handshake deadline and no idle timeout:
//! its keep-alive PINGs only find peers that are gone, not peers that stay
//! and send nothing. So every connection hyper serves is watched here:
//!
//! - until its first request has started (its head is complete: for HTTP/2,
//!   the preface, the SETTINGS and a stream's HEADERS), it may take the
//!   header-read timeout;
//! - with no request in flight (the last response is complete, or every
//!   HTTP/2 stream is closed), it may stay the idle timeout;
//! - a request in flight — an event stream above all — keeps it open for as
//!   long as it lasts.
//!
//! Past its deadline the connection is dropped, which closes the socket
//! (hyper-util's graceful shutdown owns the connection, so no GOAWAY can be
//! asked for; with no stream open there is nothing for one to save).
//!
//! Invariant: a request counts as in flight from the moment the router is
//! called until its response body is dropped (sent, or its stream reset).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response};
use axum::routing::future::RouteFuture;
use bytes::Bytes;
use futures_util::FutureExt;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::service::TowerToHyperService;
use parking_lot::Mutex;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

/// What one connection is doing, as far as its deadlines care.
#[derive(Debug)]
pub(crate) struct Activity {
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy)]
struct State {
    /// Requests whose response body is not dropped yet.
    in_flight: usize,
    /// Whether any request has started.
    started_one: bool,
    /// When `in_flight` last changed (or the connection was handed over).
    since: Instant,
}

impl Activity {
    /// A connection handed to hyper now.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                in_flight: 0,
                started_one: false,
                since: Instant::now(),
            }),
        })
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        let mut state = self.state.lock();
        state.in_flight += 1;
        state.started_one = true;
        state.since = Instant::now();
        InFlight(self.clone())
    }

    /// When the connection is to be closed if nothing changes before then
    /// (`None`: not while a request is in flight, or not in this era).
    fn deadline(&self, first_request: Duration, idle: Duration) -> Option<Instant> {
        let state = *self.state.lock();
        if state.in_flight > 0 {
            None
        } else if state.started_one {
            state.since.checked_add(idle)
        } else {
            state.since.checked_add(first_request)
        }
    }

    /// Resolves when the connection has been idle past its deadline (see the
    /// module doc); never while a request is in flight.
    pub(crate) async fn idle_past(&self, first_request: Duration, idle: Duration) {
        loop {
            match self.deadline(first_request, idle) {
                Some(at) if at <= Instant::now() => return,
                Some(at) => tokio::time::sleep_until(at).await,
                // Busy: look again later (cheaper than waking on every
                // request's end, and only long requests get here).
                None => tokio::time::sleep(idle).await,
            }
        }
    }
}

/// A request in flight; its end when dropped.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.state.lock();
        state.in_flight -= 1;
        state.since = Instant::now();
    }
}

/// The router as hyper's service, counting each request in `activity`
/// until its response body is dropped.
///
/// A mapped future, not an `async` block: hyper keeps room for the service's
/// future in every HTTP/2 stream's task for the stream's whole life, and an
/// `async` block would hold the request and the router beside the router's
/// own future (measured: 0.35 KiB more per idle HTTP/2 stream).
pub(crate) fn tracked<S>(
    app: S,
    activity: Arc<Activity>,
) -> TowerToHyperService<
    impl Service<
            Request<Incoming>,
            Response = Response<TrackedBody>,
            Error = Infallible,
            Future: Send,
        > + Clone,
>
where
    S: Service<
            Request<Incoming>,
            Response = Response<Body>,
            Error = Infallible,
            Future = RouteFuture<Infallible>,
        > + Clone
        + Send
        + 'static,
{
    let service = ServiceExt::<Request<Incoming>>::map_future(
        app,
        move |response: RouteFuture<Infallible>| {
            let in_flight = activity.begin();
            response.map(move |response: Result<Response<Body>, Infallible>| {
                response.map(|response| {
                    response.map(|body| TrackedBody {
                        body,
                        _in_flight: in_flight,
                    })
                })
            })
        },
    );
    TowerToHyperService::new(service)
}

/// A response body that ends its request's time in flight when dropped.
#[derive(Debug)]
pub(crate) struct TrackedBody {
    body: Body,
    _in_flight: InFlight,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: Duration = Duration::from_secs(10);
    const IDLE: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn no_first_request_closes_after_the_header_read_timeout() {
        let activity = Activity::new();
        let start = Instant::now();
        activity.idle_past(FIRST, IDLE).await;
        assert_eq!(start.elapsed(), FIRST);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_keeps_the_connection_then_idle_counts_from_its_end() {
        let activity = Activity::new();
        let request = activity.begin();
        let watch = tokio::spawn({
            let activity = activity.clone();
            async move { activity.idle_past(FIRST, IDLE).await }
        });
        // Ten idle timeouts with a request open: still open.
        tokio::time::sleep(IDLE * 10).await;
        assert!(!watch.is_finished());
        let ended = Instant::now();
        drop(request);
        watch.await.expect("the watch ends");
        let waited = ended.elapsed();
        assert!(waited >= IDLE && waited <= IDLE * 2, "{waited:?}");
    }
}
