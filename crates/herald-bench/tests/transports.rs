//! The load generator's transports and tokens against a small SSE server in
//! this process: HTTP/1.1 over TLS (rustls, certificates from rcgen), HTTP/2
//! over TLS (ALPN h2) and h2c with prior knowledge, tokens in the
//! `Authorization` header or the query. The server records what it saw; the
//! tests check that the bench opened, sent and counted what it reports.
//!
//! Herald's own TLS lands later; until then this server stands in for it
//! (the plain and h2c runs against Herald are in
//! `crates/herald/tests/bench_smoke.rs`).
//!
//! The server answers `GET` with 200, `text/event-stream`, the preamble
//! `retry: 1000\n:ok\n` and then every published event; a request whose
//! token is in its refused set gets 401. `POST` takes the body as the data of
//! one event to every stream and answers 201.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use herald_bench::{BenchArgs, UsageError};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::crypto::aws_lc_rs;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// One stream the server opened (or refused).
#[derive(Debug, Clone)]
struct Seen {
    tls: bool,
    h2: bool,
    path: String,
    /// From `Authorization: Bearer`, or `access_token=` in the query.
    token: Option<String>,
    refused: bool,
}

#[derive(Debug, Default)]
struct State {
    connections: u64,
    tls_connections: u64,
    h2_connections: u64,
    streams: Vec<Seen>,
    publishes: u64,
    subscribers: Vec<mpsc::UnboundedSender<Bytes>>,
}

type Shared = Arc<Mutex<State>>;

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// How the server is set up.
#[derive(Clone, Default)]
struct Setup {
    tls: Option<TlsAcceptor>,
    refuse: HashSet<String>,
}

const PREAMBLE: &[u8] = b"retry: 1000\n:ok\n";

fn query_param(target: &str, name: &str) -> Option<String> {
    let query = target.split_once('?')?.1;
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// The token of a request, and whether the server refuses it.
fn token_of(setup: &Setup, target: &str, authorization: Option<&str>) -> (Option<String>, bool) {
    let token = authorization
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned)
        .or_else(|| query_param(target, "access_token"));
    let refused = token.as_ref().is_some_and(|t| setup.refuse.contains(t));
    (token, refused)
}

/// Sends an event to every stream.
fn publish(state: &Shared, data: &[u8]) {
    let mut state = lock(state);
    state.publishes += 1;
    let mut event = b"data: ".to_vec();
    event.extend_from_slice(data);
    event.extend_from_slice(b"\n\n");
    let event = Bytes::from(event);
    state
        .subscribers
        .retain(|tx| tx.send(event.clone()).is_ok());
}

fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// HTTP/1.1, keep-alive until a stream is opened (it then owns the connection).
async fn serve_h1<S>(io: S, tls: bool, setup: Setup, state: Shared)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (read, mut write) = tokio::io::split(io);
    let mut read = BufReader::new(read);
    loop {
        let mut line = String::new();
        if read.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_owned();
        let target = parts.next().unwrap_or_default().to_owned();
        let (mut content_length, mut authorization) = (0usize, None);
        loop {
            let mut header = String::new();
            if read.read_line(&mut header).await.unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = value.trim().parse().unwrap_or(0);
                }
                if name.eq_ignore_ascii_case("authorization") {
                    authorization = Some(value.trim().to_owned());
                }
            }
        }
        let mut body = vec![0; content_length];
        if read.read_exact(&mut body).await.is_err() {
            return;
        }
        if method != "GET" {
            publish(&state, &body);
            let answer = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok";
            if write.write_all(answer).await.is_err() {
                return;
            }
            continue;
        }
        let (token, refused) = token_of(&setup, &target, authorization.as_deref());
        lock(&state).streams.push(Seen {
            tls,
            h2: false,
            path: target.clone(),
            token,
            refused,
        });
        if refused {
            let answer = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n";
            if write.write_all(answer).await.is_err() {
                return;
            }
            continue;
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        lock(&state).subscribers.push(tx);
        let mut head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                         Transfer-Encoding: chunked\r\n\r\n"
            .to_vec();
        head.extend_from_slice(&chunk(PREAMBLE));
        if write.write_all(&head).await.is_err() {
            return;
        }
        while let Some(event) = rx.recv().await {
            if write.write_all(&chunk(&event)).await.is_err() {
                return;
            }
        }
        return;
    }
}

