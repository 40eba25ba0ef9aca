//! Files that are open but have no name left, on a copy being seeded or resynced.
//!
//! Databases unlink their temporary files right after opening them (SQLite's
//! `etilqs_*`, PostgreSQL's sort and hash spill files, most servers' scratch files) and
//! keep using them through their descriptors. Such a file is in no tree, so the tree
//! copy of a reseed and the dirty map of a resync never see it; yet the copy being
//! rebuilt must hold it as well as any other: once it is in sync, the old copies may
//! fail, and a database reading its temporary file back must get its bytes, not EIO.
//!
//! So the layout gives each such file an anonymous file on the new copy
//! ([`crate::fs::Core::refresh_handles`]: `O_TMPFILE`, no name, owner and mode of the
//! source, freed at its last close and after a crash), opened by every handle of the
//! file. From then on every write reaches it like any copy; here the file's data is
//! copied from an in-sync copy through the handles' own descriptors, chunk by chunk
//! under the file's stripe locks (a write to a chunk lands on both sides before or after
//! its copy, never between), and then compared. When the last handle closes meanwhile,
//! there is nothing left to keep and the copy of that file ends.
//!
//! Those descriptors are raw ones, outside the volumes' lanes, used with the file's locks
//! held: every read, write, size and fsync of the copy runs on the copy's own threads
//! under the volumes' deadline ([`Watched`], as the named files' copy does). A side that
//! stops answering for `io_timeout` gets a [`crate::volume::Timeout`] naming its volume:
//! a source's fails that copy and the chunk is taken from the next in-sync copy, the new
//! copy's fails it (1109, `reason: "timeout"`) and ends the reseed, the locks released and
//! the stuck call abandoned in the kernel.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use super::engine::CopyError;
use super::watch::{Side, Watched};
use super::{Progress, SeedError, dest_failed};
use crate::copyset::{BackingFile, CopyState, Database, OpenFiles};
use crate::fs::Node;
use crate::names::CopySlot;
use crate::tap::reconcile::{self, SideError};
use crate::volume::{Limits, is_media_error, is_timeout, read_full};

/// Bytes copied, or compared, under one hold of the file's locks.
const CHUNK: u64 = 1 << 20;

/// Copies and then verifies every file of `orphans` onto copy `slot` of `db`. Returns
/// the bytes of data copied.
pub(crate) fn copy_orphans(
    db: &Database,
    slot: CopySlot,
    orphans: &[Arc<Node>],
    progress: &Progress,
) -> Result<u64, SeedError> {
    let mut copied = 0;
    for node in orphans {
        copied += copy_orphan(db, slot, node, progress)?;
    }
    Ok(copied)
}

/// Both sides of a copy of a file with no name left: a handle's files.
struct Sides {
    /// The in-sync copy read from.
    slot: CopySlot,
    src: Arc<BackingFile>,
    /// On the copy being rebuilt.
    dst: Arc<BackingFile>,
}

/// The handle files of `node` on copy `slot` (the destination) and on the first in-sync
/// copy that has one (the source); `None` when no handle is open on the file any more.
fn sides(db: &Database, slot: CopySlot, node: &Node) -> Result<Option<Sides>, SeedError> {
    let Some(files) = node.any_open_files() else {
        return Ok(None);
    };
    let dst = files
        .get(slot.index(), &db.copies()[slot])
        .ok_or_else(|| SeedError::Dest(missing(db, slot)))?;
    let (i, src) = source(db, slot, &files).ok_or_else(|| {
        SeedError::Source(format!(
            "an open file of {} with no name left is on no in-sync copy",
            db.name
        ))
    })?;
    Ok(Some(Sides {
        slot: CopySlot::new(i),
        src,
        dst,
    }))
}

fn missing(db: &Database, slot: CopySlot) -> String {
    format!(
        "an open file of {} with no name left has no file on the copy on {}",
        db.name,
        db.copies()[slot].volume_name()
    )
}

/// The first in-sync copy other than `slot` where `files` has a file, active first.
fn source(db: &Database, slot: CopySlot, files: &OpenFiles) -> Option<(usize, Arc<BackingFile>)> {
    let active = db.active_index();
    active
        .into_iter()
        .chain((0..db.copies().len()).filter(|&i| Some(i) != active))
        .filter(|&i| i != slot && db.copies()[i].is(CopyState::InSync))
        .find_map(|i| files.get(i, &db.copies()[i]).map(|f| (i, f)))
}

