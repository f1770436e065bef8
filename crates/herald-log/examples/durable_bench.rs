//! Figures for the durable log (a benchmark, not a test):
//! acknowledged appends/s and ack latency for `Process` and `Fsync`
//! durability (1 appender, 64 concurrent appenders, batches of 100), the
//! time to open and to resume 1,000,000 events back from disk, and the disk
//! bytes per 100-byte event.
//!
//! ```text
//! cargo run --release -p herald-log --example durable_bench -- [--dir /tmp/x] [--quick]
//! ```
//!
//! Data directories are made under `--dir` (default: the system temp dir)
//! and removed afterwards.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_core::{EventId, EventLog, Filter, NewEvent, Position, Topic};
use herald_log::{Durability, DurableLog, DurableOptions, Retention};

/// 100 bytes of data, as in the question "disk bytes per 100-byte event".
fn event(i: u64) -> NewEvent {
    NewEvent {
        topics: vec![Topic::new("bench/topic").unwrap()],
        broadcast: false,
        event_type: None,
        data: format!("{i:0>100}"),
        retry: None,
        idempotency_key: None,
    }
}

fn options(durability: Durability, cache_events: usize) -> DurableOptions {
    DurableOptions {
        retention: Retention {
            max_events: 10_000_000,
            max_bytes: 8 << 30,
            ..Retention::default()
        },
        durability,
        cache_events,
        ..DurableOptions::default()
    }
}

/// A fresh directory under `base`, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(base: &Path, name: &str) -> Self {
        let path = base.join(format!(
            "herald-durable-bench-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        Self(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Run {
    events: u64,
    elapsed: Duration,
    latencies_us: Vec<u32>,
}

fn pct(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `tasks` appenders, each appending batches of `batch` until `total`
/// events are acknowledged or `budget` has passed.
async fn appenders(
    log: Arc<DurableLog>,
    tasks: usize,
    batch: usize,
    total: u64,
    budget: Duration,
) -> Run {
    let start = Instant::now();
    let deadline = start + budget;
    let per_task = total / tasks as u64;
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let log = log.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut done = 0u64;
                while done < per_task && Instant::now() < deadline {
                    let events = (0..batch as u64)
                        .map(|i| event(t as u64 * per_task + done + i))
                        .collect();
                    let at = Instant::now();
                    let r = log.append(events).await.unwrap();
                    latencies.push(at.elapsed().as_micros() as u32);
                    done += r.len() as u64;
                }
                (done, latencies)
            })
        })
        .collect();
    let mut run = Run {
        events: 0,
        elapsed: Duration::ZERO,
        latencies_us: Vec::new(),
    };
    for h in handles {
        let (done, latencies) = h.await.unwrap();
        run.events += done;
        run.latencies_us.extend(latencies);
    }
    run.elapsed = start.elapsed();
    run.latencies_us.sort_unstable();
    run
}

fn report(label: &str, run: &Run) {
    println!(
        "{label:<44} {:>10.0} events/s  ack p50 {:>6} us  p99 {:>6} us  ({} events in {:.2} s)",
        run.events as f64 / run.elapsed.as_secs_f64(),
        pct(&run.latencies_us, 0.50),
        pct(&run.latencies_us, 0.99),
        run.events,
        run.elapsed.as_secs_f64(),
    );
}

async fn throughput(base: &Path, durability: Durability, quick: bool) {
    let name = format!("{durability:?}");
    let (scale, budget) = match (durability, quick) {
        (Durability::Process, false) => (1u64, Duration::from_secs(10)),
        (Durability::Process, true) => (10, Duration::from_secs(2)),
        (Durability::Fsync, false) => (10, Duration::from_secs(5)),
        (Durability::Fsync, true) => (100, Duration::from_secs(2)),
    };
    for (label, tasks, batch, total) in [
        ("1 appender, batches of 1", 1, 1, 200_000 / scale),
        ("64 appenders, batches of 1", 64, 1, 1_000_000 / scale),
        ("1 appender, batches of 100", 1, 100, 2_000_000 / scale),
        ("64 appenders, batches of 100", 64, 100, 4_000_000 / scale),
    ] {
        let dir = Scratch::new(base, &format!("{name}-{tasks}-{batch}"));
        let log = Arc::new(DurableLog::open(&dir.0, options(durability, 100_000)).unwrap());
        let run = appenders(log.clone(), tasks, batch, total, budget).await;
        report(&format!("{name}: {label}"), &run);
    }
}

async fn resume(base: &Path, quick: bool) {
    let back: u64 = if quick { 200_000 } else { 1_000_000 };
    let dir = Scratch::new(base, "resume");
    let fill = Instant::now();
    let ids = {
        let log = DurableLog::open(&dir.0, options(Durability::Process, 1000)).unwrap();
        let mut first = None;
        let mut written = 0u64;
        while written < back + 10_000 {
            let r = log
                .append((0..1000).map(|i| event(written + i)).collect())
                .await
                .unwrap();
            first.get_or_insert(r[0].id);
            written += r.len() as u64;
        }
        let bytes = log.disk_bytes();
        println!(
            "filled {written} events of 100 data bytes in {:.2} s: {} disk bytes, {:.1} bytes per event",
            fill.elapsed().as_secs_f64(),
            bytes,
            bytes as f64 / written as f64
        );
        (first.unwrap_or(EventId(0)), written)
    };
    let (first, written) = ids;
    let opened = Instant::now();
    let log = DurableLog::open(&dir.0, options(Durability::Process, 1000)).unwrap();
    println!(
        "open (recovery scan of {} events, {} segments): {:.0} ms",
        log.recovery_report().events,
        log.recovery_report().segments,
        opened.elapsed().as_secs_f64() * 1000.0
    );
    // Ids are consecutive here: the resume point is `back` events before the end.
    let from = EventId(first.0 + written - back - 1);
    for limit in [128usize, 1024] {
        let start = Instant::now();
        let mut position = Position::After(from);
        let mut got = 0u64;
        let mut pages = 0u64;
        let filter = Filter::everything();
        loop {
            let b = log.read_after(position, &filter, limit).await.unwrap();
            got += b.events.len() as u64;
            pages += 1;
            if b.reached_end {
                break;
            }
            position = Position::After(b.scanned_to.unwrap());
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "resume {back} events back from disk, pages of {limit:>4}: {got} events in {:.0} ms ({pages} pages, {:.0} events/s)",
            secs * 1000.0,
            got as f64 / secs
        );
    }
}

fn main() {
    let mut base = std::env::temp_dir();
    let mut quick = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--dir" => base = PathBuf::from(args.next().unwrap()),
            "--quick" => quick = true,
            other => {
                eprintln!("unknown argument {other}; usage: durable_bench [--dir DIR] [--quick]");
                std::process::exit(64);
            }
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "durable log benchmark: {} cores, data under {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        base.display()
    );
    runtime.block_on(async {
        throughput(&base, Durability::Process, quick).await;
        throughput(&base, Durability::Fsync, quick).await;
        resume(&base, quick).await;
    });
}
