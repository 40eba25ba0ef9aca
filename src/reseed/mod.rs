//! Reseed: a full, online block copy of a database onto one of its copies, while the
//! database keeps reading and writing through the mount.
//!
//! Four phases, each with its event and, but the last, its file:
//!
//! 1. **Lay out** (`layout`; namespace held exclusively, milliseconds): the copy's
//!    placement moves to the target volume in state `Seeding` and is persisted; whatever
//!    the target held for this database is moved aside (`.reseedfs/replaced/`, deleted
//!    once the new copy is verified: SafeDeleteExistingFiles); the source tree is
//!    recreated on the target (directories, empty sparse files of the right size, links,
//!    owners, modes, xattrs); every open handle gets its file on the target. From here on
//!    every namespace mutation reaches the new copy like any other.
//! 2. **Copy** (`copy`; 825 → 826): each file front to back in windows, data extents
//!    only (holes stay holes), destination preallocated, through a
//!    [`engine::CopyEngine`]. Writes are routed by [`crate::copyset::SeedFile`] so the copy
//!    is identical to the source when the file's last window closes. A read error on the
//!    source moves the copy to another in-sync copy when there is one.
//! 3. **Verify** (`verify`; 827 → 828): every file compared with the source chunk by
//!    chunk (CRC32), each chunk under the file's stripe locks so concurrent writes cannot
//!    race it (the comparison online verification uses, [`crate::verify::chunk`]).
//! 4. **In sync** (1110): the copy is persisted `InSync` and serves reads again.
//!
//! [`resync`] is the incremental variant for a copy that only missed writes; [`engine`]
//! holds the copy engines.

mod copy;
pub mod engine;
mod layout;
pub mod orphans;
pub mod resync;
mod verify;
pub mod watch;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::names::CopySlot;
use crate::names::DbName;
use crate::names::VolumeName;
use crate::volume::FileType;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::copyset::Database;
use crate::events::{EventId, NewEvent};
use crate::fs::Core;
use crate::job::{JobPhase, JobProgress};
use crate::layout as names;
use crate::volume::Volume;

use engine::{CopyError, select};
use layout::{FileJob, Layout};

/// Bytes of a file copied per window by default (the stripe locks of a window are taken
/// once, to let the writes already inside it finish; the throttle shrinks it further).
pub const WINDOW_BYTES: u64 = 64 << 20;

/// What to reseed.
#[derive(Debug, Clone)]
pub struct SeedRequest {
    /// The database.
    pub db: Arc<Database>,
    /// The copy (index in the placement).
    pub slot: CopySlot,
    /// The volume that receives the copy: the copy's own (in place) or a spare.
    pub target: VolumeName,
    /// Preferred source volume (an in-sync copy).
    pub from: Option<VolumeName>,
    /// Reseed even an in-sync copy (an operator asked for it by name).
    pub allow_in_sync: bool,
    /// Keep what the target held in quarantine instead of deleting it once the new copy
    /// is verified (the copy diverged: its own writes may exist nowhere else).
    pub keep_replaced: bool,
    /// Bytes of a file copied per window at most ([`WINDOW_BYTES`]; tests pass less, to
    /// have many windows in a small file).
    pub window_bytes: u64,
}

/// Where a reseed is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Checking and laying out the new copy.
    Preparing,
    /// Copying data.
    Copying,
    /// Comparing the new copy with its source.
    Verifying,
    /// In sync.
    Done,
    /// Gave up (see the events).
    Failed,
}

impl JobPhase for Phase {
    const FAILED: Phase = Phase::Failed;
    fn running(self) -> bool {
        !matches!(self, Phase::Done | Phase::Failed)
    }
    fn measured(self) -> bool {
        matches!(self, Phase::Copying | Phase::Verifying)
    }
}

/// Live progress of one reseed (or resync), shared with `status`.
pub struct Progress {
    db: DbName,
    target: String,
    source: Mutex<String>,
    engine: Mutex<String>,
    /// Phase, bytes, throughput, cancellation and the pacing through the host's throttle
    /// (set by whoever starts the reseed).
    pub job: JobProgress<Phase>,
}

