//! A real `redis-server` for tests (feature `test-support`): started on a
//! free loopback port in a temporary directory, with no persistence, and
//! killed when dropped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian installs the server.
pub const REDIS_SERVER: &str = "/usr/bin/redis-server";
/// How long a started server gets to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running (or stopped, to be started again on the same port) `redis-server`.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port.
    ///
    /// # Panics
    /// When `/usr/bin/redis-server` is missing or does not start: a test
    /// cannot go on without it.
    pub fn start() -> Self {
        assert!(
            Path::new(REDIS_SERVER).exists(),
            "{REDIS_SERVER} is missing: install Debian's redis-server (apt-get install redis-server)"
        );
        let mut dir = tempfile::Builder::new()
            .prefix("herald-cluster-redis-")
            .tempdir()
            .expect("a temporary directory for redis-server");
        // A port just freed may be taken by someone else before redis binds
        // it: try a few.
        for _ in 0..5 {
            let port = free_port();
            let mut server = Self {
                port,
                dir,
                child: None,
            };
            if server.spawn() {
                return server;
            }
            dir = server.into_dir();
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    fn into_dir(mut self) -> tempfile::TempDir {
        self.kill();
        let dir = tempfile::Builder::new()
            .prefix("herald-cluster-redis-")
            .tempdir()
            .expect("a temporary directory for redis-server");
        std::mem::replace(&mut self.dir, dir)
    }

    /// Starts the process on this server's port; whether it then accepts connections.
    fn spawn(&mut self) -> bool {
        let child = Command::new(REDIS_SERVER)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let started = Instant::now();
        while started.elapsed() < START_TIMEOUT {
            if let Some(child) = &mut self.child {
                if let Ok(Some(_)) = child.try_wait() {
                    self.child = None;
                    return false;
                }
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL: nothing is saved, it has nothing to save).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
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
        let child = self.child.as_ref().expect("redis-server is running");
        let status = Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} failed");
    }

    /// Starts it again on the same port, empty.
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
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // SIGKILL ends a frozen one too.
        self.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
