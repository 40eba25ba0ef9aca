//! The dirty map of a copy that is not in sync: what it missed since it left, kept by
//! the in-sync copies and persisted on their volumes (`.reseedfs/tap/<db>/dirty-<vol>.json`).
//!
//! Data is tracked per file in 4 KiB blocks (a set of block runs, in memory and on disk); a file
//! created while the copy was out, or whose contents moved (collapse/insert range), is
//! `whole`. Namespace operations that the copy's old tree must replay before it is
//! reconciled (removes, renames, links) are kept in order; every other metadata change
//! (mode, owner, times, xattrs, new directories) is found by comparing the trees.
//!
//! A mutation is recorded before it runs (a copy that fails meanwhile must not miss it).
//! When every copy then refuses it (a 4 EiB `fallocate`: EFBIG or ENOSPC), nothing
//! changed, and what it marked would only make the lagging copy's resync visit ranges
//! that hold nothing: a mark can be made *revocable* ([`DirtyMap::write_revocable`]): it
//! remembers the blocks it added (those not dirty before), any other mark of the same
//! blocks meanwhile claims them for good, and [`DirtyMap::revoke`] takes out only what is
//! left. Revocable marks live only while their request runs and are never persisted.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rangemap::RangeSet;
use serde::{Deserialize, Serialize};

use super::{PathText, decode_path};

/// Granularity of the dirty map.
pub const BLOCK: u64 = 4096;

/// What one file missed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileDirty {
    /// Copy the whole file (created or reshaped while the copy was out).
    pub whole: bool,
    /// The smallest size the file was truncated to: everything from there on is copied.
    pub truncated_to: Option<u64>,
    /// The marked bytes, rounded out to whole blocks. A range set costs memory in
    /// proportion to the runs written, whatever their offsets (a write at 4 EiB is one run).
    blocks: RangeSet<u64>,
}

/// The whole blocks that hold `[offset, offset+len)` (clamped at the largest offset a
/// file can have), if any.
fn blocks_of(offset: u64, len: u64) -> Option<Range<u64>> {
    if len == 0 {
        return None;
    }
    let start = offset / BLOCK * BLOCK;
    let end = offset
        .saturating_add(len)
        .div_ceil(BLOCK)
        .saturating_mul(BLOCK);
    (start < end).then_some(start..end)
}

impl FileDirty {
    /// Marks `[offset, offset+len)` (clamped at the largest offset a file can have).
    pub fn mark(&mut self, offset: u64, len: u64) {
        if self.whole {
            return;
        }
        if let Some(r) = blocks_of(offset, len) {
            self.blocks.insert(r);
        }
    }

    /// Marks `[offset, offset+len)` and returns the blocks that were not marked before.
    fn mark_new(&mut self, offset: u64, len: u64) -> RangeSet<u64> {
        let mut added = RangeSet::new();
        if self.whole {
            return added;
        }
        if let Some(r) = blocks_of(offset, len) {
            for gap in self.blocks.gaps(&r) {
                added.insert(gap);
            }
            self.blocks.insert(r);
        }
        added
    }

    /// True when nothing is marked.
    fn is_empty(&self) -> bool {
        !self.whole && self.truncated_to.is_none() && self.blocks.is_empty()
    }

    /// Marks the file as truncated to `size`.
    pub fn truncated(&mut self, size: u64) {
        self.truncated_to = Some(self.truncated_to.map_or(size, |t| t.min(size)));
    }

    /// The marked block runs, as byte extents `(offset, len)`, in order.
    pub fn extents(&self) -> Vec<(u64, u64)> {
        self.blocks
            .iter()
            .map(|r| (r.start, r.end - r.start))
            .collect()
    }

    /// Bytes marked (whole blocks).
    pub fn bytes(&self) -> u64 {
        self.blocks
            .iter()
            .fold(0u64, |n, r| n.saturating_add(r.end - r.start))
    }

