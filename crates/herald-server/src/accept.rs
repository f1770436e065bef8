//! The accept loop: one port for HTTP/1.1 and HTTP/2 (h2c by preface on a
//! plain port, h2 by ALPN with TLS), a cap on concurrent TCP connections,
//! header-read and TLS-handshake timeouts, graceful shutdown, and the direct
//! path for HTTP/1.1 event streams (`crate::direct`).
//!
//! `axum::serve` exposes none of these knobs, so connections are served here
//! with hyper-util's auto builder.
//!
//! Two runtimes: the accept loop, publishes and every other short request run
//! on the *control* runtime (the one `serve` is called on); event streams —
//! direct ones and HTTP/2 connections, which may carry streams — are handed to
//! the *streams* runtime. Why: writing one event to 10,000 sockets is 10,000
//! tasks to poll; on one shared runtime a publish waits behind all of them, so
//! publishers are acknowledged at the pace of the slowest fan-out and each
//! event leaves in its own write. On a runtime of its own the publish is
//! answered at once, events queue up while the writers work, and each writer
//! sends everything queued in one write.
//!
//! With TLS ([`crate::tls`]) a connection moves to the streams runtime as soon
//! as it is accepted: the handshake (a signature and a key exchange, the
//! costliest step of a connection) runs there, on a worker per core, so a
//! reconnect storm after a restart does not queue publishes behind thousands
//! of handshakes on the one control thread. Then, within the header-read
//! timeout, the first bytes are read out of the TLS stream (they cannot be
//! peeked at): ALPN `h2` is served by hyper as HTTP/2 only, on the streams
//! runtime; an admitted HTTP/1.1 `GET /v1/events` by the direct path, as on a
//! plain port; anything else moves back to the control runtime and goes to
//! hyper with the bytes already read replayed in front (`crate::io`). The
//! TLS stream is `crate::tls_stream`'s, whose buffers exist only while they
//! hold bytes.
//!
//! Connections are budgeted (`crate::limits::ConnectionBudget`, from the
//! fd limit): the loop takes a connection permit and a *classifying* permit
//! before it accepts, so it never holds more sockets than the budget and
//! never more than `unclassified` whose first request has not been seen
//! (silent connections cannot eat the descriptors kept for publishers; when
//! those permits are all taken, new connections wait in the kernel's backlog
//! for at most a header-read timeout). The classifying permit is given back
//! when the first request head has been read: by the direct path when it
//! admits a stream, by hyper when it hands the first request to the router.
//! Accept errors are logged at most once a second, with a count of the ones
//! not logged; when the process is out of descriptors or memory the loop
//! pauses instead of spinning.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use parking_lot::Mutex;
use tower::ServiceExt;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::{Builder, Http2Builder};
use hyper_util::server::graceful::{GracefulConnection, GracefulShutdown, Watcher};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::direct::{self, HeadWas, Sniffed};
use crate::idle::{self, Activity};
use crate::io::{MovableTcp, Rewind, WriteDeadline};
use crate::tls::Tls;
use crate::tls_stream::{self, TlsStream};
use crate::write_through::{SharedTcp, TcpWriteThrough};
use crate::AppState;

/// How often a drain looks whether every stream's writer has finished.
const DRAIN_POLL: Duration = Duration::from_millis(10);
/// How long the loop pauses after an accept error that says the process is
/// short of a resource (descriptors, memory): retrying at once would fail
/// the same way, in a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// At most one accept-error warning per this long.
const ACCEPT_ERROR_LOG_EVERY: Duration = Duration::from_secs(1);

/// HTTP/2 settings, sized for many long-lived event streams per connection
/// (the README's "TLS and HTTP/2" says why each is what it is).
mod h2 {
    use std::time::Duration;

    /// Streams one connection may have open at once: a browser puts every
    /// tab's EventSources to one origin on one connection.
    pub(super) const MAX_CONCURRENT_STREAMS: u32 = 1000;
    /// What a client may send on one stream before we read it (publish
    /// bodies; event-stream requests have none).
    pub(super) const STREAM_WINDOW: u32 = 256 << 10;
    /// What a client may send on the connection before we read it: the most
    /// request data one connection can make us hold.
    pub(super) const CONNECTION_WINDOW: u32 = 1 << 20;
    /// Bytes hyper buffers per stream beyond what the client's window takes:
    /// a slow reader's streams cost at most this each, then their queues
    /// fill and they catch up from the log.
    pub(super) const MAX_SEND_BUF: usize = 16 << 10;
    /// Largest header block accepted (twice the direct path's `MAX_HEAD`).
    pub(super) const MAX_HEADER_LIST: u32 = 16 << 10;
    /// A PING after this long without a frame from the client ...
    pub(super) const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
    /// ... and the connection is closed if its answer takes longer than this.
    pub(super) const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
}

