//! The filesystem seam: every operation that changes segment files after
//! the log is open (the writer's writes, syncs, rollovers and undos, and
//! retention's deletes) goes through [`Filesystem`], so storage failures can
//! be injected and tested (`FaultyFs`, behind the `fault-injection`
//! feature). [`StdFs`], plain `std::fs`, is what a log uses unless told
//! otherwise.
//!
//! The seam works on real files (`std::fs::File`): readers `pread` the same
//! files directly, and a fault-injecting implementation wraps the real
//! calls rather than simulating a disk. It costs one dynamic call per write
//! or sync of a group (not per event), next to a system call.
//!
//! Opening and recovery use `std::fs` directly: a failure there is an error
//! of `DurableLog::open`, with nothing acknowledged at stake.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The file operations the durable log's writer and retention use.
///
/// Implementations must behave like the `std::fs` calls named in each
/// method: the log's failure rules (see the `durable` module doc) assume
/// that an error means the operation may have been done in part (a write
/// may have written a prefix) and nothing more.
pub trait Filesystem: Send + Sync + fmt::Debug + 'static {
    /// Creates the file at `path` (truncating one that exists), opened for
    /// reading and writing.
    fn create(&self, path: &Path) -> io::Result<File>;

    /// Writes all of `buf` at `offset` of `file` (`pwrite`).
    fn write_all_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()>;

    /// Makes `file`'s data durable (`fdatasync`).
    fn sync_data(&self, file: &File) -> io::Result<()>;

    /// Sets `file`'s length (`ftruncate`): how a failed write is cut back.
    fn set_len(&self, file: &File, len: u64) -> io::Result<()>;

    /// Removes the file at `path` (`unlink`).
    fn remove_file(&self, path: &Path) -> io::Result<()>;

    /// Makes creations and removals in `dir` durable (`fsync` on the
    /// directory).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The real filesystem, through `std::fs`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdFs;

impl Filesystem for StdFs {
    fn create(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
    }

    fn write_all_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        file.write_all_at(buf, offset)
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }

    fn set_len(&self, file: &File, len: u64) -> io::Result<()> {
        file.set_len(len)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}
