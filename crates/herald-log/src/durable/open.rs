//! Opening a data directory: the lock, recovery of every segment, the
//! idempotency keys and the cache, then the writer thread.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{mpsc, Arc};

use herald_core::{now_ms, Event, EventId, FrameArena};
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use super::fs::Filesystem;
use super::read::event_of;
use super::record::{decode, Cursor, Next, MAGIC, SEGMENT_HEADER};
use super::segment::{parse_segment_name, SegMeta, Segment};
use super::writer::Writer;
use super::{
    Durability, DurableError, DurableLog, DurableOptions, RecoveryReport, Run, Shared, Tail,
    MIN_SEGMENT_BYTES,
};
use crate::idempotency::IdempotencyKeys;
use crate::ids;
use crate::names::Names;

/// What scanning the segments produced.
#[derive(Debug, Default)]
struct Scanned {
    segments: BTreeMap<u64, Arc<Segment>>,
    last_id: Option<u64>,
    /// The largest segment name seen, quarantined ones included: ids must
    /// stay above it even if its records are unreadable.
    max_name: u64,
    keys: IdempotencyKeys,
    /// The ids found, as runs of consecutive ids.
    runs: VecDeque<Run>,
    report: RecoveryReport,
}

pub(super) fn open(
    dir: &Path,
    options: DurableOptions,
    fs: Arc<dyn Filesystem>,
) -> Result<DurableLog, DurableError> {
    let io = DurableError::io;
    fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let lock = lock_dir(dir)?;
    let seg_dir = dir.join("segments");
    fs::create_dir_all(&seg_dir).map_err(io(format!("creating {}", seg_dir.display())))?;
    let sync = options.durability == Durability::Fsync;

    let mut scanned = scan_segments(&seg_dir, &options)?;
    // After a cut the ids of the dropped records may have been acknowledged
    // (a damaged record mid-log) and seen by clients, so they jump to the
    // clock (see `crate::ids`); and ids stay above every segment name, set
    // aside ones included.
    let repaired = scanned.report.dropped_bytes > 0;
    let next_id = ids::start_id(scanned.last_id, repaired).max(scanned.max_name);
    if scanned.segments.is_empty() {
        let seg = Segment::create(&*fs, &seg_dir, next_id, sync)
            .map_err(io(format!("creating a segment in {}", seg_dir.display())))?;
        scanned.segments.insert(next_id, Arc::new(seg));
    }
    let report = &mut scanned.report;
    report.segments = scanned.segments.len();
    report.last_id = scanned.last_id.map(EventId);
    report.first_id = scanned
        .segments
        .values()
        .find_map(|s| s.meta.read().first)
        .map(EventId);
    if sync && !report.notes.is_empty() {
        fs.sync_dir(&seg_dir)
            .map_err(io(format!("syncing {}", seg_dir.display())))?;
    }
    for note in &report.notes {
        tracing::warn!("recovery: {note}");
    }
    tracing::info!(
        dir = %dir.display(),
        segments = report.segments,
        events = report.events,
        dropped_bytes = report.dropped_bytes,
        "opened the durable event log"
    );

    let mut names = Names::default();
    let mut arena = FrameArena::new();
    let events = load_cache(
        &scanned.segments,
        options.cache_events,
        &mut names,
        &mut arena,
    )
    .map_err(io(format!(
        "reading the newest events in {}",
        seg_dir.display()
    )))?;
    let floor = scanned.report.first_id.map_or(next_id, |id| id.0);
    let mut tail = Tail {
        events,
        cache_from: next_id,
        next_id,
        runs: std::mem::take(&mut scanned.runs),
    };
    tail.reset_cache_from();
    let active = scanned
        .segments
        .values()
        .next_back()
        .cloned()
        .ok_or_else(|| DurableError::Io {
            context: format!("opening {}", seg_dir.display()),
            source: std::io::Error::other("no active segment"),
        })?;
    let max_bytes = options.retention.max_bytes as u64;
    let shared = Arc::new(Shared {
        fs,
        seg_dir,
        retention: options.retention,
        durability: options.durability,
        segment_bytes: options
            .segment_bytes
            .min(max_bytes / 8)
            .max(MIN_SEGMENT_BYTES),
        cache_events: options.cache_events,
        segments: RwLock::new(scanned.segments),
        tail: RwLock::new(tail),
        floor: AtomicU64::new(floor),
        head: watch::channel(scanned.last_id.map(EventId)).0,
        writer_alive: AtomicBool::new(true),
        write_error: Mutex::new(None),
    });
    let (tx, rx) = mpsc::channel();
    let writer = Writer {
        shared: shared.clone(),
        rx,
        active,
        next_id,
        keys: scanned.keys,
        names,
        arena,
        poisoned: None,
    };
    let writer = std::thread::Builder::new()
        .name("herald-log-writer".into())
        .spawn(move || writer.run())
        .map_err(io("starting the log writer thread".to_owned()))?;
    let log = DurableLog {
        shared,
        tx: Some(tx),
        writer: Some(writer),
        report: scanned.report,
        _lock: lock,
    };
    log.trim();
    Ok(log)
}