    /// Adds what `other` marks.
    pub fn merge(&mut self, other: &FileDirty) {
        self.whole |= other.whole;
        if let Some(t) = other.truncated_to {
            self.truncated(t);
        }
        for r in other.blocks.iter() {
            self.blocks.insert(r.clone());
        }
    }
}

/// A namespace operation the lagging copy must replay, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaOp {
    /// A file, symlink or empty directory was removed.
    Remove(PathBuf),
    /// `from` was renamed to `to` (swapped with it when `exchange`).
    Rename {
        /// Old name.
        from: PathBuf,
        /// New name.
        to: PathBuf,
        /// `RENAME_EXCHANGE`.
        exchange: bool,
    },
    /// `to` was made a hard link of `from`.
    Link {
        /// Existing name.
        from: PathBuf,
        /// New name.
        to: PathBuf,
    },
}

/// Everything a copy missed since it left the in-sync set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyMap {
    /// The volume the lagging copy is on.
    pub volume: String,
    /// The database generation the copy had when it left.
    pub base: u64,
    /// When it stopped taking writes: anything on it changed later was written behind
    /// reseedfs's back.
    pub since: SystemTime,
    /// Data missed, per volume-relative path (paths follow renames).
    pub files: BTreeMap<PathBuf, FileDirty>,
    /// Namespace operations to replay, oldest first.
    pub ops: Vec<MetaOp>,
    /// Mutations missed (CopyQueueLength).
    pub mutations: u64,
    /// Changed since last persisted.
    pub dirty: bool,
    /// Marks of requests still running that may be taken out again (never persisted).
    revocable: Vec<Revocable>,
    /// The id of the next revocable mark.
    next_revocable: u64,
}

/// What a revocable mark added (see the module header).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Revocable {
    id: u64,
    path: PathBuf,
    /// The blocks it marked that were not dirty before and no other mark claimed since.
    added: RangeSet<u64>,
    /// It created the file's entry, and nothing else marked the file since.
    new_entry: bool,
}

/// Moves `path` from under `from` to under `to`, if it is there.
fn moved(path: &Path, from: &Path, to: &Path) -> Option<PathBuf> {
    let rest = path.strip_prefix(from).ok()?;
    Some(if rest.as_os_str().is_empty() {
        to.to_owned()
    } else {
        to.join(rest)
    })
}

impl DirtyMap {
    /// An empty map for the copy on `volume` that left at generation `base`.
    pub fn new(volume: &str, base: u64, since: SystemTime) -> DirtyMap {
        DirtyMap {
            volume: volume.to_owned(),
            base,
            since,
            files: BTreeMap::new(),
            ops: Vec::new(),
            mutations: 0,
            dirty: true,
            revocable: Vec::new(),
            next_revocable: 0,
        }
    }

    fn file(&mut self, path: &Path) -> &mut FileDirty {
        self.files.entry(path.to_owned()).or_default()
    }

    /// A write of `[offset, offset+len)` to `path`.
    pub fn write(&mut self, path: &Path, offset: u64, len: u64) {
        self.mutations += 1;
        self.dirty = true;
        if !self.revocable.is_empty()
            && let Some(b) = blocks_of(offset, len)
        {
            self.claim(path, Some(b));
        }
        match self.files.get_mut(path) {
            Some(f) => f.mark(offset, len),
            None => self.file(path).mark(offset, len),
        }
    }

    /// A mutation of `[offset, offset+len)` of `path` about to run that every copy may
    /// still refuse: marked as by [`DirtyMap::write`]; the returned id takes the mark out
    /// again ([`DirtyMap::revoke`]) or keeps it ([`DirtyMap::settle`]).
    pub fn write_revocable(&mut self, path: &Path, offset: u64, len: u64) -> u64 {
        self.mutations += 1;
        self.dirty = true;
        if let Some(b) = blocks_of(offset, len) {
            self.claim(path, Some(b));
        }
        let new_entry = !self.files.contains_key(path);
        let added = self.file(path).mark_new(offset, len);
        let id = self.next_revocable;
        self.next_revocable += 1;
        self.revocable.push(Revocable {
            id,
            path: path.to_owned(),
            added,
            new_entry,
        });
        id
    }

