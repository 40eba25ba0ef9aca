//! The node table: ids for paths, stable while the mount lives.
//!
//! A node id is given to a path on first sight and kept for it: renames move the id
//! with the path (a directory's whole subtree moves), hard links add a path to an id,
//! unlink removes one. Ids are never reused.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::copyset::{FileIo, FileRef, OpenFiles};
use crate::names::DbName;

/// A node (inode) of the mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u64);

impl NodeId {
    /// The root of the mount.
    pub const ROOT: NodeId = NodeId(1);
}

/// Where a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The mount's root.
    Root,
    /// A database's directory (by database index).
    DbDir(usize),
    /// A backing file or directory of a database (by index).
    Backing(usize),
}

/// One node.
#[derive(Debug)]
pub struct Node {
    /// Where it is.
    pub place: Place,
    paths: Mutex<Vec<PathBuf>>,
    /// The file's link count when it was last stated (`u64::MAX`: never).
    links: AtomicU64,
    /// Whether the file is known to have neither setuid nor setgid (bit 0), and how often
    /// its mode changed (the other bits): see [`Node::privs_unknown`].
    privs: AtomicU64,
    /// The backing files of the node's open handles (weakly: a handle owns its files). A
    /// node whose last name is gone is reached through them only.
    open: Mutex<Vec<Weak<OpenFiles>>>,
    /// The copy set's per-file locks and marks.
    pub io: FileIo,
}

impl FileRef for Node {
    fn io(&self) -> &FileIo {
        &self.io
    }

    fn path(&self) -> Option<PathBuf> {
        Node::path(self)
    }
}

impl Node {
    /// Its volume-relative path (the first of its hard links), if it still has one.
    pub fn path(&self) -> Option<PathBuf> {
        self.paths.lock().first().cloned()
    }

    /// Whether every name (hard link) of its file is a name of this node, as far as the
    /// last stat of the file says: hard links made before the mount get a node per name.
    pub fn has_every_name(&self) -> bool {
        self.links.load(Ordering::Relaxed) <= self.paths.lock().len() as u64
    }

    /// The file's link count, as a stat of it just said.
    pub fn saw_links(&self, links: u64) {
        self.links.store(links, Ordering::Relaxed);
    }

    /// `None` when the file is known to have neither setuid nor setgid, so that a write
    /// has none to clear; else a token for [`Node::privs_cleared`]. Known only while
    /// every name of the file is this node's: a chmod through another node (a hard link
    /// made before the mount) would not reach this one.
    pub fn privs_unknown(&self) -> Option<u64> {
        let v = self.privs.load(Ordering::Acquire);
        (v & 1 == 0 || !self.has_every_name()).then_some(v & !1)
    }

    /// A stat taken after `token` (from [`Node::privs_unknown`]) found neither setuid
    /// nor setgid, or they were cleared: known from now on, unless the mode changed since
    /// the token was taken.
    pub fn privs_cleared(&self, token: u64) {
        let _ = self
            .privs
            .compare_exchange(token, token | 1, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The file's mode was set: whether it has setuid or setgid is unknown again.
    pub fn mode_changed(&self) {
        let _ = self
            .privs
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| Some((v & !1) + 2));
    }

    /// Remembers the backing files of a handle opened on this node.
    pub fn add_open(&self, files: &Arc<OpenFiles>) {
        let mut open = self.open.lock();
        open.retain(|w| w.strong_count() > 0);
        open.push(Arc::downgrade(files));
    }

    /// The backing files of the node's handles still open, oldest first.
    pub fn open_files(&self) -> Vec<Arc<OpenFiles>> {
        let mut open = self.open.lock();
        open.retain(|w| w.strong_count() > 0);
        open.iter().filter_map(Weak::upgrade).collect()
    }

    /// The backing files of one handle still open on the node, if any.
    pub fn any_open_files(&self) -> Option<Arc<OpenFiles>> {
        self.open.lock().iter().find_map(Weak::upgrade)
    }
}

/// All nodes of a mount.
#[derive(Debug)]
pub struct Table {
    by_id: HashMap<NodeId, (Arc<Node>, u64)>,
    by_path: BTreeMap<(usize, PathBuf), NodeId>,
    db_dirs: Vec<NodeId>,
    next: u64,
}

impl Table {
    /// A table with the root and one directory per database.
    pub fn new(dbs: &[DbName]) -> Table {
        let mut t = Table {
            by_id: HashMap::new(),
            by_path: BTreeMap::new(),
            db_dirs: Vec::new(),
            next: 2,
        };
        t.insert(NodeId::ROOT, Place::Root, Vec::new());
        for i in 0..dbs.len() {
            let id = t.fresh();
            t.insert(id, Place::DbDir(i), Vec::new());
            t.db_dirs.push(id);
        }
        t
    }

    fn fresh(&mut self) -> NodeId {
        let id = NodeId(self.next);
        self.next += 1;
        id
    }

    fn insert(&mut self, id: NodeId, place: Place, paths: Vec<PathBuf>) {
        let node = Node {
            place,
            paths: Mutex::new(paths),
            links: AtomicU64::new(u64::MAX),
            privs: AtomicU64::new(0),
            open: Mutex::new(Vec::new()),
            io: FileIo::default(),
        };
        self.by_id.insert(id, (Arc::new(node), 0));
    }

