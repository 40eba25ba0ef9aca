//! Throwaway pools on real volumes, for `reseedfs demo`, the integration tests and the
//! benchmarks; with them, what those three share: the supervisor of a daemon in a child
//! process ([`daemon`]) and the pseudo-random generator ([`rng`]). Not in the product: the
//! module exists with the `testbed` feature (which `demo` enables, and which tests and
//! benches get from the package's dev-dependency on itself).
//!
//! A [`Testbed`] is a fresh directory holding `vols/Volume1..N` (the volumes), `dbs/` (the
//! future mount point), `state/` and the path of a config file. With
//! [`Testbed::loop_volumes`] every volume is a real ext4 filesystem on its own loop device
//! ([`LoopVolume`]), so a test can kill one disk ([`LoopVolume::shutdown`]: every I/O on it
//! then fails with `EIO`) and bring it back ([`LoopVolume::revive`]). That needs root;
//! [`mount_privileges`] tells whether this process has what it takes.
//!
//! Everything is done with the standard tools (`losetup`, `mkfs.ext4`, `mount`, `umount`,
//! `e2fsck`), and every failing command yields an [`io::Error`] that names the command, the
//! path it worked on and what the tool printed. Dropping a `Testbed` or a `LoopVolume` undoes
//! everything it made; it never panics and logs what it could not undo.
//!
//! The images and directories live under [`std::env::temp_dir`], or under the directory named
//! by the `RESEEDFS_TESTBED_DIR` environment variable when it is set, or under the directory
//! given to [`Testbed::loop_volumes_in`].

pub mod daemon;
pub mod rng;

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::mountpoint::{is_mount_point, mounts_below};

/// Environment variable naming the directory under which testbeds are made (default: the
/// system temporary directory).
pub const TESTBED_DIR_ENV: &str = "RESEEDFS_TESTBED_DIR";

/// How many times a plain `umount` is tried before falling back to a lazy one.
const UMOUNT_TRIES: u32 = 20;
/// Pause between two `umount` tries.
const UMOUNT_PAUSE: Duration = Duration::from_millis(100);
/// How long [`LoopVolume::revive`] waits for a lazily unmounted filesystem to let go of its
/// device before it gives up.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// One disk: a sparse image file attached to a loop device, formatted as ext4 and mounted.
///
/// Dropping it unmounts the filesystem (lazily when it is busy), detaches the loop device and
/// removes the image.
#[derive(Debug)]
pub struct LoopVolume {
    /// The image file backing the loop device.
    pub image: PathBuf,
    /// The loop device (`/dev/loopN`).
    pub device: PathBuf,
    /// Where the ext4 filesystem is mounted.
    pub mountpoint: PathBuf,
}

