//! The command line: parse, run one subcommand, map the outcome to an exit code.

#[cfg(feature = "demo")]
pub mod demo;
mod events;
mod explain;
pub mod generate;
#[cfg(unix)]
pub mod mount_helper;
mod reseed;
mod tap;
mod throttle;
mod verify;

pub use explain::{ExplainArgs, render_explanation, render_what_if};
pub use reseed::{BlockArgs, ReseedArgs};
pub use throttle::{ThrottleArgs, render_throttle};
pub use verify::VerifyArgs;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{Config, DEFAULT_CONFIG_PATH};
use crate::control::{self, Request, Response};
use crate::events::Event;
use crate::names::DbName;
use crate::status::Status;

/// The version and the commit it was built from, as `--version` prints it:
/// `0.1.0 (commit 1a2b3c4d5e6f)` (`commit unknown` when built without git; see
/// `platform/build.rs`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("RESEEDFS_COMMIT"),
    ")"
);

/// What `reseedfs --help` (and so `man reseedfs`) says after the subcommands.
const FILES_AND_EXIT_STATUS: &str = "\
Files:
  /etc/reseedfs/reseedfs.toml  the config: `init` writes it, every command reads it (--config)
  /run/reseedfs/               state_dir: the control socket, events.jsonl, the helper's log
  /var/lib/reseedfs/           witness_dir: a copy of the pool state on the system disk

Exit status: 0 success; 1 failure (verify: the copies differ); 2 verify could not finish;
3 the config or the pool is unusable; 4 the daemon cannot be reached.

Environment: RESEEDFS_LOG filters the log on stderr (`info`, `reseedfs=debug`; default warn).

Every subcommand has a man page: man reseedfs-status, man reseedfs-explain, ...";

/// reseedfs: keeps a database running when a disk dies.
///
/// Stable database paths (`<databases_root>/<db>/`) over a pool of volumes; every write
/// goes to each copy; a failing disk is taken out of service without the database
/// noticing.
#[derive(Debug, Parser)]
#[command(name = "reseedfs", version = VERSION, about, long_about = None, after_long_help = FILES_AND_EXIT_STATUS)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a pool of volumes, place the databases' copies, write the config.
    Init(InitArgs),
    /// Mount the databases (foreground; SIGINT/SIGTERM unmount cleanly).
    Mount(MountArgs),
    /// Show every copy and volume.
    Status(StatusArgs),
    /// List the numbered events (--follow: as they happen).
    Events(EventsArgs),
    /// Ask the running mount to unmount and stop.
    Unmount(ConfigArg),
    /// Reseed a copy now (a full online copy from an in-sync copy), optionally waiting.
    Reseed(ReseedArgs),
    /// Keep AutoReseed off a copy: --reseed (no reseed) and/or --resume (no resume).
    Block(BlockArgs),
    /// Clear ReseedBlocked and/or ResumeBlocked.
    Unblock(BlockArgs),
    /// Take a copy out of service by hand; what it misses is recorded for its resume.
    Suspend(tap::SuspendArgs),
    /// Bring a suspended or returning copy back: an incremental resync of what it missed.
    Resume(tap::ResumeArgs),
    /// List what divergent copies kept in quarantine (read from the volumes).
    Quarantine(tap::QuarantineArgs),
    /// The whole story in a throwaway pool: mount, write, kill a disk, verify, clean up.
    #[cfg(feature = "demo")]
    Demo(demo::DemoArgs),
    /// The demo is not in this build: says how to get it.
    #[cfg(not(feature = "demo"))]
    #[command(hide = true)]
    Demo(NoDemoArgs),
    /// Why each copy is not healthy and what happens next; or what a volume's failure
    /// would do (--what-if-fail VolumeN).
    Explain(ExplainArgs),
    /// Show or change the budget shared by every reseed, resync and verify.
    Throttle(ThrottleArgs),
    /// The mount(8) helper (`mount -t fuse.reseedfs CONFIG DIR -o OPTIONS`), also run as
    /// `/sbin/mount.fuse.reseedfs`.
    #[cfg(unix)]
    #[command(hide = true)]
    MountHelper(mount_helper::HelperArgs),
    /// Compare every in-sync copy with the active copy online (exit 0 identical, 1
    /// differences, 2 error); --repair rewrites what differs from the active copy.
    Verify(VerifyArgs),
    /// Read every block of every in-sync copy, check it against its checksum and repair
    /// a bad one from a copy whose block matches (`--wait`: follow it, exit 0 when all
    /// repaired).
    Scrub(verify::ScrubArgs),
    /// Write the man pages or the shell completions, made from these definitions
    /// (`generate man DIR`, `generate completions DIR`; the package build runs it).
    #[command(hide = true)]
    Generate(generate::GenerateArgs),
    /// The Windows service: `service install` (automatic start, LocalSystem),
    /// `service uninstall`; `service run` is what the Service Control Manager starts.
    #[cfg(windows)]
    Service(ServiceArgs),
}

