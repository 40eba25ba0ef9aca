//! The mount(8) helper: `mount -t fuse.reseedfs CONFIG DIR [-o OPTIONS]`, and fstab lines.
//!
//! mount(8) runs `/sbin/mount.fuse.reseedfs CONFIG DIR [-sfnv] [-N NS] [-o OPTIONS]
//! [-t fuse.reseedfs]` (man 8 mount, "EXTERNAL HELPERS"). That file is a symlink to the
//! reseedfs binary, which acts as the helper when invoked under that name (or as the hidden
//! `reseedfs mount-helper`). The helper:
//! 1. loads CONFIG and checks that DIR is its `databases_root` (the config is the one truth:
//!    `status`, `unmount` and the daemon all read the mount point from it);
//! 2. starts `reseedfs mount --config CONFIG --detach` in a session of its own, output
//!    appended to `<state_dir>/reseedfs.log`, so that the mount outlives mount(8);
//! 3. waits for the daemon's readiness (`READY=1`, the systemd notify protocol on a socket
//!    of its own, sent once the mount serves), or for the daemon to exit;
//! 4. exits 0, or 32 (mount(8)'s "mount failure") with the daemon's last words; 1 for a
//!    bad invocation or config.

use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::config::Config;
use crate::mountpoint::{self, FSTYPE, MountState};

/// Names under which the binary acts as the mount helper (`argv[0]`'s file name).
pub const HELPER_NAMES: [&str; 2] = ["mount.fuse.reseedfs", "mount.reseedfs"];

/// mount(8)'s exit code for a mount failure.
const MOUNT_FAILURE: u8 = 32;

/// mount(8)'s exit code for a bad invocation (or permissions).
const USAGE: u8 = 1;

/// How long the daemon may take to open the pool and mount.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Generic mount options: applied by mount(8) or meaningless here, accepted and ignored.
/// (reseedfs always mounts `nodev,nosuid`, read-write.)
const IGNORED: [&str; 22] = [
    "defaults",
    "rw",
    "auto",
    "noauto",
    "_netdev",
    "nofail",
    "nouser",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "lazytime",
    "diratime",
    "nodiratime",
    "async",
];

/// Arguments of the helper, in mount(8)'s convention.
#[derive(Debug, clap::Args)]
pub struct HelperArgs {
    /// The config file (an fstab line's first field).
    pub config: PathBuf,
    /// The mount point: the config's `databases_root`.
    pub dir: PathBuf,
    /// Mount options, comma-separated: generic ones are ignored; `metrics=ADDR` serves
    /// Prometheus metrics there.
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// Sloppy: ignore options reseedfs does not know instead of failing.
    #[arg(short = 's')]
    pub sloppy: bool,
    /// Fake: check everything, mount nothing.
    #[arg(short = 'f')]
    pub fake: bool,
    /// Do not write /etc/mtab (there is none to write: accepted and ignored).
    #[arg(short = 'n')]
    pub no_mtab: bool,
    /// Say what is done.
    #[arg(short = 'v')]
    pub verbose: bool,
    /// Mount in another mount namespace (not supported).
    #[arg(short = 'N', value_name = "NS")]
    pub namespace: Option<String>,
    /// The file system type: `fuse.reseedfs`.
    #[arg(short = 't', value_name = "TYPE")]
    pub fstype: Option<String>,
}

