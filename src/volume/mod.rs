//! One backing volume, reached through one interface: a [`Backend`] does the operations
//! (the Unix one, [`unix::UnixBackend`]; on Windows `platform/windows/volume.rs`), and the [`Volume`] front in this module adds
//! what every backend shares: the volume's health (`failed` once an I/O error marked it),
//! its error and byte counters, and the latency the database's requests see on it
//! ([`Volume::observe`]), which the rebuild throttle ([`crate::throttle`]) watches.
//!
//! Every path is relative to the volume root and cannot leave it (the backend's promise);
//! every operation of reseedfs on a volume, file data included, passes through a method of
//! [`Volume`], so that a wrapper around the backend sees all of them: the fault-injecting
//! one of the tests (`faults`, compiled only with `cfg(test)` or the `failpoints`
//! feature) today.
//!
//! How a call reaches the volume and is waited for until its deadline is `call.rs`; the
//! helpers for backing files held outside a volume (the reseed's, the verifications') are
//! `file.rs`.
//!
//! The types of the interface ([`Stat`], [`Mode`], [`OFlags`], ...) are named through this
//! module: the core never names the OS crate that defines them (rustix's on Unix, the
//! module `portable`'s elsewhere, with the same names and Linux values).

mod call;
#[cfg(any(test, feature = "failpoints"))]
pub mod faults;
mod file;
pub mod lane;
#[cfg(any(not(unix), test))]
pub mod portable;
#[cfg(unix)]
pub mod unix;

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::names::VolumeName;
use call::timeout;
use lane::Lane;

pub use call::{
    Call, StartedCall, chain, finish_all, finish_first, held_back, makes_here, on_this_thread,
    serve_requests, serving_requests, within_deadlines,
};
pub use file::{
    AlignedBuf, DIRECT_ALIGN, Extent, advise_file, data_extents, is_direct_aligned,
    preallocate_keep_size, punch_hole, read_full, stat_times, write_direct,
};

#[cfg(not(unix))]
pub use portable::{
    Advice, FallocateFlags, FileExt, FileType, Mode, OFlags, OsStrExt, RenameFlags, SeekFrom, Stat,
    StatVfs, Timespec, Timestamps, posix,
};
#[cfg(unix)]
pub use rustix::fs::{
    Advice, FallocateFlags, FileType, Mode, OFlags, RenameFlags, SeekFrom, Stat, StatVfs, Timespec,
    Timestamps,
};
#[cfg(unix)]
pub use std::os::unix::{ffi::OsStrExt, fs::FileExt};

/// POSIX constants the core uses that libc does not define on every OS (libc's own on
/// Unix; Linux values elsewhere, see `src/volume/portable.rs`).
#[cfg(unix)]
pub mod posix {
    pub use libc::{
        O_ACCMODE, O_APPEND, O_CREAT, O_DIRECT, O_DIRECTORY, O_DSYNC, O_EXCL, O_LARGEFILE,
        O_NOATIME, O_NONBLOCK, O_RDONLY, O_RDWR, O_SYNC, O_TRUNC, O_WRONLY, S_ISGID, S_ISUID,
        S_IXGRP, SEEK_DATA, SEEK_HOLE, UTIME_NOW, UTIME_OMIT,
    };
}

