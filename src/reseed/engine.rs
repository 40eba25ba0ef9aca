//! Block copy engines: copy byte ranges of one open file to the same offsets of another.
//!
//! The seeder (in `reseed/`) decides *what* to copy and holds the locks that keep a
//! file being written by the database consistent; an engine only moves bytes, as fast as
//! the disks allow. Two engines:
//!
//! - `io_uring` (Linux, `UringEngine` in the OS adapters): registered buffers, [`IN_FLIGHT`]
//!   chunks of [`CHUNK`] bytes in flight, each going read → write → next read;
//! - `threads` ([`ThreadEngine`], portable): a few threads doing `pread`/`pwrite` of
//!   [`CHUNK`]-byte chunks.
//!
//! [`select`] picks one: io_uring when the kernel allows it, else threads, and says why.
//! [`data_extents`] finds what to copy (holes stay holes) and [`split_aligned`] splits it
//! into the part that can go through `O_DIRECT` and the unaligned pieces that cannot.

use std::fs::File;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::watch::{Side, Watch};
use crate::throttle::Stream;

/// Bytes per request.
pub const CHUNK: u64 = 1 << 20;

/// Requests kept in flight by an engine.
pub const IN_FLIGHT: usize = 16;

/// Alignment of offsets, lengths and buffers for direct I/O.
pub const ALIGN: u64 = 4096;

/// Worker threads of a [`ThreadEngine`] made by [`ThreadEngine::new`].
pub const THREADS: usize = 4;

pub use crate::volume::{Extent, data_extents};

/// Which side of a copy failed, so the seeder can switch to another source copy or fail
/// the destination copy.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// Reading the source failed.
    #[error("reading the source copy: {0}")]
    Source(#[source] io::Error),
    /// Writing the destination failed, or the engine could not set itself up for the copy
    /// (buffers, io_uring file registration): either way the new copy is not made.
    #[error("writing the new copy: {0}")]
    Dest(#[source] io::Error),
}

/// Which engine to use (`[reseed] engine` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineChoice {
    /// io_uring when available, else threads.
    #[default]
    Auto,
    /// io_uring, or fail.
    IoUring,
    /// The portable engine.
    Threads,
}

/// Copies extents between two files.
pub trait CopyEngine: Send + std::fmt::Debug {
    /// `io_uring` or `threads`, for status and benchmarks.
    fn name(&self) -> &'static str;

    /// Copies every extent of `src` to the same offsets of `dst` and returns the bytes
    /// copied (read from `src` and written to `dst`). Extents may be copied concurrently and
    /// in any order; when this returns `Ok`, all of them are written (not necessarily
    /// durable: the seeder fsyncs). Positioned I/O only: the files' offsets do not move.
    ///
    /// `direct`: both files were opened with `O_DIRECT`; then every extent's offset and
    /// length are multiples of [`ALIGN`] and the engine uses aligned buffers.
    ///
    /// A read that ends early (the source is shorter than the extent) copies what was
    /// read and goes on with the next extent. In direct mode a read that ends at an
    /// unaligned end of file is written rounded up to [`ALIGN`] with zeros (direct writes
    /// cannot be shorter), so the destination may end up to `ALIGN - 1` bytes longer than
    /// the source: the seeder sets the destination's length to the source's after the copy
    /// (which it must do anyway when the source ends in a hole).
    ///
    /// On the first error the engine stops starting new requests, waits for those in
    /// flight, and returns that error; what was already written stays written.
    fn copy(
        &mut self,
        src: &File,
        dst: &File,
        extents: &[Extent],
        direct: bool,
    ) -> Result<u64, CopyError>;

    /// Paces the copies that follow through the host's rebuild throttle: the engine takes
    /// each chunk's bytes from `stream` ([`Stream::take`]) before it reads the chunk.
    /// `None`: as fast as the disks go.
    fn set_throttle(&mut self, stream: Option<Arc<Stream>>);

