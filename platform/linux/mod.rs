//! Linux adapters: the FUSE session (fuser) over the core, the ext4 shutdown ioctl that
//! simulates a dead disk, the io_uring copy engine, early writeback of sequential
//! writes, `O_DIRECT` writes from unaligned FUSE buffers, `fchmodat2`, the
//! credentials of a control socket's peer, and (feature `testbed`, for the throughput
//! bench only) FUSE over io_uring.

pub mod at;
pub mod cred;
pub mod direct;
pub mod ext4;
pub mod fuse;
#[cfg(feature = "testbed")]
pub mod fuse_uring;
pub mod uring;
pub mod writeback;
