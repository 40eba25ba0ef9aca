//! The floor served over FUSE's io_uring transport (`reseedfs::sys::fuse_uring`): the same
//! `Floor` and the same backing calls as through fuser, only the transport differs.
//!
//! fuser's request parser is private, so the requests the ring delivers are decoded here,
//! from the kernel's structs (`include/uapi/linux/fuse.h`, native endian), and only the
//! opcodes the bench's jobs send are served (the same as through fuser: lookup, getattr,
//! setattr, mkdir, unlink, open, create, read, write, flush, fsync, release, opendir,
//! readdir, releasedir, statfs); any other gets `ENOSYS`, as fuser's defaults answer.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use fuser::{Errno, FileHandle, INodeNo};
use reseedfs::sys::fuse_uring::{self, InHeader, RingConfig, ne_u32, ne_u64};

use super::{Floor, TTL, err, max, with_aligned};

// Opcodes (`enum fuse_opcode`).
const LOOKUP: u32 = 1;
const GETATTR: u32 = 3;
const SETATTR: u32 = 4;
const MKDIR: u32 = 9;
const UNLINK: u32 = 10;
const OPEN: u32 = 14;
const READ: u32 = 15;
const WRITE: u32 = 16;
const STATFS: u32 = 17;
const RELEASE: u32 = 18;
const FSYNC: u32 = 20;
const FLUSH: u32 = 25;
const OPENDIR: u32 = 27;
const READDIR: u32 = 28;
const RELEASEDIR: u32 = 29;
const CREATE: u32 = 35;
const DESTROY: u32 = 38;

/// `FUSE_GETATTR_FH`.
const GETATTR_FH: u32 = 1;
/// `FATTR_MODE`, `FATTR_SIZE`, `FATTR_FH`.
const FATTR_MODE: u32 = 1;
const FATTR_SIZE: u32 = 1 << 3;
const FATTR_FH: u32 = 1 << 6;
/// `FUSE_FSYNC_FDATASYNC`.
const FSYNC_FDATASYNC: u32 = 1;

/// `sizeof(struct fuse_attr)`, `fuse_entry_out`, `fuse_attr_out`, `fuse_open_out`.
const ATTR_BYTES: usize = 88;
const ENTRY_OUT_BYTES: usize = 40 + ATTR_BYTES;
const ATTR_OUT_BYTES: usize = 16 + ATTR_BYTES;
const OPEN_OUT_BYTES: usize = 16;

/// The payload buffer of an entry: the largest request the floor's INIT allows (1 MiB of
/// write data), as the kernel requires of every registered buffer.
const PAYLOAD_BYTES: usize = 1 << 20;

