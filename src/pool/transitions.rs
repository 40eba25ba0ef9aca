//! The transitions operators and the rebuilds ask for: seed and resync a copy, finish
//! or abort that, suspend a copy, record a divergence, block or unblock AutoReseed, take
//! a failed volume back; and, at open, every database's tap. Each persists the pool state
//! before it returns, under the state lock that orders it against failures.

use std::sync::Arc;
use std::time::SystemTime;

use super::failure::{copy_left, write_generations};
use super::open::probe_volume;
use super::state::{CopyRecord, PoolState, RetiredCopy};
use super::{Pool, Unpersisted};
use crate::copyset::{CopyState, Database};
use crate::events::{EventId, NewEvent};
use crate::names::CopySlot;
use crate::names::DbName;
use crate::names::VolumeName;
use crate::tap;
use crate::volume::Volume;

impl Pool {
    /// Probes volume `name` again (open its directory anew, read its metadata, write,
    /// fsync and read back a canary). When it answers, the pool uses the new handle and
    /// a volume recorded as failed is failed no more (event 3022).
    pub fn reprobe_volume(&self, name: &str) -> Result<Arc<Volume>, String> {
        let pv = self
            .pool_volume(name)
            .ok_or_else(|| format!("{name} is not a volume of this pool"))?;
        let pool_id = self.state.lock().pool_id.clone();
        let v = probe_volume(&pv.name, &pv.path, &pool_id, self.config.volume.limits())?;
        let v = Arc::new(v);
        self.keep(&v);
        let returned = {
            let mut state = self.state.lock();
            pv.volume.store(Some(v.clone()));
            let was = state.failed_volumes.len();
            state.failed_volumes.retain(|f| f != name);
            let returned = state.failed_volumes.len() != was;
            if returned {
                self.persist_locked(&mut state);
            }
            returned
        };
        if returned {
            self.events.emit(
                NewEvent::new(
                    EventId::VolumeReturned,
                    format!("volume {name} answers its health probe again"),
                )
                .volume(name),
            );
        }
        Ok(v)
    }

    /// Starts seeding copy `slot` of `db` on volume `target` (its own volume, or a spare
    /// that takes the failed copy's place in the placement): the copy becomes Seeding and
    /// the placement is persisted on every healthy volume before this returns. Refused
    /// unless the copy is FailedAndSuspended (or `allow_in_sync` and another copy is in
    /// sync) and not ReseedBlocked. The caller holds the database's namespace exclusively.
    /// Returns the new placement's generation.
    pub fn begin_seed(
        &self,
        db: &Database,
        slot: CopySlot,
        target: &VolumeName,
        volume: Arc<Volume>,
        allow_in_sync: bool,
    ) -> Result<u64, String> {
        let mut state = self.state.lock();
        let pending = Unpersisted::new(&self.unpersisted);
        let rec = state
            .databases
            .iter_mut()
            .find(|d| d.name == db.name)
            .ok_or_else(|| format!("database {} is not in the pool state", db.name))?;
        let copy = rec
            .copies
            .get(slot.index())
            .cloned()
            .ok_or_else(|| format!("{} has no copy #{slot}", db.name))?;
        let label = format!("{}\\{}", db.name, copy.volume);
        if copy.reseed_blocked {
            return Err(format!(
                "copy {label} is ReseedBlocked: `reseedfs unblock {} --volume {} --reseed` first",
                db.name, copy.volume
            ));
        }
        let others_in_sync = db
            .copies()
            .iter()
            .enumerate()
            .any(|(i, c)| i != slot && c.state() == CopyState::InSync);
        if !others_in_sync {
            return Err(format!(
                "no other copy of {} is in sync to seed {label} from",
                db.name
            ));
        }
        match db.copies()[slot].state() {
            CopyState::FailedAndSuspended => {}
            CopyState::InSync if allow_in_sync => {}
            s => {
                return Err(format!(
                    "copy {label} is {s:?}: only a FailedAndSuspended copy is reseeded"
                ));
            }
        }
        if *target != copy.volume && rec.copies.iter().any(|c| c.volume == *target) {
            return Err(format!("{target} already holds a copy of {}", db.name));
        }
        if *target != copy.volume {
            rec.retired.push(RetiredCopy {
                volume: copy.volume.clone(),
                at: SystemTime::now(),
                replaced_by: target.clone(),
            });
        }
        rec.copies[slot.index()] = CopyRecord {
            volume: target.clone(),
            state: CopyState::Seeding,
            failed_at: None,
            reseed_blocked: false,
            resume_blocked: copy.resume_blocked,
            suspended: false,
            dirty_base: None,
            divergence: copy.divergence.clone(),
        };
        // A full copy needs no record of what the old one missed.
        db.tap().stop_lagging(slot);
        tap::remove_dirty_map(&db.in_sync_volumes(), &db.name, &copy.volume);
        state.failed_volumes.retain(|v| v != target);
        let generation = db.start_seeding(slot, target.clone(), volume);
        let dead = self.persist_locked(&mut state);
        drop(pending);
        drop(state);
        self.fail_dead(dead);
        Ok(generation)
    }

