//! The Windows volume backend: the guarantees of the Unix one (`openat2` with
//! `RESOLVE_BENEATH`, never following a symlink) with NT handles.
//!
//! - The volume root is opened once, as a handle (`FILE_FLAG_OPEN_REPARSE_POINT`: a
//!   volume folder that is itself a junction or a symlink is refused).
//! - Every path is walked one component at a time, each opened with `NtCreateFile`
//!   relative to the handle of its parent (`OBJECT_ATTRIBUTES.RootDirectory`) and with
//!   `FILE_OPEN_REPARSE_POINT`; a component that is a reparse point (junction, symlink,
//!   mount point) is refused with `ELOOP`, never followed. Names are checked first
//!   (`crate::winrules::names`): no `..`, no root, no drive, no stream, so no path leaves
//!   its volume.
//! - Win32 and NT errors become the core's errno (`crate::winrules::ntstatus`): a dead
//!   disk fails the volume as on Linux.
//!
//! What NTFS has no place for is said plainly rather than faked: owners (`chown` keeps
//! nothing; `stat` reports uid and gid 0), modes beyond the read-only attribute, symlinks
//! and special files (`EOPNOTSUPP`), extended attributes (`EOPNOTSUPP`, as a Linux
//! filesystem without xattrs), hard links (`EOPNOTSUPP`). Holes are not tracked: a file
//! is all data, and punching a hole writes zeros.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Seek, Write};
use std::os::windows::ffi::OsStrExt as _;
use std::os::windows::fs::OpenOptionsExt;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use windows_sys::Wdk::Foundation::OBJECT_ATTRIBUTES;
use windows_sys::Wdk::Storage::FileSystem::{
    FILE_CREATE, FILE_DIRECTORY_FILE, FILE_NO_INTERMEDIATE_BUFFERING, FILE_NON_DIRECTORY_FILE,
    FILE_OPEN, FILE_OPEN_FOR_BACKUP_INTENT, FILE_OPEN_IF, FILE_OPEN_REPARSE_POINT, FILE_OVERWRITE,
    FILE_OVERWRITE_IF, FILE_SYNCHRONOUS_IO_NONALERT, FILE_WRITE_THROUGH, NtCreateFile,
};
use windows_sys::Win32::Foundation::{HANDLE, RtlNtStatusToDosError, UNICODE_STRING};
use windows_sys::Win32::Storage::FileSystem::{
    BY_HANDLE_FILE_INFORMATION, FILE_FULL_DIR_INFO, FILE_RENAME_INFO, GetDiskFreeSpaceExW,
    GetFileInformationByHandle, GetFileInformationByHandleEx, GetVolumeNameForVolumeMountPointW,
    GetVolumePathNameW, SetFileInformationByHandle,
};
use windows_sys::Win32::System::IO::IO_STATUS_BLOCK;

use crate::volume::{
    Advice, Backend, DirEntry, FallocateFlags, FileType, Mode, OFlags, RenameFlags, SeekFrom, Stat,
    StatVfs, Timestamps, posix,
};
use crate::winrules::names::{backend_components, check_name};
use crate::winrules::ntstatus::errno_from_win32;

