//! JWT verification: which key, which algorithm, which claims.
//!
//! Invariants:
//! - The token's `alg` must be one a configured key accepts (`keys.rs`); `none`
//!   and unknown algorithms are refused before any key is tried.
//! - `exp` is required; `exp` and `nbf` are checked with the configured
//!   leeway; `aud` and `iss` are checked when configured (and then required).
//! - A verified token is cached by its full text (never by its signature
//!   alone: a tampered payload with a cached signature must not pass) until
//!   its expiry, so a reconnect storm costs one hash lookup per client. A
//!   token whose signature check failed is remembered for a few seconds, so
//!   a bad token costs one check however often it is presented. Both caches
//!   are bounded and emptied whenever the key set changes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use herald_core::topic::validate_user_id;
use herald_core::TopicPattern;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use parking_lot::Mutex;
use serde_json::{Map, Value};

use super::jwks::Jwks;
use super::keys::{accepted_algorithms, Key};
use crate::error::{ApiError, ErrorCode};

/// Most verified tokens remembered; past it, expired ones are dropped, and
/// if that is not enough the cache starts over (a cache miss only costs a
/// signature check).
const CACHE_CAPACITY: usize = 200_000;
/// Most refused tokens remembered, and for how long.
const REFUSED_CAPACITY: usize = 10_000;
const REFUSED_FOR: Duration = Duration::from_secs(10);

/// What a verified token allows.
#[derive(Debug)]
pub(crate) struct Claims {
    /// `sub`: the user id, whose personal topic the bearer always gets.
    pub(crate) sub: Option<Arc<str>>,
    /// `herald.subscribe`.
    pub(crate) subscribe: Vec<TopicPattern>,
    /// `herald.publish`.
    pub(crate) publish: Vec<TopicPattern>,
    /// `herald.admin`.
    pub(crate) admin: bool,
    /// `exp` plus the leeway: when the token stops being accepted.
    pub(crate) valid_until: SystemTime,
}

/// Checks of claims beyond the signature.
#[derive(Debug, Clone)]
pub(crate) struct ClaimRules {
    pub(crate) leeway: Duration,
    pub(crate) audience: Option<String>,
    pub(crate) issuer: Option<String>,
}

/// Verifies tokens against the configured keys and the JWKS, if any.
#[derive(Debug)]
pub(crate) struct Verifier {
    /// `jwt_secret` and `jwt_public_key` keys: fixed for the process.
    fixed: Vec<Key>,
    jwks: Option<Arc<Jwks>>,
    rules: ClaimRules,
    cache: Mutex<Cache>,
}

#[derive(Debug, Default)]
struct Cache {
    /// The key-set generation the entries were verified under.
    generation: u64,
    tokens: HashMap<Box<str>, Arc<Claims>>,
    /// Tokens whose signature check failed lately, with why and until when:
    /// a refused subscription is admitted twice (the direct path's look at
    /// the head, then the router's answer), and a bad token must not cost
    /// two signature checks. Short-lived, so a token refused as not yet
    /// valid is looked at again soon.
    refused: HashMap<Box<str>, (ApiError, Instant)>,
}

impl Verifier {
    pub(crate) fn new(fixed: Vec<Key>, jwks: Option<Arc<Jwks>>, rules: ClaimRules) -> Self {
        Self {
            fixed,
            jwks,
            rules,
            cache: Mutex::new(Cache::default()),
        }
    }

    /// The JWKS source, for its background refresher.
    pub(crate) fn jwks(&self) -> Option<&Arc<Jwks>> {
        self.jwks.as_ref()
    }

