//! TLS for the listening port: the certificate files, the rustls server
//! configuration (aws-lc-rs, TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`), and
//! reloading the certificate when its files change.
//!
//! What a connection does after its handshake is `crate::accept`'s business;
//! this module only says which certificate a new handshake gets.
//!
//! Invariants:
//! - A handshake always gets a complete, consistent certificate: the chain
//!   and the key are loaded, parsed and checked against each other (the key's
//!   public half is the certificate's) before they replace the current pair,
//!   in one swap of an `Arc` ([`Resolver`]).
//! - A reload that fails (a file missing, half written, bad PEM, a key that
//!   does not match) keeps the current certificate and logs a warning once
//!   per change of the files; the next change is tried again.
//! - Reloading touches only new handshakes: an open connection keeps the
//!   session keys it negotiated and never looks at the resolver again.
//! - The files are checked every [`RELOAD_PERIOD`] by their modification
//!   time, size and inode (so a rename over the file, as `cp` to a temporary
//!   name and `mv`, or a Kubernetes secret's symlink swap, is seen too); the
//!   checks and reads run on the blocking pool, never on an async worker.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

/// How often the certificate files are checked for changes.
pub(crate) const RELOAD_PERIOD: Duration = Duration::from_secs(2);

/// ALPN protocols offered, in the server's order of preference: HTTP/2 lets a
/// browser carry many event streams on one connection (HTTP/1.1 allows six
/// per origin).
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The certificate chain and private key files of the listening port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain: the server's certificate first, then intermediates.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the first certificate.
    pub key: PathBuf,
}

/// Which of the two files a problem is with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    /// [`TlsFiles::cert`].
    Cert,
    /// [`TlsFiles::key`].
    Key,
}

/// Why the certificate files cannot be used. The message names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("{}: cannot be read: {source}", path.display())]
    Read {
        /// Which file.
        file: TlsFile,
        /// Its path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The certificate file is not PEM, or holds no certificate.
    #[error("{}: {why}", path.display())]
    Certificate {
        /// Its path.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The key file is not PEM, holds no key, or a key rustls cannot use.
    #[error("{}: {why}", path.display())]
    Key {
        /// Its path.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The key is not the one of the certificate.
    #[error(
        "{}: this private key does not belong to the certificate in {} (its public key differs)",
        key.display(),
        cert.display()
    )]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
}

impl TlsError {
    /// The file the problem is with (a mismatch is blamed on the key).
    pub fn file(&self) -> TlsFile {
        match self {
            Self::Read { file, .. } => *file,
            Self::Certificate { .. } => TlsFile::Cert,
            Self::Key { .. } | Self::Mismatch { .. } => TlsFile::Key,
        }
    }
}

/// Loads and checks the files once, as start-up does, so that a bad file is
/// reported before any port is bound.
pub fn check_tls(files: &TlsFiles) -> Result<(), TlsError> {
    load(files, &provider()).map(drop)
}

/// The crypto provider of every handshake.
fn provider() -> CryptoProvider {
    aws_lc_rs::default_provider()
}

/// Reads and parses the files into the pair a handshake serves.
fn load(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let read = |file: TlsFile, path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            file,
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read(TlsFile::Cert, &files.cert)?;
    let key_pem = read(TlsFile::Key, &files.key)?;
    let bad_cert = |why: String| TlsError::Certificate {
        path: files.cert.clone(),
        why,
    };
    let bad_key = |why: String| TlsError::Key {
        path: files.key.clone(),
        why,
    };
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_cert(format!("not a PEM certificate chain ({e})")))?;
    if chain.is_empty() {
        return Err(bad_cert(
            "holds no PEM certificate (a `-----BEGIN CERTIFICATE-----` block)".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        bad_key(format!(
            "not a PEM private key (a PKCS#8, PKCS#1 or SEC1 `-----BEGIN ... PRIVATE KEY-----` block): {e}"
        ))
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::Mismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
        },
        // The key parsed as PEM but aws-lc cannot sign with it (an
        // unsupported curve or algorithm); or the certificate is not X.509.
        rustls::Error::General(why) => bad_key(format!("unusable private key: {why}")),
        other => bad_cert(format!("unusable certificate: {other}")),
    })
}

/// The certificate of new handshakes: one `Arc`, swapped whole on reload.
struct Resolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver").finish_non_exhaustive()
    }
}

impl Resolver {
    fn set(&self, key: CertifiedKey) {
        // A poisoned lock only means a panic elsewhere while it was held; the
        // `Arc` inside is always whole.
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

/// What a file looked like at one check: a change of any of these means it
/// was rewritten or replaced. `None`: it could not be looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl Stamp {
    fn of(path: &Path) -> Option<Self> {
        // `metadata` follows symlinks: a swapped link target is a change.
        let meta = std::fs::metadata(path).ok()?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&meta);
        #[cfg(not(unix))]
        let inode = 0;
        Some(Self {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode,
        })
    }
}

/// Both files' stamps.
type Stamps = (Option<Stamp>, Option<Stamp>);

fn stamps(files: &TlsFiles) -> Stamps {
    (Stamp::of(&files.cert), Stamp::of(&files.key))
}

/// The TLS side of the listening port: the configuration of new handshakes
/// and what reloads its certificate.
pub(crate) struct Tls {
    config: Arc<ServerConfig>,
    resolver: Arc<Resolver>,
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads the files and builds the server configuration.
    pub(crate) fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let provider = Arc::new(provider());
        let key = load(files, &provider)?;
        let resolver = Arc::new(Resolver {
            current: RwLock::new(Arc::new(key)),
        });
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            // The default provider supports the default versions; should it
            // ever not, that is a certificate-independent setup failure.
            .map_err(|e| TlsError::Certificate {
                path: files.cert.clone(),
                why: format!("no TLS version can be offered: {e}"),
            })?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(Self {
            config: Arc::new(config),
            resolver,
            files: files.clone(),
            provider,
        })
    }

    /// The configuration of new handshakes (it shares the resolver, so it
    /// always hands out the current certificate).
    pub(crate) fn config(&self) -> &Arc<ServerConfig> {
        &self.config
    }

    /// Checks the files every [`RELOAD_PERIOD`] and reloads the certificate
    /// when they change. Runs until dropped (aborted with the accept loop).
    pub(crate) async fn watch(self: Arc<Self>) {
        let this = self.clone();
        let Ok(mut seen) = tokio::task::spawn_blocking(move || stamps(&this.files)).await else {
            return;
        };
        let mut every = tokio::time::interval(RELOAD_PERIOD);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            let this = self.clone();
            let checked = tokio::task::spawn_blocking(move || {
                let now = stamps(&this.files);
                if now == seen {
                    return (now, None);
                }
                // Stamped before reading: a write that lands after this
                // read changes the stamp again, and is loaded next time.
                (now, Some(load(&this.files, &this.provider)))
            })
            .await;
            let Ok((now, loaded)) = checked else {
                return;
            };
            seen = now;
            match loaded {
                None => {}
                Some(Ok(key)) => {
                    self.resolver.set(key);
                    tracing::info!(
                        cert = %self.files.cert.display(),
                        key = %self.files.key.display(),
                        "TLS certificate reloaded; new connections get it"
                    );
                }
                Some(Err(err)) => tracing::warn!(
                    error = %err,
                    "TLS certificate files changed but cannot be used; keeping the current certificate"
                ),
            }
        }
    }
}
