//! The floor served over FUSE's io_uring transport (`reseedfs::sys::fuse_uring`): the same
//! `Floor` and the same backing calls as through fuser, only the transport differs.
//!
//! Requests are decoded and replies encoded by `reseedfs::sys::fuse_abi`, the decoder the
//! daemon's own ring adapter uses; only the opcodes the bench's jobs send are served (the
//! same as through fuser: lookup, getattr, setattr, mkdir, unlink, open, create, read,
//! write, flush, fsync, release, opendir, readdir, releasedir, statfs); any other gets
//! `ENOSYS`, as fuser's defaults answer.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use fuser::{Errno, FileHandle, FileType, INodeNo};
use reseedfs::sys::fuse_abi::{self, IN_OUT_BYTES, InHeader, Kstatfs, Request, SetattrIn};
use reseedfs::sys::fuse_uring::{self, RingConfig};

use super::{Floor, TTL, attr, err, max, with_aligned};

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

fn code(e: Errno) -> i32 {
    e.code()
}

fn io_code(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

impl RingFloor {
    fn lookup(&self, parent: u64, name: &OsStr, payload: &mut [u8]) -> Result<usize, i32> {
        let f = &self.floor;
        let rel = f.child(INodeNo(parent), name).map_err(code)?;
        let m = fs::symlink_metadata(f.backing.join(&rel)).map_err(|e| io_code(&e))?;
        let ino = f.ino_of(&rel);
        Ok(fuse_abi::entry_out(payload, &attr(ino, &m), TTL))
    }

    fn getattr(&self, ino: u64, fh: Option<u64>, payload: &mut [u8]) -> Result<usize, i32> {
        let f = &self.floor;
        let m = match fh {
            Some(fh) => f.handle(FileHandle(fh)).map_err(code)?.file.metadata(),
            None => fs::symlink_metadata(f.path(INodeNo(ino)).map_err(code)?),
        }
        .map_err(|e| io_code(&e))?;
        Ok(fuse_abi::attr_out(payload, &attr(ino, &m), TTL))
    }

    fn setattr(&self, ino: u64, set: &SetattrIn, payload: &mut [u8]) -> Result<usize, i32> {
        let f = &self.floor;
        let path = f.path(INodeNo(ino)).map_err(code)?;
        if let Some(size) = set.size {
            let by_handle = set.fh.and_then(|fh| f.handle(FileHandle(fh)).ok());
            match by_handle {
                Some(h) => h.file.set_len(size),
                None => fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|file| file.set_len(size)),
            }
            .map_err(|e| io_code(&e))?;
        }
        if let Some(mode) = set.mode {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777))
                .map_err(|e| io_code(&e))?;
        }
        let m = fs::symlink_metadata(&path).map_err(|e| io_code(&e))?;
        Ok(fuse_abi::attr_out(payload, &attr(ino, &m), TTL))
    }

    fn mkdir(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        payload: &mut [u8],
    ) -> Result<usize, i32> {
        let f = &self.floor;
        let rel = f.child(INodeNo(parent), name).map_err(code)?;
        let full = f.backing.join(&rel);
        fs::DirBuilder::new()
            .mode(mode & 0o7777)
            .create(&full)
            .map_err(|e| io_code(&e))?;
        let m = fs::symlink_metadata(&full).map_err(|e| io_code(&e))?;
        let ino = f.ino_of(&rel);
        Ok(fuse_abi::entry_out(payload, &attr(ino, &m), TTL))
    }

    fn unlink(&self, parent: u64, name: &OsStr) -> Result<usize, i32> {
        let f = &self.floor;
        let rel = f.child(INodeNo(parent), name).map_err(code)?;
        fs::remove_file(f.backing.join(&rel)).map_err(|e| io_code(&e))?;
        let mut inodes = f.inodes.write();
        if let Some(ino) = inodes.inos.remove(&rel) {
            inodes.paths.remove(&ino);
        }
        Ok(0)
    }

    fn open(&self, ino: u64, flags: i32, payload: &mut [u8]) -> Result<usize, i32> {
        let f = &self.floor;
        let p = f.path(INodeNo(ino)).map_err(code)?;
        let file = f.open_backing(&p, flags, None).map_err(|e| io_code(&e))?;
        let fh = f.add_handle(file, flags);
        Ok(fuse_abi::open_out(payload, fh.0, 0))
    }

    fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        payload: &mut [u8],
    ) -> Result<usize, i32> {
        let f = &self.floor;
        let rel = f.child(INodeNo(parent), name).map_err(code)?;
        let file = f
            .open_backing(&f.backing.join(&rel), flags, Some(mode & 0o7777))
            .map_err(|e| io_code(&e))?;
        let m = file.metadata().map_err(|e| io_code(&e))?;
        let ino = f.ino_of(&rel);
        let fh = f.add_handle(file, flags);
        Ok(fuse_abi::create_out(payload, &attr(ino, &m), TTL, fh.0, 0))
    }

    fn read(&self, fh: u64, offset: u64, size: u32, payload: &mut [u8]) -> Result<usize, i32> {
        let f = &self.floor;
        let size = (size as usize).min(payload.len());
        f.counters.reads.fetch_add(1, Ordering::Relaxed);
        max(&f.counters.read_max_bytes, size as u64);
        // The payload is page-aligned: an O_DIRECT read goes straight into the reply.
        f.read_at(FileHandle(fh), offset, &mut payload[..size])
            .map_err(|e| code(err(e)))
    }

    fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<usize, i32> {
        let f = &self.floor;
        f.counters.writes.fetch_add(1, Ordering::Relaxed);
        max(&f.counters.write_max_bytes, data.len() as u64);
        let fh = FileHandle(fh);
        // The data is page-aligned here: an O_DIRECT write needs no bounce. With
        // `FUSE_FLOOR_URING_BOUNCE` set it is copied once anyway, as through `/dev/fuse`
        // (and as reseedfs copies every write for its lanes): the transport alone.
        if self.bounce {
            with_aligned(data.len(), |buf| {
                buf.copy_from_slice(data);
                f.write_at(fh, offset, buf)
            })
        } else {
            f.write_at(fh, offset, data)
        }
        .map_err(|e| code(err(e)))
    }

    fn fsync(&self, fh: u64, datasync: bool) -> Result<usize, i32> {
        let h = self.floor.handle(FileHandle(fh)).map_err(code)?;
        if datasync {
            h.file.sync_data()
        } else {
            h.file.sync_all()
        }
        .map_err(|e| io_code(&e))?;
        Ok(0)
    }

    fn release(&self, fh: u64) -> Result<usize, i32> {
        self.floor.shard(fh).write().remove(&fh);
        Ok(0)
    }

    fn readdir(&self, ino: u64, offset: u64, size: u32, payload: &mut [u8]) -> Result<usize, i32> {
        let f = &self.floor;
        let size = (size as usize).min(payload.len());
        let path = f.path(INodeNo(ino)).map_err(code)?;
        let rel = path
            .strip_prefix(&f.backing)
            .unwrap_or(Path::new(""))
            .to_owned();
        let mut entries = vec![
            (ino, FileType::Directory, OsStr::new(".").to_owned()),
            (ino, FileType::Directory, OsStr::new("..").to_owned()),
        ];
        for e in fs::read_dir(&path).map_err(|e| io_code(&e))? {
            let e = e.map_err(|e| io_code(&e))?;
            let kind = match e.file_type() {
                Ok(t) if t.is_dir() => FileType::Directory,
                Ok(t) if t.is_symlink() => FileType::Symlink,
                _ => FileType::RegularFile,
            };
            let n = e.file_name();
            entries.push((f.ino_of(&rel.join(&n)), kind, n));
        }
        let mut out = fuse_abi::Dirents::new(&mut payload[..size]);
        for (i, (ino, kind, n)) in entries.iter().enumerate().skip(offset as usize) {
            if out.add(*ino, i as u64 + 1, *kind, n) {
                break;
            }
        }
        Ok(out.len())
    }

    fn statfs(&self, payload: &mut [u8]) -> Result<usize, i32> {
        let s = rustix::fs::statvfs(&self.floor.backing).map_err(|e| e.raw_os_error())?;
        let k = Kstatfs {
            blocks: s.f_blocks,
            bfree: s.f_bfree,
            bavail: s.f_bavail,
            files: s.f_files,
            ffree: s.f_ffree,
            bsize: u32::try_from(s.f_bsize).unwrap_or(4096),
            namelen: u32::try_from(s.f_namemax).unwrap_or(255),
            frsize: u32::try_from(s.f_frsize).unwrap_or(4096),
        };
        Ok(fuse_abi::statfs_out(payload, &k))
    }
}

