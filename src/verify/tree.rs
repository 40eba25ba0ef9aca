//! The tree pass of an online verification: `<db>.db/` and `<db>.log/` walked on the
//! active copy and every other in-sync copy, each directory's entries compared in
//! batches with the database's namespace held exclusively (no create, rename, chmod or
//! open in between, for milliseconds), so that a mutation in flight never looks like a
//! difference. Names, kinds, modes, owners, symlink targets and xattrs are compared; not
//! times, and not directory sizes, which depend on each directory's history.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use crate::volume::{FileType, Mode, Stat};

use super::{DIR_BATCH, FileGroup, Run, TreeField, VerifyError, stat_opt};
use crate::layout;
use crate::volume::{Volume, child_path};

/// The names in `dir`; none when it is gone or no directory (any more).
fn names(v: &Volume, dir: &Path) -> io::Result<BTreeSet<OsString>> {
    match v.read_dir(dir) {
        Ok(list) => Ok(list.into_iter().map(|e| e.name).collect()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
            Ok(BTreeSet::new())
        }
        Err(e) => Err(e),
    }
}

/// Every xattr of `rel` (none where the filesystem has none), by raw name.
pub(super) fn xattrs(v: &Volume, rel: &Path) -> io::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    use crate::volume::OsStrExt;
    Ok(v.xattrs(rel)?
        .into_iter()
        .map(|(k, val)| (k.as_bytes().to_vec(), val))
        .collect())
}

fn kind_name(mode: u32) -> &'static str {
    match FileType::from_raw_mode(mode) {
        FileType::RegularFile => "file",
        FileType::Directory => "directory",
        FileType::Symlink => "symlink",
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "char device",
        FileType::BlockDevice => "block device",
        FileType::Unknown => "unknown",
    }
}

fn xattr_names(m: &BTreeMap<Vec<u8>, Vec<u8>>) -> String {
    let keys: Vec<String> = m
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    if keys.is_empty() {
        "none".into()
    } else {
        keys.join(",")
    }
}

