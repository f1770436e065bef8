//! Who is asking, and what they may do.
//!
//! Two modes: **dev** (no credentials; `?user=` names the subscriber; every
//! route open) and **token** (docs/api.md "Identity"): a JWT (`jwt.rs`,
//! keys in `keys.rs`, a JWKS in `jwks.rs`) or a static API key
//! (`api_keys.rs`). Handlers only ever see an [`Access`] and ask it.
//!
//! Rules, in one place:
//! - Credentials come from `Authorization: Bearer`, else the `access_token`
//!   query parameter, else (subscribe only) the `herald_token` cookie. The
//!   cookie is not accepted for publish and admin: a browser sends cookies
//!   with a cross-site form post, which would make them forgeable.
//! - A bearer value with two dots is a JWT; anything else is an API key.
//! - Subscribe: every requested topic or pattern must be covered
//!   ([`TopicPattern::covers`]) by the personal topic `user/{sub}`, by
//!   `herald.subscribe`, or by `public_topics`; public topics need no
//!   credentials at all.
//! - Publish: every target must be covered by `herald.publish` (or the API
//!   key's patterns); `users` means their personal topics; `broadcast` needs `*`.
//! - `herald.admin` (or an admin API key) allows the admin routes, and only
//!   those: rights do not imply each other, so an operator's token publishes
//!   only where its `herald.publish` says.

mod api_keys;
mod jwks;
mod jwt;
mod keys;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::http::{header, HeaderMap};
use herald_core::topic::validate_user_id;
use herald_core::{NewEvent, Topic, TopicPattern};

pub use api_keys::{ApiKeySpec, MIN_API_KEY_BYTES};

use self::api_keys::{ApiKey, ApiKeys};
use self::jwks::Jwks;
use self::jwt::{ClaimRules, Claims, Verifier};
use self::keys::Key;
use crate::error::{ApiError, ErrorCode};
use crate::query::QueryPairs;

/// The cookie a browser may carry its token in.
pub const TOKEN_COOKIE: &str = "herald_token";

/// Token-mode settings, as configured.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// HMAC secrets (HS256/384/512); several at once while rotating.
    pub jwt_secrets: Vec<String>,
    /// PEM public key files (RSA, EC, Ed25519).
    pub jwt_public_keys: Vec<PathBuf>,
    /// A JWKS file path or `https://` URL.
    pub jwks: Option<String>,
    /// Time between JWKS refreshes.
    pub jwks_refresh: Duration,
    /// A CA trusted for the JWKS URL, next to the system roots.
    pub jwks_ca_file: Option<PathBuf>,
    /// Required `aud`, if any.
    pub audience: Option<String>,
    /// Required `iss`, if any.
    pub issuer: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// Patterns anyone may subscribe to.
    pub public_topics: Vec<String>,
    /// Static keys for backends.
    pub api_keys: Vec<ApiKeySpec>,
}

impl AuthConfig {
    /// Default of [`AuthConfig::leeway`], in seconds.
    pub const DEFAULT_LEEWAY_SECS: u64 = 30;
    /// Default of [`AuthConfig::jwks_refresh`], in seconds.
    pub const DEFAULT_JWKS_REFRESH_SECS: u64 = 300;

    /// Whether any way of proving who one is is configured.
    pub fn has_credentials(&self) -> bool {
        !self.jwt_secrets.is_empty()
            || !self.jwt_public_keys.is_empty()
            || self.jwks.is_some()
            || !self.api_keys.is_empty()
    }
}

/// Why token mode could not be set up; the message names the option.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AuthConfigError(String);

/// How identities are established.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Auth {
    /// No credentials: identity from `?user=`, every route open.
    Dev,
    /// JWTs and API keys.
    Tokens(Arc<TokenAuth>),
}

/// Token mode's keys and grants.
#[derive(Debug)]
pub struct TokenAuth {
    /// `None` when only API keys are configured.
    verifier: Option<Verifier>,
    api_keys: ApiKeys,
    public_topics: Vec<TopicPattern>,
}

/// Which grants a request carries.
#[derive(Debug, Clone)]
enum Grants {
    /// Dev mode: everything.
    Everything,
    /// No credentials (public topics only).
    Anonymous,
    Token(Arc<Claims>),
    ApiKey(Arc<ApiKey>),
}

