//! Real `redis-server` processes for the Redis log's tests.
//!
//! Each server runs under a small `sh` wrapper that holds a pipe from the
//! test process on its stdin: when the test process ends, however it ends
//! (a panic, an abort, a kill), the pipe closes and the wrapper kills the
//! server, so no test leaves a `redis-server` behind. [`RedisServer`] also
//! kills it on drop, and can kill it (`kill -9`) and start it again on the
//! same port and directory to simulate a crash.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use herald_log::redis::{RedisEndpoint, RedisLog, RedisOptions};
use herald_log::Retention;

/// Where Debian puts the server.
pub const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// A running `redis-server` on 127.0.0.1.
#[derive(Debug)]
pub struct RedisServer {
    pub port: u16,
    pub dir: PathBuf,
    args: Vec<String>,
    process: Option<Running>,
    /// A configuration file given first (a sentinel's, which it rewrites).
    config_file: Option<PathBuf>,
    /// Whether the wrapper removes `dir` when the test process ends (for a
    /// server that is never dropped).
    remove_dir_at_exit: bool,
}

#[derive(Debug)]
struct Running {
    wrapper: Child,
    /// Held open: closing it makes the wrapper kill the server.
    stdin: ChildStdin,
    pid: u32,
}

fn unique() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// Sends one inline command and returns the first reply line.
pub fn command(port: u16, line: &str) -> std::io::Result<String> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(format!("{line}\r\n").as_bytes())?;
    let mut reply = String::new();
    BufReader::new(&mut stream).read_line(&mut reply)?;
    Ok(reply.trim_end().to_owned())
}

/// One field of `INFO` (e.g. `connected_slaves`), `None` if Redis does
/// not answer or has no such field.
pub fn info(port: u16, field: &str) -> Option<String> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(b"INFO\r\n").ok()?;
    let mut reader = BufReader::new(stream);
    let mut header = String::new();
    reader.read_line(&mut header).ok()?;
    let len: usize = header.trim_end().strip_prefix('$')?.parse().ok()?;
    let mut body = vec![0; len];
    std::io::Read::read_exact(&mut reader, &mut body).ok()?;
    let body = String::from_utf8_lossy(&body);
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(str::to_owned)
}

impl RedisServer {
    /// A server without persistence.
    pub fn start() -> Self {
        Self::start_with(&["--save", "", "--appendonly", "no"])
    }

    /// A server whose every write is in its AOF before it answers.
    pub fn start_with_aof() -> Self {
        Self::start_with(&[
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ])
    }

    /// A server without persistence on `port`.
    pub fn start_on(port: u16) -> Self {
        let mut server = Self::new(&["--save", "", "--appendonly", "no"]);
        server.port = port;
        assert!(server.spawn(), "redis-server did not start on port {port}");
        server
    }

