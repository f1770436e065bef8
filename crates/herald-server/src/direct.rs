//! The direct path for HTTP/1.1 event streams.
//!
//! Why: hyper keeps an 8 KiB read buffer and an 8 KiB write buffer for the
//! life of every connection. An SSE stream is one request followed by hours of
//! small writes, so on hyper those buffers are most of what an idle
//! subscriber costs. Here the accept loop peeks at a new connection's request
//! head (what the bytes are is `crate::http1_head`'s business); a complete
//! HTTP/1.1 `GET /v1/events` that [`admit`] accepts is served
//! by [`stream`], which writes the response head and chunked frames straight
//! to the socket and keeps no buffer between writes. Everything else —
//! other routes, HTTP/2, refused or partial requests — goes to hyper
//! untouched (peeking consumes nothing), so the router stays the one source of
//! every other answer, errors included.
//!
//! TLS connections take the same path with one difference: TLS bytes cannot
//! be peeked at, so [`read_head`] reads the head out of the TLS stream into a
//! buffer (at most [`MAX_HEAD`] bytes) and [`judge`] decides on that; what is
//! not served here goes to hyper with those bytes replayed in front
//! (`crate::io::Rewind`). [`stream`] is generic over the socket, so plain TCP
//! and TLS share the writer; on TCP it compiles to what it was before
//! (`flush` is a no-op there).
//!
//! Invariants: bytes are consumed from a plain socket only after the request
//! is admitted; the stream is closed on an event boundary (the writer yields
//! whole frames) with the terminating chunk, after which the connection goes
//! back to hyper for keep-alive requests. Every write is flushed before the
//! next frame is awaited (TLS buffers records until flushed). A write the
//! socket takes no byte of within the write timeout ends the stream
//! (`crate::io::WriteDeadline`).
//!
//! Bytes the client sends after its request (a pipelined request: HTTP/1.1
//! allows it) cannot be answered while the stream is open, since answers go
//! out in order and the stream never ends by itself. They are read (the read
//! is how a client closing is noticed) and kept, in order, and when the
//! server ends the stream they go to hyper in front of the socket
//! (`crate::io::Rewind`), so the next request is answered after the
//! terminating chunk. On TLS the bytes read with the head beyond it are the
//! first of them. Nothing is allocated for them until a byte arrives (an idle
//! stream reads into a few bytes of its own task), and past
//! [`MAX_UNEXPECTED_BYTES`] the connection is closed, so a client that keeps
//! sending costs a bounded amount of memory and work.

use std::io;
use std::net::IpAddr;
use std::sync::Arc;

use axum::http::{HeaderMap, Version};
use herald_core::{Connection, Subscriber, WriteThrough};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cors;
use crate::http1_head::{classify, Head, MAX_HEAD};
use crate::io::{Rewind, WriteDeadline};
use crate::limits::StreamSlot;
use crate::routes::subscribe::{admit, set_stream_headers, Admission};
use crate::AppState;

/// Bytes a stream client may send after its request before the connection
/// is closed (the client reconnects and resumes if it is a real one). Its
/// only legitimate use is a few pipelined requests, kept until the stream
/// ends, so the bound only has to be above what those take (a request head
/// is at most `MAX_HEAD`), and small enough that 19,000 chatty streams keep
/// a few hundred MB at most, not a gigabyte.
const MAX_UNEXPECTED_BYTES: usize = 16 << 10;
/// How much room the kept bytes grow by when full: allocated only once the
/// client has sent something (idle streams read into [`PROBE`] bytes), so
/// that reading [`MAX_UNEXPECTED_BYTES`] takes a few reads, not thousands.
const DRAIN_BUF: usize = 4 << 10;
/// The read buffer of a stream whose client has sent nothing after its
/// request: part of the stream's task, so an idle stream allocates none.
const PROBE: usize = 32;

/// A request the direct path will serve.
#[derive(Debug)]
pub(crate) struct DirectRequest {
    /// Bytes of the head still to be read from the socket: all of it when it
    /// was peeked at, none when it was read already (TLS).
    unread_head: usize,
    /// Bytes read already beyond the head (TLS reads the head in whatever
    /// pieces records bring, so a pipelined request may come with it);
    /// empty when the head was peeked at (they are still in the socket).
    read_past_head: Vec<u8>,
    subscriber: Subscriber,
    headers: HeaderMap,
    /// The stream's place under the connection limits.
    slot: StreamSlot,
}

