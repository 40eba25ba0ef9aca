//! The Unix backend of a volume: a directory opened once (`O_PATH`), every path resolved
//! under it with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` for the parents and `*at`
//! calls that do not follow symlinks for the last component, so that neither `..` nor a
//! symlink can lead outside the volume.
//!
//! The names under a volume belong to the database's users, who rename them while the
//! daemon (root) works on them. So no method checks a name and then acts on the name
//! again: it acts on the name with a call that cannot follow a symlink, or it pins the
//! inode first (an `O_PATH | O_NOFOLLOW` descriptor) and checks and acts on that:
//! - `chmod`: `fchmodat2(AT_SYMLINK_NOFOLLOW)`; on kernels before 6.6, the pinned inode's
//!   type is checked and its mode changed through `/proc/self/fd`;
//! - `open`: the pinned inode must be a regular file or a directory before it is opened
//!   (through `/proc/self/fd`): a FIFO would block the opener forever, a socket would
//!   answer `ENXIO`, which is a dying disk's errno; such a name answers `ESTALE` (it no
//!   longer names what the kernel asked for), as does a `readlink` of a name that is no
//!   longer a symlink;
//! - `chown`, `set_times`: `AT_SYMLINK_NOFOLLOW`; xattrs and `link`: the pinned inode;
//!   `mkdir`, `mknod`, `symlink`, `remove`, `rename`, `readlink`, `stat`: never follow the
//!   last component by definition.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Dir, ResolveFlags, XattrFlags};

use super::{
    Advice, Backend, DirEntry, FallocateFlags, FileType, Mode, OFlags, RenameFlags, SeekFrom, Stat,
    StatVfs, Timestamps, split,
};

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// A local directory as a volume.
#[derive(Debug)]
pub struct UnixBackend {
    root_fd: OwnedFd,
}

impl UnixBackend {
    /// Opens the directory `root`.
    pub fn open(root: &Path) -> io::Result<UnixBackend> {
        let root_fd = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(UnixBackend { root_fd })
    }

    fn with_parent<T>(
        &self,
        rel: &Path,
        f: impl FnOnce(BorrowedFd<'_>, &OsStr) -> rustix::io::Result<T>,
    ) -> io::Result<T> {
        let (parent, name) = split(rel)?;
        if parent.as_os_str().is_empty() {
            return Ok(f(self.root_fd.as_fd(), name)?);
        }
        let dir = self.open_dir_path(parent)?;
        Ok(f(dir.as_fd(), name)?)
    }

    /// An `O_PATH` descriptor of the directory `rel` (the root for an empty path).
    fn open_dir_path(&self, rel: &Path) -> rustix::io::Result<OwnedFd> {
        rustix::fs::openat2(
            &self.root_fd,
            rel,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )
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

    /// `openat2` of `rel` under the root, never following a symlink.
    fn openat(&self, rel: &Path, flags: OFlags, mode: Mode) -> rustix::io::Result<OwnedFd> {
        rustix::fs::openat2(
            &self.root_fd,
            rel,
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            mode,
            RESOLVE,
        )
    }

    /// The inode an `O_PATH` descriptor pins, as a path the kernel resolves to exactly that
    /// inode (no name is looked up again).
    fn proc_path(fd: &OwnedFd) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
    }
}

impl Backend for UnixBackend {
    fn stat(&self, rel: &Path) -> io::Result<Stat> {
        if rel.as_os_str().is_empty() {
            return Ok(rustix::fs::fstat(&self.root_fd)?);
        }
        self.with_parent(rel, |dir, name| {
            rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        })
    }

