//! The daemon's own files on the system disk (the pool state witness, the event log, the
//! measured throughputs, the control socket): private to root, and made so that no other
//! user can have a hand in them.
//!
//! - A [`PrivateDir`] is owned by us (root), not writable by anyone else (mode 0700, or
//!   0750 for the state directory when a `control_group` may read it), and so is every
//!   directory above it (or it has the sticky bit, as `/tmp`): nobody else can add, remove
//!   or replace a name in it. An existing directory with looser rights is tightened; one
//!   owned by another user is refused.
//! - Files are opened relative to the directory's descriptor with `O_NOFOLLOW`; a file
//!   is replaced atomically through a temporary name created `O_CREAT | O_EXCL |
//!   O_NOFOLLOW`, with its mode given at creation (0600 unless said otherwise), so
//!   nothing depends on the umask the daemon was started with.
//! - A file read back (the witness) must be a regular file owned by us that nobody else
//!   can write; anything else is reported, never trusted.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

// What does not depend on the platform (the Windows module includes it too).
mod write;
pub use write::write_file;

/// Mode bits that let someone other than the owner write.
const OTHERS_WRITE: u32 = 0o022;

/// A directory only we can change (see the module documentation).
#[derive(Debug)]
pub struct PrivateDir {
    path: PathBuf,
    fd: OwnedFd,
}

/// An error naming `path`.
fn at(path: &Path, doing: &str, e: impl Into<io::Error>) -> io::Error {
    let e = e.into();
    io::Error::new(e.kind(), format!("{doing} {}: {e}", path.display()))
}

fn insecure(path: &Path, why: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("{} is not private to root: {why}", path.display()),
    )
}

/// Us: the owner every private file and directory must have.
fn me() -> u32 {
    rustix::process::geteuid().as_raw()
}

