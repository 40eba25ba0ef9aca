//! Linux adapters: the FUSE session (fuser) over the core, the ext4 shutdown ioctl that
//! simulates a dead disk, the io_uring copy engine, early writeback of sequential
//! writes, `O_DIRECT` writes from unaligned FUSE buffers, `fchmodat2`, and the
//! credentials of a control socket's peer.

pub mod at;
pub mod cred;
pub mod direct;
pub mod ext4;
pub mod fuse;
pub mod uring;
pub mod writeback;