/// Applies the HTTP/2 settings (see [`h2`]).
fn configure_http2(http2: &mut Http2Builder<'_, TokioExecutor>) {
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(h2::MAX_CONCURRENT_STREAMS)
        .initial_stream_window_size(h2::STREAM_WINDOW)
        .initial_connection_window_size(h2::CONNECTION_WINDOW)
        .adaptive_window(false)
        .max_send_buf_size(h2::MAX_SEND_BUF)
        .max_header_list_size(h2::MAX_HEADER_LIST)
        .keep_alive_interval(h2::KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(h2::KEEP_ALIVE_TIMEOUT);
}

/// The two ways hyper serves a connection.
struct Builders {
    /// HTTP/1.1, or HTTP/2 when the connection starts with its preface.
    auto: Builder<TokioExecutor>,
    /// HTTP/2 only: TLS connections that chose `h2` by ALPN.
    h2_only: Builder<TokioExecutor>,
}

impl Builders {
    /// `header_read_timeout` bounds HTTP/1.1 heads, the first request's
    /// included; the HTTP/2 handshake and idle connections are bounded by
    /// `crate::idle`, which hyper's HTTP/2 has no setting for.
    fn new(header_read_timeout: Duration) -> Self {
        let mut auto = Builder::new(TokioExecutor::new());
        auto.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout)
            .keep_alive(true);
        configure_http2(&mut auto.http2());
        let mut h2_only = Builder::new(TokioExecutor::new()).http2_only();
        configure_http2(&mut h2_only.http2());
        Self { auto, h2_only }
    }
}

