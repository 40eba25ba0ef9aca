//! Errors across the Windows boundary, both ways.
//!
//! The core's error vocabulary is errno (`io::Error::raw_os_error`), on every OS: it
//! decides with it (a media error fails the copy's volume; `ENOENT` is an answer, not a
//! failure). So:
//! - the volume backend turns each Win32 error into the errno the core knows
//!   ([`errno_from_win32`]): a dead or vanished disk becomes `EIO`/`ENXIO`/`ENODEV`, which
//!   fail the volume as they do on Linux; an error this table does not know becomes `EIO`,
//!   because failing a copy is safe and answering a database with an unknown error is not;
//! - the WinFsp adapter answers each errno of the core with its NTSTATUS
//!   ([`from_errno`]), and a refused name with [`from_name_error`].
//!
//! The errno values are libc's for the OS being built (the MSVC runtime's on Windows), so
//! the same table is right on both and its tests run on Linux.

use super::names::NameError;

/// An NTSTATUS code.
pub type NtStatus = i32;

macro_rules! statuses {
    ($($name:ident = $value:expr;)*) => {
        $(
            #[doc = concat!("`", stringify!($name), "`")]
            pub const $name: NtStatus = $value as u32 as i32;
        )*
    };
}

statuses! {
    STATUS_SUCCESS = 0x0000_0000u32;
    STATUS_NO_MORE_FILES = 0x8000_0006u32;
    STATUS_DEVICE_BUSY = 0x8000_0011u32;
    STATUS_NOT_IMPLEMENTED = 0xC000_0002u32;
    STATUS_INVALID_HANDLE = 0xC000_0008u32;
    STATUS_INVALID_PARAMETER = 0xC000_000Du32;
    STATUS_NO_SUCH_DEVICE = 0xC000_000Eu32;
    STATUS_END_OF_FILE = 0xC000_0011u32;
    STATUS_ACCESS_DENIED = 0xC000_0022u32;
    STATUS_BUFFER_TOO_SMALL = 0xC000_0023u32;
    STATUS_OBJECT_NAME_INVALID = 0xC000_0033u32;
    STATUS_OBJECT_NAME_NOT_FOUND = 0xC000_0034u32;
    STATUS_OBJECT_NAME_COLLISION = 0xC000_0035u32;
    STATUS_OBJECT_PATH_NOT_FOUND = 0xC000_003Au32;
    STATUS_SHARING_VIOLATION = 0xC000_0043u32;
    STATUS_EA_TOO_LARGE = 0xC000_0050u32;
    STATUS_DISK_FULL = 0xC000_007Fu32;
    STATUS_INSUFFICIENT_RESOURCES = 0xC000_009Au32;
    STATUS_DEVICE_NOT_CONNECTED = 0xC000_009Du32;
    STATUS_MEDIA_WRITE_PROTECTED = 0xC000_00A2u32;
    STATUS_IO_TIMEOUT = 0xC000_00B5u32;
    STATUS_FILE_IS_A_DIRECTORY = 0xC000_00BAu32;
    STATUS_NOT_SUPPORTED = 0xC000_00BBu32;
    STATUS_NOT_SAME_DEVICE = 0xC000_00D4u32;
    STATUS_UNEXPECTED_IO_ERROR = 0xC000_00E9u32;
    STATUS_DIRECTORY_NOT_EMPTY = 0xC000_0101u32;
    STATUS_NOT_A_DIRECTORY = 0xC000_0103u32;
    STATUS_NAME_TOO_LONG = 0xC000_0106u32;
    STATUS_IO_DEVICE_ERROR = 0xC000_0185u32;
    STATUS_TOO_MANY_LINKS = 0xC000_0265u32;
    STATUS_REPARSE_POINT_NOT_RESOLVED = 0xC000_0280u32;
}