/// `demo` in a build without the `demo` feature: whatever follows is ignored.
#[cfg(not(feature = "demo"))]
#[derive(Debug, clap::Args)]
pub struct NoDemoArgs {
    /// Ignored.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub rest: Vec<std::ffi::OsString>,
}

/// `--config FILE`.
#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// The config file.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
}

#[cfg(windows)]
pub use crate::daemon::ServiceAction;

/// Arguments of `service`.
#[cfg(windows)]
#[derive(Debug, clap::Args)]
pub struct ServiceArgs {
    /// What to do.
    pub action: ServiceAction,
    /// The config file the service mounts.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
}

/// Arguments of `mount`.
#[derive(Debug, clap::Args)]
pub struct MountArgs {
    /// The config file.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Serve Prometheus metrics at http://ADDR/metrics (overrides the `metrics` config key).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Start a session of its own first (the mount helper's daemon outlives mount(8)).
    #[arg(long, hide = true)]
    pub detach: bool,
}

/// Arguments of `init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Folder holding Volume1..N, one mounted disk each (AutoDagVolumesRootFolderPath).
    #[cfg_attr(not(windows), arg(long))]
    #[cfg_attr(windows, arg(long, default_value = r"C:\ExchVols"))]
    pub volumes: PathBuf,
    /// Folder where the databases will be mounted (AutoDagDatabasesRootFolderPath).
    #[cfg_attr(not(windows), arg(long))]
    #[cfg_attr(windows, arg(long, default_value = r"C:\ExchDBs"))]
    pub databases: PathBuf,
    /// A database name ([A-Za-z0-9_-]{1,64}); repeat for several.
    #[arg(long = "database", required = true)]
    pub database: Vec<String>,
    /// Copies of each database, on distinct volumes.
    #[arg(long, default_value_t = 2)]
    pub copies: u32,
    /// At most this many databases per volume (AutoDagDatabaseCopiesPerVolume).
    #[arg(long, default_value_t = 1)]
    pub copies_per_volume: u32,
    /// Where to write the config.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// State directory (control socket, events) written into the config.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Where the copy of the pool state on the system disk lives (default /var/lib/reseedfs).
    #[arg(long)]
    pub witness_dir: Option<PathBuf>,
}

/// Arguments of `status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The config file.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Print JSON instead of a table (stable field names: an API).
    #[arg(long)]
    pub json: bool,
    /// Refresh every SECS seconds (default 2) until interrupted.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
    pub watch: Option<f64>,
}

/// Arguments of `events`.
#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// The config file.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Keep printing events as they happen (until interrupted).
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only events since a duration ago (`10m`, `2h`, `3d`) or an RFC 3339 time.
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Only events about this database.
    #[arg(long, value_name = "DB")]
    pub database: Option<String>,
}

/// Exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Success.
    Ok = 0,
    /// Any failure (`verify`: the copies differ).
    Failure = 1,
    /// `verify` could not finish (an I/O error, fewer than two copies in sync).
    Incomplete = 2,
    /// The config or the pool is unusable.
    Config = 3,
    /// The daemon cannot be reached.
    Unreachable = 4,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("resolve {}", p.display()))
}

fn load(path: &Path) -> Result<Config, Exit> {
    Config::load(path).map_err(|e| {
        eprintln!("reseedfs: {e}");
        Exit::Config
    })
}