    /// The node `id`.
    pub fn get(&self, id: NodeId) -> Option<Arc<Node>> {
        self.by_id.get(&id).map(|(n, _)| n.clone())
    }

    /// The directory node of database `db`; counts a lookup when `lookup`.
    pub fn db_dir(&mut self, db: usize, lookup: bool) -> NodeId {
        let id = self.db_dirs[db];
        if lookup {
            if let Some(e) = self.by_id.get_mut(&id) {
                e.1 += 1;
            }
        }
        id
    }

    /// The node of `path` in database `db`, made if new; counts a lookup when `lookup`.
    pub fn intern(&mut self, db: usize, path: PathBuf, lookup: bool) -> NodeId {
        let key = (db, path);
        let id = match self.by_path.get(&key) {
            Some(&id) => id,
            None => {
                let id = self.fresh();
                self.insert(id, Place::Backing(db), vec![key.1.clone()]);
                self.by_path.insert(key, id);
                id
            }
        };
        if lookup {
            if let Some(e) = self.by_id.get_mut(&id) {
                e.1 += 1;
            }
        }
        id
    }

    /// The kernel dropped `n` references to `id`. A node with no path and no reference
    /// left is removed.
    pub fn forget(&mut self, id: NodeId, n: u64) {
        if let Some(e) = self.by_id.get_mut(&id) {
            e.1 = e.1.saturating_sub(n);
            if e.1 == 0 && e.0.paths.lock().is_empty() && matches!(e.0.place, Place::Backing(_)) {
                self.by_id.remove(&id);
            }
        }
    }

    /// `path` was unlinked or removed.
    pub fn unlinked(&mut self, db: usize, path: &Path) {
        if let Some(id) = self.by_path.remove(&(db, path.to_owned())) {
            if let Some((node, _)) = self.by_id.get(&id) {
                node.paths.lock().retain(|p| p != path);
            }
        }
    }

    /// `to` is a new hard link of `id`; the reply counts as a kernel reference.
    pub fn linked(&mut self, id: NodeId, db: usize, to: PathBuf) {
        if let Some((node, lookups)) = self.by_id.get_mut(&id) {
            node.paths.lock().push(to.clone());
            *lookups += 1;
        }
        self.by_path.insert((db, to), id);
    }

    /// Takes every path equal to `root` or under it out of the table.
    fn take_subtree(&mut self, db: usize, root: &Path) -> Vec<(PathBuf, NodeId)> {
        let keys: Vec<(usize, PathBuf)> = self
            .by_path
            .range((db, root.to_owned())..)
            .take_while(|((d, p), _)| *d == db && p.starts_with(root))
            .map(|(k, _)| k.clone())
            .collect();
        keys.into_iter()
            .filter_map(|k| self.by_path.remove(&k).map(|id| (k.1, id)))
            .collect()
    }

    fn put_subtree(&mut self, db: usize, from: &Path, to: &Path, moved: Vec<(PathBuf, NodeId)>) {
        for (old, id) in moved {
            let rest = old.strip_prefix(from).unwrap_or(Path::new(""));
            let new = if rest.as_os_str().is_empty() {
                to.to_owned()
            } else {
                to.join(rest)
            };
            if let Some((node, _)) = self.by_id.get(&id) {
                for p in node.paths.lock().iter_mut() {
                    if *p == old {
                        *p = new.clone();
                    }
                }
            }
            self.by_path.insert((db, new), id);
        }
    }

    /// `from` was renamed to `to` (swapped with it when `exchange`).
    pub fn renamed(&mut self, db: usize, from: &Path, to: &Path, exchange: bool) {
        let a = self.take_subtree(db, from);
        let b = self.take_subtree(db, to);
        if exchange {
            self.put_subtree(db, to, from, b);
        } else {
            for (p, id) in b {
                if let Some((node, _)) = self.by_id.get(&id) {
                    node.paths.lock().retain(|q| *q != p);
                }
            }
        }
        self.put_subtree(db, from, to, a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_renames_and_links() {
        let mut t = Table::new(&[crate::names::DbName::from_static("db")]);
        let d = t.intern(0, "db.db/dir".into(), true);
        let f = t.intern(0, "db.db/dir/f".into(), true);
        let sib = t.intern(0, "db.db/dir0".into(), true);
        t.renamed(0, Path::new("db.db/dir"), Path::new("db.db/moved"), false);
        assert_eq!(t.intern(0, "db.db/moved".into(), false), d);
        assert_eq!(t.intern(0, "db.db/moved/f".into(), false), f);
        assert_eq!(t.intern(0, "db.db/dir0".into(), false), sib);
        assert_eq!(
            t.get(f).and_then(|n| n.path()),
            Some("db.db/moved/f".into())
        );
        // Exchange swaps ids.
        let a = t.intern(0, "db.db/a".into(), true);
        let b = t.intern(0, "db.db/b".into(), true);
        t.renamed(0, Path::new("db.db/a"), Path::new("db.db/b"), true);
        assert_eq!(t.intern(0, "db.db/a".into(), false), b);
        assert_eq!(t.intern(0, "db.db/b".into(), false), a);
        // A hard link shares the id and survives the unlink of the first name.
        t.linked(a, 0, "db.db/l".into());
        t.unlinked(0, Path::new("db.db/b"));
        assert_eq!(t.intern(0, "db.db/l".into(), false), a);
        assert_eq!(t.get(a).and_then(|n| n.path()), Some("db.db/l".into()));
    }
}
