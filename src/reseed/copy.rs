//! Phase 2 of a reseed (825 → 826): each file front to back in windows (at most
//! [`SeedRequest::window_bytes`], less under a throttle), data extents only (holes stay
//! holes), the destination preallocated, `O_DIRECT` where both filesystems allow it,
//! through a [`CopyEngine`]. Writes reaching the file meanwhile are routed by its
//! [`crate::copyset::SeedFile`]: below the window mirrored, beyond it skipped, inside it
//! recorded and copied again when the window closes. A read error on the source moves the
//! copy to another in-sync copy (3020).
//!
//! Everything done through the files' own descriptors (the engine, holes, sizes, the
//! window's dirty ranges, fsync) runs on the copy's own threads under the volumes'
//! deadline ([`Watched`]): a volume that stops answering for `io_timeout` is failed like
//! any timeout (1109, `reason: "timeout"`) and the reseed ends naming it, with the locks
//! the database's writes need released; the stuck call is abandoned in the kernel.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::engine::{CopyEngine, CopyError, Extent, data_extents, split_aligned};
use super::layout::{FileJob, Layout};
use super::watch::{Side, Watch, Watched};
use super::{Progress, SeedError, SeedRequest, Source, dest_failed};
use crate::copyset::CopyState;
use crate::copyset::Database;
use crate::events::{EventId, NewEvent};
use crate::fs::Core;
use crate::names::CopySlot;
use crate::throttle::StreamKind;
use crate::volume::{
    Advice, FileExt, Mode, OFlags, VolFile, Volume, is_media_error, is_timeout, punch_hole,
};

/// What phase 2 moved.
pub(super) struct Copied {
    pub(super) bytes: u64,
    pub(super) seconds: f64,
}

impl Copied {
    pub(super) fn mib_s(&self) -> f64 {
        self.bytes as f64 / 1048576.0 / self.seconds.max(1e-9)
    }
}

