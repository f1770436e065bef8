//! The real `herald` binary as the tests of this crate start it.

#![allow(dead_code)] // each test file uses its own part

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// How long any one wait in these tests may take before it is a failure.
pub const WAIT: Duration = Duration::from_secs(15);

/// A running `herald serve`; killed when dropped, even on panic.
pub struct Server {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Whether it speaks TLS (its listen line says `https://`).
    pub tls: bool,
    stderr: Arc<Mutex<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// `herald serve --dev --memory --listen 127.0.0.1:0 ARGS`; waits for its
    /// `herald listening on http(s)://…` line.
    pub fn start(args: &[String]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["serve", "--dev", "--memory", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting herald serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = kept.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        let (tx, rx) = mpsc::channel();
        // Reads the address, then keeps draining stdout so the server never blocks.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("herald listening on ") {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let url = rx
            .recv_timeout(WAIT)
            .expect("herald serve did not print its address");
        let (tls, addr) = match url.strip_prefix("https://") {
            Some(addr) => (true, addr),
            None => (false, url.strip_prefix("http://").unwrap_or(&url)),
        };
        let addr = addr.parse().expect("an address");
        Self {
            child,
            addr,
            tls,
            stderr: log,
        }
    }

    /// Everything it wrote to stderr so far.
    pub fn log(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Runs `herald serve --dev --memory --listen 127.0.0.1:0 ARGS` expecting it
/// to stop at start-up; returns its exit code and stderr.
pub fn serve_fails(args: &[String]) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--dev", "--memory", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting herald serve");
    let deadline = Instant::now() + WAIT;
    while child.try_wait().expect("waiting").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("herald serve {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("its output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !stdout.contains("listening"),
        "it must not listen with bad TLS options: {stdout}"
    );
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
