//! The daemon's requests over FUSE over io_uring (`fuse_transport = "uring"`): each ring
//! entry's request decoded (`fuse_abi`), served by the same [`Ops`] call as through
//! `/dev/fuse` (core call, panic guard, metrics), and its reply encoded into the entry.
//!
//! Why a dispatcher and not a second adapter: the rules (who may clear setuid, what a
//! truncate by a user does, O_DIRECT buffers) are in `Ops` and the core, once; this file
//! only maps the kernel's structs to those calls, opcode by opcode as fuser does for
//! `/dev/fuse`. What fuser answers by default (ACCESS, GETLK, BMAP, ...: `ENOSYS`, which
//! the kernel remembers) is answered the same here.
//!
//! Buffers: the entry's payload buffer is page-aligned, so a read goes straight into the
//! reply (the core may read it `O_DIRECT`) and write data arrives aligned; the core still
//! copies a write once for its volume lanes, which must own it past the request.

use std::sync::Arc;
use std::time::Duration;

use crate::fs::{Caller, HandleId, NodeId, SetAttr};

use super::fuse::{Ops, TTL, attr, kind, set_time};
use super::fuse_abi::{self, IN_OUT_BYTES, InHeader, Request};
use super::fuse_uring::Handler;

/// Bytes of each entry's payload buffer: the largest request the daemon's INIT allows (a
/// 1 MiB write; 1 MiB reads), as the kernel requires of every registered buffer.
pub(crate) const PAYLOAD_BYTES: usize = 1 << 20;

/// [`Ops`] as a ring [`Handler`].
pub(crate) struct Served {
    ops: Arc<Ops>,
}

impl Served {
    pub(crate) fn new(ops: &Arc<Ops>) -> Served {
        Served {
            ops: Arc::clone(ops),
        }
    }
}

fn code(e: crate::fs::Errno) -> i32 {
    e.0
}

fn ttl() -> Duration {
    TTL
}

