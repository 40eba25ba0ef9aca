//! Block checksums: a CRC32C per 4 KiB block of every database file, kept by each copy on
//! its own volume, so that a disk that returns other bytes than were written (a flipped
//! bit, a misdirected or lost write) is caught when the block is read, and the block is
//! served and repaired from a copy whose block matches.
//!
//! # Format and place
//!
//! One store file per backing file and copy:
//! `<volume>/.reseedfs/sums/<db>/<inode>`, where `<inode>` is the backing file's inode
//! number on that volume. An inode follows the file through renames and hard links, so a
//! rename never touches the sums; each copy has its own inodes, so each copy has its own
//! stores, written with its data on its own volume. The store is an array of
//! little-endian `u32`, one per block: entry `b` (at byte `4*b`) is the CRC32C of bytes
//! `[4096*b, 4096*(b+1))` of the file, a short last block counted as if padded with zeros
//! (so growing a file with zeros never changes a sum). 4 bytes per 4 KiB: 0.1% of the data.
//!
//! The value 0 means *unknown*: the block is not checked. Holes, a store shorter than the
//! file, blocks of a database created before checksums, of a copy seeded without them, or
//! whose data moved (`fallocate` collapse/insert) are unknown until a scrub fills them in.
//! (A block whose true CRC is 0, one in 2^32, stays unchecked.)
//!
//! # When sums change
//!
//! - a write: the sums of its blocks are computed before the copies see it (a block the
//!   write covers in part takes its other bytes from a verified read), and each copy's
//!   lane writes the data and then the sums in one call, under the store's stripe lock;
//!   an `O_DIRECT` write whose copies' data the request thread hands to the kernel (two
//!   copies or more) *defers* its sums instead ([`SumFile::defer`]): kept in memory as
//!   newer than the disk's, written by the next checkpoint before its `syncfs`
//!   ([`Sums::take_deferred`], [`SumFile::flush_with`]). Until then the write's extent is
//!   in the activity log, so a crash meanwhile is repaired as one between a write's data
//!   and its sums;
//! - `truncate` and `fallocate` (punch, zero): the sums of the blocks whose bytes changed
//!   are recomputed from the copy, under the same lock; entries past the end are dropped;
//! - a file created empty: its store is emptied (an inode number can be reused);
//! - a file unlinked while open: its store is removed when its handle is closed (the
//!   file still held, so its inode number is not reused meanwhile); stores whose file is
//!   gone (the daemon stopped while such a file was open) are swept before a database
//!   serves ([`sweep_orphans`]);
//! - crash repair: after the copies agree, the extents of the activity log are summed
//!   again on every copy (writes in flight at the crash may have reached the data and not
//!   the sums, or the reverse);
//! - a reseed or resync of a copy starts from an empty sums directory for that copy, and
//!   fills it as it verifies the copy (the reseed sums each chunk it checked against the
//!   source's sums; the resync copies the source's sums of every file).
//!
//! Readers take the stripe lock only to confirm a mismatch: a block that does not match
//! while a write is between its data and its sums is read again under the lock, so a
//! write in progress is never taken for damage.
//!
//! Readers check against sums kept in memory ([`SumFile::cached`]: chunks of the store
//! read at their first use, updated by every writer), so a checked read costs no read of
//! the store; a mismatch is confirmed from the disk, with the deferred sums over it. Why
//! not a mapped file (`memmap2`): a store lives on the disk that may die; through the volume's lane every access has the
//! volume's deadline and a dead disk answers an error, where a mapping would fault the
//! process (SIGBUS) and needs `unsafe` outside `platform/`.

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use parking_lot::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::names::CopySlot;
use crate::volume::{Backend, FileType, Mode, OFlags, VolFile, Volume};

/// The checksummed block.
pub const BLOCK_BYTES: u64 = 4096;
/// Bytes of one block's entry in a store.
pub const SUM_BYTES: u64 = 4;
/// A sum of 0: the block is not checked.
pub const UNKNOWN: u32 = 0;

/// Stripe locks per store, each for 1 MiB of data modulo `STRIPES` MiB. The copy set's
/// range locks (`copyset::io`) use the same stripes, so a write holding its range's finds
/// the same stripes of each store free of other writers (only a reader confirming a
/// mismatch may hold one). 64: random writes of 8 request threads meet on a stripe in
/// about one batch in three (one in five with 16 would not).
pub(crate) const STRIPES: usize = 64;
pub(crate) const STRIPE_BYTES_SHIFT: u32 = 20; // 1 MiB of data

static ZEROS: [u8; BLOCK_BYTES as usize] = [0; BLOCK_BYTES as usize];

/// True when a test armed a fail point: a write's data and sums then go through the lane,
/// where the fail point between them is (`checksum::between_data_and_sums`).
pub fn window_armed() -> bool {
    #[cfg(feature = "failpoints")]
    {
        !fail::list().is_empty()
    }
    #[cfg(not(feature = "failpoints"))]
    {
        false
    }
}

/// The directory of database `db`'s stores on a volume.
pub fn dir(db: &str) -> PathBuf {
    PathBuf::from(".reseedfs").join("sums").join(db)
}

