//! The pool's side of a failure ([`Store`] for the copy set): every copy on a dead volume
//! leaves the in-sync set, the new state is persisted (witness first, then every volume
//! that answers) before the request that found the failure may be acknowledged, the dead
//! volume is let go, and the events say what happened.

use std::io;
use std::sync::atomic::Ordering;

use super::state::{DbRecord, PoolState, pool_state_path, witness_path, write_witness};
use super::{Pool, Unpersisted};
use crate::copyset::{CopyState, Database, Store};
use crate::events::{EventId, NewEvent};
use crate::names::CopySlot;
use crate::names::DbName;
use crate::names::VolumeName;
use crate::tap::{self, Generation};
use crate::volume::{Volume, errno_of};

/// A volume found dead while the state was written: its name and error.
pub(super) type Dead = Vec<(VolumeName, io::Error)>;

impl crate::volume::Keeper for Pool {
    fn holds_last_copy(&self, volume: &VolumeName) -> bool {
        self.last_copy_on(volume).is_some()
    }
}

impl Store for Pool {
    fn volume_failed(&self, volume: &Volume, op: &str, err: &io::Error) -> bool {
        self.fail_volume(volume.name(), op, err)
    }

    fn copy_diverged(&self, db: &Database, slot: CopySlot, op: &str, err: &io::Error) {
        self.fail_diverged(db, slot, op, err);
    }

    fn checksum_failed(&self, db: &Database, slot: CopySlot, event: NewEvent) {
        let volume = db.copies()[slot].volume_name();
        if let Some(v) = self.volumes.iter().find(|v| v.name == volume) {
            v.checksum_errors.fetch_add(1, Ordering::Relaxed);
        }
        self.events.emit(event);
    }