    /// The claims of `token`, or why it is refused (401 `token_expired` or
    /// `token_invalid`).
    pub(crate) async fn verify(&self, token: &str) -> Result<Arc<Claims>, ApiError> {
        let generation = self.jwks.as_ref().map_or(0, |j| j.generation());
        if let Some(claims) = self.cached(token, generation) {
            return still_valid(claims);
        }
        let header = Header::parse(token)?;
        let mut keys = self.candidates(&header);
        if keys.is_empty() && header.kid.is_some() {
            // A kid we do not know may be a key just rotated in: look again,
            // at most once a second (an attacker's made-up kids cost no more).
            if let Some(jwks) = &self.jwks {
                if jwks.refresh_for_unknown_kid().await {
                    keys = self.candidates(&header);
                }
            }
        }
        if keys.is_empty() {
            return Err(self.no_key_for(&header));
        }
        if let Some(refusal) = self.refused_lately(token, generation) {
            return Err(refusal);
        }
        match self.check(token, header.alg, keys).await {
            Ok(claims) => {
                let claims = Arc::new(claims);
                self.remember(token, claims.clone(), generation);
                Ok(claims)
            }
            Err(refusal) => {
                self.remember_refusal(token, &refusal, generation);
                Err(refusal)
            }
        }
    }

    fn refused_lately(&self, token: &str, generation: u64) -> Option<ApiError> {
        let cache = self.cache.lock();
        if cache.generation != generation {
            return None;
        }
        cache
            .refused
            .get(token)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(refusal, _)| refusal.clone())
    }

    fn remember_refusal(&self, token: &str, refusal: &ApiError, generation: u64) {
        let mut cache = self.cache.lock();
        if cache.generation != generation {
            cache.tokens.clear();
            cache.refused.clear();
            cache.generation = generation;
        }
        if cache.refused.len() >= REFUSED_CAPACITY {
            let now = Instant::now();
            cache.refused.retain(|_, (_, until)| *until > now);
            if cache.refused.len() >= REFUSED_CAPACITY {
                cache.refused.clear();
            }
        }
        cache.refused.insert(
            token.into(),
            (refusal.clone(), Instant::now() + REFUSED_FOR),
        );
    }

    /// The signature check: an HMAC is a microsecond and runs here; an RSA,
    /// ECDSA or Ed25519 verification costs tens of microseconds or more, so
    /// it runs on a blocking thread — a storm of first connects must not
    /// stall the publishes and accepts of the thread this is called on.
    async fn check(&self, token: &str, alg: Algorithm, keys: Vec<Key>) -> Result<Claims, ApiError> {
        if keys.iter().all(|k| k.kind == super::keys::KeyKind::Hmac) {
            return self.rules.check_with(token, alg, &keys);
        }
        let rules = self.rules.clone();
        let token = token.to_owned();
        tokio::task::spawn_blocking(move || rules.check_with(&token, alg, &keys))
            .await
            .unwrap_or_else(|_| Err(invalid("the token could not be checked".to_owned())))
    }

    fn cached(&self, token: &str, generation: u64) -> Option<Arc<Claims>> {
        let cache = self.cache.lock();
        if cache.generation != generation {
            return None;
        }
        cache.tokens.get(token).cloned()
    }

    fn remember(&self, token: &str, claims: Arc<Claims>, generation: u64) {
        let mut cache = self.cache.lock();
        if cache.generation != generation {
            // The key set changed: everything cached was checked against old keys.
            cache.tokens.clear();
            cache.refused.clear();
            cache.generation = generation;
        }
        if cache.tokens.len() >= CACHE_CAPACITY {
            let now = SystemTime::now();
            cache.tokens.retain(|_, c| c.valid_until > now);
            if cache.tokens.len() >= CACHE_CAPACITY {
                cache.tokens.clear();
            }
        }
        cache.tokens.insert(token.into(), claims);
    }

    /// The keys that may have signed a token with this header: of the right
    /// kind for its `alg`; with its `kid` when it has one and a JWKS key has
    /// that kid (keys configured without a kid are tried for any kid).
    fn candidates(&self, header: &Header) -> Vec<Key> {
        let jwks_keys = self.jwks.as_ref().map(|j| j.keys()).unwrap_or_default();
        let by_kid: Vec<Key> = match &header.kid {
            Some(kid) => jwks_keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid.as_str()))
                .cloned()
                .collect(),
            None => jwks_keys.to_vec(),
        };
        by_kid
            .into_iter()
            .chain(self.fixed.iter().cloned())
            .filter(|k| k.accepts(header.alg))
            .collect()
    }

    /// Why no key could check this token.
    fn no_key_for(&self, header: &Header) -> ApiError {
        let jwks_keys = self.jwks.as_ref().map(|j| j.keys()).unwrap_or_default();
        let all: Vec<Key> = self.fixed.iter().chain(jwks_keys.iter()).cloned().collect();
        let alg_known = all.iter().any(|k| k.kind.accepts(header.alg));
        match &header.kid {
            // With a JWKS, a kid names the key: say that one is unknown.
            Some(kid) if alg_known || self.jwks.is_some() => invalid(format!(
                "unknown kid {kid:?}: no configured key with that key id accepts {:?} (if the \
                 key was just rotated in, the key set is refreshed at most once a second)",
                header.alg
            )),
            _ => invalid(format!(
                "algorithm {:?} is not accepted here: the configured keys accept {}",
                header.alg,
                accepted_algorithms(&all)
            )),
        }
    }
}