    /// A server that speaks only TLS, with `cert` and `key` (PEM files),
    /// not asking clients for certificates.
    pub fn start_tls(cert: &Path, key: &Path) -> Self {
        let mut server = Self::new(&[]);
        for _ in 0..5 {
            server.port = free_port();
            let port = server.port.to_string();
            server.args = [
                "--save",
                "",
                "--appendonly",
                "no",
                "--port",
                "0",
                "--tls-port",
                &port,
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .chain(["--tls-cert-file".to_owned(), cert.display().to_string()])
            .chain(["--tls-key-file".to_owned(), key.display().to_string()])
            .chain(["--tls-auth-clients".to_owned(), "no".to_owned()])
            .collect();
            if server.spawn() {
                return server;
            }
        }
        panic!(
            "redis-server (TLS) did not start (5 tries; see its log in {})",
            server.dir.display()
        );
    }

    /// A sentinel watching the primary on `primary_port` as `service`
    /// (quorum 2, down after 1 s).
    pub fn start_sentinel(primary_port: u16, service: &str) -> Self {
        let mut server = Self::new(&["--sentinel"]);
        let conf = server.dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "sentinel monitor {service} 127.0.0.1 {primary_port} 2\n\
                 sentinel down-after-milliseconds {service} 1000\n\
                 sentinel failover-timeout {service} 10000\n\
                 sentinel parallel-syncs {service} 1\n"
            ),
        )
        .expect("the sentinel's configuration");
        server.config_file = Some(conf);
        for _ in 0..5 {
            server.port = free_port();
            if server.spawn() {
                return server;
            }
        }
        panic!(
            "redis-sentinel did not start (5 tries; see its log in {})",
            server.dir.display()
        );
    }

    /// A server with `extra` arguments, in its own temporary directory.
    pub fn start_with(extra: &[&str]) -> Self {
        let mut server = Self::new(extra);
        for _ in 0..5 {
            server.port = free_port();
            if server.spawn() {
                return server;
            }
        }
        panic!(
            "redis-server did not start (5 tries; see its log in {})",
            server.dir.display()
        );
    }

    fn new(extra: &[&str]) -> Self {
        assert!(
            Path::new(REDIS_SERVER).exists(),
            "{REDIS_SERVER} is missing: these tests start real Redis servers (scripts/test installs redis-server; or apt-get install redis-server)"
        );
        let dir = std::env::temp_dir().join(format!(
            "herald-log-redis-{}-{}",
            std::process::id(),
            unique()
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        Self {
            port: 0,
            dir,
            args: extra.iter().map(|s| (*s).to_owned()).collect(),
            process: None,
            remove_dir_at_exit: false,
            config_file: None,
        }
    }

    /// Starts the server on its port and directory; true once it answers.
    fn spawn(&mut self) -> bool {
        let log = self.dir.join("redis.log");
        let mut wrapper = Command::new("sh")
            .arg("-c")
            // The server's pid on stdout; then wait for stdin to close.
            .arg(r#"exec 3<&0; "$0" "$@" </dev/null >>"$LOG" 2>&1 & echo $!; read _ <&3; kill -9 $! 2>/dev/null; wait; if [ -n "$REMOVE_DIR" ]; then rm -rf "$REMOVE_DIR"; fi"#)
            .arg(REDIS_SERVER)
            .args(&self.config_file)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--dir"])
            .arg(&self.dir)
            .args(&self.args)
            .env("LOG", &log)
            .env(
                "REMOVE_DIR",
                if self.remove_dir_at_exit {
                    self.dir.as_os_str()
                } else {
                    std::ffi::OsStr::new("")
                },
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("sh runs");
        let stdin = wrapper.stdin.take().expect("piped stdin");
        let mut line = String::new();
        let stdout = wrapper.stdout.take().expect("piped stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the wrapper prints the server's pid");
        let pid: u32 = line.trim().parse().expect("a pid");
        self.process = Some(Running {
            wrapper,
            stdin,
            pid,
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let answers = if self.args.iter().any(|a| a == "--tls-port") {
                let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            } else {
                command(self.port, "PING").is_ok_and(|r| r == "+PONG")
            };
            if answers {
                return true;
            }
            if !Path::new(&format!("/proc/{pid}")).exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }

    /// `kill -9` the server (a crash); [`RedisServer::restart`] starts it
    /// again.
    pub fn kill(&mut self) {
        if let Some(running) = self.process.take() {
            let Running {
                mut wrapper,
                stdin,
                pid,
            } = running;
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            // The wrapper reaps the server and exits once its stdin closes.
            drop(stdin);
            let deadline = Instant::now() + Duration::from_secs(5);
            while wrapper.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = wrapper.kill();
            let _ = wrapper.wait();
        }
    }

    /// Starts the server again on the same port, with the same directory
    /// (so with its AOF, if it keeps one).
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn(),
            "redis-server did not start again on port {}",
            self.port
        );
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn endpoint(&self) -> RedisEndpoint {
        RedisEndpoint::parse(&self.url(), None).expect("a valid URL")
    }

    /// Sends one inline command, panicking on failure.
    pub fn cmd(&self, line: &str) -> String {
        command(self.port, line).unwrap_or_else(|e| panic!("`{line}` on port {}: {e}", self.port))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One server for a whole test binary (the conformance suite: every log
/// has its own prefix on it). It lives until the process ends; the wrapper
/// then kills it.
pub fn shared_server() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let mut server = RedisServer::new(&["--save", "", "--appendonly", "no"]);
        server.remove_dir_at_exit = true;
        for _ in 0..5 {
            server.port = free_port();
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start (5 tries)");
    })
}

/// A prefix no other log of this process uses.
pub fn unique_prefix(what: &str) -> String {
    format!("{what}-{}-{}", std::process::id(), unique())
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
