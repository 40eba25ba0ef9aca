//! The kernel's FUSE structs (`include/uapi/linux/fuse.h`, native endian) as a ring entry
//! carries them: requests decoded into [`Request`], replies encoded into the entry's payload.
//!
//! Why it exists: fuser parses `/dev/fuse` requests, but its parser is private, so FUSE over
//! io_uring (`fuse_uring`) needs its own. It is one decoder for every ring user: the
//! daemon's adapter (`fuse_ring`) and the throughput bench's floor (`benches/floor/ring.rs`)
//! both match on [`Request`] and answer with the encoders here, so a layout is written once.
//!
//! How a ring entry differs from a `/dev/fuse` read: the opcode's fixed struct (its first
//! argument, e.g. `fuse_read_in`) is in the header's `op_in` area, and the rest (names,
//! write data) is in the payload buffer; opcodes whose first argument is a name (LOOKUP,
//! UNLINK, ...) have an empty `op_in` since the kernel's `fuse_set_zero_arg0` (6.14, the
//! first kernel with the ring). Every reply argument goes to the payload, from its start.
//!
//! Only what reseedfs and the floor serve is decoded; anything else is
//! [`Request::Other`], answered `ENOSYS` as fuser's defaults answer it.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, TimeOrNow};

/// `enum fuse_opcode`: the opcodes decoded here.
pub mod opcode {
    #![allow(missing_docs)]
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const CREATE: u32 = 35;
    pub const DESTROY: u32 = 38;
    pub const FALLOCATE: u32 = 43;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
}

/// Bytes of the header's `in_out` and `op_in` areas (`FUSE_URING_IN_OUT_HEADER_SZ`,
/// `FUSE_URING_OP_IN_OUT_SZ`).
pub const IN_OUT_BYTES: usize = 128;

/// `FUSE_GETATTR_FH`.
const GETATTR_FH: u32 = 1;
// `FATTR_*` (fuse_setattr_in.valid).
const FATTR_MODE: u32 = 1;
const FATTR_UID: u32 = 1 << 1;
const FATTR_GID: u32 = 1 << 2;
const FATTR_SIZE: u32 = 1 << 3;
const FATTR_ATIME: u32 = 1 << 4;
const FATTR_MTIME: u32 = 1 << 5;
const FATTR_FH: u32 = 1 << 6;
const FATTR_ATIME_NOW: u32 = 1 << 7;
const FATTR_MTIME_NOW: u32 = 1 << 8;
/// `FUSE_FSYNC_FDATASYNC`.
const FSYNC_FDATASYNC: u32 = 1;
/// `FUSE_WRITE_KILL_SUIDGID` (fuse_write_in.write_flags).
pub const WRITE_KILL_SUIDGID: u32 = 1 << 2;

/// `sizeof(struct fuse_attr)`.
const ATTR_BYTES: usize = 88;
/// `sizeof(struct fuse_entry_out)`.
pub const ENTRY_OUT_BYTES: usize = 40 + ATTR_BYTES;
/// `sizeof(struct fuse_attr_out)`.
pub const ATTR_OUT_BYTES: usize = 16 + ATTR_BYTES;
/// `sizeof(struct fuse_open_out)`.
pub const OPEN_OUT_BYTES: usize = 16;
/// `sizeof(struct fuse_statfs_out)`.
pub const STATFS_OUT_BYTES: usize = 80;

/// `struct fuse_in_header`, decoded.
#[derive(Debug, Clone, Copy)]
pub struct InHeader {
    /// The whole request's length as `/dev/fuse` would have delivered it.
    pub len: u32,
    /// `FUSE_LOOKUP`, ... ([`opcode`]).
    pub opcode: u32,
    /// The request's id.
    pub unique: u64,
    /// The inode the request is about.
    pub nodeid: u64,
    /// The caller's user.
    pub uid: u32,
    /// The caller's group.
    pub gid: u32,
    /// The caller's process.
    pub pid: u32,
}

impl InHeader {
    /// Decodes the header's `in_out` area.
    pub fn decode(b: &[u8]) -> InHeader {
        InHeader {
            len: ne_u32(b, 0),
            opcode: ne_u32(b, 4),
            unique: ne_u64(b, 8),
            nodeid: ne_u64(b, 16),
            uid: ne_u32(b, 24),
            gid: ne_u32(b, 28),
            pid: ne_u32(b, 32),
        }
    }
}

/// The `u32` at `at` of `b` (native endian, as the kernel wrote it); 0 past the end.
pub fn ne_u32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_ne_bytes)
}