/// A snapshot of a reseed's progress, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedStatus {
    /// The database.
    pub db: String,
    /// Volume receiving the copy.
    pub target: String,
    /// Volume read from.
    pub source: String,
    /// `io_uring` or `threads`.
    pub engine: String,
    /// The phase.
    pub phase: Phase,
    /// Bytes to move in this phase.
    pub bytes_total: u64,
    /// Bytes moved (or compared) in this phase.
    pub bytes_done: u64,
    /// Throughput of this phase.
    pub mib_s: f64,
    /// Seconds left in this phase at this throughput.
    pub eta_s: Option<f64>,
    /// Seconds since the reseed started.
    pub elapsed_s: f64,
    /// Why it failed.
    pub error: Option<String>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("db", &self.db)
            .field("target", &self.target)
            .field("phase", &self.phase())
            .finish_non_exhaustive()
    }
}

impl Progress {
    /// A reseed of `db` onto `target`, not started.
    pub fn new(db: &DbName, target: &str) -> Progress {
        Progress {
            db: db.to_owned(),
            target: target.to_owned(),
            source: Mutex::new(String::new()),
            engine: Mutex::new(String::new()),
            job: JobProgress::new(Phase::Preparing),
        }
    }

    /// The phase now.
    pub fn phase(&self) -> Phase {
        self.job.phase()
    }

    /// The database.
    pub fn db(&self) -> &str {
        &self.db
    }

    /// True until the reseed ends (either way).
    pub fn is_running(&self) -> bool {
        self.job.is_running()
    }

    /// Marks the work failed with `why` (for a caller that gives up on it).
    pub fn fail(&self, why: &str) {
        self.job.fail(why);
    }

    /// Asks the reseed to stop (the daemon is stopping): it fails at its next window
    /// and the copy stays FailedAndSuspended.
    pub fn cancel(&self) {
        self.job.cancel();
    }

    fn check_cancel(&self) -> Result<(), CopyError> {
        if self.job.is_cancelled() {
            Err(CopyError::Dest(io::Error::new(
                io::ErrorKind::Interrupted,
                "cancelled: the daemon is stopping",
            )))
        } else {
            Ok(())
        }
    }

    fn set_source(&self, volume: &str) {
        *self.source.lock() = volume.to_owned();
    }

    fn set_engine(&self, engine: &str) {
        *self.engine.lock() = engine.to_owned();
    }

    /// Where the reseed is now.
    pub fn snapshot(&self) -> SeedStatus {
        let (phase, rate) = self.job.rate();
        SeedStatus {
            db: self.db.to_string(),
            target: self.target.clone(),
            source: self.source.lock().clone(),
            engine: self.engine.lock().clone(),
            phase,
            bytes_total: rate.bytes_total,
            bytes_done: rate.bytes_done,
            mib_s: rate.mib_s,
            eta_s: rate.eta_s,
            elapsed_s: rate.elapsed_s,
            error: self.job.error(),
        }
    }
}

/// What a finished reseed did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeedReport {
    /// Bytes copied (data extents, holes excluded; dirty ranges copied again included).
    pub bytes_copied: u64,
    /// Files copied.
    pub files: u64,
    /// Seconds spent copying.
    pub copy_seconds: f64,
    /// Copy throughput.
    pub mib_s: f64,
    /// Bytes compared during verification.
    pub bytes_verified: u64,
    /// The engine.
    pub engine: String,
    /// The source volume (the last one, if the source changed).
    pub source: String,
}

/// Why a reseed did not complete.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// It could not start (nothing changed).
    #[error("{0}")]
    Refused(String),
    /// The source failed and no other copy could take over.
    #[error("{0}")]
    Source(String),
    /// The new copy failed.
    #[error("{0}")]
    Dest(String),
    /// The new copy differs from its source.
    #[error("verification failed: {0}")]
    Verify(String),
}

/// The copy read from.
#[derive(Clone)]
struct Source {
    slot: CopySlot,
    volume: Arc<Volume>,
}

/// Checks the naming convention and that the database and log folders are directories
/// on the volume's own filesystem: `(naming_ok, layout_split)`.
pub fn check_folders(volume: &Volume, db: &DbName) -> (bool, bool) {
    let root_dev = volume.stat(Path::new("")).map(|s| s.st_dev).ok();
    let mut naming_ok = names::check_db_name(db).is_ok();
    let mut split = false;
    for f in names::db_folders(db) {
        match volume.stat(Path::new(&f)) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                split |= Some(st.st_dev) != root_dev;
            }
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => split = true,
            _ => naming_ok = false,
        }
    }
    (naming_ok, split)
}

