//! Block checksums on the data path (the format and the stores are in
//! [`crate::checksum`]): the sums a write brings to every copy, the check of every read,
//! and the repair of a copy whose block does not match from a copy whose block does.
//!
//! A read is checked block by block against the sums of the copy it came from. A block
//! that does not match is read again under its store's lock (a write in progress between
//! its data and its sums is not damage). Still bad, it is read from the next in-sync copy
//! and accepted when it matches that copy's sum or the sum the bad copy expected; the
//! database gets the good bytes, and the bad copy's block is rewritten with them (unless a
//! write changed the block meanwhile) and read back. No copy matching: `EIO`, and an
//! event; never the wrong bytes.

use std::io;
use std::ops::Range;
use std::sync::Arc;

use super::{BackingFile, CopyState, Database, OpenFiles};
use crate::checksum::{self, BLOCK_BYTES, SumFile, UNKNOWN};
use crate::events::{EventId, NewEvent};
use crate::names::CopySlot;
use crate::volume::{
    Backend, Call, ChainWrite, FallocateFlags, FileType, Mode, OFlags, VolFile, Volume,
    is_media_error,
};

/// The sums a write brings: the blocks it touches and their store bytes.
#[derive(Clone)]
pub(super) struct WriteSums {
    pub(super) first: u64,
    pub(super) blocks: Range<u64>,
    pub(super) bytes: Arc<[u8]>,
}

/// A block of the bad copy that a read found damaged: its index and the sum it should
/// have.
#[derive(Debug, Clone, Copy)]
struct Bad {
    block: u64,
    want: u32,
}

/// The store of the handle's file `b` on copy `i`, opened at the first use and kept on
/// `b`; `ino`: the file's inode number when the caller has it.
fn store_of(
    sums: &checksum::Sums,
    i: usize,
    v: &Volume,
    b: &BackingFile,
    ino: Option<u64>,
) -> io::Result<Arc<SumFile>> {
    if let Some(s) = b.sums.get() {
        return Ok(s.clone());
    }
    let slot = CopySlot::new(i);
    let s = match ino {
        Some(ino) => sums.file_of(slot, b.generation, v, ino)?,
        None => sums.file(slot, b.generation, v, &b.file)?,
    };
    let _ = b.sums.set(s.clone());
    Ok(s)
}

impl Database {
    /// The store of the handle's file on copy `i`, opened at the first use.
    fn sum_file(&self, i: usize, v: &Volume, b: &BackingFile) -> io::Result<Arc<SumFile>> {
        store_of(&self.sums, i, v, b, None)
    }

    /// The sums of a write of `data` at `offset`: a block the write covers in part gets
    /// its other bytes from a checked read of the file as it is (the caller holds the
    /// range's stripe locks, so no other write changes them meanwhile). `None` when
    /// checksums are off.
    pub(super) fn sums_for_write(
        &self,
        files: &OpenFiles,
        offset: u64,
        data: &[u8],
    ) -> io::Result<Option<WriteSums>> {
        if !self.sums.enabled() || data.is_empty() {
            return Ok(None);
        }
        let b = BLOCK_BYTES as usize;
        let start = offset / BLOCK_BYTES * BLOCK_BYTES;
        let end = offset + data.len() as u64;
        let head = (offset - start) as usize;
        let tail = (end % BLOCK_BYTES) as usize;
        if head == 0 && tail == 0 {
            // Whole blocks (every O_DIRECT write, most database writes): summed in place,
            // no read, no copy of the data.
            let blocks = checksum::blocks(start, data.len() as u64);
            return Ok(Some(WriteSums {
                first: blocks.start,
                blocks,
                bytes: Arc::from(checksum::sums_of(data)),
            }));
        }
        let mut block = vec![0u8; b];
        let mut got = 0;
        let mut out = Vec::with_capacity(head + data.len() + b);
        if head > 0 {
            got = self.read_at(files, start, &mut block, false)?;
            block[got..].fill(0);
            out.extend_from_slice(&block[..head]);
        }
        out.extend_from_slice(data);
        if tail != 0 {
            let tail_start = end - tail as u64;
            if head == 0 || tail_start != start {
                block.fill(0);
                got = self.read_at(files, tail_start, &mut block, false)?;
            }
            if got > tail {
                out.extend_from_slice(&block[tail..got]);
            }
        }
        let blocks = checksum::blocks(start, out.len() as u64);
        Ok(Some(WriteSums {
            first: blocks.start,
            blocks,
            bytes: Arc::from(checksum::sums_of(&out)),
        }))
    }

