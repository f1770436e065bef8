//! The accept loop: one port for HTTP/1.1 and h2c (by preface), a cap on
//! concurrent TCP connections, a header-read timeout, graceful shutdown, and
//! the direct path for HTTP/1.1 event streams (`crate::direct`).
//!
//! `axum::serve` exposes none of these knobs, so connections are served here
//! with hyper-util's auto builder.
//!
//! Two runtimes: the accept loop, publishes and every other short request run
//! on the *control* runtime (the one `serve` is called on); event streams —
//! direct ones and h2c connections, which may carry streams — are handed to
//! the *streams* runtime. Why: writing one event to 10,000 sockets is 10,000
//! tasks to poll; on one shared runtime a publish waits behind all of them, so
//! publishers are acknowledged at the pace of the slowest fan-out and each
//! event leaves in its own write. On a runtime of its own the publish is
//! answered at once, events queue up while the writers work, and each writer
//! sends everything queued in one write.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::direct::{self, Sniffed};
use crate::AppState;

/// How long in-flight requests get to finish after shutdown is asked for.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves the router on `listener` until `shutdown` resolves, then closes
/// every stream and waits (briefly) for in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    streams: Handle,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let app = crate::router(state.clone());
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(state.config.header_read_timeout)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    // Streams are long-lived, so this bounds sockets, not requests.
    let permits = Arc::new(Semaphore::new(
        state.config.max_connections.saturating_add(1024),
    ));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Out of file descriptors and the like: back off, do not spin.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = AcceptedConnection {
            state: state.clone(),
            app: app.clone(),
            builder: builder.clone(),
            watcher: graceful.watcher(),
            streams: streams.clone(),
            _permit: permit,
        };
        tokio::spawn(connection.serve(stream));
    }
    drop(listener);
    state.hub.close_all();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
    Ok(())
}

/// What serving one accepted connection needs.
struct AcceptedConnection {
    state: Arc<AppState>,
    app: axum::Router,
    builder: Arc<Builder<TokioExecutor>>,
    watcher: Watcher,
    streams: Handle,
    /// Held for as long as the connection is served, on whichever runtime.
    _permit: OwnedSemaphorePermit,
}

impl AcceptedConnection {
    /// Looks at the first request and serves the connection on the runtime
    /// it belongs to: event streams on the streams runtime, the rest here.
    async fn serve(self, stream: TcpStream) {
        let timeout = self.state.config.header_read_timeout;
        let first = match tokio::time::timeout(timeout, direct::sniff(&stream, &self.state)).await {
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
            let stream = match first {
                Sniffed::Direct(request) => {
                    match direct::stream(stream, self.state.clone(), request).await {
                        Ok(Some(stream)) => stream,
                        // The client left, or the socket failed: nothing more to serve.
                        _ => return,
                    }
                }
                _ => stream,
            };
            self.serve_with_hyper(stream).await;
        });
    }

    /// Serves the connection with hyper, on the runtime this is called on.
    async fn serve_with_hyper(self, stream: TcpStream) {
        let service = TowerToHyperService::new(self.app);
        let connection = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service);
        // Boxed: the hyper connection's state is large, and every idle direct
        // stream would otherwise carry room for it in its task.
        let _ = Box::pin(self.watcher.watch(connection)).await;
    }
}
