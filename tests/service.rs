//! reseedfs as a service: the systemd unit, the mount(8) helper and an fstab line, and a
//! restart after the daemon was killed.
//!
//! - `platform/linux/reseedfs.service` passes `systemd-analyze verify`.
//! - The helper (`mount.fuse.reseedfs CONFIG DIR -o OPTIONS`, as mount(8) calls it) starts
//!   a daemon in a session of its own that outlives it, returns once the mount serves,
//!   refuses a second mount and a mount point that is not the config's, and `reseedfs
//!   unmount` stops it. After a `kill -9` of the daemon, the helper mounts again over the
//!   dead mount (what `Restart=on-failure` relies on).
//! - `mount --fstab FILE DIR` with the README's fstab line, `mount -a` seeing it mounted,
//!   `umount` ending the daemon, and `mount -t fuse.reseedfs`: the helper installed as
//!   `/sbin/mount.fuse.reseedfs` for the test (removed afterwards).
//!
//! The mount tests need root, `/dev/fuse` and loop devices; elsewhere they print `SKIPPED`
//! (and fail under `CI=true`).

#![cfg(target_os = "linux")]

mod common;

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{
    BIN, EXIT_TIMEOUT, FSTYPE, describe_output, free_local_addr, http_get,
    require_mount_privileges, wait_for,
};
use reseedfs::mountpoint::{is_mount_point, mount_fstype};
use reseedfs::testbed::Testbed;

const VOLUME_BYTES: u64 = 256 << 20;
const DB: &str = "db001";
/// Where mount(8) looks for the helper of type `fuse.reseedfs`.
const SBIN_HELPER: &str = "/sbin/mount.fuse.reseedfs";

/// Prints a loud SKIPPED banner, or panics under `CI=true`.
fn skip(test: &str, reason: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: cannot run in CI: {reason}");
    }
    let rule = "=".repeat(70);
    let _ = std::io::stderr()
        .lock()
        .write_all(format!("\n{rule}\nSKIPPED: {test}: {reason}\n{rule}\n").as_bytes());
}

#[test]
fn systemd_unit_verifies() {
    let Ok(analyze) = which("systemd-analyze") else {
        return skip("systemd_unit_verifies", "systemd-analyze is not installed");
    };
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("platform/linux/reseedfs.service");
    let text = fs::read_to_string(&unit).expect("read the unit");
    for want in [
        "Type=notify",
        "ExecStart=/usr/bin/reseedfs mount --config /etc/reseedfs/reseedfs.toml",
        "ExecStop=/usr/bin/reseedfs unmount --config /etc/reseedfs/reseedfs.toml",
        "SendSIGKILL=no",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=",
        "After=local-fs.target",
        "RequiresMountsFor=",
    ] {
        assert!(text.contains(want), "{} lacks {want:?}", unit.display());
    }
    // verify checks that ExecStart's binary exists: point it at the one under test.
    let dir = scratch_dir("unit");
    let copy = dir.join("reseedfs.service");
    fs::write(&copy, text.replace("/usr/bin/reseedfs", BIN)).expect("write the unit copy");
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("run systemd-analyze verify");
    let said = describe_output(&out);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{said}"
    );
    assert!(
        !said.contains("reseedfs.service:"),
        "systemd-analyze verify has remarks on the unit:\n{said}"
    );
    let _ = fs::remove_dir_all(&dir);
}

fn which(tool: &str) -> Result<PathBuf, ()> {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.exists())
        .ok_or(())
}

fn scratch_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("reseedfs-service-{what}-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("create a scratch dir");
    dir
}

/// `ROOT/mount.fuse.reseedfs`, a symlink to the binary: the helper by its name.
fn helper_link(bed: &Testbed) -> PathBuf {
    let link = bed.root.join("mount.fuse.reseedfs");
    if !link.exists() {
        std::os::unix::fs::symlink(BIN, &link).expect("link mount.fuse.reseedfs");
    }
    link
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

/// The helper's `-v` line names the daemon: `... (reseedfs daemon pid N, ...)`.
fn daemon_pid(out: &Output) -> u32 {
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("pid ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the helper named no daemon pid:\n{}", describe_output(out)))
}

