//! The backing files of open handles: one per copy, tagged with the placement it was
//! opened on, and the registry through which a failure closes every file on the dead
//! volume at once (so that nothing keeps its filesystem alive: the disk can be unmounted,
//! checked and mounted again while the database runs).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;

use super::Copy;
use crate::volume::{VolFile, Volume};

/// A backing file opened on one copy, tagged with the placement it was opened on.
#[derive(Debug)]
pub struct BackingFile {
    /// The placement's generation.
    pub generation: u64,
    /// The open file (through the page cache).
    pub file: VolFile,
    /// The same file opened again with `O_DIRECT` (and the same access mode), for the
    /// small reads and the aligned writes of a caller that opened it so; opened at the
    /// first of them (`None`: not possible here).
    direct: OnceLock<Option<VolFile>>,
    /// The file's checksum store on this copy, opened at the first use.
    pub(super) sums: OnceLock<Arc<crate::checksum::SumFile>>,
}

impl BackingFile {
    /// The file opened with `O_DIRECT`, when the system allows it.
    pub(super) fn direct(&self, volume: &Volume) -> Option<&VolFile> {
        self.direct
            .get_or_init(|| volume.reopen_direct(&self.file).ok())
            .as_ref()
    }
}

/// The backing files of one open handle, by copy index. A slot is refreshed when its
/// copy gets a new placement (a reseed opens the file on the new copy for every open
/// handle), so a file held open across a remap keeps working.
#[derive(Debug)]
pub struct OpenFiles {
    slots: Box<[ArcSwapOption<BackingFile>]>,
    /// The volume-relative path the handle was opened by (for events; a later rename is
    /// not followed).
    name: OnceLock<std::path::PathBuf>,
    /// The caller opened the file with `O_DIRECT`: its aligned writes go `O_DIRECT` to
    /// the backing files too ([`OpenFiles::set_direct`]).
    direct: AtomicBool,
}

impl OpenFiles {
    /// No file open on any of `n` copies.
    pub fn new(n: usize) -> OpenFiles {
        OpenFiles {
            slots: (0..n).map(|_| ArcSwapOption::empty()).collect(),
            name: OnceLock::new(),
            direct: AtomicBool::new(false),
        }
    }

    /// Names the file (the path it was opened by).
    pub fn set_name(&self, path: &std::path::Path) {
        let _ = self.name.set(path.to_owned());
    }

    /// The volume-relative path the file was opened by.
    pub fn path(&self) -> Option<&std::path::Path> {
        self.name.get().map(|p| p.as_path())
    }

    /// The path the file was opened by, for messages.
    pub fn name(&self) -> String {
        self.name
            .get()
            .map_or_else(|| "(unnamed)".to_owned(), |p| p.display().to_string())
    }

    /// Marks the handle as opened with `O_DIRECT` by its caller (a database that caches
    /// its own pages): its aligned writes then bypass the backing page cache of every
    /// copy, as they would bypass the disk's own filesystem cache.
    pub fn set_direct(&self, direct: bool) {
        self.direct.store(direct, Ordering::Relaxed);
    }

    /// Whether the caller opened the file with `O_DIRECT`.
    pub fn is_direct(&self) -> bool {
        self.direct.load(Ordering::Relaxed)
    }

    /// Records `file`, opened on copy `i` at placement `generation`.
    pub fn set(&self, i: usize, generation: u64, file: VolFile) {
        if let Some(slot) = self.slots.get(i) {
            slot.store(Some(Arc::new(BackingFile {
                generation,
                file,
                direct: OnceLock::new(),
                sums: OnceLock::new(),
            })));
        }
    }

    /// Closes the files opened on an earlier placement of their copy.
    pub fn release_stale(&self, copies: &[Copy]) {
        for (slot, copy) in self.slots.iter().zip(copies) {
            let stale = slot
                .load()
                .as_ref()
                .is_some_and(|f| f.generation != copy.placement().generation);
            if stale {
                slot.store(None);
            }
        }
    }

    /// The file of copy `i`, if it was opened on the copy's current placement.
    pub fn get(&self, i: usize, copy: &Copy) -> Option<Arc<BackingFile>> {
        let f = self.slots.get(i)?.load_full()?;
        (f.generation == copy.placement().generation).then_some(f)
    }
}

/// Every open handle's files of one database, weakly: a failure closes their files on
/// the dead volume ([`Registry::release_stale`]).
#[derive(Debug, Default)]
pub(super) struct Registry {
    open: Mutex<Vec<Weak<OpenFiles>>>,
}

impl Registry {
    /// Remembers `files` (until they are dropped).
    pub(super) fn add(&self, files: &Arc<OpenFiles>) {
        let mut open = self.open.lock();
        // Forget the closed ones now and then: the list stays proportional to the
        // handles open.
        if open.len() >= 64 && open.len().is_power_of_two() {
            open.retain(|w| w.strong_count() > 0);
        }
        open.push(Arc::downgrade(files));
    }

    /// Closes every file opened on an earlier placement of its copy.
    pub(super) fn release_stale(&self, copies: &[Copy]) {
        let live: Vec<Arc<OpenFiles>> = {
            let mut open = self.open.lock();
            open.retain(|w| w.strong_count() > 0);
            open.iter().filter_map(Weak::upgrade).collect()
        };
        for files in live {
            files.release_stale(copies);
        }
    }
}
