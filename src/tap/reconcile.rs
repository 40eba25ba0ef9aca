//! Bringing one copy's tree in line with another's, and copying byte ranges between two
//! copies of a file: what crash repair and incremental resync are made of.
//!
//! The tree pass compares metadata only (names, kinds, sizes, modes, owners, link
//! targets, hard links, xattrs, times) and never reads file data; it reports the files it
//! created or grew, whose data must then be copied.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use super::dirty::MetaOp;
use crate::layout;
use crate::names::DbName;
use crate::volume::lane::{Side, Watch};
use crate::volume::{
    FileExt, FileType, Mode, OFlags, OsStrExt, RenameFlags, Stat, Volume, child_path, data_extents,
    read_full,
};

/// Which side an error came from.
#[derive(Debug, thiserror::Error)]
pub enum SideError {
    /// Reading the copy that is right.
    #[error("{0}")]
    Source(io::Error),
    /// Changing the copy being repaired.
    #[error("{0}")]
    Dest(io::Error),
}

/// What a tree pass changed on the destination.
#[derive(Debug, Default)]
pub struct TreeReport {
    /// Files created (their data must be copied whole).
    pub created: Vec<PathBuf>,
    /// Files that grew: `(path, old size)`; the range after the old size is copied.
    pub grown: Vec<(PathBuf, u64)>,
    /// Entries removed from the destination (not on the source).
    pub removed: Vec<PathBuf>,
    /// Entries whose metadata was changed.
    pub fixed: usize,
}

impl TreeReport {
    /// Anything changed.
    pub fn changed(&self) -> usize {
        self.created.len() + self.grown.len() + self.removed.len() + self.fixed
    }
}

/// Replays namespace operations on a copy that missed them; an operation that does not
/// apply any more (its path is gone) is skipped: the tree pass settles the rest.
pub fn replay(dst: &Volume, ops: &[MetaOp]) -> Result<usize, SideError> {
    let mut applied = 0;
    for op in ops {
        let r = match op {
            MetaOp::Remove(p) => dst.remove_tree(p),
            MetaOp::Rename { from, to, exchange } => {
                let flags = if *exchange {
                    RenameFlags::EXCHANGE
                } else {
                    RenameFlags::empty()
                };
                dst.rename(from, to, flags)
            }
            MetaOp::Link { from, to } => dst.link(from, to),
        };
        match r {
            Ok(()) => applied += 1,
            Err(e) if crate::volume::is_media_error(&e) => return Err(SideError::Dest(e)),
            Err(_) => {}
        }
    }
    Ok(applied)
}

