//! `herald serve` configuration: defaults < TOML file < `HERALD_*` env < flags.
//!
//! **Each option is declared once**, as a field of [`Config`]: the field name
//! is the TOML key (and `HERALD_<KEY>` in the environment), its doc comment
//! is the flag's help, its `#[arg]` names the flag and gives the default — a
//! constant of the library that uses the value. The defaults layer, the list
//! of environment keys and the flags are all derived from that one
//! declaration; the `From<&Config>` impls at the end hand each library its
//! own config. Adding an option is one field here, its use in one of those
//! impls, and its row in the README's options table (a test checks that the
//! table and this struct list the same keys with the same defaults).
//!
//! Everything is validated here, before any port is bound; a bad value is a
//! [`ConfigError`] (exit 64) naming the option and where it came from.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, FromArgMatches};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Value};
use figment::Figment;
use herald_core::HubConfig;
use herald_log::redis::{RedisConfigError, RedisDurability, RedisEndpoint, RedisOptions};
use herald_log::{Durability, DurableOptions, Retention};
use herald_server::{ApiKeySpec, AuthConfig, ServerConfig, TlsFile, TlsFiles};
use serde::{Deserialize, Serialize};

/// A configuration problem; the message names the option and its source.
#[derive(Debug)]
pub(crate) struct ConfigError(pub(crate) String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "configuration: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Where the durable event log lives unless told otherwise.
const DEFAULT_DATA_DIR: &str = "./herald-data";
/// The log filter unless told otherwise.
const DEFAULT_LOG: &str = "info";
/// Longest connection deadline accepted (header read, idle, body read,
/// write), in seconds: one day.
const MAX_DEADLINE_SECS: u64 = 86_400;

/// The options of `herald serve` (flags, TOML keys and `HERALD_*` variables).
#[derive(Debug, Clone, Serialize, Deserialize, Args)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Config {
    /// TOML config file (keys as the flags, with `_` for `-`).
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address and port to listen on (default: 127.0.0.1:8080 with --dev, else 0.0.0.0:8080).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// Dev mode: no tokens, `?user=` names the subscriber, admin routes (and so the dashboard) open.
    #[arg(long)]
    pub dev: bool,
    /// HMAC secret of HS256/384/512 tokens (repeatable: old and new while rotating).
    #[arg(long = "jwt-secret", value_name = "SECRET")]
    #[serde(deserialize_with = "one_or_many")]
    pub jwt_secret: Vec<String>,
    /// PEM public key of RS*/PS*/ES256/ES384/EdDSA tokens (repeatable).
    #[arg(long = "jwt-public-key", value_name = "FILE")]
    #[serde(deserialize_with = "one_or_many")]
    pub jwt_public_key: Vec<PathBuf>,
    /// JWKS document of token keys: a file path or an https:// URL.
    #[arg(long, value_name = "PATH|URL")]
    pub jwks: Option<String>,
    /// Seconds between JWKS refreshes, 1 to 86400 (an unknown `kid` also refreshes, at most once a second).
    #[arg(long, value_name = "SECS", default_value_t = AuthConfig::DEFAULT_JWKS_REFRESH_SECS)]
    pub jwks_refresh_secs: u64,
    /// PEM CA certificate trusted for the JWKS URL, besides the system's roots.
    #[arg(long, value_name = "FILE")]
    pub jwks_ca_file: Option<PathBuf>,
    /// Required `aud` of tokens (not checked when unset).
    #[arg(long, value_name = "AUD")]
    pub jwt_audience: Option<String>,
    /// Required `iss` of tokens (not checked when unset).
    #[arg(long, value_name = "ISS")]
    pub jwt_issuer: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, seconds (0 to 3600).
    #[arg(long, value_name = "SECS", default_value_t = AuthConfig::DEFAULT_LEEWAY_SECS)]
    pub jwt_leeway_secs: u64,
    /// A topic or pattern anyone may subscribe to without a token (repeatable).
    #[arg(long = "public-topic", value_name = "PATTERN")]
    #[serde(deserialize_with = "one_or_many")]
    pub public_topics: Vec<String>,
    /// A backend API key: `KEY;publish=P1,P2;admin;name=NAME` (repeatable; TOML tables too).
    #[arg(long = "api-key", value_name = "SPEC")]
    #[serde(deserialize_with = "one_or_many")]
    pub api_keys: Vec<ApiKeySpec>,
    /// Keep the event log in memory only (history is lost on restart).
    #[arg(long, conflicts_with = "data_dir")]
    pub memory: bool,
    /// Directory of the durable event log (one Herald at a time).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// When a publish is acknowledged: `process` (written to the OS: survives
    /// kill -9) or `fsync` (also fdatasync'ed: survives power loss).
    #[arg(long, value_name = "LEVEL", value_enum, default_value_t = DurabilityLevel::Process)]
    pub durability: DurabilityLevel,
    /// Keep the event log in Redis, shared by every node: `redis://[user:pass@]host:port[/db]`, `rediss://…` (TLS), `redis+sentinel://[user:pass@]host1:port1,host2:port2/service`; replaces the durable log (`data_dir` and `durability` are then unused).
    #[arg(long, value_name = "URL", conflicts_with = "memory")]
    pub redis: Option<String>,
    /// Hash tag of the Redis keys: `{PREFIX}:events`, `{PREFIX}:meta`, `{PREFIX}:idem:*` (1 to 64 characters, no braces, spaces or control characters).
    #[arg(long, value_name = "PREFIX", default_value = RedisOptions::DEFAULT_PREFIX)]
    pub redis_prefix: String,
    /// When a publish to Redis is acknowledged: `primary` (the primary stored it) or `replicas=N` (also N replicas, by `WAIT`; else 503).
    #[arg(long, value_name = "LEVEL", default_value = "primary")]
    pub redis_durability: String,
    /// Milliseconds `replicas=N` waits for the replicas before the publish answers 503 (1 to 60000).
    #[arg(long, value_name = "MS", default_value_t = RedisOptions::DEFAULT_WAIT_TIMEOUT_MS)]
    pub redis_wait_timeout_ms: u64,
    /// PEM file of the CA that signed the Redis servers' certificates (with `rediss://`; default: the system's roots).
    #[arg(long, value_name = "FILE")]
    pub redis_tls_ca: Option<PathBuf>,
    /// Milliseconds one tail read blocks in Redis (10 to 60000); a read silent for 3 s longer is a wedged connection, made again.
    #[arg(long, value_name = "MS", default_value_t = RedisOptions::DEFAULT_TAIL_BLOCK_MS)]
    pub redis_tail_block_ms: u64,
    /// Seconds between heartbeat comments on idle streams (1 to 3600).
    #[arg(long, value_name = "SECS", default_value_t = HubConfig::DEFAULT_HEARTBEAT_SECS)]
    pub heartbeat_secs: u64,
    /// Reconnection delay sent to clients in `retry:`, ms (0 to 86400000, a day).
    #[arg(long, value_name = "MS", default_value_t = HubConfig::DEFAULT_RETRY_MS)]
    pub retry_ms: u64,
    /// Close streams after about this many seconds (0: never; at most 31536000, a year); clients reconnect and resume.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub max_connection_lifetime_secs: u64,
    /// Events queued per stream before it switches to catch-up from the log (1 to 1000000).
    #[arg(long, value_name = "N", default_value_t = HubConfig::DEFAULT_QUEUE_CAPACITY)]
    pub queue_capacity: usize,
    /// Events retained for resume (1 to 1000000000).
    #[arg(long, value_name = "N", default_value_t = Retention::DEFAULT_MAX_EVENTS)]
    pub retention_events: usize,
    /// Bytes retained for resume (durable log: disk bytes); 1 to 2^50 (1 PiB).
    #[arg(long, value_name = "BYTES", default_value_t = Retention::DEFAULT_MAX_BYTES)]
    pub retention_bytes: usize,
    /// Seconds an event is retained (1 to 315360000, ten years).
    #[arg(long, value_name = "SECS", default_value_t = Retention::DEFAULT_MAX_AGE_SECS)]
    pub retention_secs: u64,
    /// Seconds an idempotency key is remembered (0 to 31536000, a year).
    #[arg(long, value_name = "SECS", default_value_t = Retention::DEFAULT_IDEMPOTENCY_WINDOW_SECS)]
    pub idempotency_window_secs: u64,
    /// Largest publish request body, bytes, 1 to 67108864 (413 `body_too_large`).
    #[arg(long, value_name = "BYTES", default_value_t = ServerConfig::DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Largest `data` of one event, bytes, 1 to 33554432 (413 `data_too_large`).
    #[arg(long, value_name = "BYTES", default_value_t = ServerConfig::DEFAULT_MAX_DATA_BYTES)]
    pub max_data_bytes: usize,
    /// Most `topics` of one published event (413 `too_many_targets`); 1 to 65534, with
    /// `max_users_per_event` at most 65535 together.
    #[arg(long, value_name = "N", default_value_t = ServerConfig::DEFAULT_MAX_TOPICS_PER_EVENT)]
    pub max_topics_per_event: usize,
    /// Most `users` of one published event (413 `too_many_targets`); 1 to 65534, with
    /// `max_topics_per_event` at most 65535 together.
    #[arg(long, value_name = "N", default_value_t = ServerConfig::DEFAULT_MAX_USERS_PER_EVENT)]
    pub max_users_per_event: usize,
    /// Most open streams; over it a subscriber is told to come back later.
    #[arg(long, value_name = "N", default_value_t = ServerConfig::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Most open streams of one user (token `sub`); over it the same.
    #[arg(long, value_name = "N", default_value_t = ServerConfig::DEFAULT_MAX_CONNECTIONS_PER_USER)]
    pub max_connections_per_user: usize,
    /// Most open streams from one client address (IPv6: one /64); over it the same (0: no cap).
    #[arg(long, value_name = "N", default_value_t = ServerConfig::DEFAULT_MAX_CONNECTIONS_PER_IP)]
    pub max_connections_per_ip: usize,
    /// Most topics and patterns one subscription may name (over it 400 `too_many_topics`).
    #[arg(long, value_name = "N",
          default_value_t = ServerConfig::DEFAULT_MAX_TOPICS_PER_SUBSCRIPTION)]
    pub max_topics_per_subscription: usize,
    /// Publish requests a second per token subject or API key (0: no limit; over it 429).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub publish_rate_per_sec: u32,
    /// A CORS origin allowed (repeatable; `*` for any, without credentials; a named origin gets credentials; `null` never).
    #[arg(long = "allowed-origin", value_name = "ORIGIN",
          default_values_t = [ServerConfig::DEFAULT_ALLOWED_ORIGIN.to_owned()])]
    pub allowed_origins: Vec<String>,
    /// Dev mode: a host name answered besides localhost and IP addresses (repeatable; others get 403).
    #[arg(long = "allowed-host", value_name = "NAME")]
    #[serde(deserialize_with = "one_or_many")]
    pub allowed_hosts: Vec<String>,
    /// TLS: PEM certificate chain (with `--tls-key`; reloaded when the file changes).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// TLS: PEM private key of the certificate (with `--tls-cert`).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Seconds a client gets to complete the TLS handshake (1 to 300).
    #[arg(long, value_name = "SECS",
          default_value_t = ServerConfig::DEFAULT_TLS_HANDSHAKE_TIMEOUT_SECS)]
    pub tls_handshake_timeout_secs: u64,
    /// Seconds a client gets to send a request head; for HTTP/2, the preface, SETTINGS and its first request.
    #[arg(long, value_name = "SECS",
          default_value_t = ServerConfig::DEFAULT_HEADER_READ_TIMEOUT_SECS)]
    pub header_read_timeout_secs: u64,
    /// Seconds a connection with no request in flight (HTTP/2: no open stream) is kept.
    #[arg(long, value_name = "SECS", default_value_t = ServerConfig::DEFAULT_IDLE_TIMEOUT_SECS)]
    pub idle_timeout_secs: u64,
    /// Seconds a client gets to send a whole request body (408 `body_timeout`).
    #[arg(long, value_name = "SECS",
          default_value_t = ServerConfig::DEFAULT_BODY_READ_TIMEOUT_SECS)]
    pub body_read_timeout_secs: u64,
    /// Most request body bytes being read at once, all requests together (over it 503 `body_capacity_full`).
    #[arg(long, value_name = "BYTES",
          default_value_t = ServerConfig::DEFAULT_MAX_BODY_BYTES_IN_FLIGHT)]
    pub max_body_bytes_in_flight: usize,
    /// Seconds a socket may take no byte of a pending write before its stream is closed (minus up to 20 % jitter).
    #[arg(long, value_name = "SECS", default_value_t = ServerConfig::DEFAULT_WRITE_TIMEOUT_SECS)]
    pub write_timeout_secs: u64,
    /// Publishes get 503 `overloaded` while the median stream is more than this many ms behind (0: never).
    #[arg(long, value_name = "MS", default_value_t = ServerConfig::DEFAULT_MAX_DELIVERY_LAG_MS)]
    pub max_delivery_lag_ms: u64,
    /// This node's id in a cluster (`--redis`): ASCII letters, digits, `.`, `_`, `-`, at most 64 bytes (default: host name, port and a random suffix).
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// Cluster: ms a node's presence (its users and counts) outlives its last refresh, so a dead node's connections vanish within it (1000 to 60000).
    #[arg(long, value_name = "MS", default_value_t = herald_cluster::DEFAULT_PRESENCE_EXPIRY_MS)]
    pub presence_expiry_ms: u64,
    /// Milliseconds a SIGTERM/SIGINT drain may take: streams told to come back, in-flight requests finished, then exit 0.
    #[arg(long, value_name = "MS", default_value_t = ServerConfig::DEFAULT_SHUTDOWN_TIMEOUT_MS)]
    pub shutdown_timeout_ms: u64,
    /// Log filter (tracing `EnvFilter` syntax); logs go to stderr.
    #[arg(long, value_name = "FILTER", default_value = DEFAULT_LOG)]
    pub log: String,
    /// Log lines as text for people, or one JSON object per line for log collectors.
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// Human-readable lines (colours on a terminal).
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields`, `target`).
    Json,
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Json => "json",
        })
    }
}

/// Shown instead of a secret in the logged configuration.
const REDACTED: &str = "[redacted]";

impl Config {
    /// The configuration as start-up logs it: every option, with secrets
    /// replaced by [`REDACTED`] — HMAC secrets, API keys (their digests are
    /// not secret and stay), any option whose name says secret, password or
    /// token, and the password of any URL (`redis://user:pw@host`).
    pub(crate) fn redacted(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        redact(&mut value, None);
        value
    }
}

