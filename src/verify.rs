//! Online verification: every in-sync copy of a database compared with the active copy
//! while the database runs (`reseedfs verify <db> [--repair]`).
//!
//! Two passes, each paced by a [`Pacer`] (a rate limit by default):
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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rustix::fs::{FileType, Mode, OFlags, Stat};
use serde::{Deserialize, Serialize};

use crate::copyset::CopyState;
use crate::copyset::Database;
use crate::events::{EventId, NewEvent};
use crate::fs::{Core, Node};
use crate::layout;
use crate::volume::read_full;
use crate::volume::{VolFile, Volume, child_path, is_media_error};

/// Bytes compared per step, under the chunk's stripe locks.
pub const CHUNK: usize = 4 << 20;

/// Granularity of a reported data difference.
const BLOCK: usize = 4096;

/// At most this many extents and tree differences are listed (all are counted).
const LISTED_MAX: usize = 1000;

/// Directory entries compared per hold of the namespace.
const DIR_BATCH: usize = 256;

/// Where the bytes a verification reads are paid for: `take(n)` returns when `n` more
/// bytes may be read. A rate limit ([`RateLimit`]), a host-wide throttle, or nothing.
pub trait Pacer: Send + Sync {
    /// Accounts for `bytes` read (on each copy: the copies are on separate disks, so each
    /// disk reads at this rate) and waits as long as the budget requires.
    fn take(&self, bytes: u64);
}

impl<F: Fn(u64) + Send + Sync> Pacer for F {
    fn take(&self, bytes: u64) {
        self(bytes)
    }
}

/// Credit a [`RateLimit`] lets build up while its user is busy elsewhere.
const BURST: Duration = Duration::from_millis(250);

/// A sleep-based rate limit: `take` sleeps until the bytes taken so far fit the rate.
#[derive(Debug)]
pub struct RateLimit {
    bytes_per_s: u64,
    next: Mutex<Instant>,
}

impl RateLimit {
    /// At most `bytes_per_s` (at least 1) on average.
    pub fn new(bytes_per_s: u64) -> RateLimit {
        RateLimit {
            bytes_per_s: bytes_per_s.max(1),
            next: Mutex::new(Instant::now()),
        }
    }
}

impl Pacer for RateLimit {
    fn take(&self, bytes: u64) {
        let wait = {
            let mut next = self.next.lock();
            let now = Instant::now();
            // The time spent reading counts, but no more credit than a short burst builds
            // up while the reader is busy elsewhere.
            let floor = now.checked_sub(BURST).unwrap_or(now);
            *next = (*next).max(floor)
                + Duration::from_secs_f64(bytes as f64 / self.bytes_per_s as f64);
            next.saturating_duration_since(now)
        };
        std::thread::sleep(wait);
    }
}

