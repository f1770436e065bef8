//! A minimal SSE client: one request, the response head checked, the body
//! de-chunked. Just enough for a benchmark to hold many streams cheaply:
//! HTTP/1.1 over one `TcpStream` (or TLS over it) per stream, or a stream of
//! an HTTP/2 connection shared with others (`mux.rs`).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use anyhow::Context;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;

use crate::tls::{server_name, Alpn, Tls};

/// Largest response head we accept before the body.
const MAX_HEAD: usize = 16 * 1024;

/// Where the server is, resolved once: `--url`, for Herald's own API.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Base URL as given (`https` under `--tls`).
    pub base: url::Url,
}

impl Target {
    /// Parses `--url`.
    pub(crate) fn parse(url: &str, tls: &Tls) -> anyhow::Result<Self> {
        let base = url::Url::parse(url)
            .map_err(|e| crate::usage(format!("--url {url:?} is not a URL: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(crate::usage(format!(
                "--url: bench speaks http and https only, got {:?}",
                base.scheme()
            )));
        }
        Ok(Self {
            base: tls.apply(base),
        })
    }

    /// A URL under the base, e.g. `/v1/publish`.
    pub(crate) fn url(&self, path: &str) -> anyhow::Result<url::Url> {
        let base = self.base.as_str().trim_end_matches('/');
        url::Url::parse(&format!("{base}{path}")).context("building a URL")
    }
}

/// The TLS side of a stream's server, shared by every stream to it.
#[derive(Debug)]
pub(crate) struct TlsPeer {
    pub tls: Arc<Tls>,
    pub name: ServerName<'static>,
}

/// One stream to open: where to connect and what to ask for.
#[derive(Debug, Clone)]
pub(crate) struct StreamTarget {
    /// Resolved socket address.
    pub addr: SocketAddr,
    /// `Host` header value (`:authority` over HTTP/2).
    pub host: Arc<str>,
    /// Request target: path and query.
    pub path: String,
    /// Set when the stream goes over TLS.
    pub tls: Option<Arc<TlsPeer>>,
    /// Sent as `Authorization: Bearer {token}`.
    pub bearer: Option<Arc<str>>,
}

impl StreamTarget {
    /// The request's URI with scheme and authority, as HTTP/2 sends it.
    pub(crate) fn absolute_uri(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{}", self.host, self.path)
    }
}

/// Resolves the host of each subscribe URL once.
#[derive(Debug)]
pub(crate) struct Resolver {
    tls: Arc<Tls>,
    cache: HashMap<(String, u16), SocketAddr>,
    hosts: HashMap<String, Arc<str>>,
    peers: HashMap<String, Arc<TlsPeer>>,
}

impl Resolver {
    pub(crate) fn new(tls: Arc<Tls>) -> Self {
        Self {
            tls,
            cache: HashMap::new(),
            hosts: HashMap::new(),
            peers: HashMap::new(),
        }
    }

    /// Where to connect for `url` (already through [`Tls::apply`]), and what
    /// to send.
    pub(crate) async fn stream_target(
        &mut self,
        url: &url::Url,
        bearer: Option<Arc<str>>,
    ) -> anyhow::Result<StreamTarget> {
        let port = url.port_or_known_default().unwrap_or(80);
        let host_str = url.host_str().context("the URL has no host")?;
        let literal = host_str.trim_start_matches('[').trim_end_matches(']');
        let addr = match literal.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, port),
            Err(_) => {
                let key = (host_str.to_owned(), port);
                match self.cache.get(&key) {
                    Some(addr) => *addr,
                    None => {
                        let addr = tokio::net::lookup_host((host_str, port))
                            .await
                            .with_context(|| format!("resolving {host_str}"))?
                            .next()
                            .with_context(|| format!("{host_str} resolves to no address"))?;
                        self.cache.insert(key, addr);
                        addr
                    }
                }
            }
        };
        let host_header = match url.port() {
            Some(port) => format!("{host_str}:{port}"),
            None => host_str.to_owned(),
        };
        let tls = if url.scheme() == "https" {
            let peer = match self.peers.get(host_str) {
                Some(peer) => peer.clone(),
                None => {
                    let peer = Arc::new(TlsPeer {
                        tls: self.tls.clone(),
                        name: server_name(host_str)?,
                    });
                    self.peers.insert(host_str.to_owned(), peer.clone());
                    peer
                }
            };
            Some(peer)
        } else {
            None
        };
        let host = self
            .hosts
            .entry(host_header.clone())
            .or_insert_with(|| host_header.into())
            .clone();
        let path = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        };
        Ok(StreamTarget {
            addr,
            host,
            path,
            tls,
            bearer,
        })
    }
}