/// Registers `threads` ring entries on each queue of the connection of `session`, served
/// by `floor` (`FUSE_FLOOR_URING_ENTRIES=N`: N per queue instead). Per queue, because the
/// kernel sends a request to the queue of the CPU its caller runs on: a single process
/// (fio) on one CPU reaches that queue's entries only, and with `threads` in all spread
/// over 2 queues, depth-32 random reads had 4 in flight instead of 8 (first run, README).
pub(super) fn start<FS: fuser::Filesystem>(
    session: &fuser::Session<FS>,
    floor: &Arc<Floor>,
    threads: usize,
) -> std::io::Result<fuse_uring::Ring> {
    let queues = fuse_uring::queue_count()?;
    let config = RingConfig {
        threads_per_queue: std::env::var("FUSE_FLOOR_URING_ENTRIES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(threads)
            .max(1),
        payload_bytes: PAYLOAD_BYTES,
        pin: std::env::var_os("FUSE_FLOOR_URING_PIN").is_some(),
    };
    let bounce = std::env::var_os("FUSE_FLOOR_URING_BOUNCE").is_some();
    eprintln!(
        "fuse_floor: FUSE over io_uring, {queues} queue(s) x {} entries{}{}",
        config.threads_per_queue,
        if config.pin { ", threads pinned" } else { "" },
        if bounce {
            ", write data copied once"
        } else {
            ""
        }
    );
    let handler = RingFloor {
        floor: Arc::clone(floor),
        bounce,
    };
    fuse_uring::Ring::start(session, config, Arc::new(handler))
}

struct RingFloor {
    floor: Arc<Floor>,
    /// Copy write data once before writing it (`FUSE_FLOOR_URING_BOUNCE`).
    bounce: bool,
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

/// `struct fuse_attr` of `m` into `b[..88]`.
fn put_attr(b: &mut [u8], ino: u64, m: &fs::Metadata) {
    b[..ATTR_BYTES].fill(0);
    put_u64(b, 0, ino);
    put_u64(b, 8, m.size());
    put_u64(b, 16, m.blocks());
    put_u64(b, 24, m.atime() as u64);
    put_u64(b, 32, m.mtime() as u64);
    put_u64(b, 40, m.ctime() as u64);
    put_u32(b, 48, m.atime_nsec() as u32);
    put_u32(b, 52, m.mtime_nsec() as u32);
    put_u32(b, 56, m.ctime_nsec() as u32);
    put_u32(b, 60, m.mode());
    put_u32(b, 64, u32::try_from(m.nlink()).unwrap_or(u32::MAX));
    put_u32(b, 68, m.uid());
    put_u32(b, 72, m.gid());
    put_u32(b, 76, u32::try_from(m.rdev()).unwrap_or(0));
    put_u32(b, 80, u32::try_from(m.blksize()).unwrap_or(4096));
}

/// `struct fuse_entry_out`; returns its length.
fn put_entry(b: &mut [u8], ino: u64, m: &fs::Metadata) -> usize {
    put_u64(b, 0, ino);
    put_u64(b, 8, 0);
    put_u64(b, 16, TTL.as_secs());
    put_u64(b, 24, TTL.as_secs());
    put_u32(b, 32, TTL.subsec_nanos());
    put_u32(b, 36, TTL.subsec_nanos());
    put_attr(&mut b[40..], ino, m);
    ENTRY_OUT_BYTES
}

/// `struct fuse_attr_out`; returns its length.
fn put_attr_out(b: &mut [u8], ino: u64, m: &fs::Metadata) -> usize {
    put_u64(b, 0, TTL.as_secs());
    put_u32(b, 8, TTL.subsec_nanos());
    put_u32(b, 12, 0);
    put_attr(&mut b[16..], ino, m);
    ATTR_OUT_BYTES
}

/// `struct fuse_open_out`; returns its length.
fn put_open(b: &mut [u8], fh: u64) -> usize {
    b[..OPEN_OUT_BYTES].fill(0);
    put_u64(b, 0, fh);
    OPEN_OUT_BYTES
}

/// The NUL-terminated name at the start of `payload`.
fn name(payload: &[u8]) -> &OsStr {
    let end = payload
        .iter()
        .position(|&c| c == 0)
        .unwrap_or(payload.len());
    OsStr::from_bytes(&payload[..end])
}

fn code(e: Errno) -> i32 {
    e.code()
}

fn io_code(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

impl RingFloor {
    fn lookup(&self, parent: u64, payload: &mut [u8], in_bytes: usize) -> Result<usize, i32> {
        let f = &self.floor;
        let rel = f
            .child(INodeNo(parent), name(&payload[..in_bytes]))
            .map_err(code)?;
        let m = fs::symlink_metadata(f.backing.join(&rel)).map_err(|e| io_code(&e))?;
        let ino = f.ino_of(&rel);
        Ok(put_entry(payload, ino, &m))
    }

    fn getattr(&self, ino: u64, op_in: &[u8], payload: &mut [u8]) -> Result<usize, i32> {
        let f = &self.floor;
        let m = if ne_u32(op_in, 0) & GETATTR_FH != 0 {
            let h = f.handle(FileHandle(ne_u64(op_in, 8))).map_err(code)?;
            h.file.metadata()
        } else {
            let p = f.path(INodeNo(ino)).map_err(code)?;
            fs::symlink_metadata(p)
        }
        .map_err(|e| io_code(&e))?;
        Ok(put_attr_out(payload, ino, &m))
    }

    fn setattr(&self, ino: u64, op_in: &[u8], payload: &mut [u8]) -> Result<usize, i32> {
        let f = &self.floor;
        let valid = ne_u32(op_in, 0);
        let path = f.path(INodeNo(ino)).map_err(code)?;
        if valid & FATTR_SIZE != 0 {
            let size = ne_u64(op_in, 16);
            let by_handle = (valid & FATTR_FH != 0)
                .then(|| f.handle(FileHandle(ne_u64(op_in, 8))).ok())
                .flatten();
            match by_handle {
                Some(h) => h.file.set_len(size),
                None => fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|file| file.set_len(size)),
            }
            .map_err(|e| io_code(&e))?;
        }
        if valid & FATTR_MODE != 0 {
            let mode = ne_u32(op_in, 68);
            fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777))
                .map_err(|e| io_code(&e))?;
        }
        let m = fs::symlink_metadata(&path).map_err(|e| io_code(&e))?;
        Ok(put_attr_out(payload, ino, &m))
    }

    fn mkdir(
        &self,
        parent: u64,
        op_in: &[u8],
        payload: &mut [u8],
        in_bytes: usize,
    ) -> Result<usize, i32> {
        let f = &self.floor;
        let rel = f
            .child(INodeNo(parent), name(&payload[..in_bytes]))
            .map_err(code)?;
        let full = f.backing.join(&rel);
        fs::DirBuilder::new()
            .mode(ne_u32(op_in, 0) & 0o7777)
            .create(&full)
            .map_err(|e| io_code(&e))?;
        let m = fs::symlink_metadata(&full).map_err(|e| io_code(&e))?;
        let ino = f.ino_of(&rel);
        Ok(put_entry(payload, ino, &m))
    }

    fn unlink(&self, parent: u64, payload: &[u8], in_bytes: usize) -> Result<usize, i32> {
        let f = &self.floor;
        let rel = f
            .child(INodeNo(parent), name(&payload[..in_bytes]))
            .map_err(code)?;
        fs::remove_file(f.backing.join(&rel)).map_err(|e| io_code(&e))?;
        let mut inodes = f.inodes.write();
        if let Some(ino) = inodes.inos.remove(&rel) {
            inodes.paths.remove(&ino);
        }
        Ok(0)
    }

    fn open(&self, ino: u64, op_in: &[u8], payload: &mut [u8]) -> Result<usize, i32> {
        let f = &self.floor;
        let flags = ne_u32(op_in, 0) as i32;
        let p = f.path(INodeNo(ino)).map_err(code)?;
        let file = f.open_backing(&p, flags, None).map_err(|e| io_code(&e))?;
        let fh = f.add_handle(file, flags);
        Ok(put_open(payload, fh.0))
    }

    fn create(
        &self,
        parent: u64,
        op_in: &[u8],
        payload: &mut [u8],
        in_bytes: usize,
    ) -> Result<usize, i32> {
        let f = &self.floor;
        let flags = ne_u32(op_in, 0) as i32;
        let mode = ne_u32(op_in, 4);
        let rel = f
            .child(INodeNo(parent), name(&payload[..in_bytes]))
            .map_err(code)?;
        let file = f
            .open_backing(&f.backing.join(&rel), flags, Some(mode & 0o7777))
            .map_err(|e| io_code(&e))?;
        let m = file.metadata().map_err(|e| io_code(&e))?;
        let ino = f.ino_of(&rel);
        let fh = f.add_handle(file, flags);
        let n = put_entry(payload, ino, &m);
        Ok(n + put_open(&mut payload[n..], fh.0))
    }

    fn read(&self, op_in: &[u8], payload: &mut [u8]) -> Result<usize, i32> {
        let f = &self.floor;
        let size = (ne_u32(op_in, 16) as usize).min(payload.len());
        f.counters.reads.fetch_add(1, Ordering::Relaxed);
        max(&f.counters.read_max_bytes, size as u64);
        // The payload is page-aligned: an O_DIRECT read goes straight into the reply.
        f.read_at(
            FileHandle(ne_u64(op_in, 0)),
            ne_u64(op_in, 8),
            &mut payload[..size],
        )
        .map_err(|e| code(err(e)))
    }

    fn write(&self, op_in: &[u8], payload: &mut [u8], in_bytes: usize) -> Result<usize, i32> {
        let f = &self.floor;
        let size = (ne_u32(op_in, 16) as usize).min(in_bytes);
        f.counters.writes.fetch_add(1, Ordering::Relaxed);
        max(&f.counters.write_max_bytes, size as u64);
        let (fh, offset) = (FileHandle(ne_u64(op_in, 0)), ne_u64(op_in, 8));
        // The data is page-aligned here: an O_DIRECT write needs no bounce. With
        // `FUSE_FLOOR_URING_BOUNCE` set it is copied once anyway, as through `/dev/fuse`
        // (and as reseedfs copies every write for its lanes): the transport alone.
        let n = if self.bounce {
            with_aligned(size, |buf| {
                buf.copy_from_slice(&payload[..size]);
                f.write_at(fh, offset, buf)
            })
        } else {
            f.write_at(fh, offset, &payload[..size])
        }
        .map_err(|e| code(err(e)))?;
        // struct fuse_write_out { u32 size; u32 padding; }
        put_u32(payload, 0, u32::try_from(n).unwrap_or(u32::MAX));
        put_u32(payload, 4, 0);
        Ok(8)
    }

    fn fsync(&self, op_in: &[u8]) -> Result<usize, i32> {
        let h = self
            .floor
            .handle(FileHandle(ne_u64(op_in, 0)))
            .map_err(code)?;
        if ne_u32(op_in, 8) & FSYNC_FDATASYNC != 0 {
            h.file.sync_data()
        } else {
            h.file.sync_all()
        }
        .map_err(|e| io_code(&e))?;
        Ok(0)
    }

    fn release(&self, op_in: &[u8]) -> Result<usize, i32> {
        let fh = ne_u64(op_in, 0);
        self.floor.shard(fh).write().remove(&fh);
        Ok(0)
    }

    fn readdir(&self, ino: u64, op_in: &[u8], payload: &mut [u8]) -> Result<usize, i32> {
        let f = &self.floor;
        let offset = ne_u64(op_in, 8);
        let size = (ne_u32(op_in, 16) as usize).min(payload.len());
        let path = f.path(INodeNo(ino)).map_err(code)?;
        let rel = path
            .strip_prefix(&f.backing)
            .unwrap_or(Path::new(""))
            .to_owned();
        // (ino, DT_*, name)
        let mut entries = vec![
            (ino, libc::DT_DIR, OsStr::new(".").to_owned()),
            (ino, libc::DT_DIR, OsStr::new("..").to_owned()),
        ];
        for e in fs::read_dir(&path).map_err(|e| io_code(&e))? {
            let e = e.map_err(|e| io_code(&e))?;
            let kind = match e.file_type() {
                Ok(t) if t.is_dir() => libc::DT_DIR,
                Ok(t) if t.is_symlink() => libc::DT_LNK,
                _ => libc::DT_REG,
            };
            let n = e.file_name();
            entries.push((f.ino_of(&rel.join(&n)), kind, n));
        }
        // struct fuse_dirent { u64 ino; u64 off; u32 namelen; u32 type; char name[]; },
        // each padded to 8 bytes.
        let mut at = 0;
        for (i, (ino, kind, n)) in entries.iter().enumerate().skip(offset as usize) {
            let bytes = n.as_bytes();
            let len = (24 + bytes.len()).next_multiple_of(8);
            if at + len > size {
                break;
            }
            let b = &mut payload[at..at + len];
            b.fill(0);
            put_u64(b, 0, *ino);
            put_u64(b, 8, i as u64 + 1);
            put_u32(b, 16, bytes.len() as u32);
            put_u32(b, 20, u32::from(*kind));
            b[24..24 + bytes.len()].copy_from_slice(bytes);
            at += len;
        }
        Ok(at)
    }

    fn statfs(&self, payload: &mut [u8]) -> Result<usize, i32> {
        let s = rustix::fs::statvfs(&self.floor.backing).map_err(|e| e.raw_os_error())?;
        // struct fuse_kstatfs: blocks, bfree, bavail, files, ffree (u64), bsize, namelen,
        // frsize, padding, spare[6] (u32): 80 bytes.
        payload[..80].fill(0);
        put_u64(payload, 0, s.f_blocks);
        put_u64(payload, 8, s.f_bfree);
        put_u64(payload, 16, s.f_bavail);
        put_u64(payload, 24, s.f_files);
        put_u64(payload, 32, s.f_ffree);
        put_u32(payload, 40, u32::try_from(s.f_bsize).unwrap_or(4096));
        put_u32(payload, 44, u32::try_from(s.f_namemax).unwrap_or(255));
        put_u32(payload, 48, u32::try_from(s.f_frsize).unwrap_or(4096));
        Ok(80)
    }
}

impl fuse_uring::Handler for RingFloor {
    fn handle(
        &self,
        h: &InHeader,
        op_in: &[u8; 128],
        payload: &mut [u8],
        in_bytes: usize,
    ) -> Result<usize, i32> {
        match h.opcode {
            LOOKUP => self.lookup(h.nodeid, payload, in_bytes),
            GETATTR => self.getattr(h.nodeid, op_in, payload),
            SETATTR => self.setattr(h.nodeid, op_in, payload),
            MKDIR => self.mkdir(h.nodeid, op_in, payload, in_bytes),
            UNLINK => self.unlink(h.nodeid, payload, in_bytes),
            OPEN => self.open(h.nodeid, op_in, payload),
            CREATE => self.create(h.nodeid, op_in, payload, in_bytes),
            READ => self.read(op_in, payload),
            WRITE => self.write(op_in, payload, in_bytes),
            FSYNC => self.fsync(op_in),
            RELEASE => self.release(op_in),
            FLUSH | RELEASEDIR | DESTROY => Ok(0),
            OPENDIR => Ok(put_open(payload, 0)),
            READDIR => self.readdir(h.nodeid, op_in, payload),
            STATFS => self.statfs(payload),
            _ => Err(libc::ENOSYS),
        }
    }
}
