//! One database's copies: routing of reads to the active copy with failover, fan-out of
//! mutations to every in-sync copy (large data writes and fsyncs in parallel), and the rule
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
mod seed;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use arc_swap::{ArcSwap, ArcSwapOption};
use parking_lot::{
    Mutex, MutexGuard, RecursiveRwLock, RecursiveRwLockReadGuard, RecursiveRwLockWriteGuard,
};

pub use fanout::{Fanout, MAX_COPIES};
pub use seed::SeedFile;

use crate::pool::{CopyState, Pool};
use crate::tap::Tap;
use crate::volume::{Volume, is_media_error};

const NO_ACTIVE: usize = usize::MAX;

/// The largest read that goes `O_DIRECT` to the backing file for an `O_DIRECT` caller.
const DIRECT_READ_MAX: usize = 64 << 10;

/// The alignment of offset, length and buffer an `O_DIRECT` backing read needs here (a
/// page: enough for every logical block size up to 4 KiB).
pub const DIRECT_ALIGN: usize = 4096;

/// Data writes from this size up go to the copies in parallel (fan-out threads); smaller
/// ones are written to each copy in turn on the request thread. `fsync`s always go out in
/// parallel: they wait for the disks.
const PARALLEL_WRITE: usize = 128 << 10;

const IN_SYNC: u8 = 0;
const FAILED: u8 = 1;
const SEEDING: u8 = 2;

static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// Where a copy lives. Replaced as a whole when the copy moves to a spare or its
/// volume is opened again; `generation` tells files opened on an earlier placement
/// from current ones.
#[derive(Debug)]
pub struct Placement {
    /// `Volume1`.
    pub volume_name: String,
    /// The volume; `None` when it could not be opened.
    pub volume: Option<Arc<Volume>>,
    /// Unique per placement.
    pub generation: u64,
}

/// One copy of a database.
#[derive(Debug)]
pub struct Copy {
    placement: ArcSwap<Placement>,
    state: AtomicU8,
}

fn state_to_u8(s: CopyState) -> u8 {
    match s {
        CopyState::InSync => IN_SYNC,
        CopyState::FailedAndSuspended => FAILED,
        CopyState::Seeding => SEEDING,
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
            placement: ArcSwap::from_pointee(Placement {
                volume_name,
                volume,
                generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
            }),
            state: AtomicU8::new(state_to_u8(state)),
        }
    }

    /// Where the copy lives now.
    pub fn placement(&self) -> Arc<Placement> {
        self.placement.load_full()
    }

    /// `Volume1`.
    pub fn volume_name(&self) -> String {
        self.placement.load().volume_name.clone()
    }

    /// The volume, when the copy is in sync.
    pub fn in_sync_volume(&self) -> Option<Arc<Volume>> {
        if self.state.load(Ordering::Acquire) == IN_SYNC {
            self.placement.load().volume.clone()
        } else {
            None
        }
    }

    /// The placement, when the copy takes mutations: in sync or being seeded.
    fn writable(&self) -> Option<arc_swap::Guard<Arc<Placement>>> {
        match self.state.load(Ordering::Acquire) {
            IN_SYNC | SEEDING => Some(self.placement.load()).filter(|p| p.volume.is_some()),
            _ => None,
        }
    }

    /// The copy's state.
    pub fn state(&self) -> CopyState {
        match self.state.load(Ordering::Acquire) {
            IN_SYNC => CopyState::InSync,
            SEEDING => CopyState::Seeding,
            _ => CopyState::FailedAndSuspended,
        }
    }

    fn is(&self, state: u8) -> bool {
        self.state.load(Ordering::Acquire) == state
    }

    fn fail(&self) -> bool {
        self.state.swap(FAILED, Ordering::AcqRel) != FAILED
    }
}

/// One copy a fan-out writes to: its index, volume and the handle's file there.
type Target = (usize, Arc<Volume>, Arc<BackingFile>);

