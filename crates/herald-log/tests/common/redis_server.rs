//! What the Redis log's tests add on top of the real servers of
//! [`herald_log::redis::testing`]: one server shared by a whole test
//! binary, prefixes no other log of the process uses, and a [`RedisLog`]
//! on a server.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use herald_log::redis::testing::RedisServer;
use herald_log::redis::{RedisLog, RedisOptions};
use herald_log::Retention;

/// One server for a whole test binary (the conformance suite: every log
/// has its own prefix on it). It lives until the process ends; the wrapper
/// then kills it.
pub fn shared_server() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(RedisServer::start_until_exit)
}

/// A prefix no other log of this process uses.
pub fn unique_prefix(what: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{what}-{}-{n}", std::process::id())
}

/// A [`RedisLog`] on `server` with its own prefix and `retention`.
pub fn redis_log(server: &RedisServer, retention: Retention) -> Arc<RedisLog> {
    let options = RedisOptions {
        retention,
        prefix: unique_prefix("t"),
        ..RedisOptions::default()
    };
    Arc::new(RedisLog::new(server.endpoint(), options))
}