/// Redacts `value` in place; `key` is the option (or field) it is under.
fn redact(value: &mut serde_json::Value, key: Option<&str>) {
    use serde_json::Value;
    let secret_key = key.is_some_and(|k| {
        let k = k.to_ascii_lowercase();
        k == "key"
            || ["secret", "password", "token"]
                .iter()
                .any(|s| k.contains(s))
    });
    match value {
        Value::String(s) if secret_key => *s = REDACTED.to_owned(),
        Value::String(s) => {
            if let Some(clean) = without_url_password(s) {
                *s = clean;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| redact(v, key)),
        Value::Object(fields) => fields.iter_mut().for_each(|(k, v)| redact(v, Some(k))),
        _ => {}
    }
}

/// `scheme://user:password@host...` with the password redacted; `None`
/// when `s` holds no URL password.
fn without_url_password(s: &str) -> Option<String> {
    let (scheme, rest) = s.split_once("://")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let (userinfo, host) = authority.rsplit_once('@')?;
    let userinfo = match userinfo.split_once(':') {
        Some((user, _password)) => format!("{user}:{REDACTED}"),
        // `redis://secret@host`: a lone part is Redis's password.
        None => REDACTED.to_owned(),
    };
    Some(format!("{scheme}://{userinfo}@{host}{path}"))
}

impl Default for Config {
    /// The flags' defaults: the one place defaults are declared.
    fn default() -> Self {
        // Parsing no arguments cannot fail: every option has a default or is optional.
        let matches = Config::command().get_matches_from(["serve"]);
        Config::from_arg_matches(&matches).unwrap_or_else(|_| unreachable!())
    }
}

/// When a publish is acknowledged by the durable log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum DurabilityLevel {
    /// Written to the OS before the answer: survives kill -9 of Herald.
    Process,
    /// Written and fdatasync'ed: survives power loss.
    Fsync,
}