/// What one request may do.
#[derive(Debug, Clone)]
pub(crate) struct Access {
    /// The caller's user id, if it has one.
    pub(crate) user: Option<Arc<str>>,
    grants: Grants,
}

/// Where the credentials may come from on a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Subscribe,
    Other,
}

impl Auth {
    /// Token mode from its configuration; reads key files, and fetches the
    /// JWKS once (a JWKS that cannot be fetched now is logged and fetched
    /// again in the background: tokens it signs are refused until then).
    pub async fn tokens(config: &AuthConfig) -> Result<Self, AuthConfigError> {
        let err = AuthConfigError;
        let mut fixed = Vec::new();
        for (i, secret) in config.jwt_secrets.iter().enumerate() {
            fixed.push(Key::hmac(secret, i).map_err(err)?);
        }
        for path in &config.jwt_public_keys {
            fixed.push(Key::from_pem_file(path).map_err(err)?);
        }
        let jwks = match &config.jwks {
            Some(location) => {
                let jwks = Jwks::new(
                    location,
                    config.jwks_ca_file.as_deref(),
                    config.jwks_refresh,
                )
                .map_err(err)?;
                if let Err(why) = jwks.refresh().await {
                    tracing::error!(
                        jwks = %location,
                        "the JWKS could not be loaded at start-up ({why}); retrying in the background"
                    );
                }
                Some(Arc::new(jwks))
            }
            None => None,
        };
        let verifier = (!fixed.is_empty() || jwks.is_some()).then(|| {
            Verifier::new(
                fixed,
                jwks,
                ClaimRules {
                    leeway: config.leeway,
                    audience: config.audience.clone(),
                    issuer: config.issuer.clone(),
                },
            )
        });
        let api_keys = ApiKeys::new(&config.api_keys).map_err(err)?;
        let public_topics = config
            .public_topics
            .iter()
            .map(|p| {
                TopicPattern::parse(p)
                    .map_err(|e| AuthConfigError(format!("`public_topics`: {p:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if verifier.is_none() && api_keys.is_empty() {
            return Err(AuthConfigError(
                "no credentials are configured: set `jwt_secret`, `jwt_public_key`, `jwks` \
                 or `api_keys`"
                    .to_owned(),
            ));
        }
        Ok(Self::Tokens(Arc::new(TokenAuth {
            verifier,
            api_keys,
            public_topics,
        })))
    }

    /// Background work token mode needs (refreshing the JWKS); run it once.
    pub fn background(&self) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        match self {
            Self::Tokens(tokens) => tokens
                .verifier
                .as_ref()
                .and_then(|v| v.jwks().cloned())
                .map(|jwks| jwks.run_refresher()),
            Self::Dev => None,
        }
    }

    /// The access of a subscriber asking for `patterns` (its personal topic
    /// is added by the caller from [`Access::user`]): checked here, so a
    /// stream is never opened for a topic its credentials do not cover.
    pub(crate) async fn subscriber(
        &self,
        query: &QueryPairs,
        headers: &HeaderMap,
        patterns: &[TopicPattern],
    ) -> Result<(Access, Option<SystemTime>), ApiError> {
        match self {
            Self::Dev => {
                let user = match query.first("user").filter(|u| !u.is_empty()) {
                    Some(user) => {
                        validate_user_id(user).map_err(|e| ApiError::invalid_user(user, e))?;
                        Some(Arc::from(user))
                    }
                    None => None,
                };
                let access = Access {
                    user,
                    grants: Grants::Everything,
                };
                Ok((access, None))
            }
            Self::Tokens(tokens) => {
                let access = tokens.access(query, headers, Route::Subscribe).await?;
                let anonymous = matches!(access.grants, Grants::Anonymous);
                if let Some(asked) = query.first("user").filter(|u| !u.is_empty()) {
                    if anonymous {
                        return Err(token_missing());
                    }
                    if access.user.as_deref() != Some(asked) {
                        return Err(ApiError::new(
                            ErrorCode::TopicNotAllowed,
                            format!(
                                "`user` names the subscriber only in dev mode; here the identity \
                                 is the token's `sub`, and topic user/{asked} is not allowed"
                            ),
                        ));
                    }
                }
                for pattern in patterns {
                    tokens.check_subscribe(&access, pattern)?;
                }
                if patterns.is_empty() && anonymous {
                    return Err(token_missing());
                }
                let expires = match &access.grants {
                    Grants::Token(claims) => Some(claims.valid_until),
                    _ => None,
                };
                Ok((access, expires))
            }
        }
    }

    /// The access of a publisher; each event is then checked with
    /// [`Access::check_publish`].
    pub(crate) async fn publisher(
        &self,
        query: &QueryPairs,
        headers: &HeaderMap,
    ) -> Result<Access, ApiError> {
        match self {
            Self::Dev => Ok(Access {
                user: None,
                grants: Grants::Everything,
            }),
            Self::Tokens(tokens) => {
                let access = tokens.access(query, headers, Route::Other).await?;
                if matches!(access.grants, Grants::Anonymous) {
                    return Err(token_missing());
                }
                Ok(access)
            }
        }
    }

    /// Checks that the caller may use the admin routes.
    pub(crate) async fn admin(
        &self,
        query: &QueryPairs,
        headers: &HeaderMap,
    ) -> Result<(), ApiError> {
        match self {
            Self::Dev => Ok(()),
            Self::Tokens(tokens) => {
                let access = tokens.access(query, headers, Route::Other).await?;
                match access.grants {
                    Grants::Anonymous => Err(token_missing()),
                    _ if access.is_admin() => Ok(()),
                    _ => Err(ApiError::new(
                        ErrorCode::AdminRequired,
                        "this route needs admin rights: a token with `\"herald.admin\": true`, \
                         or an API key with `admin`",
                    )),
                }
            }
        }
    }
}

impl TokenAuth {
    /// Reads and checks the request's credentials; none is
    /// [`Grants::Anonymous`] (what that may do is the caller's call).
    async fn access(
        &self,
        query: &QueryPairs,
        headers: &HeaderMap,
        route: Route,
    ) -> Result<Access, ApiError> {
        let Some(credential) = credential(query, headers, route)? else {
            return Ok(Access {
                user: None,
                grants: Grants::Anonymous,
            });
        };
        if credential.matches('.').count() == 2 {
            let Some(verifier) = &self.verifier else {
                return Err(ApiError::new(
                    ErrorCode::TokenInvalid,
                    "JWTs are not accepted here: no `jwt_secret`, `jwt_public_key` or `jwks` \
                     is configured (only API keys)",
                ));
            };
            let claims = verifier.verify(&credential).await?;
            return Ok(Access {
                user: claims.sub.clone(),
                grants: Grants::Token(claims),
            });
        }
        match self.api_keys.find(&credential) {
            Some(key) => Ok(Access {
                user: None,
                grants: Grants::ApiKey(key),
            }),
            None if self.api_keys.is_empty() => Err(ApiError::new(
                ErrorCode::TokenInvalid,
                "malformed token: a JWT is three base64url parts joined by dots",
            )),
            None => Err(ApiError::new(
                ErrorCode::TokenInvalid,
                "unknown API key (and not a JWT: a JWT has three parts joined by dots)",
            )),
        }
    }

    fn check_subscribe(&self, access: &Access, wanted: &TopicPattern) -> Result<(), ApiError> {
        if self.public_topics.iter().any(|p| p.covers(wanted)) || access.may_subscribe(wanted) {
            return Ok(());
        }
        if matches!(access.grants, Grants::Anonymous) {
            return Err(ApiError::new(
                ErrorCode::TokenMissing,
                format!(
                    "topic {wanted:?} is not public: subscribing to it needs a token \
                     (Authorization: Bearer, ?access_token= or the {TOKEN_COOKIE} cookie)",
                    wanted = wanted.to_string()
                ),
            ));
        }
        Err(ApiError::new(
            ErrorCode::TopicNotAllowed,
            format!(
                "topic {:?} is not allowed: the token's `herald.subscribe` does not cover it \
                 (a pattern is covered only by an equal or wider pattern)",
                wanted.to_string()
            ),
        ))
    }
}

impl Access {
    fn is_admin(&self) -> bool {
        match &self.grants {
            Grants::Everything => true,
            Grants::Token(claims) => claims.admin,
            Grants::ApiKey(key) => key.admin,
            Grants::Anonymous => false,
        }
    }

    fn may_subscribe(&self, wanted: &TopicPattern) -> bool {
        let personal = |user: &Arc<str>| {
            Topic::for_user(user).is_ok_and(|t| TopicPattern::Exact(t).covers(wanted))
        };
        match &self.grants {
            Grants::Token(claims) => {
                claims.sub.as_ref().is_some_and(personal)
                    || claims.subscribe.iter().any(|g| g.covers(wanted))
            }
            // A backend may watch what it may publish.
            Grants::ApiKey(key) => key.publish.iter().any(|g| g.covers(wanted)),
            Grants::Everything => true,
            Grants::Anonymous => false,
        }
    }

    fn publish_grants(&self) -> &[TopicPattern] {
        match &self.grants {
            Grants::Token(claims) => &claims.publish,
            Grants::ApiKey(key) => &key.publish,
            Grants::Everything | Grants::Anonymous => &[],
        }
    }

    /// Checks that every target of `event` may be published to.
    pub(crate) fn check_publish(&self, event: &NewEvent) -> Result<(), ApiError> {
        if matches!(self.grants, Grants::Everything) {
            return Ok(());
        }
        let grants = self.publish_grants();
        let allowed = |topic: &str| grants.iter().any(|g| g.matches(topic));
        if event.broadcast && !grants.iter().any(|g| matches!(g, TopicPattern::All)) {
            return Err(ApiError::new(
                ErrorCode::PublishNotAllowed,
                "broadcast is not allowed: it needs `*` in `herald.publish` (or the API key's \
                 publish patterns)",
            ));
        }
        for topic in &event.topics {
            if !allowed(topic.as_str()) {
                let what = match topic
                    .as_str()
                    .strip_prefix(herald_core::topic::USER_TOPIC_PREFIX)
                {
                    Some(user) => format!("user {user:?} (topic {:?})", topic.as_str()),
                    None => format!("topic {:?}", topic.as_str()),
                };
                return Err(ApiError::new(
                    ErrorCode::PublishNotAllowed,
                    format!(
                        "publishing to {what} is not allowed: `herald.publish` (or the API \
                         key's publish patterns) does not cover it"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Who a rate limit counts this request against: the token's subject
    /// or the API key; `None` in dev mode.
    pub(crate) fn principal(&self) -> Option<Arc<str>> {
        match &self.grants {
            Grants::Token(claims) => Some(match &claims.sub {
                Some(sub) => Arc::from(format!("sub:{sub}")),
                None => Arc::from("token without sub"),
            }),
            Grants::ApiKey(key) => Some(Arc::from(format!("key:{}", key.name))),
            Grants::Everything | Grants::Anonymous => None,
        }
    }
}

fn token_missing() -> ApiError {
    ApiError::new(
        ErrorCode::TokenMissing,
        "this route needs credentials: a token (Authorization: Bearer <jwt>, or \
         ?access_token=) or an API key (Authorization: Bearer <key>)",
    )
}

/// The request's bearer credential, from the first place that has one.
fn credential(
    query: &QueryPairs,
    headers: &HeaderMap,
    route: Route,
) -> Result<Option<String>, ApiError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().unwrap_or_default().trim();
        let bearer = value
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|token| !token.is_empty());
        return match bearer {
            Some(token) => Ok(Some(token.to_owned())),
            None => Err(ApiError::new(
                ErrorCode::TokenInvalid,
                "malformed Authorization header: it must be `Bearer <token>`",
            )),
        };
    }
    if let Some(token) = query.first("access_token").filter(|t| !t.is_empty()) {
        return Ok(Some(token.to_owned()));
    }
    if route == Route::Subscribe {
        for cookies in headers.get_all(header::COOKIE) {
            let Ok(cookies) = cookies.to_str() else {
                continue;
            };
            for cookie in cookies.split(';') {
                if let Some((name, value)) = cookie.trim().split_once('=') {
                    let value = value.trim().trim_matches('"');
                    if name == TOKEN_COOKIE && !value.is_empty() {
                        return Ok(Some(value.to_owned()));
                    }
                }
            }
        }
    }
    Ok(None)
}
