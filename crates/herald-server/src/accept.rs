//! The accept loop: one port for HTTP/1.1 and h2c (by preface), a cap on
//! concurrent TCP connections, a header-read timeout, graceful shutdown, and
//! the direct path for HTTP/1.1 event streams (`crate::direct`).
//!
//! `axum::serve` exposes none of these knobs, so connections are served here
//! with hyper-util's auto builder.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::{direct, AppState};

/// How long in-flight requests get to finish after shutdown is asked for.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves the router on `listener` until `shutdown` resolves, then closes
/// every stream and waits (briefly) for in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
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
        let connection = serve_connection(
            stream,
            state.clone(),
            app.clone(),
            builder.clone(),
            graceful.watcher(),
        );
        tokio::spawn(async move {
            connection.await;
            drop(permit);
        });
    }
    drop(listener);
    state.hub.close_all();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
    Ok(())
}

/// One TCP connection: an HTTP/1.1 event stream goes the direct path (see
/// `crate::direct`), everything else — and the same connection after a
/// direct stream the server ended — is served by hyper.
async fn serve_connection(
    stream: TcpStream,
    state: Arc<AppState>,
    app: axum::Router,
    builder: Arc<Builder<TokioExecutor>>,
    watcher: Watcher,
) {
    let timeout = state.config.header_read_timeout;
    let stream = match tokio::time::timeout(timeout, direct::sniff(&stream, &state)).await {
        Ok(Some(request)) => match direct::stream(stream, state, request).await {
            Ok(Some(stream)) => stream,
            // The client left, or the socket failed: nothing more to serve.
            _ => return,
        },
        Ok(None) => stream,
        // No request head in time: the same answer hyper's header timeout gives.
        Err(_) => return,
    };
    let service = TowerToHyperService::new(app);
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    // Boxed: the hyper connection's state is large, and every idle direct
    // stream would otherwise carry room for it in its task.
    let _ = Box::pin(watcher.watch(connection)).await;
}