const GENERIC_READ: u32 = 0x8000_0000;
const GENERIC_WRITE: u32 = 0x4000_0000;
const DELETE: u32 = 0x0001_0000;
const SYNCHRONIZE: u32 = 0x0010_0000;
const FILE_LIST_DIRECTORY: u32 = 0x0001;
const FILE_APPEND_DATA: u32 = 0x0004;
const FILE_TRAVERSE: u32 = 0x0020;
const FILE_READ_ATTRIBUTES: u32 = 0x0080;
const FILE_WRITE_ATTRIBUTES: u32 = 0x0100;
const FILE_SHARE_ALL: u32 = 0x1 | 0x2 | 0x4;
const FILE_ATTRIBUTE_READONLY: u32 = 0x0001;
const FILE_ATTRIBUTE_DIRECTORY: u32 = 0x0010;
const FILE_ATTRIBUTE_NORMAL: u32 = 0x0080;
const FILE_ATTRIBUTE_REPARSE_POINT: u32 = 0x0400;
const FILE_FLAG_BACKUP_SEMANTICS: u32 = 0x0200_0000;
const FILE_FLAG_OPEN_REPARSE_POINT: u32 = 0x0020_0000;
/// `FILE_INFO_BY_HANDLE_CLASS` values.
const FILE_RENAME_INFO_EX: i32 = 22;
const FILE_DISPOSITION_INFO_EX: i32 = 21;
const FILE_FULL_DIRECTORY_INFO: i32 = 14;
const FILE_FULL_DIRECTORY_RESTART_INFO: i32 = 15;
const FILE_DISPOSITION_FLAG_DELETE: u32 = 0x1;
const FILE_DISPOSITION_FLAG_POSIX_SEMANTICS: u32 = 0x2;
const FILE_RENAME_FLAG_REPLACE_IF_EXISTS: u32 = 0x1;
const FILE_RENAME_FLAG_POSIX_SEMANTICS: u32 = 0x2;
/// Win32 `ERROR_NO_MORE_FILES`.
const ERROR_NO_MORE_FILES: i32 = 18;
/// 100 ns intervals between 1601-01-01 and 1970-01-01.
const EPOCH_DIFF_100NS: i64 = 116_444_736_000_000_000;

/// The core's error for a Win32 error.
fn errno(e: io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(errno_from_win32(code as u32)),
        None => e,
    }
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

fn eopnotsupp() -> io::Error {
    io::Error::from_raw_os_error(libc::EOPNOTSUPP)
}

/// Opens `name` relative to the directory `dir` with `NtCreateFile`, never following a
/// reparse point, and refuses what turns out to be one.
fn open_relative(
    dir: &OwnedHandle,
    name: &OsStr,
    access: u32,
    attributes: u32,
    disposition: u32,
    options: u32,
) -> io::Result<File> {
    let checked = check_name(&name.encode_wide().collect::<Vec<u16>>())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let wide: Vec<u16> = checked.encode_utf16().collect();
    let bytes = u16::try_from(wide.len() * 2).map_err(|_| einval())?;
    let unicode = UNICODE_STRING {
        Length: bytes,
        MaximumLength: bytes,
        Buffer: wide.as_ptr().cast_mut(),
    };
    let object = OBJECT_ATTRIBUTES {
        Length: std::mem::size_of::<OBJECT_ATTRIBUTES>() as u32,
        RootDirectory: dir.as_raw_handle() as HANDLE,
        ObjectName: &unicode,
        Attributes: 0,
        SecurityDescriptor: std::ptr::null(),
        SecurityQualityOfService: std::ptr::null(),
    };
    let mut handle: HANDLE = std::ptr::null_mut();
    // SAFETY: an all-zero IO_STATUS_BLOCK is a valid output buffer.
    let mut status_block: IO_STATUS_BLOCK = unsafe { std::mem::zeroed() };
    // SAFETY: every pointer is to a live local for the duration of the call (`wide` backs
    // `unicode`, which `object` points to); `handle` receives a new handle that the
    // `OwnedHandle` below owns; no EA buffer.
    let status = unsafe {
        NtCreateFile(
            &mut handle,
            access | SYNCHRONIZE,
            &object,
            &mut status_block,
            std::ptr::null(),
            attributes,
            FILE_SHARE_ALL,
            disposition,
            options
                | FILE_OPEN_REPARSE_POINT
                | FILE_SYNCHRONOUS_IO_NONALERT
                | FILE_OPEN_FOR_BACKUP_INTENT,
            std::ptr::null(),
            0,
        )
    };
    if status < 0 {
        // SAFETY: a pure translation of a status code.
        let win32 = unsafe { RtlNtStatusToDosError(status) };
        return Err(io::Error::from_raw_os_error(errno_from_win32(win32)));
    }
    // SAFETY: NtCreateFile succeeded: `handle` is a new handle owned by nobody else.
    let file = File::from(unsafe { OwnedHandle::from_raw_handle(handle as _) });
    if info(&file)?.dwFileAttributes & FILE_ATTRIBUTE_REPARSE_POINT != 0 {
        return Err(io::Error::from_raw_os_error(libc::ELOOP));
    }
    Ok(file)
}

