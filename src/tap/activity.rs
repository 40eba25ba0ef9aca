//! The activity log: which 4 MiB extents of which files may differ between the copies
//! right now, made durable before a write touches an extent not recorded yet (DRBD's
//! activity log, kept on every in-sync copy's volume as
//! `.reseedfs/tap/<db>/activity.log`).
//!
//! Every few seconds a checkpoint starts a new epoch, waits for the writes of the old one
//! to finish, `syncfs`es every in-sync copy and persists the dirty maps; the log is then
//! rewritten with the extents written in the old epoch (the hot set, carried over: a
//! write to them in the new epoch needs no log write) and those recorded in the new one
//! so far. An extent not written for a whole epoch leaves the log at the next rewrite.
//! So after a crash (or a kill -9 of the daemon) only the extents in the log can differ
//! between the copies, and a copy whose disk dies may have lost only writes to those
//! extents.
//!
//! The cost: one group-committed `fdatasync` per copy when a write reaches an extent
//! that is neither recorded in this epoch nor carried over from the last one; a write
//! that continues a sequential run records the next 16 extents at once.
//!
//! Sets of extents are ranges ([`RangeSet`]): what a file costs the log is proportional to
//! the runs of extents written, never to the offsets (a `fallocate` of 4 EiB is one range).
//!
//! An `fsync` trims what a failure must resync: the extents of a file written before the
//! `fsync` began are durable on every copy in sync once it returns, so when a copy fails
//! later they are not in the map of what it missed ([`ActivityLog::synced`]), until they
//! are written again. (After a crash the log still lists them; crash repair compares them,
//! which costs reads, not copies.)
//!
//! Why carried extents are safe without a log write: an extent written in epoch `e` is
//! in the log file until the rewrite that ends checkpoint `e -> e+1` (recorded in `e`,
//! or carried into `e` by the rewrite before), and that rewrite lists every extent
//! written in `e` again. A write of epoch `e+1` that finds its extent among the node's
//! marks of epoch `e` therefore finds it in the log file, before and after the rewrite.

use std::collections::BTreeMap;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use rangemap::{RangeMap, RangeSet};

use super::Replicas;
use super::dirty::FileDirty;
use crate::names::CopySlot;
use crate::names::DbName;
use crate::volume::{Mode, OFlags, OsStrExt, VolFile, Volume, finish_all};

/// log2 of the activity log's extent size (4 MiB).
pub const EXTENT_SHIFT: u32 = 22;

/// Extents recorded ahead of a sequential writer.
const AHEAD: u64 = 16;

const KIND_HEADER: u8 = 0;
const KIND_EXTENTS: u8 = 1;
const KIND_RENAME: u8 = 2;
const KIND_CLEAN: u8 = 3;

/// The log's path on a volume.
pub fn log_path(db: &DbName) -> PathBuf {
    super::tap_dir(db).join("activity.log")
}

/// Which extents of one file are in the log for the current epoch (kept with the file's
/// node, so that the common case costs one uncontended lock).
#[derive(Debug, Default)]
pub struct NodeMarks {
    inner: Mutex<Marks>,
}

#[derive(Debug, Default)]
struct Marks {
    /// The epoch `current` belongs to.
    epoch: u64,
    /// Extents written in `epoch`.
    current: RangeSet<u64>,
    /// Extents written in `epoch - 1`: carried over, in the log already.
    carried: RangeSet<u64>,
    /// Writes completed to this file (their sequence).
    writes: u64,
    /// Extents written and not made durable by an `fsync` since, with the sequence of the
    /// last write that completed there.
    unsynced: RangeMap<u64, u64>,
    /// Extents an `fsync` made durable, as the log's `State::durable` lists them for
    /// this file: a write there takes them out again.
    durable: RangeSet<u64>,
    /// The extents of the writes in flight (noted, not completed): an `fsync` that
    /// returns meanwhile does not make them durable.
    inflight: Vec<Range<u64>>,
}

impl Marks {
    /// Moves the marks to `epoch` when it is newer. A write of an older epoch (one that
    /// began before a checkpoint turned the epoch) leaves them as they are: both sets are
    /// in the log file until that checkpoint has drained it.
    fn advance(&mut self, epoch: u64) {
        if epoch > self.epoch {
            let written = std::mem::take(&mut self.current);
            self.carried = if epoch == self.epoch + 1 {
                written
            } else {
                RangeSet::new()
            };
            self.epoch = epoch;
        }
    }
}

