//! The mutations of a database, one call each: every call takes the locks the mutation
//! needs, records it in the log tap, routes it to a copy being seeded when it must, fans
//! it out to the copies, applies the outcome rules and, for data, hints writeback. The
//! filesystem core translates requests into these calls and keeps its node table; it
//! never sequences a mutation itself, so no operation can skip the tap.

use std::io;
use std::path::Path;
use std::sync::Arc;

use super::{Database, FileRef, OpenFiles};
use crate::volume::{
    FallocateFlags, Mode, OFlags, RenameFlags, SeekFrom, Stat, Timestamps, VolFile, Volume,
};

impl Database {
    /// `lstat` of `path` on the active copy (failing over).
    pub fn stat(&self, path: &Path) -> io::Result<Stat> {
        self.read_op("stat", |_, v| v.stat(path))
    }

    /// Opens `path` on every copy that takes mutations; the files are registered, so that
    /// a failure closes those on the dead volume.
    pub fn open(&self, path: &Path, flags: OFlags) -> io::Result<Arc<OpenFiles>> {
        // No reseed lays out a new copy between the open and the handle's registration.
        let _namespace = self.namespace_shared();
        let changes = flags.contains(OFlags::TRUNC);
        let files = self.open_on_copies("open", path, changes, |v| {
            v.open_file(path, flags, Mode::empty())
        })?;
        self.sums_opened(&files)?;
        Ok(files)
    }

    /// Creates and opens `path` (owned by `uid:gid`) on every copy that takes mutations.
    pub fn create(
        &self,
        path: &Path,
        flags: OFlags,
        perm: Mode,
        owner: (u32, u32),
    ) -> io::Result<Arc<OpenFiles>> {
        let _namespace = self.namespace_shared();
        let files = self.open_on_copies("create", path, true, |v| {
            let f = v.open_file(path, flags | OFlags::CREATE, perm)?;
            v.fchown(&f, Some(owner.0), Some(owner.1))?;
            Ok(f)
        })?;
        self.tap.meta(|m| m.created(path));
        self.sums_opened(&files)?;
        Ok(files)
    }

