//! One backing volume: every operation takes a path relative to the volume root and
//! cannot leave it. Parents are opened with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)`, the last component is used with `*at` calls that do not follow
//! symlinks, so neither `..` nor a symlink can lead outside the volume.
//!
//! A volume also carries its health: `failed` once an I/O error marked it, and an
//! injectable fault (an errno returned by every operation) for tests; and the latency the
//! database's requests see on it ([`Volume::observe`]), which the rebuild throttle
//! ([`crate::throttle`]) watches.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::fs::{
    AtFlags, Dir, FileType, Mode, OFlags, RenameFlags, ResolveFlags, Stat, StatVfs, Timestamps,
    XattrFlags,
};

/// A backing volume (`<volumes_root>/VolumeN`).
#[derive(Debug)]
pub struct Volume {
    name: String,
    root: PathBuf,
    root_fd: OwnedFd,
    failed: AtomicBool,
    fault: AtomicI32,
    read_fault: AtomicI32,
    io_errors: AtomicU64,
    latency: Latency,
    written_bytes: AtomicU64,
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

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

impl Volume {
    /// Opens the volume directory `root` under the name `name` (`Volume1`).
    pub fn open(name: &str, root: &Path) -> io::Result<Volume> {
        let root_fd = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Volume {
            name: name.to_owned(),
            root: root.to_owned(),
            root_fd,
            failed: AtomicBool::new(false),
            fault: AtomicI32::new(0),
            read_fault: AtomicI32::new(0),
            io_errors: AtomicU64::new(0),
            latency: Latency::default(),
            written_bytes: AtomicU64::new(0),
        })
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
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The volume's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// True once an I/O error marked the volume failed.
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

    /// Makes every later operation fail with `errno` (0 clears it): a dying disk, for tests.
    pub fn inject_fault(&self, errno: i32) {
        self.fault.store(errno, Ordering::Release);
    }

    /// Makes reads of file data through [`Volume::check_read`] fail with `errno` (0 clears
    /// it): unreadable sectors while writes still work, for tests.
    pub fn inject_read_fault(&self, errno: i32) {
        self.read_fault.store(errno, Ordering::Release);
    }

    /// [`Volume::check`] for a bulk read of file data (a reseed's source).
    pub fn check_read(&self) -> io::Result<()> {
        match self.read_fault.load(Ordering::Relaxed) {
            0 => self.check(),
            errno => Err(io::Error::from_raw_os_error(errno)),
        }
    }

    /// Fails with the injected fault, if any. Called before every operation, including
    /// I/O on files opened earlier.
    #[inline]
    pub fn check(&self) -> io::Result<()> {
        match self.fault.load(Ordering::Relaxed) {
            0 => Ok(()),
            errno => Err(io::Error::from_raw_os_error(errno)),
        }
    }

