//! The ext4 shutdown ioctl: how the tests and `reseedfs demo` kill a disk.
//!
//! `EXT4_IOC_SHUTDOWN` (`_IOR('X', 125, __u32)`) with `EXT4_GOING_FLAGS_NOLOGFLUSH` marks a
//! mounted ext4 filesystem as shut down without flushing its journal: from then on every
//! read, write, fsync, open and create on it fails with `EIO`, exactly as if the disk under it
//! had died. Only unmounting, `e2fsck` and mounting again bring it back. The caller needs
//! `CAP_SYS_ADMIN`.

use std::fs::File;
use std::io;
use std::path::Path;

use rustix::ioctl::{Opcode, Setter, ioctl, opcode};

/// `EXT4_IOC_SHUTDOWN` from `fs/ext4/ext4.h`: `_IOR('X', 125, __u32)`. The kernel reads the
/// flags word through the pointer despite the `_IOR` direction (it is the XFS opcode,
/// shared by both filesystems).
const EXT4_IOC_SHUTDOWN: Opcode = opcode::read::<u32>(b'X', 125);

/// `EXT4_GOING_FLAGS_NOLOGFLUSH`: shut down now, without flushing the journal.
const EXT4_GOING_FLAGS_NOLOGFLUSH: u32 = 0x2;

/// Shuts down the ext4 filesystem that holds `path` (its mount point or any file on it), as a
/// dying disk would: afterwards every I/O on that filesystem returns `EIO`.
///
/// Errors: opening `path` fails, or the ioctl is refused (`EPERM` without `CAP_SYS_ADMIN`,
/// `ENOTTY` when `path` is not on ext4). The error message names `path`.
pub fn shutdown_filesystem(path: &Path) -> io::Result<()> {
    let file = File::open(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("open {} for EXT4_IOC_SHUTDOWN: {e}", path.display()),
        )
    })?;
    // SAFETY: EXT4_IOC_SHUTDOWN is handled by ext4's ioctl entry point, which reads exactly one
    // `__u32` of flags through the argument pointer and writes nothing back. `Setter` passes a
    // pointer to its own `u32` field, which stays alive and initialised for the whole call. The
    // call has no effect on this process's memory; its only side effect is on the filesystem.
    // On a filesystem that does not know the opcode the kernel returns ENOTTY and reads nothing.
    let request = unsafe { Setter::<EXT4_IOC_SHUTDOWN, u32>::new(EXT4_GOING_FLAGS_NOLOGFLUSH) };
    // SAFETY: see the comment above: the opcode, the operand type (`u32`) and its direction
    // (the kernel only reads it) match what ext4 expects; `file` is an open descriptor.
    unsafe { ioctl(&file, request) }.map_err(|e| {
        let e = io::Error::from(e);
        io::Error::new(
            e.kind(),
            format!("EXT4_IOC_SHUTDOWN (NOLOGFLUSH) on {}: {e}", path.display()),
        )
    })
}