    fn open(&self, rel: &Path, flags: OFlags, mode: Mode) -> io::Result<File> {
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let create = flags.contains(OFlags::CREATE);
        if create && flags.contains(OFlags::EXCL) {
            // A new name: nothing there to be swapped.
            return Ok(File::from(self.openat(rel, flags, mode)?));
        }
        // Opening an existing name: pin its inode, check its type, then open that inode.
        // With O_CREAT, try to create it first (O_EXCL: a regular file of our making); it
        // exists: open it as any existing name. Retried when the name comes and goes.
        let mut last = io::Error::from_raw_os_error(libc::ENOENT);
        for _ in 0..3 {
            if create {
                match self.openat(rel, flags | OFlags::EXCL, mode) {
                    Ok(fd) => return Ok(File::from(fd)),
                    Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            let pinned = match self.openat(rel, OFlags::PATH, Mode::empty()) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::NOENT) if create => {
                    last = io::Error::from_raw_os_error(libc::ENOENT);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let kind = FileType::from_raw_mode(rustix::fs::fstat(&pinned)?.st_mode);
            if !matches!(kind, FileType::RegularFile | FileType::Directory) {
                // A symlink (O_NOFOLLOW: ELOOP, as before), else a FIFO, socket or device:
                // never opened by the daemon.
                return Err(io::Error::from_raw_os_error(if kind == FileType::Symlink {
                    libc::ELOOP
                } else {
                    libc::ESTALE
                }));
            }
            let reopen = flags.difference(OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW);
            return Ok(File::from(rustix::fs::open(
                Self::proc_path(&pinned),
                reopen | OFlags::CLOEXEC,
                Mode::empty(),
            )?));
        }
        Err(last)
    }

    fn mkdir(&self, rel: &Path, mode: Mode) -> io::Result<()> {
        self.with_parent(rel, |dir, name| rustix::fs::mkdirat(dir, name, mode))
    }

    fn mknod(&self, rel: &Path, kind: FileType, mode: Mode, dev: u64) -> io::Result<()> {
        self.with_parent(rel, |dir, name| {
            rustix::fs::mknodat(dir, name, kind, mode, dev)
        })
    }

    fn symlink(&self, target: &Path, rel: &Path) -> io::Result<()> {
        self.with_parent(rel, |dir, name| rustix::fs::symlinkat(target, dir, name))
    }

    fn readlink(&self, rel: &Path) -> io::Result<Vec<u8>> {
        self.with_parent(rel, |dir, name| {
            rustix::fs::readlinkat(dir, name, Vec::new())
                .map(|c| c.into_bytes())
                // Not a symlink (any more): the name was renamed over since the kernel
                // looked it up, so it no longer names what the kernel asked for. ESTALE
                // makes the kernel walk the path again (`LOOKUP_REVAL`), where EINVAL
                // would fail the caller's open.
                .map_err(|e| {
                    if e == rustix::io::Errno::INVAL {
                        rustix::io::Errno::STALE
                    } else {
                        e
                    }
                })
        })
    }

    fn remove(&self, rel: &Path, dir: bool) -> io::Result<()> {
        let flags = if dir {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        self.with_parent(rel, |d, name| rustix::fs::unlinkat(d, name, flags))
    }

    fn rename(&self, from: &Path, to: &Path, flags: RenameFlags) -> io::Result<()> {
        self.with_parent(from, |from_dir, from_name| {
            let (to_parent, to_name) = split(to).map_err(|_| rustix::io::Errno::INVAL)?;
            let to_dir;
            let to_fd = if to_parent.as_os_str().is_empty() {
                self.root_fd.as_fd()
            } else {
                to_dir = self.open_dir_path(to_parent)?;
                to_dir.as_fd()
            };
            rustix::fs::renameat_with(from_dir, from_name, to_fd, to_name, flags)
        })
    }

    fn link(&self, from: &Path, to: &Path) -> io::Result<()> {
        let src = self.open_path(from)?;
        self.with_parent(to, |dir, name| {
            rustix::fs::linkat(&src, "", dir, name, AtFlags::EMPTY_PATH)
        })
    }

    fn chmod(&self, rel: &Path, mode: Mode) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            let (parent, name) = split(rel)?;
            let dir;
            let dir_fd = if parent.as_os_str().is_empty() {
                self.root_fd.as_fd()
            } else {
                dir = self.open_dir_path(parent)?;
                dir.as_fd()
            };
            match crate::sys::at::chmod_nofollow(dir_fd, name, mode.bits()) {
                Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {}
                r => return r,
            }
        }
        // No fchmodat2: check and change the inode pinned by an O_PATH descriptor.
        let pinned = self.open_path(rel)?;
        if FileType::from_raw_mode(rustix::fs::fstat(&pinned)?.st_mode) == FileType::Symlink {
            return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
        }
        Ok(rustix::fs::chmod(Self::proc_path(&pinned), mode)?)
    }

    fn chown(&self, rel: &Path, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
        let uid = uid.map(rustix::fs::Uid::from_raw);
        let gid = gid.map(rustix::fs::Gid::from_raw);
        self.with_parent(rel, |dir, name| {
            rustix::fs::chownat(dir, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)
        })
    }

    fn set_times(&self, rel: &Path, times: &Timestamps) -> io::Result<()> {
        self.with_parent(rel, |dir, name| {
            rustix::fs::utimensat(dir, name, times, AtFlags::SYMLINK_NOFOLLOW)
        })
    }

    fn read_dir(&self, rel: &Path) -> io::Result<Vec<DirEntry>> {
        let fd: OwnedFd = self
            .open(rel, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?
            .into();
        let mut out = Vec::new();
        for entry in Dir::new(fd)? {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            out.push(DirEntry {
                name: os_string(name),
                kind: entry.file_type(),
            });
        }
        Ok(out)
    }

    fn statvfs(&self) -> io::Result<StatVfs> {
        Ok(rustix::fs::fstatvfs(&self.root_fd)?)
    }

    fn get_xattr(&self, rel: &Path, key: &OsStr, buf: &mut [u8]) -> io::Result<usize> {
        let fd = self.open_path(rel)?;
        let p = Self::proc_path(&fd);
        if buf.is_empty() {
            return Ok(rustix::fs::getxattr_query(&p, key)?);
        }
        Ok(rustix::fs::getxattr(&p, key, buf)?)
    }

    fn list_xattr(&self, rel: &Path, buf: &mut [u8]) -> io::Result<usize> {
        let fd = self.open_path(rel)?;
        let p = Self::proc_path(&fd);
        if buf.is_empty() {
            return Ok(rustix::fs::listxattr_query(&p)?);
        }
        Ok(rustix::fs::listxattr(&p, buf)?)
    }

    fn set_xattr(&self, rel: &Path, key: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
        let fd = self.open_path(rel)?;
        let flags = XattrFlags::from_bits_retain(flags as u32);
        Ok(rustix::fs::setxattr(
            Self::proc_path(&fd),
            key,
            value,
            flags,
        )?)
    }

    fn remove_xattr(&self, rel: &Path, key: &OsStr) -> io::Result<()> {
        let fd = self.open_path(rel)?;
        Ok(rustix::fs::removexattr(Self::proc_path(&fd), key)?)
    }

    fn syncfs(&self) -> io::Result<()> {
        // An O_PATH descriptor (the root's) does not do: open the root for reading.
        let root = self.open(
            Path::new("."),
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )?;
        Ok(rustix::fs::syncfs(&root)?)
    }

    fn read_at(&self, f: &File, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match f.read_at(buf, offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => return r,
            }
        }
    }

    fn read_cached(&self, f: &File, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        use rustix::io::ReadWriteFlags;
        loop {
            match rustix::io::preadv2(
                f,
                &mut [std::io::IoSliceMut::new(buf)],
                offset,
                ReadWriteFlags::NOWAIT,
            ) {
                Err(rustix::io::Errno::INTR) => {}
                // Not cached, or the filesystem cannot tell without waiting.
                Err(rustix::io::Errno::AGAIN | rustix::io::Errno::OPNOTSUPP) => {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                r => return Ok(r?),
            }
        }
    }

    fn write_all_at(&self, f: &File, offset: u64, data: &[u8]) -> io::Result<()> {
        f.write_all_at(data, offset)
    }

    fn append(&self, f: &File, data: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let mut w: &File = f;
        w.write_all(data)
    }

    fn sync(&self, f: &File, data_only: bool) -> io::Result<()> {
        if data_only {
            f.sync_data()
        } else {
            f.sync_all()
        }
    }

    fn set_len(&self, f: &File, size: u64) -> io::Result<()> {
        f.set_len(size)
    }

    fn fallocate(&self, f: &File, mode: FallocateFlags, offset: u64, len: u64) -> io::Result<()> {
        Ok(rustix::fs::fallocate(f, mode, offset, len)?)
    }

    fn seek(&self, f: &File, pos: SeekFrom) -> io::Result<u64> {
        Ok(rustix::fs::seek(f, pos)?)
    }

    fn fstat(&self, f: &File) -> io::Result<Stat> {
        Ok(rustix::fs::fstat(f)?)
    }

    fn fchown(&self, f: &File, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
        Ok(rustix::fs::fchown(
            f,
            uid.map(rustix::fs::Uid::from_raw),
            gid.map(rustix::fs::Gid::from_raw),
        )?)
    }

    fn fchmod(&self, f: &File, mode: Mode) -> io::Result<()> {
        Ok(rustix::fs::fchmod(f, mode)?)
    }

    fn set_file_times(&self, f: &File, times: &Timestamps) -> io::Result<()> {
        Ok(rustix::fs::futimens(f, times)?)
    }

    fn reopen(&self, f: &File, flags: OFlags) -> io::Result<File> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            // Through the magic link of the descriptor: the inode itself, named or not.
            // Creation flags have no meaning for an inode that exists.
            let flags = flags.difference(OFlags::CREATE | OFlags::EXCL | OFlags::TRUNC);
            let fd = rustix::fs::open(
                format!("/proc/self/fd/{}", f.as_raw_fd()),
                flags | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            Ok(File::from(fd))
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (f, flags);
            Err(io::ErrorKind::Unsupported.into())
        }
    }

    fn advise(&self, f: &File, offset: u64, len: u64, advice: Advice) -> io::Result<()> {
        Ok(rustix::fs::fadvise(
            f,
            offset,
            std::num::NonZeroU64::new(len),
            advice,
        )?)
    }

    fn start_writeback(&self, f: &File, offset: u64, len: u64) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        return crate::sys::writeback::start(f, offset, len);
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (f, offset, len);
            Ok(())
        }
    }

    #[cfg(target_os = "linux")]
    fn start_writes(&self, chain: Vec<super::ChainWrite>) -> Option<Box<dyn super::Started>> {
        crate::sys::rio::start(chain).map(|c| Box::new(c) as Box<dyn super::Started>)
    }

    fn reopen_direct(&self, f: &File) -> io::Result<File> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            use std::os::unix::fs::OpenOptionsExt;
            // The access mode of `f`: a handle open for writing writes through it too.
            let mode = rustix::fs::fcntl_getfl(f)? & rustix::fs::OFlags::RWMODE;
            std::fs::OpenOptions::new()
                .read(mode != rustix::fs::OFlags::WRONLY)
                .write(mode != rustix::fs::OFlags::RDONLY)
                .custom_flags(libc::O_DIRECT)
                .open(format!("/proc/self/fd/{}", f.as_raw_fd()))
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = f;
            Err(io::ErrorKind::Unsupported.into())
        }
    }
}

/// `OsString` from raw bytes of a directory entry (on Unix every byte string is one).
fn os_string(b: &[u8]) -> OsString {
    use std::os::unix::ffi::OsStrExt;
    OsStr::from_bytes(b).to_owned()
}
