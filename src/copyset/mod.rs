//! One database's copies: the owner of every copy's state, the one place a mutation is
//! performed (ordering locks, log tap record, routing to a copy being seeded, fan-out to
//! the copies, outcome rules, writeback hint), and read routing with failover.
//!
//! - `copy`: a copy's placement and state, and the Exchange status word.
//! - `ops`: the mutations, one call each, as the filesystem core asks for them.
//! - `route`: how an operation reaches the copies, and the outcome rules below.
//! - `files`: the backing files of open handles, closed at once when a volume dies.
//! - `io`: per-file locks and marks. `seed`: writes to a copy being seeded.
//! - [`repair`]: crash repair, where the activity log says the copies may differ.
//! - `integrity`: block checksums on the data path (see [`crate::checksum`]): every read
//!   checked, a bad block served and rewritten from a copy whose block matches.
//!
//! Outcome rules, applied to every mutation:
//! - a media error (EIO, ENXIO, ENODEV, ESHUTDOWN, EROFS, EUCLEAN) fails the volume and
//!   the request goes on with the other copies;
//! - a copy that errs while another copy took the mutation (ENOSPC on one copy, or any
//!   other disagreement) is failed: copies must stay identical;
//! - an error every copy agrees on (ENOENT, EEXIST, EACCES, ENOSPC everywhere, ...)
//!   belongs to the caller and is returned as it is, failing nothing;
//! - only when no copy is in sync does the caller see `EIO`.
//!
//! The path of a failure, top to bottom: a copy's error reaches [`Database::on_error`],
//! which decides between the caller and the copy; a failed copy is reported to the
//! [`Store`] (the pool), which runs the transitions of this module on every database with
//! a copy on that volume (`Database::fail_copies_on`), persists the new state on the
//! volumes that answer and the witness, and returns; the copies then let go of every file
//! on the dead volume ([`Database::release_stale_files`]), and the request completes on the
//! copies left. Nothing here calls up into the filesystem core.

mod copy;
mod files;
mod integrity;
mod io;
mod ops;
pub mod repair;
mod route;
mod seed;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::{
    Mutex, MutexGuard, RecursiveRwLock, RecursiveRwLockReadGuard, RecursiveRwLockWriteGuard,
};

pub use crate::volume::DIRECT_ALIGN;
pub use copy::{Copy, CopyState, Placement, StatusWord};
pub use files::{BackingFile, OpenFiles};
pub use integrity::SeedSums;
pub use io::{FileIo, FileRef, RangeGuard, WriteRun};
pub use seed::SeedFile;

use crate::names::CopySlot;
use crate::names::DbName;
use crate::names::VolumeName;
use crate::tap::{Replicas, Tap};
use crate::volume::Volume;

const NO_ACTIVE: usize = usize::MAX;

/// The most copies one database can have.
pub const MAX_COPIES: usize = 8;

/// What must outlive the process when a copy leaves the in-sync set: implemented by the
/// pool ([`crate::pool::Pool`]), which persists the pool state on every volume that
/// answers and the witness. Each call returns once the change is durable, so that a
/// mutation which skipped the copy may then be acknowledged.
pub trait Store: Send + Sync {
    /// Volume `volume` failed during `op` with `err`: every copy on it, in every
    /// database, leaves the in-sync set (`Database::fail_copies_on`). Returns whether the
    /// volume is failed: not when `err` is a missed deadline and the volume holds the last
    /// copy in sync of a database (a slow copy is better than none; the caller gets the
    /// error).
    fn volume_failed(&self, volume: &Volume, op: &str, err: &std::io::Error) -> bool;
    /// Copy `slot` of `db` answered `op` with `err` while another copy took it: it
    /// leaves the in-sync set alone (`Database::fail_copy`).
    fn copy_diverged(&self, db: &Database, slot: CopySlot, op: &str, err: &std::io::Error);
    /// Returns once every failure already visible in copy states is persisted; an error
    /// when it could be persisted nowhere (the mutation must not be acknowledged).
    fn barrier(&self) -> std::io::Result<()>;
    /// A block of copy `slot` of `db` did not match its checksum (`event` says which and
    /// what was done): recorded and counted against the copy's volume.
    fn checksum_failed(&self, db: &Database, slot: CopySlot, event: crate::events::NewEvent) {
        let _ = (db, slot, event);
    }
}

