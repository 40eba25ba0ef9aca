//! The platform-neutral filesystem core: the node and handle tables and every operation
//! the adapters (FUSE, later WinFsp) call. It knows no kernel types: nodes are
//! [`NodeId`]s, open files are [`HandleId`]s, errors are [`Errno`]s.
//!
//! The tree it presents:
//!
//! ```text
//! /                  root (virtual, read-only): one directory per database
//! /<db>/             database directory (virtual, read-only): <db>.db and <db>.log
//! /<db>/<db>.db/...  backing files: the same relative path on every copy's volume
//! ```
//!
//! Node ids are handed out on first lookup and stay the same for a path while the
//! mount lives (renames carry them along; hard links share them).

mod node;

use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::names::CopySlot;
use crate::names::DbName;
use crate::volume::{
    FallocateFlags, FileType, Mode, OFlags, RenameFlags, SeekFrom, Stat, Timespec, Timestamps,
};
use parking_lot::RwLock;

use crate::copyset::{Database, OpenFiles, SeedFile};
use crate::events::{EventId, NewEvent};
use crate::layout::{self, ComponentError};
use crate::pool::Pool;
use crate::volume::{child_path, posix};

use node::Table;
pub use node::{Node, NodeId, Place};

/// An errno for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl From<io::Error> for Errno {
    fn from(e: io::Error) -> Errno {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl From<ComponentError> for Errno {
    fn from(e: ComponentError) -> Errno {
        match e {
            ComponentError::TooLong => Errno(libc::ENAMETOOLONG),
            ComponentError::Invalid => Errno(libc::EINVAL),
        }
    }
}

/// Result of a core operation.
pub type Result<T> = std::result::Result<T, Errno>;

/// An open file or directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HandleId(pub u64);

/// Kinds of nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Block device.
    BlockDevice,
    /// Character device.
    CharDevice,
    /// FIFO.
    Fifo,
    /// Unix socket.
    Socket,
}

impl Kind {
    fn from_mode(mode: u32) -> Kind {
        match FileType::from_raw_mode(mode) {
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            FileType::BlockDevice => Kind::BlockDevice,
            FileType::CharacterDevice => Kind::CharDevice,
            FileType::Fifo => Kind::Fifo,
            FileType::Socket => Kind::Socket,
            _ => Kind::File,
        }
    }
}

/// Attributes of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// The node.
    pub node: NodeId,
    /// Size in bytes.
    pub size: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    /// Access time.
    pub atime: SystemTime,
    /// Modification time.
    pub mtime: SystemTime,
    /// Change time.
    pub ctime: SystemTime,
    /// Kind.
    pub kind: Kind,
    /// Permission bits (with setuid/setgid/sticky).
    pub perm: u16,
    /// Hard links.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number.
    pub rdev: u32,
    /// Preferred I/O size.
    pub blksize: u32,
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    let nsec = u32::try_from(nsec.clamp(0, 999_999_999)).unwrap_or(0);
    if sec >= 0 {
        SystemTime::UNIX_EPOCH + Duration::new(sec.unsigned_abs(), nsec)
    } else {
        SystemTime::UNIX_EPOCH - Duration::new(sec.unsigned_abs(), 0) + Duration::new(0, nsec)
    }
}

impl Attr {
    fn from_stat(node: NodeId, st: &Stat) -> Attr {
        Attr {
            node,
            size: u64::try_from(st.st_size).unwrap_or(0),
            blocks: u64::try_from(st.st_blocks).unwrap_or(0),
            atime: time(st.st_atime, st.st_atime_nsec as i64),
            mtime: time(st.st_mtime, st.st_mtime_nsec as i64),
            ctime: time(st.st_ctime, st.st_ctime_nsec as i64),
            kind: Kind::from_mode(st.st_mode),
            perm: (st.st_mode & 0o7777) as u16,
            nlink: u32::try_from(st.st_nlink).unwrap_or(u32::MAX),
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: u32::try_from(st.st_rdev).unwrap_or(0),
            blksize: u32::try_from(st.st_blksize).unwrap_or(4096),
        }
    }

    fn virtual_dir(node: NodeId, at: SystemTime) -> Attr {
        Attr {
            node,
            size: 4096,
            blocks: 8,
            atime: at,
            mtime: at,
            ctime: at,
            kind: Kind::Dir,
            perm: 0o755,
            nlink: 2,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
        }
    }
}

/// A time to set.
#[derive(Debug, Clone, Copy)]
pub enum SetTime {
    /// The current time.
    Now,
    /// A given time.
    At(SystemTime),
}

/// The attributes a `setattr` changes.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size.
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<SetTime>,
    /// New modification time.
    pub mtime: Option<SetTime>,
}

/// Who asks (for ownership of new files).
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// One entry of a directory listing.
#[derive(Debug, Clone)]
pub struct DirEntry {
    /// The node (the parent's for `..`).
    pub node: NodeId,
    /// Kind.
    pub kind: Kind,
    /// Name.
    pub name: OsString,
}