impl std::fmt::Display for DurabilityLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Process => "process",
            Self::Fsync => "fsync",
        })
    }
}

/// A list option given as one value (an environment variable, a TOML
/// string) or as a list.
pub(crate) fn one_or_many<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany<T> {
        Many(Vec<T>),
        One(T),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::Many(list) => list,
        OneOrMany::One(one) => vec![one],
    })
}

/// The flags given on the command line, as a figment layer. Its own type,
/// so that figment's metadata (the type's name) tells a flag from the rest.
#[derive(Debug, Serialize)]
#[serde(transparent)]
struct CommandLineFlags(Dict);

/// Everything `serve` needs, validated.
#[derive(Debug, Clone)]
pub(crate) struct Validated {
    pub config: Config,
    pub listen: SocketAddr,
}

impl Config {
    /// The options as clap sees them (the same as `herald serve`'s).
    fn command() -> clap::Command {
        Config::augment_args(clap::Command::new("serve"))
    }

    /// The TOML keys (every option but `--config` itself).
    fn keys() -> Vec<String> {
        Config::command()
            .get_arguments()
            .map(|arg| arg.get_id().as_str().to_owned())
            .filter(|id| id != "config")
            .collect()
    }

    /// Merges the sources — defaults, the file, the environment, and the
    /// flags that `matches` says were given on the command line — and
    /// validates the result.
    pub(crate) fn load(args: &Config, matches: &ArgMatches) -> Result<Validated, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = &args.config {
            if !path.exists() {
                return Err(ConfigError(format!(
                    "--config: file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file(path));
        }
        let keys = Config::keys();
        let given = given_flags(args, matches, &keys)?;
        figment = figment
            .merge(
                Env::prefixed("HERALD_").only(&keys.iter().map(String::as_str).collect::<Vec<_>>()),
            )
            .merge(Serialized::defaults(given));
        let config: Config = figment.extract().map_err(|e| ConfigError(describe(&e)))?;
        config.validate(&figment)
    }

    fn validate(self, figment: &Figment) -> Result<Validated, ConfigError> {
        let source = |key: &str| {
            figment
                .find_metadata(key)
                .map(|m| format!(" (from {})", source_of(m, key)))
                .unwrap_or_default()
        };
        let bad = |key: &str, why: &str| ConfigError(format!("`{key}`{}: {why}", source(key)));
        let listen: SocketAddr = self
            .listen
            .as_deref()
            .unwrap_or(if self.dev {
                ServerConfig::DEFAULT_LISTEN
            } else {
                ServerConfig::DEFAULT_PUBLIC_LISTEN
            })
            .parse()
            .map_err(|_| bad("listen", "must be ADDR:PORT, e.g. 127.0.0.1:8080"))?;
        self.check_ranges().map_err(|(key, why)| bad(key, &why))?;
        if self.max_body_bytes_in_flight < self.max_body_bytes {
            return Err(bad(
                "max_body_bytes_in_flight",
                &format!(
                    "must be at least `max_body_bytes` ({}), or a largest body could never be read",
                    self.max_body_bytes
                ),
            ));
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                return Err(bad(
                    "tls_cert",
                    "is set but `tls_key` is not: TLS needs both the certificate and its key (or neither)",
                ))
            }
            (None, Some(_)) => {
                return Err(bad(
                    "tls_key",
                    "is set but `tls_cert` is not: TLS needs both the certificate and its key (or neither)",
                ))
            }
            _ => {}
        }
        // The files are read now, so a bad one stops start-up before the port
        // is bound (the server loads them again when it starts serving).
        if let Some(files) = self.tls_files() {
            herald_server::check_tls(&files).map_err(|err| {
                let key = match err.file() {
                    TlsFile::Cert => "tls_cert",
                    TlsFile::Key => "tls_key",
                };
                bad(key, &err.to_string())
            })?;
        }
        if self.redis.is_some() && self.memory {
            return Err(bad(
                "redis",
                "conflicts with `memory`: the event log is either in Redis or in memory",
            ));
        }
        if let Some(id) = &self.node_id {
            herald_cluster::NodeId::new(id).map_err(|e| bad("node_id", &e.to_string()))?;
        }
        self.redis_log().map_err(|(key, why)| bad(key, &why))?;
        if self.max_connections_per_user == 0 {
            return Err(bad("max_connections_per_user", "must be at least 1"));
        }
        if !self.dev && !AuthConfig::from(&self).has_credentials() {
            return Err(ConfigError(
                "no way to authenticate is configured, so nobody could subscribe to a private \
                 topic, publish or use the admin routes: set `jwt_secret` (an HMAC secret, \
                 --jwt-secret or HERALD_JWT_SECRET), `jwt_public_key` (a PEM public key file), \
                 `jwks` (a JWKS file or https:// URL) or `api_keys` (--api-key); or run \
                 `herald serve --dev` for local development only"
                    .to_owned(),
            ));
        }
        Ok(Validated {
            config: self,
            listen,
        })
    }
}

/// Seconds in a day, a year and ten years: the bounds of the duration options.
const DAY_SECS: u64 = 86_400;
const YEAR_SECS: u64 = 365 * DAY_SECS;
const TEN_YEARS_SECS: u64 = 10 * YEAR_SECS;

/// An option's allowed values, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bounds {
    key: &'static str,
    min: u64,
    max: u64,
}

impl Bounds {
    /// How the README's options table and the error message write the range.
    fn shown(&self) -> String {
        format!("{}–{}", self.min, self.max)
    }
}

/// Every duration, size and count option's range. The upper bounds are what
/// keeps the arithmetic done on these values later exact: seconds added to
/// an `Instant` (a year at most), milliseconds as `u64` and `u32` record
/// seconds (ten years at most), `retry:` plus its jitter (a day, doubled),
/// and an event that fits one durable record (the per-event limits).
const RANGES: &[Bounds] = &[
    Bounds {
        key: "jwks_refresh_secs",
        min: 1,
        max: DAY_SECS,
    },
    Bounds {
        key: "jwt_leeway_secs",
        min: 0,
        max: 3_600,
    },
    Bounds {
        key: "heartbeat_secs",
        min: 1,
        max: 3_600,
    },
    Bounds {
        key: "retry_ms",
        min: 0,
        max: DAY_SECS * 1_000,
    },
    Bounds {
        key: "max_connection_lifetime_secs",
        min: 0,
        max: YEAR_SECS,
    },
    Bounds {
        key: "queue_capacity",
        min: 1,
        max: 1_000_000,
    },
    Bounds {
        key: "retention_events",
        min: 1,
        max: 1_000_000_000,
    },
    Bounds {
        key: "retention_bytes",
        min: 1,
        max: 1 << 50,
    },
    Bounds {
        key: "retention_secs",
        min: 1,
        max: TEN_YEARS_SECS,
    },
    Bounds {
        key: "idempotency_window_secs",
        min: 0,
        max: YEAR_SECS,
    },
    Bounds {
        key: "max_body_bytes",
        min: 1,
        max: 64 << 20,
    },
    Bounds {
        key: "max_data_bytes",
        min: 1,
        max: herald_server::MAX_DATA_BYTES_CEILING as u64,
    },
    // Each leaves room for at least one of the other kind.
    Bounds {
        key: "max_topics_per_event",
        min: 1,
        max: herald_server::MAX_TARGETS_PER_EVENT as u64 - 1,
    },
    Bounds {
        key: "max_users_per_event",
        min: 1,
        max: herald_server::MAX_TARGETS_PER_EVENT as u64 - 1,
    },
    Bounds {
        key: "tls_handshake_timeout_secs",
        min: 1,
        max: 300,
    },
    Bounds {
        key: "max_topics_per_subscription",
        min: *ServerConfig::MAX_TOPICS_PER_SUBSCRIPTION_RANGE.start() as u64,
        max: *ServerConfig::MAX_TOPICS_PER_SUBSCRIPTION_RANGE.end() as u64,
    },
    Bounds {
        key: "header_read_timeout_secs",
        min: 1,
        max: MAX_DEADLINE_SECS,
    },
    Bounds {
        key: "idle_timeout_secs",
        min: 1,
        max: MAX_DEADLINE_SECS,
    },
    Bounds {
        key: "body_read_timeout_secs",
        min: 1,
        max: MAX_DEADLINE_SECS,
    },
    Bounds {
        key: "write_timeout_secs",
        min: 1,
        max: MAX_DEADLINE_SECS,
    },
    Bounds {
        key: "max_delivery_lag_ms",
        min: 0,
        max: DAY_SECS * 1_000,
    },
    Bounds {
        key: "presence_expiry_ms",
        min: *herald_cluster::PRESENCE_EXPIRY_RANGE_MS.start(),
        max: *herald_cluster::PRESENCE_EXPIRY_RANGE_MS.end(),
    },
    Bounds {
        key: "redis_wait_timeout_ms",
        min: 1,
        max: 60_000,
    },
    // 0 would block forever, which the tail must never do.
    Bounds {
        key: "redis_tail_block_ms",
        min: 10,
        max: 60_000,
    },
    Bounds {
        key: "shutdown_timeout_ms",
        min: 100,
        max: DAY_SECS * 1_000,
    },
];

impl Config {
    /// The value of the bounded option `key` (one of [`RANGES`]).
    fn bounded_value(&self, key: &str) -> Option<u64> {
        let size = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        Some(match key {
            "jwks_refresh_secs" => self.jwks_refresh_secs,
            "jwt_leeway_secs" => self.jwt_leeway_secs,
            "heartbeat_secs" => self.heartbeat_secs,
            "retry_ms" => self.retry_ms,
            "max_connection_lifetime_secs" => self.max_connection_lifetime_secs,
            "queue_capacity" => size(self.queue_capacity),
            "retention_events" => size(self.retention_events),
            "retention_bytes" => size(self.retention_bytes),
            "retention_secs" => self.retention_secs,
            "idempotency_window_secs" => self.idempotency_window_secs,
            "max_body_bytes" => size(self.max_body_bytes),
            "max_data_bytes" => size(self.max_data_bytes),
            "max_topics_per_event" => size(self.max_topics_per_event),
            "max_users_per_event" => size(self.max_users_per_event),
            "tls_handshake_timeout_secs" => self.tls_handshake_timeout_secs,
            "max_topics_per_subscription" => size(self.max_topics_per_subscription),
            "header_read_timeout_secs" => self.header_read_timeout_secs,
            "idle_timeout_secs" => self.idle_timeout_secs,
            "body_read_timeout_secs" => self.body_read_timeout_secs,
            "write_timeout_secs" => self.write_timeout_secs,
            "max_delivery_lag_ms" => self.max_delivery_lag_ms,
            "presence_expiry_ms" => self.presence_expiry_ms,
            "redis_wait_timeout_ms" => self.redis_wait_timeout_ms,
            "redis_tail_block_ms" => self.redis_tail_block_ms,
            "shutdown_timeout_ms" => self.shutdown_timeout_ms,
            _ => return None,
        })
    }