/// The operations of one kind of volume. Every path is relative to the volume root and
/// must not leave it (neither `..` nor a symlink may lead out); a symlink is never
/// followed. Any call may block on the disk. [`Volume`] is the front every caller uses.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// `lstat` of `rel` (the volume root for an empty path).
    fn stat(&self, rel: &Path) -> io::Result<Stat>;
    /// Opens `rel` (never following a symlink); `mode` applies with `O_CREAT`.
    fn open(&self, rel: &Path, flags: OFlags, mode: Mode) -> io::Result<File>;
    /// Creates a directory.
    fn mkdir(&self, rel: &Path, mode: Mode) -> io::Result<()>;
    /// Creates a special file or a regular file without opening it.
    fn mknod(&self, rel: &Path, kind: FileType, mode: Mode, dev: u64) -> io::Result<()>;
    /// Creates a symlink at `rel` pointing to `target` (stored as given).
    fn symlink(&self, target: &Path, rel: &Path) -> io::Result<()>;
    /// Reads the symlink at `rel`.
    fn readlink(&self, rel: &Path) -> io::Result<Vec<u8>>;
    /// Removes a file (`dir == false`) or an empty directory.
    fn remove(&self, rel: &Path, dir: bool) -> io::Result<()>;
    /// Renames `from` to `to` with `renameat2` flags.
    fn rename(&self, from: &Path, to: &Path, flags: RenameFlags) -> io::Result<()>;
    /// Makes `to` a hard link of `from`.
    fn link(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// `chmod`; refused with `EOPNOTSUPP` on a symlink, as Linux does.
    fn chmod(&self, rel: &Path, mode: Mode) -> io::Result<()>;
    /// `lchown`.
    fn chown(&self, rel: &Path, uid: Option<u32>, gid: Option<u32>) -> io::Result<()>;
    /// Sets the access and modification times (of a symlink itself, not its target).
    fn set_times(&self, rel: &Path, times: &Timestamps) -> io::Result<()>;
    /// Lists a directory (without `.` and `..`).
    fn read_dir(&self, rel: &Path) -> io::Result<Vec<DirEntry>>;
    /// Space and inodes of the volume's filesystem.
    fn statvfs(&self) -> io::Result<StatVfs>;
    /// Reads xattr `key` of `rel` into `buf` (an empty `buf` asks for the size).
    fn get_xattr(&self, rel: &Path, key: &OsStr, buf: &mut [u8]) -> io::Result<usize>;
    /// Lists the xattr names of `rel` into `buf` (an empty `buf` asks for the size).
    fn list_xattr(&self, rel: &Path, buf: &mut [u8]) -> io::Result<usize>;
    /// Sets xattr `key` of `rel`.
    fn set_xattr(&self, rel: &Path, key: &OsStr, value: &[u8], flags: i32) -> io::Result<()>;
    /// Removes xattr `key` of `rel`.
    fn remove_xattr(&self, rel: &Path, key: &OsStr) -> io::Result<()>;
    /// Flushes everything written to the volume's filesystem.
    fn syncfs(&self) -> io::Result<()>;
    /// Reads from an open file at `offset` (short only at end of file or on a signal).
    fn read_at(&self, f: &File, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Reads what the page cache holds of `[offset, offset+buf.len())` without waiting for
    /// the disk (`RWF_NOWAIT`): `WouldBlock` when the disk would be needed. Called on the
    /// caller's thread, never on the lane. Backends without such a read say `WouldBlock`.
    fn read_cached(&self, f: &File, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let _ = (f, offset, buf);
        Err(io::ErrorKind::WouldBlock.into())
    }
    /// Writes all of `data` to an open file at `offset`.
    fn write_all_at(&self, f: &File, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Writes all of `data` at the end of a file opened for appending.
    fn append(&self, f: &File, data: &[u8]) -> io::Result<()>;
    /// `fsync` (`fdatasync` when `data_only`).
    fn sync(&self, f: &File, data_only: bool) -> io::Result<()>;
    /// `ftruncate`.
    fn set_len(&self, f: &File, size: u64) -> io::Result<()>;
    /// `fallocate` with its mode bits.
    fn fallocate(&self, f: &File, mode: FallocateFlags, offset: u64, len: u64) -> io::Result<()>;
    /// `lseek` (`SEEK_DATA`, `SEEK_HOLE`, ...).
    fn seek(&self, f: &File, pos: SeekFrom) -> io::Result<u64>;
    /// `fstat`.
    fn fstat(&self, f: &File) -> io::Result<Stat>;
    /// `fchown`.
    fn fchown(&self, f: &File, uid: Option<u32>, gid: Option<u32>) -> io::Result<()>;
    /// `fchmod`.
    fn fchmod(&self, f: &File, mode: Mode) -> io::Result<()>;
    /// `futimens`: the access and modification times of an open file.
    fn set_file_times(&self, f: &File, times: &Timestamps) -> io::Result<()>;
    /// The file `f` is open on, opened again with `flags` (a new open file description
    /// of the same inode, whatever its name is now, even when it has none left).
    /// `Unsupported` where there is no way to do that.
    fn reopen(&self, f: &File, flags: OFlags) -> io::Result<File>;
    /// An access-pattern hint (`posix_fadvise`); `len` 0 means to the end.
    fn advise(&self, f: &File, offset: u64, len: u64, advice: Advice) -> io::Result<()>;
    /// Starts writing `[offset, offset+len)` of `f` back to the disk without waiting.
    fn start_writeback(&self, f: &File, offset: u64, len: u64) -> io::Result<()>;
    /// The file `f` is open on, opened again with `O_DIRECT` and `f`'s access mode
    /// (`Unsupported` where there is no way to do that).
    fn reopen_direct(&self, f: &File) -> io::Result<File>;
    /// Hands `chain` (each write after the one before it succeeded) to the kernel from the
    /// calling thread, without a lane thread in between, when the backend can (io_uring on
    /// Linux); the caller waits for it on the same thread with [`Started::wait_until`].
    /// `None`: not possible now; the caller uses the lane.
    fn start_writes(&self, chain: Vec<ChainWrite>) -> Option<Box<dyn Started>> {
        let _ = chain;
        None
    }
}

/// Bytes a write hands over, kept alive until the write is done (or forever, when the
/// disk never answers).
pub type Bytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// One write of a chain ([`Backend::start_writes`]).
#[derive(Clone)]
pub struct ChainWrite {
    /// The file written.
    pub file: VolFile,
    /// Where.
    pub offset: u64,
    /// What.
    pub data: Bytes,
}

/// Writes handed to the kernel by [`Backend::start_writes`].
pub trait Started: std::fmt::Debug {
    /// Waits until every write is done (`Ok`), one failed (the first error;
    /// `Interrupted` for a short write), or `deadline` passed (`None`: the writes are
    /// still on their way; wait again, or drop them to abandon them: the kernel may still
    /// make them).
    fn wait_until(&mut self, deadline: Instant) -> Option<io::Result<()>>;
}

/// A file of a volume, open: shared by the callers and the volume's lane (a call that
/// outlives its caller's deadline keeps the descriptor open until it returns).
#[derive(Debug, Clone)]
pub struct VolFile(Arc<File>);

impl VolFile {
    /// Wraps an open file.
    pub fn new(f: File) -> VolFile {
        VolFile(Arc::new(f))
    }
}

#[cfg(unix)]
impl std::os::fd::AsFd for VolFile {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl std::ops::Deref for VolFile {
    type Target = File;
    fn deref(&self) -> &File {
        &self.0
    }
}

/// How long a volume may take: past `io_timeout` an operation fails as a dead disk's
/// would (see [`lane`]); past `slow_request` it is counted as slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The deadline of every operation.
    pub io_timeout: Duration,
    /// An operation slower than this is counted as slow (the volume is not failed).
    pub slow_request: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            io_timeout: Duration::from_secs(10),
            slow_request: Duration::from_secs(1),
        }
    }
}

/// A volume did not answer an operation within its deadline.
#[derive(Debug, thiserror::Error)]
#[error("volume {volume} did not answer {op} within {}", humantime::format_duration(*.after))]
pub struct Timeout {
    /// The volume.
    pub volume: String,
    /// The operation.
    pub op: &'static str,
    /// The deadline it missed.
    pub after: Duration,
}

/// An operation on a volume panicked on the volume's lane (a bug). The caller treats it as
/// a failed I/O of the volume ([`is_media_error`]): the volume is failed, a write
/// completes from the other copies, and the failure path records the panic (event 3060).
#[derive(Debug, thiserror::Error)]
#[error("{op} on volume {volume} panicked ({message})")]
pub struct Panicked {
    /// The volume.
    pub volume: String,
    /// The operation.
    pub op: &'static str,
    /// The panic's message.
    pub message: String,
}

/// A backing volume (`<volumes_root>/VolumeN`): its backend, its lane, health and
/// counters.
#[derive(Debug)]
pub struct Volume {
    name: VolumeName,
    root: PathBuf,
    backend: Arc<dyn Backend>,
    lane: Lane,
    limits: Limits,
    /// The faults armed on this volume (tests and the demo).
    #[cfg(any(test, feature = "failpoints"))]
    faults: Arc<faults::Faults>,
    failed: AtomicBool,
    io_errors: AtomicU64,
    latency: Latency,
    slow: Slow,
    written_bytes: AtomicU64,
    /// Says whether this volume holds the last copy in sync of a database (the pool).
    keeper: std::sync::OnceLock<std::sync::Weak<dyn Keeper>>,
}

/// Knows whether a volume holds the last copy in sync of a database: the pool.
pub trait Keeper: Send + Sync {
    /// Whether failing `volume` would leave a database with no copy in sync.
    fn holds_last_copy(&self, volume: &VolumeName) -> bool;
}

/// Slow operations of a volume.
#[derive(Debug)]
struct Slow {
    /// When the volume was opened: the origin of `since_ms`.
    opened: Instant,
    /// Operations slower than `slow_request`.
    count: AtomicU64,
    /// Since when (ms after `opened`, plus one) every operation was slow; 0: the last
    /// one was not.
    since_ms: AtomicU64,
}

/// The latency of the database's requests on a volume: running totals, and a baseline
/// learned while no rebuild (reseed, resync, verify) touches the volume.
#[derive(Debug, Default)]
struct Latency {
    /// Requests observed.
    count: AtomicU64,
    /// Their summed latency, in nanoseconds.
    sum_ns: AtomicU64,
    /// Moving average (1/64 per request) of the latency while no rebuild runs; 0: none yet.
    baseline_ns: AtomicU64,
    /// Rebuilds touching the volume now ([`RebuildMark`]s alive).
    rebuilds: AtomicU32,
}

/// Marks a volume as touched by a rebuild while it lives: the volume's latency baseline
/// stops learning, so that it keeps describing the volume without a rebuild.
#[derive(Debug)]
pub struct RebuildMark(Arc<Volume>);

impl RebuildMark {
    /// The volume marked.
    pub fn volume(&self) -> &Arc<Volume> {
        &self.0
    }
}