impl ClaimRules {
    /// Checks `token` against each of `keys` in turn (rotation: any may
    /// have signed it) and reads Herald's claims from it.
    fn check_with(&self, token: &str, alg: Algorithm, keys: &[Key]) -> Result<Claims, ApiError> {
        let validation = self.validation(alg);
        let mut last = None;
        for key in keys {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
                Ok(data) => return self.claims(data.claims),
                // Another key (rotation) may have signed it.
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => last = Some(e),
                // The signature is checked before the claims: any other error
                // comes from a token this key did sign, or from its shape.
                Err(e) => return Err(self.describe(&e)),
            }
        }
        Err(last.map_or_else(
            || invalid("no key could check the token".to_owned()),
            |e| self.describe(&e),
        ))
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        validation.leeway = self.leeway.as_secs();
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        validation.validate_aud = self.audience.is_some();
        if let Some(aud) = &self.audience {
            validation.set_audience(&[aud]);
            required.push("aud");
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        validation
    }

    fn describe(&self, err: &jsonwebtoken::errors::Error) -> ApiError {
        let leeway = self.leeway.as_secs();
        match err.kind() {
            ErrorKind::ExpiredSignature => ApiError::new(
                ErrorCode::TokenExpired,
                format!(
                    "the token expired (its `exp` plus the {leeway}-second leeway has passed); \
                     get a new token and reconnect"
                ),
            ),
            ErrorKind::ImmatureSignature => invalid(format!(
                "the token is not yet valid (its `nbf` is more than {leeway} seconds ahead)"
            )),
            ErrorKind::InvalidSignature => {
                invalid("bad signature: the token was not signed by any configured key".to_owned())
            }
            ErrorKind::InvalidAudience => invalid(format!(
                "wrong audience: the token's `aud` must include {:?}",
                self.audience.as_deref().unwrap_or("")
            )),
            ErrorKind::InvalidIssuer => invalid(format!(
                "wrong issuer: the token's `iss` must be {:?}",
                self.issuer.as_deref().unwrap_or("")
            )),
            ErrorKind::MissingRequiredClaim(claim) => invalid(format!(
                "missing claim `{claim}`: Herald requires `exp`{}{}",
                if self.audience.is_some() {
                    ", `aud`"
                } else {
                    ""
                },
                if self.issuer.is_some() { ", `iss`" } else { "" },
            )),
            ErrorKind::InvalidClaimFormat(claim) => {
                invalid(format!("claim `{claim}` has the wrong type"))
            }
            ErrorKind::InvalidAlgorithm => invalid(
                "algorithm mismatch: the key cannot check a token of this algorithm".to_owned(),
            ),
            ErrorKind::InvalidToken
            | ErrorKind::Base64(_)
            | ErrorKind::Json(_)
            | ErrorKind::Utf8(_) => invalid(format!("malformed token ({err})")),
            _ => invalid(format!("token not accepted ({err})")),
        }
    }

