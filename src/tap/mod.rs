//! The log tap: sees every mutation through the mount, numbers it, and records what each
//! copy that is not in sync misses, so that it comes back by copying only that.
//!
//! - [`dirty`]: per lagging copy, the files' changed 4 KiB blocks and the namespace
//!   operations to replay, persisted on the in-sync copies' volumes.
//! - [`activity`]: the extents that may differ between the copies right now, durable
//!   before a write proceeds; after a crash only they are compared.
//! - generations (this module): each copy's lineage, as DRBD keeps it. The in-sync
//!   copies share the database's current generation; when a copy leaves, they move to
//!   a new one and the leaving copy's dirty map remembers the old one (its base). A copy
//!   that comes back with its base generation missed exactly what its map holds; one
//!   that comes back with anything else diverged or is unknown (event 2058).
//! - [`logstream`]: the `<db>.log/` folder compared as a log stream (the first diverged log).

pub mod activity;
pub mod dirty;
pub mod logstream;
pub mod reconcile;

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::SystemTime;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::layout;
use crate::names::CopySlot;
use crate::names::DbName;
use crate::volume::Volume;

pub use activity::{ActivityLog, NodeMarks, WriteGuard};
pub use dirty::{DirtyMap, FileDirty, MetaOp};

/// `.reseedfs/tap/<db>` on a volume.
pub fn tap_dir(db: &DbName) -> PathBuf {
    Path::new(layout::META_DIR).join("tap").join(db)
}

/// Where the dirty map of the copy on `volume` is kept.
pub fn dirty_path(db: &DbName, volume: &str) -> PathBuf {
    tap_dir(db).join(format!("dirty-{volume}.json"))
}

/// Where a copy's own generation is kept (on the copy's volume).
pub fn generation_path(db: &DbName) -> PathBuf {
    tap_dir(db).join("generation.json")
}

/// `base/rest`, or `base` when `rest` is empty.
fn join_rest(base: &Path, rest: &Path) -> PathBuf {
    if rest.as_os_str().is_empty() {
        base.to_owned()
    } else {
        base.join(rest)
    }
}

/// A path in JSON: the text when it is UTF-8, else `hex:` and its bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PathText(String);

impl From<&Path> for PathText {
    fn from(p: &Path) -> PathText {
        use crate::volume::OsStrExt;
        match p.to_str() {
            Some(s) if !s.starts_with("hex:") => PathText(s.to_owned()),
            _ => {
                let hex: String = p
                    .as_os_str()
                    .as_bytes()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                PathText(format!("hex:{hex}"))
            }
        }
    }
}

/// The path a [`PathText`] stands for.
pub fn decode_path(t: &PathText) -> PathBuf {
    use crate::volume::OsStrExt;
    match t.0.strip_prefix("hex:") {
        Some(hex) => {
            let bytes: Vec<u8> = (0..hex.len() / 2)
                .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
                .collect();
            PathBuf::from(std::ffi::OsStr::from_bytes(&bytes))
        }
        None => PathBuf::from(&t.0),
    }
}

/// A database's generation as its in-sync copies hold it (in the pool state).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    /// The generation every in-sync copy has.
    pub current: u64,
    /// Earlier generations, newest first (at most [`HISTORY`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<u64>,
}

/// Generations kept in a history.
pub const HISTORY: usize = 16;

/// A new random generation id.
pub fn new_generation_id() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    let id = std::collections::hash_map::RandomState::new()
        .hash_one((SystemTime::now(), N.fetch_add(1, Ordering::Relaxed)));
    id.max(1)
}

impl Generation {
    /// Moves to a new generation; returns the one left.
    pub fn bump(&mut self) -> u64 {
        let old = self.current;
        self.history.insert(0, old);
        self.history.truncate(HISTORY);
        self.current = new_generation_id();
        old
    }
}

/// A copy's own record of its generation (`.reseedfs/tap/<db>/generation.json` on its
/// volume), written while it is in sync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyGeneration {
    /// The database.
    pub db: DbName,
    /// The generation the copy has.
    pub current: u64,
    /// The generations before it, newest first.
    #[serde(default)]
    pub history: Vec<u64>,
}

/// Writes the generation of the copy of `db` on `volume`.
pub fn write_copy_generation(volume: &Volume, db: &DbName, g: &Generation) -> std::io::Result<()> {
    let rec = CopyGeneration {
        db: db.to_owned(),
        current: g.current,
        history: g.history.clone(),
    };
    let path = generation_path(db);
    if let Some(parent) = path.parent() {
        volume.mkdir_all(parent)?;
    }
    let bytes = serde_json::to_vec_pretty(&rec).map_err(std::io::Error::other)?;
    volume.write_atomic(&path, &bytes)
}