    fn with_parent<T>(
        &self,
        rel: &Path,
        f: impl FnOnce(BorrowedFd<'_>, &OsStr) -> rustix::io::Result<T>,
    ) -> io::Result<T> {
        self.check()?;
        let (parent, name) = split(rel)?;
        if parent.as_os_str().is_empty() {
            return Ok(f(self.root_fd.as_fd(), name)?);
        }
        let dir = rustix::fs::openat2(
            &self.root_fd,
            parent,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )?;
        Ok(f(dir.as_fd(), name)?)
    }

    /// `lstat` of `rel` (the volume root for an empty path).
    pub fn stat(&self, rel: &Path) -> io::Result<Stat> {
        if rel.as_os_str().is_empty() {
            self.check()?;
            return Ok(rustix::fs::fstat(&self.root_fd)?);
        }
        self.with_parent(rel, |dir, name| {
            rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        })
    }

    /// Opens `rel` (never following a symlink); `mode` applies with `O_CREAT`.
    pub fn open_file(&self, rel: &Path, flags: OFlags, mode: Mode) -> io::Result<File> {
        self.check()?;
        let fd = rustix::fs::openat2(
            &self.root_fd,
            rel,
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            mode,
            RESOLVE,
        )?;
        Ok(File::from(fd))
    }

    /// Creates a directory.
    pub fn mkdir(&self, rel: &Path, mode: Mode) -> io::Result<()> {
        self.with_parent(rel, |dir, name| rustix::fs::mkdirat(dir, name, mode))
    }

    /// Creates a special file or a regular file without opening it.
    pub fn mknod(&self, rel: &Path, kind: FileType, mode: Mode, dev: u64) -> io::Result<()> {
        self.with_parent(rel, |dir, name| {
            rustix::fs::mknodat(dir, name, kind, mode, dev)
        })
    }

    /// Creates a symlink at `rel` pointing to `target` (stored as given).
    pub fn symlink(&self, target: &Path, rel: &Path) -> io::Result<()> {
        self.with_parent(rel, |dir, name| rustix::fs::symlinkat(target, dir, name))
    }

    /// Reads the symlink at `rel`.
    pub fn readlink(&self, rel: &Path) -> io::Result<Vec<u8>> {
        self.with_parent(rel, |dir, name| {
            rustix::fs::readlinkat(dir, name, Vec::new()).map(|c| c.into_bytes())
        })
    }

    /// Removes a file (`dir == false`) or an empty directory.
    pub fn remove(&self, rel: &Path, dir: bool) -> io::Result<()> {
        let flags = if dir {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        self.with_parent(rel, |d, name| rustix::fs::unlinkat(d, name, flags))
    }

    /// Renames `from` to `to` with `renameat2` flags.
    pub fn rename(&self, from: &Path, to: &Path, flags: RenameFlags) -> io::Result<()> {
        self.with_parent(from, |from_dir, from_name| {
            let (to_parent, to_name) = split(to).map_err(|_| rustix::io::Errno::INVAL)?;
            let to_dir;
            let to_fd = if to_parent.as_os_str().is_empty() {
                self.root_fd.as_fd()
            } else {
                to_dir = rustix::fs::openat2(
                    &self.root_fd,
                    to_parent,
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                    RESOLVE,
                )?;
                to_dir.as_fd()
            };
            rustix::fs::renameat_with(from_dir, from_name, to_fd, to_name, flags)
        })
    }

    /// Makes `to` a hard link of `from`.
    pub fn link(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check()?;
        let src = self.open_path(from)?;
        self.with_parent(to, |dir, name| {
            rustix::fs::linkat(&src, "", dir, name, AtFlags::EMPTY_PATH)
        })
    }

    /// An `O_PATH` descriptor of `rel` itself (a symlink is not followed).
    fn open_path(&self, rel: &Path) -> io::Result<OwnedFd> {
        if rel.as_os_str().is_empty() {
            return self.root_fd.try_clone();
        }
        self.with_parent(rel, |dir, name| {
            rustix::fs::openat(
                dir,
                name,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
        })
    }

    /// `chmod`; refused with `EOPNOTSUPP` on a symlink, as Linux does.
    pub fn chmod(&self, rel: &Path, mode: Mode) -> io::Result<()> {
        self.with_parent(rel, |dir, name| {
            let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
            if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
                return Err(rustix::io::Errno::OPNOTSUPP);
            }
            rustix::fs::chmodat(dir, name, mode, AtFlags::empty())
        })
    }

    /// `lchown`.
    pub fn chown(&self, rel: &Path, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
        let uid = uid.map(rustix::fs::Uid::from_raw);
        let gid = gid.map(rustix::fs::Gid::from_raw);
        self.with_parent(rel, |dir, name| {
            rustix::fs::chownat(dir, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)
        })
    }

    /// `utimensat` without following symlinks.
    pub fn set_times(&self, rel: &Path, times: &Timestamps) -> io::Result<()> {
        self.with_parent(rel, |dir, name| {
            rustix::fs::utimensat(dir, name, times, AtFlags::SYMLINK_NOFOLLOW)
        })
    }

    /// `truncate` by path.
    pub fn truncate(&self, rel: &Path, size: u64) -> io::Result<()> {
        let f = self.open_file(rel, OFlags::WRONLY, Mode::empty())?;
        Ok(rustix::fs::ftruncate(&f, size)?)
    }

    /// Lists a directory (without `.` and `..`).
    pub fn read_dir(&self, rel: &Path) -> io::Result<Vec<DirEntry>> {
        let fd = if rel.as_os_str().is_empty() {
            self.check()?;
            rustix::fs::openat(
                &self.root_fd,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )?
        } else {
            self.open_file(rel, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?
                .into()
        };
        let mut out = Vec::new();
        for entry in Dir::new(fd)? {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            out.push(DirEntry {
                name: OsStr::from_encoded_bytes_unchecked_safe(name),
                kind: entry.file_type(),
            });
        }
        Ok(out)
    }

    /// `statvfs` of the volume.
    pub fn statvfs(&self) -> io::Result<StatVfs> {
        self.check()?;
        Ok(rustix::fs::fstatvfs(&self.root_fd)?)
    }

    fn proc_path(fd: &OwnedFd) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
    }

    /// Reads xattr `key` of `rel` into `buf` (an empty `buf` asks for the size).
    pub fn get_xattr(&self, rel: &Path, key: &OsStr, buf: &mut [u8]) -> io::Result<usize> {
        let fd = self.open_path(rel)?;
        let p = Self::proc_path(&fd);
        if buf.is_empty() {
            return Ok(rustix::fs::getxattr_query(&p, key)?);
        }
        Ok(rustix::fs::getxattr(&p, key, buf)?)
    }

    /// Lists the xattr names of `rel` into `buf` (an empty `buf` asks for the size).
    pub fn list_xattr(&self, rel: &Path, buf: &mut [u8]) -> io::Result<usize> {
        let fd = self.open_path(rel)?;
        let p = Self::proc_path(&fd);
        if buf.is_empty() {
            return Ok(rustix::fs::listxattr_query(&p)?);
        }
        Ok(rustix::fs::listxattr(&p, buf)?)
    }

    /// Sets xattr `key` of `rel`.
    pub fn set_xattr(&self, rel: &Path, key: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
        let fd = self.open_path(rel)?;
        let flags = XattrFlags::from_bits_retain(flags as u32);
        Ok(rustix::fs::setxattr(
            Self::proc_path(&fd),
            key,
            value,
            flags,
        )?)
    }

    /// Removes xattr `key` of `rel`.
    pub fn remove_xattr(&self, rel: &Path, key: &OsStr) -> io::Result<()> {
        let fd = self.open_path(rel)?;
        Ok(rustix::fs::removexattr(Self::proc_path(&fd), key)?)
    }

    /// Writes `data` to `rel` durably and atomically: temp file, fsync, rename, fsync of
    /// the directory. Used for metadata under `.reseedfs/`.
    pub fn write_atomic(&self, rel: &Path, data: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let (parent, name) = split(rel)?;
        let mut tmp_name = name.to_owned();
        tmp_name.push(".tmp");
        let tmp = child_path(parent, &tmp_name);
        let mut f = self.open_file(
            &tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC,
            Mode::from_raw_mode(0o600),
        )?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        self.rename(&tmp, rel, RenameFlags::empty())?;
        let dir = if parent.as_os_str().is_empty() {
            self.open_file(
                Path::new("."),
                OFlags::RDONLY | OFlags::DIRECTORY,
                Mode::empty(),
            )?
        } else {
            self.open_file(parent, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?
        };
        dir.sync_all()
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
        use std::os::unix::ffi::OsStrExt;
        let n = match self.list_xattr(rel, &mut []) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut names = vec![0u8; n];
        let n = if n == 0 {
            0
        } else {
            self.list_xattr(rel, &mut names)?
        };
        let mut out = Vec::new();
        for key in names[..n].split(|&b| b == 0).filter(|k| !k.is_empty()) {
            let key = OsStr::from_bytes(key);
            let len = self.get_xattr(rel, key, &mut [])?;
            let mut value = vec![0u8; len];
            let len = self.get_xattr(rel, key, &mut value)?;
            value.truncate(len);
            out.push((key.to_owned(), value));
        }
        out.sort();
        Ok(out)
    }

    /// Flushes everything written to the volume's filesystem (`syncfs`).
    pub fn syncfs(&self) -> io::Result<()> {
        // An O_PATH descriptor (the root's) does not do: open the root for reading.
        let root = self.open_file(
            Path::new("."),
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )?;
        Ok(rustix::fs::syncfs(&root)?)
    }

    /// Reads a whole (small) file.
    pub fn read_file(&self, rel: &Path) -> io::Result<Vec<u8>> {
        use std::io::Read;
        let mut f = self.open_file(rel, OFlags::RDONLY, Mode::empty())?;
        let mut out = Vec::new();
        f.read_to_end(&mut out)?;
        Ok(out)
    }
}

/// `OsStr` from raw bytes of a directory entry (on Unix every byte string is an `OsStr`).
trait FromBytes {
    fn from_encoded_bytes_unchecked_safe(b: &[u8]) -> OsString;
}

impl FromBytes for OsStr {
    fn from_encoded_bytes_unchecked_safe(b: &[u8]) -> OsString {
        use std::os::unix::ffi::OsStrExt;
        OsStr::from_bytes(b).to_owned()
    }
}

/// The access and modification times of `st`, as `set_times` takes them.
pub fn stat_times(st: &Stat) -> Timestamps {
    let ts = |sec: i64, nsec: u64| rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    Timestamps {
        last_access: ts(st.st_atime, st.st_atime_nsec),
        last_modification: ts(st.st_mtime, st.st_mtime_nsec),
    }
}

/// Opens the file `f` is open on again, read-only with `O_DIRECT` (a new open file
/// description of the same inode, whatever its name is now). `Unsupported` where there is
/// no way to do that.
pub fn reopen_direct(f: &File) -> io::Result<File> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(format!("/proc/self/fd/{}", f.as_raw_fd()))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = f;
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// Starts writing back the dirty pages of `[offset, offset+len)` of `f` without waiting for
/// the disk, so that a sequential writer's data reaches the disk while it writes more
/// instead of all at its `fsync`. A no-op on systems without such a call.
pub fn start_writeback(f: &File, offset: u64, len: u64) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    return crate::sys::writeback::start(f, offset, len);
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (f, offset, len);
        Ok(())
    }
}

/// Punches a hole in `[offset, offset+len)` of `f`, keeping its size. On a filesystem that
/// cannot punch holes (EOPNOTSUPP) nothing is done and this is not an error, as for every
/// copy path of reseedfs so far.
pub fn punch_hole(f: &File, offset: u64, len: u64) -> io::Result<()> {
    match rustix::fs::fallocate(
        f,
        rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
        offset,
        len,
    ) {
        Err(e) if e != rustix::io::Errno::OPNOTSUPP => Err(e.into()),
        _ => Ok(()),
    }
}

/// True for the errors that mean a volume is failing, not that the caller erred.
pub fn is_media_error(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(
            libc::EIO | libc::ENXIO | libc::ENODEV | libc::ESHUTDOWN | libc::EROFS | libc::EUCLEAN
        )
    )
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