/// `GetFileInformationByHandle`.
fn info(f: &File) -> io::Result<BY_HANDLE_FILE_INFORMATION> {
    // SAFETY: an all-zero BY_HANDLE_FILE_INFORMATION is valid; `f` is an open handle.
    let mut i: BY_HANDLE_FILE_INFORMATION = unsafe { std::mem::zeroed() };
    // SAFETY: `i` is a live, correctly sized output buffer.
    if unsafe { GetFileInformationByHandle(f.as_raw_handle() as HANDLE, &mut i) } == 0 {
        return Err(errno(io::Error::last_os_error()));
    }
    Ok(i)
}

/// A FILETIME (100 ns since 1601) as seconds and nanoseconds since the epoch.
fn unix_time(high: u32, low: u32) -> (i64, u64) {
    let t = ((i64::from(high) << 32) | i64::from(low)) - EPOCH_DIFF_100NS;
    (
        t.div_euclid(10_000_000),
        (t.rem_euclid(10_000_000) * 100) as u64,
    )
}

/// The `stat` of an open file: type and read-only attribute make the mode; owner 0:0.
fn stat_of(f: &File) -> io::Result<Stat> {
    let i = info(f)?;
    let dir = i.dwFileAttributes & FILE_ATTRIBUTE_DIRECTORY != 0;
    let readonly = i.dwFileAttributes & FILE_ATTRIBUTE_READONLY != 0;
    let kind = if dir {
        FileType::Directory
    } else {
        FileType::RegularFile
    };
    let perm = match (dir, readonly) {
        (true, _) => 0o755,
        (false, false) => 0o644,
        (false, true) => 0o444,
    };
    let size = (u64::from(i.nFileSizeHigh) << 32) | u64::from(i.nFileSizeLow);
    let (atime, atime_nsec) = unix_time(
        i.ftLastAccessTime.dwHighDateTime,
        i.ftLastAccessTime.dwLowDateTime,
    );
    let (mtime, mtime_nsec) = unix_time(
        i.ftLastWriteTime.dwHighDateTime,
        i.ftLastWriteTime.dwLowDateTime,
    );
    Ok(Stat {
        st_dev: u64::from(i.dwVolumeSerialNumber),
        st_ino: (u64::from(i.nFileIndexHigh) << 32) | u64::from(i.nFileIndexLow),
        st_nlink: u64::from(i.nNumberOfLinks),
        st_mode: kind.as_raw_mode() | perm,
        st_uid: 0,
        st_gid: 0,
        st_rdev: 0,
        st_size: i64::try_from(size).unwrap_or(i64::MAX),
        st_blksize: 4096,
        st_blocks: i64::try_from(size.div_ceil(512)).unwrap_or(i64::MAX),
        st_atime: atime,
        st_atime_nsec: atime_nsec,
        st_mtime: mtime,
        st_mtime_nsec: mtime_nsec,
        st_ctime: mtime,
        st_ctime_nsec: mtime_nsec,
    })
}

/// The identity of the filesystem holding `path`: its volume serial number.
pub fn filesystem_id(path: &Path) -> io::Result<u64> {
    let f = std::fs::OpenOptions::new()
        .access_mode(FILE_READ_ATTRIBUTES)
        .custom_flags(FILE_FLAG_BACKUP_SEMANTICS)
        .open(path)
        .map_err(errno)?;
    Ok(u64::from(info(&f)?.dwVolumeSerialNumber))
}

/// The volume device that holds `dir` (`\\?\Volume{GUID}`, without the trailing
/// backslash that would name its root directory instead).
fn volume_device(dir: &Path) -> io::Result<PathBuf> {
    let wide = super::wide(dir);
    let mut mount_point = vec![0u16; 1024];
    // SAFETY: `wide` is NUL-terminated; the output buffer holds `len` UTF-16 units.
    let ok = unsafe {
        GetVolumePathNameW(
            wide.as_ptr(),
            mount_point.as_mut_ptr(),
            mount_point.len() as u32,
        )
    };
    if ok == 0 {
        return Err(errno(io::Error::last_os_error()));
    }
    let mut name = vec![0u16; 64];
    // SAFETY: `mount_point` is NUL-terminated (filled above); the output buffer holds
    // `len` UTF-16 units (a volume GUID path is 49 with its NUL).
    let ok = unsafe {
        GetVolumeNameForVolumeMountPointW(
            mount_point.as_ptr(),
            name.as_mut_ptr(),
            name.len() as u32,
        )
    };
    if ok == 0 {
        return Err(errno(io::Error::last_os_error()));
    }
    let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
    let device = String::from_utf16_lossy(&name[..end]);
    Ok(PathBuf::from(device.trim_end_matches('\\')))
}

