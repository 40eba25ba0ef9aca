//! The FUSE adapter over the core. It converts kernel types to core types and back, and
//! nothing else; every decision is in the core.
//!
//! Two transports, one semantics: `Ops` holds each request's core call, panic guard and
//! metrics once; `/dev/fuse` (fuser's `Filesystem`, `Adapter`) and FUSE over io_uring
//! (`fuse_ring`, chosen by the `fuse_transport` setting) decode requests and encode
//! replies their own way around the same calls, so the two cannot drift apart.
//!
//! Locks: POSIX and flock locks are left to the kernel (getlk/setlk are not
//! implemented, so the kernel keeps them locally), which is exact for one host where
//! every process reaches the files through this one mount.
//!
//! Panics are contained here: every core call runs under `catch_unwind`, so a bug that
//! panics answers its request with EIO and is recorded (event 3060), and the request
//! thread goes on serving. Without it, each panic would end one of the session's request
//! threads for good, and the mount would stop answering after `threads` of them. The
//! core's locks are `parking_lot`'s, which a panic does not poison.

use std::cell::RefCell;
use std::ffi::OsStr;
use std::io;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, KernelConfig,
    LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, SessionACL, SessionUnmounter, TimeOrNow, WriteFlags,
};

use crate::config::FuseTransport;
use crate::fs::{Attr, Caller, Core, DirEntry, HandleId, Kind, NodeId, SetAttr, SetTime, StatFs};
use crate::metrics::{Metrics, Op};

use super::{fuse_ring, fuse_uring};

/// How long the kernel may cache attributes and entries. Every change goes through
/// this mount, so the cache is only invalidated by our own replies.
pub(crate) const TTL: Duration = Duration::from_secs(1);

/// The largest write the kernel sends (its cap is 1 MiB with max_pages 256). Larger
/// requests (root may raise `fs.fuse.max_pages_limit`; fuser takes up to 16 MiB) were
/// measured and not kept: 4 and 16 MiB `O_DIRECT` writes fell from 0.57 to 0.12-0.18 of
/// the disk (a 16 MiB write arrives as one request on one thread instead of 16 in
/// parallel, and its two copies run out of cache), and reads gained nothing (README,
/// "Larger FUSE requests").
const MAX_WRITE: u32 = 1 << 20;

/// The readahead window of the mount: sequential reads arrive as requests of this size.
const READ_AHEAD: u32 = 1 << 20;

/// The most background requests (async direct I/O, readahead) the kernel keeps in flight.
const MAX_BACKGROUND: u16 = 128;

/// What this daemon asks of the kernel at FUSE INIT: request sizes, features and queue
/// limits. Public so that the throughput bench's FUSE floor (`benches/floor/`) asks for
/// exactly the same and measures the same stack.
pub fn configure_kernel(config: &mut KernelConfig) {
    let _ = config.set_max_write(MAX_WRITE);
    let _ = config.set_max_readahead(READ_AHEAD);
    let _ = config.add_capabilities(fuser::InitFlags::FUSE_PARALLEL_DIROPS);
    // O_DIRECT aio (libaio, io_uring) reaches us as concurrent requests instead of one
    // at a time: without it the kernel runs every direct request synchronously in the
    // submitter, so a queue depth of 32 arrives as depth 1.
    let _ = config.add_capabilities(fuser::InitFlags::FUSE_ASYNC_DIO);
    // Async direct I/O and readahead are background requests, capped at
    // max_background in flight (fuser's default: 16).
    let _ = config.set_max_background(MAX_BACKGROUND);
    let _ = config.set_congestion_threshold(MAX_BACKGROUND / 4 * 3);
    // We clear setuid/setgid ourselves (FUSE_WRITE_KILL_SUIDGID), so the kernel stops
    // asking for security.capability before every write.
    let _ = config.add_capabilities(fuser::InitFlags::FUSE_HANDLE_KILLPRIV_V2);
}

