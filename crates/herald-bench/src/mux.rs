//! Streams multiplexed over a few HTTP/2 connections (`conns --http2`):
//! stream `i` goes over connection `i mod C`. Over TLS the connection asks
//! for ALPN `h2`; over plain TCP it speaks h2c with prior knowledge (the
//! client preface first, no upgrade).

use bytes::Bytes;
use h2::client::SendRequest;
use http::header::{ACCEPT, AUTHORIZATION, CACHE_CONTROL};
use tokio::sync::Mutex;

use crate::client::{connect, OpenError, SseConn, StreamTarget};
use crate::tls::Alpn;

/// The connections of one run, each made by the first stream that needs it.
#[derive(Debug)]
pub(crate) struct Mux {
    /// `None` until connected, and again once the connection failed (the
    /// next stream on it connects anew).
    slots: Vec<Mutex<Option<SendRequest<Bytes>>>>,
    /// Bounds the tasks that drive the connections.
    hard_deadline: tokio::time::Instant,
}

impl Mux {
    pub(crate) fn new(connections: usize, hard_deadline: tokio::time::Instant) -> Self {
        Self {
            slots: (0..connections.max(1)).map(|_| Mutex::new(None)).collect(),
            hard_deadline,
        }
    }

    /// Opens stream `idx`: checks the response head (200) and, unless
    /// `head_only`, waits for the first body bytes.
    pub(crate) async fn open(
        &self,
        target: &StreamTarget,
        idx: usize,
        head_only: bool,
    ) -> Result<(SseConn, Vec<u8>), OpenError> {
        let slot = idx % self.slots.len();
        let send = self.sender(slot, target).await?;
        // Waits while the connection has as many streams as the server allows.
        let mut send = match send.ready().await {
            Ok(send) => send,
            Err(err) => {
                self.forget(slot).await;
                return Err(err.into());
            }
        };
        let mut request = http::Request::get(target.absolute_uri())
            .header(ACCEPT, "text/event-stream")
            .header(CACHE_CONTROL, "no-cache");
        if let Some(token) = &target.bearer {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(())
            .map_err(|e| OpenError::Request(e.to_string()))?;
        let (response, _) = match send.send_request(request, true) {
            Ok(sent) => sent,
            Err(err) => {
                self.forget(slot).await;
                return Err(err.into());
            }
        };
        let response = response.await?;
        let status = response.status();
        if status != http::StatusCode::OK {
            return Err(OpenError::Status {
                status: status.as_u16(),
                line: format!("HTTP/2 {status}"),
            });
        }
        SseConn::from_h2(response.into_body(), head_only).await
    }

    /// The connection of `slot`, connecting it first if need be. The lock
    /// makes the streams of a slot wait for one connection instead of each
    /// making its own.
    async fn sender(
        &self,
        slot: usize,
        target: &StreamTarget,
    ) -> Result<SendRequest<Bytes>, OpenError> {
        let Some(cell) = self.slots.get(slot) else {
            return Err(OpenError::Request(format!("no connection {slot}")));
        };
        let mut cell = cell.lock().await;
        if let Some(send) = cell.as_ref() {
            return Ok(send.clone());
        }
        let io = connect(target, slot, Alpn::H2).await?;
        if target.tls.is_some() && io.alpn() != Some(b"h2") {
            let chosen = io.alpn().map(|p| String::from_utf8_lossy(p).into_owned());
            return Err(OpenError::NotH2(chosen.unwrap_or_else(|| "none".into())));
        }
        let (send, connection) = h2::client::handshake(io).await?;
        let hard_deadline = self.hard_deadline;
        tokio::spawn(async move {
            // Ends when the server closes, or once every stream and sender
            // is dropped; the run's hard deadline bounds it regardless.
            let _ = tokio::time::timeout_at(hard_deadline, connection).await;
        });
        *cell = Some(send.clone());
        Ok(send)
    }

    async fn forget(&self, slot: usize) {
        if let Some(cell) = self.slots.get(slot) {
            *cell.lock().await = None;
        }
    }
}
