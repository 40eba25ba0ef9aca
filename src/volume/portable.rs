//! The volume interface's own types, for systems without rustix (Windows).
//!
//! The core speaks POSIX: modes, open flags, `stat` fields and errno values, because the
//! kernel's FUSE protocol does and because the copies on disk carry them. On Unix these
//! types are rustix's (re-exported by [`crate::volume`]); elsewhere they are defined here
//! with the same names, fields and Linux values, so that the core compiles unchanged and a
//! mode or a flag means the same on every OS. The Windows backend and the WinFsp adapter
//! translate between them and the Windows API.
//!
//! The Linux build compiles this module only for its tests, which check every value
//! against rustix and libc: a difference would change what the core means on Windows.

use std::ffi::OsStr;
use std::io;

bitflags::bitflags! {
    /// Permission bits (`mode_t`): rustix's `Mode`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Mode: u32 {
        /// `S_IRWXU`
        const RWXU = 0o700;
        /// `S_IRUSR`
        const RUSR = 0o400;
        /// `S_IWUSR`
        const WUSR = 0o200;
        /// `S_IXUSR`
        const XUSR = 0o100;
        /// `S_IRWXG`
        const RWXG = 0o070;
        /// `S_IRGRP`
        const RGRP = 0o040;
        /// `S_IWGRP`
        const WGRP = 0o020;
        /// `S_IXGRP`
        const XGRP = 0o010;
        /// `S_IRWXO`
        const RWXO = 0o007;
        /// `S_IROTH`
        const ROTH = 0o004;
        /// `S_IWOTH`
        const WOTH = 0o002;
        /// `S_IXOTH`
        const XOTH = 0o001;
        /// `S_ISUID`
        const SUID = 0o4000;
        /// `S_ISGID`
        const SGID = 0o2000;
        /// `S_ISVTX`
        const SVTX = 0o1000;
        const _ = !0;
    }
}

impl Mode {
    /// The permission bits of a raw `st_mode` (its file type bits dropped).
    pub const fn from_raw_mode(st_mode: u32) -> Mode {
        Mode::from_bits_truncate(st_mode & !S_IFMT)
    }

    /// The raw bits.
    pub const fn as_raw_mode(self) -> u32 {
        self.bits()
    }
}

bitflags::bitflags! {
    /// Open flags with their Linux values: rustix's `OFlags`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct OFlags: u32 {
        /// `O_ACCMODE`
        const ACCMODE = 0o3;
        /// `O_RDONLY`
        const RDONLY = 0;
        /// `O_WRONLY`
        const WRONLY = 0o1;
        /// `O_RDWR`
        const RDWR = 0o2;
        /// `O_CREAT`
        const CREATE = 0o100;
        /// `O_EXCL`
        const EXCL = 0o200;
        /// `O_NOCTTY`
        const NOCTTY = 0o400;
        /// `O_TRUNC`
        const TRUNC = 0o1000;
        /// `O_APPEND`
        const APPEND = 0o2000;
        /// `O_NONBLOCK`
        const NONBLOCK = 0o4000;
        /// `O_DSYNC`
        const DSYNC = 0o10000;
        /// `O_DIRECT`
        const DIRECT = 0o40000;
        /// `O_LARGEFILE`
        const LARGEFILE = 0o100000;
        /// `O_DIRECTORY`
        const DIRECTORY = 0o200000;
        /// `O_NOFOLLOW`
        const NOFOLLOW = 0o400000;
        /// `O_NOATIME`
        const NOATIME = 0o1000000;
        /// `O_CLOEXEC`
        const CLOEXEC = 0o2000000;
        /// `O_SYNC`
        const SYNC = 0o4010000;
        /// `O_PATH`
        const PATH = 0o10000000;
        const _ = !0;
    }
}

bitflags::bitflags! {
    /// `renameat2` flags: rustix's `RenameFlags`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct RenameFlags: u32 {
        /// `RENAME_NOREPLACE`
        const NOREPLACE = 1;
        /// `RENAME_EXCHANGE`
        const EXCHANGE = 2;
        /// `RENAME_WHITEOUT`
        const WHITEOUT = 4;
    }
}