    /// Every option within its range ([`RANGES`]), and the per-event target
    /// limits within what one durable record stores together; else the key
    /// at fault and why.
    fn check_ranges(&self) -> Result<(), (&'static str, String)> {
        for range in RANGES {
            let Some(value) = self.bounded_value(range.key) else {
                return Err((range.key, "has no range check (a bug)".to_owned()));
            };
            if !(range.min..=range.max).contains(&value) {
                return Err((
                    range.key,
                    format!(
                        "{value} is out of range: it must be at least {} and at most {} ({})",
                        range.min,
                        range.max,
                        range.shown()
                    ),
                ));
            }
        }
        let targets = self.max_topics_per_event + self.max_users_per_event;
        if targets > herald_server::MAX_TARGETS_PER_EVENT {
            return Err((
                "max_users_per_event",
                format!(
                    "with `max_topics_per_event` = {} it allows {targets} targets per event; \
                     together they may be at most {} (what one stored event holds)",
                    self.max_topics_per_event,
                    herald_server::MAX_TARGETS_PER_EVENT
                ),
            ));
        }
        Ok(())
    }
}

impl Config {
    /// The TLS files, when both are given (`validate` refuses one alone).
    pub(crate) fn tls_files(&self) -> Option<TlsFiles> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        }
    }
}