    /// Hands a write to copy `i`'s lane: `write` (the data), then its sums, under the
    /// store's lock, in one call (so a reader confirming a mismatch never sees one
    /// without the other).
    pub(super) fn submit_summed_write(
        &self,
        i: usize,
        v: &Volume,
        b: &BackingFile,
        sums: &WriteSums,
        write: impl FnOnce(&dyn Backend) -> io::Result<()> + Send + 'static,
    ) -> Call<()> {
        let store = match self.sum_file(i, v, b) {
            Ok(s) => s,
            Err(e) => return v.submit("write", move |_| Err(e)),
        };
        let sums = sums.clone();
        v.submit("write", move |be| write_then_sums(be, &store, &sums, write))
    }

    /// [`Database::submit_summed_write`] made at once on the calling thread
    /// ([`Volume::make_here`]), so `write` may borrow the request's own buffer.
    pub(super) fn make_summed_write_here(
        &self,
        i: usize,
        v: &Volume,
        b: &BackingFile,
        sums: &WriteSums,
        write: impl FnOnce(&dyn Backend) -> io::Result<()>,
    ) -> Call<()> {
        match self.sum_file(i, v, b) {
            Ok(store) => v.make_here("write", |be| write_then_sums(be, &store, sums, write)),
            Err(e) => v.make_here("write", |_| Err(e)),
        }
    }

    /// Starts a write to copy `i` from the calling thread ([`Volume::start_writes`]): `data`
    /// (its chain: the data), then its sums, the store's stripes held by this thread until
    /// the answer (taken only if free at once, see [`SumFile::try_lock_exclusive_owned`]).
    /// `redo(be)` writes the data through the lane when the kernel refused the chain in a
    /// way the lane handles. `None`: the lane's path ([`Database::submit_summed_write`]).
    pub(super) fn start_summed_write(
        &self,
        i: usize,
        v: &Volume,
        b: &BackingFile,
        sums: &WriteSums,
        data: ChainWrite,
        redo: impl FnOnce(&dyn Backend) -> io::Result<()> + Send + 'static,
    ) -> Option<Call<()>> {
        if checksum::window_armed() {
            return None;
        }
        let store = self.sum_file(i, v, b).ok()?;
        let held = store.try_lock_exclusive_owned(&sums.blocks)?;
        let first = sums.first;
        let bytes = sums.bytes.clone();
        // A copy in sync defers its sums (`SumFile::defer`): the data alone goes to the
        // kernel, which then needs no worker thread for a buffered write of the store; the
        // next checkpoint writes the sums, before its `syncfs`.
        let defer = self.copies[i].is(CopyState::InSync) && store.may_defer();
        let mut chain = vec![data];
        if !defer {
            chain.push(ChainWrite {
                file: store.vol_file().clone(),
                offset: first * checksum::SUM_BYTES,
                data: Arc::new(bytes.to_vec()),
            });
        }
        let (redo_store, redo_bytes) = (store.clone(), bytes.clone());
        let deferred = self.sums.deferred().clone();
        v.start_writes(
            "write",
            chain,
            move |be| {
                redo(be)?;
                redo_store.write_with(be, first, &redo_bytes)
            },
            move |ok| {
                if defer && ok {
                    store.defer(first, &bytes);
                    deferred.note(&store);
                } else {
                    store.written(first, &bytes, ok);
                }
                drop(held);
            },
        )
    }