/// What the first bytes of a connection say about it.
#[derive(Debug)]
pub(crate) enum Sniffed {
    /// An admitted HTTP/1.1 `GET /v1/events`: served by [`stream`].
    Direct(Box<DirectRequest>),
    /// The HTTP/2 preface: hyper serves it, and it may carry event streams.
    Http2,
    /// Anything else: hyper serves it.
    Other,
}

/// Peeks at the first bytes of a connection. Consumes nothing.
///
/// One peek: a head that has not fully arrived by then (or a preface cut in
/// two) goes to hyper, which serves it as any other request. Peeking again
/// would return at once with the same bytes, so waiting for more is not an
/// option without consuming them.
pub(crate) async fn sniff(stream: &TcpStream, state: &AppState, peer: IpAddr) -> Sniffed {
    let mut buf = vec![0u8; MAX_HEAD];
    let Ok(n) = stream.peek(&mut buf).await else {
        return Sniffed::Other;
    };
    judge(&buf[..n], state, HeadWas::Peeked, peer).await
}

/// Reads a connection's first bytes until they are a complete head, the
/// HTTP/2 preface, or something else (see `classify`), at most [`MAX_HEAD`]
/// of them; or until the client stops sending (EOF). For TLS streams, which
/// cannot be peeked at; the caller bounds the wait.
pub(crate) async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut len = 0;
    while len < MAX_HEAD {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
        if !matches!(classify(&buf[..len]), Head::Incomplete) {
            break;
        }
    }
    buf.truncate(len);
    Ok(buf)
}

/// What `first` (the first bytes of a connection from `peer`) says about it.
pub(crate) async fn judge(first: &[u8], state: &AppState, was: HeadWas, peer: IpAddr) -> Sniffed {
    match classify(first) {
        Head::Http2 => Sniffed::Http2,
        Head::EventStream {
            head_len,
            query,
            headers,
        } => match admit(state, query, &headers, Some(peer)).await {
            Ok(Admission::Open(subscriber, slot)) => Sniffed::Direct(Box::new(DirectRequest {
                unread_head: match was {
                    HeadWas::Peeked => head_len,
                    HeadWas::Read => 0,
                },
                read_past_head: match was {
                    HeadWas::Peeked => Vec::new(),
                    HeadWas::Read => first.get(head_len..).unwrap_or_default().to_vec(),
                },
                subscriber,
                headers,
                slot,
            })),
            // Refusals and "come back later" are the router's answers.
            _ => Sniffed::Other,
        },
        Head::Incomplete => Sniffed::Other,
        Head::Other(why) => {
            tracing::trace!(?why, "not a direct event stream");
            Sniffed::Other
        }
    }
}

/// Whether the bytes [`judge`] looks at are still in the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeadWas {
    /// Peeked at (plain TCP): the direct path reads them before it answers.
    Peeked,
    /// Read already (TLS).
    Read,
}

/// Serves the event stream. Returns the socket when the server ended the
/// stream (kick, lifetime, shutdown) so the caller can keep the connection
/// alive, with the bytes the client sent meanwhile (a pipelined request) to
/// be read first; `None` when the client went away.
///
/// Generic over the socket so TLS shares it; for a `TcpStream` this is the
/// hot path of fan-out: no copy or allocation beyond the one chunk buffer.
///
/// With `write_through` (plain TCP: `crate::write_through`), the dispatcher
/// may write events to the socket itself while this writer waits; it is
/// given to the connection once the response head is out, and taken back
/// before the stream's last chunk.
pub(crate) async fn stream<S>(
    socket: S,
    state: Arc<AppState>,
    mut request: Box<DirectRequest>,
    write_through: Option<Box<dyn WriteThrough>>,
) -> io::Result<Option<Rewind<S>>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // A socket that takes no byte for the write timeout fails the pending
    // write below, which ends the stream like any socket error.
    let mut socket = WriteDeadline::new(socket, state.write_timeout.clone());
    // A head that was only peeked at: consume exactly it (what follows it
    // is read by the loop below, like anything sent later).
    if request.unread_head > 0 {
        let mut consumed = vec![0u8; request.unread_head];
        socket.read_exact(&mut consumed).await?;
        drop(consumed);
    }
    let mut pipelined = Pipelined::new(std::mem::take(&mut request.read_past_head));
    let (mut connection, head, slot) = start(&state, request);
    socket.write_all(&head).await?;
    socket.flush().await?;
    drop(head);
    if let Some(to) = write_through {
        connection.write_through(to);
    }

    // Read to notice the client closing, and to keep what it sends (see the
    // module doc).
    let mut probe = [0u8; PROBE];
    loop {
        // A fresh buffer per write, allocated once there are frames (with
        // room for the size line in front): a waiting stream holds none.
        let mut chunk = Vec::new();
        // `select!` drops both futures before it runs the chosen arm, so the
        // arms may write to the socket the read future borrowed: no split
        // halves are needed (a TLS stream has no borrowed split).
        tokio::select! {
            // Frames first: under load the read side is looked at only when
            // the queue is empty (a closed peer also fails the next write).
            biased;
            more = connection.next_chunk_into(&mut chunk, SIZE_LINE_ROOM) => if more {
                socket.write_all(frame_chunk(&mut chunk)).await?;
                socket.flush().await?;
            } else {
                connection.end_write_through();
                socket.write_all(b"0\r\n\r\n").await?;
                socket.flush().await?;
                break;
            },
            read = socket.read(pipelined.room(&mut probe)) => match read {
                Ok(0) | Err(_) => return Ok(None),
                Ok(n) => {
                    pipelined.took(&probe, n);
                    if pipelined.len() > MAX_UNEXPECTED_BYTES {
                        tracing::debug!(sent = pipelined.len(), "stream client kept sending: closed");
                        return Ok(None);
                    }
                }
            },
        }
    }
    drop(connection);
    drop(slot);
    Ok(Some(Rewind::new(
        pipelined.into_bytes(),
        socket.into_inner(),
    )))
}

