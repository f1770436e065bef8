//! A server-side TLS stream whose buffers exist only while they hold bytes,
//! on rustls's unbuffered API.
//!
//! Why: rustls's buffered connection (what tokio-rustls wraps) keeps a 4 KiB
//! receive buffer for the life of every connection once it has read from it,
//! and an idle event stream is almost nothing else: measured at 10,000 idle
//! HTTP/1.1 event streams, that buffer was 4 of the 10.4 KiB each cost. Here
//! the caller (this type) owns the buffers, and frees each one as it empties.
//!
//! Invariants:
//! - `incoming` holds TLS bytes read from the socket and not yet processed;
//!   it is freed whenever it empties, so a connection with nothing in flight
//!   holds none. Socket reads go through a buffer on the stack, and only the
//!   bytes read are copied in. It never grows past [`MAX_INCOMING`] (one
//!   largest handshake message and one record): a peer cannot make it larger.
//! - `plaintext` holds decrypted bytes the caller has not read yet; freed
//!   when drained.
//! - `outgoing` holds TLS bytes not yet on the socket. `poll_write` takes new
//!   data only once the previous write is all on the socket, so it holds at
//!   most one write (at most [`MAX_WRITE`] bytes of plaintext, encrypted);
//!   freed once sent. Whatever rustls owes the peer (handshake flights,
//!   session tickets, alerts, key-update answers) is sent on the way of the
//!   next read, write or flush.
//! - Bytes reach the caller in order, exactly once; `poll_read` is
//!   cancel-safe (all its state is here), as `direct::stream`'s `select!`
//!   needs.
//! - A close from the peer (close_notify, or EOF without it) is end of
//!   stream for reads; `poll_shutdown` sends close_notify once.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from the socket at a time (on the stack).
const READ_CHUNK: usize = 8 * 1024;
/// Most unprocessed TLS bytes held: rustls's largest handshake message
/// (64 KiB) and one largest record.
const MAX_INCOMING: usize = 64 * 1024 + 16 * 1024 + 512;
/// Most plaintext one `poll_write` takes (it says how much it took).
const MAX_WRITE: usize = 64 * 1024;

/// A TLS server connection over `IO`, handshake done (see [`accept`]).
pub(crate) struct TlsStream<IO> {
    io: IO,
    conn: UnbufferedServerConnection,
    incoming: Vec<u8>,
    outgoing: Vec<u8>,
    /// How much of `outgoing` is on the socket.
    sent: usize,
    plaintext: Vec<u8>,
    /// How much of `plaintext` the caller has read.
    delivered: usize,
    /// The peer will send nothing more.
    read_closed: bool,
    /// close_notify is queued or sent.
    write_closed: bool,
}

impl<IO> std::fmt::Debug for TlsStream<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("incoming", &self.incoming.len())
            .field("outgoing", &(self.outgoing.len() - self.sent))
            .field("plaintext", &(self.plaintext.len() - self.delivered))
            .finish_non_exhaustive()
    }
}

/// What the caller wants done once rustls may send application data.
#[derive(Clone, Copy)]
enum Ask<'a> {
    Nothing,
    Encrypt(&'a [u8]),
    CloseNotify,
}

/// Where processing the received records stopped.
enum Next {
    /// Application data may be sent; what was asked is done (for
    /// [`Ask::Encrypt`], this many bytes were taken).
    Ready(usize),
    /// The handshake waits for the peer.
    NeedInput,
    /// Both sides have closed.
    Closed,
}

/// Runs the server side of a handshake on `io`. The caller bounds the time.
pub(crate) async fn accept<IO>(io: IO, config: Arc<ServerConfig>) -> io::Result<TlsStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
    let mut tls = TlsStream {
        io,
        conn,
        incoming: Vec::new(),
        outgoing: Vec::new(),
        sent: 0,
        plaintext: Vec::new(),
        delivered: 0,
        read_closed: false,
        write_closed: false,
    };
    poll_fn(|cx| tls.poll_handshake(cx)).await?;
    Ok(tls)
}

impl<IO> TlsStream<IO> {
    /// The protocol the client and Herald agreed on by ALPN, if any.
    pub(crate) fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// The socket (to re-register it with another runtime).
    pub(crate) fn io_mut(&mut self) -> &mut IO {
        &mut self.io
    }

