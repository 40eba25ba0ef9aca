//! Incremental resync: a copy that missed writes (its disk went away and came back, or
//! an operator suspended it) gets only what its dirty map records, while the database
//! keeps running.
//!
//! 1. **Lineage**: the copy's own generation against the base of its dirty map. Anything
//!    but the base (or a later generation of its own that descends from the base) means
//!    the common state is unknown: [`ResyncError::Incremental`] (event 2058).
//! 2. **Divergence**: files on the copy changed after it stopped taking writes were
//!    written behind reseedfs's back. Their blocks that differ from the in-sync copy are
//!    copied into `.reseedfs/quarantine/<time>/` on the copy's volume (files only it has
//!    are moved there), listed in the quarantine's `manifest.json`, and resynced.
//! 3. **Lay out** (namespace held exclusively): the copy becomes Seeding (it takes every
//!    mutation from here on), the recorded removes, renames and links are replayed, the
//!    trees are reconciled (metadata only), open handles get their files.
//! 4. **Copy**: each recorded extent under the file's stripe locks (writes to it wait),
//!    holes kept; then the copied extents are compared, and the trees.
//! 5. **In sync** (3031 with `bytes_copied` and `extents`, then 1110).

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::names::CopySlot;
use crate::names::DbName;
use crate::volume::{Advice, FileType, Mode, OFlags, RenameFlags};
use serde::{Deserialize, Serialize};

use super::engine::CopyError;
use super::verify::compare_trees;
use super::watch::{Side, Watched};
use super::{Phase, Progress, SeedError, Source, choose_source, dest_failed};
use crate::copyset::{CopyState, Database, SeedSums};
use crate::events::{EventId, NewEvent};
use crate::fs::{Core, Node};
use crate::layout;
use crate::tap::reconcile::{self, SideError};
use crate::tap::{self, FileDirty, IncrementalError, Lineage};
use crate::verify::chunk::{ChunkLocks, ChunkReader};
use crate::volume::read_full;
use crate::volume::{VolFile, Volume, child_path};

/// Bytes copied under one hold of a file's stripe locks.
const CHUNK: u64 = 1 << 20;

/// Writes up to this long after a copy stopped taking them may still be landing.
const SLACK: Duration = Duration::from_secs(2);

/// What a resync did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ResyncReport {
    /// Bytes of data copied.
    pub bytes_copied: u64,
    /// Extents copied.
    pub extents: u64,
    /// Files with data copied.
    pub files: u64,
    /// Tree entries fixed by the reconciliation.
    pub tree_fixed: usize,
    /// Seconds from start to in sync.
    pub seconds: f64,
    /// Seconds before copying (lineage, divergence scan, layout).
    pub prepare_s: f64,
    /// Seconds copying (fsyncs included).
    pub copy_s: f64,
    /// Seconds comparing what was copied, and the trees.
    pub verify_s: f64,
    /// Where the copy's own divergent changes were kept, if it had any.
    pub quarantine: Option<PathBuf>,
    /// The copy's source.
    pub source: String,
}

/// Why a resync did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ResyncError {
    /// No incremental resync is possible (event 2058): a full reseed is needed.
    #[error("incremental resync impossible ({code}): {why}", code = .0.code(), why = .1)]
    Incremental(IncrementalError, String),
    /// It failed (refused, source or copy failed, verification).
    #[error(transparent)]
    Failed(#[from] SeedError),
}

/// One entry of a quarantine's manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuarantinedFile {
    /// Volume-relative path the data had on the copy.
    pub path: String,
    /// `extents`: the copy's version of the differing byte ranges, at their offsets in
    /// the quarantined file; `file`: the whole file (the in-sync copies do not have it).
    pub kind: String,
    /// Byte ranges `(offset, len)` for `extents`.
    #[serde(default)]
    pub extents: Vec<(u64, u64)>,
}

/// `.reseedfs/quarantine/<time>/manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// The database.
    pub db: DbName,
    /// The volume (the losing copy's).
    pub volume: String,
    /// When it was made.
    #[serde(with = "humantime_serde")]
    pub at: SystemTime,
    /// Why.
    pub reason: String,
    /// The last generation both sides had, when known.
    pub common_generation: Option<u64>,
    /// What was kept.
    pub files: Vec<QuarantinedFile>,
}

