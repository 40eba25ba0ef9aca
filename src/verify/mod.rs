//! Online verification: every in-sync copy of a database compared with the active copy
//! while the database runs (`reseedfs verify <db> [--repair]`).
//!
//! Two passes, each paced by the job's [`crate::throttle::Pacer`] (its own rate limit,
//! `--max-rate`, and the host's rebuild throttle):
//!
//! 1. **Tree.** The folders `<db>.db/` and `<db>.log/` are walked on the active copy and
//!    on every other in-sync copy: names, kinds, modes, owners, symlink targets and
//!    xattrs (not times; directory sizes are not compared, they depend on each
//!    directory's history). Each directory is listed, and its entries compared in
//!    batches, with the database's namespace held exclusively (no create, rename, chmod
//!    or open in between, for milliseconds), so that a mutation in flight never looks
//!    like a difference.
//! 2. **Data.** Every regular file is compared chunk by chunk (4 MiB), each chunk read
//!    on all copies under the file's write-ordering locks, as the seeder's verification
//!    does (see [`crate::reseed`]): the resize lock shared and the chunk's stripes, so
//!    that no write is half applied while the chunk is read. The file sizes are compared
//!    first, with every stripe held. Differences are located per 4 KiB block and
//!    reported as extents (path, offset, length, copy), adjacent ones merged. A
//!    difference is confirmed once before it is reported: the file is opened again and
//!    the chunk read again, so that a rename racing the verification cannot pass for one.
//!
//! With `repair`, what differs on a copy is rewritten from the active copy under the
//! same locks (data extents, sizes, modes, owners, xattrs), made durable and read again
//! to confirm. Names present on one side only, kinds and symlink targets are reported,
//! not repaired: that copy needs a reseed.
//!
//! Events 3040 (`verify.online_started`) and 3041 (`verify.online_completed`) frame a run.
//!
//! Files: this one holds the report, the progress and the run's setup; `tree` the tree
//! pass, `data` the data pass, `repair` what `--repair` rewrites, [`chunk`] the locked
//! chunk comparison that the seeder and the resync use too, `verifier` the daemon side
//! (one verification per database, on a thread).

pub mod chunk;
mod data;
mod repair;
mod tree;
mod verifier;

pub use verifier::{ScrubRecord, ScrubSchedule, ScrubState, Verifier};

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::names::CopySlot;
use crate::names::DbName;
use crate::volume::Stat;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::copyset::CopyState;
use crate::copyset::Database;
use crate::events::{EventId, NewEvent};
use crate::fs::Core;
use crate::job::{JobPhase, JobProgress};
use crate::volume::{Volume, is_media_error};
use chunk::ChunkReader;

/// Bytes compared per step, under the chunk's stripe locks.
pub const CHUNK: usize = 4 << 20;

/// At most this many extents and tree differences are listed (all are counted).
const LISTED_MAX: usize = 1000;

/// Directory entries compared per hold of the namespace.
const DIR_BATCH: usize = 256;

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyOptions {
    /// Rewrite what differs from the active copy, then read it again.
    pub repair: bool,
    /// Rate limit of the reads (bytes per second, per copy); `None`: unlimited.
    pub max_bytes_per_s: Option<u64>,
    /// A scrub (`reseedfs scrub`): every block of every copy checked against its own
    /// checksum and repaired from a copy whose block matches; blocks without a checksum
    /// get one where the copies agree.
    #[serde(default)]
    pub scrub: bool,
}

/// Which property of a tree entry differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TreeField {
    /// On the active copy, not on this one.
    Missing,
    /// On this copy, not on the active one.
    Extra,
    /// File, directory, symlink, ...
    Kind,
    /// A regular file's size.
    Size,
    /// Permission bits (with setuid, setgid, sticky).
    Mode,
    /// Owner and group.
    Owner,
    /// Where a symlink points.
    SymlinkTarget,
    /// Extended attributes.
    Xattrs,
}

impl TreeField {
    /// Whether `--repair` fixes it in place.
    pub fn repairable(self) -> bool {
        matches!(
            self,
            TreeField::Size | TreeField::Mode | TreeField::Owner | TreeField::Xattrs
        )
    }
}

/// Data of one file that differs on one copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtentMismatch {
    /// Volume-relative path (`db001.db/base/1/16384`).
    pub path: String,
    /// The copy that differs from the active copy (`Volume2`).
    pub volume: String,
    /// First byte.
    pub offset: u64,
    /// Bytes (whole 4 KiB blocks, but for the end of the file).
    pub len: u64,
    /// Rewritten from the active copy and read again identical.
    pub repaired: bool,
}