/// Aborts the task when dropped: the certificate watcher ends with the loop.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves the router on `listener` until `shutdown` resolves, then drains
/// within `shutdown_timeout` (see [`drain`]).
///
/// With `state.config.tls`, the port speaks only TLS; the files are loaded
/// here (an error is `InvalidInput`, naming the file) and watched for changes
/// until the loop ends.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    streams: Handle,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let tls = match &state.config.tls {
        Some(files) => {
            Some(Arc::new(Tls::load(files).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, e)
            })?))
        }
        None => None,
    };
    let _watcher = tls
        .as_ref()
        .map(|tls| AbortOnDrop(tokio::spawn(tls.clone().watch())));
    let _metrics_upkeep = AbortOnDrop(tokio::spawn(crate::metrics::Metrics::run_upkeep(
        state.metrics.handle(),
    )));
    let app = crate::router(state.clone());
    let builders = Arc::new(Builders::new(state.config.header_read_timeout));
    let control = Handle::current();
    // Streams are long-lived, so these bound sockets, not requests.
    let permits = Arc::new(Semaphore::new(state.budget.connections));
    let classifying = Arc::new(Semaphore::new(state.budget.unclassified));
    let mut accept_errors = AcceptErrors::default();
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let permits = async {
            let connection = permits.clone().acquire_owned().await.ok()?;
            let classifying = classifying.clone().acquire_owned().await.ok()?;
            Some((connection, classifying))
        };
        let (permit, classifying) = tokio::select! {
            permits = permits => match permits {
                Some(p) => p,
                None => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    if let Some(not_logged) = accept_errors.note(Instant::now()) {
                        tracing::warn!(%err, not_logged, "accept failed");
                    }
                    if is_resource_shortage(&err) {
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = AcceptedConnection {
            state: state.clone(),
            app: app.clone(),
            builders: builders.clone(),
            watcher: graceful.watcher(),
            streams: streams.clone(),
            control: control.clone(),
            peer,
            classifying: Classifying::new(classifying),
            _permit: permit,
        };
        match &tls {
            None => {
                tokio::spawn(connection.serve(stream));
            }
            Some(tls) => connection.spawn_tls(stream, tls.config().clone()),
        }
    }
    drain(listener, &state, graceful).await;
    Ok(())
}

/// The drain, in this order, all within `shutdown_timeout`:
/// 1. stop accepting (the listener is closed: new connections are refused
///    and go to another node, or retry);
/// 2. end every stream; each writer sends a last `retry:` drawn from
///    `herald_core::connection::DRAIN_RETRY_MS`, so clients come back spread
///    over seconds rather than all at once, and resume with `Last-Event-ID`;
/// 3. wait for those writers to finish, and for hyper's connections to
///    finish their in-flight requests (a publish being stored is answered;
///    idle keep-alive connections are closed).
///
/// What is left at the deadline is dropped; the caller then exits, and the
/// event log is flushed when its last user lets go of it.
async fn drain(listener: TcpListener, state: &AppState, graceful: GracefulShutdown) {
    drop(listener);
    let deadline = Instant::now() + state.config.shutdown_timeout;
    let streams = state.hub.counts().connections;
    tracing::info!(
        streams,
        timeout_ms = state.config.shutdown_timeout.as_millis() as u64,
        "draining: not accepting; every stream gets a retry hint and is closed; in-flight requests finish"
    );
    state.hub.close_all();
    while state.hub.streams_writing() > 0 && Instant::now() < deadline {
        tokio::time::sleep(DRAIN_POLL).await;
    }
    let left = deadline.saturating_duration_since(Instant::now());
    let finished = tokio::time::timeout(left, graceful.shutdown())
        .await
        .is_ok();
    let writing = state.hub.streams_writing();
    if finished && writing == 0 {
        tracing::info!(streams, "drained");
    } else {
        tracing::warn!(
            streams_still_writing = writing,
            requests_finished = finished,
            "the shutdown timeout passed before everything finished; the rest is dropped"
        );
    }
}

/// Whether an accept error says the process is short of something (so the
/// next accept would fail too) rather than that one connection went wrong
/// (reset or aborted before it was taken: the next one is fine).
fn is_resource_shortage(err: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    !matches!(
        err.kind(),
        ErrorKind::ConnectionAborted
            | ErrorKind::ConnectionReset
            | ErrorKind::Interrupted
            | ErrorKind::WouldBlock
    )
}

/// Rate limit of the accept-error warning: a flood would otherwise write
/// thousands of identical lines a second.
#[derive(Debug, Default)]
struct AcceptErrors {
    /// When the last warning was written.
    logged_at: Option<Instant>,
    /// Errors since then that were not.
    not_logged: u64,
}

impl AcceptErrors {
    /// Notes an error at `now`; `Some(errors not logged since the last
    /// warning)` when this one is to be logged.
    fn note(&mut self, now: Instant) -> Option<u64> {
        match self.logged_at {
            Some(at) if now.saturating_duration_since(at) < ACCEPT_ERROR_LOG_EVERY => {
                self.not_logged += 1;
                None
            }
            _ => {
                self.logged_at = Some(now);
                Some(std::mem::take(&mut self.not_logged))
            }
        }
    }
}

/// A connection's classifying permit (see the module doc), given back once,
/// by whichever part of the server first sees its first request head.
#[derive(Debug, Clone)]
struct Classifying(Arc<Mutex<Option<OwnedSemaphorePermit>>>);

impl Classifying {
    fn new(permit: OwnedSemaphorePermit) -> Self {
        Self(Arc::new(Mutex::new(Some(permit))))
    }

    /// The first request head has been read: the connection is classified.
    fn done(&self) {
        drop(self.0.lock().take());
    }
}

/// What serving one accepted connection needs.
struct AcceptedConnection {
    state: Arc<AppState>,
    app: axum::Router,
    builders: Arc<Builders>,
    watcher: Watcher,
    streams: Handle,
    control: Handle,
    /// The client's address (the per-address stream cap counts it).
    peer: SocketAddr,
    /// Held until the first request head has been read.
    classifying: Classifying,
    /// Held for as long as the connection is served, on whichever runtime.
    _permit: OwnedSemaphorePermit,
}

impl AcceptedConnection {
    /// Looks at the first request and serves the connection on the runtime
    /// it belongs to: event streams on the streams runtime, the rest here.
    async fn serve(self, stream: TcpStream) {
        let timeout = self.state.config.header_read_timeout;
        let sniffed = direct::sniff(&stream, &self.state, self.peer.ip());
        let first = match tokio::time::timeout(timeout, sniffed).await {
            Ok(first) => first,
            // No request head in time: the same answer hyper's header timeout gives.
            Err(_) => return,
        };
        if matches!(first, Sniffed::Other) {
            return self.serve_with_hyper(stream).await;
        }
        // A socket moves between runtimes as a std socket: it must be
        // registered with the reactor of the runtime that polls it.
        let Ok(stream) = stream.into_std() else {
            return;
        };
        let streams = self.streams.clone();
        streams.spawn(async move {
            let Ok(stream) = TcpStream::from_std(stream) else {
                return;
            };
            match first {
                Sniffed::Direct(request) => {
                    self.classifying.done();
                    // The dispatcher may write to the socket too, while the
                    // stream's writer waits (`write_through`).
                    let socket = Arc::new(stream);
                    let to = Box::new(TcpWriteThrough(socket.clone()));
                    let served =
                        direct::stream(SharedTcp(socket), self.state.clone(), request, Some(to));
                    // `None` or an error: the client left, or the socket
                    // failed; nothing more to serve. Else hyper reads what
                    // the client sent during the stream first.
                    if let Ok(Some(rest)) = served.await {
                        self.serve_with_hyper(rest).await;
                    }
                }
                _ => self.serve_with_hyper(stream).await,
            }
        });
    }

    /// Moves a new TLS connection to the streams runtime and serves it there
    /// (see the module doc for why the handshake runs there).
    fn spawn_tls(self, stream: TcpStream, config: Arc<ServerConfig>) {
        let Ok(stream) = stream.into_std() else {
            return;
        };
        let streams = self.streams.clone();
        streams.spawn(async move {
            let Ok(stream) = TcpStream::from_std(stream) else {
                return;
            };
            self.serve_tls(MovableTcp::new(stream), config).await;
        });
    }

    /// The TLS handshake, then the first bytes decide who serves the
    /// connection. Runs on the streams runtime.
    ///
    /// Every phase is a boxed future of its own and the TLS stream a box
    /// (1.2 KB of rustls state): an idle event stream's task then holds only
    /// what the stream phase needs. Unboxed, the task kept room for the
    /// handshake, hyper and the stream at once: 5.8 KB per connection.
    async fn serve_tls(self, stream: MovableTcp, config: Arc<ServerConfig>) {
        let Some((tls, first)) = Box::pin(self.tls_start(stream, config)).await else {
            return;
        };
        if tls.alpn_protocol() == Some(b"h2".as_slice()) {
            // HTTP/2 connections may carry event streams: they stay here.
            return Box::pin(self.serve_h2(Rewind::new(first, tls))).await;
        }
        // Boxed like every phase: admitting (token checks included) is a
        // large future, and inline its room would stay in the task of every
        // idle stream.
        let peer = self.peer.ip();
        match Box::pin(direct::judge(&first, &self.state, HeadWas::Read, peer)).await {
            Sniffed::Direct(request) => {
                self.classifying.done();
                drop(first);
                // Hyper reads what the client sent during the stream first.
                // One statement, so what the stream returns is gone before
                // the next await: kept as a local, it had room of its own in
                // the task of every idle TLS stream (24 bytes, which moved
                // the task to a larger allocation class: 0.12 KiB a stream).
                let hyper = Box::pin(direct::stream(tls, self.state.clone(), request, None))
                    .await
                    .ok()
                    .flatten()
                    .map(|rest| Box::pin(self.serve_with_hyper(rest)));
                if let Some(hyper) = hyper {
                    hyper.await;
                }
            }
            // Prior-knowledge HTTP/2 without ALPN: may carry streams too.
            Sniffed::Http2 => Box::pin(self.serve_with_hyper(Rewind::new(first, tls))).await,
            Sniffed::Other => {
                // Short requests belong on the control runtime, as on a plain port.
                let control = self.control.clone();
                control.spawn(async move {
                    let mut tls = tls;
                    if tls.io_mut().reregister().is_ok() {
                        self.serve_with_hyper(Rewind::new(first, tls)).await;
                    }
                });
            }
        }
    }

    /// The handshake (within the handshake timeout), then the first bytes
    /// of the first request (within the header-read timeout, which is also
    /// the h2 preface's: hyper's HTTP/2 has none of its own). `None`: the
    /// client failed, stalled or left.
    async fn tls_start(
        &self,
        stream: MovableTcp,
        config: Arc<ServerConfig>,
    ) -> Option<(Box<TlsStream<MovableTcp>>, Vec<u8>)> {
        let timeout = self.state.config.tls_handshake_timeout;
        let mut tls = match tokio::time::timeout(timeout, tls_stream::accept(stream, config)).await
        {
            Ok(Ok(tls)) => Box::new(tls),
            Ok(Err(err)) => {
                tracing::debug!(%err, "TLS handshake failed");
                return None;
            }
            Err(_) => {
                tracing::debug!("TLS handshake timed out");
                return None;
            }
        };
        let timeout = self.state.config.header_read_timeout;
        match tokio::time::timeout(timeout, direct::read_head(&mut tls)).await {
            Ok(Ok(first)) if !first.is_empty() => Some((tls, first)),
            _ => None,
        }
    }

    /// Serves the connection with hyper, on the runtime this is called on.
    async fn serve_with_hyper<S>(self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.serve_hyper(stream, Protocols::Any).await;
    }

    /// Serves an HTTP/2-only connection with hyper (TLS, ALPN `h2`).
    async fn serve_h2<S>(self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.serve_hyper(stream, Protocols::Http2).await;
    }

    /// Serves the connection with hyper: the router told each request's
    /// peer, counted in flight for the idle deadline, over a socket with the
    /// write deadline.
    async fn serve_hyper<S>(self, stream: S, protocols: Protocols)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Activity::new();
        let service = idle::tracked(
            self.app
                .clone()
                .map_request(connection_info(self.peer, self.classifying.clone())),
            activity.clone(),
        );
        let io = TokioIo::new(WriteDeadline::new(stream, self.state.write_timeout.clone()));
        let config = &self.state.config;
        match protocols {
            Protocols::Any => {
                let connection = self
                    .builders
                    .auto
                    .serve_connection_with_upgrades(io, service);
                serve_until_idle(self.watcher, connection, &activity, config).await;
            }
            Protocols::Http2 => {
                let connection = self.builders.h2_only.serve_connection(io, service);
                serve_until_idle(self.watcher, connection, &activity, config).await;
            }
        }
    }
}