/// A new quarantine folder on `v` (`.reseedfs/quarantine/<time>`).
pub fn quarantine_dir(v: &Volume) -> io::Result<PathBuf> {
    let stamp = humantime::format_rfc3339_millis(SystemTime::now())
        .to_string()
        .replace(':', "-");
    let dir = Path::new(layout::META_DIR).join("quarantine").join(stamp);
    v.mkdir_all(&dir)?;
    Ok(dir)
}

/// Writes a quarantine's manifest.
pub fn write_manifest(v: &Volume, dir: &Path, m: &Manifest) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(m).map_err(io::Error::other)?;
    v.write_atomic(&dir.join("manifest.json"), &bytes)
}

/// Every quarantine of `db` on `v`: (folder, manifest).
pub fn list_quarantine(v: &Volume, db: &DbName) -> Vec<(PathBuf, Manifest)> {
    let root = Path::new(layout::META_DIR).join("quarantine");
    let mut out = Vec::new();
    for e in v.read_dir(&root).unwrap_or_default() {
        let dir = child_path(&root, &e.name);
        let Ok(bytes) = v.read_file(&dir.join("manifest.json")) else {
            continue;
        };
        if let Ok(m) = serde_json::from_slice::<Manifest>(&bytes) {
            if m.db == db {
                out.push((dir, m));
            }
        }
    }
    out.sort_by_key(|(_, m)| m.at);
    out
}

/// Entries of `db`'s folders on `v` changed (ctime) after `cutoff`.
fn changed_since(
    v: &Volume,
    db: &DbName,
    cutoff: SystemTime,
) -> io::Result<Vec<(PathBuf, FileType)>> {
    let cutoff = cutoff
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let mut out = Vec::new();
    let mut todo: Vec<PathBuf> = layout::db_folders(db)
        .into_iter()
        .map(PathBuf::from)
        .collect();
    while let Some(p) = todo.pop() {
        let st = match v.stat(&p) {
            Ok(st) => st,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(e),
        };
        let kind = FileType::from_raw_mode(st.st_mode);
        let ctime = Duration::new(st.st_ctime.max(0) as u64, st.st_ctime_nsec as u32);
        if kind == FileType::Directory {
            todo.extend(v.read_dir(&p)?.into_iter().map(|e| child_path(&p, &e.name)));
        } else if ctime > cutoff {
            out.push((p, kind));
        }
    }
    Ok(out)
}

/// The 4 KiB blocks of `[0, max(size))` where two files differ.
fn differing_blocks(a: Option<&File>, b: &File) -> io::Result<FileDirty> {
    let len_a = a.map_or(Ok(0), |f| f.metadata().map(|m| m.len()))?;
    let len_b = b.metadata()?.len();
    let mut out = FileDirty::default();
    let mut x = vec![0u8; 1 << 20];
    let mut y = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < len_a.max(len_b) {
        let n = match a {
            Some(f) => read_full(f, pos, &mut x)?,
            None => 0,
        };
        x[n..].fill(0);
        let m = read_full(b, pos, &mut y)?;
        y[m..].fill(0);
        let span = n.max(m);
        if span == 0 {
            break;
        }
        for start in (0..span).step_by(4096) {
            let end = (start + 4096).min(span);
            if x[start..end] != y[start..end] || (n < end) != (m < end) {
                out.mark(pos + start as u64, (end - start) as u64);
            }
        }
        pos += span as u64;
    }
    Ok(out)
}

/// What step 2 kept: the quarantine folder, the blocks to resync, the entries kept.
type Quarantined = (PathBuf, BTreeMap<PathBuf, FileDirty>, Vec<QuarantinedFile>);

