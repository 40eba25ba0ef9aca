//! Linux adapters: the FUSE session over the core (`/dev/fuse` through fuser, or FUSE over
//! io_uring: the transport, the kernel's structs it carries, and the daemon's dispatcher),
//! the ext4 shutdown ioctl that simulates a dead disk, the io_uring copy engine, early
//! writeback of sequential writes, `O_DIRECT` writes from unaligned FUSE buffers,
//! `fchmodat2`, and the credentials of a control socket's peer.

pub mod at;
pub mod cred;
pub mod direct;
pub mod ext4;
pub mod fuse;
pub mod fuse_abi;
mod fuse_ring;
pub mod fuse_uring;
pub mod rio;
pub mod uring;
pub mod writeback;