impl fuse_uring::Handler for RingFloor {
    fn handle(
        &self,
        h: &InHeader,
        op_in: &[u8; IN_OUT_BYTES],
        payload: &mut [u8],
        in_bytes: usize,
    ) -> Result<usize, i32> {
        let req = Request::decode(h, op_in, &payload[..in_bytes.min(payload.len())])?;
        match req {
            Request::Lookup { parent, name } => {
                let name = name.to_owned();
                self.lookup(parent, &name, payload)
            }
            Request::Getattr { ino, fh } => self.getattr(ino, fh, payload),
            Request::Setattr { ino, set } => self.setattr(ino, &set, payload),
            Request::Mkdir {
                parent, name, mode, ..
            } => {
                let name = name.to_owned();
                self.mkdir(parent, &name, mode, payload)
            }
            Request::Unlink { parent, name } => self.unlink(parent, name),
            Request::Open { ino, flags } => self.open(ino, flags, payload),
            Request::Create {
                parent,
                name,
                mode,
                flags,
                ..
            } => {
                let name = name.to_owned();
                self.create(parent, &name, mode, flags, payload)
            }
            Request::Read {
                fh, offset, size, ..
            } => self.read(fh, offset, size, payload),
            Request::Write {
                fh, offset, data, ..
            } => {
                let n = self.write(fh, offset, data)?;
                Ok(fuse_abi::write_out(payload, n))
            }
            Request::Fsync { fh, datasync, .. } => self.fsync(fh, datasync),
            Request::Release { fh, .. } => self.release(fh),
            Request::Flush { .. } | Request::Releasedir { .. } | Request::Destroy => Ok(0),
            Request::Opendir { .. } => Ok(fuse_abi::open_out(payload, 0, 0)),
            Request::Readdir {
                ino, offset, size, ..
            } => self.readdir(ino, offset, size, payload),
            Request::Statfs { .. } => self.statfs(payload),
            _ => Err(libc::ENOSYS),
        }
    }
}