/// The NTSTATUS that answers the core's `errno`.
pub fn from_errno(errno: i32) -> NtStatus {
    match errno {
        0 => STATUS_SUCCESS,
        libc::ENOENT => STATUS_OBJECT_NAME_NOT_FOUND,
        libc::ENOTDIR => STATUS_NOT_A_DIRECTORY,
        libc::EEXIST => STATUS_OBJECT_NAME_COLLISION,
        libc::EPERM | libc::EACCES => STATUS_ACCESS_DENIED,
        libc::EIO => STATUS_IO_DEVICE_ERROR,
        libc::ENXIO | libc::ENODEV => STATUS_NO_SUCH_DEVICE,
        libc::ENOSPC | libc::EFBIG => STATUS_DISK_FULL,
        libc::ENOTEMPTY => STATUS_DIRECTORY_NOT_EMPTY,
        libc::EISDIR => STATUS_FILE_IS_A_DIRECTORY,
        libc::EINVAL | libc::EOVERFLOW => STATUS_INVALID_PARAMETER,
        libc::ENAMETOOLONG => STATUS_NAME_TOO_LONG,
        libc::EOPNOTSUPP => STATUS_NOT_SUPPORTED,
        libc::ENOSYS => STATUS_NOT_IMPLEMENTED,
        libc::EXDEV => STATUS_NOT_SAME_DEVICE,
        libc::EROFS => STATUS_MEDIA_WRITE_PROTECTED,
        libc::ETIMEDOUT => STATUS_IO_TIMEOUT,
        libc::EBADF => STATUS_INVALID_HANDLE,
        libc::EBUSY => STATUS_SHARING_VIOLATION,
        libc::ELOOP => STATUS_REPARSE_POINT_NOT_RESOLVED,
        libc::EMLINK => STATUS_TOO_MANY_LINKS,
        libc::ENOMEM => STATUS_INSUFFICIENT_RESOURCES,
        libc::E2BIG => STATUS_EA_TOO_LARGE,
        libc::ERANGE => STATUS_BUFFER_TOO_SMALL,
        _ => STATUS_UNEXPECTED_IO_ERROR,
    }
}

/// The NTSTATUS that refuses a name.
pub fn from_name_error(e: NameError) -> NtStatus {
    match e {
        NameError::Invalid => STATUS_OBJECT_NAME_INVALID,
        NameError::TooLong => STATUS_NAME_TOO_LONG,
    }
}

/// Win32 error codes the backend meets (`winerror.h`).
pub mod win32 {
    #![allow(missing_docs)]
    pub const ERROR_FILE_NOT_FOUND: u32 = 2;
    pub const ERROR_PATH_NOT_FOUND: u32 = 3;
    pub const ERROR_ACCESS_DENIED: u32 = 5;
    pub const ERROR_INVALID_HANDLE: u32 = 6;
    pub const ERROR_NOT_ENOUGH_MEMORY: u32 = 8;
    pub const ERROR_OUTOFMEMORY: u32 = 14;
    pub const ERROR_NOT_SAME_DEVICE: u32 = 17;
    pub const ERROR_WRITE_PROTECT: u32 = 19;
    pub const ERROR_NOT_READY: u32 = 21;
    pub const ERROR_CRC: u32 = 23;
    pub const ERROR_SECTOR_NOT_FOUND: u32 = 27;
    pub const ERROR_WRITE_FAULT: u32 = 29;
    pub const ERROR_READ_FAULT: u32 = 30;
    pub const ERROR_GEN_FAILURE: u32 = 31;
    pub const ERROR_SHARING_VIOLATION: u32 = 32;
    pub const ERROR_LOCK_VIOLATION: u32 = 33;
    pub const ERROR_HANDLE_DISK_FULL: u32 = 39;
    pub const ERROR_NOT_SUPPORTED: u32 = 50;
    pub const ERROR_DEV_NOT_EXIST: u32 = 55;
    pub const ERROR_FILE_EXISTS: u32 = 80;
    pub const ERROR_INVALID_PARAMETER: u32 = 87;
    pub const ERROR_DISK_FULL: u32 = 112;
    pub const ERROR_SEM_TIMEOUT: u32 = 121;
    pub const ERROR_INSUFFICIENT_BUFFER: u32 = 122;
    pub const ERROR_INVALID_NAME: u32 = 123;
    pub const ERROR_DIR_NOT_EMPTY: u32 = 145;
    pub const ERROR_BUSY: u32 = 170;
    pub const ERROR_ALREADY_EXISTS: u32 = 183;
    pub const ERROR_FILENAME_EXCED_RANGE: u32 = 206;
    pub const ERROR_DIRECTORY: u32 = 267;
    pub const ERROR_NO_SUCH_DEVICE: u32 = 433;
    pub const ERROR_DEVICE_HARDWARE_ERROR: u32 = 483;
    pub const ERROR_STOPPED_ON_SYMLINK: u32 = 681;
    pub const ERROR_FILE_INVALID: u32 = 1006;
    pub const ERROR_NO_MEDIA_IN_DRIVE: u32 = 1112;
    pub const ERROR_IO_DEVICE: u32 = 1117;
    pub const ERROR_DISK_OPERATION_FAILED: u32 = 1127;
    pub const ERROR_DEVICE_NOT_CONNECTED: u32 = 1167;
    pub const ERROR_FILE_CORRUPT: u32 = 1392;
    pub const ERROR_DISK_CORRUPT: u32 = 1393;
    pub const ERROR_TIMEOUT: u32 = 1460;
    pub const ERROR_DEVICE_REMOVED: u32 = 1617;
    pub const ERROR_CANT_RESOLVE_FILENAME: u32 = 1921;
    pub const ERROR_NOT_A_REPARSE_POINT: u32 = 4390;
}

