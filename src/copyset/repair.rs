//! Repair after a crash: before the mount serves anything, the in-sync copies of a
//! database that was not stopped cleanly are compared where they can differ (the trees,
//! metadata only, and the extents in the activity log) and brought in line with the
//! active copy. The writes in flight at the crash were never acknowledged, so either
//! version is a valid one; what matters is that the copies agree. Then the checksums of
//! those extents are computed again on every copy (see [`crate::checksum`]).

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::Database;
use crate::checksum;
use crate::tap::activity::{self, Recovered};
use crate::tap::reconcile::{self, SideError};
use crate::volume::{Mode, OFlags, VolFile};

/// What a crash repair did for one database.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RepairReport {
    /// The database.
    pub db: String,
    /// Files named by the activity log.
    pub files: usize,
    /// 4 MiB extents named by the activity log.
    pub extents: usize,
    /// Bytes read from each copy to compare them (at most the extents' bytes).
    pub bytes_read: u64,
    /// Bytes rewritten on copies that differed.
    pub bytes_repaired: u64,
    /// Tree entries fixed (created, removed, metadata).
    pub tree_fixed: usize,
    /// Copies compared with the active one.
    pub copies: usize,
    /// Extents whose checksums were computed again (on every in-sync copy).
    pub extents_resummed: usize,
}

/// The activity logs of `db`'s in-sync copies, merged (`None`: no copy has one).
pub fn recovered(db: &Database) -> Option<Recovered> {
    let mut out: Option<Recovered> = None;
    for v in db.in_sync_volumes() {
        match activity::read(&v, &db.name) {
            Ok(Some(r)) => match &mut out {
                Some(o) => o.merge(r),
                None => out = Some(r),
            },
            Ok(None) => {}
            Err(e) => tracing::warn!("activity log of {} on {}: {e}", db.name, v.name()),
        }
    }
    out
}

/// Repairs the in-sync copies of `db` after an unclean stop, and widens the lagging
/// copies' dirty maps by the extents that may differ. Runs before the mount serves.
pub fn after_crash(db: &Database) -> Result<RepairReport, String> {
    let mut report = RepairReport {
        db: db.name.to_string(),
        ..RepairReport::default()
    };
    let Some(log) = recovered(db) else {
        return Ok(report);
    };
    if log.clean {
        return Ok(report);
    }
    db.tap().widen(&log.as_dirty());
    report.files = log.extents.len();
    report.extents = log
        .extents
        .values()
        .flat_map(|e| e.iter())
        .map(|r| usize::try_from(r.end - r.start).unwrap_or(usize::MAX))
        .fold(0usize, usize::saturating_add);
    let Some(active) = db.active_index() else {
        return Ok(report);
    };
    let Some(src) = db.copies()[active].in_sync_volume() else {
        return Ok(report);
    };
    for (slot, c) in db.copies().iter().enumerate() {
        if slot == active {
            continue;
        }
        let Some(dst) = c.in_sync_volume() else {
            continue;
        };
        report.copies += 1;
        let fail = |e: SideError| match e {
            SideError::Source(e) => format!(
                "crash repair of {}: reading the active copy on {} failed: {e}",
                db.name,
                src.name()
            ),
            SideError::Dest(e) => {
                db.on_error(slot, "crash repair", &e, true);
                format!(
                    "crash repair of {}: the copy on {} failed: {e}",
                    db.name,
                    dst.name()
                )
            }
        };
        let tree = reconcile::tree(&src, &dst, &db.name).map_err(fail)?;
        report.tree_fixed += tree.changed();
        let mut whole: Vec<(PathBuf, u64)> = tree.created.iter().map(|p| (p.clone(), 0)).collect();
        whole.extend(tree.grown.iter().cloned());
        for (path, from) in whole {
            let (a, b) = open_pair(&src, &dst, &path).map_err(fail)?;
            reconcile::copy_extent(&a, &b, from, u64::MAX - from).map_err(fail)?;
            b.sync_all().map_err(|e| fail(SideError::Dest(e)))?;
            if db.sums().enabled() {
                checksum::recompute(&dst, &db.name, &path, from, u64::MAX - from)
                    .map_err(|e| fail(SideError::Dest(e)))?;
            }
        }
        for (path, extents) in &log.extents {
            let (a, b) = match open_pair(&src, &dst, path) {
                Ok(p) => p,
                // Renamed or removed since: the tree pass settled it.
                Err(SideError::Source(e)) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => return Err(fail(e)),
            };
            let mut changed = false;
            for r in extents.iter() {
                // Extents past the end of the file cost nothing: the comparison stops at
                // the active copy's end.
                let start = activity::byte_of(r.start);
                let len = activity::byte_of(r.end).saturating_sub(start);
                let (read, fixed) = reconcile::repair_extent(&a, &b, start, len).map_err(fail)?;
                report.bytes_read += read;
                report.bytes_repaired += fixed;
                changed |= fixed > 0;
            }
            if changed {
                b.sync_all().map_err(|e| fail(SideError::Dest(e)))?;
            }
        }
    }
    if db.sums().enabled() {
        resum(db, &log, &mut report)?;
    }
    Ok(report)
}

/// The copies now agree on the logged extents; a write in flight at the crash may have
/// reached the data and not its sums (or the reverse), on any copy: the sums of those
/// extents are computed again from the data, on every in-sync copy. No false alarm after
/// a crash, and nothing else is trusted less than before.
fn resum(db: &Database, log: &Recovered, report: &mut RepairReport) -> Result<(), String> {
    for (slot, c) in db.copies().iter().enumerate() {
        let Some(v) = c.in_sync_volume() else {
            continue;
        };
        for (path, extents) in &log.extents {
            for r in extents.iter() {
                let start = activity::byte_of(r.start);
                let len = activity::byte_of(r.end).saturating_sub(start);
                if let Err(err) = checksum::recompute(&v, &db.name, path, start, len) {
                    db.on_error(slot, "crash repair checksums", &err, true);
                    return Err(format!(
                        "crash repair of {}: summing {} again on {} failed: {err}",
                        db.name,
                        path.display(),
                        v.name()
                    ));
                }
                report.extents_resummed += 1;
            }
        }
    }
    Ok(())
}

fn open_pair(
    src: &crate::volume::Volume,
    dst: &crate::volume::Volume,
    path: &Path,
) -> Result<(VolFile, VolFile), SideError> {
    let a = src
        .open_file(path, OFlags::RDONLY, Mode::empty())
        .map_err(SideError::Source)?;
    let b = dst
        .open_file(path, OFlags::RDWR, Mode::empty())
        .map_err(SideError::Dest)?;
    Ok((a, b))
}
