//! Herald's HTTP layer.
//!
//! Routes (documented in docs/api.md): subscribe `GET /v1/events`, publish
//! `POST /v1/publish`, the admin routes under `/v1/`, and `/healthz`,
//! `/readyz`, `/metrics`, `/herald.js` (the browser client), and the
//! dashboard at `/`. This crate owns HTTP concerns only — parsing, auth,
//! CORS, limits, status codes, the accept loop, TLS (`tls.rs`: certificates,
//! reload, ALPN); what an event is and how it fans out belongs to
//! `herald-core`.

#![forbid(unsafe_code)]

mod accept;
mod auth;
mod body;
mod cors;
mod direct;
mod error;
mod http1_head;
mod idle;
mod io;
mod limits;
mod metrics;
mod query;
mod routes;
mod tls;
mod tls_stream;
mod write_through;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{delete, get, post};
use axum::Router;
use herald_core::{EventLog, Hub};

pub use accept::serve;
pub use auth::{ApiKeySpec, Auth, AuthConfig, AuthConfigError, MIN_API_KEY_BYTES, TOKEN_COOKIE};
pub use error::{ApiError, ErrorCode};
pub use limits::{ConnectionBudget, Refusals};
pub use routes::publish::{
    MAX_DATA_BYTES_CEILING, MAX_EVENT_TYPE_BYTES, MAX_IDEMPOTENCY_KEY_BYTES, MAX_TARGETS_PER_EVENT,
};
pub use tls::{check_tls, TlsError, TlsFile, TlsFiles};

