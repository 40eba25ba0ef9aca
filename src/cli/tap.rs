//! `suspend`, `resume` and `quarantine`: an operator's hand on the log tap.

use std::path::PathBuf;

use super::{Exit, ask, load};
use crate::config::DEFAULT_CONFIG_PATH;
use crate::control::{Request, Response};
use crate::names::DbName;
use crate::names::VolumeName;
use crate::pool::list_volumes;
use crate::reseed::resync::list_quarantine;
use crate::volume::Volume;

/// Arguments of `suspend`.
#[derive(Debug, clap::Args)]
pub struct SuspendArgs {
    /// The database.
    pub db: DbName,
    /// The volume of the copy to suspend (`Volume2`).
    #[arg(long)]
    pub volume: VolumeName,
    /// The config file.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
}

/// Arguments of `resume`.
#[derive(Debug, clap::Args)]
pub struct ResumeArgs {
    /// The database.
    pub db: DbName,
    /// The volume of the copy to resume (`Volume2`).
    #[arg(long)]
    pub volume: VolumeName,
    /// Wait for the end of the resync, with a progress bar.
    #[arg(long)]
    pub wait: bool,
    /// The config file.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
}

/// Arguments of `quarantine`.
#[derive(Debug, clap::Args)]
pub struct QuarantineArgs {
    /// The database.
    pub db: DbName,
    /// Print JSON (one object per quarantine folder).
    #[arg(long)]
    pub json: bool,
    /// The config file.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
}

/// `reseedfs suspend`.
pub fn suspend(a: &SuspendArgs) -> anyhow::Result<Exit> {
    let config = match load(&a.config) {
        Ok(c) => c,
        Err(e) => return Ok(e),
    };
    let req = Request::Suspend {
        db: a.db.clone(),
        volume: a.volume.clone(),
    };
    match ask(&config, &req) {
        Ok(Response::Changed(list)) => {
            for c in list {
                println!(
                    "{c} is suspended: what it misses is recorded; `reseedfs resume {} --volume {}` brings it back",
                    a.db, a.volume
                );
            }
            Ok(Exit::Ok)
        }
        Ok(other) => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
        Err(e) => Ok(e),
    }
}

/// `reseedfs resume`.
pub fn resume(a: &ResumeArgs) -> anyhow::Result<Exit> {
    let config = match load(&a.config) {
        Ok(c) => c,
        Err(e) => return Ok(e),
    };
    let req = Request::Resume {
        db: a.db.clone(),
        volume: a.volume.clone(),
    };
    match ask(&config, &req) {
        Ok(Response::Started { .. }) => {}
        Ok(other) => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
        Err(e) => return Ok(e),
    }
    println!("resync of {}\\{} started", a.db, a.volume);
    if !a.wait {
        println!("follow it with `reseedfs status` (or pass --wait)");
        return Ok(Exit::Ok);
    }
    let exit = super::reseed::wait_seed(&config, &a.db, &a.volume);
    if exit == Exit::Ok {
        // The resync's own account: bytes and extents copied.
        if let Ok(Response::Events(events)) = ask(&config, &Request::Events { since: 0 }) {
            if let Some(e) = events
                .iter()
                .rev()
                .find(|e| e.id == 3031 && e.database.as_deref() == Some(a.db.as_str()))
            {
                println!("{}", e.message);
            }
        }
    }
    Ok(exit)
}

/// `reseedfs quarantine`: what divergent copies kept, read from the volumes themselves
/// (the daemon need not run).
pub fn quarantine(a: &QuarantineArgs) -> anyhow::Result<Exit> {
    let config = match load(&a.config) {
        Ok(c) => c,
        Err(e) => return Ok(e),
    };
    let volumes = match list_volumes(&config.volumes_root) {
        Ok(v) => v,
        Err(e) => {
            eprintln!(
                "reseedfs: cannot list the volumes in {}: {e}",
                config.volumes_root.display()
            );
            return Ok(Exit::Config);
        }
    };
    let mut found = 0;
    for (_, name, path) in volumes {
        let Ok(v) = Volume::open(&name, &path) else {
            eprintln!(
                "reseedfs: {name} ({}) cannot be opened; skipped",
                path.display()
            );
            continue;
        };
        for (dir, m) in list_quarantine(&v, &a.db) {
            found += 1;
            if a.json {
                let out = serde_json::json!({
                    "volume": name,
                    "path": path.join(&dir),
                    "manifest": m,
                });
                println!("{out}");
                continue;
            }
            println!(
                "{} on {name}: {} ({})",
                path.join(&dir).display(),
                humantime::format_rfc3339_seconds(m.at),
                m.reason
            );
            for f in &m.files {
                match f.kind.as_str() {
                    "extents" => {
                        let bytes: u64 = f.extents.iter().map(|e| e.1).sum();
                        println!(
                            "  {}: {} extents, {} bytes (the copy's own version, at the same offsets)",
                            f.path,
                            f.extents.len(),
                            bytes
                        );
                    }
                    _ => println!("  {}: whole file or folder", f.path),
                }
            }
        }
    }
    if found == 0 && !a.json {
        println!("no quarantine holds anything of {}", a.db);
    }
    Ok(Exit::Ok)
}