/// The values of the flags given on the command line (not their defaults).
fn given_flags(
    args: &Config,
    matches: &ArgMatches,
    keys: &[String],
) -> Result<CommandLineFlags, ConfigError> {
    let all = Value::serialize(args)
        .ok()
        .and_then(Value::into_dict)
        .ok_or_else(|| ConfigError("the command-line flags could not be read".into()))?;
    let given = all
        .into_iter()
        .filter(|(key, _)| {
            keys.contains(key) && matches.value_source(key) == Some(ValueSource::CommandLine)
        })
        .collect();
    Ok(CommandLineFlags(given))
}

/// Names where a value came from: the file, the exact environment variable,
/// or the flag.
fn source_of(metadata: &figment::Metadata, key: &str) -> String {
    if let Some(figment::Source::File(path)) = &metadata.source {
        return format!("config file {}", path.display());
    }
    if metadata.name.contains("environment") {
        return format!("environment variable HERALD_{}", key.to_uppercase());
    }
    if metadata.name.contains("CommandLineFlags") {
        let flag = Config::command()
            .get_arguments()
            .find(|a| a.get_id() == key)
            .and_then(|a| a.get_long().map(str::to_owned))
            .unwrap_or_else(|| key.replace('_', "-"));
        return format!("flag --{flag}");
    }
    "the defaults".to_owned()
}