    /// Reports every read (on the source) and write (on the destination) of the copies
    /// that follow to `watch`, as it starts and as it ends: the seeder's deadline for a
    /// hung volume ([`crate::reseed::watch`]). `None`: nothing reported.
    fn set_watch(&mut self, watch: Option<Arc<Watch>>);
}

/// Picks the engine for `choice`, and says why when `Auto` fell back to threads.
///
/// - `Threads`: the [`ThreadEngine`];
/// - `IoUring`: the io_uring engine, or `Err(reason)` when the kernel refuses it;
/// - `Auto`: io_uring when available, else threads with `Some(reason)` (e.g.
///   "io_uring unavailable: /proc/sys/kernel/io_uring_disabled is 2"). Off Linux the
///   thread engine is the only one, and no reason is given.
pub fn select(choice: EngineChoice) -> Result<(Box<dyn CopyEngine>, Option<String>), String> {
    match choice {
        EngineChoice::Threads => Ok((Box::new(ThreadEngine::new()), None)),
        EngineChoice::IoUring => uring_engine().map(|engine| (engine, None)),
        EngineChoice::Auto => match uring_engine() {
            Ok(engine) => Ok((engine, None)),
            Err(_) if !cfg!(target_os = "linux") => Ok((Box::new(ThreadEngine::new()), None)),
            Err(reason) => Ok((Box::new(ThreadEngine::new()), Some(reason))),
        },
    }
}

/// The io_uring engine, or why there is none.
#[cfg(target_os = "linux")]
fn uring_engine() -> Result<Box<dyn CopyEngine>, String> {
    match crate::sys::uring::UringEngine::new() {
        Ok(engine) => Ok(Box::new(engine)),
        Err(e) => Err(uring_unavailable(&e)),
    }
}

/// The io_uring engine exists only on Linux.
#[cfg(not(target_os = "linux"))]
fn uring_engine() -> Result<Box<dyn CopyEngine>, String> {
    Err("io_uring unavailable: it exists only on Linux".into())
}

/// The sysctl that disables io_uring (Linux 6.6+): 0 allowed, 1 only for
/// `kernel.io_uring_group`, 2 disabled for everyone.
#[cfg(target_os = "linux")]
const IO_URING_DISABLED: &str = "/proc/sys/kernel/io_uring_disabled";

/// Why io_uring is unavailable, from the setup error and the `io_uring_disabled` sysctl.
#[cfg(target_os = "linux")]
fn uring_unavailable(e: &io::Error) -> String {
    let disabled = std::fs::read_to_string(IO_URING_DISABLED).ok();
    unavailable_reason(e, disabled.as_deref().map(str::trim))
}

/// [`uring_unavailable`] given the sysctl's value.
#[cfg(target_os = "linux")]
fn unavailable_reason(e: &io::Error, disabled: Option<&str>) -> String {
    const SYSCTL: &str = IO_URING_DISABLED;
    match disabled {
        Some("2") => format!("io_uring unavailable: {SYSCTL} is 2"),
        Some("1") if e.kind() == io::ErrorKind::PermissionDenied => format!(
            "io_uring unavailable: {SYSCTL} is 1 and this process is not in \
             kernel.io_uring_group ({e})"
        ),
        _ => {
            let hint = match e.kind() {
                io::ErrorKind::PermissionDenied => " (blocked by seccomp or a container runtime?)",
                io::ErrorKind::Unsupported => " (kernel built without io_uring?)",
                io::ErrorKind::OutOfMemory => " (RLIMIT_MEMLOCK too low for the buffers?)",
                _ => "",
            };
            format!("io_uring unavailable: {e}{hint}")
        }
    }
}