/// HTTP-level options (the hub and the log have their own).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Dev mode: no tokens; identity from `?user=`; admin routes open.
    pub dev: bool,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Largest `data` of one event, in bytes.
    pub max_data_bytes: usize,
    /// Most open streams; over it a subscriber is told to come back later.
    pub max_connections: usize,
    /// Most open streams of one user; over it the same (0: no cap; the
    /// binary's configuration requires at least 1).
    pub max_connections_per_user: usize,
    /// Most open streams from one client address (IPv6: one /64); over it
    /// the same. 0: no cap.
    pub max_connections_per_ip: usize,
    /// The process's open-file limit, from which the connection budget is
    /// derived (`None`: unknown, `max_connections` alone bounds streams).
    pub fd_limit: Option<usize>,
    /// Most topics and patterns one subscription may name (`?topic=`
    /// repeated); over it `400 too_many_topics`.
    pub max_topics_per_subscription: usize,
    /// Publish requests a second per token subject or API key (0: no limit).
    pub publish_rate_per_sec: u32,
    /// Most `topics` one published event may name (413 `too_many_targets`).
    pub max_topics_per_event: usize,
    /// Most `users` one published event may name (413 `too_many_targets`).
    pub max_users_per_event: usize,
    /// Origins allowed by CORS: `*` allows any origin without credentials;
    /// an origin named is echoed, with credentials (`null` never is).
    pub allowed_origins: Vec<String>,
    /// Dev mode: host names answered besides `localhost`, `*.localhost` and
    /// IP addresses (any other `Host` is refused: DNS rebinding).
    pub allowed_hosts: Vec<String>,
    /// How long a client may take to send its request headers (for
    /// HTTP/2, its first request's: the preface, SETTINGS and a HEADERS).
    pub header_read_timeout: Duration,
    /// How long a connection with no request in flight (an HTTP/2
    /// connection with no open stream) is kept.
    pub idle_timeout: Duration,
    /// How long a client may take to send a whole request body.
    pub body_read_timeout: Duration,
    /// Most request body bytes held at once by all the bodies being read.
    pub max_body_bytes_in_flight: usize,
    /// How long a socket may take no byte of a pending write before its
    /// connection is closed (minus up to 20 % jitter).
    pub write_timeout: Duration,
    /// Publishes are refused (`503 overloaded`) while the delivery lag
    /// (`herald_core::lag`) is above this; `None`: never.
    pub max_delivery_lag: Option<Duration>,
    /// TLS on the listening port: the certificate and key files (reloaded
    /// when they change); `None` serves plain HTTP/1.1 and h2c.
    pub tls: Option<TlsFiles>,
    /// How long a SIGTERM/SIGINT drain may take (`accept.rs`): streams are
    /// closed with a `retry:` each and in-flight requests finish within it.
    pub shutdown_timeout: Duration,
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
    /// Default of [`ServerConfig::max_connections_per_ip`]: an office or a
    /// campus behind one NAT address fits, one script cannot take the
    /// whole connection budget.
    pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 10_000;
    /// Default of [`ServerConfig::max_topics_per_event`].
    pub const DEFAULT_MAX_TOPICS_PER_EVENT: usize = 1_000;
    /// Default of [`ServerConfig::max_users_per_event`]: a large audience,
    /// still parsed and stored in a few milliseconds.
    pub const DEFAULT_MAX_USERS_PER_EVENT: usize = 10_000;
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
    /// Default of [`ServerConfig::header_read_timeout`], in seconds.
    pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 10;
    /// Default of [`ServerConfig::idle_timeout`], in seconds.
    pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 60;
    /// Default of [`ServerConfig::body_read_timeout`], in seconds: a 4 MiB
    /// body at 400 KB/s.
    pub const DEFAULT_BODY_READ_TIMEOUT_SECS: u64 = 10;
    /// Default of [`ServerConfig::max_body_bytes_in_flight`] (64 MiB: 16
    /// largest bodies at once).
    pub const DEFAULT_MAX_BODY_BYTES_IN_FLIGHT: usize = 64 << 20;
    /// Default of [`ServerConfig::write_timeout`], in seconds.
    pub const DEFAULT_WRITE_TIMEOUT_SECS: u64 = 30;
    /// Default of [`ServerConfig::max_delivery_lag`], in milliseconds.
    pub const DEFAULT_MAX_DELIVERY_LAG_MS: u64 = 10_000;
    /// Default of [`ServerConfig::shutdown_timeout`], in milliseconds:
    /// longer than the 5 s a stream's last `retry:` may ask clients to wait,
    /// so a publisher retrying in that spread is still answered.
    pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 10_000;
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            dev: false,
            max_body_bytes: Self::DEFAULT_MAX_BODY_BYTES,
            max_data_bytes: Self::DEFAULT_MAX_DATA_BYTES,
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            max_connections_per_user: Self::DEFAULT_MAX_CONNECTIONS_PER_USER,
            max_connections_per_ip: Self::DEFAULT_MAX_CONNECTIONS_PER_IP,
            fd_limit: None,
            max_topics_per_subscription: Self::DEFAULT_MAX_TOPICS_PER_SUBSCRIPTION,
            publish_rate_per_sec: 0,
            max_topics_per_event: Self::DEFAULT_MAX_TOPICS_PER_EVENT,
            max_users_per_event: Self::DEFAULT_MAX_USERS_PER_EVENT,
            allowed_origins: vec![Self::DEFAULT_ALLOWED_ORIGIN.into()],
            allowed_hosts: Vec::new(),
            header_read_timeout: Duration::from_secs(Self::DEFAULT_HEADER_READ_TIMEOUT_SECS),
            idle_timeout: Duration::from_secs(Self::DEFAULT_IDLE_TIMEOUT_SECS),
            body_read_timeout: Duration::from_secs(Self::DEFAULT_BODY_READ_TIMEOUT_SECS),
            max_body_bytes_in_flight: Self::DEFAULT_MAX_BODY_BYTES_IN_FLIGHT,
            write_timeout: Duration::from_secs(Self::DEFAULT_WRITE_TIMEOUT_SECS),
            max_delivery_lag: Some(Duration::from_millis(Self::DEFAULT_MAX_DELIVERY_LAG_MS)),
            tls: None,
            shutdown_timeout: Duration::from_millis(Self::DEFAULT_SHUTDOWN_TIMEOUT_MS),
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
    /// How many connections of each kind may be held (from the fd limit).
    pub budget: ConnectionBudget,
    /// The open streams' places under `budget.streams` and the per-address cap.
    stream_slots: Arc<limits::StreamSlots>,
    /// The per-caller publish rate limit, if one is set.
    publish_rate: Option<limits::PublishRate>,
    /// Request body bytes being read, against `max_body_bytes_in_flight`.
    bodies: body::BodyBudget,
    /// Every connection's write deadline, and the count of its closes.
    write_timeout: Arc<io::WriteTimeout>,
    /// The cluster this node is part of (`--redis`): the admin routes then
    /// answer for every live node. `None`: a single node.
    pub cluster: Option<Arc<herald_cluster::Cluster>>,
    /// The series `/metrics` exports (`metrics.rs`).
    pub(crate) metrics: metrics::Metrics,
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
        Self::with_cluster(hub, log, config, auth, None)
    }

    /// [`AppState::new`] for a node of `cluster` (whose hub is `hub`): the
    /// cluster is told this node's publish count, which it shares.
    pub fn with_cluster(
        hub: Arc<Hub>,
        log: Arc<dyn EventLog>,
        config: ServerConfig,
        auth: Auth,
        cluster: Option<Arc<herald_cluster::Cluster>>,
    ) -> Arc<Self> {
        let publish_rate = limits::PublishRate::new(config.publish_rate_per_sec);
        let budget = ConnectionBudget::new(config.max_connections, config.fd_limit);
        let stream_slots = limits::StreamSlots::new(
            budget.streams,
            config.max_connections_per_ip,
            config.max_connections_per_user,
        );
        let bodies = body::BodyBudget::new(config.max_body_bytes_in_flight);
        let write_timeout = io::WriteTimeout::new(config.write_timeout);
        let metrics = metrics::Metrics::new();
        hub.set_metrics(metrics.hub());
        let state = Arc::new(Self {
            hub,
            log,
            config,
            auth,
            published: AtomicU64::new(0),
            refusals: Refusals::default(),
            budget,
            stream_slots,
            publish_rate,
            bodies,
            write_timeout,
            cluster,
            metrics,
        });
        if let Some(cluster) = &state.cluster {
            // Weak: the cluster must not keep the state (and its hub) alive.
            let weak = Arc::downgrade(&state);
            cluster.count_published_with(move || {
                weak.upgrade().map_or(0, |s| {
                    s.published.load(std::sync::atomic::Ordering::Relaxed)
                })
            });
        }
        state
    }

    /// Connections closed since start because their socket took no byte
    /// within `write_timeout`.
    pub fn write_timeouts(&self) -> u64 {
        self.write_timeout.closed()
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
        .route("/v1/topics", get(routes::admin::topics))
        .route("/v1/stats/stream", get(routes::admin::stats_stream))
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
        .route("/metrics", get(routes::ops::metrics))
        .route("/herald.js", get(routes::herald_js::script))
        .route("/v1/openapi.json", get(routes::ops::openapi));
    // The dashboard, in both modes: the page shows nothing without admin access.
    app = app
        .route("/", get(routes::dashboard::page))
        .route("/dashboard/{file}", get(routes::dashboard::file))
        .route("/demo", get(routes::dashboard::demo));
    if state.config.dev {
        app = app.layer(axum::middleware::from_fn_with_state(
            state.clone(),
            cors::dev_host_guard,
        ));
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