/// True when the binary was started as the mount helper (`argv[0]` is
/// `mount.fuse.reseedfs`): the caller then parses `reseedfs mount-helper ARGS...`.
pub fn invoked_as_helper(argv0: Option<&OsString>) -> bool {
    argv0
        .and_then(|a| Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .is_some_and(|n| HELPER_NAMES.contains(&n))
}

/// What the options ask for.
#[derive(Debug, Default, PartialEq, Eq)]
struct Options {
    metrics: Option<SocketAddr>,
}

fn parse_options(list: &[String], sloppy: bool) -> Result<Options, String> {
    let mut out = Options::default();
    for opt in list
        .iter()
        .flat_map(|o| o.split(','))
        .filter(|o| !o.is_empty())
    {
        let (key, value) = opt.split_once('=').unwrap_or((opt, ""));
        match key {
            "metrics" => {
                let addr = value.parse().map_err(|e| {
                    format!("mount option {opt:?}: {e} (want metrics=127.0.0.1:9477)")
                })?;
                out.metrics = Some(addr);
            }
            // mount(8) would let a user other than root mount (and unmount) it: reseedfs
            // runs as root for every local user, so only root mounts it.
            "user" | "users" | "owner" | "group" => {
                return Err(format!(
                    "mount option {opt:?}: only root may mount reseedfs (it serves every local user as root); remove it from the fstab line"
                ));
            }
            "ro" => {
                return Err(
                    "mount option \"ro\": reseedfs mounts read-write only (the database writes through it)"
                        .into(),
                );
            }
            _ if IGNORED.contains(&key) || key.starts_with("x-") || key == "comment" => {}
            _ if sloppy => {}
            _ => {
                return Err(format!(
                    "unknown mount option {opt:?} (reseedfs takes metrics=ADDR and the generic options; -s ignores unknown ones)"
                ));
            }
        }
    }
    Ok(out)
}

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("mount.fuse.reseedfs: {msg}");
    ExitCode::from(code)
}

/// Runs the helper.
pub fn run(a: &HelperArgs) -> ExitCode {
    if a.namespace.is_some() {
        return fail(USAGE, "-N (mount in another namespace) is not supported");
    }
    if let Some(t) = a.fstype.as_deref().filter(|t| *t != FSTYPE) {
        return fail(USAGE, format!("type {t:?} is not {FSTYPE}"));
    }
    let options = match parse_options(&a.options, a.sloppy) {
        Ok(o) => o,
        Err(e) => return fail(USAGE, e),
    };
    let mut config = match Config::load(&a.config) {
        Ok(c) => c,
        Err(e) => return fail(USAGE, e),
    };
    // `-o metrics=` is checked as the config key is (loopback unless allowed).
    config.metrics = options.metrics.or(config.metrics);
    if let Err(e) = config.validate(&a.config) {
        return fail(USAGE, e);
    }
    if let Err(e) = check_dir(&a.dir, &config, &a.config) {
        return fail(USAGE, e);
    }
    if mountpoint::state(&config.databases_root) == MountState::Live {
        return fail(
            MOUNT_FAILURE,
            format!("{} is already mounted", config.databases_root.display()),
        );
    }
    if a.fake {
        if a.verbose {
            println!("would start reseedfs mount --config {}", a.config.display());
        }
        return ExitCode::SUCCESS;
    }
    match start(&a.config, &config, options.metrics) {
        Ok(pid) => {
            if a.verbose {
                println!(
                    "mounted {} (reseedfs daemon pid {pid}, log {})",
                    config.databases_root.display(),
                    log_path(&config).display()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(MOUNT_FAILURE, format!("{e:#}")),
    }
}

/// DIR must be the config's `databases_root` (after resolving symlinks, when both can be).
fn check_dir(dir: &Path, config: &Config, config_path: &Path) -> Result<(), String> {
    let root = &config.databases_root;
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => std::path::absolute(a).ok() == std::path::absolute(b).ok(),
    };
    if same(dir, root) {
        Ok(())
    } else {
        Err(format!(
            "mount point {} is not the databases_root of {} ({}): reseedfs mounts where its config says, so that status, unmount and the daemon agree; fix the fstab line or the config",
            dir.display(),
            config_path.display(),
            root.display()
        ))
    }
}

/// `<state_dir>/reseedfs.log`: the detached daemon's output.
pub fn log_path(config: &Config) -> PathBuf {
    config.state_dir.join("reseedfs.log")
}

/// Starts the daemon detached and waits for it to serve; returns its pid.
fn start(config_path: &Path, config: &Config, metrics: Option<SocketAddr>) -> anyhow::Result<u32> {
    // The state directory as the daemon makes it: private to root (and its group).
    let group = crate::daemon::control_group(config)?;
    let mode = if group.is_some() { 0o750 } else { 0o700 };
    let state_dir = crate::private::PrivateDir::create(&config.state_dir, mode, group)
        .with_context(|| format!("create state_dir {}", config.state_dir.display()))?;
    let log_path = log_path(config);
    let log = state_dir
        .append("reseedfs.log", 0o600, None)
        .with_context(|| format!("open {}", log_path.display()))?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    // The daemon's READY=1 comes on a socket only root can reach: a directory of its own,
    // 0700, in the state directory.
    let notify_dir = config
        .state_dir
        .join(format!(".mount-helper.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&notify_dir);
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&notify_dir)
        .with_context(|| format!("create {}", notify_dir.display()))?;
    let _cleanup = RemoveOnDrop(&notify_dir);
    let notify_path = notify_dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path)
        .with_context(|| format!("bind {}", notify_path.display()))?;
    let exe = std::env::current_exe().context("find the reseedfs binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg("mount")
        .arg("--config")
        .arg(std::path::absolute(config_path).context("resolve the config path")?)
        .arg("--detach")
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicate the log handle")?)
        .stderr(log);
    if let Some(addr) = metrics {
        cmd.arg("--metrics").arg(addr.to_string());
    }
    let mut child = cmd.spawn().context("start reseedfs mount")?;
    let pid = child.id();
    match wait_ready(&notify, &mut child) {
        Ok(()) => Ok(pid),
        Err(e) => {
            let said = tail(&log_path, log_start);
            Err(e.context(format!(
                "reseedfs mount (pid {pid}) did not mount {}; its log ({}):\n{said}",
                config.databases_root.display(),
                log_path.display()
            )))
        }
    }
}

/// Waits for `READY=1` on `notify`; fails when the daemon exits first or takes too long
/// (it is then stopped).
fn wait_ready(notify: &UnixDatagram, child: &mut Child) -> anyhow::Result<()> {
    notify.set_read_timeout(Some(Duration::from_millis(100)))?;
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut buf = [0u8; 4096];
    loop {
        if let Ok(n) = notify.recv(&mut buf) {
            if String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "READY=1")
            {
                return Ok(());
            }
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("it exited ({status})");
        }
        if Instant::now() >= deadline {
            if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            anyhow::bail!("it was not serving after {READY_TIMEOUT:?}: stopped it");
        }
    }
}

/// The end of what the daemon wrote to its log since `from` (at most 4 KiB).
fn tail(path: &Path, from: u64) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let start = from.max(len.saturating_sub(4096));
        let _ = f.seek(SeekFrom::Start(start));
        let _ = f.read_to_string(&mut text);
    }
    text
}