/// A volume on Windows: the root's handle, and every path walked beneath it.
#[derive(Debug)]
pub struct WindowsBackend {
    root: OwnedHandle,
    path: PathBuf,
    /// The volume device holding the root (`\\?\Volume{GUID}`), flushed by `syncfs`.
    device: PathBuf,
}

impl WindowsBackend {
    /// Opens the volume directory `dir` (refused when it is a reparse point).
    pub fn open(dir: &Path) -> io::Result<WindowsBackend> {
        let f = std::fs::OpenOptions::new()
            .access_mode(FILE_LIST_DIRECTORY | FILE_TRAVERSE | FILE_READ_ATTRIBUTES | SYNCHRONIZE)
            .share_mode(FILE_SHARE_ALL)
            .custom_flags(FILE_FLAG_BACKUP_SEMANTICS | FILE_FLAG_OPEN_REPARSE_POINT)
            .open(dir)
            .map_err(errno)?;
        let i = info(&f)?;
        if i.dwFileAttributes & FILE_ATTRIBUTE_REPARSE_POINT != 0 {
            return Err(io::Error::from_raw_os_error(libc::ELOOP));
        }
        if i.dwFileAttributes & FILE_ATTRIBUTE_DIRECTORY == 0 {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        Ok(WindowsBackend {
            root: OwnedHandle::from(f),
            path: dir.to_owned(),
            device: volume_device(dir)?,
        })
    }

    /// The directory holding the last component of `rel`, walked from the root, and that
    /// component (`None` for the root itself).
    fn parent_of<'a>(&self, rel: &'a Path) -> io::Result<(OwnedHandle, Option<&'a OsStr>)> {
        let parts = backend_components(rel)?;
        let mut dir = self.root.try_clone()?;
        let Some((last, walk)) = parts.split_last() else {
            return Ok((dir, None));
        };
        for name in walk {
            let f = open_relative(
                &dir,
                name,
                FILE_TRAVERSE | FILE_LIST_DIRECTORY | FILE_READ_ATTRIBUTES,
                0,
                FILE_OPEN,
                FILE_DIRECTORY_FILE,
            )?;
            dir = OwnedHandle::from(f);
        }
        Ok((dir, Some(*last)))
    }

    /// Opens `rel` (the root for an empty path).
    fn open_path(
        &self,
        rel: &Path,
        access: u32,
        attributes: u32,
        disposition: u32,
        options: u32,
    ) -> io::Result<File> {
        match self.parent_of(rel)? {
            (dir, Some(name)) => {
                open_relative(&dir, name, access, attributes, disposition, options)
            }
            (dir, None) => Ok(File::from(dir)),
        }
    }

    fn metadata_handle(&self, rel: &Path) -> io::Result<File> {
        self.open_path(rel, FILE_READ_ATTRIBUTES, 0, FILE_OPEN, 0)
    }
}

/// Sets a variable-length information class on `f`.
fn set_info(f: &File, class: i32, buf: &[u8]) -> io::Result<()> {
    let len = u32::try_from(buf.len()).map_err(|_| einval())?;
    // SAFETY: `buf` holds a correctly laid out structure of `class` for its whole length
    // and outlives the call.
    let ok = unsafe {
        SetFileInformationByHandle(f.as_raw_handle() as HANDLE, class, buf.as_ptr().cast(), len)
    };
    if ok == 0 {
        return Err(errno(io::Error::last_os_error()));
    }
    Ok(())
}

impl Backend for WindowsBackend {
    fn stat(&self, rel: &Path) -> io::Result<Stat> {
        stat_of(&self.metadata_handle(rel)?)
    }

