//! What the daemon's private files need that does not depend on the platform: built on
//! [`PrivateDir`]'s API, which `src/private.rs` (Unix) and `platform/windows/private.rs`
//! both provide, and compiled into each of them.

use std::ffi::OsStr;
use std::io;
use std::path::Path;

use super::{PrivateDir, at};

/// Replaces `path` (in a private directory that must exist) with `data`, mode 0600 (on
/// Windows, the directory's inherited ACL).
pub fn write_file(path: &Path, data: &[u8]) -> io::Result<()> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(OsStr::to_str)) else {
        return Err(at(
            path,
            "write",
            io::Error::from(io::ErrorKind::InvalidInput),
        ));
    };
    let dir = PrivateDir::open(dir)?.ok_or_else(|| {
        at(
            dir,
            "open directory",
            io::Error::from(io::ErrorKind::NotFound),
        )
    })?;
    dir.write_atomic(name, data, 0o600)
}
