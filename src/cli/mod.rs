//! The command line: parse, run one subcommand, map the outcome to an exit code.

pub mod demo;
mod reseed;
mod tap;
mod verify;

pub use reseed::{BlockArgs, ReseedArgs};
pub use verify::VerifyArgs;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{Config, DEFAULT_CONFIG_PATH};
use crate::control::{self, Request, Response, Status};
use crate::events::Event;

/// reseedfs: keeps a database running when a disk dies.
///
/// Stable database paths (`<databases_root>/<db>/`) over a pool of volumes; every write
/// goes to each copy; a failing disk is taken out of service without the database
/// noticing.
#[derive(Debug, Parser)]
#[command(name = "reseedfs", version, about, long_about = None)]
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
    Mount(ConfigArg),
    /// Show every copy and volume.
    Status(StatusArgs),
    /// List the numbered events.
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
    Demo(demo::DemoArgs),
    /// Compare every in-sync copy with the active copy online (exit 0 identical, 1
    /// differences, 2 error); --repair rewrites what differs from the active copy.
    Verify(VerifyArgs),
}

/// `--config FILE`.
#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// The config file.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
}

/// Arguments of `init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Folder holding Volume1..N, one mounted disk each (AutoDagVolumesRootFolderPath).
    #[arg(long)]
    pub volumes: PathBuf,
    /// Folder where the databases will be mounted (AutoDagDatabasesRootFolderPath).
    #[arg(long)]
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
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
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
        Command::Mount(a) => mount(&a.config),
        Command::Status(a) => status(&a),
        Command::Events(a) => events(&a),
        Command::Unmount(a) => unmount(&a.config),
        Command::Reseed(a) => reseed::reseed(&a),
        Command::Block(a) => reseed::block(&a, true),
        Command::Unblock(a) => reseed::block(&a, false),
        Command::Suspend(a) => tap::suspend(&a),
        Command::Resume(a) => tap::resume(&a),
        Command::Quarantine(a) => tap::quarantine(&a),
        Command::Demo(a) => demo::run(&a),
        Command::Verify(a) => verify::verify(&a),
    };
    match r {
        Ok(e) => e.into(),
        Err(e) => {
            eprintln!("reseedfs: {e:#}");
            Exit::Failure.into()
        }
    }
}

fn init(a: InitArgs) -> anyhow::Result<Exit> {
    let mut config = Config::new(absolute(&a.volumes)?, absolute(&a.databases)?, a.database);
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

fn mount(path: &Path) -> anyhow::Result<Exit> {
    let config = match load(path) {
        Ok(c) => c,
        Err(e) => return Ok(e),
    };
    #[cfg(target_os = "linux")]
    {
        crate::daemon::run(&config, path)?;
        Ok(Exit::Ok)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = config;
        anyhow::bail!("mounting is only supported on Linux in this build")
    }
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

/// The status as a table.
pub fn render_status(s: &Status) -> String {
    let mut out = format!("{:<24} {:<20} {:<7}\n", "COPY", "STATUS", "ACTIVE");
    for d in &s.databases {
        for c in &d.copies {
            let mut flags = Vec::new();
            if c.reseed_blocked {
                flags.push("ReseedBlocked");
            }
            if c.resume_blocked {
                flags.push("ResumeBlocked");
            }
            out += &format!(
                "{:<24} {:<20} {:<7} {}\n",
                c.name,
                c.status,
                if c.active { "yes" } else { "" },
                flags.join(" ")
            );
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
                if let Some(e) = &seed.error {
                    out += &format!("    last reseed failed: {e}\n");
                }
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
                if let Some(e) = &w.last_error {
                    out += &format!("    last error: {e}\n");
                }
            }
        }
    }
    out += &format!(
        "\n{:<12} {:<8} {:>12} {:>12} {:>10}\n",
        "VOLUME", "STATE", "FREE", "SIZE", "IO ERRORS"
    );
    for v in &s.volumes {
        out += &format!(
            "{:<12} {:<8} {:>12} {:>12} {:>10}\n",
            v.name,
            v.state,
            fmt_bytes(v.free_bytes),
            fmt_bytes(v.total_bytes),
            v.io_errors
        );
    }
    out
}

fn status(a: &StatusArgs) -> anyhow::Result<Exit> {
    let config = match load(&a.config) {
        Ok(c) => c,
        Err(e) => return Ok(e),
    };
    let Ok(Response::Status(s)) = ask(&config, &Request::Status) else {
        return Ok(Exit::Unreachable);
    };
    if a.json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        print!("{}", render_status(&s));
    }
    Ok(Exit::Ok)
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

fn events(a: &EventsArgs) -> anyhow::Result<Exit> {
    let config = match load(&a.config) {
        Ok(c) => c,
        Err(e) => return Ok(e),
    };
    // The daemon serves the log; when it is not running, the persisted file still tells.
    let list = match control::call(&config.socket_path(), &Request::Events { since: 0 }) {
        Ok(Response::Events(list)) => list,
        _ => crate::events::read_events(&config.events_path())
            .with_context(|| format!("read {}", config.events_path().display()))?,
    };
    for e in &list {
        if a.json {
            println!("{}", serde_json::to_string(e)?);
        } else {
            println!("{}", render_event(e));
        }
    }
    Ok(Exit::Ok)
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
