//! The io_uring copy engine: one ring, [`IN_FLIGHT`] registered buffers of [`CHUNK`]
//! bytes (other sizes through [`UringEngine::with_geometry`], for benchmarks), and a
//! pipeline in which each buffer (a *slot*) goes read → write → next read.
//!
//! The ring is made disabled, given its buffers, two fixed-file slots (source and
//! destination) and an allowlist (only `READ_FIXED` and `WRITE_FIXED` on fixed files, and
//! only file-table updates as register calls), and then enabled. Each copy puts its two
//! files into the table and clears it again before returning, so the engine never keeps a
//! file open.
//!
//! `user_data` is the slot index. A slot owns its buffer from the submission until its
//! completion arrives: on an error the engine stops starting requests but waits for every
//! one in flight before it returns, so no buffer is reused and no file is released while
//! the kernel may still use it. If even waiting fails, the engine is poisoned and refuses
//! further copies; dropping it closes the ring, and the kernel finishes or cancels what is
//! left before it unpins the buffers.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd as _;
use std::sync::Arc;

use io_uring::register::Restriction;
use io_uring::{IoUring, opcode, squeue, types};
use memmap2::MmapMut;

use crate::reseed::engine::{ALIGN, CHUNK, Chunks, CopyEngine, CopyError, Extent, IN_FLIGHT};
use crate::reseed::watch::{Side, Watch};
use crate::throttle::Stream;

/// Fixed-file index of the source.
const SRC: types::Fixed = types::Fixed(0);
/// Fixed-file index of the destination.
const DST: types::Fixed = types::Fixed(1);
/// `IORING_REGISTER_FILES_UPDATE` (`include/uapi/linux/io_uring.h`; the crate does not
/// export its `sys` constants).
const IORING_REGISTER_FILES_UPDATE: u8 = 6;

/// What one slot (buffer) is doing.
#[derive(Debug, Clone, Copy)]
enum Slot {
    /// Free.
    Idle,
    /// Reading `chunk`; `done` bytes are in the buffer.
    Read {
        /// The range being read.
        chunk: Extent,
        /// Bytes read so far.
        done: u32,
    },
    /// Writing `len` bytes of the buffer at `offset`, of which `data` came from the source
    /// (the rest is zero padding for a direct write); `done` are written.
    Write {
        /// Where the chunk goes.
        offset: u64,
        /// Bytes to write.
        len: u32,
        /// Bytes of source data among them.
        data: u32,
        /// Bytes written so far.
        done: u32,
    },
}

/// The io_uring engine (`name()` = `io_uring`). See the module documentation.
pub struct UringEngine {
    /// The ring; declared before `bufs` so that it is closed (and the buffers unregistered)
    /// before the buffers are unmapped.
    ring: IoUring,
    /// The registered buffers, `bufs[i]` with buffer index `i`, `chunk` bytes each. They
    /// never move or shrink while the ring lives.
    bufs: Vec<MmapMut>,
    /// Bytes per request (a multiple of [`ALIGN`]).
    chunk: u32,
    /// Set when the engine lost track of requests in flight; it then refuses to copy.
    poisoned: Option<String>,
    /// Completions taken from the ring, kept to reuse the allocation.
    completions: Vec<(u64, i32)>,
    /// The rebuild throttle's stream, when paced.
    throttle: Option<Arc<Stream>>,
    /// Where requests are reported as they are queued and completed, when watched (the
    /// seeder's deadline for a hung volume).
    watch: Option<Arc<Watch>>,
}

/// The side of the copy a slot's request is on.
fn side_of(slot: Slot) -> Option<Side> {
    match slot {
        Slot::Idle => None,
        Slot::Read { .. } => Some(Side::Source),
        Slot::Write { .. } => Some(Side::Dest),
    }
}

impl fmt::Debug for UringEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UringEngine")
            .field("buffers", &self.bufs.len())
            .field("buffer_bytes", &self.chunk)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

/// Adds what was being done to an I/O error, keeping its kind.
fn context(doing: &'static str) -> impl Fn(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{doing}: {e}"))
}

impl UringEngine {
    /// A ring with [`IN_FLIGHT`] entries and as many registered buffers of [`CHUNK`] bytes,
    /// two empty fixed-file slots and the opcode allowlist. Fails cleanly (the error names
    /// the step: e.g. `io_uring_setup: Operation not permitted`) when io_uring is disabled,
    /// blocked by seccomp, missing from the kernel, or the buffers exceed `RLIMIT_MEMLOCK`.
    pub fn new() -> io::Result<UringEngine> {
        UringEngine::with_geometry(CHUNK, IN_FLIGHT)
    }

