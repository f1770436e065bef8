//! Opening a data directory: the lock, recovery of every segment, the
//! idempotency keys and the cache, then the writer thread.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{mpsc, Arc};

use herald_core::{now_ms, Event, EventId, FrameArena};
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use super::fs::Filesystem;
use super::read::event_of;
use super::record::{decode, find_record, Cursor, Next, CUT_MARK, MAGIC, SEGMENT_HEADER};
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
    /// Whether anything was cut or set aside: then ids jump to the clock.
    repaired: bool,
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
    // After a cut or a set-aside file the ids of records no longer read may
    // have been acknowledged and seen by clients, so ids jump to the clock
    // (see `crate::ids`). Names of set-aside files give no bound: a stray
    // name could be anything, up to u64::MAX.
    let next_id = ids::start_id(scanned.last_id, scanned.repaired);
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

/// A file of the segments directory whose name is a segment name.
#[derive(Debug)]
struct Found {
    /// The id its name carries (not trusted until its records agree).
    name_id: u64,
    /// The id of its first valid record (0 until looked at).
    first_id: u64,
    path: PathBuf,
    file: File,
    len: u64,
}

/// Whether the record `id` fits where it was found: at or above its
/// segment's name, newer than every record before it, below the next
/// segment's name.
fn fits(id: u64, name_id: u64, last: Option<u64>, next_name: Option<u64>) -> bool {
    id >= name_id && last.is_none_or(|last| id > last) && next_name.is_none_or(|next| id < next)
}

/// Ids a resync accepts are below this much past the clock (or the last
/// good id): about nine years of microseconds. Ids follow the clock, so a
/// real record is far below it, and most random 8-byte values are above it,
/// which keeps a scan through garbage from checksumming at every byte.
const RESYNC_ID_SLACK: u64 = 1 << 48;

/// The largest id a resync accepts after `last`.
fn resync_id_limit(last: Option<u64>) -> u64 {
    ids::clock_id()
        .max(last.unwrap_or(0))
        .saturating_add(RESYNC_ID_SLACK)
}