    fn barrier(&self) -> io::Result<()> {
        if self.unpersisted.load(Ordering::SeqCst) != 0 {
            drop(self.state.lock());
        }
        if self.stranded.load(Ordering::SeqCst) {
            // The newest failure is recorded nowhere: a restart would trust the copy
            // that missed this write. Refuse to acknowledge it (reads still work).
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }
}

/// A copy that failed with its volume, for the event.
struct Failed {
    db: DbName,
    volume: VolumeName,
    op: String,
    errno: i32,
    timeout: Option<String>,
    /// It was the database's last copy in sync.
    last: bool,
}

impl Pool {
    /// Marks volume `name` failed after `err` during `op` (a media error, or a missed
    /// deadline): every copy on it becomes FailedAndSuspended, the state is persisted on
    /// every healthy volume, events are emitted. Returns once persisted, and whether the
    /// volume is failed. Idempotent.
    ///
    /// A missed deadline does not fail a volume that holds the last copy in sync of a
    /// database: the database would get EIO from then on, for
    /// a disk that is slow (a loaded host) or may answer yet; the operation that was late
    /// gets the error, the copy stays, and the slow-request counters say what happens.
    pub fn fail_volume(&self, name: &VolumeName, op: &str, err: &io::Error) -> bool {
        if let Some(p) = crate::volume::panic_of(err) {
            self.lane_panicked(p, op);
        }
        let mut state = self.state.lock();
        let unpersisted = Unpersisted::new(&self.unpersisted);
        let timeout = crate::volume::is_timeout(err).then(|| err.to_string());
        let mut pending = vec![(name.clone(), op.to_owned(), errno_of(err), timeout)];
        let mut failed = Vec::new();
        let mut moved = Vec::new();
        while let Some((vol, op, errno, timeout)) = pending.pop() {
            if state.failed_volumes.contains(&vol) {
                continue;
            }
            if timeout.is_some()
                && let Some(db) = self.last_copy_on(&vol)
            {
                tracing::warn!(
                    "{vol} missed its deadline during {op} but holds the last copy of {db} in \
                     sync: not failed (the {op} gets the error)"
                );
                continue;
            }
            state.failed_volumes.push(vol.clone());
            if let Some(v) = self.volume(&vol) {
                v.mark_failed();
            }
            let mut bumped = Vec::new();
            for d in &self.databases {
                let before = d.active_volume();
                let left = d.fail_copies_on(&vol);
                if left.is_empty() {
                    continue;
                }
                // The last copy in sync keeps every acknowledged write (the failing
                // request was not acknowledged): it stays trusted for the next mount.
                let last = d.active_index().is_none();
                if let Some(rec) = state.database_mut(&d.name)
                    && !last
                {
                    for &(slot, was) in &left {
                        if let Some(c) = rec.copies.get_mut(slot.index()) {
                            c.set_failed();
                        }
                        if copy_left(rec, d, slot, was) {
                            bumped.push(d.index);
                        }
                    }
                }
                failed.push(Failed {
                    db: d.name.clone(),
                    volume: vol.clone(),
                    op: op.clone(),
                    errno,
                    timeout: timeout.clone(),
                    last,
                });
                let after = d.active_volume();
                if before != after {
                    moved.push((d.name.clone(), before, after, vol.clone()));
                }
            }
            // Persisting may itself find another dying volume.
            for (v2, e2) in self.persist_locked(&mut state) {
                let timeout = crate::volume::is_timeout(&e2).then(|| e2.to_string());
                pending.push((v2, "persist pool state".to_owned(), errno_of(&e2), timeout));
            }
            for d in self.databases.iter().filter(|d| bumped.contains(&d.index)) {
                if let Some(rec) = state.database(&d.name) {
                    write_generations(d, &rec.generation);
                }
            }
        }
        drop(unpersisted);
        let dead_volumes = state.failed_volumes.clone();
        let is_failed = dead_volumes.contains(name);
        drop(state);
        self.let_go(&dead_volumes);
        for f in failed {
            self.emit_failed(f);
        }
        for (db, before, after, vol) in moved {
            self.events.emit(
                NewEvent::new(
                    EventId::ActiveChanged,
                    format!(
                        "database {db}: active copy moved from {} to {}",
                        before.as_deref().unwrap_or("none"),
                        after.as_deref().unwrap_or("none (no copy in sync)")
                    ),
                )
                .database(&db)
                .volume(after.as_deref().unwrap_or(&vol)),
            );
        }
        is_failed
    }

    /// Makes the pool the keeper of volume `v` (see [`crate::volume::serve_requests`]).
    pub(super) fn keep(&self, v: &Volume) {
        let me: std::sync::Weak<dyn crate::volume::Keeper> = self.me.clone();
        v.set_keeper(me);
    }

    /// A database whose every copy in sync is on volume `name`, if any: failing the
    /// volume would leave it none.
    fn last_copy_on(&self, name: &VolumeName) -> Option<&DbName> {
        self.databases
            .iter()
            .find(|d| {
                let mut in_sync = d.copies().iter().filter(|c| c.is(CopyState::InSync));
                in_sync.clone().any(|c| c.volume_name() == *name)
                    && in_sync.all(|c| c.volume_name() == *name)
            })
            .map(|d| &d.name)
    }

    /// An operation on a volume's lane panicked (a bug): it was answered as a failed I/O of
    /// the volume (failed below, the request completes from the other copies) and the
    /// lane goes on serving. Event 3060, with the volume and the operation.
    fn lane_panicked(&self, p: &crate::volume::Panicked, during: &str) {
        let volume = &p.volume;
        self.events.emit(
            NewEvent::new(
                EventId::RequestPanicked,
                format!(
                    "a {} on volume {volume} panicked during {during} ({}); it was answered as an I/O error of {volume} (the volume is failed, the request completes from the other copies) and the volume's lane goes on serving. This is a bug: please report it with the daemon's log",
                    p.op, p.message
                ),
            )
            .volume(volume)
            .field("operation", p.op)
            .field("request", during)
            .field("panic", p.message.as_str())
            .field("lane", true),
        );
    }