/// The `reseedfs mount --detach` daemons running for `config`.
fn daemons_for(config: &Path) -> Vec<u32> {
    let want = config.as_os_str().as_encoded_bytes();
    fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| {
                    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
                    args.contains(&&b"--detach"[..]) && args.contains(&want) && alive(*pid)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `pid` runs (a zombie whose parent is gone does not).
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|rest| rest.trim_start().to_owned())
        })
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

/// Field 6 of /proc/PID/stat: the session id.
fn session_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

fn wait_exit(pid: u32) {
    let gone = wait_for(EXIT_TIMEOUT, || (!alive(pid)).then_some(()));
    assert!(gone.is_some(), "the daemon (pid {pid}) still runs");
}

fn mounted(root: &Path) -> bool {
    mount_fstype(root).as_deref() == Some(FSTYPE)
}

/// Stops every daemon left for the bed's config (a failed test), then lazily unmounts.
struct Cleanup<'a>(&'a Testbed);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for pid in daemons_for(&self.0.config_path) {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            let _ = wait_for(EXIT_TIMEOUT, || (!alive(pid)).then_some(()));
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        if is_mount_point(&self.0.databases_root) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.0.databases_root)
                .status();
        }
    }
}

fn unmount(bed: &Testbed) {
    let out = run(Command::new(BIN)
        .arg("unmount")
        .arg("--config")
        .arg(&bed.config_path));
    assert!(
        out.status.success(),
        "reseedfs unmount:\n{}",
        describe_output(&out)
    );
    assert!(
        !mounted(&bed.databases_root),
        "still mounted after reseedfs unmount"
    );
}

fn loop_bed() -> Testbed {
    let bed = Testbed::loop_volumes(3, VOLUME_BYTES).expect("build three loop volumes");
    common::init(&bed, &[DB], 2);
    bed
}

#[test]
fn mount_helper_starts_a_detached_daemon_and_restarts_over_a_dead_mount() {
    let test = "mount_helper_starts_a_detached_daemon_and_restarts_over_a_dead_mount";
    if !require_mount_privileges(test) {
        return;
    }
    let bed = loop_bed();
    let _cleanup = Cleanup(&bed);
    let helper = helper_link(&bed);
    let addr = free_local_addr();
    let mount = |extra: &str| {
        run(Command::new(&helper)
            .arg(&bed.config_path)
            .arg(&bed.databases_root)
            .arg("-v")
            .arg("-o")
            .arg(format!("rw,nosuid,nodev,_netdev{extra}")))
    };

    let out = mount(&format!(",metrics={addr}"));
    assert!(
        out.status.success(),
        "the helper failed:\n{}",
        describe_output(&out)
    );
    assert!(
        mounted(&bed.databases_root),
        "the helper returned before the mount was up"
    );
    let pid = daemon_pid(&out);
    assert!(alive(pid), "the daemon did not outlive the helper");
    assert_eq!(
        session_of(pid),
        Some(pid),
        "the daemon has no session of its own"
    );
    let source = run(Command::new("findmnt")
        .args(["-n", "-o", "SOURCE"])
        .arg(&bed.databases_root));
    assert_eq!(
        String::from_utf8_lossy(&source.stdout).trim(),
        bed.config_path.to_string_lossy(),
        "the mount's source is not the config file"
    );
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "-o metrics=ADDR: {body}");
    let file = bed
        .databases_root
        .join(DB)
        .join(format!("{DB}.db"))
        .join("helper.dat");
    fs::write(&file, b"through the helper's mount").expect("write through the mount");

    let again = mount("");
    assert_eq!(
        again.status.code(),
        Some(32),
        "a second mount:\n{}",
        describe_output(&again)
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("already mounted"));
    let elsewhere = bed.root.join("elsewhere");
    fs::create_dir_all(&elsewhere).expect("mkdir");
    let wrong = run(Command::new(&helper).arg(&bed.config_path).arg(&elsewhere));
    assert_eq!(wrong.status.code(), Some(1), "{}", describe_output(&wrong));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("databases_root"));
    let bad = mount(",bogus");
    assert_eq!(bad.status.code(), Some(1), "{}", describe_output(&bad));

    unmount(&bed);
    wait_exit(pid);

    // kill -9: the mount is left dead (ENOTCONN); the next start detaches it and mounts.
    let out = mount("");
    assert!(out.status.success(), "{}", describe_output(&out));
    let pid = daemon_pid(&out);
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    wait_exit(pid);
    let dead = fs::metadata(&bed.databases_root).map_err(|e| e.raw_os_error());
    assert!(
        matches!(
            dead.as_ref().err(),
            Some(Some(libc::ENOTCONN | libc::ECONNABORTED))
        ),
        "the killed daemon left no dead mount: {dead:?}"
    );
    let out = mount("");
    assert!(
        out.status.success(),
        "no mount over the dead one:\n{}",
        describe_output(&out)
    );
    assert_eq!(
        fs::read(&file).expect("read after the restart"),
        b"through the helper's mount"
    );
    let pid = daemon_pid(&out);
    unmount(&bed);
    wait_exit(pid);
}

