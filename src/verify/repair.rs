//! What `reseedfs verify --repair` rewrites on a copy that differs, from the active copy,
//! under the locks the comparison holds, made durable and read back to confirm: data
//! extents, sizes, xattrs (modes and owners are set where they are compared, in the tree
//! pass). Names present on one side only, kinds and symlink targets are not repaired:
//! that copy needs a reseed.
//!
//! The data and size repairs write through the copies' own descriptors with the file's
//! locks held, so they run under the volumes' deadline on the comparison's reader
//! ([`ChunkReader::within_deadline`]): a copy that does not answer within `io_timeout` is
//! failed as any timeout (1109, `reason: "timeout"`) and the verification ends with an
//! error naming its volume and the file, the locks released. Other errors leave the
//! difference reported unrepaired, as before; a media error fails the copy too.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::Path;

use super::chunk::ChunkReader;
use super::data::OpenGroup;
use super::tree::xattrs;
use super::{Run, VerifyError};
use crate::volume::{FileExt, VolFile, Volume, is_media_error, read_full};

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

impl Run<'_> {
    /// Rewrites block `[s, e)` of the chunk at `offset` of `f` on copy `to` (0: the active
    /// copy, `i + 1`: peer `i`) with copy `from`'s bytes (`n` of them read), makes it
    /// durable and reads it back into `to`'s buffer; true when it now matches.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn repair_extent(
        &self,
        reader: &mut ChunkReader,
        f: &OpenGroup,
        from: usize,
        to: usize,
        n: usize,
        offset: u64,
        (s, e): (usize, usize),
    ) -> Result<bool, VerifyError> {
        let Some(file) = copy_file(f, to) else {
            return Ok(false);
        };
        let want = reader.bytes(from, n)[s..e].to_vec();
        let at = offset + s as u64;
        let written = want.clone();
        let back = reader.within_deadline(to, "verify repair", move || {
            file.write_all_at(&written, at)?;
            file.sync_data()?;
            let mut back = vec![0u8; written.len()];
            let got = read_full(&file, at, &mut back)?;
            back.truncate(got);
            Ok(back)
        });
        match back {
            Ok(back) => {
                let (_, dst) = reader.pair(from, to, n);
                dst[s..s + back.len()].copy_from_slice(&back);
                Ok(back == want)
            }
            Err(err) => self.repair_failed(f, to, err),
        }
    }

    /// Truncates (or extends) copy `to` of `f` (`i + 1`: peer `i`) to the size of the
    /// active copy, with every node's resize lock held exclusively (no write or truncate
    /// in between), and checks it; true when the sizes now match.
    pub(super) fn repair_size(
        &self,
        reader: &ChunkReader,
        f: &OpenGroup,
        to: usize,
    ) -> Result<bool, VerifyError> {
        let Some(other) = copy_file(f, to) else {
            return Ok(false);
        };
        let _resize: Vec<_> = f.nodes.iter().map(|n| n.io.resize.write()).collect();
        let active = f.active.clone();
        let a_now = match reader.within_deadline(0, "verify repair", move || size_of(&active)) {
            Ok(size) => size,
            Err(err) => return self.repair_failed(f, 0, err),
        };
        let set = reader.within_deadline(to, "verify repair", move || {
            other.set_len(a_now)?;
            other.sync_all()?;
            size_of(&other)
        });
        match set {
            Ok(now) => Ok(now == a_now),
            Err(err) => self.repair_failed(f, to, err),
        }
    }

    /// A repair of copy `to` of `f` failed with `err`: a timeout or a media error fails
    /// the copy and ends the verification, naming the volume and the file; anything else
    /// leaves the difference unrepaired.
    fn repair_failed(&self, f: &OpenGroup, to: usize, err: io::Error) -> Result<bool, VerifyError> {
        if is_media_error(&err) {
            return Err(self.copy_error(to.checked_sub(1), "repair", &f.path, err));
        }
        Ok(false)
    }
}

/// The file of copy `c` of `f` (0: the active copy, `i + 1`: peer `i`).
fn copy_file(f: &OpenGroup, c: usize) -> Option<VolFile> {
    match c.checked_sub(1) {
        None => Some(f.active.clone()),
        Some(i) => f.others.get(i)?.clone(),
    }
}

/// The size of an open file.
pub(super) fn size_of(f: &File) -> std::io::Result<u64> {
    Ok(f.metadata()?.len())
}
