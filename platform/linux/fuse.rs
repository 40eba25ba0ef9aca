//! The FUSE adapter: `impl fuser::Filesystem` over the core. It converts kernel types to
//! core types and back, and nothing else; every decision is in the core.
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
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, KernelConfig,
    LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, SessionACL, SessionUnmounter, TimeOrNow, WriteFlags,
};

use crate::fs::{Attr, Caller, Core, HandleId, Kind, NodeId, SetAttr, SetTime};
use crate::metrics::{Metrics, Op};

/// How long the kernel may cache attributes and entries. Every change goes through
/// this mount, so the cache is only invalidated by our own replies.
const TTL: Duration = Duration::from_secs(1);

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

struct Adapter {
    core: Arc<Core>,
    /// Request latencies, when the metrics endpoint is on.
    metrics: Option<Arc<Metrics>>,
}

impl Adapter {
    /// Runs `f` (one core call for request `op`), timing it when metrics are on. A panic
    /// in it answers EIO and is recorded by the core; the thread goes on serving.
    #[inline]
    fn call<T>(&self, op: Op, f: impl FnOnce() -> crate::fs::Result<T>) -> crate::fs::Result<T> {
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
}

fn errno(e: crate::fs::Errno) -> Errno {
    Errno::from_i32(e.0)
}

fn kind(k: Kind) -> FileType {
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

fn attr(a: &Attr) -> FileAttr {
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

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
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

impl fuser::Filesystem for Adapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        configure_kernel(config);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        reply_entry(
            self.call(Op::Lookup, || self.core.lookup(node(parent), name)),
            reply,
        );
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let _ = self.call(Op::Forget, || {
            self.core.forget(node(ino), nlookup);
            Ok(())
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let fh = fh.map(|h| HandleId(h.0));
        match self.call(Op::Getattr, || self.core.getattr(node(ino), fh)) {
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
        let fh = fh.map(|h| HandleId(h.0));
        // FUSE_HANDLE_KILLPRIV_V2 makes a truncate's setuid/setgid ours to clear; fuser
        // does not pass FATTR_KILL_SUIDGID on, so the VFS rule is applied here: a
        // truncate by someone else than root clears them (as a write does).
        let kill = size.is_some() && req.uid() != 0;
        let r = self.call(Op::Setattr, || {
            if kill {
                self.core.kill_suidgid(node(ino), fh)?;
            }
            self.core.setattr(node(ino), fh, set)
        });
        match r {
            Ok(a) => reply.attr(&TTL, &attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.call(Op::Readlink, || self.core.readlink(node(ino))) {
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
        let r = self.call(Op::Mknod, || {
            self.core
                .mknod(node(parent), name, mode, u64::from(rdev), caller(req))
        });
        reply_entry(r, reply);
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
        let r = self.call(Op::Mkdir, || {
            self.core.mkdir(node(parent), name, mode, caller(req))
        });
        reply_entry(r, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.call(Op::Unlink, || self.core.remove(node(parent), name, false));
        reply_empty(r, reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.call(Op::Rmdir, || self.core.remove(node(parent), name, true));
        reply_empty(r, reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = self.call(Op::Symlink, || {
            self.core
                .symlink(node(parent), link_name, target, caller(req))
        });
        reply_entry(r, reply);
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
        let r = self.call(Op::Rename, || {
            self.core
                .rename(node(parent), name, node(newparent), newname, flags.bits())
        });
        reply_empty(r, reply);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let r = self.call(Op::Link, || {
            self.core.link(node(ino), node(newparent), newname)
        });
        reply_entry(r, reply);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        // An open with O_TRUNC truncates: by someone else than root it clears setuid and
        // setgid (FUSE_OPEN_KILL_SUIDGID, which fuser does not pass on).
        let kill = flags.0 & libc::O_TRUNC != 0 && req.uid() != 0;
        let r = self.call(Op::Open, || {
            if kill {
                self.core.kill_suidgid(node(ino), None)?;
            }
            self.core.open(node(ino), flags.0)
        });
        match r {
            Ok(h) => reply.opened(FileHandle(h.0), FopenFlags::empty()),
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
            let r = self.call(Op::Read, || {
                self.core.read(HandleId(fh.0), offset, &mut buf[..size])
            });
            match r {
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
        let r = self.call(Op::Write, || {
            if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
                self.core.kill_suidgid(node(ino), Some(HandleId(fh.0)))?;
            }
            self.core.write(HandleId(fh.0), offset, data)
        });
        match r {
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
        let _ = self.call(Op::Release, || {
            self.core.release(HandleId(fh.0));
            Ok(())
        });
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
        let r = self.call(Op::Fsync, || self.core.fsync(HandleId(fh.0), datasync));
        reply_empty(r, reply);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.call(Op::Opendir, || self.core.opendir(node(ino))) {
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
        let r = self.call(Op::Readdir, || {
            self.core.readdir(HandleId(fh.0), offset, |e, next| {
                reply.add(INodeNo(e.node.0), next, kind(e.kind), &e.name)
            })
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
        let _ = self.call(Op::Releasedir, || {
            self.core.release(HandleId(fh.0));
            Ok(())
        });
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
        reply_empty(
            self.call(Op::Fsyncdir, || self.core.fsyncdir(node(ino))),
            reply,
        );
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        match self.call(Op::Statfs, || self.core.statfs(node(ino))) {
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
        let r = self.call(Op::Setxattr, || {
            self.core.setxattr(node(ino), name, value, flags)
        });
        reply_empty(r, reply);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let mut buf = vec![0u8; size as usize];
        match self.call(Op::Getxattr, || {
            self.core.getxattr(node(ino), name, &mut buf)
        }) {
            Ok(n) if size == 0 => reply.size(u32::try_from(n).unwrap_or(u32::MAX)),
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let mut buf = vec![0u8; size as usize];
        match self.call(Op::Listxattr, || self.core.listxattr(node(ino), &mut buf)) {
            Ok(n) if size == 0 => reply.size(u32::try_from(n).unwrap_or(u32::MAX)),
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.call(Op::Removexattr, || self.core.removexattr(node(ino), name));
        reply_empty(r, reply);
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
        let r = self.call(Op::Create, || {
            self.core
                .create(node(parent), name, mode, flags, caller(req))
        });
        match r {
            Ok((a, h)) => reply.created(
                &TTL,
                &attr(&a),
                Generation(0),
                FileHandle(h.0),
                FopenFlags::empty(),
            ),
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
        let r = self.call(Op::Fallocate, || {
            self.core.fallocate(HandleId(fh.0), offset, length, mode)
        });
        reply_empty(r, reply);
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
        match self.call(Op::Lseek, || {
            self.core.lseek(HandleId(fh.0), offset, whence)
        }) {
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
}

impl std::fmt::Debug for FuseMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FuseMount").finish_non_exhaustive()
    }
}

/// Mounts `core` at `mountpoint` (type `fuse.reseedfs`, `allow_other`,
/// `default_permissions`, source `fsname`: the config file, as in an fstab line) served by
/// `threads` request threads, timing every request into `metrics` when given.
pub fn mount(
    core: Arc<Core>,
    mountpoint: &Path,
    threads: usize,
    fsname: &str,
    metrics: Option<Arc<Metrics>>,
) -> io::Result<FuseMount> {
    let config = session_config(fsname, "reseedfs", threads);
    let mut session = fuser::Session::new(Adapter { core, metrics }, mountpoint, &config)?;
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
        unmounted.and(joined)
    }
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