/// Filesystem statistics.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatFs {
    /// Total blocks.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Blocks available to unprivileged users.
    pub bavail: u64,
    /// Total inodes.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Block size.
    pub bsize: u32,
    /// Longest name.
    pub namelen: u32,
    /// Fragment size.
    pub frsize: u32,
}

/// What [`Core::refresh_handles`] did.
#[derive(Debug, Default)]
pub struct Refreshed {
    /// Handles that got their file on the copy.
    pub handles: usize,
    /// The files open with no name left: each got an anonymous file on the copy, empty,
    /// for the caller to fill ([`crate::reseed::orphans`]).
    pub orphans: Vec<Arc<Node>>,
}

/// An empty anonymous file on `volume`, with the owner and mode that `files` (a handle of
/// a file with no name left) has on an in-sync copy of `db`.
fn anonymous_copy(
    db: &Database,
    volume: &crate::volume::Volume,
    files: &OpenFiles,
) -> io::Result<crate::volume::VolFile> {
    let st = db.fstat(files)?;
    let dir = PathBuf::from(layout::db_folder(&db.name));
    let f = volume.create_anonymous(&dir, Mode::from_raw_mode(0o600))?;
    // Owner before mode: a chown clears setuid and setgid.
    volume.fchown(&f, Some(st.st_uid), Some(st.st_gid))?;
    volume.fchmod(&f, Mode::from_raw_mode(st.st_mode & 0o7777))?;
    Ok(f)
}

/// A backing node as a request reaches it (see [`Core::target`]).
struct Target<'a> {
    node: Arc<Node>,
    db: &'a Arc<Database>,
    /// Its name, while it has one.
    path: Option<PathBuf>,
    /// The files of the request's handle, or of a handle still open on a node with no
    /// name left.
    files: Option<Arc<OpenFiles>>,
}