/// The `u64` at `at` of `b`; 0 past the end.
pub fn ne_u64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_ne_bytes)
}

/// `struct fuse_setattr_in`, decoded: `None` for what the caller does not change.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetattrIn {
    /// New mode (with the file type bits, as the kernel sends it).
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size (a truncate).
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<TimeOrNow>,
    /// New modification time.
    pub mtime: Option<TimeOrNow>,
    /// The open handle the change comes through (ftruncate, fchmod).
    pub fh: Option<u64>,
}

/// One request from a ring entry, its names and data borrowed from the entry's payload.
/// Inode numbers are the kernel's `nodeid`s, handles its `fh`s.
#[derive(Debug)]
#[allow(missing_docs)]
pub enum Request<'a> {
    Lookup {
        parent: u64,
        name: &'a OsStr,
    },
    Getattr {
        ino: u64,
        fh: Option<u64>,
    },
    Setattr {
        ino: u64,
        set: SetattrIn,
    },
    Readlink {
        ino: u64,
    },
    Symlink {
        parent: u64,
        name: &'a OsStr,
        target: &'a Path,
    },
    Mknod {
        parent: u64,
        name: &'a OsStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    },
    Mkdir {
        parent: u64,
        name: &'a OsStr,
        mode: u32,
        umask: u32,
    },
    Unlink {
        parent: u64,
        name: &'a OsStr,
    },
    Rmdir {
        parent: u64,
        name: &'a OsStr,
    },
    Rename {
        parent: u64,
        name: &'a OsStr,
        newparent: u64,
        newname: &'a OsStr,
        flags: u32,
    },
    Link {
        ino: u64,
        newparent: u64,
        newname: &'a OsStr,
    },
    Open {
        ino: u64,
        flags: i32,
    },
    Read {
        ino: u64,
        fh: u64,
        offset: u64,
        size: u32,
    },
    Write {
        ino: u64,
        fh: u64,
        offset: u64,
        data: &'a [u8],
        write_flags: u32,
    },
    Statfs {
        ino: u64,
    },
    Release {
        ino: u64,
        fh: u64,
    },
    Fsync {
        ino: u64,
        fh: u64,
        datasync: bool,
    },
    Setxattr {
        ino: u64,
        name: &'a OsStr,
        value: &'a [u8],
        flags: i32,
    },
    Getxattr {
        ino: u64,
        name: &'a OsStr,
        size: u32,
    },
    Listxattr {
        ino: u64,
        size: u32,
    },
    Removexattr {
        ino: u64,
        name: &'a OsStr,
    },
    Flush {
        ino: u64,
        fh: u64,
    },
    Opendir {
        ino: u64,
        flags: i32,
    },
    Readdir {
        ino: u64,
        fh: u64,
        offset: u64,
        size: u32,
    },
    Releasedir {
        ino: u64,
        fh: u64,
    },
    Fsyncdir {
        ino: u64,
        fh: u64,
        datasync: bool,
    },
    Create {
        parent: u64,
        name: &'a OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    },
    Fallocate {
        ino: u64,
        fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
    },
    Lseek {
        ino: u64,
        fh: u64,
        offset: i64,
        whence: i32,
    },
    Destroy,
    /// An opcode not decoded here (answered `ENOSYS`).
    Other(u32),
}

/// Splits the NUL-terminated string at the start of `b` off the rest.
fn cstr(b: &[u8]) -> Result<(&OsStr, &[u8]), i32> {
    let end = b.iter().position(|&c| c == 0).ok_or(libc::EINVAL)?;
    Ok((OsStr::from_bytes(&b[..end]), &b[end + 1..]))
}

fn time_or_now(set: bool, now: bool, secs: u64, nsecs: u32) -> Option<TimeOrNow> {
    if now {
        return Some(TimeOrNow::Now);
    }
    set.then(|| {
        let secs = secs as i64;
        let t = if secs >= 0 {
            UNIX_EPOCH + Duration::new(secs.unsigned_abs(), nsecs)
        } else {
            UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
                + Duration::from_nanos(nsecs.into())
        };
        TimeOrNow::SpecificTime(t)
    })
}

impl<'a> Request<'a> {
    /// Decodes the request of `h` from the entry's `op_in` area and the valid part of its
    /// payload (`payload` is exactly the bytes the kernel said it wrote). `EINVAL` when a
    /// name is not terminated or the data is shorter than the request says.
    pub fn decode(h: &InHeader, op_in: &[u8], payload: &'a [u8]) -> Result<Request<'a>, i32> {
        use opcode::*;
        let ino = h.nodeid;
        let name = || cstr(payload).map(|(n, _)| n);
        Ok(match h.opcode {
            LOOKUP => Request::Lookup {
                parent: ino,
                name: name()?,
            },
            GETATTR => Request::Getattr {
                ino,
                fh: (ne_u32(op_in, 0) & GETATTR_FH != 0).then(|| ne_u64(op_in, 8)),
            },
            SETATTR => {
                let valid = ne_u32(op_in, 0);
                let has = |bit: u32| valid & bit != 0;
                Request::Setattr {
                    ino,
                    set: SetattrIn {
                        fh: has(FATTR_FH).then(|| ne_u64(op_in, 8)),
                        size: has(FATTR_SIZE).then(|| ne_u64(op_in, 16)),
                        atime: time_or_now(
                            has(FATTR_ATIME),
                            has(FATTR_ATIME_NOW),
                            ne_u64(op_in, 32),
                            ne_u32(op_in, 56),
                        ),
                        mtime: time_or_now(
                            has(FATTR_MTIME),
                            has(FATTR_MTIME_NOW),
                            ne_u64(op_in, 40),
                            ne_u32(op_in, 60),
                        ),
                        mode: has(FATTR_MODE).then(|| ne_u32(op_in, 68)),
                        uid: has(FATTR_UID).then(|| ne_u32(op_in, 76)),
                        gid: has(FATTR_GID).then(|| ne_u32(op_in, 80)),
                    },
                }
            }
            READLINK => Request::Readlink { ino },
            SYMLINK => {
                let (name, rest) = cstr(payload)?;
                let (target, _) = cstr(rest)?;
                Request::Symlink {
                    parent: ino,
                    name,
                    target: Path::new(target),
                }
            }
            MKNOD => Request::Mknod {
                parent: ino,
                name: name()?,
                mode: ne_u32(op_in, 0),
                rdev: ne_u32(op_in, 4),
                umask: ne_u32(op_in, 8),
            },
            MKDIR => Request::Mkdir {
                parent: ino,
                name: name()?,
                mode: ne_u32(op_in, 0),
                umask: ne_u32(op_in, 4),
            },
            UNLINK => Request::Unlink {
                parent: ino,
                name: name()?,
            },
            RMDIR => Request::Rmdir {
                parent: ino,
                name: name()?,
            },
            RENAME | RENAME2 => {
                let (name, rest) = cstr(payload)?;
                let (newname, _) = cstr(rest)?;
                Request::Rename {
                    parent: ino,
                    name,
                    newparent: ne_u64(op_in, 0),
                    newname,
                    // fuse_rename_in has only newdir; fuse_rename2_in adds the flags.
                    flags: if h.opcode == RENAME2 {
                        ne_u32(op_in, 8)
                    } else {
                        0
                    },
                }
            }
            LINK => Request::Link {
                ino: ne_u64(op_in, 0),
                newparent: ino,
                newname: name()?,
            },
            OPEN => Request::Open {
                ino,
                flags: ne_u32(op_in, 0) as i32,
            },
            OPENDIR => Request::Opendir {
                ino,
                flags: ne_u32(op_in, 0) as i32,
            },
            READ => Request::Read {
                ino,
                fh: ne_u64(op_in, 0),
                offset: ne_u64(op_in, 8),
                size: ne_u32(op_in, 16),
            },
            READDIR => Request::Readdir {
                ino,
                fh: ne_u64(op_in, 0),
                offset: ne_u64(op_in, 8),
                size: ne_u32(op_in, 16),
            },
            WRITE => {
                let size = ne_u32(op_in, 16) as usize;
                Request::Write {
                    ino,
                    fh: ne_u64(op_in, 0),
                    offset: ne_u64(op_in, 8),
                    data: payload.get(..size).ok_or(libc::EINVAL)?,
                    write_flags: ne_u32(op_in, 20),
                }
            }
            STATFS => Request::Statfs { ino },
            RELEASE => Request::Release {
                ino,
                fh: ne_u64(op_in, 0),
            },
            RELEASEDIR => Request::Releasedir {
                ino,
                fh: ne_u64(op_in, 0),
            },
            FSYNC => Request::Fsync {
                ino,
                fh: ne_u64(op_in, 0),
                datasync: ne_u32(op_in, 8) & FSYNC_FDATASYNC != 0,
            },
            FSYNCDIR => Request::Fsyncdir {
                ino,
                fh: ne_u64(op_in, 0),
                datasync: ne_u32(op_in, 8) & FSYNC_FDATASYNC != 0,
            },
            SETXATTR => {
                // The 8-byte fuse_setxattr_in (FUSE_SETXATTR_EXT is not asked for).
                let size = ne_u32(op_in, 0) as usize;
                let (name, value) = cstr(payload)?;
                Request::Setxattr {
                    ino,
                    name,
                    value: value.get(..size).ok_or(libc::EINVAL)?,
                    flags: ne_u32(op_in, 4) as i32,
                }
            }
            GETXATTR => Request::Getxattr {
                ino,
                name: name()?,
                size: ne_u32(op_in, 0),
            },
            LISTXATTR => Request::Listxattr {
                ino,
                size: ne_u32(op_in, 0),
            },
            REMOVEXATTR => Request::Removexattr { ino, name: name()? },
            FLUSH => Request::Flush {
                ino,
                fh: ne_u64(op_in, 0),
            },
            CREATE => Request::Create {
                parent: ino,
                name: name()?,
                flags: ne_u32(op_in, 0) as i32,
                mode: ne_u32(op_in, 4),
                umask: ne_u32(op_in, 8),
            },
            FALLOCATE => Request::Fallocate {
                ino,
                fh: ne_u64(op_in, 0),
                offset: ne_u64(op_in, 8),
                length: ne_u64(op_in, 16),
                mode: ne_u32(op_in, 24) as i32,
            },
            LSEEK => Request::Lseek {
                ino,
                fh: ne_u64(op_in, 0),
                offset: ne_u64(op_in, 8) as i64,
                whence: ne_u32(op_in, 16) as i32,
            },
            DESTROY => Request::Destroy,
            other => Request::Other(other),
        })
    }
}

/// Writes `v` at `at` of `b` (native endian).
pub fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

/// Writes `v` at `at` of `b` (native endian).
pub fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

/// Seconds (negative before 1970) and nanoseconds of `t`, as `struct fuse_attr` has them.
fn secs_nsecs(t: SystemTime) -> (u64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs(), d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let (mut s, mut n) = (-(d.as_secs() as i64), d.subsec_nanos());
            if n > 0 {
                s -= 1;
                n = 1_000_000_000 - n;
            }
            (s as u64, n)
        }
    }
}