    /// Like [`UringEngine::new`] with `depth` requests in flight of `chunk_bytes` each
    /// (for benchmarks and tuning). `chunk_bytes` must be a non-zero multiple of [`ALIGN`]
    /// up to 64 MiB, `depth` between 1 and 1024.
    pub fn with_geometry(chunk_bytes: u64, depth: usize) -> io::Result<UringEngine> {
        if chunk_bytes == 0 || chunk_bytes % ALIGN != 0 || chunk_bytes > 64 << 20 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "io_uring chunk of {chunk_bytes} bytes: not a multiple of {ALIGN} up to 64 MiB"
                ),
            ));
        }
        if !(1..=1024).contains(&depth) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("io_uring depth {depth}: not between 1 and 1024"),
            ));
        }
        let chunk = u32::try_from(chunk_bytes).map_err(io::Error::other)?;
        let entries = u32::try_from(depth).map_err(io::Error::other)?;
        let ring = IoUring::builder()
            .setup_r_disabled()
            .build(entries)
            .map_err(context("io_uring_setup"))?;
        let mut bufs = (0..depth)
            .map(|_| MmapMut::map_anon(chunk as usize))
            .collect::<io::Result<Vec<_>>>()
            .map_err(context("map io_uring buffers"))?;
        let iovecs: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|map| libc::iovec {
                iov_base: map.as_mut_ptr().cast(),
                iov_len: map.len(),
            })
            .collect();
        // SAFETY: each iovec covers exactly one anonymous map in `bufs`, which is moved into
        // the engine below next to the ring and never resized, remapped or dropped before
        // the ring (field order; nothing replaces `bufs`). The kernel may write into them
        // only through requests this engine submits, and the engine touches a buffer only
        // while its slot has no request in flight.
        unsafe { ring.submitter().register_buffers(&iovecs) }
            .map_err(context("io_uring register_buffers"))?;
        ring.submitter()
            .register_files(&[-1, -1])
            .map_err(context("io_uring register_files"))?;
        let fixed = squeue::Flags::FIXED_FILE.bits();
        ring.submitter()
            .register_restrictions(&mut [
                Restriction::register_op(IORING_REGISTER_FILES_UPDATE),
                Restriction::sqe_op(opcode::ReadFixed::CODE),
                Restriction::sqe_op(opcode::WriteFixed::CODE),
                Restriction::sqe_flags_allowed(fixed),
                Restriction::sqe_flags_required(fixed),
            ])
            .map_err(context("io_uring register_restrictions"))?;
        ring.submitter()
            .register_enable_rings()
            .map_err(context("io_uring register_enable_rings"))?;
        Ok(UringEngine {
            ring,
            bufs,
            chunk,
            poisoned: None,
            completions: Vec::with_capacity(2 * depth),
            throttle: None,
            watch: None,
        })
    }

    /// Queues the request slot `i` needs next (a read or write of what is left). Never
    /// fails for lack of room: the queue has one entry per slot.
    fn push(&mut self, i: usize, slot: Slot) -> io::Result<()> {
        let index = u16::try_from(i).map_err(io::Error::other)?;
        let buf = &mut self.bufs[i];
        let entry = match slot {
            Slot::Idle => return Ok(()),
            Slot::Read { chunk, done } => {
                let len = u32::try_from(chunk.len).map_err(io::Error::other)?;
                let at = done as usize;
                opcode::ReadFixed::new(SRC, buf[at..].as_mut_ptr(), len - done, index)
                    .offset(chunk.offset + u64::from(done))
                    .build()
            }
            Slot::Write {
                offset, len, done, ..
            } => {
                let at = done as usize;
                opcode::WriteFixed::new(DST, buf[at..].as_ptr(), len - done, index)
                    .offset(offset + u64::from(done))
                    .build()
            }
        }
        .user_data(i as u64);
        loop {
            // SAFETY: the entry points into `bufs[i]` (registered as buffer `i`), within its
            // `chunk` bytes (`done <= len <= chunk`); slot `i` has no other request in flight,
            // and the buffer stays untouched until this request's completion is reaped.
            // The fixed files are in the table until every request has completed.
            match unsafe { self.ring.submission().push(&entry) } {
                Ok(()) => {
                    if let (Some(w), Some(side)) = (&self.watch, side_of(slot)) {
                        w.begin(side);
                    }
                    return Ok(());
                }
                Err(_) => {
                    // Full: cannot happen with one entry per slot, but submitting makes room.
                    self.ring.submit()?;
                }
            }
        }
    }

    /// The pipeline: keeps every slot busy until all chunks are copied or an error
    /// happened, then waits for every request in flight.
    fn pipeline(&mut self, extents: &[Extent], direct: bool) -> Result<u64, CopyError> {
        let depth = self.bufs.len();
        let mut slots = vec![Slot::Idle; depth];
        let mut chunks = Chunks::with_size(extents, u64::from(self.chunk));
        // A chunk the throttle did not allow yet.
        let mut held: Option<Extent> = None;
        let mut in_flight = 0usize;
        let mut copied = 0u64;
        let mut failure: Option<CopyError> = None;
        loop {
            if failure.is_none() {
                for (i, slot) in slots.iter_mut().enumerate() {
                    if !matches!(slot, Slot::Idle) {
                        continue;
                    }
                    if let Some(Err(e)) = self.watch.as_deref().map(Watch::check) {
                        failure = Some(CopyError::Dest(e));
                        break;
                    }
                    let Some(chunk) = held.take().or_else(|| chunks.next()) else {
                        break;
                    };
                    // Paced: wait for tokens only with nothing in flight, so that waiting
                    // never holds back the writes of reads already done.
                    if let Some(t) = &self.throttle {
                        if in_flight == 0 {
                            t.take(chunk.len);
                        } else if !t.try_take(chunk.len) {
                            held = Some(chunk);
                            break;
                        }
                    }
                    *slot = Slot::Read { chunk, done: 0 };
                    // A push error leaves the slot idle; nothing was queued for it.
                    if let Err(e) = self.push(i, *slot) {
                        *slot = Slot::Idle;
                        failure = Some(CopyError::Dest(e));
                        break;
                    }
                    in_flight += 1;
                }
            }
            if in_flight == 0 {
                break;
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if is_retry(&e) || e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => {
                    // Requests may be in flight and we cannot wait for them: never use the
                    // buffers again. Dropping the ring lets the kernel finish them.
                    let message = format!("io_uring_enter failed with requests in flight: {e}");
                    self.poisoned = Some(message.clone());
                    return Err(
                        failure.unwrap_or(CopyError::Dest(io::Error::new(e.kind(), message)))
                    );
                }
            }
            self.completions.clear();
            self.completions.extend(
                self.ring
                    .completion()
                    .map(|cqe| (cqe.user_data(), cqe.result())),
            );
            for k in 0..self.completions.len() {
                let (user_data, res) = self.completions[k];
                let Some(i) = usize::try_from(user_data).ok().filter(|&i| i < depth) else {
                    continue; // not ours; cannot happen
                };
                in_flight -= 1;
                if let (Some(w), Some(side)) = (&self.watch, side_of(slots[i])) {
                    w.end(side);
                }
                let next = self.complete(i, slots[i], res, direct, &mut copied, &mut failure);
                slots[i] = next;
                if matches!(next, Slot::Idle) {
                    continue;
                }
                match self.push(i, next) {
                    Ok(()) => in_flight += 1,
                    Err(e) => {
                        slots[i] = Slot::Idle;
                        failure.get_or_insert(CopyError::Dest(e));
                    }
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(copied),
        }
    }

    /// Slot `i`'s next state after a completion with result `res`; `Idle` when it has
    /// nothing more to do (done, failed, or an earlier failure stops everything).
    fn complete(
        &mut self,
        i: usize,
        slot: Slot,
        res: i32,
        direct: bool,
        copied: &mut u64,
        failure: &mut Option<CopyError>,
    ) -> Slot {
        let stopping = failure.is_some();
        match slot {
            Slot::Idle => Slot::Idle,
            Slot::Read { chunk, done } => {
                if res < 0 {
                    let e = io::Error::from_raw_os_error(-res);
                    if is_retry(&e) && !stopping {
                        return slot;
                    }
                    failure.get_or_insert(CopyError::Source(e));
                    return Slot::Idle;
                }
                let done = done + res.unsigned_abs();
                let len = u32::try_from(chunk.len).unwrap_or(u32::MAX);
                // A direct read stops short only at the end of the file.
                let at_end = res == 0 || (direct && u64::from(done) % ALIGN != 0);
                if done < len && !at_end {
                    return Slot::Read { chunk, done };
                }
                if done == 0 || stopping {
                    return Slot::Idle;
                }
                let len = if direct {
                    // `chunk.len` is a multiple of ALIGN, so this stays within it.
                    let padded = u64::from(done).next_multiple_of(ALIGN);
                    u32::try_from(padded).map_or(len, |p| p.min(len))
                } else {
                    done
                };
                // Zero padding: the buffer still holds an older chunk there. The slot has
                // no request in flight, so the kernel is not using the buffer.
                self.bufs[i][done as usize..len as usize].fill(0);
                Slot::Write {
                    offset: chunk.offset,
                    len,
                    data: done,
                    done: 0,
                }
            }
            Slot::Write {
                offset,
                len,
                data,
                done,
            } => {
                if res < 0 {
                    let e = io::Error::from_raw_os_error(-res);
                    if is_retry(&e) && !stopping {
                        return slot;
                    }
                    failure.get_or_insert(CopyError::Dest(e));
                    return Slot::Idle;
                }
                if res == 0 {
                    failure.get_or_insert(CopyError::Dest(io::ErrorKind::WriteZero.into()));
                    return Slot::Idle;
                }
                let done = done + res.unsigned_abs();
                if done < len {
                    if stopping {
                        return Slot::Idle;
                    }
                    return Slot::Write {
                        offset,
                        len,
                        data,
                        done,
                    };
                }
                *copied += u64::from(data);
                Slot::Idle
            }
        }
    }
}

/// `EINTR` and `EAGAIN`: submit the same request again.
fn is_retry(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN))
}