impl PrivateDir {
    /// Creates the directory `path` (and missing parents, mode 0755) with `mode` (no write
    /// bit for group or others) and, when given, group `group`; an existing one is given
    /// that mode and group. Refuses when `path` or a directory above it is owned by
    /// someone else or writable by others without the sticky bit.
    pub fn create(path: &Path, mode: u32, group: Option<u32>) -> io::Result<PrivateDir> {
        debug_assert_eq!(
            mode & OTHERS_WRITE,
            0,
            "a private directory is writable by others"
        );
        if !path.is_absolute() {
            return Err(at(
                path,
                "create private directory",
                io::Error::from(io::ErrorKind::InvalidInput),
            ));
        }
        let mut missing = Vec::new();
        let mut p = path;
        while std::fs::symlink_metadata(p).is_err() {
            missing.push(p);
            match p.parent() {
                Some(parent) => p = parent,
                None => break,
            }
        }
        for (i, dir) in missing.iter().rev().enumerate() {
            let last = i + 1 == missing.len();
            let m = if last { mode } else { 0o755 };
            match rustix::fs::mkdir(*dir, Mode::from_raw_mode(m)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(at(dir, "create directory", e)),
            }
        }
        check_ancestors(path)?;
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| at(path, "open directory", e))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| at(path, "stat", e))?;
        if st.st_uid != me() {
            return Err(insecure(
                path,
                format!(
                    "it belongs to uid {}: remove it, or choose another directory",
                    st.st_uid
                ),
            ));
        }
        if st.st_mode & 0o7777 != mode {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(|e| at(path, "chmod", e))?;
        }
        let gid = group.unwrap_or(st.st_gid);
        if st.st_gid != gid {
            rustix::fs::fchown(&fd, None, Some(rustix::fs::Gid::from_raw(gid)))
                .map_err(|e| at(path, "chgrp", e))?;
        }
        Ok(PrivateDir {
            path: path.to_owned(),
            fd,
        })
    }

    /// Opens the existing private directory `path` to read from it; `None` when it does not
    /// exist. Fails when it, or a directory above it, is not private.
    pub fn open(path: &Path) -> io::Result<Option<PrivateDir>> {
        let fd = match rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(at(path, "open directory", e)),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| at(path, "stat", e))?;
        if st.st_uid != me() || st.st_mode & OTHERS_WRITE != 0 {
            return Err(insecure(
                path,
                format!("owner uid {}, mode {:o}", st.st_uid, st.st_mode & 0o7777),
            ));
        }
        check_ancestors(path)?;
        Ok(Some(PrivateDir {
            path: path.to_owned(),
            fd,
        }))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file `name` with `data`, durably and atomically (temporary file
    /// created `O_EXCL | O_NOFOLLOW` with `mode`, fsync, rename, fsync of the directory).
    pub fn write_atomic(&self, name: &str, data: &[u8], mode: u32) -> io::Result<()> {
        let tmp = format!("{name}.tmp");
        let path = self.path.join(name);
        // Only we write here: a leftover is ours, from a crash.
        match rustix::fs::unlinkat(&self.fd, tmp.as_str(), rustix::fs::AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(at(&self.path.join(&tmp), "remove", e)),
        }
        let fd = rustix::fs::openat(
            &self.fd,
            tmp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )
        .map_err(|e| at(&self.path.join(&tmp), "create", e))?;
        // The umask may have taken bits away; what is asked is what the file gets.
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(|e| at(&path, "chmod", e))?;
        let file = File::from(fd);
        std::io::Write::write_all(&mut &file, data).map_err(|e| at(&path, "write", e))?;
        file.sync_all().map_err(|e| at(&path, "fsync", e))?;
        drop(file);
        rustix::fs::renameat(&self.fd, tmp.as_str(), &self.fd, name)
            .map_err(|e| at(&path, "rename into place", e))?;
        rustix::fs::fsync(&self.fd).map_err(|e| at(&self.path, "fsync", e))
    }

    /// The content of the file `name`; `None` when it does not exist. Fails when it is not
    /// a regular file owned by us that nobody else can write.
    pub fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        let path = self.path.join(name);
        let fd = match rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(at(&path, "open", e)),
        };
        check_file(&path, &fd)?;
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut File::from(fd), &mut data)
            .map_err(|e| at(&path, "read", e))?;
        Ok(Some(data))
    }

    /// Opens the file `name` for appending, creating it with `mode` (and group `group`); an
    /// existing one must be a regular file of ours, and is given that mode and group.
    pub fn append(&self, name: &str, mode: u32, group: Option<u32>) -> io::Result<File> {
        let path = self.path.join(name);
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::WRONLY
                | OFlags::APPEND
                | OFlags::CREATE
                | OFlags::NOFOLLOW
                | OFlags::NONBLOCK
                | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )
        .map_err(|e| at(&path, "open", e))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| at(&path, "stat", e))?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile
            || st.st_uid != me()
        {
            return Err(insecure(
                &path,
                format!("owner uid {}, not a regular file of ours", st.st_uid),
            ));
        }
        if st.st_mode & 0o7777 != mode {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
                .map_err(|e| at(&path, "chmod", e))?;
        }
        if let Some(gid) = group.filter(|g| *g != st.st_gid) {
            rustix::fs::fchown(&fd, None, Some(rustix::fs::Gid::from_raw(gid)))
                .map_err(|e| at(&path, "chgrp", e))?;
        }
        rustix::fs::fcntl_setfl(&fd, OFlags::APPEND).map_err(|e| at(&path, "fcntl", e))?;
        Ok(File::from(fd))
    }

    /// Removes the file `name` (nothing when it does not exist).
    pub fn remove(&self, name: impl AsRef<OsStr>) -> io::Result<()> {
        let name = name.as_ref();
        match rustix::fs::unlinkat(&self.fd, name, rustix::fs::AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(at(&self.path.join(name), "remove", e)),
        }
    }

    /// The directory's descriptor.
    pub fn fd(&self) -> impl AsFd + '_ {
        &self.fd
    }
}

