//! Herald's HTTP layer.
//!
//! Routes (documented in docs/api.md): subscribe `GET /v1/events`, publish
//! `POST /v1/publish`, the admin routes under `/v1/`, and `/healthz`,
//! `/readyz`, `/metrics`, `/demo`. This crate owns HTTP concerns only —
//! parsing, auth, CORS, limits, status codes, the accept loop, TLS (`tls.rs`:
//! certificates, reload, ALPN); what an event is and how it fans out belongs
//! to `herald-core`.

#![forbid(unsafe_code)]

mod accept;
mod auth;
mod cors;
mod direct;
mod error;
mod http1_head;
mod io;
mod limits;
mod query;
mod routes;
mod tls;
mod tls_stream;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{delete, get, post};
use axum::Router;
use herald_core::{EventLog, Hub};

pub use accept::serve;
pub use auth::{ApiKeySpec, Auth, AuthConfig, AuthConfigError, MIN_API_KEY_BYTES, TOKEN_COOKIE};
pub use error::{ApiError, ErrorCode};
pub use limits::Refusals;
pub use tls::{check_tls, TlsError, TlsFile, TlsFiles};

/// HTTP-level options (the hub and the log have their own).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Dev mode: no tokens; identity from `?user=`; the demo page is served.
    pub dev: bool,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Largest `data` of one event, in bytes.
    pub max_data_bytes: usize,
    /// Most open streams; over it a subscriber is told to come back later.
    pub max_connections: usize,
    /// Most open streams of one user; over it the same.
    pub max_connections_per_user: usize,
    /// Most topics and patterns one subscription may name (`?topic=`
    /// repeated); over it `400 too_many_topics`.
    pub max_topics_per_subscription: usize,
    /// Publish requests a second per token subject or API key (0: no limit).
    pub publish_rate_per_sec: u32,
    /// Origins allowed by CORS; `*` allows any origin (echoed exactly).
    pub allowed_origins: Vec<String>,
    /// How long a client may take to send its request headers.
    pub header_read_timeout: Duration,
    /// TLS on the listening port: the certificate and key files (reloaded
    /// when they change); `None` serves plain HTTP/1.1 and h2c.
    pub tls: Option<TlsFiles>,
    /// How long a client may take to complete the TLS handshake.
    pub tls_handshake_timeout: Duration,
}

impl ServerConfig {
    /// Where Herald listens unless told otherwise (loopback: dev mode must
    /// not be reachable from other machines by accident).
    pub const DEFAULT_LISTEN: &'static str = "127.0.0.1:8080";
    /// Where Herald listens in token mode unless told otherwise (every
    /// interface: it is meant to be reached).
    pub const DEFAULT_PUBLIC_LISTEN: &'static str = "0.0.0.0:8080";
    /// Default of [`ServerConfig::max_body_bytes`] (4 MiB).
    pub const DEFAULT_MAX_BODY_BYTES: usize = 4 << 20;
    /// Default of [`ServerConfig::max_data_bytes`] (256 KiB).
    pub const DEFAULT_MAX_DATA_BYTES: usize = 256 << 10;
    /// Default of [`ServerConfig::max_connections`].
    pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
    /// Default of [`ServerConfig::max_connections_per_user`]: room for many
    /// tabs and devices, not for a script opening thousands.
    pub const DEFAULT_MAX_CONNECTIONS_PER_USER: usize = 100;
    /// Default of [`ServerConfig::max_topics_per_subscription`] (as
    /// Centrifugo's channel limit): wide enough for any page, narrow enough
    /// that no subscriber costs the others much.
    pub const DEFAULT_MAX_TOPICS_PER_SUBSCRIPTION: usize = 128;
    /// The range [`ServerConfig::max_topics_per_subscription`] may be set in.
    pub const MAX_TOPICS_PER_SUBSCRIPTION_RANGE: std::ops::RangeInclusive<usize> = 1..=100_000;
    /// Default of [`ServerConfig::allowed_origins`]: any origin.
    pub const DEFAULT_ALLOWED_ORIGIN: &'static str = "*";
    /// Default of [`ServerConfig::tls_handshake_timeout`], in seconds.
    pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT_SECS: u64 = 10;
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            dev: false,
            max_body_bytes: Self::DEFAULT_MAX_BODY_BYTES,
            max_data_bytes: Self::DEFAULT_MAX_DATA_BYTES,
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            max_connections_per_user: Self::DEFAULT_MAX_CONNECTIONS_PER_USER,
            max_topics_per_subscription: Self::DEFAULT_MAX_TOPICS_PER_SUBSCRIPTION,
            publish_rate_per_sec: 0,
            allowed_origins: vec![Self::DEFAULT_ALLOWED_ORIGIN.into()],
            header_read_timeout: Duration::from_secs(10),
            tls: None,
            tls_handshake_timeout: Duration::from_secs(Self::DEFAULT_TLS_HANDSHAKE_TIMEOUT_SECS),
        }
    }
}

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    /// Subscriptions and fan-out.
    pub hub: Arc<Hub>,
    /// Where publishes are stored (the hub delivers from the same log).
    pub log: Arc<dyn EventLog>,
    /// HTTP options.
    pub config: ServerConfig,
    /// How identities are established.
    pub auth: Auth,
    /// Events stored through this node's publish route.
    pub published: AtomicU64,
    /// Refused requests, by code, and streams sent away.
    pub refusals: Refusals,
    /// The per-caller publish rate limit, if one is set.
    publish_rate: Option<limits::PublishRate>,
}

impl AppState {
    /// The state of a server publishing into `log` and delivering with `hub`
    /// (which must tail that same log).
    pub fn new(
        hub: Arc<Hub>,
        log: Arc<dyn EventLog>,
        config: ServerConfig,
        auth: Auth,
    ) -> Arc<Self> {
        let publish_rate = limits::PublishRate::new(config.publish_rate_per_sec);
        Arc::new(Self {
            hub,
            log,
            config,
            auth,
            published: AtomicU64::new(0),
            refusals: Refusals::default(),
            publish_rate,
        })
    }
}

/// The full router.
pub fn router(state: Arc<AppState>) -> Router {
    // Admin access is checked once for all of these, before any extractor, so
    // no admin handler can forget it.
    let admin = Router::new()
        .route("/v1/stats", get(routes::admin::stats))
        .route("/v1/users", get(routes::admin::users))
        .route("/v1/users/{id}", get(routes::admin::user))
        .route("/v1/users/{id}/connections", delete(routes::admin::kick))
        .route("/v1/topics/{*topic}", get(routes::admin::topic))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            routes::admin::require_admin,
        ));
    let mut app = Router::new()
        .route("/v1/events", get(routes::subscribe::subscribe))
        .route("/v1/publish", post(routes::publish::publish))
        .merge(admin)
        .route("/healthz", get(routes::ops::healthz))
        .route("/readyz", get(routes::ops::readyz))
        .route("/metrics", get(routes::ops::metrics));
    if state.config.dev {
        app = app
            .route("/demo", get(routes::demo::page))
            .route("/", get(routes::demo::root));
    }
    app.fallback(routes::ops::not_found)
        .method_not_allowed_fallback(routes::ops::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limits::count_refusals,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            cors::cors,
        ))
        .with_state(state)
}
