//! The data pass of an online verification: every regular file compared chunk by chunk
//! ([`super::CHUNK`]) on every copy, each chunk under the file's write-ordering locks
//! ([`ChunkLocks`]), its sizes first with every stripe held. A difference is confirmed
//! once before it is reported (the file opened again, the chunk read again), so that a
//! rename racing the verification cannot pass for one.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::chunk::{BLOCK, ChunkLocks, ChunkReader};
use super::repair::size_of;
use super::{CHUNK, ExtentMismatch, FileGroup, Run, TreeField, VerifyError, is_enoent, stat_opt};
use crate::checksum::{self, SumFile};
use crate::events::{EventId, NewEvent};
use crate::fs::Node;
use crate::volume::{FileType, Mode, OFlags, VolFile, is_media_error};

impl Run<'_> {
    /// Compares one file's size and data on every copy, chunk by chunk.
    pub(super) fn verify_file(
        &mut self,
        group: &FileGroup,
        reader: &mut ChunkReader,
    ) -> Result<(), VerifyError> {
        self.check_copies()?;
        let Some(mut f) = self.open_group(group)? else {
            return Ok(());
        };
        self.report.files += 1;
        // Data appended after this is left to the next verification: a file growing as
        // fast as it is read would keep it here for ever.
        let size = self.compare_sizes(&f, reader)?;
        let mut offset = 0u64;
        let mut confirmed = false;
        loop {
            self.check_copies()?;
            let mut chunk = self.compare_chunk(&f, offset, reader, false)?;
            if chunk.differs() {
                // Confirm before reporting: the file opened again (a rename racing the
                // table of nodes settles in microseconds), the chunk read again.
                if !confirmed {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let Some(again) = self.open_group(group)? else {
                    return Ok(());
                };
                if again.ino != f.ino {
                    self.report.notes.push(format!(
                        "{} was replaced while it was compared: compared up to byte {offset}",
                        f.path.display()
                    ));
                    return Ok(());
                }
                f = again;
                self.check_copies()?;
                chunk = self.compare_chunk(&f, offset, reader, self.opts.repair)?;
                confirmed |= chunk.differs();
                // A copy that left sync meanwhile: what it read is not its copy any more.
                self.check_copies()?;
                for &(off, len, repaired) in &chunk.active_mismatches {
                    let volume = self.active.name().to_owned();
                    self.report.add_extent(ExtentMismatch {
                        path: f.path.display().to_string(),
                        volume,
                        offset: off,
                        len,
                        repaired,
                    });
                }
                for (i, extents) in chunk.mismatches.iter().enumerate() {
                    if self.gone[i] {
                        continue;
                    }
                    for &(off, len, repaired) in extents {
                        let volume = self.peers[i].name().to_owned();
                        self.report.add_extent(ExtentMismatch {
                            path: f.path.display().to_string(),
                            volume,
                            offset: off,
                            len,
                            repaired,
                        });
                    }
                }
            }
            let t = &chunk.tally;
            self.report.blocks_checked += t.checked;
            self.report.checksum_errors += t.errors;
            self.report.checksum_repaired += t.repaired;
            self.report.checksum_unrecoverable += t.unrecoverable;
            self.report.sums_filled += t.filled;
            self.report.bytes_compared += chunk.read as u64;
            self.progress.job.add_done(chunk.read as u64);
            self.progress.job.pacer.take(chunk.read as u64);
            offset += chunk.read as u64;
            if chunk.read < CHUNK || offset >= size {
                return Ok(());
            }
        }
    }

    /// Opens the file on every copy (namespace held exclusively, so that every copy
    /// opens the same file), with the nodes of all its names. `None` when it is gone.
    fn open_group(&self, group: &FileGroup) -> Result<Option<OpenGroup>, VerifyError> {
        let _namespace = self.db.namespace_exclusive();
        let active = &self.active.volume;
        let mut ino = None;
        let mut paths = Vec::new();
        for p in &group.paths {
            match stat_opt(active, p).map_err(|e| self.copy_error(None, "stat", p, e))? {
                Some(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {
                    let key = (st.st_dev, st.st_ino);
                    if *ino.get_or_insert(key) == key {
                        paths.push(p.clone());
                    }
                }
                _ => {}
            }
        }
        let (Some(ino), Some(path)) = (ino, paths.first().cloned()) else {
            return Ok(None);
        };
        // With repair, the active copy too may be the one a checksum proves wrong.
        let active_flags = if self.opts.repair {
            OFlags::RDWR
        } else {
            OFlags::RDONLY
        };
        let file = match active.open_file(&path, active_flags, Mode::empty()) {
            Ok(f) => f,
            Err(e) if is_enoent(&e) => return Ok(None),
            Err(e) => return Err(self.copy_error(None, "open", &path, e)),
        };
        let flags = if self.opts.repair {
            OFlags::RDWR
        } else {
            OFlags::RDONLY
        };
        let mut others = Vec::new();
        for (i, p) in self.peers.iter().enumerate() {
            if self.skip(i, &path) {
                others.push(None);
                continue;
            }
            match p.volume.open_file(&path, flags, Mode::empty()) {
                Ok(f) if f.metadata().is_ok_and(|m| m.is_file()) => others.push(Some(f)),
                // Reported by the tree pass: missing, or not a file there.
                Ok(_) => others.push(None),
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::EISDIR)
                    ) =>
                {
                    others.push(None)
                }
                Err(e) => return Err(self.copy_error(Some(i), "open", &path, e)),
            }
        }
        let mut nodes: Vec<Arc<Node>> = Vec::new();
        for p in paths {
            if let Some(n) = self.core.node_for(self.db.index, p) {
                if !nodes.iter().any(|m| Arc::ptr_eq(m, &n)) {
                    nodes.push(n);
                }
            }
        }
        // One order for every caller that takes the locks of several nodes.
        nodes.sort_by_key(|n| Arc::as_ptr(n) as usize);
        Ok(Some(OpenGroup {
            path,
            ino,
            nodes,
            active: file,
            others,
        }))
    }

    /// The sizes on every copy, with every stripe of the file held; a copy whose size
    /// differs is reported (and truncated to the active copy's, under the resize lock,
    /// when repairing). Returns the active copy's.
    fn compare_sizes(&mut self, f: &OpenGroup, reader: &ChunkReader) -> Result<u64, VerifyError> {
        let (active_size, sizes) = {
            let _locks = ChunkLocks::take(&f.nodes, 0, u64::MAX);
            let a = size_of(&f.active).map_err(|e| self.copy_error(None, "stat", &f.path, e))?;
            let mut sizes = Vec::new();
            for (i, o) in f.others.iter().enumerate() {
                if let Some(o) = o {
                    let b = size_of(o).map_err(|e| self.copy_error(Some(i), "stat", &f.path, e))?;
                    sizes.push((i, a, b));
                }
            }
            (a, sizes)
        };
        for (i, a, b) in sizes.into_iter().filter(|(_, a, b)| a != b) {
            let repaired = self.opts.repair && self.repair_size(reader, f, i + 1)?;
            self.mismatch(
                &f.path,
                i,
                TreeField::Size,
                a.to_string(),
                b.to_string(),
                repaired,
            );
        }
        Ok(active_size)
    }

    /// Reads `[offset, offset + CHUNK)` on every copy under the file's locks and locates
    /// the 4 KiB blocks that differ from the active copy. Where checksums are kept, they
    /// decide which copy is right: a block of the active copy that does not match its
    /// checksum while the other copy's does is the active copy's difference (repaired from
    /// the other); otherwise the other copy's (repaired from the active copy, as when
    /// both match their checksums: a write behind reseedfs's back). A scrub also checks
    /// the blocks where the copies agree: a sum that the agreed data does not match is
    /// rewritten where another copy's matches, and blocks without a sum get one.
    fn compare_chunk(
        &self,
        f: &OpenGroup,
        offset: u64,
        reader: &mut ChunkReader,
        repair: bool,
    ) -> Result<Chunk, VerifyError> {
        let locks = ChunkLocks::take(&f.nodes, offset, CHUNK as u64);
        let files: Vec<Option<&File>> = std::iter::once(Some(&*f.active))
            .chain(f.others.iter().map(|o| o.as_deref()))
            .collect();
        let mut reads = reader.read(&locks, &files, offset, CHUNK).into_iter();
        let n = match reads.next() {
            Some(Ok(n)) => n,
            Some(Err(e)) => return Err(self.copy_error(None, "read", &f.path, e)),
            None => 0,
        };
        let mut lens = Vec::new();
        for (i, r) in reads.enumerate() {
            if f.others[i].is_none() || self.gone[i] {
                continue;
            }
            let m = r.map_err(|e| self.copy_error(Some(i), "read", &f.path, e))?;
            lens.push((i, m));
        }
        let sums: Vec<Option<CopySums>> = (0..=self.peers.len())
            .map(|c| self.chunk_sums(f, c, offset, n))
            .collect::<Result<_, _>>()?;
        let first = offset / BLOCK as u64;
        let known = |c: usize, k: u64| -> Option<u32> {
            let (_, s) = sums[c].as_ref()?;
            let w = s
                .get((k - first) as usize)
                .copied()
                .unwrap_or(checksum::UNKNOWN);
            (w != checksum::UNKNOWN).then_some(w)
        };
        let mut chunk = Chunk {
            read: n,
            mismatches: vec![Vec::new(); self.peers.len()],
            active_mismatches: Vec::new(),
            tally: Tally::default(),
        };
        for &(i, m) in &lens {
            for (start, end) in reader.differing_blocks(i + 1, n, m) {
                for s in (start..end).step_by(BLOCK) {
                    let e = (s + BLOCK).min(end);
                    let k = first + (s / BLOCK) as u64;
                    let matches = |c: usize, reader: &ChunkReader| {
                        known(c, k).map(|w| checksum::block_sum(&reader.bytes(c, n)[s..e]) == w)
                    };
                    let (a_ok, p_ok) = (matches(0, reader), matches(i + 1, reader));
                    let at = offset + s as u64;
                    if a_ok == Some(false) && p_ok != Some(false) {
                        // The active copy is the one that is wrong.
                        let repaired =
                            repair && self.repair_extent(reader, f, i + 1, 0, n, offset, (s, e))?;
                        chunk.tally.errors += 1;
                        chunk.tally.repaired += u64::from(repaired);
                        chunk.active_mismatches.push((at, (e - s) as u64, repaired));
                        if repair {
                            self.checksum_event(f, None, Some(i), k, repaired);
                        }
                    } else if a_ok == Some(false) {
                        // Wrong on both: nothing to repair from.
                        chunk.tally.errors += 2;
                        chunk.tally.unrecoverable += 1;
                        chunk.mismatches[i].push((at, (e - s) as u64, false));
                    } else {
                        if f.others[i].is_none() {
                            continue;
                        }
                        let repaired =
                            repair && self.repair_extent(reader, f, 0, i + 1, n, offset, (s, e))?;
                        if p_ok == Some(false) {
                            chunk.tally.errors += 1;
                            chunk.tally.repaired += u64::from(repaired);
                            if repair {
                                self.checksum_event(f, Some(i), None, k, repaired);
                            }
                        }
                        chunk.mismatches[i].push((at, (e - s) as u64, repaired));
                    }
                }
            }
        }
        if self.opts.scrub && self.db.sums().enabled() {
            self.scrub_agreed(reader, n, first, &lens, &sums, &mut chunk);
        }
        for c in 0..=self.peers.len() {
            chunk.tally.checked += (0..n.div_ceil(BLOCK) as u64)
                .filter(|&b| known(c, first + b).is_some())
                .count() as u64;
        }
        drop(locks);
        Ok(chunk)
    }

    /// A scrub's pass over the blocks where every copy agrees: sums that the agreed data
    /// does not match are rewritten where another copy's sum matches it, blocks without a
    /// sum get one; data that matches no copy's known sum is counted unrecoverable.
    fn scrub_agreed(
        &self,
        reader: &ChunkReader,
        n: usize,
        first: u64,
        lens: &[(usize, usize)],
        sums: &[Option<CopySums>],
        chunk: &mut Chunk,
    ) {
        let copies: Vec<usize> = std::iter::once(0)
            .chain(lens.iter().map(|&(i, _)| i + 1))
            .collect();
        for s in (0..n).step_by(BLOCK) {
            let e = (s + BLOCK).min(n);
            let data = &reader.bytes(0, n)[s..e];
            if lens
                .iter()
                .any(|&(i, m)| m < e || &reader.bytes(i + 1, n)[s..e] != data)
            {
                continue;
            }
            let k = first + (s / BLOCK) as u64;
            let sum = checksum::block_sum(data);
            let want = |c: usize| {
                sums[c].as_ref().map(|(_, v)| {
                    v.get((k - first) as usize)
                        .copied()
                        .unwrap_or(checksum::UNKNOWN)
                })
            };
            let any_match = copies.iter().any(|&c| want(c) == Some(sum));
            let all_unknown = copies
                .iter()
                .all(|&c| want(c).is_none_or(|w| w == checksum::UNKNOWN));
            if !any_match && !all_unknown {
                chunk.tally.unrecoverable += 1;
                chunk
                    .active_mismatches
                    .push((k * BLOCK as u64, (e - s) as u64, false));
                continue;
            }
            for &c in &copies {
                let (Some(w), Some((store, _))) = (want(c), &sums[c]) else {
                    continue;
                };
                if w == sum {
                    continue;
                }
                let peer = if c == 0 {
                    &self.active
                } else {
                    &self.peers[c - 1]
                };
                let ok = store.write(&peer.volume, k, &sum.to_le_bytes()).is_ok();
                if w == checksum::UNKNOWN {
                    chunk.tally.filled += u64::from(ok);
                } else {
                    // The store was wrong and the data right: the store is repaired.
                    chunk.tally.errors += 1;
                    chunk.tally.repaired += u64::from(ok);
                }
            }
        }
    }

    /// The checksum store and sums of copy `c` (0: the active copy, `i + 1`: peer `i`)
    /// for the chunk at `offset` (`n` bytes); `None` when checksums are off or the store
    /// cannot be read (its blocks are then not decided by it). A store that fails as a
    /// disk fails (a media error, a missed deadline) fails its copy and ends the run, as
    /// a failed read of the data does: a hung copy must not cost one deadline per chunk.
    fn chunk_sums(
        &self,
        f: &OpenGroup,
        c: usize,
        offset: u64,
        n: usize,
    ) -> Result<Option<CopySums>, VerifyError> {
        if !self.db.sums().enabled() || n == 0 {
            return Ok(None);
        }
        let (peer, file) = if c == 0 {
            (&self.active, Some(&f.active))
        } else {
            (&self.peers[c - 1], f.others[c - 1].as_ref())
        };
        let Some(file) = file else { return Ok(None) };
        let read = self
            .db
            .sums()
            .file(peer.slot, peer.generation, &peer.volume, file)
            .and_then(|store| {
                let sums = store.read(&peer.volume, &checksum::blocks(offset, n as u64))?;
                Ok((store, sums))
            });
        match read {
            Ok(sums) => Ok(Some(sums)),
            Err(e) if is_media_error(&e) => {
                Err(self.copy_error(c.checked_sub(1), "checksum store", &f.path, e))
            }
            Err(_) => Ok(None),
        }
    }

    /// Event 3070 for block `k` of `f`, bad on peer `bad` (`None`: the active copy),
    /// good on peer `good` (`None`: the active copy).
    fn checksum_event(
        &self,
        f: &OpenGroup,
        bad: Option<usize>,
        good: Option<usize>,
        k: u64,
        repaired: bool,
    ) {
        let who = |p: Option<usize>| p.map_or(&self.active, |i| &self.peers[i]);
        let (bad, good) = (who(bad), who(good));
        let at = k * BLOCK as u64;
        let found_by = if self.opts.scrub { "scrub" } else { "verify" };
        let event = NewEvent::new(
            EventId::ChecksumRepaired,
            format!(
                "block {k} of {} (bytes {at}..{}) on {} did not match its checksum ({found_by}); the copy on {} does: {}",
                f.path.display(),
                at + BLOCK as u64,
                bad.name(),
                good.name(),
                if repaired {
                    "rewritten from it and read back"
                } else {
                    "not repaired (run verify --repair, or scrub)"
                }
            ),
        )
        .database(&self.db.name)
        .volume(bad.name())
        .field("file", f.path.display().to_string())
        .field("offset", at)
        .field("block", k)
        .field("len", BLOCK as u64)
        .field("source", good.name())
        .field("repaired", repaired)
        .field("found_by", found_by);
        self.db.report_checksum(bad.slot, event);
    }
}