/// The errno the core knows for a Win32 error of the volume backend.
pub fn errno_from_win32(code: u32) -> i32 {
    use win32::*;
    match code {
        ERROR_FILE_NOT_FOUND | ERROR_PATH_NOT_FOUND => libc::ENOENT,
        ERROR_ACCESS_DENIED => libc::EACCES,
        ERROR_INVALID_HANDLE => libc::EBADF,
        ERROR_NOT_ENOUGH_MEMORY | ERROR_OUTOFMEMORY => libc::ENOMEM,
        ERROR_NOT_SAME_DEVICE => libc::EXDEV,
        ERROR_WRITE_PROTECT => libc::EROFS,
        ERROR_SHARING_VIOLATION | ERROR_LOCK_VIOLATION | ERROR_BUSY => libc::EBUSY,
        ERROR_HANDLE_DISK_FULL | ERROR_DISK_FULL => libc::ENOSPC,
        ERROR_NOT_SUPPORTED | ERROR_NOT_A_REPARSE_POINT => libc::EOPNOTSUPP,
        ERROR_FILE_EXISTS | ERROR_ALREADY_EXISTS => libc::EEXIST,
        ERROR_INVALID_PARAMETER | ERROR_INVALID_NAME => libc::EINVAL,
        ERROR_INSUFFICIENT_BUFFER => libc::ERANGE,
        ERROR_DIR_NOT_EMPTY => libc::ENOTEMPTY,
        ERROR_FILENAME_EXCED_RANGE => libc::ENAMETOOLONG,
        ERROR_DIRECTORY => libc::ENOTDIR,
        ERROR_STOPPED_ON_SYMLINK | ERROR_CANT_RESOLVE_FILENAME => libc::ELOOP,
        ERROR_SEM_TIMEOUT | ERROR_TIMEOUT => libc::ETIMEDOUT,
        // The disk is gone or no longer the one the handle was opened on.
        ERROR_NOT_READY
        | ERROR_NO_MEDIA_IN_DRIVE
        | ERROR_DEVICE_NOT_CONNECTED
        | ERROR_FILE_INVALID => libc::ENXIO,
        ERROR_DEV_NOT_EXIST | ERROR_NO_SUCH_DEVICE | ERROR_DEVICE_REMOVED => libc::ENODEV,
        // Media errors, and every error this table does not know.
        ERROR_CRC
        | ERROR_SECTOR_NOT_FOUND
        | ERROR_WRITE_FAULT
        | ERROR_READ_FAULT
        | ERROR_GEN_FAILURE
        | ERROR_DEVICE_HARDWARE_ERROR
        | ERROR_IO_DEVICE
        | ERROR_DISK_OPERATION_FAILED
        | ERROR_FILE_CORRUPT
        | ERROR_DISK_CORRUPT => libc::EIO,
        _ => libc::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_have_their_windows_values() {
        assert_eq!(STATUS_OBJECT_NAME_NOT_FOUND as u32, 0xC000_0034);
        assert_eq!(STATUS_IO_DEVICE_ERROR as u32, 0xC000_0185);
        // Severity in the top two bits: 3 for errors, 2 for warnings.
        assert_eq!(STATUS_ACCESS_DENIED as u32 >> 30, 3);
        assert_eq!(STATUS_NO_MORE_FILES as u32 >> 30, 2);
    }

    #[test]
    fn core_errors_map_to_their_ntstatus() {
        for (errno, status) in [
            (0, STATUS_SUCCESS),
            (libc::ENOENT, STATUS_OBJECT_NAME_NOT_FOUND),
            (libc::EEXIST, STATUS_OBJECT_NAME_COLLISION),
            (libc::EACCES, STATUS_ACCESS_DENIED),
            (libc::EPERM, STATUS_ACCESS_DENIED),
            (libc::EIO, STATUS_IO_DEVICE_ERROR),
            (libc::ENOSPC, STATUS_DISK_FULL),
            (libc::ENOTEMPTY, STATUS_DIRECTORY_NOT_EMPTY),
            (libc::EISDIR, STATUS_FILE_IS_A_DIRECTORY),
            (libc::ENOTDIR, STATUS_NOT_A_DIRECTORY),
            (libc::ENAMETOOLONG, STATUS_NAME_TOO_LONG),
            (libc::EXDEV, STATUS_NOT_SAME_DEVICE),
            (libc::EROFS, STATUS_MEDIA_WRITE_PROTECTED),
            (libc::ETIMEDOUT, STATUS_IO_TIMEOUT),
            (libc::EBADF, STATUS_INVALID_HANDLE),
            (libc::EOPNOTSUPP, STATUS_NOT_SUPPORTED),
            (9999, STATUS_UNEXPECTED_IO_ERROR),
        ] {
            assert_eq!(from_errno(errno), status, "errno {errno}");
        }
        assert_eq!(
            from_name_error(NameError::Invalid),
            STATUS_OBJECT_NAME_INVALID
        );
        assert_eq!(from_name_error(NameError::TooLong), STATUS_NAME_TOO_LONG);
    }

    #[test]
    fn dead_disks_become_media_errors_for_the_core() {
        use win32::*;
        let media = |code| {
            crate::volume::is_media_error(&std::io::Error::from_raw_os_error(errno_from_win32(
                code,
            )))
        };
        for dead in [
            ERROR_CRC,
            ERROR_READ_FAULT,
            ERROR_WRITE_FAULT,
            ERROR_IO_DEVICE,
            ERROR_NOT_READY,
            ERROR_DEVICE_NOT_CONNECTED,
            ERROR_FILE_INVALID,
            ERROR_DEVICE_REMOVED,
            ERROR_WRITE_PROTECT,
            0xDEAD,
        ] {
            assert!(media(dead), "Win32 error {dead} must fail the volume");
        }
        for answer in [
            ERROR_FILE_NOT_FOUND,
            ERROR_ALREADY_EXISTS,
            ERROR_DIR_NOT_EMPTY,
            ERROR_ACCESS_DENIED,
            ERROR_DISK_FULL,
            ERROR_INVALID_NAME,
        ] {
            assert!(
                !media(answer),
                "Win32 error {answer} is an answer, not a dead disk"
            );
        }
        assert_eq!(errno_from_win32(ERROR_PATH_NOT_FOUND), libc::ENOENT);
        assert_eq!(errno_from_win32(ERROR_DIRECTORY), libc::ENOTDIR);
        assert_eq!(errno_from_win32(ERROR_STOPPED_ON_SYMLINK), libc::ELOOP);
    }
}
