//! The keys tokens may be signed with, and which algorithm each accepts.
//!
//! Invariant: a key accepts only the algorithms of its own kind — an HMAC
//! secret only `HS*`, an RSA key only `RS*`/`PS*`, an EC key only `ES*`, an
//! Ed25519 key only `EdDSA`. A token's `alg` therefore picks the keys it may be
//! checked against, and no public key is ever used as an HMAC secret (the
//! "algorithm confusion" attack).

use std::fmt;
use std::path::Path;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};

/// A PEM parser of one key type.
type PemParser = fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>;

/// What kind of key, hence which algorithms it verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Hmac,
    Rsa,
    /// ECDSA on P-256 (ES256) or P-384 (ES384).
    Ec(Option<Algorithm>),
    Ed25519,
}

impl KeyKind {
    /// Whether a key of this kind verifies `alg`.
    pub(crate) fn accepts(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            Self::Hmac => matches!(alg, HS256 | HS384 | HS512),
            Self::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            Self::Ec(None) => matches!(alg, ES256 | ES384),
            Self::Ec(Some(curve_alg)) => alg == curve_alg,
            Self::Ed25519 => alg == EdDSA,
        }
    }

    fn algorithms(self) -> &'static str {
        match self {
            Self::Hmac => "HS256/HS384/HS512",
            Self::Rsa => "RS256/RS384/RS512/PS256/PS384/PS512",
            Self::Ec(Some(Algorithm::ES384)) => "ES384",
            Self::Ec(Some(_)) => "ES256",
            Self::Ec(None) => "ES256/ES384",
            Self::Ed25519 => "EdDSA",
        }
    }
}

/// One verification key.
#[derive(Clone)]
pub(crate) struct Key {
    /// The JWKS `kid`, if the key came with one.
    pub(crate) kid: Option<String>,
    pub(crate) kind: KeyKind,
    /// The JWK's own `alg`, when it pins one.
    pub(crate) alg: Option<Algorithm>,
    pub(crate) key: DecodingKey,
    /// Where the key came from, for messages and logs.
    pub(crate) origin: String,
}

impl fmt::Debug for Key {
    // Never print key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// Whether this key may verify a token signed with `alg`.
    pub(crate) fn accepts(&self, alg: Algorithm) -> bool {
        self.kind.accepts(alg) && self.alg.is_none_or(|pinned| pinned == alg)
    }

    /// An HMAC secret (`jwt_secret`).
    pub(crate) fn hmac(secret: &str, index: usize) -> Result<Self, String> {
        if secret.len() < 16 {
            return Err(format!(
                "`jwt_secret` number {} is {} bytes; an HMAC secret must be at least 16 bytes \
                 (32 random bytes are recommended)",
                index + 1,
                secret.len()
            ));
        }
        let key = DecodingKey::from_secret(secret.as_bytes())
            .map_err(|e| format!("`jwt_secret`: {e}"))?;
        Ok(Self {
            kid: None,
            kind: KeyKind::Hmac,
            alg: None,
            key,
            origin: format!("jwt_secret #{}", index + 1),
        })
    }

    /// A PEM public key file (`jwt_public_key`): RSA, EC or Ed25519.
    pub(crate) fn from_pem_file(path: &Path) -> Result<Self, String> {
        let pem = std::fs::read(path)
            .map_err(|e| format!("`jwt_public_key`: cannot read {}: {e}", path.display()))?;
        let origin = format!("jwt_public_key {}", path.display());
        let text = String::from_utf8_lossy(&pem);
        if text.contains("PRIVATE KEY") {
            return Err(format!(
                "`jwt_public_key`: {} holds a private key; give Herald the public key only \
                 (e.g. `openssl pkey -in key.pem -pubout`)",
                path.display()
            ));
        }
        // The PEM says what it holds only by trying: an RSA key parses as RSA,
        // and so on. Each kind keeps to its own algorithms (see module doc).
        let tries: [(KeyKind, PemParser); 3] = [
            (KeyKind::Rsa, DecodingKey::from_rsa_pem),
            (KeyKind::Ec(None), DecodingKey::from_ec_pem),
            (KeyKind::Ed25519, DecodingKey::from_ed_pem),
        ];
        for (kind, parse) in tries {
            // Each parser accepts only its own key type (it reads the key's OID).
            if let Ok(key) = parse(&pem) {
                return Ok(Self {
                    kid: None,
                    kind,
                    alg: None,
                    key,
                    origin,
                });
            }
        }
        Err(format!(
            "`jwt_public_key`: {} is not a PEM RSA, EC (P-256/P-384) or Ed25519 public key",
            path.display()
        ))
    }

    /// A key of a JWKS document; `None` (with the reason) for keys Herald
    /// cannot use (encryption keys, unknown types).
    pub(crate) fn from_jwk(jwk: &Jwk, origin: &str) -> Result<Self, String> {
        let kid = jwk.common.key_id.clone();
        let name = kid.as_deref().unwrap_or("(no kid)");
        if jwk
            .common
            .public_key_use
            .as_ref()
            .is_some_and(|u| !matches!(u, jsonwebtoken::jwk::PublicKeyUse::Signature))
        {
            return Err(format!("key {name}: not a signing key"));
        }
        let kind = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => KeyKind::Rsa,
            AlgorithmParameters::EllipticCurve(ec) => KeyKind::Ec(match ec.curve {
                EllipticCurve::P256 => Some(Algorithm::ES256),
                EllipticCurve::P384 => Some(Algorithm::ES384),
                _ => return Err(format!("key {name}: unsupported curve")),
            }),
            AlgorithmParameters::OctetKeyPair(_) => KeyKind::Ed25519,
            // A symmetric secret has no business in a published key set.
            AlgorithmParameters::OctetKey(_) => {
                return Err(format!(
                    "key {name}: symmetric keys are not accepted from a JWKS"
                ))
            }
            _ => return Err(format!("key {name}: unsupported key type")),
        };
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| a.to_string().parse::<Algorithm>().ok());
        if let Some(alg) = alg {
            if !kind.accepts(alg) {
                return Err(format!(
                    "key {name}: `alg` {alg:?} does not fit its key type"
                ));
            }
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {name}: {e}"))?;
        Ok(Self {
            kid,
            kind,
            alg,
            key,
            origin: origin.to_owned(),
        })
    }
}

/// Parses a JWKS document into usable keys; keys that cannot be used are
/// skipped with their reasons.
pub(crate) fn parse_jwks(document: &[u8], origin: &str) -> Result<(Vec<Key>, Vec<String>), String> {
    let set: JwkSet =
        serde_json::from_slice(document).map_err(|e| format!("not a JWKS document ({e})"))?;
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for jwk in &set.keys {
        match Key::from_jwk(jwk, origin) {
            Ok(key) => keys.push(key),
            Err(why) => skipped.push(why),
        }
    }
    Ok((keys, skipped))
}

/// The algorithms the configured keys accept, for a refusal's message.
pub(crate) fn accepted_algorithms(keys: &[Key]) -> String {
    let mut names: Vec<&str> = keys.iter().map(|k| k.kind.algorithms()).collect();
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        "none (no key is configured)".to_owned()
    } else {
        names.join(", ")
    }
}
