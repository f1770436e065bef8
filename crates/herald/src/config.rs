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
    /// Dev mode: no tokens, `?user=` names the subscriber, admin open, demo page at /demo.
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
    /// Seconds between JWKS refreshes (an unknown `kid` also refreshes, at most once a second).
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
    /// Clock skew allowed on `exp` and `nbf`, seconds.
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
    /// Redis URL of the cluster engine (not built yet: refused).
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,
    /// Seconds between heartbeat comments on idle streams.
    #[arg(long, value_name = "SECS", default_value_t = HubConfig::DEFAULT_HEARTBEAT_SECS)]
    pub heartbeat_secs: u64,
    /// Reconnection delay sent to clients in `retry:`, ms.
    #[arg(long, value_name = "MS", default_value_t = HubConfig::DEFAULT_RETRY_MS)]
    pub retry_ms: u64,
    /// Close streams after about this many seconds (0: never); clients reconnect and resume.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub max_connection_lifetime_secs: u64,
    /// Events queued per stream before it switches to catch-up from the log.
    #[arg(long, value_name = "N", default_value_t = HubConfig::DEFAULT_QUEUE_CAPACITY)]
    pub queue_capacity: usize,
    /// Events retained for resume.
    #[arg(long, value_name = "N", default_value_t = Retention::DEFAULT_MAX_EVENTS)]
    pub retention_events: usize,
    /// Bytes retained for resume (durable log: disk bytes).
    #[arg(long, value_name = "BYTES", default_value_t = Retention::DEFAULT_MAX_BYTES)]
    pub retention_bytes: usize,
    /// Seconds an event is retained.
    #[arg(long, value_name = "SECS", default_value_t = Retention::DEFAULT_MAX_AGE_SECS)]
    pub retention_secs: u64,
    /// Seconds an idempotency key is remembered.
    #[arg(long, value_name = "SECS", default_value_t = Retention::DEFAULT_IDEMPOTENCY_WINDOW_SECS)]
    pub idempotency_window_secs: u64,
    /// Largest publish request body, bytes (413 `body_too_large`).
    #[arg(long, value_name = "BYTES", default_value_t = ServerConfig::DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Largest `data` of one event, bytes (413 `data_too_large`).
    #[arg(long, value_name = "BYTES", default_value_t = ServerConfig::DEFAULT_MAX_DATA_BYTES)]
    pub max_data_bytes: usize,
    /// Most open streams; over it a subscriber is told to come back later.
    #[arg(long, value_name = "N", default_value_t = ServerConfig::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Most open streams of one user (token `sub`); over it the same.
    #[arg(long, value_name = "N", default_value_t = ServerConfig::DEFAULT_MAX_CONNECTIONS_PER_USER)]
    pub max_connections_per_user: usize,
    /// Most topics and patterns one subscription may name, 1 to 100000 (over it 400 `too_many_topics`).
    #[arg(long, value_name = "N",
          default_value_t = ServerConfig::DEFAULT_MAX_TOPICS_PER_SUBSCRIPTION)]
    pub max_topics_per_subscription: usize,
    /// Publish requests a second per token subject or API key (0: no limit; over it 429).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub publish_rate_per_sec: u32,
    /// A CORS origin allowed (repeatable; `*` for any).
    #[arg(long = "allowed-origin", value_name = "ORIGIN",
          default_values_t = [ServerConfig::DEFAULT_ALLOWED_ORIGIN.to_owned()])]
    pub allowed_origins: Vec<String>,
    /// TLS: PEM certificate chain (with `--tls-key`; reloaded when the file changes).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// TLS: PEM private key of the certificate (with `--tls-cert`).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Seconds a client gets to complete the TLS handshake.
    #[arg(long, value_name = "SECS",
          default_value_t = ServerConfig::DEFAULT_TLS_HANDSHAKE_TIMEOUT_SECS)]
    pub tls_handshake_timeout_secs: u64,
    /// Log filter (tracing `EnvFilter` syntax); logs go to stderr.
    #[arg(long, value_name = "FILTER", default_value = DEFAULT_LOG)]
    pub log: String,
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
        if self.heartbeat_secs == 0 {
            return Err(bad("heartbeat_secs", "must be at least 1"));
        }
        if self.queue_capacity == 0 {
            return Err(bad("queue_capacity", "must be at least 1"));
        }
        if self.retention_events == 0 {
            return Err(bad("retention_events", "must be at least 1"));
        }
        if self.max_body_bytes == 0 || self.max_data_bytes == 0 {
            return Err(bad("max_body_bytes", "limits must be at least 1 byte"));
        }
        if self.tls_handshake_timeout_secs == 0 {
            return Err(bad("tls_handshake_timeout_secs", "must be at least 1"));
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
        if self.redis.is_some() {
            return Err(bad(
                "redis",
                "the Redis cluster engine is not available in this version yet; run without it",
            ));
        }
        if self.max_connections_per_user == 0 {
            return Err(bad("max_connections_per_user", "must be at least 1"));
        }
        let topics_range = ServerConfig::MAX_TOPICS_PER_SUBSCRIPTION_RANGE;
        if !topics_range.contains(&self.max_topics_per_subscription) {
            return Err(bad(
                "max_topics_per_subscription",
                &format!(
                    "must be from {} to {}",
                    topics_range.start(),
                    topics_range.end()
                ),
            ));
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
            jwks_refresh: Duration::from_secs(config.jwks_refresh_secs.max(1)),
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
    fn from(config: &Config) -> Self {
        Self {
            dev: config.dev,
            max_body_bytes: config.max_body_bytes,
            max_data_bytes: config.max_data_bytes,
            max_connections: config.max_connections,
            max_connections_per_user: config.max_connections_per_user,
            max_topics_per_subscription: config.max_topics_per_subscription,
            publish_rate_per_sec: config.publish_rate_per_sec,
            allowed_origins: config.allowed_origins.clone(),
            tls: config.tls_files(),
            tls_handshake_timeout: Duration::from_secs(config.tls_handshake_timeout_secs),
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
