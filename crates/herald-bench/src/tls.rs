//! TLS for every connection the bench opens (streams, publishes, the
//! server's stats), built once per run and shared: one `ClientConfig` per
//! ALPN, behind an `Arc`, so a stream costs its connection's state and no
//! copy of the configuration.
//!
//! A URL goes over TLS when its scheme is `https`; `--tls` and `--tls-ca`
//! turn every `http` URL of the run into `https`. Without `--tls-ca` the
//! server's certificate is not verified: this is a load generator pointed at
//! a server on the same machine, and what it measures is the server's cost
//! of TLS, not who the server is. With `--tls-ca` the certificate must chain
//! to one of the file's CAs and name the URL's host. Handshake signatures are
//! checked either way, so a handshake costs the server what a real client's
//! costs. Sessions are not resumed: every connection makes a full handshake,
//! as a new client does.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::Resumption;
use tokio_rustls::rustls::crypto::{aws_lc_rs, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    self, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_rustls::TlsConnector;

use crate::usage;

/// The TLS flags of every subcommand.
#[derive(Debug, Clone, Args)]
pub(crate) struct TlsArgs {
    /// Connect over TLS without verifying the server's certificate (a load
    /// generator on loopback measures the server's cost, not its identity);
    /// every http:// URL becomes https://. An https:// URL alone is TLS too.
    #[arg(long)]
    pub tls: bool,
    /// Connect over TLS and verify the server's certificate against the CA
    /// certificates (PEM) in FILE; implies --tls.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
}

/// The application protocol a connection asks for in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alpn {
    /// `http/1.1`: the raw subscribers and the publishes.
    Http1,
    /// `h2`: `conns --http2`.
    H2,
}

/// The run's TLS settings.
pub(crate) struct Tls {
    /// Every URL goes over TLS (`--tls`, `--tls-ca`).
    all: bool,
    /// The certificate is checked against `--tls-ca`.
    verified: bool,
    http1: TlsConnector,
    h2: TlsConnector,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("all", &self.all)
            .field("verified", &self.verified)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Builds the configurations; a CA file that cannot be read or holds no
    /// certificate is a usage error.
    pub(crate) fn from_args(args: &TlsArgs) -> anyhow::Result<Arc<Self>> {
        let provider = Arc::new(aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| anyhow::anyhow!("TLS protocol versions: {e}"))?;
        let mut config = match &args.tls_ca {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(path).map_err(|e| {
                    usage(format!("--tls-ca {}: cannot read it: {e}", path.display()))
                })?;
                for cert in certs {
                    let cert = cert
                        .map_err(|e| usage(format!("--tls-ca {}: not PEM: {e}", path.display())))?;
                    roots.add(cert).map_err(|e| {
                        usage(format!(
                            "--tls-ca {}: a bad certificate: {e}",
                            path.display()
                        ))
                    })?;
                }
                if roots.is_empty() {
                    return Err(usage(format!(
                        "--tls-ca {}: no certificate in it",
                        path.display()
                    )));
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth(),
        };
        config.resumption = Resumption::disabled();
        let with_alpn = |alpn: &[u8]| {
            let mut config = config.clone();
            config.alpn_protocols = vec![alpn.to_vec()];
            TlsConnector::from(Arc::new(config))
        };
        Ok(Arc::new(Self {
            all: args.tls || args.tls_ca.is_some(),
            verified: args.tls_ca.is_some(),
            http1: with_alpn(b"http/1.1"),
            h2: with_alpn(b"h2"),
        }))
    }

    /// Plain connections only (tests of the pieces that need a `Tls`).
    #[cfg(test)]
    pub(crate) fn plain() -> Arc<Self> {
        let args = TlsArgs {
            tls: false,
            tls_ca: None,
        };
        Self::from_args(&args).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Whether the server's certificate is verified.
    pub(crate) fn verified(&self) -> bool {
        self.verified
    }

    /// `url` as the run uses it: `http` becomes `https` under `--tls`.
    pub(crate) fn apply(&self, mut url: url::Url) -> url::Url {
        if self.all && url.scheme() == "http" {
            // Both are special schemes, so the change cannot be refused.
            let _ = url.set_scheme("https");
        }
        url
    }

    pub(crate) fn connector(&self, alpn: Alpn) -> &TlsConnector {
        match alpn {
            Alpn::Http1 => &self.http1,
            Alpn::H2 => &self.h2,
        }
    }
}

/// The name a TLS client sends (SNI) and checks the certificate against: a
/// URL's host (an IP address is checked but, per RFC 6066, not sent).
pub(crate) fn server_name(host: &str) -> anyhow::Result<ServerName<'static>> {
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = literal.parse::<std::net::IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(host.to_owned())
        .map_err(|e| usage(format!("{host:?} is not a TLS server name: {e}")))
}

/// Accepts any certificate, but checks the handshake's signatures with it,
/// so the server does all the work of a real handshake.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
