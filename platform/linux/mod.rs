//! Linux adapters: the FUSE session (fuser) over the core, and the ext4 shutdown ioctl
//! that simulates a dead disk.

pub mod ext4;
pub mod fuse;