/// The store of the backing file with inode `ino`.
pub fn store_path(db: &str, ino: u64) -> PathBuf {
    dir(db).join(ino.to_string())
}

/// The CRC32C of one block (at most [`BLOCK_BYTES`]; a short block is summed as if
/// padded with zeros).
pub fn block_sum(data: &[u8]) -> u32 {
    debug_assert!(data.len() as u64 <= BLOCK_BYTES);
    let pad = BLOCK_BYTES as usize - data.len().min(BLOCK_BYTES as usize);
    if pad == 0 {
        crc_fast::crc32_iscsi(data)
    } else {
        let mut crc = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
        crc.update(data);
        crc.update(&ZEROS[..pad]);
        crc.finalize() as u32
    }
}

/// The sums of `data`, which starts on a block boundary, as store bytes.
pub fn sums_of(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len().div_ceil(BLOCK_BYTES as usize) * 4);
    for block in data.chunks(BLOCK_BYTES as usize) {
        out.extend_from_slice(&block_sum(block).to_le_bytes());
    }
    out
}

/// The blocks `[offset, offset+len)` touches.
pub fn blocks(offset: u64, len: u64) -> Range<u64> {
    if len == 0 {
        return offset / BLOCK_BYTES..offset / BLOCK_BYTES;
    }
    offset / BLOCK_BYTES..(offset + len).div_ceil(BLOCK_BYTES)
}

/// The blocks among `blocks` (the first at `data[0]`) whose data does not match a known
/// sum in `sums` (one entry per block; missing entries are unknown).
pub fn mismatches(first: u64, data: &[u8], sums: &[u32]) -> Vec<u64> {
    data.chunks(BLOCK_BYTES as usize)
        .enumerate()
        .filter(|&(k, block)| {
            let want = sums.get(k).copied().unwrap_or(UNKNOWN);
            want != UNKNOWN && block_sum(block) != want
        })
        .map(|(k, _)| first + k as u64)
        .collect()
}

/// One copy's store of one backing file, open, with the stripe locks that keep a reader
/// from taking a write in progress for damage. Shared by every handle of the file on
/// that copy (see [`Sums::file`]).
#[derive(Debug)]
pub struct SumFile {
    file: VolFile,
    /// The copy (slot, placement generation) whose store this is.
    slot: usize,
    generation: u64,
    /// In [`Sums`]'s list of stores with deferred sums ([`SumFile::defer`]).
    queued: AtomicBool,
    /// Its file was removed (a file with no name left closed, a copy's stores reset): no
    /// longer handed out, and its deferred sums are dropped.
    retired: AtomicBool,
    /// Each its own allocation, so that a writer waiting on its own thread for the kernel
    /// can hold one ([`SumFile::try_lock_exclusive_owned`]).
    stripes: [Arc<RwLock<()>>; STRIPES],
    cache: Mutex<Cache>,
}

/// Sums per cached chunk: one 4 KiB page of the store, 4 MiB of data.
const CHUNK_SUMS: u64 = 1024;
/// Chunks a store keeps in memory (16 MiB: the sums of 16 GiB of data); past it the cache
/// starts again empty.
const CACHE_CHUNKS_MAX: usize = 4096;

/// Chunks of a store with deferred sums (written to memory, not yet to the disk) past
/// which a write's sums go to the disk with it again (4 MiB of memory per store).
const DIRTY_CHUNKS_MAX: usize = 1024;

/// The sums of a store in memory, by chunk, so that a checked read costs no read of the
/// store. Writers of the store update it; `epoch` moves with every update, so a chunk read
/// from the disk while a writer changed it is not kept (it could be older than the write).
/// A mismatch is always confirmed from the disk (with the deferred sums over it), never
/// from here alone, so a stale entry can cost a slower read and never a false alarm.
///
/// Deferred sums ([`SumFile::defer`]) are the newest of their blocks: kept here, marked
/// dirty, until [`SumFile::flush_with`] writes them; never dropped by `forget` or by the
/// cache starting afresh, only by a cut (a truncate) or when the store is retired.
#[derive(Debug, Default)]
struct Cache {
    epoch: u64,
    chunks: HashMap<u64, Chunk>,
    /// The chunks holding deferred sums.
    dirty: std::collections::BTreeSet<u64>,
}

/// One chunk of a store in memory.
#[derive(Debug)]
struct Chunk {
    sums: Box<[u32]>,
    /// The entries deferred (one bit each).
    dirty: [u64; (CHUNK_SUMS / 64) as usize],
    /// Whether the entries not deferred were read from the disk (a chunk a deferred write
    /// made holds its deferred entries only).
    loaded: bool,
}

impl Chunk {
    fn new(sums: Box<[u32]>, loaded: bool) -> Chunk {
        Chunk {
            sums,
            dirty: [0; (CHUNK_SUMS / 64) as usize],
            loaded,
        }
    }

    fn is_dirty(&self, k: usize) -> bool {
        self.dirty[k / 64] & (1 << (k % 64)) != 0
    }

