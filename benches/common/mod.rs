//! What the benches share: the daemons they start (reseedfs, and any FUSE daemon run in
//! the foreground), the machine's load, dropping caches, medians, where results go.

// Each bench uses its own subset.
#![allow(dead_code)]

use std::fs;
use std::io;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::thread;

use reseedfs::testbed::daemon::{MOUNT_TIMEOUT, MountDaemon, StopRequest};
pub use reseedfs::testbed::with_path;

/// The reseedfs daemon the benches measure: the product build (default features), built
/// once into `target/product/` (or `$RESEEDFS_BENCH_BIN`). Not the binary `cargo bench`
/// builds beside the benches: the dev-dependency on the package turns on its test
/// features there (fail points, the fault-injecting volume wrapper), which the product
/// does not carry.
pub fn bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("RESEEDFS_BENCH_BIN") {
            return PathBuf::from(bin);
        }
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| manifest.join("target"), PathBuf::from)
            .join("product");
        eprintln!(
            "building the product daemon (default features) into {} ...",
            target.display()
        );
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "--bin", "reseedfs", "--target-dir"])
            .arg(&target)
            .current_dir(manifest)
            .status()
            .unwrap_or_else(|e| panic!("run {} build: {e}", env!("CARGO")));
        assert!(
            status.success(),
            "cargo build --release --bin reseedfs --target-dir {} failed ({status}); \
             set RESEEDFS_BENCH_BIN to a reseedfs binary to bench that one",
            target.display()
        );
        target.join("release").join("reseedfs")
    })
}

/// A FUSE daemon the bench started, in its own process group (a Ctrl-C reaches only the
/// bench, which then stops it in order), under the testbed's supervisor: dropping it asks
/// it to unmount (`reseedfs unmount`, or `umount`), then SIGTERM, then SIGKILL.
pub struct Daemon {
    /// The bench's name for it (`reseedfs_1copy`, `mergerfs`, ...).
    pub label: &'static str,
    pub mount: MountDaemon,
}

impl Daemon {
    /// `reseedfs init` (database `db`, `copies` copies) and `reseedfs mount` on
    /// `pool/vols` (`Volume1..N` there), mounted at `pool/dbs`; `settings` change the
    /// config `init` wrote (see [`Setting`]).
    pub fn reseedfs(
        label: &'static str,
        pool: &Path,
        db: &str,
        copies: u32,
        settings: &[Setting],
    ) -> io::Result<Daemon> {
        Daemon::reseedfs_with(bin(), label, pool, db, copies, settings)
    }

    /// [`Daemon::reseedfs`] with the reseedfs binary `bin` (a build to compare with).
    pub fn reseedfs_with(
        bin: &Path,
        label: &'static str,
        pool: &Path,
        db: &str,
        copies: u32,
        settings: &[Setting],
    ) -> io::Result<Daemon> {
        let dbs = pool.join("dbs");
        fs::create_dir_all(&dbs).map_err(|e| with_path(e, "create", &dbs))?;
        let config = pool.join("reseedfs.toml");
        let out = Command::new(bin)
            .arg("init")
            .arg("--volumes")
            .arg(pool.join("vols"))
            .arg("--databases")
            .arg(&dbs)
            .args(["--database", db, "--copies", &copies.to_string()])
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(pool.join("state"))
            .arg("--witness-dir")
            .arg(pool.join("witness"))
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "reseedfs init failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        if !settings.is_empty() {
            let text = fs::read_to_string(&config).map_err(|e| with_path(e, "read", &config))?;
            let mut doc: toml::Table = text
                .parse()
                .map_err(|e| io::Error::other(format!("{}: {e}", config.display())))?;
            for s in settings {
                s.apply(&mut doc);
            }
            fs::write(&config, doc.to_string()).map_err(|e| with_path(e, "write", &config))?;
        }
        let log = pool.join("mount.log");
        let mut cmd = Command::new(bin);
        cmd.arg("mount").arg("--config").arg(&config);
        Daemon::start(cmd, label, dbs, Some(config), &log, "fuse.reseedfs")
    }

    /// Starts `cmd` (a FUSE daemon in the foreground, its output to `log`) and waits until
    /// `mountpoint` is a mount of type `fstype`. Stopped with `reseedfs unmount` (`config`)
    /// or `umount`, then SIGTERM, then SIGKILL.
    pub fn start(
        mut cmd: Command,
        label: &'static str,
        mountpoint: PathBuf,
        config: Option<PathBuf>,
        log: &Path,
        fstype: &str,
    ) -> io::Result<Daemon> {
        // A fresh log per daemon (the supervisor appends).
        let _ = fs::remove_file(log);
        cmd.env("RESEEDFS_LOG", "warn").process_group(0);
        let at = mountpoint.clone();
        let stop: StopRequest = Box::new(move || {
            let mut ask = match &config {
                Some(config) => {
                    let mut c = Command::new(bin());
                    c.arg("unmount").arg("--config").arg(config);
                    c
                }
                None => {
                    let mut c = Command::new("umount");
                    c.arg(&at);
                    c
                }
            };
            match ask.stdout(Stdio::null()).stderr(Stdio::null()).status() {
                Ok(s) if s.success() => Ok(()),
                Ok(s) => Err(format!("{ask:?}: {s}")),
                Err(e) => Err(format!("{ask:?}: {e}")),
            }
        });
        let mut mount = MountDaemon::spawn(cmd, label, &mountpoint, fstype, log)?.on_stop(stop);
        mount
            .wait_mounted(MOUNT_TIMEOUT, &|| false)
            .map_err(|why| io::Error::other(mount.describe(&why)))?;
        Ok(Daemon { label, mount })
    }

    /// Where it mounts.
    pub fn mountpoint(&self) -> &Path {
        self.mount.mountpoint()
    }

    /// Its pid (0 once it exited).
    pub fn pid(&self) -> u32 {
        self.mount.pid().unwrap_or(0)
    }
}