fn still_seeding(db: &Database, slot: CopySlot, progress: &Progress) -> Result<(), SeedError> {
    progress
        .check_cancel()
        .map_err(|e| SeedError::Dest(e.to_string()))?;
    if db.copies()[slot].state() != CopyState::Seeding {
        return Err(SeedError::Dest(
            "the new copy was failed while it took an open file with no name left (see its events)"
                .into(),
        ));
    }
    Ok(())
}

/// A read of the source failed with `e`: a media error fails the source's copy and the
/// chunk is tried again from the next in-sync copy; anything else ends the rebuild.
fn source_failed(db: &Database, i: usize, e: io::Error) -> Result<(), SeedError> {
    if is_media_error(&e) {
        db.on_error(i, "read of an open file with no name left", &e, false);
        if db.active_index().is_some() {
            return Ok(());
        }
    }
    Err(SeedError::Source(format!(
        "reading an open file of {} with no name left on {}: {e}",
        db.name,
        db.copies()[i].volume_name()
    )))
}

/// The copy of one file's data on threads of its own, under the volumes' deadline.
struct Deadline {
    watched: Watched,
    /// `db001\Volume3`: the threads' name.
    label: String,
    io_timeout: Duration,
}

impl Deadline {
    fn new(db: &Database, slot: CopySlot) -> Deadline {
        let copy = &db.copies()[slot];
        let io_timeout = copy
            .placement()
            .volume
            .as_ref()
            .map_or(Limits::default().io_timeout, |v| v.limits().io_timeout);
        let label = format!("{}\\{}", db.name, copy.volume_name());
        Deadline {
            watched: Watched::new(&label, io_timeout),
            label,
            io_timeout,
        }
    }

    /// Runs `work` from copy `from` to copy `slot` of `db` (see [`Watched::run`]). After a
    /// missed deadline the watch keeps the abandoned request: the next work (from another
    /// source) gets a new one.
    fn run<T: Send + 'static>(
        &mut self,
        db: &Database,
        from: CopySlot,
        slot: CopySlot,
        work: impl FnOnce(&super::watch::Watch) -> Result<T, CopyError> + Send + 'static,
    ) -> Result<T, CopyError> {
        let (source, dest) = (
            db.copies()[from].volume_name(),
            db.copies()[slot].volume_name(),
        );
        let r = self.watched.run(&source, &dest, work);
        if let Err(CopyError::Source(e) | CopyError::Dest(e)) = &r {
            if is_timeout(e) {
                self.watched = Watched::new(&self.label, self.io_timeout);
            }
        }
        r
    }
}

/// The error of a side of the copy of an open file of `db` with no name left: the
/// source's is `source_failed`'s to judge (`Ok`: go on from another copy), the new copy's
/// fails it (`op`) and ends the copy.
fn side_failed(
    db: &Database,
    slot: CopySlot,
    from: CopySlot,
    op: &str,
    e: CopyError,
) -> Result<(), SeedError> {
    match e {
        CopyError::Source(e) => source_failed(db, from.index(), e),
        CopyError::Dest(e) => Err(match dest_failed(db, slot, op, e) {
            SeedError::Dest(msg) => SeedError::Dest(format!(
                "{msg} (copying an open file of {} with no name left)",
                db.name
            )),
            other => other,
        }),
    }
}

