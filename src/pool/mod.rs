//! The pool: its volumes, the placement of every database's copies, and the pool state
//! persisted on every healthy volume (`.reseedfs/pool.json`) and the witness.
//!
//! The persisted state is what makes a restart safe: when a copy fails, the new state
//! (with a higher `epoch`) is written to every volume still healthy *before* any write
//! that skipped the failed copy is acknowledged. At mount the highest epoch wins, so a
//! copy that missed writes is never trusted again, even if its disk comes back.
//!
//! - `state`: the records as persisted, and the witness.
//! - `open`: opening the pool for a mount, step by step.
//! - `failure`: the pool's side of a failure (the copy set's [`Store`](crate::copyset::Store)).
//! - `transitions`: seed, resync, suspend, blocks, a volume taken back.
//! - [`spares`]: the spare rule. `checkpoint`: the tap's checkpoint thread.
//! - [`init`]: `reseedfs init`.
//!
//! A copy's state is owned by the copy set ([`crate::copyset::Copy`]); the pool records
//! what the copy set's transitions decide, and nothing else changes it.

mod checkpoint;
mod failure;
mod init;
mod open;
pub mod spares;
mod state;
mod transitions;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;

use crate::config::Config;
use crate::copyset::Database;
use crate::events::{EventId, EventSink, NewEvent};
use crate::names::CopySlot;
use crate::names::DbName;
use crate::names::VolumeName;
use crate::volume::Volume;

pub use checkpoint::Checkpointer;
pub use init::{InitError, InitReport, init};
pub use open::OpenError;
pub use state::{
    CopyRecord, DbRecord, Foreign, PoolState, RetiredCopy, VolumeMeta, is_pool_id, pool_state_path,
    volume_meta_path, witness_path, write_witness,
};

/// A volume of the pool at run time.
#[derive(Debug)]
pub struct PoolVolume {
    /// `Volume1`.
    pub name: VolumeName,
    /// Its directory.
    pub path: PathBuf,
    /// The open volume, when it could be opened (opened again when it comes back).
    pub(super) volume: ArcSwapOption<Volume>,
    /// I/O errors counted on handles of this volume that were let go.
    past_io_errors: std::sync::atomic::AtomicU64,
    /// Bytes written through handles of this volume that were let go.
    past_written_bytes: std::sync::atomic::AtomicU64,
    /// Slow operations counted on handles of this volume that were let go.
    past_slow_requests: std::sync::atomic::AtomicU64,
    /// The volume's slow spell was reported (event 3008): once per spell.
    slow_reported: std::sync::atomic::AtomicBool,
    /// Blocks read from this volume that did not match their checksum, since the mount.
    pub(crate) checksum_errors: std::sync::atomic::AtomicU64,
}