fn ask(config: &Config, req: &Request) -> Result<Response, Exit> {
    match control::call(&config.socket_path(), req) {
        Ok(Response::Error(e)) => {
            eprintln!("reseedfs: the daemon answered: {e}");
            Err(Exit::Failure)
        }
        Ok(r) => Ok(r),
        Err(e) => {
            eprintln!("reseedfs: {e}");
            Err(Exit::Unreachable)
        }
    }
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    let r = match cli.command {
        Command::Init(a) => init(a),
        Command::Mount(a) => mount(&a),
        Command::Status(a) => status(&a),
        Command::Events(a) => events::run(&a),
        Command::Unmount(a) => unmount(&a.config),
        Command::Reseed(a) => reseed::reseed(&a),
        Command::Block(a) => reseed::block(&a, true),
        Command::Unblock(a) => reseed::block(&a, false),
        Command::Suspend(a) => tap::suspend(&a),
        Command::Resume(a) => tap::resume(&a),
        Command::Quarantine(a) => tap::quarantine(&a),
        #[cfg(feature = "demo")]
        Command::Demo(a) => demo::run(&a),
        #[cfg(not(feature = "demo"))]
        Command::Demo(_) => {
            eprintln!(
                "reseedfs: this build has no demo (it builds throwaway pools, which the product does not ship): \
                 build it with the `demo` feature, `cargo run --release --features demo -- demo`"
            );
            Ok(Exit::Failure)
        }
        Command::Explain(a) => explain::explain(&a),
        Command::Throttle(a) => throttle::throttle(&a),
        #[cfg(unix)]
        Command::MountHelper(a) => return mount_helper::run(&a),
        Command::Verify(a) => verify::verify(&a),
        Command::Scrub(a) => verify::scrub(&a),
        Command::Generate(a) => generate::run(&a),
        #[cfg(windows)]
        Command::Service(a) => crate::daemon::service(a.action, &a.config).map(|()| Exit::Ok),
    };
    match r {
        Ok(e) => e.into(),
        Err(e) => {
            eprintln!("reseedfs: {e:#}");
            exit_for(&e).into()
        }
    }
}

/// The exit code of a failed command: 3 when the config or the pool is unusable (a
/// refused `init`, a config that does not validate, a pool that cannot be mounted, a
/// state directory that is not private), else 1.
fn exit_for(e: &anyhow::Error) -> Exit {
    let unusable = e.chain().any(|cause| {
        cause.is::<crate::pool::InitError>()
            || cause.is::<crate::pool::OpenError>()
            || cause.is::<crate::config::ConfigError>()
            || cause.is::<Unusable>()
    });
    if unusable {
        Exit::Config
    } else {
        Exit::Failure
    }
}

pub use crate::daemon::Unusable;

