//! How writes reach a copy that is being seeded.
//!
//! Each file being seeded has a [`SeedFile`]: the seeder copies it front to back in
//! windows, and a write is routed by where it falls, decided while the writer holds the
//! stripe locks of its range:
//!
//! ```text
//!  0 ............ copied ........... window_end .............. EOF
//!  | mirrored to the new copy | being copied: | not copied yet:     |
//!  | like to any other copy   | write recorded| skipped, the seeder |
//!  |                          | as dirty, the | copies it later     |
//!  |                          | seeder copies |                     |
//!  |                          | it again      |                     |
//! ```
//!
//! The seeder opens a window, waits for the writers already inside it (it takes and
//! drops the window's stripe locks), copies it, then moves `copied` to the window's end
//! and copies the dirty ranges again under their stripe locks. When the file's last
//! window closes, every later write is mirrored: the copy is identical to the source.

use parking_lot::Mutex;

/// The seeding state of one file (shared by its hard links).
#[derive(Debug, Default)]
pub struct SeedFile {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    copied: u64,
    window_end: u64,
    dirty: Vec<(u64, u64)>,
}

impl SeedFile {
    /// A file not copied at all yet.
    pub fn new() -> SeedFile {
        SeedFile::default()
    }

    /// Routes a write of `[offset, offset+len)`; the caller holds the range's stripe
    /// locks. True: write it to the seeding copy too. False: skip the seeding copy (the
    /// seeder copies the range later, or again).
    pub fn route_write(&self, offset: u64, len: u64) -> bool {
        let mut s = self.inner.lock();
        let end = offset.saturating_add(len);
        if end <= s.copied {
            true
        } else if offset >= s.window_end {
            false
        } else {
            s.dirty.push((offset, len));
            false
        }
    }

    /// Bytes below this offset are on the new copy (or mirrored to it).
    pub fn copied(&self) -> u64 {
        self.inner.lock().copied
    }

    /// Opens the window `[copied, end)`: writes into it from now on are recorded dirty.
    pub fn open_window(&self, end: u64) {
        let mut s = self.inner.lock();
        s.window_end = end.max(s.copied);
    }

    /// Closes the window: everything below its end is copied; returns the ranges written
    /// while it was open, to copy again.
    pub fn close_window(&self) -> Vec<(u64, u64)> {
        let mut s = self.inner.lock();
        s.copied = s.window_end;
        std::mem::take(&mut s.dirty)
    }

    /// The whole file is copied: every write is mirrored from now on.
    pub fn complete(&self) {
        let mut s = self.inner.lock();
        s.copied = u64::MAX;
        s.window_end = u64::MAX;
        s.dirty.clear();
    }

    /// Data moved inside the file (fallocate collapse/insert range at `offset`): copy
    /// again from there. Called with the file's resize lock held exclusively (no window
    /// is open then).
    pub fn rewind(&self, offset: u64) {
        let mut s = self.inner.lock();
        s.copied = s.copied.min(offset);
        s.window_end = s.window_end.min(offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_routed_by_window() {
        let s = SeedFile::new();
        assert!(!s.route_write(0, 10), "nothing copied: skip");
        s.open_window(100);
        assert!(!s.route_write(50, 10), "in the window: dirty");
        assert!(!s.route_write(90, 20), "straddles the window end: dirty");
        assert!(!s.route_write(200, 10), "beyond the window: skip");
        assert_eq!(s.close_window(), vec![(50, 10), (90, 20)]);
        assert!(s.route_write(0, 100), "copied: mirrored");
        assert!(
            !s.route_write(99, 2),
            "straddles copied: copied again later"
        );
        assert_eq!(s.close_window(), vec![(99, 2)]);
        s.rewind(40);
        assert!(!s.route_write(40, 1));
        s.complete();
        assert!(s.route_write(1 << 40, 1));
    }
}