/// What a stream's client sent after its request, in order, for whoever
/// serves the connection after the stream.
///
/// Invariant: `buf[..kept]` are the bytes received; `buf[kept..]` is zeroed
/// room the next read goes into. Both are empty until a byte is kept, and
/// the room is only ever [`DRAIN_BUF`] past what is kept, so the whole is
/// at most [`MAX_UNEXPECTED_BYTES`] plus one room before the stream is
/// closed.
#[derive(Debug)]
struct Pipelined {
    buf: Vec<u8>,
    kept: usize,
}

impl Pipelined {
    fn new(already_read: Vec<u8>) -> Self {
        Self {
            kept: already_read.len(),
            buf: already_read,
        }
    }

    fn len(&self) -> usize {
        self.kept
    }

    /// Where the next read goes: `probe` while nothing is kept (an idle
    /// stream allocates nothing), else the room after what is kept.
    fn room<'a>(&'a mut self, probe: &'a mut [u8]) -> &'a mut [u8] {
        if self.kept == 0 {
            return probe;
        }
        if self.buf.len() == self.kept {
            // Exact: amortised doubling would let a 64 KiB bound hold 128.
            self.buf.reserve_exact(DRAIN_BUF);
            self.buf.resize(self.kept + DRAIN_BUF, 0);
        }
        &mut self.buf[self.kept..]
    }

    /// `n` bytes were read into the last [`Self::room`] (`probe` is the
    /// one that was passed to it).
    fn took(&mut self, probe: &[u8], n: usize) {
        if self.kept == 0 {
            self.buf.clear();
            self.buf.extend_from_slice(&probe[..n]);
        }
        self.kept += n;
    }

    /// The bytes received, without the room.
    fn into_bytes(mut self) -> Vec<u8> {
        self.buf.truncate(self.kept);
        self.buf
    }
}

/// Registers the stream and renders the response head. A plain function, so
/// nothing of the request but its slot is kept in the stream's task for its
/// lifetime.
fn start(state: &Arc<AppState>, request: Box<DirectRequest>) -> (Connection, Vec<u8>, StreamSlot) {
    let DirectRequest {
        subscriber,
        headers,
        slot,
        ..
    } = *request;
    let connection = state.hub.connect(subscriber);
    (connection, response_head(state, &headers), slot)
}

/// Status line and headers, as the hyper route would send them.
fn response_head(state: &AppState, request: &HeaderMap) -> Vec<u8> {
    let mut headers = HeaderMap::new();
    set_stream_headers(&mut headers, Version::HTTP_11);
    cors::set_cors_headers(
        &mut headers,
        cors::allowed_origin(&state.config.allowed_origins, request),
    );
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    for (name, value) in &headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"transfer-encoding: chunked\r\ndate: ");
    head.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
    head.extend_from_slice(b"\r\n\r\n");
    head
}

/// Room left at the front of a chunk buffer for the size line.
const SIZE_LINE_ROOM: usize = 18;

