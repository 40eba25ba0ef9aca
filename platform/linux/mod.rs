//! Linux adapters: the FUSE session (fuser) over the core, the ext4 shutdown ioctl that
//! simulates a dead disk, and the io_uring copy engine.

pub mod ext4;
pub mod fuse;
pub mod uring;