    /// Copy `slot` of `db` finished seeding and verification: in sync, persisted. False
    /// when the copy failed meanwhile.
    pub fn finish_seed(&self, db: &Database, slot: CopySlot) -> bool {
        let mut state = self.state.lock();
        if !db.seeded(slot) {
            return false;
        }
        if let Some(c) = state
            .databases
            .iter_mut()
            .find(|d| d.name == db.name)
            .and_then(|d| d.copies.get_mut(slot.index()))
        {
            c.state = CopyState::InSync;
            c.failed_at = None;
            c.dirty_base = None;
            c.suspended = false;
            c.divergence = None;
        }
        let dead = self.persist_locked(&mut state);
        // The copy has the in-sync copies' generation now; what it missed is copied.
        if let Some(rec) = state.databases.iter().find(|r| r.name == db.name) {
            write_generations(db, &rec.generation);
        }
        if let Some(map) = db.tap().stop_lagging(slot) {
            tap::remove_dirty_map(&db.in_sync_volumes(), &db.name, &map.volume);
        }
        drop(state);
        self.fail_dead(dead);
        true
    }

    /// Starts an incremental resync of copy `slot` of `db` on its own volume: the copy
    /// becomes Seeding (takes every mutation from here on) and keeps its dirty map until
    /// [`Pool::finish_seed`]. The caller holds the namespace exclusively.
    pub fn begin_resync(
        &self,
        db: &Database,
        slot: CopySlot,
        volume: Arc<Volume>,
    ) -> Result<u64, String> {
        let mut state = self.state.lock();
        let pending = Unpersisted::new(&self.unpersisted);
        let name = db.copies()[slot].volume_name();
        let label = format!("{}\\{name}", db.name);
        let c = state
            .databases
            .iter_mut()
            .find(|d| d.name == db.name)
            .and_then(|d| d.copies.get_mut(slot.index()))
            .ok_or_else(|| format!("{label} is not in the pool state"))?;
        if db.copies()[slot].state() != CopyState::FailedAndSuspended {
            return Err(format!(
                "copy {label} is {:?}: only a FailedAndSuspended copy is resynced",
                db.copies()[slot].state()
            ));
        }
        if !db
            .copies()
            .iter()
            .enumerate()
            .any(|(i, c)| i != slot && c.state() == CopyState::InSync)
        {
            return Err(format!(
                "no other copy of {} is in sync to resync {label} from",
                db.name
            ));
        }
        c.state = CopyState::Seeding;
        c.suspended = false;
        state.failed_volumes.retain(|v| *v != name);
        let generation = db.start_seeding(slot, name, volume);
        let dead = self.persist_locked(&mut state);
        drop(pending);
        drop(state);
        self.fail_dead(dead);
        Ok(generation)
    }