/// The `S_IF*` bits of `kind`.
fn type_bits(kind: FileType) -> u32 {
    match kind {
        FileType::NamedPipe => libc::S_IFIFO,
        FileType::CharDevice => libc::S_IFCHR,
        FileType::BlockDevice => libc::S_IFBLK,
        FileType::Directory => libc::S_IFDIR,
        FileType::RegularFile => libc::S_IFREG,
        FileType::Symlink => libc::S_IFLNK,
        FileType::Socket => libc::S_IFSOCK,
    }
}

/// `struct fuse_attr` of `a` into `b[..88]`.
fn put_attr(b: &mut [u8], a: &FileAttr) {
    b[..ATTR_BYTES].fill(0);
    let (atime, atime_ns) = secs_nsecs(a.atime);
    let (mtime, mtime_ns) = secs_nsecs(a.mtime);
    let (ctime, ctime_ns) = secs_nsecs(a.ctime);
    put_u64(b, 0, a.ino.0);
    put_u64(b, 8, a.size);
    put_u64(b, 16, a.blocks);
    put_u64(b, 24, atime);
    put_u64(b, 32, mtime);
    put_u64(b, 40, ctime);
    put_u32(b, 48, atime_ns);
    put_u32(b, 52, mtime_ns);
    put_u32(b, 56, ctime_ns);
    put_u32(b, 60, type_bits(a.kind) | u32::from(a.perm));
    put_u32(b, 64, a.nlink);
    put_u32(b, 68, a.uid);
    put_u32(b, 72, a.gid);
    put_u32(b, 76, a.rdev);
    put_u32(b, 80, a.blksize);
    put_u32(b, 84, a.flags);
}