impl CopyEngine for UringEngine {
    fn name(&self) -> &'static str {
        "io_uring"
    }

    fn copy(
        &mut self,
        src: &File,
        dst: &File,
        extents: &[Extent],
        direct: bool,
    ) -> Result<u64, CopyError> {
        if let Some(why) = &self.poisoned {
            return Err(CopyError::Dest(io::Error::other(format!(
                "io_uring engine unusable: {why}"
            ))));
        }
        debug_assert!(
            !direct
                || extents
                    .iter()
                    .all(|e| e.offset % ALIGN == 0 && e.len % ALIGN == 0),
            "direct copy of unaligned extents: {extents:?}"
        );
        if extents.iter().all(|e| e.len == 0) {
            return Ok(0);
        }
        self.ring
            .submitter()
            .register_files_update(0, &[src.as_raw_fd(), dst.as_raw_fd()])
            .map_err(|e| CopyError::Dest(context("io_uring register the files")(e)))?;
        let result = self.pipeline(extents, direct);
        // The files leave the table (requests still in flight on a poisoned ring keep their
        // own references), so the engine does not hold them open.
        if let Err(e) = self.ring.submitter().register_files_update(0, &[-1, -1]) {
            self.poisoned
                .get_or_insert_with(|| format!("io_uring unregister the files: {e}"));
        }
        result
    }

    fn set_throttle(&mut self, stream: Option<Arc<Stream>>) {
        self.throttle = stream;
    }

    fn set_watch(&mut self, watch: Option<Arc<Watch>>) {
        self.watch = watch;
    }
}

