//! The mount point: what is mounted there (from `/proc/self/mountinfo`), the dead mount a
//! crashed daemon leaves behind, and the source name the mount shows (`findmnt`, `df`,
//! `mount -a`).

use std::fs;
use std::path::{Path, PathBuf};

#[cfg_attr(not(unix), allow(unused_imports))]
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

/// Whether `path` is currently a mount point (from `/proc/self/mountinfo`).
pub fn is_mount_point(path: &Path) -> bool {
    mount_entry(path).is_some()
}

/// The filesystem type of the mount at `path` from `/proc/self/mountinfo` (for example
/// `"fuse.reseedfs"`), if something is mounted there. With mounts stacked on one path, the
/// topmost one.
pub fn mount_fstype(path: &Path) -> Option<String> {
    mount_entry(path).map(|entry| entry.fstype)
}

/// One line of `/proc/self/mountinfo`, the fields reseedfs needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MountEntry {
    /// Where it is mounted, unescaped, as raw bytes.
    mount_point: Vec<u8>,
    /// The filesystem type, with its subtype (`fuse.reseedfs`).
    fstype: String,
    /// The mount source (`/dev/loop3`, `reseedfs`).
    source: String,
}

/// Parses one line of `/proc/self/mountinfo` (proc(5)):
/// `id parent major:minor root mount_point options [optional...] - fstype source super_options`.
/// Octal escapes (`\040` for a space) in the paths are decoded.
fn parse_mountinfo_line(line: &[u8]) -> Option<MountEntry> {
    let mut fields = line
        .split(|&b| b == b' ' || b == b'\n')
        .filter(|f| !f.is_empty());
    let _id = fields.next()?;
    let _parent = fields.next()?;
    let _dev = fields.next()?;
    let _root = fields.next()?;
    let mount_point = unescape_octal(fields.next()?);
    let _options = fields.next()?;
    // Optional fields (`shared:1`, `master:2`) end at a lone "-".
    fields.by_ref().find(|f| *f == b"-")?;
    let fstype = String::from_utf8_lossy(&unescape_octal(fields.next()?)).into_owned();
    let source = fields
        .next()
        .map(|s| String::from_utf8_lossy(&unescape_octal(s)).into_owned())
        .unwrap_or_default();
    Some(MountEntry {
        mount_point,
        fstype,
        source,
    })
}

/// Decodes the kernel's `\ooo` octal escapes (space, tab, newline, backslash).
fn unescape_octal(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' {
            if let Some(digits) = field.get(i + 1..i + 4) {
                if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                    let value = digits
                        .iter()
                        .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                    if let Ok(byte) = u8::try_from(value) {
                        out.push(byte);
                        i += 4;
                        continue;
                    }
                }
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

/// All entries of `/proc/self/mountinfo`, in mount order; empty when it cannot be read.
fn mount_table() -> Vec<MountEntry> {
    match fs::read("/proc/self/mountinfo") {
        Ok(text) => text
            .split(|&b| b == b'\n')
            .filter_map(parse_mountinfo_line)
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The topmost mount at `path`, if any.
fn mount_entry(path: &Path) -> Option<MountEntry> {
    let wanted = absolute_path(path);
    let wanted = wanted.as_os_str().as_encoded_bytes();
    mount_table()
        .into_iter()
        .rev()
        .find(|entry| entry.mount_point == wanted)
}

/// Mount points strictly below `root`.
pub fn mounts_below(root: &Path) -> Vec<PathBuf> {
    let root = absolute_path(root);
    mount_table()
        .into_iter()
        .filter_map(|entry| {
            let path = PathBuf::from(String::from_utf8_lossy(&entry.mount_point).into_owned());
            (path != root && path.starts_with(&root)).then_some(path)
        })
        .collect()
}

/// `path` as the kernel names it in mountinfo: absolute, with its parent's symlinks resolved.
/// The last component itself is not resolved, so a dead mount on it cannot hang or fail the
/// lookup.
fn absolute_path(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    match (absolute.parent(), absolute.file_name()) {
        (Some(parent), Some(name)) => match fs::canonicalize(parent) {
            Ok(parent) => parent.join(name),
            Err(_) => absolute,
        },
        _ => absolute,
    }
}

/// Looks at `root` (from `/proc/self/mountinfo`, then one `stat` through the mount).
pub fn state(root: &Path) -> MountState {
    if mount_fstype(root).as_deref() != Some(FSTYPE) {
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
            #[cfg(unix)]
            return rustix::mount::unmount(root, rustix::mount::UnmountFlags::DETACH)
                .with_context(|| format!("detach the dead reseedfs mount at {}", root.display()));
            #[cfg(not(unix))]
            anyhow::bail!(
                "{}: a dead reseedfs mount; end its WinFsp host process, then mount again",
                root.display()
            )
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
    fn parses_a_plain_line() {
        let line = b"36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext4 /dev/loop3 rw,errors=continue";
        let entry = parse_mountinfo_line(line).expect("a valid line");
        assert_eq!(entry.mount_point, b"/mnt/parent");
        assert_eq!(entry.fstype, "ext4");
        assert_eq!(entry.source, "/dev/loop3");
    }

    #[test]
    fn parses_a_line_without_optional_fields() {
        let line = b"22 27 0:21 / /proc rw,relatime - proc proc rw";
        let entry = parse_mountinfo_line(line).expect("a valid line");
        assert_eq!(entry.mount_point, b"/proc");
        assert_eq!(entry.fstype, "proc");
        assert_eq!(entry.source, "proc");
    }

    #[test]
    fn parses_several_optional_fields_and_a_fuse_subtype() {
        let line = b"91 27 0:52 / /tmp/t/dbs rw,nosuid,nodev shared:5 master:3 unbindable - fuse.reseedfs reseedfs rw,user_id=0,group_id=0\n";
        let entry = parse_mountinfo_line(line).expect("a valid line");
        assert_eq!(entry.mount_point, b"/tmp/t/dbs");
        assert_eq!(entry.fstype, "fuse.reseedfs");
        assert_eq!(entry.source, "reseedfs");
    }

    #[test]
    fn decodes_octal_escapes() {
        let line = b"40 27 7:1 / /tmp/my\\040vols/Volume\\0111\\134x rw - ext4 /dev/loop1 rw";
        let entry = parse_mountinfo_line(line).expect("a valid line");
        assert_eq!(entry.mount_point, b"/tmp/my vols/Volume\t1\\x");
        assert_eq!(unescape_octal(b"a\\012b"), b"a\nb");
        // Not an escape: kept as is.
        assert_eq!(unescape_octal(b"a\\9b\\01"), b"a\\9b\\01");
        assert_eq!(unescape_octal(b"end\\"), b"end\\");
    }

    #[test]
    fn rejects_truncated_lines() {
        assert_eq!(parse_mountinfo_line(b""), None);
        assert_eq!(parse_mountinfo_line(b"36 35 98:0 /mnt1 /mnt2 rw"), None);
        assert_eq!(
            parse_mountinfo_line(b"36 35 98:0 /mnt1 /mnt2 rw master:1 -"),
            None
        );
    }

    #[test]
    fn finds_real_mounts() {
        if !Path::new("/proc/self/mountinfo").exists() {
            return;
        }
        assert!(is_mount_point(Path::new("/")));
        assert!(is_mount_point(Path::new("/proc")));
        assert_eq!(mount_fstype(Path::new("/proc")).as_deref(), Some("proc"));
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