/// Completes the HTTP chunk (`size CRLF data CRLF`) around the data that
/// follows the first [`SIZE_LINE_ROOM`] bytes of `chunk`; returns the bytes
/// to write, in one plain write.
///
/// Why one buffer: frames are copied in anyway, and a `send` of one slice
/// costs the kernel less than a `writev` of three (the vfs layer, importing
/// the iovec) on the hottest path of fan-out.
fn frame_chunk(chunk: &mut Vec<u8>) -> &[u8] {
    // Nothing gathered: nothing to write (a chunk of size 0 would end the
    // response).
    let Some(data_len @ 1..) = chunk.len().checked_sub(SIZE_LINE_ROOM) else {
        return &[];
    };
    let mut size = [0u8; SIZE_LINE_ROOM];
    let size_len = chunk_size_line(data_len, &mut size);
    let start = SIZE_LINE_ROOM - size_len;
    chunk[start..SIZE_LINE_ROOM].copy_from_slice(&size[..size_len]);
    chunk.extend_from_slice(b"\r\n");
    &chunk[start..]
}

/// Writes `len` in hex followed by CRLF into `out`; returns the length used.
/// `frame` as one HTTP/1.1 chunk in `out` (at least 20 bytes longer than
/// the frame); returns its length, 0 if `out` is too small.
pub(crate) fn encode_chunk(frame: &[u8], out: &mut [u8]) -> usize {
    let mut size = [0u8; SIZE_LINE_ROOM];
    let size_len = chunk_size_line(frame.len(), &mut size);
    let len = size_len + frame.len() + 2;
    let Some(out) = out.get_mut(..len) else {
        return 0;
    };
    out[..size_len].copy_from_slice(&size[..size_len]);
    out[size_len..len - 2].copy_from_slice(frame);
    out[len - 2..].copy_from_slice(b"\r\n");
    len
}

fn chunk_size_line(len: usize, out: &mut [u8; SIZE_LINE_ROOM]) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize;
    for i in 0..digits {
        out[digits - 1 - i] = HEX[(len >> (4 * i)) & 0xf];
    }
    out[digits] = b'\r';
    out[digits + 1] = b'\n';
    digits + 2
}

#[cfg(test)]
mod tests {
    use super::{chunk_size_line, Pipelined, DRAIN_BUF, MAX_UNEXPECTED_BYTES, PROBE};

    #[test]
    fn pipelined_bytes_come_back_in_order_and_their_room_stays_bounded() {
        let mut probe = [0u8; PROBE];
        let mut kept = Pipelined::new(Vec::new());
        assert_eq!(
            kept.room(&mut probe).len(),
            PROBE,
            "nothing kept: the probe"
        );
        assert_eq!(kept.buf.capacity(), 0, "nothing allocated before a byte");
        let mut sent = Vec::new();
        let mut next = 0u8;
        // Reads of odd sizes, as a socket gives them, up to past the bound.
        for read in 0..1_000 {
            if kept.len() > MAX_UNEXPECTED_BYTES {
                break;
            }
            let room = kept.room(&mut probe);
            let n = room.len().min(700 + read % 300);
            for byte in &mut room[..n] {
                *byte = next;
                next = next.wrapping_add(1);
            }
            sent.extend_from_slice(&room[..n]);
            kept.took(&probe, n);
            assert!(
                kept.buf.capacity() <= kept.len() + DRAIN_BUF,
                "room beyond one step: {} kept, {} allocated",
                kept.len(),
                kept.buf.capacity()
            );
        }
        assert!(
            kept.len() > MAX_UNEXPECTED_BYTES,
            "the loop reached the bound"
        );
        assert_eq!(kept.into_bytes(), sent);
    }

    #[test]
    fn bytes_read_with_the_head_come_first() {
        let mut probe = [0u8; PROBE];
        let mut kept = Pipelined::new(b"GET /healthz".to_vec());
        let room = kept.room(&mut probe);
        room[..4].copy_from_slice(b" HTT");
        kept.took(&probe, 4);
        assert_eq!(kept.into_bytes(), b"GET /healthz HTT");
    }

    #[test]
    fn chunk_sizes_are_lowercase_hex() {
        for (len, want) in [
            (0, "0\r\n"),
            (9, "9\r\n"),
            (255, "ff\r\n"),
            (4096, "1000\r\n"),
        ] {
            let mut out = [0u8; 18];
            let n = chunk_size_line(len, &mut out);
            assert_eq!(&out[..n], want.as_bytes());
        }
        let mut out = [0u8; 18];
        let n = chunk_size_line(usize::MAX, &mut out);
        assert_eq!(n, 18);
    }
}
