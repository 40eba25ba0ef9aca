//! `sync_file_range(SYNC_FILE_RANGE_WRITE)`: start writing a range of a file's dirty
//! pages back to its disk without waiting for it (rustix does not wrap it).
//!
//! The backing files are written through the page cache, so without this a sequential
//! writer fills memory first and pays the whole disk write at its `fsync`; with it the
//! disk works while the writer goes on.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Starts writeback of the dirty pages of `file` in `[offset, offset+len)`; returns once
/// the I/O is queued (it may wait for room in the device queue, never for the disk).
pub fn start(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    // SAFETY: sync_file_range takes a file descriptor and three integers and touches no
    // memory of this process; `file` keeps the descriptor open for the whole call.
    let r = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
