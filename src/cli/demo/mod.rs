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
//! This module tells the story; both paths share the workload and its read-back
//! ([`workload`]), and the daemon is run by the testbed's supervisor
//! ([`crate::testbed::daemon`]).
//!
//! SIGINT and SIGTERM stop the demo at the next step: the daemon is asked to unmount (then
//! terminated, then killed), and the testbed is removed.

mod workload;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::{Exit, render_event, render_status};
use crate::config::Config;
use crate::control::{self, Request, Response};
use crate::events::{Event, EventLog};
use crate::fs::Core;
use crate::pool::Pool;
use crate::status::Status;
use crate::testbed::daemon::{MOUNT_TIMEOUT, MountDaemon};
use crate::testbed::{self, Testbed};
use workload::{CoreTarget, DirTarget, Plan, Verified, Written, verify, write_workload};

/// Arguments of `demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// How long the write workload runs, in seconds; the active copy's volume dies at 40%
    /// of it.
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u64).range(2..=600))]
    pub seconds: u64,
    /// Size of each of the three throwaway volumes, in MiB (loop-mounted ext4, as root).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(64..=65536))]
    pub volume_size_mib: u64,
    /// Writer threads, each writing its own file.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=16))]
    pub threads: u64,
}

/// The demo's database.
pub(super) const DB: &str = "db001";
/// Volumes in the throwaway pool.
const VOLUMES: usize = 3;
/// Copies of the database.
const COPIES: u32 = 2;
/// Steps printed as `[k/STEPS]`.
const STEPS: u32 = 8;
/// How long the demo waits for AutoReseed to seed the spare after the workload.
const SEED_TIMEOUT: Duration = Duration::from_secs(180);
const MIB: u64 = 1 << 20;
/// Room each volume needs beyond the files (ext4 metadata and journal, pool state).
const VOLUME_SLACK_MIB: u64 = 48;
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
pub(super) fn check(interrupted: &AtomicBool) -> anyhow::Result<()> {
    if interrupted.load(Ordering::SeqCst) {
        Err(Interrupted.into())
    } else {
        Ok(())
    }
}

pub(super) fn step(k: u32, what: impl fmt::Display) {
    println!();
    println!("[{k}/{STEPS}] {what}");
}