impl LoopVolume {
    /// Creates a sparse image of `size_bytes`, attaches it, makes ext4, mounts it at
    /// `mountpoint` (created if missing).
    ///
    /// Needs root. On error, whatever was already made is undone.
    pub fn create(image: &Path, mountpoint: &Path, size_bytes: u64) -> io::Result<LoopVolume> {
        if let Some(parent) = image.parent() {
            fs::create_dir_all(parent).map_err(|e| with_path(e, "create directory", parent))?;
        }
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(image)
            .map_err(|e| with_path(e, "create image", image))?;
        // A sparse file: only what the filesystem writes takes space on the host.
        let sized = file.set_len(size_bytes);
        drop(file);
        if let Err(e) = sized {
            remove_file_logged(image);
            return Err(with_path(e, "size image", image));
        }

        let attached = run(
            Command::new(tool("losetup"))
                .args(["-f", "--show", "--direct-io=on"])
                .arg(image),
            image,
        );
        let device = match attached {
            Ok(out) => PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()),
            Err(e) => {
                remove_file_logged(image);
                return Err(e);
            }
        };
        // From here on, dropping `volume` undoes what is done (umount only if mounted).
        let volume = LoopVolume {
            image: image.to_path_buf(),
            device,
            mountpoint: mountpoint.to_path_buf(),
        };
        run(
            Command::new(tool("mkfs.ext4"))
                .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
                .arg(&volume.device),
            &volume.device,
        )?;
        fs::create_dir_all(mountpoint)
            .map_err(|e| with_path(e, "create mount point", mountpoint))?;
        volume.mount()?;
        Ok(volume)
    }

    /// Disk death: `EXT4_IOC_SHUTDOWN` with `NOLOGFLUSH`. Afterwards every I/O on the volume
    /// fails with `EIO` until [`LoopVolume::revive`].
    pub fn shutdown(&self) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            crate::sys::ext4::shutdown_filesystem(&self.mountpoint)
        }
        #[cfg(not(target_os = "linux"))]
        {
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "shut down {}: the ext4 shutdown ioctl exists only on Linux",
                    self.mountpoint.display()
                ),
            ))
        }
    }

    /// A disk that hangs instead of failing: `fsfreeze -f`. Every write and fsync on the
    /// volume blocks (reads go on) until the returned guard is dropped (`fsfreeze -u`).
    pub fn freeze(&self) -> io::Result<Frozen<'_>> {
        run(
            Command::new(tool("fsfreeze"))
                .arg("-f")
                .arg(&self.mountpoint),
            &self.mountpoint,
        )?;
        Ok(Frozen { volume: self })
    }

    /// `fsfreeze -u`; an error when the volume was not frozen.
    fn thaw(&self) -> io::Result<()> {
        run(
            Command::new(tool("fsfreeze"))
                .arg("-u")
                .arg(&self.mountpoint),
            &self.mountpoint,
        )
        .map(drop)
    }

    /// The disk comes back: umount (retried, then lazy), `e2fsck -fy` (exit codes 0, 1 and 2
    /// are success), mount again.
    ///
    /// Fails when the filesystem is still held after a lazy umount (some process keeps files
    /// open on the dead volume), when `e2fsck` cannot repair it, or when the mount fails.
    pub fn revive(&self) -> io::Result<()> {
        if is_mount_point(&self.mountpoint) {
            let lazy = umount_retrying(&self.mountpoint)?;
            if lazy {
                self.wait_released()?;
            }
        }
        let fsck = output(
            Command::new(tool("e2fsck")).arg("-fy").arg(&self.device),
            &self.device,
        )?;
        match fsck.status.code() {
            Some(0..=2) => {}
            _ => return Err(command_failed("e2fsck -fy", &self.device, &fsck)),
        }
        self.mount()
    }

    /// Mounts the device at the mount point.
    fn mount(&self) -> io::Result<()> {
        run(
            Command::new(tool("mount"))
                .args(["-t", "ext4"])
                .arg(&self.device)
                .arg(&self.mountpoint),
            &self.mountpoint,
        )
        .map(drop)
    }

    /// After a lazy umount the superblock lives on while files stay open on it, and a new
    /// mount of the device would get that dead superblock back. Waits until the device can be
    /// opened exclusively, which the kernel refuses while a filesystem holds it.
    fn wait_released(&self) -> io::Result<()> {
        let deadline = Instant::now() + RELEASE_TIMEOUT;
        loop {
            match open_exclusive(&self.device) {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!(
                            "revive {}: {} is still held after a lazy umount (a process keeps \
                             files open on the dead volume; stop it first): {e}",
                            self.mountpoint.display(),
                            self.device.display()
                        ),
                    ));
                }
                Err(_) => thread::sleep(UMOUNT_PAUSE),
            }
        }
    }
}

/// A volume frozen by [`LoopVolume::freeze`]; dropping it thaws the volume.
#[derive(Debug)]
pub struct Frozen<'a> {
    volume: &'a LoopVolume,
}

impl Frozen<'_> {
    /// Thaws the volume now, reporting an error (dropping the guard only logs it).
    pub fn thaw(self) -> io::Result<()> {
        let v = self.volume;
        std::mem::forget(self);
        v.thaw()
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.volume.thaw() {
            tracing::warn!(mountpoint = %self.volume.mountpoint.display(), "testbed: {e}");
        }
    }
}

/// Opens a block device with `O_EXCL`, which fails with `EBUSY` while it is mounted.
#[cfg(unix)]
fn open_exclusive(device: &Path) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(device)
        .map(drop)
}

/// Without `O_EXCL` there is no way to tell; assume the device is free.
#[cfg(not(unix))]
fn open_exclusive(_device: &Path) -> io::Result<()> {
    Ok(())
}

impl Drop for LoopVolume {
    fn drop(&mut self) {
        if is_mount_point(&self.mountpoint) {
            if let Err(e) = umount_retrying(&self.mountpoint) {
                tracing::warn!(mountpoint = %self.mountpoint.display(), "testbed: {e}");
            }
        }
        // A device still held by a lazily unmounted filesystem is only marked for detaching
        // (autoclear); the kernel frees it once the last file on it is closed.
        if let Err(e) = run(
            Command::new(tool("losetup")).arg("-d").arg(&self.device),
            &self.device,
        ) {
            tracing::warn!(device = %self.device.display(), "testbed: {e}");
        }
        remove_file_logged(&self.image);
    }
}

