//! The FUSE floor: the thinnest filesystem on reseedfs's own stack, so that the throughput
//! bench can say how much of the gap to the bare disk is FUSE and how much is reseedfs.
//!
//! Same stack: fuser, the same session settings and INIT reply (mount options, request
//! threads with cloned `/dev/fuse` descriptors, request sizes, `FUSE_ASYNC_DIO`,
//! `max_background`, killpriv; both come from `reseedfs::sys::fuse`, so a change there
//! moves the floor with it) and the same readahead on the mount's bdi. Everything else is
//! as thin as it gets: every open is one open of one backing file, a read or a write is
//! one `pread`/`pwrite` on it, `fsync` one `fsync`. No copies, no log, no locks beyond a
//! handle table sharded like reseedfs's.
//!
//! `O_DIRECT` is honoured the way reseedfs honours it (so that a cached read is never
//! compared with an uncached one), chosen by [`Direct`]:
//! - [`Direct::Honest`] (the default, as reseedfs does): the backing file is opened
//!   without `O_DIRECT`; reads of an `O_DIRECT` caller up to 64 KiB, aligned, go through
//!   a second `O_DIRECT` descriptor opened at first use; every aligned write of an
//!   `O_DIRECT` caller goes `O_DIRECT` through that descriptor, via
//!   `reseedfs::sys::direct` (FUSE hands the daemon write data 80 bytes into its request
//!   buffer, so it is copied once into a page-aligned buffer of the request thread: a
//!   bounce). Unaligned writes stay buffered.
//! - [`Direct::Cached`]: reads as above, writes through the page cache with a sequential
//!   run handed to the disk every 4 MiB (`sync_file_range`): what reseedfs did before its
//!   `O_DIRECT` writes (target `fuse_floor_cached`, for the page cache it costs).
//!
//! It serves one backing directory, and only what the benches' jobs (fio, the built-in
//! generator, a PostgreSQL cluster) need: lookup, getattr, setattr, create, open, read,
//! write, flush, fsync, release, unlink, mkdir, rmdir, rename, symlink, readlink, readdir,
//! statfs. What it creates belongs to the caller (PostgreSQL wants its data directory its
//! own, and the mount checks permissions). It counts the requests and the largest read and
//! write it received, and logs them when it is unmounted (to check what request size the
//! kernel granted).
//!
//! Two transports, chosen by [`Transport`]: `/dev/fuse` through fuser (target
//! `fuse_floor`), or FUSE over io_uring (target `fuse_floor_uring`, `ring.rs`): fuser
//! answers INIT (asking for `FUSE_OVER_IO_URING`) and keeps one thread on `/dev/fuse` for
//! FORGET and INTERRUPT; every other request comes through ring entries, as many per
//! queue as request threads, each served by a thread of its own with the same `Floor`
//! calls.
//!
//! It runs as a process of its own (the bench binary, started again with
//! `--serve-fuse-floor`), so that its CPU time is read from `/proc/<pid>/stat` like the
//! other daemons'.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{
    DirBuilderExt as _, FileExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, KernelConfig,
    LockOwner, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use parking_lot::RwLock;
use reseedfs::sys::fuse_uring;
use reseedfs::testbed::with_path;
use reseedfs::volume::read_full;

use crate::common::Daemon;

mod ring;

/// The attribute and entry timeout reseedfs replies with.
const TTL: Duration = Duration::from_secs(1);
/// reseedfs's cap on reads that go `O_DIRECT` to the backing file (`copyset`).
const DIRECT_READ_MAX: usize = 64 << 10;
/// The alignment an `O_DIRECT` backing request needs here (a page).
const DIRECT_ALIGN: usize = 4096;
/// Handle table shards, as in reseedfs's core.
const SHARDS: usize = 16;
const ROOT: u64 = 1;

/// How the floor treats an `O_DIRECT` caller (see the module header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direct {
    /// As reseedfs did before its `O_DIRECT` writes: small aligned reads direct, writes
    /// buffered and kicked.
    Cached,
    /// As reseedfs does: reads as [`Direct::Cached`]; aligned writes direct (through a
    /// bounce buffer).
    Honest,
}

