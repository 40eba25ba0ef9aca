//! Phase 1 of a reseed, with the database's namespace held exclusively (milliseconds):
//! the copy becomes `Seeding` on the target volume and the placement is persisted;
//! whatever the target held of the database is moved aside (SafeDeleteExistingFiles,
//! without the risk: deleted only once the new copy is verified); the source's tree is
//! recreated on the target, empty (directories, sparse files of the right size, hard
//! links, symlinks, owners, modes, xattrs, times); every open handle gets its file on
//! the new copy.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::names::CopySlot;
use crate::volume::{FileType, Mode, OFlags, Stat};

use super::{
    Progress, SeedError, SeedRequest, Source, check_folders, choose_source, copy_xattrs,
    dest_failed, give_up,
};
use crate::copyset::{Database, SeedFile};
use crate::events::{EventId, NewEvent};
use crate::fs::{Core, Node};
use crate::layout as names;
use crate::volume::{Volume, child_path};

/// One file (inode) to copy: its nodes (hard links share it) and seeding state.
pub(super) struct FileJob {
    pub(super) seed: Arc<SeedFile>,
    pub(super) nodes: Vec<Arc<Node>>,
}

impl FileJob {
    /// Where the file is now (it follows renames), `None` once every name is gone.
    pub(super) fn path(&self) -> Option<PathBuf> {
        self.nodes.iter().find_map(|n| n.path())
    }
}

/// What phase 1 made: the files to copy, the directories to sync, and where the target's
/// old files were moved.
pub(super) struct Layout {
    pub(super) files: Vec<FileJob>,
    pub(super) dirs: Vec<PathBuf>,
    pub(super) replaced: Option<PathBuf>,
    /// Files open with no name left, with an anonymous file on the target to fill
    /// ([`super::orphans`]).
    pub(super) orphans: Vec<Arc<Node>>,
}

/// Phase 1: returns the source copy and the layout. A refusal before the copy became
/// `Seeding` changed nothing; a failure after it gives the copy up (3019).
pub(super) fn lay_out(
    core: &Core,
    req: &SeedRequest,
    target: &Arc<Volume>,
    progress: &Progress,
) -> Result<(Source, Layout), SeedError> {
    let db = &req.db;
    let (source, laid) = {
        let _namespace = db.namespace_exclusive();
        let source = begin(core, req, target)?;
        progress.set_source(source.volume.name());
        let laid = Recreate::new(core, db, req.slot, &source.volume, target).run();
        (source, laid)
    };
    // The namespace is released before the copy is given up.
    let laid = laid.map_err(|e| give_up(core, req, &[], e))?;
    Ok((source, laid))
}

/// Picks the source, checks its folders, and moves the copy to the target in state
/// `Seeding` (persisted; event 3013 when the target is a spare).
fn begin(core: &Core, req: &SeedRequest, target: &Arc<Volume>) -> Result<Source, SeedError> {
    let pool = core.pool();
    let db = &req.db;
    let source = choose_source(db, req.slot, req.from.as_deref()).map_err(SeedError::Refused)?;
    let (naming_ok, split) = check_folders(&source.volume, &db.name);
    if !naming_ok || split {
        return Err(SeedError::Refused(format!(
            "the source copy on {} does not hold {} and {} as plain folders of the volume",
            source.volume.name(),
            names::db_folder(&db.name),
            names::log_folder(&db.name)
        )));
    }
    let old = db.copies()[req.slot].volume_name();
    pool.begin_seed(db, req.slot, &req.target, target.clone(), req.allow_in_sync)
        .map_err(SeedError::Refused)?;
    if old != req.target {
        pool.events().emit(
            NewEvent::new(
                EventId::SpareAssigned,
                format!(
                    "spare {} takes the place of {old} for {}: the placement is persisted, seeding follows",
                    req.target, db.name
                ),
            )
            .database(&db.name)
            .volume(&req.target)
            .field("replaces", old.as_str()),
        );
    }
    Ok(source)
}

/// The source's tree recreated on the target, entry by entry.
struct Recreate<'a> {
    core: &'a Core,
    db: &'a Database,
    slot: CopySlot,
    src: &'a Volume,
    dst: &'a Volume,
    files: Vec<FileJob>,
    /// Regular files by inode on the source: (index in `files`, first path), for links.
    by_inode: HashMap<(u64, u64), (usize, PathBuf)>,
    dirs: Vec<PathBuf>,
    /// Every entry made, with the source's stat, for the times set last.
    made: Vec<(PathBuf, Stat)>,
}

