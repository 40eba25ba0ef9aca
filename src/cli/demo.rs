//! `reseedfs demo`: the whole story in a throwaway pool.
//!
//! Three volumes, one database `db001` with two copies (Volume1 active, Volume2 passive,
//! Volume3 spare), a write workload of checksummed blocks, the death of the active copy's
//! volume in the middle of it, then every block read back, the status and the events, and
//! everything undone.
//!
//! - As root with `/dev/fuse` ([`testbed::mount_privileges`]): the volumes are loop-mounted
//!   ext4 filesystems, the daemon is the real `reseedfs mount` in a child process, the
//!   workload goes through the kernel mount and the disk dies by `EXT4_IOC_SHUTDOWN`.
//! - Otherwise: the volumes are plain directories, the pool is opened in this process and
//!   the workload goes through the filesystem core ([`Core`]); the disk death is an `EIO`
//!   injected into the volume layer.
//!
//! Both paths share the workload and the verification: a `Target` makes `DemoFile`s,
//! either files under a directory or handles of the core.
//!
//! SIGINT and SIGTERM stop the demo at the next step: the daemon is asked to unmount (then
//! terminated, then killed), and the testbed is removed.

use std::ffi::OsStr;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use parking_lot::Mutex;

use super::{Exit, render_event, render_status};
use crate::config::Config;
use crate::control::{self, Request, Response};
use crate::events::{Event, EventLog};
use crate::fs::{Caller, Core, Errno, HandleId, NodeId};
use crate::pool::Pool;
use crate::status::Status;
use crate::testbed::{self, Testbed};

/// Arguments of `demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// How long the write workload runs, in seconds; the active copy's volume dies at 40%
    /// of it.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u64).range(2..=600))]
    pub seconds: u64,
    /// Size of each of the three throwaway volumes, in MiB (loop-mounted ext4, as root).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(64..=65536))]
    pub volume_size_mib: u64,
    /// Writer threads, each writing its own file.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=16))]
    pub threads: u64,
}

/// The demo's database.
const DB: &str = "db001";
/// Volumes in the throwaway pool.
const VOLUMES: usize = 3;
/// Copies of the database.
const COPIES: u32 = 2;
/// Steps printed as `[k/STEPS]`.
const STEPS: u32 = 7;
const MIB: u64 = 1 << 20;
/// Each file is cut into slots; a block lies inside one slot, so blocks never overlap and
/// the last block written into a slot is what the slot must hold.
const SLOT: u64 = 256 * 1024;
/// Slots per file (16 MiB files).
const SLOTS: u64 = 64;
/// Smallest block.
const MIN_BLOCK: u64 = 4 * 1024;
/// Largest block (one whole slot).
const MAX_BLOCK: u64 = SLOT;
/// Block sizes and offsets are multiples of this.
const ALIGN: u64 = 512;
/// Header of every block: magic, file, slot, write number, checksum of the payload.
const HEADER: usize = 32;
const MAGIC: &[u8; 8] = b"RSFSDEMO";
/// Each writer calls fsync after this many writes.
const FSYNC_EVERY: u64 = 8;
/// The workload dies at this fraction of `--seconds`.
const KILL_AT: f64 = 0.4;
/// Room each volume needs beyond the files (ext4 metadata and journal, pool state).
const VOLUME_SLACK_MIB: u64 = 48;
/// How long the daemon may take to show its mount.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the daemon may take to exit after the unmount request, and after SIGTERM.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Polling period.
const POLL: Duration = Duration::from_millis(50);
/// The filesystem type of our mount in `/proc/self/mountinfo`.
const FSTYPE: &str = "fuse.reseedfs";

/// Runs the demo.
pub fn run(args: &DemoArgs) -> anyhow::Result<Exit> {
    let interrupted = Arc::new(AtomicBool::new(false));
    let mut handlers = Vec::new();
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let id = signal_hook::flag::register(signal, interrupted.clone())
            .with_context(|| format!("install the handler of signal {signal}"))?;
        handlers.push(id);
    }
    let (outcome, cleaned) = match testbed::mount_privileges() {
        Ok(()) => run_mounted(args, &interrupted),
        Err(why) => run_in_process(args, &why, &interrupted),
    };
    for id in handlers {
        signal_hook::low_level::unregister(id);
    }
    if interrupted.load(Ordering::SeqCst) {
        if let Err(e) = &outcome {
            if !e.is::<Interrupted>() {
                eprintln!("reseedfs: {e:#}");
            }
        }
        if cleaned {
            println!("interrupted: cleaned up");
        } else {
            println!("interrupted: could not clean up everything (see above)");
        }
        return Ok(Exit::Failure);
    }
    outcome
}

/// The demo was stopped by SIGINT/SIGTERM.
#[derive(Debug)]
struct Interrupted;

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// Fails with [`Interrupted`] once a signal arrived.
fn check(interrupted: &AtomicBool) -> anyhow::Result<()> {
    if interrupted.load(Ordering::SeqCst) {
        Err(Interrupted.into())
    } else {
        Ok(())
    }
}

