//! Per-file state of the copy set, kept with the file for as long as the mount knows it:
//! the locks that keep the copies identical, how far a seeding copy has the file, the
//! activity log's marks, and a sequential writer's run.

use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard, RwLock};

use super::SeedFile;
use crate::tap::NodeMarks;

use crate::checksum::{STRIPE_BYTES_SHIFT, STRIPES};

/// How much a sequential run writes between two writeback kicks.
const KICK_BYTES: u64 = 4 << 20;

/// Per-file locks and marks. Writes hold `resize` shared and the stripes of their range,
/// so that overlapping writes land in the same order on every copy; truncate and
/// fallocate hold `resize` exclusively; a reseed holds `resize` shared while it copies a
/// window of the file, and a window's stripes while it copies dirty ranges again.
#[derive(Debug)]
pub struct FileIo {
    /// Shared by writes, exclusive for size changes.
    pub resize: RwLock<()>,
    stripes: [Mutex<()>; STRIPES],
    /// While a copy of the database is being seeded: how far this file is copied.
    pub seed: Mutex<Option<Arc<SeedFile>>>,
    /// The activity log extents recorded for this file in the current epoch.
    pub marks: NodeMarks,
    /// A sequential writer's run not yet sent to the disks.
    pub run: WriteRun,
}

impl Default for FileIo {
    fn default() -> FileIo {
        FileIo {
            resize: RwLock::default(),
            stripes: std::array::from_fn(|_| Mutex::default()),
            seed: Mutex::default(),
            marks: NodeMarks::default(),
            run: WriteRun::default(),
        }
    }
}

/// A file during a mutation, as the copy set needs it: its [`FileIo`] and its current
/// volume-relative name (for the log tap). The filesystem core's nodes implement it.
pub trait FileRef {
    /// The file's locks and marks.
    fn io(&self) -> &FileIo;
    /// Its volume-relative path (the first of its hard links), if it still has one.
    fn path(&self) -> Option<std::path::PathBuf>;
}

/// The stripe locks held by one write.
pub struct RangeGuard<'a> {
    _guards: [Option<MutexGuard<'a, ()>>; STRIPES],
}

impl FileIo {
    /// Locks the stripes that `[offset, offset+len)` touches, in index order.
    pub fn lock_range(&self, offset: u64, len: u64) -> RangeGuard<'_> {
        let first = offset >> STRIPE_BYTES_SHIFT;
        let last = (offset.saturating_add(len.max(1)) - 1) >> STRIPE_BYTES_SHIFT;
        const _: () = assert!(STRIPES <= u64::BITS as usize);
        let mut mask = 0u64;
        if last - first >= STRIPES as u64 {
            mask = u64::MAX >> (u64::BITS as usize - STRIPES);
        } else {
            for c in first..=last {
                mask |= 1 << (c % STRIPES as u64);
            }
        }
        let mut guards: [Option<MutexGuard<'_, ()>>; STRIPES] = std::array::from_fn(|_| None);
        while mask != 0 {
            let i = mask.trailing_zeros() as usize;
            guards[i] = Some(self.stripes[i].lock());
            mask &= mask - 1;
        }
        RangeGuard { _guards: guards }
    }
}

/// A sequential writer's run since its last writeback kick.
#[derive(Debug, Default)]
pub struct WriteRun {
    /// (where the next sequential write starts, where the unkicked part begins)
    inner: Mutex<(u64, u64)>,
}

impl WriteRun {
    /// Notes a write of `[offset, offset+len)`. When it extends a sequential run to
    /// `KICK_BYTES` past the last kick, returns the range to start writing back.
    /// Random writes never kick: the page cache sorts them and `fsync` writes them.
    pub fn note(&self, offset: u64, len: u64) -> Option<(u64, u64)> {
        let mut r = self.inner.lock();
        if offset != r.0 {
            r.1 = offset;
        }
        r.0 = offset + len;
        let pending = r.0 - r.1;
        (pending >= KICK_BYTES).then(|| {
            let next = r.0;
            let from = std::mem::replace(&mut r.1, next);
            (from, pending)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_locks_cover_touched_stripes() {
        let io = FileIo::default();
        {
            let _g = io.lock_range(0, 2 << 20);
            assert!(io.stripes[0].is_locked() && io.stripes[1].is_locked());
            assert!(!io.stripes[2].is_locked());
        }
        let _g = io.lock_range(0, 64 << 20);
        assert!(io.stripes.iter().all(|s| s.is_locked()));
    }

    #[test]
    fn sequential_runs_kick_writeback_every_4_mib() {
        let run = WriteRun::default();
        assert_eq!(run.note(0, 2 << 20), None);
        assert_eq!(run.note(2 << 20, 2 << 20), Some((0, 4 << 20)));
        assert_eq!(run.note(100 << 20, 4 << 20), Some((100 << 20, 4 << 20)));
        assert_eq!(run.note(0, 1 << 20), None, "a jump starts a new run");
    }
}