/// A bind mount of `source` at `target` (`mount --bind`); dropping it unmounts it (retried,
/// then lazily). For pools whose volumes are folders of one loop volume, as the benchmarks
/// build them. Needs root.
#[derive(Debug)]
pub struct BindMount {
    /// Where the bind mount is.
    pub target: PathBuf,
}

impl BindMount {
    /// Bind-mounts `source` at `target`, creating `target` when it is missing.
    pub fn new(source: &Path, target: &Path) -> io::Result<BindMount> {
        fs::create_dir_all(target).map_err(|e| with_path(e, "create mount point", target))?;
        run(
            Command::new(tool("mount"))
                .arg("--bind")
                .arg(source)
                .arg(target),
            target,
        )?;
        Ok(BindMount {
            target: target.to_path_buf(),
        })
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        if is_mount_point(&self.target) {
            if let Err(e) = umount_retrying(&self.target) {
                tracing::warn!(mountpoint = %self.target.display(), "testbed: {e}");
            }
        }
    }
}

/// A throwaway pool: volumes, an empty mount point, a state directory and a config path, all
/// under one fresh directory that dropping the `Testbed` removes.
#[derive(Debug)]
pub struct Testbed {
    /// The fresh directory holding everything below.
    pub root: PathBuf,
    /// `root/vols`: holds `Volume1..N`.
    pub volumes_root: PathBuf,
    /// `root/dbs` (created, empty): the future mount point.
    pub databases_root: PathBuf,
    /// `root/state`.
    pub state_dir: PathBuf,
    /// `root/reseedfs.toml` (not created by the testbed).
    pub config_path: PathBuf,
    /// The loop volumes, `volumes[k - 1]` at `volume_path(k)`; empty for
    /// [`Testbed::plain_dirs`].
    pub volumes: Vec<LoopVolume>,
}

impl Testbed {
    /// `n` loop-mounted ext4 volumes of `size_bytes` each at `volumes_root/VolumeK` (K from 1).
    /// Needs root (see [`mount_privileges`]).
    pub fn loop_volumes(n: usize, size_bytes: u64) -> io::Result<Testbed> {
        Testbed::loop_volumes_in(&base_dir(), n, size_bytes)
    }

    /// Like [`Testbed::loop_volumes`], but under `base` whatever [`TESTBED_DIR_ENV`] says
    /// (the benchmarks put their images on a disk, never on a tmpfs `/tmp`).
    pub fn loop_volumes_in(base: &Path, n: usize, size_bytes: u64) -> io::Result<Testbed> {
        let mut bed = Testbed::empty_in(base)?;
        let images = bed.root.join("images");
        for k in 1..=n {
            let image = images.join(format!("Volume{k}.img"));
            let volume = LoopVolume::create(&image, &bed.volume_path(k), size_bytes)?;
            bed.volumes.push(volume);
        }
        Ok(bed)
    }

    /// `n` plain directories `volumes_root/VolumeK` (no root needed; they share one
    /// filesystem, so no disk can die).
    pub fn plain_dirs(n: usize) -> io::Result<Testbed> {
        let bed = Testbed::empty_in(&base_dir())?;
        for k in 1..=n {
            let path = bed.volume_path(k);
            fs::create_dir_all(&path).map_err(|e| with_path(e, "create volume", &path))?;
        }
        Ok(bed)
    }

    /// `volumes_root/VolumeK` (k from 1).
    pub fn volume_path(&self, k: usize) -> PathBuf {
        self.volumes_root.join(format!("Volume{k}"))
    }

    /// Moves the testbed out of `self`, which is left owning nothing: dropping it does
    /// nothing. For wrappers that implement `Drop` and hand their testbed back.
    pub fn take(&mut self) -> Testbed {
        Testbed {
            root: std::mem::take(&mut self.root),
            volumes_root: std::mem::take(&mut self.volumes_root),
            databases_root: std::mem::take(&mut self.databases_root),
            state_dir: std::mem::take(&mut self.state_dir),
            config_path: std::mem::take(&mut self.config_path),
            volumes: std::mem::take(&mut self.volumes),
        }
    }

    /// A fresh root under `base` with `vols/`, `dbs/` and `state/`, and no volume yet.
    fn empty_in(base: &Path) -> io::Result<Testbed> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "reseedfs-testbed-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let root = base.join(name);
        fs::create_dir_all(base).map_err(|e| with_path(e, "create directory", base))?;
        fs::create_dir(&root).map_err(|e| with_path(e, "create testbed root", &root))?;
        // From here on, dropping `bed` removes `root`.
        let bed = Testbed {
            volumes_root: root.join("vols"),
            databases_root: root.join("dbs"),
            state_dir: root.join("state"),
            config_path: root.join("reseedfs.toml"),
            root,
            volumes: Vec::new(),
        };
        for dir in [&bed.volumes_root, &bed.databases_root, &bed.state_dir] {
            fs::create_dir(dir).map_err(|e| with_path(e, "create directory", dir))?;
        }
        Ok(bed)
    }
}

