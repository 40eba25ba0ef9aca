//! One database's copies: routing of reads to the active copy with failover, fan-out of
//! mutations to every in-sync copy (data writes and fsyncs in parallel), and the rule
//! that turns a copy's error into a failed volume instead of an error for the caller.
//!
//! Outcome rules, applied to every mutation:
//! - a media error (EIO, ENXIO, ENODEV, ESHUTDOWN, EROFS, EUCLEAN) fails the volume and
//!   the request goes on with the other copies;
//! - a copy that errs while another copy took the mutation (ENOSPC on one copy, or any
//!   other disagreement) is failed: copies must stay identical;
//! - an error every copy agrees on (ENOENT, EEXIST, EACCES, ENOSPC everywhere, ...)
//!   belongs to the caller and is returned as it is, failing nothing;
//! - only when no copy is in sync does the caller see `EIO`.

mod fanout;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

pub use fanout::{Fanout, MAX_COPIES};

use crate::pool::{CopyState, Pool};
use crate::volume::{Volume, is_media_error};

const NO_ACTIVE: usize = usize::MAX;

/// One copy of a database.
#[derive(Debug)]
pub struct Copy {
    volume_name: String,
    volume: Option<Arc<Volume>>,
    state: AtomicU8,
}

fn state_to_u8(s: CopyState) -> u8 {
    match s {
        CopyState::InSync => 0,
        CopyState::FailedAndSuspended => 1,
    }
}

impl Copy {
    /// A copy on `volume_name`; `volume` is `None` when the volume could not be opened.
    pub fn new(volume_name: String, volume: Option<Arc<Volume>>, state: CopyState) -> Copy {
        let state = if volume.is_none() {
            CopyState::FailedAndSuspended
        } else {
            state
        };
        Copy {
            volume_name,
            volume,
            state: AtomicU8::new(state_to_u8(state)),
        }
    }

    /// `Volume1`.
    pub fn volume_name(&self) -> &str {
        &self.volume_name
    }

    /// The volume, when it is in sync.
    pub fn in_sync_volume(&self) -> Option<&Arc<Volume>> {
        if self.state.load(Ordering::Acquire) == 0 {
            self.volume.as_ref()
        } else {
            None
        }
    }

    /// The copy's state.
    pub fn state(&self) -> CopyState {
        match self.state.load(Ordering::Acquire) {
            0 => CopyState::InSync,
            _ => CopyState::FailedAndSuspended,
        }
    }

    fn fail(&self) -> bool {
        self.state.swap(1, Ordering::AcqRel) == 0
    }
}

/// A database and its copies.
#[derive(Debug)]
pub struct Database {
    /// `db001`.
    pub name: String,
    /// Position in the pool (stable while mounted).
    pub index: usize,
    copies: Vec<Copy>,
    active: AtomicUsize,
    pool: Weak<Pool>,
}

/// The open backing files of one handle, by copy index (`None`: not open on that copy).
pub type CopyFiles = [Option<Arc<File>>];

impl Database {
    /// A database over `copies`; the first in-sync copy becomes active.
    pub fn new(name: String, index: usize, copies: Vec<Copy>, pool: Weak<Pool>) -> Database {
        let active = copies
            .iter()
            .position(|c| c.in_sync_volume().is_some())
            .unwrap_or(NO_ACTIVE);
        Database {
            name,
            index,
            copies,
            active: AtomicUsize::new(active),
            pool,
        }
    }

    /// The copies, in placement order.
    pub fn copies(&self) -> &[Copy] {
        &self.copies
    }

    /// Index of the active copy, if any copy is in sync.
    pub fn active_index(&self) -> Option<usize> {
        match self.active.load(Ordering::Acquire) {
            NO_ACTIVE => None,
            i => Some(i),
        }
    }

    /// Volume name of the active copy.
    pub fn active_volume(&self) -> Option<String> {
        self.active_index()
            .map(|i| self.copies[i].volume_name.clone())
    }