/// One change to a reseedfs config: `key` (`threads`, or `table.key` such as
/// `tap.checkpoint_interval`) set to `value` (an integer or `true`/`false` when it parses as
/// one, else a string), as given on a bench's command line: `--set key=value`.
#[derive(Debug, Clone)]
pub struct Setting {
    key: String,
    value: toml::Value,
}

impl Setting {
    /// Parses `key=value`.
    pub fn parse(s: &str) -> Result<Setting, String> {
        let (key, value) = s
            .split_once('=')
            .ok_or_else(|| format!("--set wants key=value, not {s}"))?;
        let value = if let Ok(n) = value.parse::<i64>() {
            toml::Value::Integer(n)
        } else if let Ok(b) = value.parse::<bool>() {
            toml::Value::Boolean(b)
        } else {
            toml::Value::String(value.to_owned())
        };
        Ok(Setting {
            key: key.trim().to_owned(),
            value,
        })
    }

    /// `key=value`, as given.
    pub fn text(&self) -> String {
        match &self.value {
            toml::Value::String(v) => format!("{}={v}", self.key),
            v => format!("{}={v}", self.key),
        }
    }

    /// `threads = n`.
    pub fn threads(n: u64) -> Setting {
        Setting {
            key: "threads".into(),
            value: toml::Value::Integer(i64::try_from(n).unwrap_or(i64::MAX)),
        }
    }

    fn apply(&self, doc: &mut toml::Table) {
        let mut table = doc;
        let mut parts: Vec<&str> = self.key.split('.').collect();
        let last = parts.pop().unwrap_or_default();
        for p in parts {
            let entry = table
                .entry(p.to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            let toml::Value::Table(t) = entry else {
                return;
            };
            table = t;
        }
        table.insert(last.to_owned(), self.value.clone());
    }
}

impl Daemon {
    /// `Ok` while the daemon still serves its mount. A figure taken after it stopped would
    /// measure the folder under the mount point instead (this machine is shared: another
    /// job's cleanup once stopped every reseedfs daemon of the host mid-run).
    pub fn check(&self) -> io::Result<()> {
        if self.mount.is_mounted() {
            return Ok(());
        }
        let log = self.mount.log_text();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        Err(io::Error::other(format!(
            "the {} daemon (pid {}) no longer serves {}; the last lines of its log:\n{}",
            self.label,
            self.pid(),
            self.mountpoint().display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )))
    }

    /// CPU seconds (user + system, every thread) the daemon has used so far.
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(self.mount.pid()?)
    }
}

/// CPU seconds (user + system, every thread, live or ended) process `pid` has used.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0) // USER_HZ
}

/// `sync`, then drop the clean page cache, dentries and inodes.
pub fn drop_caches() {
    rustix::fs::sync();
    if let Err(e) = fs::write("/proc/sys/vm/drop_caches", "3") {
        eprintln!("bench: cannot drop caches: {e}");
    }
}

pub fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

pub fn bench_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is `<target dir>/tmp`, honouring CARGO_TARGET_DIR.
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("bench")
}

pub fn tool_works(tool: &str, args: &[&str]) -> bool {
    Command::new(tool)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn tool_version(tool: &str) -> String {
    let flag = if tool == "mergerfs" {
        "-V"
    } else {
        "--version"
    };
    Command::new(tool)
        .arg(flag)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim().to_owned())
        })
        .unwrap_or_else(|| tool.to_owned())
}