bitflags::bitflags! {
    /// `fallocate` mode bits: rustix's `FallocateFlags`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct FallocateFlags: u32 {
        /// `FALLOC_FL_KEEP_SIZE`
        const KEEP_SIZE = 0x01;
        /// `FALLOC_FL_PUNCH_HOLE`
        const PUNCH_HOLE = 0x02;
        /// `FALLOC_FL_NO_HIDE_STALE`
        const NO_HIDE_STALE = 0x04;
        /// `FALLOC_FL_COLLAPSE_RANGE`
        const COLLAPSE_RANGE = 0x08;
        /// `FALLOC_FL_ZERO_RANGE`
        const ZERO_RANGE = 0x10;
        /// `FALLOC_FL_INSERT_RANGE`
        const INSERT_RANGE = 0x20;
        /// `FALLOC_FL_UNSHARE_RANGE`
        const UNSHARE_RANGE = 0x40;
        const _ = !0;
    }
}

/// `S_IFMT`: the file type bits of `st_mode`.
pub const S_IFMT: u32 = 0o170000;

/// The type of a file (the `S_IFMT` bits of `st_mode`): rustix's `FileType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileType {
    /// `S_IFREG`
    RegularFile,
    /// `S_IFDIR`
    Directory,
    /// `S_IFLNK`
    Symlink,
    /// `S_IFIFO`
    Fifo,
    /// `S_IFSOCK`
    Socket,
    /// `S_IFCHR`
    CharacterDevice,
    /// `S_IFBLK`
    BlockDevice,
    /// Anything else.
    Unknown,
}

impl FileType {
    /// The type of a raw `st_mode`.
    pub const fn from_raw_mode(st_mode: u32) -> FileType {
        match st_mode & S_IFMT {
            0o100000 => FileType::RegularFile,
            0o040000 => FileType::Directory,
            0o120000 => FileType::Symlink,
            0o010000 => FileType::Fifo,
            0o140000 => FileType::Socket,
            0o020000 => FileType::CharacterDevice,
            0o060000 => FileType::BlockDevice,
            _ => FileType::Unknown,
        }
    }

    /// The `S_IFMT` bits of the type.
    pub const fn as_raw_mode(self) -> u32 {
        match self {
            FileType::RegularFile => 0o100000,
            FileType::Directory => 0o040000,
            FileType::Symlink => 0o120000,
            FileType::Fifo => 0o010000,
            FileType::Socket => 0o140000,
            FileType::CharacterDevice => 0o020000,
            FileType::BlockDevice => 0o060000,
            FileType::Unknown => 0,
        }
    }
}

/// `struct stat` with the fields and types of Linux x86-64 (rustix's `Stat`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Stat {
    pub st_dev: u64,
    pub st_ino: u64,
    pub st_nlink: u64,
    pub st_mode: u32,
    pub st_uid: u32,
    pub st_gid: u32,
    pub st_rdev: u64,
    pub st_size: i64,
    pub st_blksize: i64,
    pub st_blocks: i64,
    pub st_atime: i64,
    pub st_atime_nsec: u64,
    pub st_mtime: i64,
    pub st_mtime_nsec: u64,
    pub st_ctime: i64,
    pub st_ctime_nsec: u64,
}

/// `struct statvfs` (rustix's `StatVfs`, without the mount flags).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct StatVfs {
    pub f_bsize: u64,
    pub f_frsize: u64,
    pub f_blocks: u64,
    pub f_bfree: u64,
    pub f_bavail: u64,
    pub f_files: u64,
    pub f_ffree: u64,
    pub f_favail: u64,
    pub f_fsid: u64,
    pub f_namemax: u64,
}

/// A point in time as `utimensat` takes it (`tv_nsec` may be [`UTIME_NOW`] or
/// [`UTIME_OMIT`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timespec {
    /// Seconds since the epoch.
    pub tv_sec: i64,
    /// Nanoseconds, or one of the `UTIME_*` markers.
    pub tv_nsec: i64,
}