    fn mark(&mut self, k: usize, dirty: bool) {
        if dirty {
            self.dirty[k / 64] |= 1 << (k % 64);
        } else {
            self.dirty[k / 64] &= !(1 << (k % 64));
        }
    }

    fn any_dirty(&self) -> bool {
        self.dirty.iter().any(|&w| w != 0)
    }
}

impl Cache {
    /// The store on the disk now holds `sums` from block `first` (written through).
    fn update(&mut self, first: u64, sums: &[u32]) {
        self.epoch += 1;
        for (k, &sum) in sums.iter().enumerate() {
            let b = first + k as u64;
            let c = b / CHUNK_SUMS;
            if let Some(chunk) = self.chunks.get_mut(&c) {
                chunk.sums[(b % CHUNK_SUMS) as usize] = sum;
                chunk.mark((b % CHUNK_SUMS) as usize, false);
                if !chunk.any_dirty() {
                    self.dirty.remove(&c);
                }
            }
        }
    }

    /// `sums` from block `first` are the newest, in memory only.
    fn defer(&mut self, first: u64, sums: &[u32]) {
        self.epoch += 1;
        for (k, &sum) in sums.iter().enumerate() {
            let b = first + k as u64;
            let c = b / CHUNK_SUMS;
            let chunk = self
                .chunks
                .entry(c)
                .or_insert_with(|| Chunk::new(vec![UNKNOWN; CHUNK_SUMS as usize].into(), false));
            chunk.sums[(b % CHUNK_SUMS) as usize] = sum;
            chunk.mark((b % CHUNK_SUMS) as usize, true);
            self.dirty.insert(c);
        }
    }

    /// The deferred entries of `blocks` become unknown (a write there failed: the data on
    /// the disk may be any part of it).
    fn unknown(&mut self, blocks: &Range<u64>) {
        for b in blocks.clone() {
            if let Some(chunk) = self.chunks.get_mut(&(b / CHUNK_SUMS)) {
                let k = (b % CHUNK_SUMS) as usize;
                if chunk.is_dirty(k) {
                    chunk.sums[k] = UNKNOWN;
                }
            }
        }
    }

    /// Drops the chunks of `blocks` from memory: the next read takes them from the disk
    /// again. A chunk holding deferred sums keeps those (and only those).
    fn forget(&mut self, blocks: &Range<u64>) {
        self.epoch += 1;
        if blocks.is_empty() {
            return;
        }
        let (first, last) = (blocks.start / CHUNK_SUMS, (blocks.end - 1) / CHUNK_SUMS);
        let dirty = &self.dirty;
        let keep = |c: u64, chunk: &mut Chunk| {
            let ours = first <= c && c <= last;
            if ours && dirty.contains(&c) {
                chunk.loaded = false;
            }
            !ours || dirty.contains(&c)
        };
        if last - first > self.chunks.len() as u64 {
            self.chunks.retain(|&c, chunk| keep(c, chunk));
        } else {
            for c in first..=last {
                if let Some(chunk) = self.chunks.get_mut(&c)
                    && !keep(c, chunk)
                {
                    self.chunks.remove(&c);
                }
            }
        }
    }

    /// Drops every entry from block `first` on, deferred or not (a truncate).
    fn cut(&mut self, first: u64) {
        self.epoch += 1;
        let head = first / CHUNK_SUMS;
        self.chunks.retain(|&c, _| c <= head);
        let gone: Vec<u64> = self.dirty.range(head + 1..).copied().collect();
        for c in gone {
            self.dirty.remove(&c);
        }
        if let Some(chunk) = self.chunks.get_mut(&head) {
            for k in (first % CHUNK_SUMS) as usize..CHUNK_SUMS as usize {
                chunk.sums[k] = UNKNOWN;
                chunk.mark(k, false);
            }
            if !chunk.any_dirty() {
                self.dirty.remove(&head);
                self.chunks.remove(&head);
            }
        }
    }

    /// Puts the deferred entries of the blocks from `first` over `sums` (read from the
    /// disk).
    fn overlay(&self, first: u64, sums: &mut [u32]) {
        if self.dirty.is_empty() {
            return;
        }
        for (k, sum) in sums.iter_mut().enumerate() {
            let b = first + k as u64;
            if let Some(chunk) = self.chunks.get(&(b / CHUNK_SUMS))
                && chunk.is_dirty((b % CHUNK_SUMS) as usize)
            {
                *sum = chunk.sums[(b % CHUNK_SUMS) as usize];
            }
        }
    }

    /// The deferred entries of chunk `c`, as runs: (first block, sums).
    fn dirty_runs(&self, c: u64) -> Vec<(u64, Vec<u32>)> {
        let Some(chunk) = self.chunks.get(&c) else {
            return Vec::new();
        };
        let mut runs: Vec<(u64, Vec<u32>)> = Vec::new();
        for k in 0..CHUNK_SUMS as usize {
            if !chunk.is_dirty(k) {
                continue;
            }
            let b = c * CHUNK_SUMS + k as u64;
            match runs.last_mut() {
                Some((start, v)) if *start + v.len() as u64 == b => v.push(chunk.sums[k]),
                _ => runs.push((b, vec![chunk.sums[k]])),
            }
        }
        runs
    }
}