    /// Nothing may keep a dead volume's filesystem alive: the disk can then be unmounted,
    /// checked and mounted again while the database runs (AutoReseed's resume step finds
    /// it back). Closes every file the copies had on the failed volumes.
    fn let_go(&self, failed: &[VolumeName]) {
        let mut released = false;
        for name in failed {
            if let Some(pv) = self.pool_volume(name)
                && pv.volume().is_some_and(|v| v.is_failed())
            {
                pv.release();
                released = true;
            }
        }
        if released {
            for d in &self.databases {
                d.release_stale_files();
            }
        }
    }

    fn emit_failed(&self, f: Failed) {
        let Failed {
            db,
            volume: vol,
            op,
            errno,
            timeout,
            last,
        } = f;
        let why = match &timeout {
            Some(t) => format!("{t}: a hung disk is failed like a dead one"),
            None => io::Error::from_raw_os_error(errno).to_string(),
        };
        let tail = if last {
            format!(
                ". It was the last copy of {db} in sync: {db} gets EIO until {vol} answers again; the copy keeps every acknowledged write and will be trusted by the next mount"
            )
        } else {
            String::new()
        };
        self.events.emit(
            NewEvent::new(
                EventId::CopyFailed,
                format!(
                    "copy {db}\\{vol} is FailedAndSuspended: volume {vol} failed during {op} ({why}){tail}"
                ),
            )
            .database(&db)
            .volume(&vol)
            .field("operation", op)
            .field("errno", errno)
            .field("reason", if timeout.is_some() { "timeout" } else { "io_error" })
            .field("status", "FailedAndSuspended")
            .field("last_copy", last),
        );
    }

    /// Fails copy `slot` of `db` alone: it answered `err` to `op` while another copy took
    /// the mutation, so the copies are no longer identical.
    pub fn fail_diverged(&self, db: &Database, slot: CopySlot, op: &str, err: &io::Error) {
        let mut state = self.state.lock();
        let pending = Unpersisted::new(&self.unpersisted);
        let Some(was) = db.fail_copy(slot) else {
            return;
        };
        let vol = db.copies()[slot].volume_name();
        if let Some(rec) = state.database_mut(&db.name) {
            if let Some(c) = rec.copies.get_mut(slot.index()) {
                c.set_failed();
            }
            copy_left(rec, db, slot, was);
        }
        let dead = self.persist_locked(&mut state);
        if let Some(rec) = state.database(&db.name) {
            write_generations(db, &rec.generation);
        }
        drop(pending);
        drop(state);
        self.events.emit(
            NewEvent::new(
                EventId::CopyDiverged,
                format!(
                    "copy {}\\{vol} is FailedAndSuspended: it answered {op} with \"{err}\" while another copy succeeded",
                    db.name
                ),
            )
            .database(&db.name)
            .volume(&vol)
            .field("operation", op)
            .field("errno", err.raw_os_error().unwrap_or(0))
            .field("status", "FailedAndSuspended"),
        );
        self.fail_dead(dead);
    }

    /// Bumps the epoch and writes the state to the witness and every healthy volume;
    /// returns the volumes whose write failed with a media error or missed its deadline.
    /// When no volume and no witness took the state, the pool is stranded: mutations that
    /// skipped a copy are refused ([`Store::barrier`]) until a later write of the state
    /// reaches somewhere.
    pub(super) fn persist_locked(&self, state: &mut PoolState) -> Dead {
        // Under the state lock: never past a deadline, even on a request thread.
        crate::volume::within_deadlines(|| self.persist_within_deadlines(state))
    }