/// How long a new reseed waits for the seed lock of a job in its last steps (the
/// caller already refused a job that is still running).
const SEED_LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// A database and its copies.
pub struct Database {
    /// `db001`.
    pub name: DbName,
    /// Position in the pool (stable while mounted).
    pub index: usize,
    copies: Vec<Copy>,
    active: AtomicUsize,
    store: Weak<dyn Store>,
    /// Held shared by every namespace mutation and handle open, exclusively by a reseed
    /// while it lays out the new copy.
    namespace: RecursiveRwLock<()>,
    /// One reseed at a time per database.
    seeding: Mutex<()>,
    /// Numbers mutations and records what lagging copies miss.
    tap: Tap,
    /// The open handles' files, for closing those on a dead volume.
    open_files: files::Registry,
    /// Block checksums: on or off, and the stores open now.
    sums: Arc<crate::checksum::Sums>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("name", &self.name)
            .field("copies", &self.copies)
            .field("active", &self.active_index())
            .finish_non_exhaustive()
    }
}

impl Database {
    /// A database over `copies`; the first in-sync copy becomes active. Failures go to
    /// `store`.
    pub fn new(name: DbName, index: usize, copies: Vec<Copy>, store: Weak<dyn Store>) -> Database {
        let active = copies
            .iter()
            .position(|c| c.is(CopyState::InSync))
            .unwrap_or(NO_ACTIVE);
        Database {
            active: AtomicUsize::new(active),
            store,
            namespace: RecursiveRwLock::new(()),
            seeding: Mutex::new(()),
            tap: Tap::new(&name, copies.len(), true),
            open_files: files::Registry::default(),
            sums: Arc::new(crate::checksum::Sums::new(&name)),
            name,
            index,
            copies,
        }
    }

    /// Turns block checksums on or off (the pool's `[checksums] enabled`, before the
    /// database serves): the tap keeps an activity log for a single copy only when they
    /// are on (see [`Tap::new`]).
    pub fn with_checksums(mut self, on: bool) -> Database {
        self.sums.set_enabled(on);
        self.tap = Tap::new(&self.name, self.copies.len(), on);
        self
    }

    /// The log tap.
    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    /// Block checksums of this database.
    pub fn sums(&self) -> &crate::checksum::Sums {
        &self.sums
    }

    /// The copies, in placement order.
    pub fn copies(&self) -> &[Copy] {
        &self.copies
    }

    /// The volumes of the in-sync copies.
    pub fn in_sync_volumes(&self) -> Vec<Arc<Volume>> {
        self.copies
            .iter()
            .filter_map(Copy::in_sync_volume)
            .collect()
    }

    /// Index of the active copy, if any copy is in sync.
    pub fn active_index(&self) -> Option<usize> {
        match self.active.load(Ordering::Acquire) {
            NO_ACTIVE => None,
            i => Some(i),
        }
    }

    /// Volume name of the active copy.
    pub fn active_volume(&self) -> Option<VolumeName> {
        self.active_index().map(|i| self.copies[i].volume_name())
    }

    /// Index of the copy being seeded, if any.
    pub fn seeding_index(&self) -> Option<usize> {
        self.copies.iter().position(|c| c.is(CopyState::Seeding))
    }

    /// The Exchange status word of copy `i`.
    pub fn status_word(&self, slot: CopySlot) -> StatusWord {
        let i = slot.index();
        StatusWord::of(self.copies[i].state(), self.active_index() == Some(i))
    }

    /// The copy in `slot`.
    pub fn copy(&self, slot: CopySlot) -> &Copy {
        &self.copies[slot.index()]
    }

    /// Every slot with its copy, in order.
    pub fn slots(&self) -> impl Iterator<Item = (CopySlot, &Copy)> {
        self.copies
            .iter()
            .enumerate()
            .map(|(i, c)| (CopySlot::new(i), c))
    }

    /// The slot of the active copy, if any copy is in sync.
    pub fn active_slot(&self) -> Option<CopySlot> {
        self.active_index().map(CopySlot::new)
    }

    /// The slot of the copy being seeded, if any.
    pub fn seeding_slot(&self) -> Option<CopySlot> {
        self.seeding_index().map(CopySlot::new)
    }

