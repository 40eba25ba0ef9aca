//! Backing files reached without a [`Volume`](super::Volume): what the copy paths that hold
//! their own descriptors need (the reseed's engines, the resync's extent copy, the
//! verifications): ranges of data and holes, reads to the end, holes punched, hints, and
//! the aligned buffers of `O_DIRECT` writes.

use std::fs::File;
use std::io;

#[cfg(unix)]
use super::FallocateFlags;
use super::{Advice, Backend, FileExt, Stat, Timespec, Timestamps, VolFile};

/// The access and modification times of `st`, as `set_times` takes them.
pub fn stat_times(st: &Stat) -> Timestamps {
    let ts = |sec: i64, nsec: u64| Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    Timestamps {
        last_access: ts(st.st_atime, st.st_atime_nsec),
        last_modification: ts(st.st_mtime, st.st_mtime_nsec),
    }
}

/// Punches a hole in `[offset, offset+len)` of `f` without going through a volume: for the
/// copy paths that hold their own descriptors (the reseed's engines, the resync's extent
/// copy). See [`Volume::punch_hole`](super::Volume::punch_hole).
#[cfg(unix)]
pub fn punch_hole(f: &File, offset: u64, len: u64) -> io::Result<()> {
    match rustix::fs::fallocate(
        f,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        offset,
        len,
    ) {
        Err(e) if e != rustix::io::Errno::OPNOTSUPP => Err(e.into()),
        _ => Ok(()),
    }
}

/// Zeroes `[offset, offset+len)` of `f` (what a hole reads as): systems without
/// `fallocate` write the zeros, so the range reads as a punched hole would.
#[cfg(not(unix))]
pub fn punch_hole(f: &File, offset: u64, len: u64) -> io::Result<()> {
    let zeros = vec![0u8; usize::try_from(len.min(1 << 20)).unwrap_or(1 << 20)];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(zeros.len() as u64) as usize;
        f.write_all_at(&zeros[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// Pre-allocates `[offset, offset+len)` of `f` without changing its size
/// (`FALLOC_FL_KEEP_SIZE`), as a hint: errors are ignored, and systems without
/// `fallocate` do nothing.
pub fn preallocate_keep_size(f: &File, offset: u64, len: u64) {
    #[cfg(unix)]
    let _ = rustix::fs::fallocate(f, FallocateFlags::KEEP_SIZE, offset, len);
    #[cfg(not(unix))]
    let _ = (f, offset, len);
}

/// An access-pattern hint for `[offset, offset+len)` of `f` (`posix_fadvise`; `len` 0:
/// to the end) without going through a volume, best effort: systems without it ignore it.
pub fn advise_file(f: &File, offset: u64, len: u64, advice: Advice) {
    #[cfg(unix)]
    let _ = rustix::fs::fadvise(f, offset, std::num::NonZeroU64::new(len), advice);
    #[cfg(not(unix))]
    let _ = (f, offset, len, advice);
}

/// `pread` until `buf` is full or end of file, without going through a volume (see
/// [`punch_hole`]); returns the bytes read.
pub fn read_full(f: &File, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// A byte range, the same in the source and the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

impl Extent {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// The data (non-hole) ranges of `f` within `[start, end)`, in order, found with
/// `SEEK_DATA`/`SEEK_HOLE`. Nothing past the end of the file is data.
///
/// When the filesystem does not support them (`EINVAL`, `EOPNOTSUPP`), or off Linux and
/// FreeBSD, the whole range is data. Moves the file offset of `f`.
pub fn data_extents(f: &File, start: u64, end: u64) -> io::Result<Vec<Extent>> {
    let mut extents = Vec::new();
    if start >= end {
        return Ok(extents);
    }
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    {
        use rustix::fs::{SeekFrom, seek};
        use rustix::io::Errno;

        let mut pos = start;
        while pos < end {
            let data = match seek(f, SeekFrom::Data(pos)) {
                Ok(data) => data,
                Err(Errno::NXIO) => break, // no data at or after `pos`
                Err(Errno::INVAL | Errno::OPNOTSUPP) if pos == start => {
                    return Ok(vec![Extent {
                        offset: start,
                        len: end - start,
                    }]);
                }
                Err(e) => return Err(e.into()),
            };
            if data >= end {
                break;
            }
            let hole = match seek(f, SeekFrom::Hole(data)) {
                Ok(hole) => hole,
                // The file shrank between the two seeks: nothing more.
                Err(Errno::NXIO) => break,
                Err(e) => return Err(e.into()),
            };
            let stop = hole.min(end);
            if stop <= data {
                break;
            }
            extents.push(Extent {
                offset: data,
                len: stop - data,
            });
            pos = stop;
        }
        Ok(extents)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    {
        let _ = f;
        extents.push(Extent {
            offset: start,
            len: end - start,
        });
        Ok(extents)
    }
}

/// Writes `data` (page-aligned, at an aligned `offset`) `O_DIRECT` through `direct`, or
/// through the page cache of `f` where the backing filesystem refuses it (`EINVAL`): the
/// body of [`Volume::submit_write_direct`](super::Volume::submit_write_direct), for lane
/// calls that write more than the data.
pub fn write_direct(
    b: &dyn Backend,
    f: &VolFile,
    direct: &VolFile,
    offset: u64,
    data: &[u8],
) -> io::Result<()> {
    match b.write_all_at(direct, offset, data) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => b.write_all_at(f, offset, data),
        r => r,
    }
}

/// The alignment of offset, length and buffer an `O_DIRECT` read needs here (a page:
/// enough for every logical block size up to 4 KiB).
pub const DIRECT_ALIGN: usize = 4096;

/// True when `len` bytes at `offset` may go `O_DIRECT` (from an aligned buffer).
pub fn is_direct_aligned(offset: u64, len: usize) -> bool {
    len > 0 && (offset as usize | len) % DIRECT_ALIGN == 0
}

/// A byte buffer starting on a [`DIRECT_ALIGN`] boundary, for `O_DIRECT` writes. FUSE
/// hands write data over 80 bytes into its request buffer (after the headers), never
/// aligned: the one copy a write makes anyway (the lanes share it, see
/// `copyset::route`) goes into one of these. Safe code: over-allocates a `Vec` and starts
/// at its first aligned byte.
#[derive(Debug, Default)]
pub struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// A page-aligned copy of `data`.
    pub fn copy_of(data: &[u8]) -> AlignedBuf {
        let mut b = AlignedBuf::default();
        b.fill(data);
        b
    }

    /// Makes the buffer `data.len()` bytes long (growing it when needed) and copies
    /// `data` in.
    pub fn fill(&mut self, data: &[u8]) {
        if self.raw.capacity() < data.len() + DIRECT_ALIGN {
            // Not `vec![0; n]`: zeroing a megabyte only to overwrite it cost as much as
            // the copy itself (`memset`, 15% of the daemon's CPU under 1 MiB writes).
            self.raw = Vec::with_capacity(data.len() + DIRECT_ALIGN);
        }
        // Within its capacity the buffer does not move, so the offset found on the empty
        // buffer holds once the data is in.
        self.raw.clear();
        self.start = self
            .raw
            .as_ptr()
            .align_offset(DIRECT_ALIGN)
            .min(DIRECT_ALIGN);
        self.len = data.len();
        self.raw.resize(self.start, 0);
        self.raw.extend_from_slice(data);
    }

    /// The bytes, starting on an aligned address.
    pub fn as_slice(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}
