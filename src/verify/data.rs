//! The data pass of an online verification: every regular file compared chunk by chunk
//! ([`super::CHUNK`]) on every copy, each chunk under the file's write-ordering locks
//! ([`ChunkLocks`]), its sizes first with every stripe held. A difference is confirmed
//! once before it is reported (the file opened again, the chunk read again), so that a
//! rename racing the verification cannot pass for one.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::chunk::{ChunkLocks, ChunkReader};
use super::repair::{repair_extent, repair_size, size_of};
use super::{CHUNK, ExtentMismatch, FileGroup, Run, TreeField, VerifyError, is_enoent, stat_opt};
use crate::fs::Node;
use crate::volume::{FileType, Mode, OFlags, VolFile};

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
        let size = self.compare_sizes(&f)?;
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
        let file = match active.open_file(&path, OFlags::RDONLY, Mode::empty()) {
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
    fn compare_sizes(&mut self, f: &OpenGroup) -> Result<u64, VerifyError> {
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
            let repaired =
                self.opts.repair && repair_size(&f.nodes, &f.active, f.others[i].as_deref());
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
    /// the 4 KiB blocks that differ from the active copy; with `repair`, rewrites them
    /// from the active copy (under the same locks) and reads them again.
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
        let mut mismatches = vec![Vec::new(); self.peers.len()];
        for (i, r) in reads.enumerate() {
            let Some(o) = f.others[i].as_ref().filter(|_| !self.gone[i]) else {
                continue;
            };
            let m = r.map_err(|e| self.copy_error(Some(i), "read", &f.path, e))?;
            for (start, end) in reader.differing_blocks(i + 1, n, m) {
                let repaired = repair && {
                    let (a, b) = reader.reference_and(i + 1, n);
                    repair_extent(o, a, b, offset, start, end)
                };
                mismatches[i].push((offset + start as u64, (end - start) as u64, repaired));
            }
        }
        drop(locks);
        Ok(Chunk {
            read: n,
            mismatches,
        })
    }
}

/// One file opened on every copy.
pub(super) struct OpenGroup {
    /// The name it is reported under.
    path: PathBuf,
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
}

impl Chunk {
    fn differs(&self) -> bool {
        self.mismatches.iter().any(|m| !m.is_empty())
    }
}