    /// True when a copy is not in sync.
    pub fn degraded(&self) -> bool {
        self.copies.iter().any(|c| !c.is(CopyState::InSync))
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
    ///
    /// A job that just declared its copy in sync (its progress says done, 1110 is out)
    /// still holds the lock for its last steps; a request that follows at once (an
    /// operator's `reseed --wait` right after `status` showed Healthy) waits that long,
    /// not more (`SEED_LOCK_PATIENCE`).
    pub fn try_seed_lock(&self) -> Option<MutexGuard<'_, ()>> {
        self.seeding.try_lock_for(SEED_LOCK_PATIENCE)
    }

    // ---- Transitions. The pool calls them with its state lock held and persists what
    // they return; nothing else changes a copy's state.

    /// Moves the copy in `slot` to a new placement in state Seeding; returns its
    /// generation. The caller holds the namespace exclusively.
    pub(crate) fn start_seeding(
        &self,
        slot: CopySlot,
        volume_name: VolumeName,
        volume: Arc<Volume>,
    ) -> u64 {
        let copy = self.copy(slot);
        copy.set(CopyState::FailedAndSuspended);
        let generation = copy.place(volume_name, Some(volume));
        copy.set(CopyState::Seeding);
        generation
    }

    /// The copy in `slot` finished seeding: in sync. False when it failed meanwhile.
    pub(crate) fn seeded(&self, slot: CopySlot) -> bool {
        let ok = self
            .copy(slot)
            .move_from(CopyState::Seeding, CopyState::InSync);
        if ok {
            self.elect();
        }
        ok
    }

    /// Fails every copy on volume `vol` and elects a new active copy. The copies let go
    /// of the dead volume (a new placement without it), so that nothing keeps its
    /// filesystem alive once it is unmounted: the disk can come back while the database
    /// runs. Returns the copies that changed, with the state each left.
    pub(crate) fn fail_copies_on(&self, vol: &str) -> Vec<(CopySlot, CopyState)> {
        let mut changed = Vec::new();
        for (i, c) in self.slots() {
            if c.placement().volume_name != vol {
                continue;
            }
            let was = c.set(CopyState::FailedAndSuspended);
            if was != CopyState::FailedAndSuspended {
                changed.push((i, was));
            }
            c.let_go();
        }
        if !changed.is_empty() {
            self.elect();
        }
        changed
    }

    /// Takes the copy in `slot` out of service on an operator's request (suspend): like a
    /// failure, its placement lets go of the volume so no file stays open there. False
    /// unless it was in sync.
    pub(crate) fn suspend_copy(&self, slot: CopySlot) -> bool {
        let c = self.copy(slot);
        if !c.move_from(CopyState::InSync, CopyState::FailedAndSuspended) {
            return false;
        }
        c.let_go();
        self.elect();
        true
    }

    /// Fails the copy in `slot` alone (it diverged, or its reseed failed). Returns the
    /// state it left, or `None` when it was failed already.
    pub(crate) fn fail_copy(&self, slot: CopySlot) -> Option<CopyState> {
        let was = self.copy(slot).set(CopyState::FailedAndSuspended);
        if was == CopyState::FailedAndSuspended {
            return None;
        }
        self.elect();
        Some(was)
    }

    /// Closes every handle's file opened on an earlier placement of its copy (after a
    /// failure, a suspend or a remap).
    pub fn release_stale_files(&self) {
        self.open_files.release_stale(&self.copies);
        if let Some(al) = &self.tap.activity {
            al.release_stale(self);
        }
    }

    fn elect(&self) {
        let cur = self.active.load(Ordering::Acquire);
        if cur != NO_ACTIVE && self.copies[cur].is(CopyState::InSync) {
            return;
        }
        let next = self
            .copies
            .iter()
            .position(|c| c.is(CopyState::InSync))
            .unwrap_or(NO_ACTIVE);
        self.active.store(next, Ordering::Release);
    }
}

/// The log tap writes its activity log to the in-sync copies, and reports their errors
/// here.
impl Replicas for Database {
    fn in_sync(&self) -> Vec<(usize, u64, Arc<Volume>)> {
        self.copies
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let p = c.placement();
                let v = c.in_sync_volume()?;
                Some((i, p.generation, v))
            })
            .collect()
    }

    fn volume_name(&self, slot: CopySlot) -> String {
        self.copies[slot.index()].volume_name().to_string()
    }

    fn on_error(&self, slot: CopySlot, op: &str, err: &std::io::Error) {
        Database::on_error(self, slot.index(), op, err, true);
    }

    fn flush(&self) {
        self.flush_sums();
    }
}