/// Which protocols hyper accepts on a connection.
#[derive(Debug, Clone, Copy)]
enum Protocols {
    /// HTTP/1.1, or HTTP/2 by its preface (h2c).
    Any,
    /// HTTP/2 only (ALPN chose it).
    Http2,
}

/// Drives a hyper connection (graceful on shutdown) until it ends, or until
/// it has carried no request for too long (see `crate::idle`).
///
/// Boxed: the hyper connection's state is large, and every idle direct
/// stream would otherwise carry room for it in its task.
fn serve_until_idle<'a, C: GracefulConnection + 'a>(
    watcher: Watcher,
    connection: C,
    activity: &'a Activity,
    config: &'a crate::ServerConfig,
) -> Pin<Box<impl Future<Output = ()> + 'a>> {
    Box::pin(async move {
        let idle = activity.idle_past(config.header_read_timeout, config.idle_timeout);
        tokio::select! {
            _ = watcher.watch(connection) => {}
            () = idle => tracing::debug!("closing a connection that carries no request"),
        }
    })
}

/// What every request hyper hands the router gets from its connection: the
/// client's address (as axum's `ConnectInfo`), and the news that a request
/// head has been read, which classifies the connection.
fn connection_info<B>(
    peer: SocketAddr,
    classifying: Classifying,
) -> impl Fn(hyper::Request<B>) -> hyper::Request<B> + Clone {
    move |mut request| {
        classifying.done();
        request.extensions_mut().insert(ConnectInfo(peer));
        request
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors_are_logged_once_a_second_with_the_count_of_the_rest() {
        let mut errors = AcceptErrors::default();
        let start = Instant::now();
        assert_eq!(errors.note(start), Some(0), "the first is logged");
        for i in 1..=5 {
            assert_eq!(errors.note(start + Duration::from_millis(i * 100)), None);
        }
        assert_eq!(
            errors.note(start + Duration::from_millis(1_000)),
            Some(5),
            "a second later, with the count of those not logged"
        );
        assert_eq!(errors.note(start + Duration::from_millis(1_100)), None);
    }

    #[test]
    fn only_resource_shortages_pause_the_loop() {
        use std::io::{Error, ErrorKind};
        // EMFILE, as accept(2) reports it.
        assert!(is_resource_shortage(&Error::from_raw_os_error(24)));
        assert!(is_resource_shortage(&Error::from(ErrorKind::OutOfMemory)));
        assert!(!is_resource_shortage(&Error::from(
            ErrorKind::ConnectionAborted
        )));
    }
}
