//! A JWKS document, from a file or an `https://` URL, kept fresh.
//!
//! Invariants:
//! - The key set only ever moves from one good document to the next: a fetch
//!   that fails (the server is down, times out, answers garbage) keeps the
//!   last good keys and is logged.
//! - Every fetch is bounded by [`FETCH_TIMEOUT`]; one runs at a time.
//! - An unknown `kid` triggers at most one fetch per [`UNKNOWN_KID_INTERVAL`],
//!   so made-up kids cannot turn Herald into a load generator.
//! - Each change of the key set bumps the generation, which empties the
//!   verified-token cache.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::keys::{parse_jwks, Key};

/// Longest a fetch may take, connection included.
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Least time between two fetches asked for by unknown kids.
const UNKNOWN_KID_INTERVAL: Duration = Duration::from_secs(1);
/// Largest JWKS document accepted.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// Where the document is.
#[derive(Debug)]
enum Location {
    File(PathBuf),
    Url(http::Uri, Box<HttpsClient>),
}

type HttpsClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Empty<bytes::Bytes>,
>;

/// The key set and how to refresh it.
#[derive(Debug)]
pub(crate) struct Jwks {
    location: Location,
    /// The keys of the last good document.
    keys: Mutex<Arc<Vec<Key>>>,
    /// The last good document itself: an unchanged document changes nothing.
    document: Mutex<Vec<u8>>,
    /// Bumped on every change of `keys`.
    generation: AtomicU64,
    /// One fetch at a time; holds when the last one started.
    fetching: tokio::sync::Mutex<Option<Instant>>,
    /// Time between background refreshes.
    pub(crate) refresh_every: Duration,
}

impl Jwks {
    /// A source for `location` (a path, or an `https://` URL); `ca_file` adds
    /// a CA trusted for the URL, next to the system's roots.
    pub(crate) fn new(
        location: &str,
        ca_file: Option<&Path>,
        refresh_every: Duration,
    ) -> Result<Self, String> {
        let location = if location.starts_with("https://") {
            let url: http::Uri = location
                .parse()
                .map_err(|e| format!("`jwks`: {location:?} is not a URL ({e})"))?;
            Location::Url(url, Box::new(https_client(ca_file)?))
        } else if location.contains("://") {
            return Err(format!(
                "`jwks`: {location:?}: only https:// URLs (or a file path) are accepted; \
                 keys fetched over plain HTTP could be swapped on the way"
            ));
        } else {
            Location::File(PathBuf::from(location))
        };
        Ok(Self {
            location,
            keys: Mutex::new(Arc::new(Vec::new())),
            document: Mutex::new(Vec::new()),
            generation: AtomicU64::new(0),
            fetching: tokio::sync::Mutex::new(None),
            refresh_every,
        })
    }

    /// The current keys.
    pub(crate) fn keys(&self) -> Arc<Vec<Key>> {
        self.keys.lock().clone()
    }

    /// Changes with every change of the key set.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Fetches the document now; on success replaces the keys.
    pub(crate) async fn refresh(&self) -> Result<usize, String> {
        let mut started = self.fetching.lock().await;
        *started = Some(Instant::now());
        self.fetch_and_swap().await
    }

    /// Fetches again for a token whose kid is unknown, unless a fetch started
    /// less than [`UNKNOWN_KID_INTERVAL`] ago; true if the keys changed.
    pub(crate) async fn refresh_for_unknown_kid(&self) -> bool {
        let before = self.generation();
        let mut started = self.fetching.lock().await;
        if self.generation() != before {
            // Another request's fetch finished while this one waited.
            return true;
        }
        if started.is_some_and(|at| at.elapsed() < UNKNOWN_KID_INTERVAL) {
            return false;
        }
        *started = Some(Instant::now());
        let _ = self.fetch_and_swap().await;
        self.generation() != before
    }

    async fn fetch_and_swap(&self) -> Result<usize, String> {
        let document = match tokio::time::timeout(FETCH_TIMEOUT, self.fetch()).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {FETCH_TIMEOUT:?}")),
        };
        let result = document.and_then(|d| {
            if *self.document.lock() == d {
                return Ok(None);
            }
            let (keys, skipped) = parse_jwks(&d, &self.describe())?;
            for why in skipped {
                tracing::warn!(jwks = %self.describe(), "skipping a JWKS key: {why}");
            }
            if keys.is_empty() {
                return Err("the document holds no usable signing key".to_owned());
            }
            Ok(Some((keys, d)))
        });
        match result {
            Ok(None) => Ok(self.keys.lock().len()),
            Ok(Some((keys, document))) => {
                let count = keys.len();
                *self.keys.lock() = Arc::new(keys);
                *self.document.lock() = document;
                self.generation.fetch_add(1, Ordering::AcqRel);
                tracing::info!(jwks = %self.describe(), keys = count, "JWKS keys loaded");
                Ok(count)
            }
            Err(why) => {
                tracing::warn!(
                    jwks = %self.describe(),
                    "JWKS refresh failed, keeping the last good keys: {why}"
                );
                Err(why)
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<u8>, String> {
        match &self.location {
            Location::File(path) => {
                let bytes = tokio::fs::read(path)
                    .await
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                if bytes.len() > MAX_DOCUMENT_BYTES {
                    return Err(format!("over {MAX_DOCUMENT_BYTES} bytes"));
                }
                Ok(bytes)
            }
            Location::Url(url, client) => {
                use http_body_util::BodyExt;
                let response = client
                    .get(url.clone())
                    .await
                    .map_err(|e| format!("fetching: {e}"))?;
                if !response.status().is_success() {
                    return Err(format!("the server answered {}", response.status()));
                }
                let body = http_body_util::Limited::new(response.into_body(), MAX_DOCUMENT_BYTES);
                let bytes = body
                    .collect()
                    .await
                    .map_err(|e| {
                        format!("reading the answer (at most {MAX_DOCUMENT_BYTES} bytes): {e}")
                    })?
                    .to_bytes();
                Ok(bytes.to_vec())
            }
        }
    }

    /// Refreshes in the background every `refresh_every`, forever.
    pub(crate) async fn run_refresher(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.refresh_every).await;
            let _ = self.refresh().await;
        }
    }

    fn describe(&self) -> String {
        match &self.location {
            Location::File(path) => path.display().to_string(),
            Location::Url(url, _) => url.to_string(),
        }
    }
}

/// An HTTPS client trusting the system roots and `ca_file`.
fn https_client(ca_file: Option<&Path>) -> Result<HttpsClient, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A system certificate rustls cannot use is no reason to refuse the rest.
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| format!("`jwks_ca_file`: cannot read {}: {e}", path.display()))?;
        let mut added = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| format!("`jwks_ca_file` {}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("`jwks_ca_file` {}: {e}", path.display()))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!(
                "`jwks_ca_file`: {} holds no PEM certificate",
                path.display()
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    // Each fetch is bounded as a whole by FETCH_TIMEOUT (see fetch_and_swap).
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector),
    )
}