/// The access and modification times to set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timestamps {
    /// Last access.
    pub last_access: Timespec,
    /// Last modification.
    pub last_modification: Timespec,
}

/// `posix_fadvise` advice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Advice {
    Normal,
    Sequential,
    Random,
    NoReuse,
    WillNeed,
    DontNeed,
}

/// `lseek` whence and offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeekFrom {
    /// From the start.
    Start(u64),
    /// From the end.
    End(i64),
    /// From the current offset.
    Current(i64),
    /// `SEEK_DATA`: the next data at or after the offset.
    Data(u64),
    /// `SEEK_HOLE`: the next hole at or after the offset.
    Hole(u64),
}

/// POSIX constants the core uses that libc does not define for every OS, with their
/// Linux values (the FUSE protocol's and the core's vocabulary).
pub mod posix {
    /// `O_ACCMODE`
    pub const O_ACCMODE: i32 = 0o3;
    /// `O_RDONLY`
    pub const O_RDONLY: i32 = 0;
    /// `O_WRONLY`
    pub const O_WRONLY: i32 = 0o1;
    /// `O_RDWR`
    pub const O_RDWR: i32 = 0o2;
    /// `O_CREAT`
    pub const O_CREAT: i32 = 0o100;
    /// `O_EXCL`
    pub const O_EXCL: i32 = 0o200;
    /// `O_TRUNC`
    pub const O_TRUNC: i32 = 0o1000;
    /// `O_APPEND`
    pub const O_APPEND: i32 = 0o2000;
    /// `O_NONBLOCK`
    pub const O_NONBLOCK: i32 = 0o4000;
    /// `O_DSYNC`
    pub const O_DSYNC: i32 = 0o10000;
    /// `O_DIRECT`
    pub const O_DIRECT: i32 = 0o40000;
    /// `O_LARGEFILE` as libc has it on 64-bit Linux: 0 (every file is large there), so
    /// the core keeps nothing for it, as on Linux.
    pub const O_LARGEFILE: i32 = 0;
    /// `O_DIRECTORY`
    pub const O_DIRECTORY: i32 = 0o200000;
    /// `O_NOATIME`
    pub const O_NOATIME: i32 = 0o1000000;
    /// `O_SYNC`
    pub const O_SYNC: i32 = 0o4010000;
    /// `S_ISUID`
    pub const S_ISUID: u32 = 0o4000;
    /// `S_ISGID`
    pub const S_ISGID: u32 = 0o2000;
    /// `S_IXGRP`
    pub const S_IXGRP: u32 = 0o010;
    /// `UTIME_NOW`
    pub const UTIME_NOW: i64 = (1 << 30) - 1;
    /// `UTIME_OMIT`
    pub const UTIME_OMIT: i64 = (1 << 30) - 2;
    /// `SEEK_DATA`
    pub const SEEK_DATA: i32 = 3;
    /// `SEEK_HOLE`
    pub const SEEK_HOLE: i32 = 4;
}

/// Positional I/O on a [`File`] (`std::os::unix::fs::FileExt` on Unix). On Windows the
/// positional calls move the file pointer, which nobody else uses: every read and write
/// of reseedfs says its offset.
pub trait FileExt {
    /// Reads at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.write_at(buf, offset) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    buf = &buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(windows)]
impl FileExt for std::fs::File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        std::os::windows::fs::FileExt::seek_read(self, buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        std::os::windows::fs::FileExt::seek_write(self, buf, offset)
    }
}

/// The bytes of a name (`std::os::unix::ffi::OsStrExt` on Unix).
///
/// Names on Windows are Unicode: the WinFsp adapter and the Windows backend refuse names
/// that are not (an unpaired UTF-16 surrogate), so the bytes are UTF-8 and read back
/// as the same name. Bytes that are not UTF-8 (only a corrupt record, which its checksum
/// refuses first) read back as U+FFFD, a name no database created.
pub trait OsStrExt {
    /// The name from its bytes.
    fn from_bytes(bytes: &[u8]) -> &Self;
    /// The bytes of the name.
    fn as_bytes(&self) -> &[u8];
}