/// Step 2: keeps what the copy changed on its own, returns the blocks to resync.
fn quarantine_divergence(
    db: &Database,
    source: &Volume,
    target: &Volume,
    changed: &[(PathBuf, FileType)],
    common: Option<u64>,
) -> Result<Quarantined, SeedError> {
    let dst = |e: io::Error| SeedError::Dest(format!("quarantine on {}: {e}", target.name()));
    let src = |e: io::Error| SeedError::Source(format!("reading {}: {e}", source.name()));
    let dir = quarantine_dir(target).map_err(dst)?;
    let mut extra = BTreeMap::new();
    let mut kept = Vec::new();
    for (path, kind) in changed {
        let theirs = match source.stat(path) {
            Ok(st) => Some(FileType::from_raw_mode(st.st_mode)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => None,
            Err(e) => return Err(src(e)),
        };
        let keep = dir.join(path);
        if let Some(parent) = keep.parent() {
            target.mkdir_all(parent).map_err(dst)?;
        }
        if *kind != FileType::RegularFile || theirs != Some(FileType::RegularFile) {
            // Only the copy has it (or as something else): the whole entry is kept.
            target
                .rename(path, &keep, RenameFlags::NOREPLACE)
                .map_err(dst)?;
            kept.push(QuarantinedFile {
                path: path.to_string_lossy().into_owned(),
                kind: "file".into(),
                extents: Vec::new(),
            });
            continue;
        }
        let a = source
            .open_file(path, OFlags::RDONLY, Mode::empty())
            .map_err(src)?;
        let b = target
            .open_file(path, OFlags::RDONLY, Mode::empty())
            .map_err(dst)?;
        let diff = differing_blocks(Some(&a), &b).map_err(dst)?;
        let extents = diff.extents();
        if extents.is_empty() {
            continue;
        }
        let q = target
            .open_file(
                &keep,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
                Mode::from_raw_mode(0o600),
            )
            .map_err(dst)?;
        let len = b.metadata().map_err(dst)?.len();
        q.set_len(len).map_err(dst)?;
        for &(off, n) in &extents {
            reconcile::copy_extent(&b, &q, off, n).map_err(|e| match e {
                SideError::Source(e) | SideError::Dest(e) => dst(e),
            })?;
        }
        q.sync_all().map_err(dst)?;
        kept.push(QuarantinedFile {
            path: path.to_string_lossy().into_owned(),
            kind: "extents".into(),
            extents,
        });
        extra.insert(path.clone(), diff);
    }
    let manifest = Manifest {
        db: db.name.clone(),
        volume: target.name().to_string(),
        at: SystemTime::now(),
        reason: "written while it was out of the in-sync copies".into(),
        common_generation: common,
        files: kept.clone(),
    };
    write_manifest(target, &dir, &manifest).map_err(dst)?;
    Ok((dir, extra, kept))
}

/// The first log where `b`'s log stream leaves `a`'s, for events: `E0000000003.log
/// (checksum)`, `none`, or why it could not be told. A log `b` merely lacks at the end
/// (it missed it) is not a divergence.
pub fn first_diverged_log(db: &DbName, a: &Volume, b: &Volume) -> String {
    use crate::tap::logstream::{self, Divergence};
    match logstream::first_diverged_log(db, a, b) {
        Ok(c) => match c.first_diverged {
            Some(d) if d.reason == Divergence::MissingOnB => {
                format!("none ({} logs agree)", c.compared)
            }
            Some(d) => format!("{} ({:?})", d.name, d.reason),
            None => format!("none ({} logs agree)", c.compared),
        },
        Err(e) => format!("unknown: {e}"),
    }
}

/// One file to bring up to date: its node (the path follows renames) and its ranges.
struct Job {
    path: PathBuf,
    node: Option<Arc<Node>>,
    ranges: Vec<(u64, u64)>,
}

impl Job {
    fn path(&self) -> Option<PathBuf> {
        match &self.node {
            Some(n) => n.path(),
            None => Some(self.path.clone()),
        }
    }
}

fn ranges(f: &FileDirty, size: u64) -> Vec<(u64, u64)> {
    if f.whole {
        return vec![(0, u64::MAX)];
    }
    let mut r = f.extents();
    if let Some(t) = f.truncated_to {
        if t < size {
            r.push((t, u64::MAX - t));
        }
    }
    r
}

/// Resyncs copy `slot` of `db` on its own volume from what its dirty map records.
pub fn resync(
    core: &Core,
    db: &Arc<Database>,
    slot: CopySlot,
    progress: &Progress,
) -> Result<ResyncReport, ResyncError> {
    let r = run(core, db, slot, progress);
    match &r {
        Ok(_) => progress.job.set_phase(Phase::Done),
        // The caller decides what follows (a full reseed reports on the same progress).
        Err(ResyncError::Incremental(..)) => {}
        Err(e) => progress.job.fail(&e.to_string()),
    }
    r
}

fn run(
    core: &Core,
    db: &Arc<Database>,
    slot: CopySlot,
    progress: &Progress,
) -> Result<ResyncReport, ResyncError> {
    let started = Instant::now();
    let pool = core.pool();
    let name = db.copies()[slot].volume_name();
    let label = format!("{}\\{name}", db.name);
    progress.set_engine("resync");
    let _one = db
        .try_seed_lock()
        .ok_or_else(|| SeedError::Refused(format!("a reseed of {} is already running", db.name)))?;
    if db.copies()[slot].state() != CopyState::FailedAndSuspended {
        return Err(SeedError::Refused(format!(
            "copy {label} is {}: only a FailedAndSuspended copy is resynced",
            db.status_word(slot)
        ))
        .into());
    }
    let target = pool
        .reprobe_volume(&name)
        .map_err(|why| SeedError::Refused(format!("volume {name}: {why}")))?;
    let Some(map) = db.tap().snapshot(slot) else {
        return Err(ResyncError::Incremental(
            IncrementalError::DirtyMapLost,
            format!("no dirty map is kept for {label}"),
        ));
    };
    let own = tap::read_copy_generation(&target, &db.name).ok().flatten();
    let lineage = tap::classify(own.as_ref(), &pool.generation(&db.name), Some(map.base));
    let common = match lineage {
        Lineage::Behind => None,
        Lineage::Diverged { common } => Some(common),
        Lineage::Unknown(code) => {
            let has = own.map_or("none".to_owned(), |g| format!("{:016x}", g.current));
            return Err(ResyncError::Incremental(
                code,
                format!(
                    "copy {label} has generation {has}; its dirty map starts from {:016x}",
                    map.base
                ),
            ));
        }
    };
    let source = choose_source(db, slot, None).map_err(SeedError::Refused)?;

    // Step 2: divergence.
    let changed = changed_since(&target, &db.name, map.since + SLACK)
        .map_err(|e| SeedError::Dest(format!("scanning {label}: {e}")))?;
    let mut extra = BTreeMap::new();
    let mut quarantine = None;
    if !changed.is_empty() || common.is_some() {
        // Before the copy's own files move to quarantine: where its log stream leaves
        // the in-sync copies' (Exchange's first diverged log).
        let first_log = first_diverged_log(&db.name, &source.volume, &target);
        let (dir, blocks, kept) =
            quarantine_divergence(db, &source.volume, &target, &changed, common)?;
        pool.events().emit(
            NewEvent::new(
                EventId::DivergenceFound,
                format!(
                    "copy {label} was changed behind reseedfs's back: {} entries differ; the copy's versions are kept in {}/{}; the in-sync copies' versions win",
                    kept.len(),
                    target.root().display(),
                    dir.display()
                ),
            )
            .database(&db.name)
            .volume(&name)
            .field("quarantine", dir.to_string_lossy().as_ref())
            .field("entries", kept.len() as u64)
            .field("first_diverged_log", first_log.as_str()),
        );
        extra = blocks;
        quarantine = Some(dir);
    }

    // Step 3: lay out. The copy's own changes are settled: from here on it is written by
    // this resync, which a later scan (after a crash) must not take for divergence.
    db.tap().restart_since(slot, SystemTime::now());
    let LaidOut {
        jobs,
        tree_fixed,
        orphans,
    } = {
        let _namespace = db.namespace_exclusive();
        // What the copy missed changes its data behind its sums, and files it gets anew
        // may reuse inode numbers: its sums start afresh, and are the source's once the
        // copy is equal to it (`copy_sums`).
        db.sums().retire_copy(slot);
        crate::checksum::reset(&target, &db.name)
            .map_err(|e| SeedError::Dest(format!("checksums of {label}: {e}")))?;
        pool.begin_resync(db, slot, target.clone())
            .map_err(SeedError::Refused)?;
        let laid = lay_out(core, db, slot, &source, &target, &extra);
        match laid {
            Ok(j) => j,
            Err(e) => {
                drop(_namespace);
                pool.abort_seed(db, slot);
                return Err(e.into());
            }
        }
    };
    let total: u64 = jobs
        .iter()
        .map(|j| j.ranges.iter().map(|r| r.1.min(1 << 40)).sum::<u64>())
        .sum();
    progress.job.set_total(total);
    progress.job.set_phase(Phase::Copying);
    pool.events().emit(
        NewEvent::new(
            EventId::ResyncStarted,
            format!(
                "incremental resync of {label} from {} started: {} files, {} mutations missed",
                source.volume.name(),
                jobs.len(),
                map.mutations
            ),
        )
        .database(&db.name)
        .volume(&name)
        .field("source", source.volume.name())
        .field("files", jobs.len() as u64)
        .field("mutations", map.mutations),
    );

    // Step 4: copy, then compare what was copied.
    let mut report = ResyncReport {
        tree_fixed,
        quarantine,
        source: source.volume.name().to_string(),
        ..ResyncReport::default()
    };
    report.prepare_s = started.elapsed().as_secs_f64();
    progress.job.pacer.begin(
        crate::throttle::StreamKind::Resync,
        db,
        Some(slot.index()),
        &[&source.volume, &target],
    );
    let copied = copy_jobs(db, slot, &source, &target, &jobs, progress, &mut report)
        .and_then(|()| {
            // Open files with no name left: in no tree and no dirty map, copied whole.
            report.bytes_copied += super::orphans::copy_orphans(db, slot, &orphans, progress)?;
            Ok(())
        })
        .and_then(|()| {
            report.copy_s = started.elapsed().as_secs_f64() - report.prepare_s;
            progress.job.set_phase(Phase::Verifying);
            compare_jobs(db, slot, &source, &target, &jobs)
        })
        .and_then(|()| copy_sums(core, db, slot, &source, &target))
        .and_then(|()| compare_trees(db, &source, &target));
    report.verify_s = started.elapsed().as_secs_f64() - report.prepare_s - report.copy_s;
    progress.job.pacer.end();
    if let Err(e) = copied {
        pool.abort_seed(db, slot);
        return Err(e.into());
    }

    // Step 5: in sync.
    if !pool.finish_seed(db, slot) {
        return Err(SeedError::Dest(format!("copy {label} failed during its resync")).into());
    }
    // Over once the copy is in sync (see `reseed::finish`).
    progress.job.set_phase(Phase::Done);
    report.seconds = started.elapsed().as_secs_f64();
    pool.events().emit(
        NewEvent::new(
            EventId::ResyncCompleted,
            format!(
                "incremental resync of {label} completed: {} KiB in {} extents of {} files, {:.2} s",
                report.bytes_copied >> 10,
                report.extents,
                report.files,
                report.seconds
            ),
        )
        .database(&db.name)
        .volume(&name)
        .field("bytes_copied", report.bytes_copied)
        .field("extents", report.extents)
        .field("files", report.files)
        .field("tree_fixed", report.tree_fixed as u64)
        .field("seconds", report.seconds),
    );
    let status = db.status_word(slot);
    pool.events().emit(
        NewEvent::new(
            EventId::CopyHealthy,
            format!("copy {label} passed its final checks and is {status}"),
        )
        .database(&db.name)
        .volume(&name)
        .field("status", status.as_str()),
    );
    Ok(report)
}

fn side(db: &Database, slot: CopySlot, source: &Source, e: SideError) -> SeedError {
    match e {
        SideError::Source(e) => {
            // A hung source is failed like any timeout.
            if crate::volume::is_timeout(&e)
                && db.copies()[source.slot].state() == crate::copyset::CopyState::InSync
            {
                db.on_error(source.slot.index(), "resync read", &e, false);
            }
            SeedError::Source(format!(
                "reading the source copy on {}: {e}",
                source.volume.name()
            ))
        }
        SideError::Dest(e) => dest_failed(db, slot, "resync", e),
    }
}

/// What the layout of a resync leaves to copy.
struct LaidOut {
    jobs: Vec<Job>,
    /// Tree entries changed by the reconciliation.
    tree_fixed: usize,
    /// Files open with no name left, with an anonymous file on the copy to fill.
    orphans: Vec<Arc<Node>>,
}

/// Step 3 (namespace held exclusively): replay, reconcile, refresh handles; returns the
/// files to copy, how many tree entries changed, and the open files with no name left.
fn lay_out(
    core: &Core,
    db: &Database,
    slot: CopySlot,
    source: &Source,
    target: &Volume,
    extra: &BTreeMap<PathBuf, FileDirty>,
) -> Result<LaidOut, SeedError> {
    let gone = || {
        SeedError::Refused(format!(
            "the dirty map of {}\\{} was dropped during the resync (a full reseed of the copy started?); resume it again, or reseed it",
            db.name,
            db.copies()[slot].volume_name()
        ))
    };
    // Namespace operations cannot happen meanwhile (the namespace is held).
    let ops = db.tap().snapshot(slot).ok_or_else(gone)?.ops;
    let replayed = reconcile::replay(target, &ops).map_err(|e| side(db, slot, source, e))?;
    let tree =
        reconcile::tree(&source.volume, target, &db.name).map_err(|e| side(db, slot, source, e))?;
    let refreshed = core
        .refresh_handles(db, slot)
        .map_err(|e| dest_failed(db, slot, "resync open handles", e))?;
    // Data writes do not wait for the namespace: the map is read only now that every
    // handle has its file on the copy. A write records itself before it picks its
    // copies, so each write either is in this map or reaches the copy itself.
    let map = db.tap().snapshot(slot).ok_or_else(gone)?;
    let mut files = map.files.clone();
    for (p, f) in extra {
        files.entry(p.clone()).or_default().merge(f);
    }
    for p in &tree.created {
        files.entry(p.clone()).or_default().whole = true;
    }
    for (p, from) in &tree.grown {
        files.entry(p.clone()).or_default().truncated(*from);
    }
    let mut jobs = Vec::new();
    for (path, f) in files {
        let st = match source.volume.stat(&path) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => st,
            // Gone since, or not a file: the tree pass settled it.
            _ => continue,
        };
        let ranges = ranges(&f, st.st_size as u64);
        if ranges.is_empty() {
            continue;
        }
        jobs.push(Job {
            node: core.node_for(db.index, path.clone()),
            path,
            ranges,
        });
    }
    tracing::debug!(
        "resync layout of {}: {replayed} operations replayed, {} tree entries fixed, {} files",
        db.name,
        tree.changed(),
        jobs.len()
    );
    Ok(LaidOut {
        jobs,
        tree_fixed: tree.changed(),
        orphans: refreshed.orphans,
    })
}