    fn persist_within_deadlines(&self, state: &mut PoolState) -> Dead {
        state.epoch += 1;
        let mut written = 0;
        if let Err(err) = self.write_witness_within(state) {
            // A stale witness would vouch for a state that is not the newest: remove it
            // (on the system disk's lane: nobody waits for a hung disk).
            let path = witness_path(&self.config, &state.pool_id);
            let stale = path.clone();
            drop(self.system.submit(move || std::fs::remove_file(stale)));
            self.events.emit(NewEvent::new(
                EventId::StatePersistFailed,
                format!(
                    "cannot write the pool state witness {}: {err} (removed it; a crash that also kills a disk will need that disk back to mount)",
                    path.display()
                ),
            ));
        } else {
            written += 1;
        }
        let bytes = match serde_json::to_vec_pretty(&*state) {
            Ok(b) => b,
            Err(_) => return Vec::new(),
        };
        let mut dead = Vec::new();
        for v in &self.volumes {
            let Some(vol) = v.volume() else { continue };
            if state.failed_volumes.contains(&v.name) {
                continue;
            }
            match vol.write_atomic(&pool_state_path(), &bytes) {
                Ok(()) => written += 1,
                Err(err) => {
                    vol.count_io_error();
                    self.events.emit(
                        NewEvent::new(
                            EventId::StatePersistFailed,
                            format!("cannot write the pool state to {}: {err}", v.name),
                        )
                        .volume(&v.name),
                    );
                    if crate::volume::is_media_error(&err) {
                        dead.push((v.name.clone(), err));
                    }
                }
            }
        }
        let was = self.stranded.swap(written == 0, Ordering::SeqCst);
        if written == 0 && !was {
            self.events.emit(NewEvent::new(
                EventId::StatePersistFailed,
                format!(
                    "the pool state (epoch {}) could not be written anywhere: not to the witness in {}, not to any volume. Writes that skip a copy are refused with EIO until it can be (reads go on): check the system disk and the volumes",
                    state.epoch,
                    self.config.witness_dir.display()
                ),
            ).field("stranded", true));
        }
        dead
    }

    /// Writes the witness on the system disk within the volumes' deadline: a hung system
    /// disk fails the witness, not the pool.
    fn write_witness_within(&self, state: &PoolState) -> io::Result<()> {
        let (config, copy) = (self.config.clone(), state.clone());
        let limits = self.config.volume.limits();
        self.system
            .run(limits.io_timeout, move || write_witness(&config, &copy))
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the system disk did not answer within {}",
                        humantime::format_duration(limits.io_timeout)
                    ),
                ))
            })
    }

    /// Fails the volumes a persist found dead.
    pub(super) fn fail_dead(&self, dead: Dead) {
        for (v, err) in dead {
            self.fail_volume(&v, "persist pool state", &err);
        }
    }
}

/// Copy `slot` of `db` left the in-sync copies: the database moves to a new generation
/// and the tap records what the copy misses from the old one on. A copy already lagging
/// (it failed again during its resync) keeps its map.
/// `was` is the copy's state before it failed: only a copy that was in sync has a known
/// content to record changes against. Returns whether the generation moved.
pub(super) fn copy_left(rec: &mut DbRecord, db: &Database, slot: CopySlot, was: CopyState) -> bool {
    let Some(c) = rec.copies.get(slot.index()) else {
        return false;
    };
    if c.dirty_base.is_some() || was != CopyState::InSync {
        return false;
    }
    let since = c.failed_at.unwrap_or_else(std::time::SystemTime::now);
    let volume = c.volume.clone();
    let base = rec.generation.bump();
    rec.copies[slot.index()].dirty_base = Some(base);
    db.tap().start_lagging(slot, &volume, base, since);
    true
}

/// Writes `g` as the copy generation of every in-sync copy of `db`.
pub(super) fn write_generations(db: &Database, g: &Generation) {
    for v in db.in_sync_volumes() {
        if let Err(e) = tap::write_copy_generation(&v, &db.name, g) {
            tracing::warn!(
                "cannot write the generation of {} on {}: {e}",
                db.name,
                v.name()
            );
        }
    }
}