/// A property of a tree entry that differs on one copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeMismatch {
    /// Volume-relative path.
    pub path: String,
    /// The copy that differs from the active copy.
    pub volume: String,
    /// What differs.
    pub field: TreeField,
    /// The value on the active copy.
    pub active: String,
    /// The value on this copy.
    pub other: String,
    /// Fixed from the active copy and checked again.
    pub repaired: bool,
}

/// What a verification found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// The database.
    pub db: String,
    /// The active copy's volume, the reference.
    pub active: String,
    /// The other in-sync copies compared with it.
    pub compared_with: Vec<String>,
    /// Whether differences were repaired.
    pub repair: bool,
    /// Regular files compared.
    pub files: u64,
    /// Directories compared.
    pub directories: u64,
    /// Bytes of file data compared (read on every copy).
    pub bytes_compared: u64,
    /// Data differences (the first 1000).
    pub extents: Vec<ExtentMismatch>,
    /// Data differences found, listed or not.
    pub extents_total: u64,
    /// Bytes in them.
    pub bytes_mismatched: u64,
    /// Data differences repaired and confirmed.
    pub extents_repaired: u64,
    /// Tree differences (the first 1000).
    pub tree: Vec<TreeMismatch>,
    /// Tree differences found, listed or not.
    pub tree_total: u64,
    /// Tree differences repaired and confirmed.
    pub tree_repaired: u64,
    /// What was left out, and why (a copy that stopped being in sync, a file that
    /// changed identity while it was compared).
    pub notes: Vec<String>,
    /// Blocks (one copy's 4 KiB) checked against a known checksum.
    #[serde(default)]
    pub blocks_checked: u64,
    /// Blocks of a copy that did not match their checksum (each decided for the copy
    /// whose block matches).
    #[serde(default)]
    pub checksum_errors: u64,
    /// Of those, rewritten from a good copy and read back.
    #[serde(default)]
    pub checksum_repaired: u64,
    /// Blocks that matched their checksum on no copy (left as they are).
    #[serde(default)]
    pub checksum_unrecoverable: u64,
    /// Blocks without a checksum that got one (a scrub, where the copies agree).
    #[serde(default)]
    pub sums_filled: u64,
    /// Wall time.
    pub seconds: f64,
}

impl VerifyReport {
    /// No difference at all.
    pub fn identical(&self) -> bool {
        self.extents_total == 0 && self.tree_total == 0
    }

    /// Every difference found was repaired and read back identical.
    pub fn all_repaired(&self) -> bool {
        self.extents_repaired == self.extents_total && self.tree_repaired == self.tree_total
    }

    pub(super) fn add_extent(&mut self, e: ExtentMismatch) {
        self.extents_total += 1;
        self.bytes_mismatched += e.len;
        self.extents_repaired += u64::from(e.repaired);
        if let Some(last) = self.extents.last_mut() {
            if last.path == e.path
                && last.volume == e.volume
                && last.repaired == e.repaired
                && last.offset + last.len == e.offset
            {
                // Adjacent: one extent.
                last.len += e.len;
                self.extents_total -= 1;
                return;
            }
        }
        if self.extents.len() < LISTED_MAX {
            self.extents.push(e);
        }
    }

    pub(super) fn add_tree(&mut self, t: TreeMismatch) {
        self.tree_total += 1;
        self.tree_repaired += u64::from(t.repaired);
        if self.tree.len() < LISTED_MAX {
            self.tree.push(t);
        }
    }
}

/// Where a verification is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VerifyPhase {
    /// Comparing the trees.
    Tree,
    /// Comparing file data.
    Data,
    /// Finished: see the report.
    Done,
    /// Stopped by an error (see `error`).
    Failed,
}

impl JobPhase for VerifyPhase {
    const FAILED: VerifyPhase = VerifyPhase::Failed;
    fn running(self) -> bool {
        matches!(self, VerifyPhase::Tree | VerifyPhase::Data)
    }
    fn measured(self) -> bool {
        self == VerifyPhase::Data
    }
}