    /// The request of revocable mark `id` was refused by every copy: takes out the blocks
    /// it added that nothing else marked since (and the file's entry, when it made it).
    pub fn revoke(&mut self, id: u64) {
        let Some(i) = self.revocable.iter().position(|r| r.id == id) else {
            return;
        };
        let r = self.revocable.swap_remove(i);
        self.mutations = self.mutations.saturating_sub(1);
        self.dirty = true;
        let Some(f) = self.files.get_mut(&r.path) else {
            return;
        };
        if f.whole {
            return;
        }
        for range in r.added.iter() {
            f.blocks.remove(range.clone());
        }
        if r.new_entry && f.is_empty() {
            self.files.remove(&r.path);
        }
    }

    /// The request of revocable mark `id` ran: its mark stays.
    pub fn settle(&mut self, id: u64) {
        self.revocable.retain(|r| r.id != id);
    }

    /// Another mutation marked `blocks` of `path` (all of it when `None`; the file's
    /// entry alone for `Some` of an empty range): revocable marks can no longer take them
    /// out.
    fn claim(&mut self, path: &Path, blocks: Option<Range<u64>>) {
        for r in self.revocable.iter_mut().filter(|r| r.path == path) {
            r.new_entry = false;
            match &blocks {
                Some(b) if b.is_empty() => {}
                Some(b) => r.added.remove(b.clone()),
                None => r.added = RangeSet::new(),
            }
        }
    }

    /// The entries at or under `path` changed wholesale (created, removed, renamed):
    /// revocable marks there are kept as they are.
    fn forget_revocable_under(&mut self, path: &Path) {
        if !self.revocable.is_empty() {
            self.revocable.retain(|r| !r.path.starts_with(path));
        }
    }

    /// A metadata mutation (its namespace effect, if any, recorded separately).
    pub fn touch(&mut self) {
        self.mutations += 1;
        self.dirty = true;
    }

    /// `path` was created (or replaced): copied whole. (Like the other namespace records,
    /// not counted: the mutation that carries it was, by [`DirtyMap::touch`].)
    pub fn created(&mut self, path: &Path) {
        self.dirty = true;
        self.forget_revocable_under(path);
        let f = self.file(path);
        *f = FileDirty {
            whole: true,
            ..FileDirty::default()
        };
    }

    /// `path` was truncated to `size`.
    pub fn truncated(&mut self, path: &Path, size: u64) {
        self.dirty = true;
        if !self.revocable.is_empty() {
            self.claim(path, Some(0..0));
        }
        self.file(path).truncated(size);
    }

    /// The contents of `path` moved (collapse or insert range): copied whole.
    pub fn reshaped(&mut self, path: &Path) {
        self.dirty = true;
        self.file(path).whole = true;
    }

    /// `path` was removed.
    pub fn removed(&mut self, path: &Path) {
        self.dirty = true;
        self.forget_revocable_under(path);
        self.files.remove(path);
        self.ops.push(MetaOp::Remove(path.to_owned()));
    }

    /// `from` was renamed to `to`.
    pub fn renamed(&mut self, from: &Path, to: &Path, exchange: bool) {
        self.dirty = true;
        self.forget_revocable_under(from);
        self.forget_revocable_under(to);
        let mut a = Vec::new();
        let mut b = Vec::new();
        let keys: Vec<PathBuf> = self.files.keys().cloned().collect();
        for k in keys {
            if let Some(n) = moved(&k, from, to) {
                if let Some(f) = self.files.remove(&k) {
                    a.push((n, f));
                }
            } else if let Some(n) = moved(&k, to, from) {
                if let Some(f) = self.files.remove(&k) {
                    b.push((n, f));
                }
            }
        }
        self.files.extend(a);
        if exchange {
            self.files.extend(b);
        }
        self.ops.push(MetaOp::Rename {
            from: from.to_owned(),
            to: to.to_owned(),
            exchange,
        });
    }