    /// The Exchange status word of copy `i`.
    pub fn status_word(&self, i: usize) -> &'static str {
        match (self.copies[i].state(), self.active_index() == Some(i)) {
            (CopyState::InSync, true) => "Mounted",
            (CopyState::InSync, false) => "Healthy",
            (CopyState::FailedAndSuspended, _) => "FailedAndSuspended",
        }
    }

    /// True when a copy is not in sync.
    pub fn degraded(&self) -> bool {
        self.copies.iter().any(|c| c.in_sync_volume().is_none())
    }

    /// Fails every copy on volume `vol` and elects a new active copy. Called by the pool
    /// with its state lock held. Returns whether a copy changed.
    pub(crate) fn fail_copies_on(&self, vol: &str) -> bool {
        let mut changed = false;
        for c in self.copies.iter().filter(|c| c.volume_name == vol) {
            changed |= c.fail();
        }
        if changed {
            self.elect();
        }
        changed
    }

    /// Fails copy `i` alone (it diverged). Called by the pool with its state lock held.
    pub(crate) fn fail_copy(&self, i: usize) -> bool {
        let changed = self.copies[i].fail();
        if changed {
            self.elect();
        }
        changed
    }

    fn elect(&self) {
        let cur = self.active.load(Ordering::Acquire);
        if cur != NO_ACTIVE && self.copies[cur].in_sync_volume().is_some() {
            return;
        }
        let next = self
            .copies
            .iter()
            .position(|c| c.in_sync_volume().is_some())
            .unwrap_or(NO_ACTIVE);
        self.active.store(next, Ordering::Release);
    }

    /// Handles an error of copy `i` during `op`. Returns true when the copy was failed (the
    /// caller goes on without it), false when the error belongs to the caller.
    fn on_error(&self, i: usize, op: &str, err: &io::Error, another_succeeded: bool) -> bool {
        let Some(pool) = self.pool.upgrade() else {
            return false;
        };
        let copy = &self.copies[i];
        if is_media_error(err) {
            if let Some(v) = &copy.volume {
                v.count_io_error();
                pool.fail_volume(v, op, err);
            }
            true
        } else if another_succeeded {
            pool.fail_diverged(self, i, op, err);
            true
        } else {
            false
        }
    }

    fn settle(&self) {
        if self.degraded() {
            if let Some(pool) = self.pool.upgrade() {
                pool.barrier();
            }
        }
    }

    /// The active copy and its volume; `EIO` when no copy is in sync.
    fn active(&self) -> io::Result<(usize, &Arc<Volume>)> {
        loop {
            let i = self
                .active_index()
                .ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))?;
            match self.copies[i].in_sync_volume() {
                Some(v) => return Ok((i, v)),
                // Failed since it was read: elect again.
                None => self.elect(),
            }
        }
    }

    /// Runs `f` on the active copy; a media error fails that copy and `f` runs again on
    /// the next one. For reads and lookups.
    pub fn read_op<T>(
        &self,
        op: &str,
        mut f: impl FnMut(usize, &Volume) -> io::Result<T>,
    ) -> io::Result<T> {
        loop {
            let (i, v) = self.active()?;
            match v.check().and_then(|()| f(i, v)) {
                Ok(t) => return Ok(t),
                Err(e) if is_media_error(&e) => {
                    self.on_error(i, op, &e, false);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Applies a metadata mutation: first on the active copy (whose answer decides), then
    /// on every other in-sync copy. Returns the active copy's result.
    pub fn mutate<T>(
        &self,
        op: &str,
        f: impl Fn(usize, &Volume) -> io::Result<T>,
    ) -> io::Result<T> {
        let (first, result) = loop {
            let (i, v) = self.active()?;
            match v.check().and_then(|()| f(i, v)) {
                Ok(t) => break (i, t),
                Err(e) => {
                    if !self.on_error(i, op, &e, false) {
                        return Err(e);
                    }
                }
            }
        };
        for (i, c) in self.copies.iter().enumerate() {
            if i == first {
                continue;
            }
            if let Some(v) = c.in_sync_volume() {
                if let Err(e) = v.check().and_then(|()| f(i, v)) {
                    self.on_error(i, op, &e, true);
                }
            }
        }
        self.settle();
        Ok(result)
    }

    /// Reads from the active copy's file, failing over on media errors. Fills `buf`
    /// unless end of file comes first; returns the bytes read.
    pub fn read_at(&self, files: &CopyFiles, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.read_op("read", |i, _| {
            let f = files
                .get(i)
                .and_then(Option::as_ref)
                .ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))?;
            read_full(f, offset, buf)
        })
    }

    /// Writes `data` at `offset` to every in-sync copy, in parallel through `fanout`.
    pub fn write_at(
        &self,
        fanout: &Fanout,
        files: &CopyFiles,
        offset: u64,
        data: &[u8],
    ) -> io::Result<usize> {
        self.fan_out(fanout, files, "write", data, move |f, d| {
            f.write_all_at(d, offset).map(|()| d.len())
        })
    }

    /// `fsync`/`fdatasync` on every in-sync copy in parallel: returns when all are durable.
    pub fn sync(&self, fanout: &Fanout, files: &CopyFiles, datasync: bool) -> io::Result<()> {
        let op = if datasync { "fdatasync" } else { "fsync" };
        self.fan_out(fanout, files, op, &[], move |f, _| {
            if datasync {
                f.sync_data()
            } else {
                f.sync_all()
            }
        })
    }

    /// Applies `f` to the open file of every in-sync copy (active first): truncate,
    /// fallocate, setattr through a handle.
    pub fn mutate_files<T>(
        &self,
        op: &str,
        files: &CopyFiles,
        f: impl Fn(&File) -> io::Result<T>,
    ) -> io::Result<T> {
        self.mutate(op, |i, _| match files.get(i).and_then(Option::as_ref) {
            Some(file) => f(file),
            None => Err(io::Error::from_raw_os_error(libc::EIO)),
        })
    }

    /// Runs `job(file, data)` on every in-sync copy, the first on this thread and the others
    /// on the fan-out threads at the same time, then reconciles the outcomes.
    fn fan_out<T: Send + 'static>(
        &self,
        fanout: &Fanout,
        files: &CopyFiles,
        op: &str,
        data: &[u8],
        job: impl Fn(&File, &[u8]) -> io::Result<T> + Send + Sync + std::marker::Copy + 'static,
    ) -> io::Result<T> {
        loop {
            let mut targets = [NO_ACTIVE; fanout::MAX_COPIES];
            let mut n = 0;
            let active = self.active_index();
            // Active copy first: its error decides when no copy succeeds.
            let order = active
                .into_iter()
                .chain((0..self.copies.len()).filter(|&i| Some(i) != active));
            for i in order {
                if n < targets.len()
                    && self.copies[i].in_sync_volume().is_some()
                    && files.get(i).is_some_and(Option::is_some)
                {
                    targets[n] = i;
                    n += 1;
                }
            }
            if n == 0 {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            let run = |i: usize, d: &[u8]| -> io::Result<T> {
                let v = self.copies[i]
                    .volume
                    .as_ref()
                    .ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))?;
                v.check()?;
                let f = files[i]
                    .as_ref()
                    .ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))?;
                job(f, d)
            };
            let mut results: [Option<io::Result<T>>; fanout::MAX_COPIES] = Default::default();
            if n == 1 {
                results[0] = Some(run(targets[0], data));
            } else {
                let shared: Arc<[u8]> = Arc::from(data);
                let (completer, waiter) = fanout.batch(n - 1);
                for (slot, &i) in targets[1..n].iter().enumerate() {
                    let v = self.copies[i].volume.clone();
                    let f = files[i].clone();
                    let d = shared.clone();
                    let w = completer.clone();
                    fanout.submit(Box::new(move || {
                        let r = match (v, f) {
                            (Some(v), Some(f)) => v.check().and_then(|()| job(&f, &d)),
                            _ => Err(io::Error::from_raw_os_error(libc::EIO)),
                        };
                        w.done(slot + 1, r);
                    }));
                }
                drop(completer);
                results[0] = Some(run(targets[0], data));
                for (slot, r) in waiter.wait() {
                    results[slot] = Some(r);
                }
            }
            let any_ok = results[..n].iter().any(|r| matches!(r, Some(Ok(_))));
            let mut first_ok = None;
            let mut caller_err = None;
            for (slot, r) in results.into_iter().take(n).enumerate() {
                match r {
                    Some(Ok(t)) if first_ok.is_none() => first_ok = Some(t),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        let failed = self.on_error(targets[slot], op, &e, any_ok);
                        if !failed && caller_err.is_none() {
                            caller_err = Some(e);
                        }
                    }
                    None => {}
                }
            }
            if let Some(t) = first_ok {
                self.settle();
                return Ok(t);
            }
            if let Some(e) = caller_err {
                return Err(e);
            }
            // Every target failed with a media error: try again on what is left.
        }
    }
}

/// `pread` until `buf` is full or end of file.
pub fn read_full(f: &File, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}