/// HTTP/2: every request is a stream (publishes go over HTTP/1.1).
async fn serve_h2<S>(io: S, tls: bool, setup: Setup, state: Shared)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Ok(mut conn) = h2::server::handshake(io).await else {
        return;
    };
    lock(&state).h2_connections += 1;
    // Bounded: ends when the client closes the connection.
    while let Some(Ok((request, mut respond))) = conn.accept().await {
        let target = request
            .uri()
            .path_and_query()
            .map_or_else(String::new, |p| p.to_string());
        let authorization = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let (token, refused) = token_of(&setup, &target, authorization);
        lock(&state).streams.push(Seen {
            tls,
            h2: true,
            path: target,
            token,
            refused,
        });
        let status = if refused { 401 } else { 200 };
        let response = http::Response::builder()
            .status(status)
            .header("content-type", "text/event-stream")
            .body(())
            .unwrap_or_default();
        let Ok(mut send) = respond.send_response(response, refused) else {
            continue;
        };
        if refused {
            continue;
        }
        let _ = send.send_data(Bytes::from_static(PREAMBLE), false);
        let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
        lock(&state).subscribers.push(tx);
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                if send.send_data(event, false).is_err() {
                    return;
                }
            }
        });
    }
}

async fn serve(tcp: TcpStream, setup: Setup, state: Shared) {
    lock(&state).connections += 1;
    match setup.tls.clone() {
        Some(acceptor) => {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            lock(&state).tls_connections += 1;
            if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                serve_h2(tls, true, setup, state).await;
            } else {
                serve_h1(tls, true, setup, state).await;
            }
        }
        None => {
            // h2c with prior knowledge starts with the preface "PRI * HTTP/2.0".
            let mut first = [0u8; 3];
            for _ in 0..100 {
                match tcp.peek(&mut first).await {
                    Ok(n) if n >= 3 => break,
                    Ok(0) | Err(_) => return,
                    Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
            if &first == b"PRI" {
                serve_h2(tcp, false, setup, state).await;
            } else {
                serve_h1(tcp, false, setup, state).await;
            }
        }
    }
}

/// A server running on its own runtime until dropped.
struct Server {
    addr: SocketAddr,
    state: Shared,
    _runtime: tokio::runtime::Runtime,
}

impl Server {
    fn start(setup: Setup) -> Self {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("binding the test server");
        let addr = listener.local_addr().expect("local address");
        let state = Shared::default();
        let accept_state = state.clone();
        runtime.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve(tcp, setup.clone(), accept_state.clone()));
            }
        });
        Self {
            addr,
            state,
            _runtime: runtime,
        }
    }

    fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.addr)
    }

    fn streams(&self) -> Vec<Seen> {
        lock(&self.state).streams.clone()
    }
}

/// A CA and a server certificate it signed for `localhost` and 127.0.0.1.
struct Certs {
    ca_pem: String,
    acceptor: TlsAcceptor,
}

fn certs() -> Certs {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    let cert = params.signed_by(&key, &issuer).expect("server certificate");
    let provider = Arc::new(aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![
                cert.der().clone(),
                CertificateDer::from(ca_cert.der().to_vec()),
            ],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("server config");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Certs {
        ca_pem: ca_cert.pem(),
        acceptor: TlsAcceptor::from(Arc::new(config)),
    }
}

fn tls_server(refuse: &[&str]) -> (Server, Certs) {
    let certs = certs();
    let server = Server::start(Setup {
        tls: Some(certs.acceptor.clone()),
        refuse: refuse.iter().map(|t| (*t).to_owned()).collect(),
    });
    (server, certs)
}

/// A file under the system's temporary directory, removed when dropped.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> Self {
        let path = std::env::temp_dir().join(format!("herald-bench-{}-{name}", std::process::id()));
        std::fs::write(&path, text).expect("writing a temporary file");
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temporary path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
}

/// Runs the bench with `args` plus `--json --timeout-secs 20`; its result
/// and what it wrote as its report.
fn run_bench(args: &[&str]) -> (anyhow::Result<()>, String) {
    let all = args
        .iter()
        .copied()
        .chain(["--json", "--timeout-secs", "20"]);
    let cli = Cli::try_parse_from(std::iter::once("bench").chain(all))
        .unwrap_or_else(|e| panic!("bench flags {args:?}: {e}"));
    let mut report = Vec::new();
    let result = herald_bench::run_to(cli.bench, &mut report);
    (result, String::from_utf8_lossy(&report).into_owned())
}

