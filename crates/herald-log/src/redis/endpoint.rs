//! Where Redis is and how to reach its current primary.
//!
//! A [`RedisEndpoint`] is parsed once from the `--redis` URL and makes every
//! connection Herald opens to Redis (the log's writer, reader and tail, the
//! cluster's presence): each [`RedisEndpoint::connect`] is a fresh
//! connection to the *current* primary. With `redis+sentinel://` the
//! sentinels are asked for the primary every time a connection is made, and
//! the node they name is asked `ROLE` before it is used, so a connection
//! never lands on a demoted primary or a replica the sentinels have not yet
//! caught up with.
//!
//! Invariants:
//! - every connect has a bounded connect timeout and a bounded response
//!   timeout, unless the caller asks for none (the tail, which bounds each
//!   blocking read itself);
//! - passwords never appear in `Debug`, `Display` or an error message.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo,
    RedisConnectionInfo, RedisError, TlsCertificates,
};
use percent_encoding::percent_decode_str;

/// How long opening one TCP (and TLS) connection to one Redis node may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a command on a connection from [`RedisEndpoint::connect`] may
/// wait for its reply before the connection is treated as broken.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The port a host without one uses.
const DEFAULT_PORT: u16 = 6379;
/// The port a sentinel without one uses.
const DEFAULT_SENTINEL_PORT: u16 = 26379;

/// Why a Redis URL or its TLS options were refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisConfigError {
    /// The URL does not have the expected shape.
    #[error("invalid Redis URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL with its password replaced by `***`.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The CA file could not be read or holds no certificate.
    #[error("redis_tls_ca `{path}`: {reason}")]
    TlsCa {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Which Redis nodes to ask.
#[derive(Clone, PartialEq, Eq)]
enum Target {
    /// One Redis server, the primary.
    Direct { host: String, port: u16 },
    /// Sentinels that know the primary of `service`.
    Sentinel {
        sentinels: Vec<(String, u16)>,
        service: String,
    },
}

/// Where Redis is: parsed from `redis://`, `rediss://` (TLS) or
/// `redis+sentinel://` / `rediss+sentinel://` URLs.
///
/// - `redis://[user:pass@]host[:port][/db]`
/// - `rediss://[user:pass@]host[:port][/db]` — TLS, verified against the
///   system's roots or the `redis_tls_ca` file;
/// - `redis+sentinel://[user:pass@]host1[:port1],host2[:port2]/service[/db][?sentinel_username=…&sentinel_password=…]`
///   — the credentials in front are the data nodes'; sentinels that need
///   their own take them from the query. `rediss+sentinel://` uses TLS to
///   the sentinels and the primary alike.
#[derive(Clone)]
pub struct RedisEndpoint {
    target: Target,
    /// Database, user and password of the data nodes.
    redis: RedisConnectionInfo,
    /// The sentinels' own credentials.
    sentinel_auth: RedisConnectionInfo,
    /// Whether connections use TLS.
    tls: bool,
    /// A private CA's PEM certificates (`redis_tls_ca`), if any.
    tls_ca: Option<Vec<u8>>,
    /// The URL with its passwords replaced, for messages.
    redacted: String,
}

impl fmt::Debug for RedisEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisEndpoint")
            .field("url", &self.redacted)
            .field("tls_ca", &self.tls_ca.is_some())
            .finish()
    }
}

impl fmt::Display for RedisEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

/// `url` with the password of its user info (and of any `*password=` query
/// parameter) replaced by `***`.
fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (authority_end, _) = rest
        .char_indices()
        .find(|(_, c)| *c == '/' || *c == '?')
        .unwrap_or((rest.len(), '/'));
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{hosts}"),
            None => format!("{userinfo}@{hosts}"),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if k.ends_with("password") => format!("{k}=***"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    if scheme.is_empty() {
        format!("{authority}{tail}")
    } else {
        format!("{scheme}://{authority}{tail}")
    }
}

fn decode(part: &str) -> Result<String, String> {
    percent_decode_str(part)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| format!("`{part}` is not valid percent-encoded UTF-8"))
}

/// `host[:port]`, with IPv6 in brackets.
fn host_port(text: &str, default_port: u16) -> Result<(String, u16), String> {
    if text.is_empty() {
        return Err("a host is missing".into());
    }
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("`{text}`: unclosed `[`"))?;
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err(format!("`{text}`: unexpected `{after}`")),
        }
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return Err(format!("`{text}`: the host is empty"));
    }
    let port = match port {
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("`{port}` is not a port (1-65535)"))?,
        None => default_port,
    };
    Ok((host.to_owned(), port))
}

