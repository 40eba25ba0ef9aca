//! `reseed`, `block` and `unblock`: an operator's hand on AutoReseed.

use std::path::PathBuf;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use super::{Exit, ask, load};
use crate::config::DEFAULT_CONFIG_PATH;
use crate::control::{Request, Response};
use crate::names::DbName;
use crate::names::VolumeName;
use crate::reseed::{Phase, SeedStatus};
use crate::status::Status;

/// Arguments of `reseed`.
#[derive(Debug, clap::Args)]
pub struct ReseedArgs {
    /// The database.
    pub db: DbName,
    /// Read from this volume's copy (it must be in sync). Default: a passive in-sync copy.
    #[arg(long)]
    pub from: Option<VolumeName>,
    /// Seed onto this volume: one holding a copy of the database (reseeded in place, even
    /// if it is in sync) or a spare (takes the place of the copy that is not in sync).
    /// Default: the copy that is not in sync, in place if its volume answers, else a spare.
    #[arg(long)]
    pub to: Option<VolumeName>,
    /// Wait for the end, with a progress bar (bytes, MiB/s, ETA).
    #[arg(long)]
    pub wait: bool,
    /// The config file.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
}

/// Arguments of `block` and `unblock`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("flag").required(true).multiple(true).args(["reseed", "resume"])))]
pub struct BlockArgs {
    /// The database.
    pub db: DbName,
    /// Only its copy on this volume (default: every copy of the database).
    #[arg(long)]
    pub volume: Option<String>,
    /// ReseedBlocked: no reseed (automatic or `reseedfs reseed`) of the copy.
    #[arg(long)]
    pub reseed: bool,
    /// ResumeBlocked: AutoReseed leaves the copy alone.
    #[arg(long)]
    pub resume: bool,
    /// The config file.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
}

/// `reseedfs reseed`.
pub fn reseed(a: &ReseedArgs) -> anyhow::Result<Exit> {
    let config = match load(&a.config) {
        Ok(c) => c,
        Err(e) => return Ok(e),
    };
    let req = Request::Reseed {
        db: a.db.clone(),
        from: a.from.clone(),
        to: a.to.clone(),
    };
    let target = match ask(&config, &req) {
        Ok(Response::Started { target, .. }) => target,
        Ok(other) => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
        Err(e) => return Ok(e),
    };
    println!("reseed of {}\\{target} started", a.db);
    if !a.wait {
        println!("follow it with `reseedfs status` (or pass --wait)");
        return Ok(Exit::Ok);
    }
    Ok(wait_seed(&config, &a.db, &target))
}

/// Waits for the reseed or resync of `db` onto `target` to end, with a progress bar.
pub(super) fn wait_seed(config: &crate::config::Config, db: &DbName, target: &str) -> Exit {
    let bar = ProgressBar::new(0);
    let style = |phase: &str| {
        ProgressStyle::with_template(&format!(
            "{phase:>9} [{{bar:40}}] {{bytes}}/{{total_bytes}} {{binary_bytes_per_sec}} ETA {{eta}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
    };
    let mut shown = None;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let status = match ask(config, &Request::Status) {
            Ok(Response::Status(s)) => s,
            Ok(_) => continue,
            Err(e) => {
                bar.abandon();
                return e;
            }
        };
        let Some(s) = seed_of(&status, db, target) else {
            // Status shows a reseed while it runs or after it failed: gone means done.
            if copy_in_sync(&status, db, target) {
                bar.finish_and_clear();
                println!("{}\\{target} is in sync", db);
                return Exit::Ok;
            }
            continue;
        };
        if shown != Some(s.phase) {
            if shown.is_some() {
                bar.finish();
            }
            bar.reset();
            bar.set_style(style(match s.phase {
                Phase::Verifying => "verifying",
                _ => "copying",
            }));
            shown = Some(s.phase);
        }
        bar.set_length(s.bytes_total.max(s.bytes_done));
        bar.set_position(s.bytes_done);
        match s.phase {
            Phase::Done => {
                bar.finish_and_clear();
                println!(
                    "{}\\{target} is in sync ({:.1} s; source {}, engine {})",
                    db, s.elapsed_s, s.source, s.engine
                );
                return Exit::Ok;
            }
            Phase::Failed => {
                bar.abandon();
                eprintln!(
                    "reseedfs: the reseed of {}\\{target} failed: {}",
                    db,
                    s.error.as_deref().unwrap_or("see `reseedfs events`")
                );
                return Exit::Failure;
            }
            _ => {}
        }
    }
}

fn copy_in_sync(s: &Status, db: &DbName, volume: &str) -> bool {
    s.databases
        .iter()
        .filter(|d| d.name == db.as_str())
        .flat_map(|d| d.copies.iter())
        .any(|c| c.volume == volume && matches!(c.status.as_str(), "Healthy" | "Mounted"))
}

fn seed_of(s: &Status, db: &DbName, target: &str) -> Option<SeedStatus> {
    s.databases
        .iter()
        .filter(|d| d.name == db.as_str())
        .flat_map(|d| d.copies.iter())
        .filter_map(|c| c.seed.clone())
        .find(|seed| seed.target == target)
}

/// `reseedfs block` (`set`) and `reseedfs unblock`.
pub fn block(a: &BlockArgs, set: bool) -> anyhow::Result<Exit> {
    let config = match load(&a.config) {
        Ok(c) => c,
        Err(e) => return Ok(e),
    };
    let req = Request::Block {
        db: a.db.clone(),
        volume: a.volume.clone(),
        reseed: a.reseed,
        resume: a.resume,
        set,
    };
    match ask(&config, &req) {
        Ok(Response::Changed(list)) if list.is_empty() => {
            println!("nothing to change");
            Ok(Exit::Ok)
        }
        Ok(Response::Changed(list)) => {
            for c in list {
                println!("{c}: {}", if set { "blocked" } else { "unblocked" });
            }
            Ok(Exit::Ok)
        }
        Ok(other) => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
        Err(e) => Ok(e),
    }
}