/// A backing file opened on one copy, tagged with the placement it was opened on.
#[derive(Debug)]
pub struct BackingFile {
    /// The placement's generation.
    pub generation: u64,
    /// The open file (through the page cache).
    pub file: File,
    /// The same file opened again with `O_DIRECT`, for the small reads of a caller that
    /// opened it so; opened at the first such read (`None`: not possible here).
    direct: std::sync::OnceLock<Option<File>>,
}

impl BackingFile {
    /// The file opened with `O_DIRECT`, when the system allows it.
    fn direct(&self, volume: &Volume) -> Option<&File> {
        self.direct
            .get_or_init(|| volume.reopen_direct(&self.file).ok())
            .as_ref()
    }
}

/// The backing files of one open handle, by copy index. A slot is refreshed when its
/// copy gets a new placement (a reseed opens the file on the new copy for every open
/// handle), so a file held open across a remap keeps working.
#[derive(Debug)]
pub struct OpenFiles {
    slots: Box<[ArcSwapOption<BackingFile>]>,
}

impl OpenFiles {
    /// No file open on any of `n` copies.
    pub fn new(n: usize) -> OpenFiles {
        OpenFiles {
            slots: (0..n).map(|_| ArcSwapOption::empty()).collect(),
        }
    }

    /// Records `file`, opened on copy `i` at placement `generation`.
    pub fn set(&self, i: usize, generation: u64, file: File) {
        if let Some(slot) = self.slots.get(i) {
            slot.store(Some(Arc::new(BackingFile {
                generation,
                file,
                direct: std::sync::OnceLock::new(),
            })));
        }
    }

    /// Closes the files opened on an earlier placement of their copy.
    pub fn release_stale(&self, copies: &[Copy]) {
        for (slot, copy) in self.slots.iter().zip(copies) {
            let stale = slot
                .load()
                .as_ref()
                .is_some_and(|f| f.generation != copy.placement.load().generation);
            if stale {
                slot.store(None);
            }
        }
    }

    /// The file of copy `i`, if it was opened on the copy's current placement.
    pub fn get(&self, i: usize, copy: &Copy) -> Option<Arc<BackingFile>> {
        let f = self.slots.get(i)?.load_full()?;
        (f.generation == copy.placement.load().generation).then_some(f)
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
    /// Held shared by every namespace mutation and handle open, exclusively by a reseed
    /// while it lays out the new copy.
    namespace: RecursiveRwLock<()>,
    /// One reseed at a time per database.
    seeding: Mutex<()>,
    /// Numbers mutations and records what lagging copies miss.
    tap: Tap,
}

impl Database {
    /// A database over `copies`; the first in-sync copy becomes active.
    pub fn new(name: String, index: usize, copies: Vec<Copy>, pool: Weak<Pool>) -> Database {
        let active = copies
            .iter()
            .position(|c| c.is(IN_SYNC))
            .unwrap_or(NO_ACTIVE);
        Database {
            active: AtomicUsize::new(active),
            pool,
            namespace: RecursiveRwLock::new(()),
            seeding: Mutex::new(()),
            tap: Tap::new(&name, copies.len()),
            name,
            index,
            copies,
        }
    }

    /// The log tap.
    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    /// The volumes of the in-sync copies.
    pub fn in_sync_volumes(&self) -> Vec<Arc<Volume>> {
        self.copies
            .iter()
            .filter_map(Copy::in_sync_volume)
            .collect()
    }

    /// A tap checkpoint: the activity log starts a new epoch once the in-sync copies are
    /// synced, and the lagging copies' dirty maps are persisted (all of them when
    /// `clean`: the last checkpoint of a clean stop, which marks the log clean).
    pub fn checkpoint(&self, clean: bool) {
        let persist = || self.tap.persist(&self.in_sync_volumes(), clean);
        match &self.tap.activity {
            Some(al) => al.checkpoint(self, persist, clean),
            None => persist(),
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
        self.active_index().map(|i| self.copies[i].volume_name())
    }

    /// Index of the copy being seeded, if any.
    pub fn seeding_index(&self) -> Option<usize> {
        self.copies.iter().position(|c| c.is(SEEDING))
    }

    /// The Exchange status word of copy `i`.
    pub fn status_word(&self, i: usize) -> &'static str {
        match (self.copies[i].state(), self.active_index() == Some(i)) {
            (CopyState::InSync, true) => "Mounted",
            (CopyState::InSync, false) => "Healthy",
            (CopyState::Seeding, _) => "Seeding",
            (CopyState::FailedAndSuspended, _) => "FailedAndSuspended",
        }
    }