/// Where testbeds go by default: [`TESTBED_DIR_ENV`], else the system temporary directory.
fn base_dir() -> PathBuf {
    std::env::var_os(TESTBED_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if self.root.as_os_str().is_empty() {
            return; // emptied by `take`
        }
        if is_mount_point(&self.databases_root) {
            if let Err(e) = run(
                Command::new(tool("umount"))
                    .arg("-l")
                    .arg(&self.databases_root),
                &self.databases_root,
            ) {
                tracing::warn!(mountpoint = %self.databases_root.display(), "testbed: {e}");
            }
        }
        self.volumes.clear();
        // Never walk into a filesystem that is still mounted below the root: removing it would
        // delete what it holds, or hang on a dead FUSE mount.
        let still_mounted = mounts_below(&self.root);
        if !still_mounted.is_empty() {
            tracing::warn!(
                root = %self.root.display(),
                "testbed: not removing the root, still mounted below it: {still_mounted:?}"
            );
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.root) {
            tracing::warn!(root = %self.root.display(), "testbed: remove root: {e}");
        }
    }
}

/// `Ok(())` when this process can mount real filesystems here: effective uid 0, `/dev/fuse`
/// and `/dev/loop-control` exist, `losetup` and `mkfs.ext4` are found. `Err(reason)`
/// otherwise.
#[cfg(target_os = "linux")]
pub fn mount_privileges() -> Result<(), String> {
    if !rustix::process::geteuid().is_root() {
        return Err("not running as root (mounting loop devices and FUSE needs root)".into());
    }
    if !has_cap_sys_admin() {
        return Err("root without CAP_SYS_ADMIN (an unprivileged container?): cannot mount".into());
    }
    for dev in ["/dev/fuse", "/dev/loop-control"] {
        if !Path::new(dev).exists() {
            return Err(format!("{dev} is missing (modprobe fuse loop)"));
        }
    }
    for name in ["losetup", "mkfs.ext4", "e2fsck", "mount", "umount"] {
        if find_tool(name).is_none() {
            return Err(format!(
                "`{name}` not found in PATH, /usr/sbin or /sbin (install util-linux, e2fsprogs)"
            ));
        }
    }
    Ok(())
}

/// Whether `CAP_SYS_ADMIN` (bit 21) is in this process's effective set, from
/// `/proc/self/status`. When that cannot be read, assumes it is (the mounts will tell).
#[cfg(target_os = "linux")]
fn has_cap_sys_admin() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    let Ok(status) = fs::read_to_string("/proc/self/status") else {
        return true;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_none_or(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

/// Loop-mounted ext4 volumes and the FUSE mount exist only on Linux.
#[cfg(not(target_os = "linux"))]
pub fn mount_privileges() -> Result<(), String> {
    Err("loop-mounted ext4 volumes and the FUSE mount exist only on Linux".into())
}

/// Unmounts `path`: a plain `umount` tried [`UMOUNT_TRIES`] times, then `umount -l`.
/// Returns whether the lazy umount was needed.
fn umount_retrying(path: &Path) -> io::Result<bool> {
    let mut last = None;
    for attempt in 0..UMOUNT_TRIES {
        if attempt > 0 {
            thread::sleep(UMOUNT_PAUSE);
        }
        match run(Command::new(tool("umount")).arg(path), path) {
            Ok(_) => return Ok(false),
            Err(e) => last = Some(e),
        }
        if !is_mount_point(path) {
            return Ok(false);
        }
    }
    if let Some(e) = last {
        tracing::warn!(mountpoint = %path.display(), "testbed: {e}; unmounting lazily");
    }
    run(Command::new(tool("umount")).arg("-l").arg(path), path).map(|_| true)
}

/// Runs `cmd` to completion; a non-zero exit is an error naming the command, `path` and the
/// tool's stderr.
fn run(cmd: &mut Command, path: &Path) -> io::Result<Output> {
    let out = output(cmd, path)?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(command_failed(&command_line(cmd), path, &out))
    }
}

/// Runs `cmd` to completion and returns its output whatever its exit status; failing to start
/// it is an error naming the command and `path`.
fn output(cmd: &mut Command, path: &Path) -> io::Result<Output> {
    cmd.output().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "run `{}` on {}: {e}{}",
                command_line(cmd),
                path.display(),
                if e.kind() == io::ErrorKind::NotFound {
                    " (install util-linux and e2fsprogs)"
                } else {
                    ""
                }
            ),
        )
    })
}