impl Direct {
    pub fn name(self) -> &'static str {
        match self {
            Direct::Cached => "cached",
            Direct::Honest => "honest",
        }
    }

    pub fn parse(s: &str) -> Option<Direct> {
        [Direct::Cached, Direct::Honest]
            .into_iter()
            .find(|d| d.name() == s)
    }
}

/// How requests reach the floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `/dev/fuse` through fuser, as reseedfs (target `fuse_floor`).
    DevFuse,
    /// FUSE over io_uring (`ring.rs`; target `fuse_floor_uring`): fuser for INIT and for
    /// what the kernel still sends through `/dev/fuse` (FORGET, INTERRUPT), the ring for
    /// every other request.
    Uring,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::DevFuse => "devfuse",
            Transport::Uring => "uring",
        }
    }

    pub fn parse(s: &str) -> Option<Transport> {
        [Transport::DevFuse, Transport::Uring]
            .into_iter()
            .find(|t| t.name() == s)
    }
}

/// One open file.
struct Handle {
    file: File,
    /// The caller opened it with `O_DIRECT`.
    caller_direct: bool,
    /// The same file opened again with `O_DIRECT`, read-write, at first use; `None` when
    /// the backing filesystem refuses.
    direct: OnceLock<Option<File>>,
    /// The sequential run since the last writeback kick: reseedfs's own rule.
    run: reseedfs::copyset::WriteRun,
}

impl Handle {
    fn direct(&self) -> Option<&File> {
        self.direct
            .get_or_init(|| reseedfs::sys::direct::reopen(&self.file, true).ok())
            .as_ref()
    }
}

#[derive(Default)]
struct Inodes {
    paths: HashMap<u64, PathBuf>,
    inos: HashMap<PathBuf, u64>,
    next: u64,
}

/// What the floor counts, logged at unmount.
#[derive(Default)]
struct Counters {
    reads: AtomicU64,
    writes: AtomicU64,
    read_max_bytes: AtomicU64,
    write_max_bytes: AtomicU64,
    direct_reads: AtomicU64,
    direct_writes: AtomicU64,
}

struct Floor {
    backing: PathBuf,
    direct: Direct,
    transport: Transport,
    inodes: RwLock<Inodes>,
    handles: [RwLock<HashMap<u64, Arc<Handle>>>; SHARDS],
    next_handle: AtomicU64,
    counters: Counters,
}

/// The floor as fuser's `Filesystem` (fuser owns it; the ring's threads share it).
struct Shared(Arc<Floor>);

impl std::ops::Deref for Shared {
    type Target = Floor;

    fn deref(&self) -> &Floor {
        &self.0
    }
}

