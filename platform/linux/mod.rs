//! Linux adapters: the FUSE session (fuser) over the core, the ext4 shutdown ioctl that
//! simulates a dead disk, the io_uring copy engine, and early writeback of sequential
//! writes.

pub mod ext4;
pub mod fuse;
pub mod uring;
pub mod writeback;