pub(super) fn mib(bytes: u64) -> String {
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
    let data_mib = args.threads * workload::SLOTS * workload::SLOT / MIB;
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
    let (_, copies) = init_pool(bed, false)?;
    let config = short_timings(&bed.config_path)?;
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
    let exe = std::env::current_exe().context("find the path of this reseedfs binary")?;
    let socket = config.socket_path();
    let daemon =
        MountDaemon::reseedfs(&exe, &bed.config_path, &bed.databases_root, &log_path, true)
            .context("start the daemon")?
            .on_stop(Box::new(move || {
                match control::call(&socket, &Request::Unmount) {
                    Ok(Response::Ok) => Ok(()),
                    Ok(other) => Err(format!("the daemon answered {other:?}")),
                    Err(e) => Err(e.to_string()),
                }
            }));
    let mut daemon = Supervised(daemon);
    match daemon
        .0
        .wait_mounted(MOUNT_TIMEOUT, &|| interrupted.load(Ordering::SeqCst))
    {
        Ok(()) => {}
        Err(testbed::daemon::NotMounted::Interrupted) => return Err(Interrupted.into()),
        Err(why) => bail!("{}", daemon.0.describe(&why)),
    }
    let dir = bed.databases_root.join(DB).join(format!("{DB}.db"));
    println!(
        "  {} is a {} mount (daemon pid {}); the database's files go to {}",
        bed.databases_root.display(),
        crate::mountpoint::FSTYPE,
        daemon.0.pid().unwrap_or(0),
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

    step(
        6,
        "AutoReseed: the spare is assigned and seeded while the database runs on one copy",
    );
    let socket = config.socket_path();
    let seeded = wait_for_redundancy(&socket, interrupted)?;
    check(interrupted)?;

    step(7, "status and events, from the daemon's control socket");
    match control::call(&socket, &Request::Status) {
        Ok(Response::Status(s)) => show_status(&s, active),
        Ok(other) => println!("  the daemon answered Status with {other:?}"),
        Err(e) => println!("  {e}"),
    }
    println!();
    let mut one_copy = None;
    match control::call(&socket, &Request::Events { since: 0 }) {
        Ok(Response::Events(list)) => {
            show_events(&list);
            one_copy = show_story(&list, active);
        }
        Ok(other) => println!("  the daemon answered Events with {other:?}"),
        Err(e) => println!("  {e}"),
    }
    check(interrupted)?;

    step(
        8,
        "unmounting (an Unmount request on the control socket), reading both copies directly",
    );
    match daemon.0.stop() {
        Some(how) => println!("  {how}"),
        None => println!("  the daemon was already gone"),
    }
    if crate::mountpoint::is_mount_point(&bed.databases_root) {
        println!(
            "  WARNING: {} is still mounted after the daemon stopped",
            bed.databases_root.display()
        );
    }
    let mut copies_now = vec![passive.clone()];
    copies_now.extend(seeded.clone());
    let mut direct = Vec::new();
    for volume in &copies_now {
        let copy = DirTarget {
            dir: bed.volumes_root.join(volume).join(format!("{DB}.db")),
        };
        println!(
            "  reading the copy on {volume} directly ({}):",
            copy.dir.display()
        );
        direct.push((volume.clone(), verify(&copy, &written.files, interrupted)?));
    }
    Ok(verdict(
        &written,
        &through,
        &direct,
        active,
        Some(Story {
            seeded: seeded.is_some(),
            one_copy,
        }),
    ))
}

/// AutoReseed timings short enough for the demo (the defaults wait 15 minutes before they
/// act); written to the demo's config, and said.
fn short_timings(path: &Path) -> anyhow::Result<Config> {
    let mut config = Config::load(path).with_context(|| format!("load {}", path.display()))?;
    config.autoreseed.dwell = Duration::from_secs(1);
    config.autoreseed.resume_attempts = 1;
    config.autoreseed.resume_interval = Duration::from_secs(1);
    config.autoreseed.spare_attempts = 3;
    config.autoreseed.spare_interval = Duration::from_secs(2);
    std::fs::write(path, config.to_toml()).with_context(|| format!("write {}", path.display()))?;
    println!(
        "  AutoReseed timings shortened for the demo: dwell 1s (default 15m), one resume \
         attempt after 1s (default 3 every 5m), spare attempts every 2s (default every 1h)"
    );
    Ok(config)
}

/// Waits until the database has two copies in sync again, showing the seed's progress on
/// one line. Returns the volume the new copy is on (`None`: not within [`SEED_TIMEOUT`]).
fn wait_for_redundancy(socket: &Path, interrupted: &AtomicBool) -> anyhow::Result<Option<String>> {
    let started = Instant::now();
    let mut last = String::new();
    loop {
        check(interrupted)?;
        let status = match control::call(socket, &Request::Status) {
            Ok(Response::Status(s)) => Some(s),
            _ => None,
        };
        let db = status
            .as_ref()
            .and_then(|s| s.databases.iter().find(|d| d.name == DB));
        if let Some(db) = db {
            let in_sync: Vec<&str> = db
                .copies
                .iter()
                .filter(|c| c.status.is_in_sync())
                .map(|c| c.volume.as_str())
                .collect();
            let line = match db.copies.iter().find_map(|c| c.seed.as_ref()) {
                Some(seed) => format!(
                    "  seeding {} from {}: {} of {} ({:?}, {:.0} MiB/s)",
                    seed.target,
                    seed.source,
                    mib(seed.bytes_done),
                    mib(seed.bytes_total),
                    seed.phase,
                    seed.mib_s
                ),
                None => format!(
                    "  {}",
                    db.copies
                        .iter()
                        .map(|c| format!("{} {}", c.volume, c.status))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            if line != last {
                println!("{line}");
                last = line;
            }
            if in_sync.len() >= COPIES as usize {
                let new = db
                    .copies
                    .iter()
                    .find(|c| c.status.is_in_sync() && !c.active)
                    .map(|c| c.volume.clone());
                let waited = started.elapsed();
                if waited < Duration::from_secs(1) {
                    println!(
                        "  {DB} has {} copies in sync again: the spare was seeded while the \
                         writers ran (the events below say when)",
                        in_sync.len()
                    );
                } else {
                    println!(
                        "  {DB} has {} copies in sync again, after {:.1}s of waiting here",
                        in_sync.len(),
                        waited.as_secs_f64()
                    );
                }
                return Ok(new);
            }
        }
        if started.elapsed() > SEED_TIMEOUT {
            println!(
                "  WARNING: no second copy in sync after {}s (see `reseedfs status` and the \
                 events below)",
                SEED_TIMEOUT.as_secs()
            );
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// What the AutoReseed part of the story showed.
struct Story {
    /// A second copy was seeded and is in sync.
    seeded: bool,
    /// How long the database ran on one copy (1109 to 1110).
    one_copy: Option<Duration>,
}

/// The failure and the rebuild, event by event, with their times since the failure.
/// Returns how long the database ran on one copy.
fn show_story(events: &[Event], dead: &str) -> Option<Duration> {
    let when = |e: &Event| humantime::parse_rfc3339_weak(&e.time).ok();
    let failed = events
        .iter()
        .find(|e| e.id == 1109 && e.volume.as_deref() == Some(dead))?;
    let t0 = when(failed)?;
    println!();
    println!("  the story, from the disk's death:");
    let mut healthy = None;
    let mut at = failed.seq;
    for id in [1109u32, 825, 826, 827, 828, 1110] {
        let Some(e) = events.iter().find(|e| e.id == id && e.seq >= at) else {
            println!("  {id:>5}  (not seen)");
            continue;
        };
        at = e.seq;
        let since = when(e)
            .and_then(|t| t.duration_since(t0).ok())
            .unwrap_or_default();
        println!(
            "  {id:>5}  +{:>5.1}s  {} {}",
            since.as_secs_f64(),
            e.kind,
            e.volume.as_deref().unwrap_or("")
        );
        if id == 1110 {
            healthy = Some(since);
        }
    }
    if let Some(d) = healthy {
        println!(
            "  {DB} ran on one copy for {:.1}s; its writers never saw an error",
            d.as_secs_f64()
        );
    }
    healthy
}

/// The demo's daemon: stopped when the story ends, even early, and the operator told how.
struct Supervised(MountDaemon);

impl Drop for Supervised {
    fn drop(&mut self) {
        if let Some(how) = self.0.stop() {
            println!("  stopping the daemon: {how}");
        }
    }
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
            .map(String::from)
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
    // The fault-injecting volume layer is there: the `demo` feature enables `failpoints`.
    let kill = || {
        victim.inject_fault(libc::EIO);
        Ok(())
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
    Ok(verdict(
        &written,
        &through,
        &[(passive.clone(), direct)],
        active,
        None,
    ))
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
        vec![DB.parse().expect("the demo database name is valid")],
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
        .map(|(_, volumes)| volumes.iter().map(|v| v.to_string()).collect::<Vec<_>>())
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
        (None, Some(a)) if a.volume != dead => {
            let others: Vec<String> = db
                .copies
                .iter()
                .filter(|c| !c.active)
                .map(|c| format!("{} {}", c.name, c.status))
                .collect();
            println!(
                "  notice: the copy on {dead} is gone from the placement (a spare took its \
                 place): {} is active ({}), {}",
                a.name,
                a.status,
                others.join(", ")
            )
        }
        _ => println!(
            "  WARNING: the status should show the copy on {dead} failed or replaced, and \
             another copy active"
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
    direct: &[(String, Verified)],
    active: &str,
    story: Option<Story>,
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
    for (volume, v) in direct {
        if v.bad > 0 {
            problems.push(format!("{} block(s) wrong on the copy on {volume}", v.bad));
        }
    }
    if story.as_ref().is_some_and(|s| !s.seeded) {
        problems.push("AutoReseed did not bring a second copy in sync".to_owned());
    }
    let copies: Vec<&str> = direct.iter().map(|(v, _)| v.as_str()).collect();
    println!();
    if problems.is_empty() {
        let rebuilt = match story.and_then(|s| s.one_copy) {
            Some(d) => format!(
                " AutoReseed seeded the spare and the database has two copies again, after \
                 {:.1}s on one copy;",
                d.as_secs_f64()
            ),
            None => String::new(),
        };
        println!(
            "done: {active} died under a running workload; all {} writes and {} fsyncs \
             succeeded;{rebuilt} every block reads back intact through the filesystem and on \
             the copies ({})",
            written.writes,
            written.fsyncs,
            copies.join(" and ")
        );
        Exit::Ok
    } else {
        println!("FAILED: {}", problems.join("; "));
        Exit::Failure
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