impl OsStrExt for OsStr {
    fn from_bytes(bytes: &[u8]) -> &OsStr {
        match std::str::from_utf8(bytes) {
            Ok(s) => OsStr::new(s),
            Err(_) => OsStr::new("\u{FFFD}"),
        }
    }
    fn as_bytes(&self) -> &[u8] {
        self.as_encoded_bytes()
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn values_are_linux_values() {
        use rustix::fs as rx;
        for (ours, theirs) in [
            (OFlags::ACCMODE.bits(), rx::OFlags::ACCMODE.bits()),
            (OFlags::RDONLY.bits(), rx::OFlags::RDONLY.bits()),
            (OFlags::WRONLY.bits(), rx::OFlags::WRONLY.bits()),
            (OFlags::RDWR.bits(), rx::OFlags::RDWR.bits()),
            (OFlags::CREATE.bits(), rx::OFlags::CREATE.bits()),
            (OFlags::EXCL.bits(), rx::OFlags::EXCL.bits()),
            (OFlags::NOCTTY.bits(), rx::OFlags::NOCTTY.bits()),
            (OFlags::TRUNC.bits(), rx::OFlags::TRUNC.bits()),
            (OFlags::APPEND.bits(), rx::OFlags::APPEND.bits()),
            (OFlags::NONBLOCK.bits(), rx::OFlags::NONBLOCK.bits()),
            // rustix's DSYNC is O_SYNC on Linux (a stronger flag); ours is O_DSYNC, the value
            // the kernel sends and the core keeps (`backing_open_flags`).
            (OFlags::DSYNC.bits(), libc::O_DSYNC as u32),
            (OFlags::DIRECT.bits(), rx::OFlags::DIRECT.bits()),
            (OFlags::LARGEFILE.bits(), rx::OFlags::LARGEFILE.bits()),
            (OFlags::DIRECTORY.bits(), rx::OFlags::DIRECTORY.bits()),
            (OFlags::NOFOLLOW.bits(), rx::OFlags::NOFOLLOW.bits()),
            (OFlags::NOATIME.bits(), rx::OFlags::NOATIME.bits()),
            (OFlags::CLOEXEC.bits(), rx::OFlags::CLOEXEC.bits()),
            (OFlags::SYNC.bits(), rx::OFlags::SYNC.bits()),
            (OFlags::PATH.bits(), rx::OFlags::PATH.bits()),
            (
                RenameFlags::NOREPLACE.bits(),
                rx::RenameFlags::NOREPLACE.bits(),
            ),
            (
                RenameFlags::EXCHANGE.bits(),
                rx::RenameFlags::EXCHANGE.bits(),
            ),
            (
                RenameFlags::WHITEOUT.bits(),
                rx::RenameFlags::WHITEOUT.bits(),
            ),
            (
                FallocateFlags::KEEP_SIZE.bits(),
                rx::FallocateFlags::KEEP_SIZE.bits(),
            ),
            (
                FallocateFlags::PUNCH_HOLE.bits(),
                rx::FallocateFlags::PUNCH_HOLE.bits(),
            ),
            (
                FallocateFlags::ZERO_RANGE.bits(),
                rx::FallocateFlags::ZERO_RANGE.bits(),
            ),
            (
                FallocateFlags::COLLAPSE_RANGE.bits(),
                rx::FallocateFlags::COLLAPSE_RANGE.bits(),
            ),
            (
                FallocateFlags::INSERT_RANGE.bits(),
                rx::FallocateFlags::INSERT_RANGE.bits(),
            ),
            (Mode::RWXU.bits(), rx::Mode::RWXU.bits()),
            (Mode::SUID.bits(), rx::Mode::SUID.bits()),
            (Mode::SGID.bits(), rx::Mode::SGID.bits()),
            (Mode::SVTX.bits(), rx::Mode::SVTX.bits()),
        ] {
            assert_eq!(ours, theirs, "{ours:#o} != {theirs:#o}");
        }
        let ints = [
            (posix::O_ACCMODE, libc::O_ACCMODE),
            (posix::O_RDONLY, libc::O_RDONLY),
            (posix::O_WRONLY, libc::O_WRONLY),
            (posix::O_RDWR, libc::O_RDWR),
            (posix::O_CREAT, libc::O_CREAT),
            (posix::O_EXCL, libc::O_EXCL),
            (posix::O_TRUNC, libc::O_TRUNC),
            (posix::O_APPEND, libc::O_APPEND),
            (posix::O_NONBLOCK, libc::O_NONBLOCK),
            (posix::O_DSYNC, libc::O_DSYNC),
            (posix::O_DIRECT, libc::O_DIRECT),
            (posix::O_LARGEFILE, libc::O_LARGEFILE),
            (posix::O_DIRECTORY, libc::O_DIRECTORY),
            (posix::O_NOATIME, libc::O_NOATIME),
            (posix::O_SYNC, libc::O_SYNC),
            (posix::SEEK_DATA, libc::SEEK_DATA),
            (posix::SEEK_HOLE, libc::SEEK_HOLE),
        ];
        for (ours, theirs) in ints {
            assert_eq!(ours, theirs, "{ours:#o} != {theirs:#o}");
        }
        assert_eq!(posix::S_ISUID, libc::S_ISUID);
        assert_eq!(posix::S_ISGID, libc::S_ISGID);
        assert_eq!(posix::S_IXGRP, libc::S_IXGRP);
        assert_eq!(posix::UTIME_NOW, libc::UTIME_NOW);
        assert_eq!(posix::UTIME_OMIT, libc::UTIME_OMIT);
        assert_eq!(S_IFMT, libc::S_IFMT);
    }

    #[test]
    fn file_types_round_trip_as_rustix_does() {
        use rustix::fs as rx;
        for raw in [
            libc::S_IFREG,
            libc::S_IFDIR,
            libc::S_IFLNK,
            libc::S_IFIFO,
            libc::S_IFSOCK,
            libc::S_IFCHR,
            libc::S_IFBLK,
        ] {
            let ours = FileType::from_raw_mode(raw | 0o644);
            let theirs = rx::FileType::from_raw_mode(raw | 0o644);
            assert_eq!(ours.as_raw_mode(), theirs.as_raw_mode());
            assert_ne!(ours, FileType::Unknown);
        }
        assert_eq!(
            Mode::from_raw_mode(libc::S_IFREG | 0o4755).as_raw_mode(),
            rx::Mode::from_raw_mode(libc::S_IFREG | 0o4755).as_raw_mode()
        );
    }

    #[test]
    fn names_round_trip_as_bytes() {
        let name = OsStr::new("Volume1/db001.db/ä");
        let bytes = OsStrExt::as_bytes(name);
        assert_eq!(<OsStr as OsStrExt>::from_bytes(bytes), name);
        assert_eq!(
            <OsStr as OsStrExt>::from_bytes(b"\xff"),
            OsStr::new("\u{FFFD}")
        );
    }

    #[test]
    fn write_all_at_loops_over_short_writes() {
        struct Short(std::cell::RefCell<Vec<u8>>);
        impl FileExt for Short {
            fn read_at(&self, _: &mut [u8], _: u64) -> io::Result<usize> {
                Ok(0)
            }
            fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
                let n = buf.len().min(3);
                let mut v = self.0.borrow_mut();
                let end = offset as usize + n;
                if v.len() < end {
                    v.resize(end, 0);
                }
                v[offset as usize..end].copy_from_slice(&buf[..n]);
                Ok(n)
            }
        }
        let s = Short(Default::default());
        s.write_all_at(b"0123456789", 2).expect("write");
        assert_eq!(&s.0.borrow()[..], b"\x00\x000123456789");
    }
}