/// Reads the generation of the copy of `db` on `volume` (`Ok(None)`: it has none).
pub fn read_copy_generation(
    volume: &Volume,
    db: &DbName,
) -> std::io::Result<Option<CopyGeneration>> {
    match volume.read_file(&generation_path(db)) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Why an incremental resync cannot be done (the error code of event 2058).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IncrementalError {
    /// The returning copy has no generation record (never in sync, or wiped).
    GenerationMissing,
    /// Its generation is not in this database's history: restored from another state
    /// or from another pool.
    GenerationUnknown,
    /// Its generation is an older one of this database, from before the dirty map now
    /// kept for it: what it missed is not recorded.
    NoDirtyMap,
    /// Its dirty map was lost (no in-sync volume holds it).
    DirtyMapLost,
}

impl IncrementalError {
    /// The code in events and status.
    pub fn code(self) -> &'static str {
        match self {
            IncrementalError::GenerationMissing => "GenerationMissing",
            IncrementalError::GenerationUnknown => "GenerationUnknown",
            IncrementalError::NoDirtyMap => "NoDirtyMap",
            IncrementalError::DirtyMapLost => "DirtyMapLost",
        }
    }
}

/// How a returning copy relates to the in-sync copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lineage {
    /// It has the base generation of its dirty map: it missed what the map holds (and
    /// may have been written behind our back since, which the resync checks).
    Behind,
    /// It moved on from the base generation on its own (it was in sync somewhere else):
    /// both sides changed since `common`.
    Diverged {
        /// The last generation both had.
        common: u64,
    },
    /// No common generation is known.
    Unknown(IncrementalError),
}

/// Classifies a returning copy from its own record, the database's generation and the
/// base of the dirty map kept for it.
pub fn classify(copy: Option<&CopyGeneration>, db: &Generation, base: Option<u64>) -> Lineage {
    let Some(copy) = copy else {
        return Lineage::Unknown(IncrementalError::GenerationMissing);
    };
    let Some(base) = base else {
        return Lineage::Unknown(IncrementalError::DirtyMapLost);
    };
    if copy.current == base {
        Lineage::Behind
    } else if copy.history.contains(&base) {
        Lineage::Diverged { common: base }
    } else if copy.current == db.current || db.history.contains(&copy.current) {
        Lineage::Unknown(IncrementalError::NoDirtyMap)
    } else {
        Lineage::Unknown(IncrementalError::GenerationUnknown)
    }
}

/// The copies a tap writes its activity log to: the in-sync copies of its database, as
/// the copy set knows them (`copyset::Database` implements it). The tap depends on this,
/// not on the copy set.
pub trait Replicas {
    /// Every copy in sync now: its slot, placement generation and volume.
    fn in_sync(&self) -> Vec<(usize, u64, std::sync::Arc<Volume>)>;
    /// The volume name of copy `slot`, for messages.
    fn volume_name(&self, slot: CopySlot) -> String;
    /// Copy `slot` failed `op` of the tap with `err` while the others took it: the copy
    /// set decides what that means for the copy.
    fn on_error(&self, slot: CopySlot, op: &str, err: &std::io::Error);
    /// Writes what the copies keep in memory only and a checkpoint must find on their
    /// disks before its `syncfs` (the deferred checksums).
    fn flush(&self) {}
}

/// One database's tap.
#[derive(Debug)]
pub struct Tap {
    db: DbName,
    seq: AtomicU64,
    /// The activity log: databases with two copies or more (what may differ between the
    /// copies), and databases with one copy whose blocks are checksummed (where a block's
    /// sum may lag its data after a crash).
    pub activity: Option<ActivityLog>,
    lagging: Box<[Mutex<Option<DirtyMap>>]>,
    n_lagging: AtomicUsize,
}

/// A mutation in progress: numbered, and held in the activity log's epoch.
#[derive(Debug)]
pub struct Mutation<'a> {
    /// Its sequence number.
    pub seq: u64,
    guard: Option<WriteGuard<'a>>,
}