fn describe(err: &figment::Error) -> String {
    let mut out = Vec::new();
    for e in err.clone() {
        let key = e.path.join(".");
        let from = e
            .metadata
            .as_ref()
            .map(|m| format!(" (from {})", source_of(m, &key)))
            .unwrap_or_default();
        out.push(match &e.kind {
            // The field names itself; figment's "expected one of" list would
            // nest backticks, so the options are listed plainly.
            figment::error::Kind::UnknownField(field, _) => format!(
                "`{field}` is not an option; the options are: {}{from}",
                Config::keys().join(", ")
            ),
            other if key.is_empty() => format!("{other}{from}"),
            other => format!("`{key}`{from}: {other}"),
        });
    }
    out.join("; ")
}

// ---------------------------------------------------------------------------
// Each library's own config, from the one declaration above.
// ---------------------------------------------------------------------------

impl From<&Config> for HubConfig {
    fn from(config: &Config) -> Self {
        Self {
            queue_capacity: config.queue_capacity,
            heartbeat: Duration::from_secs(config.heartbeat_secs),
            max_connection_lifetime: (config.max_connection_lifetime_secs > 0)
                .then(|| Duration::from_secs(config.max_connection_lifetime_secs)),
            retry_ms: config.retry_ms,
        }
    }
}

impl From<&Config> for AuthConfig {
    fn from(config: &Config) -> Self {
        Self {
            jwt_secrets: config.jwt_secret.clone(),
            jwt_public_keys: config.jwt_public_key.clone(),
            jwks: config.jwks.clone(),
            jwks_refresh: Duration::from_secs(config.jwks_refresh_secs),
            jwks_ca_file: config.jwks_ca_file.clone(),
            audience: config.jwt_audience.clone(),
            issuer: config.jwt_issuer.clone(),
            leeway: Duration::from_secs(config.jwt_leeway_secs),
            public_topics: config.public_topics.clone(),
            api_keys: config.api_keys.clone(),
        }
    }
}

impl From<&Config> for ServerConfig {
    // Every field has an option today; the update keeps a field added
    // without one at its default.
    #[allow(clippy::needless_update)]
    fn from(config: &Config) -> Self {
        Self {
            dev: config.dev,
            max_body_bytes: config.max_body_bytes,
            max_data_bytes: config.max_data_bytes,
            max_connections: config.max_connections,
            max_connections_per_user: config.max_connections_per_user,
            max_connections_per_ip: config.max_connections_per_ip,
            max_topics_per_subscription: config.max_topics_per_subscription,
            publish_rate_per_sec: config.publish_rate_per_sec,
            max_topics_per_event: config.max_topics_per_event,
            max_users_per_event: config.max_users_per_event,
            allowed_origins: config.allowed_origins.clone(),
            allowed_hosts: config.allowed_hosts.clone(),
            tls: config.tls_files(),
            tls_handshake_timeout: Duration::from_secs(config.tls_handshake_timeout_secs),
            header_read_timeout: Duration::from_secs(config.header_read_timeout_secs),
            idle_timeout: Duration::from_secs(config.idle_timeout_secs),
            body_read_timeout: Duration::from_secs(config.body_read_timeout_secs),
            max_body_bytes_in_flight: config.max_body_bytes_in_flight,
            write_timeout: Duration::from_secs(config.write_timeout_secs),
            max_delivery_lag: (config.max_delivery_lag_ms > 0)
                .then(|| Duration::from_millis(config.max_delivery_lag_ms)),
            shutdown_timeout: Duration::from_millis(config.shutdown_timeout_ms),
            ..ServerConfig::default()
        }
    }
}