/// The session settings of a mount of type `fuse.<subtype>` from `fsname`, served by
/// `threads` request threads, each with its own cloned `/dev/fuse` descriptor. Public for
/// the same reason as [`configure_kernel`].
pub fn session_config(fsname: &str, subtype: &str, threads: usize) -> fuser::Config {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName(fsname.into()),
        MountOption::CUSTOM(format!("subtype={subtype}")),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    config.acl = SessionACL::All;
    config.n_threads = Some(threads.max(1));
    config.clone_fd = true;
    config
}

/// The adapter's semantics, once for both transports: each request's core call, its panic
/// guard and its metrics. `/dev/fuse` (fuser's [`Adapter`] below) and the io_uring ring
/// (`fuse_ring`) decode requests their own way, call these, and encode the answer their own
/// way; neither adds a rule of its own.
pub(crate) struct Ops {
    core: Arc<Core>,
    /// Request latencies, when the metrics endpoint is on.
    metrics: Option<Arc<Metrics>>,
}

impl Ops {
    /// Runs `f` (one core call for request `op`), timing it when metrics are on. A panic
    /// in it answers EIO and is recorded by the core; the thread goes on serving.
    #[inline]
    fn call<T>(&self, op: Op, f: impl FnOnce() -> crate::fs::Result<T>) -> crate::fs::Result<T> {
        crate::volume::serve_requests();
        let contained = || match std::panic::catch_unwind(AssertUnwindSafe(f)) {
            Ok(r) => r,
            Err(payload) => {
                let what = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".into());
                // Recording must not take the thread down either.
                let _ = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    self.core.request_panicked(op.name(), &what)
                }));
                Err(crate::fs::Errno(libc::EIO))
            }
        };
        match &self.metrics {
            None => contained(),
            Some(m) => {
                let start = std::time::Instant::now();
                let r = contained();
                m.observe(op, start.elapsed());
                r
            }
        }
    }

    pub(crate) fn lookup(&self, parent: NodeId, name: &OsStr) -> crate::fs::Result<Attr> {
        self.call(Op::Lookup, || self.core.lookup(parent, name))
    }

    pub(crate) fn forget(&self, ino: NodeId, nlookup: u64) {
        let _ = self.call(Op::Forget, || {
            self.core.forget(ino, nlookup);
            Ok(())
        });
    }

    pub(crate) fn getattr(&self, ino: NodeId, fh: Option<HandleId>) -> crate::fs::Result<Attr> {
        self.call(Op::Getattr, || self.core.getattr(ino, fh))
    }

    /// `caller_uid`: who asks. FUSE_HANDLE_KILLPRIV_V2 makes a truncate's setuid/setgid
    /// ours to clear; neither transport passes FATTR_KILL_SUIDGID on (fuser does not), so
    /// the VFS rule is applied here: a truncate by someone else than root clears them (as
    /// a write does).
    pub(crate) fn setattr(
        &self,
        caller_uid: u32,
        ino: NodeId,
        fh: Option<HandleId>,
        set: SetAttr,
    ) -> crate::fs::Result<Attr> {
        let kill = set.size.is_some() && caller_uid != 0;
        self.call(Op::Setattr, || {
            if kill {
                self.core.kill_suidgid(ino, fh)?;
            }
            self.core.setattr(ino, fh, set)
        })
    }

    pub(crate) fn readlink(&self, ino: NodeId) -> crate::fs::Result<Vec<u8>> {
        self.call(Op::Readlink, || self.core.readlink(ino))
    }

    pub(crate) fn mknod(
        &self,
        parent: NodeId,
        name: &OsStr,
        mode: u32,
        rdev: u32,
        who: Caller,
    ) -> crate::fs::Result<Attr> {
        self.call(Op::Mknod, || {
            self.core.mknod(parent, name, mode, u64::from(rdev), who)
        })
    }

    pub(crate) fn mkdir(
        &self,
        parent: NodeId,
        name: &OsStr,
        mode: u32,
        who: Caller,
    ) -> crate::fs::Result<Attr> {
        self.call(Op::Mkdir, || self.core.mkdir(parent, name, mode, who))
    }

    pub(crate) fn unlink(&self, parent: NodeId, name: &OsStr) -> crate::fs::Result<()> {
        self.call(Op::Unlink, || self.core.remove(parent, name, false))
    }

    pub(crate) fn rmdir(&self, parent: NodeId, name: &OsStr) -> crate::fs::Result<()> {
        self.call(Op::Rmdir, || self.core.remove(parent, name, true))
    }

    pub(crate) fn symlink(
        &self,
        parent: NodeId,
        name: &OsStr,
        target: &Path,
        who: Caller,
    ) -> crate::fs::Result<Attr> {
        self.call(Op::Symlink, || self.core.symlink(parent, name, target, who))
    }

    pub(crate) fn rename(
        &self,
        parent: NodeId,
        name: &OsStr,
        newparent: NodeId,
        newname: &OsStr,
        flags: u32,
    ) -> crate::fs::Result<()> {
        self.call(Op::Rename, || {
            self.core.rename(parent, name, newparent, newname, flags)
        })
    }

    pub(crate) fn link(
        &self,
        ino: NodeId,
        newparent: NodeId,
        newname: &OsStr,
    ) -> crate::fs::Result<Attr> {
        self.call(Op::Link, || self.core.link(ino, newparent, newname))
    }

    /// An open with O_TRUNC truncates: by someone else than root it clears setuid and
    /// setgid (FUSE_OPEN_KILL_SUIDGID, which fuser does not pass on).
    ///
    /// The open flags ask the kernel to keep the file's page cache (`FOPEN_KEEP_CACHE`)
    /// where the core says it stays true
    /// ([`Core::keeps_cache`](crate::fs::Core::keeps_cache)): without it every open drops
    /// the file's cached pages, and a database that opens a table again (a new session, a
    /// vacuum worker) reads all of it again through the daemon.
    pub(crate) fn open(
        &self,
        caller_uid: u32,
        ino: NodeId,
        flags: i32,
    ) -> crate::fs::Result<(HandleId, FopenFlags)> {
        let kill = flags & libc::O_TRUNC != 0 && caller_uid != 0;
        self.call(Op::Open, || {
            if kill {
                self.core.kill_suidgid(ino, None)?;
            }
            let h = self.core.open(ino, without_sync(flags))?;
            Ok((h, self.open_flags(h)))
        })
    }

    /// The open flags of file handle `h` (see [`Ops::open`]).
    fn open_flags(&self, h: HandleId) -> FopenFlags {
        if self.core.keeps_cache(h) {
            FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        }
    }

    /// Reads into `buf`, which is page-aligned so that the core may read it with O_DIRECT.
    pub(crate) fn read(
        &self,
        fh: HandleId,
        offset: u64,
        buf: &mut [u8],
    ) -> crate::fs::Result<usize> {
        self.call(Op::Read, || self.core.read(fh, offset, buf))
    }

    /// `kill_suidgid`: the kernel asked us to clear setuid/setgid (FUSE_WRITE_KILL_SUIDGID).
    pub(crate) fn write(
        &self,
        ino: NodeId,
        fh: HandleId,
        offset: u64,
        data: &[u8],
        kill_suidgid: bool,
    ) -> crate::fs::Result<usize> {
        self.call(Op::Write, || {
            if kill_suidgid {
                self.core.kill_suidgid(ino, Some(fh))?;
            }
            self.core.write(fh, offset, data)
        })
    }

    pub(crate) fn release(&self, fh: HandleId) {
        let _ = self.call(Op::Release, || {
            self.core.release(fh);
            Ok(())
        });
    }

    pub(crate) fn fsync(&self, fh: HandleId, datasync: bool) -> crate::fs::Result<()> {
        self.call(Op::Fsync, || self.core.fsync(fh, datasync))
    }

    pub(crate) fn opendir(&self, ino: NodeId) -> crate::fs::Result<HandleId> {
        self.call(Op::Opendir, || self.core.opendir(ino))
    }

    /// `add(entry, next)` returns true once the reply is full.
    pub(crate) fn readdir(
        &self,
        fh: HandleId,
        offset: u64,
        add: impl FnMut(&DirEntry, u64) -> bool,
    ) -> crate::fs::Result<()> {
        self.call(Op::Readdir, || self.core.readdir(fh, offset, add))
    }

    pub(crate) fn releasedir(&self, fh: HandleId) {
        let _ = self.call(Op::Releasedir, || {
            self.core.release(fh);
            Ok(())
        });
    }

    pub(crate) fn fsyncdir(&self, ino: NodeId) -> crate::fs::Result<()> {
        self.call(Op::Fsyncdir, || self.core.fsyncdir(ino))
    }

    pub(crate) fn statfs(&self, ino: NodeId) -> crate::fs::Result<StatFs> {
        self.call(Op::Statfs, || self.core.statfs(ino))
    }

    pub(crate) fn setxattr(
        &self,
        ino: NodeId,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> crate::fs::Result<()> {
        self.call(Op::Setxattr, || self.core.setxattr(ino, name, value, flags))
    }

    /// The value's length; with an empty `buf`, only its length (a size query).
    pub(crate) fn getxattr(
        &self,
        ino: NodeId,
        name: &OsStr,
        buf: &mut [u8],
    ) -> crate::fs::Result<usize> {
        self.call(Op::Getxattr, || self.core.getxattr(ino, name, buf))
    }

    pub(crate) fn listxattr(&self, ino: NodeId, buf: &mut [u8]) -> crate::fs::Result<usize> {
        self.call(Op::Listxattr, || self.core.listxattr(ino, buf))
    }

    pub(crate) fn removexattr(&self, ino: NodeId, name: &OsStr) -> crate::fs::Result<()> {
        self.call(Op::Removexattr, || self.core.removexattr(ino, name))
    }

    pub(crate) fn create(
        &self,
        parent: NodeId,
        name: &OsStr,
        mode: u32,
        flags: i32,
        who: Caller,
    ) -> crate::fs::Result<(Attr, HandleId, FopenFlags)> {
        self.call(Op::Create, || {
            let (a, h) = self
                .core
                .create(parent, name, mode, without_sync(flags), who)?;
            Ok((a, h, self.open_flags(h)))
        })
    }

    pub(crate) fn fallocate(
        &self,
        fh: HandleId,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> crate::fs::Result<()> {
        self.call(Op::Fallocate, || {
            self.core.fallocate(fh, offset, length, mode)
        })
    }

    pub(crate) fn lseek(&self, fh: HandleId, offset: i64, whence: i32) -> crate::fs::Result<i64> {
        self.call(Op::Lseek, || self.core.lseek(fh, offset, whence))
    }
}

fn errno(e: crate::fs::Errno) -> Errno {
    Errno::from_i32(e.0)
}

/// fuser's file type of `k` (the ring encodes the same).
pub(crate) fn kind(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::BlockDevice => FileType::BlockDevice,
        Kind::CharDevice => FileType::CharDevice,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
    }
}