/// Copies one file with no name left onto copy `slot`, then compares it. Returns the
/// bytes of data copied.
pub(crate) fn copy_orphan(
    db: &Database,
    slot: CopySlot,
    node: &Node,
    progress: &Progress,
) -> Result<u64, SeedError> {
    let io = &node.io;
    let mut deadline = Deadline::new(db, slot);
    let mut copied = 0;
    let mut offset = 0u64;
    loop {
        still_seeding(db, slot, progress)?;
        progress.job.pacer.take(CHUNK);
        let _resize = io.resize.read();
        let Some(Sides { slot: i, src, dst }) = sides(db, slot, node)? else {
            return Ok(copied);
        };
        let s = src.clone();
        let size = match deadline.run(db, i, slot, move |w| {
            w.on(Side::Source, || s.file.metadata())
                .map_err(CopyError::Source)
        }) {
            Ok(m) => m.len(),
            Err(e) => {
                side_failed(db, slot, i, "reseed read", e)?;
                continue;
            }
        };
        if offset >= size {
            // The end: under every stripe, no write can move it while the destination
            // takes the source's size (a truncate waits for the resize lock).
            let _all = io.lock_range(0, u64::MAX);
            let ended = deadline.run(db, i, slot, move |w| {
                let size = w
                    .on(Side::Source, || src.file.metadata())
                    .map_err(CopyError::Source)?
                    .len();
                if offset < size {
                    return Ok(false);
                }
                let len = w
                    .on(Side::Dest, || dst.file.metadata())
                    .map_err(CopyError::Dest)?
                    .len();
                if len != size {
                    w.on(Side::Dest, || dst.file.set_len(size))
                        .map_err(CopyError::Dest)?;
                }
                Ok(true)
            });
            match ended {
                Ok(true) => break,
                Ok(false) => continue,
                Err(e) => {
                    side_failed(db, slot, i, "reseed write", e)?;
                    continue;
                }
            }
        }
        let _stripes = io.lock_range(offset, CHUNK);
        let n = deadline.run(db, i, slot, move |w| {
            reconcile::copy_extent_watched(&src.file, &dst.file, offset, CHUNK, w).map_err(|e| {
                match e {
                    SideError::Source(e) => CopyError::Source(e),
                    SideError::Dest(e) => CopyError::Dest(e),
                }
            })
        });
        match n {
            Ok(n) => {
                copied += n;
                progress.job.add_done(n);
                offset += CHUNK;
            }
            Err(e) => side_failed(db, slot, i, "reseed write", e)?,
        }
    }
    if let Some(Sides { slot: i, dst, .. }) = sides(db, slot, node)? {
        deadline
            .run(db, i, slot, move |w| {
                w.on(Side::Dest, || dst.file.sync_all())
                    .map_err(CopyError::Dest)
            })
            .or_else(|e| side_failed(db, slot, i, "reseed fsync", e))?;
    }
    verify_orphan(db, slot, node, &mut deadline, progress)?;
    Ok(copied)
}

/// Compares the copy of a file with no name left with its source, chunk by chunk under
/// the chunk's locks.
fn verify_orphan(
    db: &Database,
    slot: CopySlot,
    node: &Node,
    deadline: &mut Deadline,
    progress: &Progress,
) -> Result<(), SeedError> {
    let io = &node.io;
    // The buffers go with the reads to the copy's threads and come back with them (one
    // left with an abandoned read is replaced).
    let mut bufs = (Vec::new(), Vec::new());
    let mut offset = 0u64;
    loop {
        still_seeding(db, slot, progress)?;
        progress.job.pacer.take(CHUNK);
        let _resize = io.resize.read();
        let mut stripes = io.lock_range(offset, CHUNK);
        let Some(Sides { slot: i, src, dst }) = sides(db, slot, node)? else {
            return Ok(());
        };
        let read = |deadline: &mut Deadline,
                    bufs: &mut (Vec<u8>, Vec<u8>)|
         -> Result<Option<(usize, usize)>, SeedError> {
            let (mut a, mut b) = std::mem::take(bufs);
            a.resize(CHUNK as usize, 0);
            b.resize(CHUNK as usize, 0);
            let (s, d) = (src.clone(), dst.clone());
            let r = deadline.run(db, i, slot, move |w| {
                let n = w
                    .on(Side::Source, || read_full(&s.file, offset, &mut a))
                    .map_err(CopyError::Source)?;
                let m = w
                    .on(Side::Dest, || read_full(&d.file, offset, &mut b))
                    .map_err(CopyError::Dest)?;
                Ok((a, b, n, m))
            });
            match r {
                Ok((a, b, n, m)) => {
                    *bufs = (a, b);
                    Ok(Some((n, m)))
                }
                Err(e) => side_failed(db, slot, i, "reseed verify", e).map(|()| None),
            }
        };
        let Some((mut n, mut m)) = read(deadline, &mut bufs)? else {
            continue;
        };
        if n != m {
            // The end of the file is in this chunk and a write past it (under other
            // stripes) has reached one side only: again, with every stripe held.
            drop(stripes);
            stripes = io.lock_range(0, u64::MAX);
            let Some(again) = read(deadline, &mut bufs)? else {
                continue;
            };
            (n, m) = again;
        }
        drop(stripes);
        let (a, b) = &bufs;
        if n != m || a[..n] != b[..m] {
            return Err(SeedError::Verify(format!(
                "an open file of {} with no name left differs at bytes {offset}..{} on {}",
                db.name,
                offset + n.max(m) as u64,
                db.copies()[slot].volume_name()
            )));
        }
        if n < CHUNK as usize {
            return Ok(());
        }
        offset += CHUNK;
    }
}