impl Tap {
    /// The tap of database `db` with `copies` copies, its blocks checksummed or not.
    ///
    /// The activity log is kept when the copies can differ after a crash (two or more),
    /// and when a block's data and its checksum can: a write in flight at a kill -9 or a
    /// power loss may have reached one and not the other, and crash repair sums the
    /// logged extents again from the data. Without the log a single copy would fail such
    /// a block's reads with `EIO` until it is rewritten: a false alarm. Its cost for one
    /// copy is the log's own (a group-committed `fdatasync` when a write reaches an
    /// extent not in the log, and the checkpoint's `syncfs` of the volume).
    pub fn new(db: &DbName, copies: usize, checksums: bool) -> Tap {
        Tap {
            db: db.to_owned(),
            seq: AtomicU64::new(0),
            activity: (copies > 1 || checksums).then(|| ActivityLog::new(db)),
            lagging: (0..copies).map(|_| Mutex::new(None)).collect(),
            n_lagging: AtomicUsize::new(0),
        }
    }

    /// Mutations numbered so far.
    pub fn seq(&self) -> u64 {
        self.seq.load(Ordering::Relaxed)
    }

    /// Starts a mutation: numbers it and holds it in the activity log's epoch.
    pub fn begin(&self) -> Mutation<'_> {
        Mutation {
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            guard: self.activity.as_ref().map(ActivityLog::begin),
        }
    }

    /// A data change of `[offset, offset+len)` in the file with `marks`, named by
    /// `path()`: durable in the activity log, recorded for every lagging copy.
    pub fn data(
        &self,
        db: &dyn Replicas,
        m: &Mutation<'_>,
        marks: &NodeMarks,
        path: impl Fn() -> Option<PathBuf>,
        offset: u64,
        len: u64,
    ) {
        if let (Some(al), Some(g)) = (&self.activity, &m.guard) {
            al.note(db, g, marks, &path, offset, len);
        }
        if self.n_lagging.load(Ordering::Acquire) > 0 {
            if let Some(p) = path() {
                self.each_lagging(|map| map.write(&p, offset, len));
            }
        }
    }

    /// A size change of the file with `marks` (named by `path()`) to `size`, about to
    /// reach the copies: the extent of its new last block goes into the activity log
    /// first, so that crash repair sums that block again and drops the sums past the new
    /// end (a crash between the size change and its sums leaves them disagreeing there).
    /// Not numbered: the size change is, as a metadata mutation. Call [`Tap::written`]
    /// with `size.saturating_sub(1), 1` when it is over.
    pub fn resizing(
        &self,
        db: &dyn Replicas,
        marks: &NodeMarks,
        path: impl Fn() -> Option<PathBuf>,
        size: u64,
    ) -> Mutation<'_> {
        let m = Mutation {
            seq: self.seq(),
            guard: self.activity.as_ref().map(ActivityLog::begin),
        };
        if let (Some(al), Some(g)) = (&self.activity, &m.guard) {
            al.note(db, g, marks, &path, size.saturating_sub(1), 1);
        }
        m
    }

    /// As [`Tap::data`], for a mutation that every copy may refuse without changing
    /// anything (a huge `fallocate`): when it is, [`Revocable::revoke`] takes out of the
    /// lagging copies' maps what it added there, keeping what was dirty before and what
    /// any other mutation marked meanwhile. (The activity log keeps its note: it is
    /// bounded by time, not by what a resync visits.)
    pub fn data_revocable(
        &self,
        db: &dyn Replicas,
        m: &Mutation<'_>,
        marks: &NodeMarks,
        path: impl Fn() -> Option<PathBuf>,
        offset: u64,
        len: u64,
    ) -> Revocable<'_> {
        if let (Some(al), Some(g)) = (&self.activity, &m.guard) {
            al.note(db, g, marks, &path, offset, len);
        }
        let mut marked = Vec::new();
        if self.n_lagging.load(Ordering::Acquire) > 0
            && let Some(p) = path()
        {
            for slot in CopySlot::all(self.lagging.len()) {
                if let Some(map) = self.lagging[slot].lock().as_mut() {
                    let id = map.write_revocable(&p, offset, len);
                    marked.push((slot, map.volume.clone(), map.base, id));
                }
            }
        }
        Revocable {
            tap: self,
            marked,
            refused: false,
        }
    }

    /// The data change that [`Tap::data`] recorded for `m` is over (done or failed).
    pub fn written(&self, m: &Mutation<'_>, marks: &NodeMarks, offset: u64, len: u64) {
        if let (Some(al), Some(_)) = (&self.activity, &m.guard) {
            al.written(marks, offset, len);
        }
    }

    /// Where an `fsync` of the file with `marks` starts (see [`Tap::synced`]).
    pub fn sync_begins(&self, marks: &NodeMarks) -> u64 {
        self.activity.as_ref().map_or(0, |al| al.sync_begins(marks))
    }

    /// An `fsync` of the file with `marks` (named by `path()`), begun at `began`,
    /// returned on every in-sync copy: what was written before it began need not be
    /// resynced when a copy fails later.
    pub fn synced(&self, marks: &NodeMarks, path: impl FnOnce() -> Option<PathBuf>, began: u64) {
        if let Some(al) = &self.activity {
            al.synced(marks, path, began);
        }
    }

    /// A metadata mutation (through `Database::mutate`): numbered and counted.
    pub fn mutated(&self) {
        self.seq.fetch_add(1, Ordering::Relaxed);
        self.meta(DirtyMap::touch);
    }

    /// What a metadata mutation did to the namespace: `f` records it in every lagging
    /// copy's map.
    pub fn meta(&self, f: impl Fn(&mut DirtyMap)) {
        if self.n_lagging.load(Ordering::Acquire) > 0 {
            self.each_lagging(f);
        }
    }

    /// A rename, for the activity log and the lagging maps.
    pub fn renamed(&self, db: &dyn Replicas, from: &Path, to: &Path, exchange: bool) {
        if let Some(al) = &self.activity {
            al.renamed(db, from, to, exchange);
        }
        self.meta(|m| m.renamed(from, to, exchange));
    }

    fn each_lagging(&self, f: impl Fn(&mut DirtyMap)) {
        for slot in self.lagging.iter() {
            if let Some(map) = slot.lock().as_mut() {
                f(map);
            }
        }
    }

    /// Copy `slot` left the in-sync copies at generation `base`: from now on what it
    /// misses is recorded, starting with every extent the activity log holds (its disk
    /// may have lost those writes). An existing map is kept (and widened).
    pub fn start_lagging(&self, slot: CopySlot, volume: &str, base: u64, since: SystemTime) {
        let extents = self
            .activity
            .as_ref()
            .map(ActivityLog::extents)
            .unwrap_or_default();
        let mut s = self.lagging[slot].lock();
        if s.is_none() {
            self.n_lagging.fetch_add(1, Ordering::AcqRel);
        }
        let map = s.get_or_insert_with(|| DirtyMap::new(volume, base, since));
        map.merge_files(&extents);
    }

    /// Installs the map read at mount for copy `slot`.
    pub fn restore_lagging(&self, slot: CopySlot, map: DirtyMap) {
        let mut s = self.lagging[slot].lock();
        if s.is_none() {
            self.n_lagging.fetch_add(1, Ordering::AcqRel);
        }
        *s = Some(map);
    }

    /// Adds extents that may differ (the activity log found after a crash) to every
    /// lagging copy's map.
    pub fn widen(&self, files: &BTreeMap<PathBuf, FileDirty>) {
        self.each_lagging(|m| m.merge_files(files));
    }

    /// Copy `slot` is in sync again (or is being seeded in full): its map is dropped.
    pub fn stop_lagging(&self, slot: CopySlot) -> Option<DirtyMap> {
        let map = self.lagging[slot].lock().take();
        if map.is_some() {
            self.n_lagging.fetch_sub(1, Ordering::AcqRel);
        }
        map
    }

    /// From now on, anything on copy `slot` changed later than `at` was not written by
    /// the tap's owner: called when a resync starts writing to the copy, so that a resync
    /// interrupted by a crash is not mistaken for writes behind reseedfs's back.
    pub fn restart_since(&self, slot: CopySlot, at: SystemTime) {
        if let Some(m) = self.lagging[slot].lock().as_mut() {
            m.since = at;
            m.dirty = true;
        }
    }

    /// A copy of the map of copy `slot`.
    pub fn snapshot(&self, slot: CopySlot) -> Option<DirtyMap> {
        self.lagging[slot].lock().clone()
    }

    /// What copy `slot` lacks: (mutations, bytes); `None` when no map is kept for it.
    pub fn queue(&self, slot: CopySlot) -> Option<(u64, u64)> {
        self.lagging[slot]
            .lock()
            .as_ref()
            .map(|m| (m.mutations, m.bytes()))
    }

    /// Writes every changed map to the in-sync copies' volumes.
    pub fn persist(&self, volumes: &[std::sync::Arc<Volume>], force: bool) {
        for slot in self.lagging.iter() {
            let bytes = {
                let mut s = slot.lock();
                let Some(map) = s.as_mut() else { continue };
                if !map.dirty && !force {
                    continue;
                }
                map.dirty = false;
                match map.to_json() {
                    Ok(b) => (map.volume.clone(), b),
                    Err(e) => {
                        tracing::error!("dirty map of {}\\{}: {e}", self.db, map.volume);
                        continue;
                    }
                }
            };
            for v in volumes {
                let path = dirty_path(&self.db, &bytes.0);
                let r = path
                    .parent()
                    .map_or(Ok(()), |p| v.mkdir_all(p))
                    .and_then(|()| v.write_atomic(&path, &bytes.1));
                if let Err(e) = r {
                    tracing::warn!(
                        "cannot persist the dirty map of {}\\{} on {}: {e}",
                        self.db,
                        bytes.0,
                        v.name()
                    );
                }
            }
        }
    }
}