fn step(k: u32, what: impl fmt::Display) {
    println!();
    println!("[{k}/{STEPS}] {what}");
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

/// Where testbeds are made (see [`testbed::TESTBED_DIR_ENV`]).
fn testbed_base() -> PathBuf {
    std::env::var_os(testbed::TESTBED_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

/// Says whether the testbed root is gone after the testbed was dropped.
fn report_cleanup(root: &Path, what: &str) -> bool {
    if root.exists() {
        println!(
            "  WARNING: {} is still there: something under it could not be unmounted or \
             removed (see the warnings above; check `grep {} /proc/mounts` and `losetup -a`)",
            root.display(),
            root.display()
        );
        false
    } else {
        println!("  removed {} ({what})", root.display());
        true
    }
}

// ---------------------------------------------------------------------------------------
// The two stories.

/// As root: loop volumes, the daemon in a child process, the kernel mount, a real disk death.
/// Returns the outcome and whether everything was cleaned up.
fn run_mounted(args: &DemoArgs, interrupted: &AtomicBool) -> (anyhow::Result<Exit>, bool) {
    let data_mib = args.threads * SLOTS * SLOT / MIB;
    if args.volume_size_mib < data_mib + VOLUME_SLACK_MIB {
        let e = anyhow::anyhow!(
            "--volume-size-mib {} is too small for {} writers: each copy holds up to {data_mib} \
             MiB of files; give at least {}",
            args.volume_size_mib,
            args.threads,
            data_mib + VOLUME_SLACK_MIB
        );
        return (Err(e), true);
    }
    step(
        1,
        format_args!(
            "building {VOLUMES} loop-mounted ext4 volumes of {} MiB each under {}",
            args.volume_size_mib,
            testbed_base().display()
        ),
    );
    let bed = match Testbed::loop_volumes(VOLUMES, args.volume_size_mib * MIB) {
        Ok(bed) => bed,
        Err(e) => {
            let e = anyhow::Error::new(e).context(format!(
                "build {VOLUMES} loop-mounted ext4 volumes under {}",
                testbed_base().display()
            ));
            return (Err(e), true);
        }
    };
    for v in &bed.volumes {
        println!(
            "  {} <- {} ({})",
            v.mountpoint.display(),
            v.device.display(),
            v.image.display()
        );
    }
    let root = bed.root.clone();
    let outcome = mounted_story(&bed, args, interrupted);
    drop(bed);
    let cleaned = report_cleanup(
        &root,
        "volumes unmounted, loop devices detached, images deleted",
    );
    (outcome, cleaned)
}

fn mounted_story(bed: &Testbed, args: &DemoArgs, interrupted: &AtomicBool) -> anyhow::Result<Exit> {
    check(interrupted)?;
    let (config, copies) = init_pool(bed, false)?;
    check(interrupted)?;

    let log_path = bed.root.join("mount.log");
    step(
        3,
        format_args!(
            "mounting {}: reseedfs mount --config {} (daemon log: {})",
            bed.databases_root.display(),
            bed.config_path.display(),
            log_path.display()
        ),
    );
    let mut daemon = Daemon::spawn(&bed.config_path, config.socket_path(), log_path)?;
    daemon.wait_mounted(&bed.databases_root, interrupted)?;
    let dir = bed.databases_root.join(DB).join(format!("{DB}.db"));
    println!(
        "  {} is a {FSTYPE} mount (daemon pid {}); the database's files go to {}",
        bed.databases_root.display(),
        daemon.pid().unwrap_or(0),
        dir.display()
    );

    let (active, passive) = (&copies[0], &copies[1]);
    let victim = layout_volume(bed, active)?;
    let kill = || {
        victim.shutdown().with_context(|| {
            format!(
                "shut down {active} ({} on {})",
                victim.mountpoint.display(),
                victim.device.display()
            )
        })
    };
    let plan = Plan {
        threads: args.threads,
        seconds: args.seconds,
        kill: &kill,
        kill_note: format!(
            "EXT4_IOC_SHUTDOWN on {}, mounted at {}",
            victim.device.display(),
            victim.mountpoint.display()
        ),
        active,
        interrupted,
    };
    let target = DirTarget { dir };
    let written = write_workload(&target, &plan)?;
    check(interrupted)?;

    step(
        5,
        "reading every block back through the mount (page cache dropped first)",
    );
    let through = verify(&target, &written.files, interrupted)?;
    check(interrupted)?;

    step(6, "status and events, from the daemon's control socket");
    let socket = config.socket_path();
    match control::call(&socket, &Request::Status) {
        Ok(Response::Status(s)) => show_status(&s, active),
        Ok(other) => println!("  the daemon answered Status with {other:?}"),
        Err(e) => println!("  {e}"),
    }
    println!();
    match control::call(&socket, &Request::Events { since: 0 }) {
        Ok(Response::Events(list)) => show_events(&list),
        Ok(other) => println!("  the daemon answered Events with {other:?}"),
        Err(e) => println!("  {e}"),
    }
    check(interrupted)?;

    step(
        7,
        "unmounting (an Unmount request on the control socket) and removing the pool",
    );
    match daemon.stop() {
        Some(how) => println!("  {how}"),
        None => println!("  the daemon was already gone"),
    }
    if testbed::is_mount_point(&bed.databases_root) {
        println!(
            "  WARNING: {} is still mounted after the daemon stopped",
            bed.databases_root.display()
        );
    }
    let survivor = DirTarget {
        dir: bed.volumes_root.join(passive).join(format!("{DB}.db")),
    };
    println!(
        "  reading the surviving copy directly on {passive} ({}):",
        survivor.dir.display()
    );
    let direct = verify(&survivor, &written.files, interrupted)?;
    Ok(verdict(&written, &through, &direct, active, passive))
}

/// The loop volume named `name` (`VolumeK` is `bed.volumes[K - 1]`).
fn layout_volume<'a>(bed: &'a Testbed, name: &str) -> anyhow::Result<&'a testbed::LoopVolume> {
    crate::layout::volume_number(name)
        .and_then(|k| bed.volumes.get((k as usize).checked_sub(1)?))
        .with_context(|| format!("find the loop device of {name} in the testbed"))
}

/// Not root (or no FUSE): plain directories, the pool in this process, an injected fault.
fn run_in_process(
    args: &DemoArgs,
    why: &str,
    interrupted: &AtomicBool,
) -> (anyhow::Result<Exit>, bool) {
    if rustix::process::geteuid().is_root() {
        println!(
            "cannot mount here ({why}): running the demo on plain directories with a simulated \
             disk failure, without a kernel mount"
        );
    } else {
        println!(
            "not root: running the demo on plain directories with a simulated disk failure, \
             without a kernel mount"
        );
        println!("  (run it as root with /dev/fuse for real ext4 volumes and a real FUSE mount)");
    }
    step(
        1,
        format_args!(
            "building {VOLUMES} plain directories as volumes under {}",
            testbed_base().display()
        ),
    );
    let bed = match Testbed::plain_dirs(VOLUMES) {
        Ok(bed) => bed,
        Err(e) => {
            let e = anyhow::Error::new(e).context(format!(
                "build {VOLUMES} volume directories under {}",
                testbed_base().display()
            ));
            return (Err(e), true);
        }
    };
    println!("  {}/Volume1..{VOLUMES}", bed.volumes_root.display());
    let root = bed.root.clone();
    let outcome = in_process_story(&bed, args, interrupted);
    drop(bed);
    let cleaned = report_cleanup(&root, "volumes, state and config");
    (outcome, cleaned)
}

fn in_process_story(
    bed: &Testbed,
    args: &DemoArgs,
    interrupted: &AtomicBool,
) -> anyhow::Result<Exit> {
    check(interrupted)?;
    let (config, copies) = init_pool(bed, true)?;
    check(interrupted)?;

    step(
        3,
        "opening the pool in this process: the filesystem core the FUSE adapter would serve",
    );
    let events_path = config.events_path();
    let log = Arc::new(
        EventLog::open(&events_path)
            .with_context(|| format!("open the event log {}", events_path.display()))?,
    );
    let pool = Pool::open(&config, log)
        .with_context(|| format!("open the pool under {}", config.volumes_root.display()))?;
    let core = Arc::new(Core::new(pool.clone()));
    let target = CoreTarget::new(core.clone())?;
    println!(
        "  {DB} is served from {}; the files are created in {}",
        pool.database(DB)
            .and_then(|d| d.active_volume())
            .unwrap_or_else(|| "no copy".into()),
        target.label
    );

    let (active, passive) = (&copies[0], &copies[1]);
    let victim = pool
        .volumes()
        .iter()
        .find(|v| &v.name == active)
        .and_then(|v| v.volume())
        .with_context(|| format!("find the open volume {active} in the pool"))?;
    let kill = || {
        #[cfg(any(test, feature = "failpoints"))]
        {
            victim.inject_fault(libc::EIO);
            Ok(())
        }
        #[cfg(not(any(test, feature = "failpoints")))]
        anyhow::bail!(
            "the simulated disk death needs the fault-injecting volume layer: run the demo as root, or build with `--features failpoints`"
        )
    };
    let plan = Plan {
        threads: args.threads,
        seconds: args.seconds,
        kill: &kill,
        kill_note: format!(
            "simulated: EIO injected into the volume layer of {}",
            victim.root().display()
        ),
        active,
        interrupted,
    };
    let written = write_workload(&target, &plan)?;
    check(interrupted)?;

    step(5, "reading every block back through the core");
    let through = verify(&target, &written.files, interrupted)?;
    check(interrupted)?;

    step(6, "status and events of the pool");
    show_status(&crate::status::of_pool(&pool), active);
    println!();
    let events = crate::events::read_events(&events_path)
        .with_context(|| format!("read the event log {}", events_path.display()))?;
    show_events(&events);
    check(interrupted)?;

    step(7, "closing the pool and removing it");
    drop(target);
    drop(core);
    drop(pool);
    let survivor = DirTarget {
        dir: bed.volumes_root.join(passive).join(format!("{DB}.db")),
    };
    println!(
        "  reading the surviving copy directly on {passive} ({}):",
        survivor.dir.display()
    );
    let direct = verify(&survivor, &written.files, interrupted)?;
    Ok(verdict(&written, &through, &direct, active, passive))
}

/// `reseedfs init` on the testbed: one database, two copies, the state in the testbed.
/// Returns the config and the volumes of the database's copies, the active one first.
fn init_pool(bed: &Testbed, plain: bool) -> anyhow::Result<(Config, Vec<String>)> {
    step(
        2,
        format_args!("reseedfs init: database {DB}, {COPIES} copies on distinct volumes"),
    );
    let abs = |p: &Path| {
        std::path::absolute(p).with_context(|| format!("resolve the path {}", p.display()))
    };
    let mut config = Config::new(
        abs(&bed.volumes_root)?,
        abs(&bed.databases_root)?,
        vec![DB.to_owned()],
    );
    config.copies = COPIES;
    config.state_dir = abs(&bed.state_dir)?;
    config.witness_dir = abs(&bed.root.join("witness"))?;
    let report = crate::pool::init(&config, &bed.config_path)
        .with_context(|| format!("initialise the pool under {}", bed.volumes_root.display()))?;
    for w in &report.warnings {
        println!("  init warns: {w}");
    }
    if plain && !report.warnings.is_empty() {
        println!("  (expected here: plain directories share one disk, so its death is simulated)");
    }
    let copies = report
        .placement
        .iter()
        .find(|(db, _)| db == DB)
        .map(|(_, volumes)| volumes.clone())
        .with_context(|| format!("find {DB} in the placement init made"))?;
    if copies.len() < 2 {
        bail!(
            "init placed {} copy of {DB} ({}): the demo needs two",
            copies.len(),
            copies.join(", ")
        );
    }
    println!(
        "  {DB}: active copy on {}, passive copy on {}",
        copies[0],
        copies[1..].join(", ")
    );
    if report.spares.is_empty() {
        println!("  spare: none");
    } else {
        println!("  spare: {}", report.spares.join(", "));
    }
    println!("  config: {}", bed.config_path.display());
    Ok((config, copies))
}

/// Prints the status table and what to notice in it.
fn show_status(s: &Status, dead: &str) {
    for line in render_status(s).lines() {
        if line.is_empty() {
            println!();
        } else {
            println!("  {line}");
        }
    }
    let Some(db) = s.databases.iter().find(|d| d.name == DB) else {
        println!("  WARNING: {DB} is missing from the status");
        return;
    };
    let dead_copy = db.copies.iter().find(|c| c.volume == dead);
    let active = db.copies.iter().find(|c| c.active);
    match (dead_copy, active) {
        (Some(d), Some(a))
            if d.status == crate::copyset::StatusWord::FailedAndSuspended && a.volume != dead =>
        {
            println!(
                "  notice: {} is {} and {} is the active copy now ({}); the writers never knew",
                d.name, d.status, a.name, a.status
            )
        }
        _ => println!(
            "  WARNING: the status should show the copy on {dead} failed and another copy active"
        ),
    }
}

fn show_events(events: &[Event]) {
    println!("  events:");
    for e in events {
        println!("  {}", render_event(e));
    }
}

/// The last words: what happened and the exit code.
fn verdict(
    written: &Written,
    through: &Verified,
    direct: &Verified,
    active: &str,
    passive: &str,
) -> Exit {
    let mut problems = Vec::new();
    if let Some(e) = &written.kill_error {
        problems.push(format!("the disk death could not be staged: {e}"));
    }
    if written.failures > 0 {
        problems.push(format!(
            "{} write(s)/fsync(s) failed in the workload",
            written.failures
        ));
    }
    if through.bad > 0 {
        problems.push(format!("{} block(s) read back wrong", through.bad));
    }
    if direct.bad > 0 {
        problems.push(format!(
            "{} block(s) wrong on the copy on {passive}",
            direct.bad
        ));
    }
    println!();
    if problems.is_empty() {
        println!(
            "done: {active} died under a running workload; all {} writes and {} fsyncs \
             succeeded, and every block reads back intact, through the filesystem and on the \
             surviving copy on {passive}",
            written.writes, written.fsyncs
        );
        Exit::Ok
    } else {
        println!("FAILED: {}", problems.join("; "));
        Exit::Failure
    }
}

// ---------------------------------------------------------------------------------------
// The daemon as a child process.

/// `reseedfs mount` in a child process. Dropping it stops the daemon (see [`Daemon::stop`]).
struct Daemon {
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Starts `<this binary> mount --config <config>`, stdout and stderr appended to `log`,
    /// in its own process group (a Ctrl-C reaches the demo, which unmounts in order).
    fn spawn(config: &Path, socket: PathBuf, log: PathBuf) -> anyhow::Result<Daemon> {
        let exe = std::env::current_exe().context("find the path of this reseedfs binary")?;
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("open the daemon log {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("open the daemon log {}", log.display()))?;
        let mut cmd = Command::new(&exe);
        cmd.arg("mount")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        if std::env::var_os("RESEEDFS_LOG").is_none() {
            cmd.env("RESEEDFS_LOG", "info");
        }
        let child = cmd.spawn().with_context(|| {
            format!(
                "start {} mount --config {}",
                exe.display(),
                config.display()
            )
        })?;
        Ok(Daemon {
            child: Some(child),
            socket,
            log,
        })
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn log_text(&self) -> String {
        match std::fs::read(&self.log) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => format!("(cannot read {}: {e})", self.log.display()),
        }
    }

    /// Waits until `mountpoint` is a reseedfs mount; fails with the daemon's log when it
    /// exits first or takes longer than [`MOUNT_TIMEOUT`].
    fn wait_mounted(&mut self, mountpoint: &Path, interrupted: &AtomicBool) -> anyhow::Result<()> {
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        loop {
            if testbed::mount_fstype(mountpoint).as_deref() == Some(FSTYPE) {
                return Ok(());
            }
            if let Some(child) = &mut self.child {
                let exited = child
                    .try_wait()
                    .context("wait for the reseedfs mount daemon")?;
                if let Some(status) = exited {
                    self.child = None;
                    bail!(
                        "reseedfs mount exited ({status}) before mounting {}; {}:\n{}",
                        mountpoint.display(),
                        self.log.display(),
                        self.log_text()
                    );
                }
            }
            check(interrupted)?;
            if Instant::now() >= deadline {
                bail!(
                    "no {FSTYPE} mount at {} after {} s; {}:\n{}",
                    mountpoint.display(),
                    MOUNT_TIMEOUT.as_secs(),
                    self.log.display(),
                    self.log_text()
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Stops the daemon: an `Unmount` request, then SIGTERM, then SIGKILL, each after
    /// [`EXIT_TIMEOUT`]. Says how it went; `None` when there was no daemon any more.
    fn stop(&mut self) -> Option<String> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(format!("the daemon had already exited ({status})"));
        }
        let asked = control::call(&self.socket, &Request::Unmount);
        if let Ok(Response::Ok) = asked {
            if let Some(status) = testbed::wait_child(&mut child, EXIT_TIMEOUT) {
                return Some(format!("unmounted; the daemon exited ({status})"));
            }
        }
        let why = match asked {
            Ok(Response::Ok) => format!(
                "the daemon did not exit within {} s of the unmount request",
                EXIT_TIMEOUT.as_secs()
            ),
            Ok(other) => format!("the daemon answered the unmount request with {other:?}"),
            Err(e) => e.to_string(),
        };
        let pid = rustix::process::Pid::from_child(&child);
        if rustix::process::kill_process(pid, rustix::process::Signal::TERM).is_ok() {
            if let Some(status) = testbed::wait_child(&mut child, EXIT_TIMEOUT) {
                return Some(format!("{why}: stopped it with SIGTERM ({status})"));
            }
        }
        let killed = child.kill().and_then(|()| child.wait());
        Some(match killed {
            Ok(status) => format!("{why}; it ignored SIGTERM: killed it ({status})"),
            Err(e) => format!("{why}; it ignored SIGTERM and cannot be killed: {e}"),
        })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(how) = self.stop() {
            println!("  stopping the daemon: {how}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Files: through a directory (the kernel mount, a volume) or through the core.

/// One open file of the workload.
trait DemoFile: Send + Sync {
    /// Writes all of `data` at `offset`.
    fn write_block(&self, data: &[u8], offset: u64) -> io::Result<()>;
    /// fsync.
    fn fsync(&self) -> io::Result<()>;
    /// Fills `buf` from `offset`.
    fn read_block(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Drops cached pages, so reads reach the filesystem below.
    fn drop_cache(&self) -> io::Result<()>;
}

/// Where the workload's files are made.
trait Target: Sync {
    /// Creates (or truncates) `name` for reading and writing.
    fn create(&self, name: &str) -> anyhow::Result<Box<dyn DemoFile>>;
    /// Opens `name` for reading.
    fn open(&self, name: &str) -> anyhow::Result<Box<dyn DemoFile>>;
    /// Where `name` is, for messages.
    fn describe(&self, name: &str) -> String;
}

impl DemoFile for File {
    fn write_block(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.write_all_at(data, offset)
    }

    fn fsync(&self) -> io::Result<()> {
        self.sync_all()
    }

    fn read_block(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_exact_at(buf, offset)
    }

    fn drop_cache(&self) -> io::Result<()> {
        rustix::fs::fadvise(self, 0, None, rustix::fs::Advice::DontNeed).map_err(io::Error::from)
    }
}

/// Files in a directory: the database's folder under the mount, or a volume's copy.
struct DirTarget {
    dir: PathBuf,
}

impl Target for DirTarget {
    fn create(&self, name: &str) -> anyhow::Result<Box<dyn DemoFile>> {
        let path = self.dir.join(name);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .with_context(|| format!("create {}", path.display()))?;
        Ok(Box::new(f))
    }

    fn open(&self, name: &str) -> anyhow::Result<Box<dyn DemoFile>> {
        let path = self.dir.join(name);
        let f = File::open(&path).with_context(|| format!("open {}", path.display()))?;
        Ok(Box::new(f))
    }

    fn describe(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

fn errno(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e.0)
}

/// The database's folder `<db>.db` in the core (no kernel involved).
struct CoreTarget {
    core: Arc<Core>,
    dir: NodeId,
    caller: Caller,
    label: String,
}

impl CoreTarget {
    /// Looks up `/db001/db001.db` from the root, as the kernel would.
    fn new(core: Arc<Core>) -> anyhow::Result<CoreTarget> {
        let folder = format!("{DB}.db");
        let db = core
            .lookup(NodeId::ROOT, OsStr::new(DB))
            .map_err(errno)
            .with_context(|| format!("look up /{DB} in the core"))?;
        let dir = core
            .lookup(db.node, OsStr::new(&folder))
            .map_err(errno)
            .with_context(|| format!("look up /{DB}/{folder} in the core"))?;
        let caller = Caller {
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
        };
        Ok(CoreTarget {
            core,
            dir: dir.node,
            caller,
            label: format!("core:/{DB}/{folder}/"),
        })
    }
}

impl Target for CoreTarget {
    fn create(&self, name: &str) -> anyhow::Result<Box<dyn DemoFile>> {
        let (attr, handle) = self
            .core
            .create(self.dir, OsStr::new(name), 0o644, libc::O_RDWR, self.caller)
            .map_err(errno)
            .with_context(|| format!("create {}", self.describe(name)))?;
        Ok(Box::new(CoreFile {
            core: self.core.clone(),
            node: attr.node,
            handle,
        }))
    }

    fn open(&self, name: &str) -> anyhow::Result<Box<dyn DemoFile>> {
        let attr = self
            .core
            .lookup(self.dir, OsStr::new(name))
            .map_err(errno)
            .with_context(|| format!("look up {}", self.describe(name)))?;
        match self.core.open(attr.node, libc::O_RDONLY) {
            Ok(handle) => Ok(Box::new(CoreFile {
                core: self.core.clone(),
                node: attr.node,
                handle,
            })),
            Err(e) => {
                self.core.forget(attr.node, 1);
                Err(errno(e)).with_context(|| format!("open {}", self.describe(name)))
            }
        }
    }

    fn describe(&self, name: &str) -> String {
        format!("core:/{DB}/{DB}.db/{name}")
    }
}

/// An open handle of the core, with the node reference its lookup (or create) counted.
struct CoreFile {
    core: Arc<Core>,
    node: NodeId,
    handle: HandleId,
}

impl DemoFile for CoreFile {
    fn write_block(&self, data: &[u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < data.len() {
            let n = self
                .core
                .write(self.handle, offset + done as u64, &data[done..])
                .map_err(errno)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the core wrote 0 bytes",
                ));
            }
            done += n;
        }
        Ok(())
    }

    fn fsync(&self) -> io::Result<()> {
        self.core.fsync(self.handle, false).map_err(errno)
    }

    fn read_block(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let n = self
                .core
                .read(self.handle, offset + done as u64, &mut buf[done..])
                .map_err(errno)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file ends before the block",
                ));
            }
            done += n;
        }
        Ok(())
    }

    fn drop_cache(&self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for CoreFile {
    fn drop(&mut self) {
        self.core.release(self.handle);
        self.core.forget(self.node, 1);
    }
}

// ---------------------------------------------------------------------------------------
// Blocks.

/// splitmix64: small, fast, good enough for offsets and payloads.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// FNV-1a over 64-bit words.
fn checksum(data: &[u8]) -> u64 {
    let mut h = 0xCBF2_9CE4_8422_2325_u64;
    for chunk in data.chunks(8) {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// Fills `buf` with block number `seq` of `file` in `slot`: a header (magic, file, slot,
/// seq, checksum of the payload) and a payload that only those three numbers determine.
fn fill_block(buf: &mut [u8], file: u32, slot: u32, seq: u64) {
    let (header, payload) = buf.split_at_mut(HEADER);
    let mut rng = Rng(u64::from(file) << 48 ^ u64::from(slot) << 32 ^ seq);
    for chunk in payload.chunks_mut(8) {
        let w = rng.next().to_le_bytes();
        chunk.copy_from_slice(&w[..chunk.len()]);
    }
    let sum = checksum(payload);
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&file.to_le_bytes());
    header[12..16].copy_from_slice(&slot.to_le_bytes());
    header[16..24].copy_from_slice(&seq.to_le_bytes());
    header[24..32].copy_from_slice(&sum.to_le_bytes());
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Checks that `got` is block `seq` of `file` in `slot`; `scratch` is as long as `got`.
fn check_block(
    got: &[u8],
    scratch: &mut [u8],
    file: u32,
    slot: u32,
    seq: u64,
) -> Result<(), String> {
    if got.len() < HEADER || &got[..8] != MAGIC {
        return Err("no block header there (zeros or foreign bytes)".into());
    }
    let (h_file, h_slot, h_seq) = (le_u32(&got[8..]), le_u32(&got[12..]), le_u64(&got[16..]));
    if (h_file, h_slot, h_seq) != (file, slot, seq) {
        return Err(format!(
            "holds write #{h_seq} of file {h_file} slot {h_slot} instead of write #{seq} \
             (a stale or misplaced block)"
        ));
    }
    if checksum(&got[HEADER..]) != le_u64(&got[24..]) {
        return Err("checksum mismatch: the payload is corrupt".into());
    }
    fill_block(scratch, file, slot, seq);
    if got != scratch {
        return Err("differs from what was written".into());
    }
    Ok(())
}

/// The last block written into a slot.
#[derive(Debug, Clone, Copy)]
struct Block {
    offset: u64,
    len: usize,
    seq: u64,
}

/// What one file must hold.
#[derive(Debug)]
struct FileLog {
    name: String,
    index: u32,
    /// `None`: never written, or its last write failed (content unknown).
    slots: Vec<Option<Block>>,
}

// ---------------------------------------------------------------------------------------
// The workload.

/// How the workload runs and how the disk dies.
struct Plan<'a> {
    threads: u64,
    seconds: u64,
    /// Kills the active copy's volume.
    kill: &'a dyn Fn() -> anyhow::Result<()>,
    /// How it is killed, for the operator.
    kill_note: String,
    /// The active copy's volume.
    active: &'a str,
    interrupted: &'a AtomicBool,
}

#[derive(Default)]
struct Counters {
    writes: AtomicU64,
    bytes: AtomicU64,
    fsyncs: AtomicU64,
    failures: AtomicU64,
    first_failures: Mutex<Vec<String>>,
}

impl Counters {
    fn fail(&self, what: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_failures.lock();
        if first.len() < 5 {
            first.push(what);
        }
    }
}

/// What the workload did.
struct Written {
    files: Vec<FileLog>,
    writes: u64,
    fsyncs: u64,
    failures: u64,
    kill_error: Option<String>,
}

fn write_workload(target: &dyn Target, plan: &Plan<'_>) -> anyhow::Result<Written> {
    let total = Duration::from_secs(plan.seconds);
    let kill_at = total.mul_f64(KILL_AT);
    step(
        4,
        format_args!(
            "writing for {} s: {} threads, blocks of 4-256 KiB with a checksum at random \
             offsets, fsync every {FSYNC_EVERY} writes; {} dies at {:.1} s",
            plan.seconds,
            plan.threads,
            plan.active,
            kill_at.as_secs_f64()
        ),
    );
    let mut files = Vec::new();
    for i in 0..plan.threads {
        let name = format!("demo-{}.dat", i + 1);
        let file = target.create(&name)?;
        files.push((i as u32, name, file));
    }
    if let (Some((_, first, _)), Some((_, last, _))) = (files.first(), files.last()) {
        println!("  files: {} .. {last}", target.describe(first));
    }
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x5EED);
    let counters = Counters::default();
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let mut kill_error = None;
    let mut writes_at_kill = None;
    let joined = thread::scope(|s| {
        let workers: Vec<_> = files
            .iter()
            .map(|(index, name, file)| {
                let (counters, stop) = (&counters, &stop);
                s.spawn(move || writer(*index, name, file.as_ref(), seed, counters, stop))
            })
            .collect();
        let mut next_report = Duration::from_secs(1);
        let (mut last_t, mut last_writes) = (Duration::ZERO, 0);
        loop {
            thread::sleep(POLL);
            let now = start.elapsed();
            if plan.interrupted.load(Ordering::SeqCst) {
                println!("  signal received: stopping the writers");
                break;
            }
            if writes_at_kill.is_none() && kill_error.is_none() && now >= kill_at {
                match (plan.kill)() {
                    Ok(()) => {
                        writes_at_kill = Some(counters.writes.load(Ordering::Relaxed));
                        println!();
                        println!(
                            "  >>> {} (active copy of {DB}) is dead: every I/O on it now fails \
                             with EIO",
                            plan.active
                        );
                        println!("  >>> ({}); the writers carry on:", plan.kill_note);
                        println!();
                    }
                    Err(e) => {
                        println!("  cannot kill {}: {e:#}", plan.active);
                        kill_error = Some(format!("{e:#}"));
                    }
                }
            }
            if now >= next_report {
                let writes = counters.writes.load(Ordering::Relaxed);
                let rate = (writes - last_writes) as f64 / (now - last_t).as_secs_f64().max(1e-3);
                println!(
                    "  {:>5.1} s  {:>10} written  {:>6.0} writes/s  {:>5} fsyncs  {} errors{}",
                    now.as_secs_f64(),
                    mib(counters.bytes.load(Ordering::Relaxed)),
                    rate,
                    counters.fsyncs.load(Ordering::Relaxed),
                    counters.failures.load(Ordering::Relaxed),
                    if writes_at_kill.is_some() {
                        format!("   ({} dead)", plan.active)
                    } else {
                        String::new()
                    }
                );
                (last_t, last_writes) = (now, writes);
                next_report += Duration::from_secs(1);
            }
            if now >= total {
                break;
            }
        }
        stop.store(true, Ordering::SeqCst);
        workers
            .into_iter()
            .map(|w| w.join())
            .collect::<Result<Vec<FileLog>, _>>()
    });
    let logs = joined.map_err(|_| anyhow::anyhow!("a writer thread panicked"))?;
    drop(files);
    let writes = counters.writes.load(Ordering::Relaxed);
    let fsyncs = counters.fsyncs.load(Ordering::Relaxed);
    let failures = counters.failures.load(Ordering::Relaxed);
    let after = writes_at_kill
        .map(|w| format!(", {} of them after {} died", writes - w, plan.active))
        .unwrap_or_default();
    println!(
        "  stopped after {:.1} s: {writes} writes ({}){after}, {fsyncs} fsyncs, {failures} errors",
        start.elapsed().as_secs_f64(),
        mib(counters.bytes.load(Ordering::Relaxed))
    );
    for f in counters.first_failures.lock().iter() {
        println!("  error: {f}");
    }
    if failures == 0 && writes_at_kill.is_some() {
        println!("  not one write or fsync failed: the disk's death was hidden from the writers");
    }
    Ok(Written {
        files: logs,
        writes,
        fsyncs,
        failures,
        kill_error,
    })
}

/// One writer: random blocks into its file until told to stop, fsync every few writes and
/// at the end. Returns what the file must hold.
fn writer(
    index: u32,
    name: &str,
    file: &dyn DemoFile,
    seed: u64,
    counters: &Counters,
    stop: &AtomicBool,
) -> FileLog {
    let mut rng = Rng(seed ^ (u64::from(index) + 1).wrapping_mul(0xA24B_AED4_963E_E407));
    let mut slots = vec![None; SLOTS as usize];
    let mut buf = vec![0u8; MAX_BLOCK as usize];
    let mut seq = 0u64;
    let sync = |what: &str| match file.fsync() {
        Ok(()) => {
            counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => counters.fail(format!("fsync {name} ({what}): {e}")),
    };
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let slot = rng.below(SLOTS);
        let len = MIN_BLOCK + rng.below((MAX_BLOCK - MIN_BLOCK) / ALIGN + 1) * ALIGN;
        let offset = slot * SLOT + rng.below((SLOT - len) / ALIGN + 1) * ALIGN;
        let block = &mut buf[..len as usize];
        fill_block(block, index, slot as u32, seq);
        match file.write_block(block, offset) {
            Ok(()) => {
                slots[slot as usize] = Some(Block {
                    offset,
                    len: len as usize,
                    seq,
                });
                counters.writes.fetch_add(1, Ordering::Relaxed);
                counters.bytes.fetch_add(len, Ordering::Relaxed);
            }
            Err(e) => {
                slots[slot as usize] = None;
                counters.fail(format!(
                    "write of {len} bytes at offset {offset} into {name}: {e}"
                ));
            }
        }
        if seq % FSYNC_EVERY == 0 {
            sync("periodic");
        }
    }
    sync("final");
    FileLog {
        name: name.to_owned(),
        index,
        slots,
    }
}

/// What a read-back found.
struct Verified {
    bad: u64,
}

/// Reads back the last block of every slot of every file from `target` and checks it.
fn verify(
    target: &dyn Target,
    logs: &[FileLog],
    interrupted: &AtomicBool,
) -> anyhow::Result<Verified> {
    let (mut blocks, mut bytes, mut bad) = (0u64, 0u64, 0u64);
    let mut first_bad = Vec::new();
    let mut wrong = |n: u64, what: String, bad: &mut u64| {
        *bad += n;
        if first_bad.len() < 5 {
            first_bad.push(what);
        }
    };
    let mut got = vec![0u8; MAX_BLOCK as usize];
    let mut scratch = vec![0u8; MAX_BLOCK as usize];
    for log in logs {
        check(interrupted)?;
        let expected = log.slots.iter().flatten().count() as u64;
        let file = match target.open(&log.name) {
            Ok(f) => f,
            Err(e) => {
                wrong(expected, format!("{e:#}"), &mut bad);
                continue;
            }
        };
        if let Err(e) = file.drop_cache() {
            println!(
                "  (cannot drop the cached pages of {}: {e}; reads may come from the cache)",
                target.describe(&log.name)
            );
        }
        for (slot, b) in log.slots.iter().enumerate() {
            let Some(b) = b else { continue };
            let (got, scratch) = (&mut got[..b.len], &mut scratch[..b.len]);
            let outcome = file
                .read_block(got, b.offset)
                .map_err(|e| format!("read error: {e}"))
                .and_then(|()| check_block(got, scratch, log.index, slot as u32, b.seq));
            match outcome {
                Ok(()) => {
                    blocks += 1;
                    bytes += b.len as u64;
                }
                Err(why) => wrong(
                    1,
                    format!(
                        "{} bytes at offset {} of {}: {why}",
                        b.len,
                        b.offset,
                        target.describe(&log.name)
                    ),
                    &mut bad,
                ),
            }
        }
    }
    if bad == 0 {
        println!("  verified {blocks} blocks, {}: all intact", mib(bytes));
    } else {
        println!(
            "  verified {} blocks: {blocks} intact ({}), {bad} WRONG",
            blocks + bad,
            mib(bytes)
        );
        for b in &first_bad {
            println!("  wrong: {b}");
        }
    }
    Ok(Verified { bad })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_check_and_detect_damage() {
        let mut block = vec![0u8; 8192];
        let mut scratch = vec![0u8; 8192];
        fill_block(&mut block, 2, 7, 41);
        assert_eq!(check_block(&block, &mut scratch, 2, 7, 41), Ok(()));
        let stale = check_block(&block, &mut scratch, 2, 7, 42);
        assert!(stale.is_err_and(|e| e.contains("stale")));
        block[5000] ^= 1;
        let corrupt = check_block(&block, &mut scratch, 2, 7, 41);
        assert!(corrupt.is_err_and(|e| e.contains("checksum")));
        let zeros = vec![0u8; 8192];
        assert!(check_block(&zeros, &mut scratch, 2, 7, 41).is_err());
    }

    #[test]
    fn in_process_demo_verifies_every_block() {
        let args = DemoArgs {
            seconds: 2,
            volume_size_mib: 256,
            threads: 2,
        };
        let interrupted = AtomicBool::new(false);
        let (outcome, cleaned) = run_in_process(&args, "test", &interrupted);
        assert!(cleaned);
        assert!(matches!(outcome, Ok(Exit::Ok)), "{outcome:?}");
    }
}