/// Holds a write in its epoch until it is done; a checkpoint waits for these.
#[derive(Debug)]
pub struct WriteGuard<'a> {
    counter: &'a AtomicU64,
    /// The epoch the write belongs to.
    pub epoch: u64,
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::SeqCst);
    }
}

type Extents = BTreeMap<PathBuf, RangeSet<u64>>;

#[derive(Debug, Default)]
struct State {
    /// Extents written in the current epoch.
    current: Extents,
    /// During a checkpoint: extents written in the epoch it ended.
    previous: Extents,
    /// Extents carried into the log file by its last rewrite.
    carried: Extents,
    /// Extents an `fsync` made durable on every in-sync copy since they were last
    /// written: a failing copy has them (see the module doc).
    durable: Extents,
    pending: Vec<u8>,
    next_lsn: u64,
}

#[derive(Debug, Default)]
struct Files {
    /// Open log files: copy slot, placement generation, volume, file.
    open: Vec<(usize, u64, Arc<Volume>, VolFile)>,
    durable_lsn: u64,
}

/// One database's activity log.
#[derive(Debug)]
pub struct ActivityLog {
    db: DbName,
    epoch: AtomicU64,
    inflight: [AtomicU64; 2],
    state: Mutex<State>,
    files: Mutex<Files>,
    /// One checkpoint at a time.
    checkpointing: Mutex<()>,
}

fn record(kind: u8, epoch: u64, body: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(9 + body.len());
    payload.push(kind);
    payload.extend_from_slice(&epoch.to_le_bytes());
    payload.extend_from_slice(body);
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc_fast::crc32_iso_hdlc(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

fn extents_record(epoch: u64, path: &Path, first: u64, count: u64) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&first.to_le_bytes());
    body.extend_from_slice(&count.to_le_bytes());
    body.extend_from_slice(path.as_os_str().as_bytes());
    record(KIND_EXTENTS, epoch, &body)
}

fn rename_record(epoch: u64, from: &Path, to: &Path, exchange: bool) -> Vec<u8> {
    let from = from.as_os_str().as_bytes();
    let mut body = vec![u8::from(exchange)];
    body.extend_from_slice(&(from.len() as u32).to_le_bytes());
    body.extend_from_slice(from);
    body.extend_from_slice(to.as_os_str().as_bytes());
    record(KIND_RENAME, epoch, &body)
}

/// Renames the keys of `map` under `from` to under `to` (and back when `exchange`).
fn rename_keys(map: &mut Extents, from: &Path, to: &Path, exchange: bool) {
    let keys: Vec<PathBuf> = map.keys().cloned().collect();
    let mut moved = Vec::new();
    for k in keys {
        let new = if let Ok(rest) = k.strip_prefix(from) {
            Some(super::join_rest(to, rest))
        } else if let Ok(rest) = k.strip_prefix(to) {
            exchange.then(|| super::join_rest(from, rest))
        } else {
            None
        };
        if let Some(v) = map.remove(&k) {
            match new {
                Some(n) => moved.push((n, v)),
                // Replaced by the rename: its file is gone.
                None if k.starts_with(to) => {}
                None => {
                    map.insert(k, v);
                }
            }
        }
    }
    for (k, v) in moved {
        map.entry(k).or_default().extend(v.iter().cloned());
    }
}

/// What a log file says after a stop.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The log ends with a clean stop.
    pub clean: bool,
    /// Extents (4 MiB) that may differ, per path.
    pub extents: BTreeMap<PathBuf, RangeSet<u64>>,
}

impl Recovered {
    /// The extents as byte ranges per file, for a dirty map.
    pub fn as_dirty(&self) -> BTreeMap<PathBuf, FileDirty> {
        to_dirty(&self.extents)
    }

    /// Adds another copy's log.
    pub fn merge(&mut self, other: Recovered) {
        self.clean &= other.clean;
        for (p, e) in other.extents {
            self.extents.entry(p).or_default().extend(e.iter().cloned());
        }
    }
}

fn to_dirty(extents: &Extents) -> BTreeMap<PathBuf, FileDirty> {
    extents
        .iter()
        .map(|(p, set)| {
            let mut f = FileDirty::default();
            for r in set.iter() {
                let (start, end) = (byte_of(r.start), byte_of(r.end));
                f.mark(start, end - start);
            }
            (p.clone(), f)
        })
        .collect()
}