/// Phase 2: every file of the layout copied, then the directories synced; events 825 and
/// 826. `source` changes when the source fails and another copy takes over.
#[allow(clippy::too_many_arguments)]
pub(super) fn copy_files(
    core: &Core,
    req: &SeedRequest,
    source: &mut Source,
    target: &Arc<Volume>,
    layout: &Layout,
    engine: &mut Option<Box<dyn CopyEngine>>,
    fallback: Option<&str>,
    progress: &Progress,
) -> Result<Copied, SeedError> {
    let db = &req.db;
    let label = format!("{}\\{}", db.name, req.target);
    let engine_name = engine.as_ref().map_or("none", |e| e.name());
    let total: u64 = layout
        .files
        .iter()
        .filter_map(|f| f.nodes.first())
        .filter_map(|n| n.path())
        .filter_map(|p| source.volume.stat(&p).ok())
        .map(|st| st.st_size as u64)
        .sum();
    progress.job.set_total(total);
    progress.job.set_phase(super::Phase::Copying);
    core.pool().events().emit(
        NewEvent::new(
            EventId::SeedingStarted,
            format!(
                "seeding {label} from {} started: {} files, {} MiB, engine {}",
                source.volume.name(),
                layout.files.len(),
                total >> 20,
                engine_name
            ),
        )
        .database(&db.name)
        .volume(&req.target)
        .field("source", source.volume.name())
        .field("bytes", total)
        .field("files", layout.files.len() as u64)
        .field("engine", engine_name)
        .field("engine_fallback", fallback.unwrap_or_default()),
    );

    let paced = progress.job.pacer.begin(
        StreamKind::Reseed,
        db,
        Some(req.slot.index()),
        &[&source.volume, target],
    );
    let watched = Watched::new(&label, target.limits().io_timeout);
    if let Some(e) = engine.as_mut() {
        e.set_throttle(paced);
        e.set_watch(Some(watched.watch().clone()));
    }
    let started = Instant::now();
    let mut bytes = 0;
    for job in &layout.files {
        bytes += copy_file(core, req, source, target, job, engine, &watched, progress)?;
    }
    bytes += super::orphans::copy_orphans(db, req.slot, &layout.orphans, progress)?;
    for dir in layout.dirs.iter().rev() {
        let synced = target
            .open_file(dir, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
            .map_err(CopyError::Dest)
            .and_then(|d| {
                watched.run(source.volume.name(), target.name(), move |w| {
                    w.on(Side::Dest, || d.sync_all()).map_err(CopyError::Dest)
                })
            });
        match synced {
            Ok(()) => {}
            Err(CopyError::Dest(e)) | Err(CopyError::Source(e)) => {
                return Err(dest_failed(db, req.slot, "reseed fsync", e));
            }
        }
    }
    if let Some(e) = engine.as_mut() {
        e.set_throttle(None);
        e.set_watch(None);
    }
    let copied = Copied {
        bytes,
        seconds: started.elapsed().as_secs_f64(),
    };
    core.pool().events().emit(
        NewEvent::new(
            EventId::SeedingCompleted,
            format!(
                "seeding {label} completed: {} MiB in {:.1} s ({:.0} MiB/s, {})",
                bytes >> 20,
                copied.seconds,
                copied.mib_s(),
                engine_name
            ),
        )
        .database(&db.name)
        .volume(&req.target)
        .field("source", source.volume.name())
        .field("bytes", bytes)
        .field("seconds", copied.seconds)
        .field("mib_s", copied.mib_s())
        .field("engine", engine_name),
    );
    Ok(copied)
}

/// One file's open descriptors on both sides.
#[derive(Clone)]
struct Pair {
    src: VolFile,
    dst: VolFile,
    /// `O_DIRECT` descriptors, when both filesystems allow it.
    direct: Option<(VolFile, VolFile)>,
}

fn open_pair(src: &Volume, dst: &Volume, path: &Path) -> Result<Pair, (bool, io::Error)> {
    let s = src
        .open_file(path, OFlags::RDONLY, Mode::empty())
        .map_err(|e| (true, e))?;
    let d = dst
        .open_file(path, OFlags::WRONLY, Mode::empty())
        .map_err(|e| (false, e))?;
    let direct = match (
        src.open_file(path, OFlags::RDONLY | OFlags::DIRECT, Mode::empty()),
        dst.open_file(path, OFlags::WRONLY | OFlags::DIRECT, Mode::empty()),
    ) {
        (Ok(a), Ok(b)) => Some((a, b)),
        _ => None,
    };
    if direct.is_none() {
        src.advise(&s, 0, 0, Advice::Sequential);
    }
    Ok(Pair {
        src: s,
        dst: d,
        direct,
    })
}

enum Step {
    Copied(u64),
    Unlinked,
}

/// Phase 2 for one file: windows front to back until the last one closes.
#[allow(clippy::too_many_arguments)]
fn copy_file(
    core: &Core,
    req: &SeedRequest,
    source: &mut Source,
    target: &Volume,
    job: &FileJob,
    engine: &mut Option<Box<dyn CopyEngine>>,
    watched: &Watched,
    progress: &Progress,
) -> Result<u64, SeedError> {
    let db = &req.db;
    let mut total = 0;
    loop {
        match copy_file_from(db, req, source, target, job, engine, watched, progress) {
            Ok(Step::Copied(n)) => {
                total += n;
                return Ok(total);
            }
            Ok(Step::Unlinked) => {
                // Every write is mirrored to the new copy from here on. A handle still
                // open on the file keeps it alive with no name: it is copied through the
                // handles' descriptors (they have it on the new copy since the layout).
                job.seed.complete();
                if let Some(node) = job.nodes.iter().find(|n| n.any_open_files().is_some()) {
                    total += super::orphans::copy_orphan(db, req.slot, node, progress)?;
                }
                return Ok(total);
            }
            Err(CopyError::Dest(e)) if e.kind() == io::ErrorKind::Interrupted => {
                return Err(SeedError::Dest(e.to_string()));
            }
            Err(CopyError::Dest(e)) => return Err(dest_failed(db, req.slot, "reseed write", e)),
            Err(CopyError::Source(e)) if is_timeout(&e) => {
                // The source hung: it is failed like any timeout; the copy's threads are
                // stuck with it (and the engine), so this reseed ends here and AutoReseed
                // starts another from a copy that answers.
                let old = source.volume.name().to_owned();
                if db.copies()[source.slot].state() == CopyState::InSync {
                    db.on_error(source.slot.index(), "reseed read", &e, false);
                }
                return Err(SeedError::Source(format!(
                    "reading the source copy on {old} failed ({e}); the reseed of {}\\{} ends, to be retried from a copy that answers",
                    db.name, req.target
                )));
            }
            Err(CopyError::Source(e)) => {
                switch_source(core, req, source, e)?;
                progress.set_source(source.volume.name());
            }
        }
    }
}

/// The source failed with `e`: go on from another in-sync copy, failing the source's
/// volume when `e` is a media error; or give up when the source is the last copy in sync
/// (the database keeps running on it).
fn switch_source(
    core: &Core,
    req: &SeedRequest,
    source: &mut Source,
    e: io::Error,
) -> Result<(), SeedError> {
    let db = &req.db;
    let old = source.volume.name().to_owned();
    let other = db
        .copies()
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != req.slot && *i != source.slot)
        .find_map(|(i, c)| c.in_sync_volume().map(|v| (i, v)));
    let Some((slot, volume)) = other else {
        return Err(SeedError::Source(format!(
            "reading the source copy on {old} failed ({e}) and no other copy of {} is in sync; {} keeps running on {old}",
            db.name, db.name
        )));
    };
    if is_media_error(&e) && db.copies()[source.slot].state() == CopyState::InSync {
        db.on_error(source.slot.index(), "reseed read", &e, false);
    }
    *source = Source {
        slot: CopySlot::new(slot),
        volume,
    };
    core.pool().events().emit(
        NewEvent::new(
            EventId::ReseedSourceChanged,
            format!(
                "reseed of {}\\{}: reading {old} failed ({e}); going on from {}",
                db.name,
                req.target,
                source.volume.name()
            ),
        )
        .database(&db.name)
        .volume(&req.target)
        .field("from", old)
        .field("to", source.volume.name()),
    );
    Ok(())
}