    /// Reads `buf.len()` bytes at `offset` (block aligned, or up to end of file) from the
    /// active copy, checked against its sums; bad blocks come from another copy, which
    /// repairs the bad one. `read` reads from one copy's file.
    pub(super) fn read_checked(
        &self,
        files: &OpenFiles,
        offset: u64,
        buf: &mut [u8],
        read: impl Fn(&Volume, &BackingFile, u64, &mut [u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        loop {
            let (i, v, b) = self.read_target(files, None)?;
            let n = match v.timed(|| read(&v, &b, offset, buf)) {
                Ok(n) => n,
                Err(e) if is_media_error(&e) => {
                    self.on_error(i, "read", &e, false);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let checked = self.sum_file(i, &v, &b).and_then(|store| {
                let blocks = checksum::blocks(offset, n as u64);
                let bad = bad_blocks(&v, &store, &blocks, &buf[..n], false)?;
                if bad.is_empty() {
                    return Ok((store, n, bad));
                }
                // Confirm under the store's lock, with the sums on the disk: a write may
                // be between its data and sums, the memory of the store may be stale.
                let (n, bad) = {
                    let _g = store.lock_shared(&blocks, v.deadline());
                    let n = read(&v, &b, offset, buf)?;
                    let blocks = checksum::blocks(offset, n as u64);
                    store.forget(&blocks);
                    (n, bad_blocks(&v, &store, &blocks, &buf[..n], true)?)
                };
                Ok((store, n, bad))
            });
            let (store, n, bad) = match checked {
                Ok(r) => r,
                Err(e) if is_media_error(&e) => {
                    self.on_error(i, "read checksums", &e, false);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if bad.is_empty() {
                return Ok(n);
            }
            self.heal(files, i, &v, &b, &store, offset, &mut buf[..n], &bad)?;
            return Ok(n);
        }
    }

    /// The copy a read goes to: the active one, else another in-sync copy where the
    /// handle has a file; `skip` excluded. `EIO` when there is none.
    fn read_target(
        &self,
        files: &OpenFiles,
        skip: Option<usize>,
    ) -> io::Result<(usize, Arc<Volume>, Arc<BackingFile>)> {
        let (active, _) = self.active()?;
        let order = std::iter::once(active).chain(
            (0..self.copies.len()).filter(|&i| i != active && self.copies[i].is(CopyState::InSync)),
        );
        for i in order.filter(|&i| Some(i) != skip) {
            if let (Some(v), Some(file)) = (
                self.copies[i].in_sync_volume(),
                files.get(i, &self.copies[i]),
            ) {
                return Ok((i, v, file));
            }
        }
        Err(io::Error::from_raw_os_error(libc::EIO))
    }

    /// Serves the `bad` blocks of `buf` (read at `offset` from copy `slot`) from the other
    /// in-sync copies, and rewrites them on copy `slot`. `EIO` when a block matches on no
    /// copy.
    #[allow(clippy::too_many_arguments)]
    fn heal(
        &self,
        files: &OpenFiles,
        slot: usize,
        v: &Volume,
        b: &BackingFile,
        store: &SumFile,
        offset: u64,
        buf: &mut [u8],
        bad: &[Bad],
    ) -> io::Result<()> {
        let file = files.name();
        let mut fixed = Vec::new();
        for bad in bad {
            let at = bad.block * BLOCK_BYTES;
            let from = (at - offset) as usize;
            let len = (buf.len() - from).min(BLOCK_BYTES as usize);
            match self.good_block(files, slot, at, len, bad.want) {
                Some((j, data)) => {
                    buf[from..from + len].copy_from_slice(&data);
                    fixed.push((bad.block, j, data));
                }
                None => {
                    let event = NewEvent::new(
                        EventId::ChecksumUnrecoverable,
                        format!(
                            "block {} of {file} (bytes {at}..{}) does not match its checksum on any copy of {}: the read fails with EIO; restore the file from a backup",
                            bad.block,
                            at + len as u64,
                            self.name
                        ),
                    )
                    .database(&self.name)
                    .volume(&self.copies[slot].volume_name())
                    .field("file", file.clone())
                    .field("offset", at)
                    .field("block", bad.block)
                    .field("len", len as u64);
                    self.report_checksum(CopySlot::new(slot), event);
                    return Err(io::Error::from_raw_os_error(libc::EIO));
                }
            }
        }
        let writable = writable_twin(v, &b.file, files.path());
        for (block, from, data) in fixed {
            let outcome = match &writable {
                Ok(Some(f)) => self.rewrite_block(v, f, store, block, &data),
                Ok(None) => Err(io::Error::other(
                    "the file was renamed or removed since it was opened; a scrub repairs it",
                )),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            let (repaired, how) = match &outcome {
                Ok(true) => (
                    true,
                    "rewritten from the good copy and read back".to_owned(),
                ),
                Ok(false) => (
                    false,
                    "not rewritten: a write replaced the block meanwhile".to_owned(),
                ),
                Err(e) => (false, format!("rewrite failed: {e}")),
            };
            let at = block * BLOCK_BYTES;
            let event = NewEvent::new(
                EventId::ChecksumRepaired,
                format!(
                    "block {block} of {file} (bytes {at}..{}) on {} did not match its checksum: served from {}, {how}",
                    at + data.len() as u64,
                    self.copies[slot].volume_name(),
                    self.copies[from].volume_name(),
                ),
            )
            .database(&self.name)
            .volume(&self.copies[slot].volume_name())
            .field("file", file.clone())
            .field("offset", at)
            .field("block", block)
            .field("len", data.len() as u64)
            .field("source", self.copies[from].volume_name())
            .field("repaired", repaired);
            self.report_checksum(CopySlot::new(slot), event);
            if let Err(e) = outcome
                && is_media_error(&e)
            {
                self.on_error(slot, "checksum repair", &e, true);
            }
        }
        Ok(())
    }

    /// Block at `at` (`len` bytes) from an in-sync copy other than `slot` whose bytes
    /// match its own sum or `want`: (copy, bytes).
    fn good_block(
        &self,
        files: &OpenFiles,
        slot: usize,
        at: u64,
        len: usize,
        want: u32,
    ) -> Option<(usize, Vec<u8>)> {
        for (j, c) in self.copies.iter().enumerate() {
            if j == slot || !c.is(CopyState::InSync) {
                continue;
            }
            let (Some(v), Some(b)) = (c.in_sync_volume(), files.get(j, c)) else {
                continue;
            };
            let mut data = vec![0u8; len];
            let got = v.read_at(&b.file, at, &mut data).and_then(|n| {
                let store = self.sum_file(j, &v, &b)?;
                let theirs = store.read(&v, &checksum::blocks(at, 1))?;
                Ok((n, theirs.first().copied().unwrap_or(UNKNOWN)))
            });
            match got {
                Ok((n, theirs)) if n == len => {
                    let sum = checksum::block_sum(&data);
                    if sum == want || (theirs != UNKNOWN && sum == theirs) {
                        return Some((j, data));
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if is_media_error(&e) {
                        self.on_error(j, "read", &e, false);
                    }
                }
            }
        }
        None
    }

    /// Rewrites `block` of `file` on `v` with `data`, unless its sum changed meanwhile
    /// (a write replaced it); then reads it back. True when rewritten.
    pub(super) fn rewrite_block(
        &self,
        v: &Volume,
        file: &VolFile,
        store: &SumFile,
        block: u64,
        data: &[u8],
    ) -> io::Result<bool> {
        let blocks = checksum::blocks(block * BLOCK_BYTES, 1);
        let _g = store.lock_exclusive(&blocks);
        let sum = checksum::block_sum(data);
        if store.read(v, &blocks)?.first().copied() != Some(sum) {
            return Ok(false);
        }
        let at = block * BLOCK_BYTES;
        v.write_all_at(file, at, data)?;
        v.sync_file(file, true)?;
        let mut back = vec![0u8; data.len()];
        let n = v.read_at(file, at, &mut back)?;
        if n != data.len() || checksum::block_sum(&back) != sum {
            return Err(io::Error::other(format!(
                "block {block} read back from {} still does not match its checksum",
                v.name()
            )));
        }
        Ok(true)
    }

    /// Records a checksum event against copy `slot`'s volume.
    pub fn report_checksum(&self, slot: CopySlot, event: NewEvent) {
        match self.store.upgrade() {
            Some(store) => store.checksum_failed(self, slot, event),
            None => tracing::warn!("{}", event.message),
        }
    }

    /// A handle was opened: where its file is empty (created, truncated, made by
    /// `mknod`), any entries left in its store (a reused inode number) are dropped.
    pub(super) fn sums_opened(&self, files: &OpenFiles) -> io::Result<()> {
        if !self.sums.enabled() {
            return Ok(());
        }
        for (i, c) in self.copies.iter().enumerate() {
            let (Some(p), Some(b)) = (c.writable(), files.get(i, c)) else {
                continue;
            };
            let Some(v) = &p.volume else { continue };
            // One lane call for the whole of it (a new file's store opened and emptied).
            let sums = self.sums.clone();
            let r = v.calls("open checksums", move |v| {
                let st = v.fstat(&b.file)?;
                if st.st_size == 0 {
                    store_of(&sums, i, v, &b, Some(st.st_ino))?.cut(v, 0)?;
                }
                Ok(())
            });
            if let Err(e) = r {
                self.on_error(i, "open checksums", &e, true);
            }
        }
        Ok(())
    }

    /// The checksum store of `file` on copy `slot` (volume `v`), in its current placement.
    fn store_of(&self, slot: usize, v: &Volume, file: &VolFile) -> io::Result<Arc<SumFile>> {
        let generation = self.copies[slot].placement().generation;
        self.sums.file(CopySlot::new(slot), generation, v, file)
    }

    /// Writes the sums the writes deferred ([`SumFile::defer`]) to every in-sync copy's
    /// stores, each volume's in one lane call, all at once; a copy that fails it is
    /// failed (its deadline too). Each checkpoint runs it before its `syncfs`: a deferred
    /// sum is then on the disk before the activity log lets go of its write's extent.
    /// The stores of a copy no longer in sync are left (its stores start afresh when it is
    /// seeded or resynced).
    pub fn flush_sums(&self) {
        let stores = self.sums.take_deferred();
        if stores.is_empty() {
            return;
        }
        let in_sync = crate::tap::Replicas::in_sync(self);
        let (mut slots, mut calls) = (Vec::new(), Vec::new());
        for (slot, generation, v) in &in_sync {
            let mine: Vec<Arc<SumFile>> = stores
                .iter()
                .filter(|s| s.copy() == (*slot, *generation))
                .cloned()
                .collect();
            if mine.is_empty() {
                continue;
            }
            let deferred = self.sums.deferred().clone();
            let call = v.submit("sums flush", move |be| {
                let mut out = Ok(());
                for s in &mine {
                    if let Err(e) = s.flush_with(be) {
                        // Still deferred: noted again, for the next checkpoint.
                        deferred.note(s);
                        out = out.and(Err(e));
                    }
                }
                out
            });
            slots.push(*slot);
            calls.push((&**v, call));
        }
        let results = crate::volume::finish_all(&self.name, "sums flush", calls);
        for (slot, r) in slots.into_iter().zip(results) {
            if let Err(e) = r {
                self.on_error(slot, "checkpoint (writing deferred checksums)", &e, true);
            }
        }
    }

    /// A handle was closed: where its file has no name left on a copy (unlinked while
    /// open, as databases do with their temporary files), the file's store there is
    /// removed now, while the handle still holds the file (its inode number cannot have
    /// gone to another file). Another handle of the same file that writes later
    /// recreates it, and removes it again when it is closed.
    pub fn sums_closed(&self, files: &OpenFiles) {
        if !self.sums.enabled() {
            return;
        }
        for (i, c) in self.copies.iter().enumerate() {
            let (Some(p), Some(b)) = (c.writable(), files.get(i, c)) else {
                continue;
            };
            let Some(v) = &p.volume else { continue };
            let r = v.fstat(&b.file).and_then(|st| {
                if st.st_nlink == 0 && FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
                {
                    if let Some(store) = b.sums.get() {
                        self.sums.retire(store);
                    }
                    checksum::remove_store(v, &self.name, st.st_ino)?;
                }
                Ok(())
            });
            // A close answers nothing: a store left behind is swept at the next start.
            if let Err(e) = r {
                tracing::warn!(
                    "checksum store of {} (no name left) on {}: {e}",
                    files.name(),
                    v.name()
                );
            }
        }
    }

    /// Removes the checksum stores that describe nothing any more; before the database
    /// serves. With checksums on, the stores of files gone from the in-sync copies (see
    /// [`checksum::sweep_orphans`]); returns how many. With checksums off, every store of
    /// the in-sync copies: the writes to come leave them behind, and a store left behind
    /// would make the first reads after checksums are turned on again fail as damage
    /// (`EIO` on every copy). Dropped, every block is unknown to them, not checked, until
    /// written again or scrubbed. (A copy not in sync starts without stores when it is
    /// seeded or resynced.)
    pub fn sweep_sums(&self) -> usize {
        if !self.sums.enabled() {
            self.drop_sums();
            return 0;
        }
        let mut removed = 0;
        for c in &self.copies {
            let Some(v) = c.in_sync_volume() else {
                continue;
            };
            match checksum::sweep_orphans(&v, &self.name) {
                Ok(n) => removed += n,
                Err(e) => tracing::warn!(
                    "checksum stores of {} on {}: cannot sweep those of removed files: {e}",
                    self.name,
                    v.name()
                ),
            }
        }
        if removed > 0 {
            tracing::info!(
                "{}: {removed} checksum stores of files removed while open were deleted",
                self.name
            );
        }
        removed
    }

    /// Checksums are off: removes the stores of the in-sync copies (see
    /// [`Database::sweep_sums`]).
    fn drop_sums(&self) {
        for c in &self.copies {
            let Some(v) = c.in_sync_volume() else {
                continue;
            };
            let dir = checksum::dir(&self.name);
            let removed = match v.stat(&dir) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                // Not told whether there are stores (a disk failing at mount): said, with
                // what to do, as when they cannot be removed.
                Err(e) => Err(e),
                Ok(_) => checksum::reset(&v, &self.name),
            };
            match removed {
                Ok(()) => tracing::info!(
                    "{}: checksums are off: the checksum stores on {} were removed (they \
                     would go stale); once checksums are on again, blocks are checked after \
                     they are written, or all of them after `reseedfs scrub {}`",
                    self.name,
                    v.name(),
                    self.name
                ),
                Err(e) => tracing::warn!(
                    "{}: checksums are off, but the checksum stores on {} ({}) could not be \
                     looked at or removed: {e}; remove that folder before checksums are \
                     turned on again, or the blocks written meanwhile will read as damaged",
                    self.name,
                    v.name(),
                    v.root().join(&dir).display()
                ),
            }
        }
    }

    /// `ftruncate` of copy `i`'s file `f` to `size`, with its sums: the entries past the
    /// end dropped, a last partial block summed again.
    pub(super) fn set_len_summed(
        &self,
        i: usize,
        v: &Volume,
        b: &BackingFile,
        size: u64,
    ) -> io::Result<()> {
        if !self.sums.enabled() {
            return v.set_len(&b.file, size);
        }
        let store = self.sum_file(i, v, b)?;
        let _g = store.lock_exclusive(&(0..u64::MAX));
        v.set_len(&b.file, size)?;
        resum_after_resize(v, &b.file, &store, size)
    }

    /// `truncate` of `path` on copy `i` (no handle), with its sums.
    pub(super) fn truncate_summed(
        &self,
        i: usize,
        v: &Volume,
        path: &std::path::Path,
        size: u64,
    ) -> io::Result<()> {
        if !self.sums.enabled() {
            return v.truncate(path, size);
        }
        let file = v.open_file(path, OFlags::RDWR, Mode::empty())?;
        let store = self.store_of(i, v, &file)?;
        let _g = store.lock_exclusive(&(0..u64::MAX));
        v.set_len(&file, size)?;
        resum_after_resize(v, &file, &store, size)
    }

    /// `fallocate` on copy `i`'s file with its sums: punched or zeroed blocks summed
    /// again; data moved by collapse or insert leaves its blocks unknown from `offset` on
    /// (until a scrub).
    pub(super) fn fallocate_summed(
        &self,
        i: usize,
        v: &Volume,
        b: &BackingFile,
        mode: FallocateFlags,
        offset: u64,
        len: u64,
    ) -> io::Result<()> {
        let changes = FallocateFlags::PUNCH_HOLE
            | FallocateFlags::ZERO_RANGE
            | FallocateFlags::COLLAPSE_RANGE
            | FallocateFlags::INSERT_RANGE;
        if !self.sums.enabled() || !mode.intersects(changes) {
            return v.fallocate(&b.file, mode, offset, len);
        }
        let store = self.sum_file(i, v, b)?;
        let _g = store.lock_exclusive(&(0..u64::MAX));
        v.fallocate(&b.file, mode, offset, len)?;
        let size = v.fstat(&b.file)?.st_size as u64;
        if mode.intersects(FallocateFlags::COLLAPSE_RANGE | FallocateFlags::INSERT_RANGE) {
            return store.cut(v, offset / BLOCK_BYTES);
        }
        let end = offset.saturating_add(len).min(size);
        if end <= offset {
            return Ok(());
        }
        resum_range(v, &b.file, &store, offset, end - offset)
    }
}

/// `file` opened again for writing, by the path its handle was opened with, when that
/// path still names the same file (`None` when it does not: renamed or removed).
fn writable_twin(
    v: &Volume,
    file: &VolFile,
    path: Option<&std::path::Path>,
) -> io::Result<Option<VolFile>> {
    let Some(path) = path else { return Ok(None) };
    let twin = match v.open_file(path, OFlags::RDWR, Mode::empty()) {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    let (a, b) = (v.fstat(file)?, v.fstat(&twin)?);
    Ok((a.st_ino == b.st_ino && a.st_dev == b.st_dev).then_some(twin))
}

/// The blocks of `data` (read at `blocks.start`) that do not match their sum in `store`
/// (the sums in memory, or on the disk when `from_disk`).
fn bad_blocks(
    v: &Volume,
    store: &SumFile,
    blocks: &Range<u64>,
    data: &[u8],
    from_disk: bool,
) -> io::Result<Vec<Bad>> {
    if blocks.is_empty() {
        return Ok(Vec::new());
    }
    let sums = if from_disk {
        store.read(v, blocks)?
    } else {
        store.cached(v, blocks)?
    };
    Ok(checksum::mismatches(blocks.start, data, &sums)
        .into_iter()
        .map(|block| Bad {
            block,
            want: sums[(block - blocks.start) as usize],
        })
        .collect())
}

/// After a size change to `size`: entries past the end dropped, the last block summed
/// again from the file.
fn resum_after_resize(v: &Volume, file: &VolFile, store: &SumFile, size: u64) -> io::Result<()> {
    // Between a size change and its sums (tests hold a truncate here to kill the daemon).
    fail::fail_point!("checksum::between_resize_and_sums");
    store.cut(v, size.div_ceil(BLOCK_BYTES))?;
    if size % BLOCK_BYTES != 0 {
        let last = size / BLOCK_BYTES * BLOCK_BYTES;
        resum_range(v, file, store, last, size - last)?;
    }
    Ok(())
}

/// Sums the blocks of `[offset, offset+len)` of `file` again from its bytes.
fn resum_range(
    v: &Volume,
    file: &VolFile,
    store: &SumFile,
    offset: u64,
    len: u64,
) -> io::Result<()> {
    let blocks = checksum::blocks(offset, len);
    let mut at = blocks.start * BLOCK_BYTES;
    let end = blocks.end * BLOCK_BYTES;
    let mut buf = vec![0u8; (1 << 20).min((end - at) as usize)];
    while at < end {
        let want = ((end - at) as usize).min(buf.len());
        let n = v.read_at(file, at, &mut buf[..want])?;
        if n == 0 {
            break;
        }
        store.write(v, at / BLOCK_BYTES, &checksum::sums_of(&buf[..n]))?;
        at += n as u64;
    }
    Ok(())
}

/// Why a chunk of a new copy could not be checked or summed.
#[derive(Debug)]
pub enum SeedSums {
    /// Reading the source (or its sums) failed.
    Source(io::Error),
    /// Writing the new copy's sums failed.
    Dest(io::Error),
    /// A block of the source does not match its checksum and no other copy has it right:
    /// the message names the block.
    Unrecoverable(String),
}

impl Database {
    /// A chunk of a copy being seeded (slot `dst`, on `dst_v`) that holds the source's
    /// bytes `data` at `offset` of `path` (copy `src` on `src_v`): the source's blocks are
    /// checked against the source's sums; a bad one is taken from another in-sync copy
    /// whose block matches and written to both (the source repaired, the new copy right),
    /// or the chunk fails naming the block; then the new copy's sums of the chunk are
    /// written. The caller holds the chunk's write-ordering locks (no write in flight, so
    /// the data and both copies' sums agree but for damage). Returns the blocks repaired.
    #[allow(clippy::too_many_arguments)]
    pub fn seed_chunk_sums(
        &self,
        (src, src_v, src_file): (CopySlot, &Volume, &VolFile),
        (dst, dst_v, dst_file): (CopySlot, &Volume, &VolFile),
        path: &std::path::Path,
        offset: u64,
        data: &[u8],
        found_by: &str,
    ) -> Result<u64, SeedSums> {
        if !self.sums.enabled() || data.is_empty() {
            return Ok(0);
        }
        let (src, dst) = (src.index(), dst.index());
        let blocks = checksum::blocks(offset, data.len() as u64);
        let store = self
            .store_of(src, src_v, src_file)
            .map_err(SeedSums::Source)?;
        let bad = bad_blocks(src_v, &store, &blocks, data, true).map_err(SeedSums::Source)?;
        let mut fixed: Vec<(u64, Vec<u8>)> = Vec::new();
        for b in &bad {
            let at = b.block * BLOCK_BYTES;
            let from = (at - offset) as usize;
            let len = (data.len() - from).min(BLOCK_BYTES as usize);
            let good = self.good_block_by_path(&[src, dst], path, at, len, b.want);
            let Some((j, good)) = good else {
                let why = format!(
                    "block {} of {} (bytes {at}..{}) on {} does not match its checksum and no other copy has it right: restore the file from a backup, then reseed",
                    b.block,
                    path.display(),
                    at + len as u64,
                    src_v.name()
                );
                let event = NewEvent::new(EventId::ChecksumUnrecoverable, why.clone())
                    .database(&self.name)
                    .volume(src_v.name())
                    .field("file", path.display().to_string())
                    .field("offset", at)
                    .field("block", b.block)
                    .field("len", len as u64)
                    .field("found_by", found_by);
                self.report_checksum(CopySlot::new(src), event);
                return Err(SeedSums::Unrecoverable(why));
            };
            let write = |v: &Volume| -> io::Result<()> {
                let f = v.open_file(path, OFlags::WRONLY, Mode::empty())?;
                v.write_all_at(&f, at, &good)?;
                v.sync_file(&f, true)
            };
            let repaired = write(src_v).is_ok();
            write(dst_v).map_err(SeedSums::Dest)?;
            let event = NewEvent::new(
                EventId::ChecksumRepaired,
                format!(
                    "block {} of {} (bytes {at}..{}) on {} did not match its checksum ({found_by}); the copy on {} does: {}",
                    b.block,
                    path.display(),
                    at + len as u64,
                    src_v.name(),
                    self.copies[j].volume_name(),
                    if repaired {
                        "written to the new copy and the source from it"
                    } else {
                        "written to the new copy from it; the source not repaired (scrub)"
                    }
                ),
            )
            .database(&self.name)
            .volume(src_v.name())
            .field("file", path.display().to_string())
            .field("offset", at)
            .field("block", b.block)
            .field("len", len as u64)
            .field("source", self.copies[j].volume_name())
            .field("repaired", repaired)
            .field("found_by", found_by);
            self.report_checksum(CopySlot::new(src), event);
            fixed.push((b.block, good));
        }
        let mut sums = checksum::sums_of(data);
        for (block, good) in &fixed {
            let k = ((block - blocks.start) * checksum::SUM_BYTES) as usize;
            sums[k..k + 4].copy_from_slice(&checksum::block_sum(good).to_le_bytes());
        }
        self.store_of(dst, dst_v, dst_file)
            .and_then(|s| s.write(dst_v, blocks.start, &sums))
            .map_err(SeedSums::Dest)?;
        Ok(fixed.len() as u64)
    }

    /// Block at `at` (`len` bytes) of `path` from an in-sync copy not in `skip` whose
    /// bytes match its own sum or `want`: (copy, bytes).
    fn good_block_by_path(
        &self,
        skip: &[usize],
        path: &std::path::Path,
        at: u64,
        len: usize,
        want: u32,
    ) -> Option<(usize, Vec<u8>)> {
        for (j, c) in self.copies.iter().enumerate() {
            if skip.contains(&j) {
                continue;
            }
            let Some(v) = c.in_sync_volume() else {
                continue;
            };
            let got = v
                .open_file(path, OFlags::RDONLY, Mode::empty())
                .and_then(|f| {
                    let mut data = vec![0u8; len];
                    let n = v.read_at(&f, at, &mut data)?;
                    let store =
                        self.sums
                            .file(CopySlot::new(j), c.placement().generation, &v, &f)?;
                    let theirs = store.read(&v, &checksum::blocks(at, 1))?;
                    Ok((n, data, theirs.first().copied().unwrap_or(UNKNOWN)))
                });
            if let Ok((n, data, theirs)) = got {
                let sum = checksum::block_sum(&data);
                if n == len && (sum == want || (theirs != UNKNOWN && sum == theirs)) {
                    return Some((j, data));
                }
            }
        }
        None
    }
}

impl Database {
    /// Gives copy `dst` (on `dst_v`, being resynced from copy `src` on `src_v`, equal to it
    /// now) the source's sums of the regular file `path`: the data is the same, so are
    /// its sums (the copied extents were checked against them). The caller holds the
    /// file's write-ordering locks over the whole file. Returns the blocks summed.
    pub fn copy_sums(
        &self,
        (src, src_v): (CopySlot, &Volume),
        (dst, dst_v): (CopySlot, &Volume),
        path: &std::path::Path,
    ) -> Result<u64, SeedSums> {
        if !self.sums.enabled() {
            return Ok(0);
        }
        let (src, dst) = (src.index(), dst.index());
        let open = |v: &Volume| v.open_file(path, OFlags::RDONLY, Mode::empty());
        let (a, b) = match (open(src_v), open(dst_v)) {
            (Ok(a), Ok(b)) => (a, b),
            // Removed since: nothing to sum.
            (Err(e), _) | (_, Err(e)) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(0),
            (Err(e), _) => return Err(SeedSums::Source(e)),
            (_, Err(e)) => return Err(SeedSums::Dest(e)),
        };
        let size = dst_v.fstat(&b).map_err(SeedSums::Dest)?.st_size as u64;
        let blocks = size.div_ceil(BLOCK_BYTES);
        let from = self.store_of(src, src_v, &a).map_err(SeedSums::Source)?;
        let to = self.store_of(dst, dst_v, &b).map_err(SeedSums::Dest)?;
        // 1 MiB of sums (1 GiB of data) per step.
        const STEP: u64 = 1 << 18;
        let mut at = 0;
        while at < blocks {
            let range = at..(at + STEP).min(blocks);
            let sums = from.read(src_v, &range).map_err(SeedSums::Source)?;
            // Between reading the source's sums and writing them (tests race a write
            // through another name of the file against it).
            fail::fail_point!("checksum::copy_sums");
            to.write(dst_v, range.start, &checksum::encode(&sums))
                .map_err(SeedSums::Dest)?;
            at = range.end;
        }
        to.cut(dst_v, blocks).map_err(SeedSums::Dest)?;
        Ok(blocks)
    }
}

/// A write's data (`write`), then its sums, under the store's lock, in one call (so a
/// reader confirming a mismatch never sees one without the other).
fn write_then_sums(
    be: &dyn Backend,
    store: &SumFile,
    sums: &WriteSums,
    write: impl FnOnce(&dyn Backend) -> io::Result<()>,
) -> io::Result<()> {
    let _g = store.lock_exclusive(&sums.blocks);
    write(be)?;
    // Between a write's data and its sums: where a crash leaves them disagreeing (tests
    // make the window certain with `sleep(ms)`; crash repair must close it).
    fail::fail_point!("checksum::between_data_and_sums");
    store.write_with(be, sums.first, &sums.bytes)
}