    /// Suspends copy `slot` of `db` by an operator's request: it stops taking mutations
    /// (recorded in its dirty map from here on), its volume is synced and released, and
    /// AutoReseed leaves it alone until it is resumed.
    pub fn suspend(&self, db: &Database, slot: CopySlot) -> Result<(), String> {
        let label = format!("{}\\{}", db.name, db.copies()[slot].volume_name());
        if db.copies()[slot].state() != CopyState::InSync {
            return Err(format!(
                "copy {label} is {}: only a copy in sync can be suspended",
                db.status_word(slot)
            ));
        }
        if !db
            .copies()
            .iter()
            .enumerate()
            .any(|(i, c)| i != slot && c.state() == CopyState::InSync)
        {
            return Err(format!(
                "copy {label} is the last copy of {} in sync: suspending it would stop the database",
                db.name
            ));
        }
        // Writes in flight finish on the copy; later ones are recorded for it.
        let _namespace = db.namespace_exclusive();
        let volume = db.copies()[slot].in_sync_volume();
        let mut state = self.state.lock();
        let pending = Unpersisted::new(&self.unpersisted);
        if !db.suspend_copy(slot) {
            return Err(format!("copy {label} changed state meanwhile; try again"));
        }
        if let Some(rec) = state.databases.iter_mut().find(|r| r.name == db.name) {
            if let Some(c) = rec.copies.get_mut(slot.index()) {
                c.set_failed();
                c.suspended = true;
            }
            copy_left(rec, db, slot, CopyState::InSync);
        }
        let dead = self.persist_locked(&mut state);
        if let Some(rec) = state.databases.iter().find(|r| r.name == db.name) {
            write_generations(db, &rec.generation);
        }
        drop(pending);
        drop(state);
        if let Some(v) = volume {
            if let Err(e) = v.syncfs() {
                tracing::warn!("suspending {label}: syncfs of {}: {e}", v.name());
            }
        }
        self.fail_dead(dead);
        db.release_stale_files();
        self.events.emit(
            NewEvent::new(
                EventId::CopySuspended,
                format!("copy {label} is suspended by an operator: what it misses is recorded for an incremental resume"),
            )
            .database(&db.name)
            .volume(&db.copies()[slot].volume_name())
            .field("status", "FailedAndSuspended"),
        );
        Ok(())
    }

    /// After an unclean stop: compares and repairs the in-sync copies of every database
    /// where the activity log says they may differ (event 3033). Call before serving.
    pub fn repair_after_crash(&self) -> Vec<crate::copyset::repair::RepairReport> {
        if self.was_clean {
            return Vec::new();
        }
        let mut out = Vec::new();
        for db in &self.databases {
            let started = std::time::Instant::now();
            match crate::copyset::repair::after_crash(db) {
                Ok(r) => {
                    self.events.emit(
                        NewEvent::new(
                            EventId::CrashRepaired,
                            format!(
                                "{} was not stopped cleanly: {} extents of {} files compared on {} copies ({} KiB read per copy), {} KiB and {} tree entries repaired, {:.2} s",
                                db.name,
                                r.extents,
                                r.files,
                                r.copies,
                                r.bytes_read >> 10,
                                r.bytes_repaired >> 10,
                                r.tree_fixed,
                                started.elapsed().as_secs_f64()
                            ),
                        )
                        .database(&db.name)
                        .field("extents", r.extents as u64)
                        .field("files", r.files as u64)
                        .field("bytes_read", r.bytes_read)
                        .field("bytes_repaired", r.bytes_repaired)
                        .field("tree_fixed", r.tree_fixed as u64)
                        .field("extents_resummed", r.extents_resummed as u64),
                    );
                    out.push(r);
                }
                Err(e) => {
                    tracing::error!("{e}");
                    self.events.emit(
                        NewEvent::new(EventId::CrashRepaired, format!("crash repair: {e}"))
                            .database(&db.name)
                            .field("error", e.as_str()),
                    );
                }
            }
        }
        out
    }

    /// Records that copy `slot` of `db` cannot be resynced incrementally (`code`), and
    /// suspends it when an operator must decide (`on_divergence = "manual"`).
    pub fn mark_divergent(&self, db: &Database, slot: CopySlot, code: &str, suspend: bool) {
        let mut state = self.state.lock();
        if let Some(c) = state
            .databases
            .iter_mut()
            .find(|d| d.name == db.name)
            .and_then(|d| d.copies.get_mut(slot.index()))
        {
            c.divergence = Some(code.to_owned());
            c.suspended |= suspend;
        }
        let dead = self.persist_locked(&mut state);
        drop(state);
        self.fail_dead(dead);
    }

