//! The mount point: what is mounted there, the dead mount a crashed daemon leaves behind,
//! and the source name the mount shows (`findmnt`, `df`, `mount -a`).

use std::path::Path;

use anyhow::{Context, bail};

/// The type of a reseedfs mount in `/proc/self/mountinfo`.
pub const FSTYPE: &str = "fuse.reseedfs";

/// The mount's source: the config file's absolute path, as the first field of its fstab
/// line, so that `mount -a` sees the line mounted. `reseedfs` when the path holds a
/// character a mount option cannot carry (a comma, a space, a non-UTF-8 byte).
pub fn fsname(config_path: &Path) -> String {
    std::path::absolute(config_path)
        .ok()
        .and_then(|p| p.to_str().map(str::to_owned))
        .filter(|p| !p.contains(|c: char| c == ',' || c == '\\' || c.is_whitespace()))
        .unwrap_or_else(|| "reseedfs".to_owned())
}

/// What is at the mount point now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountState {
    /// No reseedfs mount (a plain directory, or another filesystem).
    NotMounted,
    /// A reseedfs mount whose daemon answers.
    Live,
    /// A reseedfs mount whose daemon is gone: every access fails with ENOTCONN (or
    /// ECONNABORTED, as newer kernels say once the connection was torn down).
    Dead,
}

/// Looks at `root` (from `/proc/self/mountinfo`, then one `stat` through the mount).
pub fn state(root: &Path) -> MountState {
    if crate::testbed::mount_fstype(root).as_deref() != Some(FSTYPE) {
        return MountState::NotMounted;
    }
    match std::fs::metadata(root) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED)) => {
            MountState::Dead
        }
        _ => MountState::Live,
    }
}

/// Makes `root` ready for a new mount. A reseedfs mount whose daemon died (killed, or
/// crashed: systemd restarts it) is detached, as `umount -l` would; a live one is refused.
pub fn clear_stale(root: &Path) -> anyhow::Result<()> {
    match state(root) {
        MountState::NotMounted => Ok(()),
        MountState::Live => bail!(
            "{} is already mounted by a running reseedfs (see `findmnt {}`): unmount it first with `reseedfs unmount --config FILE`",
            root.display(),
            root.display()
        ),
        MountState::Dead => {
            tracing::warn!(
                "{}: the reseedfs mount of a daemon that is gone (transport endpoint is not connected): detaching it",
                root.display()
            );
            rustix::mount::unmount(root, rustix::mount::UnmountFlags::DETACH)
                .with_context(|| format!("detach the dead reseedfs mount at {}", root.display()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsname_is_the_config_path_when_it_can_be() {
        assert_eq!(
            fsname(Path::new("/etc/reseedfs/reseedfs.toml")),
            "/etc/reseedfs/reseedfs.toml"
        );
        assert!(fsname(Path::new("rel.toml")).ends_with("/rel.toml"));
        assert_eq!(fsname(Path::new("/etc/a b.toml")), "reseedfs");
        assert_eq!(fsname(Path::new("/etc/a,b.toml")), "reseedfs");
    }

    #[test]
    fn a_plain_directory_is_not_mounted() {
        let dir = std::env::temp_dir();
        assert_eq!(
            state(&dir.join("reseedfs-no-such-dir")),
            MountState::NotMounted
        );
        assert!(clear_stale(&dir.join("reseedfs-no-such-dir")).is_ok());
    }
}
