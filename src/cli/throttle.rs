//! `reseedfs throttle`: show or change the rebuild budget of the running mount.

use std::path::PathBuf;

use super::{Exit, ask, load};
use crate::config::DEFAULT_CONFIG_PATH;
use crate::control::{Request, Response};
use crate::throttle::{ThrottleStatus, fmt_rate, parse_budget};

/// Arguments of `throttle`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("budget").args(["rate", "unlimited"])))]
pub struct ThrottleArgs {
    /// The budget shared by every reseed, resync and verify: `200MiB/s`, `1.5GiB/s`,
    /// `500MB/s`. Without it (and without --unlimited): show the throttle.
    pub rate: Option<String>,
    /// No budget (latency backoff still applies).
    #[arg(long)]
    pub unlimited: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// The config file.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
}

/// Who is asking, for event 3050: the user (through sudo, if so), uid and pid.
fn requester() -> String {
    let user = std::env::var("SUDO_USER")
        .map(|u| format!("{u} via sudo"))
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown user".into());
    format!(
        "`reseedfs throttle` ({user}, uid {}, pid {})",
        crate::cli::caller_uid(),
        std::process::id()
    )
}

/// The throttle as lines of text.
pub fn render_throttle(t: &ThrottleStatus) -> String {
    let mut out = format!(
        "THROTTLE  budget {}, effective {} (floor {})\n",
        fmt_rate(t.max_bytes_per_s),
        fmt_rate(t.effective_bytes_per_s),
        fmt_rate(Some(t.floor_bytes_per_s))
    );
    if let Some(why) = &t.backoff {
        out += &format!("    backing off: {why}\n");
    }
    if t.streams.is_empty() {
        out += "    no reseed, resync or verify running\n";
        return out;
    }
    out += &format!(
        "{:<12} {:<8} {:<12} {:>14} {:>14} {:>12}  VOLUMES\n",
        "STREAM", "KIND", "WEIGHT", "SHARE", "NOW", "MOVED"
    );
    for s in &t.streams {
        let weight = if s.single_copy {
            format!("{} (single)", s.weight)
        } else {
            s.weight.to_string()
        };
        out += &format!(
            "{:<12} {:<8} {:<12} {:>14} {:>14} {:>12}  {}\n",
            s.db,
            s.kind.name(),
            weight,
            fmt_rate(s.share_bytes_per_s),
            fmt_rate(Some(s.bytes_per_s)),
            super::fmt_bytes(Some(s.bytes)),
            s.volumes.join(", ")
        );
    }
    out
}

/// `reseedfs throttle`.
pub fn throttle(a: &ThrottleArgs) -> anyhow::Result<Exit> {
    let config = match load(&a.config) {
        Ok(c) => c,
        Err(e) => return Ok(e),
    };
    let budget = match (&a.rate, a.unlimited) {
        (_, true) => Some(None),
        (Some(r), false) => match parse_budget(r) {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("reseedfs: {e}");
                return Ok(Exit::Failure);
            }
        },
        (None, false) => None,
    };
    let shown = match budget {
        None => match ask(&config, &Request::Status) {
            Ok(Response::Status(s)) => s.throttle,
            Ok(other) => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
            Err(e) => return Ok(e),
        },
        Some(max_bytes_per_s) => {
            let req = Request::Throttle {
                max_bytes_per_s,
                by: Some(requester()),
            };
            match ask(&config, &req) {
                Ok(Response::Throttle(t)) => {
                    if !a.json {
                        println!("rebuild budget set to {}", fmt_rate(max_bytes_per_s));
                    }
                    Some(t)
                }
                Ok(other) => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
                Err(e) => return Ok(e),
            }
        }
    };
    let Some(t) = shown else {
        anyhow::bail!("the daemon did not report its throttle (an older reseedfs?)");
    };
    if a.json {
        println!("{}", serde_json::to_string(&t)?);
    } else {
        print!("{}", render_throttle(&t));
    }
    Ok(Exit::Ok)
}