/// The stripe locks of a range of a [`SumFile`], exclusive.
pub struct Exclusive<'a> {
    _g: Vec<RwLockWriteGuard<'a, ()>>,
}

/// The stripe locks of a range of a [`SumFile`], exclusive, held by value (by a write
/// whose data and sums the kernel writes while its thread waits).
pub struct OwnedExclusive {
    _g: Vec<parking_lot::ArcRwLockWriteGuard<parking_lot::RawRwLock, ()>>,
}

/// The stripe locks of a range of a [`SumFile`], shared.
pub struct Shared<'a> {
    _g: Vec<RwLockReadGuard<'a, ()>>,
}

impl SumFile {
    fn stripes_of(blocks: &Range<u64>) -> Vec<usize> {
        if blocks.is_empty() {
            return Vec::new();
        }
        let shift = STRIPE_BYTES_SHIFT - BLOCK_BYTES.trailing_zeros();
        let (first, last) = (blocks.start >> shift, (blocks.end - 1) >> shift);
        if last - first >= STRIPES as u64 {
            return (0..STRIPES).collect();
        }
        let mut v: Vec<usize> = (first..=last)
            .map(|s| (s % STRIPES as u64) as usize)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Holds `blocks` against readers confirming a mismatch (a writer of data and sums).
    pub fn lock_exclusive(&self, blocks: &Range<u64>) -> Exclusive<'_> {
        Exclusive {
            _g: Self::stripes_of(blocks)
                .into_iter()
                .map(|s| self.stripes[s].write())
                .collect(),
        }
    }

    /// Like [`SumFile::lock_exclusive`], held by value, or `None` at once when another
    /// holds a stripe (a caller that holds other stores' locks must not wait for one:
    /// two writers taking the stores of two copies in opposite orders would deadlock).
    pub fn try_lock_exclusive_owned(&self, blocks: &Range<u64>) -> Option<OwnedExclusive> {
        let mut g = Vec::new();
        for s in Self::stripes_of(blocks) {
            g.push(self.stripes[s].try_write_arc()?);
        }
        Some(OwnedExclusive { _g: g })
    }

