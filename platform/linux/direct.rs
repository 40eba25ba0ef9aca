//! `O_DIRECT` writes from the buffers FUSE hands us, for callers that opened a file with
//! `O_DIRECT` (issue 18, honest `O_DIRECT`).
//!
//! A database that caches its own pages (InnoDB, RocksDB with direct I/O) opens its files
//! `O_DIRECT` so that the kernel does not cache them a second time. Writing such a caller's
//! data into the backing files through the page cache caches it again, once per copy. But
//! `O_DIRECT` wants the buffer, the offset and the length aligned to the backing device's
//! logical block, and FUSE delivers write data 80 bytes into the request buffer (after the
//! request and write headers). So the data is copied once into a page-aligned buffer of the
//! request thread (a bounce) and written from there: the same single memory copy the page
//! cache path costs (user buffer -> page cache), without the cache.
//!
//! Safe code only: alignment comes from over-allocating a `Vec` and starting at the first
//! aligned byte.

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};

/// The alignment of buffer, offset and length used here: a page, enough for every logical
/// block size up to 4 KiB.
pub const ALIGN: usize = 4096;

/// True when a request at `offset` of `len` bytes may go `O_DIRECT` (once its data is in an
/// aligned buffer).
pub fn is_aligned(offset: u64, len: usize) -> bool {
    len > 0 && (offset as usize | len) % ALIGN == 0
}

/// Opens the file `f` is open on again with `O_DIRECT` (a new open file description of the
/// same inode, whatever its name is now), read-write when `write`.
pub fn reopen(f: &File, write: bool) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(format!("/proc/self/fd/{}", f.as_raw_fd()))
}

pub use crate::volume::AlignedBuf;

thread_local! {
    static BOUNCE: RefCell<AlignedBuf> = RefCell::new(AlignedBuf::default());
}

/// Writes all of `data` at `offset` of `direct` (a file opened with `O_DIRECT`): in place
/// when `data` is page-aligned already, else from the calling thread's bounce buffer.
/// `offset` and `data.len()` must be aligned ([`is_aligned`]); `EINVAL` otherwise, as from
/// the kernel.
pub fn write_all_at(direct: &File, offset: u64, data: &[u8]) -> io::Result<()> {
    if !is_aligned(offset, data.len()) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    if data.as_ptr().addr() % ALIGN == 0 {
        return direct.write_all_at(data, offset);
    }
    BOUNCE.with_borrow_mut(|b| {
        b.fill(data);
        direct.write_all_at(b.as_slice(), offset)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buf_starts_on_a_page() {
        for len in [1, 4096, 80 + 4096, 1 << 20] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let b = AlignedBuf::copy_of(&data);
            assert_eq!(b.as_slice().as_ptr().addr() % ALIGN, 0, "len {len}");
            assert_eq!(b.as_slice(), &data[..]);
        }
    }

    #[test]
    fn an_unaligned_buffer_is_written_direct_and_reads_back() {
        // tmpfs refuses O_DIRECT: use the target directory, on a disk filesystem.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        let path = dir.join(format!("direct-test-{}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("create");
        let Ok(d) = reopen(&f, true) else {
            eprintln!("SKIPPED: {} refuses O_DIRECT", dir.display());
            let _ = std::fs::remove_file(&path);
            return;
        };
        // 80 bytes into a buffer, as FUSE hands write data over.
        let mut raw = vec![0u8; 80 + 8192 + ALIGN];
        let at = raw.as_ptr().align_offset(ALIGN) + 80;
        for (i, b) in raw[at..at + 8192].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let data = &raw[at..at + 8192];
        write_all_at(&d, 4096, data).expect("direct write");
        let mut back = vec![0u8; 8192];
        f.read_exact_at(&mut back, 4096).expect("read back");
        assert_eq!(back, data);
        let e = write_all_at(&d, 100, data).expect_err("unaligned offset");
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        let _ = std::fs::remove_file(&path);
    }
}