/// Splits `extents` into an [`ALIGN`]-aligned part for direct I/O (each offset rounded up,
/// each end rounded down) and the unaligned head and tail pieces left over, for buffered
/// copying. An extent too short to hold an aligned block goes whole to the second list.
/// Together the two lists cover exactly the input; empty extents are dropped.
pub fn split_aligned(extents: &[Extent]) -> (Vec<Extent>, Vec<Extent>) {
    let mut aligned = Vec::with_capacity(extents.len());
    let mut unaligned = Vec::new();
    for e in extents.iter().filter(|e| e.len > 0) {
        let end = e.end();
        let head_end = e.offset.next_multiple_of(ALIGN);
        let tail_start = end - end % ALIGN;
        if head_end >= tail_start {
            unaligned.push(*e);
            continue;
        }
        if e.offset < head_end {
            unaligned.push(Extent {
                offset: e.offset,
                len: head_end - e.offset,
            });
        }
        aligned.push(Extent {
            offset: head_end,
            len: tail_start - head_end,
        });
        if tail_start < end {
            unaligned.push(Extent {
                offset: tail_start,
                len: end - tail_start,
            });
        }
    }
    (aligned, unaligned)
}

/// Cuts extents into requests of at most [`CHUNK`] (or another size) bytes, in order.
#[derive(Debug)]
pub(crate) struct Chunks<'a> {
    /// The extents still to cut.
    extents: &'a [Extent],
    /// Bytes of `extents[0]` already handed out.
    done: u64,
    /// Largest chunk.
    size: u64,
}

impl<'a> Chunks<'a> {
    /// The [`CHUNK`]-byte chunks of `extents`.
    pub(crate) fn new(extents: &'a [Extent]) -> Chunks<'a> {
        Chunks::with_size(extents, CHUNK)
    }

    /// The chunks of `extents`, at most `size` (> 0) bytes each.
    pub(crate) fn with_size(extents: &'a [Extent], size: u64) -> Chunks<'a> {
        Chunks {
            extents,
            done: 0,
            size: size.max(1),
        }
    }
}

impl Iterator for Chunks<'_> {
    type Item = Extent;

    fn next(&mut self) -> Option<Extent> {
        loop {
            let (first, rest) = self.extents.split_first()?;
            if self.done >= first.len {
                self.extents = rest;
                self.done = 0;
                continue;
            }
            let len = (first.len - self.done).min(self.size);
            let chunk = Extent {
                offset: first.offset + self.done,
                len,
            };
            self.done += len;
            return Some(chunk);
        }
    }
}

/// A zeroed, page-aligned buffer of [`CHUNK`] bytes (an anonymous map on Linux), so that
/// it can take part in direct I/O.
#[derive(Debug)]
pub(crate) struct ChunkBuf {
    /// The memory.
    #[cfg(target_os = "linux")]
    map: memmap2::MmapMut,
    /// Over-allocated so that a page-aligned `CHUNK` fits inside.
    #[cfg(not(target_os = "linux"))]
    bytes: Vec<u8>,
}

impl ChunkBuf {
    /// A new buffer.
    #[cfg(target_os = "linux")]
    pub(crate) fn new() -> io::Result<ChunkBuf> {
        Ok(ChunkBuf {
            map: memmap2::MmapMut::map_anon(chunk_len())?,
        })
    }

    /// A new buffer.
    #[cfg(not(target_os = "linux"))]
    pub(crate) fn new() -> io::Result<ChunkBuf> {
        Ok(ChunkBuf {
            bytes: vec![0; chunk_len() + ALIGN as usize],
        })
    }

    /// The `CHUNK` bytes.
    #[cfg(target_os = "linux")]
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.map
    }

    /// The `CHUNK` bytes.
    #[cfg(not(target_os = "linux"))]
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        let skip = self.bytes.as_ptr().align_offset(ALIGN as usize);
        &mut self.bytes[skip..skip + chunk_len()]
    }
}

/// [`CHUNK`] as a `usize` (it is far below `u32::MAX`).
pub(crate) const fn chunk_len() -> usize {
    const { assert!(CHUNK <= u32::MAX as u64 && CHUNK % ALIGN == 0) };
    CHUNK as usize
}

/// The portable engine: [`THREADS`] worker threads, each copying one [`CHUNK`] at a time
/// with `pread` and `pwrite`.
#[derive(Debug)]
pub struct ThreadEngine {
    /// How many workers copy at once.
    threads: usize,
    /// One buffer per worker, allocated by the first copy and kept.
    bufs: Vec<ChunkBuf>,
    /// The rebuild throttle's stream, when paced.
    throttle: Option<Arc<Stream>>,
    /// Where reads and writes are reported, when watched.
    watch: Option<Arc<Watch>>,
}