/// One copy's checksum store and the sums of a chunk's blocks.
type CopySums = (Arc<SumFile>, Vec<u32>);

/// What the checksums decided in one chunk.
#[derive(Debug, Default)]
struct Tally {
    checked: u64,
    errors: u64,
    repaired: u64,
    unrecoverable: u64,
    filled: u64,
}

/// One file opened on every copy.
pub(super) struct OpenGroup {
    /// The name it is reported under.
    pub(super) path: PathBuf,
    /// Its inode on the active copy.
    ino: (u64, u64),
    /// The nodes of its names (one, unless hard links were found on disk).
    pub(super) nodes: Vec<Arc<Node>>,
    pub(super) active: VolFile,
    /// Per peer; `None` where it is missing or the peer left.
    pub(super) others: Vec<Option<VolFile>>,
}

/// What one chunk showed.
struct Chunk {
    /// Bytes read on the active copy (less than [`CHUNK`] at the end of the file).
    read: usize,
    /// Per peer: (offset, len, repaired).
    mismatches: Vec<Vec<(u64, u64, bool)>>,
    /// Where the active copy is the one that is wrong (its checksums say so).
    active_mismatches: Vec<(u64, u64, bool)>,
    /// What the checksums decided.
    tally: Tally,
}

impl Chunk {
    fn differs(&self) -> bool {
        !self.active_mismatches.is_empty() || self.mismatches.iter().any(|m| !m.is_empty())
    }
}