fn source_ok(db: &Database, source: &Source) -> Result<(), CopyError> {
    if db.copies()[source.slot].state() != CopyState::InSync {
        return Err(CopyError::Source(io::Error::from_raw_os_error(libc::EIO)));
    }
    source.volume.check_read().map_err(CopyError::Source)
}

/// The windows of one file from `source`, until the last one closes (or the file is
/// unlinked). The locks are taken here; what uses the descriptors runs on `watched`'s
/// threads, so that a hung volume never keeps the locks past its deadline.
#[allow(clippy::too_many_arguments)]
fn copy_file_from(
    db: &Database,
    req: &SeedRequest,
    source: &Source,
    target: &Volume,
    job: &FileJob,
    engine: &mut Option<Box<dyn CopyEngine>>,
    watched: &Watched,
    progress: &Progress,
) -> Result<Step, CopyError> {
    let (from, to) = (source.volume.name(), target.name());
    let pair = {
        let _namespace = db.namespace_shared();
        let Some(path) = job.path() else {
            return Ok(Step::Unlinked);
        };
        source_ok(db, source)?;
        match open_pair(&source.volume, target, &path) {
            Ok(p) => p,
            Err((_, e)) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Step::Unlinked),
            Err((true, e)) => return Err(CopyError::Source(e)),
            Err((false, e)) => return Err(CopyError::Dest(e)),
        }
    };
    let (slot, window_bytes) = (req.slot, req.window_bytes);
    let mut copied = 0;
    loop {
        progress.check_cancel()?;
        if db.copies()[slot].state() != CopyState::Seeding {
            return Err(CopyError::Dest(io::Error::other(
                "the new copy was failed during the reseed (see its events)",
            )));
        }
        source_ok(db, source)?;
        let _resize: Vec<_> = job.nodes.iter().map(|n| n.io.resize.read()).collect();
        let src = pair.src.clone();
        let size = watched.run(from, to, move |w| {
            w.on(Side::Source, || size_of(&src))
                .map_err(CopyError::Source)
        })?;
        let start = job.seed.copied();
        let window = progress.job.pacer.window(window_bytes);
        let end = if size > start.saturating_add(window) {
            start + window
        } else {
            u64::MAX
        };
        job.seed.open_window(end);
        // Writers already inside the window finish first; later ones record it dirty.
        for n in &job.nodes {
            drop(n.io.lock_range(start, end - start));
        }
        let p = pair.clone();
        let (n, stop) = watched.run_engine(engine, from, to, move |w, engine| {
            let stop = if end == u64::MAX {
                w.on(Side::Source, || size_of(&p.src))
                    .map_err(CopyError::Source)?
            } else {
                end
            };
            let mut n = 0;
            if stop > start {
                n = copy_range(&p, start, stop, engine, w)?;
            }
            if end == u64::MAX
                && w.on(Side::Dest, || size_of(&p.dst))
                    .map_err(CopyError::Dest)?
                    != stop
            {
                w.on(Side::Dest, || p.dst.set_len(stop))
                    .map_err(CopyError::Dest)?;
            }
            Ok((n, stop))
        })?;
        copied += n;
        for (off, len) in job.seed.close_window() {
            progress.job.pacer.take(len);
            let _stripes: Vec<_> = job
                .nodes
                .iter()
                .map(|n| n.io.lock_range(off, len))
                .collect();
            let p = pair.clone();
            copied += watched.run(from, to, move |w| {
                copy_buffered(&p.src, &p.dst, off, len, w)
            })?;
        }
        progress.job.add_done(stop.saturating_sub(start));
        fail::fail_point!("reseed::after_window");
        if end == u64::MAX {
            break;
        }
    }
    job.seed.complete();
    let dst = pair.dst.clone();
    watched.run(from, to, move |w| {
        w.on(Side::Dest, || dst.sync_all()).map_err(CopyError::Dest)
    })?;
    Ok(Step::Copied(copied))
}

