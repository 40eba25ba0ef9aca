//! The pool: its volumes, the placement of every database's copies, and the pool state
//! persisted on every healthy volume (`.reseedfs/pool.json`).
//!
//! The persisted state is what makes a restart safe: when a copy fails, the new state
//! (with a higher `epoch`) is written to every volume still healthy *before* any write
//! that skipped the failed copy is acknowledged. At mount the highest epoch wins, so a
//! copy that missed writes is never trusted again, even if its disk comes back.

mod init;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::copyset::{Copy, Database};
use crate::events::{EventId, EventSink, NewEvent};
use crate::layout;
use crate::tap::{self, Generation};
use crate::volume::Volume;

pub use init::{InitReport, init};

/// The persisted state of one copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CopyState {
    /// Has every acknowledged mutation; serves reads and takes writes.
    InSync,
    /// Its volume failed; it misses writes and is never trusted again as it is.
    FailedAndSuspended,
    /// Being seeded from an in-sync copy; not trusted until seeding and verification end.
    Seeding,
}

/// One copy in the persisted placement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyRecord {
    /// `Volume1`.
    pub volume: String,
    /// Its state.
    pub state: CopyState,
    /// When it became FailedAndSuspended (the AutoReseed dwell counts from here).
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub failed_at: Option<SystemTime>,
    /// An operator keeps AutoReseed and `reseed` off this copy.
    #[serde(default, skip_serializing_if = "is_false")]
    pub reseed_blocked: bool,
    /// An operator keeps AutoReseed from resuming this copy.
    #[serde(default, skip_serializing_if = "is_false")]
    pub resume_blocked: bool,
    /// An operator suspended the copy (`reseedfs suspend`): AutoReseed leaves it alone
    /// until `reseedfs resume`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub suspended: bool,
    /// While the copy is not in sync: the database generation it left at, which its
    /// dirty map starts from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty_base: Option<u64>,
    /// Why its incremental resync was impossible (event 2058's code): a full reseed of it
    /// keeps its old files in quarantine instead of deleting them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub divergence: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl CopyRecord {
    /// A copy on `volume` in `state`, unblocked.
    pub fn new(volume: &str, state: CopyState) -> CopyRecord {
        CopyRecord {
            volume: volume.to_owned(),
            state,
            failed_at: None,
            reseed_blocked: false,
            resume_blocked: false,
            suspended: false,
            dirty_base: None,
            divergence: None,
        }
    }

    fn set_failed(&mut self) {
        if self.state != CopyState::FailedAndSuspended {
            self.state = CopyState::FailedAndSuspended;
            self.failed_at = Some(SystemTime::now());
        }
    }
}

/// A copy that left the placement (its volume failed and a spare took its place).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiredCopy {
    /// The volume it was on.
    pub volume: String,
    /// When it was retired.
    #[serde(with = "humantime_serde")]
    pub at: SystemTime,
    /// The volume that took its place.
    pub replaced_by: String,
}

/// One database in the persisted placement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbRecord {
    /// `db001`.
    pub name: String,
    /// Its copies, the preferred active copy first.
    pub copies: Vec<CopyRecord>,
    /// Copies retired from the placement, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<RetiredCopy>,
    /// The generation the in-sync copies share (see [`crate::tap`]).
    #[serde(default)]
    pub generation: Generation,
}

/// The pool state, written to `.reseedfs/pool.json` on every healthy volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolState {
    /// Identifies the pool; every volume's metadata carries it.
    pub pool_id: String,
    /// Grows with every change; the highest epoch found at mount wins.
    pub epoch: u64,
    /// Volumes known to have failed.
    pub failed_volumes: Vec<String>,
    /// True when written by a clean unmount: every in-sync copy had every write and no
    /// failure could have gone unrecorded since.
    #[serde(default)]
    pub clean: bool,
    /// Placement and copy states.
    pub databases: Vec<DbRecord>,
}

/// `.reseedfs/volume.json`: who this volume is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMeta {
    /// The pool this volume belongs to.
    pub pool_id: String,
    /// `Volume1`.
    pub name: String,
}

/// Relative path of the volume metadata.
pub fn volume_meta_path() -> PathBuf {
    Path::new(layout::META_DIR).join("volume.json")
}

/// Relative path of the pool state.
pub fn pool_state_path() -> PathBuf {
    Path::new(layout::META_DIR).join("pool.json")
}

