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
//! Invariants: bytes are consumed from the socket only after the request is
//! admitted; the stream is closed on an event boundary (the writer yields
//! whole frames) with the terminating chunk, after which the connection goes
//! back to hyper for keep-alive requests.

use std::io;
use std::sync::Arc;

use axum::http::{HeaderMap, Version};
use herald_core::{Connection, Subscriber};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cors;
use crate::http1_head::{classify, Head, MAX_HEAD};
use crate::routes::subscribe::{admit, set_stream_headers, Admission};
use crate::AppState;

/// A request the direct path will serve.
#[derive(Debug)]
pub(crate) struct DirectRequest {
    head_len: usize,
    subscriber: Subscriber,
    headers: HeaderMap,
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
pub(crate) async fn sniff(stream: &TcpStream, state: &AppState) -> Sniffed {
    let mut buf = vec![0u8; MAX_HEAD];
    let Ok(n) = stream.peek(&mut buf).await else {
        return Sniffed::Other;
    };
    match classify(&buf[..n]) {
        Head::Http2 => Sniffed::Http2,
        Head::EventStream {
            head_len,
            query,
            headers,
        } => match admit(state, query, &headers).await {
            Ok(Admission::Open(subscriber)) => Sniffed::Direct(Box::new(DirectRequest {
                head_len,
                subscriber,
                headers,
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

/// Serves the event stream. Returns the socket when the server ended the
/// stream (kick, lifetime, shutdown) so the caller can keep the connection
/// alive; `None` when the client went away.
pub(crate) async fn stream(
    mut socket: TcpStream,
    state: Arc<AppState>,
    request: Box<DirectRequest>,
) -> io::Result<Option<TcpStream>> {
    // The head was only peeked at: consume exactly it.
    let mut consumed = vec![0u8; request.head_len];
    socket.read_exact(&mut consumed).await?;
    drop(consumed);
    let (mut connection, head) = start(&state, request);
    socket.write_all(&head).await?;
    drop(head);

    let (mut reader, mut writer) = socket.split();
    // Only read to notice the client closing; SSE clients send nothing more.
    let mut probe = [0u8; 32];
    loop {
        // A fresh buffer per write, starting with room for the size line;
        // an idle stream holds only that room.
        let mut chunk = vec![0u8; SIZE_LINE_ROOM];
        tokio::select! {
            // Frames first: under load the read side is looked at only when
            // the queue is empty (a closed peer also fails the next write).
            biased;
            more = connection.next_chunk_into(&mut chunk) => if more {
                writer.write_all(frame_chunk(&mut chunk)).await?;
            } else {
                writer.write_all(b"0\r\n\r\n").await?;
                break;
            },
            read = reader.read(&mut probe) => match read {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => continue,
            },
        }
    }
    drop(connection);
    Ok(Some(socket))
}

/// Registers the stream and renders the response head. A plain function, so
/// nothing of the request is kept in the stream's task for its lifetime.
fn start(state: &Arc<AppState>, request: Box<DirectRequest>) -> (Connection, Vec<u8>) {
    let DirectRequest {
        subscriber,
        headers,
        ..
    } = *request;
    let connection = state.hub.connect(subscriber);
    (connection, response_head(state, &headers))
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
    let data_len = chunk.len() - SIZE_LINE_ROOM;
    let mut size = [0u8; SIZE_LINE_ROOM];
    let size_len = chunk_size_line(data_len, &mut size);
    let start = SIZE_LINE_ROOM - size_len;
    chunk[start..SIZE_LINE_ROOM].copy_from_slice(&size[..size_len]);
    chunk.extend_from_slice(b"\r\n");
    &chunk[start..]
}

/// Writes `len` in hex followed by CRLF into `out`; returns the length used.
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
    use super::chunk_size_line;

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