/// Installs `/sbin/mount.fuse.reseedfs` -> the binary under test for the guard's life,
/// unless another one is installed (then `None`).
struct SbinHelper;

impl SbinHelper {
    fn install() -> Option<SbinHelper> {
        let path = Path::new(SBIN_HELPER);
        match fs::read_link(path) {
            Ok(target) if target == Path::new(BIN) => return Some(SbinHelper),
            Ok(target) if !target.exists() => {
                let _ = fs::remove_file(path); // left by an interrupted run
            }
            _ if fs::symlink_metadata(path).is_ok() => return None,
            _ => {}
        }
        std::os::unix::fs::symlink(BIN, path).expect("install /sbin/mount.fuse.reseedfs");
        Some(SbinHelper)
    }
}

impl Drop for SbinHelper {
    fn drop(&mut self) {
        let _ = fs::remove_file(SBIN_HELPER);
    }
}

#[test]
fn mount_8_and_an_fstab_line_run_the_helper() {
    let test = "mount_8_and_an_fstab_line_run_the_helper";
    if !require_mount_privileges(test) {
        return;
    }
    let Some(_sbin) = SbinHelper::install() else {
        return skip(
            test,
            &format!("{SBIN_HELPER} is another reseedfs's: not replacing it"),
        );
    };
    let bed = loop_bed();
    let _cleanup = Cleanup(&bed);
    let fstab = bed.root.join("fstab");
    let line = format!(
        "{} {} fuse.reseedfs defaults,_netdev,x-systemd.requires-mounts-for={} 0 0\n",
        bed.config_path.display(),
        bed.databases_root.display(),
        bed.volumes_root.display()
    );
    fs::write(&fstab, &line).expect("write the fstab");
    let out = run(Command::new("mount")
        .arg("--fstab")
        .arg(&fstab)
        .arg(&bed.databases_root));
    assert!(
        out.status.success(),
        "mount by the fstab line {line:?}:\n{}",
        describe_output(&out)
    );
    assert!(mounted(&bed.databases_root));
    let pids = daemons_for(&bed.config_path);
    assert_eq!(pids.len(), 1, "daemons: {pids:?}");
    // mount -a sees the line mounted (the source is the config file) and does nothing.
    let all =
        run(Command::new("mount")
            .arg("--fstab")
            .arg(&fstab)
            .args(["-a", "-t", "fuse.reseedfs"]));
    assert!(all.status.success(), "mount -a:\n{}", describe_output(&all));
    assert_eq!(
        daemons_for(&bed.config_path),
        pids,
        "mount -a mounted it twice"
    );
    // umount ends the mount; the daemon sees it and exits.
    let out = run(Command::new("umount").arg(&bed.databases_root));
    assert!(out.status.success(), "umount:\n{}", describe_output(&out));
    wait_exit(pids[0]);

    let out = run(Command::new("mount")
        .args(["-t", "fuse.reseedfs"])
        .arg(&bed.config_path)
        .arg(&bed.databases_root));
    assert!(
        out.status.success(),
        "mount -t fuse.reseedfs:\n{}",
        describe_output(&out)
    );
    assert!(mounted(&bed.databases_root));
    let pids = daemons_for(&bed.config_path);
    assert_eq!(pids.len(), 1, "daemons: {pids:?}");
    unmount(&bed);
    wait_exit(pids[0]);
}