/// The in-sync copy to read from: `from` if given, else a passive in-sync copy, else
/// the active one.
fn choose_source(db: &Database, slot: CopySlot, from: Option<&str>) -> Result<Source, String> {
    let in_sync: Vec<(usize, Arc<Volume>)> = db
        .copies()
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != slot)
        .filter_map(|(i, c)| c.in_sync_volume().map(|v| (i, v)))
        .collect();
    if let Some(from) = from {
        return in_sync
            .into_iter()
            .find(|(_, v)| v.name() == from)
            .map(|(slot, volume)| Source {
                slot: CopySlot::new(slot),
                volume,
            })
            .ok_or_else(|| format!("{from} holds no in-sync copy of {}", db.name));
    }
    let active = db.active_index();
    in_sync
        .iter()
        .find(|(i, _)| Some(*i) != active)
        .or_else(|| in_sync.first())
        .map(|(slot, volume)| Source {
            slot: CopySlot::new(*slot),
            volume: volume.clone(),
        })
        .ok_or_else(|| format!("no copy of {} is in sync to seed from", db.name))
}

/// Reseeds copy `req.slot` of `req.db` onto `req.target`, online. Returns when the copy
/// is in sync (after verification) or the reseed failed (the copy is FailedAndSuspended
/// again; the database runs on its other copies either way).
pub fn reseed(
    core: &Core,
    req: &SeedRequest,
    progress: &Progress,
) -> Result<SeedReport, SeedError> {
    let result = run(core, req, progress);
    progress.job.pacer.end();
    match &result {
        Ok(_) => progress.job.set_phase(Phase::Done),
        Err(e) => progress.job.fail(&e.to_string()),
    }
    result
}

/// The four phases, in order. A failure after the layout gives the copy up (3019).
fn run(core: &Core, req: &SeedRequest, progress: &Progress) -> Result<SeedReport, SeedError> {
    let db = &req.db;
    let _one = db
        .try_seed_lock()
        .ok_or_else(|| SeedError::Refused(format!("a reseed of {} is already running", db.name)))?;
    let target = core
        .pool()
        .reprobe_volume(&req.target)
        .map_err(|why| SeedError::Refused(format!("target volume {}: {why}", req.target)))?;
    let (engine, fallback) =
        select(core.pool().config.reseed.engine).map_err(SeedError::Refused)?;
    let engine_name = engine.name();
    // Owned by the copy: a volume that hangs under it keeps it (see `watch`).
    let mut engine = Some(engine);
    if let Some(why) = &fallback {
        tracing::warn!(
            "reseed of {}\\{} uses the portable engine: {why}",
            db.name,
            req.target
        );
    }
    progress.set_engine(engine_name);

    // Phase 1: lay out (refusals before the copy becomes Seeding change nothing).
    let (mut source, laid) = layout::lay_out(core, req, &target, progress)?;
    let fail = |e| give_up(core, req, &laid.files, e);
    // Phase 2: copy (825, 826).
    let copied = copy::copy_files(
        core,
        req,
        &mut source,
        &target,
        &laid,
        &mut engine,
        fallback.as_deref(),
        progress,
    )
    .map_err(fail)?;
    // Phase 3: verify (827, 828).
    let verified =
        verify::verify_copy(core, req, &source, &target, &laid, progress).map_err(fail)?;
    // Phase 4: in sync (1110).
    finish(core, req, &target, &laid, progress).map_err(fail)?;
    Ok(SeedReport {
        bytes_copied: copied.bytes,
        files: laid.files.len() as u64,
        copy_seconds: copied.seconds,
        mib_s: copied.mib_s(),
        bytes_verified: verified.bytes,
        engine: engine_name.to_owned(),
        source: source.volume.name().to_string(),
    })
}