/// `struct fuse_entry_out` (generation 0; `ttl` for both the entry and its attributes);
/// returns its length.
pub fn entry_out(b: &mut [u8], a: &FileAttr, ttl: Duration) -> usize {
    put_u64(b, 0, a.ino.0);
    put_u64(b, 8, 0);
    put_u64(b, 16, ttl.as_secs());
    put_u64(b, 24, ttl.as_secs());
    put_u32(b, 32, ttl.subsec_nanos());
    put_u32(b, 36, ttl.subsec_nanos());
    put_attr(&mut b[40..], a);
    ENTRY_OUT_BYTES
}

/// `struct fuse_attr_out`; returns its length.
pub fn attr_out(b: &mut [u8], a: &FileAttr, ttl: Duration) -> usize {
    put_u64(b, 0, ttl.as_secs());
    put_u32(b, 8, ttl.subsec_nanos());
    put_u32(b, 12, 0);
    put_attr(&mut b[16..], a);
    ATTR_OUT_BYTES
}

/// `struct fuse_open_out` with `open_flags` (`FOPEN_*`); returns its length.
pub fn open_out(b: &mut [u8], fh: u64, open_flags: u32) -> usize {
    b[..OPEN_OUT_BYTES].fill(0);
    put_u64(b, 0, fh);
    put_u32(b, 8, open_flags);
    OPEN_OUT_BYTES
}