/// Live progress of one verification, shared with the control socket.
#[derive(Debug)]
pub struct VerifyProgress {
    db: DbName,
    options: VerifyOptions,
    report: Mutex<Option<VerifyReport>>,
    /// Phase, bytes, throughput, cancellation and the pacing of the reads.
    pub job: JobProgress<VerifyPhase>,
}

/// A snapshot of a verification, as `reseedfs verify` polls it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyStatus {
    /// The database.
    pub db: DbName,
    /// What was asked.
    pub options: VerifyOptions,
    /// The phase.
    pub phase: VerifyPhase,
    /// Bytes of file data to compare (known once the tree is walked).
    pub bytes_total: u64,
    /// Bytes compared so far.
    pub bytes_done: u64,
    /// Throughput of the data pass.
    pub mib_s: f64,
    /// Seconds left at this throughput.
    pub eta_s: Option<f64>,
    /// Seconds since the start.
    pub elapsed_s: f64,
    /// The result, once done.
    pub report: Option<VerifyReport>,
    /// Why it stopped, when it failed.
    pub error: Option<String>,
}

impl VerifyProgress {
    /// A verification of `db`, not started, its reads limited to `options.max_bytes_per_s`.
    pub fn new(db: &DbName, options: VerifyOptions) -> VerifyProgress {
        let job = JobProgress::new(VerifyPhase::Tree);
        job.pacer.set_limit(options.max_bytes_per_s);
        VerifyProgress {
            db: db.to_owned(),
            options,
            report: Mutex::new(None),
            job,
        }
    }

    /// True until it ends (either way).
    pub fn is_running(&self) -> bool {
        self.job.is_running()
    }

    /// What it was asked to do.
    pub fn options(&self) -> VerifyOptions {
        self.options
    }

    /// Asks it to stop at its next chunk or directory (the daemon is stopping).
    pub fn cancel(&self) {
        self.job.cancel();
    }