impl Run<'_> {
    /// Walks both trees; returns the regular files of the active copy.
    pub(super) fn tree_pass(&mut self) -> Result<Vec<FileGroup>, VerifyError> {
        let mut files: Vec<FileGroup> = Vec::new();
        let mut by_inode: HashMap<(u64, u64), usize> = HashMap::new();
        let roots: Vec<PathBuf> = layout::db_folders(&self.db.name)
            .into_iter()
            .map(PathBuf::from)
            .collect();
        // The two folders themselves, then each directory's entries.
        let mut todo = Vec::new();
        {
            let _namespace = self.db.namespace_exclusive();
            for r in &roots {
                self.compare_entry(r, &mut files, &mut by_inode, &mut todo)?;
            }
        }
        while let Some(dir) = todo.pop() {
            self.check_copies()?;
            self.report.directories += 1;
            let common = {
                let _namespace = self.db.namespace_exclusive();
                self.compare_listing(&dir)?
            };
            for batch in common.chunks(DIR_BATCH) {
                self.check_copies()?;
                let _namespace = self.db.namespace_exclusive();
                for name in batch {
                    self.compare_entry(
                        &child_path(&dir, name),
                        &mut files,
                        &mut by_inode,
                        &mut todo,
                    )?;
                }
            }
        }
        let total = files
            .iter()
            .filter_map(|f| f.paths.first())
            .filter_map(|p| self.active.volume.stat(p).ok())
            .map(|st| st.st_size as u64)
            .sum();
        self.progress.job.set_total(total);
        Ok(files)
    }

    /// The names of `dir` on every copy (namespace held). Names found on a peer only are
    /// reported (names missing on a peer are, entry by entry); returns the active copy's.
    fn compare_listing(&mut self, dir: &Path) -> Result<Vec<OsString>, VerifyError> {
        let on_active =
            names(&self.active.volume, dir).map_err(|e| self.copy_error(None, "list", dir, e))?;
        for i in 0..self.peers.len() {
            if self.skip(i, dir) {
                continue;
            }
            let theirs = names(&self.peers[i].volume, dir)
                .map_err(|e| self.copy_error(Some(i), "list", dir, e))?;
            for n in theirs.difference(&on_active) {
                let path = child_path(dir, n);
                self.mismatch(
                    &path,
                    i,
                    TreeField::Extra,
                    "missing".into(),
                    "present".into(),
                    false,
                );
            }
        }
        Ok(on_active.into_iter().collect())
    }

    /// Compares one entry on every copy (namespace held): kind, mode, owner, symlink
    /// target, xattrs; repairs what can be. A regular file joins `files`, a directory
    /// `todo`.
    fn compare_entry(
        &mut self,
        path: &Path,
        files: &mut Vec<FileGroup>,
        by_inode: &mut HashMap<(u64, u64), usize>,
        todo: &mut Vec<PathBuf>,
    ) -> Result<(), VerifyError> {
        let active = self.active.volume.clone();
        let Some(a) =
            stat_opt(&active, path).map_err(|e| self.copy_error(None, "stat", path, e))?
        else {
            // Removed since the listing: a removal reaches every copy within one hold
            // of the namespace, so a copy that still has it has one too many.
            for i in 0..self.peers.len() {
                if self.skip(i, path) {
                    continue;
                }
                let v = self.peers[i].volume.clone();
                if stat_opt(&v, path)
                    .map_err(|e| self.copy_error(Some(i), "stat", path, e))?
                    .is_some()
                {
                    let (a, o) = ("missing".into(), "present".into());
                    self.mismatch(path, i, TreeField::Extra, a, o, false);
                    self.absent[i].insert(path.to_owned());
                }
            }
            return Ok(());
        };
        let kind = FileType::from_raw_mode(a.st_mode);
        let a_xattrs = if kind == FileType::Symlink {
            BTreeMap::new()
        } else {
            xattrs(&active, path).map_err(|e| self.copy_error(None, "read xattrs of", path, e))?
        };
        let a_link = if kind == FileType::Symlink {
            Some(
                active
                    .readlink(path)
                    .map_err(|e| self.copy_error(None, "readlink", path, e))?,
            )
        } else {
            None
        };
        for i in 0..self.peers.len() {
            if self.skip(i, path) {
                continue;
            }
            let v = self.peers[i].volume.clone();
            let Some(b) =
                stat_opt(&v, path).map_err(|e| self.copy_error(Some(i), "stat", path, e))?
            else {
                self.mismatch(
                    path,
                    i,
                    TreeField::Missing,
                    "present".into(),
                    "missing".into(),
                    false,
                );
                self.absent[i].insert(path.to_owned());
                continue;
            };
            if FileType::from_raw_mode(b.st_mode) != kind {
                self.mismatch(
                    path,
                    i,
                    TreeField::Kind,
                    kind_name(a.st_mode).into(),
                    kind_name(b.st_mode).into(),
                    false,
                );
                self.absent[i].insert(path.to_owned());
                continue;
            }
            self.compare_attrs(path, i, &a, &b, &a_xattrs, a_link.as_deref())?;
        }
        match kind {
            FileType::Directory => todo.push(path.to_owned()),
            FileType::RegularFile => match by_inode.get(&(a.st_dev, a.st_ino)) {
                Some(&k) => files[k].paths.push(path.to_owned()),
                None => {
                    by_inode.insert((a.st_dev, a.st_ino), files.len());
                    files.push(FileGroup {
                        paths: vec![path.to_owned()],
                    });
                }
            },
            _ => {}
        }
        Ok(())
    }

    /// Mode, owner, symlink target and xattrs of `path` on peer `i` against the active
    /// copy's (namespace held); repaired when asked and possible.
    fn compare_attrs(
        &mut self,
        path: &Path,
        i: usize,
        a: &Stat,
        b: &Stat,
        a_xattrs: &BTreeMap<Vec<u8>, Vec<u8>>,
        a_link: Option<&[u8]>,
    ) -> Result<(), VerifyError> {
        let v = self.peers[i].volume.clone();
        let repair = self.opts.repair;
        // Owner first: a chown clears setuid and setgid, which the mode then restores.
        if (a.st_uid, a.st_gid) != (b.st_uid, b.st_gid) {
            let want = a.st_mode & 0o7777;
            let mut repaired = repair
                && v.chown(path, Some(a.st_uid), Some(a.st_gid)).is_ok()
                && v.stat(path)
                    .is_ok_and(|st| (st.st_uid, st.st_gid) == (a.st_uid, a.st_gid));
            // The mode was right before the chown cleared setuid/setgid: put them back
            // (a mode that was wrong is reported and repaired below).
            if repaired && a_link.is_none() && b.st_mode & 0o7777 == want {
                repaired = v.stat(path).is_ok_and(|st| st.st_mode & 0o7777 == want)
                    || (v.chmod(path, Mode::from_raw_mode(want)).is_ok()
                        && v.stat(path).is_ok_and(|st| st.st_mode & 0o7777 == want));
            }
            self.mismatch(
                path,
                i,
                TreeField::Owner,
                format!("{}:{}", a.st_uid, a.st_gid),
                format!("{}:{}", b.st_uid, b.st_gid),
                repaired,
            );
        }
        if let Some(target) = a_link {
            let theirs = v
                .readlink(path)
                .map_err(|e| self.copy_error(Some(i), "readlink", path, e))?;
            if theirs != target {
                let s = |t: &[u8]| String::from_utf8_lossy(t).into_owned();
                self.mismatch(
                    path,
                    i,
                    TreeField::SymlinkTarget,
                    s(target),
                    s(&theirs),
                    false,
                );
            }
            // A symlink's mode is always 0777 and it has no xattrs of its own to compare.
        } else if a.st_mode & 0o7777 != b.st_mode & 0o7777 {
            let want = a.st_mode & 0o7777;
            let repaired = repair
                && v.chmod(path, Mode::from_raw_mode(want)).is_ok()
                && v.stat(path).is_ok_and(|st| st.st_mode & 0o7777 == want);
            self.mismatch(
                path,
                i,
                TreeField::Mode,
                format!("{want:04o}"),
                format!("{:04o}", b.st_mode & 0o7777),
                repaired,
            );
        }
        if a_link.is_none() {
            let theirs = xattrs(&v, path)
                .map_err(|e| self.copy_error(Some(i), "read xattrs of", path, e))?;
            if &theirs != a_xattrs {
                let repaired = repair && self.repair_xattrs(path, &v, a_xattrs, &theirs);
                self.mismatch(
                    path,
                    i,
                    TreeField::Xattrs,
                    xattr_names(a_xattrs),
                    xattr_names(&theirs),
                    repaired,
                );
            }
        }
        Ok(())
    }
}