    /// Processes the received records until application data may be sent
    /// (then does `ask`), the handshake needs more input, or the connection
    /// is closed. Decrypted data goes to `plaintext`, records rustls wants
    /// sent to `outgoing`.
    fn process(&mut self, ask: Ask<'_>) -> io::Result<Next> {
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut self.incoming);
            let next = match state.map_err(tls_error)? {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record.map_err(tls_error)?;
                        discard += record.discard;
                        self.plaintext.extend_from_slice(record.payload);
                    }
                    None
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    append(&mut self.outgoing, 512, |out| match encode.encode(out) {
                        Ok(n) => Ok(n),
                        Err(EncodeError::InsufficientSize(InsufficientSizeError {
                            required_size,
                        })) => Err(Some(required_size)),
                        Err(EncodeError::AlreadyEncoded) => Err(None),
                    })?;
                    None
                }
                // What was encoded is in `outgoing`, sent by `poll_send`.
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    None
                }
                ConnectionState::PeerClosed => {
                    self.read_closed = true;
                    None
                }
                ConnectionState::BlockedHandshake => Some(Next::NeedInput),
                ConnectionState::Closed => Some(Next::Closed),
                ConnectionState::WriteTraffic(mut traffic) => {
                    let taken = match ask {
                        Ask::Nothing => 0,
                        Ask::Encrypt(data) => {
                            let data = &data[..data.len().min(MAX_WRITE)];
                            append(&mut self.outgoing, data.len() + 64, |out| {
                                encrypted(traffic.encrypt(data, out))
                            })?;
                            data.len()
                        }
                        Ask::CloseNotify => {
                            append(&mut self.outgoing, 64, |out| {
                                encrypted(traffic.queue_close_notify(out))
                            })?;
                            0
                        }
                    };
                    Some(Next::Ready(taken))
                }
                // Early data is not enabled; nothing else exists today.
                _ => return Err(io::Error::other("unexpected TLS connection state")),
            };
            self.discard(discard);
            if let Some(next) = next {
                return Ok(next);
            }
        }
    }

    /// Drops `n` processed bytes from the front of `incoming`.
    fn discard(&mut self, n: usize) {
        if n >= self.incoming.len() {
            // Nothing in flight: hold no buffer.
            self.incoming = Vec::new();
        } else if n > 0 {
            self.incoming.drain(..n);
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> TlsStream<IO> {
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let next = match self.process(Ask::Nothing) {
                Ok(next) => next,
                Err(err) => {
                    self.send_alert(cx);
                    return Poll::Ready(Err(err));
                }
            };
            // A flight must be on the wire before the peer can answer it.
            ready!(self.poll_send(cx))?;
            if !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if matches!(next, Next::Closed) {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            if ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// After a failed handshake rustls has queued an alert saying why: send
    /// it if the socket takes it now (the connection is dropped either way).
    fn send_alert(&mut self, cx: &mut Context<'_>) {
        let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut []);
        if let Ok(ConnectionState::EncodeTlsData(mut encode)) = state {
            let _ = append(&mut self.outgoing, 64, |out| match encode.encode(out) {
                Ok(n) => Ok(n),
                Err(EncodeError::InsufficientSize(e)) => Err(Some(e.required_size)),
                Err(EncodeError::AlreadyEncoded) => Err(None),
            });
            let _ = self.poll_send(cx);
        }
    }

    /// Writes `outgoing` to the socket; frees it once all of it is there.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.outgoing[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        if self.outgoing.capacity() > 0 {
            self.outgoing = Vec::new();
            self.sent = 0;
        }
        Poll::Ready(Ok(()))
    }

    /// Reads what the socket has into `incoming`; `Ok(0)` at EOF.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut chunk);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
        let read = buf.filled();
        if self.incoming.len() + read.len() > MAX_INCOMING {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS: more unprocessed data than any record or handshake message holds",
            )));
        }
        self.incoming.extend_from_slice(read);
        Poll::Ready(Ok(read.len()))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.delivered < this.plaintext.len() {
                crate::io::hand_out(&mut this.plaintext, &mut this.delivered, buf);
                return Poll::Ready(Ok(()));
            }
            if this.read_closed {
                return Poll::Ready(Ok(()));
            }
            if matches!(this.process(Ask::Nothing)?, Next::Closed) {
                this.read_closed = true;
            }
            if !this.plaintext.is_empty() || this.read_closed {
                continue;
            }
            // What rustls owes the peer goes out now; a full socket does not
            // stop the read (the next write or flush sends it).
            if let Poll::Ready(Err(err)) = this.poll_send(cx) {
                return Poll::Ready(Err(err));
            }
            if ready!(this.poll_fill(cx))? == 0 {
                // EOF without close_notify: the end of the stream all the same
                // (HTTP frames its own messages; a truncated one is hyper's
                // error to find).
                this.read_closed = true;
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // One write's worth held at a time: the previous one first.
        ready!(this.poll_send(cx))?;
        if this.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        loop {
            match this.process(Ask::Encrypt(data))? {
                Next::Ready(taken) => {
                    // Pending is fine: the bytes are ours now, and the
                    // caller's flush (or next write) waits for the socket.
                    if let Poll::Ready(Err(err)) = this.poll_send(cx) {
                        return Poll::Ready(Err(err));
                    }
                    return Poll::Ready(Ok(taken));
                }
                Next::NeedInput => {
                    if ready!(this.poll_fill(cx))? == 0 {
                        return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                    }
                }
                Next::Closed => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_closed {
            ready!(this.poll_send(cx))?;
            // Best effort: a connection that failed has nothing to close cleanly.
            let _ = this.process(Ask::CloseNotify);
            this.write_closed = true;
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// Appends what `write` puts into a slice of `out`'s end: first `room`
/// bytes, then as many as it says it needs (`Err(Some(n))`); `Err(None)` is
/// a failure.
fn append(
    out: &mut Vec<u8>,
    room: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>,
) -> io::Result<()> {
    let start = out.len();
    let mut room = room;
    loop {
        out.resize(start + room, 0);
        match write(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(Some(needed)) if needed > room => room = needed,
            Err(_) => {
                out.truncate(start);
                return Err(io::Error::other("TLS: a record could not be written"));
            }
        }
    }
}

/// `encrypt`'s and `queue_close_notify`'s answer, as [`append`] reads it.
fn encrypted(result: Result<usize, EncryptError>) -> Result<usize, Option<usize>> {
    match result {
        Ok(n) => Ok(n),
        Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
            Err(Some(required_size))
        }
        Err(_) => Err(None),
    }
}

fn tls_error(err: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::crypto::aws_lc_rs;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use rustls::{ClientConfig, RootCertStore, ServerConfig};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::{accept, TlsStream};

    /// A server config and a client that trusts its certificate.
    fn pair() -> (Arc<ServerConfig>, tokio_rustls::TlsConnector) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("a certificate");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
        let provider = Arc::new(aws_lc_rs::default_provider());
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .expect("a server config");
        let mut roots = RootCertStore::empty();
        roots.add(cert.cert.der().clone()).expect("a root");
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        (
            Arc::new(server),
            tokio_rustls::TlsConnector::from(Arc::new(client)),
        )
    }

    fn assert_holds_no_buffer<IO>(tls: &TlsStream<IO>, when: &str) {
        assert_eq!(tls.incoming.capacity(), 0, "incoming {when}");
        assert_eq!(tls.outgoing.capacity(), 0, "outgoing {when}");
        assert_eq!(tls.plaintext.capacity(), 0, "plaintext {when}");
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_and_an_idle_stream_holds_no_buffer() {
        let (server_config, connector) = pair();
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let name = ServerName::try_from("localhost").expect("a name");
        let (server, client) = tokio::join!(
            accept(server_io, server_config),
            connector.connect(name, client_io)
        );
        let mut server = server.expect("the server handshake");
        let mut client = client.expect("the client handshake");
        assert_holds_no_buffer(&server, "after the handshake");

        // More than one record each way.
        let request: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        // (tokio-rustls sends what it buffered only when flushed.)
        let (wrote, read) = tokio::join!(
            async {
                client.write_all(&request).await?;
                client.flush().await
            },
            async {
                let mut got = vec![0u8; request.len()];
                server.read_exact(&mut got).await.map(|_| got)
            }
        );
        wrote.expect("client write");
        assert_eq!(read.expect("server read"), request);
        assert_holds_no_buffer(&server, "after reading everything");

        let answer = b"HTTP/1.1 200 OK\r\n\r\n".repeat(3000);
        let (wrote, read) = tokio::join!(
            async {
                server.write_all(&answer).await?;
                server.flush().await
            },
            async {
                let mut got = vec![0u8; answer.len()];
                client.read_exact(&mut got).await.map(|_| got)
            }
        );
        wrote.expect("server write");
        assert_eq!(read.expect("client read"), answer);
        assert_holds_no_buffer(&server, "after writing everything");

        // A close from the client is the end of the stream, and a clean
        // shutdown from the server reaches the client.
        client.shutdown().await.expect("client close_notify");
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.expect("server EOF");
        assert!(rest.is_empty());
        server.shutdown().await.expect("server close_notify");
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.expect("client EOF");
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn a_key_update_from_the_client_is_answered_and_traffic_goes_on() {
        let (server_config, connector) = pair();
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let name = ServerName::try_from("localhost").expect("a name");
        let (server, client) = tokio::join!(
            accept(server_io, server_config),
            connector.connect(name, client_io)
        );
        let mut server = server.expect("the server handshake");
        let mut client = client.expect("the client handshake");
        for round in 0..3u8 {
            // A TLS 1.3 KeyUpdate asking the server to update its keys too:
            // rustls answers it through this stream's outgoing records.
            client
                .get_mut()
                .1
                .refresh_traffic_keys()
                .expect("a key update");
            client
                .write_all(&[round; 1000])
                .await
                .expect("client write");
            client.flush().await.expect("client flush");
            let mut got = [0u8; 1000];
            server.read_exact(&mut got).await.expect("server read");
            assert_eq!(got, [round; 1000]);
            server
                .write_all(&[round + 100; 500])
                .await
                .expect("server write");
            server.flush().await.expect("server flush");
            let mut got = [0u8; 500];
            client.read_exact(&mut got).await.expect("client read");
            assert_eq!(got, [round + 100; 500]);
        }
        assert_holds_no_buffer(&server, "after the key updates");
    }

    #[tokio::test]
    async fn bytes_that_are_not_tls_fail_the_handshake() {
        let (server_config, _) = pair();
        let (mut client_io, server_io) = tokio::io::duplex(4096);
        client_io
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let result = accept(server_io, server_config).await;
        assert!(result.is_err(), "plain HTTP is not a TLS handshake");
        // The alert rustls owed the client was sent before the close.
        let mut alert = [0u8; 1];
        client_io.read_exact(&mut alert).await.expect("an alert");
        assert_eq!(alert[0], 0x15, "a TLS alert record");
    }
}