    pub(super) fn check_cancel(&self) -> Result<(), VerifyError> {
        if self.job.is_cancelled() {
            Err(VerifyError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Where it is now.
    pub fn snapshot(&self) -> VerifyStatus {
        let (phase, rate) = self.job.rate();
        VerifyStatus {
            db: self.db.clone(),
            options: self.options,
            phase,
            bytes_total: rate.bytes_total,
            bytes_done: rate.bytes_done,
            mib_s: rate.mib_s,
            eta_s: rate.eta_s,
            elapsed_s: rate.elapsed_s,
            report: self.report.lock().clone(),
            error: self.job.error(),
        }
    }
}

/// Why a verification did not finish.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// It could not start (fewer than two copies in sync, ...).
    #[error("{0}")]
    Refused(String),
    /// A copy could not be read or written, or left the comparison.
    #[error("{0}")]
    Io(String),
    /// The daemon is stopping.
    #[error("cancelled: the daemon is stopping")]
    Cancelled,
}

/// Compares every in-sync copy of `db` with its active copy, online, and repairs what
/// differs when `opts.repair`, paced by `progress.job.pacer`. Emits 3040 and 3041;
/// records the outcome in `progress`.
pub fn verify(
    core: &Core,
    db: &Database,
    opts: VerifyOptions,
    progress: &VerifyProgress,
) -> Result<VerifyReport, VerifyError> {
    let result = run(core, db, opts, progress);
    let events = core.pool().events();
    match &result {
        Ok(report) => {
            *progress.report.lock() = Some(report.clone());
            progress.job.set_phase(VerifyPhase::Done);
            let verdict = if report.identical() {
                "identical".to_owned()
            } else {
                format!(
                    "{} extents ({} bytes) and {} tree entries differ, {} repaired",
                    report.extents_total,
                    report.bytes_mismatched,
                    report.tree_total,
                    report.extents_repaired + report.tree_repaired
                )
            };
            let id = if opts.scrub {
                EventId::ScrubCompleted
            } else {
                EventId::OnlineVerifyCompleted
            };
            events.emit(
                NewEvent::new(
                    id,
                    format!(
                        "{} of {} completed: {} against {}: {} files, {} MiB compared in {:.1} s: {verdict}; checksums: {} blocks checked, {} bad, {} repaired, {} bad on every copy, {} summed anew",
                        kind(opts),
                        db.name,
                        report.compared_with.join(", "),
                        report.active,
                        report.files,
                        report.bytes_compared >> 20,
                        report.seconds,
                        report.blocks_checked,
                        report.checksum_errors,
                        report.checksum_repaired,
                        report.checksum_unrecoverable,
                        report.sums_filled
                    ),
                )
                .database(&db.name)
                .volume(&report.active)
                .field("bytes", report.bytes_compared)
                .field("files", report.files)
                .field("mismatched_extents", report.extents_total)
                .field("mismatched_bytes", report.bytes_mismatched)
                .field("tree_mismatches", report.tree_total)
                .field("repaired", report.extents_repaired + report.tree_repaired)
                .field("repair", report.repair)
                .field("blocks_checked", report.blocks_checked)
                .field("checksum_errors", report.checksum_errors)
                .field("checksum_repaired", report.checksum_repaired)
                .field("checksum_unrecoverable", report.checksum_unrecoverable)
                .field("sums_filled", report.sums_filled),
            );
        }
        Err(e) => {
            progress.job.fail(&e.to_string());
            events.emit(
                NewEvent::new(
                    if opts.scrub {
                        EventId::ScrubCompleted
                    } else {
                        EventId::OnlineVerifyCompleted
                    },
                    format!("{} of {} stopped: {e}", kind(opts), db.name),
                )
                .database(&db.name)
                .field("bytes", progress.job.done())
                .field("error", e.to_string()),
            );
        }
    }
    result
}

/// A copy taking part: its slot, and the placement it had when the verification began.
#[derive(Debug, Clone)]
pub(super) struct Peer {
    slot: CopySlot,
    volume: Arc<Volume>,
    generation: u64,
}

impl Peer {
    pub(super) fn name(&self) -> &str {
        self.volume.name()
    }

    /// Still in sync on the same placement.
    fn alive(&self, db: &Database) -> bool {
        let c = &db.copies()[self.slot];
        c.state() == CopyState::InSync && c.placement().generation == self.generation
    }
}

/// One regular file of the active copy (hard links: every name of its inode).
pub(super) struct FileGroup {
    pub(super) paths: Vec<PathBuf>,
}

pub(super) struct Run<'a> {
    core: &'a Core,
    db: &'a Database,
    opts: VerifyOptions,
    progress: &'a VerifyProgress,
    active: Peer,
    peers: Vec<Peer>,
    /// Peers that left the comparison (not in sync any more).
    gone: Vec<bool>,
    /// Per peer: paths found missing or of another kind there (reported once; what is
    /// under them is not compared on that peer).
    absent: Vec<BTreeSet<PathBuf>>,
    report: VerifyReport,
}

fn run(
    core: &Core,
    db: &Database,
    opts: VerifyOptions,
    progress: &VerifyProgress,
) -> Result<VerifyReport, VerifyError> {
    let started = Instant::now();
    let in_sync: Vec<Peer> = db
        .copies()
        .iter()
        .enumerate()
        .filter_map(|(slot, c)| {
            let volume = c.in_sync_volume()?;
            Some(Peer {
                slot: CopySlot::new(slot),
                volume,
                generation: c.placement().generation,
            })
        })
        .collect();
    let active_slot = db
        .active_index()
        .ok_or_else(|| VerifyError::Refused(format!("no copy of {} is in sync", db.name)))?;
    let (actives, peers): (Vec<Peer>, Vec<Peer>) =
        in_sync.into_iter().partition(|p| p.slot == active_slot);
    let active = actives
        .into_iter()
        .next()
        .ok_or_else(|| VerifyError::Refused(format!("the active copy of {} left sync", db.name)))?;
    // A scrub of a single copy still checks every block against its checksum (damage is
    // found and counted, and blocks without a sum get one; there is nothing to repair
    // from); a verification needs two copies to compare.
    if peers.is_empty() && !opts.scrub {
        return Err(VerifyError::Refused(format!(
            "only {} holds an in-sync copy of {}: there is nothing to compare it with (reseed the other copy first)",
            active.name(),
            db.name
        )));
    }
    let names: Vec<String> = peers.iter().map(|p| p.name().to_owned()).collect();
    core.pool().events().emit(
        NewEvent::new(
            if opts.scrub {
                EventId::ScrubStarted
            } else {
                EventId::OnlineVerifyStarted
            },
            format!(
                "{} of {} started: {} against {} (active){}, rate {}",
                kind(opts),
                db.name,
                names.join(", "),
                active.name(),
                if opts.repair { ", repairing" } else { "" },
                opts.max_bytes_per_s
                    .map_or("unlimited".to_owned(), |r| format!("{} MiB/s", r >> 20))
            ),
        )
        .database(&db.name)
        .volume(active.name())
        .field("copies", names.join(","))
        .field("repair", opts.repair)
        .field("max_bytes_per_s", opts.max_bytes_per_s.unwrap_or(0)),
    );
    let mut run = Run {
        core,
        db,
        opts,
        progress,
        gone: vec![false; peers.len()],
        absent: vec![BTreeSet::new(); peers.len()],
        report: VerifyReport {
            db: db.name.to_string(),
            active: active.name().to_owned(),
            compared_with: names,
            repair: opts.repair,
            ..VerifyReport::default()
        },
        active,
        peers,
    };
    progress.job.set_phase(VerifyPhase::Tree);
    let files = run.tree_pass()?;
    progress.job.set_phase(VerifyPhase::Data);
    // The volumes' deadline: a hung disk fails its copy instead of holding the stripes.
    let volumes = std::iter::once(&run.active)
        .chain(&run.peers)
        .map(|p| p.volume.name().to_string())
        .collect();
    let mut reader = ChunkReader::new(run.peers.len() + 1, CHUNK)
        .with_deadline(run.active.volume.limits().io_timeout, volumes);
    for f in &files {
        run.verify_file(f, &mut reader)?;
    }
    run.report.seconds = started.elapsed().as_secs_f64();
    Ok(run.report)
}

/// What a run is called in its events.
fn kind(opts: VerifyOptions) -> &'static str {
    if opts.scrub {
        "scrub"
    } else {
        "online verification"
    }
}