    /// At open (state lock held): every database gets a generation, every copy that is
    /// not in sync its dirty map back from the in-sync volumes.
    pub(super) fn start_taps(&self, state: &mut PoolState) {
        for d in &self.databases {
            let Some(rec) = state.databases.iter_mut().find(|r| r.name == d.name) else {
                continue;
            };
            if rec.generation.current == 0 {
                rec.generation.current = tap::new_generation_id();
            }
            write_generations(d, &rec.generation);
            let volumes = d.in_sync_volumes();
            for (slot, c) in rec.copies.iter().enumerate() {
                let Some(base) = c.dirty_base else { continue };
                if c.state == CopyState::InSync {
                    continue;
                }
                match tap::read_dirty_map(&volumes, &d.name, &c.volume) {
                    Some(map) => d.tap().restore_lagging(CopySlot::new(slot), map),
                    // Never persisted: the crash came before the first checkpoint, and the
                    // activity log (merged in by the crash repair) holds what it missed.
                    None if !state.clean => d.tap().restore_lagging(
                        CopySlot::new(slot),
                        tap::DirtyMap::new(
                            &c.volume,
                            base,
                            c.failed_at.unwrap_or_else(SystemTime::now),
                        ),
                    ),
                    None => tracing::warn!(
                        "the dirty map of {}\\{} is lost: it will need a full reseed",
                        d.name,
                        c.volume
                    ),
                }
            }
        }
    }

    /// The generation of database `db` as its in-sync copies hold it.
    pub fn generation(&self, db: &DbName) -> tap::Generation {
        let state = self.state.lock();
        state
            .databases
            .iter()
            .find(|d| d.name == db)
            .map(|d| d.generation.clone())
            .unwrap_or_default()
    }

    /// A reseed of copy `slot` of `db` failed: the copy is FailedAndSuspended again.
    pub fn abort_seed(&self, db: &Database, slot: CopySlot) {
        let mut state = self.state.lock();
        let pending = Unpersisted::new(&self.unpersisted);
        db.fail_copy(slot);
        if let Some(c) = state
            .databases
            .iter_mut()
            .find(|d| d.name == db.name)
            .and_then(|d| d.copies.get_mut(slot.index()))
        {
            c.set_failed();
        }
        let dead = self.persist_locked(&mut state);
        drop(pending);
        drop(state);
        self.fail_dead(dead);
    }

    /// Sets or clears ReseedBlocked / ResumeBlocked on the copies of `db` (on `volume`
    /// only, when given); persisted. Returns the labels of the copies changed.
    pub fn set_blocks(
        &self,
        db: &DbName,
        volume: Option<&str>,
        reseed: Option<bool>,
        resume: Option<bool>,
    ) -> Result<Vec<String>, String> {
        let mut state = self.state.lock();
        let rec = state
            .databases
            .iter_mut()
            .find(|d| d.name == db)
            .ok_or_else(|| format!("no database {db} in this pool"))?;
        if let Some(v) = volume {
            if !rec.copies.iter().any(|c| c.volume == v) {
                let on: Vec<&str> = rec.copies.iter().map(|c| c.volume.as_str()).collect();
                return Err(format!(
                    "{db} has no copy on {v} (its copies are on {})",
                    on.join(", ")
                ));
            }
        }
        let mut changed = Vec::new();
        for c in rec
            .copies
            .iter_mut()
            .filter(|c| volume.is_none_or(|v| c.volume == v))
        {
            let before = (c.reseed_blocked, c.resume_blocked);
            c.reseed_blocked = reseed.unwrap_or(c.reseed_blocked);
            c.resume_blocked = resume.unwrap_or(c.resume_blocked);
            if before != (c.reseed_blocked, c.resume_blocked) {
                changed.push((
                    format!("{db}\\{}", c.volume),
                    c.volume.clone(),
                    c.reseed_blocked,
                    c.resume_blocked,
                ));
            }
        }
        if !changed.is_empty() {
            let dead = self.persist_locked(&mut state);
            drop(state);
            self.fail_dead(dead);
        } else {
            drop(state);
        }
        for (label, vol, reseed, resume) in &changed {
            self.events.emit(
                NewEvent::new(
                    EventId::BlockChanged,
                    format!("copy {label}: ReseedBlocked={reseed} ResumeBlocked={resume}"),
                )
                .database(db)
                .volume(vol)
                .field("reseed_blocked", *reseed)
                .field("resume_blocked", *resume),
            );
        }
        Ok(changed.into_iter().map(|c| c.0).collect())
    }
}
