//! `herald bench conns`: hold N idle streams; the server's RSS per stream.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use tokio::sync::{watch, Semaphore};

use super::client::{SseConn, Target};

/// Read buffer per idle stream: it only ever sees heartbeats.
const IDLE_BUF: usize = 256;

/// Flags of `herald bench conns`.
#[derive(Debug, Args)]
pub(crate) struct ConnsArgs {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "HERALD_URL")]
    url: String,
    /// Streams to open.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Seconds to hold the streams open after the measurement.
    #[arg(long, default_value_t = 5)]
    hold_secs: u64,
    /// The server's process id, to read its VmRSS from /proc.
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// Streams being opened at the same time.
    #[arg(long, default_value_t = 64)]
    open_concurrency: usize,
    /// Topic the idle streams subscribe to.
    #[arg(long, default_value = "bench-idle")]
    topic: String,
    /// Give up opening after this many seconds.
    #[arg(long, default_value_t = 120)]
    open_timeout_secs: u64,
    /// Seconds to wait after opening before the second RSS reading.
    #[arg(long, default_value_t = 2)]
    settle_secs: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Per-stream timeout for connect + head + first bytes.
const OPEN_ONE_TIMEOUT: Duration = Duration::from_secs(15);

pub(crate) async fn run(args: ConnsArgs) -> anyhow::Result<()> {
    if args.connections == 0 || args.open_concurrency == 0 {
        bail!("--connections and --open-concurrency must be at least 1");
    }
    let target = Arc::new(Target::resolve(&args.url).await?);
    let path: Arc<str> = target.events_path(&args.topic)?.into();
    let rss_before = args.server_pid.map(read_rss_kib).transpose()?;

    let opened = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let closed_early = Arc::new(AtomicUsize::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let gate = Arc::new(Semaphore::new(args.open_concurrency));
    let (release_tx, release_rx) = watch::channel(false);
    // Hard bound on every task, whatever happens to the release signal.
    let hard_deadline = tokio::time::Instant::now()
        + Duration::from_secs(args.open_timeout_secs + args.settle_secs + args.hold_secs + 60);

    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.connections);
    for idx in 0..args.connections {
        let (target, path, gate) = (target.clone(), path.clone(), gate.clone());
        let (opened, failed, closed_early) = (opened.clone(), failed.clone(), closed_early.clone());
        let first_error = first_error.clone();
        let mut release = release_rx.clone();
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let result = tokio::time::timeout(
                OPEN_ONE_TIMEOUT,
                SseConn::open(&target, idx, &path, IDLE_BUF),
            )
            .await;
            drop(permit);
            let mut conn = match result {
                Ok(Ok((conn, _))) => conn,
                Ok(Err(err)) => {
                    record_error(&first_error, format!("{err:#}"));
                    failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(_) => {
                    record_error(&first_error, "timed out opening".into());
                    failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            opened.fetch_add(1, Ordering::Relaxed);
            let hold = async {
                loop {
                    tokio::select! {
                        more = conn.read_some(|_| {}) => {
                            if !matches!(more, Ok(true)) {
                                closed_early.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                        }
                        _ = release.changed() => return,
                    }
                }
            };
            let _ = tokio::time::timeout_at(hard_deadline, hold).await;
        }));
    }

    let open_deadline = Instant::now() + Duration::from_secs(args.open_timeout_secs);
    let mut last_report = Instant::now();
    while opened.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < args.connections
        && Instant::now() < open_deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if last_report.elapsed() >= Duration::from_secs(2) {
            last_report = Instant::now();
            eprintln!(
                "bench: {} open, {} failed",
                opened.load(Ordering::Relaxed),
                failed.load(Ordering::Relaxed)
            );
        }
    }
    let open_secs = started.elapsed().as_secs_f64();
    let opened_n = opened.load(Ordering::Relaxed);
    let rss_open = args.server_pid.map(read_rss_kib).transpose()?;
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let rss_settled = args.server_pid.map(read_rss_kib).transpose()?;
    let server_connections = server_connections(&target).await;
    tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
    let still_open = opened.load(Ordering::Relaxed) - closed_early.load(Ordering::Relaxed);
    let failed_n = failed.load(Ordering::Relaxed);

    let _ = release_tx.send(true);
    let join_all = async {
        for task in tasks {
            let _ = task.await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(30), join_all)
        .await
        .is_err()
    {
        eprintln!("bench: some streams did not close within 30 s");
    }

    let per_conn = |after: Option<u64>| match (rss_before, after) {
        (Some(before), Some(after)) if opened_n > 0 => {
            Some((after as f64 - before as f64) / opened_n as f64)
        }
        _ => None,
    };
    let report = serde_json::json!({
        "connections": args.connections,
        "opened": opened_n,
        "failed": failed_n,
        "still_open_after_hold": still_open,
        "open_secs": round2(open_secs),
        "server_connections": server_connections,
        "rss_before_kib": rss_before,
        "rss_open_kib": rss_open,
        "rss_settled_kib": rss_settled,
        "rss_per_conn_kib": per_conn(rss_open).map(round2),
        "rss_per_conn_settled_kib": per_conn(rss_settled).map(round2),
    });
    if args.json {
        println!("{report}");
    } else {
        println!("streams requested        {}", args.connections);
        println!("opened / failed          {opened_n} / {failed_n}  (in {open_secs:.1} s)");
        println!("still open after hold    {still_open}");
        if let Some(n) = server_connections {
            println!("server /v1/stats conns   {n}");
        }
        if let (Some(before), Some(open), Some(settled)) = (rss_before, rss_open, rss_settled) {
            println!("server RSS before        {before} KiB");
            println!("server RSS all open      {open} KiB");
            println!("server RSS after settle  {settled} KiB");
            if let Some(per) = per_conn(Some(settled)) {
                println!("RSS per stream           {per:.2} KiB (settled)");
            }
        }
    }
    if let Ok(Some(err)) = first_error.lock().map(|e| e.clone()) {
        eprintln!("bench: first open error: {err}");
    }
    if failed_n > 0 {
        bail!("{failed_n} of {} streams failed to open", args.connections);
    }
    Ok(())
}

fn record_error(slot: &std::sync::Mutex<Option<String>>, err: String) {
    if let Ok(mut slot) = slot.lock() {
        slot.get_or_insert(err);
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// `VmRSS` of a process, in KiB.
fn read_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))
}

/// The server's own count of open streams, if it answers.
async fn server_connections(target: &Target) -> Option<u64> {
    let url = target.url("/v1/stats").ok()?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .ok()?;
    let stats: serde_json::Value = client.get(url).send().await.ok()?.json().await.ok()?;
    stats.get("connections")?.as_u64()
}