/// Where the witness of pool `pool_id` lives.
pub fn witness_path(config: &Config, pool_id: &str) -> PathBuf {
    config.witness_dir.join(format!("{pool_id}.json"))
}

/// Writes the witness durably (temp file, fsync, rename, directory fsync).
pub fn write_witness(config: &Config, state: &PoolState) -> std::io::Result<()> {
    use std::io::Write;
    let path = witness_path(config, &state.pool_id);
    std::fs::create_dir_all(&config.witness_dir)?;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(state)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(&config.witness_dir)?.sync_all()
}

fn read_witness(config: &Config, pool_id: &str) -> Option<PoolState> {
    let bytes = std::fs::read(witness_path(config, pool_id)).ok()?;
    serde_json::from_slice::<PoolState>(&bytes)
        .ok()
        .filter(|s| s.pool_id == pool_id)
}

/// Why a pool cannot be mounted.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The volumes root cannot be listed.
    #[error("cannot list the volumes root {path}: {source}")]
    VolumesRoot {
        /// The volumes root.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// No volume has readable pool state.
    #[error(
        "no volume under {0} holds reseedfs pool state (.reseedfs/pool.json): run `reseedfs init` first, or check that the volumes are mounted"
    )]
    NoState(PathBuf),
    /// The config and the pool disagree on the databases.
    #[error(
        "database {0} is in the config but not in the pool state: the pool was initialised with other databases"
    )]
    UnknownDatabase(String),
    /// A copy that was in sync is gone after an unclean stop: the others may be stale.
    #[error(
        "database {db}: the copy on {lost} was in sync but its volume is missing or dead, and the last pool state (epoch {epoch}) was written while mounted (the daemon did not stop cleanly): the other copies may have missed writes that only that volume took. Bring {lost} back and mount again"
    )]
    Uncertain {
        /// The database.
        db: String,
        /// The volumes of the lost in-sync copies.
        lost: String,
        /// The epoch of the newest state found.
        epoch: u64,
    },
    /// No copy of a database can serve.
    #[error("database {db} has no copy in sync, refusing to mount: {reasons}")]
    NoCopyInSync {
        /// The database.
        db: String,
        /// One reason per copy.
        reasons: String,
    },
}

/// A volume of the pool at run time.
#[derive(Debug)]
pub struct PoolVolume {
    /// `Volume1`.
    pub name: String,
    /// Its directory.
    pub path: PathBuf,
    /// The open volume, when it could be opened (opened again when it comes back).
    volume: ArcSwapOption<Volume>,
    /// I/O errors counted on handles of this volume that were let go.
    past_io_errors: std::sync::atomic::AtomicU64,
}

impl PoolVolume {
    fn new(name: String, path: PathBuf, volume: Option<Volume>) -> PoolVolume {
        PoolVolume {
            name,
            path,
            volume: ArcSwapOption::from(volume.map(Arc::new)),
            past_io_errors: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The open volume, if it could be opened.
    pub fn volume(&self) -> Option<Arc<Volume>> {
        self.volume.load_full()
    }

    /// I/O errors seen on this volume since the mount.
    pub fn io_errors(&self) -> u64 {
        self.past_io_errors.load(Ordering::Relaxed)
            + self.volume.load().as_ref().map_or(0, |v| v.io_errors())
    }

    /// Lets go of the open volume (it failed): nothing of it stays open here.
    fn release(&self) {
        if let Some(v) = self.volume.swap(None) {
            self.past_io_errors
                .fetch_add(v.io_errors(), Ordering::Relaxed);
        }
    }
}

/// The pool at run time: volumes, databases and the persisted state.
pub struct Pool {
    /// The configuration it was opened with.
    pub config: Config,
    volumes: Vec<PoolVolume>,
    databases: Vec<Arc<Database>>,
    /// The persisted state; its lock also orders failures against acknowledgements.
    state: Mutex<PoolState>,
    events: Arc<dyn EventSink>,
    /// Failures made visible in copy states but not yet persisted.
    unpersisted: AtomicUsize,
    /// Called with a volume's name once it failed (to close what is open on it).
    failure_watchers: Mutex<Vec<FailureWatcher>>,
    /// The previous stop was clean (no crash repair needed).
    was_clean: bool,
}

/// See [`Pool::watch_failures`].
pub type FailureWatcher = Box<dyn Fn(&str) + Send + Sync>;

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("volumes", &self.volumes)
            .field("databases", &self.databases)
            .finish_non_exhaustive()
    }
}

