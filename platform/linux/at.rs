//! `fchmodat2(AT_SYMLINK_NOFOLLOW)` (Linux 6.6+): change the mode of a name without ever
//! following a symlink there. Plain `fchmodat` has no such flag, so a name checked as a
//! file could be swapped for a symlink before the call and root would change the mode of
//! whatever the symlink points to. rustix does not wrap the new system call.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd as _, BorrowedFd};
use std::os::unix::ffi::OsStrExt as _;

/// Changes the mode of `name` in the directory `dir`; `EOPNOTSUPP` when `name` is a
/// symlink, `ENOSYS` on a kernel without `fchmodat2` (the caller falls back).
pub fn chmod_nofollow(dir: BorrowedFd<'_>, name: &std::ffi::OsStr, mode: u32) -> io::Result<()> {
    let name =
        CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: fchmodat2 reads the NUL-terminated `name` (alive for the whole call) and
    // takes integers; `dir` keeps the descriptor open during the call. It writes no memory
    // of this process.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fchmodat2,
            dir.as_raw_fd(),
            name.as_ptr(),
            mode,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