fn parse_db(text: &str) -> Result<i64, String> {
    text.parse::<i64>()
        .ok()
        .filter(|db| *db >= 0)
        .ok_or_else(|| format!("`{text}` is not a database number"))
}

impl RedisEndpoint {
    /// Parses `url`; `tls_ca` is a PEM file of the CA that signed the Redis
    /// servers' certificates (only with `rediss://`).
    pub fn parse(url: &str, tls_ca: Option<&Path>) -> Result<Self, RedisConfigError> {
        let redacted = redact(url);
        let invalid = |reason: String| RedisConfigError::InvalidUrl {
            url: redacted.clone(),
            reason,
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| invalid("expected redis://, rediss:// or redis+sentinel://".into()))?;
        let (tls, sentinel) = match scheme.to_ascii_lowercase().as_str() {
            "redis" => (false, false),
            "rediss" => (true, false),
            "redis+sentinel" => (false, true),
            "rediss+sentinel" => (true, true),
            other => {
                return Err(invalid(format!(
                    "unknown scheme `{other}` (expected redis, rediss, redis+sentinel or rediss+sentinel)"
                )))
            }
        };
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query)),
            None => (rest, None),
        };
        if rest.contains('#') {
            return Err(invalid("URL fragments (`#…`) are not supported".into()));
        }
        let (authority, path) = match rest.split_once('/') {
            Some((authority, path)) => (authority, path),
            None => (rest, ""),
        };
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let mut redis = RedisConnectionInfo::default();
        if let Some(userinfo) = userinfo {
            let (user, password) = match userinfo.split_once(':') {
                Some((user, password)) => (user, Some(password)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                redis = redis.set_username(decode(user).map_err(&invalid)?);
            }
            if let Some(password) = password {
                redis = redis.set_password(decode(password).map_err(&invalid)?);
            }
        }
        let mut segments = path.split('/').filter(|s| !s.is_empty());
        let target = if sentinel {
            let sentinels = hosts
                .split(',')
                .map(|h| host_port(h, DEFAULT_SENTINEL_PORT))
                .collect::<Result<Vec<_>, _>>()
                .map_err(&invalid)?;
            let service = segments.next().ok_or_else(|| {
                invalid("the sentinel service name is missing (…/<service_name>)".into())
            })?;
            Target::Sentinel {
                sentinels,
                service: decode(service).map_err(&invalid)?,
            }
        } else {
            if hosts.contains(',') {
                return Err(invalid(
                    "several hosts need redis+sentinel:// (redis:// names one server)".into(),
                ));
            }
            let (host, port) = host_port(hosts, DEFAULT_PORT).map_err(&invalid)?;
            Target::Direct { host, port }
        };
        if let Some(db) = segments.next() {
            redis = redis.set_db(parse_db(db).map_err(&invalid)?);
        }
        if let Some(extra) = segments.next() {
            return Err(invalid(format!("unexpected path segment `{extra}`")));
        }
        let mut sentinel_auth = RedisConnectionInfo::default();
        for pair in query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter(|p| !p.is_empty())
        {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = decode(value).map_err(&invalid)?;
            match key {
                "sentinel_username" if sentinel => {
                    sentinel_auth = sentinel_auth.set_username(value);
                }
                "sentinel_password" if sentinel => {
                    sentinel_auth = sentinel_auth.set_password(value);
                }
                "db" => redis = redis.set_db(parse_db(&value).map_err(&invalid)?),
                other => {
                    return Err(invalid(format!(
                        "unknown parameter `{other}` (known: db{})",
                        if sentinel {
                            ", sentinel_username, sentinel_password"
                        } else {
                            ""
                        }
                    )))
                }
            }
        }
        let tls_ca = match tls_ca {
            None => None,
            Some(_) if !tls => {
                return Err(RedisConfigError::TlsCa {
                    path: tls_ca.map(|p| p.display().to_string()).unwrap_or_default(),
                    reason: "a CA file needs a TLS URL (rediss:// or rediss+sentinel://)".into(),
                })
            }
            Some(path) => Some(read_ca(path)?),
        };
        Ok(Self {
            target,
            redis,
            sentinel_auth,
            tls,
            tls_ca,
            redacted,
        })
    }

    /// Whether connections use TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Whether the primary is found through sentinels.
    pub fn is_sentinel(&self) -> bool {
        matches!(self.target, Target::Sentinel { .. })
    }

    /// A fresh connection to the current primary, with [`CONNECT_TIMEOUT`]
    /// and [`RESPONSE_TIMEOUT`].
    pub async fn connect(&self) -> Result<MultiplexedConnection, RedisError> {
        self.connect_with_response_timeout(Some(RESPONSE_TIMEOUT))
            .await
    }

    /// A fresh connection to the current primary whose commands wait at
    /// most `response_timeout` for a reply; `None` for none at all (a
    /// connection for blocking reads, whose caller bounds each read).
    pub async fn connect_with_response_timeout(
        &self,
        response_timeout: Option<Duration>,
    ) -> Result<MultiplexedConnection, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(response_timeout);
        match &self.target {
            Target::Direct { host, port } => {
                let client = self.client(host, *port, &self.redis)?;
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
            }
            Target::Sentinel { sentinels, service } => {
                self.connect_through_sentinels(sentinels, service, &config)
                    .await
            }
        }
    }

    /// Asks each sentinel in turn for the primary of `service`, connects to
    /// it and checks with `ROLE` that it is a primary; the first that
    /// passes wins.
    async fn connect_through_sentinels(
        &self,
        sentinels: &[(String, u16)],
        service: &str,
        config: &AsyncConnectionConfig,
    ) -> Result<MultiplexedConnection, RedisError> {
        let sentinel_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(CONNECT_TIMEOUT));
        let mut failures = Vec::new();
        for (host, port) in sentinels {
            let primary = async {
                let client = self.client(host, *port, &self.sentinel_auth)?;
                let mut sentinel = client
                    .get_multiplexed_async_connection_with_config(&sentinel_config)
                    .await?;
                let addr: Option<(String, u16)> = ::redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(service)
                    .query_async(&mut sentinel)
                    .await?;
                addr.ok_or_else(|| {
                    RedisError::from((
                        ErrorKind::MasterNameNotFoundBySentinel,
                        "the sentinel does not know the service",
                        service.to_owned(),
                    ))
                })
            }
            .await;
            let (primary_host, primary_port) = match primary {
                Ok(addr) => addr,
                Err(e) => {
                    failures.push(format!("sentinel {host}:{port}: {e}"));
                    continue;
                }
            };
            match self
                .connect_checked_primary(&primary_host, primary_port, config)
                .await
            {
                Ok(connection) => return Ok(connection),
                Err(e) => failures.push(format!(
                    "primary {primary_host}:{primary_port} (from sentinel {host}:{port}): {e}"
                )),
            }
        }
        Err(RedisError::from((
            ErrorKind::MasterNameNotFoundBySentinel,
            "no sentinel named a reachable primary",
            failures.join("; "),
        )))
    }

    /// A connection to `host:port` once `ROLE` says it is a primary.
    async fn connect_checked_primary(
        &self,
        host: &str,
        port: u16,
        config: &AsyncConnectionConfig,
    ) -> Result<MultiplexedConnection, RedisError> {
        let client = self.client(host, port, &self.redis)?;
        let mut connection = client
            .get_multiplexed_async_connection_with_config(config)
            .await?;
        let role: Vec<::redis::Value> = ::redis::cmd("ROLE").query_async(&mut connection).await?;
        match role.first() {
            Some(::redis::Value::BulkString(r)) if r.as_slice() == b"master" => Ok(connection),
            Some(::redis::Value::SimpleString(r)) if r == "master" => Ok(connection),
            _ => Err(RedisError::from((
                ErrorKind::Client,
                "the node the sentinel named is not a primary (yet)",
            ))),
        }
    }

    /// A client for one node.
    fn client(
        &self,
        host: &str,
        port: u16,
        auth: &RedisConnectionInfo,
    ) -> Result<Client, RedisError> {
        let addr = if self.tls {
            ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(host.to_owned(), port)
        };
        let info: ConnectionInfo = addr
            .into_connection_info()?
            .set_redis_settings(auth.clone());
        match &self.tls_ca {
            Some(ca) => Client::build_with_tls(
                info,
                TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            ),
            None => Client::open(info),
        }
    }
}