    fn open(&self, rel: &Path, flags: OFlags, _mode: Mode) -> io::Result<File> {
        let mut access = FILE_READ_ATTRIBUTES;
        if flags.contains(OFlags::PATH) {
            // Only a reference to the file (its attributes).
        } else if flags.contains(OFlags::RDWR) {
            access |= GENERIC_READ | GENERIC_WRITE;
        } else if flags.contains(OFlags::WRONLY) {
            access |= GENERIC_WRITE;
        } else {
            access |= GENERIC_READ;
        }
        if flags.contains(OFlags::APPEND) {
            access = (access & !GENERIC_WRITE) | FILE_APPEND_DATA;
        }
        let create = flags.contains(OFlags::CREATE);
        let disposition = match (
            create,
            flags.contains(OFlags::EXCL),
            flags.contains(OFlags::TRUNC),
        ) {
            (true, true, _) => FILE_CREATE,
            (true, false, true) => FILE_OVERWRITE_IF,
            (true, false, false) => FILE_OPEN_IF,
            (false, _, true) => FILE_OVERWRITE,
            (false, _, false) => FILE_OPEN,
        };
        let mut options = 0;
        if flags.contains(OFlags::DIRECTORY) {
            options |= FILE_DIRECTORY_FILE;
        } else if create {
            options |= FILE_NON_DIRECTORY_FILE;
        }
        if flags.intersects(OFlags::SYNC | OFlags::DSYNC) {
            options |= FILE_WRITE_THROUGH;
        }
        if flags.contains(OFlags::DIRECT) {
            options |= FILE_NO_INTERMEDIATE_BUFFERING;
        }
        self.open_path(rel, access, FILE_ATTRIBUTE_NORMAL, disposition, options)
    }

    fn mkdir(&self, rel: &Path, _mode: Mode) -> io::Result<()> {
        self.open_path(
            rel,
            FILE_LIST_DIRECTORY,
            FILE_ATTRIBUTE_NORMAL,
            FILE_CREATE,
            FILE_DIRECTORY_FILE,
        )
        .map(drop)
    }

    fn mknod(&self, rel: &Path, kind: FileType, _mode: Mode, _dev: u64) -> io::Result<()> {
        if kind != FileType::RegularFile {
            return Err(eopnotsupp());
        }
        self.open_path(
            rel,
            GENERIC_WRITE,
            FILE_ATTRIBUTE_NORMAL,
            FILE_CREATE,
            FILE_NON_DIRECTORY_FILE,
        )
        .map(drop)
    }

    fn symlink(&self, _target: &Path, _rel: &Path) -> io::Result<()> {
        Err(eopnotsupp())
    }

    fn readlink(&self, rel: &Path) -> io::Result<Vec<u8>> {
        // Nothing on a Windows volume is a symlink to reseedfs (reparse points are refused).
        self.metadata_handle(rel)?;
        Err(einval())
    }

    fn remove(&self, rel: &Path, dir: bool) -> io::Result<()> {
        let options = if dir {
            FILE_DIRECTORY_FILE
        } else {
            FILE_NON_DIRECTORY_FILE
        };
        let f = self.open_path(rel, DELETE, 0, FILE_OPEN, options)?;
        // POSIX semantics: the name goes at once, open handles keep working.
        let flags = FILE_DISPOSITION_FLAG_DELETE | FILE_DISPOSITION_FLAG_POSIX_SEMANTICS;
        set_info(&f, FILE_DISPOSITION_INFO_EX, &flags.to_ne_bytes())
    }