impl Default for ThreadEngine {
    fn default() -> Self {
        ThreadEngine::new()
    }
}

impl ThreadEngine {
    /// An engine with [`THREADS`] workers. Allocates nothing until the first copy.
    pub fn new() -> ThreadEngine {
        ThreadEngine::with_threads(THREADS)
    }

    /// An engine with `threads` workers (at least one).
    pub fn with_threads(threads: usize) -> ThreadEngine {
        ThreadEngine {
            threads: threads.max(1),
            bufs: Vec::new(),
            throttle: None,
            watch: None,
        }
    }
}

impl CopyEngine for ThreadEngine {
    fn name(&self) -> &'static str {
        "threads"
    }

    fn copy(
        &mut self,
        src: &File,
        dst: &File,
        extents: &[Extent],
        direct: bool,
    ) -> Result<u64, CopyError> {
        debug_assert!(
            !direct
                || extents
                    .iter()
                    .all(|e| e.offset % ALIGN == 0 && e.len % ALIGN == 0),
            "direct copy of unaligned extents: {extents:?}"
        );
        let chunks = extents.iter().map(|e| e.len.div_ceil(CHUNK)).sum::<u64>();
        if chunks == 0 {
            return Ok(0);
        }
        let workers = usize::try_from(chunks).map_or(self.threads, |n| n.min(self.threads));
        while self.bufs.len() < workers {
            self.bufs.push(ChunkBuf::new().map_err(CopyError::Dest)?);
        }
        if !direct {
            advise_sequential(src);
        }

        let next = Mutex::new(Chunks::new(extents));
        let stop = AtomicBool::new(false);
        let first_error = Mutex::new(None);
        let copied = AtomicU64::new(0);
        let throttle = self.throttle.as_deref();
        let watch = self.watch.as_deref();
        std::thread::scope(|scope| {
            for buf in self.bufs.iter_mut().take(workers) {
                let (next, stop, first_error, copied) = (&next, &stop, &first_error, &copied);
                scope.spawn(move || {
                    let buf = buf.bytes_mut();
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(Err(e)) = watch.map(Watch::check) {
                            stop.store(true, Ordering::Relaxed);
                            first_error.lock().get_or_insert(CopyError::Dest(e));
                            break;
                        }
                        let Some(chunk) = next.lock().next() else {
                            break;
                        };
                        if let Some(t) = throttle {
                            t.take(chunk.len);
                        }
                        match copy_chunk(src, dst, buf, chunk, direct, watch) {
                            Ok(n) => {
                                copied.fetch_add(n, Ordering::Relaxed);
                            }
                            Err(e) => {
                                stop.store(true, Ordering::Relaxed);
                                first_error.lock().get_or_insert(e);
                                break;
                            }
                        }
                    }
                });
            }
        });
        match first_error.into_inner() {
            Some(e) => Err(e),
            None => Ok(copied.into_inner()),
        }
    }

    fn set_throttle(&mut self, stream: Option<Arc<Stream>>) {
        self.throttle = stream;
    }

    fn set_watch(&mut self, watch: Option<Arc<Watch>>) {
        self.watch = watch;
    }
}

/// Runs `f`, reported to `watch` (when watched) as one request on `side`.
#[inline]
fn watched<T>(watch: Option<&Watch>, side: Side, f: impl FnOnce() -> T) -> T {
    match watch {
        Some(w) => w.on(side, f),
        None => f(),
    }
}