    /// Holds `blocks` against writers until `deadline`; `None` when a writer held them
    /// past it (its disk hangs: the caller's deadline decides).
    pub fn lock_shared(&self, blocks: &Range<u64>, deadline: Instant) -> Option<Shared<'_>> {
        let mut g = Vec::new();
        for s in Self::stripes_of(blocks) {
            g.push(self.stripes[s].try_read_until(deadline)?);
        }
        Some(Shared { _g: g })
    }

    /// The sums of `blocks` as the reads check them: from memory, a chunk of the store
    /// read at its first use (kept up to date by every writer of the store). A mismatch is confirmed with
    /// [`SumFile::read`], from the disk.
    pub fn cached(&self, v: &Volume, blocks: &Range<u64>) -> io::Result<Vec<u32>> {
        let mut out = Vec::with_capacity((blocks.end - blocks.start) as usize);
        let mut b = blocks.start;
        while b < blocks.end {
            let chunk = b / CHUNK_SUMS;
            let upto = ((chunk + 1) * CHUNK_SUMS).min(blocks.end);
            let (from, to) = (
                (b % CHUNK_SUMS) as usize,
                (upto - chunk * CHUNK_SUMS) as usize,
            );
            let epoch = {
                let cache = self.cache.lock();
                if let Some(c) = cache.chunks.get(&chunk)
                    && c.loaded
                {
                    out.extend_from_slice(&c.sums[from..to]);
                    b = upto;
                    continue;
                }
                cache.epoch
            };
            // From the disk, with the deferred sums over it (`read`).
            let loaded = self.read(v, &(chunk * CHUNK_SUMS..(chunk + 1) * CHUNK_SUMS))?;
            out.extend_from_slice(&loaded[from..to]);
            let mut cache = self.cache.lock();
            if cache.epoch == epoch {
                if cache.chunks.len() >= CACHE_CHUNKS_MAX {
                    let dirty = std::mem::take(&mut cache.dirty);
                    cache.chunks.retain(|c, _| dirty.contains(c));
                    cache.dirty = dirty;
                }
                match cache.chunks.get_mut(&chunk) {
                    // Deferred entries only: the others from the disk now.
                    Some(c) => {
                        for (k, sum) in loaded.into_iter().enumerate() {
                            if !c.is_dirty(k) {
                                c.sums[k] = sum;
                            }
                        }
                        c.loaded = true;
                    }
                    None => {
                        cache
                            .chunks
                            .insert(chunk, Chunk::new(loaded.into_boxed_slice(), true));
                    }
                }
            }
            b = upto;
        }
        Ok(out)
    }

    /// Drops `blocks` from memory: the next read takes them from the disk again (after a
    /// mismatch was confirmed there, or a repair).
    pub fn forget(&self, blocks: &Range<u64>) {
        self.cache.lock().forget(blocks);
    }

    /// The sums of `blocks` on the disk (unknown past the end of the store), with the
    /// deferred ones over them ([`SumFile::defer`]: newer than the disk's).
    pub fn read(&self, v: &Volume, blocks: &Range<u64>) -> io::Result<Vec<u32>> {
        let n = (blocks.end - blocks.start) as usize;
        let mut bytes = vec![0u8; n * SUM_BYTES as usize];
        let got = v.read_at(&self.file, blocks.start * SUM_BYTES, &mut bytes)?;
        bytes[got..].fill(0);
        let mut sums = decode(&bytes);
        self.cache.lock().overlay(blocks.start, &mut sums);
        Ok(sums)
    }

    /// Writes store bytes `sums` (from [`sums_of`]) for the blocks from `first`, through
    /// `b` (on the volume's lane, after the data).
    pub fn write_with(&self, b: &dyn Backend, first: u64, sums: &[u8]) -> io::Result<()> {
        let r = b.write_all_at(&self.file, first * SUM_BYTES, sums);
        self.written(first, sums, r.is_ok());
        r
    }

    /// Writes `sums` for the blocks from `first` (outside a lane call).
    pub fn write(&self, v: &Volume, first: u64, sums: &[u8]) -> io::Result<()> {
        let r = v.write_all_at(&self.file, first * SUM_BYTES, sums);
        self.written(first, sums, r.is_ok());
        r
    }

    /// Keeps the memory of the store equal to the disk after a write of `sums` at `first`
    /// (forgotten when the write failed: the disk may hold a part of it).
    pub fn written(&self, first: u64, sums: &[u8], ok: bool) {
        let mut cache = self.cache.lock();
        if ok {
            cache.update(first, &decode(sums));
        } else {
            let blocks = first..first + sums.len() as u64 / SUM_BYTES;
            cache.unknown(&blocks);
            cache.forget(&blocks);
        }
    }

    /// Whether a write's sums may be deferred now ([`SumFile::defer`]): not when the
    /// store holds 1024 chunks of them already (`DIRTY_CHUNKS_MAX`), nor once it is retired.
    pub fn may_defer(&self) -> bool {
        !self.retired.load(Ordering::Relaxed) && self.cache.lock().dirty.len() < DIRTY_CHUNKS_MAX
    }

    /// A write's `sums` for the blocks from `first` (store bytes), its data written: kept
    /// in memory only, the newest sums of those blocks, until [`SumFile::flush_with`]
    /// writes them (every checkpoint, before its `syncfs`; see [`Sums::take_deferred`]).
    /// Call with the blocks' stripes held. A crash before that is repaired like a crash
    /// between a write's data and its sums: the write's extent is in the activity log
    /// until the checkpoint after the one that flushed it (crash repair sums it again).
    pub fn defer(&self, first: u64, sums: &[u8]) {
        self.cache.lock().defer(first, &decode(sums));
    }

    /// Writes the deferred sums through `b` (a lane call of the store's volume), each
    /// chunk under its stripes, so that no writer changes them meanwhile.
    pub fn flush_with(&self, b: &dyn Backend) -> io::Result<()> {
        let chunks: Vec<u64> = self.cache.lock().dirty.iter().copied().collect();
        for c in chunks {
            let _g = self.lock_exclusive(&(c * CHUNK_SUMS..(c + 1) * CHUNK_SUMS));
            let runs = self.cache.lock().dirty_runs(c);
            for (first, sums) in &runs {
                b.write_all_at(&self.file, first * SUM_BYTES, &encode(sums))?;
            }
            let mut cache = self.cache.lock();
            if let Some(chunk) = cache.chunks.get_mut(&c) {
                for (first, sums) in &runs {
                    for k in 0..sums.len() {
                        chunk.mark(((first + k as u64) % CHUNK_SUMS) as usize, false);
                    }
                }
                if !chunk.any_dirty() {
                    cache.dirty.remove(&c);
                    if !cache.chunks[&c].loaded {
                        cache.chunks.remove(&c);
                    }
                }
            }
        }
        Ok(())
    }

    /// The copy slot and placement generation the store belongs to.
    pub fn copy(&self) -> (usize, u64) {
        (self.slot, self.generation)
    }

    /// Drops the entries of the blocks from `first` on (they become unknown).
    pub fn cut(&self, v: &Volume, first: u64) -> io::Result<()> {
        let len = v.fstat(&self.file)?.st_size as u64;
        self.cache.lock().cut(first);
        if len > first * SUM_BYTES {
            v.set_len(&self.file, first * SUM_BYTES)?;
        }
        Ok(())
    }

    /// The store's file (to sync it with the data).
    pub fn vol_file(&self) -> &VolFile {
        &self.file
    }
}

/// Sums as store bytes.
pub fn encode(sums: &[u32]) -> Vec<u8> {
    sums.iter().flat_map(|s| s.to_le_bytes()).collect()
}

