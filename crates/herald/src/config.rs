//! `herald serve` configuration: defaults < TOML file < `HERALD_*` env < flags.
//!
//! Everything is validated here, before any port is bound; a bad value is a
//! [`ConfigError`] (exit 64) naming the option and where it came from.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
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

/// The options of `herald serve`. Field names are the TOML keys; the env
/// names are `HERALD_` + the key in upper case.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Config {
    pub listen: String,
    pub dev: bool,
    pub memory: bool,
    pub data_dir: PathBuf,
    pub durability: DurabilityLevel,
    pub redis: Option<String>,
    pub heartbeat_secs: u64,
    pub retry_ms: u64,
    pub max_connection_lifetime_secs: u64,
    pub queue_capacity: usize,
    pub retention_events: usize,
    pub retention_bytes: usize,
    pub retention_secs: u64,
    pub idempotency_window_secs: u64,
    pub max_body_bytes: usize,
    pub max_data_bytes: usize,
    pub max_connections: usize,
    pub allowed_origins: Vec<String>,
    pub log: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            dev: false,
            memory: false,
            data_dir: PathBuf::from("./herald-data"),
            durability: DurabilityLevel::Process,
            redis: None,
            heartbeat_secs: 15,
            retry_ms: 3000,
            max_connection_lifetime_secs: 0,
            queue_capacity: 256,
            retention_events: 1_000_000,
            retention_bytes: 1 << 30,
            retention_secs: 24 * 3600,
            idempotency_window_secs: 600,
            max_body_bytes: 4 << 20,
            max_data_bytes: 256 << 10,
            max_connections: 100_000,
            allowed_origins: vec!["*".into()],
            log: "info".into(),
        }
    }
}

const KEYS: &[&str] = &[
    "listen",
    "dev",
    "memory",
    "data_dir",
    "durability",
    "redis",
    "heartbeat_secs",
    "retry_ms",
    "max_connection_lifetime_secs",
    "queue_capacity",
    "retention_events",
    "retention_bytes",
    "retention_secs",
    "idempotency_window_secs",
    "max_body_bytes",
    "max_data_bytes",
    "max_connections",
    "allowed_origins",
    "log",
];

/// Flags of `herald serve`; each overrides the same-named config key.
#[derive(Debug, Clone, Default, Args, Serialize)]
pub(crate) struct ServeArgs {
    /// TOML config file.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Dev mode: no tokens, `?user=` names the subscriber, demo page at /demo.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dev: bool,
    /// Keep the event log in memory only (history is lost on restart).
    #[arg(long, conflicts_with = "data_dir")]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub memory: bool,
    /// Directory of the durable event log [default: ./herald-data].
    #[arg(long, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// When a publish is acknowledged: `process` (survives kill -9) or
    /// `fsync` (survives power loss) [default: process].
    #[arg(long, value_name = "LEVEL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub durability: Option<DurabilityLevel>,
    /// Redis URL for the cluster engine.
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<String>,
    /// Seconds between heartbeat comments on idle streams [default: 15].
    #[arg(long, value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_secs: Option<u64>,
    /// Reconnection delay sent to clients in `retry:`, ms [default: 3000].
    #[arg(long, value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_ms: Option<u64>,
    /// Close streams after about this many seconds (0: never) [default: 0].
    #[arg(long, value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connection_lifetime_secs: Option<u64>,
    /// Events queued per stream before it switches to catch-up [default: 256].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_capacity: Option<usize>,
    /// Events retained for resume [default: 1000000].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_events: Option<usize>,
    /// Bytes retained for resume [default: 1 GiB].
    #[arg(long, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_bytes: Option<usize>,
    /// Seconds an event is retained [default: 86400].
    #[arg(long, value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_secs: Option<u64>,
    /// Seconds an idempotency key is remembered [default: 600].
    #[arg(long, value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_window_secs: Option<u64>,
    /// Largest publish request body, bytes [default: 4 MiB].
    #[arg(long, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<usize>,
    /// Largest `data` of one event, bytes [default: 256 KiB].
    #[arg(long, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_data_bytes: Option<usize>,
    /// Most open streams [default: 100000].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// A CORS origin allowed (repeatable; `*` for any) [default: *].
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    #[serde(rename = "allowed_origins", skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
    /// Log filter (tracing `EnvFilter` syntax) [default: info].
    #[arg(long, value_name = "FILTER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
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

/// Everything `serve` needs, validated.
#[derive(Debug, Clone)]
pub(crate) struct Validated {
    pub config: Config,
    pub listen: SocketAddr,
}

impl Config {
    /// Merges the sources and validates the result.
    pub(crate) fn load(args: &ServeArgs) -> Result<Validated, ConfigError> {
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
        figment = figment
            .merge(Env::prefixed("HERALD_").only(KEYS))
            .merge(Serialized::defaults(args));
        let config: Config = figment.extract().map_err(|e| ConfigError(describe(&e)))?;
        config.validate(&figment)
    }

    fn validate(self, figment: &Figment) -> Result<Validated, ConfigError> {
        let source = |key: &str| {
            figment
                .find_metadata(key)
                .map(|m| format!(" (from {})", source_of(m, &[key])))
                .unwrap_or_default()
        };
        let bad = |key: &str, why: &str| ConfigError(format!("`{key}`{}: {why}", source(key)));
        let listen: SocketAddr = self
            .listen
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
        if self.redis.is_some() {
            return Err(bad(
                "redis",
                "the Redis cluster engine is not available in this version yet; run without it",
            ));
        }
        if !self.dev {
            return Err(bad(
                "dev",
                "token authentication is not available in this version yet; run with --dev",
            ));
        }
        Ok(Validated {
            config: self,
            listen,
        })
    }

    pub(crate) fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs)
    }
}

/// Names where a value came from: the file, the exact environment variable,
/// or the flag.
fn source_of(metadata: &figment::Metadata, key: &[&str]) -> String {
    if let Some(figment::Source::File(path)) = &metadata.source {
        return format!("config file {}", path.display());
    }
    if metadata.name.contains("environment") {
        return format!(
            "environment variable HERALD_{}",
            key.join("_").to_uppercase()
        );
    }
    if metadata.name.contains("ServeArgs") {
        return format!("flag --{}", key.join(".").replace('_', "-"));
    }
    "the defaults".to_owned()
}

fn describe(err: &figment::Error) -> String {
    let mut out = String::new();
    for e in err.clone() {
        if !out.is_empty() {
            out.push_str("; ");
        }
        let key = e.path.join(".");
        let path: Vec<&str> = e.path.iter().map(String::as_str).collect();
        let from = e
            .metadata
            .as_ref()
            .map(|m| format!(" (from {})", source_of(m, &path)))
            .unwrap_or_default();
        if key.is_empty() {
            out.push_str(&format!("{}{from}", e.kind));
        } else {
            out.push_str(&format!("`{key}`{from}: {}", e.kind));
        }
    }
    out
}
