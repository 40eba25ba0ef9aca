//! A fault-injecting wrapper around a volume backend, for tests and the demo's simulated
//! failure (compiled only with `cfg(test)` or the `failpoints` feature, so the product's
//! request path checks nothing of it).
//!
//! [`Faults`] holds an errno returned by every operation of the volume (a dying disk), and
//! one returned only by reads of file data (unreadable sectors while writes still work).
//! The wrapper checks them before it calls the real backend, at the same seam where every
//! operation of reseedfs reaches a volume. It can also make the next write of file data
//! panic, as a bug on the volume's lane would.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

use super::{
    Advice, Backend, DirEntry, FallocateFlags, FileType, Mode, OFlags, RenameFlags, SeekFrom, Stat,
    StatVfs, Timestamps,
};

/// The faults armed on one volume.
#[derive(Debug, Default)]
pub struct Faults {
    all: AtomicI32,
    reads: AtomicI32,
    /// Writes of file data: the errno, and how many bytes of each write land first.
    writes: AtomicI32,
    writes_land: AtomicU64,
    /// The next write of file data panics.
    panic_write: AtomicBool,
}

impl Faults {
    /// Every later operation fails with `errno` (0 clears it).
    pub fn fail_all(&self, errno: i32) {
        self.all.store(errno, Ordering::Release);
    }

    /// Every later read of file data fails with `errno` (0 clears it).
    pub fn fail_reads(&self, errno: i32) {
        self.reads.store(errno, Ordering::Release);
    }

    /// Every later write of file data fails with `errno` after its first `land` bytes
    /// were written (a full volume that takes part of a write; 0 clears it).
    pub fn fail_writes(&self, errno: i32, land: u64) {
        self.writes_land.store(land, Ordering::Release);
        self.writes.store(errno, Ordering::Release);
    }

    /// The next write of file data panics (on the volume's lane, where it runs), once.
    pub fn panic_next_write(&self) {
        self.panic_write.store(true, Ordering::Release);
    }

    /// The armed fault for any operation, if any.
    pub fn check(&self) -> io::Result<()> {
        match self.all.load(Ordering::Acquire) {
            0 => Ok(()),
            errno => Err(io::Error::from_raw_os_error(errno)),
        }
    }

    /// The armed fault for a read of file data, if any.
    pub fn check_read(&self) -> io::Result<()> {
        match self.reads.load(Ordering::Acquire) {
            0 => self.check(),
            errno => Err(io::Error::from_raw_os_error(errno)),
        }
    }
}

/// `inner`, failing as [`Faults`] say.
#[derive(Debug)]
pub struct Faulty {
    inner: Arc<dyn Backend>,
    faults: Arc<Faults>,
}

impl Faulty {
    /// Wraps `inner`; `faults` arms it.
    pub fn new(inner: Arc<dyn Backend>, faults: Arc<Faults>) -> Faulty {
        Faulty { inner, faults }
    }
}

