//! Reseed: a full, online block copy of a database onto one of its copies, while the
//! database keeps reading and writing through the mount.
//!
//! Four phases, each with its event:
//!
//! 1. **Lay out** (namespace held exclusively, milliseconds): the copy's placement moves
//!    to the target volume in state `Seeding` and is persisted; whatever the target held
//!    for this database is moved aside (`.reseedfs/replaced/`, deleted once the new copy
//!    is verified: SafeDeleteExistingFiles); the source tree is recreated on the target
//!    (directories, empty sparse files of the right size, links, owners, modes, xattrs);
//!    every open handle gets its file on the target. From here on every namespace
//!    mutation reaches the new copy like any other.
//! 2. **Copy** (825 → 826): each file front to back in windows, data extents only (holes
//!    stay holes), destination preallocated, through a [`engine::CopyEngine`]. Writes
//!    are routed by [`crate::copyset::SeedFile`] so the copy is identical to the source
//!    when the file's last window closes. A read error on the source moves the copy to
//!    another in-sync copy when there is one.
//! 3. **Verify** (827 → 828): every file compared with the source chunk by chunk (CRC32),
//!    each chunk under the file's stripe locks so concurrent writes cannot race it.
//! 4. **In sync** (1110): the copy is persisted `InSync` and serves reads again.

pub mod engine;
pub mod resync;

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use parking_lot::Mutex;
use rustix::fs::{FallocateFlags, FileType, Mode, OFlags};
use serde::{Deserialize, Serialize};

use crate::copyset::CopyState;
use crate::copyset::{Database, SeedFile};
use crate::events::{EventId, NewEvent};
use crate::fs::{Core, Node};
use crate::layout;
use crate::throttle::StreamKind::{Reseed, Verify};
use crate::volume::{VolFile, Volume, child_path, is_media_error};

use engine::{CopyEngine, CopyError, Extent, data_extents, select, split_aligned};

/// Bytes of a file copied per window (the stripe locks of a window are taken once, to
/// let the writes already inside it finish).
const WINDOW: u64 = if cfg!(test) { 1 << 20 } else { 64 << 20 };

/// Bytes compared per verification step (under the chunk's stripe locks).
const VERIFY_CHUNK: usize = 4 << 20;

/// What to reseed.
#[derive(Debug, Clone)]
pub struct SeedRequest {
    /// The database.
    pub db: Arc<Database>,
    /// The copy (index in the placement).
    pub slot: usize,
    /// The volume that receives the copy: the copy's own (in place) or a spare.
    pub target: String,
    /// Preferred source volume (an in-sync copy).
    pub from: Option<String>,
    /// Reseed even an in-sync copy (an operator asked for it by name).
    pub allow_in_sync: bool,
    /// Keep what the target held in quarantine instead of deleting it once the new copy
    /// is verified (the copy diverged: its own writes may exist nowhere else).
    pub keep_replaced: bool,
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

/// Live progress of one reseed, shared with `status`.
pub struct Progress {
    db: String,
    target: String,
    source: Mutex<String>,
    engine: Mutex<String>,
    phase: Mutex<(Phase, Instant)>,
    total: AtomicU64,
    copied: AtomicU64,
    verified: AtomicU64,
    started: Instant,
    error: Mutex<Option<String>>,
    cancelled: std::sync::atomic::AtomicBool,
    /// The host's rebuild throttle, when whoever started the reseed set one.
    pub pacer: crate::throttle::Pacer,
    /// Tests: runs after every window copied.
    #[cfg(test)]
    pub(crate) after_window: Mutex<Option<Box<dyn FnMut() + Send>>>,
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
    pub fn new(db: &str, target: &str) -> Progress {
        let now = Instant::now();
        Progress {
            db: db.to_owned(),
            target: target.to_owned(),
            source: Mutex::new(String::new()),
            engine: Mutex::new(String::new()),
            phase: Mutex::new((Phase::Preparing, now)),
            total: AtomicU64::new(0),
            copied: AtomicU64::new(0),
            verified: AtomicU64::new(0),
            started: now,
            error: Mutex::new(None),
            cancelled: std::sync::atomic::AtomicBool::new(false),
            pacer: Default::default(),
            #[cfg(test)]
            after_window: Mutex::new(None),
        }
    }

    fn set_phase(&self, p: Phase) {
        *self.phase.lock() = (p, Instant::now());
    }