    fn rename(&self, from: &Path, to: &Path, flags: RenameFlags) -> io::Result<()> {
        if flags.contains(RenameFlags::EXCHANGE) || flags.contains(RenameFlags::WHITEOUT) {
            return Err(eopnotsupp());
        }
        let f = self.open_path(from, DELETE | SYNCHRONIZE, 0, FILE_OPEN, 0)?;
        let (dir, Some(name)) = self.parent_of(to)? else {
            return Err(einval());
        };
        let name: Vec<u16> = check_name(&name.encode_wide().collect::<Vec<u16>>())
            .map_err(|_| einval())?
            .encode_utf16()
            .collect();
        let mut rename_flags = FILE_RENAME_FLAG_POSIX_SEMANTICS;
        if !flags.contains(RenameFlags::NOREPLACE) {
            rename_flags |= FILE_RENAME_FLAG_REPLACE_IF_EXISTS;
        }
        // FILE_RENAME_INFO with the name after its header, relative to `dir`: the target
        // is reached from the volume root's handle, as every other path.
        let header = std::mem::offset_of!(FILE_RENAME_INFO, FileName);
        // The size Windows checks: the whole structure plus the name's bytes.
        let mut buf = vec![0u8; std::mem::size_of::<FILE_RENAME_INFO>() + name.len() * 2];
        let info = FILE_RENAME_INFO {
            Anonymous: windows_sys::Win32::Storage::FileSystem::FILE_RENAME_INFO_0 {
                Flags: rename_flags,
            },
            RootDirectory: dir.as_raw_handle() as HANDLE,
            FileNameLength: u32::try_from(name.len() * 2).map_err(|_| einval())?,
            FileName: [0],
        };
        // SAFETY: `buf` is at least `header` bytes; the header is copied byte for byte
        // from a valid FILE_RENAME_INFO (no padding is read as anything but bytes).
        unsafe {
            std::ptr::copy_nonoverlapping(
                (&info as *const FILE_RENAME_INFO).cast::<u8>(),
                buf.as_mut_ptr(),
                header,
            );
        }
        for (i, c) in name.iter().enumerate() {
            buf[header + 2 * i..header + 2 * i + 2].copy_from_slice(&c.to_ne_bytes());
        }
        set_info(&f, FILE_RENAME_INFO_EX, &buf)
    }

    fn link(&self, _from: &Path, _to: &Path) -> io::Result<()> {
        Err(eopnotsupp())
    }

    fn chmod(&self, rel: &Path, mode: Mode) -> io::Result<()> {
        let f = self.open_path(
            rel,
            FILE_READ_ATTRIBUTES | FILE_WRITE_ATTRIBUTES,
            0,
            FILE_OPEN,
            0,
        )?;
        let mut perms = f.metadata().map_err(errno)?.permissions();
        perms.set_readonly(mode.as_raw_mode() & 0o222 == 0);
        f.set_permissions(perms).map_err(errno)
    }

    fn chown(&self, rel: &Path, _uid: Option<u32>, _gid: Option<u32>) -> io::Result<()> {
        // NTFS copies keep no POSIX owner (see the module header): the file must exist.
        self.metadata_handle(rel).map(drop)
    }

    fn set_times(&self, rel: &Path, times: &Timestamps) -> io::Result<()> {
        let f = self.open_path(rel, FILE_WRITE_ATTRIBUTES, 0, FILE_OPEN, 0)?;
        f.set_times(file_times(times)).map_err(errno)
    }