thread_local! {
    /// The request thread's page-aligned buffer for reads.
    static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on a page-aligned slice of `len` bytes of the thread's buffer.
fn with_aligned<T>(len: usize, f: impl FnOnce(&mut [u8]) -> T) -> T {
    BUF.with_borrow_mut(|buf| {
        if buf.len() < len + DIRECT_ALIGN {
            buf.resize(len + DIRECT_ALIGN, 0);
        }
        let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
        f(&mut buf[start..start + len])
    })
}

fn aligned(offset: u64, len: usize, addr: usize) -> bool {
    (offset as usize | len | addr) % DIRECT_ALIGN == 0
}

fn err(e: io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    let nsecs = u32::try_from(nsecs).unwrap_or(0);
    match u64::try_from(secs) {
        Ok(s) => UNIX_EPOCH + Duration::new(s, nsecs),
        Err(_) => UNIX_EPOCH,
    }
}

fn attr(ino: u64, m: &fs::Metadata) -> FileAttr {
    let ft = m.file_type();
    let kind = if ft.is_dir() {
        FileType::Directory
    } else if ft.is_symlink() {
        FileType::Symlink
    } else {
        FileType::RegularFile
    };
    FileAttr {
        ino: INodeNo(ino),
        size: m.size(),
        blocks: m.blocks(),
        atime: time(m.atime(), m.atime_nsec()),
        mtime: time(m.mtime(), m.mtime_nsec()),
        ctime: time(m.ctime(), m.ctime_nsec()),
        crtime: time(m.ctime(), m.ctime_nsec()),
        kind,
        perm: (m.mode() & 0o7777) as u16,
        nlink: u32::try_from(m.nlink()).unwrap_or(u32::MAX),
        uid: m.uid(),
        gid: m.gid(),
        rdev: u32::try_from(m.rdev()).unwrap_or(0),
        blksize: u32::try_from(m.blksize()).unwrap_or(4096),
        flags: 0,
    }
}

/// The open flags a backing open keeps (reseedfs's `backing_open_flags`: no `O_DIRECT`).
fn backing_flags(flags: i32) -> i32 {
    flags & (libc::O_SYNC | libc::O_DSYNC | libc::O_NOATIME | libc::O_NONBLOCK | libc::O_LARGEFILE)
}

impl Floor {
    fn path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        let inodes = self.inodes.read();
        let rel = inodes.paths.get(&ino.0).ok_or(Errno::ENOENT)?;
        Ok(self.backing.join(rel))
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        let inodes = self.inodes.read();
        let rel = inodes.paths.get(&parent.0).ok_or(Errno::ENOENT)?;
        Ok(rel.join(name))
    }

    fn ino_of(&self, rel: &Path) -> u64 {
        if let Some(&ino) = self.inodes.read().inos.get(rel) {
            return ino;
        }
        let mut inodes = self.inodes.write();
        if let Some(&ino) = inodes.inos.get(rel) {
            return ino;
        }
        inodes.next += 1;
        let ino = inodes.next;
        inodes.paths.insert(ino, rel.to_owned());
        inodes.inos.insert(rel.to_owned(), ino);
        ino
    }

    /// Gives what `req`'s caller created at `rel` to the caller.
    fn own(&self, req: &Request, rel: &Path) -> Result<(), Errno> {
        std::os::unix::fs::lchown(self.backing.join(rel), Some(req.uid()), Some(req.gid()))
            .map_err(err)
    }

    /// Forgets `rel` and everything under it (removed), or moves it to `to` (renamed).
    fn moved(&self, rel: &Path, to: Option<&Path>) {
        let mut inodes = self.inodes.write();
        if let Some(to) = to
            && let Some(ino) = inodes.inos.remove(to)
        {
            inodes.paths.remove(&ino);
        }
        let under: Vec<(u64, PathBuf)> = inodes
            .paths
            .iter()
            .filter(|(_, p)| p.starts_with(rel))
            .map(|(&ino, p)| (ino, p.clone()))
            .collect();
        for (ino, old) in under {
            inodes.inos.remove(&old);
            match to {
                Some(to) => {
                    // Not `to.join("")` for `rel` itself: that adds a trailing slash,
                    // which a file's path must not have.
                    let new = match old.strip_prefix(rel) {
                        Ok(under) if !under.as_os_str().is_empty() => to.join(under),
                        _ => to.to_owned(),
                    };
                    inodes.paths.insert(ino, new.clone());
                    inodes.inos.insert(new, ino);
                }
                None => {
                    inodes.paths.remove(&ino);
                }
            }
        }
    }

    fn entry(&self, rel: &Path) -> Result<FileAttr, Errno> {
        let m = fs::symlink_metadata(self.backing.join(rel)).map_err(err)?;
        Ok(attr(self.ino_of(rel), &m))
    }

    fn shard(&self, fh: u64) -> &RwLock<HashMap<u64, Arc<Handle>>> {
        &self.handles[fh as usize % SHARDS]
    }

    fn handle(&self, fh: FileHandle) -> Result<Arc<Handle>, Errno> {
        self.shard(fh.0)
            .read()
            .get(&fh.0)
            .cloned()
            .ok_or(Errno::EBADF)
    }

    fn add_handle(&self, file: File, flags: i32) -> FileHandle {
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let h = Handle {
            file,
            caller_direct: flags & libc::O_DIRECT != 0,
            direct: OnceLock::new(),
            run: reseedfs::copyset::WriteRun::default(),
        };
        self.shard(fh).write().insert(fh, Arc::new(h));
        FileHandle(fh)
    }

    fn open_backing(&self, path: &Path, flags: i32, create: Option<u32>) -> io::Result<File> {
        let mode = flags & libc::O_ACCMODE;
        let mut o = fs::OpenOptions::new();
        o.read(mode != libc::O_WRONLY)
            .write(mode != libc::O_RDONLY)
            .custom_flags(backing_flags(flags) | (flags & (libc::O_EXCL | libc::O_TRUNC)));
        if let Some(perm) = create {
            o.create(true).mode(perm);
        }
        o.open(path)
    }

    fn read_at(&self, fh: FileHandle, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let h = self
            .handle(fh)
            .map_err(|e| io::Error::from_raw_os_error(e.code()))?;
        let direct_ok = h.caller_direct
            && buf.len() <= DIRECT_READ_MAX
            && aligned(offset, buf.len(), buf.as_ptr().addr());
        if direct_ok && let Some(d) = h.direct() {
            self.counters.direct_reads.fetch_add(1, Ordering::Relaxed);
            return read_full(d, offset, buf);
        }
        read_full(&h.file, offset, buf)
    }

    fn write_at(&self, fh: FileHandle, offset: u64, data: &[u8]) -> io::Result<usize> {
        let h = self
            .handle(fh)
            .map_err(|e| io::Error::from_raw_os_error(e.code()))?;
        if self.direct == Direct::Honest
            && h.caller_direct
            && reseedfs::sys::direct::is_aligned(offset, data.len())
            && let Some(d) = h.direct()
        {
            self.counters.direct_writes.fetch_add(1, Ordering::Relaxed);
            return reseedfs::sys::direct::write_all_at(d, offset, data).map(|()| data.len());
        }
        h.file.write_all_at(data, offset)?;
        if let Some((from, len)) = h.run.note(offset, data.len() as u64) {
            let _ = reseedfs::sys::writeback::start(&h.file, from, len);
        }
        Ok(data.len())
    }
}