fn decode(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(SUM_BYTES as usize)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Which backing file a store belongs to: copy slot, placement generation, inode.
type Key = (usize, u64, u64);

/// One database's checksums: on or off, and the stores open now (one per backing file
/// and copy, shared by every handle, so that their locks are shared too).
#[derive(Debug)]
pub struct Sums {
    db: String,
    enabled: AtomicBool,
    open: Mutex<HashMap<Key, Weak<SumFile>>>,
    deferred: Deferred,
}

/// The stores holding deferred sums ([`SumFile::defer`]), for the next checkpoint to
/// write ([`Sums::take_deferred`]); each store once, held until then.
#[derive(Debug, Clone, Default)]
pub struct Deferred(Arc<Mutex<Vec<Arc<SumFile>>>>);

impl Deferred {
    /// `store` holds deferred sums now (a retired store's go with it: not noted).
    pub fn note(&self, store: &Arc<SumFile>) {
        if !store.retired.load(Ordering::Acquire) && !store.queued.swap(true, Ordering::AcqRel) {
            self.0.lock().push(store.clone());
        }
    }
}

impl Sums {
    /// Checksums of database `db`, on.
    pub fn new(db: &str) -> Sums {
        Sums {
            db: db.to_owned(),
            enabled: AtomicBool::new(true),
            open: Mutex::new(HashMap::new()),
            deferred: Deferred::default(),
        }
    }

    /// Where a write notes a store whose sums it deferred.
    pub fn deferred(&self) -> &Deferred {
        &self.deferred
    }

    /// The stores with deferred sums, taken from the list: the caller writes them
    /// ([`SumFile::flush_with`]); a store that defers sums again is noted again.
    pub fn take_deferred(&self) -> Vec<Arc<SumFile>> {
        let stores = std::mem::take(&mut *self.deferred.0.lock());
        for s in &stores {
            s.queued.store(false, Ordering::Release);
        }
        stores
    }

    /// Store `store`'s file was removed (its file has no name left and was closed): it is
    /// no longer handed out and its deferred sums go.
    pub fn retire(&self, store: &SumFile) {
        store.retired.store(true, Ordering::Release);
        self.deferred
            .0
            .lock()
            .retain(|s| !std::ptr::eq(&**s, store));
    }

    /// Every store of copy `slot` was removed ([`reset`]: the copy is seeded or resynced
    /// anew): none is handed out again, and their deferred sums go.
    pub fn retire_copy(&self, slot: CopySlot) {
        for w in self.open.lock().values() {
            if let Some(f) = w.upgrade()
                && f.slot == slot.index()
            {
                f.retired.store(true, Ordering::Release);
            }
        }
        self.deferred.0.lock().retain(|s| s.slot != slot.index());
    }

    /// True when blocks are summed and checked.
    #[inline]
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Turns checksums on or off (the pool's `[checksums] enabled`, at open).
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    /// The store of `data`, a backing file of copy `slot` (placement `generation`) on `v`,
    /// opened (and created) at the first use.
    pub fn file(
        &self,
        slot: CopySlot,
        generation: u64,
        v: &Volume,
        data: &VolFile,
    ) -> io::Result<Arc<SumFile>> {
        let ino = v.fstat(data)?.st_ino;
        self.file_of(slot, generation, v, ino)
    }

    /// [`Sums::file`] for the file whose inode number is `ino`.
    pub fn file_of(
        &self,
        slot: CopySlot,
        generation: u64,
        v: &Volume,
        ino: u64,
    ) -> io::Result<Arc<SumFile>> {
        let key = (slot.index(), generation, ino);
        let live = |w: &Weak<SumFile>| w.upgrade().filter(|f| !f.retired.load(Ordering::Acquire));
        if let Some(f) = self.open.lock().get(&key).and_then(live) {
            return Ok(f);
        }
        let file = open_store(v, &self.db, ino)?;
        let mut open = self.open.lock();
        if let Some(f) = open.get(&key).and_then(live) {
            return Ok(f);
        }
        if open.len() >= 64 && open.len().is_power_of_two() {
            open.retain(|_, w| w.strong_count() > 0);
        }
        let f = Arc::new(SumFile {
            file,
            slot: slot.index(),
            generation,
            queued: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            stripes: std::array::from_fn(|_| Arc::default()),
            cache: Mutex::default(),
        });
        open.insert(key, Arc::downgrade(&f));
        Ok(f)
    }
}

fn open_store(v: &Volume, db: &str, ino: u64) -> io::Result<VolFile> {
    let path = store_path(db, ino);
    let flags = OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC;
    match v.open_file(&path, flags, Mode::from_raw_mode(0o600)) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            v.mkdir_all(&dir(db))?;
            v.open_file(&path, flags, Mode::from_raw_mode(0o600))
        }
        r => r,
    }
}

/// Removes every store of `db` on `v`: a copy about to be seeded or resynced starts with
/// every block unknown, so no stale sum can ever be taken for damage.
pub fn reset(v: &Volume, db: &str) -> io::Result<()> {
    match v.remove_tree(&dir(db)) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
}

/// Removes the store of the file with inode `ino` of `db` on `v`: the file has no name
/// left and its last handle is being closed. The caller still holds the file open, so
/// no other file can have taken its inode number meanwhile. Without this the store
/// would stay until the number is reused.
pub fn remove_store(v: &Volume, db: &str, ino: u64) -> io::Result<()> {
    match v.remove(&store_path(db, ino), false) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
}