/// Why a stream did not open. [`OpenError::cause`] names its kind, for the
/// failure counts of `connect`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    #[error("creating or binding a socket: {0}")]
    Socket(io::Error),
    #[error("connecting to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("TLS handshake: {0}")]
    Tls(io::Error),
    #[error("the server chose ALPN {0:?}, not h2")]
    NotH2(String),
    #[error("HTTP/2: {0}")]
    H2(#[from] h2::Error),
    #[error("sending the request: {0}")]
    Send(io::Error),
    #[error("reading: {0}")]
    Read(io::Error),
    #[error("connection closed before the response head")]
    ClosedBeforeHead,
    #[error("response head over {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("server answered {line:?}")]
    Status { status: u16, line: String },
    #[error("bad chunked body: {0}")]
    Chunked(&'static str),
    #[error("stream ended before its first bytes")]
    EndedBeforeBody,
    #[error("bad request: {0}")]
    Request(String),
}

impl OpenError {
    /// The kind of failure, in a few words (no addresses or counts, so that
    /// failures of one kind add up under one name).
    pub(crate) fn cause(&self) -> String {
        match self {
            OpenError::Socket(e) => format!("socket: {}", e.kind()),
            OpenError::Connect { source, .. } => format!("connect: {}", source.kind()),
            OpenError::Tls(e) => match e.get_ref() {
                Some(inner) => format!("tls: {inner}"),
                None => format!("tls: {}", e.kind()),
            },
            OpenError::NotH2(_) => "alpn: not h2".to_owned(),
            OpenError::H2(e) => match e.reason() {
                Some(reason) => format!("http2: {reason:?}"),
                None if e.is_io() => "http2: io".to_owned(),
                None => "http2: other".to_owned(),
            },
            OpenError::Send(e) => format!("send: {}", e.kind()),
            OpenError::Read(e) => format!("read: {}", e.kind()),
            OpenError::ClosedBeforeHead => "closed before the response head".to_owned(),
            OpenError::HeadTooLarge => "response head too large".to_owned(),
            OpenError::Status { status, .. } => format!("status {status}"),
            OpenError::Chunked(_) => "bad chunked body".to_owned(),
            OpenError::EndedBeforeBody => "ended before the first bytes".to_owned(),
            OpenError::Request(_) => "bad request".to_owned(),
        }
    }
}

/// A connection: plain TCP, or TLS over it (boxed: a TLS session's state is
/// far larger than a socket, and plain streams should not pay for it).
#[derive(Debug)]
pub(crate) enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Io {
    /// The protocol the server chose in the TLS handshake, if any.
    pub(crate) fn alpn(&self) -> Option<&[u8]> {
        match self {
            Io::Plain(_) => None,
            Io::Tls(tls) => tls.get_ref().1.alpn_protocol(),
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Connects; on loopback IPv4 the source address is 127.0.0.(1 + idx % 254)
/// so that many connections do not exhaust one address's ephemeral ports.
async fn connect_tcp(addr: SocketAddr, idx: usize) -> Result<TcpStream, OpenError> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(OpenError::Socket)?;
    if let IpAddr::V4(ip) = addr.ip() {
        if ip.is_loopback() {
            let last = u8::try_from(1 + idx % 254).unwrap_or(1);
            let source = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)), 0);
            socket.bind(source).map_err(OpenError::Socket)?;
        }
    }
    let stream = socket
        .connect(addr)
        .await
        .map_err(|source| OpenError::Connect { addr, source })?;
    stream.set_nodelay(true).map_err(OpenError::Socket)?;
    Ok(stream)
}

/// Connects to `target` (source address by `idx`, see [`connect_tcp`]) and,
/// for a TLS target, makes the handshake asking for `alpn`.
pub(crate) async fn connect(
    target: &StreamTarget,
    idx: usize,
    alpn: Alpn,
) -> Result<Io, OpenError> {
    let tcp = connect_tcp(target.addr, idx).await?;
    match &target.tls {
        None => Ok(Io::Plain(tcp)),
        Some(peer) => {
            let stream = peer
                .tls
                .connector(alpn)
                .connect(peer.name.clone(), tcp)
                .await
                .map_err(OpenError::Tls)?;
            Ok(Io::Tls(Box::new(stream)))
        }
    }
}