    /// Herald's claims, each checked for its type with a message naming it.
    fn claims(&self, mut map: Map<String, Value>) -> Result<Claims, ApiError> {
        let exp = map
            .get("exp")
            .and_then(Value::as_f64)
            .ok_or_else(|| invalid("claim `exp` must be a number of seconds".to_owned()))?;
        let valid_until = UNIX_EPOCH + Duration::from_secs_f64(exp.clamp(0.0, 1e12)) + self.leeway;
        let sub = match map.remove("sub") {
            None | Some(Value::Null) => None,
            Some(Value::String(sub)) => {
                validate_user_id(&sub).map_err(|e| invalid(format!("claim `sub`: {e}")))?;
                Some(Arc::from(sub))
            }
            Some(_) => return Err(invalid("claim `sub` must be a string".to_owned())),
        };
        let admin = match map.remove("herald.admin") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(admin)) => admin,
            Some(_) => {
                return Err(invalid(
                    "claim `herald.admin` must be true or false".to_owned(),
                ))
            }
        };
        Ok(Claims {
            sub,
            subscribe: patterns(&mut map, "herald.subscribe")?,
            publish: patterns(&mut map, "herald.publish")?,
            admin,
            valid_until,
        })
    }
}

/// A cached token is still refused once it expires.
fn still_valid(claims: Arc<Claims>) -> Result<Arc<Claims>, ApiError> {
    if claims.valid_until > SystemTime::now() {
        Ok(claims)
    } else {
        Err(ApiError::new(
            ErrorCode::TokenExpired,
            "the token expired; get a new token and reconnect",
        ))
    }
}

fn patterns(map: &mut Map<String, Value>, claim: &str) -> Result<Vec<TopicPattern>, ApiError> {
    let list = match map.remove(claim) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => {
            return Err(invalid(format!(
                "claim `{claim}` must be a list of topics or patterns"
            )))
        }
    };
    list.iter()
        .map(|item| {
            let spec = item
                .as_str()
                .ok_or_else(|| invalid(format!("claim `{claim}` must be a list of strings")))?;
            TopicPattern::parse(spec)
                .map_err(|e| invalid(format!("claim `{claim}`: pattern {spec:?}: {e}")))
        })
        .collect()
}

fn invalid(message: String) -> ApiError {
    ApiError::new(ErrorCode::TokenInvalid, message)
}

/// The parts of a JWT header Herald looks at, read before any key is tried.
#[derive(Debug)]
struct Header {
    alg: Algorithm,
    kid: Option<String>,
}

impl Header {
    fn parse(token: &str) -> Result<Self, ApiError> {
        let mut parts = token.split('.');
        let (Some(header), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid(
                "malformed token: a JWT is three base64url parts joined by dots".to_owned(),
            ));
        };
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header.trim_end_matches('='))
            .map_err(|_| invalid("malformed token: the header is not base64url".to_owned()))?;
        let json: Value = serde_json::from_slice(&bytes)
            .map_err(|_| invalid("malformed token: the header is not JSON".to_owned()))?;
        let alg = json
            .get("alg")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("malformed token: the header has no `alg`".to_owned()))?;
        if alg.eq_ignore_ascii_case("none") {
            return Err(invalid(
                "algorithm `none` is not accepted: unsigned tokens are refused".to_owned(),
            ));
        }
        let alg = alg
            .parse::<Algorithm>()
            .map_err(|_| invalid(format!("algorithm {alg:?} is not supported")))?;
        let kid = match json.get("kid") {
            None | Some(Value::Null) => None,
            Some(Value::String(kid)) => Some(kid.clone()),
            Some(_) => {
                return Err(invalid(
                    "malformed token: `kid` must be a string".to_owned(),
                ))
            }
        };
        Ok(Self { alg, kid })
    }
}