fn open_pair(
    db: &Database,
    source: &Source,
    target: &Volume,
    job: &Job,
) -> Result<Option<(VolFile, VolFile)>, SideError> {
    let _namespace = db.namespace_shared();
    let Some(path) = job.path() else {
        return Ok(None);
    };
    let a = match source
        .volume
        .open_file(&path, OFlags::RDONLY, Mode::empty())
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(SideError::Source(e)),
    };
    let b = target
        .open_file(&path, OFlags::RDWR, Mode::empty())
        .map_err(SideError::Dest)?;
    Ok(Some((a, b)))
}

/// The chunks of a job's ranges, clipped to `size`.
fn chunks(ranges: &[(u64, u64)], size: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(off, len) in ranges {
        let end = off.saturating_add(len).min(size);
        let mut pos = off;
        while pos < end {
            let n = (end - pos).min(CHUNK - pos % CHUNK);
            out.push((pos, n));
            pos += n;
        }
    }
    out
}

fn copy_jobs(
    db: &Database,
    slot: CopySlot,
    source: &Source,
    target: &Volume,
    jobs: &[Job],
    progress: &Progress,
    report: &mut ResyncReport,
) -> Result<(), SeedError> {
    // The extents are copied through the files' own descriptors, under their stripe
    // locks: on the copy's own threads, under the volumes' deadline (see `watch`).
    let watched = Watched::new(
        &format!("{}\\{}", db.name, target.name()),
        target.limits().io_timeout,
    );
    let (from, to) = (source.volume.name(), target.name());
    let unwatched = |e| match e {
        CopyError::Source(e) => SideError::Source(e),
        CopyError::Dest(e) => SideError::Dest(e),
    };
    for job in jobs {
        let Some((a, b)) =
            open_pair(db, source, target, job).map_err(|e| side(db, slot, source, e))?
        else {
            // Unlinked since the layout, but still open: its handles have it on the copy
            // (opened at the layout, by name); it is copied whole through them.
            if let Some(node) = job.node.as_ref().filter(|n| n.any_open_files().is_some()) {
                report.bytes_copied += super::orphans::copy_orphan(db, slot, node, progress)?;
                report.files += 1;
            }
            continue;
        };
        let _resize = job.node.as_ref().map(|n| n.io.resize.read());
        let src = a.clone();
        let size = watched
            .run(from, to, move |w| {
                w.on(Side::Source, || src.metadata())
                    .map_err(CopyError::Source)
            })
            .map_err(|e| side(db, slot, source, unwatched(e)))?
            .len();
        let mut copied_any = false;
        let chunks = chunks(&job.ranges, size);
        // Scattered small extents: let the source's disk read them all at once.
        for &(off, len) in &chunks {
            crate::volume::advise_file(&a, off, len, Advice::WillNeed);
        }
        for (off, len) in chunks {
            progress
                .check_cancel()
                .map_err(|e| SeedError::Dest(e.to_string()))?;
            if db.copies()[slot].state() != CopyState::Seeding {
                return Err(SeedError::Dest(
                    "the copy was failed during its resync (see its events)".into(),
                ));
            }
            // The budget is waited for before the file's locks are taken.
            progress.job.pacer.take(len);
            let _stripes = job.node.as_ref().map(|n| n.io.lock_range(off, len));
            let (src, dst) = (a.clone(), b.clone());
            let n = watched
                .run(from, to, move |w| {
                    reconcile::copy_extent_watched(&src, &dst, off, len, w).map_err(|e| match e {
                        SideError::Source(e) => CopyError::Source(e),
                        SideError::Dest(e) => CopyError::Dest(e),
                    })
                })
                .map_err(|e| side(db, slot, source, unwatched(e)))?;
            report.bytes_copied += n;
            report.extents += 1;
            copied_any = true;
            progress.job.add_done(len);
        }
        if copied_any {
            report.files += 1;
            let dst = b.clone();
            watched
                .run(from, to, move |w| {
                    w.on(Side::Dest, || dst.sync_all()).map_err(CopyError::Dest)
                })
                .map_err(|e| match e {
                    CopyError::Source(e) | CopyError::Dest(e) => {
                        dest_failed(db, slot, "resync fsync", e)
                    }
                })?;
        }
    }
    Ok(())
}