fn init(a: InitArgs) -> anyhow::Result<Exit> {
    // Names are checked here rather than by clap: a refused `init` exits 3, as the README's
    // table says, like every other thing `init` refuses.
    let databases = a
        .database
        .into_iter()
        .map(|n| DbName::new(n).map_err(|e| Unusable(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let mut config = Config::new(absolute(&a.volumes)?, absolute(&a.databases)?, databases);
    config.copies = a.copies;
    config.copies_per_volume = a.copies_per_volume;
    if let Some(s) = a.state_dir {
        config.state_dir = absolute(&s)?;
    }
    if let Some(w) = a.witness_dir {
        config.witness_dir = absolute(&w)?;
    }
    let report = crate::pool::init(&config, &a.config)?;
    for w in &report.warnings {
        eprintln!("WARNING: {w}");
    }
    for (db, vols) in &report.placement {
        println!("{db}: copies on {}", vols.join(", "));
    }
    if report.spares.is_empty() {
        println!("spares: none (a failed copy cannot be remapped until a volume is added)");
    } else {
        println!("spares: {}", report.spares.join(", "));
    }
    println!("config written to {}", a.config.display());
    println!("next: reseedfs mount --config {}", a.config.display());
    Ok(Exit::Ok)
}

fn mount(a: &MountArgs) -> anyhow::Result<Exit> {
    let path = &a.config;
    let mut config = match load(path) {
        Ok(c) => c,
        Err(e) => return Ok(e),
    };
    config.metrics = a.metrics.or(config.metrics);
    if let Err(e) = config.validate(path) {
        eprintln!("reseedfs: {e}");
        return Ok(Exit::Config);
    }
    if a.detach {
        // Started by the mount helper: no terminal, no process group of mount(8)'s.
        #[cfg(unix)]
        if let Err(e) = rustix::process::setsid() {
            tracing::debug!(%e, "setsid");
        }
    }
    #[cfg(any(target_os = "linux", windows))]
    {
        crate::daemon::run(&config, path)?;
        Ok(Exit::Ok)
    }
    #[cfg(not(any(target_os = "linux", windows)))]
    {
        let _ = config;
        anyhow::bail!("mounting is only supported on Linux and Windows in this build")
    }
}

/// The caller's uid, for the record of who changed something (0 off Unix, where the
/// control channel admits Administrators only).
pub(crate) fn caller_uid() -> u32 {
    #[cfg(unix)]
    return rustix::process::getuid().as_raw();
    #[cfg(not(unix))]
    return 0;
}

fn fmt_bytes(b: Option<u64>) -> String {
    match b {
        None => "-".into(),
        Some(b) if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / f64::from(1u32 << 30)),
        Some(b) => format!("{:.1} MiB", b as f64 / f64::from(1u32 << 20)),
    }
}

fn when(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// CopyQueueLength as `status` prints it: mutations and bytes the copy lacks.
fn queue_text(c: &crate::status::CopyStatus) -> String {
    match (c.queue_length, c.queue_bytes) {
        (Some(n), Some(b)) => format!("{n} mutations ({})", fmt_bytes(Some(b))),
        (Some(n), None) => format!("{n} mutations"),
        (None, Some(b)) => format!("{} to copy", fmt_bytes(Some(b))),
        (None, None) => "unknown".into(),
    }
}

/// The status as a table: one line per copy (name, status, active, its volume's free
/// space), details under each copy that is not in sync, then the volumes and the throttle.
pub fn render_status(s: &Status) -> String {
    let mut out = format!(
        "{:<24} {:<20} {:<7} {:>12}\n",
        "NAME", "STATUS", "ACTIVE", "VOLUME FREE"
    );
    for d in &s.databases {
        for c in &d.copies {
            let mut flags = Vec::new();
            if c.reseed_blocked {
                flags.push("ReseedBlocked");
            }
            if c.resume_blocked {
                flags.push("ResumeBlocked");
            }
            let row = format!(
                "{:<24} {:<20} {:<7} {:>12} {}",
                c.name,
                c.status,
                if c.active { "yes" } else { "" },
                fmt_bytes(c.volume_free_bytes),
                flags.join(" ")
            );
            out += row.trim_end();
            out += "\n";
            if !matches!(c.status.as_str(), "Mounted" | "Healthy") {
                out += &format!("    CopyQueueLength: {}\n", queue_text(c));
            }
            if let Some(seed) = &c.seed {
                let pct = if seed.bytes_total > 0 {
                    100.0 * seed.bytes_done as f64 / seed.bytes_total as f64
                } else {
                    0.0
                };
                out += &format!(
                    "    {:?}: {} of {} ({pct:.0}%), {:.0} MiB/s, ETA {}, from {} ({})\n",
                    seed.phase,
                    fmt_bytes(Some(seed.bytes_done)),
                    fmt_bytes(Some(seed.bytes_total)),
                    seed.mib_s,
                    seed.eta_s.map_or("-".into(), |s| format!("{s:.0} s")),
                    seed.source,
                    seed.engine
                );
            }
            if let Some(w) = &c.autoreseed {
                let next = w.next_at.map_or("-".into(), when);
                let doing = match &w.running {
                    Some(a) => format!("running {a} (attempt {} of {})", w.attempt, w.of),
                    None if w.of > 0 => format!(
                        "{} attempts {} of {} made, next at {next}",
                        w.step, w.attempt, w.of
                    ),
                    None => format!("{}, next at {next}", w.step),
                };
                out += &format!("    AutoReseed: {doing}\n");
                if let Some(b) = &w.blocked {
                    out += &format!(
                        "    blocked ({}): {} To clear: {}\n",
                        b.code, b.description, b.remedy
                    );
                }
            }
            let last = c
                .last_error
                .as_ref()
                .or_else(|| c.autoreseed.as_ref().and_then(|w| w.last_error.as_ref()))
                .or_else(|| c.seed.as_ref().and_then(|s| s.error.as_ref()));
            if let Some(e) = last {
                out += &format!("    last error: {e}\n");
            }
        }
        if let Some(line) = d.scrub.as_ref().and_then(verify::render_scrub) {
            out += &format!("{}: {line}\n", d.name);
        }
    }
    out += &format!(
        "\n{:<12} {:<8} {:>12} {:>12} {:>10} {:>6}\n",
        "VOLUME", "STATE", "FREE", "SIZE", "IO ERRORS", "SLOW"
    );
    for v in &s.volumes {
        out += &format!(
            "{:<12} {:<8} {:>12} {:>12} {:>10} {:>6}\n",
            v.name,
            v.state,
            fmt_bytes(v.free_bytes),
            fmt_bytes(v.total_bytes),
            v.io_errors,
            v.slow_requests
        );
    }
    if !s.foreign.is_empty() {
        out += "\nNOT OF THIS POOL (left alone)\n";
        for f in &s.foreign {
            out += &format!(
                "{:<12} belongs to pool {}, this pool is {} ({})\n",
                f.name,
                f.pool_id,
                f.expected_pool_id,
                f.path.display()
            );
        }
    }
    // The default transport goes unsaid; the ring (`fuse_transport = "uring"`) is named.
    if let Some(t) = s.fuse_transport.as_deref().filter(|t| *t != "dev_fuse") {
        out += &format!("\nFUSE transport: {t}\n");
    }
    if let Some(t) = &s.throttle {
        out += "\n";
        out += &render_throttle(t);
    }
    out
}

fn status(a: &StatusArgs) -> anyhow::Result<Exit> {
    let config = match load(&a.config) {
        Ok(c) => c,
        Err(e) => return Ok(e),
    };
    let Some(every) = a.watch else {
        let Ok(Response::Status(s)) = ask(&config, &Request::Status) else {
            return Ok(Exit::Unreachable);
        };
        if a.json {
            println!("{}", serde_json::to_string(&s)?);
        } else {
            print!("{}", render_status(&s));
        }
        return Ok(Exit::Ok);
    };
    let every = std::time::Duration::from_secs_f64(every.clamp(0.1, 3600.0));
    // Redraw until interrupted; a daemon that went away is shown, and looked for again.
    loop {
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        let answer = control::call(&config.socket_path(), &Request::Status);
        if a.json {
            match answer {
                Ok(Response::Status(s)) => println!("{}", serde_json::to_string(&s)?),
                Ok(other) => eprintln!("reseedfs: unexpected answer: {other:?}"),
                Err(e) => eprintln!("reseedfs: {e}"),
            }
        } else {
            let body = match answer {
                Ok(Response::Status(s)) => render_status(&s),
                Ok(other) => format!("unexpected answer from the daemon: {other:?}\n"),
                Err(e) => format!("{e}\n"),
            };
            print!(
                "\x1b[H\x1b[2J{now}  reseedfs status (every {every:?}; Ctrl-C to stop)\n\n{body}"
            );
        }
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        std::thread::sleep(every);
    }
}

/// One event as a line of text.
pub fn render_event(e: &Event) -> String {
    format!(
        "#{:<4} {} {:>4} {:<16} {:<8} {:<8} {}",
        e.seq,
        e.time,
        e.id,
        e.kind,
        e.database.as_deref().unwrap_or("-"),
        e.volume.as_deref().unwrap_or("-"),
        e.message
    )
}

fn unmount(path: &Path) -> anyhow::Result<Exit> {
    let config = match load(path) {
        Ok(c) => c,
        Err(e) => return Ok(e),
    };
    match ask(&config, &Request::Unmount) {
        Ok(_) => {
            // Wait until the socket is gone: the daemon removes it after unmounting.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while config.socket_path().exists() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            println!("unmounted {}", config.databases_root.display());
            Ok(Exit::Ok)
        }
        Err(e) => Ok(e),
    }
}