    /// Opens again, with `flags`, the files `from` has open on every copy that takes
    /// mutations: a new handle on a file that may have no name left (an open of
    /// `/proc/<pid>/fd/<n>` after an unlink).
    pub fn reopen(&self, from: &OpenFiles, flags: OFlags) -> io::Result<Arc<OpenFiles>> {
        let _namespace = self.namespace_shared();
        let files = Arc::new(OpenFiles::new(self.copies.len()));
        self.mutate_where(
            "open",
            |i| from.get(i, &self.copies[i]).is_some(),
            |i, v| {
                let old = from
                    .get(i, &self.copies[i])
                    .ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))?;
                let f = v.reopen(&old.file, flags)?;
                files.set(i, old.generation, f);
                Ok(())
            },
        )?;
        self.open_files.add(&files);
        Ok(files)
    }

    /// `fstat` through a handle's files, on the active copy (failing over): the one way
    /// to see a file that is open but has no name any more.
    pub fn fstat(&self, files: &OpenFiles) -> io::Result<Stat> {
        self.read_file_op("fstat", files, |v, f| v.fstat(f))
    }

    /// `fchmod` through a handle's files (a file with no name left).
    pub fn fchmod(&self, files: &OpenFiles, mode: Mode) -> io::Result<()> {
        self.mutate_files("fchmod", files, |v, f| v.fchmod(f, mode))
    }

    /// `fchown` through a handle's files (a file with no name left).
    pub fn fchown(&self, files: &OpenFiles, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
        self.mutate_files("fchown", files, |v, f| v.fchown(f, uid, gid))
    }

    /// `futimens` through a handle's files (a file with no name left).
    pub fn set_file_times(&self, files: &OpenFiles, times: &Timestamps) -> io::Result<()> {
        self.mutate_files("futimens", files, |v, f| v.set_file_times(f, times))
    }

    fn open_on_copies(
        &self,
        op: &str,
        path: &Path,
        changes: bool,
        open: impl Fn(&Volume) -> io::Result<VolFile>,
    ) -> io::Result<Arc<OpenFiles>> {
        let files = Arc::new(OpenFiles::new(self.copies.len()));
        files.set_name(path);
        self.open_where(op, changes, |i, v| {
            let f = open(v)?;
            files.set(i, self.copies[i].placement().generation, f);
            Ok(())
        })?;
        self.open_files.add(&files);
        Ok(files)
    }

    /// Creates `path` with `make` (a directory, a special file, a symlink) on every copy
    /// that takes mutations, owned by `uid:gid`.
    pub fn make(
        &self,
        op: &str,
        path: &Path,
        owner: (u32, u32),
        make: impl Fn(&Volume, &Path) -> io::Result<()>,
    ) -> io::Result<()> {
        self.mutate(op, |_, v| {
            make(v, path)?;
            v.chown(path, Some(owner.0), Some(owner.1))
        })
    }

    /// Removes a file or an empty directory.
    pub fn remove(&self, path: &Path, dir: bool) -> io::Result<()> {
        let op = if dir { "rmdir" } else { "unlink" };
        self.mutate(op, |_, v| v.remove(path, dir))?;
        self.tap.meta(|m| m.removed(path));
        Ok(())
    }

    /// Renames with `renameat2` flags (`RENAME_NOREPLACE`, `RENAME_EXCHANGE`).
    pub fn rename(&self, from: &Path, to: &Path, flags: RenameFlags) -> io::Result<()> {
        self.mutate("rename", |_, v| v.rename(from, to, flags))?;
        self.tap
            .renamed(self, from, to, flags.contains(RenameFlags::EXCHANGE));
        Ok(())
    }

    /// Makes `to` a hard link of `from`.
    pub fn link(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.mutate("link", |_, v| v.link(from, to))?;
        self.tap.meta(|m| m.linked(from, to));
        Ok(())
    }

    /// Sets the size of `file`, through the handle's `files` when given (a file that is
    /// open but has no name any more has only those).
    pub fn truncate(
        &self,
        file: &dyn FileRef,
        files: Option<&OpenFiles>,
        size: u64,
    ) -> io::Result<()> {
        let _resize = file.io().resize.write();
        let path = file.path();
        let marks = &file.io().marks;
        // With checksums the new last block's sum changes with the size: logged first,
        // so that a crash between the two is repaired (see `Tap::resizing`).
        let m = self
            .sums
            .enabled()
            .then(|| self.tap.resizing(self, marks, || path.clone(), size));
        let done = self.truncate_copies(files, path.as_deref(), size);
        if let Some(m) = &m {
            self.tap.written(m, marks, size.saturating_sub(1), 1);
        }
        done?;
        if let Some(path) = path {
            self.tap.meta(|m| m.truncated(&path, size));
        }
        Ok(())
    }

    fn truncate_copies(
        &self,
        files: Option<&OpenFiles>,
        path: Option<&Path>,
        size: u64,
    ) -> io::Result<()> {
        match (files, path) {
            (Some(files), _) => {
                self.mutate_backing("truncate", files, |i, v, f| {
                    self.set_len_summed(i, v, f, size)
                })?;
            }
            (None, Some(path)) => {
                self.mutate("truncate", |i, v| self.truncate_summed(i, v, path, size))?
            }
            (None, None) => return Err(io::Error::from_raw_os_error(libc::ENOENT)),
        }
        Ok(())
    }

    /// `chmod` of `path`.
    pub fn chmod(&self, path: &Path, mode: Mode) -> io::Result<()> {
        self.mutate("chmod", |_, v| v.chmod(path, mode))
    }

    /// `lchown` of `path`.
    pub fn chown(&self, path: &Path, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
        self.mutate("chown", |_, v| v.chown(path, uid, gid))
    }

    /// Sets the times of `path`.
    pub fn set_times(&self, path: &Path, times: &Timestamps) -> io::Result<()> {
        self.mutate("utimens", |_, v| v.set_times(path, times))
    }

    /// Sets an xattr of `path`.
    pub fn set_xattr(
        &self,
        path: &Path,
        key: &std::ffi::OsStr,
        value: &[u8],
        flags: i32,
    ) -> io::Result<()> {
        self.mutate("setxattr", |_, v| v.set_xattr(path, key, value, flags))
    }

    /// Removes an xattr of `path`.
    pub fn remove_xattr(&self, path: &Path, key: &std::ffi::OsStr) -> io::Result<()> {
        self.mutate("removexattr", |_, v| v.remove_xattr(path, key))
    }

    /// Makes the directory `path`'s entries durable on every copy that takes mutations.
    pub fn fsyncdir(&self, path: &Path) -> io::Result<()> {
        self.mutate("fsyncdir", |_, v| {
            let d = v.open_file(path, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
            v.sync_file(&d, false)
        })
    }

    /// Writes `data` at `offset` of `file` (open as `files`) on every in-sync copy, and
    /// on the copy being seeded where it already has that range (see [`super::SeedFile`]).
    /// Overlapping writes are applied in the same order on every copy; the write's extent
    /// is in the activity log before any copy sees it.
    pub fn write(
        &self,
        file: &dyn FileRef,
        files: &OpenFiles,
        offset: u64,
        data: &[u8],
    ) -> io::Result<usize> {
        let io = file.io();
        let len = data.len() as u64;
        let written = {
            let _resize = io.resize.read();
            // Checksums need the order too: a write covering part of a block sums it with
            // the block's other bytes as they are.
            let _order =
                (self.copies.len() > 1 || self.sums.enabled()).then(|| io.lock_range(offset, len));
            let m = self.tap.begin();
            self.tap
                .data(self, &m, &io.marks, || file.path(), offset, len);
            // Decided under the range's stripe locks: see SeedFile.
            let to_seeding = self.seeding_index().is_some()
                && io
                    .seed
                    .lock()
                    .as_ref()
                    .is_none_or(|s| s.route_write(offset, len));
            let done = self.write_at(files, offset, data, to_seeding);
            self.tap.written(&m, &io.marks, offset, len);
            done
        };
        let written = match written {
            Ok(n) => n,
            Err(e) => {
                // Every in-sync copy refused it, each maybe after a part (a media error
                // would have failed the copy instead): the copies are made equal before
                // the caller hears of it.
                if self.copies.len() > 1 {
                    let _resize = io.resize.write();
                    self.equalize_after_refused_write(files, offset, data.len());
                }
                return Err(e);
            }
        };
        if let Some((from, len)) = io.run.note(offset, written as u64) {
            self.start_writeback(files, from, len);
        }
        Ok(written)
    }

    /// `fsync`/`fdatasync` of `file`: durable on every in-sync copy when it returns (and
    /// what it made durable leaves what a later failure must resync).
    pub fn fsync(&self, file: &dyn FileRef, files: &OpenFiles, datasync: bool) -> io::Result<()> {
        let marks = &file.io().marks;
        let began = self.tap.sync_begins(marks);
        self.sync_files(files, datasync)?;
        self.tap.synced(marks, || file.path(), began);
        Ok(())
    }

    /// `fallocate` of `[offset, offset+len)` with its mode bits (KEEP_SIZE, PUNCH_HOLE,
    /// COLLAPSE_RANGE, ...).
    pub fn fallocate(
        &self,
        file: &dyn FileRef,
        files: &OpenFiles,
        offset: u64,
        len: u64,
        mode: FallocateFlags,
    ) -> io::Result<()> {
        let io = file.io();
        let _resize = io.resize.write();
        if mode.intersects(FallocateFlags::COLLAPSE_RANGE | FallocateFlags::INSERT_RANGE) {
            // Data moves inside the file: a copy being seeded copies it again from here.
            if let Some(seed) = io.seed.lock().as_ref() {
                seed.rewind(offset);
            }
            self.tap.meta(|m| {
                if let Some(p) = file.path() {
                    m.reshaped(&p);
                }
            });
        }
        let m = self.tap.begin();
        let marked = self
            .tap
            .data_revocable(self, &m, &io.marks, || file.path(), offset, len);
        let done = self.mutate_backing("fallocate", files, |i, v, f| {
            self.fallocate_summed(i, v, f, mode, offset, len)
        });
        self.tap.written(&m, &io.marks, offset, len);
        // Refused by the active copy (EFBIG, ENOSPC, ...: not a media error, which fails
        // the copy and tries the next), the request reached no other copy: a lagging
        // copy's map must not keep it (a 4 EiB range its resync would visit).
        if let Err(e) = &done
            && !crate::volume::is_media_error(e)
            && e.raw_os_error() != Some(libc::EIO)
        {
            marked.revoke();
        }
        done
    }

    /// `lseek` (SEEK_DATA / SEEK_HOLE), answered by the active copy.
    pub fn seek(&self, files: &OpenFiles, pos: SeekFrom) -> io::Result<u64> {
        self.read_file_op("lseek", files, |v, f| v.seek(f, pos))
    }
}