impl Backend for Faulty {
    fn stat(&self, rel: &Path) -> io::Result<Stat> {
        self.faults.check()?;
        self.inner.stat(rel)
    }
    fn open(&self, rel: &Path, flags: OFlags, mode: Mode) -> io::Result<File> {
        self.faults.check()?;
        self.inner.open(rel, flags, mode)
    }
    fn mkdir(&self, rel: &Path, mode: Mode) -> io::Result<()> {
        self.faults.check()?;
        self.inner.mkdir(rel, mode)
    }
    fn mknod(&self, rel: &Path, kind: FileType, mode: Mode, dev: u64) -> io::Result<()> {
        self.faults.check()?;
        self.inner.mknod(rel, kind, mode, dev)
    }
    fn symlink(&self, target: &Path, rel: &Path) -> io::Result<()> {
        self.faults.check()?;
        self.inner.symlink(target, rel)
    }
    fn readlink(&self, rel: &Path) -> io::Result<Vec<u8>> {
        self.faults.check()?;
        self.inner.readlink(rel)
    }
    fn remove(&self, rel: &Path, dir: bool) -> io::Result<()> {
        self.faults.check()?;
        self.inner.remove(rel, dir)
    }
    fn rename(&self, from: &Path, to: &Path, flags: RenameFlags) -> io::Result<()> {
        self.faults.check()?;
        self.inner.rename(from, to, flags)
    }
    fn link(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.faults.check()?;
        self.inner.link(from, to)
    }
    fn chmod(&self, rel: &Path, mode: Mode) -> io::Result<()> {
        self.faults.check()?;
        self.inner.chmod(rel, mode)
    }
    fn chown(&self, rel: &Path, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
        self.faults.check()?;
        self.inner.chown(rel, uid, gid)
    }
    fn set_times(&self, rel: &Path, times: &Timestamps) -> io::Result<()> {
        self.faults.check()?;
        self.inner.set_times(rel, times)
    }
    fn read_dir(&self, rel: &Path) -> io::Result<Vec<DirEntry>> {
        self.faults.check()?;
        self.inner.read_dir(rel)
    }
    fn statvfs(&self) -> io::Result<StatVfs> {
        self.faults.check()?;
        self.inner.statvfs()
    }
    fn get_xattr(&self, rel: &Path, key: &OsStr, buf: &mut [u8]) -> io::Result<usize> {
        self.faults.check()?;
        self.inner.get_xattr(rel, key, buf)
    }
    fn list_xattr(&self, rel: &Path, buf: &mut [u8]) -> io::Result<usize> {
        self.faults.check()?;
        self.inner.list_xattr(rel, buf)
    }
    fn set_xattr(&self, rel: &Path, key: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
        self.faults.check()?;
        self.inner.set_xattr(rel, key, value, flags)
    }
    fn remove_xattr(&self, rel: &Path, key: &OsStr) -> io::Result<()> {
        self.faults.check()?;
        self.inner.remove_xattr(rel, key)
    }
    fn syncfs(&self) -> io::Result<()> {
        self.faults.check()?;
        self.inner.syncfs()
    }
    fn read_at(&self, f: &File, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.faults.check_read()?;
        self.inner.read_at(f, offset, buf)
    }
    fn read_cached(&self, f: &File, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.faults.check_read()?;
        self.inner.read_cached(f, offset, buf)
    }
    fn write_all_at(&self, f: &File, offset: u64, data: &[u8]) -> io::Result<()> {
        self.faults.check()?;
        if self.faults.panic_write.swap(false, Ordering::AcqRel) {
            panic!(
                "injected panic in a write of {} bytes at {offset}",
                data.len()
            );
        }
        match self.faults.writes.swap(0, Ordering::AcqRel) {
            0 => self.inner.write_all_at(f, offset, data),
            errno => {
                let land = self.faults.writes_land.load(Ordering::Acquire);
                let land = data.len().min(usize::try_from(land).unwrap_or(usize::MAX));
                self.inner.write_all_at(f, offset, &data[..land])?;
                Err(io::Error::from_raw_os_error(errno))
            }
        }
    }
    fn append(&self, f: &File, data: &[u8]) -> io::Result<()> {
        self.faults.check()?;
        self.inner.append(f, data)
    }
    fn sync(&self, f: &File, data_only: bool) -> io::Result<()> {
        self.faults.check()?;
        self.inner.sync(f, data_only)
    }
    fn set_len(&self, f: &File, size: u64) -> io::Result<()> {
        self.faults.check()?;
        self.inner.set_len(f, size)
    }
    fn fallocate(&self, f: &File, mode: FallocateFlags, offset: u64, len: u64) -> io::Result<()> {
        self.faults.check()?;
        self.inner.fallocate(f, mode, offset, len)
    }
    fn seek(&self, f: &File, pos: SeekFrom) -> io::Result<u64> {
        self.faults.check()?;
        self.inner.seek(f, pos)
    }
    fn fstat(&self, f: &File) -> io::Result<Stat> {
        self.faults.check()?;
        self.inner.fstat(f)
    }
    fn fchown(&self, f: &File, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
        self.faults.check()?;
        self.inner.fchown(f, uid, gid)
    }
    fn fchmod(&self, f: &File, mode: Mode) -> io::Result<()> {
        self.faults.check()?;
        self.inner.fchmod(f, mode)
    }
    fn set_file_times(&self, f: &File, times: &Timestamps) -> io::Result<()> {
        self.faults.check()?;
        self.inner.set_file_times(f, times)
    }
    fn reopen(&self, f: &File, flags: OFlags) -> io::Result<File> {
        self.faults.check()?;
        self.inner.reopen(f, flags)
    }
    fn advise(&self, f: &File, offset: u64, len: u64, advice: Advice) -> io::Result<()> {
        self.inner.advise(f, offset, len, advice)
    }
    fn start_writeback(&self, f: &File, offset: u64, len: u64) -> io::Result<()> {
        self.faults.check()?;
        self.inner.start_writeback(f, offset, len)
    }
    fn reopen_direct(&self, f: &File) -> io::Result<File> {
        self.faults.check()?;
        self.inner.reopen_direct(f)
    }
    fn start_writes(&self, chain: Vec<super::ChainWrite>) -> Option<Box<dyn super::Started>> {
        // An armed fault is checked on the lane's path, where every write goes while one is.
        let f = &self.faults;
        let armed = f.all.load(Ordering::Acquire) != 0
            || f.writes.load(Ordering::Acquire) != 0
            || f.panic_write.load(Ordering::Acquire);
        if armed {
            return None;
        }
        self.inner.start_writes(chain)
    }
}
