//! A [`Filesystem`] that fails on request, for testing the durable log's
//! storage failure rules (built with the `fault-injection` feature, which
//! only this crate's tests enable).
//!
//! It wraps [`StdFs`]: calls that are not told to fail do the real thing,
//! so a log opened on it is a real log in a real directory, and can be
//! reopened with plain [`DurableLog::open`](crate::DurableLog::open) to see
//! what recovery makes of what the failures left.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::path::Path;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::fs::{Filesystem, StdFs};

/// An operation of [`Filesystem`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FsOp {
    /// [`Filesystem::create`].
    Create,
    /// [`Filesystem::write_all_at`].
    Write,
    /// [`Filesystem::sync_data`].
    SyncData,
    /// [`Filesystem::set_len`].
    SetLen,
    /// [`Filesystem::remove_file`].
    RemoveFile,
    /// [`Filesystem::sync_dir`].
    SyncDir,
}

/// What is to happen to the next calls of one operation.
#[derive(Debug, Clone, Copy)]
struct Fault {
    /// Calls to let through first.
    skip: u64,
    /// Calls to fail after those; `u64::MAX` is "until healed".
    times: u64,
    /// Whether a failing write writes the first half of its buffer first.
    torn: bool,
}

/// The real filesystem, failing the operations it is told to fail.
///
/// Faults set for one operation apply one after the other, in the order
/// they were set. A failed call does nothing, except a torn write
/// ([`FaultyFs::tear_next_write`]), which first writes the first half of
/// its buffer, as a disk that fails in the middle of a write leaves a torn
/// record behind. Errors are `io::ErrorKind::Other`, their message starts
/// with "injected".
#[derive(Debug, Default)]
pub struct FaultyFs {
    state: Mutex<State>,
    /// Signalled when a held call starts waiting and when it is released.
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    failing: HashMap<FsOp, VecDeque<Fault>>,
    calls: HashMap<FsOp, u64>,
    /// The operation whose next call waits for [`FaultyFs::release`].
    hold: Option<FsOp>,
    /// Whether a held call is waiting now.
    waiting: bool,
}

impl FaultyFs {
    /// A filesystem that fails nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fails the next `times` calls of `op`.
    pub fn fail_next(&self, op: FsOp, times: u64) {
        self.fail_after(op, 0, times);
    }

    /// Lets `skip` calls of `op` through, then fails `times`.
    pub fn fail_after(&self, op: FsOp, skip: u64, times: u64) {
        self.plan(
            op,
            Fault {
                skip,
                times,
                torn: false,
            },
        );
    }

    /// Fails every call of `op` until [`FaultyFs::heal`].
    pub fn fail_always(&self, op: FsOp) {
        self.fail_next(op, u64::MAX);
    }

    /// Makes the next write write the first half of its buffer, then fail.
    pub fn tear_next_write(&self) {
        self.tear_write_after(0);
    }

    /// Lets `skip` writes through, then makes the next one write the first
    /// half of its buffer and fail.
    pub fn tear_write_after(&self, skip: u64) {
        self.plan(
            FsOp::Write,
            Fault {
                skip,
                times: 1,
                torn: true,
            },
        );
    }

    fn plan(&self, op: FsOp, fault: Fault) {
        self.state
            .lock()
            .failing
            .entry(op)
            .or_default()
            .push_back(fault);
    }

    /// Fails nothing from now on.
    pub fn heal(&self) {
        self.state.lock().failing.clear();
    }

    /// Calls of `op` so far, failed ones included.
    pub fn calls(&self, op: FsOp) -> u64 {
        self.state.lock().calls.get(&op).copied().unwrap_or(0)
    }

    /// Makes the next call of `op` wait until [`FaultyFs::release`], so a
    /// test can queue appends behind a group being written. Whether that
    /// call fails is decided before it waits: faults set while it waits
    /// apply to the calls after it.
    pub fn hold(&self, op: FsOp) {
        self.state.lock().hold = Some(op);
    }

    /// Waits until a call is held; false if none is within `timeout`.
    pub fn wait_held(&self, timeout: Duration) -> bool {
        let mut state = self.state.lock();
        let deadline = std::time::Instant::now() + timeout;
        while !state.waiting {
            if self.changed.wait_until(&mut state, deadline).timed_out() {
                return state.waiting;
            }
        }
        true
    }

    /// Lets a held call go on (and cancels a hold no call has hit yet).
    pub fn release(&self) {
        let mut state = self.state.lock();
        state.hold = None;
        state.waiting = false;
        self.changed.notify_all();
    }

    /// Counts a call of `op`, waits if it is held, and says whether it
    /// fails (and, for a write, whether torn).
    fn enter(&self, op: FsOp) -> Option<Failure> {
        let mut state = self.state.lock();
        *state.calls.entry(op).or_default() += 1;
        let plans = state.failing.entry(op).or_default();
        // Plans used up are dropped; the first one left decides.
        while plans.front().is_some_and(|f| f.skip == 0 && f.times == 0) {
            plans.pop_front();
        }
        let failure = match plans.front_mut() {
            Some(fault) if fault.skip > 0 => {
                fault.skip -= 1;
                None
            }
            Some(fault) => {
                if fault.times != u64::MAX {
                    fault.times -= 1;
                }
                Some(if fault.torn {
                    Failure::Torn
                } else {
                    Failure::Clean
                })
            }
            None => None,
        };
        if state.hold == Some(op) {
            state.hold = None;
            state.waiting = true;
            self.changed.notify_all();
            while state.waiting {
                self.changed.wait(&mut state);
            }
        }
        failure
    }
}

/// How an injected failure fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// Nothing was done.
    Clean,
    /// The first half of the buffer was written.
    Torn,
}

impl FaultyFs {
    /// Counts the call; an injected failure (clean or torn: there is nothing
    /// to tear) becomes the error.
    fn pass(&self, op: FsOp) -> io::Result<()> {
        match self.enter(op) {
            Some(_) => Err(injected(op)),
            None => Ok(()),
        }
    }
}

fn injected(op: FsOp) -> io::Error {
    io::Error::other(format!("injected {op:?} failure"))
}

impl Filesystem for FaultyFs {
    fn create(&self, path: &Path) -> io::Result<File> {
        self.pass(FsOp::Create)?;
        StdFs.create(path)
    }

    fn write_all_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        match self.enter(FsOp::Write) {
            Some(Failure::Torn) => {
                StdFs.write_all_at(file, &buf[..buf.len() / 2], offset)?;
                return Err(injected(FsOp::Write));
            }
            Some(Failure::Clean) => return Err(injected(FsOp::Write)),
            None => {}
        }
        StdFs.write_all_at(file, buf, offset)
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        self.pass(FsOp::SyncData)?;
        StdFs.sync_data(file)
    }

    fn set_len(&self, file: &File, len: u64) -> io::Result<()> {
        self.pass(FsOp::SetLen)?;
        StdFs.set_len(file, len)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.pass(FsOp::RemoveFile)?;
        StdFs.remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.pass(FsOp::SyncDir)?;
        StdFs.sync_dir(dir)
    }
}
