//! Phase 3 of a reseed (827 → 828): every file of the new copy compared with its source
//! chunk by chunk ([`CHUNK`]), each chunk under the file's write-ordering locks so that
//! concurrent writes cannot race it (the locked chunk comparison of
//! [`crate::verify::chunk`], which the resync and online verification use too), its CRC32
//! kept for the event; then the trees (names, kinds, modes, owners, link targets). With
//! checksums on, each chunk of the source is also checked against the source's sums (a
//! block that does not match is taken from another copy whose block does, or the reseed
//! fails naming it), and the new copy's sums are written from it, under the same locks:
//! a new copy is protected as soon as it is in sync, not after a scrub.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::names::CopySlot;
use crate::volume::{FileType, Mode, OFlags};

use super::copy::size_of;
use super::layout::Layout;
use super::{Phase, Progress, SeedError, SeedRequest, Source, dest_failed};
use crate::copyset::Database;
use crate::copyset::{CopyState, SeedSums};
use crate::events::{EventId, NewEvent};
use crate::fs::Core;
use crate::layout as names;
use crate::throttle::StreamKind;
use crate::verify::chunk::{ChunkLocks, ChunkReader};
use crate::volume::{Volume, child_path};

/// Bytes compared per step, under the chunk's stripe locks.
const CHUNK: usize = 4 << 20;

/// What phase 3 compared.
pub(super) struct Verified {
    pub(super) files: u64,
    pub(super) bytes: u64,
    /// CRC32 of the chunks' CRC32s, for the event.
    pub(super) checksum: u32,
}

/// Phase 3: events 827 and 828 around [`compare_files`] and [`compare_trees`].
pub(super) fn verify_copy(
    core: &Core,
    req: &SeedRequest,
    source: &Source,
    target: &Arc<Volume>,
    layout: &Layout,
    progress: &Progress,
) -> Result<Verified, SeedError> {
    let db = &req.db;
    let events = core.pool().events();
    let label = format!("{}\\{}", db.name, req.target);
    progress.job.pacer.begin(
        StreamKind::Verify,
        db,
        Some(req.slot.index()),
        &[&source.volume, target],
    );
    progress.job.set_phase(Phase::Verifying);
    events.emit(
        NewEvent::new(
            EventId::VerifyStarted,
            format!(
                "verification of {label} against {} started",
                source.volume.name()
            ),
        )
        .database(&db.name)
        .volume(&req.target)
        .field("source", source.volume.name()),
    );
    let verified = compare_files(db, req.slot, source, target, layout, progress)?;
    compare_trees(db, source, target)?;
    events.emit(
        NewEvent::new(
            EventId::VerifyCompleted,
            format!(
                "verification of {label} completed: {} files, {} MiB identical to {} (CRC32 per 4 MiB)",
                verified.files,
                verified.bytes >> 20,
                source.volume.name()
            ),
        )
        .database(&db.name)
        .volume(&req.target)
        .field("files", verified.files)
        .field("bytes", verified.bytes)
        .field("checksum", format!("{:08x}", verified.checksum)),
    );
    Ok(verified)
}

