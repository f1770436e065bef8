//! TLS against the real binary: handshakes with certificates made here
//! (rcgen), ALPN choosing HTTP/2 or HTTP/1.1, event streams over both (the
//! HTTP/1.1 one is served by the direct path), ordinary routes over TLS, the
//! handshake timeout, clients that do not speak TLS, certificate reload under
//! 100 open streams, and start-up errors for bad TLS files (exit 64).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::crypto::aws_lc_rs;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

mod common;

use common::{serve_fails, Server, WAIT};

// ---------------------------------------------------------------------------
// Certificates

/// A self-signed certificate for `localhost` and 127.0.0.1, in PEM, and its DER.
struct Cert {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Cert {
    fn new(common_name: &str) -> Self {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("certificate parameters");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        let key = rcgen::KeyPair::generate().expect("a key pair");
        let cert = params.self_signed(&key).expect("a self-signed certificate");
        Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

/// A directory of its own for one test's files; removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "herald-tls-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `cert` as `cert.pem` and `key.pem`, each through a temporary
    /// file renamed over the old one (as a certificate manager does).
    fn install(&self, cert: &Cert) {
        for (name, text) in [("key.pem", &cert.key_pem), ("cert.pem", &cert.cert_pem)] {
            let tmp = self.path(&format!("{name}.tmp"));
            std::fs::write(&tmp, text).expect("writing a PEM file");
            std::fs::rename(&tmp, self.path(name)).expect("renaming a PEM file");
        }
    }

    fn tls_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.path("cert.pem").display().to_string(),
            "--tls-key".into(),
            self.path("key.pem").display().to_string(),
        ]
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------
// The server

// ---------------------------------------------------------------------------
// Clients

/// A client that trusts exactly `roots` and offers `alpn`.
fn client(roots: &[&Cert], alpn: &[&[u8]]) -> TlsConnector {
    client_of(rustls::DEFAULT_VERSIONS, roots, alpn)
}

/// [`client`], speaking only `versions`.
fn client_of(
    versions: &[&'static rustls::SupportedProtocolVersion],
    roots: &[&Cert],
    alpn: &[&[u8]],
) -> TlsConnector {
    let mut store = RootCertStore::empty();
    for cert in roots {
        store.add(cert.der.clone()).expect("a trust anchor");
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_protocol_versions(versions)
        .expect("TLS versions")
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

async fn connect(connector: &TlsConnector, addr: SocketAddr) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("TCP connect");
    let name = ServerName::try_from("localhost").expect("a server name");
    tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .expect("the handshake in time")
        .expect("a TLS handshake")
}

fn negotiated(stream: &TlsStream<TcpStream>) -> Option<&[u8]> {
    stream.get_ref().1.alpn_protocol()
}

fn peer_cert(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("a server certificate")
        .clone()
        .into_owned()
}

/// Reads from `stream` into `text` until `done(text)`, within [`WAIT`].
async fn read_until<S: AsyncReadExt + Unpin>(
    stream: &mut S,
    text: &mut String,
    what: &str,
    done: impl Fn(&str) -> bool,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut buf = [0u8; 4096];
    while !done(text) {
        let read = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}; got {text:?}"));
        match read {
            Ok(0) => panic!("the connection closed while waiting for {what}; got {text:?}"),
            Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(err) => panic!("read failed waiting for {what}: {err}; got {text:?}"),
        }
    }
}

/// One HTTP/1.1 request over a new TLS connection (`Connection: close`);
/// the whole response.
async fn request(
    connector: &TlsConnector,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> String {
    let mut tls = connect(connector, addr).await;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, tls.read_to_end(&mut response))
        .await
        .expect("a response in time")
        .expect("a response");
    String::from_utf8_lossy(&response).into_owned()
}

/// Publishes `data` to `topic` over TLS; the event's id.
async fn publish(connector: &TlsConnector, addr: SocketAddr, topic: &str, data: &str) -> String {
    let body = serde_json::json!({ "topics": [topic], "data": data }).to_string();
    let response = request(connector, addr, "POST", "/v1/publish", &body).await;
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    let json = &response[response.find("\r\n\r\n").expect("a body") + 4..];
    let value: serde_json::Value = serde_json::from_str(json.trim()).expect("a JSON body");
    value["id"].as_str().expect("an id").to_owned()
}

/// Opens `GET /v1/events?topic=…` over HTTP/1.1 on a TLS connection; returns
/// it once the stream has started (`:ok`), with what was read so far.
async fn open_stream(
    connector: &TlsConnector,
    addr: SocketAddr,
    topic: &str,
) -> (TlsStream<TcpStream>, String) {
    let mut tls = connect(connector, addr).await;
    let head = format!("GET /v1/events?topic={topic} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    tls.write_all(head.as_bytes()).await.expect("write");
    let mut text = String::new();
    read_until(&mut tls, &mut text, "the stream to open", |t| {
        t.contains(":ok\n")
    })
    .await;
    (tls, text)
}

fn tls_server() -> (TempDir, Cert, Server) {
    let dir = TempDir::new();
    let cert = Cert::new("herald-test-a");
    dir.install(&cert);
    let server = Server::start(&dir.tls_args());
    assert!(server.tls, "with TLS the listen line says https://");
    (dir, cert, server)
}

// ---------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn alpn_chooses_h2_when_offered_and_http11_otherwise() {
    let (_dir, cert, server) = tls_server();
    let both = connect(&client(&[&cert], &[b"h2", b"http/1.1"]), server.addr).await;
    assert_eq!(negotiated(&both), Some(b"h2".as_slice()));
    assert_eq!(
        peer_cert(&both),
        cert.der,
        "the configured certificate is served"
    );
    let h1 = connect(&client(&[&cert], &[b"http/1.1"]), server.addr).await;
    assert_eq!(negotiated(&h1), Some(b"http/1.1".as_slice()));
    // No ALPN at all: HTTP/1.1, as before ALPN existed.
    let none = client(&[&cert], &[]);
    let response = request(&none, server.addr, "GET", "/healthz", "").await;
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
}

#[tokio::test]
async fn http2_over_tls_serves_routes_and_event_streams() {
    let (_dir, cert, server) = tls_server();
    let connector = client(&[&cert], &[b"h2"]);
    let tls = connect(&connector, server.addr).await;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("an HTTP/2 handshake");
    tokio::spawn(connection);
    let get = |path: &str| {
        hyper::Request::get(format!("https://localhost{path}"))
            .body(Full::new(Bytes::new()))
            .expect("a request")
    };
    let health = sender.send_request(get("/healthz")).await.expect("healthz");
    assert_eq!(health.status(), 200);
    assert_eq!(health.version(), hyper::Version::HTTP_2);

    // Two event streams on the one connection, and a publish on it too.
    let mut bodies = Vec::new();
    for topic in ["h2a", "h2b"] {
        let response = sender
            .send_request(get(&format!("/v1/events?topic={topic}")))
            .await
            .expect("a stream");
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream; charset=utf-8"
        );
        bodies.push(response.into_body());
    }
    let mut ids = Vec::new();
    for topic in ["h2a", "h2b"] {
        let body = serde_json::json!({ "topics": [topic], "data": format!("to {topic}") });
        let publish = hyper::Request::post("https://localhost/v1/publish")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("a request");
        let mut sender = sender.clone();
        let response = sender.send_request(publish).await.expect("publish");
        assert_eq!(response.status(), 201);
        let json = response
            .into_body()
            .collect()
            .await
            .expect("a body")
            .to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&json).expect("JSON");
        ids.push(value["id"].as_str().expect("an id").to_owned());
    }
    for ((body, id), topic) in bodies.iter_mut().zip(&ids).zip(["h2a", "h2b"]) {
        let mut text = String::new();
        let want = format!("id: {id}\ndata: to {topic}\n\n");
        while !text.contains(&want) {
            let frame = tokio::time::timeout(WAIT, body.frame())
                .await
                .unwrap_or_else(|_| panic!("no event on {topic}; got {text:?}"))
                .expect("the stream is open")
                .expect("a frame");
            if let Ok(data) = frame.into_data() {
                text.push_str(&String::from_utf8_lossy(&data));
            }
        }
    }
}

#[tokio::test]
async fn an_http11_event_stream_over_tls_receives_events_and_keeps_the_connection() {
    let (_dir, cert, server) = tls_server();
    let connector = client(&[&cert], &[b"http/1.1"]);
    let (mut stream, head) = open_stream(&connector, server.addr, "news").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("content-type: text/event-stream; charset=utf-8\r\n"),
        "{head}"
    );
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");