/// The marks of a mutation that every copy may still refuse ([`Tap::data_revocable`]):
/// dropped, they stay; [`Revocable::revoke`] takes them out.
#[derive(Debug)]
pub struct Revocable<'a> {
    tap: &'a Tap,
    /// Per lagging map marked: its slot, volume and base (the same map still), the mark.
    marked: Vec<(CopySlot, String, u64, u64)>,
    refused: bool,
}

impl Revocable<'_> {
    /// Every copy refused the mutation (nothing changed): takes its marks out.
    pub fn revoke(mut self) {
        self.refused = true;
    }
}

impl Drop for Revocable<'_> {
    fn drop(&mut self) {
        for (slot, volume, base, id) in self.marked.drain(..) {
            let mut s = self.tap.lagging[slot].lock();
            // A map that left and came back meanwhile is another map: not touched.
            let Some(map) = s.as_mut().filter(|m| m.volume == volume && m.base == base) else {
                continue;
            };
            if self.refused {
                map.revoke(id);
            } else {
                map.settle(id);
            }
        }
    }
}

/// Reads the dirty map of the copy of `db` on `volume` from the in-sync `volumes`: the
/// one with the most mutations wins (they are written together).
pub fn read_dirty_map(
    volumes: &[std::sync::Arc<Volume>],
    db: &DbName,
    volume: &str,
) -> Option<DirtyMap> {
    volumes
        .iter()
        .filter_map(|v| v.read_file(&dirty_path(db, volume)).ok())
        .filter_map(|b| DirtyMap::from_json(&b).ok())
        .max_by_key(|m| m.mutations)
}