/// Runs the bench with `args`; its result and `--json` report.
fn bench(args: &[&str]) -> (anyhow::Result<()>, serde_json::Value) {
    let (result, stdout) = run_bench(args);
    let report = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("no JSON report ({e}); stdout: {stdout}\nresult: {result:?}"));
    (result, report)
}

fn count(report: &serde_json::Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no {field} in {report}"))
}

/// An https:// --url is TLS without a flag: every subscriber and every
/// publish goes over it, and the counts are exact.
#[test]
fn fanout_over_tls_delivers_everything() {
    let (server, _certs) = tls_server(&[]);
    let url = server.url("https");
    let (result, r) = bench(&[
        "fanout",
        "--url",
        &url,
        "--subscribe-url",
        "{url}/sub?i={i}",
        "--publish-url",
        "{url}/pub",
        "--publish-body",
        "{data}",
        "--publish-content-type",
        "text/plain",
        "--settle-ms",
        "200",
        "--quiet-ms",
        "2000",
        "--subscribers",
        "3",
        "--events",
        "20",
    ]);
    assert!(result.is_ok(), "{result:?} {r}");
    assert_eq!(r["tls"], true, "{r}");
    assert_eq!(count(&r, "connected"), 3, "{r}");
    assert_eq!(count(&r, "published"), 20, "{r}");
    assert_eq!(count(&r, "unique"), 60, "{r}");
    assert_eq!(count(&r, "missing"), 0, "{r}");
    assert_eq!(count(&r, "duplicates"), 0, "{r}");
    let state = lock(&server.state);
    assert_eq!(state.publishes, 20);
    assert_eq!(state.streams.len(), 3);
    assert!(state.streams.iter().all(|s| s.tls && !s.h2), "{state:?}");
    // Every connection, the publisher's included, was TLS.
    assert_eq!(state.tls_connections, state.connections, "{state:?}");
}

/// `--tls` makes an http:// URL TLS; `publish` too.
#[test]
fn tls_flag_and_publish_over_tls() {
    let (server, _certs) = tls_server(&[]);
    let url = server.url("http");
    let (result, r) = bench(&[
        "publish",
        "--tls",
        "--url",
        &url,
        "--publish-url",
        "{url}/pub",
        "--publish-body",
        "{data}",
        "--events",
        "50",
        "--concurrency",
        "2",
    ]);
    assert!(result.is_ok(), "{result:?} {r}");
    assert_eq!(count(&r, "acked_events"), 50, "{r}");
    let state = lock(&server.state);
    assert_eq!(state.publishes, 50);
    assert!(state.tls_connections >= 1, "{state:?}");
    assert_eq!(state.tls_connections, state.connections, "{state:?}");
}

/// `--tls-ca` verifies: the server's certificate, signed by that CA for
/// localhost, passes; against another CA every client fails the handshake,
/// and `connect` counts the failures under one TLS cause.
#[test]
fn tls_ca_verifies_the_server() {
    let (server, certs) = tls_server(&[]);
    let ca = TempFile::new("ca.pem", &certs.ca_pem);
    // The certificate names 127.0.0.1 too: checked against the address.
    let url = server.url("http");
    let (result, r) = bench(&[
        "conns",
        "--tls-ca",
        ca.path(),
        "--url",
        &url,
        "--subscribe-url",
        "{url}/sub",
        "--connections",
        "4",
        "--hold-secs",
        "0",
        "--settle-secs",
        "0",
    ]);
    assert!(result.is_ok(), "{result:?} {r}");
    assert_eq!(count(&r, "opened"), 4, "{r}");
    assert_eq!(r["tls"], true, "{r}");

    let other = certs_other_ca();
    let (result, r) = bench(&[
        "connect",
        "--tls-ca",
        other.path(),
        "--url",
        &url,
        "--subscribe-url",
        "{url}/sub",
        "--clients",
        "3",
    ]);
    assert!(
        result.as_ref().is_err_and(|e| !e.is::<UsageError>()),
        "{result:?} {r}"
    );
    let round = &r["rounds"][0];
    assert_eq!(count(round, "opened"), 0, "{r}");
    assert_eq!(count(round, "failed"), 3, "{r}");
    let failures = round["failures"].as_object().cloned().unwrap_or_default();
    assert_eq!(failures.len(), 1, "{r}");
    assert!(failures.keys().all(|k| k.starts_with("tls: ")), "{r}");
    assert_eq!(r["tls_verified"], true, "{r}");
}