    /// `to` became a hard link of `from`.
    pub fn linked(&mut self, from: &Path, to: &Path) {
        self.dirty = true;
        self.ops.push(MetaOp::Link {
            from: from.to_owned(),
            to: to.to_owned(),
        });
    }

    /// Bytes known to be missed (whole files not counted: their size is on the source).
    pub fn bytes(&self) -> u64 {
        self.files.values().map(FileDirty::bytes).sum()
    }

    /// Adds what `other` records (the activity log's extents after a crash, a divergent
    /// copy's own changes).
    pub fn merge_files(&mut self, other: &BTreeMap<PathBuf, FileDirty>) {
        for (p, f) in other {
            if !self.revocable.is_empty() {
                self.claim(p, None);
            }
            self.file(p).merge(f);
        }
        self.dirty = true;
    }

    /// The persisted form.
    pub fn to_json(&self) -> serde_json::Result<Vec<u8>> {
        let files = self
            .files
            .iter()
            .map(|(p, f)| FileRecord {
                path: PathText::from(p.as_path()),
                whole: f.whole,
                truncated_to: f.truncated_to,
                extents: f.extents(),
            })
            .collect();
        let ops = self
            .ops
            .iter()
            .map(|op| match op {
                MetaOp::Remove(p) => OpRecord::Remove {
                    path: PathText::from(p.as_path()),
                },
                MetaOp::Rename { from, to, exchange } => OpRecord::Rename {
                    from: PathText::from(from.as_path()),
                    to: PathText::from(to.as_path()),
                    exchange: *exchange,
                },
                MetaOp::Link { from, to } => OpRecord::Link {
                    from: PathText::from(from.as_path()),
                    to: PathText::from(to.as_path()),
                },
            })
            .collect();
        serde_json::to_vec(&MapRecord {
            volume: self.volume.clone(),
            base: self.base,
            since: self.since,
            mutations: self.mutations,
            files,
            ops,
        })
    }

    /// Reads the persisted form.
    pub fn from_json(bytes: &[u8]) -> serde_json::Result<DirtyMap> {
        let r: MapRecord = serde_json::from_slice(bytes)?;
        let mut m = DirtyMap::new(&r.volume, r.base, r.since);
        m.mutations = r.mutations;
        m.dirty = false;
        for f in r.files {
            let mut d = FileDirty {
                whole: f.whole,
                truncated_to: f.truncated_to,
                blocks: RangeSet::new(),
            };
            for (o, l) in f.extents {
                d.mark(o, l);
            }
            m.files.insert(decode_path(&f.path), d);
        }
        for op in r.ops {
            m.ops.push(match op {
                OpRecord::Remove { path } => MetaOp::Remove(decode_path(&path)),
                OpRecord::Rename { from, to, exchange } => MetaOp::Rename {
                    from: decode_path(&from),
                    to: decode_path(&to),
                    exchange,
                },
                OpRecord::Link { from, to } => MetaOp::Link {
                    from: decode_path(&from),
                    to: decode_path(&to),
                },
            });
        }
        Ok(m)
    }
}

#[derive(Serialize, Deserialize)]
struct MapRecord {
    volume: String,
    base: u64,
    #[serde(with = "humantime_serde")]
    since: SystemTime,
    mutations: u64,
    files: Vec<FileRecord>,
    ops: Vec<OpRecord>,
}