/// A file read back must be a regular file of ours that nobody else can write.
fn check_file(path: &Path, fd: &OwnedFd) -> io::Result<()> {
    let st = rustix::fs::fstat(fd).map_err(|e| at(path, "stat", e))?;
    let regular =
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile;
    if !regular || st.st_uid != me() || st.st_mode & OTHERS_WRITE != 0 {
        return Err(insecure(
            path,
            format!(
                "{}owner uid {}, mode {:o}",
                if regular { "" } else { "not a regular file, " },
                st.st_uid,
                st.st_mode & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Every directory above `path` (as written, and as resolved) must be owned by root or us,
/// and not writable by others unless it has the sticky bit: else someone else could move
/// `path` away and put another in its place.
fn check_ancestors(path: &Path) -> io::Result<()> {
    let resolved = std::fs::canonicalize(path).map_err(|e| at(path, "resolve", e))?;
    for chain in [path, resolved.as_path()] {
        for dir in chain.ancestors().skip(1) {
            let Ok(md) = std::fs::symlink_metadata(dir) else {
                continue;
            };
            if !md.is_dir() {
                continue; // a symlink: the directory holding it is checked too
            }
            use std::os::unix::fs::MetadataExt as _;
            let owner_ok = md.uid() == 0 || md.uid() == me();
            let sticky = md.mode() & 0o1000 != 0;
            if !owner_ok || (md.mode() & OTHERS_WRITE != 0 && !sticky) {
                return Err(insecure(
                    path,
                    format!(
                        "{} above it belongs to uid {} with mode {:o}: someone else could replace it",
                        dir.display(),
                        md.uid(),
                        md.mode() & 0o7777
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("reseedfs-private-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("tempdir");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        d
    }

    #[test]
    fn r14_modes_do_not_depend_on_the_umask() {
        let d = tempdir("modes");
        // The daemon clears its umask; whatever it was, the modes are the ones asked for.
        let old = rustix::process::umask(Mode::empty());
        let dir = PrivateDir::create(&d.join("a/b/state"), 0o700, None);
        rustix::process::umask(Mode::from_raw_mode(0o077));
        let loose = PrivateDir::create(&d.join("loose"), 0o750, None);
        rustix::process::umask(old);
        let dir = dir.expect("create");
        let loose = loose.expect("create");
        let mode = |p: &Path| std::fs::symlink_metadata(p).expect("stat").mode() & 0o7777;
        assert_eq!(mode(dir.path()), 0o700);
        assert_eq!(mode(&d.join("a")), 0o755);
        assert_eq!(mode(loose.path()), 0o750);
        dir.write_atomic("w.json", b"{}", 0o600).expect("write");
        assert_eq!(mode(&dir.path().join("w.json")), 0o600);
        assert_eq!(dir.read("w.json").expect("read"), Some(b"{}".to_vec()));
        assert_eq!(dir.read("missing").expect("read"), None);
        let f = dir.append("events.jsonl", 0o640, None).expect("append");
        drop(f);
        assert_eq!(mode(&dir.path().join("events.jsonl")), 0o640);
        std::fs::remove_dir_all(&d).expect("cleanup");
    }

    #[test]
    fn r14_loose_directories_are_tightened_and_planted_names_are_not_followed() {
        let d = tempdir("loose");
        let w = d.join("witness");
        std::fs::create_dir(&w).expect("mkdir");
        std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        // What a local user could plant in a 0777 directory: the temporary name as a
        // symlink to a file of root's, and the file itself as a symlink.
        let victim = d.join("victim");
        std::fs::write(&victim, b"root's").expect("victim");
        std::os::unix::fs::symlink(&victim, w.join("p.json.tmp")).expect("symlink");
        assert!(
            PrivateDir::open(&w).is_err(),
            "a 0777 directory is not private"
        );
        let dir = PrivateDir::create(&w, 0o700, None).expect("take it over");
        assert_eq!(std::fs::metadata(&w).expect("stat").mode() & 0o7777, 0o700);
        dir.write_atomic("p.json", b"state", 0o600).expect("write");
        assert_eq!(std::fs::read(&victim).expect("victim"), b"root's");
        assert_eq!(std::fs::read(w.join("p.json")).expect("read"), b"state");
        // A state file others can write is not trusted.
        std::fs::set_permissions(w.join("p.json"), std::fs::Permissions::from_mode(0o666))
            .expect("chmod");
        let e = dir.read("p.json").expect_err("0666 file");
        assert!(e.to_string().contains("not private"), "{e}");
        std::os::unix::fs::symlink(&victim, w.join("q.json")).expect("symlink");
        assert!(dir.read("q.json").is_err(), "a symlink is not followed");
        // A directory above that others can write (no sticky bit) is refused.
        let open = d.join("open");
        std::fs::create_dir(&open).expect("mkdir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let e = PrivateDir::create(&open.join("state"), 0o700, None).expect_err("open parent");
        assert!(e.to_string().contains("could replace it"), "{e}");
        std::fs::remove_dir_all(&d).expect("cleanup");
    }
}