    let mut text = head;
    for n in 0..3 {
        let id = publish(&connector, server.addr, "news", &format!("item {n}")).await;
        let want = format!("id: {id}\ndata: item {n}\n\n");
        read_until(&mut stream, &mut text, "the published event", |t| {
            t.contains(&want)
        })
        .await;
    }

    // A refused subscription and other routes are the router's JSON answers, over TLS.
    let refused = request(&connector, server.addr, "GET", "/v1/events", "").await;
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
    assert!(refused.contains("\"code\":\"missing_topic\""), "{refused}");
    let health = request(&connector, server.addr, "GET", "/healthz", "").await;
    assert!(health.starts_with("HTTP/1.1 200 OK"), "{health}");
    assert!(health.contains("\"status\":\"ok\""), "{health}");

    // A stream the server ends leaves the TLS connection usable (keep-alive).
    let (mut kicked, mut text) = {
        let mut tls = connect(&connector, server.addr).await;
        tls.write_all(b"GET /v1/events?user=ka HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .expect("write");
        let mut text = String::new();
        read_until(&mut tls, &mut text, "the stream to open", |t| {
            t.contains(":ok\n")
        })
        .await;
        (tls, text)
    };
    let kick = request(
        &connector,
        server.addr,
        "DELETE",
        "/v1/users/ka/connections",
        "",
    )
    .await;
    assert!(kick.contains("\"closed\":1"), "{kick}");
    read_until(&mut kicked, &mut text, "the terminating chunk", |t| {
        t.ends_with("\r\n0\r\n\r\n")
    })
    .await;
    kicked
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let before = text.len();
    read_until(
        &mut kicked,
        &mut text,
        "a second response on the connection",
        |t| t[before..].contains("\"status\":\"ok\""),
    )
    .await;
    assert!(
        text[before..].starts_with("HTTP/1.1 200 OK\r\n"),
        "{}",
        &text[before..]
    );
}

#[tokio::test]
async fn large_publishes_and_events_cross_whole_over_tls_1_2_and_1_3() {
    let (_dir, cert, server) = tls_server();
    // Larger than one TLS record (16 KiB) many times over, with every byte
    // value a JSON string holds, so a lost, doubled or reordered record shows.
    let data: String = (0..200_000u32)
        .map(|i| char::from(b' ' + (i % 94) as u8))
        .filter(|c| *c != '"' && *c != '\\')
        .collect();
    for (name, version) in [
        ("TLS 1.2", &rustls::version::TLS12),
        ("TLS 1.3", &rustls::version::TLS13),
    ] {
        let connector = client_of(&[version], &[&cert], &[b"http/1.1"]);
        let (mut stream, mut text) = open_stream(&connector, server.addr, "big").await;
        assert_eq!(
            stream.get_ref().1.protocol_version(),
            Some(version.version),
            "{name}"
        );
        let id = publish(&connector, server.addr, "big", &data).await;
        let want = format!("id: {id}\ndata: {data}\n\n");
        read_until(&mut stream, &mut text, "the large event", |t| {
            // The stream is chunked: compare without the chunk framing.
            dechunked(t).contains(&want)
        })
        .await;
    }
}

/// The body of a chunked response (head included before it, unchanged):
/// size lines and their CRLFs removed.
fn dechunked(text: &str) -> String {
    let Some(start) = text.find("\r\n\r\n") else {
        return String::new();
    };
    let mut body = &text[start + 4..];
    let mut out = String::new();
    while let Some(line_end) = body.find("\r\n") {
        let Ok(size) = usize::from_str_radix(&body[..line_end], 16) else {
            break;
        };
        let chunk_start = line_end + 2;
        if body.len() < chunk_start + size + 2 {
            break;
        }
        out.push_str(&body[chunk_start..chunk_start + size]);
        body = &body[chunk_start + size + 2..];
    }
    out
}

#[tokio::test]
async fn a_client_silent_after_connecting_is_closed_at_the_handshake_timeout() {
    let dir = TempDir::new();
    let cert = Cert::new("herald-test-a");
    dir.install(&cert);
    let mut args = dir.tls_args();
    // Far below the 10 s default, and below WAIT: only the option closes it in time.
    args.extend(["--tls-handshake-timeout-secs".into(), "1".into()]);
    let server = Server::start(&args);

    let mut silent = TcpStream::connect(server.addr).await.expect("connect");
    // Half a ClientHello record header, then nothing.
    let mut partial = TcpStream::connect(server.addr).await.expect("connect");
    partial.write_all(&[0x16, 0x03, 0x01]).await.expect("write");
    for (what, socket) in [("silent", &mut silent), ("partial", &mut partial)] {
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(8), async {
            loop {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the {what} client was not disconnected");
    }
    // A client that does complete its handshake is served.
    let response = request(&client(&[&cert], &[]), server.addr, "GET", "/healthz", "").await;
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
}

#[tokio::test]
async fn clients_that_do_not_speak_tls_harm_no_one() {
    let (_dir, cert, server) = tls_server();
    let connector = client(&[&cert], &[b"http/1.1"]);
    let (mut stream, mut text) = open_stream(&connector, server.addr, "calm").await;

    let garbage: [&[u8]; 3] = [
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        &[0x16, 0x03, 0x01, 0xff, 0xff, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    ];
    for bytes in garbage {
        let mut socket = TcpStream::connect(server.addr).await.expect("connect");
        socket.write_all(bytes).await.expect("write");
        let mut answer = Vec::new();
        // Closed (after an alert, perhaps): never an HTTP answer in plain text.
        let _ = tokio::time::timeout(WAIT, socket.read_to_end(&mut answer))
            .await
            .unwrap_or_else(|_| panic!("a non-TLS client ({bytes:?}) was left open"));
        assert!(
            !answer.starts_with(b"HTTP/"),
            "{:?}",
            String::from_utf8_lossy(&answer)
        );
    }

    // The stream opened before still receives events; new clients still connect.
    let id = publish(&connector, server.addr, "calm", "still here").await;
    let want = format!("id: {id}\ndata: still here\n\n");
    read_until(&mut stream, &mut text, "the event after the garbage", |t| {
        t.contains(&want)
    })
    .await;
    let response = request(&connector, server.addr, "GET", "/healthz", "").await;
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
}

#[tokio::test]
async fn a_replaced_certificate_is_served_to_new_handshakes_while_100_streams_stay_open() {
    let (dir, first, server) = tls_server();
    let second = Cert::new("herald-test-b");
    assert_ne!(first.der, second.der);
    let connector = client(&[&first, &second], &[b"http/1.1"]);

    let mut streams = Vec::new();
    for _ in 0..100 {
        let (stream, text) = open_stream(&connector, server.addr, "reload").await;
        assert_eq!(peer_cert(&stream), first.der);
        streams.push((stream, text));
    }

    // A certificate file that does not parse: the current certificate stays.
    std::fs::write(
        dir.path("cert.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
    )
    .expect("write");
    let deadline = Instant::now() + WAIT;
    while !server.log().contains("keeping the current certificate") {
        assert!(
            Instant::now() < deadline,
            "no warning about the bad file:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = connect(&connector, server.addr).await;
    assert_eq!(
        peer_cert(&during),
        first.der,
        "a bad reload keeps the old certificate"
    );

    // The new pair: new handshakes get it (within a few reload periods).
    dir.install(&second);
    let deadline = Instant::now() + WAIT;
    loop {
        let fresh = connect(&connector, server.addr).await;
        if peer_cert(&fresh) == second.der {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        server.log().contains("TLS certificate reloaded"),
        "{}",
        server.log()
    );

    // Every stream opened before the reload is still open and still delivered to.
    let id = publish(&connector, server.addr, "reload", "after the reload").await;
    let want = format!("id: {id}\ndata: after the reload\n\n");
    for (stream, text) in &mut streams {
        read_until(stream, text, "the event after the reload", |t| {
            t.contains(&want)
        })
        .await;
        assert_eq!(peer_cert(stream), first.der);
    }
}

#[test]
fn bad_tls_options_stop_start_up_with_exit_64_naming_the_option_and_file() {
    let dir = TempDir::new();
    let cert = Cert::new("herald-test-a");
    dir.install(&cert);
    let other = Cert::new("herald-test-other");
    std::fs::write(dir.path("other-key.pem"), &other.key_pem).expect("write");
    std::fs::write(dir.path("garbage.pem"), "hello\n").expect("write");
    let path = |name: &str| dir.path(name).display().to_string();
    let cases: Vec<(Vec<String>, &[&str])> = vec![
        (
            vec!["--tls-cert".into(), path("cert.pem")],
            &["`tls_cert`", "flag --tls-cert", "`tls_key`"],
        ),
        (
            vec!["--tls-key".into(), path("key.pem")],
            &["`tls_key`", "`tls_cert`"],
        ),
        (
            vec![
                "--tls-cert".into(),
                path("missing.pem"),
                "--tls-key".into(),
                path("key.pem"),
            ],
            &["`tls_cert`", "missing.pem", "cannot be read"],
        ),
        (
            vec![
                "--tls-cert".into(),
                path("garbage.pem"),
                "--tls-key".into(),
                path("key.pem"),
            ],
            &["`tls_cert`", "garbage.pem", "no PEM certificate"],
        ),
        (
            vec![
                "--tls-cert".into(),
                path("cert.pem"),
                "--tls-key".into(),
                path("garbage.pem"),
            ],
            &["`tls_key`", "garbage.pem", "not a PEM private key"],
        ),
        (
            vec![
                "--tls-cert".into(),
                path("cert.pem"),
                "--tls-key".into(),
                path("other-key.pem"),
            ],
            &[
                "`tls_key`",
                "other-key.pem",
                "does not belong to the certificate",
            ],
        ),
        (
            [
                dir.tls_args(),
                vec!["--tls-handshake-timeout-secs".into(), "0".into()],
            ]
            .concat(),
            &["`tls_handshake_timeout_secs`", "at least 1"],
        ),
    ];
    for (args, wanted) in cases {
        let (code, stderr) = serve_fails(&args);
        assert_eq!(code, 64, "{args:?}: {stderr}");
        for want in wanted {
            assert!(stderr.contains(want), "{args:?}: {want:?} not in {stderr}");
        }
    }
}