#[derive(Serialize, Deserialize)]
struct FileRecord {
    path: PathText,
    #[serde(default)]
    whole: bool,
    #[serde(default)]
    truncated_to: Option<u64>,
    extents: Vec<(u64, u64)>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum OpRecord {
    Remove {
        path: PathText,
    },
    Rename {
        from: PathText,
        to: PathText,
        exchange: bool,
    },
    Link {
        from: PathText,
        to: PathText,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_at_any_offset_is_one_run() {
        let mut f = FileDirty::default();
        f.mark(u64::MAX - 10, 100);
        f.mark(0, 4 << 60);
        f.mark(1 << 62, 1);
        assert_eq!(
            f.extents(),
            vec![
                (0, (4 << 60) + BLOCK),
                (u64::MAX / BLOCK * BLOCK, u64::MAX % BLOCK)
            ]
        );
        let mut g = FileDirty::default();
        g.merge(&f);
        assert_eq!(g, f);
        let m = DirtyMap::new("Volume1", 1, SystemTime::UNIX_EPOCH);
        let mut m2 = m.clone();
        m2.files.insert(PathBuf::from("db.db/x"), f.clone());
        let back = DirtyMap::from_json(&m2.to_json().expect("json")).expect("parse");
        assert_eq!(back.files[Path::new("db.db/x")], f);
    }

    #[test]
    fn blocks_merge_into_extents_and_follow_renames() {
        let mut m = DirtyMap::new("Volume2", 7, SystemTime::UNIX_EPOCH);
        m.write(Path::new("db.db/a"), 0, 10);
        m.write(Path::new("db.db/a"), 4096, 8192);
        m.write(Path::new("db.db/a"), 1 << 20, 1);
        m.write(Path::new("db.db/d/b"), 5000, 1);
        assert_eq!(
            m.files[Path::new("db.db/a")].extents(),
            vec![(0, 12288), (1 << 20, 4096)]
        );
        m.renamed(Path::new("db.db/d"), Path::new("db.db/e"), false);
        assert_eq!(
            m.files[Path::new("db.db/e/b")].extents(),
            vec![(4096, 4096)]
        );
        m.created(Path::new("db.db/new"));
        m.truncated(Path::new("db.db/a"), 100);
        m.removed(Path::new("db.db/gone"));
        assert_eq!(m.mutations, 4);
        assert_eq!(m.bytes(), 5 * 4096);
        let back = DirtyMap::from_json(&m.to_json().expect("json")).expect("parse");
        assert_eq!(back.files, m.files);
        assert_eq!(back.ops, m.ops);
        assert_eq!((back.base, back.mutations), (7, 4));
    }

    #[test]
    fn a_revoked_mark_takes_out_only_what_it_added_and_nobody_else_marked() {
        let p = Path::new("db.db/f");
        let mut m = DirtyMap::new("Volume2", 3, SystemTime::UNIX_EPOCH);
        m.write(p, 8192, 4096);
        // A 4 EiB fallocate from 0, refused: the block dirty before stays.
        let id = m.write_revocable(p, 0, 4 << 60);
        assert_eq!(m.files[p].extents(), vec![(0, 4 << 60)]);
        m.revoke(id);
        assert_eq!(m.files[p].extents(), vec![(8192, 4096)]);
        assert_eq!(m.mutations, 1);
        // Another write inside the range while it runs keeps its blocks.
        let id = m.write_revocable(p, 0, 4 << 60);
        m.write(p, 1 << 40, 10);
        m.revoke(id);
        assert_eq!(m.files[p].extents(), vec![(8192, 4096), (1 << 40, BLOCK)]);
        // A mark on a file nothing marked before leaves no entry behind.
        let q = Path::new("db.db/g");
        let id = m.write_revocable(q, 1 << 50, 1 << 50);
        m.revoke(id);
        assert!(!m.files.contains_key(q));
        // A request that ran keeps its mark; revoking it later does nothing.
        let id = m.write_revocable(q, 0, 100);
        m.settle(id);
        m.revoke(id);
        assert_eq!(m.files[q].extents(), vec![(0, BLOCK)]);
        // A removed or renamed file keeps what it had: its marks are not revoked.
        let id = m.write_revocable(p, 1 << 20, 4096);
        m.renamed(p, Path::new("db.db/h"), false);
        m.revoke(id);
        assert_eq!(
            m.files[Path::new("db.db/h")].extents(),
            vec![(8192, 4096), (1 << 20, BLOCK), (1 << 40, BLOCK)]
        );
        // Revocable marks are never persisted.
        let id = m.write_revocable(q, 1 << 20, 1);
        let back = DirtyMap::from_json(&m.to_json().expect("json")).expect("parse");
        assert_eq!(back.files, m.files);
        m.revoke(id);
    }
}
