//! The dispatcher's way to a plain direct stream's socket
//! (`herald_core::WriteThrough`): an event for one user is written to its
//! socket by the thread that dispatched it, while the stream's writer waits,
//! instead of waking that writer on a streams worker. Under load that wake-up
//! is what a unicast delivery waits for (a runnable thread on a busy core).
//!
//! Both sides hold the socket: the stream's writer through [`SharedTcp`]
//! (every `AsyncRead`/`AsyncWrite` call of the direct path), the dispatcher
//! through [`TcpWriteThrough`]. Invariants:
//! - only whole chunks are written through (`{size}\r\n{frame}\r\n`), so the
//!   stream's chunked framing stays intact whoever writes;
//! - a write-through either writes its whole chunk or nothing. Should the
//!   kernel take only part of one (a socket within a few bytes of full), the
//!   connection is shut down: the client's parser drops the torn event and
//!   it resumes after the last whole one with `Last-Event-ID`;
//! - TLS streams have none: their record layer is the writer's own.

use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use herald_core::WriteThrough;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Frames up to this size are written through; bigger ones go through the
/// stream's writer (they are not the latency-bound small events, and the
/// chunk is built on the stack).
const MAX_FRAME: usize = 2048;
/// Room for the chunk's size line and trailing CRLF.
const FRAMING: usize = 24;

/// A stream's socket, shared with its write-through.
#[derive(Debug, Clone)]
pub(crate) struct SharedTcp(pub(crate) Arc<TcpStream>);

impl AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            // `try_read` clears the readiness on WouldBlock, so the next
            // poll waits for the socket again.
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&*self.0).shutdown(Shutdown::Write))
    }
}

/// The dispatcher's end of a [`SharedTcp`].
#[derive(Debug)]
pub(crate) struct TcpWriteThrough(pub(crate) Arc<TcpStream>);

impl WriteThrough for TcpWriteThrough {
    fn try_write_frame(&self, frame: &[u8]) -> bool {
        if frame.len() > MAX_FRAME {
            return false;
        }
        let mut chunk = [0u8; MAX_FRAME + FRAMING];
        let len = crate::direct::encode_chunk(frame, &mut chunk);
        let Some(chunk) = chunk.get(..len) else {
            return false;
        };
        match self.0.try_write(chunk) {
            Ok(n) if n == chunk.len() => true,
            // Nothing written: full, or the peer is gone (the writer finds
            // out on its own write).
            Ok(0) | Err(_) => false,
            Ok(_) => {
                tracing::info!(
                    "a write-through was cut short; closing the stream so its client resumes"
                );
                let _ = socket2::SockRef::from(&*self.0).shutdown(Shutdown::Both);
                false
            }
        }
    }
}