struct RemoveOnDrop<'a>(&'a Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[&str], sloppy: bool) -> Result<Options, String> {
        let list: Vec<String> = list.iter().map(|s| (*s).to_owned()).collect();
        parse_options(&list, sloppy)
    }

    #[test]
    fn options() {
        assert_eq!(
            opts(
                &["rw,nosuid,nodev,_netdev,noatime,x-systemd.requires=a"],
                false
            ),
            Ok(Options::default())
        );
        let m = opts(&["defaults,metrics=127.0.0.1:9477"], false).expect("metrics");
        assert_eq!(m.metrics, Some("127.0.0.1:9477".parse().expect("addr")));
        assert!(opts(&["metrics=nowhere"], false).is_err());
        assert!(opts(&["ro"], true).unwrap_err().contains("read-write"));
        assert!(opts(&["bogus"], false).unwrap_err().contains("bogus"));
        assert_eq!(opts(&["bogus"], true), Ok(Options::default()));
    }

    #[test]
    fn helper_names() {
        let yes = OsString::from("/sbin/mount.fuse.reseedfs");
        let no = OsString::from("/usr/local/bin/reseedfs");
        assert!(invoked_as_helper(Some(&yes)));
        assert!(!invoked_as_helper(Some(&no)));
        assert!(!invoked_as_helper(None));
    }

    #[test]
    fn dir_must_be_the_databases_root() {
        let config = Config::new(
            "/v".into(),
            "/srv/dbs".into(),
            vec![crate::names::DbName::from_static("db001")],
        );
        let path = Path::new("/etc/reseedfs/reseedfs.toml");
        assert!(check_dir(Path::new("/srv/dbs"), &config, path).is_ok());
        let e = check_dir(Path::new("/srv/other"), &config, path).unwrap_err();
        assert!(e.contains("/srv/other") && e.contains("/srv/dbs"), "{e}");
    }
}