#[cfg(test)]
mod tests {
    use super::UringEngine;
    use crate::reseed::engine::test_support as ts;

    /// The engine, or `None` with a printed reason (a failure under `CI=true`).
    fn engine() -> Option<UringEngine> {
        match UringEngine::new() {
            Ok(engine) => Some(engine),
            Err(e) => {
                let _ = std::io::Write::write_all(
                    &mut std::io::stderr().lock(),
                    format!("\nSKIPPED: io_uring unavailable: {e}\n").as_bytes(),
                );
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "io_uring unavailable in CI: {e}"
                );
                None
            }
        }
    }

    #[test]
    fn uring_copies_holes_and_unaligned_tail() {
        if let Some(mut engine) = engine() {
            ts::copies_holes_and_unaligned_tail(&mut engine);
        }
    }

    #[test]
    fn uring_copies_a_short_source() {
        if let Some(mut engine) = engine() {
            ts::copies_a_short_source(&mut engine);
        }
    }

    #[test]
    fn uring_copies_direct() {
        if let Some(mut engine) = engine() {
            ts::copies_direct(&mut engine);
        }
    }

    #[test]
    fn uring_reports_a_dest_error() {
        if let Some(mut engine) = engine() {
            ts::reports_a_dest_error(&mut engine);
        }
    }

    #[test]
    fn uring_reports_a_source_error() {
        if let Some(mut engine) = engine() {
            ts::reports_a_source_error(&mut engine);
        }
    }

    #[test]
    fn uring_small_geometry_reuses_few_buffers() {
        if engine().is_none() {
            return;
        }
        let mut small = UringEngine::with_geometry(64 << 10, 3).unwrap();
        ts::copies_holes_and_unaligned_tail(&mut small);
        ts::copies_direct(&mut small);
        ts::reports_a_dest_error(&mut small);
        assert!(UringEngine::with_geometry(1000, 4).is_err());
        assert!(UringEngine::with_geometry(1 << 20, 0).is_err());
    }

    #[test]
    fn uring_engine_is_reused_across_copies() {
        if let Some(mut engine) = engine() {
            for _ in 0..3 {
                ts::copies_holes_and_unaligned_tail(&mut engine);
                ts::reports_a_source_error(&mut engine);
            }
        }
    }
}
