//! I/O adapters of connections (`crate::accept`, `crate::direct`).
//!
//! - [`WriteDeadline`]: every served connection's socket is wrapped in it, so
//!   a peer that stops taking bytes cannot hold its stream (and what is
//!   queued for it) forever. Invariant: the deadline is armed only while a
//!   write or flush is pending — bytes are outstanding and the socket takes
//!   none — and disarmed by any progress; an idle stream never arms it and
//!   holds one empty `Option` for it.
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
//! Plain connections use neither of these two: their head is peeked, and
//! they move before anything is read.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// The write deadline shared by every connection of a server, and the count
/// of connections it closed.
#[derive(Debug)]
pub(crate) struct WriteTimeout {
    /// How long a socket may take no byte of a pending write.
    timeout: Duration,
    /// Connections closed because their socket took nothing for that long.
    closed: AtomicU64,
}

impl WriteTimeout {
    /// Most of the deadline taken off at random when it is armed, so that
    /// the streams stalled by one network blip do not all close (and
    /// reconnect) at the same instant.
    pub(crate) const JITTER: f64 = 0.2;

    pub(crate) fn new(timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            timeout,
            closed: AtomicU64::new(0),
        })
    }

    /// Connections closed by the deadline since start.
    pub(crate) fn closed(&self) -> u64 {
        self.closed.load(Ordering::Relaxed)
    }

    /// A deadline from now: the timeout minus up to [`Self::JITTER`] of it.
    fn arm(&self) -> Pin<Box<Sleep>> {
        let jitter = self.timeout.mul_f64(Self::JITTER * rand::random::<f64>());
        Box::pin(tokio::time::sleep(self.timeout.saturating_sub(jitter)))
    }
}

/// A socket whose pending writes fail with `TimedOut` once it has taken no
/// byte for the [`WriteTimeout`] (see the module doc).
///
/// The failure surfaces where the writer awaits its write, so each writer
/// (the direct path, hyper's HTTP/1.1 and HTTP/2, over TCP or TLS) ends its
/// connection as it does for any socket error; the client reconnects and
/// resumes with `Last-Event-ID`.
#[derive(Debug)]
pub(crate) struct WriteDeadline<S> {
    inner: S,
    policy: Arc<WriteTimeout>,
    /// `Some` only while a write or flush is pending: boxed, so an idle
    /// stream pays a pointer for it, not a timer.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteDeadline<S> {
    pub(crate) fn new(inner: S, policy: Arc<WriteTimeout>) -> Self {
        Self {
            inner,
            policy,
            stalled: None,
        }
    }

    /// The socket, for whoever serves the connection next.
    pub(crate) fn into_inner(self) -> S {
        self.inner
    }

    /// What to answer for a write or flush that returned `poll`: progress
    /// (or a failure) disarms the deadline; `Pending` arms it, and fails once
    /// it has passed.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let policy = &self.policy;
        let deadline = self.stalled.get_or_insert_with(|| policy.arm());
        if deadline.as_mut().poll(cx).is_ready() {
            self.stalled = None;
            self.policy.closed.fetch_add(1, Ordering::Relaxed);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer took no byte within the write timeout",
            )));
        }
        Poll::Pending
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch(cx, poll)
    }
}

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
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::Instant;

    use super::{Rewind, WriteDeadline, WriteTimeout};

    const TIMEOUT: Duration = Duration::from_secs(30);

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_takes_nothing_fails_the_write_within_the_timeout() {
        let (socket, _peer_never_reads) = tokio::io::duplex(1024);
        let policy = WriteTimeout::new(TIMEOUT);
        let mut socket = WriteDeadline::new(socket, policy.clone());
        let start = Instant::now();
        let err = socket
            .write_all(&[b'x'; 4096])
            .await
            .expect_err("the write times out");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        let waited = start.elapsed();
        let earliest = TIMEOUT.mul_f64(1.0 - WriteTimeout::JITTER);
        assert!(waited >= earliest && waited <= TIMEOUT, "{waited:?}");
        assert_eq!(policy.closed(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_peer_that_keeps_taking_bytes_is_not_cut_off() {
        let (socket, mut peer) = tokio::io::duplex(1024);
        let policy = WriteTimeout::new(TIMEOUT);
        let mut socket = WriteDeadline::new(socket, policy.clone());
        // The peer takes 1 KiB every 0.7 timeouts: the whole write lasts far
        // longer than the timeout, but no wait for a byte does.
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut buf = [0u8; 1024];
            while got < 16 * 1024 {
                tokio::time::sleep(TIMEOUT.mul_f64(0.7)).await;
                got += peer.read(&mut buf).await.expect("read");
            }
        });
        let start = Instant::now();
        socket
            .write_all(&[b'x'; 16 * 1024])
            .await
            .expect("every wait is under the timeout");
        assert!(start.elapsed() > TIMEOUT * 5);
        reader.await.expect("the reader ends");
        assert_eq!(policy.closed(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_socket_never_arms_the_deadline() {
        let (socket, mut peer) = tokio::io::duplex(1024);
        let policy = WriteTimeout::new(TIMEOUT);
        let mut socket = WriteDeadline::new(socket, policy.clone());
        socket.write_all(b"hello").await.expect("write");
        assert!(
            socket.stalled.is_none(),
            "a write that went through disarms"
        );
        tokio::time::sleep(TIMEOUT * 10).await;
        socket.write_all(b" again").await.expect("a later write");
        let mut got = [0u8; 11];
        peer.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"hello again");
        assert!(socket.stalled.is_none());
        assert_eq!(policy.closed(), 0);
    }

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
