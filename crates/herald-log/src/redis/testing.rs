//! Real `redis-server` processes for tests (feature `test-support`): the
//! Redis log's own tests, cluster presence's and the HTTP routes over a
//! cluster all start their servers through [`RedisServer`].
//!
//! Invariants:
//! - Every server listens on 127.0.0.1 only, on a port free when it was
//!   picked (a start retries a few ports, since another process may take a
//!   freed port before the server binds it), in its own temporary directory.
//! - Each server runs under a small `sh` wrapper that holds a pipe from the
//!   test process on its stdin: when the test process ends, however it ends
//!   (a panic, an abort, a kill), the pipe closes and the wrapper kills the
//!   server, so no test leaves a `redis-server` behind. Dropping a
//!   [`RedisServer`] kills it too (a frozen one as well: `kill -9` ends a
//!   stopped process) and removes its directory.
//! - A start returns only once the server answers (`PING`, or accepts TCP
//!   for a TLS-only server); a server that does not fails the test with
//!   where its log is.
//! - [`RedisServer::restart`] starts it again on the same port and
//!   directory, so a server with an AOF comes back with its data and one
//!   without comes back empty.
//!
//! The server's output goes to `redis.log` in its directory.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::RedisEndpoint;

/// Where Debian puts the server.
pub const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// How long a started server gets to answer.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How many free ports a start tries.
const START_TRIES: usize = 5;

/// No RDB snapshots, no AOF: the server keeps nothing across a restart.
const NO_PERSISTENCE: [&str; 4] = ["--save", "", "--appendonly", "no"];

/// A running (or killed, to be started again on the same port)
/// `redis-server` on 127.0.0.1.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    /// Arguments after `--port`, `--bind` and `--dir`.
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
    /// The server's own pid (not the wrapper's), for signals.
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

/// Sends one inline command to the server on `port` and returns the first
/// reply line.
pub fn command(port: u16, line: &str) -> std::io::Result<String> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(format!("{line}\r\n").as_bytes())?;
    let mut reply = String::new();
    BufReader::new(&mut stream).read_line(&mut reply)?;
    Ok(reply.trim_end().to_owned())
}

/// One field of `INFO` (e.g. `connected_slaves`) of the server on `port`,
/// `None` if it does not answer or has no such field.
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
    reader.read_exact(&mut body).ok()?;
    let body = String::from_utf8_lossy(&body);
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(str::to_owned)
}

impl RedisServer {
    /// A server without persistence.
    ///
    /// # Panics
    /// When `/usr/bin/redis-server` is missing or does not start (as every
    /// `start…`): a test cannot go on without it.
    pub fn start() -> Self {
        Self::start_with(&NO_PERSISTENCE)
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

    /// A server with `extra` arguments.
    pub fn start_with(extra: &[&str]) -> Self {
        Self::new(extra).spawn_on_a_free_port("redis-server")
    }

    /// A server without persistence on `port` (one the caller chose).
    pub fn start_on(port: u16) -> Self {
        let mut server = Self::new(&NO_PERSISTENCE);
        server.port = port;
        assert!(server.spawn(), "redis-server did not start on port {port}");
        server
    }

    /// A server without persistence for a `static`, which is never dropped:
    /// it lives until the test process ends, and then the wrapper removes
    /// its directory as well as killing it.
    pub fn start_until_exit() -> Self {
        let mut server = Self::new(&NO_PERSISTENCE);
        server.remove_dir_at_exit = true;
        server.spawn_on_a_free_port("redis-server")
    }

    /// A server that speaks only TLS, with `cert` and `key` (PEM files),
    /// not asking clients for certificates.
    pub fn start_tls(cert: &Path, key: &Path) -> Self {
        let mut server = Self::new(&[]);
        for _ in 0..START_TRIES {
            server.port = free_port();
            let port = server.port.to_string();
            server.args = NO_PERSISTENCE
                .iter()
                .chain(&["--port", "0", "--tls-port", &port])
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
            "redis-server (TLS) did not start ({START_TRIES} tries; see its log in {})",
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
        server.spawn_on_a_free_port("redis-sentinel")
    }

    fn new(extra: &[&str]) -> Self {
        assert!(
            Path::new(REDIS_SERVER).exists(),
            "{REDIS_SERVER} is missing: these tests start real Redis servers (scripts/test installs redis-server; or apt-get install redis-server)"
        );
        let dir =
            std::env::temp_dir().join(format!("herald-redis-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        Self {
            port: 0,
            dir,
            args: extra.iter().map(|s| (*s).to_owned()).collect(),
            process: None,
            config_file: None,
            remove_dir_at_exit: false,
        }
    }

    /// Tries free ports until the server answers on one.
    fn spawn_on_a_free_port(mut self, what: &str) -> Self {
        for _ in 0..START_TRIES {
            self.port = free_port();
            if self.spawn() {
                return self;
            }
        }
        panic!(
            "{what} did not start ({START_TRIES} tries; see its log in {})",
            self.dir.display()
        );
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
        let tls_only = self.args.iter().any(|a| a == "--tls-port");
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            let answers = if tls_only {
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

    /// `kill -9` the server (a crash; nothing is saved but what its AOF
    /// already holds); [`RedisServer::restart`] starts it again.
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
    /// (so with its AOF, if it keeps one; empty otherwise).
    ///
    /// # Panics
    /// When it does not start (the port was taken meanwhile).
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn(),
            "redis-server did not start again on port {}",
            self.port
        );
    }

    /// Stops the process (SIGSTOP): connections stay open and nothing
    /// answers, as with a wedged server or a network that drops packets.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen server go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let running = self.process.as_ref().expect("redis-server is running");
        let status = Command::new("kill")
            .arg(signal)
            .arg(running.pid.to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} failed");
    }

    /// The server's port (kept across [`RedisServer::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's directory (its AOF, its log, a sentinel's
    /// configuration).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// [`RedisServer::url`] as the event log's endpoint.
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