fn kind(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

/// Makes `dst`'s tree of database `db` match `src`'s (metadata only).
pub fn tree(src: &Volume, dst: &Volume, db: &DbName) -> Result<TreeReport, SideError> {
    let s = |e| SideError::Source(e);
    let d = |e| SideError::Dest(e);
    let mut report = TreeReport::default();
    let mut links: HashMap<u64, PathBuf> = HashMap::new();
    let mut todo: Vec<PathBuf> = layout::db_folders(db)
        .into_iter()
        .map(PathBuf::from)
        .collect();
    let mut times = Vec::new();
    while let Some(path) = todo.pop() {
        let a = src.stat(&path).map_err(s)?;
        let mut b = match dst.stat(&path) {
            Ok(b) => Some(b),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => None,
            Err(e) => return Err(d(e)),
        };
        let same_kind = b.as_ref().is_some_and(|b| kind(b) == kind(&a));
        let symlink_differs = same_kind
            && kind(&a) == FileType::Symlink
            && src.readlink(&path).map_err(s)? != dst.readlink(&path).map_err(d)?;
        if b.is_some() && (!same_kind || symlink_differs) {
            dst.remove_tree(&path).map_err(d)?;
            report.removed.push(path.clone());
            b = None;
        }
        // Hard links: the second name of a source inode must name the same file here.
        if kind(&a) == FileType::RegularFile && a.st_nlink > 1 {
            if let Some(first) = links.get(&a.st_ino) {
                let first_ino = dst.stat(first).map_err(d)?.st_ino;
                if b.as_ref().is_none_or(|b| b.st_ino != first_ino) {
                    if b.is_some() {
                        dst.remove(&path, false).map_err(d)?;
                    }
                    dst.link(first, &path).map_err(d)?;
                    report.fixed += 1;
                }
                continue;
            }
            links.insert(a.st_ino, path.clone());
        }
        let mode = Mode::from_raw_mode(a.st_mode & 0o7777);
        match (kind(&a), &b) {
            (FileType::Directory, None) => {
                dst.mkdir(&path, mode).map_err(d)?;
                report.fixed += 1;
            }
            (FileType::RegularFile, None) => {
                let f = dst
                    .open_file(&path, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL, mode)
                    .map_err(d)?;
                f.set_len(a.st_size as u64).map_err(d)?;
                report.created.push(path.clone());
            }
            (FileType::RegularFile, Some(b)) if b.st_size != a.st_size => {
                dst.truncate(&path, a.st_size as u64).map_err(d)?;
                if b.st_size < a.st_size {
                    report.grown.push((path.clone(), b.st_size as u64));
                } else {
                    report.fixed += 1;
                }
            }
            (FileType::Symlink, None) => {
                let target = src.readlink(&path).map_err(s)?;
                dst.symlink(Path::new(std::ffi::OsStr::from_bytes(&target)), &path)
                    .map_err(d)?;
                report.fixed += 1;
            }
            (other, None) if other != FileType::Directory => {
                dst.mknod(&path, other, mode, a.st_rdev).map_err(d)?;
                report.fixed += 1;
            }
            _ => {}
        }
        let mut b = dst.stat(&path).map_err(d)?;
        // Owner first: a chown clears setuid and setgid, so the mode is compared (and
        // restored) after it, on a fresh stat.
        if (b.st_uid, b.st_gid) != (a.st_uid, a.st_gid) {
            dst.chown(&path, Some(a.st_uid), Some(a.st_gid))
                .map_err(d)?;
            report.fixed += 1;
            b = dst.stat(&path).map_err(d)?;
        }
        if kind(&a) != FileType::Symlink {
            if b.st_mode & 0o7777 != a.st_mode & 0o7777 {
                dst.chmod(&path, mode).map_err(d)?;
                report.fixed += 1;
            }
            let (xa, xb) = (src.xattrs(&path).map_err(s)?, dst.xattrs(&path).map_err(d)?);
            if xa != xb {
                for (k, _) in xb.iter().filter(|(k, _)| !xa.iter().any(|(ka, _)| ka == k)) {
                    dst.remove_xattr(&path, k).map_err(d)?;
                }
                for (k, v) in &xa {
                    dst.set_xattr(&path, k, v, 0).map_err(d)?;
                }
                report.fixed += 1;
            }
        }
        if kind(&a) == FileType::Directory {
            let names = |v: &Volume| -> io::Result<Vec<OsString>> {
                Ok(v.read_dir(&path)?.into_iter().map(|e| e.name).collect())
            };
            let na = names(src).map_err(s)?;
            for extra in names(dst)
                .map_err(d)?
                .into_iter()
                .filter(|n| !na.contains(n))
            {
                let p = child_path(&path, &extra);
                dst.remove_tree(&p).map_err(d)?;
                report.removed.push(p);
            }
            todo.extend(na.iter().map(|n| child_path(&path, n)));
        }
        let mtimes = |st: &Stat| (st.st_mtime, st.st_mtime_nsec);
        if mtimes(&a) != mtimes(&b) || kind(&a) == FileType::Directory {
            times.push((path, a));
        }
    }
    // Times last: changing children changed the directories'.
    for (path, st) in times.iter().rev() {
        let t = crate::volume::stat_times(st);
        if kind(st) != FileType::Symlink {
            dst.set_times(path, &t).map_err(d)?;
        }
    }
    Ok(report)
}

/// Copies `[offset, offset+len)` of `src` onto `dst` as the source has it: data copied,
/// holes punched. Returns the bytes of data copied.
pub fn copy_extent(src: &File, dst: &File, offset: u64, len: u64) -> Result<u64, SideError> {
    copy_extent_watched(src, dst, offset, len, &Watch::new())
}

/// [`copy_extent`], each read and write reported to `w` (the caller's deadline for a
/// hung volume, see `volume::lane::Watch`); stops when the caller gave up.
pub fn copy_extent_watched(
    src: &File,
    dst: &File,
    offset: u64,
    len: u64,
    w: &Watch,
) -> Result<u64, SideError> {
    let size = w
        .on(Side::Source, || src.metadata())
        .map_err(SideError::Source)?
        .len();
    let end = (offset + len).min(size);
    if end <= offset {
        return Ok(0);
    }
    let extents = w
        .on(Side::Source, || data_extents(src, offset, end))
        .map_err(SideError::Source)?;
    let mut pos = offset;
    let mut copied = 0;
    let mut buf = vec![0u8; (end - offset).min(1 << 20) as usize];
    let stops = extents
        .iter()
        .map(|e| (e.offset, e.len))
        .chain(std::iter::once((end, 0)));
    for (off, elen) in stops {
        if off > pos {
            w.on(Side::Dest, || {
                crate::volume::punch_hole(dst, pos, off - pos)
            })
            .map_err(SideError::Dest)?;
        }
        let mut done = 0;
        while done < elen {
            w.check().map_err(SideError::Dest)?;
            let n = ((elen - done) as usize).min(buf.len());
            let got = w
                .on(Side::Source, || read_full(src, off + done, &mut buf[..n]))
                .map_err(SideError::Source)?;
            if got == 0 {
                break;
            }
            w.on(Side::Dest, || dst.write_all_at(&buf[..got], off + done))
                .map_err(SideError::Dest)?;
            done += got as u64;
        }
        copied += done;
        pos = off + elen;
    }
    Ok(copied)
}

/// Compares `[offset, offset+len)` of two copies of a file block by block (4 KiB) and
/// rewrites the blocks of `dst` that differ from `src`. Returns (bytes read from each,
/// bytes rewritten).
pub fn repair_extent(
    src: &File,
    dst: &File,
    offset: u64,
    len: u64,
) -> Result<(u64, u64), SideError> {
    const BLOCK: usize = 4096;
    let mut a = vec![0u8; len.min(4 << 20) as usize];
    let mut b = vec![0u8; a.len()];
    let mut pos = offset;
    let (mut read, mut fixed) = (0, 0);
    while pos < offset + len {
        let n = ((offset + len - pos) as usize).min(a.len());
        let na = read_full(src, pos, &mut a[..n]).map_err(SideError::Source)?;
        let nb = read_full(dst, pos, &mut b[..n]).map_err(SideError::Dest)?;
        read += na as u64;
        if na == 0 {
            break;
        }
        for start in (0..na).step_by(BLOCK) {
            let end = (start + BLOCK).min(na);
            if end > nb || a[start..end] != b[start..end] {
                dst.write_all_at(&a[start..end], pos + start as u64)
                    .map_err(SideError::Dest)?;
                fixed += (end - start) as u64;
            }
        }
        pos += na as u64;
    }
    Ok((read, fixed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(tag: &str) -> (PathBuf, Volume) {
        let dir =
            std::env::temp_dir().join(format!("reseedfs-reconcile-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("db.db/sub")).expect("mkdir");
        std::fs::create_dir_all(dir.join("db.log")).expect("mkdir");
        let name = if tag == "src" { "Volume1" } else { "Volume2" };
        let v = Volume::open(name, &dir).expect("open");
        (dir, v)
    }

    #[test]
    fn tree_pass_makes_the_destination_match() {
        let (a, src) = volume("src");
        let (b, dst) = volume("dst");
        std::fs::write(a.join("db.db/same"), b"same").expect("w");
        std::fs::write(b.join("db.db/same"), b"same").expect("w");
        std::fs::write(a.join("db.db/new"), vec![1u8; 10000]).expect("w");
        std::fs::write(a.join("db.db/grow"), vec![2u8; 9000]).expect("w");
        std::fs::write(b.join("db.db/grow"), vec![2u8; 100]).expect("w");
        std::fs::write(b.join("db.db/extra"), b"x").expect("w");
        std::fs::hard_link(a.join("db.db/new"), a.join("db.db/sub/link")).expect("link");
        std::os::unix::fs::symlink("new", a.join("db.log/sym")).expect("symlink");
        let r = tree(&src, &dst, &crate::names::DbName::from_static("db")).expect("tree");
        // One of the two names of the hard-linked file is created, the other linked to it.
        assert_eq!(r.created.len(), 1, "{:?}", r.created);
        assert_eq!(r.grown, vec![(PathBuf::from("db.db/grow"), 100)]);
        assert_eq!(r.removed, vec![PathBuf::from("db.db/extra")]);
        let size = |p: &str| std::fs::metadata(b.join(p)).expect("stat").len();
        assert_eq!(size("db.db/new"), 10000);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(b.join("db.db/new")).expect("m").ino(),
            std::fs::metadata(b.join("db.db/sub/link"))
                .expect("m")
                .ino()
        );
        assert_eq!(
            std::fs::read_link(b.join("db.log/sym")).expect("readlink"),
            PathBuf::from("new")
        );
        // A second pass finds nothing to do.
        assert_eq!(
            tree(&src, &dst, &crate::names::DbName::from_static("db"))
                .expect("tree")
                .changed(),
            0
        );
        // Data: copied as ranges, then compared block by block.
        let open = |v: &Volume, w: bool| {
            let flags = if w { OFlags::RDWR } else { OFlags::RDONLY };
            v.open_file(Path::new("db.db/new"), flags, Mode::empty())
                .expect("open")
        };
        assert_eq!(
            copy_extent(&open(&src, false), &open(&dst, true), 0, 10000).expect("copy"),
            10000
        );
        std::fs::write(b.join("db.db/same"), b"sane").expect("w");
        let f = |v: &Volume| v.open_file(Path::new("db.db/same"), OFlags::RDWR, Mode::empty());
        let (read, fixed) =
            repair_extent(&f(&src).expect("o"), &f(&dst).expect("o"), 0, 4).expect("repair");
        assert_eq!((read, fixed), (4, 4));
        assert_eq!(std::fs::read(b.join("db.db/same")).expect("r"), b"same");
        let _ = std::fs::remove_dir_all(a);
        let _ = std::fs::remove_dir_all(b);
    }
}