/// The copied extents compared with the source, each chunk under its stripe locks (the
/// file's resize lock held for the whole file, as the copy held it): the locked chunk
/// comparison of [`crate::verify::chunk`].
fn compare_jobs(
    db: &Database,
    slot: CopySlot,
    source: &Source,
    target: &Volume,
    jobs: &[Job],
) -> Result<(), SeedError> {
    // The volumes' deadline: a hung disk fails its copy instead of holding the stripes.
    let mut reader = ChunkReader::new(2, CHUNK as usize).with_deadline(
        target.limits().io_timeout,
        vec![source.volume.name().to_string(), target.name().to_string()],
    );
    for job in jobs {
        let Some((a, b)) =
            open_pair(db, source, target, job).map_err(|e| side(db, slot, source, e))?
        else {
            continue;
        };
        let _resize = job.node.as_ref().map(|n| n.io.resize.read());
        let size = a
            .metadata()
            .map_err(|e| side(db, slot, source, SideError::Source(e)))?
            .len();
        for (off, len) in chunks(&job.ranges, size) {
            let locks = ChunkLocks::stripes(job.node.as_slice(), off, len);
            let mut reads = reader
                .read(&locks, &[Some(&a), Some(&b)], off, len as usize)
                .into_iter();
            let n = reads
                .next()
                .unwrap_or(Ok(0))
                .map_err(|e| side(db, slot, source, SideError::Source(e)))?;
            let m = reads
                .next()
                .unwrap_or(Ok(0))
                .map_err(|e| dest_failed(db, slot, "resync verify", e))?;
            if reader.differs(1, n, m) {
                return Err(SeedError::Verify(format!(
                    "{} differs at bytes {off}..{} after the resync",
                    job.path.display(),
                    off + len
                )));
            }
            // The copied bytes checked against the source's sums (a bad block taken from
            // another copy, or the resync fails naming it), under the same locks.
            db.seed_chunk_sums(
                (source.slot, &source.volume, &a),
                (slot, target, &b),
                &job.path,
                off,
                reader.bytes(0, n),
                "resync",
            )
            .map_err(|e| sums_error(db, slot, source, e))?;
        }
    }
    Ok(())
}