/// Where a stream's body comes from.
#[derive(Debug)]
enum Body {
    /// Its own HTTP/1.1 connection.
    Http1 {
        io: Io,
        decoder: BodyDecoder,
        buf: Box<[u8]>,
    },
    /// A stream of a shared HTTP/2 connection.
    Http2(h2::RecvStream),
}

/// One open SSE stream.
#[derive(Debug)]
pub(crate) struct SseConn {
    body: Body,
}

impl SseConn {
    /// Opens an HTTP/1.1 stream: sends the request, checks the response head
    /// (200) and, unless `head_only`, waits for the first body bytes (Herald
    /// sends `retry:` and a comment at once). Returns the body bytes received
    /// so far.
    pub(crate) async fn open(
        target: &StreamTarget,
        idx: usize,
        buf_size: usize,
        head_only: bool,
    ) -> Result<(Self, Vec<u8>), OpenError> {
        let mut io = connect(target, idx, Alpn::Http1).await?;
        let auth = match &target.bearer {
            Some(token) => format!("Authorization: Bearer {token}\r\n"),
            None => String::new(),
        };
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n{auth}\r\n",
            target.path, target.host
        );
        io.write_all(request.as_bytes())
            .await
            .map_err(OpenError::Send)?;

        let mut head = Vec::with_capacity(1024);
        let head_end = loop {
            if let Some(pos) = find(&head, b"\r\n\r\n") {
                break pos + 4;
            }
            if head.len() > MAX_HEAD {
                return Err(OpenError::HeadTooLarge);
            }
            let n = io.read_buf(&mut head).await.map_err(OpenError::Read)?;
            if n == 0 {
                return Err(OpenError::ClosedBeforeHead);
            }
        };
        let mut decoder = parse_head(&head[..head_end])?;
        let mut first = Vec::new();
        decoder
            .decode(&head[head_end..], &mut |b| first.extend_from_slice(b))
            .map_err(OpenError::Chunked)?;
        let conn = Self {
            body: Body::Http1 {
                io,
                decoder,
                buf: vec![0; buf_size.max(64)].into_boxed_slice(),
            },
        };
        conn.first_bytes(first, head_only).await
    }

    /// A stream of an HTTP/2 connection whose response head said 200.
    pub(crate) async fn from_h2(
        body: h2::RecvStream,
        head_only: bool,
    ) -> Result<(Self, Vec<u8>), OpenError> {
        let conn = Self {
            body: Body::Http2(body),
        };
        conn.first_bytes(Vec::new(), head_only).await
    }

    /// Unless `head_only`, reads until there are body bytes.
    async fn first_bytes(
        mut self,
        mut first: Vec<u8>,
        head_only: bool,
    ) -> Result<(Self, Vec<u8>), OpenError> {
        // Bounded: every round either adds bytes, or ends with an error at EOF.
        while first.is_empty() && !head_only {
            if !self.read_some(|b| first.extend_from_slice(b)).await? {
                return Err(OpenError::EndedBeforeBody);
            }
        }
        Ok((self, first))
    }

    /// Reads once and passes the decoded body bytes to `sink`.
    /// Returns `false` when the stream has ended.
    pub(crate) async fn read_some(
        &mut self,
        mut sink: impl FnMut(&[u8]) + Send,
    ) -> Result<bool, OpenError> {
        match &mut self.body {
            Body::Http1 { io, decoder, buf } => {
                let n = io.read(buf).await.map_err(OpenError::Read)?;
                if n == 0 {
                    return Ok(false);
                }
                let ended = decoder
                    .decode(&buf[..n], &mut sink)
                    .map_err(OpenError::Chunked)?;
                Ok(!ended)
            }
            Body::Http2(body) => match body.data().await {
                None => Ok(false),
                Some(Err(e)) => Err(OpenError::H2(e)),
                Some(Ok(bytes)) => {
                    // Hand the window back at once, so the server may keep
                    // sending on this stream and on the shared connection.
                    let _ = body.flow_control().release_capacity(bytes.len());
                    sink(&bytes);
                    Ok(true)
                }
            },
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Checks the status and picks the body framing.
fn parse_head(head: &[u8]) -> Result<BodyDecoder, OpenError> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line.split(' ').nth(1).unwrap_or_default();
    if status != "200" {
        return Err(OpenError::Status {
            status: status.parse().unwrap_or(0),
            line: status_line.to_owned(),
        });
    }
    let chunked = lines.any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("transfer-encoding")
                && value.to_ascii_lowercase().contains("chunked")
        })
    });
    Ok(if chunked {
        BodyDecoder::Chunked(Chunk::Size {
            value: 0,
            digits: 0,
            ext: false,
        })
    } else {
        BodyDecoder::Raw
    })
}