fn max(counter: &AtomicU64, v: u64) {
    counter.fetch_max(v, Ordering::Relaxed);
}

impl fuser::Filesystem for Shared {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        reseedfs::sys::fuse::configure_kernel(config);
        if self.transport == Transport::Uring
            && let Err(missing) = config.add_capabilities(fuser::InitFlags::FUSE_OVER_IO_URING)
        {
            return Err(io::Error::other(format!(
                "the kernel does not offer FUSE_OVER_IO_URING at INIT ({missing:?} missing): \
                 is {} set (root: echo 1 > {0})?",
                fuse_uring::ENABLE_URING
            )));
        }
        Ok(())
    }

    fn destroy(&mut self) {
        let c = &self.counters;
        eprintln!(
            "fuse_floor: {} reads (largest {} bytes, {} direct), {} writes (largest {} bytes, \
             {} direct)",
            c.reads.load(Ordering::Relaxed),
            c.read_max_bytes.load(Ordering::Relaxed),
            c.direct_reads.load(Ordering::Relaxed),
            c.writes.load(Ordering::Relaxed),
            c.write_max_bytes.load(Ordering::Relaxed),
            c.direct_writes.load(Ordering::Relaxed),
        );
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.child(parent, name).and_then(|rel| self.entry(&rel)) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let m = match fh.map(|fh| self.handle(fh)) {
            Some(Ok(h)) => h.file.metadata().map_err(err),
            _ => self
                .path(ino)
                .and_then(|p| fs::symlink_metadata(p).map_err(err)),
        };
        match m {
            Ok(m) => reply.attr(&TTL, &attr(ino.0, &m)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // Size, mode and owners: what fio, the generator and PostgreSQL change. Times are
        // left as they are (the benches never set them).
        let r = (|| -> Result<fs::Metadata, Errno> {
            let path = self.path(ino)?;
            if let Some(size) = size {
                match fh.map(|fh| self.handle(fh)) {
                    Some(Ok(h)) => h.file.set_len(size).map_err(err)?,
                    _ => fs::OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .and_then(|f| f.set_len(size))
                        .map_err(err)?,
                }
            }
            if let Some(mode) = mode {
                fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777))
                    .map_err(err)?;
            }
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::lchown(&path, uid, gid).map_err(err)?;
            }
            fs::symlink_metadata(&path).map_err(err)
        })();
        match r {
            Ok(m) => reply.attr(&TTL, &attr(ino.0, &m)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let r = self.child(parent, name).and_then(|rel| {
            fs::DirBuilder::new()
                .mode(mode & 0o7777)
                .create(self.backing.join(&rel))
                .map_err(err)?;
            self.own(req, &rel)?;
            self.entry(&rel)
        });
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.child(parent, name).and_then(|rel| {
            fs::remove_file(self.backing.join(&rel)).map_err(err)?;
            let mut inodes = self.inodes.write();
            if let Some(ino) = inodes.inos.remove(&rel) {
                inodes.paths.remove(&ino);
            }
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.child(parent, name).and_then(|rel| {
            fs::remove_dir(self.backing.join(&rel)).map_err(err)?;
            self.moved(&rel, None);
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.bits() != 0 {
            return reply.error(Errno::EINVAL);
        }
        let r = self.child(parent, name).and_then(|from| {
            let to = self.child(newparent, newname)?;
            fs::rename(self.backing.join(&from), self.backing.join(&to)).map_err(err)?;
            self.moved(&from, Some(&to));
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = self.child(parent, link_name).and_then(|rel| {
            std::os::unix::fs::symlink(target, self.backing.join(&rel)).map_err(err)?;
            self.own(req, &rel)?;
            self.entry(&rel)
        });
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.path(ino).and_then(|p| fs::read_link(p).map_err(err)) {
            Ok(target) => reply.data(target.as_os_str().as_encoded_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let r = self.path(ino).and_then(|p| {
            let f = self.open_backing(&p, flags.0, None).map_err(err)?;
            Ok(self.add_handle(f, flags.0))
        });
        match r {
            Ok(fh) => reply.opened(fh, FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let r = self.child(parent, name).and_then(|rel| {
            let f = self
                .open_backing(&self.backing.join(&rel), flags, Some(mode & 0o7777))
                .map_err(err)?;
            std::os::unix::fs::fchown(&f, Some(req.uid()), Some(req.gid())).map_err(err)?;
            let m = f.metadata().map_err(err)?;
            let a = attr(self.ino_of(&rel), &m);
            Ok((a, self.add_handle(f, flags)))
        });
        match r {
            Ok((a, fh)) => reply.created(&TTL, &a, Generation(0), fh, FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        max(&self.counters.read_max_bytes, u64::from(size));
        with_aligned(size as usize, |buf| match self.0.read_at(fh, offset, buf) {
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => reply.error(err(e)),
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        max(&self.counters.write_max_bytes, data.len() as u64);
        match self.0.write_at(fh, offset, data) {
            Ok(n) => reply.written(u32::try_from(n).unwrap_or(u32::MAX)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.shard(fh.0).write().remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = self.handle(fh).and_then(|h| {
            if datasync {
                h.file.sync_data().map_err(err)
            } else {
                h.file.sync_all().map_err(err)
            }
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let r = (|| -> Result<(), Errno> {
            let path = self.path(ino)?;
            let rel = path
                .strip_prefix(&self.backing)
                .unwrap_or(Path::new(""))
                .to_owned();
            let mut entries = vec![
                (ino.0, FileType::Directory, OsStr::new(".").to_owned()),
                (ino.0, FileType::Directory, OsStr::new("..").to_owned()),
            ];
            for e in fs::read_dir(&path).map_err(err)? {
                let e = e.map_err(err)?;
                let kind = match e.file_type() {
                    Ok(t) if t.is_dir() => FileType::Directory,
                    Ok(t) if t.is_symlink() => FileType::Symlink,
                    _ => FileType::RegularFile,
                };
                let name = e.file_name();
                entries.push((self.ino_of(&rel.join(&name)), kind, name));
            }
            for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
                if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                    break;
                }
            }
            Ok(())
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match rustix::fs::statvfs(&self.backing) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                u32::try_from(s.f_bsize).unwrap_or(4096),
                u32::try_from(s.f_namemax).unwrap_or(255),
                u32::try_from(s.f_frsize).unwrap_or(4096),
            ),
            Err(e) => reply.error(Errno::from_i32(e.raw_os_error())),
        }
    }
}

/// Mounts the floor over `backing` at `mountpoint` with `threads` request threads (with
/// the ring: `threads` entries on each of its per-CPU queues, one thread each, and one
/// `/dev/fuse` thread) and serves it until it is unmounted (`umount mountpoint`).
pub fn serve(
    backing: &Path,
    mountpoint: &Path,
    threads: usize,
    direct: Direct,
    transport: Transport,
) -> io::Result<()> {
    let mut inodes = Inodes {
        next: ROOT,
        ..Inodes::default()
    };
    inodes.paths.insert(ROOT, PathBuf::new());
    inodes.inos.insert(PathBuf::new(), ROOT);
    let floor = Arc::new(Floor {
        backing: backing.to_owned(),
        direct,
        transport,
        inodes: RwLock::new(inodes),
        handles: Default::default(),
        next_handle: AtomicU64::new(1),
        counters: Counters::default(),
    });
    let dev_threads = match transport {
        Transport::DevFuse => threads,
        Transport::Uring => 1,
    };
    let config = reseedfs::sys::fuse::session_config(
        &backing.display().to_string(),
        "fuse_floor",
        dev_threads,
    );
    let session = fuser::Session::new(Shared(Arc::clone(&floor)), mountpoint, &config)?;
    // INIT is answered: with the ring, every request now waits until each queue has an
    // entry registered, then goes to the ring.
    let ring = match transport {
        Transport::DevFuse => None,
        Transport::Uring => Some(ring::start(&session, &floor, threads)?),
    };
    let serving = std::thread::Builder::new()
        .name("fuse-session".into())
        .spawn(move || session.run())?;
    // Only once the session serves: this stats the mount point, a request to ourselves.
    reseedfs::sys::fuse::raise_readahead(mountpoint);
    let served = serving
        .join()
        .map_err(|_| io::Error::other("the FUSE session thread panicked"))?;
    let rang = ring.map_or(Ok(()), fuse_uring::Ring::join);
    served.and(rang)
}

/// The bench binary started again as the FUSE floor's daemon:
/// `--serve-fuse-floor BACKING MOUNTPOINT THREADS cached|honest devfuse|uring`.
pub const SERVE: &str = "--serve-fuse-floor";

/// The floor's daemon: serves what [`daemon`] asked for (the arguments after [`SERVE`])
/// until it is unmounted.
pub fn serve_main(args: &[String]) -> ExitCode {
    let (Some(backing), Some(mountpoint), Some(threads), Some(direct), Some(transport)) = (
        args.first(),
        args.get(1),
        args.get(2).and_then(|t| t.parse::<usize>().ok()),
        args.get(3).and_then(|d| Direct::parse(d)),
        args.get(4).and_then(|t| Transport::parse(t)),
    ) else {
        eprintln!(
            "fuse_floor: usage: {SERVE} BACKING MOUNTPOINT THREADS cached|honest devfuse|uring"
        );
        return ExitCode::FAILURE;
    };
    match serve(
        Path::new(backing),
        Path::new(mountpoint),
        threads,
        direct,
        transport,
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fuse_floor: serving {backing} at {mountpoint}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the floor as bench target `label`: this bench binary again (its `main` hands
/// [`SERVE`] to [`serve_main`]), serving `backing` at `mountpoint` with `threads` request
/// threads, in a process of its own (its CPU time is its own); `bounce` copies write data
/// once before writing it over the ring, as through `/dev/fuse`.
pub fn daemon(
    label: &'static str,
    backing: &Path,
    mountpoint: &Path,
    threads: usize,
    direct: Direct,
    transport: Transport,
    bounce: bool,
) -> io::Result<Daemon> {
    fs::create_dir_all(mountpoint).map_err(|e| with_path(e, "create", mountpoint))?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg(SERVE)
        .arg(backing)
        .arg(mountpoint)
        .arg(threads.to_string())
        .arg(direct.name())
        .arg(transport.name());
    if bounce {
        cmd.env("FUSE_FLOOR_URING_BOUNCE", "1");
    }
    let log = mountpoint.with_extension("log");
    Daemon::start(
        cmd,
        label,
        mountpoint.to_owned(),
        None,
        &log,
        "fuse.fuse_floor",
    )
}