/// A [`SeedSums`] as the resync reports it.
fn sums_error(db: &Database, slot: CopySlot, source: &Source, e: SeedSums) -> SeedError {
    match e {
        SeedSums::Source(e) => side(db, slot, source, SideError::Source(e)),
        SeedSums::Dest(e) => dest_failed(db, slot, "resync checksums", e),
        SeedSums::Unrecoverable(why) => SeedError::Source(why),
    }
}

/// The resynced copy gets the source's sums of every regular file (its own were dropped
/// at the layout: what it missed changed its data behind them): the files are equal now,
/// so are their sums. Each file under its write-ordering locks, whole (a write in flight
/// writes both copies' sums itself). 0.1% of the data is read, not the data.
fn copy_sums(
    core: &Core,
    db: &Database,
    slot: CopySlot,
    source: &Source,
    target: &Volume,
) -> Result<(), SeedError> {
    if !db.sums().enabled() {
        return Ok(());
    }
    tracing::info!(
        "resync of {}\\{}: copying the checksums of every file",
        db.name,
        target.name()
    );
    // The regular files by inode: one store per inode, and the names of a file with hard
    // links each have their own node (a link made before this mount, or behind it), whose
    // locks order the writes through that name. Each store is copied holding every one.
    let mut files: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
    let mut todo: Vec<PathBuf> = crate::layout::db_folders(&db.name)
        .into_iter()
        .map(PathBuf::from)
        .collect();
    while let Some(dir) = todo.pop() {
        let entries = match target.read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(dest_failed(db, slot, "resync checksums", e)),
        };
        for e in entries {
            let path = crate::volume::child_path(&dir, &e.name);
            match e.kind {
                FileType::Directory => todo.push(path),
                FileType::RegularFile => match target.stat(&path) {
                    Ok(st) => files.entry(st.st_ino).or_default().push(path),
                    // Removed since it was listed.
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) => return Err(dest_failed(db, slot, "resync checksums", e)),
                },
                _ => {}
            }
        }
    }
    for paths in files.into_values() {
        let mut nodes: Vec<Arc<Node>> = Vec::new();
        for p in &paths {
            if let Some(n) = core.node_for(db.index, p.clone()) {
                if !nodes.iter().any(|m| Arc::ptr_eq(m, &n)) {
                    nodes.push(n);
                }
            }
        }
        // One order for every caller that takes the locks of several nodes (as verify).
        nodes.sort_by_key(|n| Arc::as_ptr(n) as usize);
        let _locks = ChunkLocks::take(&nodes, 0, u64::MAX);
        db.copy_sums((source.slot, &source.volume), (slot, target), &paths[0])
            .map_err(|e| sums_error(db, slot, source, e))?;
    }
    Ok(())
}
