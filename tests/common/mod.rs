//! Helpers for the integration tests that run the real `reseedfs` binary on real mounts.
//!
//! Every privileged test starts with `if !common::require_mount_privileges("name") { return; }`,
//! builds a [`Testbed`] (loop-mounted ext4 volumes), and hands it to [`Mounted::start`], which
//! runs `reseedfs init` and `reseedfs mount` and waits for the FUSE mount to appear (the
//! testbed's supervisor, [`MountDaemon`], the one the demo and the benches use). Dropping a
//! [`Mounted`] stops the daemon and unmounts whatever is left; dropping the `Testbed`
//! removes the volumes.

// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

use std::fs;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::thread;
use std::time::{Duration, Instant};

use reseedfs::mountpoint::{is_mount_point, mount_fstype};
use reseedfs::testbed::daemon::{MountDaemon, NotMounted};
use reseedfs::testbed::{self, Testbed};
use serde_json::Value;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_reseedfs");

// Each test binary uses its own subset of these too.
#[allow(unused_imports)]
pub use reseedfs::mountpoint::FSTYPE;
#[allow(unused_imports)]
pub use reseedfs::testbed::daemon::{EXIT_TIMEOUT, MOUNT_TIMEOUT, POLL};

/// Returns true when privileged mount tests can run. Otherwise prints a loud banner to stderr
/// (`SKIPPED: <test>: <reason>`) and returns false; but when `CI=true` it panics instead: a
/// skipped mount test is a failure in CI.
pub fn require_mount_privileges(test: &str) -> bool {
    match testbed::mount_privileges() {
        Ok(()) => true,
        Err(reason) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{test}: cannot run a privileged mount test in CI: {reason}");
            }
            // Straight to the process's stderr: the test harness captures `eprintln!`, and a
            // skipped test must be seen even when it "passes".
            let banner = format!(
                "\n{rule}\nSKIPPED: {test}: {reason}\n  (run the tests as root on Linux with \
                 /dev/fuse and loop devices)\n{rule}\n",
                rule = "=".repeat(70)
            );
            let _ = std::io::stderr().lock().write_all(banner.as_bytes());
            false
        }
    }
}

/// Runs `reseedfs init` for `dbs` on the testbed (`copies` copies each) and asserts that it
/// succeeds.
pub fn init(bed: &Testbed, dbs: &[&str], copies: u32) {
    let mut cmd = Command::new(BIN);
    cmd.arg("init")
        .arg("--volumes")
        .arg(&bed.volumes_root)
        .arg("--databases")
        .arg(&bed.databases_root);
    for db in dbs {
        cmd.args(["--database", db]);
    }
    cmd.arg("--copies")
        .arg(copies.to_string())
        .arg("--config")
        .arg(&bed.config_path)
        .arg("--state-dir")
        .arg(&bed.state_dir)
        .arg("--witness-dir")
        .arg(bed.root.join("witness"));
    let out = cmd.output().expect("run reseedfs init");
    assert!(
        out.status.success(),
        "reseedfs init failed ({}):\n{}",
        out.status,
        describe_output(&out)
    );
    // Any mount suite can run over FUSE over io_uring: `RESEEDFS_TEST_FUSE_TRANSPORT=uring`
    // (with root's `enable_uring` set by whoever runs it; tests/transport.rs checks that the
    // ring then really serves).
    if let Ok(transport) = std::env::var("RESEEDFS_TEST_FUSE_TRANSPORT") {
        set_fuse_transport(&bed.config_path, &transport);
    }
}

/// Puts `fuse_transport = "<transport>"` at the top of the config file (a top-level key:
/// before any table).
pub fn set_fuse_transport(config: &Path, transport: &str) {
    let text =
        fs::read_to_string(config).unwrap_or_else(|e| panic!("read {}: {e}", config.display()));
    let rest: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("fuse_transport"))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(config, format!("fuse_transport = \"{transport}\"\n{rest}"))
        .unwrap_or_else(|e| panic!("write {}: {e}", config.display()));
}

/// `root/mount.log`: stdout and stderr of every `reseedfs mount` run on the testbed.
pub fn mount_log_path(bed: &Testbed) -> PathBuf {
    bed.root.join("mount.log")
}