/// Parses a log file; a torn or corrupt tail ends it.
pub fn parse(bytes: &[u8]) -> Recovered {
    let mut out = Recovered::default();
    let mut pos = 0;
    while pos + 8 <= bytes.len() {
        let len = u32::from_le_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]])
            as usize;
        let crc = u32::from_le_bytes([
            bytes[pos + 4],
            bytes[pos + 5],
            bytes[pos + 6],
            bytes[pos + 7],
        ]);
        let Some(payload) = bytes.get(pos + 8..pos + 8 + len) else {
            break;
        };
        if len < 9 || crc_fast::crc32_iso_hdlc(payload) != crc {
            break;
        }
        pos += 8 + len;
        let body = &payload[9..];
        match payload[0] {
            KIND_HEADER => out.clean = false,
            KIND_EXTENTS if body.len() >= 16 => {
                let num = |b: &[u8]| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    u64::from_le_bytes(a)
                };
                let (first, count) = (num(&body[..8]), num(&body[8..16]));
                let path = PathBuf::from(std::ffi::OsStr::from_bytes(&body[16..]));
                if count > 0 {
                    out.extents
                        .entry(path)
                        .or_default()
                        .insert(first..first.saturating_add(count));
                }
                out.clean = false;
            }
            KIND_RENAME if body.len() >= 5 => {
                let exchange = body[0] != 0;
                let n = u32::from_le_bytes([body[1], body[2], body[3], body[4]]) as usize;
                let Some(from) = body.get(5..5 + n) else {
                    break;
                };
                let to = &body[5 + n..];
                rename_keys(
                    &mut out.extents,
                    Path::new(std::ffi::OsStr::from_bytes(from)),
                    Path::new(std::ffi::OsStr::from_bytes(to)),
                    exchange,
                );
                out.clean = false;
            }
            KIND_CLEAN => out.clean = true,
            _ => {}
        }
    }
    out
}