/// Removes the dirty map of the copy of `db` on `volume` from `volumes`.
pub fn remove_dirty_map(volumes: &[std::sync::Arc<Volume>], db: &DbName, volume: &str) {
    for v in volumes {
        let _ = v.remove(&dirty_path(db, volume), false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lineage_from_generations() {
        let mut g = Generation {
            current: 10,
            history: vec![],
        };
        let base = g.bump();
        assert_eq!(base, 10);
        let copy = |current: u64, history: Vec<u64>| CopyGeneration {
            db: crate::names::DbName::from_static("db"),
            current,
            history,
        };
        assert_eq!(
            classify(Some(&copy(10, vec![])), &g, Some(10)),
            Lineage::Behind
        );
        assert_eq!(
            classify(Some(&copy(99, vec![10, 5])), &g, Some(10)),
            Lineage::Diverged { common: 10 }
        );
        assert_eq!(
            classify(Some(&copy(77, vec![3])), &g, Some(10)),
            Lineage::Unknown(IncrementalError::GenerationUnknown)
        );
        assert_eq!(
            classify(None, &g, Some(10)),
            Lineage::Unknown(IncrementalError::GenerationMissing)
        );
        g.bump();
        // An older generation of this database, but the map kept is from a later one.
        assert_eq!(
            classify(Some(&copy(10, vec![])), &g, Some(g.history[0])),
            Lineage::Unknown(IncrementalError::NoDirtyMap)
        );
        assert_eq!(
            classify(Some(&copy(10, vec![])), &g, None),
            Lineage::Unknown(IncrementalError::DirtyMapLost)
        );
    }

    #[test]
    fn paths_round_trip_through_text() {
        use crate::volume::OsStrExt;
        for p in [
            Path::new("db.db/a b"),
            Path::new(std::ffi::OsStr::from_bytes(b"db.db/\xff\xfe")),
            Path::new("hex:trick"),
        ] {
            assert_eq!(decode_path(&PathText::from(p)), p);
        }
    }
}