/// Body framing of the response.
#[derive(Debug)]
enum BodyDecoder {
    /// Read until the connection closes.
    Raw,
    /// `Transfer-Encoding: chunked` (what hyper uses for a streaming body).
    Chunked(Chunk),
}

/// Where the chunked decoder is.
#[derive(Debug, Clone, Copy)]
enum Chunk {
    /// In the chunk-size line.
    Size { value: u64, digits: u8, ext: bool },
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// After chunk data, expecting CRLF.
    DataEnd,
    /// After the last chunk, reading trailer lines; `len` of the current one.
    Trailer { len: usize },
    /// The body has ended.
    Done,
}

impl BodyDecoder {
    /// Decodes `input`, passing body bytes to `sink`; `Ok(true)` once the body ended.
    fn decode(
        &mut self,
        mut input: &[u8],
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<bool, &'static str> {
        let BodyDecoder::Chunked(state) = self else {
            if !input.is_empty() {
                sink(input);
            }
            return Ok(false);
        };
        // Bounded: every round consumes at least one byte of `input`.
        while let Some((&byte, rest)) = input.split_first() {
            match *state {
                Chunk::Size { value, digits, ext } => {
                    input = rest;
                    match byte {
                        b'\n' if digits == 0 => return Err("chunk size missing"),
                        b'\n' if value == 0 => *state = Chunk::Trailer { len: 0 },
                        b'\n' => *state = Chunk::Data(value),
                        b'\r' => {}
                        _ if ext => {}
                        b';' => {
                            *state = Chunk::Size {
                                value,
                                digits,
                                ext: true,
                            }
                        }
                        _ => {
                            let digit = char::from(byte).to_digit(16).ok_or("bad chunk size")?;
                            if digits >= 15 {
                                return Err("chunk size too large");
                            }
                            *state = Chunk::Size {
                                value: value * 16 + u64::from(digit),
                                digits: digits + 1,
                                ext,
                            };
                        }
                    }
                }
                Chunk::Data(left) => {
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                    let (data, rest) = input.split_at(take);
                    sink(data);
                    input = rest;
                    let left = left - take as u64;
                    *state = if left == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left)
                    };
                }
                Chunk::DataEnd => {
                    input = rest;
                    match byte {
                        b'\r' => {}
                        b'\n' => {
                            *state = Chunk::Size {
                                value: 0,
                                digits: 0,
                                ext: false,
                            }
                        }
                        _ => return Err("chunk data not followed by CRLF"),
                    }
                }
                Chunk::Trailer { len } => {
                    input = rest;
                    match byte {
                        b'\n' if len == 0 => *state = Chunk::Done,
                        b'\n' => *state = Chunk::Trailer { len: 0 },
                        b'\r' => {}
                        _ => *state = Chunk::Trailer { len: len + 1 },
                    }
                }
                Chunk::Done => return Ok(true),
            }
        }
        Ok(matches!(state, Chunk::Done))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(pieces: &[&[u8]]) -> (Vec<u8>, bool) {
        let mut decoder = BodyDecoder::Chunked(Chunk::Size {
            value: 0,
            digits: 0,
            ext: false,
        });
        let mut out = Vec::new();
        let mut ended = false;
        for piece in pieces {
            ended = decoder
                .decode(piece, &mut |b| out.extend_from_slice(b))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        (out, ended)
    }

    #[test]
    fn dechunks_split_anywhere() {
        let wire: &[u8] = b"5\r\nhello\r\nB;x=y\r\n, world!!!!\r\n0\r\nX-T: 1\r\n\r\n";
        for split in 0..wire.len() {
            let (a, b) = wire.split_at(split);
            let (out, ended) = decode_all(&[a, b]);
            assert_eq!(out, b"hello, world!!!!");
            assert!(ended);
        }
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(decode_all(&bytes).0, b"hello, world!!!!");
    }

    #[test]
    fn refuses_garbage() {
        let mut decoder = BodyDecoder::Chunked(Chunk::Size {
            value: 0,
            digits: 0,
            ext: false,
        });
        assert!(decoder.decode(b"zz\r\n", &mut |_| {}).is_err());
    }

    #[test]
    fn head_needs_200() {
        assert!(parse_head(b"HTTP/1.1 400 Bad Request\r\n\r\n").is_err());
        assert!(matches!(
            parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"),
            Ok(BodyDecoder::Chunked(_))
        ));
    }
}