/// Reads the log of `db` on `volume`: `None` when there is none.
pub fn read(volume: &Volume, db: &DbName) -> io::Result<Option<Recovered>> {
    match volume.read_file(&log_path(db)) {
        Ok(b) => Ok(Some(parse(&b))),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

impl ActivityLog {
    /// The log of database `db` (nothing recorded yet).
    pub fn new(db: &DbName) -> ActivityLog {
        ActivityLog {
            db: db.to_owned(),
            epoch: AtomicU64::new(1),
            inflight: [AtomicU64::new(0), AtomicU64::new(0)],
            state: Mutex::new(State::default()),
            files: Mutex::new(Files::default()),
            checkpointing: Mutex::new(()),
        }
    }

    /// Enters the current epoch for one write.
    pub fn begin(&self) -> WriteGuard<'_> {
        loop {
            let epoch = self.epoch.load(Ordering::SeqCst);
            let counter = &self.inflight[(epoch % 2) as usize];
            counter.fetch_add(1, Ordering::SeqCst);
            if self.epoch.load(Ordering::SeqCst) == epoch {
                return WriteGuard { counter, epoch };
            }
            counter.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Records that the write `guard` makes to `[offset, offset+len)` of the file with
    /// `marks` (named by `path`) may make the copies differ; durable when this returns.
    pub fn note(
        &self,
        db: &dyn Replicas,
        guard: &WriteGuard<'_>,
        marks: &NodeMarks,
        path: impl Fn() -> Option<PathBuf>,
        offset: u64,
        len: u64,
    ) {
        let want = extents_of(offset, len);
        let (mut carried, missing, mut fresh) = {
            let mut m = marks.inner.lock();
            m.advance(guard.epoch);
            m.inflight.push(want.clone());
            if m.durable.overlaps(&want) {
                // Written again: a copy that fails from now on may miss it. (Under the
                // marks' lock, then the state's, as in `synced`.)
                m.durable.remove(want.clone());
                if let Some(p) = path() {
                    if let Some(d) = self.state.lock().durable.get_mut(&p) {
                        d.remove(want.clone());
                    }
                }
            }
            // Not recorded in this epoch: carried over from the last (in the log file
            // already), or missing from the log.
            let mut carried = RangeSet::new();
            let mut missing = RangeSet::new();
            for gap in m.current.gaps(&want) {
                missing.insert(gap.clone());
                for c in m.carried.overlapping(&gap) {
                    let both = c.start.max(gap.start)..c.end.min(gap.end);
                    carried.insert(both.clone());
                    missing.remove(both);
                }
            }
            let fresh = match (missing.first(), missing.last()) {
                (Some(lo), Some(hi)) => {
                    let (lo, hi) = (lo.start, hi.end);
                    let sequential = lo > 0 && m.current.contains(&(lo - 1));
                    Some(
                        lo..if sequential {
                            hi.saturating_add(AHEAD)
                        } else {
                            hi
                        },
                    )
                }
                _ => None,
            };
            (carried, missing, fresh)
        };
        if carried.is_empty() && fresh.is_none() {
            return;
        }
        let Some(path) = path() else { return };
        let lsn = {
            let mut s = self.state.lock();
            // A new file at a name another file had (a journal deleted and made again
            // for each transaction): what the log lists and what an fsync made durable
            // are kept by name. Made durable by the other file's fsync: not this one's
            // bytes, which a copy failing now may miss.
            if let Some(d) = s.durable.get_mut(&path) {
                d.remove(want.clone());
            }
            // In the log file already under this name (written by another file there in
            // this epoch or the last): carried, as this file's own would be, and no
            // record, once the records before are durable.
            let mut logged_by_name = false;
            if fresh.is_some() {
                let mut logged = RangeSet::new();
                for m in [&s.current, &s.previous, &s.carried] {
                    if let Some(set) = m.get(&path) {
                        logged.extend(set.iter().cloned());
                    }
                }
                if missing.iter().all(|r| logged.gaps(r).next().is_none()) {
                    carried.extend(missing.iter().cloned());
                    fresh = None;
                    logged_by_name = true;
                }
            }
            let set = s.current.entry(path.clone()).or_default();
            // Written again in this epoch: carried over at the next rewrite too.
            set.extend(carried.iter().cloned());
            if let Some(r) = &fresh {
                set.insert(r.clone());
            }
            match &fresh {
                Some(r) => {
                    let rec = extents_record(guard.epoch, &path, r.start, r.end - r.start);
                    s.pending.extend_from_slice(&rec);
                    s.next_lsn += 1;
                    Some(s.next_lsn)
                }
                None if logged_by_name => Some(s.next_lsn),
                None => None,
            }
        };
        if let Some(lsn) = lsn {
            self.flush(db, lsn);
        }
        let mut m = marks.inner.lock();
        m.advance(guard.epoch);
        m.current.extend(carried.iter().cloned());
        if let Some(r) = fresh {
            m.current.insert(r);
        }
    }

    /// The write of `[offset, offset+len)` that [`ActivityLog::note`] recorded for the
    /// file with `marks` is over (done on every copy, or failed): until an `fsync` that
    /// begins after it returns, a copy that fails must resync it.
    pub fn written(&self, marks: &NodeMarks, offset: u64, len: u64) {
        let range = extents_of(offset, len);
        let mut m = marks.inner.lock();
        if let Some(i) = m.inflight.iter().position(|r| *r == range) {
            m.inflight.swap_remove(i);
        }
        m.writes += 1;
        let seq = m.writes;
        m.unsynced.insert(range, seq);
    }

    /// Where an `fsync` of the file with `marks` starts: the writes completed so far.
    pub fn sync_begins(&self, marks: &NodeMarks) -> u64 {
        marks.inner.lock().writes
    }

    /// An `fsync` of the file with `marks` (named `path`), begun at `began` (from
    /// [`ActivityLog::sync_begins`]), returned on every in-sync copy: what was written
    /// before it began is durable on all of them, and leaves what a failure must resync.
    pub fn synced(&self, marks: &NodeMarks, path: impl FnOnce() -> Option<PathBuf>, began: u64) {
        let mut m = marks.inner.lock();
        let mut done: RangeSet<u64> = m
            .unsynced
            .iter()
            .filter(|(_, seq)| **seq <= began)
            .map(|(r, _)| r.clone())
            .collect();
        // A write in flight there may not have reached the disk before the fsync.
        for r in &m.inflight {
            done.remove(r.clone());
        }
        if done.is_empty() {
            return;
        }
        let Some(path) = path() else { return };
        for r in done.iter() {
            m.unsynced.remove(r.clone());
            m.durable.insert(r.clone());
        }
        let mut s = self.state.lock();
        s.durable
            .entry(path)
            .or_default()
            .extend(done.iter().cloned());
    }

    /// `from` was renamed to `to`: extents recorded under the old name follow it.
    pub fn renamed(&self, db: &dyn Replicas, from: &Path, to: &Path, exchange: bool) {
        let lsn = {
            let mut s = self.state.lock();
            let under = |m: &Extents, p: &Path| {
                m.range(p.to_path_buf()..)
                    .next()
                    .is_some_and(|(k, _)| k.starts_with(p))
            };
            let logged = |s: &State, p: &Path| {
                under(&s.current, p) || under(&s.previous, p) || under(&s.carried, p)
            };
            let touched = logged(&s, from) || (exchange && logged(&s, to));
            if !touched {
                return;
            }
            rename_keys(&mut s.current, from, to, exchange);
            rename_keys(&mut s.previous, from, to, exchange);
            rename_keys(&mut s.carried, from, to, exchange);
            rename_keys(&mut s.durable, from, to, exchange);
            let rec = rename_record(self.epoch.load(Ordering::SeqCst), from, to, exchange);
            s.pending.extend_from_slice(&rec);
            s.next_lsn += 1;
            s.next_lsn
        };
        self.flush(db, lsn);
    }

    /// Every extent that may differ now (everything the log file lists), as byte ranges
    /// per file.
    pub fn extents(&self) -> BTreeMap<PathBuf, FileDirty> {
        let s = self.state.lock();
        let mut all = s.carried.clone();
        for (p, e) in s.previous.iter().chain(&s.current) {
            all.entry(p.clone()).or_default().extend(e.iter().cloned());
        }
        // What an fsync made durable everywhere (and was not written since) is on the
        // failing copy's disk too.
        for (p, d) in &s.durable {
            if let Some(e) = all.get_mut(p) {
                for r in d.iter() {
                    e.remove(r.clone());
                }
            }
        }
        all.retain(|_, e| !e.is_empty());
        to_dirty(&all)
    }

    /// Makes every record up to `lsn` durable on every in-sync copy (group commit: one
    /// caller writes what all waiting callers added), on every copy at once.
    fn flush(&self, db: &dyn Replicas, lsn: u64) {
        let failed = {
            let mut files = self.files.lock();
            if files.durable_lsn >= lsn {
                return;
            }
            let (pending, upto) = {
                let mut s = self.state.lock();
                (std::mem::take(&mut s.pending), s.next_lsn)
            };
            let mut failed = self.open_files(db, &mut files, None);
            let data: Arc<[u8]> = pending.into();
            let calls = files.open.iter().map(|(_, _, v, f)| {
                let (f, data) = (f.clone(), data.clone());
                let call = v.submit("activity log", move |b| {
                    b.append(&f, &data)?;
                    b.sync(&f, true)
                });
                (&**v, call)
            });
            let results = finish_all(&self.db, "activity log", calls);
            for ((slot, ..), r) in files.open.iter().zip(results) {
                if let Err(e) = r {
                    failed.push((*slot, e));
                }
            }
            files.durable_lsn = upto;
            files
                .open
                .retain(|(s, ..)| !failed.iter().any(|(f, _)| f == s));
            failed
        };
        // Reported once the log is free: failing a copy closes its log file here too.
        self.report(db, failed);
    }

    /// Tells the copy set about the copies whose log could not be written.
    fn report(&self, db: &dyn Replicas, failed: Vec<(usize, io::Error)>) {
        for (slot, e) in failed {
            tracing::warn!(
                "activity log of {} on {}: {e}",
                self.db,
                db.volume_name(CopySlot::new(slot))
            );
            // A dying disk fails its copy; anything else (a full volume) leaves the log
            // to the other copies, and the write itself will tell.
            if crate::volume::is_media_error(&e) {
                db.on_error(CopySlot::new(slot), "activity log", &e);
            }
        }
    }

    /// Closes the log files of copies that are no longer in sync (or moved to another
    /// placement), at once: nothing of reseedfs keeps a failed volume's filesystem busy.
    pub fn release_stale(&self, db: &dyn Replicas) {
        let in_sync = db.in_sync();
        self.files.lock().open.retain(|(slot, generation, ..)| {
            in_sync.iter().any(|(s, g, _)| s == slot && g == generation)
        });
    }

    /// Opens the log on every in-sync copy that has none open (rewritten with `content`
    /// when given: a checkpoint). Returns the copies where that failed.
    fn open_files(
        &self,
        db: &dyn Replicas,
        files: &mut Files,
        content: Option<&[u8]>,
    ) -> Vec<(usize, io::Error)> {
        let in_sync = db.in_sync();
        files.open.retain(|(slot, generation, ..)| {
            in_sync.iter().any(|(s, g, _)| s == slot && g == generation)
        });
        let mut failed = Vec::new();
        for (slot, generation, v) in in_sync {
            let open = files.open.iter().any(|(s, ..)| *s == slot);
            if open && content.is_none() {
                continue;
            }
            match open_log(&v, &self.db, content) {
                Ok(f) => {
                    files.open.retain(|(s, ..)| *s != slot);
                    files.open.push((slot, generation, v.clone(), f));
                }
                Err(e) => {
                    files.open.retain(|(s, ..)| *s != slot);
                    failed.push((slot, e));
                }
            }
        }
        failed
    }

    /// Nothing written since the log was last rewritten, and it lists nothing, on every
    /// copy in sync now: a checkpoint would rewrite the same empty log.
    fn quiet(&self, db: &dyn Replicas) -> bool {
        let listed = {
            let s = self.state.lock();
            !(s.current.is_empty() && s.carried.is_empty() && s.pending.is_empty())
        };
        if listed {
            return false;
        }
        let files = self.files.lock();
        let in_sync = db.in_sync();
        in_sync.len() == files.open.len()
            && in_sync.iter().all(|(slot, generation, _)| {
                files
                    .open
                    .iter()
                    .any(|(s, g, ..)| s == slot && g == generation)
            })
    }

    /// `syncfs` of every in-sync copy's volume, all at once (see `volume::finish_first`),
    /// after what the copies keep in memory only is written ([`Replicas::flush`]).
    fn sync_volumes(&self, db: &dyn Replicas) {
        db.flush();
        let in_sync = db.in_sync();
        let calls = in_sync.iter().map(|(_, _, v)| (&**v, v.submit_syncfs()));
        let results = finish_all(&self.db, "syncfs", calls);
        for ((slot, ..), r) in in_sync.iter().zip(results) {
            if let Err(e) = r {
                db.on_error(CopySlot::new(*slot), "checkpoint syncfs", &e);
            }
        }
    }

    /// A checkpoint: new epoch, old epoch's writes drained, every in-sync copy's volume
    /// synced, `persist` run (the dirty maps), the log rewritten with the extents written
    /// in the old epoch (carried over) and the new one. `clean` appends the clean-stop
    /// mark (no write may run any more) and carries nothing: every write is durable.
    pub fn checkpoint(&self, db: &dyn Replicas, persist: impl FnOnce(), clean: bool) {
        let _one = self.checkpointing.lock();
        if !clean && self.quiet(db) {
            // A new epoch would rewrite the same empty log on every volume: an idle
            // database leaves its disks alone, but for the sync (a dead disk under an
            // idle database shows there) and the dirty maps.
            self.sync_volumes(db);
            persist();
            return;
        }
        let old = {
            let mut s = self.state.lock();
            let cur = std::mem::take(&mut s.current);
            for (p, e) in cur {
                s.previous.entry(p).or_default().extend(e.iter().cloned());
            }
            self.epoch.fetch_add(1, Ordering::SeqCst)
        };
        let counter = &self.inflight[(old % 2) as usize];
        while counter.load(Ordering::SeqCst) != 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
        self.sync_volumes(db);
        persist();
        let mut files = self.files.lock();
        let epoch = self.epoch.load(Ordering::SeqCst);
        let (content, upto) = {
            let mut s = self.state.lock();
            let carried = if clean {
                Extents::new()
            } else {
                std::mem::take(&mut s.previous)
            };
            s.previous.clear();
            let mut content = record(KIND_HEADER, epoch, &[]);
            let mut listed = carried.clone();
            for (p, e) in &s.current {
                listed
                    .entry(p.clone())
                    .or_default()
                    .extend(e.iter().cloned());
            }
            for (p, set) in &listed {
                for r in set.iter() {
                    content.extend_from_slice(&extents_record(epoch, p, r.start, r.end - r.start));
                }
            }
            if clean {
                content.extend_from_slice(&record(KIND_CLEAN, epoch, &[]));
            }
            // What is no longer listed needs no mark of being durable either.
            let durable = std::mem::take(&mut s.durable);
            s.durable = durable
                .into_iter()
                .filter(|(p, _)| listed.contains_key(p))
                .collect();
            s.carried = carried;
            s.pending.clear();
            (content, s.next_lsn)
        };
        let failed = self.open_files(db, &mut files, Some(&content));
        files.durable_lsn = upto;
        drop(files);
        self.report(db, failed);
    }
}

/// The extents (4 MiB) that `[offset, offset+len)` touches.
fn extents_of(offset: u64, len: u64) -> Range<u64> {
    let first = offset >> EXTENT_SHIFT;
    let last = offset.saturating_add(len.max(1) - 1) >> EXTENT_SHIFT;
    first..last.saturating_add(1)
}

/// The first byte of extent `e` (saturating at the largest offset).
pub fn byte_of(e: u64) -> u64 {
    e.checked_shl(EXTENT_SHIFT)
        .filter(|b| b >> EXTENT_SHIFT == e)
        .unwrap_or(u64::MAX)
}

fn open_log(v: &Volume, db: &DbName, content: Option<&[u8]>) -> io::Result<VolFile> {
    let path = log_path(db);
    if let Some(parent) = path.parent() {
        v.mkdir_all(parent)?;
    }
    if let Some(content) = content {
        v.write_atomic(&path, content)?;
    }
    v.open_file(
        &path,
        OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE,
        Mode::from_raw_mode(0o600),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_replay_with_renames_and_torn_tails() {
        let mut log = record(KIND_HEADER, 3, &[]);
        log.extend(extents_record(3, Path::new("db.db/a"), 0, 2));
        log.extend(extents_record(3, Path::new("db.db/d/b"), 5, 1));
        log.extend(rename_record(
            3,
            Path::new("db.db/d"),
            Path::new("db.db/e"),
            false,
        ));
        log.extend(extents_record(3, Path::new("db.db/c"), 1, 1));
        let r = parse(&log);
        assert!(!r.clean);
        assert_eq!(
            r.extents[Path::new("db.db/a")],
            RangeSet::from_iter(std::iter::once(0..2))
        );
        assert_eq!(
            r.extents[Path::new("db.db/e/b")],
            RangeSet::from_iter(std::iter::once(5..6))
        );
        assert!(!r.extents.contains_key(Path::new("db.db/d/b")));
        // A torn last record is ignored; the ones before it count.
        let torn = &log[..log.len() - 3];
        let t = parse(torn);
        assert!(!t.extents.contains_key(Path::new("db.db/c")));
        assert_eq!(t.extents.len(), 2);
        let mut clean = log.clone();
        clean.extend(record(KIND_CLEAN, 3, &[]));
        assert!(parse(&clean).clean);
        assert_eq!(
            r.as_dirty()[Path::new("db.db/a")].extents(),
            vec![(0, 8 << 20)]
        );
    }

    /// One in-sync copy on a scratch directory: the log is really written.
    struct OneCopy(Arc<Volume>, PathBuf);

    impl OneCopy {
        fn new(tag: &str) -> OneCopy {
            let dir = std::env::temp_dir()
                .join(format!("reseedfs-activity-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("mkdir");
            let v = Volume::open("Volume1", &dir).expect("open");
            OneCopy(Arc::new(v), dir)
        }
    }

    impl Drop for OneCopy {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }

    impl Replicas for OneCopy {
        fn in_sync(&self) -> Vec<(usize, u64, Arc<Volume>)> {
            vec![(0, 1, self.0.clone())]
        }
        fn volume_name(&self, _: CopySlot) -> String {
            self.0.name().to_string()
        }
        fn on_error(&self, _: CopySlot, op: &str, err: &io::Error) {
            panic!("{op}: {err}");
        }
    }

    fn write(al: &ActivityLog, db: &OneCopy, marks: &NodeMarks, path: &str, off: u64, len: u64) {
        let g = al.begin();
        al.note(db, &g, marks, || Some(PathBuf::from(path)), off, len);
        al.written(marks, off, len);
    }

    fn listed(al: &ActivityLog, path: &str) -> Vec<(u64, u64)> {
        al.extents()
            .get(Path::new(path))
            .map(FileDirty::extents)
            .unwrap_or_default()
    }

    #[test]
    fn an_fsync_takes_what_it_made_durable_out_of_what_a_failure_resyncs() {
        let db = OneCopy::new("fsync");
        let al = ActivityLog::new(&crate::names::DbName::from_static("db"));
        let marks = NodeMarks::default();
        let name = || Some(PathBuf::from("db.db/a"));
        // A bulk load: 64 MiB written, then fsynced.
        for i in 0..16u64 {
            write(&al, &db, &marks, "db.db/a", i << 22, 4 << 20);
        }
        // The second write found a sequential run: 16 extents were recorded past it.
        assert_eq!(listed(&al, "db.db/a"), vec![(0, 72 << 20)]);
        let began = al.sync_begins(&marks);
        al.synced(&marks, name, began);
        // The 2 extents recorded ahead were never written: still listed.
        assert_eq!(listed(&al, "db.db/a"), vec![(64 << 20, 8 << 20)]);
        // Written again after the fsync: listed again, until the next fsync.
        write(&al, &db, &marks, "db.db/a", 5 << 20, 100);
        assert_eq!(
            listed(&al, "db.db/a"),
            vec![(4 << 20, 4 << 20), (64 << 20, 8 << 20)]
        );
        // A write that was in flight while an fsync ran is not made durable by it.
        let g = al.begin();
        al.note(&db, &g, &marks, name, 9 << 20, 100);
        let began = al.sync_begins(&marks);
        al.synced(&marks, name, began);
        assert_eq!(
            listed(&al, "db.db/a"),
            vec![(8 << 20, 4 << 20), (64 << 20, 8 << 20)],
            "the extent written before the fsync left; the one in flight stays"
        );
        al.written(&marks, 9 << 20, 100);
        // An fsync that began before the write completed does not cover it either.
        al.synced(&marks, name, began);
        assert_eq!(listed(&al, "db.db/a")[0], (8 << 20, 4 << 20));
        let began = al.sync_begins(&marks);
        al.synced(&marks, name, began);
        assert_eq!(listed(&al, "db.db/a"), vec![(64 << 20, 8 << 20)]);
    }

    #[test]
    fn a_file_made_again_under_a_logged_name_costs_no_record_nor_keeps_the_last_ones_fsync() {
        let db = OneCopy::new("again");
        let al = ActivityLog::new(&crate::names::DbName::from_static("db"));
        let name = || Some(PathBuf::from("db.db/j"));
        let records = || al.state.lock().next_lsn;
        // A journal (SQLite's, deleted and made again for each transaction): written,
        // fsynced, then deleted.
        let first = NodeMarks::default();
        write(&al, &db, &first, "db.db/j", 0, 512);
        let began = al.sync_begins(&first);
        al.synced(&first, name, began);
        assert_eq!(listed(&al, "db.db/j"), vec![], "durable after its fsync");
        // The next one under the same name: its extent is in the log already...
        let logged = records();
        let second = NodeMarks::default();
        write(&al, &db, &second, "db.db/j", 0, 512);
        assert_eq!(
            records(),
            logged,
            "a record for an extent the log lists by name"
        );
        // ...and the first one's fsync did not make the second one's bytes durable.
        assert_eq!(listed(&al, "db.db/j"), vec![(0, 4 << 20)]);
        let began = al.sync_begins(&second);
        al.synced(&second, name, began);
        assert_eq!(listed(&al, "db.db/j"), vec![]);
        // After a checkpoint (the name carried into the rewritten log), a third: no record
        // either, and listed until its own fsync.
        al.checkpoint(&db, || {}, false);
        let logged = records();
        let third = NodeMarks::default();
        write(&al, &db, &third, "db.db/j", 100, 512);
        assert_eq!(records(), logged);
        assert_eq!(listed(&al, "db.db/j"), vec![(0, 4 << 20)]);
        // An extent or a name the log does not list costs a record.
        write(&al, &db, &third, "db.db/j", 5 << 20, 512);
        assert_eq!(records(), logged + 1);
        write(&al, &db, &NodeMarks::default(), "db.db/k", 0, 512);
        assert_eq!(records(), logged + 2);
    }

    #[test]
    fn writes_at_the_largest_offsets_cost_a_range_each() {
        let db = OneCopy::new("huge");
        let al = ActivityLog::new(&crate::names::DbName::from_static("db"));
        let marks = NodeMarks::default();
        // fallocate -l 4EiB, and a write just below the largest offset a file can have.
        write(&al, &db, &marks, "db.db/big", 0, 4 << 60);
        write(
            &al,
            &db,
            &marks,
            "db.db/big",
            (i64::MAX as u64) - 4096,
            4096,
        );
        write(&al, &db, &marks, "db.db/big", u64::MAX - 10, 100);
        let e = listed(&al, "db.db/big");
        assert_eq!(e.first().map(|r| r.0), Some(0));
        assert_eq!(e.len(), 3, "{e:?}");
        let last = e.last().copied().expect("listed");
        assert_eq!(last.0.saturating_add(last.1), u64::MAX);
        // The log file holds a few records, not one per extent.
        let bytes = std::fs::read(db.1.join(log_path(&crate::names::DbName::from_static("db"))))
            .expect("log");
        assert!(bytes.len() < 4096, "{} bytes", bytes.len());
        let r = parse(&bytes);
        assert_eq!(r.extents[Path::new("db.db/big")].iter().count(), e.len());
    }
}