/// Validates every record of every segment (see "Recovery" in the module
/// doc of `durable`): damaged ranges are set aside and skipped, a torn
/// tail is cut, files whose names their content does not bear out are set
/// aside, entries that are not regular files are skipped.
fn scan_segments(seg_dir: &Path, options: &DurableOptions) -> Result<Scanned, DurableError> {
    let io = DurableError::io;
    let mut out = Scanned::default();
    let mut names: Vec<(u64, PathBuf)> = Vec::new();
    let entries = fs::read_dir(seg_dir).map_err(io(format!("listing {}", seg_dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(io(format!("listing {}", seg_dir.display())))?;
        let Some(name_id) = entry.file_name().to_str().and_then(parse_segment_name) else {
            continue;
        };
        let path = entry.path();
        // `file_type` does not follow symlinks: a link is skipped too.
        let regular = entry.file_type().is_ok_and(|t| t.is_file());
        if !regular {
            tracing::warn!(
                path = %path.display(),
                "recovery: skipping an entry named like a segment that is not a regular file"
            );
            out.report.notes.push(format!(
                "{}: not a regular file; skipped (left as it is)",
                path.display()
            ));
            continue;
        }
        names.push((name_id, path));
    }
    names.sort_unstable();

    // First look, file by file: the header, and whether the first valid
    // record bears out the name. Only then are names used as bounds.
    let mut with_records: Vec<Found> = Vec::new();
    let mut without_records: Vec<Found> = Vec::new();
    for (name_id, path) in names {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io(format!("opening {}", path.display())))?;
        let mut magic = [0u8; MAGIC.len()];
        if file.read_exact_at(&mut magic, 0).is_err() || &magic != MAGIC {
            quarantine(&path, &mut out)?;
            continue;
        }
        let len = file
            .metadata()
            .map_err(io(format!("reading {}", path.display())))?
            .len();
        let mut found = Found {
            name_id,
            first_id: 0,
            path,
            file,
            len,
        };
        match first_record(&found).map_err(io(format!("reading {}", found.path.display())))? {
            // A segment is named by the id it was created for: its first
            // record's, or, for the active segment of an idle log, the next
            // id then (its first record came later, with a higher id).
            Some((_, id)) if id >= name_id => {
                found.first_id = id;
                with_records.push(found);
            }
            Some((offset, id)) => set_aside_stray(
                &found.path,
                &format!(
                    "its first valid record (id {id}, at offset {offset}) does not match its name"
                ),
                &mut out,
            )?,
            None => without_records.push(found),
        }
    }

    // A file without a valid record is trusted only as the active segment
    // of a log that had not written to it yet (or whose first record was
    // torn): the last file, named above every segment with records, and
    // not ahead of the clock (a name from the future is no id we gave).
    let newest_with_records = with_records.last().map(|f| f.name_id);
    let clock = ids::clock_id();
    let mut empty_active = None;
    for found in without_records.into_iter().rev() {
        let plausible = empty_active.is_none()
            && newest_with_records.is_none_or(|newest| found.name_id > newest)
            && found.name_id <= clock;
        if plausible {
            empty_active = Some(found);
        } else {
            set_aside_stray(&found.path, "it holds no valid record", &mut out)?;
        }
    }

    let now = now_ms();
    let window_ms = options.retention.idempotency_window.as_millis() as u64;
    let count = with_records.len();
    // A segment's records are below the next one's first record (its name
    // is no tighter, and a misnamed stray copy of a later segment must not
    // make a real segment's records look out of order).
    let next_names: Vec<Option<u64>> = (0..count)
        .map(|i| with_records.get(i + 1).map(|f| f.first_id))
        .collect();
    for (i, found) in with_records.into_iter().enumerate() {
        let is_last = i + 1 == count && empty_active.is_none();
        let next_name = next_names[i];
        let name_id = found.name_id;
        let mut meta = SegMeta::default();
        // What to repair, applied only once the file proved to be one of
        // ours (a stray is set aside untouched).
        let mut damaged: Vec<(Range<u64>, &'static str, Option<u64>)> = Vec::new();
        let mut tail: Option<(u64, &'static str, Option<u64>)> = None;
        let mut pos = SEGMENT_HEADER;
        loop {
            let mut cursor = Cursor::new(&found.file, pos, found.len);
            let bad = loop {
                let offset = match cursor
                    .next()
                    .map_err(io(format!("reading {}", found.path.display())))?
                {
                    Next::End => break None,
                    Next::Bad { offset, reason } => break Some((offset, reason)),
                    Next::Record { offset } => offset,
                };
                let Some(view) = decode(cursor.body()) else {
                    break Some((offset, "record does not decode"));
                };
                if !fits(view.id, name_id, out.last_id, next_name) {
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
            let Some((offset, reason)) = bad else { break };
            if is_cut_mark(&found.file, offset) {
                tail = Some((
                    offset,
                    "marked by a failed write that could not be undone",
                    out.last_id,
                ));
                break;
            }
            let last = out.last_id;
            let limit = resync_id_limit(last);
            let resume = resync(&found.file, offset, found.len, |id| {
                id < limit && fits(id, name_id, last, next_name)
            })
            .map_err(io(format!("reading {}", found.path.display())))?;
            match resume {
                Some(resume) => {
                    damaged.push((offset..resume, reason, last));
                    meta.holes.push(offset..resume);
                    pos = resume;
                }
                None => {
                    tail = Some((offset, reason, last));
                    break;
                }
            }
        }
        if meta.count == 0 {
            // Every record in it conflicts with the segments around it.
            set_aside_stray(
                &found.path,
                "none of its records fits between the segments around it",
                &mut out,
            )?;
            continue;
        }
        for (range, reason, after) in damaged {
            set_aside_range(&found, range, reason, after, options, &mut out)?;
        }
        match tail {
            None => {}
            Some((offset, reason, _)) if is_last || is_cut_mark(&found.file, offset) => {
                cut_torn_tail(&found, offset, reason, options, &mut out)?;
            }
            Some((offset, reason, after)) => {
                // Damage to the end of a segment that is not the last: not
                // a torn write (later segments were written after it), so
                // set aside, then cut.
                set_aside_range(&found, offset..found.len, reason, after, options, &mut out)?;
                found
                    .file
                    .set_len(offset)
                    .map_err(io(format!("truncating {}", found.path.display())))?;
            }
        }
        meta.len = meta.len.max(SEGMENT_HEADER);
        out.segments.insert(
            name_id,
            Arc::new(Segment {
                first_id: name_id,
                path: found.path,
                file: found.file,
                meta: RwLock::new(meta),
            }),
        );
    }

    if let Some(found) = empty_active {
        if out.last_id.is_some_and(|last| found.name_id <= last) {
            set_aside_stray(
                &found.path,
                "it holds no valid record and its name is not above the last id",
                &mut out,
            )?;
        } else {
            if found.len > SEGMENT_HEADER {
                cut_torn_tail(&found, SEGMENT_HEADER, "no valid record", options, &mut out)?;
            }
            out.segments.insert(
                found.name_id,
                Arc::new(Segment {
                    first_id: found.name_id,
                    path: found.path,
                    file: found.file,
                    meta: RwLock::new(SegMeta::default()),
                }),
            );
        }
    }
    Ok(out)
}

/// Whether the writer marked `offset` as the start of a failed group.
fn is_cut_mark(file: &File, offset: u64) -> bool {
    let mut header = [0u8; CUT_MARK.len()];
    file.read_exact_at(&mut header, offset).is_ok() && header == CUT_MARK
}

/// Where the first valid record of a file is and its id: at the header, or
/// the first one found after damage there. `None`: no valid record.
fn first_record(found: &Found) -> std::io::Result<Option<(u64, u64)>> {
    let mut cursor = Cursor::new(&found.file, SEGMENT_HEADER, found.len);
    let bad_at = match cursor.next()? {
        Next::End => return Ok(None),
        Next::Record { offset } => match decode(cursor.body()) {
            Some(view) => return Ok(Some((offset, view.id))),
            None => offset,
        },
        // A failed group's mark: what follows was never acknowledged.
        Next::Bad { offset, .. } if is_cut_mark(&found.file, offset) => return Ok(None),
        Next::Bad { offset, .. } => offset,
    };
    let name_id = found.name_id;
    let limit = resync_id_limit(None);
    let at = resync(&found.file, bad_at, found.len, |id| {
        id > name_id && id < limit
    })?;
    Ok(at.and_then(|offset| {
        let mut cursor = Cursor::new(&found.file, offset, found.len);
        match cursor.next() {
            Ok(Next::Record { .. }) => decode(cursor.body()).map(|v| (offset, v.id)),
            _ => None,
        }
    }))
}

/// The offset of the first valid record after the bad one at `bad_at`
/// whose id `accept_id` takes (see `record::find_record`). Reads the rest
/// of the file into memory once: at most a segment (or one huge record).
fn resync(
    file: &File,
    bad_at: u64,
    len: u64,
    accept_id: impl Fn(u64) -> bool,
) -> std::io::Result<Option<u64>> {
    let from = bad_at + 1;
    if from >= len {
        return Ok(None);
    }
    let mut rest = vec![0u8; (len - from) as usize];
    file.read_exact_at(&mut rest, from)?;
    Ok(find_record(&rest, accept_id).map(|at| from + at as u64))
}

/// `{segment}.{start}-{end}.corrupt`: where a damaged range is set aside.
fn corrupt_path(path: &Path, range: &Range<u64>) -> PathBuf {
    let mut to = path.as_os_str().to_owned();
    to.push(format!(".{}-{}.corrupt", range.start, range.end));
    PathBuf::from(to)
}

/// Copies the damaged bytes `range` of a segment to their `.corrupt` file
/// and reports them; the segment keeps them, but no reader looks at them
/// (they become a hole of the segment, or are cut by the caller).
fn set_aside_range(
    found: &Found,
    range: Range<u64>,
    reason: &str,
    after: Option<u64>,
    options: &DurableOptions,
    out: &mut Scanned,
) -> Result<(), DurableError> {
    let io = DurableError::io;
    let bytes = range.end - range.start;
    let mut copy = vec![0u8; bytes as usize];
    found
        .file
        .read_exact_at(&mut copy, range.start)
        .map_err(io(format!("reading {}", found.path.display())))?;
    let to = corrupt_path(&found.path, &range);
    let mut file = File::create(&to).map_err(io(format!("creating {}", to.display())))?;
    file.write_all(&copy)
        .map_err(io(format!("writing {}", to.display())))?;
    if options.durability == Durability::Fsync {
        file.sync_data()
            .map_err(io(format!("syncing {}", to.display())))?;
    }
    let after = after.map_or_else(|| "the start".to_owned(), |id| format!("id {id}"));
    tracing::error!(
        file = %found.path.display(),
        start = range.start,
        end = range.end,
        bytes,
        reason,
        set_aside_to = %to.display(),
        "recovery: DAMAGED RECORDS in the log (acknowledged events may be among them): set aside, not served; reading resumes at the next valid record"
    );
    out.report.damaged_bytes += bytes;
    out.report.set_aside.push(to.clone());
    out.report.notes.push(format!(
        "{}: damaged bytes {}..{} ({bytes} bytes) after {after} ({reason}); copied to {} and skipped",
        found.path.display(),
        range.start,
        range.end,
        to.display()
    ));
    out.repaired = true;
    Ok(())
}

/// Cuts the last segment at `offset`: a torn write at the tail of the log
/// (no valid record follows), which was never acknowledged.
fn cut_torn_tail(
    found: &Found,
    offset: u64,
    reason: &str,
    options: &DurableOptions,
    out: &mut Scanned,
) -> Result<(), DurableError> {
    let path = &found.path;
    let dropped = found.len - offset;
    found
        .file
        .set_len(offset)
        .map_err(DurableError::io(format!("truncating {}", path.display())))?;
    if options.durability == Durability::Fsync {
        found
            .file
            .sync_data()
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
    out.repaired = true;
    Ok(())
}

/// Renames a file out of the way to `{path}{suffix}`; it is never read.
fn rename_aside(path: &Path, suffix: &str) -> Result<PathBuf, DurableError> {
    let mut to = path.as_os_str().to_owned();
    to.push(suffix);
    let to = PathBuf::from(to);
    fs::rename(path, &to).map_err(DurableError::io(format!(
        "renaming {} to {}",
        path.display(),
        to.display()
    )))?;
    Ok(to)
}

/// Sets aside a file whose name its content does not bear out: its name
/// gives no id bound, its records are not served.
fn set_aside_stray(path: &Path, why: &str, out: &mut Scanned) -> Result<(), DurableError> {
    let to = rename_aside(path, ".stray")?;
    tracing::warn!(
        file = %path.display(),
        renamed_to = %to.display(),
        why,
        "recovery: a file named like a segment is not one of this log's segments; set it aside (its name is not used for ids)"
    );
    out.report.notes.push(format!(
        "{}: {why}; renamed to {}",
        path.display(),
        to.display()
    ));
    out.report.set_aside.push(to);
    out.repaired = true;
    Ok(())
}

/// Renames a file that is not a segment of this format out of the way.
fn quarantine(path: &Path, out: &mut Scanned) -> Result<(), DurableError> {
    let to = rename_aside(path, ".corrupt")?;
    tracing::error!(
        file = %path.display(),
        renamed_to = %to.display(),
        "recovery: a segment file has no valid header; set it aside (its events are not served)"
    );
    out.report.notes.push(format!(
        "{}: missing or unknown format header; renamed to {}",
        path.display(),
        to.display()
    ));
    out.report.set_aside.push(to);
    out.repaired = true;
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
        let mut cursor = Cursor::new(&seg.file, offset, meta.len).skipping(&meta.holes);
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