/// Removes the stores of `db` on `v` whose file is gone from that copy (a file unlinked
/// while open whose handles outlived the daemon: a crash, a kill). Run before the
/// database serves: every file then has a name, so a store whose inode no name of
/// `db`'s folders has belongs to no file. Returns the stores removed. One `lstat` per
/// file of the copy, and nothing when `db` has no store.
pub fn sweep_orphans(v: &Volume, db: &str) -> io::Result<usize> {
    let stores = match v.read_dir(&dir(db)) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(0),
        r => r?,
    };
    let numbered: Vec<(u64, std::ffi::OsString)> = stores
        .into_iter()
        .filter_map(|e| Some((e.name.to_str()?.parse::<u64>().ok()?, e.name)))
        .collect();
    if numbered.is_empty() {
        return Ok(0);
    }
    let mut live = std::collections::HashSet::new();
    let mut todo: Vec<PathBuf> = crate::layout::db_folders(db)
        .into_iter()
        .map(PathBuf::from)
        .collect();
    while let Some(d) = todo.pop() {
        let entries = match v.read_dir(&d) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            r => r?,
        };
        for e in entries {
            let path = crate::volume::child_path(&d, &e.name);
            match e.kind {
                FileType::Directory => todo.push(path),
                FileType::RegularFile | FileType::Unknown => match v.stat(&path) {
                    Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                        todo.push(path)
                    }
                    Ok(st) => {
                        live.insert(st.st_ino);
                    }
                    // Gone since it was listed.
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) => return Err(e),
                },
                _ => {}
            }
        }
    }
    let mut removed = 0;
    for (ino, name) in numbered {
        if !live.contains(&ino) {
            match v.remove(&dir(db).join(name), false) {
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                r => r?,
            }
            removed += 1;
        }
    }
    Ok(removed)
}

/// Sums `[offset, offset+len)` of `path` on `v` again from its data (crash repair, a
/// resync's copied extents): the data there is what the copies agreed on.
pub fn recompute(
    v: &Volume,
    db: &str,
    path: &std::path::Path,
    offset: u64,
    len: u64,
) -> io::Result<()> {
    let f = match v.open_file(path, OFlags::RDONLY, Mode::empty()) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        r => r?,
    };
    let st = v.fstat(&f)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Ok(());
    }
    let size = st.st_size as u64;
    let store = open_store(v, db, st.st_ino)?;
    let start = offset / BLOCK_BYTES * BLOCK_BYTES;
    let end = offset.saturating_add(len).min(size);
    let mut at = start;
    let mut buf = vec![0u8; 1 << 20];
    while at < end {
        let want = ((end - at) as usize).min(buf.len());
        let want = (want.div_ceil(BLOCK_BYTES as usize) * BLOCK_BYTES as usize).min(buf.len());
        let n = v.read_at(&f, at, &mut buf[..want])?;
        if n == 0 {
            break;
        }
        v.write_all_at(&store, at / BLOCK_BYTES * SUM_BYTES, &sums_of(&buf[..n]))?;
        at += n as u64;
    }
    // Entries past the end of the file are stale.
    let keep = size.div_ceil(BLOCK_BYTES) * SUM_BYTES;
    if v.fstat(&store)?.st_size as u64 > keep {
        v.set_len(&store, keep)?;
    }
    v.sync_file(&store, true)
}

