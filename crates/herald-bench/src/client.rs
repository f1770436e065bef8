//! A minimal HTTP/1.1 SSE client: one request, the response head skipped, the
//! body de-chunked. Just enough for a benchmark to hold many streams cheaply.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Largest response head we accept before the body.
const MAX_HEAD: usize = 16 * 1024;

/// Where the server is, resolved once: `--url`, for Herald's own API.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Base URL as given (for reqwest).
    pub base: reqwest::Url,
}

impl Target {
    /// Parses `--url`.
    pub(crate) fn parse(url: &str) -> anyhow::Result<Self> {
        let base = reqwest::Url::parse(url)
            .map_err(|e| crate::usage(format!("--url {url:?} is not a URL: {e}")))?;
        if base.scheme() != "http" {
            return Err(crate::usage(format!(
                "--url: bench speaks plain http only, got {:?}",
                base.scheme()
            )));
        }
        Ok(Self { base })
    }

    /// A URL under the base, e.g. `/v1/publish`.
    pub(crate) fn url(&self, path: &str) -> anyhow::Result<reqwest::Url> {
        let base = self.base.as_str().trim_end_matches('/');
        reqwest::Url::parse(&format!("{base}{path}")).context("building a URL")
    }
}

/// One stream to open: where to connect and what to ask for.
#[derive(Debug, Clone)]
pub(crate) struct StreamTarget {
    /// Resolved socket address.
    pub addr: SocketAddr,
    /// `Host` header value.
    pub host: Arc<str>,
    /// Request target: path and query.
    pub path: String,
}

/// Resolves the host of each subscribe URL once.
#[derive(Debug, Default)]
pub(crate) struct Resolver {
    cache: HashMap<(String, u16), SocketAddr>,
    hosts: HashMap<String, Arc<str>>,
}

impl Resolver {
    /// Where to connect for `url`, and what to send.
    pub(crate) async fn stream_target(
        &mut self,
        url: &reqwest::Url,
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
        let host = self
            .hosts
            .entry(host_header.clone())
            .or_insert_with(|| host_header.into())
            .clone();
        let path = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        };
        Ok(StreamTarget { addr, host, path })
    }
}

/// Connects; on loopback IPv4 the source address is 127.0.0.(1 + idx % 254)
/// so that many connections do not exhaust one address's ephemeral ports.
async fn connect(addr: SocketAddr, idx: usize) -> anyhow::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .context("creating a socket")?;
    if let IpAddr::V4(ip) = addr.ip() {
        if ip.is_loopback() {
            let last = u8::try_from(1 + idx % 254).unwrap_or(1);
            let source = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)), 0);
            socket
                .bind(source)
                .with_context(|| format!("binding {source}"))?;
        }
    }
    let stream = socket
        .connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true).context("setting TCP_NODELAY")?;
    Ok(stream)
}

/// One open SSE stream.
#[derive(Debug)]
pub(crate) struct SseConn {
    stream: TcpStream,
    decoder: BodyDecoder,
    buf: Vec<u8>,
}

impl SseConn {
    /// Sends the request, checks the response head (200) and, unless
    /// `head_only`, waits for the first body bytes (Herald sends `retry:` and
    /// a comment at once). Returns the body bytes received so far.
    pub(crate) async fn open(
        target: &StreamTarget,
        idx: usize,
        buf_size: usize,
        head_only: bool,
    ) -> anyhow::Result<(Self, Vec<u8>)> {
        let mut stream = connect(target.addr, idx).await?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n",
            target.path, target.host
        );
        stream
            .write_all(request.as_bytes())
            .await
            .context("sending the request")?;

        let mut head = Vec::with_capacity(1024);
        let head_end = loop {
            if let Some(pos) = find(&head, b"\r\n\r\n") {
                break pos + 4;
            }
            if head.len() > MAX_HEAD {
                bail!("response head over {MAX_HEAD} bytes");
            }
            let n = stream
                .read_buf(&mut head)
                .await
                .context("reading the response head")?;
            if n == 0 {
                bail!("connection closed before the response head");
            }
        };
        let decoder = parse_head(&head[..head_end])?;
        let mut conn = Self {
            stream,
            decoder,
            buf: vec![0; buf_size.max(64)],
        };
        let mut first = Vec::new();
        conn.decoder
            .decode(&head[head_end..], &mut |b| first.extend_from_slice(b))
            .map_err(|e| anyhow!("bad chunked body: {e}"))?;
        // Bounded: every round either adds bytes, or ends with an error at EOF.
        while first.is_empty() && !head_only {
            if !conn.read_some(|b| first.extend_from_slice(b)).await? {
                bail!("stream ended before its first bytes");
            }
        }
        Ok((conn, first))
    }

    /// Reads once and passes the decoded body bytes to `sink`.
    /// Returns `false` when the stream has ended.
    pub(crate) async fn read_some(
        &mut self,
        mut sink: impl FnMut(&[u8]) + Send,
    ) -> anyhow::Result<bool> {
        let n = self.stream.read(&mut self.buf).await.context("reading")?;
        if n == 0 {
            return Ok(false);
        }
        let ended = self
            .decoder
            .decode(&self.buf[..n], &mut sink)
            .map_err(|e| anyhow!("bad chunked body: {e}"))?;
        Ok(!ended)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Checks the status and picks the body framing.
fn parse_head(head: &[u8]) -> anyhow::Result<BodyDecoder> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line.split(' ').nth(1).unwrap_or_default();
    if status != "200" {
        bail!("server answered {status_line:?}");
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
