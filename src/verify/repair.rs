//! What `reseedfs verify --repair` rewrites on a copy that differs, from the active copy,
//! under the locks the comparison holds, made durable and read back to confirm: data
//! extents, sizes, xattrs (modes and owners are set where they are compared, in the tree
//! pass). Names present on one side only, kinds and symlink targets are not repaired:
//! that copy needs a reseed.

use crate::volume::FileExt;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use std::sync::Arc;

use super::Run;
use super::tree::xattrs;
use crate::fs::Node;
use crate::volume::Volume;
use crate::volume::read_full;

impl Run<'_> {
    /// Makes the xattrs of `path` on `v` those of the active copy; true when they are now.
    pub(super) fn repair_xattrs(
        &self,
        path: &Path,
        v: &Volume,
        want: &BTreeMap<Vec<u8>, Vec<u8>>,
        have: &BTreeMap<Vec<u8>, Vec<u8>>,
    ) -> bool {
        use crate::volume::OsStrExt;
        for key in have.keys().filter(|k| !want.contains_key(*k)) {
            if v.remove_xattr(path, std::ffi::OsStr::from_bytes(key))
                .is_err()
            {
                return false;
            }
        }
        if crate::reseed::copy_xattrs(&self.active.volume, v, path).is_err() {
            return false;
        }
        xattrs(v, path).is_ok_and(|now| &now == want)
    }
}

/// Rewrites `a[start..end]` (the active copy's bytes of the chunk at `offset`) on `o`,
/// makes it durable and reads it back into `b`; true when it now matches.
pub(super) fn repair_extent(
    o: &File,
    a: &[u8],
    b: &mut [u8],
    offset: u64,
    start: usize,
    end: usize,
) -> bool {
    let at = offset + start as u64;
    if o.write_all_at(&a[start..end], at).is_err() || o.sync_data().is_err() {
        return false;
    }
    matches!(read_full(o, at, &mut b[start..end]), Ok(n) if n == end - start)
        && a[start..end] == b[start..end]
}

/// Truncates (or extends) `other`, a copy of the file whose names are `nodes`, to the
/// size of `active`, with every node's resize lock held exclusively (no write or truncate
/// in between), and checks it; true when the sizes now match.
pub(super) fn repair_size(nodes: &[Arc<Node>], active: &File, other: Option<&File>) -> bool {
    let _resize: Vec<_> = nodes.iter().map(|n| n.io.resize.write()).collect();
    let a_now = size_of(active).ok();
    match (a_now, other) {
        (Some(a_now), Some(o)) => {
            o.set_len(a_now).is_ok() && o.sync_all().is_ok() && size_of(o).ok() == Some(a_now)
        }
        _ => false,
    }
}

/// The size of an open file.
pub(super) fn size_of(f: &File) -> std::io::Result<u64> {
    Ok(f.metadata()?.len())
}