/// The load average and the busiest other processes: this 2-core machine is shared.
pub fn machine_load() -> String {
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let one: f64 = load.first().and_then(|l| l.parse().ok()).unwrap_or(0.0);
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    let busy = if one > cores as f64 * 0.5 {
        " (BUSY: other work is running, figures are noisy)"
    } else {
        ""
    };
    format!("load {} on {cores} cores{busy}", load.join(" "))
}

/// The VM's free page reporting (virtio-balloon, `page_reporting`), held off while a bench
/// runs and put back as it was when dropped. With it on, memory freed (a dropped cache)
/// is handed back to the host after a few seconds, and the first touch of each such page
/// faults in the hypervisor: a job that fills the page cache after it (2 copies write
/// twice the data) copies at a third of its speed, whichever target it is, depending only
/// on how long ago the memory was freed (README: "The buffered 2-copy slow mode").
pub struct PageReportingOff {
    old: String,
}

impl PageReportingOff {
    const KNOB: &str = "/sys/module/page_reporting/parameters/page_reporting_order";
    /// An order above every free block's: nothing is reported.
    const NEVER: &str = "11";

    /// Holds reporting off: `Ok(None)` where the kernel has none (no balloon), `Err` when
    /// it could not be turned off (said by the caller).
    pub fn hold() -> io::Result<Option<PageReportingOff>> {
        let old = match fs::read_to_string(Self::KNOB) {
            Ok(s) => s.trim().to_owned(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(with_path(e, "read", Path::new(Self::KNOB))),
        };
        fs::write(Self::KNOB, Self::NEVER)
            .map_err(|e| with_path(e, "write", Path::new(Self::KNOB)))?;
        Ok(Some(PageReportingOff { old }))
    }

    /// What the knob was before.
    pub fn was(&self) -> &str {
        &self.old
    }
}

impl Drop for PageReportingOff {
    fn drop(&mut self) {
        if let Err(e) = fs::write(Self::KNOB, &self.old) {
            eprintln!("cannot restore {} to {}: {e}", Self::KNOB, self.old);
        }
    }
}

/// [`PageReportingOff::hold`], said on the bench's output (`bench`: its name); then
/// `warm` bytes of memory are touched once and freed, so that the page cache the jobs fill
/// comes from memory the host backs again (what was handed back before the bench stays
/// handed back until touched: without this the first jobs of a run paid for it).
pub fn page_reporting_off(bench: &str, warm: u64) -> Option<PageReportingOff> {
    match PageReportingOff::hold() {
        Ok(Some(g)) => {
            let free = fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|m| {
                    m.lines()
                        .find_map(|l| l.strip_prefix("MemAvailable:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                })
                .map_or(0, |kib| kib * 1024);
            let warm = warm.min(free / 2);
            let started = std::time::Instant::now();
            let mut touched: Vec<u8> = Vec::new();
            if touched.try_reserve_exact(warm as usize).is_ok() {
                touched.resize(warm as usize, 1);
            }
            drop(touched);
            println!(
                "{bench}: the VM's free page reporting held off for the run (page_reporting_order \
                 {} -> {}, put back at the end), and {} MiB of memory touched once ({:.1} s): \
                 memory handed back to the host makes the first touch of fresh page cache \
                 several times slower",
                g.was(),
                PageReportingOff::NEVER,
                warm >> 20,
                started.elapsed().as_secs_f64()
            );
            Some(g)
        }
        Ok(None) => None,
        Err(e) => {
            println!(
                "{bench}: WARNING: the VM's free page reporting could not be held off ({e}): jobs \
                 that fill the page cache may run in a slow mode that depends on how long ago \
                 memory was freed"
            );
            None
        }
    }
}

/// The threads of process `pid` serving FUSE ring entries (`fuse-ring-*`): 0 when it
/// serves over `/dev/fuse`.
pub fn ring_threads(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |tasks| {
        tasks
            .filter_map(Result::ok)
            .filter(|t| {
                fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|comm| comm.starts_with("fuse-ring-"))
            })
            .count()
    })
}

/// When `wanted` (a target served over FUSE's io_uring transport is measured): sets
/// `enable_uring` for the run, says so on the bench's output (`bench`: its name), and
/// returns the guard that puts it back as it was. The kernel offers the ring at INIT only
/// while the knob is set.
pub fn uring_for_run(
    bench: &str,
    wanted: bool,
) -> io::Result<Option<reseedfs::sys::fuse_uring::Enabled>> {
    if !wanted {
        return Ok(None);
    }
    let was = reseedfs::sys::fuse_uring::enabled();
    let guard = reseedfs::sys::fuse_uring::Enabled::set()?;
    println!(
        "{bench}: {} set for the run (was {})",
        reseedfs::sys::fuse_uring::ENABLE_URING,
        if was { "on" } else { "off" }
    );
    Ok(Some(guard))
}