/// Every file of the new copy compared with the source, chunk by chunk under the chunk's
/// locks, both sides read at once.
fn compare_files(
    db: &Database,
    slot: CopySlot,
    source: &Source,
    target: &Volume,
    layout: &Layout,
    progress: &Progress,
) -> Result<Verified, SeedError> {
    let mut verified = Verified {
        files: 0,
        bytes: 0,
        checksum: 0,
    };
    let mut all = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32IsoHdlc);
    let source_err = |path: &Path, e: io::Error| {
        // A hung source is failed like any timeout (a read error leaves it to the reads
        // of the database, which fail over).
        if crate::volume::is_timeout(&e) && db.copies()[source.slot].state() == CopyState::InSync {
            db.on_error(source.slot.index(), "reseed verify", &e, false);
        }
        SeedError::Source(format!(
            "verifying {} against {}: reading the source failed: {e}",
            path.display(),
            source.volume.name()
        ))
    };
    let dest_err = |e| dest_failed(db, slot, "reseed verify", e);
    // The volumes' deadline: a hung disk fails its copy instead of holding the stripes.
    let mut reader = ChunkReader::new(2, CHUNK).with_deadline(
        target.limits().io_timeout,
        vec![source.volume.name().to_string(), target.name().to_string()],
    );
    for job in &layout.files {
        let (path, src, dst) = {
            let _namespace = db.namespace_shared();
            let Some(path) = job.path() else { continue };
            let open = |v: &Volume| v.open_file(&path, OFlags::RDONLY, Mode::empty());
            let src = open(&source.volume).map_err(|e| source_err(&path, e))?;
            let dst = open(target).map_err(dest_err)?;
            (path, src, dst)
        };
        let mut offset = 0u64;
        loop {
            progress
                .check_cancel()
                .map_err(|e| SeedError::Dest(e.to_string()))?;
            if db.copies()[slot].state() != CopyState::Seeding {
                return Err(SeedError::Dest(
                    "the new copy was failed during verification (see its events)".into(),
                ));
            }
            // Tokens first: no lock is held while waiting for them.
            let left = size_of(&src).map_err(|e| source_err(&path, e))?;
            progress
                .job
                .pacer
                .take(left.saturating_sub(offset).min(CHUNK as u64));
            let mut locks = ChunkLocks::take(&job.nodes, offset, CHUNK as u64);
            let sizes = || -> Result<(u64, u64), SeedError> {
                Ok((
                    size_of(&src).map_err(|e| source_err(&path, e))?,
                    size_of(&dst).map_err(dest_err)?,
                ))
            };
            let (mut ls, mut ld) = sizes()?;
            if ls != ld || offset.saturating_add(CHUNK as u64) >= ls {
                // A write elsewhere in the file may be extending it on one copy and not yet
                // on the other, and the last chunk may be the one it extends: decide with
                // every stripe held (no write in flight anywhere in the file).
                drop(locks);
                locks = ChunkLocks::take(&job.nodes, 0, u64::MAX);
                (ls, ld) = sizes()?;
            }
            if ls != ld {
                return Err(SeedError::Verify(format!(
                    "{} is {ls} bytes on {} but {ld} on {}",
                    path.display(),
                    source.volume.name(),
                    target.name()
                )));
            }
            if offset >= ls {
                break;
            }
            let mut reads = reader
                .read(&locks, &[Some(&src), Some(&dst)], offset, CHUNK)
                .into_iter();
            let n = reads
                .next()
                .unwrap_or(Ok(0))
                .map_err(|e| source_err(&path, e))?;
            let m = reads.next().unwrap_or(Ok(0)).map_err(dest_err)?;
            let (ca, cb) = (
                crc_fast::crc32_iso_hdlc(reader.bytes(0, n)),
                crc_fast::crc32_iso_hdlc(reader.bytes(1, m)),
            );
            if reader.differs(1, n, m) {
                return Err(SeedError::Verify(format!(
                    "{} differs at bytes {offset}..{}: CRC32 {ca:08x} on {} but {cb:08x} on {}",
                    path.display(),
                    offset + n as u64,
                    source.volume.name(),
                    target.name()
                )));
            }
            // Integrity: the source's blocks checked against its sums (a bad one taken
            // from another copy, or the reseed fails naming it), the new copy's sums
            // written, under the same locks.
            db.seed_chunk_sums(
                (source.slot, &source.volume, &src),
                (slot, target, &dst),
                &path,
                offset,
                reader.bytes(0, n),
                "reseed",
            )
            .map_err(|e| match e {
                SeedSums::Source(e) => source_err(&path, e),
                SeedSums::Dest(e) => dest_err(e),
                SeedSums::Unrecoverable(why) => SeedError::Source(why),
            })?;
            drop(locks);
            all.update(&ca.to_le_bytes());
            offset += n as u64;
            verified.bytes += n as u64;
            progress.job.add_done(n as u64);
            if n < CHUNK {
                break;
            }
        }
        verified.files += 1;
    }
    verified.checksum = all.finalize() as u32;
    Ok(verified)
}

/// The new copy has the source's names, kinds, modes, owners and link targets.
pub(super) fn compare_trees(
    db: &Database,
    source: &Source,
    target: &Volume,
) -> Result<(), SeedError> {
    let _namespace = db.namespace_exclusive();
    let mut todo: Vec<PathBuf> = names::db_folders(&db.name)
        .into_iter()
        .map(PathBuf::from)
        .collect();
    while let Some(path) = todo.pop() {
        let a = source
            .volume
            .stat(&path)
            .map_err(|e| SeedError::Source(format!("verify {}: {e}", path.display())))?;
        let b = target.stat(&path).map_err(|e| {
            SeedError::Verify(format!(
                "{} is missing on {}: {e}",
                path.display(),
                target.name()
            ))
        })?;
        let what = |st: &crate::volume::Stat| (st.st_mode, st.st_uid, st.st_gid);
        if what(&a) != what(&b) {
            return Err(SeedError::Verify(format!(
                "{}: mode/owner {:o} {}:{} on {} but {:o} {}:{} on {}",
                path.display(),
                a.st_mode,
                a.st_uid,
                a.st_gid,
                source.volume.name(),
                b.st_mode,
                b.st_uid,
                b.st_gid,
                target.name()
            )));
        }
        match FileType::from_raw_mode(a.st_mode) {
            FileType::Directory => {
                let names = |v: &Volume| -> io::Result<Vec<std::ffi::OsString>> {
                    let mut n: Vec<_> = v.read_dir(&path)?.into_iter().map(|e| e.name).collect();
                    n.sort();
                    Ok(n)
                };
                let na = names(&source.volume)
                    .map_err(|e| SeedError::Source(format!("verify {}: {e}", path.display())))?;
                let nb = names(target)
                    .map_err(|e| SeedError::Verify(format!("{}: {e}", path.display())))?;
                if na != nb {
                    return Err(SeedError::Verify(format!(
                        "directory {} lists {na:?} on {} but {nb:?} on {}",
                        path.display(),
                        source.volume.name(),
                        target.name()
                    )));
                }
                todo.extend(na.iter().map(|n| child_path(&path, n)));
            }
            FileType::Symlink => {
                let la = source.volume.readlink(&path).ok();
                let lb = target.readlink(&path).ok();
                if la != lb {
                    return Err(SeedError::Verify(format!(
                        "symlink {} points elsewhere on {}",
                        path.display(),
                        target.name()
                    )));
                }
            }
            _ => {}
        }
    }
    Ok(())
}
