//! The daemon's own files on the system disk, Windows: the same API as `src/private.rs`
//! (which is built on Unix descriptors, owners and modes). On Windows the state, witness
//! and event directories live under `C:\ProgramData\reseedfs`, whose inherited ACL gives
//! Administrators and SYSTEM full control and other users read access at most; the
//! directory is created there with that inherited ACL, and the Unix modes and the
//! `control_group` asked for are not translated (the control pipe has its own security
//! descriptor, `platform/windows/pipe.rs`). Files are replaced atomically by a temporary
//! name and a rename, as on Unix.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

// The platform-neutral part, the same file as the Unix module's.
#[path = "../../src/private/write.rs"]
mod write;
pub use write::write_file;

/// A directory for the daemon's own files (see the module documentation).
#[derive(Debug)]
pub struct PrivateDir {
    path: PathBuf,
}

/// An error naming `path`.
fn at(path: &Path, doing: &str, e: impl Into<io::Error>) -> io::Error {
    let e = e.into();
    io::Error::new(e.kind(), format!("{doing} {}: {e}", path.display()))
}

impl PrivateDir {
    /// Creates the directory `path` (and missing parents); `mode` and `group` are Unix
    /// rights, not translated on Windows (the directory inherits its parent's ACL).
    pub fn create(path: &Path, _mode: u32, _group: Option<u32>) -> io::Result<PrivateDir> {
        if !path.is_absolute() {
            return Err(at(
                path,
                "create private directory",
                io::Error::from(io::ErrorKind::InvalidInput),
            ));
        }
        std::fs::create_dir_all(path).map_err(|e| at(path, "create directory", e))?;
        if !std::fs::symlink_metadata(path)
            .map_err(|e| at(path, "stat", e))?
            .is_dir()
        {
            return Err(at(
                path,
                "open private directory",
                io::Error::other("not a directory"),
            ));
        }
        Ok(PrivateDir {
            path: path.to_owned(),
        })
    }

    /// Opens the existing directory `path`; `None` when it does not exist.
    pub fn open(path: &Path) -> io::Result<Option<PrivateDir>> {
        match std::fs::symlink_metadata(path) {
            Ok(md) if md.is_dir() => Ok(Some(PrivateDir {
                path: path.to_owned(),
            })),
            Ok(_) => Err(at(
                path,
                "open private directory",
                io::Error::other("not a directory"),
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(at(path, "stat", e)),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file `name` with `data`, durably and atomically (temporary file,
    /// flush, rename over the old one).
    pub fn write_atomic(&self, name: &str, data: &[u8], _mode: u32) -> io::Result<()> {
        let tmp = self.path.join(format!("{name}.tmp"));
        let path = self.path.join(name);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| at(&tmp, "create", e))?;
        file.write_all(data).map_err(|e| at(&path, "write", e))?;
        file.sync_all().map_err(|e| at(&path, "flush", e))?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(|e| at(&path, "rename into place", e))
    }

    /// The content of the file `name`; `None` when it does not exist. Fails when it is not
    /// a regular file.
    pub fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        let path = self.path.join(name);
        match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(at(&path, "stat", e)),
            Ok(md) if !md.is_file() => {
                return Err(at(&path, "read", io::Error::other("not a regular file")));
            }
            Ok(_) => {}
        }
        std::fs::read(&path)
            .map(Some)
            .map_err(|e| at(&path, "read", e))
    }

    /// Opens the file `name` for appending, creating it; an existing one must be a
    /// regular file.
    pub fn append(&self, name: &str, _mode: u32, _group: Option<u32>) -> io::Result<File> {
        let path = self.path.join(name);
        if let Ok(md) = std::fs::symlink_metadata(&path)
            && !md.is_file()
        {
            return Err(at(&path, "open", io::Error::other("not a regular file")));
        }
        OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| at(&path, "open", e))
    }

    /// Removes the file `name` (nothing when it does not exist).
    pub fn remove(&self, name: impl AsRef<OsStr>) -> io::Result<()> {
        let path = self.path.join(name.as_ref());
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(at(&path, "remove", e)),
        }
    }
}