/// The content of `root/mount.log` (empty when there is none yet).
pub fn read_mount_log(bed: &Testbed) -> String {
    fs::read(mount_log_path(bed))
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// Starts `reseedfs mount --config <cfg>` (`RESEEDFS_LOG=info` unless set), its output
/// appended to `root/mount.log`.
fn spawn_mount(bed: &Testbed) -> MountDaemon {
    MountDaemon::reseedfs(
        Path::new(BIN),
        &bed.config_path,
        &bed.databases_root,
        &mount_log_path(bed),
        false,
    )
    .expect("spawn reseedfs mount")
}

/// What became of a `reseedfs mount` run by [`try_mount`].
#[derive(Debug)]
pub enum MountAttempt {
    /// The daemon exited before mounting anything.
    Exited {
        /// Its exit status.
        status: ExitStatus,
        /// What it printed (`mount.log`).
        log: String,
    },
    /// The mount appeared (the daemon was then stopped and the mount removed).
    Mounted {
        /// What it printed (`mount.log`).
        log: String,
    },
    /// Neither within the timeout (the daemon was then killed).
    Hung {
        /// What it printed (`mount.log`).
        log: String,
    },
}

/// Runs `reseedfs mount` on an initialised testbed and reports whether it mounted or exited;
/// for tests where the mount must be refused. Never leaves a daemon or a mount behind.
pub fn try_mount(bed: &Testbed, timeout: Duration) -> MountAttempt {
    let mut daemon = spawn_mount(bed);
    let waited = daemon.wait_mounted(timeout, &|| false);
    daemon.stop();
    let log = read_mount_log(bed);
    match waited {
        Ok(()) => MountAttempt::Mounted { log },
        Err(NotMounted::Exited(status)) => MountAttempt::Exited { status, log },
        Err(NotMounted::Io(e)) => panic!("wait for reseedfs mount: {e}"),
        Err(NotMounted::Timeout(_) | NotMounted::Interrupted) => MountAttempt::Hung { log },
    }
}

/// stdout and stderr of a finished command, for failure messages.
pub fn describe_output(out: &Output) -> String {
    format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A testbed with `reseedfs mount` running on it. Dropping it stops the daemon (SIGTERM,
/// then SIGKILL) and detaches whatever is left mounted.
pub struct Mounted {
    /// The `reseedfs mount` process (first: it is stopped before the testbed goes).
    pub daemon: MountDaemon,
    /// The pool under the mount.
    pub bed: Testbed,
}

impl Mounted {
    /// Runs `reseedfs init` (see [`init`]), then [`Mounted::mount_only`].
    pub fn start(bed: Testbed, dbs: &[&str], copies: u32) -> Mounted {
        init(&bed, dbs, copies);
        Mounted::mount_only(bed)
    }

    /// Only the mount part, for a bed already initialised (remount tests): spawns
    /// `reseedfs mount` and waits up to [`MOUNT_TIMEOUT`] for `databases_root` to be a
    /// `fuse.reseedfs` mount. Panics with `mount.log` when the daemon exits first.
    pub fn mount_only(bed: Testbed) -> Mounted {
        let mut daemon = spawn_mount(&bed);
        if let Err(why) = daemon.wait_mounted(MOUNT_TIMEOUT, &|| false) {
            panic!("{}", daemon.describe(&why));
        }
        let m = Mounted { bed, daemon };
        // A suite run over another transport must really run over it, not a fallback.
        if let Ok(transport) = std::env::var("RESEEDFS_TEST_FUSE_TRANSPORT") {
            let status = m.status_json();
            assert_eq!(
                status["fuse_transport"].as_str(),
                Some(transport.as_str()),
                "RESEEDFS_TEST_FUSE_TRANSPORT={transport}, but the mount serves otherwise \
                 (for uring root sets /sys/module/fuse/parameters/enable_uring); mount.log:\n{}",
                m.mount_log()
            );
        }
        m
    }

    /// The daemon's pid (panics when it already exited).
    pub fn pid(&self) -> u32 {
        self.daemon.pid().expect("the reseedfs mount daemon runs")
    }

    /// `kill -9` of the daemon (a crash), waiting until it is gone; its mount stays, dead.
    pub fn kill(&mut self) {
        let pid = self.pid();
        let killed = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(killed.success(), "kill -9 {pid}");
        assert!(
            self.daemon.wait_exit(EXIT_TIMEOUT).is_some(),
            "the daemon (pid {pid}) survives kill -9"
        );
    }

    /// What is mounted at `databases_root`, if anything.
    pub fn fstype(&self) -> Option<String> {
        mount_fstype(&self.bed.databases_root)
    }

    /// `databases_root/<db>`.
    pub fn db_path(&self, db: &str) -> PathBuf {
        self.bed.databases_root.join(db)
    }

    /// `databases_root/<db>/<db>.db`: where a database keeps its files.
    pub fn db_files(&self, db: &str) -> PathBuf {
        self.db_path(db).join(format!("{db}.db"))
    }

    /// Where copy files of `db` live on volume `k` (from 1): `VolumeK/<db>.db`.
    pub fn backing_files(&self, k: usize, db: &str) -> PathBuf {
        self.bed.volume_path(k).join(format!("{db}.db"))
    }

    /// Everything the daemon printed so far.
    pub fn mount_log(&self) -> String {
        read_mount_log(&self.bed)
    }

    /// Runs the binary with `args` followed by `--config <cfg>`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&self.bed.config_path)
            .output()
            .expect("run reseedfs")
    }

    /// `reseedfs status --config cfg --json`, parsed.
    pub fn status_json(&self) -> Value {
        let out = self.cli(&["status", "--json"]);
        assert!(
            out.status.success(),
            "reseedfs status --json failed ({}):\n{}",
            out.status,
            describe_output(&out)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "reseedfs status --json printed no JSON ({e}):\n{}",
                describe_output(&out)
            )
        })
    }

    /// `reseedfs events --config cfg --json`: one object per line.
    pub fn events_json(&self) -> Vec<Value> {
        let out = self.cli(&["events", "--json"]);
        assert!(
            out.status.success(),
            "reseedfs events --json failed ({}):\n{}",
            out.status,
            describe_output(&out)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| {
                    panic!("reseedfs events --json printed a line that is no JSON ({e}): {line}")
                })
            })
            .collect()
    }

    /// `reseedfs unmount --config cfg`, then waits for the daemon ([`EXIT_TIMEOUT`], then
    /// kill) and asserts that it exited 0 and the mount is gone. Returns the testbed.
    pub fn unmount(mut self) -> Testbed {
        let out = self.cli(&["unmount"]);
        assert!(
            out.status.success(),
            "reseedfs unmount failed ({}):\n{}\nmount.log:\n{}",
            out.status,
            describe_output(&out),
            self.mount_log()
        );
        let status = self.daemon.wait_exit(EXIT_TIMEOUT);
        let Some(status) = status else {
            self.daemon.stop();
            panic!(
                "reseedfs mount still running {EXIT_TIMEOUT:?} after `reseedfs unmount`; \
                 mount.log:\n{}",
                self.mount_log()
            );
        };
        assert!(
            status.success(),
            "reseedfs mount exited with {status} after `reseedfs unmount`; mount.log:\n{}",
            self.mount_log()
        );
        assert!(
            !is_mount_point(&self.bed.databases_root),
            "{} is still mounted after the daemon exited",
            self.bed.databases_root.display()
        );
        self.bed.take()
    }
}

