//! I/O adapters of TLS connections (`crate::accept`).
//!
//! - [`Rewind`]: TLS bytes cannot be peeked at, so the accept loop reads a
//!   TLS connection's request head before it knows who serves it; whoever
//!   does (hyper) reads those bytes again first, through this. Invariant: the
//!   bytes come out exactly once, in order, before any byte of the stream
//!   under them, and their buffer is freed as soon as they are all read.
//! - [`MovableTcp`]: a socket moves between runtimes as a std socket (it must
//!   be registered with the reactor of the runtime that polls it), but a TLS
//!   stream owns its socket; this lets the socket under a TLS stream be
//!   re-registered where the stream is polled next.
//!
//! Plain connections use neither: their head is peeked, and they move
//! before anything is read.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A stream whose first bytes, already read from it, are read again first.
#[derive(Debug)]
pub(crate) struct Rewind<S> {
    prefix: Vec<u8>,
    read: usize,
    inner: S,
}

impl<S> Rewind<S> {
    /// `prefix` is what was read from `inner` so far.
    pub(crate) fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            read: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.read < this.prefix.len() {
            // The head buffer is as large as the longest head: it must not
            // live as long as the connection.
            hand_out(&mut this.prefix, &mut this.read, buf);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

/// Copies into `buf` what it can take of `pending[*taken..]`, and frees
/// `pending` once all of it is taken, so a buffer of bytes already read
/// (a replayed head, decrypted records) lives only while it holds some.
pub(crate) fn hand_out(pending: &mut Vec<u8>, taken: &mut usize, buf: &mut ReadBuf<'_>) {
    let rest = &pending[*taken..];
    let n = rest.len().min(buf.remaining());
    buf.put_slice(&rest[..n]);
    *taken += n;
    if *taken == pending.len() {
        *pending = Vec::new();
        *taken = 0;
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A TCP socket that can be re-registered with the current runtime's reactor.
#[derive(Debug)]
pub(crate) struct MovableTcp {
    /// `None` only inside [`MovableTcp::reregister`], or after it failed
    /// (the connection is then dropped).
    socket: Option<TcpStream>,
}

impl MovableTcp {
    pub(crate) fn new(socket: TcpStream) -> Self {
        Self {
            socket: Some(socket),
        }
    }

    /// Registers the socket with the reactor of the runtime this is called
    /// on, so that it is polled without a hop to another runtime's thread.
    pub(crate) fn reregister(&mut self) -> io::Result<()> {
        let socket = self.socket.take().ok_or_else(moved)?;
        self.socket = Some(TcpStream::from_std(socket.into_std()?)?);
        Ok(())
    }

    fn socket(&mut self) -> io::Result<&mut TcpStream> {
        self.socket.as_mut().ok_or_else(moved)
    }
}

fn moved() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the socket was lost moving between runtimes",
    )
}

impl AsyncRead for MovableTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().socket() {
            Ok(socket) => Pin::new(socket).poll_read(cx, buf),
            Err(err) => Poll::Ready(Err(err)),
        }
    }
}

impl AsyncWrite for MovableTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().socket() {
            Ok(socket) => Pin::new(socket).poll_write(cx, buf),
            Err(err) => Poll::Ready(Err(err)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().socket() {
            Ok(socket) => Pin::new(socket).poll_write_vectored(cx, bufs),
            Err(err) => Poll::Ready(Err(err)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().socket() {
            Ok(socket) => Pin::new(socket).poll_flush(cx),
            Err(err) => Poll::Ready(Err(err)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().socket() {
            Ok(socket) => Pin::new(socket).poll_shutdown(cx),
            Err(err) => Poll::Ready(Err(err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::Rewind;

    #[tokio::test]
    async fn the_prefix_is_read_once_then_the_stream() {
        let (client, mut server) = tokio::io::duplex(64);
        let mut rewind = Rewind::new(b"GET / HTTP/1.1\r\n".to_vec(), client);
        server.write_all(b"Host: x\r\n\r\n").await.expect("write");
        drop(server);
        // Small reads: the prefix may be read in pieces.
        let mut out = Vec::new();
        let mut piece = [0u8; 5];
        loop {
            let n = rewind.read(&mut piece).await.expect("read");
            if n == 0 {
                break;
            }
            out.extend_from_slice(&piece[..n]);
        }
        assert_eq!(out, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(rewind.prefix.capacity(), 0, "the prefix buffer is freed");
    }

    #[tokio::test]
    async fn writes_go_straight_through() {
        let (client, mut server) = tokio::io::duplex(64);
        let mut rewind = Rewind::new(b"unread".to_vec(), client);
        rewind.write_all(b"answer").await.expect("write");
        let mut got = [0u8; 6];
        server.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"answer");
    }
}