pub(super) fn size_of(f: &File) -> io::Result<u64> {
    Ok(f.metadata()?.len())
}

/// Copies the data of `[start, stop)`: holes punched on the destination, data extents
/// preallocated and copied (aligned parts with `O_DIRECT` when possible).
fn copy_range(
    pair: &Pair,
    start: u64,
    stop: u64,
    engine: &mut dyn CopyEngine,
    w: &Watch,
) -> Result<u64, CopyError> {
    let extents = w
        .on(Side::Source, || data_extents(&pair.src, start, stop))
        .map_err(CopyError::Source)?;
    let mut pos = start;
    for e in extents.iter().chain(std::iter::once(&Extent {
        offset: stop,
        len: 0,
    })) {
        if e.offset > pos {
            // A hole in the source: make sure the destination has one too (it may hold
            // data there after a collapse or insert range moved the file's contents).
            w.on(Side::Dest, || punch_hole(&pair.dst, pos, e.offset - pos))
                .map_err(CopyError::Dest)?;
        }
        if e.len > 0 {
            w.on(Side::Dest, || {
                crate::volume::preallocate_keep_size(&pair.dst, e.offset, e.len)
            });
        }
        pos = e.offset + e.len;
    }
    w.check().map_err(CopyError::Dest)?;
    match &pair.direct {
        Some((src, dst)) => {
            let (aligned, rest) = split_aligned(&extents);
            let a = engine.copy(src, dst, &aligned, true)?;
            let b = engine.copy(&pair.src, &pair.dst, &rest, false)?;
            Ok(a + b)
        }
        None => engine.copy(&pair.src, &pair.dst, &extents, false),
    }
}

fn copy_buffered(
    src: &File,
    dst: &File,
    offset: u64,
    len: u64,
    w: &Watch,
) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; len.min(1 << 20) as usize];
    let mut done = 0;
    while done < len {
        w.check().map_err(CopyError::Dest)?;
        let n = ((len - done) as usize).min(buf.len());
        let got = w
            .on(Side::Source, || {
                crate::volume::read_full(src, offset + done, &mut buf[..n])
            })
            .map_err(CopyError::Source)?;
        if got == 0 {
            break;
        }
        w.on(Side::Dest, || dst.write_all_at(&buf[..got], offset + done))
            .map_err(CopyError::Dest)?;
        done += got as u64;
    }
    Ok(done)
}