/// The blocks of `path` on `v` whose data does not match a known sum (offline checks,
/// tests).
pub fn check_file(v: &Volume, db: &str, path: &std::path::Path) -> io::Result<Vec<u64>> {
    let f = v.open_file(path, OFlags::RDONLY, Mode::empty())?;
    let ino = v.fstat(&f)?.st_ino;
    let store = match v.open_file(&store_path(db, ino), OFlags::RDONLY, Mode::empty()) {
        Ok(s) => s,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut bad = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    loop {
        let n = v.read_at(&f, at, &mut buf)?;
        if n == 0 {
            break;
        }
        let blocks = blocks(at, n as u64);
        let mut sums = vec![0u8; (blocks.end - blocks.start) as usize * SUM_BYTES as usize];
        let got = v.read_at(&store, blocks.start * SUM_BYTES, &mut sums)?;
        sums[got..].fill(0);
        bad.extend(mismatches(blocks.start, &buf[..n], &decode(&sums)));
        at += n as u64;
    }
    Ok(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deferred_sums_stay_over_the_disk_until_written_and_go_only_with_a_cut() {
        let mut c = Cache::default();
        // A chunk read from the disk, then a write deferred in it and one in a chunk
        // never read.
        c.chunks
            .insert(0, Chunk::new(vec![7; CHUNK_SUMS as usize].into(), true));
        c.defer(10, &[1, 2]);
        c.defer(CHUNK_SUMS * 3 + 5, &[9]);
        assert_eq!(c.dirty.iter().copied().collect::<Vec<_>>(), [0, 3]);
        // Reads of the disk see them over what the disk holds.
        let mut disk = vec![5u32; 4];
        c.overlay(9, &mut disk);
        assert_eq!(disk, [5, 1, 2, 5]);
        // Forgetting (a confirmed mismatch, a repair) keeps them; a chunk without any goes.
        c.chunks
            .insert(1, Chunk::new(vec![7; CHUNK_SUMS as usize].into(), true));
        c.forget(&(0..CHUNK_SUMS * 4));
        assert!(c.chunks.contains_key(&0) && c.chunks.contains_key(&3));
        assert!(!c.chunks.contains_key(&1));
        // The others of chunk 0 are read from the disk again at the next read.
        assert!(!c.chunks[&0].loaded);
        assert_eq!(c.dirty_runs(0), [(10, vec![1, 2])]);
        assert_eq!(c.dirty_runs(3), [(CHUNK_SUMS * 3 + 5, vec![9])]);
        // A write through to the disk makes an entry clean; a failed one makes a deferred
        // entry unknown (the data may be any part of it), still to be written.
        c.update(11, &[4]);
        assert_eq!(c.dirty_runs(0), [(10, vec![1])]);
        c.unknown(&(10..12));
        assert_eq!(c.dirty_runs(0), [(10, vec![UNKNOWN])]);
        // A cut (truncate) drops them from its block on.
        c.cut(CHUNK_SUMS * 3);
        assert_eq!(c.dirty.iter().copied().collect::<Vec<_>>(), [0]);
        assert!(!c.chunks.contains_key(&3));
        c.cut(5);
        assert!(c.dirty.is_empty() && c.chunks.is_empty());
    }

    #[test]
    fn short_blocks_sum_as_if_padded_with_zeros() {
        let mut block = vec![7u8; 100];
        let short = block_sum(&block);
        block.resize(BLOCK_BYTES as usize, 0);
        assert_eq!(short, block_sum(&block));
        assert_ne!(block_sum(&block), block_sum(&ZEROS));
    }

    /// The CRC of `data` bit by bit (reflected, init and final xor all ones): the
    /// definition both CRCs of the project follow, for `crc-fast` to be checked against.
    fn crc_bitwise(poly: u32, data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ poly
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn both_crcs_match_their_definition_at_every_length_and_alignment() {
        // CRC32C (block sums) and CRC-32 (activity log and log stream records, reseed
        // verify): what earlier builds wrote with the crc32c and crc32fast crates.
        const CASTAGNOLI: u32 = 0x82f6_3b78;
        const IEEE: u32 = 0xedb8_8320;
        let data: Vec<u8> = (0..9000u32).map(|i| (i * 131 + i / 5) as u8).collect();
        let lens = (0..=70).chain([255, 256, 1000, 4095, 4096, 4097, 8191]);
        for len in lens {
            for start in [0, 1, 3, 8] {
                let d = &data[start..start + len];
                assert_eq!(
                    crc_fast::crc32_iscsi(d),
                    crc_bitwise(CASTAGNOLI, d),
                    "CRC32C, {len} bytes at {start}"
                );
                assert_eq!(
                    crc_fast::crc32_iso_hdlc(d),
                    crc_bitwise(IEEE, d),
                    "CRC-32, {len} bytes at {start}"
                );
            }
        }
        let mut whole = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32IsoHdlc);
        for part in data.chunks(777) {
            whole.update(part);
        }
        assert_eq!(
            whole.finalize() as u32,
            crc_bitwise(IEEE, &data),
            "CRC-32 in parts"
        );
    }

    #[test]
    fn block_sums_are_crc32c_as_stores_already_hold_them() {
        // Values from the crc32c crate, which wrote the stores before crc-fast: a store
        // written by an earlier build must still check.
        let block: Vec<u8> = (0..BLOCK_BYTES as u32)
            .map(|i| (i * 31 + i / 7) as u8)
            .collect();
        assert_eq!(block_sum(&block), 0x7cec_4be8);
        assert_eq!(block_sum(&block[..1000]), 0xd109_2210);
        assert_eq!(block_sum(&ZEROS), 0x98f9_4189);
    }

    #[test]
    fn mismatches_skip_unknown_and_name_the_block() {
        let data: Vec<u8> = (0..3 * BLOCK_BYTES as usize)
            .map(|i| (i % 251) as u8)
            .collect();
        let sums = decode(&sums_of(&data));
        assert!(mismatches(10, &data, &sums).is_empty());
        let mut bad = data.clone();
        bad[BLOCK_BYTES as usize + 5] ^= 1;
        assert_eq!(mismatches(10, &bad, &sums), vec![11]);
        let unknown = [sums[0], UNKNOWN, sums[2]];
        assert!(mismatches(10, &bad, &unknown).is_empty());
        assert!(
            mismatches(10, &bad, &sums[..1]).is_empty(),
            "missing entries are unknown"
        );
    }

    #[test]
    fn block_ranges() {
        assert_eq!(blocks(0, 4096), 0..1);
        assert_eq!(blocks(4095, 2), 0..2);
        assert_eq!(blocks(8192, 0), 2..2);
        assert_eq!(SumFile::stripes_of(&(0..256)), vec![0]);
        assert_eq!(SumFile::stripes_of(&(255..257)), vec![0, 1]);
        assert_eq!(SumFile::stripes_of(&(0..1 << 20)).len(), STRIPES);
    }
}