/// A CA file of a CA that signed nothing the server has.
fn certs_other_ca() -> TempFile {
    TempFile::new("other-ca.pem", &certs().ca_pem)
}

/// `conns --http2`: the streams share the connections, over TLS (ALPN h2)
/// and over h2c, each with the token in its `Authorization` header.
#[test]
fn conns_http2_over_tls_and_h2c() {
    let (tls, _certs) = tls_server(&[]);
    let plain = Server::start(Setup::default());
    for (server, flags) in [(&tls, &["--tls"][..]), (&plain, &[][..])] {
        let url = server.url("http");
        let mut args = vec![
            "conns",
            "--http2",
            "--url",
            &url,
            "--subscribe-url",
            "{url}/sub?i={i}",
            "--streams",
            "12",
            "--connections",
            "3",
            "--token",
            "tok",
            "--hold-secs",
            "0",
            "--settle-secs",
            "0",
        ];
        args.extend_from_slice(flags);
        let (result, r) = bench(&args);
        assert!(result.is_ok(), "{result:?} {r}");
        assert_eq!(count(&r, "opened"), 12, "{r}");
        assert_eq!(count(&r, "streams"), 12, "{r}");
        assert_eq!(count(&r, "connections"), 3, "{r}");
        assert_eq!(count(&r, "still_open_after_hold"), 12, "{r}");
        assert_eq!(r["http2"], true, "{r}");
        let state = lock(&server.state);
        assert_eq!(state.h2_connections, 3, "{state:?}");
        assert_eq!(state.connections, 3, "{state:?}");
        assert_eq!(state.streams.len(), 12, "{state:?}");
        let over_tls = !flags.is_empty();
        for s in &state.streams {
            assert!(s.h2 && s.tls == over_tls, "{s:?}");
            assert_eq!(s.token.as_deref(), Some("tok"), "{s:?}");
        }
    }
}

/// `connect --http2`: the clients are streams of 3 h2c connections, made
/// anew in each round.
#[test]
fn connect_http2_connects_anew_each_round() {
    let server = Server::start(Setup::default());
    let url = server.url("http");
    let (result, r) = bench(&[
        "connect",
        "--http2",
        "--url",
        &url,
        "--subscribe-url",
        "{url}/sub?i={i}",
        "--clients",
        "12",
        "--connections",
        "3",
        "--rounds",
        "2",
        "--pause-ms",
        "50",
    ]);
    assert!(result.is_ok(), "{result:?} {r}");
    assert_eq!(count(&r, "http2_connections"), 3, "{r}");
    let rounds = r["rounds"].as_array().cloned().unwrap_or_default();
    assert_eq!(rounds.len(), 2, "{r}");
    for round in &rounds {
        assert_eq!(count(round, "opened"), 12, "{r}");
        assert_eq!(count(&round["ttfb_ms"], "samples"), 12, "{r}");
    }
    let state = lock(&server.state);
    assert_eq!(state.h2_connections, 6, "{state:?}");
    assert_eq!(state.connections, 6, "{state:?}");
    assert_eq!(state.streams.len(), 24, "{state:?}");
    assert!(state.streams.iter().all(|s| s.h2 && !s.tls), "{state:?}");
}

/// `connect --rounds 2` with a tokens file and the token in the query:
/// client i sends line i mod n in both rounds, the refused token fails with
/// its status in each round, and the failures are counted by cause.
#[test]
fn connect_storm_reconnects_with_each_clients_token() {
    let (server, _certs) = tls_server(&["bad"]);
    let lines: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
    let file = TempFile::new("tokens", &format!("{}\n\nbad\n", lines.join("\n")));
    let url = server.url("https");
    let (result, r) = bench(&[
        "connect",
        "--url",
        &url,
        "--subscribe-url",
        "{url}/sub?i={i}",
        "--tokens-file",
        file.path(),
        "--token-in",
        "query",
        "--clients",
        "22",
        "--rounds",
        "2",
        "--pause-ms",
        "50",
    ]);
    // Two clients a round were refused: the run fails, after its report.
    assert!(
        result.as_ref().is_err_and(|e| !e.is::<UsageError>()),
        "{result:?} {r}"
    );
    assert_eq!(count(&r, "tokens"), 11, "{r}");
    assert_eq!(r["token_in"], "query", "{r}");
    let rounds = r["rounds"].as_array().cloned().unwrap_or_default();
    assert_eq!(rounds.len(), 2, "{r}");
    for round in &rounds {
        assert_eq!(count(round, "opened"), 20, "{r}");
        assert_eq!(count(round, "failed"), 2, "{r}");
        assert_eq!(round["failures"]["status 401"], 2, "{r}");
        assert_eq!(count(&round["ttfb_ms"], "samples"), 20, "{r}");
        assert!(
            round["subscribes_per_sec"].as_f64().unwrap_or(0.0) > 0.0,
            "{r}"
        );
    }
    let seen = server.streams();
    assert_eq!(seen.len(), 44);
    for s in &seen {
        let i: usize = query_param(&s.path, "i")
            .and_then(|i| i.parse().ok())
            .unwrap_or_else(|| panic!("{s:?}"));
        let want = if i % 11 == 10 {
            "bad".to_owned()
        } else {
            format!("t{}", i % 11)
        };
        assert_eq!(s.token.as_deref(), Some(want.as_str()), "{s:?}");
        assert_eq!(s.refused, i % 11 == 10, "{s:?}");
    }
}