/// The error for a command that ran and failed.
fn command_failed(command: &str, path: &Path, out: &Output) -> io::Error {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut message = format!("`{command}` on {} failed ({})", path.display(), out.status);
    for (name, text) in [("stderr", stderr.trim()), ("stdout", stdout.trim())] {
        if !text.is_empty() {
            let _ = write!(message, "; {name}: {text}");
        }
    }
    io::Error::other(message)
}

/// `program arg arg...` for messages.
fn command_line(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Adds what was being done and to which path to an I/O error.
pub fn with_path(e: io::Error, doing: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{doing} {}: {e}", path.display()))
}

/// Removes a file, logging a failure other than "already gone".
fn remove_file_logged(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), "testbed: remove: {e}"),
    }
}

/// Where the system tool `name` is: in `PATH`, or else in `/usr/sbin` or `/sbin` (which a
/// non-login root shell may leave out of `PATH`).
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The path to run the system tool `name` with; its bare name when it is not found, so that
/// the spawn error names it.
fn tool(name: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| PathBuf::from(OsStr::new(name)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mountpoint::mount_fstype;

    #[test]
    fn a_plain_testbed_is_no_mount_and_removes_itself() {
        if !Path::new("/proc/self/mountinfo").exists() {
            return;
        }
        let bed = Testbed::plain_dirs(2).expect("plain testbed");
        assert!(!is_mount_point(&bed.databases_root));
        assert_eq!(mount_fstype(&bed.databases_root), None);
        assert!(bed.volume_path(2).is_dir());
        assert!(bed.volumes.is_empty());
        let mut bed = bed;
        let moved = bed.take();
        drop(bed);
        assert!(moved.root.is_dir(), "an emptied testbed removes nothing");
        let root = moved.root.clone();
        drop(moved);
        assert!(
            !root.exists(),
            "dropping the testbed removes {}",
            root.display()
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn loop_volume_dies_and_revives() {
        use std::io::{Read as _, Seek as _, SeekFrom, Write as _};

        if let Err(reason) = mount_privileges() {
            // Past the harness's capture of `eprintln!`: a skip must be seen.
            let _ = io::Write::write_all(
                &mut io::stderr().lock(),
                format!("\nSKIPPED: loop_volume_dies_and_revives: {reason}\n").as_bytes(),
            );
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "a skipped mount test is a failure in CI: {reason}"
            );
            return;
        }
        let bed = Testbed::loop_volumes(1, 64 << 20).expect("one 64 MiB loop volume");
        let volume = &bed.volumes[0];
        assert_eq!(mount_fstype(&volume.mountpoint).as_deref(), Some("ext4"));
        let path = volume.mountpoint.join("data");
        let before = vec![0x5au8; 64 << 10];
        {
            let mut file = fs::File::create(&path).expect("create on a live volume");
            file.write_all(&before).expect("write on a live volume");
            file.sync_all().expect("fsync on a live volume");
        }

        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open on a live volume");
        volume.shutdown().expect("EXT4_IOC_SHUTDOWN");
        let write = file
            .seek(SeekFrom::Start(0))
            .and_then(|_| file.write_all(&[1u8; 4096]))
            .and_then(|()| file.sync_all());
        let err = write.expect_err("I/O on a dead volume fails");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
        let err = fs::File::create(volume.mountpoint.join("new")).expect_err("create fails");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
        drop(file);

        volume.revive().expect("revive");
        assert_eq!(mount_fstype(&volume.mountpoint).as_deref(), Some("ext4"));
        let mut after = Vec::new();
        fs::File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut after))
            .expect("read after revive");
        assert!(
            after == before,
            "what was fsynced before the death survives it"
        );
        let mut file = fs::File::create(volume.mountpoint.join("new")).expect("create again");
        file.write_all(b"alive").expect("write again");
        file.sync_all().expect("fsync again");
        drop(file);

        let (image, device, root) = (
            volume.image.clone(),
            volume.device.clone(),
            bed.root.clone(),
        );
        drop(bed);
        assert!(!image.exists() && !root.exists());
        let attached = Command::new(tool("losetup"))
            .args(["-l", "-n", "-O", "NAME,BACK-FILE"])
            .output()
            .expect("losetup -l");
        let attached = String::from_utf8_lossy(&attached.stdout);
        assert!(
            !attached.contains(&*image.to_string_lossy()),
            "{} still attached to {}: {attached}",
            device.display(),
            image.display()
        );
    }
}