impl<'a> Recreate<'a> {
    fn new(
        core: &'a Core,
        db: &'a Database,
        slot: CopySlot,
        src: &'a Volume,
        dst: &'a Volume,
    ) -> Recreate<'a> {
        Recreate {
            core,
            db,
            slot,
            src,
            dst,
            files: Vec::new(),
            by_inode: HashMap::new(),
            dirs: Vec::new(),
            made: Vec::new(),
        }
    }

    fn run(mut self) -> Result<Layout, SeedError> {
        let replaced = self.set_aside()?;
        // The new copy's blocks are unknown to its checksums until written through the
        // mount or scrubbed: no sum of an earlier copy may describe its new files.
        self.db.sums().retire_copy(self.slot);
        crate::checksum::reset(self.dst, &self.db.name)
            .map_err(|e| self.dst_err(&crate::checksum::dir(&self.db.name), e))?;
        let mut todo: Vec<PathBuf> = names::db_folders(&self.db.name)
            .into_iter()
            .map(PathBuf::from)
            .collect();
        while let Some(path) = todo.pop() {
            self.entry(&path, &mut todo)?;
        }
        // Times last: creating children changed the directories'.
        for (path, st) in self.made.iter().rev() {
            let t = crate::volume::stat_times(st);
            self.dst
                .set_times(path, &t)
                .map_err(|e| self.dst_err(path, e))?;
        }
        let refreshed = self
            .core
            .refresh_handles(self.db, self.slot)
            .map_err(|e| self.dst_err(Path::new("(open handles)"), e))?;
        Ok(Layout {
            files: self.files,
            dirs: self.dirs,
            replaced,
            orphans: refreshed.orphans,
        })
    }

    /// SafeDeleteExistingFiles: what the target holds of this database is moved aside
    /// (`.reseedfs/replaced/<db>-<ms>`), deleted only once the new copy is verified.
    fn set_aside(&self) -> Result<Option<PathBuf>, SeedError> {
        let mut replaced = None;
        for folder in names::db_folders(&self.db.name) {
            let folder = PathBuf::from(folder);
            if self.dst.stat(&folder).is_err() {
                continue;
            }
            let stamp = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis();
            let aside = replaced.get_or_insert_with(|| {
                Path::new(names::META_DIR)
                    .join("replaced")
                    .join(format!("{}-{stamp}", self.db.name))
            });
            self.dst
                .mkdir_all(aside)
                .map_err(|e| self.dst_err(aside, e))?;
            self.dst
                .rename(
                    &folder,
                    &aside.join(&folder),
                    crate::volume::RenameFlags::NOREPLACE,
                )
                .map_err(|e| self.dst_err(&folder, e))?;
        }
        Ok(replaced)
    }

    /// Makes `path` on the target as it is on the source (a directory's children join
    /// `todo`); then its owner and xattrs.
    fn entry(&mut self, path: &Path, todo: &mut Vec<PathBuf>) -> Result<(), SeedError> {
        let (src, dst) = (self.src, self.dst);
        let st = src.stat(path).map_err(|e| self.src_err(path, e))?;
        let kind = FileType::from_raw_mode(st.st_mode);
        let mode = Mode::from_raw_mode(st.st_mode & 0o7777);
        match kind {
            FileType::Directory => {
                dst.mkdir(path, mode).map_err(|e| self.dst_err(path, e))?;
                for e in src.read_dir(path).map_err(|e| self.src_err(path, e))? {
                    todo.push(child_path(path, &e.name));
                }
                self.dirs.push(path.to_owned());
            }
            FileType::RegularFile => {
                if self.link(path, &st)? {
                    return Ok(());
                }
                self.file(path, &st, mode)?;
            }
            FileType::Symlink => {
                let target = src.readlink(path).map_err(|e| self.src_err(path, e))?;
                use crate::volume::OsStrExt;
                dst.symlink(Path::new(std::ffi::OsStr::from_bytes(&target)), path)
                    .map_err(|e| self.dst_err(path, e))?;
            }
            other => {
                dst.mknod(path, other, mode, st.st_rdev)
                    .map_err(|e| self.dst_err(path, e))?;
            }
        }
        dst.chown(path, Some(st.st_uid), Some(st.st_gid))
            .map_err(|e| self.dst_err(path, e))?;
        if kind != FileType::Symlink {
            // After the owner: a chown clears setuid and setgid, the mode restores them.
            dst.chmod(path, mode).map_err(|e| self.dst_err(path, e))?;
            copy_xattrs(src, dst, path)?;
        }
        self.made.push((path.to_owned(), st));
        Ok(())
    }

    /// A further name of a file already made: linked to it on the target; true if so.
    fn link(&mut self, path: &Path, st: &Stat) -> Result<bool, SeedError> {
        let key = (st.st_dev, st.st_ino);
        let Some((job, first)) = self.by_inode.get(&key).filter(|_| st.st_nlink > 1) else {
            return Ok(false);
        };
        self.dst
            .link(first, path)
            .map_err(|e| self.dst_err(path, e))?;
        let job = &mut self.files[*job];
        // A link made through the mount shares its node; one found on disk may have its
        // own.
        if let Some(n) = self
            .core
            .seed_node(self.db.index, path.to_owned(), &job.seed)
        {
            if !job.nodes.iter().any(|m| Arc::ptr_eq(m, &n)) {
                job.nodes.push(n);
            }
        }
        Ok(true)
    }

    /// A regular file: created empty and sparse at its size, to be copied in phase 2.
    fn file(&mut self, path: &Path, st: &Stat, mode: Mode) -> Result<(), SeedError> {
        let f = self
            .dst
            .open_file(path, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL, mode)
            .map_err(|e| self.dst_err(path, e))?;
        f.set_len(st.st_size as u64)
            .map_err(|e| self.dst_err(path, e))?;
        let seed = Arc::new(SeedFile::new());
        let nodes = self
            .core
            .seed_node(self.db.index, path.to_owned(), &seed)
            .into_iter()
            .collect();
        self.by_inode
            .insert((st.st_dev, st.st_ino), (self.files.len(), path.to_owned()));
        self.files.push(FileJob { seed, nodes });
        Ok(())
    }

    fn src_err(&self, p: &Path, e: io::Error) -> SeedError {
        SeedError::Source(format!(
            "reading {}/{}: {e}",
            self.src.root().display(),
            p.display()
        ))
    }

    fn dst_err(&self, p: &Path, e: io::Error) -> SeedError {
        dest_failed(
            self.db,
            self.slot,
            &format!("reseed layout {}", p.display()),
            e,
        )
    }
}