/// How a metadata change reaches a file: by its name, or through a handle's files when
/// it has no name left.
#[derive(Clone, Copy)]
enum By<'a> {
    Name(&'a Path),
    Files(&'a OpenFiles),
}

enum Handle {
    File {
        node: Arc<Node>,
        db: Arc<Database>,
        files: Arc<OpenFiles>,
        /// The backing open flags, to open the file on a new copy.
        flags: OFlags,
        /// Opened with `O_DIRECT` (see `Database::read_at`).
        direct: bool,
    },
    Dir {
        /// The directory.
        node: NodeId,
        /// Its entries, read at the first `readdir` (an open only to `fsync` the
        /// directory, as databases do after a create or rename, reads none).
        entries: std::sync::OnceLock<Vec<DirEntry>>,
    },
}

const HANDLE_SHARDS: usize = 16;

/// The filesystem core of one mount.
pub struct Core {
    pool: Arc<Pool>,
    nodes: RwLock<Table>,
    handles: [RwLock<std::collections::HashMap<u64, Arc<Handle>>>; HANDLE_SHARDS],
    next_handle: AtomicU64,
    started: SystemTime,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

/// The open flags a backing open keeps: the access mode and the flags that change how
/// I/O behaves. Creation flags are handled by the core, O_APPEND by the kernel (it sends
/// explicit offsets), O_DIRECT is dropped (FUSE hands us unaligned buffers), and kernel-
/// internal bits (such as `__FMODE_EXEC`) would make `openat2` fail. A write-only open
/// is made read-write: block checksums read the other bytes of a block a write covers in
/// part, on the file of the handle (the kernel still refuses reads through the handle).
fn backing_open_flags(flags: i32) -> OFlags {
    let flags = if flags & posix::O_ACCMODE == posix::O_WRONLY {
        (flags & !posix::O_ACCMODE) | posix::O_RDWR
    } else {
        flags
    };
    let keep = posix::O_ACCMODE
        | posix::O_SYNC
        | posix::O_DSYNC
        | posix::O_NOATIME
        | posix::O_NONBLOCK
        | posix::O_DIRECTORY
        | posix::O_LARGEFILE;
    OFlags::from_bits_retain((flags & keep) as u32)
}

impl Core {
    /// A core over `pool`.
    pub fn new(pool: Arc<Pool>) -> Core {
        let names: Vec<DbName> = pool.databases().iter().map(|d| d.name.clone()).collect();
        Core {
            nodes: RwLock::new(Table::new(&names)),
            handles: Default::default(),
            next_handle: AtomicU64::new(1),
            started: SystemTime::now(),
            pool,
        }
    }

    /// The pool.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    fn node(&self, id: NodeId) -> Result<Arc<Node>> {
        self.nodes.read().get(id).ok_or(Errno(libc::ENOENT))
    }

    fn db(&self, index: usize) -> &Arc<Database> {
        &self.pool.databases()[index]
    }

    /// The database and volume-relative path of a backing node; EPERM for virtual ones.
    fn backing(&self, id: NodeId) -> Result<(Arc<Node>, &Arc<Database>, PathBuf)> {
        let node = self.node(id)?;
        match node.place {
            Place::Backing(db) => {
                let path = node.path().ok_or(Errno(libc::ENOENT))?;
                Ok((node, self.db(db), path))
            }
            _ => Err(Errno(libc::EPERM)),
        }
    }

    /// Where a new child `name` of `parent` lives; EPERM under the fixed top levels.
    fn child(&self, parent: NodeId, name: &OsStr) -> Result<(usize, PathBuf)> {
        layout::check_component(name)?;
        let (_, db, path) = self.backing(parent)?;
        Ok((db.index, child_path(&path, name)))
    }

    fn stat_backing(&self, db: &Database, path: &Path) -> Result<Stat> {
        Ok(db.stat(path)?)
    }

    fn entry(&self, db: usize, path: PathBuf, st: &Stat) -> Attr {
        let mut nodes = self.nodes.write();
        let id = nodes.intern(db, path, true);
        match nodes.get(id) {
            Some(node) => Core::backing_attr(&node, id, st),
            None => Attr::from_stat(id, st),
        }
    }

    /// A request reached a bug: the adapter caught its panic and answered EIO. Recorded
    /// (event 3060) so that someone reports it; the request thread goes on serving.
    pub fn request_panicked(&self, op: &str, what: &str) {
        self.pool.events().emit(
            NewEvent::new(
                EventId::RequestPanicked,
                format!(
                    "a {op} request panicked ({what}); it was answered with an I/O error and the mount goes on serving. This is a bug: please report it with the daemon's log"
                ),
            )
            .field("operation", op)
            .field("panic", what),
        );
    }

    /// Looks `name` up in `parent` and counts a kernel reference to the result.
    pub fn lookup(&self, parent: NodeId, name: &OsStr) -> Result<Attr> {
        // Tests: `return(NAME)` makes a lookup of NAME panic (a bug inside a request);
        // other lookups go on as usual.
        fail::fail_point!("fs::lookup", |target: Option<String>| {
            if target.as_deref() == name.to_str() {
                panic!("failpoint fs::lookup: {}", name.to_string_lossy());
            }
            self.lookup_name(parent, name)
        });
        self.lookup_name(parent, name)
    }

    fn lookup_name(&self, parent: NodeId, name: &OsStr) -> Result<Attr> {
        layout::check_component(name)?;
        let p = self.node(parent)?;
        match p.place {
            Place::Root => {
                let name = name.to_str().ok_or(Errno(libc::ENOENT))?;
                let db = self.pool.database(name).ok_or(Errno(libc::ENOENT))?;
                let id = self.nodes.write().db_dir(db.index, true);
                Ok(Attr::virtual_dir(id, self.started))
            }
            Place::DbDir(db) => {
                let d = self.db(db);
                let name_s = name.to_str().unwrap_or("");
                if !layout::db_folders(&d.name).iter().any(|f| f == name_s) {
                    return Err(Errno(libc::ENOENT));
                }
                let path = PathBuf::from(name);
                let st = self.stat_backing(d, &path)?;
                Ok(self.entry(db, path, &st))
            }
            Place::Backing(db) => {
                let path = child_path(&p.path().ok_or(Errno(libc::ENOENT))?, name);
                let st = self.stat_backing(self.db(db), &path)?;
                Ok(self.entry(db, path, &st))
            }
        }
    }

    /// Drops `n` kernel references to `node`.
    pub fn forget(&self, node: NodeId, n: u64) {
        self.nodes.write().forget(node, n);
    }

    /// Attributes of `node`, through the open handle `fh` when the kernel names one
    /// (`fstat`, and reads or seeks that check the size), else by its name; a node whose
    /// last name is gone is stated through any handle still open on it.
    pub fn getattr(&self, id: NodeId, fh: Option<HandleId>) -> Result<Attr> {
        let node = self.node(id)?;
        match node.place {
            Place::Root | Place::DbDir(_) => Ok(Attr::virtual_dir(id, self.started)),
            Place::Backing(_) => {
                let t = self.target(id, fh)?;
                Ok(Core::backing_attr(&node, id, &self.stat_target(&t)?))
            }
        }
    }

    /// A backing node as a request reaches it: by name while it has one, and through
    /// the files of the request's handle, or of any handle still open on it once its last
    /// name is gone (an open file that was unlinked: the database's temporary files).
    fn target(&self, id: NodeId, fh: Option<HandleId>) -> Result<Target<'_>> {
        let node = self.node(id)?;
        let Place::Backing(db) = node.place else {
            return Err(Errno(libc::EPERM));
        };
        let path = node.path();
        let mut files = fh
            .and_then(|h| self.handle(h).ok())
            .and_then(|h| match &*h {
                Handle::File { files, .. } => Some(files.clone()),
                Handle::Dir { .. } => None,
            });
        if files.is_none() && path.is_none() {
            files = node.any_open_files();
        }
        if files.is_none() && path.is_none() {
            return Err(Errno(libc::ENOENT));
        }
        Ok(Target {
            node,
            db: self.db(db),
            path,
            files,
        })
    }

    /// `fstat` through the target's handle, else `lstat` by its name.
    fn stat_target(&self, t: &Target<'_>) -> Result<Stat> {
        match (&t.files, &t.path) {
            (Some(files), path) => match t.db.fstat(files) {
                Ok(st) => Ok(st),
                // The handle has no file on an in-sync copy (none of its copies is left
                // in sync): the name still tells.
                Err(_) if path.is_some() => {
                    self.stat_backing(t.db, path.as_deref().unwrap_or(Path::new("")))
                }
                Err(e) => Err(e.into()),
            },
            (None, Some(path)) => self.stat_backing(t.db, path),
            (None, None) => Err(Errno(libc::ENOENT)),
        }
    }

    fn handle(&self, h: HandleId) -> Result<Arc<Handle>> {
        self.handles[(h.0 as usize) % HANDLE_SHARDS]
            .read()
            .get(&h.0)
            .cloned()
            .ok_or(Errno(libc::EBADF))
    }

    fn insert_handle(&self, handle: Handle) -> HandleId {
        let id = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.handles[(id as usize) % HANDLE_SHARDS]
            .write()
            .insert(id, Arc::new(handle));
        HandleId(id)
    }

    /// Changes attributes; `fh` is used for the size when given. A node whose last name
    /// is gone is changed through its open handles' files.
    pub fn setattr(&self, id: NodeId, fh: Option<HandleId>, set: SetAttr) -> Result<Attr> {
        let t = self.target(id, fh)?;
        let (node, db) = (&t.node, t.db);
        if let Some(size) = set.size {
            db.truncate(&**node, t.files.as_deref(), size)?;
        }
        // By name while there is one; else through the handle's files.
        let by = match (t.path.as_deref(), t.files.as_deref()) {
            (Some(path), _) => By::Name(path),
            (None, Some(files)) => By::Files(files),
            (None, None) => return Err(Errno(libc::ENOENT)),
        };
        // Owner before mode: a chown clears setuid and setgid.
        if set.uid.is_some() || set.gid.is_some() {
            match by {
                By::Name(path) => db.chown(path, set.uid, set.gid)?,
                By::Files(f) => db.fchown(f, set.uid, set.gid)?,
            }
        }
        if let Some(mode) = set.mode {
            let mode = Mode::from_raw_mode(mode & 0o7777);
            let set = match by {
                By::Name(path) => db.chmod(path, mode),
                By::Files(f) => db.fchmod(f, mode),
            };
            // Also when it failed: part of the copies may have the new mode.
            node.mode_changed();
            set?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let ts = |t: Option<SetTime>| match t {
                None => Timespec {
                    tv_sec: 0,
                    tv_nsec: posix::UTIME_OMIT,
                },
                Some(SetTime::Now) => Timespec {
                    tv_sec: 0,
                    tv_nsec: posix::UTIME_NOW,
                },
                Some(SetTime::At(t)) => {
                    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
                    Timespec {
                        tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                        tv_nsec: i64::from(d.subsec_nanos()),
                    }
                }
            };
            let times = Timestamps {
                last_access: ts(set.atime),
                last_modification: ts(set.mtime),
            };
            match by {
                By::Name(path) => db.set_times(path, &times)?,
                By::Files(f) => db.set_file_times(f, &times)?,
            }
        }
        self.getattr(id, fh)
    }

    /// Clears setuid/setgid after a write or truncate (through handle `fh`, when given) by
    /// someone else than root (the kernel asks for it with FUSE_WRITE_KILL_SUIDGID): as the
    /// VFS does, setgid only when the group may execute (without it, setgid means
    /// mandatory locking, not privilege).
    ///
    /// Nearly every write of a caller other than root asks for it, so the node remembers
    /// that its file has neither bit (until a chmod through the mount): a stat per write,
    /// on the volume, cost a volume call per write.
    pub fn kill_suidgid(&self, id: NodeId, fh: Option<HandleId>) -> Result<()> {
        let t = self.target(id, fh)?;
        let Some(token) = t.node.privs_unknown() else {
            return Ok(());
        };
        let st = self.stat_target(&t)?;
        // Whether every name of the file is the node's, which `privs_unknown` asks.
        #[allow(clippy::unnecessary_cast)] // st_nlink is u32 on some targets
        t.node.saw_links(st.st_nlink as u64);
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Ok(());
        }
        let mode = st.st_mode & 0o7777;
        let mut kill = posix::S_ISUID;
        if mode & posix::S_IXGRP != 0 {
            kill |= posix::S_ISGID;
        }
        let cleared = Mode::from_raw_mode(mode & !kill);
        if cleared.bits() != mode {
            match (&t.path, &t.files) {
                (Some(path), _) => t.db.chmod(path, cleared)?,
                (None, Some(files)) => t.db.fchmod(files, cleared)?,
                (None, None) => return Err(Errno(libc::ENOENT)),
            }
        }
        if cleared.bits() & (posix::S_ISUID | posix::S_ISGID) == 0 {
            t.node.privs_cleared(token);
        }
        Ok(())
    }

    /// Reads a symlink.
    pub fn readlink(&self, id: NodeId) -> Result<Vec<u8>> {
        let (_, db, path) = self.backing(id)?;
        Ok(db.read_op("readlink", |_, v| v.readlink(&path))?)
    }

    /// Ownership of a new node: the caller's, with the parent's group under a setgid dir.
    fn owner(&self, db: &Database, parent: &Path, who: Caller) -> (u32, u32) {
        let gid = match self.stat_backing(db, parent) {
            Ok(st) if st.st_mode & posix::S_ISGID != 0 => st.st_gid,
            _ => who.gid,
        };
        (who.uid, gid)
    }

    fn make(
        &self,
        parent: NodeId,
        name: &OsStr,
        who: Caller,
        op: &str,
        perm: Option<Mode>,
        f: impl Fn(&crate::volume::Volume, &Path) -> io::Result<()>,
    ) -> Result<Attr> {
        let (db, path) = self.child(parent, name)?;
        let d = self.db(db);
        let parent_path = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let owner = self.owner(d, &parent_path, who);
        d.make(op, &path, owner, f)?;
        let mut st = self.stat_backing(d, &path)?;
        // The owner is set after the mode, and a chown clears setuid and setgid.
        if let Some(perm) = perm.filter(|p| p.bits() & (posix::S_ISUID | posix::S_ISGID) != 0)
            && st.st_mode & 0o7777 != perm.bits()
        {
            d.chmod(&path, perm)?;
            st = self.stat_backing(d, &path)?;
        }
        Ok(self.entry(db, path, &st))
    }

    /// Creates a special or regular file.
    pub fn mknod(
        &self,
        parent: NodeId,
        name: &OsStr,
        mode: u32,
        rdev: u64,
        who: Caller,
    ) -> Result<Attr> {
        let kind = FileType::from_raw_mode(mode);
        let perm = Mode::from_raw_mode(mode & 0o7777);
        self.make(parent, name, who, "mknod", Some(perm), |v, p| {
            v.mknod(p, kind, perm, rdev)
        })
    }

    /// Creates a directory.
    pub fn mkdir(&self, parent: NodeId, name: &OsStr, mode: u32, who: Caller) -> Result<Attr> {
        let perm = Mode::from_raw_mode(mode & 0o7777);
        self.make(parent, name, who, "mkdir", None, |v, p| v.mkdir(p, perm))
    }

    /// Creates a symlink.
    pub fn symlink(
        &self,
        parent: NodeId,
        name: &OsStr,
        target: &Path,
        who: Caller,
    ) -> Result<Attr> {
        self.make(parent, name, who, "symlink", None, |v, p| {
            v.symlink(target, p)
        })
    }

    /// Removes a file or an empty directory.
    pub fn remove(&self, parent: NodeId, name: &OsStr, dir: bool) -> Result<()> {
        let (db, path) = self.child(parent, name)?;
        self.db(db).remove(&path, dir)?;
        self.nodes.write().unlinked(db, &path);
        Ok(())
    }

    /// Renames with `renameat2` flags (`RENAME_NOREPLACE`, `RENAME_EXCHANGE`).
    pub fn rename(
        &self,
        parent: NodeId,
        name: &OsStr,
        newparent: NodeId,
        newname: &OsStr,
        flags: u32,
    ) -> Result<()> {
        let (db, from) = self.child(parent, name)?;
        let (db2, to) = self.child(newparent, newname)?;
        if db != db2 {
            return Err(Errno(libc::EXDEV));
        }
        let flags = RenameFlags::from_bits(flags).ok_or(Errno(libc::EINVAL))?;
        let d = self.db(db);
        d.rename(&from, &to, flags)?;
        self.nodes
            .write()
            .renamed(db, &from, &to, flags.contains(RenameFlags::EXCHANGE));
        Ok(())
    }

    /// Makes a hard link.
    pub fn link(&self, id: NodeId, newparent: NodeId, newname: &OsStr) -> Result<Attr> {
        let (_, d, from) = self.backing(id)?;
        let (db, to) = self.child(newparent, newname)?;
        if d.index != db {
            return Err(Errno(libc::EXDEV));
        }
        d.link(&from, &to)?;
        self.nodes.write().linked(id, db, to.clone());
        let st = self.stat_backing(d, &to)?;
        let node = self.node(id)?;
        Ok(Core::backing_attr(&node, id, &st))
    }

    /// Opens a file on every in-sync copy. A file with no name left (opened again
    /// through `/proc/<pid>/fd/<n>`) is opened again through a handle still open on it.
    pub fn open(&self, id: NodeId, flags: i32) -> Result<HandleId> {
        let node = self.node(id)?;
        let Place::Backing(db) = node.place else {
            return Err(Errno(libc::EPERM));
        };
        let db = self.db(db);
        let oflags = backing_open_flags(flags);
        // Until the handle is in the table: a reseed laying out a copy meanwhile would
        // not see it, and it would miss the new copy's file.
        let _namespace = db.namespace_shared();
        let files = match node.path() {
            Some(path) => db.open(&path, oflags)?,
            None => {
                let from = node.any_open_files().ok_or(Errno(libc::ENOENT))?;
                db.reopen(&from, oflags)?
            }
        };
        files.set_direct(flags & posix::O_DIRECT != 0);
        node.add_open(&files);
        Ok(self.insert_handle(Handle::File {
            node,
            db: db.clone(),
            files,
            flags: oflags,
            direct: flags & posix::O_DIRECT != 0,
        }))
    }

    /// Whether the OS may keep what it cached of `h`'s file across opens (FUSE's
    /// `FOPEN_KEEP_CACHE`): when every name of the backing file is a name of this node,
    /// every write to the file came through this node, and the OS saw it. The daemon never
    /// changes what a file holds behind the mount (a reseed, resync or repair makes a copy
    /// equal to what the mount serves). A file with more names than its node (hard links
    /// made before the mount get nodes of their own, one per name) answers false: a
    /// write through another node would leave this node's cache stale.
    ///
    /// It asks no disk: the node keeps the link count its last stat saw (the kernel looks a
    /// name up, or stats it, before it opens it).
    pub fn keeps_cache(&self, h: HandleId) -> bool {
        self.with_file(h, |node, _, _| Ok(node.has_every_name()))
            .unwrap_or(false)
    }

    /// The attributes of backing node `node` (`id`) from a stat of its file, which the
    /// node notes (see [`Core::keeps_cache`]).
    fn backing_attr(node: &Node, id: NodeId, st: &Stat) -> Attr {
        #[allow(clippy::unnecessary_cast)] // st_nlink is u32 on some targets
        node.saw_links(st.st_nlink as u64);
        Attr::from_stat(id, st)
    }

    /// Creates and opens a file.
    pub fn create(
        &self,
        parent: NodeId,
        name: &OsStr,
        mode: u32,
        flags: i32,
        who: Caller,
    ) -> Result<(Attr, HandleId)> {
        let (db, path) = self.child(parent, name)?;
        let d = self.db(db);
        let parent_path = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let owner = self.owner(d, &parent_path, who);
        let oflags =
            backing_open_flags(flags) | OFlags::from_bits_retain((flags & posix::O_EXCL) as u32);
        // Until the handle is in the table (see `open`).
        let _namespace = d.namespace_shared();
        let files = d.create(&path, oflags, Mode::from_raw_mode(mode & 0o7777), owner)?;
        files.set_direct(flags & posix::O_DIRECT != 0);
        let mut st = self.stat_backing(d, &path)?;
        // The owner is set after the mode, and a chown clears setuid and setgid.
        let perm = mode & 0o7777;
        if perm & (posix::S_ISUID | posix::S_ISGID) != 0 && st.st_mode & 0o7777 != perm {
            d.fchmod(&files, Mode::from_raw_mode(perm))?;
            st = self.stat_backing(d, &path)?;
        }
        let attr = self.entry(db, path, &st);
        let node = self.node(attr.node)?;
        node.add_open(&files);
        let h = self.insert_handle(Handle::File {
            node,
            db: d.clone(),
            files,
            flags: backing_open_flags(flags),
            direct: flags & posix::O_DIRECT != 0,
        });
        Ok((attr, h))
    }

    /// Runs `f` on an open file handle; `EISDIR` for a directory handle.
    fn with_file<T>(
        &self,
        h: HandleId,
        f: impl FnOnce(&Arc<Node>, &Arc<Database>, &OpenFiles) -> Result<T>,
    ) -> Result<T> {
        match &*self.handle(h)? {
            Handle::File {
                node, db, files, ..
            } => f(node, db, files),
            Handle::Dir { .. } => Err(Errno(libc::EISDIR)),
        }
    }

    /// Reads into `buf` from the active copy; returns the bytes read.
    pub fn read(&self, h: HandleId, offset: u64, buf: &mut [u8]) -> Result<usize> {
        match &*self.handle(h)? {
            Handle::File {
                db, files, direct, ..
            } => Ok(db.read_at(files, offset, buf, *direct)?),
            Handle::Dir { .. } => Err(Errno(libc::EISDIR)),
        }
    }

    /// Writes `data` at `offset` on every in-sync copy; overlapping writes are applied
    /// in the same order on every copy.
    pub fn write(&self, h: HandleId, offset: u64, data: &[u8]) -> Result<usize> {
        self.with_file(h, |node, db, files| {
            Ok(db.write(&**node, files, offset, data)?)
        })
    }

    /// `fsync`/`fdatasync`: durable on every in-sync copy when it returns.
    pub fn fsync(&self, h: HandleId, datasync: bool) -> Result<()> {
        self.with_file(h, |node, db, files| Ok(db.fsync(&**node, files, datasync)?))
    }

    /// `fallocate` with its mode bits (KEEP_SIZE, PUNCH_HOLE, ...).
    pub fn fallocate(&self, h: HandleId, offset: u64, len: u64, mode: i32) -> Result<()> {
        let flags = FallocateFlags::from_bits_retain(mode as u32);
        self.with_file(h, |node, db, files| {
            Ok(db.fallocate(&**node, files, offset, len, flags)?)
        })
    }

    /// `lseek` for SEEK_DATA / SEEK_HOLE, answered by the active copy.
    pub fn lseek(&self, h: HandleId, offset: i64, whence: i32) -> Result<i64> {
        self.with_file(h, |_, db, files| {
            let pos = match whence {
                posix::SEEK_DATA => {
                    SeekFrom::Data(u64::try_from(offset).map_err(|_| Errno(libc::EINVAL))?)
                }
                posix::SEEK_HOLE => {
                    SeekFrom::Hole(u64::try_from(offset).map_err(|_| Errno(libc::EINVAL))?)
                }
                _ => return Err(Errno(libc::EINVAL)),
            };
            let r = db.seek(files, pos)?;
            i64::try_from(r).map_err(|_| Errno(libc::EOVERFLOW))
        })
    }

    /// Closes a file or directory handle.
    pub fn release(&self, h: HandleId) {
        let gone = self.handles[(h.0 as usize) % HANDLE_SHARDS]
            .write()
            .remove(&h.0);
        // The checksum store of a file unlinked while open goes with its last handle.
        // Only a node without a name left is asked (an `fstat` on each copy's lane): a
        // close of a named file costs nothing more.
        if let Some(Handle::File {
            node, db, files, ..
        }) = gone.as_deref()
            && node.path().is_none()
        {
            db.sums_closed(files);
        }
    }

    /// Opens a directory; its entries are read once, at the first [`Core::readdir`].
    pub fn opendir(&self, id: NodeId) -> Result<HandleId> {
        let node = self.node(id)?;
        if let Place::Backing(_) = node.place {
            node.path().ok_or(Errno(libc::ENOENT))?;
        }
        Ok(self.insert_handle(Handle::Dir {
            node: id,
            entries: std::sync::OnceLock::new(),
        }))
    }

    /// The entries of directory `id`, `.` and `..` first.
    fn dir_entries(&self, id: NodeId) -> Result<Vec<DirEntry>> {
        let node = self.node(id)?;
        let mut entries = vec![
            DirEntry {
                node: id,
                kind: Kind::Dir,
                name: ".".into(),
            },
            DirEntry {
                node: id,
                kind: Kind::Dir,
                name: "..".into(),
            },
        ];
        match node.place {
            Place::Root => {
                let mut t = self.nodes.write();
                for d in self.pool.databases() {
                    entries.push(DirEntry {
                        node: t.db_dir(d.index, false),
                        kind: Kind::Dir,
                        name: d.name.as_str().into(),
                    });
                }
            }
            Place::DbDir(db) => {
                let mut t = self.nodes.write();
                for f in layout::db_folders(&self.db(db).name) {
                    entries.push(DirEntry {
                        node: t.intern(db, PathBuf::from(&f), false),
                        kind: Kind::Dir,
                        name: f.into(),
                    });
                }
            }
            Place::Backing(db) => {
                let path = node.path().ok_or(Errno(libc::ENOENT))?;
                let list = self.db(db).read_op("readdir", |_, v| v.read_dir(&path))?;
                let mut t = self.nodes.write();
                for e in list {
                    entries.push(DirEntry {
                        node: t.intern(db, child_path(&path, &e.name), false),
                        kind: Kind::from_mode(e.kind.as_raw_mode()),
                        name: e.name,
                    });
                }
            }
        }
        Ok(entries)
    }

    /// Entries of an open directory from position `offset`, passed to `add` with the
    /// position of the next entry, until `add` returns true (buffer full).
    pub fn readdir(
        &self,
        h: HandleId,
        offset: u64,
        mut add: impl FnMut(&DirEntry, u64) -> bool,
    ) -> Result<()> {
        let handle = self.handle(h)?;
        let Handle::Dir { node, entries } = &*handle else {
            return Err(Errno(libc::ENOTDIR));
        };
        let entries = match entries.get() {
            Some(e) => e,
            // Two readers of one handle at once both read; the first to finish is kept.
            None => {
                let read = self.dir_entries(*node)?;
                entries.get_or_init(|| read)
            }
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, e) in entries.iter().enumerate().skip(start) {
            if add(e, i as u64 + 1) {
                break;
            }
        }
        Ok(())
    }

    /// Makes a directory's entries durable on every in-sync copy.
    pub fn fsyncdir(&self, id: NodeId) -> Result<()> {
        let (_, db, path) = match self.backing(id) {
            Ok(b) => b,
            Err(_) => return Ok(()),
        };
        Ok(db.fsyncdir(&path)?)
    }

    /// Space of the database's volumes: the smallest free space among its in-sync copies
    /// (a write must fit on all of them).
    pub fn statfs(&self, id: NodeId) -> Result<StatFs> {
        let node = self.node(id)?;
        let dbs: Vec<&Arc<Database>> = match node.place {
            Place::Root => self.pool.databases().iter().collect(),
            Place::DbDir(db) | Place::Backing(db) => vec![self.db(db)],
        };
        let mut out: Option<StatFs> = None;
        for d in dbs {
            for c in d.copies() {
                let Some(v) = c.in_sync_volume() else {
                    continue;
                };
                let Ok(s) = v.statvfs() else { continue };
                let frsize = s.f_frsize.max(1);
                let candidate = StatFs {
                    blocks: s.f_blocks,
                    bfree: s.f_bfree,
                    bavail: s.f_bavail,
                    files: s.f_files,
                    ffree: s.f_ffree,
                    bsize: u32::try_from(s.f_bsize).unwrap_or(4096),
                    namelen: layout::NAME_MAX as u32,
                    frsize: u32::try_from(frsize).unwrap_or(4096),
                };
                out = Some(match out {
                    Some(o) if o.bavail <= candidate.bavail => o,
                    _ => candidate,
                });
            }
        }
        out.ok_or(Errno(libc::EIO))
    }

    /// For a reseed: the node of `path` in database `db` (made if new), its seeding
    /// state set to `seed`.
    pub fn seed_node(&self, db: usize, path: PathBuf, seed: &Arc<SeedFile>) -> Option<Arc<Node>> {
        let mut nodes = self.nodes.write();
        let id = nodes.intern(db, path, false);
        let node = nodes.get(id)?;
        *node.io.seed.lock() = Some(seed.clone());
        Some(node)
    }

    /// The node of `path` in database `db` (made if new, without a kernel reference):
    /// its locks order a resync's copying against the database's writes.
    pub fn node_for(&self, db: usize, path: PathBuf) -> Option<Arc<Node>> {
        let mut nodes = self.nodes.write();
        let id = nodes.intern(db, path, false);
        nodes.get(id)
    }

    /// For a reseed or a resync laying out copy `slot` of `db` (namespace held
    /// exclusively): opens the file of every open handle of `db` on the copy's new
    /// placement, so that it keeps working when the other copies fail.
    ///
    /// A file that is open but has no name left (unlinked while open, as databases do
    /// with their temporary files) gets an anonymous file on the copy (`O_TMPFILE`: no
    /// name, freed at its last close, also after a crash), with the owner and mode of the
    /// source, which every handle of that file opens. Its data is the caller's to copy
    /// ([`crate::reseed::orphans`]): writes reach it from here on, like any copy's.
    pub fn refresh_handles(&self, db: &Database, slot: CopySlot) -> io::Result<Refreshed> {
        let placement = db.copies()[slot].placement();
        let volume = placement
            .volume
            .as_ref()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))?;
        let mut handles = Vec::new();
        for shard in &self.handles {
            handles.extend(shard.read().values().cloned());
        }
        let mut n = 0;
        let mut anonymous: Vec<(Arc<Node>, crate::volume::VolFile)> = Vec::new();
        for h in handles {
            let Handle::File {
                node,
                db: hdb,
                files,
                flags,
                ..
            } = &*h
            else {
                continue;
            };
            if hdb.index != db.index {
                continue;
            }
            let opened = match node.path() {
                Some(path) => volume.open_file(&path, *flags, Mode::empty()),
                None => {
                    let known = anonymous.iter().position(|(n, _)| Arc::ptr_eq(n, node));
                    let i = match known {
                        Some(i) => i,
                        None => {
                            let f = anonymous_copy(db, volume, files)?;
                            anonymous.push((node.clone(), f));
                            anonymous.len() - 1
                        }
                    };
                    volume.reopen(&anonymous[i].1, *flags)
                }
            };
            match opened {
                Ok(f) => {
                    files.set(slot.index(), placement.generation, f);
                    n += 1;
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Refreshed {
            handles: n,
            orphans: anonymous.into_iter().map(|(n, _)| n).collect(),
        })
    }

    /// Reads an xattr (empty `buf`: asks for the size).
    pub fn getxattr(&self, id: NodeId, key: &OsStr, buf: &mut [u8]) -> Result<usize> {
        let (_, db, path) = self.backing(id).map_err(|_| Errno(libc::ENODATA))?;
        Ok(db.read_op("getxattr", |_, v| v.get_xattr(&path, key, buf))?)
    }

    /// Lists xattr names (empty `buf`: asks for the size).
    pub fn listxattr(&self, id: NodeId, buf: &mut [u8]) -> Result<usize> {
        let Ok((_, db, path)) = self.backing(id) else {
            return Ok(0);
        };
        Ok(db.read_op("listxattr", |_, v| v.list_xattr(&path, buf))?)
    }

    /// Sets an xattr on every in-sync copy.
    pub fn setxattr(&self, id: NodeId, key: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        let (_, db, path) = self.backing(id)?;
        Ok(db.set_xattr(&path, key, value, flags)?)
    }

    /// Removes an xattr on every in-sync copy.
    pub fn removexattr(&self, id: NodeId, key: &OsStr) -> Result<()> {
        let (_, db, path) = self.backing(id)?;
        Ok(db.remove_xattr(&path, key)?)
    }
}

#[cfg(test)]
pub(crate) mod tests;