impl Drop for RebuildMark {
    fn drop(&mut self) {
        self.0.latency.rebuilds.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One directory entry of a backing directory.
#[derive(Debug, Clone)]
pub struct DirEntry {
    /// The entry's name.
    pub name: OsString,
    /// Its type.
    pub kind: FileType,
}

/// The backend of this system for the volume directory `dir`.
#[cfg(unix)]
fn open_backend(dir: &Path) -> io::Result<unix::UnixBackend> {
    unix::UnixBackend::open(dir)
}

/// The backend of this system for the volume directory `dir`.
#[cfg(windows)]
fn open_backend(dir: &Path) -> io::Result<crate::sys::volume::WindowsBackend> {
    crate::sys::volume::WindowsBackend::open(dir)
}

/// The identity of the filesystem that holds `path` (its `meta`): the device number on
/// Unix, the volume serial number on Windows. Two volumes with one identity sit on one
/// disk.
pub fn filesystem_id(path: &Path, meta: &std::fs::Metadata) -> io::Result<u64> {
    #[cfg(unix)]
    {
        let _ = path;
        Ok(std::os::unix::fs::MetadataExt::dev(meta))
    }
    #[cfg(windows)]
    {
        let _ = meta;
        crate::sys::volume::filesystem_id(path)
    }
}

/// The relative path of a child: `parent/name` (or `name` at the volume root).
pub fn child_path(parent: &Path, name: &OsStr) -> PathBuf {
    if parent.as_os_str().is_empty() {
        PathBuf::from(name)
    } else {
        parent.join(name)
    }
}

fn split(rel: &Path) -> io::Result<(&Path, &OsStr)> {
    match (rel.parent(), rel.file_name()) {
        (Some(parent), Some(name)) => Ok((parent, name)),
        _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
    }
}

impl Volume {
    /// Opens the volume directory `root` under the name `name` (`Volume1`), with the
    /// backend of this system and the default [`Limits`].
    pub fn open(name: &str, root: &Path) -> io::Result<Volume> {
        Volume::open_with(name, root, Limits::default())
    }

    /// Opens the volume directory `root` under the name `name`, with `limits`. The open
    /// itself has the deadline too: a hung disk does not hold up a mount or a probe.
    pub fn open_with(name: &str, root: &Path, limits: Limits) -> io::Result<Volume> {
        let name = VolumeName::new(name).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: {e}", root.display()),
            )
        })?;
        let name = &name;
        let lane = Lane::new(name);
        let dir = root.to_owned();
        let backend = lane
            .run(limits.io_timeout, move || open_backend(&dir))
            .map_err(|_| timeout(name, "open", limits.io_timeout))??;
        Ok(Volume::assemble(
            name,
            root,
            Arc::new(backend),
            lane,
            limits,
        ))
    }

    /// A volume named `name` at `root` served by `backend`.
    pub fn with_backend(
        name: &VolumeName,
        root: &Path,
        backend: Arc<dyn Backend>,
        limits: Limits,
    ) -> Volume {
        Volume::assemble(name, root, backend, Lane::new(name), limits)
    }

    fn assemble(
        name: &VolumeName,
        root: &Path,
        backend: Arc<dyn Backend>,
        lane: Lane,
        limits: Limits,
    ) -> Volume {
        #[cfg(any(test, feature = "failpoints"))]
        let (backend, faults) = {
            let faults = Arc::new(faults::Faults::default());
            let wrapped: Arc<dyn Backend> = Arc::new(faults::Faulty::new(backend, faults.clone()));
            (wrapped, faults)
        };
        Volume {
            name: name.clone(),
            root: root.to_owned(),
            backend,
            lane,
            limits,
            #[cfg(any(test, feature = "failpoints"))]
            faults,
            failed: AtomicBool::new(false),
            io_errors: AtomicU64::new(0),
            latency: Latency::default(),
            slow: Slow {
                opened: Instant::now(),
                count: AtomicU64::new(0),
                since_ms: AtomicU64::new(0),
            },
            written_bytes: AtomicU64::new(0),
            keeper: std::sync::OnceLock::new(),
        }
    }

    /// Tells the volume who knows whether it holds a database's last copy in sync (the
    /// pool; once).
    pub fn set_keeper(&self, keeper: std::sync::Weak<dyn Keeper>) {
        let _ = self.keeper.set(keeper);
    }

    /// Whether the calling thread serves requests and this volume holds the last copy in
    /// sync of a database: a late call is then waited for on ([`serve_requests`]).
    fn waits_on_late(&self) -> bool {
        serving_requests()
            && self
                .keeper
                .get()
                .and_then(std::sync::Weak::upgrade)
                .is_some_and(|k| k.holds_last_copy(&self.name))
    }

    /// The deadline of a call submitted now.
    pub fn deadline(&self) -> Instant {
        Instant::now() + self.limits.io_timeout
    }

    /// The volume's limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn note_duration(&self, took: Duration) {
        let s = &self.slow;
        if took > self.limits.slow_request {
            s.count.fetch_add(1, Ordering::Relaxed);
            if s.since_ms.load(Ordering::Relaxed) == 0 {
                let now = u64::try_from(s.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
                let _ =
                    s.since_ms
                        .compare_exchange(0, now + 1, Ordering::Relaxed, Ordering::Relaxed);
            }
        } else if s.since_ms.load(Ordering::Relaxed) != 0 {
            s.since_ms.store(0, Ordering::Relaxed);
        }
    }

    /// Operations slower than `slow_request` since the volume was opened.
    pub fn slow_requests(&self) -> u64 {
        self.slow.count.load(Ordering::Relaxed)
    }

    /// For how long every operation on the volume has been slow (`None`: the last one
    /// was not).
    pub fn slow_for(&self) -> Option<Duration> {
        match self.slow.since_ms.load(Ordering::Relaxed) {
            0 => None,
            since => {
                let now = self.slow.opened.elapsed();
                Some(now.saturating_sub(Duration::from_millis(since - 1)))
            }
        }
    }

    /// Records the latency of one database request served by this volume (a read, a
    /// write or an fsync through the mount). Two relaxed atomic adds, and the baseline's
    /// update while no rebuild touches the volume.
    pub fn observe(&self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let l = &self.latency;
        l.count.fetch_add(1, Ordering::Relaxed);
        l.sum_ns.fetch_add(ns, Ordering::Relaxed);
        if l.rebuilds.load(Ordering::Relaxed) == 0 {
            // Racing updates may lose one another's sample: harmless for an average.
            let old = l.baseline_ns.load(Ordering::Relaxed);
            let new = if old == 0 {
                ns.max(1)
            } else {
                (old - old / 64).saturating_add(ns / 64).max(1)
            };
            l.baseline_ns.store(new, Ordering::Relaxed);
        }
    }

    /// Runs `request` and records how long it took ([`Volume::observe`]).
    #[inline]
    pub fn timed<T>(&self, request: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let result = request();
        self.observe(started.elapsed());
        result
    }

    /// Requests observed and their summed latency in nanoseconds, since the volume was
    /// opened: the difference of two readings gives the mean latency in between.
    pub fn latency_totals(&self) -> (u64, u64) {
        (
            self.latency.count.load(Ordering::Relaxed),
            self.latency.sum_ns.load(Ordering::Relaxed),
        )
    }

    /// The typical request latency measured while no rebuild touched the volume, if any
    /// request was observed then.
    pub fn baseline_latency(&self) -> Option<Duration> {
        match self.latency.baseline_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    /// Marks the volume as touched by a rebuild until the mark is dropped.
    pub fn mark_rebuild(self: &Arc<Self>) -> RebuildMark {
        self.latency.rebuilds.fetch_add(1, Ordering::AcqRel);
        RebuildMark(self.clone())
    }

    /// `Volume1`.
    pub fn name(&self) -> &VolumeName {
        &self.name
    }

    /// The volume's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// True once an I/O error (or a missed deadline) marked the volume failed. A failed
    /// volume answers every later operation with `EIO` at once; a volume that comes back
    /// is opened anew.
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Marks the volume failed; returns whether it was already.
    pub fn mark_failed(&self) -> bool {
        self.failed.swap(true, Ordering::AcqRel)
    }

    /// Counts one I/O error seen on this volume.
    pub fn count_io_error(&self) {
        self.io_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// I/O errors seen on this volume since the mount.
    pub fn io_errors(&self) -> u64 {
        self.io_errors.load(Ordering::Relaxed)
    }

    /// Counts `n` bytes of file data written to this volume's copies through the mount.
    #[inline]
    pub fn count_written(&self, n: usize) {
        self.written_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Bytes of file data written to this volume's copies through the mount.
    pub fn written_bytes(&self) -> u64 {
        self.written_bytes.load(Ordering::Relaxed)
    }

    /// The faults armed on this volume: every later operation, or every read of file
    /// data, fails with a chosen errno (tests, and the demo's simulated disk death).
    #[cfg(any(test, feature = "failpoints"))]
    pub fn faults(&self) -> &faults::Faults {
        &self.faults
    }

    /// Makes every later operation fail with `errno` (0 clears it): a dying disk.
    #[cfg(any(test, feature = "failpoints"))]
    pub fn inject_fault(&self, errno: i32) {
        self.faults.fail_all(errno);
    }

    /// Makes the next write of file data fail with `errno` once its first `land` bytes
    /// are written (0 clears it): a volume that fills up during that write.
    #[cfg(any(test, feature = "failpoints"))]
    pub fn inject_write_fault(&self, errno: i32, land: u64) {
        self.faults.fail_writes(errno, land);
    }

    /// Makes every later read of file data fail with `errno` (0 clears it): unreadable
    /// sectors while writes still work.
    #[cfg(any(test, feature = "failpoints"))]
    pub fn inject_read_fault(&self, errno: i32) {
        self.faults.fail_reads(errno);
    }

    /// The seam of bulk reads of file data that bypass [`Volume::read_at`] (a reseed
    /// engine reading the source's descriptors itself): fails as an armed read fault
    /// says. Always `Ok` in the product, where nothing can be armed.
    #[inline]
    pub fn check_read(&self) -> io::Result<()> {
        #[cfg(any(test, feature = "failpoints"))]
        self.faults.check_read()?;
        Ok(())
    }

    /// `lstat` of `rel` (the volume root for an empty path).
    pub fn stat(&self, rel: &Path) -> io::Result<Stat> {
        let rel = rel.to_owned();
        self.call("stat", move |b| b.stat(&rel))
    }

    /// Opens `rel` (never following a symlink); `mode` applies with `O_CREAT`.
    pub fn open_file(&self, rel: &Path, flags: OFlags, mode: Mode) -> io::Result<VolFile> {
        let rel = rel.to_owned();
        self.call("open", move |b| b.open(&rel, flags, mode).map(VolFile::new))
    }

    /// Creates a directory.
    pub fn mkdir(&self, rel: &Path, mode: Mode) -> io::Result<()> {
        let rel = rel.to_owned();
        self.call("mkdir", move |b| b.mkdir(&rel, mode))
    }

    /// Creates a special file or a regular file without opening it.
    pub fn mknod(&self, rel: &Path, kind: FileType, mode: Mode, dev: u64) -> io::Result<()> {
        let rel = rel.to_owned();
        self.call("mknod", move |b| b.mknod(&rel, kind, mode, dev))
    }

    /// Creates a symlink at `rel` pointing to `target` (stored as given).
    pub fn symlink(&self, target: &Path, rel: &Path) -> io::Result<()> {
        let (target, rel) = (target.to_owned(), rel.to_owned());
        self.call("symlink", move |b| b.symlink(&target, &rel))
    }

    /// Reads the symlink at `rel`.
    pub fn readlink(&self, rel: &Path) -> io::Result<Vec<u8>> {
        let rel = rel.to_owned();
        self.call("readlink", move |b| b.readlink(&rel))
    }

    /// Removes a file (`dir == false`) or an empty directory.
    pub fn remove(&self, rel: &Path, dir: bool) -> io::Result<()> {
        let rel = rel.to_owned();
        self.call("unlink", move |b| b.remove(&rel, dir))
    }

    /// Renames `from` to `to` with `renameat2` flags.
    pub fn rename(&self, from: &Path, to: &Path, flags: RenameFlags) -> io::Result<()> {
        let (from, to) = (from.to_owned(), to.to_owned());
        self.call("rename", move |b| b.rename(&from, &to, flags))
    }

    /// Makes `to` a hard link of `from`.
    pub fn link(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (from, to) = (from.to_owned(), to.to_owned());
        self.call("link", move |b| b.link(&from, &to))
    }

    /// `chmod`; refused with `EOPNOTSUPP` on a symlink, as Linux does.
    pub fn chmod(&self, rel: &Path, mode: Mode) -> io::Result<()> {
        let rel = rel.to_owned();
        self.call("chmod", move |b| b.chmod(&rel, mode))
    }

    /// `lchown`.
    pub fn chown(&self, rel: &Path, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
        let rel = rel.to_owned();
        self.call("chown", move |b| b.chown(&rel, uid, gid))
    }

    /// Sets the access and modification times, never following a symlink.
    pub fn set_times(&self, rel: &Path, times: &Timestamps) -> io::Result<()> {
        let rel = rel.to_owned();
        let times = Timestamps {
            last_access: times.last_access,
            last_modification: times.last_modification,
        };
        self.call("utimens", move |b| b.set_times(&rel, &times))
    }

    /// `truncate` by path.
    pub fn truncate(&self, rel: &Path, size: u64) -> io::Result<()> {
        let f = self.open_file(rel, OFlags::WRONLY, Mode::empty())?;
        self.set_len(&f, size)
    }

    /// Lists a directory (without `.` and `..`).
    pub fn read_dir(&self, rel: &Path) -> io::Result<Vec<DirEntry>> {
        let rel = rel.to_owned();
        self.call("readdir", move |b| b.read_dir(&rel))
    }

    /// `statvfs` of the volume.
    pub fn statvfs(&self) -> io::Result<StatVfs> {
        self.call("statvfs", |b| b.statvfs())
    }

    /// Reads xattr `key` of `rel` into `buf` (an empty `buf` asks for the size).
    pub fn get_xattr(&self, rel: &Path, key: &OsStr, buf: &mut [u8]) -> io::Result<usize> {
        let (rel, key, len) = (rel.to_owned(), key.to_owned(), buf.len());
        let (n, bytes) = self.call("getxattr", move |b| {
            let mut out = vec![0u8; len];
            let n = b.get_xattr(&rel, &key, &mut out)?;
            Ok((n, out))
        })?;
        copy_out(buf, &bytes, n);
        Ok(n)
    }

    /// Lists the xattr names of `rel` into `buf` (an empty `buf` asks for the size).
    pub fn list_xattr(&self, rel: &Path, buf: &mut [u8]) -> io::Result<usize> {
        let (rel, len) = (rel.to_owned(), buf.len());
        let (n, bytes) = self.call("listxattr", move |b| {
            let mut out = vec![0u8; len];
            let n = b.list_xattr(&rel, &mut out)?;
            Ok((n, out))
        })?;
        copy_out(buf, &bytes, n);
        Ok(n)
    }

    /// Sets xattr `key` of `rel`.
    pub fn set_xattr(&self, rel: &Path, key: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
        let (rel, key, value) = (rel.to_owned(), key.to_owned(), value.to_vec());
        self.call("setxattr", move |b| b.set_xattr(&rel, &key, &value, flags))
    }

    /// Removes xattr `key` of `rel`.
    pub fn remove_xattr(&self, rel: &Path, key: &OsStr) -> io::Result<()> {
        let (rel, key) = (rel.to_owned(), key.to_owned());
        self.call("removexattr", move |b| b.remove_xattr(&rel, &key))
    }

    /// Flushes everything written to the volume's filesystem (`syncfs`).
    pub fn syncfs(&self) -> io::Result<()> {
        self.call("syncfs", |b| b.syncfs())
    }

    /// Hands a `syncfs` to the lane (see [`Volume::submit`]).
    pub fn submit_syncfs(&self) -> Call<()> {
        self.submit("syncfs", |b| b.syncfs())
    }

    /// Reads from `f` (a file of this volume) at `offset` until `buf` is full or end of
    /// file comes first; returns the bytes read. What the page cache holds is read here,
    /// at once; the rest on the lane, within the deadline.
    pub fn read_at(&self, f: &VolFile, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if self.is_failed() {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let cached = match self.backend.read_cached(f, offset, buf) {
            Ok(n) if n == buf.len() => return Ok(n),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        let rest = &mut buf[cached..];
        let (f, at, len) = (f.clone(), offset + cached as u64, rest.len());
        // O_DIRECT wants an aligned buffer: read into one, aligned in a larger Vec.
        let (bytes, start, n) = self.call("read", move |b| {
            let mut out = vec![0u8; len + DIRECT_ALIGN];
            let start = out.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
            let n = read_full_with(b, &f, at, &mut out[start..start + len])?;
            Ok((out, start, n))
        })?;
        rest[..n].copy_from_slice(&bytes[start..start + n]);
        Ok(cached + n)
    }

    /// Writes all of `data` to `f` at `offset`.
    pub fn write_all_at(&self, f: &VolFile, offset: u64, data: &[u8]) -> io::Result<()> {
        let data: Arc<[u8]> = Arc::from(data);
        let call = self.submit_write(f, offset, data);
        self.finish("write", call, self.deadline())
    }

    /// Hands a write of `data` at `offset` of `f` to the lane (see [`Volume::submit`]).
    pub fn submit_write<D>(&self, f: &VolFile, offset: u64, data: Arc<D>) -> Call<()>
    where
        D: AsRef<[u8]> + Send + Sync + ?Sized + 'static,
    {
        let f = f.clone();
        self.submit("write", move |b| {
            b.write_all_at(&f, offset, (*data).as_ref())
        })
    }

    /// Hands a write of `data` (page-aligned, at an aligned `offset`) to the lane, to go
    /// `O_DIRECT` through `direct` (the same file reopened by [`Volume::reopen_direct`]):
    /// an `O_DIRECT` caller's data is not cached again here. Where the backing filesystem
    /// refuses it (`EINVAL`: a logical block larger than [`DIRECT_ALIGN`]), the write goes
    /// through the page cache of `f` instead, as it always did.
    pub fn submit_write_direct(
        &self,
        f: &VolFile,
        direct: &VolFile,
        offset: u64,
        data: Arc<AlignedBuf>,
    ) -> Call<()> {
        let (f, direct) = (f.clone(), direct.clone());
        self.submit("write", move |b| {
            write_direct(b, &f, &direct, offset, data.as_slice())
        })
    }

    /// Writes all of `data` at the end of `f`, opened for appending.
    pub fn append(&self, f: &VolFile, data: &[u8]) -> io::Result<()> {
        let (f, data) = (f.clone(), data.to_vec());
        self.call("append", move |b| b.append(&f, &data))
    }

    /// `fsync` of `f` (`fdatasync` when `data_only`).
    pub fn sync_file(&self, f: &VolFile, data_only: bool) -> io::Result<()> {
        let call = self.submit_sync(f, data_only);
        self.finish("fsync", call, self.deadline())
    }

    /// Hands an `fsync` of `f` to the lane (see [`Volume::submit`]).
    pub fn submit_sync(&self, f: &VolFile, data_only: bool) -> Call<()> {
        let f = f.clone();
        self.submit("fsync", move |b| b.sync(&f, data_only))
    }

    /// `ftruncate` of `f`.
    pub fn set_len(&self, f: &VolFile, size: u64) -> io::Result<()> {
        let f = f.clone();
        self.call("truncate", move |b| b.set_len(&f, size))
    }

    /// `fallocate` on `f` with its mode bits (KEEP_SIZE, PUNCH_HOLE, ...).
    pub fn fallocate(
        &self,
        f: &VolFile,
        mode: FallocateFlags,
        offset: u64,
        len: u64,
    ) -> io::Result<()> {
        let f = f.clone();
        self.call("fallocate", move |b| b.fallocate(&f, mode, offset, len))
    }

    /// Punches a hole in `[offset, offset+len)` of `f`, keeping its size. On a filesystem
    /// that cannot punch holes (EOPNOTSUPP) nothing is done and this is not an error, as
    /// for every copy path of reseedfs so far.
    pub fn punch_hole(&self, f: &VolFile, offset: u64, len: u64) -> io::Result<()> {
        match self.fallocate(
            f,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            offset,
            len,
        ) {
            Err(e) if e.raw_os_error() != Some(libc::EOPNOTSUPP) => Err(e),
            _ => Ok(()),
        }
    }

    /// `lseek` on `f`.
    pub fn seek(&self, f: &VolFile, pos: SeekFrom) -> io::Result<u64> {
        let f = f.clone();
        self.call("lseek", move |b| b.seek(&f, pos))
    }

    /// `fstat` of `f`.
    pub fn fstat(&self, f: &VolFile) -> io::Result<Stat> {
        let f = f.clone();
        self.call("fstat", move |b| b.fstat(&f))
    }

    /// `fchown` of `f`.
    pub fn fchown(&self, f: &VolFile, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
        let f = f.clone();
        self.call("chown", move |b| b.fchown(&f, uid, gid))
    }

    /// `fchmod` of `f`.
    pub fn fchmod(&self, f: &VolFile, mode: Mode) -> io::Result<()> {
        let f = f.clone();
        self.call("chmod", move |b| b.fchmod(&f, mode))
    }

    /// `futimens` of `f`.
    pub fn set_file_times(&self, f: &VolFile, times: &Timestamps) -> io::Result<()> {
        let f = f.clone();
        let times = Timestamps {
            last_access: times.last_access,
            last_modification: times.last_modification,
        };
        self.call("utimens", move |b| b.set_file_times(&f, &times))
    }

    /// Opens the file `f` is open on again with `flags`: a new open file description of
    /// the same inode, also when the file has no name left (an open file that was
    /// unlinked, an anonymous file).
    pub fn reopen(&self, f: &VolFile, flags: OFlags) -> io::Result<VolFile> {
        let f = f.clone();
        self.call("open", move |b| b.reopen(&f, flags).map(VolFile::new))
    }

    /// A new regular file with no name in the directory `dir` (mode `mode`, opened read
    /// and write): its space is freed when its last descriptor closes, after a crash too.
    /// `O_TMPFILE` where the system and the filesystem have it; elsewhere a file created
    /// under `.reseedfs/` and unlinked at once.
    pub fn create_anonymous(&self, dir: &Path, mode: Mode) -> io::Result<VolFile> {
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let _ = dir; // the fallback's file lives under `.reseedfs/`
        #[cfg(any(target_os = "linux", target_os = "android"))]
        match self.open_file(dir, OFlags::TMPFILE | OFlags::RDWR, mode) {
            // No O_TMPFILE in this kernel (EISDIR) or filesystem (EOPNOTSUPP).
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR)) => {}
            r => return r,
        }
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = PathBuf::from(crate::layout::META_DIR).join(format!(
            "anonymous-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let f = self.open_file(&name, OFlags::RDWR | OFlags::CREATE | OFlags::EXCL, mode)?;
        self.remove(&name, false)?;
        Ok(f)
    }

    /// An access-pattern hint for `f` (`len` 0: to the end); a hint that cannot be given
    /// is not an error, and nobody waits for it.
    pub fn advise(&self, f: &VolFile, offset: u64, len: u64, advice: Advice) {
        let f = f.clone();
        drop(self.submit("fadvise", move |b| b.advise(&f, offset, len, advice)));
    }

    /// Starts writing the dirty pages of `[offset, offset+len)` of `f` back to the disk
    /// without waiting for it, so that a sequential writer's data reaches the disk while
    /// it writes more instead of all at its `fsync`. Nobody waits for it: an error is left
    /// to the next write or `fsync` to report.
    pub fn start_writeback(&self, f: &VolFile, offset: u64, len: u64) {
        let f = f.clone();
        drop(self.submit("writeback", move |b| b.start_writeback(&f, offset, len)));
    }

    /// Opens the file `f` is open on again, with `O_DIRECT` and `f`'s access mode (a new
    /// open file description of the same inode, whatever its name is now). `Unsupported`
    /// where there is no way to do that.
    pub fn reopen_direct(&self, f: &VolFile) -> io::Result<VolFile> {
        let f = f.clone();
        self.call("open", move |b| b.reopen_direct(&f).map(VolFile::new))
    }

    /// Writes `data` to `rel` durably and atomically: temp file, fsync, rename, fsync of
    /// the directory. Used for metadata under `.reseedfs/`.
    pub fn write_atomic(&self, rel: &Path, data: &[u8]) -> io::Result<()> {
        let (parent, name) = split(rel)?;
        let mut tmp_name = name.to_owned();
        tmp_name.push(".tmp");
        let tmp = child_path(parent, &tmp_name);
        let f = self.open_file(
            &tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC,
            Mode::from_raw_mode(0o600),
        )?;
        self.write_all_at(&f, 0, data)?;
        self.sync_file(&f, false)?;
        drop(f);
        self.rename(&tmp, rel, RenameFlags::empty())?;
        let dir = self.open_file(parent, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
        self.sync_file(&dir, false)
    }

    /// Removes `rel` and everything under it (never following a symlink).
    pub fn remove_tree(&self, rel: &Path) -> io::Result<()> {
        let st = self.stat(rel)?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            for e in self.read_dir(rel)? {
                self.remove_tree(&child_path(rel, &e.name))?;
            }
            self.remove(rel, true)
        } else {
            self.remove(rel, false)
        }
    }

    /// Creates `rel` and its missing parents as directories (mode 0700).
    pub fn mkdir_all(&self, rel: &Path) -> io::Result<()> {
        let mut cur = PathBuf::new();
        for c in rel.components() {
            cur.push(c);
            match self.mkdir(&cur, Mode::from_raw_mode(0o700)) {
                Err(e) if e.raw_os_error() != Some(libc::EEXIST) => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// Every xattr of `rel`, sorted by name (none where the filesystem has none).
    pub fn xattrs(&self, rel: &Path) -> io::Result<Vec<(OsString, Vec<u8>)>> {
        let rel = rel.to_owned();
        self.call("listxattr", move |b| xattrs_of(b, &rel))
    }

    /// Reads a whole (small) file.
    pub fn read_file(&self, rel: &Path) -> io::Result<Vec<u8>> {
        let rel = rel.to_owned();
        self.call("read", move |b| {
            let f = b.open(&rel, OFlags::RDONLY, Mode::empty())?;
            let mut out = Vec::new();
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = read_full_with(b, &f, out.len() as u64, &mut buf)?;
                out.extend_from_slice(&buf[..n]);
                if n < buf.len() {
                    return Ok(out);
                }
            }
        })
    }
}

/// Copies what a lane call read (`n` bytes, or a size when `buf` was empty) into `buf`.
fn copy_out(buf: &mut [u8], bytes: &[u8], n: usize) {
    if !buf.is_empty() {
        let n = n.min(buf.len()).min(bytes.len());
        buf[..n].copy_from_slice(&bytes[..n]);
    }
}

/// Reads until `buf` is full or end of file, through `b`.
fn read_full_with(b: &dyn Backend, f: &File, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match b.read_at(f, offset + done as u64, &mut buf[done..])? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}

/// Every xattr of `rel` through `b`, sorted by name.
fn xattrs_of(b: &dyn Backend, rel: &Path) -> io::Result<Vec<(OsString, Vec<u8>)>> {
    let n = match b.list_xattr(rel, &mut []) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = vec![0u8; n];
    let n = if n == 0 {
        0
    } else {
        b.list_xattr(rel, &mut names)?
    };
    let mut out = Vec::new();
    for key in names[..n].split(|&c| c == 0).filter(|k| !k.is_empty()) {
        let key = OsStr::from_bytes(key);
        let len = b.get_xattr(rel, key, &mut [])?;
        let mut value = vec![0u8; len];
        let len = b.get_xattr(rel, key, &mut value)?;
        value.truncate(len);
        out.push((key.to_owned(), value));
    }
    out.sort();
    Ok(out)
}

/// The errno an error stands for in events (`ETIMEDOUT` for a missed deadline).
pub fn errno_of(err: &io::Error) -> i32 {
    match err.raw_os_error() {
        Some(e) => e,
        None if err.kind() == io::ErrorKind::TimedOut => libc::ETIMEDOUT,
        None => libc::EIO,
    }
}

/// True when `err` is a volume's missed deadline ([`Timeout`]).
pub fn is_timeout(err: &io::Error) -> bool {
    err.get_ref().is_some_and(|e| e.is::<Timeout>())
}

/// The panic an operation of a volume met on its lane, when `err` is one ([`Panicked`]).
pub fn panic_of(err: &io::Error) -> Option<&Panicked> {
    err.get_ref().and_then(|e| e.downcast_ref::<Panicked>())
}

/// True for the errors that mean a volume is failing, not that the caller erred: media
/// errors, a missed deadline, and a panic on the volume's lane (handled as a failed I/O:
/// the copy cannot be trusted to hold what the call was to do).
pub fn is_media_error(err: &io::Error) -> bool {
    is_timeout(err) || panic_of(err).is_some() || err.raw_os_error().is_some_and(is_media_errno)
}

/// True for the errnos of a failing disk (EIO, ENXIO, ENODEV, EROFS; on Linux also
/// ESHUTDOWN and EUCLEAN).
fn is_media_errno(errno: i32) -> bool {
    #[cfg(unix)]
    if matches!(errno, libc::ESHUTDOWN | libc::EUCLEAN) {
        return true;
    }
    matches!(errno, libc::EIO | libc::ENXIO | libc::ENODEV | libc::EROFS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("reseedfs-vol-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("tempdir");
        d
    }

    /// A volume over a fresh directory with a 100 ms deadline.
    fn quick_volume(tag: &str, name: &str) -> Volume {
        let limits = Limits {
            io_timeout: Duration::from_millis(100),
            slow_request: Duration::from_millis(50),
        };
        Volume::open_with(name, &tempdir(tag), limits).expect("open volume")
    }

    /// A call that answers `Ok(tag)` after `after`.
    fn late_call(v: &Volume, after: Duration, tag: u32) -> Call<u32> {
        v.submit("test", move |_| {
            std::thread::sleep(after);
            Ok(tag)
        })
    }

    #[test]
    fn when_every_copy_is_late_the_first_to_answer_wins_and_only_the_rest_time_out() {
        let (a, b) = (
            quick_volume("ff-a", "Volume1"),
            quick_volume("ff-b", "Volume2"),
        );
        let mut calls = [
            Some((
                &a,
                late_call(&a, Duration::from_millis(1500), 1),
                a.deadline(),
            )),
            Some((
                &b,
                late_call(&b, Duration::from_millis(300), 2),
                b.deadline(),
            )),
        ];
        let mut results: [Option<io::Result<u32>>; 2] = [None, None];
        let t = Instant::now();
        finish_first(&"db", "test", &mut calls, &mut results, |_| true, |_, _| {});
        let took = t.elapsed();
        // Both missed the 100 ms deadline; Volume2 answered first, at 300 ms.
        assert!(matches!(results[1], Some(Ok(2))), "{:?}", results[1]);
        let Some(Err(e)) = &results[0] else {
            panic!("the copy still late must time out: {:?}", results[0]);
        };
        assert!(is_timeout(e), "{e}");
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_millis(1500), "{took:?}");
    }

    #[test]
    fn a_late_copy_is_not_waited_for_when_another_answered_in_time() {
        let (a, b) = (
            quick_volume("fi-a", "Volume1"),
            quick_volume("fi-b", "Volume2"),
        );
        let mut calls = [
            Some((
                &a,
                late_call(&a, Duration::from_millis(1500), 1),
                a.deadline(),
            )),
            Some((&b, late_call(&b, Duration::ZERO, 2), b.deadline())),
        ];
        let mut results: [Option<io::Result<u32>>; 2] = [None, None];
        let t = Instant::now();
        finish_first(&"db", "test", &mut calls, &mut results, |_| true, |_, _| {});
        assert!(matches!(results[1], Some(Ok(2))), "{:?}", results[1]);
        assert!(
            matches!(&results[0], Some(Err(e)) if is_timeout(e)),
            "{:?}",
            results[0]
        );
        assert!(
            t.elapsed() < Duration::from_millis(1000),
            "{:?}",
            t.elapsed()
        );
    }

    /// A call that answers the name of the thread that made it, after `after`.
    fn named_call(v: &Volume, after: Duration) -> Call<String> {
        v.submit("test", move |_| {
            std::thread::sleep(after);
            Ok(std::thread::current().name().unwrap_or("").to_owned())
        })
    }

    #[test]
    fn chained_calls_are_made_by_one_lane_thread_and_a_hung_first_leaves_the_rest_in_time() {
        // Healthy: both made by Volume1's lane, one after the other (deadlines of 4 s:
        // a busy host's scheduling delay must not pass for a hang here).
        let patient = Limits {
            io_timeout: Duration::from_secs(4),
            slow_request: Duration::from_secs(2),
        };
        let a = Volume::open_with("Volume1", &tempdir("ch-pa"), patient).expect("open");
        let b = Volume::open_with("Volume2", &tempdir("ch-pb"), patient).expect("open");
        let mut calls = [
            Some((
                &a,
                held_back(|| named_call(&a, Duration::ZERO)),
                a.deadline(),
            )),
            Some((
                &b,
                held_back(|| named_call(&b, Duration::ZERO)),
                b.deadline(),
            )),
        ];
        assert!(matches!(calls[1], Some((_, Call::Held { .. }, _))));
        chain(&mut calls);
        let mut results: [Option<io::Result<String>>; 2] = [None, None];
        finish_first(&"db", "test", &mut calls, &mut results, |_| true, |_, _| {});
        for r in &results {
            assert!(
                matches!(r, Some(Ok(name)) if name == "lane-Volume1"),
                "{r:?}"
            );
        }

        // Volume1 hangs (1.5 s against a 100 ms deadline): Volume2's call is taken back
        // from the chain and made on its own lane, in time; only Volume1 times out.
        let (a, b) = (
            quick_volume("ch-a", "Volume1"),
            quick_volume("ch-b", "Volume2"),
        );
        let t = Instant::now();
        let mut calls = [
            Some((
                &a,
                held_back(|| named_call(&a, Duration::from_millis(1500))),
                a.deadline(),
            )),
            Some((
                &b,
                held_back(|| named_call(&b, Duration::ZERO)),
                b.deadline(),
            )),
        ];
        chain(&mut calls);
        let mut results: [Option<io::Result<String>>; 2] = [None, None];
        finish_first(&"db", "test", &mut calls, &mut results, |_| true, |_, _| {});
        assert!(
            matches!(&results[1], Some(Ok(name)) if name == "lane-Volume2"),
            "{:?}",
            results[1]
        );
        assert!(
            matches!(&results[0], Some(Err(e)) if is_timeout(e)),
            "{:?}",
            results[0]
        );
        assert!(
            t.elapsed() < Duration::from_millis(1000),
            "{:?}",
            t.elapsed()
        );

        // A held call waited for on its own goes to its lane then.
        let held = held_back(|| named_call(&b, Duration::ZERO));
        let name = b.finish("test", held, b.deadline()).expect("answered");
        assert_eq!(name, "lane-Volume2");
    }

    #[test]
    fn thread_flags_come_back_after_their_scope_even_after_a_panic() {
        serve_requests();
        within_deadlines(|| assert!(!serving_requests()));
        assert!(serving_requests());
        let r = std::panic::catch_unwind(|| within_deadlines(|| panic!("inside")));
        assert!(r.is_err());
        assert!(serving_requests());
        assert!(!makes_here());
        on_this_thread(|| assert!(makes_here()));
        assert!(!makes_here());
    }

    #[test]
    fn paths_cannot_escape_the_volume() {
        let d = tempdir("escape");
        std::fs::create_dir_all(d.join("v/db.db")).expect("mkdir");
        std::os::unix::fs::symlink("/etc", d.join("v/db.db/out")).expect("symlink");
        let v = Volume::open("Volume1", &d.join("v")).expect("open");
        assert!(v.stat(Path::new("db.db/out/passwd")).is_err());
        assert!(
            v.open_file(Path::new("db.db/out/passwd"), OFlags::RDONLY, Mode::empty())
                .is_err()
        );
        assert!(
            v.open_file(Path::new("db.db/out"), OFlags::RDONLY, Mode::empty())
                .is_err()
        );
        assert!(v.stat(Path::new("../../etc/passwd")).is_err());
        assert!(
            v.mkdir(Path::new("db.db/out/x"), Mode::from_raw_mode(0o755))
                .is_err()
        );
        assert!(!Path::new("/etc/x").exists());
        std::fs::remove_dir_all(&d).expect("cleanup");
    }

    #[test]
    fn r14_special_files_and_symlinks_are_never_opened_or_followed() {
        let d = tempdir("special");
        std::fs::create_dir_all(d.join("v/db.db")).expect("mkdir");
        let outside = d.join("outside");
        std::fs::write(&outside, b"root's").expect("outside");
        std::fs::set_permissions(
            &outside,
            std::os::unix::fs::PermissionsExt::from_mode(0o640),
        )
        .expect("chmod");
        std::os::unix::fs::symlink(&outside, d.join("v/db.db/link")).expect("symlink");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            d.join("v/db.db/fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .expect("fifo");
        let _sock = std::os::unix::net::UnixListener::bind(d.join("v/db.db/sock")).expect("sock");
        let v = Volume::open("Volume1", &d.join("v")).expect("open");
        let errno = |r: io::Result<VolFile>| r.expect_err("refused").raw_os_error();
        for flags in [
            OFlags::RDONLY,
            OFlags::WRONLY,
            OFlags::RDWR | OFlags::CREATE,
        ] {
            // A FIFO would block this thread forever; a socket's ENXIO is a media error.
            for name in ["db.db/fifo", "db.db/sock"] {
                let e = errno(v.open_file(Path::new(name), flags, Mode::from_raw_mode(0o600)));
                assert_eq!(e, Some(libc::ESTALE), "{name} {flags:?}");
            }
            let e = errno(v.open_file(Path::new("db.db/link"), flags, Mode::from_raw_mode(0o600)));
            assert_eq!(e, Some(libc::ELOOP), "{flags:?}");
        }
        // A readlink of a name that is no longer a symlink (renamed over since the kernel
        // looked it up) is stale, so that the kernel walks the path again; not EINVAL,
        // which would fail the open that followed the symlink.
        assert_eq!(
            v.readlink(Path::new("db.db/link")).expect("readlink"),
            outside.as_os_str().as_encoded_bytes()
        );
        for name in ["db.db/fifo", "db.db"] {
            let e = v
                .readlink(Path::new(name))
                .expect_err("readlink of no symlink");
            assert_eq!(e.raw_os_error(), Some(libc::ESTALE), "{name}");
        }
        let e = v
            .chmod(Path::new("db.db/link"), Mode::from_raw_mode(0o666))
            .expect_err("chmod of a symlink");
        assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP));
        let md = std::fs::metadata(&outside).expect("outside");
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o777,
            0o640
        );
        // Regular files and directories open as before, with and without O_CREAT.
        let f = v
            .open_file(
                Path::new("db.db/new"),
                OFlags::RDWR | OFlags::CREATE,
                Mode::from_raw_mode(0o640),
            )
            .expect("create");
        v.write_all_at(&f, 0, b"data").expect("write");
        let again = v
            .open_file(
                Path::new("db.db/new"),
                OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC,
                Mode::from_raw_mode(0o600),
            )
            .expect("open existing with O_CREAT|O_TRUNC");
        assert_eq!(v.fstat(&again).expect("fstat").st_size, 0);
        assert_eq!(v.fstat(&again).expect("fstat").st_mode & 0o777, 0o640);
        v.chmod(Path::new("db.db/new"), Mode::from_raw_mode(0o600))
            .expect("chmod a file");
        assert_eq!(
            v.stat(Path::new("db.db/new")).expect("stat").st_mode & 0o777,
            0o600
        );
        assert!(v.read_dir(Path::new("db.db")).expect("list").len() >= 4);
        let e = v
            .open_file(
                Path::new("db.db/new"),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
                Mode::from_raw_mode(0o600),
            )
            .expect_err("O_EXCL on an existing name");
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
        std::fs::remove_dir_all(&d).expect("cleanup");
    }

    #[test]
    fn latency_baseline_learns_only_without_a_rebuild() {
        let d = tempdir("latency");
        let v = Arc::new(Volume::open("Volume1", &d).expect("open"));
        assert_eq!(v.baseline_latency(), None);
        for _ in 0..500 {
            v.observe(Duration::from_micros(100));
        }
        let base = v.baseline_latency().expect("a baseline");
        assert!(base.as_micros().abs_diff(100) <= 1, "{base:?}");
        let mark = v.mark_rebuild();
        for _ in 0..500 {
            v.observe(Duration::from_millis(10));
        }
        assert_eq!(v.baseline_latency(), Some(base), "frozen during a rebuild");
        assert_eq!(v.latency_totals().0, 1000);
        drop(mark);
        v.observe(Duration::from_millis(10));
        assert!(
            v.baseline_latency().expect("baseline") > base,
            "learns again"
        );
        let (n, sum) = v.latency_totals();
        assert_eq!(n, 1001);
        assert_eq!(sum, 500 * 100_000 + 501 * 10_000_000);
        std::fs::remove_dir_all(&d).expect("cleanup");
    }

    #[test]
    fn fault_injection_fails_every_operation() {
        let d = tempdir("fault");
        let v = Volume::open("Volume1", &d).expect("open");
        v.mkdir(Path::new("a"), Mode::from_raw_mode(0o755))
            .expect("mkdir");
        v.inject_fault(libc::EIO);
        let e = v.stat(Path::new("a")).expect_err("fault");
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        assert!(is_media_error(&e));
        v.inject_fault(0);
        assert!(v.stat(Path::new("a")).is_ok());
        v.write_atomic(Path::new("a/state.json"), b"{}")
            .expect("write");
        assert_eq!(v.read_file(Path::new("a/state.json")).expect("read"), b"{}");
        std::fs::remove_dir_all(&d).expect("cleanup");
    }
}