impl From<&Config> for Retention {
    fn from(config: &Config) -> Self {
        Self {
            max_events: config.retention_events,
            max_bytes: config.retention_bytes,
            max_age: Duration::from_secs(config.retention_secs),
            idempotency_window: Duration::from_secs(config.idempotency_window_secs),
        }
    }
}

impl Config {
    /// Where Redis is and how the log uses it, when `redis` is set; else
    /// the option at fault and why.
    pub(crate) fn redis_log(
        &self,
    ) -> Result<Option<(RedisEndpoint, RedisOptions)>, (&'static str, String)> {
        let prefix = &self.redis_prefix;
        if prefix.is_empty()
            || prefix.chars().count() > 64
            || prefix
                .chars()
                .any(|c| c.is_control() || c.is_whitespace() || c == '{' || c == '}')
        {
            return Err((
                "redis_prefix",
                format!(
                    "`{prefix}`: 1 to 64 characters, without braces, spaces or control characters"
                ),
            ));
        }
        let durability: RedisDurability = self
            .redis_durability
            .parse()
            .map_err(|why| ("redis_durability", why))?;
        let Some(url) = &self.redis else {
            if self.redis_tls_ca.is_some() {
                return Err(("redis_tls_ca", "is set but `redis` is not".to_owned()));
            }
            return Ok(None);
        };
        let endpoint = RedisEndpoint::parse(url, self.redis_tls_ca.as_deref()).map_err(|e| {
            let key = match e {
                RedisConfigError::TlsCa { .. } => "redis_tls_ca",
                _ => "redis",
            };
            (key, e.to_string())
        })?;
        let options = RedisOptions {
            retention: Retention::from(self),
            prefix: prefix.clone(),
            durability,
            wait_timeout: Duration::from_millis(self.redis_wait_timeout_ms),
            tail_block: Duration::from_millis(self.redis_tail_block_ms),
        };
        Ok(Some((endpoint, options)))
    }
}

