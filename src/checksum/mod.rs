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
//! the store; a mismatch is confirmed from the disk. Why not a mapped file (`memmap2`): a
//! store lives on the disk that may die; through the volume's lane every access has the
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
    let crc = crc32c::crc32c(data);
    let pad = BLOCK_BYTES as usize - data.len().min(BLOCK_BYTES as usize);
    if pad == 0 {
        crc
    } else {
        crc32c::crc32c_append(crc, &ZEROS[..pad])
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

/// The sums of a store in memory, by chunk, so that a checked read costs no read of the
/// store. Writers of the store update it; `epoch` moves with every update, so a chunk read
/// from the disk while a writer changed it is not kept (it could be older than the write).
/// A mismatch is always confirmed from the disk, never from here, so a stale entry can
/// cost a slower read and never a false alarm.
#[derive(Debug, Default)]
struct Cache {
    epoch: u64,
    chunks: HashMap<u64, Box<[u32]>>,
}

impl Cache {
    fn update(&mut self, first: u64, sums: &[u32]) {
        self.epoch += 1;
        for (k, &sum) in sums.iter().enumerate() {
            let b = first + k as u64;
            if let Some(c) = self.chunks.get_mut(&(b / CHUNK_SUMS)) {
                c[(b % CHUNK_SUMS) as usize] = sum;
            }
        }
    }

    fn forget(&mut self, blocks: &Range<u64>) {
        self.epoch += 1;
        if blocks.is_empty() {
            return;
        }
        let (first, last) = (blocks.start / CHUNK_SUMS, (blocks.end - 1) / CHUNK_SUMS);
        if last - first > self.chunks.len() as u64 {
            self.chunks.retain(|&c, _| c < first || c > last);
        } else {
            for c in first..=last {
                self.chunks.remove(&c);
            }
        }
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
                if let Some(c) = cache.chunks.get(&chunk) {
                    out.extend_from_slice(&c[from..to]);
                    b = upto;
                    continue;
                }
                cache.epoch
            };
            let loaded = self.read(v, &(chunk * CHUNK_SUMS..(chunk + 1) * CHUNK_SUMS))?;
            out.extend_from_slice(&loaded[from..to]);
            let mut cache = self.cache.lock();
            if cache.epoch == epoch {
                if cache.chunks.len() >= CACHE_CHUNKS_MAX {
                    cache.chunks.clear();
                }
                cache.chunks.insert(chunk, loaded.into_boxed_slice());
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

    /// The sums of `blocks` on the disk (unknown past the end of the store).
    pub fn read(&self, v: &Volume, blocks: &Range<u64>) -> io::Result<Vec<u32>> {
        let n = (blocks.end - blocks.start) as usize;
        let mut bytes = vec![0u8; n * SUM_BYTES as usize];
        let got = v.read_at(&self.file, blocks.start * SUM_BYTES, &mut bytes)?;
        bytes[got..].fill(0);
        Ok(decode(&bytes))
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
            cache.forget(&(first..first + sums.len() as u64 / SUM_BYTES));
        }
    }

    /// Drops the entries of the blocks from `first` on (they become unknown).
    pub fn cut(&self, v: &Volume, first: u64) -> io::Result<()> {
        let len = v.fstat(&self.file)?.st_size as u64;
        self.cache.lock().forget(&(first..u64::MAX));
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
}

impl Sums {
    /// Checksums of database `db`, on.
    pub fn new(db: &str) -> Sums {
        Sums {
            db: db.to_owned(),
            enabled: AtomicBool::new(true),
            open: Mutex::new(HashMap::new()),
        }
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
        let key = (slot.index(), generation, ino);
        if let Some(f) = self.open.lock().get(&key).and_then(Weak::upgrade) {
            return Ok(f);
        }
        let file = open_store(v, &self.db, ino)?;
        let mut open = self.open.lock();
        if let Some(f) = open.get(&key).and_then(Weak::upgrade) {
            return Ok(f);
        }
        if open.len() >= 64 && open.len().is_power_of_two() {
            open.retain(|_, w| w.strong_count() > 0);
        }
        let f = Arc::new(SumFile {
            file,
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
    fn short_blocks_sum_as_if_padded_with_zeros() {
        let mut block = vec![7u8; 100];
        let short = block_sum(&block);
        block.resize(BLOCK_BYTES as usize, 0);
        assert_eq!(short, block_sum(&block));
        assert_ne!(block_sum(&block), block_sum(&ZEROS));
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