/// A token in the header, and `{token}` placed by the template (nothing
/// added then), over plain HTTP/1.1.
#[test]
fn tokens_in_the_header_and_in_the_template() {
    let server = Server::start(Setup::default());
    let url = server.url("http");
    let (result, r) = bench(&[
        "connect",
        "--url",
        &url,
        "--subscribe-url",
        "{url}/sub",
        "--token",
        "abc.def",
        "--clients",
        "3",
    ]);
    assert!(result.is_ok(), "{result:?} {r}");
    assert_eq!(r["token_in"], "header", "{r}");
    let (result, r) = bench(&[
        "connect",
        "--url",
        &url,
        "--subscribe-url",
        "{url}/sub?jwt={token}",
        "--token",
        "xyz",
        "--clients",
        "2",
    ]);
    assert!(result.is_ok(), "{result:?} {r}");
    assert_eq!(r["token_in"], "template", "{r}");
    let seen = server.streams();
    assert_eq!(seen.len(), 5);
    for s in &seen[..3] {
        assert_eq!(s.token.as_deref(), Some("abc.def"), "{s:?}");
        assert!(!s.tls && !s.h2, "{s:?}");
    }
    for s in &seen[3..] {
        assert_eq!(s.path, "/sub?jwt=xyz", "{s:?}");
        assert_eq!(s.token, None, "{s:?}");
    }
}

/// Bad flags of the new modes are usage errors naming the flag, with no
/// report.
#[test]
fn bad_transport_and_token_flags_are_usage_errors() {
    let empty = TempFile::new("empty", "\n\n");
    let not_pem = TempFile::new("not-pem", "hello\n");
    let cases: &[(&[&str], &str)] = &[
        (
            &["connect", "--tokens-file", "/nonexistent/tokens"],
            "--tokens-file",
        ),
        (&["connect", "--tokens-file", empty.path()], "--tokens-file"),
        (&["connect", "--token", "a b"], "--token"),
        (
            &["connect", "--subscribe-url", "{url}/e?t={token}"],
            "{token}",
        ),
        (&["connect", "--rounds", "0"], "--rounds"),
        (&["connect", "--clients", "0"], "--clients"),
        (
            &["connect", "--open-concurrency", "0"],
            "--open-concurrency",
        ),
        (&["conns", "--tls-ca", "/nonexistent/ca.pem"], "--tls-ca"),
        (&["conns", "--tls-ca", not_pem.path()], "--tls-ca"),
        (
            &["conns", "--streams", "5", "--connections", "6"],
            "--streams",
        ),
        (
            &["conns", "--http2", "--streams", "5", "--connections", "6"],
            "--connections",
        ),
        (&["conns", "--url", "ftp://127.0.0.1:9"], "--url"),
    ];
    for (args, flag) in cases {
        let mut all = args.to_vec();
        if !all.contains(&"--url") {
            all.extend(["--url", "http://127.0.0.1:9"]);
        }
        let (result, stdout) = run_bench(&all);
        let err = result
            .err()
            .map(|e| (e.is::<UsageError>(), format!("{e:#}")));
        let (usage, message) = err.unwrap_or_else(|| panic!("{args:?} accepted: {stdout}"));
        assert!(usage, "{args:?}: {message}");
        assert!(message.contains(flag), "{args:?}: {message}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
    }
}
