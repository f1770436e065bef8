//! `herald token`: mint a token the server accepts, for trying things out
//! and for scripts (backends mint their own with any JWT library; the README
//! shows how).
//!
//! The key is the server's: `--jwt-secret` (or `jwt_secret` from `--config`
//! / `HERALD_JWT_SECRET`; with several, the first signs), or `--private-key`,
//! whose type picks the algorithm (RSA: RS256, EC P-256: ES256, P-384:
//! ES384, Ed25519: EdDSA). `jwt_audience` and `jwt_issuer` are taken from the
//! same configuration, so the token passes the server's checks.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use herald_core::topic::validate_user_id;
use herald_core::TopicPattern;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::config::ConfigError;

/// Flags of `herald token`.
#[derive(Debug, Args)]
pub(crate) struct TokenArgs {
    /// The user id (`sub`): its personal topic `user/ID` comes with the token.
    #[arg(long, value_name = "ID")]
    sub: String,
    /// A topic or pattern the token may subscribe to (repeatable).
    #[arg(long = "subscribe", value_name = "PATTERN")]
    subscribe: Vec<String>,
    /// A topic or pattern the token may publish to (repeatable; `*`: everything).
    #[arg(long = "publish", value_name = "PATTERN")]
    publish: Vec<String>,
    /// Admin rights (the admin routes, every topic).
    #[arg(long)]
    admin: bool,
    /// Lifetime: `90s`, `15m`, `1h`, `7d`, or seconds.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_ttl)]
    ttl: Duration,
    /// HMAC secret to sign with (HS256).
    #[arg(long = "jwt-secret", value_name = "SECRET")]
    jwt_secret: Option<String>,
    /// PEM private key to sign with instead.
    #[arg(long, value_name = "FILE", conflicts_with = "jwt_secret")]
    private_key: Option<PathBuf>,
    /// `kid` header (the key's id in a JWKS).
    #[arg(long, value_name = "KID")]
    kid: Option<String>,
    /// The server's TOML config file (for `jwt_secret`, `jwt_audience`, `jwt_issuer`).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// What `herald token` reads of the server's configuration.
#[derive(Debug, Default, Deserialize)]
struct ServerKeys {
    #[serde(default, deserialize_with = "crate::config::one_or_many")]
    jwt_secret: Vec<String>,
    jwt_audience: Option<String>,
    jwt_issuer: Option<String>,
}

pub(crate) fn run(args: TokenArgs) -> anyhow::Result<()> {
    let usage = |m: String| anyhow::Error::new(ConfigError(m));
    let server = server_keys(args.config.as_ref()).map_err(usage)?;
    validate_user_id(&args.sub).map_err(|e| usage(format!("--sub {:?}: {e}", args.sub)))?;
    for (flag, patterns) in [
        ("--subscribe", &args.subscribe),
        ("--publish", &args.publish),
    ] {
        for p in patterns {
            TopicPattern::parse(p).map_err(|e| usage(format!("{flag} {p:?}: {e}")))?;
        }
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs();
    let mut claims = Map::new();
    claims.insert("sub".into(), json!(args.sub));
    claims.insert("iat".into(), json!(now));
    claims.insert("exp".into(), json!(now + args.ttl.as_secs()));
    if !args.subscribe.is_empty() {
        claims.insert("herald.subscribe".into(), json!(args.subscribe));
    }
    if !args.publish.is_empty() {
        claims.insert("herald.publish".into(), json!(args.publish));
    }
    if args.admin {
        claims.insert("herald.admin".into(), json!(true));
    }
    if let Some(aud) = server.jwt_audience {
        claims.insert("aud".into(), json!(aud));
    }
    if let Some(iss) = server.jwt_issuer {
        claims.insert("iss".into(), json!(iss));
    }
    let (algs, key) = match (&args.private_key, &args.jwt_secret) {
        (Some(path), _) => private_key(path).map_err(usage)?,
        (None, Some(secret)) => (HMAC, hmac_key(secret)?),
        (None, None) => match server.jwt_secret.first() {
            Some(secret) => (HMAC, hmac_key(secret)?),
            None => {
                return Err(usage(
                    "token: no key to sign with: give --jwt-secret (or HERALD_JWT_SECRET, or \
                     `jwt_secret` in --config FILE) or --private-key FILE"
                        .to_owned(),
                ))
            }
        },
    };
    let claims = Value::Object(claims);
    // An EC key signs with the algorithm of its curve: the other one fails.
    let mut failure = None;
    for alg in algs {
        let mut header = Header::new(*alg);
        header.kid = args.kid.clone();
        match jsonwebtoken::encode(&header, &claims, &key) {
            Ok(token) => {
                println!("{token}");
                return Ok(());
            }
            Err(e) => failure = Some(e),
        }
    }
    Err(failure.map_or_else(|| anyhow::anyhow!("no algorithm"), anyhow::Error::new))
        .context("signing the token")
}

const HMAC: &[Algorithm] = &[Algorithm::HS256];

fn hmac_key(secret: &str) -> anyhow::Result<EncodingKey> {
    EncodingKey::from_secret(secret.as_bytes()).context("the HMAC secret")
}

/// `jwt_secret`, `jwt_audience` and `jwt_issuer` from the file and the
/// environment, as `serve` reads them.
fn server_keys(file: Option<&PathBuf>) -> Result<ServerKeys, String> {
    let mut figment = Figment::new();
    if let Some(path) = file {
        if !path.exists() {
            return Err(format!("--config: file {} does not exist", path.display()));
        }
        figment = figment.merge(Toml::file(path));
    }
    figment =
        figment.merge(Env::prefixed("HERALD_").only(&["jwt_secret", "jwt_audience", "jwt_issuer"]));
    // The file holds every serve option; only these three matter here.
    let keys: Map<String, Value> = figment.extract().map_err(|e| e.to_string())?;
    let wanted: Map<String, Value> = keys
        .into_iter()
        .filter(|(k, _)| matches!(k.as_str(), "jwt_secret" | "jwt_audience" | "jwt_issuer"))
        .collect();
    serde_json::from_value(Value::Object(wanted)).map_err(|e| format!("config: {e}"))
}

/// The key of a PEM private key file, and the algorithms its type may sign with.
fn private_key(path: &PathBuf) -> Result<(&'static [Algorithm], EncodingKey), String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("--private-key: cannot read {}: {e}", path.display()))?;
    if let Ok(key) = EncodingKey::from_rsa_pem(&pem) {
        return Ok((&[Algorithm::RS256], key));
    }
    if let Ok(key) = EncodingKey::from_ec_pem(&pem) {
        return Ok((&[Algorithm::ES256, Algorithm::ES384], key));
    }
    if let Ok(key) = EncodingKey::from_ed_pem(&pem) {
        return Ok((&[Algorithm::EdDSA], key));
    }
    Err(format!(
        "--private-key: {} is not a PEM RSA, EC or Ed25519 private key",
        path.display()
    ))
}

/// `90s`, `15m`, `1h`, `7d`, or plain seconds.
fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: use e.g. 90s, 15m, 1h or 7d"))?;
    let seconds = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    if seconds == 0 {
        return Err("the lifetime must be at least 1 s".to_owned());
    }
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::parse_ttl;
    use std::time::Duration;

    #[test]
    fn lifetimes_parse() {
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(604_800)));
        assert!(parse_ttl("1y").is_err());
        assert!(parse_ttl("0").is_err());
        assert!(parse_ttl("").is_err());
    }
}
