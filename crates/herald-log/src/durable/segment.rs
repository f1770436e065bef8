//! One segment file and what is known about it in memory.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use parking_lot::RwLock;

use super::fs::Filesystem;
use super::record::{MAGIC, SEGMENT_HEADER};

/// Every this many records of a segment get an index entry: a lookup reads
/// at most this many records past the one it wants.
pub(crate) const INDEX_EVERY: u64 = 128;

/// A segment file: records with ids from `first_id` on, below the next
/// segment's `first_id`.
#[derive(Debug)]
pub(crate) struct Segment {
    /// The id its name carries: no record in it is older.
    pub first_id: u64,
    pub path: PathBuf,
    /// Opened read-write: readers `pread` it, the writer `pwrite`s the
    /// active one. Readers keep their `Arc` after the segment is deleted, so
    /// an unlink never breaks a read in progress.
    pub file: File,
    pub meta: RwLock<SegMeta>,
}

/// The committed state of a segment: readers never look past `len`, and
/// the writer moves `len` only after the bytes are written (and synced in
/// `Fsync` mode), so a reader never sees an unacknowledged-and-lost record.
#[derive(Debug, Clone)]
pub(crate) struct SegMeta {
    /// Committed bytes, header included.
    pub len: u64,
    /// Records in it.
    pub count: u64,
    /// Its first and last record ids.
    pub first: Option<u64>,
    pub last: Option<u64>,
    /// The newest `stored_at_s` in it (retention by age).
    pub newest_s: u32,
    /// The newest `stored_at_s` of a record with an idempotency key, 0 if
    /// none: the segment is kept (though its events are gone) until that
    /// key leaves the window, so a restart still knows the key.
    pub newest_key_s: u32,
    /// Records number 0, 128, 256, ...: where lookups start reading.
    pub index: Vec<IndexEntry>,
    /// Damaged byte ranges recovery set aside (copied to `.corrupt` files)
    /// with good records after them: every cursor over this segment steps
    /// over them, so they are never served. Sorted; usually empty.
    pub holes: Vec<Range<u64>>,
}

/// Where one record of a segment starts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IndexEntry {
    pub id: u64,
    pub offset: u64,
    pub stored_at_s: u32,
}

impl Default for SegMeta {
    fn default() -> Self {
        Self {
            len: SEGMENT_HEADER,
            count: 0,
            first: None,
            last: None,
            newest_s: 0,
            newest_key_s: 0,
            index: Vec::new(),
            holes: Vec::new(),
        }
    }
}

impl SegMeta {
    /// Accounts for a record of `len` bytes at `offset`.
    pub(crate) fn push(&mut self, id: u64, offset: u64, len: u64, stored_at_s: u32, keyed: bool) {
        if keyed {
            self.newest_key_s = self.newest_key_s.max(stored_at_s);
        }
        if self.count.is_multiple_of(INDEX_EVERY) {
            self.index.push(IndexEntry {
                id,
                offset,
                stored_at_s,
            });
        }
        self.count += 1;
        self.first.get_or_insert(id);
        self.last = Some(id);
        self.newest_s = self.newest_s.max(stored_at_s);
        self.len = offset + len;
    }

    /// A record boundary at or before the first record with an id `>= id`.
    pub(crate) fn offset_for(&self, id: u64) -> u64 {
        let after = self.index.partition_point(|e| e.id <= id);
        self.index
            .get(after.saturating_sub(1))
            .map_or(SEGMENT_HEADER, |e| e.offset)
    }

    /// The record boundary of record number `ordinal`, and how many records
    /// to skip from there to reach it.
    pub(crate) fn offset_of_ordinal(&self, ordinal: u64) -> (u64, u64) {
        let k = (ordinal / INDEX_EVERY) as usize;
        match self.index.get(k) {
            Some(e) => (e.offset, ordinal % INDEX_EVERY),
            None => (SEGMENT_HEADER, ordinal),
        }
    }
}

impl Segment {
    /// Creates an empty segment file whose first record will be `first_id`.
    /// With `sync`, the file and its directory entry are on disk on return.
    /// On error no file of that name is left behind (as far as `fs` can
    /// remove it).
    pub(crate) fn create(
        fs: &dyn Filesystem,
        dir: &Path,
        first_id: u64,
        sync: bool,
    ) -> io::Result<Self> {
        let path = segment_path(dir, first_id);
        // Truncate: a file of this name can only be debris of a failed
        // rollover whose unlink failed; its records were never acknowledged.
        let file = fs.create(&path)?;
        let ready = fs.write_all_at(&file, MAGIC, 0).and_then(|()| {
            if sync {
                fs.sync_data(&file)?;
                fs.sync_dir(dir)?;
            }
            Ok(())
        });
        if let Err(err) = ready {
            // A file without its header would be set aside as corrupt at
            // the next open; better gone now.
            let _ = fs.remove_file(&path);
            return Err(err);
        }
        Ok(Self {
            first_id,
            path,
            file,
            meta: RwLock::new(SegMeta::default()),
        })
    }
}

/// `segments/{first_id:020}.log`: zero-padded so names sort as ids do.
pub(crate) fn segment_path(dir: &Path, first_id: u64) -> PathBuf {
    dir.join(format!("{first_id:020}.log"))
}

/// The first id of a segment file name, if it is one.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let p = segment_path(Path::new("/x"), 1_700_000_000_000_000);
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        assert_eq!(name, "00001700000000000000.log");
        assert_eq!(parse_segment_name(name), Some(1_700_000_000_000_000));
        assert_eq!(parse_segment_name("1.log"), None);
        assert_eq!(parse_segment_name("00001700000000000000.log.corrupt"), None);
    }

    #[test]
    fn index_finds_a_boundary_at_or_before() {
        let mut meta = SegMeta::default();
        for i in 0..1000u64 {
            meta.push(100 + i, SEGMENT_HEADER + i * 10, 10, 0, false);
        }
        assert_eq!(meta.index.len(), 8);
        assert_eq!(meta.offset_for(0), SEGMENT_HEADER);
        assert_eq!(meta.offset_for(100), SEGMENT_HEADER);
        assert_eq!(meta.offset_for(100 + 127), SEGMENT_HEADER);
        assert_eq!(meta.offset_for(100 + 128), SEGMENT_HEADER + 1280);
        assert_eq!(meta.offset_for(5000), SEGMENT_HEADER + 7 * 1280);
        assert_eq!(meta.offset_of_ordinal(300), (SEGMENT_HEADER + 2560, 44));
        assert_eq!(meta.len, SEGMENT_HEADER + 10_000);
    }
}