impl Handler for Served {
    fn handle(
        &self,
        h: &InHeader,
        op_in: &[u8; IN_OUT_BYTES],
        payload: &mut [u8],
        in_bytes: usize,
    ) -> Result<usize, i32> {
        let ops = &self.ops;
        let who = Caller {
            uid: h.uid,
            gid: h.gid,
        };
        let req = Request::decode(h, op_in, &payload[..in_bytes.min(payload.len())])?;
        // Each arm: the names and data borrowed from the payload are done with once the
        // call returns; only then is the reply written over them.
        match req {
            Request::Lookup { parent, name } => {
                let a = ops.lookup(NodeId(parent), name).map_err(code)?;
                Ok(fuse_abi::entry_out(payload, &attr(&a), ttl()))
            }
            Request::Getattr { ino, fh } => {
                let a = ops.getattr(NodeId(ino), fh.map(HandleId)).map_err(code)?;
                Ok(fuse_abi::attr_out(payload, &attr(&a), ttl()))
            }
            Request::Setattr { ino, set } => {
                let core_set = SetAttr {
                    mode: set.mode,
                    uid: set.uid,
                    gid: set.gid,
                    size: set.size,
                    atime: set_time(set.atime),
                    mtime: set_time(set.mtime),
                };
                let a = ops
                    .setattr(h.uid, NodeId(ino), set.fh.map(HandleId), core_set)
                    .map_err(code)?;
                Ok(fuse_abi::attr_out(payload, &attr(&a), ttl()))
            }
            Request::Readlink { ino } => {
                let t = ops.readlink(NodeId(ino)).map_err(code)?;
                let n = t.len().min(payload.len());
                payload[..n].copy_from_slice(&t[..n]);
                Ok(n)
            }
            Request::Symlink {
                parent,
                name,
                target,
            } => {
                let a = ops
                    .symlink(NodeId(parent), name, target, who)
                    .map_err(code)?;
                Ok(fuse_abi::entry_out(payload, &attr(&a), ttl()))
            }
            Request::Mknod {
                parent,
                name,
                mode,
                rdev,
                ..
            } => {
                let a = ops
                    .mknod(NodeId(parent), name, mode, rdev, who)
                    .map_err(code)?;
                Ok(fuse_abi::entry_out(payload, &attr(&a), ttl()))
            }
            Request::Mkdir {
                parent, name, mode, ..
            } => {
                let a = ops.mkdir(NodeId(parent), name, mode, who).map_err(code)?;
                Ok(fuse_abi::entry_out(payload, &attr(&a), ttl()))
            }
            Request::Unlink { parent, name } => {
                ops.unlink(NodeId(parent), name).map_err(code)?;
                Ok(0)
            }
            Request::Rmdir { parent, name } => {
                ops.rmdir(NodeId(parent), name).map_err(code)?;
                Ok(0)
            }
            Request::Rename {
                parent,
                name,
                newparent,
                newname,
                flags,
            } => {
                ops.rename(NodeId(parent), name, NodeId(newparent), newname, flags)
                    .map_err(code)?;
                Ok(0)
            }
            Request::Link {
                ino,
                newparent,
                newname,
            } => {
                let a = ops
                    .link(NodeId(ino), NodeId(newparent), newname)
                    .map_err(code)?;
                Ok(fuse_abi::entry_out(payload, &attr(&a), ttl()))
            }
            Request::Open { ino, flags } => {
                let (fh, open_flags) = ops.open(h.uid, NodeId(ino), flags).map_err(code)?;
                Ok(fuse_abi::open_out(payload, fh.0, open_flags.bits()))
            }
            Request::Read {
                fh, offset, size, ..
            } => {
                let size = (size as usize).min(payload.len());
                ops.read(HandleId(fh), offset, &mut payload[..size])
                    .map_err(code)
            }
            Request::Write {
                ino,
                fh,
                offset,
                data,
                write_flags,
            } => {
                let kill = write_flags & fuse_abi::WRITE_KILL_SUIDGID != 0;
                let n = ops
                    .write(NodeId(ino), HandleId(fh), offset, data, kill)
                    .map_err(code)?;
                Ok(fuse_abi::write_out(payload, n))
            }
            Request::Statfs { ino } => {
                let s = ops.statfs(NodeId(ino)).map_err(code)?;
                let k = fuse_abi::Kstatfs {
                    blocks: s.blocks,
                    bfree: s.bfree,
                    bavail: s.bavail,
                    files: s.files,
                    ffree: s.ffree,
                    bsize: s.bsize,
                    namelen: s.namelen,
                    frsize: s.frsize,
                };
                Ok(fuse_abi::statfs_out(payload, &k))
            }
            Request::Release { fh, .. } => {
                ops.release(HandleId(fh));
                Ok(0)
            }
            Request::Releasedir { fh, .. } => {
                ops.releasedir(HandleId(fh));
                Ok(0)
            }
            Request::Fsync { fh, datasync, .. } => {
                ops.fsync(HandleId(fh), datasync).map_err(code)?;
                Ok(0)
            }
            Request::Fsyncdir { ino, .. } => {
                ops.fsyncdir(NodeId(ino)).map_err(code)?;
                Ok(0)
            }
            Request::Setxattr {
                ino,
                name,
                value,
                flags,
            } => {
                ops.setxattr(NodeId(ino), name, value, flags)
                    .map_err(code)?;
                Ok(0)
            }
            Request::Getxattr { ino, name, size } => {
                // The name is in the payload the value goes to: keep it apart.
                let name = name.to_owned();
                let size = (size as usize).min(payload.len());
                let n = ops
                    .getxattr(NodeId(ino), &name, &mut payload[..size])
                    .map_err(code)?;
                Ok(if size == 0 {
                    fuse_abi::xattr_size_out(payload, n)
                } else {
                    n
                })
            }
            Request::Listxattr { ino, size } => {
                let size = (size as usize).min(payload.len());
                let n = ops
                    .listxattr(NodeId(ino), &mut payload[..size])
                    .map_err(code)?;
                Ok(if size == 0 {
                    fuse_abi::xattr_size_out(payload, n)
                } else {
                    n
                })
            }
            Request::Removexattr { ino, name } => {
                ops.removexattr(NodeId(ino), name).map_err(code)?;
                Ok(0)
            }
            Request::Flush { .. } | Request::Destroy => Ok(0),
            Request::Opendir { ino, .. } => {
                let fh = ops.opendir(NodeId(ino)).map_err(code)?;
                Ok(fuse_abi::open_out(payload, fh.0, 0))
            }
            Request::Readdir {
                fh, offset, size, ..
            } => {
                let size = (size as usize).min(payload.len());
                let mut out = fuse_abi::Dirents::new(&mut payload[..size]);
                ops.readdir(HandleId(fh), offset, |e, next| {
                    out.add(e.node.0, next, kind(e.kind), &e.name)
                })
                .map_err(code)?;
                Ok(out.len())
            }
            Request::Create {
                parent,
                name,
                mode,
                flags,
                ..
            } => {
                let (a, fh, open_flags) = ops
                    .create(NodeId(parent), name, mode, flags, who)
                    .map_err(code)?;
                Ok(fuse_abi::create_out(
                    payload,
                    &attr(&a),
                    ttl(),
                    fh.0,
                    open_flags.bits(),
                ))
            }
            Request::Fallocate {
                fh,
                offset,
                length,
                mode,
                ..
            } => {
                ops.fallocate(HandleId(fh), offset, length, mode)
                    .map_err(code)?;
                Ok(0)
            }
            Request::Lseek {
                fh, offset, whence, ..
            } => {
                let o = ops.lseek(HandleId(fh), offset, whence).map_err(code)?;
                Ok(fuse_abi::lseek_out(payload, o))
            }
            Request::Other(_) => Err(libc::ENOSYS),
        }
    }
}