    fn read_dir(&self, rel: &Path) -> io::Result<Vec<DirEntry>> {
        let f = self.open_path(
            rel,
            FILE_LIST_DIRECTORY | FILE_READ_ATTRIBUTES,
            0,
            FILE_OPEN,
            FILE_DIRECTORY_FILE,
        )?;
        let mut out = Vec::new();
        let mut buf = vec![0u64; 8192]; // 64 KiB, 8-byte aligned for FILE_FULL_DIR_INFO
        let mut class = FILE_FULL_DIRECTORY_RESTART_INFO;
        loop {
            let bytes = (buf.len() * 8) as u32;
            // SAFETY: `buf` is a live, aligned output buffer of `bytes` bytes.
            let ok = unsafe {
                GetFileInformationByHandleEx(
                    f.as_raw_handle() as HANDLE,
                    class,
                    buf.as_mut_ptr().cast(),
                    bytes,
                )
            };
            if ok == 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(ERROR_NO_MORE_FILES) {
                    break;
                }
                return Err(errno(e));
            }
            class = FILE_FULL_DIRECTORY_INFO;
            let base = buf.as_ptr().cast::<u8>();
            let mut offset = 0usize;
            loop {
                // SAFETY: the system filled `buf` with a chain of FILE_FULL_DIR_INFO
                // entries, each 8-byte aligned, linked by NextEntryOffset and within the
                // buffer; the name is FileNameLength bytes after the header.
                let (next, attributes, name) = unsafe {
                    let entry = &*base.add(offset).cast::<FILE_FULL_DIR_INFO>();
                    let name = std::slice::from_raw_parts(
                        entry.FileName.as_ptr(),
                        entry.FileNameLength as usize / 2,
                    );
                    (entry.NextEntryOffset, entry.FileAttributes, name.to_vec())
                };
                if name != [b'.' as u16] && name != [b'.' as u16, b'.' as u16] {
                    let name = String::from_utf16(&name).map_err(|_| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "{} holds a name that is not Unicode: rename it (reseedfs cannot mirror it)",
                                self.path.join(rel).display()
                            ),
                        )
                    })?;
                    let kind = if attributes & FILE_ATTRIBUTE_REPARSE_POINT != 0 {
                        FileType::Unknown
                    } else if attributes & FILE_ATTRIBUTE_DIRECTORY != 0 {
                        FileType::Directory
                    } else {
                        FileType::RegularFile
                    };
                    out.push(DirEntry {
                        name: name.into(),
                        kind,
                    });
                }
                if next == 0 {
                    break;
                }
                offset += next as usize;
            }
        }
        Ok(out)
    }

    fn statvfs(&self) -> io::Result<StatVfs> {
        let root = super::wide(&self.path);
        let (mut avail, mut total, mut free) = (0u64, 0u64, 0u64);
        // SAFETY: `root` is NUL-terminated; the three outputs are live u64s.
        let ok = unsafe { GetDiskFreeSpaceExW(root.as_ptr(), &mut avail, &mut total, &mut free) };
        if ok == 0 {
            return Err(errno(io::Error::last_os_error()));
        }
        let bsize = 4096;
        Ok(StatVfs {
            f_bsize: bsize,
            f_frsize: bsize,
            f_blocks: total / bsize,
            f_bfree: free / bsize,
            f_bavail: avail / bsize,
            f_files: 0,
            f_ffree: 0,
            f_favail: 0,
            f_fsid: 0,
            f_namemax: 255,
        })
    }

    fn get_xattr(&self, _rel: &Path, _key: &OsStr, _buf: &mut [u8]) -> io::Result<usize> {
        Err(eopnotsupp())
    }

    fn list_xattr(&self, _rel: &Path, _buf: &mut [u8]) -> io::Result<usize> {
        Err(eopnotsupp())
    }

    fn set_xattr(&self, _rel: &Path, _key: &OsStr, _value: &[u8], _flags: i32) -> io::Result<()> {
        Err(eopnotsupp())
    }

    fn remove_xattr(&self, _rel: &Path, _key: &OsStr) -> io::Result<()> {
        Err(eopnotsupp())
    }

    fn syncfs(&self) -> io::Result<()> {
        // "To flush all open files on a volume, call FlushFileBuffers with a handle to the
        // volume" (administrators only: the service runs as LocalSystem).
        let device = std::fs::OpenOptions::new()
            .access_mode(GENERIC_WRITE)
            .share_mode(FILE_SHARE_ALL)
            .open(&self.device)
            .map_err(errno)?;
        device.sync_all().map_err(errno)
    }

    fn read_at(&self, f: &File, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        std::os::windows::fs::FileExt::seek_read(f, buf, offset).map_err(errno)
    }

    fn write_all_at(&self, f: &File, offset: u64, data: &[u8]) -> io::Result<()> {
        crate::volume::FileExt::write_all_at(f, data, offset).map_err(errno)
    }

    fn append(&self, f: &File, data: &[u8]) -> io::Result<()> {
        (&*f).write_all(data).map_err(errno)
    }

    fn sync(&self, f: &File, data_only: bool) -> io::Result<()> {
        // FlushFileBuffers needs a handle open for writing, which a directory's is not:
        // NTFS journals directory changes, so a directory's fsync has nothing to flush.
        if info(f)?.dwFileAttributes & FILE_ATTRIBUTE_DIRECTORY != 0 {
            return Ok(());
        }
        if data_only {
            f.sync_data()
        } else {
            f.sync_all()
        }
        .map_err(errno)
    }

    fn set_len(&self, f: &File, size: u64) -> io::Result<()> {
        f.set_len(size).map_err(errno)
    }

    fn fallocate(&self, f: &File, mode: FallocateFlags, offset: u64, len: u64) -> io::Result<()> {
        let zero = FallocateFlags::PUNCH_HOLE | FallocateFlags::ZERO_RANGE;
        if mode.intersects(zero) {
            return crate::volume::punch_hole(f, offset, len).map_err(errno);
        }
        if mode.is_empty() {
            let end = offset.checked_add(len).ok_or_else(einval)?;
            if end > f.metadata().map_err(errno)?.len() {
                f.set_len(end).map_err(errno)?;
            }
            return Ok(());
        }
        if mode == FallocateFlags::KEEP_SIZE {
            return Ok(()); // only a hint
        }
        Err(eopnotsupp())
    }

    fn seek(&self, f: &File, pos: SeekFrom) -> io::Result<u64> {
        let len = f.metadata().map_err(errno)?.len();
        let mut f = f;
        match pos {
            SeekFrom::Start(p) => f.seek(io::SeekFrom::Start(p)).map_err(errno),
            SeekFrom::End(p) => f.seek(io::SeekFrom::End(p)).map_err(errno),
            SeekFrom::Current(p) => f.seek(io::SeekFrom::Current(p)).map_err(errno),
            // No holes are tracked: all of the file is data.
            SeekFrom::Data(p) if p < len => Ok(p),
            SeekFrom::Hole(p) if p < len => Ok(len),
            SeekFrom::Data(_) | SeekFrom::Hole(_) => Err(io::Error::from_raw_os_error(libc::ENXIO)),
        }
    }

    fn fstat(&self, f: &File) -> io::Result<Stat> {
        stat_of(f)
    }

    fn fchown(&self, _f: &File, _uid: Option<u32>, _gid: Option<u32>) -> io::Result<()> {
        Ok(())
    }

    fn advise(&self, _f: &File, _offset: u64, _len: u64, _advice: Advice) -> io::Result<()> {
        Ok(())
    }

    fn start_writeback(&self, _f: &File, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }

    fn fchmod(&self, f: &File, mode: Mode) -> io::Result<()> {
        // As `chmod`: NTFS keeps the owner's write bit only, as the read-only attribute.
        let mut perms = f.metadata().map_err(errno)?.permissions();
        perms.set_readonly(mode.as_raw_mode() & 0o222 == 0);
        f.set_permissions(perms).map_err(errno)
    }

    fn set_file_times(&self, f: &File, times: &Timestamps) -> io::Result<()> {
        f.set_times(file_times(times)).map_err(errno)
    }

    fn reopen(&self, _f: &File, _flags: OFlags) -> io::Result<File> {
        // ReOpenFile would do it; not wired yet: the callers fall back (see the trait).
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "no reopen of an open file on Windows",
        ))
    }

    fn reopen_direct(&self, _f: &File) -> io::Result<File> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "no O_DIRECT reopen on Windows",
        ))
    }
}

/// `utimens` times as std's `FileTimes` (`UTIME_OMIT` leaves a time as it is).
fn file_times(times: &Timestamps) -> std::fs::FileTimes {
    let to_time = |t: &crate::volume::Timespec| -> Option<SystemTime> {
        match t.tv_nsec {
            posix::UTIME_OMIT => None,
            posix::UTIME_NOW => Some(SystemTime::now()),
            nsec => {
                let secs = u64::try_from(t.tv_sec).ok()?;
                let nsec = u32::try_from(nsec).ok()?;
                Some(SystemTime::UNIX_EPOCH + Duration::new(secs, nsec))
            }
        }
    };
    let mut ft = std::fs::FileTimes::new();
    if let Some(t) = to_time(&times.last_access) {
        ft = ft.set_accessed(t);
    }
    if let Some(t) = to_time(&times.last_modification) {
        ft = ft.set_modified(t);
    }
    ft
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filetimes_become_unix_times() {
        let t = EPOCH_DIFF_100NS + 15_000_000;
        assert_eq!(unix_time((t >> 32) as u32, t as u32), (1, 500_000_000));
    }
}