    /// The phase now.
    pub fn phase(&self) -> Phase {
        self.phase.lock().0
    }

    /// The database.
    pub fn db(&self) -> &str {
        &self.db
    }

    /// True until the reseed ends (either way).
    pub fn is_running(&self) -> bool {
        !matches!(self.phase(), Phase::Done | Phase::Failed)
    }

    /// Marks the work failed with `why` (for a caller that gives up on it).
    pub fn fail(&self, why: &str) {
        *self.error.lock() = Some(why.to_owned());
        self.set_phase(Phase::Failed);
    }

    /// Asks the reseed to stop (the daemon is stopping): it fails at its next window
    /// and the copy stays FailedAndSuspended.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
    }

    fn check_cancel(&self) -> Result<(), CopyError> {
        if self.cancelled.load(Ordering::Acquire) {
            Err(CopyError::Dest(io::Error::new(
                io::ErrorKind::Interrupted,
                "cancelled: the daemon is stopping",
            )))
        } else {
            Ok(())
        }
    }

    /// Where the reseed is now.
    pub fn snapshot(&self) -> SeedStatus {
        let (phase, since) = *self.phase.lock();
        let total = self.total.load(Ordering::Relaxed);
        let done = match phase {
            Phase::Verifying => self.verified.load(Ordering::Relaxed),
            _ => self.copied.load(Ordering::Relaxed),
        };
        let secs = since.elapsed().as_secs_f64();
        let mib_s = if secs > 0.0 {
            done as f64 / secs / 1048576.0
        } else {
            0.0
        };
        let eta_s = (mib_s > 0.0 && matches!(phase, Phase::Copying | Phase::Verifying))
            .then(|| total.saturating_sub(done) as f64 / 1048576.0 / mib_s);
        SeedStatus {
            db: self.db.clone(),
            target: self.target.clone(),
            source: self.source.lock().clone(),
            engine: self.engine.lock().clone(),
            phase,
            bytes_total: total,
            bytes_done: done,
            mib_s,
            eta_s,
            elapsed_s: self.started.elapsed().as_secs_f64(),
            error: self.error.lock().clone(),
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

/// One file (inode) to copy: its nodes (hard links share it) and seeding state.
struct FileJob {
    seed: Arc<SeedFile>,
    nodes: Vec<Arc<Node>>,
}

impl FileJob {
    fn path(&self) -> Option<PathBuf> {
        self.nodes.iter().find_map(|n| n.path())
    }
}

struct Layout {
    files: Vec<FileJob>,
    dirs: Vec<PathBuf>,
    replaced: Option<PathBuf>,
}

/// The copy read from.
#[derive(Clone)]
struct Source {
    slot: usize,
    volume: Arc<Volume>,
}

/// Checks the naming convention and that the database and log folders are directories
/// on the volume's own filesystem: `(naming_ok, layout_split)`.
pub fn check_folders(volume: &Volume, db: &str) -> (bool, bool) {
    let root_dev = volume.stat(Path::new("")).map(|s| s.st_dev).ok();
    let mut naming_ok = layout::check_db_name(db).is_ok();
    let mut split = false;
    for f in layout::db_folders(db) {
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
fn choose_source(db: &Database, slot: usize, from: Option<&str>) -> Result<Source, String> {
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
            .map(|(slot, volume)| Source { slot, volume })
            .ok_or_else(|| format!("{from} holds no in-sync copy of {}", db.name));
    }
    let active = db.active_index();
    in_sync
        .iter()
        .find(|(i, _)| Some(*i) != active)
        .or_else(|| in_sync.first())
        .map(|(slot, volume)| Source {
            slot: *slot,
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
    progress.pacer.end();
    match &result {
        Ok(_) => progress.set_phase(Phase::Done),
        Err(e) => {
            *progress.error.lock() = Some(e.to_string());
            progress.set_phase(Phase::Failed);
        }
    }
    result
}

fn run(core: &Core, req: &SeedRequest, progress: &Progress) -> Result<SeedReport, SeedError> {
    let pool = core.pool();
    let db = &req.db;
    let label = format!("{}\\{}", db.name, req.target);
    let _one = db
        .try_seed_lock()
        .ok_or_else(|| SeedError::Refused(format!("a reseed of {} is already running", db.name)))?;
    let target = pool
        .reprobe_volume(&req.target)
        .map_err(|why| SeedError::Refused(format!("target volume {}: {why}", req.target)))?;
    let (mut engine, fallback) = select(pool.config.reseed.engine).map_err(SeedError::Refused)?;
    if let Some(why) = &fallback {
        tracing::warn!("reseed of {label} uses the portable engine: {why}");
    }
    *progress.engine.lock() = engine.name().to_owned();

    // Phase 1: lay out.
    let (mut source, layout) = {
        let _namespace = db.namespace_exclusive();
        let source =
            choose_source(db, req.slot, req.from.as_deref()).map_err(SeedError::Refused)?;
        let (naming_ok, split) = check_folders(&source.volume, &db.name);
        if !naming_ok || split {
            return Err(SeedError::Refused(format!(
                "the source copy on {} does not hold {} and {} as plain folders of the volume",
                source.volume.name(),
                layout::db_folder(&db.name),
                layout::log_folder(&db.name)
            )));
        }
        let old = db.copies()[req.slot].volume_name();
        pool.begin_seed(db, req.slot, &req.target, target.clone(), req.allow_in_sync)
            .map_err(SeedError::Refused)?;
        if old != req.target {
            pool.events().emit(
                NewEvent::new(
                    EventId::SpareAssigned,
                    format!(
                        "spare {} takes the place of {old} for {}: the placement is persisted, seeding follows",
                        req.target, db.name
                    ),
                )
                .database(&db.name)
                .volume(&req.target)
                .field("replaces", old.as_str()),
            );
        }
        *progress.source.lock() = source.volume.name().to_owned();
        match lay_out(core, db, req.slot, &source.volume, &target) {
            Ok(layout) => (source, layout),
            Err(e) => {
                drop(_namespace);
                return Err(give_up(core, req, &[], e));
            }
        }
    };
    let total: u64 = layout
        .files
        .iter()
        .filter_map(|f| f.nodes.first())
        .filter_map(|n| n.path())
        .filter_map(|p| source.volume.stat(&p).ok())
        .map(|st| st.st_size as u64)
        .sum();
    progress.total.store(total, Ordering::Relaxed);
    progress.set_phase(Phase::Copying);
    pool.events().emit(
        NewEvent::new(
            EventId::SeedingStarted,
            format!(
                "seeding {label} from {} started: {} files, {} MiB, engine {}",
                source.volume.name(),
                layout.files.len(),
                total >> 20,
                engine.name()
            ),
        )
        .database(&db.name)
        .volume(&req.target)
        .field("source", source.volume.name())
        .field("bytes", total)
        .field("files", layout.files.len() as u64)
        .field("engine", engine.name())
        .field("engine_fallback", fallback.clone().unwrap_or_default()),
    );

    // Phase 2: copy.
    let paced = progress
        .pacer
        .begin(Reseed, db, req.slot, &[&source.volume, &target]);
    engine.set_throttle(paced);
    let started = Instant::now();
    let mut copied = 0;
    for job in &layout.files {
        match copy_file(
            core,
            req,
            &mut source,
            &target,
            job,
            engine.as_mut(),
            progress,
        ) {
            Ok(n) => copied += n,
            Err(e) => return Err(give_up(core, req, &layout.files, e)),
        }
    }
    for dir in layout.dirs.iter().rev() {
        let synced = target
            .open_file(dir, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
            .and_then(|d| d.sync_all());
        if let Err(e) = synced {
            let e = dest_failed(db, req.slot, "reseed fsync", e);
            return Err(give_up(core, req, &layout.files, e));
        }
    }
    let copy_seconds = started.elapsed().as_secs_f64();
    let mib_s = copied as f64 / 1048576.0 / copy_seconds.max(1e-9);
    pool.events().emit(
        NewEvent::new(
            EventId::SeedingCompleted,
            format!(
                "seeding {label} completed: {} MiB in {copy_seconds:.1} s ({mib_s:.0} MiB/s, {})",
                copied >> 20,
                engine.name()
            ),
        )
        .database(&db.name)
        .volume(&req.target)
        .field("source", source.volume.name())
        .field("bytes", copied)
        .field("seconds", copy_seconds)
        .field("mib_s", mib_s)
        .field("engine", engine.name()),
    );

    // Phase 3: verify.
    engine.set_throttle(None);
    progress
        .pacer
        .begin(Verify, db, req.slot, &[&source.volume, &target]);
    progress.set_phase(Phase::Verifying);
    pool.events().emit(
        NewEvent::new(
            EventId::VerifyStarted,
            format!(
                "verification of {label} against {} started",
                source.volume.name()
            ),
        )
        .database(&db.name)
        .volume(&req.target)
        .field("source", source.volume.name()),
    );
    let verified = match verify(db, req.slot, &source, &target, &layout, progress) {
        Ok(v) => v,
        Err(e) => return Err(give_up(core, req, &layout.files, e)),
    };
    pool.events().emit(
        NewEvent::new(
            EventId::VerifyCompleted,
            format!(
                "verification of {label} completed: {} files, {} MiB identical to {} (CRC32 per 4 MiB)",
                verified.0,
                verified.1 >> 20,
                source.volume.name()
            ),
        )
        .database(&db.name)
        .volume(&req.target)
        .field("files", verified.0)
        .field("bytes", verified.1)
        .field("checksum", format!("{:08x}", verified.2)),
    );

    // The new copy is verified: what the target held before can go (SafeDeleteExistingFiles),
    // before the copy is declared in sync, so that `status` never shows it Healthy while
    // its reseed is still busy.
    if let Some(old) = layout.replaced.as_ref().filter(|_| req.keep_replaced) {
        match keep_in_quarantine(&target, &db.name, old) {
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
    // Phase 4: in sync.
    if !pool.finish_seed(db, req.slot) {
        let e = SeedError::Dest(format!("copy {label} failed while it was verified"));
        return Err(give_up(core, req, &layout.files, e));
    }
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
    Ok(SeedReport {
        bytes_copied: copied,
        files: layout.files.len() as u64,
        copy_seconds,
        mib_s,
        bytes_verified: verified.1,
        engine: engine.name().to_owned(),
        source: source.volume.name().to_owned(),
    })
}

/// Moves the folders a reseed replaced into a new quarantine with its manifest.
fn keep_in_quarantine(target: &Volume, db: &str, old: &Path) -> io::Result<PathBuf> {
    let dir = resync::quarantine_dir(target)?;
    let mut files = Vec::new();
    for e in target.read_dir(old)? {
        target.rename(
            &old.join(&e.name),
            &dir.join(&e.name),
            rustix::fs::RenameFlags::NOREPLACE,
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
            volume: target.name().to_owned(),
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
    let runs_on = req.db.active_volume().unwrap_or_else(|| "no copy".into());
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
fn dest_failed(db: &Database, slot: usize, op: &str, e: io::Error) -> SeedError {
    let msg = format!(
        "writing the new copy on {} failed: {e}",
        db.copies()[slot].volume_name()
    );
    db.on_error(slot, op, &e, true);
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

/// Phase 1 (namespace held exclusively): the target gets the source's tree, empty.
fn lay_out(
    core: &Core,
    db: &Database,
    slot: usize,
    src: &Volume,
    dst: &Volume,
) -> Result<Layout, SeedError> {
    let src_err = |p: &Path, e: io::Error| {
        SeedError::Source(format!(
            "reading {}/{}: {e}",
            src.root().display(),
            p.display()
        ))
    };
    let dst_err = |p: &Path, e: io::Error| {
        dest_failed(db, slot, &format!("reseed layout {}", p.display()), e)
    };
    // SafeDeleteExistingFiles: what the target holds of this database is moved aside,
    // deleted only once the new copy is verified.
    let mut replaced = None;
    for folder in layout::db_folders(&db.name) {
        let folder = PathBuf::from(folder);
        if dst.stat(&folder).is_ok() {
            let stamp = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis();
            let aside = replaced.get_or_insert_with(|| {
                Path::new(layout::META_DIR)
                    .join("replaced")
                    .join(format!("{}-{stamp}", db.name))
            });
            dst.mkdir_all(aside).map_err(|e| dst_err(aside, e))?;
            dst.rename(
                &folder,
                &aside.join(&folder),
                rustix::fs::RenameFlags::NOREPLACE,
            )
            .map_err(|e| dst_err(&folder, e))?;
        }
    }
    let mut files: Vec<FileJob> = Vec::new();
    let mut by_inode: HashMap<(u64, u64), (usize, PathBuf)> = HashMap::new();
    let mut dirs = Vec::new();
    let mut todo: Vec<PathBuf> = layout::db_folders(&db.name)
        .into_iter()
        .map(PathBuf::from)
        .collect();
    let mut times = Vec::new();
    while let Some(path) = todo.pop() {
        let st = src.stat(&path).map_err(|e| src_err(&path, e))?;
        let kind = FileType::from_raw_mode(st.st_mode);
        let mode = Mode::from_raw_mode(st.st_mode & 0o7777);
        match kind {
            FileType::Directory => {
                dst.mkdir(&path, mode).map_err(|e| dst_err(&path, e))?;
                for e in src.read_dir(&path).map_err(|e| src_err(&path, e))? {
                    todo.push(child_path(&path, &e.name));
                }
                dirs.push(path.clone());
            }
            FileType::RegularFile => {
                let key = (st.st_dev, st.st_ino);
                if let Some((job, first)) = by_inode.get(&key).filter(|_| st.st_nlink > 1) {
                    dst.link(first, &path).map_err(|e| dst_err(&path, e))?;
                    let job = &mut files[*job];
                    // A link made through the mount shares its node; one found on disk
                    // may have its own.
                    if let Some(n) = core.seed_node(db.index, path.clone(), &job.seed) {
                        if !job.nodes.iter().any(|m| Arc::ptr_eq(m, &n)) {
                            job.nodes.push(n);
                        }
                    }
                    continue;
                }
                let f = dst
                    .open_file(&path, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL, mode)
                    .map_err(|e| dst_err(&path, e))?;
                f.set_len(st.st_size as u64)
                    .map_err(|e| dst_err(&path, e))?;
                let seed = Arc::new(SeedFile::new());
                let nodes = core
                    .seed_node(db.index, path.clone(), &seed)
                    .into_iter()
                    .collect();
                by_inode.insert(key, (files.len(), path.clone()));
                files.push(FileJob { seed, nodes });
            }
            FileType::Symlink => {
                let target = src.readlink(&path).map_err(|e| src_err(&path, e))?;
                use std::os::unix::ffi::OsStrExt;
                dst.symlink(Path::new(std::ffi::OsStr::from_bytes(&target)), &path)
                    .map_err(|e| dst_err(&path, e))?;
            }
            other => {
                dst.mknod(&path, other, mode, st.st_rdev)
                    .map_err(|e| dst_err(&path, e))?;
            }
        }
        dst.chown(&path, Some(st.st_uid), Some(st.st_gid))
            .map_err(|e| dst_err(&path, e))?;
        if kind != FileType::Symlink {
            copy_xattrs(src, dst, &path)?;
        }
        times.push((path, st));
    }
    // Times last: creating children changed the directories'.
    for (path, st) in times.iter().rev() {
        let t = crate::volume::stat_times(st);
        dst.set_times(path, &t).map_err(|e| dst_err(path, e))?;
    }
    core.refresh_handles(db, slot)
        .map_err(|e| dst_err(Path::new("(open handles)"), e))?;
    Ok(Layout {
        files,
        dirs,
        replaced,
    })
}

/// One file's open descriptors on both sides.
struct Pair {
    src: VolFile,
    dst: VolFile,
    /// `O_DIRECT` descriptors, when both filesystems allow it.
    direct: Option<(VolFile, VolFile)>,
}

fn open_pair(src: &Volume, dst: &Volume, path: &Path) -> Result<Pair, (bool, io::Error)> {
    let s = src
        .open_file(path, OFlags::RDONLY, Mode::empty())
        .map_err(|e| (true, e))?;
    let d = dst
        .open_file(path, OFlags::WRONLY, Mode::empty())
        .map_err(|e| (false, e))?;
    let direct = match (
        src.open_file(path, OFlags::RDONLY | OFlags::DIRECT, Mode::empty()),
        dst.open_file(path, OFlags::WRONLY | OFlags::DIRECT, Mode::empty()),
    ) {
        (Ok(a), Ok(b)) => Some((a, b)),
        _ => None,
    };
    if direct.is_none() {
        src.advise(&s, 0, 0, crate::volume::Advice::Sequential);
    }
    Ok(Pair {
        src: s,
        dst: d,
        direct,
    })
}

enum Step {
    Copied(u64),
    Unlinked,
}

/// Phase 2 for one file: windows front to back until the last one closes.
fn copy_file(
    core: &Core,
    req: &SeedRequest,
    source: &mut Source,
    target: &Volume,
    job: &FileJob,
    engine: &mut dyn CopyEngine,
    progress: &Progress,
) -> Result<u64, SeedError> {
    let db = &req.db;
    let mut total = 0;
    loop {
        match copy_file_from(db, req.slot, source, target, job, engine, progress) {
            Ok(Step::Copied(n)) => {
                total += n;
                return Ok(total);
            }
            Ok(Step::Unlinked) => {
                job.seed.complete();
                return Ok(total);
            }
            Err(CopyError::Dest(e)) if e.kind() == io::ErrorKind::Interrupted => {
                return Err(SeedError::Dest(e.to_string()));
            }
            Err(CopyError::Dest(e)) => return Err(dest_failed(db, req.slot, "reseed write", e)),
            Err(CopyError::Source(e)) => {
                switch_source(core, req, source, e)?;
                *progress.source.lock() = source.volume.name().to_owned();
            }
        }
    }
}

/// The source failed with `e`: go on from another in-sync copy, failing the source's
/// volume when `e` is a media error; or give up when the source is the last copy in sync
/// (the database keeps running on it).
fn switch_source(
    core: &Core,
    req: &SeedRequest,
    source: &mut Source,
    e: io::Error,
) -> Result<(), SeedError> {
    let db = &req.db;
    let old = source.volume.name().to_owned();
    let other = db
        .copies()
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != req.slot && *i != source.slot)
        .find_map(|(i, c)| c.in_sync_volume().map(|v| (i, v)));
    let Some((slot, volume)) = other else {
        return Err(SeedError::Source(format!(
            "reading the source copy on {old} failed ({e}) and no other copy of {} is in sync; {} keeps running on {old}",
            db.name, db.name
        )));
    };
    if is_media_error(&e) && db.copies()[source.slot].state() == CopyState::InSync {
        db.on_error(source.slot, "reseed read", &e, false);
    }
    *source = Source { slot, volume };
    core.pool().events().emit(
        NewEvent::new(
            EventId::ReseedSourceChanged,
            format!(
                "reseed of {}\\{}: reading {old} failed ({e}); going on from {}",
                db.name,
                req.target,
                source.volume.name()
            ),
        )
        .database(&db.name)
        .volume(&req.target)
        .field("from", old)
        .field("to", source.volume.name()),
    );
    Ok(())
}

fn source_ok(db: &Database, source: &Source) -> Result<(), CopyError> {
    if db.copies()[source.slot].state() != CopyState::InSync {
        return Err(CopyError::Source(io::Error::from_raw_os_error(libc::EIO)));
    }
    source.volume.check_read().map_err(CopyError::Source)
}

fn copy_file_from(
    db: &Database,
    slot: usize,
    source: &Source,
    target: &Volume,
    job: &FileJob,
    engine: &mut dyn CopyEngine,
    progress: &Progress,
) -> Result<Step, CopyError> {
    let pair = {
        let _namespace = db.namespace_shared();
        let Some(path) = job.path() else {
            return Ok(Step::Unlinked);
        };
        source_ok(db, source)?;
        match open_pair(&source.volume, target, &path) {
            Ok(p) => p,
            Err((_, e)) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Step::Unlinked),
            Err((true, e)) => return Err(CopyError::Source(e)),
            Err((false, e)) => return Err(CopyError::Dest(e)),
        }
    };
    let mut copied = 0;
    loop {
        progress.check_cancel()?;
        if db.copies()[slot].state() != CopyState::Seeding {
            return Err(CopyError::Dest(io::Error::other(
                "the new copy was failed during the reseed (see its events)",
            )));
        }
        source_ok(db, source)?;
        let _resize: Vec<_> = job.nodes.iter().map(|n| n.io.resize.read()).collect();
        let size = size_of(&pair.src).map_err(CopyError::Source)?;
        let start = job.seed.copied();
        let window = progress.pacer.window(WINDOW);
        let end = if size > start.saturating_add(window) {
            start + window
        } else {
            u64::MAX
        };
        job.seed.open_window(end);
        // Writers already inside the window finish first; later ones record it dirty.
        for n in &job.nodes {
            drop(n.io.lock_range(start, end - start));
        }
        let stop = if end == u64::MAX {
            size_of(&pair.src).map_err(CopyError::Source)?
        } else {
            end
        };
        if stop > start {
            copied += copy_range(&pair, start, stop, engine)?;
        }
        if end == u64::MAX && size_of(&pair.dst).map_err(CopyError::Dest)? != stop {
            pair.dst.set_len(stop).map_err(CopyError::Dest)?;
        }
        for (off, len) in job.seed.close_window() {
            progress.pacer.take(len);
            let _stripes: Vec<_> = job
                .nodes
                .iter()
                .map(|n| n.io.lock_range(off, len))
                .collect();
            copied += copy_buffered(&pair.src, &pair.dst, off, len)?;
        }
        progress
            .copied
            .fetch_add(stop.saturating_sub(start), Ordering::Relaxed);
        #[cfg(test)]
        if let Some(hook) = progress.after_window.lock().as_mut() {
            hook();
        }
        if end == u64::MAX {
            break;
        }
    }
    job.seed.complete();
    pair.dst.sync_all().map_err(CopyError::Dest)?;
    Ok(Step::Copied(copied))
}

fn size_of(f: &File) -> io::Result<u64> {
    Ok(f.metadata()?.len())
}

/// Copies the data of `[start, stop)`: holes punched on the destination, data extents
/// preallocated and copied (aligned parts with `O_DIRECT` when possible).
fn copy_range(
    pair: &Pair,
    start: u64,
    stop: u64,
    engine: &mut dyn CopyEngine,
) -> Result<u64, CopyError> {
    let extents = data_extents(&pair.src, start, stop).map_err(CopyError::Source)?;
    let mut pos = start;
    for e in extents.iter().chain(std::iter::once(&Extent {
        offset: stop,
        len: 0,
    })) {
        if e.offset > pos {
            // A hole in the source: make sure the destination has one too (it may hold
            // data there after a collapse or insert range moved the file's contents).
            crate::volume::punch_hole(&pair.dst, pos, e.offset - pos).map_err(CopyError::Dest)?;
        }
        if e.len > 0 {
            let _ = rustix::fs::fallocate(&pair.dst, FallocateFlags::KEEP_SIZE, e.offset, e.len);
        }
        pos = e.offset + e.len;
    }
    match &pair.direct {
        Some((src, dst)) => {
            let (aligned, rest) = split_aligned(&extents);
            let a = engine.copy(src, dst, &aligned, true)?;
            let b = engine.copy(&pair.src, &pair.dst, &rest, false)?;
            Ok(a + b)
        }
        None => engine.copy(&pair.src, &pair.dst, &extents, false),
    }
}

fn copy_buffered(src: &File, dst: &File, offset: u64, len: u64) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; len.min(1 << 20) as usize];
    let mut done = 0;
    while done < len {
        let n = ((len - done) as usize).min(buf.len());
        let got = crate::volume::read_full(src, offset + done, &mut buf[..n])
            .map_err(CopyError::Source)?;
        if got == 0 {
            break;
        }
        dst.write_all_at(&buf[..got], offset + done)
            .map_err(CopyError::Dest)?;
        done += got as u64;
    }
    Ok(done)
}

/// Phase 3: every file of the new copy compared with the source, chunk by chunk under
/// the chunk's stripe locks. Returns (files, bytes, combined checksum).
fn verify(
    db: &Database,
    slot: usize,
    source: &Source,
    target: &Volume,
    layout: &Layout,
    progress: &Progress,
) -> Result<(u64, u64, u32), SeedError> {
    let mut files = 0;
    let mut bytes = 0;
    let mut all = crc32fast::Hasher::new();
    let source_err = |path: &Path, e: io::Error| {
        SeedError::Source(format!(
            "verifying {} against {}: reading the source failed: {e}",
            path.display(),
            source.volume.name()
        ))
    };
    let mut a = vec![0u8; VERIFY_CHUNK];
    let mut b = vec![0u8; VERIFY_CHUNK];
    for job in &layout.files {
        let (path, src, dst) = {
            let _namespace = db.namespace_shared();
            let Some(path) = job.path() else { continue };
            let open = |v: &Volume| v.open_file(&path, OFlags::RDONLY, Mode::empty());
            let src = open(&source.volume).map_err(|e| source_err(&path, e))?;
            let dst = open(target).map_err(|e| dest_failed(db, slot, "reseed verify", e))?;
            (path, src, dst)
        };
        let mut offset = 0u64;
        loop {
            progress
                .check_cancel()
                .map_err(|e| SeedError::Dest(e.to_string()))?;
            if db.copies()[slot].state() != CopyState::Seeding {
                return Err(SeedError::Dest(
                    "the new copy was failed during verification (see its events)".into(),
                ));
            }
            // Tokens first: no lock is held while waiting for them.
            let left = size_of(&src).map_err(|e| source_err(&path, e))?;
            progress
                .pacer
                .take(left.saturating_sub(offset).min(VERIFY_CHUNK as u64));
            let _resize: Vec<_> = job.nodes.iter().map(|n| n.io.resize.read()).collect();
            let _stripes: Vec<_> = job
                .nodes
                .iter()
                .map(|n| n.io.lock_range(offset, VERIFY_CHUNK as u64))
                .collect();
            let (ls, ld) = (
                size_of(&src).map_err(|e| source_err(&path, e))?,
                size_of(&dst).map_err(|e| dest_failed(db, slot, "reseed verify", e))?,
            );
            if ls != ld {
                return Err(SeedError::Verify(format!(
                    "{} is {ls} bytes on {} but {ld} on {}",
                    path.display(),
                    source.volume.name(),
                    target.name()
                )));
            }
            if offset >= ls {
                break;
            }
            // Both sides at once: on separate disks the pass takes the slower one's time.
            let (n, m) = std::thread::scope(|scope| {
                let target_read = scope.spawn(|| crate::volume::read_full(&dst, offset, &mut b));
                let n = crate::volume::read_full(&src, offset, &mut a);
                let m = target_read
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("verification reader panicked")));
                (n, m)
            });
            let n = n.map_err(|e| source_err(&path, e))?;
            let m = m.map_err(|e| dest_failed(db, slot, "reseed verify", e))?;
            let (ca, cb) = (crc32fast::hash(&a[..n]), crc32fast::hash(&b[..m]));
            if n != m || ca != cb {
                return Err(SeedError::Verify(format!(
                    "{} differs at bytes {offset}..{}: CRC32 {ca:08x} on {} but {cb:08x} on {}",
                    path.display(),
                    offset + n as u64,
                    source.volume.name(),
                    target.name()
                )));
            }
            all.update(&ca.to_le_bytes());
            offset += n as u64;
            bytes += n as u64;
            progress.verified.fetch_add(n as u64, Ordering::Relaxed);
            if n < VERIFY_CHUNK {
                break;
            }
        }
        files += 1;
    }
    compare_trees(db, source, target)?;
    Ok((files, bytes, all.finalize()))
}

/// The new copy has the source's names, kinds, modes, owners and link targets.
fn compare_trees(db: &Database, source: &Source, target: &Volume) -> Result<(), SeedError> {
    let _namespace = db.namespace_exclusive();
    let mut todo: Vec<PathBuf> = layout::db_folders(&db.name)
        .into_iter()
        .map(PathBuf::from)
        .collect();
    while let Some(path) = todo.pop() {
        let a = source
            .volume
            .stat(&path)
            .map_err(|e| SeedError::Source(format!("verify {}: {e}", path.display())))?;
        let b = target.stat(&path).map_err(|e| {
            SeedError::Verify(format!(
                "{} is missing on {}: {e}",
                path.display(),
                target.name()
            ))
        })?;
        let what = |st: &rustix::fs::Stat| (st.st_mode, st.st_uid, st.st_gid);
        if what(&a) != what(&b) {
            return Err(SeedError::Verify(format!(
                "{}: mode/owner {:o} {}:{} on {} but {:o} {}:{} on {}",
                path.display(),
                a.st_mode,
                a.st_uid,
                a.st_gid,
                source.volume.name(),
                b.st_mode,
                b.st_uid,
                b.st_gid,
                target.name()
            )));
        }
        match FileType::from_raw_mode(a.st_mode) {
            FileType::Directory => {
                let names = |v: &Volume| -> io::Result<Vec<std::ffi::OsString>> {
                    let mut n: Vec<_> = v.read_dir(&path)?.into_iter().map(|e| e.name).collect();
                    n.sort();
                    Ok(n)
                };
                let na = names(&source.volume)
                    .map_err(|e| SeedError::Source(format!("verify {}: {e}", path.display())))?;
                let nb = names(target)
                    .map_err(|e| SeedError::Verify(format!("{}: {e}", path.display())))?;
                if na != nb {
                    return Err(SeedError::Verify(format!(
                        "directory {} lists {na:?} on {} but {nb:?} on {}",
                        path.display(),
                        source.volume.name(),
                        target.name()
                    )));
                }
                todo.extend(na.iter().map(|n| child_path(&path, n)));
            }
            FileType::Symlink => {
                let la = source.volume.readlink(&path).ok();
                let lb = target.readlink(&path).ok();
                if la != lb {
                    return Err(SeedError::Verify(format!(
                        "symlink {} points elsewhere on {}",
                        path.display(),
                        target.name()
                    )));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