/// CREATE's reply: `struct fuse_entry_out` then `struct fuse_open_out`; returns its length.
pub fn create_out(b: &mut [u8], a: &FileAttr, ttl: Duration, fh: u64, open_flags: u32) -> usize {
    let n = entry_out(b, a, ttl);
    n + open_out(&mut b[n..], fh, open_flags)
}

/// `struct fuse_write_out`; returns its length.
pub fn write_out(b: &mut [u8], written: usize) -> usize {
    put_u32(b, 0, u32::try_from(written).unwrap_or(u32::MAX));
    put_u32(b, 4, 0);
    8
}

/// `struct fuse_getxattr_out` (the size a GETXATTR or LISTXATTR of size 0 asks for);
/// returns its length.
pub fn xattr_size_out(b: &mut [u8], size: usize) -> usize {
    write_out(b, size)
}

/// `struct fuse_lseek_out`; returns its length.
pub fn lseek_out(b: &mut [u8], offset: i64) -> usize {
    put_u64(b, 0, offset as u64);
    8
}

/// Filesystem statistics, as `struct fuse_kstatfs` has them.
#[derive(Debug, Clone, Copy, Default)]
#[allow(missing_docs)]
pub struct Kstatfs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// `struct fuse_statfs_out`; returns its length.
pub fn statfs_out(b: &mut [u8], s: &Kstatfs) -> usize {
    b[..STATFS_OUT_BYTES].fill(0);
    put_u64(b, 0, s.blocks);
    put_u64(b, 8, s.bfree);
    put_u64(b, 16, s.bavail);
    put_u64(b, 24, s.files);
    put_u64(b, 32, s.ffree);
    put_u32(b, 40, s.bsize);
    put_u32(b, 44, s.namelen);
    put_u32(b, 48, s.frsize);
    STATFS_OUT_BYTES
}

/// READDIR's reply: `struct fuse_dirent`s, each padded to 8 bytes, up to the size the
/// kernel asked for.
#[derive(Debug)]
pub struct Dirents<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl<'b> Dirents<'b> {
    /// Entries into `buf` (at most its length: the request's size).
    pub fn new(buf: &'b mut [u8]) -> Dirents<'b> {
        Dirents { buf, len: 0 }
    }

    /// Adds an entry whose successor is at `next` (the offset the kernel passes back to
    /// continue after it); true when it did not fit (the reply is full), as fuser's
    /// `ReplyDirectory::add`.
    pub fn add(&mut self, ino: u64, next: u64, kind: FileType, name: &OsStr) -> bool {
        let bytes = name.as_bytes();
        let len = (24 + bytes.len()).next_multiple_of(8);
        if self.len + len > self.buf.len() {
            return true;
        }
        let b = &mut self.buf[self.len..self.len + len];
        b.fill(0);
        put_u64(b, 0, ino);
        put_u64(b, 8, next);
        put_u32(b, 16, u32::try_from(bytes.len()).unwrap_or(u32::MAX));
        put_u32(b, 20, type_bits(kind) >> 12);
        b[24..24 + bytes.len()].copy_from_slice(bytes);
        self.len += len;
        false
    }

    /// The reply's length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no entry was added (the end of the directory).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(opcode: u32, nodeid: u64) -> InHeader {
        InHeader {
            len: 0,
            opcode,
            unique: 7,
            nodeid,
            uid: 1000,
            gid: 1000,
            pid: 1,
        }
    }

