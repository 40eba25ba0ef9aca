//! Linux adapters: the FUSE session (fuser) over the core, the ext4 shutdown ioctl that
//! simulates a dead disk, the io_uring copy engine, early writeback of sequential writes,
//! and `O_DIRECT` writes from unaligned FUSE buffers.

pub mod direct;
pub mod ext4;
pub mod fuse;
pub mod uring;
pub mod writeback;