/// Takes `DIR/LOCK` for the life of the log; writes our pid in it for
/// whoever wonders which process holds it.
fn lock_dir(dir: &Path) -> Result<File, DurableError> {
    let path = dir.join("LOCK");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(DurableError::io(format!("opening {}", path.display())))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Err(DurableError::Locked(dir.to_path_buf())),
        Err(TryLockError::Error(source)) => {
            return Err(DurableError::Io {
                context: format!("locking {}", path.display()),
                source,
            })
        }
    }
    let pid = format!("{}\n", std::process::id());
    file.set_len(0)
        .and_then(|()| file.write_all(pid.as_bytes()))
        .map_err(DurableError::io(format!("writing {}", path.display())))?;
    Ok(file)
}

/// Validates every record of every segment, cutting damaged tails.
fn scan_segments(seg_dir: &Path, options: &DurableOptions) -> Result<Scanned, DurableError> {
    let io = DurableError::io;
    let mut files: Vec<(u64, PathBuf)> = Vec::new();
    let entries = fs::read_dir(seg_dir).map_err(io(format!("listing {}", seg_dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(io(format!("listing {}", seg_dir.display())))?;
        let name = entry.file_name();
        if let Some(first_id) = name.to_str().and_then(parse_segment_name) {
            files.push((first_id, entry.path()));
        }
    }
    files.sort_unstable();

    let now = now_ms();
    let window_ms = options.retention.idempotency_window.as_millis() as u64;
    let mut out = Scanned::default();
    for (i, (first_id, path)) in files.iter().enumerate() {
        let first_id = *first_id;
        out.max_name = out.max_name.max(first_id);
        let is_last = i + 1 == files.len();
        let next_name = files.get(i + 1).map(|(id, _)| *id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io(format!("opening {}", path.display())))?;
        let mut magic = [0u8; MAGIC.len()];
        if file.read_exact_at(&mut magic, 0).is_err() || &magic != MAGIC {
            quarantine(path, &mut out.report)?;
            continue;
        }
        let file_len = file
            .metadata()
            .map_err(io(format!("reading {}", path.display())))?
            .len();
        let mut meta = SegMeta::default();
        let mut cursor = Cursor::new(&file, SEGMENT_HEADER, file_len);
        let cut = loop {
            let offset = match cursor
                .next()
                .map_err(io(format!("reading {}", path.display())))?
            {
                Next::End => break None,
                Next::Bad { offset, reason } => break Some((offset, reason)),
                Next::Record { offset } => offset,
            };
            let Some(view) = decode(cursor.body()) else {
                break Some((offset, "record does not decode"));
            };
            // Ids must increase across the whole log and stay within the
            // range the file names give this segment.
            if view.id < first_id
                || out.last_id.is_some_and(|last| view.id <= last)
                || next_name.is_some_and(|next| view.id >= next)
            {
                break Some((offset, "record id out of order"));
            }
            meta.push(
                view.id,
                offset,
                cursor.pos() - offset,
                view.stored_at_s,
                view.key.is_some(),
            );
            match out.runs.back_mut() {
                Some(run) if run.first + run.len == view.id => run.len += 1,
                _ => out.runs.push_back(Run {
                    first: view.id,
                    len: 1,
                }),
            }
            out.last_id = Some(view.id);
            out.report.events += 1;
            if let Some(key) = view.key {
                let at_ms = u64::from(view.stored_at_s) * 1000;
                if now.saturating_sub(at_ms) <= window_ms {
                    out.keys.insert(key.to_owned(), EventId(view.id), at_ms);
                }
            }
        };
        if let Some((offset, reason)) = cut {
            cut_at(
                &file, path, offset, file_len, reason, is_last, options, &mut out,
            )?;
        }
        if meta.count == 0 && !is_last {
            // Nothing readable left in it, and it is not where appends go.
            fs::remove_file(path).map_err(io(format!("removing {}", path.display())))?;
            out.report.notes.push(format!(
                "{}: no readable record left; removed",
                path.display()
            ));
            continue;
        }
        meta.len = meta.len.max(SEGMENT_HEADER);
        out.segments.insert(
            first_id,
            Arc::new(Segment {
                first_id,
                path: path.clone(),
                file,
                meta: RwLock::new(meta),
            }),
        );
    }
    Ok(out)
}

/// Cuts a segment at a damaged record and reports it.
#[allow(clippy::too_many_arguments)]
fn cut_at(
    file: &File,
    path: &Path,
    offset: u64,
    file_len: u64,
    reason: &str,
    is_last: bool,
    options: &DurableOptions,
    out: &mut Scanned,
) -> Result<(), DurableError> {
    let dropped = file_len - offset;
    file.set_len(offset)
        .map_err(DurableError::io(format!("truncating {}", path.display())))?;
    if options.durability == Durability::Fsync {
        file.sync_data()
            .map_err(DurableError::io(format!("syncing {}", path.display())))?;
    }
    let report = &mut out.report;
    if report.dropped_bytes == 0 {
        report.dropped_at_id = out.last_id.map(EventId);
    }
    report.dropped_bytes += dropped;
    let after = out
        .last_id
        .map_or_else(|| "the start".to_owned(), |id| format!("id {id}"));
    if is_last {
        tracing::warn!(
            file = %path.display(),
            offset,
            dropped_bytes = dropped,
            reason,
            "recovery: cut a torn write at the tail of the log; those bytes were never acknowledged"
        );
        report.notes.push(format!(
            "{}: cut {dropped} bytes at offset {offset} after {after} ({reason}); a torn write at the tail, never acknowledged",
            path.display()
        ));
    } else {
        tracing::error!(
            file = %path.display(),
            offset,
            dropped_bytes = dropped,
            reason,
            "recovery: DAMAGED RECORD IN THE MIDDLE OF THE LOG; the rest of this segment is lost (acknowledged events may be among it), later segments are kept and ids will have a hole"
        );
        report.notes.push(format!(
            "{}: cut {dropped} bytes at offset {offset} after {after} ({reason}); not the last segment: events there are lost and ids have a hole",
            path.display()
        ));
    }
    Ok(())
}

/// Renames a file that is not a segment of this format out of the way.
fn quarantine(path: &Path, report: &mut RecoveryReport) -> Result<(), DurableError> {
    let mut to = path.as_os_str().to_owned();
    to.push(".corrupt");
    let to = PathBuf::from(to);
    fs::rename(path, &to).map_err(DurableError::io(format!(
        "renaming {} to {}",
        path.display(),
        to.display()
    )))?;
    tracing::error!(
        file = %path.display(),
        renamed_to = %to.display(),
        "recovery: a segment file has no valid header; set it aside (its events are not served)"
    );
    report.notes.push(format!(
        "{}: missing or unknown format header; renamed to {}",
        path.display(),
        to.display()
    ));
    Ok(())
}

/// Decodes the newest `cache_events` records into events.
fn load_cache(
    segments: &BTreeMap<u64, Arc<Segment>>,
    cache_events: usize,
    names: &mut Names,
    arena: &mut FrameArena,
) -> std::io::Result<VecDeque<Arc<Event>>> {
    let total: u64 = segments.values().map(|s| s.meta.read().count).sum();
    let mut skip = total.saturating_sub(cache_events as u64);
    let mut events = VecDeque::new();
    for seg in segments.values() {
        let meta = seg.meta.read().clone();
        if skip >= meta.count {
            skip -= meta.count;
            continue;
        }
        let (offset, mut skip_here) = meta.offset_of_ordinal(skip);
        skip = 0;
        let mut cursor = Cursor::new(&seg.file, offset, meta.len);
        while let Next::Record { .. } = cursor.next()? {
            if skip_here > 0 {
                skip_here -= 1;
                continue;
            }
            if let Some(view) = decode(cursor.body()) {
                let topics = view
                    .topics
                    .iter()
                    .filter_map(|t| names.topic_str(t))
                    .collect();
                events.push_back(Arc::new(event_of(&view, topics, names, arena)));
            }
        }
    }
    Ok(events)
}