fn io_err(what: &str, path: &Path, v: &Volume, e: &io::Error) -> String {
    format!("{what} {} on {}: {e}", path.display(), v.name())
}

pub(super) fn is_enoent(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOENT)
}

/// `None` when `path` does not exist.
pub(super) fn stat_opt(v: &Volume, path: &Path) -> io::Result<Option<Stat>> {
    match v.stat(path) {
        Ok(st) => Ok(Some(st)),
        Err(e) if is_enoent(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

impl Run<'_> {
    /// Reports that `field` of `path` differs on peer `peer`.
    pub(super) fn mismatch(
        &mut self,
        path: &Path,
        peer: usize,
        field: TreeField,
        active: String,
        other: String,
        repaired: bool,
    ) {
        let volume = self.peers[peer].name().to_owned();
        self.report.add_tree(TreeMismatch {
            path: path.display().to_string(),
            volume,
            field,
            active,
            other,
            repaired,
        });
    }

    /// Whether peer `i` is left out for `path`: it left sync, or `path` is under an entry
    /// already reported missing or of another kind there.
    pub(super) fn skip(&self, i: usize, path: &Path) -> bool {
        self.gone[i] || path.ancestors().any(|a| self.absent[i].contains(a))
    }

    /// Peers still in sync on the placement they began with; a peer that left is noted
    /// once and compared no more. Fails when the active copy left.
    pub(super) fn check_copies(&mut self) -> Result<(), VerifyError> {
        self.progress.check_cancel()?;
        if !self.active.alive(self.db) {
            return Err(VerifyError::Io(format!(
                "the active copy on {} left sync during the verification (see `reseedfs events`)",
                self.active.name()
            )));
        }
        for (i, p) in self.peers.iter().enumerate() {
            if !self.gone[i] && !p.alive(self.db) {
                self.gone[i] = true;
                self.report.notes.push(format!(
                    "{} left sync during the verification (failed or reseeded): compared up to then",
                    p.name()
                ));
            }
        }
        // (A scrub of a single copy has no other copy to lose.)
        if !self.gone.is_empty() && self.gone.iter().all(|g| *g) {
            return Err(VerifyError::Io(format!(
                "no copy of {} other than {} is in sync any more: nothing left to compare",
                self.db.name,
                self.active.name()
            )));
        }
        Ok(())
    }

    /// A read or write error on copy `peer` (`None`: the active copy): a media error
    /// fails its volume, as any I/O would; the verification stops either way.
    pub(super) fn copy_error(
        &self,
        peer: Option<usize>,
        what: &str,
        path: &Path,
        e: io::Error,
    ) -> VerifyError {
        let p = peer.map_or(&self.active, |i| &self.peers[i]);
        if is_media_error(&e) {
            self.db.on_error(p.slot.index(), "verify", &e, false);
        }
        VerifyError::Io(io_err(what, path, &p.volume, &e))
    }
}

#[cfg(test)]
mod tests;
