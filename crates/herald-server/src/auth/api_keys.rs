//! Static API keys for backends: each with its own publish patterns and
//! admin flag.
//!
//! Invariants: only the SHA-256 digest of a key is kept in memory (a key
//! may even be configured by its digest alone); a presented key is hashed
//! and compared with *every* configured digest in constant time, so neither
//! timing nor early exit tells how close a guess was.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use aws_lc_rs::digest;
use herald_core::TopicPattern;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// Shortest key accepted: a guessable key is no key.
pub const MIN_API_KEY_BYTES: usize = 16;

/// One `api_keys` entry as configured: a TOML table, or the string form
/// `KEY;publish=orders/*,news;admin;name=billing` (flags and environment).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "SpecForm")]
pub struct ApiKeySpec {
    /// A name for logs and rate limits (default: the start of the key's digest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The key itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Or its SHA-256 digest in hex, so the config need not hold the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_sha256: Option<String>,
    /// Topics or patterns it may publish to (`*`: everything, users and broadcast too).
    #[serde(default)]
    pub publish: Vec<String>,
    /// Whether it may use the admin routes.
    #[serde(default)]
    pub admin: bool,
}

/// The two ways an entry may be written.
#[derive(Deserialize)]
#[serde(untagged)]
enum SpecForm {
    Text(String),
    Table(SpecTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecTable {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    key_sha256: Option<String>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    admin: bool,
}

impl TryFrom<SpecForm> for ApiKeySpec {
    type Error = String;

    fn try_from(form: SpecForm) -> Result<Self, String> {
        match form {
            SpecForm::Text(text) => text.parse(),
            SpecForm::Table(t) => Ok(Self {
                name: t.name,
                key: t.key,
                key_sha256: t.key_sha256,
                publish: t.publish,
                admin: t.admin,
            }),
        }
    }
}

impl fmt::Debug for ApiKeySpec {
    // Never print the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeySpec")
            .field("name", &self.name)
            .field("publish", &self.publish)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

impl FromStr for ApiKeySpec {
    type Err = String;

    /// `KEY[;publish=P1,P2][;admin][;name=NAME]`.
    fn from_str(spec: &str) -> Result<Self, String> {
        let mut parts = spec.split(';');
        let key = parts.next().unwrap_or_default().trim();
        let mut parsed = Self {
            name: None,
            key: Some(key.to_owned()),
            key_sha256: None,
            publish: Vec::new(),
            admin: false,
        };
        for part in parts.map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                Some(("publish", list)) => parsed.publish.extend(
                    list.split(',')
                        .map(str::trim)
                        .filter(|p| !p.is_empty())
                        .map(String::from),
                ),
                Some(("name", name)) => parsed.name = Some(name.trim().to_owned()),
                None if part == "admin" => parsed.admin = true,
                _ => {
                    return Err(format!(
                        "unknown part {part:?} in an API key; the form is \
                         KEY;publish=PATTERN,PATTERN;admin;name=NAME"
                    ))
                }
            }
        }
        Ok(parsed)
    }
}

/// An API key ready to be checked.
#[derive(Debug)]
pub(crate) struct ApiKey {
    /// For logs and per-key limits.
    pub(crate) name: Arc<str>,
    digest: [u8; 32],
    pub(crate) publish: Vec<TopicPattern>,
    pub(crate) admin: bool,
}

/// Every configured key.
#[derive(Debug, Default)]
pub(crate) struct ApiKeys(Vec<Arc<ApiKey>>);

impl ApiKeys {
    /// Checks and hashes the configured keys; the error names the entry.
    pub(crate) fn new(specs: &[ApiKeySpec]) -> Result<Self, String> {
        let mut keys = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            let which = format!("`api_keys` entry {}", i + 1);
            let digest = match (&spec.key, &spec.key_sha256) {
                (Some(key), None) => {
                    if key.len() < MIN_API_KEY_BYTES {
                        return Err(format!(
                            "{which}: the key is {} bytes; use at least {MIN_API_KEY_BYTES} \
                             random characters",
                            key.len()
                        ));
                    }
                    if key.matches('.').count() == 2
                        || key.chars().any(|c| c.is_whitespace() || c.is_control())
                    {
                        return Err(format!(
                            "{which}: a key must not contain whitespace nor look like a JWT \
                             (two dots)"
                        ));
                    }
                    sha256(key)
                }
                (None, Some(hex)) => parse_hex_digest(hex)
                    .ok_or_else(|| format!("{which}: `key_sha256` must be 64 hex digits"))?,
                _ => {
                    return Err(format!(
                        "{which}: give exactly one of `key` and `key_sha256`"
                    ))
                }
            };
            let publish = spec
                .publish
                .iter()
                .map(|p| {
                    TopicPattern::parse(p)
                        .map_err(|e| format!("{which}: publish pattern {p:?}: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let name = spec
                .name
                .clone()
                .unwrap_or_else(|| digest[..4].iter().map(|b| format!("{b:02x}")).collect());
            keys.push(Arc::new(ApiKey {
                name: Arc::from(name),
                digest,
                publish,
                admin: spec.admin,
            }));
        }
        Ok(Self(keys))
    }

    /// Whether no key is configured.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The key `presented` is, if any.
    pub(crate) fn find(&self, presented: &str) -> Option<Arc<ApiKey>> {
        let digest = sha256(presented);
        let mut found = None;
        // Every digest is compared, found or not.
        for key in &self.0 {
            if bool::from(key.digest.ct_eq(&digest)) {
                found = Some(key.clone());
            }
        }
        found
    }
}

fn sha256(text: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, text.as_bytes()).as_ref());
    out
}

fn parse_hex_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_form_parses() {
        let spec: ApiKeySpec = "k-0123456789abcdef;publish=orders/*, news;admin;name=billing"
            .parse()
            .expect("parses");
        assert_eq!(spec.key.as_deref(), Some("k-0123456789abcdef"));
        assert_eq!(spec.publish, ["orders/*", "news"]);
        assert!(spec.admin);
        assert_eq!(spec.name.as_deref(), Some("billing"));
        assert!("k;bogus".parse::<ApiKeySpec>().is_err());
    }

    #[test]
    fn keys_are_found_by_digest_only() {
        let key = "k-0123456789abcdef";
        let by_digest = ApiKeySpec {
            name: Some("d".into()),
            key: None,
            key_sha256: Some(
                sha256("another-key-0123456")
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect(),
            ),
            publish: vec![],
            admin: true,
        };
        let keys = ApiKeys::new(&[key.parse().expect("spec"), by_digest]).expect("valid");
        assert!(keys.find(key).is_some());
        assert_eq!(
            keys.find("another-key-0123456").map(|k| k.admin),
            Some(true)
        );
        assert!(keys.find("k-0123456789abcdeX").is_none());
        assert!(keys.find("").is_none());
        assert!(ApiKeys::new(&["short".parse().expect("spec")]).is_err());
    }
}