/// The PEM certificates of `path`, checked to hold at least one.
fn read_ca(path: &Path) -> Result<Vec<u8>, RedisConfigError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let fail = |reason: String| RedisConfigError::TlsCa {
        path: path.display().to_string(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(fail("holds no PEM certificate".into()));
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<RedisEndpoint, RedisConfigError> {
        RedisEndpoint::parse(url, None)
    }

    #[test]
    fn direct_urls_parse_with_defaults() {
        let e = parse("redis://localhost").expect("parses");
        assert!(
            matches!(&e.target, Target::Direct { host, port } if host == "localhost" && *port == 6379)
        );
        assert_eq!(e.redis.db(), 0);
        assert!(!e.is_tls());
        let e = parse("rediss://u:p%40ss@10.0.0.1:7000/3").expect("parses");
        assert!(
            matches!(&e.target, Target::Direct { host, port } if host == "10.0.0.1" && *port == 7000)
        );
        assert_eq!(e.redis.db(), 3);
        assert_eq!(e.redis.username(), Some("u"));
        assert_eq!(e.redis.password(), Some("p@ss"));
        assert!(e.is_tls());
        let e = parse("redis://[::1]:6380").expect("parses");
        assert!(
            matches!(&e.target, Target::Direct { host, port } if host == "::1" && *port == 6380)
        );
        let e = parse("redis://:only@h?db=2").expect("parses");
        assert_eq!(e.redis.username(), None);
        assert_eq!(e.redis.password(), Some("only"));
        assert_eq!(e.redis.db(), 2);
    }

    #[test]
    fn sentinel_urls_name_their_sentinels_and_service() {
        let e = parse(
            "redis+sentinel://:secret@s1:26379,s2,[::1]:26380/mymaster/1?sentinel_password=sp",
        )
        .expect("parses");
        let Target::Sentinel { sentinels, service } = &e.target else {
            panic!("not a sentinel target");
        };
        assert_eq!(
            sentinels,
            &vec![
                ("s1".to_owned(), 26379),
                ("s2".to_owned(), 26379),
                ("::1".to_owned(), 26380)
            ]
        );
        assert_eq!(service, "mymaster");
        assert_eq!(e.redis.db(), 1);
        assert_eq!(e.redis.password(), Some("secret"));
        assert_eq!(e.sentinel_auth.password(), Some("sp"));
        assert!(e.is_sentinel());
    }

    #[test]
    fn bad_urls_are_refused_with_a_reason() {
        for (url, reason) in [
            ("http://h", "unknown scheme"),
            ("localhost:6379", "expected redis://"),
            ("redis://", "host is missing"),
            ("redis://h:0", "not a port"),
            ("redis://h:99999", "not a port"),
            ("redis://h/x", "not a database"),
            ("redis://h/1/2", "unexpected path"),
            ("redis://a,b", "redis+sentinel"),
            ("redis+sentinel://s1,s2", "service name is missing"),
            ("redis://h?tls=1", "unknown parameter"),
            ("redis://h?sentinel_password=x", "unknown parameter"),
            ("redis://h/#insecure", "fragments"),
        ] {
            let err = parse(url).expect_err(url).to_string();
            assert!(err.contains(reason), "{url}: {err}");
        }
    }

    #[test]
    fn passwords_never_show() {
        let url = "redis+sentinel://user:hunter2@s1,s2/svc?sentinel_password=swordfish";
        let e = parse(url).expect("parses");
        for text in [format!("{e}"), format!("{e:?}")] {
            assert!(
                !text.contains("hunter2") && !text.contains("swordfish"),
                "{text}"
            );
            assert!(text.contains("user:***@s1,s2/svc"), "{text}");
        }
        let err = parse("redis://user:hunter2@h:bad")
            .expect_err("bad port")
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn a_ca_file_needs_tls_and_a_certificate() {
        let dir = std::env::temp_dir().join(format!("herald-endpoint-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").expect("write");
        let err = RedisEndpoint::parse("redis://h", Some(&empty)).expect_err("plain");
        assert!(err.to_string().contains("needs a TLS URL"), "{err}");
        let err = RedisEndpoint::parse("rediss://h", Some(&empty)).expect_err("empty");
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        let missing = dir.join("missing.pem");
        let err = RedisEndpoint::parse("rediss://h", Some(&missing)).expect_err("missing");
        assert!(err.to_string().contains("missing.pem"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