/// Counts a failure in progress, from before its copy states change until it is
/// persisted (dropped after the persist, before the state lock is released).
struct Unpersisted<'a>(&'a AtomicUsize);

impl<'a> Unpersisted<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Unpersisted(counter)
    }
}

impl Drop for Unpersisted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Lists `VolumeN` directories of the volumes root, in number order.
pub fn list_volumes(root: &Path) -> std::io::Result<Vec<(u32, String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(n) = layout::volume_number(&name) {
            out.push((n, name, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Opens a volume and checks that it answers: reads its metadata, writes and reads back
/// a canary. Returns the volume and the pool state it holds, or why it is unusable.
fn probe_volume(
    name: &str,
    path: &Path,
) -> Result<(Volume, VolumeMeta, Option<PoolState>), String> {
    let v = Volume::open(name, path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let meta: VolumeMeta = serde_json::from_slice(
        &v.read_file(&volume_meta_path())
            .map_err(|e| format!("cannot read {}/.reseedfs/volume.json: {e}", path.display()))?,
    )
    .map_err(|e| format!("{}/.reseedfs/volume.json is damaged: {e}", path.display()))?;
    let canary = Path::new(layout::META_DIR).join("probe");
    let stamp = format!("{:?}", std::time::SystemTime::now());
    v.write_atomic(&canary, stamp.as_bytes())
        .and_then(|()| v.read_file(&canary))
        .map_err(|e| format!("health probe failed: {e}"))
        .and_then(|back| {
            if back == stamp.as_bytes() {
                Ok(())
            } else {
                Err("health probe read back other bytes".to_owned())
            }
        })?;
    let state = v
        .read_file(&pool_state_path())
        .ok()
        .and_then(|b| serde_json::from_slice::<PoolState>(&b).ok());
    Ok((v, meta, state))
}

impl Pool {
    /// Opens the pool for a mount: probes every volume, takes the newest persisted state,
    /// fails the copies whose volume is missing or dead, and persists the result.
    pub fn open(config: &Config, events: Arc<dyn EventSink>) -> Result<Arc<Pool>, OpenError> {
        let listed =
            list_volumes(&config.volumes_root).map_err(|source| OpenError::VolumesRoot {
                path: config.volumes_root.clone(),
                source,
            })?;
        let mut probed = Vec::new();
        let mut best: Option<PoolState> = None;
        for (_, name, path) in &listed {
            match probe_volume(name, path) {
                Ok((v, meta, state)) => {
                    if let Some(s) = state {
                        if s.pool_id == meta.pool_id
                            && best.as_ref().is_none_or(|b| s.epoch > b.epoch)
                        {
                            best = Some(s);
                        }
                    }
                    probed.push((name.clone(), path.clone(), Ok((v, meta))));
                }
                Err(why) => probed.push((name.clone(), path.clone(), Err(why))),
            }
        }
        let mut state = best.ok_or_else(|| OpenError::NoState(config.volumes_root.clone()))?;
        // The witness on the system disk saw every state change that reached a volume.
        let witness = read_witness(config, &state.pool_id);
        let vouched = witness.as_ref().is_some_and(|w| w.epoch >= state.epoch);
        if let Some(w) = witness.filter(|w| w.epoch > state.epoch) {
            state = w;
        }
        for db in &config.databases {
            if !state.databases.iter().any(|d| &d.name == db) {
                return Err(OpenError::UnknownDatabase(db.clone()));
            }
        }
        let mut volumes = Vec::new();
        let mut unusable = std::collections::BTreeMap::new();
        for (name, path, res) in probed {
            match res {
                Ok((v, meta)) if meta.pool_id == state.pool_id && meta.name == name => {
                    volumes.push(PoolVolume::new(name, path, Some(v)));
                }
                Ok((_, meta)) => {
                    unusable.insert(
                        name.clone(),
                        format!(
                            "it belongs to pool {} as {}, not to this pool",
                            meta.pool_id, meta.name
                        ),
                    );
                    volumes.push(PoolVolume::new(name, path, None));
                }
                Err(why) => {
                    unusable.insert(name.clone(), why);
                    volumes.push(PoolVolume::new(name, path, None));
                }
            }
        }
        // Copies on a volume that is gone or dead cannot be trusted.
        let mut failed_now = Vec::new();
        let mut interrupted = Vec::new();
        for db in &mut state.databases {
            for c in &mut db.copies {
                let why = if !volumes.iter().any(|v| v.name == c.volume) {
                    Some("its volume is missing".to_owned())
                } else {
                    unusable.get(&c.volume).cloned()
                };
                match (why, c.state) {
                    (Some(why), CopyState::InSync) => {
                        c.set_failed();
                        failed_now.push((db.name.clone(), c.volume.clone(), why));
                    }
                    (why, CopyState::Seeding) => {
                        // A reseed interrupted by a stop: the copy is incomplete.
                        c.set_failed();
                        let why = why.unwrap_or_else(|| {
                            "its reseed was interrupted by a stop of the daemon".into()
                        });
                        interrupted.push((db.name.clone(), c.volume.clone(), why));
                    }
                    _ => {}
                }
            }
        }
        // After an unclean stop, a copy whose volume is now missing may have taken writes
        // that the others missed (their failure recorded only on the missing volume): the
        // others cannot be trusted alone, unless the witness vouches that no newer state
        // exists. DRBD makes the same choice for an outdated peer.
        if !state.clean && !vouched {
            for db in state
                .databases
                .iter()
                .filter(|d| config.databases.contains(&d.name))
            {
                let lost: Vec<&str> = failed_now
                    .iter()
                    .filter(|(d, _, _)| d == &db.name)
                    .map(|(_, v, _)| v.as_str())
                    .collect();
                if !lost.is_empty() {
                    return Err(OpenError::Uncertain {
                        db: db.name.clone(),
                        lost: lost.join(", "),
                        epoch: state.epoch,
                    });
                }
            }
        }
        for db in &state.databases {
            if config.databases.contains(&db.name)
                && !db.copies.iter().any(|c| c.state == CopyState::InSync)
            {
                let reasons = db
                    .copies
                    .iter()
                    .map(|c| {
                        let why = failed_now
                            .iter()
                            .find(|(d, v, _)| d == &db.name && v == &c.volume)
                            .map(|(_, _, w)| w.clone())
                            .unwrap_or_else(|| "it missed writes after an earlier failure".into());
                        format!("copy on {} is {:?}: {why}", c.volume, c.state)
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(OpenError::NoCopyInSync {
                    db: db.name.clone(),
                    reasons,
                });
            }
        }
        let trusted: Vec<String> = state
            .databases
            .iter()
            .flat_map(|d| d.copies.iter())
            .filter(|c| c.state == CopyState::InSync)
            .map(|c| c.volume.clone())
            .collect();
        state.failed_volumes.retain(|v| !trusted.contains(v));
        for (_, vol, _) in &failed_now {
            if !state.failed_volumes.contains(vol) {
                state.failed_volumes.push(vol.clone());
            }
        }
        for (db, vol, why) in interrupted.iter().chain(&failed_now) {
            events.emit(
                NewEvent::new(
                    EventId::CopyFailed,
                    format!("copy {db}\\{vol} is FailedAndSuspended at mount: {why}"),
                )
                .database(db)
                .volume(vol)
                .field("operation", "mount")
                .field("status", "FailedAndSuspended"),
            );
        }
        let was_clean = state.clean;
        Ok(Arc::new_cyclic(|weak| {
            let databases = state
                .databases
                .iter()
                .filter(|d| config.databases.contains(&d.name))
                .enumerate()
                .map(|(index, d)| {
                    let copies = d
                        .copies
                        .iter()
                        .map(|c| {
                            let volume = volumes
                                .iter()
                                .find(|v| v.name == c.volume)
                                .and_then(PoolVolume::volume);
                            Copy::new(c.volume.clone(), volume, c.state)
                        })
                        .collect();
                    Arc::new(Database::new(d.name.clone(), index, copies, weak.clone()))
                })
                .collect();
            let pool = Pool {
                config: config.clone(),
                volumes,
                databases,
                state: Mutex::new(state),
                events,
                unpersisted: AtomicUsize::new(0),
                failure_watchers: Mutex::new(Vec::new()),
                was_clean,
            };
            for v in &pool.volumes {
                if let Some(vol) = v.volume() {
                    if pool.state.lock().failed_volumes.contains(&v.name) {
                        vol.mark_failed();
                    }
                }
            }
            {
                let mut state = pool.state.lock();
                state.clean = false;
                pool.start_taps(&mut state);
                pool.persist_locked(&mut state);
            }
            pool
        }))
    }

    /// Records a clean stop on every healthy volume. Call after the mount is down: the
    /// last tap checkpoint syncs every copy, persists the dirty maps and marks the
    /// activity logs clean.
    pub fn close(&self) {
        for db in &self.databases {
            db.checkpoint(true);
        }
        let mut state = self.state.lock();
        state.clean = true;
        self.persist_locked(&mut state);
    }

    /// The databases, in config order.
    pub fn databases(&self) -> &[Arc<Database>] {
        &self.databases
    }

    /// The database named `name`.
    pub fn database(&self, name: &str) -> Option<&Arc<Database>> {
        self.databases.iter().find(|d| d.name == name)
    }

    /// The volumes, in number order.
    pub fn volumes(&self) -> &[PoolVolume] {
        &self.volumes
    }

    /// The event sink.
    pub fn events(&self) -> &Arc<dyn EventSink> {
        &self.events
    }

    /// The current persisted state (a copy).
    pub fn state(&self) -> PoolState {
        self.state.lock().clone()
    }

    /// Waits until every failure already visible in copy states is persisted. Called
    /// before acknowledging a mutation that skipped a copy.
    pub fn barrier(&self) {
        if self.unpersisted.load(Ordering::SeqCst) != 0 {
            drop(self.state.lock());
        }
    }

    /// Marks `volume` failed after `err` during `op`: every copy on it becomes
    /// FailedAndSuspended, the state is persisted on every healthy volume, events are
    /// emitted. Returns once persisted. Idempotent.
    pub fn fail_volume(&self, volume: &Volume, op: &str, err: &std::io::Error) {
        let mut state = self.state.lock();
        let unpersisted = Unpersisted::new(&self.unpersisted);
        let mut pending = vec![(volume.name().to_owned(), op.to_owned(), err.raw_os_error())];
        let mut newly_failed = Vec::new();
        let mut moved = Vec::new();
        let mut bumped = Vec::new();
        while let Some((vol, op, errno)) = pending.pop() {
            if state.failed_volumes.contains(&vol) {
                continue;
            }
            state.failed_volumes.push(vol.clone());
            if let Some(v) = self.volume(&vol) {
                v.mark_failed();
            }
            for d in &self.databases {
                let before = d.active_volume();
                if d.fail_copies_on(&vol) {
                    // The last copy in sync keeps every acknowledged write (the failing
                    // request was not acknowledged): it stays trusted for the next mount.
                    let last = d.active_index().is_none();
                    if let Some(rec) = state.databases.iter_mut().find(|r| r.name == d.name) {
                        for slot in 0..rec.copies.len() {
                            if rec.copies[slot].volume == vol && !last {
                                let was = rec.copies[slot].state;
                                rec.copies[slot].set_failed();
                                if copy_left(rec, d, slot, was) {
                                    bumped.push(d.index);
                                }
                            }
                        }
                    }
                    newly_failed.push((d.name.clone(), vol.clone(), op.clone(), errno, last));
                    let after = d.active_volume();
                    if before != after {
                        moved.push((d.name.clone(), before, after, vol.clone()));
                    }
                }
            }
            // Persisting may itself find another dying volume.
            for (v2, e2) in self.persist_locked(&mut state) {
                pending.push((v2, "persist pool state".to_owned(), e2));
            }
            for d in self.databases.iter().filter(|d| bumped.contains(&d.index)) {
                if let Some(rec) = state.databases.iter().find(|r| r.name == d.name) {
                    write_generations(d, &rec.generation);
                }
            }
            bumped.clear();
        }
        drop(unpersisted);
        let failed: Vec<String> = state.failed_volumes.clone();
        drop(state);
        // Nothing may keep a dead volume's filesystem alive: the disk can then be
        // unmounted, checked and mounted again while the database runs (AutoReseed's
        // resume step finds it back).
        for name in &failed {
            if let Some(pv) = self.pool_volume(name) {
                if pv.volume.load().as_ref().is_some_and(|v| v.is_failed()) {
                    pv.release();
                    for watch in self.failure_watchers.lock().iter() {
                        watch(name);
                    }
                }
            }
        }
        for (db, vol, op, errno, last) in newly_failed {
            let errno_name = errno.map(|e| std::io::Error::from_raw_os_error(e).to_string());
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
                        "copy {db}\\{vol} is FailedAndSuspended: volume {vol} failed during {op} ({}){tail}",
                        errno_name.as_deref().unwrap_or("unknown error")
                    ),
                )
                .database(&db)
                .volume(&vol)
                .field("operation", op)
                .field("errno", errno.unwrap_or(0))
                .field("status", "FailedAndSuspended")
                .field("last_copy", last),
            );
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
    }

    /// Fails copy `i` of `db` alone: it answered `err` to `op` while another copy took
    /// the mutation, so the copies are no longer identical.
    pub fn fail_diverged(&self, db: &Database, i: usize, op: &str, err: &std::io::Error) {
        let mut state = self.state.lock();
        let pending = Unpersisted::new(&self.unpersisted);
        if !db.fail_copy(i) {
            return;
        }
        let vol = db.copies()[i].volume_name();
        if let Some(rec) = state.databases.iter_mut().find(|r| r.name == db.name) {
            if let Some(c) = rec.copies.get_mut(i) {
                let was = c.state;
                c.set_failed();
                copy_left(rec, db, i, was);
            }
        }
        let dead = self.persist_locked(&mut state);
        if let Some(rec) = state.databases.iter().find(|r| r.name == db.name) {
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

    fn volume(&self, name: &str) -> Option<Arc<Volume>> {
        self.volumes
            .iter()
            .find(|v| v.name == name)
            .and_then(PoolVolume::volume)
    }

    /// Bumps the epoch and writes the state to every healthy volume; returns the volumes
    /// whose write failed with a media error.
    fn persist_locked(&self, state: &mut PoolState) -> Vec<(String, Option<i32>)> {
        state.epoch += 1;
        if let Err(err) = write_witness(&self.config, state) {
            // A stale witness would vouch for a state that is not the newest: remove it.
            let path = witness_path(&self.config, &state.pool_id);
            let _ = std::fs::remove_file(&path);
            self.events.emit(NewEvent::new(
                EventId::StatePersistFailed,
                format!(
                    "cannot write the pool state witness {}: {err} (removed it; a crash that also kills a disk will need that disk back to mount)",
                    path.display()
                ),
            ));
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
            if let Err(err) = vol.write_atomic(&pool_state_path(), &bytes) {
                vol.count_io_error();
                self.events.emit(
                    NewEvent::new(
                        EventId::StatePersistFailed,
                        format!("cannot write the pool state to {}: {err}", v.name),
                    )
                    .volume(&v.name),
                );
                if crate::volume::is_media_error(&err) {
                    dead.push((v.name.clone(), err.raw_os_error()));
                }
            }
        }
        dead
    }

    /// Calls `watch` with a volume's name each time one fails, after the failure is
    /// persisted (the filesystem core closes its files on it).
    pub fn watch_failures(&self, watch: FailureWatcher) {
        self.failure_watchers.lock().push(watch);
    }

    /// The volume named `name`.
    pub fn pool_volume(&self, name: &str) -> Option<&PoolVolume> {
        self.volumes.iter().find(|v| v.name == name)
    }

    /// The persisted record of copy `slot` of database `db`.
    pub fn copy_record(&self, db: &str, slot: usize) -> Option<CopyRecord> {
        let state = self.state.lock();
        state
            .databases
            .iter()
            .find(|d| d.name == db)
            .and_then(|d| d.copies.get(slot).cloned())
    }

    /// Probes volume `name` again (open its directory anew, read its metadata, write,
    /// fsync and read back a canary). When it answers, the pool uses the new handle and
    /// a volume recorded as failed is failed no more (event 3022).
    pub fn reprobe_volume(&self, name: &str) -> Result<Arc<Volume>, String> {
        let pv = self
            .pool_volume(name)
            .ok_or_else(|| format!("{name} is not a volume of this pool"))?;
        let (v, meta, _) = probe_volume(name, &pv.path)?;
        let pool_id = self.state.lock().pool_id.clone();
        if meta.pool_id != pool_id || meta.name != name {
            return Err(format!(
                "{} now holds volume {} of pool {}, not {name} of this pool",
                pv.path.display(),
                meta.name,
                meta.pool_id
            ));
        }
        let v = Arc::new(v);
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

    /// The volumes that could take a new copy of `db` needing `bytes` (plus a margin of
    /// 10% and 64 MiB), best first (most free space), and why each other volume cannot.
    pub fn spares(&self, db: &str, bytes: u64) -> (Vec<String>, Vec<(String, String)>) {
        let state = self.state.lock().clone();
        let needed = bytes + bytes / 10 + (64 << 20);
        let mut ok = Vec::new();
        let mut rejected = Vec::new();
        for v in &self.volumes {
            let holding = state
                .databases
                .iter()
                .filter(|d| d.copies.iter().any(|c| c.volume == v.name))
                .count() as u32;
            let why = if state.failed_volumes.contains(&v.name) {
                Some("it is failed".to_owned())
            } else if state
                .databases
                .iter()
                .any(|d| d.name == db && d.copies.iter().any(|c| c.volume == v.name))
            {
                Some(format!("it already holds a copy of {db}"))
            } else if holding >= self.config.copies_per_volume {
                Some(format!(
                    "it holds {holding} database copies and copies_per_volume is {}",
                    self.config.copies_per_volume
                ))
            } else {
                match v.volume().map(|vol| vol.statvfs()) {
                    None => Some("it could not be opened".to_owned()),
                    Some(Err(e)) => Some(format!("statvfs failed: {e}")),
                    Some(Ok(st)) if st.f_bavail * st.f_frsize < needed => Some(format!(
                        "{} MiB free, {} MiB needed",
                        (st.f_bavail * st.f_frsize) >> 20,
                        needed >> 20
                    )),
                    Some(Ok(st)) => {
                        ok.push((st.f_bavail * st.f_frsize, v.name.clone()));
                        None
                    }
                }
            };
            if let Some(why) = why {
                rejected.push((v.name.clone(), why));
            }
        }
        ok.sort_by_key(|v| std::cmp::Reverse(v.0));
        (ok.into_iter().map(|(_, n)| n).collect(), rejected)
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
        slot: usize,
        target: &str,
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
            .get(slot)
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
        if target != copy.volume && rec.copies.iter().any(|c| c.volume == target) {
            return Err(format!("{target} already holds a copy of {}", db.name));
        }
        if target != copy.volume {
            rec.retired.push(RetiredCopy {
                volume: copy.volume.clone(),
                at: SystemTime::now(),
                replaced_by: target.to_owned(),
            });
        }
        rec.copies[slot] = CopyRecord {
            volume: target.to_owned(),
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
        let generation = db.start_seeding(slot, target.to_owned(), volume);
        let dead = self.persist_locked(&mut state);
        drop(pending);
        drop(state);
        self.fail_dead(dead);
        Ok(generation)
    }

    /// Copy `slot` of `db` finished seeding and verification: in sync, persisted. False
    /// when the copy failed meanwhile.
    pub fn finish_seed(&self, db: &Database, slot: usize) -> bool {
        let mut state = self.state.lock();
        if !db.seeded(slot) {
            return false;
        }
        if let Some(c) = state
            .databases
            .iter_mut()
            .find(|d| d.name == db.name)
            .and_then(|d| d.copies.get_mut(slot))
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
        slot: usize,
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
            .and_then(|d| d.copies.get_mut(slot))
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
            return Err(format!("no other copy of {} is in sync to resync {label} from", db.name));
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
    pub fn suspend(&self, db: &Database, slot: usize) -> Result<(), String> {
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
            if let Some(c) = rec.copies.get_mut(slot) {
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
        for watch in self.failure_watchers.lock().iter() {
            watch(&db.copies()[slot].volume_name());
        }
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
    pub fn repair_after_crash(&self) -> Vec<tap::repair::RepairReport> {
        if self.was_clean {
            return Vec::new();
        }
        let mut out = Vec::new();
        for db in &self.databases {
            let started = std::time::Instant::now();
            match tap::repair::after_crash(db) {
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
                        .field("tree_fixed", r.tree_fixed as u64),
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
    pub fn mark_divergent(&self, db: &Database, slot: usize, code: &str, suspend: bool) {
        let mut state = self.state.lock();
        if let Some(c) = state
            .databases
            .iter_mut()
            .find(|d| d.name == db.name)
            .and_then(|d| d.copies.get_mut(slot))
        {
            c.divergence = Some(code.to_owned());
            c.suspended |= suspend;
        }
        let dead = self.persist_locked(&mut state);
        drop(state);
        self.fail_dead(dead);
    }

    /// True when the previous stop of the pool was clean.
    pub fn was_clean(&self) -> bool {
        self.was_clean
    }

    /// At open (state lock held): every database gets a generation, every copy that is
    /// not in sync its dirty map back from the in-sync volumes.
    fn start_taps(&self, state: &mut PoolState) {
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
                    Some(map) => d.tap().restore_lagging(slot, map),
                    // Never persisted: the crash came before the first checkpoint, and the
                    // activity log (merged in by the crash repair) holds what it missed.
                    None if !state.clean => d.tap().restore_lagging(
                        slot,
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
    pub fn generation(&self, db: &str) -> Generation {
        let state = self.state.lock();
        state
            .databases
            .iter()
            .find(|d| d.name == db)
            .map(|d| d.generation.clone())
            .unwrap_or_default()
    }

    /// A reseed of copy `slot` of `db` failed: the copy is FailedAndSuspended again.
    pub fn abort_seed(&self, db: &Database, slot: usize) {
        let mut state = self.state.lock();
        let pending = Unpersisted::new(&self.unpersisted);
        db.fail_copy(slot);
        if let Some(c) = state
            .databases
            .iter_mut()
            .find(|d| d.name == db.name)
            .and_then(|d| d.copies.get_mut(slot))
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
        db: &str,
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

    /// Fails the volumes a persist found dead.
    fn fail_dead(&self, dead: Vec<(String, Option<i32>)>) {
        for (v, errno) in dead {
            if let Some(vol) = self.volume(&v) {
                let e = std::io::Error::from_raw_os_error(errno.unwrap_or(libc::EIO));
                self.fail_volume(&vol, "persist pool state", &e);
            }
        }
    }

    /// The status of the pool, as `status` shows it.
    pub fn status(&self) -> crate::control::Status {
        use crate::control::{CopyStatus, DbStatus, Status, VolumeStatus};
        let state = self.state.lock().clone();
        let databases = self
            .databases
            .iter()
            .map(|d| DbStatus {
                name: d.name.clone(),
                copies: d
                    .copies()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        let rec = state
                            .databases
                            .iter()
                            .find(|r| r.name == d.name)
                            .and_then(|r| r.copies.get(i));
                        CopyStatus {
                            name: format!("{}\\{}", d.name, c.volume_name()),
                            volume: c.volume_name(),
                            status: d.status_word(i).to_owned(),
                            active: d.active_index() == Some(i),
                            reseed_blocked: rec.is_some_and(|r| r.reseed_blocked),
                            resume_blocked: rec.is_some_and(|r| r.resume_blocked),
                            failed_at: rec.and_then(|r| r.failed_at),
                            seed: None,
                            autoreseed: None,
                        }
                    })
                    .collect(),
            })
            .collect();
        let volumes = self
            .volumes
            .iter()
            .map(|v| {
                let in_use = state
                    .databases
                    .iter()
                    .any(|d| d.copies.iter().any(|c| c.volume == v.name));
                let volume = v.volume();
                let failed = state.failed_volumes.contains(&v.name) || volume.is_none();
                let (free_bytes, total_bytes) = volume
                    .as_ref()
                    .filter(|_| !failed)
                    .and_then(|vol| vol.statvfs().ok())
                    .map_or((None, None), |s| {
                        (Some(s.f_bavail * s.f_frsize), Some(s.f_blocks * s.f_frsize))
                    });
                VolumeStatus {
                    name: v.name.clone(),
                    state: if failed {
                        "Failed"
                    } else if in_use {
                        "InUse"
                    } else {
                        "Spare"
                    }
                    .to_owned(),
                    free_bytes,
                    total_bytes,
                    io_errors: v.io_errors(),
                }
            })
            .collect();
        Status {
            epoch: state.epoch,
            databases,
            volumes,
        }
    }
}

/// Copy `slot` of `db` left the in-sync copies: the database moves to a new generation
/// and the tap records what the copy misses from the old one on. A copy already lagging
/// (it failed again during its resync) keeps its map.
/// `was` is the copy's state before it failed: only a copy that was in sync has a known
/// content to record changes against. Returns whether the generation moved.
fn copy_left(rec: &mut DbRecord, db: &Database, slot: usize, was: CopyState) -> bool {
    let Some(c) = rec.copies.get(slot) else {
        return false;
    };
    if c.dirty_base.is_some() || was != CopyState::InSync {
        return false;
    }
    let since = c.failed_at.unwrap_or_else(SystemTime::now);
    let volume = c.volume.clone();
    let base = rec.generation.bump();
    rec.copies[slot].dirty_base = Some(base);
    db.tap().start_lagging(slot, &volume, base, since);
    true
}

/// Writes `g` as the copy generation of every in-sync copy of `db`.
fn write_generations(db: &Database, g: &Generation) {
    for v in db.in_sync_volumes() {
        if let Err(e) = tap::write_copy_generation(&v, &db.name, g) {
            tracing::warn!("cannot write the generation of {} on {}: {e}", db.name, v.name());
        }
    }
}