/// Parses a rate such as `200MiB/s`, `1.5 GiB/s`, `500MB` or `unlimited` (`None`).
pub fn parse_rate(s: &str) -> Result<Option<u64>, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("unlimited") || t == "0" {
        return Ok(None);
    }
    let amount = t.strip_suffix("/s").unwrap_or(t);
    let size: bytesize::ByteSize = amount
        .trim()
        .parse()
        .map_err(|e| format!("rate {s:?}: {e} (write it like 200MiB/s, 1GiB/s or unlimited)"))?;
    match size.as_u64() {
        0 => Ok(None),
        n => Ok(Some(n)),
    }
}

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyOptions {
    /// Rewrite what differs from the active copy, then read it again.
    pub repair: bool,
    /// Rate limit of the reads (bytes per second, per copy); `None`: unlimited.
    pub max_bytes_per_s: Option<u64>,
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

    fn add_extent(&mut self, e: ExtentMismatch) {
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

    fn add_tree(&mut self, t: TreeMismatch) {
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

/// Live progress of one verification, shared with the control socket.
#[derive(Debug)]
pub struct VerifyProgress {
    db: String,
    options: VerifyOptions,
    phase: Mutex<(VerifyPhase, Instant)>,
    total: AtomicU64,
    done: AtomicU64,
    started: Instant,
    report: Mutex<Option<VerifyReport>>,
    error: Mutex<Option<String>>,
    cancelled: AtomicBool,
}

/// A snapshot of a verification, as `reseedfs verify` polls it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyStatus {
    /// The database.
    pub db: String,
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
    /// A verification of `db`, not started.
    pub fn new(db: &str, options: VerifyOptions) -> VerifyProgress {
        let now = Instant::now();
        VerifyProgress {
            db: db.to_owned(),
            options,
            phase: Mutex::new((VerifyPhase::Tree, now)),
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
            started: now,
            report: Mutex::new(None),
            error: Mutex::new(None),
            cancelled: AtomicBool::new(false),
        }
    }

    fn set_phase(&self, p: VerifyPhase) {
        *self.phase.lock() = (p, Instant::now());
    }

    /// True until it ends (either way).
    pub fn is_running(&self) -> bool {
        matches!(self.phase.lock().0, VerifyPhase::Tree | VerifyPhase::Data)
    }

    /// Asks it to stop at its next chunk or directory (the daemon is stopping).
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
    }

    fn check_cancel(&self) -> Result<(), VerifyError> {
        if self.cancelled.load(Ordering::Acquire) {
            Err(VerifyError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Where it is now.
    pub fn snapshot(&self) -> VerifyStatus {
        let (phase, since) = *self.phase.lock();
        let total = self.total.load(Ordering::Relaxed);
        let done = self.done.load(Ordering::Relaxed);
        let secs = since.elapsed().as_secs_f64();
        let mib_s = if phase == VerifyPhase::Data && secs > 0.0 {
            done as f64 / secs / 1048576.0
        } else {
            0.0
        };
        let eta_s = (mib_s > 0.0).then(|| total.saturating_sub(done) as f64 / 1048576.0 / mib_s);
        VerifyStatus {
            db: self.db.clone(),
            options: self.options,
            phase,
            bytes_total: total,
            bytes_done: done,
            mib_s,
            eta_s,
            elapsed_s: self.started.elapsed().as_secs_f64(),
            report: self.report.lock().clone(),
            error: self.error.lock().clone(),
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
/// differs when `opts.repair`. Emits 3040 and 3041; records the outcome in `progress`.
pub fn verify(
    core: &Core,
    db: &Database,
    opts: VerifyOptions,
    pacer: &dyn Pacer,
    progress: &VerifyProgress,
) -> Result<VerifyReport, VerifyError> {
    let result = run(core, db, opts, pacer, progress);
    let events = core.pool().events();
    match &result {
        Ok(report) => {
            *progress.report.lock() = Some(report.clone());
            progress.set_phase(VerifyPhase::Done);
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
            events.emit(
                NewEvent::new(
                    EventId::OnlineVerifyCompleted,
                    format!(
                        "online verification of {} completed: {} against {}: {} files, {} MiB compared in {:.1} s: {verdict}",
                        db.name,
                        report.compared_with.join(", "),
                        report.active,
                        report.files,
                        report.bytes_compared >> 20,
                        report.seconds
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
                .field("repair", report.repair),
            );
        }
        Err(e) => {
            *progress.error.lock() = Some(e.to_string());
            progress.set_phase(VerifyPhase::Failed);
            events.emit(
                NewEvent::new(
                    EventId::OnlineVerifyCompleted,
                    format!("online verification of {} stopped: {e}", db.name),
                )
                .database(&db.name)
                .field("bytes", progress.done.load(Ordering::Relaxed))
                .field("error", e.to_string()),
            );
        }
    }
    result
}

/// A copy taking part: its slot, and the placement it had when the verification began.
#[derive(Debug, Clone)]
struct Peer {
    slot: usize,
    volume: Arc<Volume>,
    generation: u64,
}

impl Peer {
    fn name(&self) -> &str {
        self.volume.name()
    }

    /// Still in sync on the same placement.
    fn alive(&self, db: &Database) -> bool {
        let c = &db.copies()[self.slot];
        c.state() == CopyState::InSync && c.placement().generation == self.generation
    }
}

/// One regular file of the active copy (hard links: every name of its inode).
struct FileGroup {
    paths: Vec<PathBuf>,
}

struct Run<'a> {
    core: &'a Core,
    db: &'a Database,
    opts: VerifyOptions,
    pacer: &'a dyn Pacer,
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
    pacer: &dyn Pacer,
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
                slot,
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
    if peers.is_empty() {
        return Err(VerifyError::Refused(format!(
            "only {} holds an in-sync copy of {}: there is nothing to compare it with (reseed the other copy first)",
            active.name(),
            db.name
        )));
    }
    let names: Vec<String> = peers.iter().map(|p| p.name().to_owned()).collect();
    core.pool().events().emit(
        NewEvent::new(
            EventId::OnlineVerifyStarted,
            format!(
                "online verification of {} started: {} against {} (active){}, rate {}",
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
        pacer,
        progress,
        gone: vec![false; peers.len()],
        absent: vec![BTreeSet::new(); peers.len()],
        report: VerifyReport {
            db: db.name.clone(),
            active: active.name().to_owned(),
            compared_with: names,
            repair: opts.repair,
            ..VerifyReport::default()
        },
        active,
        peers,
    };
    progress.set_phase(VerifyPhase::Tree);
    let files = run.tree_pass()?;
    progress.set_phase(VerifyPhase::Data);
    let mut bufs: Vec<Vec<u8>> = vec![vec![0u8; CHUNK]; run.peers.len() + 1];
    for f in &files {
        run.verify_file(f, &mut bufs)?;
    }
    run.report.seconds = started.elapsed().as_secs_f64();
    Ok(run.report)
}

// ---------------------------------------------------------------- tree pass

fn io_err(what: &str, path: &Path, v: &Volume, e: &io::Error) -> String {
    format!("{what} {} on {}: {e}", path.display(), v.name())
}

fn is_enoent(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOENT)
}

/// `None` when `path` does not exist.
fn stat_opt(v: &Volume, path: &Path) -> io::Result<Option<Stat>> {
    match v.stat(path) {
        Ok(st) => Ok(Some(st)),
        Err(e) if is_enoent(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The names in `dir`; none when it is gone or no directory (any more).
fn names(v: &Volume, dir: &Path) -> io::Result<BTreeSet<OsString>> {
    match v.read_dir(dir) {
        Ok(list) => Ok(list.into_iter().map(|e| e.name).collect()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
            Ok(BTreeSet::new())
        }
        Err(e) => Err(e),
    }
}

/// Every xattr of `rel` (none where the filesystem has none), by raw name.
fn xattrs(v: &Volume, rel: &Path) -> io::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    use std::os::unix::ffi::OsStrExt;
    Ok(v.xattrs(rel)?
        .into_iter()
        .map(|(k, val)| (k.as_bytes().to_vec(), val))
        .collect())
}

fn kind_name(mode: u32) -> &'static str {
    match FileType::from_raw_mode(mode) {
        FileType::RegularFile => "file",
        FileType::Directory => "directory",
        FileType::Symlink => "symlink",
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "char device",
        FileType::BlockDevice => "block device",
        FileType::Unknown => "unknown",
    }
}

fn xattr_names(m: &BTreeMap<Vec<u8>, Vec<u8>>) -> String {
    let keys: Vec<String> = m
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    if keys.is_empty() {
        "none".into()
    } else {
        keys.join(",")
    }
}

impl Run<'_> {
    fn mismatch(
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
    fn skip(&self, i: usize, path: &Path) -> bool {
        self.gone[i] || path.ancestors().any(|a| self.absent[i].contains(a))
    }

    /// Peers still in sync on the placement they began with; a peer that left is noted
    /// once and compared no more. Fails when the active copy left.
    fn check_copies(&mut self) -> Result<(), VerifyError> {
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
        if self.gone.iter().all(|g| *g) {
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
    fn copy_error(
        &self,
        peer: Option<usize>,
        what: &str,
        path: &Path,
        e: io::Error,
    ) -> VerifyError {
        let p = peer.map_or(&self.active, |i| &self.peers[i]);
        if is_media_error(&e) {
            self.db.on_error(p.slot, "verify", &e, false);
        }
        VerifyError::Io(io_err(what, path, &p.volume, &e))
    }

    /// Walks both trees; returns the regular files of the active copy.
    fn tree_pass(&mut self) -> Result<Vec<FileGroup>, VerifyError> {
        let mut files: Vec<FileGroup> = Vec::new();
        let mut by_inode: HashMap<(u64, u64), usize> = HashMap::new();
        let roots: Vec<PathBuf> = layout::db_folders(&self.db.name)
            .into_iter()
            .map(PathBuf::from)
            .collect();
        // The two folders themselves, then each directory's entries.
        let mut todo = Vec::new();
        {
            let _namespace = self.db.namespace_exclusive();
            for r in &roots {
                self.compare_entry(r, &mut files, &mut by_inode, &mut todo)?;
            }
        }
        while let Some(dir) = todo.pop() {
            self.check_copies()?;
            self.report.directories += 1;
            let common = {
                let _namespace = self.db.namespace_exclusive();
                self.compare_listing(&dir)?
            };
            for batch in common.chunks(DIR_BATCH) {
                self.check_copies()?;
                let _namespace = self.db.namespace_exclusive();
                for name in batch {
                    self.compare_entry(
                        &child_path(&dir, name),
                        &mut files,
                        &mut by_inode,
                        &mut todo,
                    )?;
                }
            }
        }
        let total = files
            .iter()
            .filter_map(|f| f.paths.first())
            .filter_map(|p| self.active.volume.stat(p).ok())
            .map(|st| st.st_size as u64)
            .sum();
        self.progress.total.store(total, Ordering::Relaxed);
        Ok(files)
    }

    /// The names of `dir` on every copy (namespace held). Names found on a peer only are
    /// reported (names missing on a peer are, entry by entry); returns the active copy's.
    fn compare_listing(&mut self, dir: &Path) -> Result<Vec<OsString>, VerifyError> {
        let on_active =
            names(&self.active.volume, dir).map_err(|e| self.copy_error(None, "list", dir, e))?;
        for i in 0..self.peers.len() {
            if self.skip(i, dir) {
                continue;
            }
            let theirs = names(&self.peers[i].volume, dir)
                .map_err(|e| self.copy_error(Some(i), "list", dir, e))?;
            for n in theirs.difference(&on_active) {
                let path = child_path(dir, n);
                self.mismatch(
                    &path,
                    i,
                    TreeField::Extra,
                    "missing".into(),
                    "present".into(),
                    false,
                );
            }
        }
        Ok(on_active.into_iter().collect())
    }

    /// Compares one entry on every copy (namespace held): kind, mode, owner, symlink
    /// target, xattrs; repairs what can be. A regular file joins `files`, a directory
    /// `todo`.
    fn compare_entry(
        &mut self,
        path: &Path,
        files: &mut Vec<FileGroup>,
        by_inode: &mut HashMap<(u64, u64), usize>,
        todo: &mut Vec<PathBuf>,
    ) -> Result<(), VerifyError> {
        let active = self.active.volume.clone();
        let Some(a) =
            stat_opt(&active, path).map_err(|e| self.copy_error(None, "stat", path, e))?
        else {
            // Removed since the listing: a removal reaches every copy within one hold
            // of the namespace, so a copy that still has it has one too many.
            for i in 0..self.peers.len() {
                if self.skip(i, path) {
                    continue;
                }
                let v = self.peers[i].volume.clone();
                if stat_opt(&v, path)
                    .map_err(|e| self.copy_error(Some(i), "stat", path, e))?
                    .is_some()
                {
                    let (a, o) = ("missing".into(), "present".into());
                    self.mismatch(path, i, TreeField::Extra, a, o, false);
                    self.absent[i].insert(path.to_owned());
                }
            }
            return Ok(());
        };
        let kind = FileType::from_raw_mode(a.st_mode);
        let a_xattrs = if kind == FileType::Symlink {
            BTreeMap::new()
        } else {
            xattrs(&active, path).map_err(|e| self.copy_error(None, "read xattrs of", path, e))?
        };
        let a_link = if kind == FileType::Symlink {
            Some(
                active
                    .readlink(path)
                    .map_err(|e| self.copy_error(None, "readlink", path, e))?,
            )
        } else {
            None
        };
        for i in 0..self.peers.len() {
            if self.skip(i, path) {
                continue;
            }
            let v = self.peers[i].volume.clone();
            let Some(b) =
                stat_opt(&v, path).map_err(|e| self.copy_error(Some(i), "stat", path, e))?
            else {
                self.mismatch(
                    path,
                    i,
                    TreeField::Missing,
                    "present".into(),
                    "missing".into(),
                    false,
                );
                self.absent[i].insert(path.to_owned());
                continue;
            };
            if FileType::from_raw_mode(b.st_mode) != kind {
                self.mismatch(
                    path,
                    i,
                    TreeField::Kind,
                    kind_name(a.st_mode).into(),
                    kind_name(b.st_mode).into(),
                    false,
                );
                self.absent[i].insert(path.to_owned());
                continue;
            }
            self.compare_attrs(path, i, &a, &b, &a_xattrs, a_link.as_deref())?;
        }
        match kind {
            FileType::Directory => todo.push(path.to_owned()),
            FileType::RegularFile => match by_inode.get(&(a.st_dev, a.st_ino)) {
                Some(&k) => files[k].paths.push(path.to_owned()),
                None => {
                    by_inode.insert((a.st_dev, a.st_ino), files.len());
                    files.push(FileGroup {
                        paths: vec![path.to_owned()],
                    });
                }
            },
            _ => {}
        }
        Ok(())
    }

    /// Mode, owner, symlink target and xattrs of `path` on peer `i` against the active
    /// copy's (namespace held); repaired when asked and possible.
    fn compare_attrs(
        &mut self,
        path: &Path,
        i: usize,
        a: &Stat,
        b: &Stat,
        a_xattrs: &BTreeMap<Vec<u8>, Vec<u8>>,
        a_link: Option<&[u8]>,
    ) -> Result<(), VerifyError> {
        let v = self.peers[i].volume.clone();
        let repair = self.opts.repair;
        // Owner first: a chown clears setuid and setgid, which the mode then restores.
        if (a.st_uid, a.st_gid) != (b.st_uid, b.st_gid) {
            let repaired = repair
                && v.chown(path, Some(a.st_uid), Some(a.st_gid)).is_ok()
                && v.stat(path)
                    .is_ok_and(|st| (st.st_uid, st.st_gid) == (a.st_uid, a.st_gid));
            self.mismatch(
                path,
                i,
                TreeField::Owner,
                format!("{}:{}", a.st_uid, a.st_gid),
                format!("{}:{}", b.st_uid, b.st_gid),
                repaired,
            );
        }
        if let Some(target) = a_link {
            let theirs = v
                .readlink(path)
                .map_err(|e| self.copy_error(Some(i), "readlink", path, e))?;
            if theirs != target {
                let s = |t: &[u8]| String::from_utf8_lossy(t).into_owned();
                self.mismatch(
                    path,
                    i,
                    TreeField::SymlinkTarget,
                    s(target),
                    s(&theirs),
                    false,
                );
            }
            // A symlink's mode is always 0777 and it has no xattrs of its own to compare.
        } else if a.st_mode & 0o7777 != b.st_mode & 0o7777 {
            let want = a.st_mode & 0o7777;
            let repaired = repair
                && v.chmod(path, Mode::from_raw_mode(want)).is_ok()
                && v.stat(path).is_ok_and(|st| st.st_mode & 0o7777 == want);
            self.mismatch(
                path,
                i,
                TreeField::Mode,
                format!("{want:04o}"),
                format!("{:04o}", b.st_mode & 0o7777),
                repaired,
            );
        }
        if a_link.is_none() {
            let theirs = xattrs(&v, path)
                .map_err(|e| self.copy_error(Some(i), "read xattrs of", path, e))?;
            if &theirs != a_xattrs {
                let repaired = repair && self.repair_xattrs(path, &v, a_xattrs, &theirs);
                self.mismatch(
                    path,
                    i,
                    TreeField::Xattrs,
                    xattr_names(a_xattrs),
                    xattr_names(&theirs),
                    repaired,
                );
            }
        }
        Ok(())
    }

    /// Makes the xattrs of `path` on `v` those of the active copy; true when they are now.
    fn repair_xattrs(
        &self,
        path: &Path,
        v: &Volume,
        want: &BTreeMap<Vec<u8>, Vec<u8>>,
        have: &BTreeMap<Vec<u8>, Vec<u8>>,
    ) -> bool {
        use std::os::unix::ffi::OsStrExt;
        for key in have.keys().filter(|k| !want.contains_key(*k)) {
            if v.remove_xattr(path, std::ffi::OsStr::from_bytes(key))
                .is_err()
            {
                return false;
            }
        }
        if crate::reseed::copy_xattrs(&self.active.volume, v, path).is_err() {
            return false;
        }
        xattrs(v, path).is_ok_and(|now| &now == want)
    }

    // ------------------------------------------------------------ data pass

    /// Compares one file's size and data on every copy, chunk by chunk.
    fn verify_file(&mut self, group: &FileGroup, bufs: &mut [Vec<u8>]) -> Result<(), VerifyError> {
        self.check_copies()?;
        let Some(mut f) = self.open_group(group)? else {
            return Ok(());
        };
        self.report.files += 1;
        // Data appended after this is left to the next verification: a file growing as
        // fast as it is read would keep it here for ever.
        let size = self.compare_sizes(&f)?;
        let mut offset = 0u64;
        let mut confirmed = false;
        loop {
            self.check_copies()?;
            let mut chunk = self.compare_chunk(&f, offset, bufs, false)?;
            if chunk.differs() {
                // Confirm before reporting: the file opened again (a rename racing the
                // table of nodes settles in microseconds), the chunk read again.
                if !confirmed {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let Some(again) = self.open_group(group)? else {
                    return Ok(());
                };
                if again.ino != f.ino {
                    self.report.notes.push(format!(
                        "{} was replaced while it was compared: compared up to byte {offset}",
                        f.path.display()
                    ));
                    return Ok(());
                }
                f = again;
                self.check_copies()?;
                chunk = self.compare_chunk(&f, offset, bufs, self.opts.repair)?;
                confirmed |= chunk.differs();
                // A copy that left sync meanwhile: what it read is not its copy any more.
                self.check_copies()?;
                for (i, extents) in chunk.mismatches.iter().enumerate() {
                    if self.gone[i] {
                        continue;
                    }
                    for &(off, len, repaired) in extents {
                        let volume = self.peers[i].name().to_owned();
                        self.report.add_extent(ExtentMismatch {
                            path: f.path.display().to_string(),
                            volume,
                            offset: off,
                            len,
                            repaired,
                        });
                    }
                }
            }
            self.report.bytes_compared += chunk.read as u64;
            self.progress
                .done
                .fetch_add(chunk.read as u64, Ordering::Relaxed);
            self.pacer.take(chunk.read as u64);
            offset += chunk.read as u64;
            if chunk.read < CHUNK || offset >= size {
                return Ok(());
            }
        }
    }

    /// Opens the file on every copy (namespace held exclusively, so that every copy
    /// opens the same file), with the nodes of all its names. `None` when it is gone.
    fn open_group(&self, group: &FileGroup) -> Result<Option<OpenGroup>, VerifyError> {
        let _namespace = self.db.namespace_exclusive();
        let active = &self.active.volume;
        let mut ino = None;
        let mut paths = Vec::new();
        for p in &group.paths {
            match stat_opt(active, p).map_err(|e| self.copy_error(None, "stat", p, e))? {
                Some(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {
                    let key = (st.st_dev, st.st_ino);
                    if *ino.get_or_insert(key) == key {
                        paths.push(p.clone());
                    }
                }
                _ => {}
            }
        }
        let (Some(ino), Some(path)) = (ino, paths.first().cloned()) else {
            return Ok(None);
        };
        let file = match active.open_file(&path, OFlags::RDONLY, Mode::empty()) {
            Ok(f) => f,
            Err(e) if is_enoent(&e) => return Ok(None),
            Err(e) => return Err(self.copy_error(None, "open", &path, e)),
        };
        let flags = if self.opts.repair {
            OFlags::RDWR
        } else {
            OFlags::RDONLY
        };
        let mut others = Vec::new();
        for (i, p) in self.peers.iter().enumerate() {
            if self.skip(i, &path) {
                others.push(None);
                continue;
            }
            match p.volume.open_file(&path, flags, Mode::empty()) {
                Ok(f) if f.metadata().is_ok_and(|m| m.is_file()) => others.push(Some(f)),
                // Reported by the tree pass: missing, or not a file there.
                Ok(_) => others.push(None),
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::EISDIR)
                    ) =>
                {
                    others.push(None)
                }
                Err(e) => return Err(self.copy_error(Some(i), "open", &path, e)),
            }
        }
        let mut nodes: Vec<Arc<Node>> = Vec::new();
        for p in paths {
            if let Some(n) = self.core.node_for(self.db.index, p) {
                if !nodes.iter().any(|m| Arc::ptr_eq(m, &n)) {
                    nodes.push(n);
                }
            }
        }
        // One order for every caller that takes the locks of several nodes.
        nodes.sort_by_key(|n| Arc::as_ptr(n) as usize);
        Ok(Some(OpenGroup {
            path,
            ino,
            nodes,
            active: file,
            others,
        }))
    }

    /// The sizes on every copy, with every stripe of the file held; a copy whose size
    /// differs is reported (and truncated to the active copy's, under the resize lock,
    /// when repairing). Returns the active copy's.
    fn compare_sizes(&mut self, f: &OpenGroup) -> Result<u64, VerifyError> {
        let (active_size, sizes) = {
            let _locks = lock_chunk(&f.nodes, 0, u64::MAX);
            let a = size_of(&f.active).map_err(|e| self.copy_error(None, "stat", &f.path, e))?;
            let mut sizes = Vec::new();
            for (i, o) in f.others.iter().enumerate() {
                if let Some(o) = o {
                    let b = size_of(o).map_err(|e| self.copy_error(Some(i), "stat", &f.path, e))?;
                    sizes.push((i, a, b));
                }
            }
            (a, sizes)
        };
        for (i, a, b) in sizes.into_iter().filter(|(_, a, b)| a != b) {
            let repaired = self.opts.repair && {
                // Exclusive: no write or truncate in between.
                let _resize: Vec<_> = f.nodes.iter().map(|n| n.io.resize.write()).collect();
                let a_now = size_of(&f.active).ok();
                let o = f.others[i].as_ref();
                match (a_now, o) {
                    (Some(a_now), Some(o)) => {
                        o.set_len(a_now).is_ok()
                            && o.sync_all().is_ok()
                            && size_of(o).ok() == Some(a_now)
                    }
                    _ => false,
                }
            };
            self.mismatch(
                &f.path,
                i,
                TreeField::Size,
                a.to_string(),
                b.to_string(),
                repaired,
            );
        }
        Ok(active_size)
    }

    /// Reads `[offset, offset + CHUNK)` on every copy under the file's locks and locates
    /// the 4 KiB blocks that differ from the active copy; with `repair`, rewrites them
    /// from the active copy and reads them again.
    fn compare_chunk(
        &self,
        f: &OpenGroup,
        offset: u64,
        bufs: &mut [Vec<u8>],
        repair: bool,
    ) -> Result<Chunk, VerifyError> {
        let _locks = lock_chunk(&f.nodes, offset, CHUNK as u64);
        let (first, rest) = bufs.split_at_mut(1);
        let reads: Vec<io::Result<usize>> = std::thread::scope(|scope| {
            let handles: Vec<_> = f
                .others
                .iter()
                .zip(rest.iter_mut())
                .map(|(o, buf)| {
                    o.as_ref()
                        .map(|o| scope.spawn(move || read_full(o, offset, buf)))
                })
                .collect();
            let mut out = vec![read_full(&f.active, offset, &mut first[0])];
            for h in handles {
                out.push(match h {
                    Some(h) => h
                        .join()
                        .unwrap_or_else(|_| Err(io::Error::other("verification reader panicked"))),
                    None => Ok(0),
                });
            }
            out
        });
        let mut reads = reads.into_iter();
        let n = match reads.next() {
            Some(Ok(n)) => n,
            Some(Err(e)) => return Err(self.copy_error(None, "read", &f.path, e)),
            None => 0,
        };
        let mut mismatches = vec![Vec::new(); self.peers.len()];
        for (i, r) in reads.enumerate() {
            let Some(o) = f.others[i].as_ref().filter(|_| !self.gone[i]) else {
                continue;
            };
            let m = r.map_err(|e| self.copy_error(Some(i), "read", &f.path, e))?;
            let a = &first[0][..n];
            let b = &mut rest[i];
            // A shorter copy reads as zeros past its end (its size is reported apart).
            if m < n {
                b[m..n].fill(0);
            }
            if a == &b[..n] {
                continue;
            }
            for (start, end) in differing_blocks(a, &b[..n]) {
                let repaired = repair && repair_extent(o, a, b, offset, start, end);
                mismatches[i].push((offset + start as u64, (end - start) as u64, repaired));
            }
        }
        Ok(Chunk {
            read: n,
            mismatches,
        })
    }
}

/// One file opened on every copy.
struct OpenGroup {
    /// The name it is reported under.
    path: PathBuf,
    /// Its inode on the active copy.
    ino: (u64, u64),
    /// The nodes of its names (one, unless hard links were found on disk).
    nodes: Vec<Arc<Node>>,
    active: VolFile,
    /// Per peer; `None` where it is missing or the peer left.
    others: Vec<Option<VolFile>>,
}

/// What one chunk showed.
struct Chunk {
    /// Bytes read on the active copy (less than [`CHUNK`] at the end of the file).
    read: usize,
    /// Per peer: (offset, len, repaired).
    mismatches: Vec<Vec<(u64, u64, bool)>>,
}

impl Chunk {
    fn differs(&self) -> bool {
        self.mismatches.iter().any(|m| !m.is_empty())
    }
}

/// Writers kept out of `[offset, offset+len)` of a file while the result lives: every
/// node's resize lock shared, then the range's stripes, in the order writes take them (as
/// the seeder's verification does).
fn lock_chunk(nodes: &[Arc<Node>], offset: u64, len: u64) -> impl Sized + '_ {
    let resize: Vec<_> = nodes.iter().map(|n| n.io.resize.read()).collect();
    let stripes: Vec<_> = nodes.iter().map(|n| n.io.lock_range(offset, len)).collect();
    (resize, stripes)
}

fn size_of(f: &File) -> io::Result<u64> {
    Ok(f.metadata()?.len())
}

/// The block-aligned ranges (merged when adjacent) where `a` and `b` differ.
fn differing_blocks(a: &[u8], b: &[u8]) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    let mut pos = 0;
    while pos < a.len() {
        let end = (pos + BLOCK).min(a.len());
        if a[pos..end] != b[pos..end] {
            match out.last_mut() {
                Some(last) if last.1 == pos => last.1 = end,
                _ => out.push((pos, end)),
            }
        }
        pos = end;
    }
    out
}

/// Rewrites `a[start..end]` (the active copy's bytes of the chunk at `offset`) on `o`,
/// makes it durable and reads it back into `b`; true when it now matches.
fn repair_extent(o: &File, a: &[u8], b: &mut [u8], offset: u64, start: usize, end: usize) -> bool {
    let at = offset + start as u64;
    if o.write_all_at(&a[start..end], at).is_err() || o.sync_data().is_err() {
        return false;
    }
    matches!(read_full(o, at, &mut b[start..end]), Ok(n) if n == end - start)
        && a[start..end] == b[start..end]
}

// ---------------------------------------------------------------- daemon side

/// A verification's progress and its thread (taken when the daemon waits for it).
type Running = (Arc<VerifyProgress>, Option<JoinHandle<()>>);

/// The verifications of a mount, one at a time per database, each on its own thread.
#[derive(Debug)]
pub struct Verifier {
    core: Arc<Core>,
    runs: Mutex<HashMap<String, Running>>,
    throttle: Option<Arc<crate::throttle::Throttle>>,
}

impl Verifier {
    /// No verification yet.
    pub fn new(core: Arc<Core>) -> Verifier {
        Verifier {
            core,
            runs: Mutex::new(HashMap::new()),
            throttle: None,
        }
    }

    /// Paces every verification through the host's rebuild throttle as well (its
    /// budget is shared with reseeds and resyncs).
    pub fn with_throttle(mut self, throttle: Arc<crate::throttle::Throttle>) -> Verifier {
        self.throttle = Some(throttle);
        self
    }

    /// Starts a verification of `db` (see `control::Request::Verify`).
    pub fn start(&self, db: &str, options: VerifyOptions) -> Result<VerifyStatus, String> {
        let d = self
            .core
            .pool()
            .database(db)
            .ok_or_else(|| format!("no database {db} in this mount"))?
            .clone();
        let mut runs = self.runs.lock();
        if runs.get(db).is_some_and(|(p, _)| p.is_running()) {
            return Err(format!(
                "a verification of {db} is already running: follow it with `reseedfs verify {db} --status`"
            ));
        }
        let progress = Arc::new(VerifyProgress::new(db, options));
        let (core, p) = (self.core.clone(), progress.clone());
        let single_copy = d
            .copies()
            .iter()
            .filter(|c| c.in_sync_volume().is_some())
            .count()
            <= 1;
        let stream = self
            .throttle
            .as_ref()
            .map(|t| t.stream(db, crate::throttle::StreamKind::Verify, single_copy));
        let thread = std::thread::Builder::new()
            .name(format!("verify-{db}"))
            .spawn(move || {
                let local: Box<dyn Pacer> = match options.max_bytes_per_s {
                    Some(rate) => Box::new(RateLimit::new(rate)),
                    None => Box::new(|_: u64| {}),
                };
                let pacer: Box<dyn Pacer> = Box::new(move |n: u64| {
                    local.take(n);
                    if let Some(s) = &stream {
                        s.take(n);
                    }
                });
                let _ = verify(&core, &d, options, pacer.as_ref(), &p);
            })
            .map_err(|e| format!("cannot start a verification thread: {e}"))?;
        let status = progress.snapshot();
        runs.insert(db.to_owned(), (progress, Some(thread)));
        Ok(status)
    }

    /// The running or last verification of `db`.
    pub fn status(&self, db: &str) -> Option<VerifyStatus> {
        self.runs.lock().get(db).map(|(p, _)| p.snapshot())
    }

    /// Cancels every running verification and waits for them (the daemon is stopping).
    pub fn stop(&self) {
        let threads: Vec<JoinHandle<()>> = {
            let mut runs = self.runs.lock();
            runs.values_mut()
                .filter_map(|(p, t)| {
                    p.cancel();
                    t.take()
                })
                .collect()
        };
        for t in threads {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    //! The verification on temp directories through the core (no kernel mount), with
    //! writers racing it.

    use std::ffi::OsStr;
    use std::os::unix::fs::FileExt as _;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::events::EventId;
    use crate::fs::SetAttr;
    use crate::fs::tests::{Bed, ME, db_folder, volume};

    fn pattern(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn options(repair: bool) -> VerifyOptions {
        VerifyOptions {
            repair,
            max_bytes_per_s: None,
        }
    }

    fn run_verify(core: &Core, repair: bool) -> Result<VerifyReport, VerifyError> {
        let db = core.pool().databases()[0].clone();
        let progress = VerifyProgress::new("db001", options(repair));
        let r = verify(core, &db, options(repair), &|_: u64| {}, &progress);
        let s = progress.snapshot();
        assert!(!progress.is_running());
        assert_eq!(s.report.is_some(), r.is_ok());
        r
    }

    #[test]
    fn writers_racing_the_verification_give_no_false_difference() {
        let bed = Bed::new("verify-race", 2, 2);
        let (core, sink) = bed.open();
        let dir = db_folder(&core);
        let (_, ha) = core
            .create(dir, OsStr::new("a"), 0o640, libc::O_RDWR, ME)
            .expect("create a");
        for i in 0..10u64 {
            core.write(ha, i << 20, &pattern(i, 1 << 20))
                .expect("fill a");
        }
        let (b, hb) = core
            .create(dir, OsStr::new("b"), 0o600, libc::O_RDWR, ME)
            .expect("create b");
        let sub = core
            .mkdir(dir, OsStr::new("sub"), 0o750, ME)
            .expect("mkdir");
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        // Random writes across chunk boundaries, with fsyncs.
        for w in 0..2u64 {
            let (core, stop) = (core.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let off = (n * 7919 * 4099 + w * 104_729) % (10 << 20);
                    core.write(ha, off, &pattern(n + (w << 32), 96 << 10))
                        .expect("write a");
                    if n % 16 == 0 {
                        core.fsync(ha, true).expect("fsync a");
                    }
                    n += 1;
                }
                n
            }));
        }
        // Appends, and a truncate now and then.
        {
            let (core, stop) = (core.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut n = 0u64;
                let mut end = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    core.write(hb, end, &pattern(n, 100_000)).expect("append b");
                    end += 100_000;
                    if n % 40 == 39 {
                        let size = SetAttr {
                            size: Some(12_345),
                            ..SetAttr::default()
                        };
                        core.setattr(b.node, Some(hb), size).expect("truncate b");
                        end = 12_345;
                    }
                    n += 1;
                }
                n
            }));
        }
        // Namespace churn: creates, renames over, unlinks, chmods, xattrs.
        {
            let (core, stop) = (core.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let name = format!("tmp{}", n % 7);
                    let (attr, h) = core
                        .create(sub.node, OsStr::new(&name), 0o644, libc::O_RDWR, ME)
                        .expect("create tmp");
                    core.write(h, 0, &pattern(n, 5000)).expect("write tmp");
                    core.release(h);
                    let mode = SetAttr {
                        mode: Some(0o600 | (n as u32 & 0o044)),
                        ..SetAttr::default()
                    };
                    core.setattr(attr.node, None, mode).expect("chmod tmp");
                    core.setxattr(attr.node, OsStr::new("user.n"), &n.to_le_bytes(), 0)
                        .expect("setxattr");
                    let to = format!("kept{}", n % 3);
                    core.rename(sub.node, OsStr::new(&name), sub.node, OsStr::new(&to), 0)
                        .expect("rename over");
                    if n % 5 == 0 {
                        let _ = core.remove(sub.node, OsStr::new(&format!("kept{}", n % 2)), false);
                    }
                    n += 1;
                }
                n
            }));
        }
        let mut runs = 0;
        let mut bytes = 0;
        while runs < 10 {
            let r = run_verify(&core, false).expect("verify");
            assert!(r.identical(), "false differences under writers: {r:#?}");
            assert!(r.files >= 2 && r.directories >= 2, "{r:#?}");
            bytes += r.bytes_compared;
            runs += 1;
        }
        stop.store(true, Ordering::Relaxed);
        let ops: Vec<u64> = threads
            .into_iter()
            .map(|t| t.join().expect("writer"))
            .collect();
        assert!(ops.iter().all(|&n| n > 0), "every writer ran: {ops:?}");
        assert!(bytes >= 10 * (10 << 20), "{bytes} bytes compared");
        // And once quiet, the copies are identical byte for byte.
        for rel in ["db001.db/a", "db001.db/b"] {
            let (x, y) = (bed.backing(1, rel), bed.backing(2, rel));
            assert!(
                std::fs::read(x).expect("a") == std::fs::read(y).expect("b"),
                "{rel}"
            );
        }
        let ids = sink.ids();
        assert!(ids.contains(&EventId::OnlineVerifyStarted), "{ids:?}");
        assert!(ids.contains(&EventId::OnlineVerifyCompleted), "{ids:?}");
        core.release(ha);
        core.release(hb);
    }

    #[test]
    fn differences_are_reported_then_repaired_from_the_active_copy() {
        let bed = Bed::new("verify-repair", 2, 2);
        let (core, sink) = bed.open();
        let dir = db_folder(&core);
        let (_, h) = core
            .create(dir, OsStr::new("data"), 0o640, libc::O_RDWR, ME)
            .expect("create data");
        for i in 0..9u64 {
            core.write(h, i << 20, &pattern(i, 1 << 20)).expect("fill");
        }
        for name in ["moded", "short", "xattr", "gone"] {
            let (_, h2) = core
                .create(dir, OsStr::new(name), 0o644, libc::O_RDWR, ME)
                .expect("create");
            core.write(h2, 0, &pattern(7, 50_000)).expect("write");
            core.release(h2);
        }
        core.fsync(h, false).expect("fsync");
        // Damage Volume2's copy behind the mount's back.
        let v2 = volume(&core, 2);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(bed.backing(2, "db001.db/data"))
            .expect("open backing");
        let hit = (5 << 20) + 100;
        f.write_all_at(b"garbage!", hit).expect("corrupt");
        f.write_all_at(&[0xAA; 5000], (8 << 20) + 4000)
            .expect("corrupt 2");
        f.sync_all().expect("fsync");
        v2.chmod(Path::new("db001.db/moded"), Mode::from_raw_mode(0o600))
            .expect("chmod");
        v2.truncate(Path::new("db001.db/short"), 10_000)
            .expect("truncate");
        v2.set_xattr(
            Path::new("db001.db/xattr"),
            OsStr::new("user.stray"),
            b"x",
            0,
        )
        .expect("setxattr");
        v2.remove(Path::new("db001.db/gone"), false)
            .expect("unlink");
        std::fs::write(bed.backing(2, "db001.db/extra"), b"extra").expect("extra");

        let r = run_verify(&core, false).expect("verify");
        assert!(!r.identical() && !r.all_repaired(), "{r:#?}");
        let mut extents: Vec<(&str, &str, u64, u64)> = r
            .extents
            .iter()
            .map(|e| (e.path.as_str(), e.volume.as_str(), e.offset, e.len))
            .collect();
        extents.sort();
        assert_eq!(
            extents,
            [
                ("db001.db/data", "Volume2", 5 << 20, 4096),
                // 4000..9000 touches blocks 0, 1 and 2 of the ninth MiB: one extent.
                ("db001.db/data", "Volume2", 8 << 20, 3 * 4096),
                // The cut tail of the truncated file (it reads as zeros there), from the
                // block holding byte 10000 to the end of the file.
                ("db001.db/short", "Volume2", 8192, 50_000 - 8192),
            ],
            "{r:#?}"
        );
        let tree: Vec<(&str, TreeField)> =
            r.tree.iter().map(|t| (t.path.as_str(), t.field)).collect();
        for want in [
            ("db001.db/moded", TreeField::Mode),
            ("db001.db/short", TreeField::Size),
            ("db001.db/xattr", TreeField::Xattrs),
            ("db001.db/gone", TreeField::Missing),
            ("db001.db/extra", TreeField::Extra),
        ] {
            assert!(tree.contains(&want), "{want:?} not in {tree:?}");
        }
        let moded = r
            .tree
            .iter()
            .find(|t| t.field == TreeField::Mode)
            .expect("mode");
        assert_eq!(
            (moded.active.as_str(), moded.other.as_str()),
            ("0644", "0600")
        );

        // Repair, while a writer keeps writing another file.
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (core, stop) = (core.clone(), stop.clone());
            let (_, hot) = core
                .create(dir, OsStr::new("hot"), 0o644, libc::O_RDWR, ME)
                .expect("create hot");
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    core.write(hot, (n % 64) * 65536, &pattern(n, 65536))
                        .expect("hot");
                    n += 1;
                }
                core.release(hot);
            })
        };
        let r = run_verify(&core, true).expect("repair");
        stop.store(true, Ordering::Relaxed);
        writer.join().expect("writer");
        assert!(
            !r.all_repaired(),
            "missing and extra names are not repaired: {r:#?}"
        );
        for e in &r.extents {
            assert!(e.repaired, "{e:?}");
        }
        for t in &r.tree {
            assert_eq!(t.repaired, t.field.repairable(), "{t:?}");
        }
        assert!(!r.tree.iter().any(|t| t.path == "db001.db/hot"), "{r:#?}");

        // What repair cannot do, by hand; then everything matches.
        std::fs::remove_file(bed.backing(2, "db001.db/extra")).expect("rm extra");
        std::fs::copy(
            bed.backing(1, "db001.db/gone"),
            bed.backing(2, "db001.db/gone"),
        )
        .expect("copy gone");
        let r = run_verify(&core, false).expect("verify again");
        assert!(r.identical(), "{r:#?}");
        for name in ["data", "short", "moded"] {
            let rel = format!("db001.db/{name}");
            assert!(
                std::fs::read(bed.backing(1, &rel)).expect("1")
                    == std::fs::read(bed.backing(2, &rel)).expect("2"),
                "{rel} differs after the repair"
            );
        }
        let completed: Vec<_> = sink
            .0
            .lock()
            .iter()
            .filter(|e| e.id == EventId::OnlineVerifyCompleted)
            .map(|e| e.fields["mismatched_extents"].as_u64())
            .collect();
        assert_eq!(completed, [Some(3), Some(3), Some(0)]);
        core.release(h);
    }

    #[test]
    fn a_lone_copy_in_sync_is_refused() {
        let bed = Bed::new("verify-lone", 2, 2);
        let (core, _) = bed.open();
        let dir = db_folder(&core);
        let (_, h) = core
            .create(dir, OsStr::new("f"), 0o644, libc::O_RDWR, ME)
            .expect("create");
        volume(&core, 2).inject_fault(libc::EIO);
        core.write(h, 0, b"x").expect("write hides the failure");
        let e = run_verify(&core, false).expect_err("nothing to compare");
        assert!(matches!(e, VerifyError::Refused(_)), "{e}");
        assert!(e.to_string().contains("Volume1"), "{e}");
        core.release(h);
    }

    #[test]
    fn rates_parse_and_pace() {
        assert_eq!(parse_rate("200MiB/s"), Ok(Some(200 << 20)));
        assert_eq!(parse_rate("1 GiB/s"), Ok(Some(1 << 30)));
        assert_eq!(parse_rate("500MB"), Ok(Some(500_000_000)));
        assert_eq!(parse_rate("unlimited"), Ok(None));
        assert!(parse_rate("fast").is_err());
        let limit = RateLimit::new(20 << 20);
        let t = Instant::now();
        for _ in 0..4 {
            limit.take(1 << 20);
        }
        // 4 MiB at 20 MiB/s: 200 ms.
        let secs = t.elapsed().as_secs_f64();
        assert!((0.19..1.0).contains(&secs), "{secs} s");
    }
}