    /// True when a copy is not in sync.
    pub fn degraded(&self) -> bool {
        self.copies.iter().any(|c| !c.is(IN_SYNC))
    }

    /// Shared hold on the namespace: no reseed lays out a new copy meanwhile. Taken
    /// around a handle's open and its registration, so every handle either is refreshed
    /// by the reseed or opens the new copy itself.
    pub fn namespace_shared(&self) -> RecursiveRwLockReadGuard<'_, ()> {
        self.namespace.read()
    }

    /// Exclusive hold on the namespace (a reseed laying out a new copy).
    pub fn namespace_exclusive(&self) -> RecursiveRwLockWriteGuard<'_, ()> {
        self.namespace.write()
    }

    /// The right to seed a copy of this database; `None` while a reseed runs.
    pub fn try_seed_lock(&self) -> Option<MutexGuard<'_, ()>> {
        self.seeding.try_lock()
    }

    /// Moves copy `i` to a new placement in state Seeding; returns its generation.
    /// Called by the pool with its state lock and the namespace held exclusively.
    pub(crate) fn start_seeding(&self, i: usize, volume_name: String, volume: Arc<Volume>) -> u64 {
        let generation = NEXT_GENERATION.fetch_add(1, Ordering::Relaxed);
        let copy = &self.copies[i];
        copy.state.store(FAILED, Ordering::Release);
        copy.placement.store(Arc::new(Placement {
            volume_name,
            volume: Some(volume),
            generation,
        }));
        copy.state.store(SEEDING, Ordering::Release);
        generation
    }

    /// Copy `i` finished seeding: in sync. False when it failed meanwhile. Called by the
    /// pool with its state lock held.
    pub(crate) fn seeded(&self, i: usize) -> bool {
        let ok = self.copies[i]
            .state
            .compare_exchange(SEEDING, IN_SYNC, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if ok {
            self.elect();
        }
        ok
    }

    /// Fails every copy on volume `vol` and elects a new active copy. Called by the pool
    /// with its state lock held. The copies let go of the dead volume (a new placement
    /// without it), so that nothing keeps its filesystem alive once it is unmounted: the
    /// disk can come back while the database runs. Returns whether a copy changed.
    pub(crate) fn fail_copies_on(&self, vol: &str) -> bool {
        let mut changed = false;
        for c in self
            .copies
            .iter()
            .filter(|c| c.placement.load().volume_name == vol)
        {
            changed |= c.fail();
            c.placement.store(Arc::new(Placement {
                volume_name: vol.to_owned(),
                volume: None,
                generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
            }));
        }
        if changed {
            self.elect();
        }
        changed
    }

    /// Takes copy `i` out of service on an operator's request (suspend): like a failure,
    /// its placement lets go of the volume so no file stays open there. False unless it
    /// was in sync. Called by the pool with its state lock held.
    pub(crate) fn suspend_copy(&self, i: usize) -> bool {
        let c = &self.copies[i];
        if c.state
            .compare_exchange(IN_SYNC, FAILED, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        c.placement.store(Arc::new(Placement {
            volume_name: c.volume_name(),
            volume: None,
            generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
        }));
        self.elect();
        true
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
        if cur != NO_ACTIVE && self.copies[cur].is(IN_SYNC) {
            return;
        }
        let next = self
            .copies
            .iter()
            .position(|c| c.is(IN_SYNC))
            .unwrap_or(NO_ACTIVE);
        self.active.store(next, Ordering::Release);
    }

    /// Handles an error of copy `i` during `op`. Returns true when the copy was failed (the
    /// caller goes on without it), false when the error belongs to the caller.
    pub(crate) fn on_error(
        &self,
        i: usize,
        op: &str,
        err: &io::Error,
        another_succeeded: bool,
    ) -> bool {
        let Some(pool) = self.pool.upgrade() else {
            return false;
        };
        let placement = self.copies[i].placement();
        if is_media_error(err) {
            if let Some(v) = &placement.volume {
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
    fn active(&self) -> io::Result<(usize, Arc<Volume>)> {
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
            match f(i, &v) {
                Ok(t) => return Ok(t),
                Err(e) if is_media_error(&e) => {
                    self.on_error(i, op, &e, false);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Applies a metadata mutation: first on the active copy (whose answer decides), then
    /// on every other copy that takes mutations (in sync or being seeded). Returns the
    /// active copy's result.
    pub fn mutate<T>(
        &self,
        op: &str,
        f: impl Fn(usize, &Volume) -> io::Result<T>,
    ) -> io::Result<T> {
        self.mutate_where(op, |_| true, f)
    }

    /// [`Database::mutate`] on the copies for which `has(i)` holds.
    fn mutate_where<T>(
        &self,
        op: &str,
        has: impl Fn(usize) -> bool,
        f: impl Fn(usize, &Volume) -> io::Result<T>,
    ) -> io::Result<T> {
        let _namespace = self.namespace_shared();
        let (first, result) = loop {
            let (active, _) = self.active()?;
            let order = std::iter::once(active).chain(
                (0..self.copies.len()).filter(|&i| i != active && self.copies[i].is(IN_SYNC)),
            );
            let mut target = None;
            for i in order.filter(|&i| has(i)) {
                if let Some(v) = self.copies[i].in_sync_volume() {
                    target = Some((i, v));
                    break;
                }
            }
            let (i, v) = target.ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))?;
            match f(i, &v) {
                Ok(t) => break (i, t),
                Err(e) => {
                    if !self.on_error(i, op, &e, false) {
                        return Err(e);
                    }
                }
            }
        };
        for (i, c) in self.copies.iter().enumerate() {
            if i == first || !has(i) {
                continue;
            }
            let Some(p) = c.writable() else { continue };
            let Some(v) = &p.volume else { continue };
            if let Err(e) = f(i, v) {
                self.on_error(i, op, &e, true);
            }
        }
        self.tap.mutated();
        self.settle();
        Ok(result)
    }

    /// Reads from the active copy's file, failing over on media errors. Fills `buf`
    /// unless end of file comes first; returns the bytes read.
    ///
    /// `direct`: the caller opened the file with `O_DIRECT`. Its small aligned reads then
    /// bypass the backing page cache too, as they would on the disk itself: no memory
    /// spent caching what the database caches, and less work per read. Large reads stay
    /// buffered, where the backing readahead makes them faster than the disk alone.
    pub fn read_at(
        &self,
        files: &OpenFiles,
        offset: u64,
        buf: &mut [u8],
        direct: bool,
    ) -> io::Result<usize> {
        let direct = direct
            && buf.len() <= DIRECT_READ_MAX
            && (offset as usize | buf.len() | buf.as_ptr().addr()) % DIRECT_ALIGN == 0;
        self.read_backing_op("read", files, |v, f| {
            if direct && let Some(d) = f.direct(v) {
                match v.read_at(d, offset, buf) {
                    // The backing filesystem wants a larger alignment than ours.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                    r => return r,
                }
            }
            v.read_at(&f.file, offset, buf)
        })
    }

    /// Runs `f` on the handle's file of the active copy (or, when the handle has no file
    /// there, of another in-sync copy); a media error fails that copy and `f` runs again.
    pub fn read_file_op<T>(
        &self,
        op: &str,
        files: &OpenFiles,
        mut f: impl FnMut(&Volume, &File) -> io::Result<T>,
    ) -> io::Result<T> {
        self.read_backing_op(op, files, |v, b| f(v, &b.file))
    }

    /// [`Database::read_file_op`] on the handle's [`BackingFile`].
    fn read_backing_op<T>(
        &self,
        op: &str,
        files: &OpenFiles,
        mut f: impl FnMut(&Volume, &BackingFile) -> io::Result<T>,
    ) -> io::Result<T> {
        loop {
            let (active, _) = self.active()?;
            let order = std::iter::once(active).chain(
                (0..self.copies.len()).filter(|&i| i != active && self.copies[i].is(IN_SYNC)),
            );
            let mut target = None;
            for i in order {
                if let (Some(v), Some(file)) = (
                    self.copies[i].in_sync_volume(),
                    files.get(i, &self.copies[i]),
                ) {
                    target = Some((i, v, file));
                    break;
                }
            }
            let (i, v, file) = target.ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))?;
            match v.timed(|| f(&v, &file)) {
                Ok(t) => return Ok(t),
                Err(e) if is_media_error(&e) => {
                    self.on_error(i, op, &e, false);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes `data` at `offset` to every in-sync copy (in parallel through `fanout` when
    /// it is large); to the copy being seeded too when `to_seeding` (see [`SeedFile`]).
    pub fn write_at(
        &self,
        fanout: &Fanout,
        files: &OpenFiles,
        offset: u64,
        data: &[u8],
        to_seeding: bool,
    ) -> io::Result<usize> {
        self.fan_out(fanout, files, "write", data, to_seeding, move |v, f, d| {
            v.write_all_at(f, offset, d).map(|()| d.len())
        })
    }

    /// Starts writing `[offset, offset+len)` of the handle's files back to every copy's
    /// disk, without waiting (a sequential writer's run, see `fs::node::WriteRun`). An
    /// error here is left to the next write or `fsync` to report.
    pub fn start_writeback(&self, files: &OpenFiles, offset: u64, len: u64) {
        for (i, c) in self.copies.iter().enumerate() {
            let Some(p) = c.writable() else { continue };
            if let (Some(v), Some(f)) = (&p.volume, files.get(i, c))
                && let Err(e) = v.start_writeback(&f.file, offset, len)
            {
                tracing::debug!("writeback of {} on copy {i}: {e}", self.name);
            }
        }
    }

    /// `fsync`/`fdatasync` on every copy that takes writes, in parallel: returns when all
    /// are durable.
    pub fn sync(&self, fanout: &Fanout, files: &OpenFiles, datasync: bool) -> io::Result<()> {
        let op = if datasync { "fdatasync" } else { "fsync" };
        self.fan_out(fanout, files, op, &[], true, move |v, f, _| {
            v.sync_file(f, datasync)
        })
    }

    /// Applies `f` to the open file of every copy that takes mutations (active first):
    /// truncate, fallocate, setattr through a handle. A copy where the handle has no file
    /// (it was unlinked before that copy was laid out) has nothing to change.
    pub fn mutate_files<T>(
        &self,
        op: &str,
        files: &OpenFiles,
        f: impl Fn(&Volume, &File) -> io::Result<T>,
    ) -> io::Result<T> {
        self.mutate_where(
            op,
            |i| files.get(i, &self.copies[i]).is_some(),
            |i, v| match files.get(i, &self.copies[i]) {
                Some(file) => f(v, &file.file),
                None => Err(io::Error::from_raw_os_error(libc::EIO)),
            },
        )
    }

    /// Runs `job(file, data)` on every in-sync copy (and the seeding copy when
    /// `to_seeding`) where the handle has a file: the first on this thread, the others on
    /// the fan-out threads at the same time (or all here in turn, for a small write);
    /// then reconciles the outcomes.
    fn fan_out<T: Send + 'static>(
        &self,
        fanout: &Fanout,
        files: &OpenFiles,
        op: &str,
        data: &[u8],
        to_seeding: bool,
        job: impl Fn(&Volume, &File, &[u8]) -> io::Result<T> + Send + Sync + std::marker::Copy + 'static,
    ) -> io::Result<T> {
        loop {
            let mut targets: [Option<Target>; MAX_COPIES] = Default::default();
            let mut n = 0;
            let active = self.active_index();
            // Active copy first: its error decides when no copy succeeds. A seeding copy
            // never goes first and never makes a write count as done on its own.
            let order = active
                .into_iter()
                .chain((0..self.copies.len()).filter(|&i| Some(i) != active));
            let mut in_sync = 0;
            for i in order {
                let c = &self.copies[i];
                let take = c.is(IN_SYNC) || (to_seeding && c.is(SEEDING) && n > 0);
                if !take || n == targets.len() {
                    continue;
                }
                let Some(p) = c.writable() else { continue };
                let (Some(v), Some(f)) = (p.volume.clone(), files.get(i, c)) else {
                    continue;
                };
                in_sync += usize::from(c.is(IN_SYNC));
                targets[n] = Some((i, v, f));
                n += 1;
            }
            if in_sync == 0 {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            let mut results: [Option<io::Result<T>>; MAX_COPIES] = Default::default();
            // A small write into the backing page cache takes less time than handing it
            // to another thread: the copies are written one after the other.
            let serial = n == 1 || (!data.is_empty() && data.len() < PARALLEL_WRITE);
            if serial {
                for (slot, t) in targets[..n].iter().enumerate() {
                    if let Some((_, v, f)) = t {
                        let r = v.timed(|| job(v, &f.file, data));
                        count_written(v, &r, data.len());
                        results[slot] = Some(r);
                    }
                }
            } else {
                let shared: Arc<[u8]> = Arc::from(data);
                let (completer, waiter) = fanout.batch(n - 1);
                for (slot, t) in targets[1..n].iter().enumerate() {
                    let Some((_, v, f)) = t.clone() else { continue };
                    let d = shared.clone();
                    let w = completer.clone();
                    fanout.submit(Box::new(move || {
                        let r = v.timed(|| job(&v, &f.file, &d));
                        count_written(&v, &r, d.len());
                        w.done(slot + 1, r);
                    }));
                }
                drop(completer);
                if let Some((_, v, f)) = &targets[0] {
                    let r = v.timed(|| job(v, &f.file, data));
                    count_written(v, &r, data.len());
                    results[0] = Some(r);
                }
                for (slot, r) in waiter.wait() {
                    results[slot] = Some(r);
                }
            }
            let seeding = |slot: usize| {
                targets[slot]
                    .as_ref()
                    .is_some_and(|(i, _, _)| !self.copies[*i].is(IN_SYNC))
            };
            let any_ok = (0..n).any(|slot| !seeding(slot) && matches!(results[slot], Some(Ok(_))));
            let mut first_ok = None;
            let mut caller_err = None;
            let mut seeded_alone = Vec::new();
            for (slot, r) in results.into_iter().take(n).enumerate() {
                let Some((i, _, _)) = &targets[slot] else {
                    continue;
                };
                match r {
                    Some(Ok(_)) if seeding(slot) && !any_ok => seeded_alone.push(*i),
                    Some(Ok(t)) if first_ok.is_none() && !seeding(slot) => first_ok = Some(t),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        // A seeding copy never decides: any error of its own fails it.
                        let failed = self.on_error(*i, op, &e, any_ok || seeding(slot));
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
                // The seeding copy took what every in-sync copy refused: it differs now.
                for i in seeded_alone {
                    self.on_error(i, op, &e, true);
                }
                return Err(e);
            }
            // Every target failed with a media error: try again on what is left.
        }
    }
}

/// Counts the data of a mutation that succeeded on `v` (metrics: bytes mirrored).
#[inline]
fn count_written<T>(v: &Volume, r: &io::Result<T>, len: usize) {
    if len > 0 && r.is_ok() {
        v.count_written(len);
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