impl PoolVolume {
    pub(super) fn new(name: VolumeName, path: PathBuf, volume: Option<Volume>) -> PoolVolume {
        PoolVolume {
            name,
            path,
            volume: ArcSwapOption::from(volume.map(Arc::new)),
            past_io_errors: std::sync::atomic::AtomicU64::new(0),
            past_written_bytes: std::sync::atomic::AtomicU64::new(0),
            past_slow_requests: std::sync::atomic::AtomicU64::new(0),
            slow_reported: std::sync::atomic::AtomicBool::new(false),
            checksum_errors: std::sync::atomic::AtomicU64::new(0),
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

    /// Blocks read from this volume that did not match their checksum, since the mount.
    pub fn checksum_errors(&self) -> u64 {
        self.checksum_errors.load(Ordering::Relaxed)
    }

    /// Operations on this volume slower than `[volume] slow_request` since the mount.
    pub fn slow_requests(&self) -> u64 {
        self.past_slow_requests.load(Ordering::Relaxed)
            + self.volume.load().as_ref().map_or(0, |v| v.slow_requests())
    }

    /// Bytes of file data mirrored onto this volume's copies since the mount.
    pub fn written_bytes(&self) -> u64 {
        self.past_written_bytes.load(Ordering::Relaxed)
            + self.volume.load().as_ref().map_or(0, |v| v.written_bytes())
    }

    /// Lets go of the open volume (it failed): nothing of it stays open here.
    pub(super) fn release(&self) {
        if let Some(v) = self.volume.swap(None) {
            self.past_io_errors
                .fetch_add(v.io_errors(), Ordering::Relaxed);
            self.past_written_bytes
                .fetch_add(v.written_bytes(), Ordering::Relaxed);
            self.past_slow_requests
                .fetch_add(v.slow_requests(), Ordering::Relaxed);
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
    /// The last write of the state reached no volume and no witness.
    stranded: std::sync::atomic::AtomicBool,
    /// Runs the witness's writes on the system disk within the deadline.
    system: crate::volume::lane::Lane,
    /// The previous stop was clean (no crash repair needed).
    was_clean: bool,
    /// Volumes (and a witness) of other pools found at mount: left alone.
    foreign: Vec<Foreign>,
    /// Itself, for the volumes it opens ([`crate::volume::Keeper`]).
    me: std::sync::Weak<Pool>,
}

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
pub(super) struct Unpersisted<'a>(&'a AtomicUsize);

impl<'a> Unpersisted<'a> {
    pub(super) fn new(counter: &'a AtomicUsize) -> Self {
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
pub fn list_volumes(root: &Path) -> std::io::Result<Vec<(u32, VolumeName, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Ok(name) = VolumeName::new(name) {
            out.push((name.number(), name, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

impl Pool {
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

    /// The volume named `name`.
    pub fn pool_volume(&self, name: &str) -> Option<&PoolVolume> {
        self.volumes.iter().find(|v| v.name == name)
    }

    /// The open volume named `name`, if it could be opened.
    fn volume(&self, name: &str) -> Option<Arc<Volume>> {
        self.pool_volume(name).and_then(PoolVolume::volume)
    }

    /// The event sink.
    pub fn events(&self) -> &Arc<dyn EventSink> {
        &self.events
    }

    /// The current persisted state (a copy).
    pub fn state(&self) -> PoolState {
        self.state.lock().clone()
    }

    /// The persisted record of copy `slot` of database `db`.
    pub fn copy_record(&self, db: &DbName, slot: CopySlot) -> Option<CopyRecord> {
        self.state
            .lock()
            .database(db)
            .and_then(|d| d.copies.get(slot.index()).cloned())
    }

    /// Reports (event 3008) each volume whose every operation has been slower than
    /// `[volume] slow_request` for a minute, once per such spell. A slow volume is not
    /// failed: only a missed deadline fails it.
    pub fn watch_slow(&self) {
        const SPELL: std::time::Duration = std::time::Duration::from_secs(60);
        for pv in &self.volumes {
            let Some(v) = pv.volume() else { continue };
            match v.slow_for() {
                Some(d) if d >= SPELL => {
                    if !pv.slow_reported.swap(true, Ordering::Relaxed) {
                        let limit = humantime::format_duration(v.limits().slow_request);
                        self.events.emit(
                            NewEvent::new(
                                EventId::VolumeSlow,
                                format!(
                                    "volume {} has answered every operation in more than {limit} for {}s ({} slow operations so far): the disk may be dying; it is not failed unless an operation misses its {} deadline",
                                    pv.name,
                                    d.as_secs(),
                                    pv.slow_requests(),
                                    humantime::format_duration(v.limits().io_timeout)
                                ),
                            )
                            .volume(&pv.name)
                            .field("slow_requests", pv.slow_requests()),
                        );
                    }
                }
                Some(_) => {}
                None => pv.slow_reported.store(false, Ordering::Relaxed),
            }
        }
    }

    /// True when the previous stop of the pool was clean.
    pub fn was_clean(&self) -> bool {
        self.was_clean
    }

    /// What the mount found under the volumes root (or as the witness) that belongs to
    /// another pool, and left alone.
    pub fn foreign(&self) -> &[Foreign] {
        &self.foreign
    }
}