    #[test]
    fn names_data_and_fixed_structs_decode_from_their_uapi_offsets() {
        let mut op_in = [0u8; IN_OUT_BYTES];
        // fuse_rename2_in { newdir 9, flags RENAME_NOREPLACE }
        put_u64(&mut op_in, 0, 9);
        put_u32(&mut op_in, 8, 1);
        let payload = b"old\0new\0";
        match Request::decode(&header(opcode::RENAME2, 5), &op_in, payload) {
            Ok(Request::Rename {
                parent: 5,
                name,
                newparent: 9,
                newname,
                flags: 1,
            }) => assert_eq!((name, newname), (OsStr::new("old"), OsStr::new("new"))),
            other => panic!("{other:?}"),
        }
        // fuse_write_in { fh 3, offset 4096, size 4, write_flags KILL_SUIDGID }
        let mut op_in = [0u8; IN_OUT_BYTES];
        put_u64(&mut op_in, 0, 3);
        put_u64(&mut op_in, 8, 4096);
        put_u32(&mut op_in, 16, 4);
        put_u32(&mut op_in, 20, WRITE_KILL_SUIDGID);
        match Request::decode(&header(opcode::WRITE, 2), &op_in, b"abcd") {
            Ok(Request::Write {
                fh: 3,
                offset: 4096,
                data: b"abcd",
                write_flags: WRITE_KILL_SUIDGID,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        // Data shorter than the request says, a name without its NUL: refused.
        assert_eq!(
            Request::decode(&header(opcode::WRITE, 2), &op_in, b"ab").err(),
            Some(libc::EINVAL)
        );
        assert_eq!(
            Request::decode(&header(opcode::LOOKUP, 1), &[], b"name").err(),
            Some(libc::EINVAL)
        );
        // fuse_setattr_in: size and mtime-now through a handle.
        let mut op_in = [0u8; IN_OUT_BYTES];
        put_u32(
            &mut op_in,
            0,
            FATTR_SIZE | FATTR_FH | FATTR_MTIME | FATTR_MTIME_NOW,
        );
        put_u64(&mut op_in, 8, 11);
        put_u64(&mut op_in, 16, 100);
        match Request::decode(&header(opcode::SETATTR, 2), &op_in, b"") {
            Ok(Request::Setattr { ino: 2, set }) => {
                assert_eq!(
                    (set.fh, set.size, set.mode, set.uid),
                    (Some(11), Some(100), None, None)
                );
                assert!(matches!(set.mtime, Some(TimeOrNow::Now)));
                assert!(set.atime.is_none());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Request::decode(&header(52, 1), &[], b""),
            Ok(Request::Other(52))
        ));
    }

    #[test]
    fn replies_encode_at_their_uapi_offsets() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        let a = FileAttr {
            ino: fuser::INodeNo(42),
            size: 4096,
            blocks: 8,
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind: FileType::RegularFile,
            perm: 0o640,
            nlink: 1,
            uid: 1,
            gid: 2,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        };
        let mut b = [0xffu8; 256];
        let n = create_out(&mut b, &a, Duration::from_secs(1), 77, 2);
        assert_eq!(n, ENTRY_OUT_BYTES + OPEN_OUT_BYTES);
        assert_eq!(ne_u64(&b, 0), 42);
        assert_eq!(ne_u64(&b, 16), 1);
        assert_eq!(ne_u64(&b, 40 + 8), 4096);
        assert_eq!(ne_u64(&b, 40 + 32), 1_700_000_000);
        assert_eq!(ne_u32(&b, 40 + 52), 5);
        assert_eq!(ne_u32(&b, 40 + 60), libc::S_IFREG | 0o640);
        assert_eq!(ne_u64(&b, ENTRY_OUT_BYTES), 77);
        // open_flags (FOPEN_KEEP_CACHE = 2), then the padding cleared.
        assert_eq!(ne_u32(&b, ENTRY_OUT_BYTES + 8), 2);
        assert_eq!(ne_u32(&b, ENTRY_OUT_BYTES + 12), 0);
        let (s, ns) = secs_nsecs(UNIX_EPOCH - Duration::from_millis(1500));
        assert_eq!((s as i64, ns), (-2, 500_000_000));

        let mut b = [0u8; 64];
        let mut d = Dirents::new(&mut b[..40]);
        assert!(!d.add(3, 1, FileType::Directory, OsStr::new("dir")));
        assert_eq!(d.len(), 32);
        assert!(d.add(4, 2, FileType::RegularFile, OsStr::new("f")), "full");
        assert_eq!(ne_u32(&b, 20), u32::from(libc::DT_DIR));
        assert_eq!(&b[24..27], b"dir");
    }
}
