//! Request/response HTTP for publishes and the server's stats: hyper's
//! pooled HTTP/1.1 client over the bench's own connector, which makes plain
//! or TLS connections (ALPN `http/1.1`) by the URL's scheme with the run's
//! one TLS configuration.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::client::Io;
use crate::tls::{server_name, Alpn, Tls};

/// Per-request timeout (connect to the end of the response body).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response body read; the rest of a longer one is an error.
const MAX_RESPONSE: usize = 1024 * 1024;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    #[error("{0} is not a request URI: {1}")]
    Uri(String, http::uri::InvalidUri),
    #[error("building the request: {0}")]
    Build(#[from] http::Error),
    #[error("{0}")]
    Transport(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// A server's answer, its body read in full.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: StatusCode,
    /// The response headers (`Retry-After` of a refused publish).
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// The HTTP client of a run; cheap to clone (the pool is shared).
#[derive(Debug, Clone)]
pub(crate) struct Http {
    client: Client<Connector, Full<Bytes>>,
    tls: Arc<Tls>,
}

impl Http {
    pub(crate) fn new(tls: Arc<Tls>) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .build(Connector { tls: tls.clone() });
        Self { client, tls }
    }

    /// The run's TLS settings.
    pub(crate) fn tls(&self) -> &Tls {
        &self.tls
    }

    /// A client with the same TLS settings and a pool of its own, so that
    /// its requests never share a connection with this one's.
    pub(crate) fn with_own_pool(&self) -> Self {
        Self::new(self.tls.clone())
    }

    /// Sends one request and reads the whole answer.
    pub(crate) async fn send(
        &self,
        method: Method,
        url: &url::Url,
        content_type: Option<&HeaderValue>,
        body: Bytes,
    ) -> Result<Reply, HttpError> {
        let uri: Uri = url
            .as_str()
            .parse()
            .map_err(|e| HttpError::Uri(url.to_string(), e))?;
        let mut request = http::Request::builder().method(method).uri(uri);
        if let Some(content_type) = content_type {
            request = request.header(CONTENT_TYPE, content_type.clone());
        }
        let request = request.body(Full::new(body))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| HttpError::Transport(chain(&e)))?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = Limited::new(response.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| HttpError::Transport(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok(Reply {
                status,
                headers,
                body,
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .unwrap_or(Err(HttpError::Timeout(REQUEST_TIMEOUT)))
    }

    /// `GET url` as JSON, `None` unless the answer is a 2xx JSON body.
    pub(crate) async fn get_json(&self, url: &url::Url) -> Option<serde_json::Value> {
        let reply = self.send(Method::GET, url, None, Bytes::new()).await.ok()?;
        if !reply.status.is_success() {
            return None;
        }
        serde_json::from_slice(&reply.body).ok()
    }
}

/// An error and its sources, `: `-separated (hyper's own message is only
/// the outermost, e.g. "client error (Connect)").
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    // Bounded: error chains are finite; 8 levels are plenty to read.
    for _ in 0..8 {
        let Some(next) = source else { break };
        text.push_str(": ");
        text.push_str(&next.to_string());
        source = next.source();
    }
    text
}

/// Makes a connection for the pool: TCP with `TCP_NODELAY`, then TLS when the
/// URI's scheme is `https`.
#[derive(Debug, Clone)]
struct Connector {
    tls: Arc<Tls>,
}

type Connecting = Pin<Box<dyn Future<Output = io::Result<Conn>> + Send>>;

impl tower_service::Service<Uri> for Connector {
    type Response = Conn;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Connecting {
        let tls = self.tls.clone();
        Box::pin(async move {
            let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_owned());
            let https = uri.scheme_str() == Some("https");
            let host = uri.host().ok_or_else(|| invalid("the URI has no host"))?;
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            let literal = host.trim_start_matches('[').trim_end_matches(']');
            let tcp = tokio::net::TcpStream::connect((literal, port)).await?;
            tcp.set_nodelay(true)?;
            if !https {
                return Ok(Conn(TokioIo::new(Io::Plain(tcp))));
            }
            let name = server_name(host).map_err(|e| invalid(&format!("{e:#}")))?;
            let stream = tls.connector(Alpn::Http1).connect(name, tcp).await?;
            Ok(Conn(TokioIo::new(Io::Tls(Box::new(stream)))))
        })
    }
}

/// A pooled connection, as hyper reads and writes it.
#[derive(Debug)]
struct Conn(TokioIo<Io>);

impl Connection for Conn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }
}