/// Drops the kernel's clean page cache, dentries and inodes, so that what is read through the
/// mount next comes from the daemon (and so from the copies), not from pages the kernel kept
/// from the writes. Best effort: a failure is only reported.
pub fn drop_caches() {
    if let Err(e) = fs::write("/proc/sys/vm/drop_caches", "3") {
        eprintln!("warning: cannot drop the page cache: {e}");
    }
}

/// Reads a whole file; panics naming it on error.
pub fn read_all(path: &Path) -> Vec<u8> {
    let mut data = Vec::new();
    fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    data
}

/// Polls `probe` every 100 ms until it returns `Some` or `timeout` passes; then `None`.
pub fn wait_for<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The copy of `db` on `volume` in a `status --json` document.
pub fn copy_status<'a>(status: &'a Value, db: &str, volume: &str) -> Option<&'a Value> {
    status["databases"]
        .as_array()?
        .iter()
        .find(|d| d["name"] == db)?["copies"]
        .as_array()?
        .iter()
        .find(|c| c["volume"] == volume)
}

/// The state word of `volume` in a `status --json` document.
pub fn volume_state<'a>(status: &'a Value, volume: &str) -> Option<&'a str> {
    status["volumes"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == volume)?["state"]
        .as_str()
}

/// Whether the copy of `db` on `volume` has status `word` and the given `active` flag.
pub fn copy_is(status: &Value, db: &str, volume: &str, word: &str, active: bool) -> bool {
    copy_status(status, db, volume)
        .is_some_and(|c| c["status"] == word && c["active"].as_bool() == Some(active))
}

/// An event's numeric id, whether the JSON holds it as a number or a string.
pub fn event_id(event: &Value) -> Option<u64> {
    event["id"]
        .as_u64()
        .or_else(|| event["id"].as_str()?.parse().ok())
}

/// `GET path` over HTTP/1.1 from `addr`: the status line and the body. Panics when the
/// server cannot be reached or answers no HTTP.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("set a read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap_or_else(|e| panic!("send GET {path} to {addr}: {e}"));
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .unwrap_or_else(|e| panic!("read the answer to GET {path} from {addr}: {e}"));
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer from {addr}{path}: {answer:?}"));
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, body.to_owned())
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_local_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("find a free port on 127.0.0.1")
}

/// Waits (up to 30 s) until the activity log of `db` on every volume of `bed` that has one
/// no longer lists `file` (a volume-relative path such as `db001.db/cold.dat`): two
/// checkpoints have passed since it was last written, so a dying disk cannot have lost
/// any of it. Panics when it stays listed.
pub fn wait_out_of_activity_log(bed: &Testbed, db: &str, file: &str) {
    let db: reseedfs::names::DbName = db.parse().expect("a valid database name");
    let listed = || {
        let vols = reseedfs::pool::list_volumes(&bed.volumes_root).unwrap_or_default();
        vols.iter().any(|(_, name, path)| {
            let Ok(v) = reseedfs::volume::Volume::open(name, path) else {
                return false;
            };
            matches!(
                reseedfs::tap::activity::read(&v, &db),
                Ok(Some(r)) if r.extents.contains_key(Path::new(file))
            )
        })
    };
    assert!(
        wait_for(Duration::from_secs(30), || (!listed()).then_some(())).is_some(),
        "{file} stays in the activity log of {db}"
    );
}