/// Tells the kernel `src` is read sequentially (more readahead). Only a hint: a failure
/// changes nothing.
fn advise_sequential(src: &File) {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    {
        let _ = rustix::fs::fadvise(src, 0, None, rustix::fs::Advice::Sequential);
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    {
        let _ = src;
    }
}

/// Copies one chunk (at most [`CHUNK`] bytes) through `buf`; returns the bytes copied,
/// fewer than `chunk.len` when the source ends inside it.
fn copy_chunk(
    src: &File,
    dst: &File,
    buf: &mut [u8],
    chunk: Extent,
    direct: bool,
    watch: Option<&Watch>,
) -> Result<u64, CopyError> {
    let len = usize::try_from(chunk.len).map_or(buf.len(), |len| len.min(buf.len()));
    let buf = &mut buf[..len];
    let mut got = 0;
    while got < len {
        let at = chunk.offset + got as u64;
        match watched(watch, Side::Source, || read_at(src, &mut buf[got..], at)) {
            Ok(0) => break, // end of file
            Ok(n) => {
                got += n;
                // A direct read stops short only at the end of the file, and the next read
                // would start at an unaligned offset.
                if direct && got as u64 % ALIGN != 0 {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(CopyError::Source(e)),
        }
    }
    if got == 0 {
        return Ok(0);
    }
    let write_len = if direct {
        // `len` is a multiple of ALIGN, so this stays within the buffer.
        let padded = (got as u64).next_multiple_of(ALIGN);
        usize::try_from(padded).map_or(len, |p| p.min(len))
    } else {
        got
    };
    buf[got..write_len].fill(0);
    watched(watch, Side::Dest, || {
        write_all_at(dst, &buf[..write_len], chunk.offset)
    })
    .map_err(CopyError::Dest)?;
    Ok(got as u64)
}

/// `pread`.
fn read_at(f: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    crate::volume::FileExt::read_at(f, buf, offset)
}

/// `pwrite` until all of `buf` is written; retries on `EINTR`.
fn write_all_at(f: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match crate::volume::FileExt::write_at(f, buf, offset) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reseed::engine::test_support as ts;

    #[test]
    fn threads_copy_holes_and_unaligned_tail() {
        ts::copies_holes_and_unaligned_tail(&mut ThreadEngine::new());
    }

    #[test]
    fn threads_copy_a_short_source() {
        ts::copies_a_short_source(&mut ThreadEngine::new());
    }

    #[test]
    fn threads_copy_direct() {
        ts::copies_direct(&mut ThreadEngine::new());
    }

    #[test]
    fn threads_report_a_dest_error() {
        ts::reports_a_dest_error(&mut ThreadEngine::new());
    }

    #[test]
    fn threads_report_a_source_error() {
        ts::reports_a_source_error(&mut ThreadEngine::new());
    }

    #[test]
    fn one_thread_is_enough() {
        ts::copies_holes_and_unaligned_tail(&mut ThreadEngine::with_threads(1));
    }

    #[test]
    fn splits_aligned_and_unaligned() {
        let e = |offset, len| Extent { offset, len };
        let (aligned, unaligned) = split_aligned(&[
            e(0, 8192),
            e(10_000, 20_000),
            e(40_960, 100),
            e(50_000, 0),
            e(61_440, 4096 + 1),
        ]);
        assert_eq!(aligned, [e(0, 8192), e(12_288, 16_384), e(61_440, 4096)]);
        assert_eq!(
            unaligned,
            [
                e(10_000, 2288),
                e(28_672, 1328),
                e(40_960, 100),
                e(65_536, 1)
            ]
        );
        let total = |v: &[Extent]| v.iter().map(|e| e.len).sum::<u64>();
        assert_eq!(
            total(&aligned) + total(&unaligned),
            8192 + 20_000 + 100 + 4097
        );
    }

    #[test]
    fn chunks_cut_at_chunk_size() {
        let e = |offset, len| Extent { offset, len };
        let chunks: Vec<_> = Chunks::new(&[e(0, 0), e(5, CHUNK * 2 + 3), e(1 << 40, 7)]).collect();
        assert_eq!(
            chunks,
            [
                e(5, CHUNK),
                e(5 + CHUNK, CHUNK),
                e(5 + 2 * CHUNK, 3),
                e(1 << 40, 7)
            ]
        );
    }

    #[test]
    fn data_extents_of_an_empty_range_or_past_the_end() {
        let dir = ts::TempDir::new(None);
        let path = dir.path.join("f");
        std::fs::write(&path, [7u8; 100]).unwrap();
        let f = File::open(&path).unwrap();
        assert_eq!(data_extents(&f, 50, 50).unwrap(), []);
        let past = data_extents(&f, 4096, 8192).unwrap();
        // Without SEEK_DATA support the whole range counts as data; with it, none is.
        assert!(
            past.is_empty()
                || past
                    == [Extent {
                        offset: 4096,
                        len: 4096
                    }]
        );
        let clipped = data_extents(&f, 10, 60).unwrap();
        assert_eq!(
            clipped,
            [Extent {
                offset: 10,
                len: 50
            }]
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn explains_why_io_uring_is_unavailable() {
        let eperm = io::Error::from_raw_os_error(libc::EPERM);
        assert_eq!(
            unavailable_reason(&eperm, Some("2")),
            "io_uring unavailable: /proc/sys/kernel/io_uring_disabled is 2"
        );
        let one = unavailable_reason(&eperm, Some("1"));
        assert!(
            one.contains("is 1") && one.contains("io_uring_group"),
            "{one}"
        );
        let seccomp = unavailable_reason(&eperm, Some("0"));
        assert!(seccomp.contains("seccomp"), "{seccomp}");
        let enosys = io::Error::from_raw_os_error(libc::ENOSYS);
        let old = unavailable_reason(&enosys, None);
        assert!(old.contains("without io_uring"), "{old}");
    }

    #[test]
    fn select_names_the_engines() {
        let (engine, reason) = select(EngineChoice::Threads).unwrap();
        assert_eq!((engine.name(), reason), ("threads", None));
        let (engine, reason) = select(EngineChoice::Auto).unwrap();
        match reason {
            None => assert_eq!(
                engine.name(),
                if cfg!(target_os = "linux") {
                    "io_uring"
                } else {
                    "threads"
                }
            ),
            Some(reason) => {
                assert_eq!(engine.name(), "threads");
                assert!(reason.starts_with("io_uring unavailable"), "{reason}");
                assert!(select(EngineChoice::IoUring).is_err());
            }
        }
    }
}

/// Checks shared by the tests of both engines.
#[cfg(test)]
pub(crate) mod test_support {
    use std::fs::{self, File, OpenOptions};
    use std::io::Write as _;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::{ALIGN, CHUNK, CopyEngine, CopyError, Extent, data_extents, split_aligned};

    /// A fresh directory, removed on drop.
    pub(crate) struct TempDir {
        /// The directory.
        pub(crate) path: PathBuf,
    }

    impl TempDir {
        /// A fresh directory under `base`, or the system temporary directory.
        pub(crate) fn new(base: Option<&Path>) -> TempDir {
            static COUNTER: AtomicU64 = AtomicU64::new(0);
            let base = base.map_or_else(std::env::temp_dir, Path::to_path_buf);
            let path = base.join(format!(
                "reseedfs-engine-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&path).unwrap();
            TempDir { path }
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.path);
        }
    }

    /// `len` pseudo-random bytes, different for each `seed`.
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        crate::testbed::rng::pattern(seed, len)
    }

    /// Writes `regions` (offset, length) of noise into a new file of `size` bytes; the rest
    /// is holes.
    fn sparse_file(path: &Path, size: u64, regions: &[(u64, usize)]) -> Vec<u8> {
        let mut image = vec![0u8; usize::try_from(size).unwrap()];
        let f = File::create(path).unwrap();
        f.set_len(size).unwrap();
        for (k, &(offset, len)) in regions.iter().enumerate() {
            let data = noise(k as u64 + 1, len);
            std::os::unix::fs::FileExt::write_all_at(&f, &data, offset).unwrap();
            let start = usize::try_from(offset).unwrap();
            image[start..start + len].copy_from_slice(&data);
        }
        f.sync_all().unwrap();
        image
    }

    /// Data extents of the file at `path`.
    fn extents_of(path: &Path) -> Vec<Extent> {
        let f = File::open(path).unwrap();
        let len = f.metadata().unwrap().len();
        data_extents(&f, 0, len).unwrap()
    }

    /// A 20 MiB data region (more chunks than requests in flight), a 4 MiB hole, 1 MiB of
    /// data and an unaligned tail of 5000 bytes.
    const TAIL: u64 = 25 * CHUNK + 5000;
    const REGIONS: [(u64, usize); 2] = [(0, 20 << 20), (24 << 20, (1 << 20) + 5000)];

    /// Holes stay holes and every data byte arrives, in buffered mode.
    pub(crate) fn copies_holes_and_unaligned_tail(engine: &mut dyn CopyEngine) {
        let dir = TempDir::new(None);
        let (src_path, dst_path) = (dir.path.join("src"), dir.path.join("dst"));
        let image = sparse_file(&src_path, TAIL, &REGIONS);
        let src = File::open(&src_path).unwrap();
        let extents = data_extents(&src, 0, TAIL).unwrap();
        let holes_known = extents.len() > 1;
        if holes_known {
            assert_eq!(
                extents,
                [
                    Extent {
                        offset: 0,
                        len: 20 << 20
                    },
                    Extent {
                        offset: 24 << 20,
                        len: (1 << 20) + 5000
                    }
                ]
            );
        } else {
            eprintln!("no SEEK_DATA here: the hole check is skipped");
        }
        let dst = File::create(&dst_path).unwrap();
        let copied = engine.copy(&src, &dst, &extents, false).unwrap();
        let data: u64 = extents.iter().map(|e| e.len).sum();
        assert_eq!(copied, data, "{}", engine.name());
        dst.set_len(TAIL).unwrap();
        drop(dst);
        assert!(
            fs::read(&dst_path).unwrap() == image,
            "{}: bytes differ",
            engine.name()
        );
        if holes_known {
            assert_eq!(
                extents_of(&dst_path),
                extents,
                "{}: holes filled",
                engine.name()
            );
        }
    }

    /// Extents past the end of the source copy what there is and no more.
    pub(crate) fn copies_a_short_source(engine: &mut dyn CopyEngine) {
        let dir = TempDir::new(None);
        let (src_path, dst_path) = (dir.path.join("src"), dir.path.join("dst"));
        let image = noise(9, 3 * CHUNK as usize / 2 + 10_000);
        fs::write(&src_path, &image).unwrap();
        let src = File::open(&src_path).unwrap();
        let dst = File::create(&dst_path).unwrap();
        let extents = [
            Extent {
                offset: 0,
                len: 3 * CHUNK,
            },
            Extent {
                offset: 5 * CHUNK,
                len: CHUNK,
            },
        ];
        let copied = engine.copy(&src, &dst, &extents, false).unwrap();
        assert_eq!(copied, image.len() as u64, "{}", engine.name());
        drop(dst);
        assert!(
            fs::read(&dst_path).unwrap() == image,
            "{}: bytes differ",
            engine.name()
        );
    }

    /// Opens `path` with `O_DIRECT`; `None` (with a printed reason) where the filesystem
    /// refuses it.
    fn open_direct(path: &Path, create: bool) -> Option<File> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let opened = OpenOptions::new()
            .read(true)
            .write(create)
            .create(create)
            .truncate(create)
            .custom_flags(libc::O_DIRECT)
            .open(path);
        match opened {
            Ok(f) => Some(f),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED direct copy: {} refuses O_DIRECT ({e})",
                    path.display()
                );
                None
            }
            Err(e) => panic!("open {} O_DIRECT: {e}", path.display()),
        }
    }

    /// Direct mode: the aligned part through `O_DIRECT`, the unaligned tail buffered, like
    /// the seeder; and a direct read that ends at an unaligned end of file.
    pub(crate) fn copies_direct(engine: &mut dyn CopyEngine) {
        // tmpfs may refuse O_DIRECT: use a disk-backed directory.
        let dir = TempDir::new(Some(Path::new("/var/tmp")));
        let (src_path, dst_path) = (dir.path.join("src"), dir.path.join("dst"));
        let image = sparse_file(&src_path, TAIL, &REGIONS);
        let Some(src) = open_direct(&src_path, false) else {
            return;
        };
        let Some(dst) = open_direct(&dst_path, true) else {
            return;
        };
        let extents = data_extents(&src, 0, TAIL).unwrap();
        let (aligned, unaligned) = split_aligned(&extents);
        assert!(!aligned.is_empty() && !unaligned.is_empty());
        let copied = engine.copy(&src, &dst, &aligned, true).unwrap();
        assert_eq!(copied, aligned.iter().map(|e| e.len).sum::<u64>());
        let (src_b, dst_b) = (
            File::open(&src_path).unwrap(),
            OpenOptions::new().write(true).open(&dst_path).unwrap(),
        );
        let copied = engine.copy(&src_b, &dst_b, &unaligned, false).unwrap();
        assert_eq!(copied, unaligned.iter().map(|e| e.len).sum::<u64>());
        dst_b.set_len(TAIL).unwrap();
        drop((dst, dst_b));
        assert!(
            fs::read(&dst_path).unwrap() == image,
            "{}: bytes differ",
            engine.name()
        );
        if extents.len() > 1 {
            assert_eq!(
                extents_of(&dst_path),
                extents,
                "{}: holes filled",
                engine.name()
            );
        }

        // The source ends 100 bytes into a block, inside the extent.
        let short = noise(3, 2 * ALIGN as usize + 100);
        fs::write(&src_path, &short).unwrap();
        let src = open_direct(&src_path, false).unwrap();
        let dst = open_direct(&dst_path, true).unwrap();
        let extent = Extent {
            offset: 0,
            len: CHUNK,
        };
        let copied = engine.copy(&src, &dst, &[extent], true).unwrap();
        assert_eq!(copied, short.len() as u64, "{}", engine.name());
        let written = fs::read(&dst_path).unwrap();
        assert_eq!(written.len() as u64, 3 * ALIGN, "padded to ALIGN");
        assert!(written[..short.len()] == short[..]);
        assert!(written[short.len()..].iter().all(|&b| b == 0));
    }

    /// A destination that cannot be written gives `CopyError::Dest`, promptly.
    pub(crate) fn reports_a_dest_error(engine: &mut dyn CopyEngine) {
        let dir = TempDir::new(None);
        let (src_path, dst_path) = (dir.path.join("src"), dir.path.join("dst"));
        fs::write(&src_path, noise(5, 20 << 20)).unwrap();
        fs::write(&dst_path, b"").unwrap();
        let src = File::open(&src_path).unwrap();
        let dst = File::open(&dst_path).unwrap(); // read-only
        let extents = [Extent {
            offset: 0,
            len: 20 << 20,
        }];
        match engine.copy(&src, &dst, &extents, false) {
            Err(CopyError::Dest(e)) => assert_eq!(e.raw_os_error(), Some(libc::EBADF), "{e}"),
            other => panic!("{}: expected Dest(EBADF), got {other:?}", engine.name()),
        }
        // The engine is still usable afterwards.
        let dst = OpenOptions::new().write(true).open(&dst_path).unwrap();
        assert_eq!(engine.copy(&src, &dst, &extents, false).unwrap(), 20 << 20);
    }

    /// A source that cannot be read gives `CopyError::Source`.
    pub(crate) fn reports_a_source_error(engine: &mut dyn CopyEngine) {
        let dir = TempDir::new(None);
        let (src_path, dst_path) = (dir.path.join("src"), dir.path.join("dst"));
        fs::write(&src_path, noise(6, 4 << 20)).unwrap();
        let src = OpenOptions::new().write(true).open(&src_path).unwrap(); // write-only
        let dst = File::create(&dst_path).unwrap();
        let extents = [Extent {
            offset: 0,
            len: 4 << 20,
        }];
        match engine.copy(&src, &dst, &extents, false) {
            Err(CopyError::Source(e)) => assert_eq!(e.raw_os_error(), Some(libc::EBADF), "{e}"),
            other => panic!("{}: expected Source(EBADF), got {other:?}", engine.name()),
        }
        assert_eq!(dst.metadata().unwrap().len(), 0);
    }
}
