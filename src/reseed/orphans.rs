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

use std::io;
use std::sync::Arc;

use super::{Progress, SeedError, dest_failed};
use crate::copyset::{BackingFile, CopyState, Database, OpenFiles};
use crate::fs::Node;
use crate::names::CopySlot;
use crate::tap::reconcile::{self, SideError};
use crate::volume::{is_media_error, read_full};

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

/// Copies one file with no name left onto copy `slot`, then compares it. Returns the
/// bytes of data copied.
pub(crate) fn copy_orphan(
    db: &Database,
    slot: CopySlot,
    node: &Node,
    progress: &Progress,
) -> Result<u64, SeedError> {
    let io = &node.io;
    let mut copied = 0;
    let mut offset = 0u64;
    loop {
        still_seeding(db, slot, progress)?;
        progress.job.pacer.take(CHUNK);
        let _resize = io.resize.read();
        let Some(Sides { slot: i, src, dst }) = sides(db, slot, node)? else {
            return Ok(copied);
        };
        let size = match src.file.metadata() {
            Ok(m) => m.len(),
            Err(e) => {
                source_failed(db, i.index(), e)?;
                continue;
            }
        };
        if offset >= size {
            // The end: under every stripe, no write can move it while the destination
            // takes the source's size (a truncate waits for the resize lock).
            let _all = io.lock_range(0, u64::MAX);
            let size = match src.file.metadata() {
                Ok(m) => m.len(),
                Err(e) => {
                    source_failed(db, i.index(), e)?;
                    continue;
                }
            };
            if offset < size {
                continue;
            }
            let len = dst
                .file
                .metadata()
                .map_err(|e| dest_failed(db, slot, "reseed write", e))?
                .len();
            if len != size {
                dst.file
                    .set_len(size)
                    .map_err(|e| dest_failed(db, slot, "reseed write", e))?;
            }
            break;
        }
        let _stripes = io.lock_range(offset, CHUNK);
        match reconcile::copy_extent(&src.file, &dst.file, offset, CHUNK) {
            Ok(n) => {
                copied += n;
                progress.job.add_done(n);
                offset += CHUNK;
            }
            Err(SideError::Source(e)) => source_failed(db, i.index(), e)?,
            Err(SideError::Dest(e)) => return Err(dest_failed(db, slot, "reseed write", e)),
        }
    }
    if let Some(Sides { dst, .. }) = sides(db, slot, node)? {
        dst.file
            .sync_all()
            .map_err(|e| dest_failed(db, slot, "reseed fsync", e))?;
    }
    verify_orphan(db, slot, node, progress)?;
    Ok(copied)
}

/// Compares the copy of a file with no name left with its source, chunk by chunk under
/// the chunk's locks.
fn verify_orphan(
    db: &Database,
    slot: CopySlot,
    node: &Node,
    progress: &Progress,
) -> Result<(), SeedError> {
    let io = &node.io;
    let mut a = vec![0u8; CHUNK as usize];
    let mut b = vec![0u8; CHUNK as usize];
    let mut offset = 0u64;
    loop {
        still_seeding(db, slot, progress)?;
        progress.job.pacer.take(CHUNK);
        let _resize = io.resize.read();
        let mut stripes = io.lock_range(offset, CHUNK);
        let Some(Sides { slot: i, src, dst }) = sides(db, slot, node)? else {
            return Ok(());
        };
        let read = |a: &mut [u8], b: &mut [u8]| -> Result<Option<(usize, usize)>, SeedError> {
            let n = match read_full(&src.file, offset, a) {
                Ok(n) => n,
                Err(e) => {
                    source_failed(db, i.index(), e)?;
                    return Ok(None);
                }
            };
            let m = read_full(&dst.file, offset, b)
                .map_err(|e| dest_failed(db, slot, "reseed verify", e))?;
            Ok(Some((n, m)))
        };
        let Some((mut n, mut m)) = read(&mut a, &mut b)? else {
            continue;
        };
        if n != m {
            // The end of the file is in this chunk and a write past it (under other
            // stripes) has reached one side only: again, with every stripe held.
            drop(stripes);
            stripes = io.lock_range(0, u64::MAX);
            let Some(again) = read(&mut a, &mut b)? else {
                continue;
            };
            (n, m) = again;
        }
        drop(stripes);
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