/// Phase 4: the copy is persisted `InSync`; what the target held before goes to
/// quarantine (a divergent copy's) or is deleted; event 1110.
fn finish(
    core: &Core,
    req: &SeedRequest,
    target: &Volume,
    layout: &Layout,
    progress: &Progress,
) -> Result<(), SeedError> {
    let pool = core.pool();
    let db = &req.db;
    let label = format!("{}\\{}", db.name, req.target);
    // The new copy is verified: what the target held before can go (SafeDeleteExistingFiles),
    // before the copy is declared in sync, so that `status` never shows it Healthy while
    // its reseed is still busy.
    if let Some(old) = layout.replaced.as_ref().filter(|_| req.keep_replaced) {
        match keep_in_quarantine(target, &db.name, old) {
            Ok(dir) => tracing::warn!(
                "the files {label} held before its reseed are kept in {}/{}",
                target.root().display(),
                dir.display()
            ),
            Err(e) => tracing::error!(
                "could not move the files {label} held before its reseed ({}/{}) to quarantine: {e}; they stay where they are",
                target.root().display(),
                old.display()
            ),
        }
    } else if let Some(old) = &layout.replaced {
        if let Err(e) = target.remove_tree(old) {
            tracing::warn!(
                "could not delete the replaced files {}/{}: {e}",
                target.root().display(),
                old.display()
            );
        }
    }
    if !pool.finish_seed(db, req.slot) {
        return Err(SeedError::Dest(format!(
            "copy {label} failed while it was verified"
        )));
    }
    // The job is over once its copy is in sync: a request that reads `status` next
    // must not find it still running.
    progress.job.set_phase(Phase::Done);
    clear_seeds(&layout.files);
    let status = db.status_word(req.slot);
    pool.events().emit(
        NewEvent::new(
            EventId::CopyHealthy,
            format!("copy {label} passed its final checks and is {status}"),
        )
        .database(&db.name)
        .volume(&req.target)
        .field("status", status.as_str()),
    );
    Ok(())
}

/// Moves the folders a reseed replaced into a new quarantine with its manifest.
fn keep_in_quarantine(target: &Volume, db: &DbName, old: &Path) -> io::Result<PathBuf> {
    let dir = resync::quarantine_dir(target)?;
    let mut files = Vec::new();
    for e in target.read_dir(old)? {
        target.rename(
            &old.join(&e.name),
            &dir.join(&e.name),
            crate::volume::RenameFlags::NOREPLACE,
        )?;
        files.push(resync::QuarantinedFile {
            path: e.name.to_string_lossy().into_owned(),
            kind: "file".into(),
            extents: Vec::new(),
        });
    }
    target.remove(old, true)?;
    resync::write_manifest(
        target,
        &dir,
        &resync::Manifest {
            db: db.to_owned(),
            volume: target.name().to_string(),
            at: SystemTime::now(),
            reason: "replaced by a full reseed after event 2058: no common generation".into(),
            common_generation: None,
            files,
        },
    )?;
    Ok(dir)
}

fn clear_seeds(files: &[FileJob]) {
    for f in files {
        for n in &f.nodes {
            *n.io.seed.lock() = None;
        }
    }
}

/// The reseed failed after the copy became Seeding: FailedAndSuspended again, event 3019.
fn give_up(core: &Core, req: &SeedRequest, files: &[FileJob], e: SeedError) -> SeedError {
    let pool = core.pool();
    pool.abort_seed(&req.db, req.slot);
    clear_seeds(files);
    let runs_on = req
        .db
        .active_volume()
        .map(String::from)
        .unwrap_or_else(|| "no copy".into());
    pool.events().emit(
        NewEvent::new(
            EventId::ReseedFailed,
            format!(
                "reseed of {}\\{} failed: {e}. The copy is FailedAndSuspended; {} runs on {runs_on}",
                req.db.name, req.target, req.db.name
            ),
        )
        .database(&req.db.name)
        .volume(&req.target)
        .field("error", e.to_string()),
    );
    e
}

/// A write to the new copy failed: the copy fails (its volume too, for a media error).
fn dest_failed(db: &Database, slot: CopySlot, op: &str, e: io::Error) -> SeedError {
    let msg = format!(
        "writing the new copy on {} failed: {e}",
        db.copies()[slot].volume_name()
    );
    db.on_error(slot.index(), op, &e, true);
    SeedError::Dest(msg)
}

pub(crate) fn copy_xattrs(src: &Volume, dst: &Volume, rel: &Path) -> Result<(), SeedError> {
    let all = src
        .xattrs(rel)
        .map_err(|e| SeedError::Source(format!("{}: {e}", rel.display())))?;
    for (key, value) in all {
        dst.set_xattr(rel, &key, &value, 0)
            .map_err(|e| SeedError::Dest(format!("{}: setting xattr: {e}", rel.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