impl From<&Config> for DurableOptions {
    fn from(config: &Config) -> Self {
        Self {
            retention: Retention::from(config),
            durability: match config.durability {
                DurabilityLevel::Process => Durability::Process,
                DurabilityLevel::Fsync => Durability::Fsync,
            },
            ..DurableOptions::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's options table: `(key, default)` per row, the default
    /// being the first `code span` of the default column, or `—` (none)
    /// when the column starts with it.
    fn readme_options() -> Vec<(String, String)> {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"));
        let table = readme
            .split("## `herald serve` options")
            .nth(1)
            .expect("the README has a `herald serve` options section");
        // Up to the next section: other sections have tables of their own.
        let table = table.split("\n## ").next().unwrap_or(table);
        table
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|row| {
                let cells: Vec<&str> = row.split('|').map(str::trim).collect();
                let code = |cell: &str| cell.split('`').nth(1).map(str::to_owned);
                let key = code(cells[1]).expect("a key in backticks");
                // `—` first: no default value (what follows explains).
                let default = if cells[2].starts_with('—') {
                    "—".to_owned()
                } else {
                    code(cells[2]).unwrap_or_else(|| cells[2].to_owned())
                };
                (key, default)
            })
            .collect()
    }

    /// How the README writes a default value.
    fn shown(value: &serde_json::Value) -> String {
        match value {
            serde_json::Value::Null => "—".to_owned(),
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }

    #[test]
    fn the_logged_configuration_has_no_secret() {
        let config = Config {
            jwt_secret: vec!["hmac-secret-value-0123456789".into()],
            redis: Some("redis://app:redis-pass-42@cache:6379/0".into()),
            jwks: Some("https://jwks.example/keys".into()),
            api_keys: vec!["api-key-value-0123456789abcdef;publish=*"
                .parse()
                .expect("an api key")],
            ..Config::default()
        };
        let shown = config.redacted().to_string();
        for secret in [
            "hmac-secret-value-0123456789",
            "redis-pass-42",
            "api-key-value-0123456789abcdef",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        // What is not secret is still there.
        for kept in [
            "redis://app:[redacted]@cache:6379/0",
            "https://jwks.example/keys",
            "\"publish\":[\"*\"]",
        ] {
            assert!(shown.contains(kept), "{kept} not in {shown}");
        }
        assert_eq!(
            without_url_password("redis://only-a-password@host").as_deref(),
            Some("redis://[redacted]@host")
        );
        assert_eq!(without_url_password("redis://host:6379"), None);
    }

    #[test]
    fn readme_options_table_matches_the_config() {
        let defaults = serde_json::to_value(Config::default()).expect("defaults serialize");
        let from_config: Vec<(String, String)> = Config::keys()
            .into_iter()
            .map(|key| {
                let default = shown(&defaults[&key]);
                (key, default)
            })
            .collect();
        assert_eq!(
            readme_options(),
            from_config,
            "README.md's options table (left) and the Config struct (right) must list the same keys, in the same order, with the same defaults"
        );
    }

    /// `herald serve --dev --memory` with `flags`, loaded and validated as
    /// the binary does.
    fn load_with(flags: &[&str]) -> Result<Validated, ConfigError> {
        let args = ["serve", "--dev", "--memory"].iter().chain(flags);
        let matches = Config::command()
            .try_get_matches_from(args)
            .expect("the flags parse");
        let config = Config::from_arg_matches(&matches).expect("a config");
        Config::load(&config, &matches)
    }

    fn flag_of(key: &str) -> String {
        let arg = Config::command()
            .get_arguments()
            .find(|a| a.get_id() == key)
            .and_then(|a| a.get_long().map(str::to_owned))
            .unwrap_or_else(|| panic!("{key} is not an option"));
        format!("--{arg}")
    }

    #[test]
    fn every_range_refuses_the_values_outside_it_and_names_the_option() {
        for range in RANGES {
            let flag = flag_of(range.key);
            for inside in [range.min, range.max] {
                // The target sum is its own rule, checked below.
                let other = match range.key {
                    "max_topics_per_event" => ["--max-users-per-event", "1"],
                    _ => ["--max-topics-per-event", "1"],
                };
                let value = inside.to_string();
                let loaded = load_with(&[&flag, &value, other[0], other[1]]);
                assert!(loaded.is_ok(), "{flag} {value}: {:?}", loaded.err());
            }
            let mut outside = vec![range.max + 1, u64::MAX];
            if let Some(below) = range.min.checked_sub(1) {
                outside.push(below);
            }
            for value in outside {
                let value = value.to_string();
                let err = load_with(&[&flag, &value]).expect_err(&format!("{flag} {value}"));
                let message = err.to_string();
                assert!(
                    message.contains(&format!("`{}` (from flag {flag})", range.key))
                        && message.contains(&range.shown()),
                    "{flag} {value}: {message}"
                );
            }
        }
    }

    #[test]
    fn redis_options_are_checked_and_name_the_option() {
        let load = |flags: &[&str]| {
            let args = ["serve", "--dev"].iter().chain(flags);
            let matches = Config::command()
                .try_get_matches_from(args)
                .expect("the flags parse");
            let config = Config::from_arg_matches(&matches).expect("a config");
            Config::load(&config, &matches)
        };
        let ok = load(&[
            "--redis",
            "redis://127.0.0.1:6379/2",
            "--redis-durability",
            "replicas=2",
        ])
        .expect("valid");
        let (endpoint, options) = ok.config.redis_log().expect("valid").expect("redis is set");
        assert_eq!(endpoint.to_string(), "redis://127.0.0.1:6379/2");
        assert_eq!(options.durability, RedisDurability::Replicas(2));
        assert_eq!(options.prefix, "herald");
        for (flags, key, why) in [
            (&["--redis", "http://h"][..], "`redis`", "unknown scheme"),
            (
                &["--redis", "redis://:hunter2@h:0"][..],
                "`redis`",
                "not a port",
            ),
            (
                &["--redis", "redis://h", "--redis-durability", "replicas=0"][..],
                "`redis_durability`",
                "1 to 100",
            ),
            (
                &["--redis", "redis://h", "--redis-durability", "all"][..],
                "`redis_durability`",
                "primary",
            ),
            (
                &["--redis", "redis://h", "--redis-prefix", "a{b}"][..],
                "`redis_prefix`",
                "braces",
            ),
            (
                &["--redis", "redis://h", "--redis-tls-ca", "/nonexistent.pem"][..],
                "`redis_tls_ca`",
                "TLS URL",
            ),
            (
                &["--redis-tls-ca", "/x.pem"][..],
                "`redis_tls_ca`",
                "`redis` is not",
            ),
        ] {
            let err = load(flags).expect_err(&format!("{flags:?}")).to_string();
            assert!(err.contains(key) && err.contains(why), "{flags:?}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        // `memory` and `redis` are two different logs.
        assert!(Config::command()
            .try_get_matches_from(["serve", "--dev", "--memory", "--redis", "redis://h"])
            .is_err());
    }

    #[test]
    fn every_bounded_option_has_a_value_and_its_range_in_the_readme() {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"));
        let config = Config::default();
        for range in RANGES {
            assert!(config.bounded_value(range.key).is_some(), "{}", range.key);
            let row = readme
                .lines()
                .find(|l| l.starts_with(&format!("| `{}` |", range.key)))
                .unwrap_or_else(|| panic!("no README row for {}", range.key));
            assert!(
                row.contains(&format!("range {}", range.shown())),
                "the README row of {} does not give its range {}: {row}",
                range.key,
                range.shown()
            );
        }
    }

    #[test]
    fn the_target_limits_together_fit_one_stored_event() {
        let most = herald_server::MAX_TARGETS_PER_EVENT.to_string();
        assert!(load_with(&[
            "--max-topics-per-event",
            "1",
            "--max-users-per-event",
            "65534"
        ])
        .is_ok());
        let err = load_with(&[
            "--max-topics-per-event",
            "2",
            "--max-users-per-event",
            "65534",
        ])
        .expect_err("65536 targets");
        let message = err.to_string();
        assert!(
            message.contains("`max_users_per_event`")
                && message.contains("max_topics_per_event")
                && message.contains(&most),
            "{message}"
        );
        // The server's limits are within what the durable log stores.
        const {
            assert!(
                herald_server::MAX_TARGETS_PER_EVENT
                    <= herald_log::record_limits::MAX_RECORD_TOPICS
            )
        };
    }

    #[test]
    fn a_node_id_is_checked_when_the_configuration_loads() {
        assert!(load_with(&["--node-id", "web-1.eu_west"]).is_ok());
        for bad in ["a:b", "", "with space"] {
            let err = load_with(&["--node-id", bad]).expect_err(bad);
            let message = err.to_string();
            assert!(
                message.contains("`node_id` (from flag --node-id)"),
                "{bad:?}: {message}"
            );
        }
        let long = "a".repeat(herald_cluster::MAX_NODE_ID_BYTES + 1);
        let message = load_with(&["--node-id", &long])
            .expect_err("too long")
            .to_string();
        assert!(message.contains("at most 64 bytes"), "{message}");
    }

    #[test]
    fn every_option_is_a_flag_a_key_and_a_variable() {
        let keys = Config::keys();
        assert!(keys.len() >= 19, "{keys:?}");
        let defaults = serde_json::to_value(Config::default()).expect("defaults serialize");
        for key in &keys {
            assert!(defaults.get(key).is_some(), "{key} is not a TOML key");
        }
    }
}