/// The attributes of a reply, for either transport.
pub(crate) fn attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.node.0),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: kind(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

fn node(ino: INodeNo) -> NodeId {
    NodeId(ino.0)
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

/// The core's time to set of a decoded one (either transport).
pub(crate) fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(t),
    })
}

fn reply_entry(r: crate::fs::Result<Attr>, reply: ReplyEntry) {
    match r {
        Ok(a) => reply.entry(&TTL, &attr(&a), Generation(0)),
        Err(e) => reply.error(errno(e)),
    }
}

fn reply_empty(r: crate::fs::Result<()>, reply: ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

thread_local! {
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The `/dev/fuse` transport: fuser's `Filesystem` over [`Ops`]. With the ring it still
/// answers INIT (asking for FUSE_OVER_IO_URING) and serves what the kernel sends through
/// `/dev/fuse` (FORGET, INTERRUPT).
struct Adapter {
    ops: Arc<Ops>,
    /// Set when the ring is wanted: whether the kernel granted FUSE_OVER_IO_URING at INIT.
    ring: Option<Arc<AtomicBool>>,
}

impl fuser::Filesystem for Adapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        configure_kernel(config);
        if let Some(granted) = &self.ring {
            // Refused when root has not set enable_uring (or the kernel has no ring): the
            // mount then goes on over /dev/fuse (see `mount`).
            let ok = config
                .add_capabilities(fuser::InitFlags::FUSE_OVER_IO_URING)
                .is_ok();
            granted.store(ok, Ordering::Release);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        reply_entry(self.ops.lookup(node(parent), name), reply);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.ops.forget(node(ino), nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.ops.getattr(node(ino), fh.map(|h| HandleId(h.0))) {
            Ok(a) => reply.attr(&TTL, &attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
        };
        match self
            .ops
            .setattr(req.uid(), node(ino), fh.map(|h| HandleId(h.0)), set)
        {
            Ok(a) => reply.attr(&TTL, &attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.ops.readlink(node(ino)) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        reply_entry(
            self.ops.mknod(node(parent), name, mode, rdev, caller(req)),
            reply,
        );
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
        reply_entry(self.ops.mkdir(node(parent), name, mode, caller(req)), reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(self.ops.unlink(node(parent), name), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(self.ops.rmdir(node(parent), name), reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        reply_entry(
            self.ops
                .symlink(node(parent), link_name, target, caller(req)),
            reply,
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            self.ops
                .rename(node(parent), name, node(newparent), newname, flags.bits()),
            reply,
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply_entry(self.ops.link(node(ino), node(newparent), newname), reply);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.ops.open(req.uid(), node(ino), flags.0) {
            Ok((h, open_flags)) => reply.opened(FileHandle(h.0), open_flags),
            Err(e) => reply.error(errno(e)),
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
        READ_BUF.with_borrow_mut(|buf| {
            let size = size as usize;
            // Page-aligned, so that the core may read it with O_DIRECT.
            let align = crate::copyset::DIRECT_ALIGN;
            if buf.len() < size + align {
                buf.resize(size + align, 0);
            }
            let start = buf.as_ptr().align_offset(align);
            let buf = &mut buf[start..];
            match self.ops.read(HandleId(fh.0), offset, &mut buf[..size]) {
                Ok(n) => reply.data(&buf[..n]),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        match self
            .ops
            .write(node(ino), HandleId(fh.0), offset, data, kill)
        {
            Ok(n) => reply.written(u32::try_from(n).unwrap_or(u32::MAX)),
            Err(e) => reply.error(errno(e)),
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
        self.ops.release(HandleId(fh.0));
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
        reply_empty(self.ops.fsync(HandleId(fh.0), datasync), reply);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.ops.opendir(node(ino)) {
            Ok(h) => reply.opened(FileHandle(h.0), FopenFlags::empty()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let r = self.ops.readdir(HandleId(fh.0), offset, |e, next| {
            reply.add(INodeNo(e.node.0), next, kind(e.kind), &e.name)
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.ops.releasedir(HandleId(fh.0));
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(self.ops.fsyncdir(node(ino)), reply);
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        match self.ops.statfs(node(ino)) {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply_empty(self.ops.setxattr(node(ino), name, value, flags), reply);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let mut buf = vec![0u8; size as usize];
        match self.ops.getxattr(node(ino), name, &mut buf) {
            Ok(n) if size == 0 => reply.size(u32::try_from(n).unwrap_or(u32::MAX)),
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let mut buf = vec![0u8; size as usize];
        match self.ops.listxattr(node(ino), &mut buf) {
            Ok(n) if size == 0 => reply.size(u32::try_from(n).unwrap_or(u32::MAX)),
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(self.ops.removexattr(node(ino), name), reply);
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
        match self
            .ops
            .create(node(parent), name, mode, flags, caller(req))
        {
            Ok((a, h, open_flags)) => {
                reply.created(&TTL, &attr(&a), Generation(0), FileHandle(h.0), open_flags)
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            self.ops.fallocate(HandleId(fh.0), offset, length, mode),
            reply,
        );
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self.ops.lseek(HandleId(fh.0), offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(errno(e)),
        }
    }
}

/// A live FUSE mount.
pub struct FuseMount {
    mountpoint: std::path::PathBuf,
    unmounted: std::sync::atomic::AtomicBool,
    unmounter: SessionUnmounter,
    session: JoinHandle<io::Result<()>>,
    /// The ring's threads, when the ring serves.
    ring: Option<fuse_uring::Ring>,
    /// Why the ring was asked for and `/dev/fuse` serves instead.
    fallback: Option<String>,
}

impl std::fmt::Debug for FuseMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FuseMount")
            .field("transport", &self.transport())
            .finish_non_exhaustive()
    }
}

/// Mounts `core` at `mountpoint` (type `fuse.reseedfs`, `allow_other`,
/// `default_permissions`, source `fsname`: the config file, as in an fstab line) served by
/// `threads` request threads over `/dev/fuse`, timing every request into `metrics` when
/// given.
pub fn mount(
    core: Arc<Core>,
    mountpoint: &Path,
    threads: usize,
    fsname: &str,
    metrics: Option<Arc<Metrics>>,
) -> io::Result<FuseMount> {
    mount_with(
        core,
        mountpoint,
        threads,
        FuseTransport::DevFuse,
        fsname,
        metrics,
    )
}

/// As [`mount`], over `transport`. With [`FuseTransport::Uring`], `threads` ring entries
/// on each of the kernel's per-CPU queues (one thread each) serve the requests, and one
/// `/dev/fuse` thread what the kernel still sends there (FORGET, INTERRUPT); when the ring
/// cannot be had (root has not set `enable_uring`, an older kernel, io_uring refused), the
/// mount is served over `/dev/fuse` and says why once ([`FuseMount::fallback`], a warning
/// in the log). The daemon never sets the knob itself.
pub fn mount_with(
    core: Arc<Core>,
    mountpoint: &Path,
    threads: usize,
    transport: FuseTransport,
    fsname: &str,
    metrics: Option<Arc<Metrics>>,
) -> io::Result<FuseMount> {
    let ops = Arc::new(Ops { core, metrics });
    let fallback = match transport {
        FuseTransport::DevFuse => None,
        FuseTransport::Uring => match mount_ring(&ops, mountpoint, threads, fsname) {
            Ok(m) => return Ok(m),
            Err(why) => {
                let why = format!(
                    "fuse_transport = \"uring\" asked for FUSE over io_uring, but {why}; serving \
                     over /dev/fuse instead. To allow the ring, root sets `echo 1 > {}` (or \
                     loads fuse with `modprobe fuse enable_uring=1`) before the mount; \
                     reseedfs never sets it itself",
                    fuse_uring::ENABLE_URING
                );
                tracing::warn!("{why}");
                Some(why)
            }
        },
    };
    let config = session_config(fsname, "reseedfs", threads);
    let session = fuser::Session::new(Adapter { ops, ring: None }, mountpoint, &config)?;
    serve(session, mountpoint, None, fallback)
}

/// The ring, or why not (the mount is then undone, and `/dev/fuse` takes over).
fn mount_ring(
    ops: &Arc<Ops>,
    mountpoint: &Path,
    threads: usize,
    fsname: &str,
) -> Result<FuseMount, String> {
    // The knob decides what the kernel offers at INIT: look first, so that the usual
    // refusal costs no mount.
    fuse_uring::available()?;
    let granted = Arc::new(AtomicBool::new(false));
    let adapter = Adapter {
        ops: Arc::clone(ops),
        ring: Some(Arc::clone(&granted)),
    };
    let config = session_config(fsname, "reseedfs", 1);
    let session = fuser::Session::new(adapter, mountpoint, &config)
        .map_err(|e| format!("the mount failed: {e}"))?;
    if !granted.load(Ordering::Acquire) {
        // Dropping the session unmounts it.
        return Err(format!(
            "the kernel did not offer FUSE_OVER_IO_URING at INIT (is {} still set?)",
            fuse_uring::ENABLE_URING
        ));
    }
    let ring_config = fuse_uring::RingConfig {
        threads_per_queue: threads.max(1),
        payload_bytes: fuse_ring::PAYLOAD_BYTES,
        pin: false,
    };
    // INIT is answered: every request now waits until each queue has an entry, then goes
    // to the ring. A ring that cannot start leaves the mount unusable: undo it.
    let ring =
        fuse_uring::Ring::start(&session, ring_config, Arc::new(fuse_ring::Served::new(ops)))
            .map_err(|e| format!("the ring did not start: {e}"))?;
    tracing::info!(
        "FUSE over io_uring: {} queue(s) x {} entries",
        fuse_uring::queue_count().unwrap_or(0),
        ring_config.threads_per_queue
    );
    serve(session, mountpoint, Some(ring), None).map_err(|e| format!("serving failed: {e}"))
}

/// Starts `session`'s `/dev/fuse` thread(s) and raises the mount's readahead.
fn serve(
    mut session: fuser::Session<Adapter>,
    mountpoint: &Path,
    ring: Option<fuse_uring::Ring>,
    fallback: Option<String>,
) -> io::Result<FuseMount> {
    let unmounter = session.unmount_callable();
    let session = std::thread::Builder::new()
        .name("fuse-session".into())
        .spawn(move || session.run())?;
    raise_readahead(mountpoint);
    Ok(FuseMount {
        mountpoint: mountpoint.to_owned(),
        unmounted: std::sync::atomic::AtomicBool::new(false),
        unmounter,
        session,
        ring,
        fallback,
    })
}

/// Reads reach us in the size of the mount's readahead window (128 KiB by default);
/// raise it so sequential reads come as 1 MiB requests (needs root; public for the bench's
/// FUSE floor and the other daemons it compares).
pub fn raise_readahead(mountpoint: &Path) {
    let Ok(st) = rustix::fs::stat(mountpoint) else {
        return;
    };
    let dev = st.st_dev;
    let knob = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        rustix::fs::major(dev),
        rustix::fs::minor(dev)
    );
    if let Err(err) = std::fs::write(&knob, (READ_AHEAD / 1024).to_string()) {
        tracing::debug!(%knob, %err, "cannot raise the mount's readahead (needs root)");
    }
}

impl FuseMount {
    /// True once the session ended (unmounted by us or by `umount`).
    pub fn is_finished(&self) -> bool {
        self.session.is_finished()
    }

    /// Tries to unmount; `EBUSY` while a process still has files open under the mount,
    /// which then keeps serving. After `Ok`, [`FuseMount::unmount`] finishes the session.
    pub fn try_unmount(&self) -> io::Result<()> {
        if self.is_finished() {
            return Ok(());
        }
        // A reference can linger for a moment after its owner let go (a process exiting,
        // a fork that has not exec'd yet): retry for a second before calling it busy.
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        loop {
            match rustix::mount::unmount(&self.mountpoint, rustix::mount::UnmountFlags::empty()) {
                Ok(()) => break,
                Err(rustix::io::Errno::BUSY) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.unmounted
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Unmounts (if still mounted) and waits for the request threads to end.
    pub fn unmount(mut self) -> io::Result<()> {
        let unmounted = if self.unmounted.load(std::sync::atomic::Ordering::Acquire) {
            Ok(())
        } else {
            self.unmounter.unmount()
        };
        let joined = self
            .session
            .join()
            .map_err(|_| io::Error::other("the FUSE session thread panicked"))?;
        // The connection is gone: every ring entry's command ends with it.
        let rang = self.ring.take().map_or(Ok(()), fuse_uring::Ring::join);
        unmounted.and(joined).and(rang)
    }

    /// The transport serving the mount.
    pub fn transport(&self) -> FuseTransport {
        if self.ring.is_some() {
            FuseTransport::Uring
        } else {
            FuseTransport::DevFuse
        }
    }

    /// Why the ring was asked for and `/dev/fuse` serves instead (`None`: as configured).
    pub fn fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }
}

/// The open flags the core is given: `O_SYNC` and `O_DSYNC` taken off. The kernel follows
/// every write of such a handle with an `FSYNC` request of its own (`generic_write_sync`,
/// before the write returns to its caller; `O_SYNC` asks for the full `fsync`), and that
/// request makes the write durable on every copy in sync. Backing files opened `O_DSYNC`
/// too would flush each disk twice per write (the write's, then the `fsync`'s), and each
/// copy's write would wait for its disk in turn. `tests/metrics.rs` checks that the
/// `FSYNC` comes.
fn without_sync(flags: i32) -> i32 {
    flags & !(libc::O_SYNC | libc::O_DSYNC)
}

// The failpoint `fs::lookup` panics a lookup: `cargo test` has the feature without a flag.
#[cfg(all(test, feature = "failpoints"))]
mod tests {
    use std::time::Duration;

    use crate::events::EventId;
    use crate::fs::tests::Bed;

    /// Runs `f` on another thread; `None` when it did not finish within `limit` (a mount
    /// with no request thread left hangs instead of answering).
    fn within<T: Send + 'static>(
        limit: Duration,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(limit).ok()
    }

    #[test]
    fn r13_a_panicking_request_answers_eio_and_its_thread_keeps_serving() {
        if let Err(why) = crate::testbed::mount_privileges() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "cannot mount in CI: {why}"
            );
            eprintln!(
                "\n{0}\nSKIPPED: fuse panic containment: {why}\n{0}",
                "=".repeat(70)
            );
            return;
        }
        let scenario = fail::FailScenario::setup();
        let bed = Bed::new("fuse-panics", 2, 2);
        let (core, sink) = bed.open();
        let mnt = bed.root.join("mnt");
        std::fs::create_dir_all(&mnt).expect("mountpoint");
        let threads = 2;
        let mount = super::mount(core, &mnt, threads, "reseedfs-panics", None).expect("mount");
        let files = mnt.join("db001/db001.db");
        // Only lookups of this name panic: other tests run beside this one.
        fail::cfg("fs::lookup", "return(reseedfs-failpoint-boom)").expect("failpoint");
        // Five times as many panics as request threads: without containment the mount
        // has no thread left after the first `threads` of them, and hangs.
        let panics = threads * 5;
        let answers = within(Duration::from_secs(60), {
            let files = files.clone();
            move || {
                let errs: Vec<Option<i32>> = (0..panics)
                    .map(|_| {
                        std::fs::metadata(files.join("reseedfs-failpoint-boom"))
                            .err()
                            .and_then(|e| e.raw_os_error())
                    })
                    .collect();
                std::fs::write(files.join("after"), b"still served").expect("write after");
                let back = std::fs::read(files.join("after")).expect("read after");
                (errs, back)
            }
        });
        fail::remove("fs::lookup");
        scenario.teardown();
        let Some((errs, back)) = answers else {
            let _ = rustix::mount::unmount(&mnt, rustix::mount::UnmountFlags::DETACH);
            panic!("the mount stopped answering after panics in its request threads");
        };
        assert!(errs.iter().all(|e| *e == Some(libc::EIO)), "{errs:?}");
        assert_eq!(back, b"still served");
        let recorded = sink
            .0
            .lock()
            .iter()
            .filter(|e| e.id == EventId::RequestPanicked)
            .count();
        assert_eq!(recorded, panics, "one event 3060 per panic");
        let e = sink
            .0
            .lock()
            .iter()
            .find(|e| e.id == EventId::RequestPanicked)
            .cloned()
            .expect("event");
        assert_eq!(e.fields["operation"], "lookup");
        assert!(
            e.fields["panic"]
                .as_str()
                .is_some_and(|p| p.contains("reseedfs-failpoint-boom")),
            "{e:?}"
        );
        mount.unmount().expect("unmount");
    }
}
