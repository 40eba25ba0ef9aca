//! `verify`: an online comparison of a database's in-sync copies, with a progress bar,
//! and optionally their repair.

use std::path::PathBuf;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use super::{Exit, ask, load};
use crate::config::DEFAULT_CONFIG_PATH;
use crate::control::{Request, Response};
use crate::names::DbName;
use crate::throttle::parse_budget;
use crate::verify::{TreeField, VerifyPhase, VerifyReport, VerifyStatus};

/// Arguments of `verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The database.
    pub db: DbName,
    /// Rewrite what differs on the other copies from the active copy (data, sizes, modes,
    /// owners, xattrs), then read it again to confirm.
    #[arg(long)]
    pub repair: bool,
    /// Read at most this fast, per copy (`200MiB/s`, `1GiB/s`, `unlimited`; 0 is refused:
    /// write `unlimited` for no limit of its own, the host's budget still applies).
    #[arg(long, default_value = "200MiB/s", value_parser = parse_max_rate)]
    pub max_rate: MaxRate,
    /// Do not start one: follow the running verification (or show the last one).
    #[arg(long, conflicts_with = "repair")]
    pub status: bool,
    /// Print the final status and report as JSON.
    #[arg(long)]
    pub json: bool,
    /// The config file.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// A scrub (set by `reseedfs scrub`).
    #[arg(skip)]
    pub scrub: bool,
}

/// Arguments of `scrub`.
#[derive(Debug, clap::Args)]
pub struct ScrubArgs {
    /// The database.
    pub db: DbName,
    /// Follow it to the end with a progress bar, print the report, and exit 0 only when
    /// every bad block was repaired (1 otherwise, 2 when it could not finish).
    #[arg(long)]
    pub wait: bool,
    /// Read at most this fast, per copy (`200MiB/s`, `unlimited`); the host's rebuild
    /// budget applies in any case.
    #[arg(long, default_value = "unlimited", value_parser = parse_max_rate)]
    pub max_rate: MaxRate,
    /// Print the final status and report as JSON (with --wait).
    #[arg(long)]
    pub json: bool,
    /// The config file.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
}

/// `reseedfs scrub`: every block of every in-sync copy read and checked against its
/// checksum, a bad one rewritten from a copy whose block matches; blocks without a
/// checksum get one where the copies agree. Runs in the daemon, as a verification with
/// repair whose checksums decide.
pub fn scrub(a: &ScrubArgs) -> anyhow::Result<Exit> {
    let v = VerifyArgs {
        db: a.db.clone(),
        repair: true,
        max_rate: a.max_rate,
        status: false,
        json: a.json,
        config: a.config.clone(),
        scrub: true,
    };
    if a.wait {
        return verify(&v);
    }
    let config = match load(&a.config) {
        Ok(c) => c,
        Err(e) => return Ok(e),
    };
    match ask(&config, &request(&v)) {
        Ok(Response::Verify(_)) => {
            println!(
                "scrub of {} started: follow it with `reseedfs verify {} --status`",
                a.db, a.db
            );
            Ok(Exit::Ok)
        }
        Ok(other) => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
        Err(e) => Ok(e),
    }
}

fn request(a: &VerifyArgs) -> Request {
    Request::Verify {
        db: a.db.clone(),
        repair: a.repair,
        max_bytes_per_s: a.max_rate.0,
        scrub: a.scrub,
    }
}

/// `--max-rate`: bytes per second, or `None` for unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxRate(pub Option<u64>);

fn parse_max_rate(s: &str) -> Result<MaxRate, String> {
    parse_budget(s).map(MaxRate)
}

/// `reseedfs verify`: exits 0 when the copies are identical (or every difference was
/// repaired and read back identical), 1 when differences remain, 2 when the verification
/// could not finish.
pub fn verify(a: &VerifyArgs) -> anyhow::Result<Exit> {
    let config = match load(&a.config) {
        Ok(c) => c,
        Err(e) => return Ok(e),
    };
    if !a.status {
        match ask(&config, &request(a)) {
            Ok(Response::Verify(_)) => {}
            Ok(other) => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
            Err(e) => return Ok(e),
        }
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>9} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    loop {
        let s = match ask(&config, &Request::VerifyStatus { db: a.db.clone() }) {
            Ok(Response::Verify(s)) => s,
            Ok(other) => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
            Err(e) => {
                bar.abandon();
                return Ok(e);
            }
        };
        bar.set_message(match s.phase {
            VerifyPhase::Tree => "tree",
            _ => "data",
        });
        bar.set_length(s.bytes_total.max(s.bytes_done));
        bar.set_position(s.bytes_done);
        match s.phase {
            VerifyPhase::Done | VerifyPhase::Failed => {
                bar.finish_and_clear();
                return finish(a, &s);
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn finish(a: &VerifyArgs, s: &VerifyStatus) -> anyhow::Result<Exit> {
    if a.json {
        println!("{}", serde_json::to_string(s)?);
    }
    let Some(r) = &s.report else {
        eprintln!(
            "reseedfs: the verification of {} did not finish: {}",
            s.db,
            s.error.as_deref().unwrap_or("see `reseedfs events`")
        );
        return Ok(Exit::Incomplete);
    };
    if !a.json {
        print!("{}", render_report(r));
    }
    Ok(exit_of(r))
}

/// 0 when identical or when every difference was repaired and read back identical.
fn exit_of(r: &VerifyReport) -> Exit {
    let sums_ok = r.checksum_unrecoverable == 0 && r.checksum_repaired == r.checksum_errors;
    if (r.identical() || (r.repair && r.all_repaired())) && sums_ok {
        Exit::Ok
    } else {
        Exit::Failure
    }
}

/// The report as text: one line per difference, then the verdict.
pub fn render_report(r: &VerifyReport) -> String {
    let mut out = format!(
        "{}: {} (active) compared with {}: {} files, {} directories, {:.1} MiB in {:.1} s\n",
        r.db,
        r.active,
        r.compared_with.join(", "),
        r.files,
        r.directories,
        r.bytes_compared as f64 / 1048576.0,
        r.seconds
    );
    let tag = |repaired: bool| {
        if repaired {
            " [repaired]"
        } else if r.repair {
            " [NOT repaired]"
        } else {
            ""
        }
    };
    for e in &r.extents {
        out += &format!(
            "DIFFERS {} on {}: bytes {}..{} ({} bytes){}\n",
            e.path,
            e.volume,
            e.offset,
            e.offset + e.len,
            e.len,
            tag(e.repaired)
        );
    }
    for t in &r.tree {
        let what = match t.field {
            TreeField::Missing => format!("missing on {}", t.volume),
            TreeField::Extra => format!("only on {}", t.volume),
            field => format!(
                "{} {} on {} but {} on {}",
                serde_json::to_value(field)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                t.active,
                r.active,
                t.other,
                t.volume
            ),
        };
        out += &format!("DIFFERS {}: {what}{}\n", t.path, tag(t.repaired));
    }
    let listed = (r.extents.len() + r.tree.len()) as u64;
    if r.extents_total + r.tree_total > listed {
        out += &format!(
            "... and {} more (see --json)\n",
            r.extents_total + r.tree_total - listed
        );
    }
    for n in &r.notes {
        out += &format!("note: {n}\n");
    }
    if r.blocks_checked + r.checksum_errors + r.sums_filled > 0 {
        out += &format!(
            "checksums: {} blocks checked, {} bad ({} repaired, {} bad on every copy), {} summed for the first time\n",
            r.blocks_checked,
            r.checksum_errors,
            r.checksum_repaired,
            r.checksum_unrecoverable,
            r.sums_filled
        );
    }
    out += &if r.identical() {
        format!(
            "identical: every in-sync copy of {} matches {}\n",
            r.db, r.active
        )
    } else if r.repair && r.all_repaired() {
        format!(
            "{}; all repaired from {} and read back identical\n",
            counts(r),
            r.active
        )
    } else {
        let left = r.extents_total + r.tree_total - r.extents_repaired - r.tree_repaired;
        let hint = if r.repair {
            format!(
                "what could not be repaired needs a reseed of that copy (`reseedfs reseed {} --to VolumeN`)",
                r.db
            )
        } else {
            format!(
                "`reseedfs verify {} --repair` rewrites them from {}",
                r.db, r.active
            )
        };
        format!("{}; {left} not repaired: {hint}\n", counts(r))
    };
    out
}

/// `2 extents (8192 bytes) and 1 tree entry differ`.
fn counts(r: &VerifyReport) -> String {
    let n = |k: u64, one: &str, many: &str| format!("{k} {}", if k == 1 { one } else { many });
    let verb = if r.extents_total + r.tree_total == 1 {
        "differs"
    } else {
        "differ"
    };
    format!(
        "{} ({} bytes) and {} {verb}",
        n(r.extents_total, "extent", "extents"),
        r.bytes_mismatched,
        n(r.tree_total, "tree entry", "tree entries")
    )
}

/// The scrubbing of a database as `status` and `explain` print it (one line), or `None`
/// when it has no schedule, runs no scrub and was never scrubbed.
pub fn render_scrub(s: &crate::verify::ScrubState) -> Option<String> {
    if s.interval_s.is_none() && s.last.is_none() && !s.running {
        return None;
    }
    let at = |unix: u64| {
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix),
        )
        .to_string()
    };
    let mut parts = Vec::new();
    if s.running {
        parts.push("running now".to_owned());
    }
    match &s.last {
        Some(l) if l.completed => parts.push(format!(
            "last {} at {}: {} blocks checked, {} bad ({} repaired, {} bad on every copy), {} summed anew, {} differing extents",
            if l.scheduled { "(scheduled)" } else { "(manual)" },
            at(l.finished_unix),
            l.blocks_checked,
            l.checksum_errors,
            l.checksum_repaired,
            l.checksum_unrecoverable,
            l.sums_filled,
            l.extents_mismatched
        )),
        Some(l) => parts.push(format!(
            "last {} stopped at {}: {}",
            if l.scheduled { "(scheduled)" } else { "(manual)" },
            at(l.finished_unix),
            l.error.as_deref().unwrap_or("?")
        )),
        None => parts.push("never scrubbed".to_owned()),
    }
    if let Some(i) = s.interval_s {
        let every = humantime::format_duration(std::time::Duration::from_secs(i));
        let next = s.next_due_unix.map_or("-".to_owned(), at);
        parts.push(format!("every {every}, next due {next}"));
    }
    Some(format!("scrub: {}", parts.join("; ")))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> VerifyArgs {
        let cli = Cli::try_parse_from(args).expect("parse");
        match cli.command {
            Command::Verify(a) => a,
            other => panic!("not verify: {other:?}"),
        }
    }

    #[test]
    fn arguments() {
        let a = parse(&["reseedfs", "verify", "db001"]);
        assert_eq!(
            (a.db.as_str(), a.repair, a.max_rate),
            ("db001", false, MaxRate(Some(200 << 20)))
        );
        let a = parse(&[
            "reseedfs",
            "verify",
            "db001",
            "--repair",
            "--max-rate",
            "unlimited",
        ]);
        assert_eq!((a.repair, a.max_rate), (true, MaxRate(None)));
        let a = parse(&["reseedfs", "verify", "db001", "--max-rate", "1GiB/s"]);
        assert_eq!(a.max_rate, MaxRate(Some(1 << 30)));
        assert!(Cli::try_parse_from(["reseedfs", "verify", "db001", "--max-rate", "x"]).is_err());
        assert!(
            Cli::try_parse_from(["reseedfs", "verify", "db001", "--status", "--repair"]).is_err()
        );
    }

    #[test]
    fn exit_codes() {
        let mut r = VerifyReport::default();
        assert!(matches!(exit_of(&r), Exit::Ok));
        r.extents_total = 1;
        assert!(matches!(exit_of(&r), Exit::Failure));
        r.repair = true;
        assert!(matches!(exit_of(&r), Exit::Failure), "found, not repaired");
        r.extents_repaired = 1;
        assert!(
            matches!(exit_of(&r), Exit::Ok),
            "all repaired and confirmed"
        );
        r.tree_total = 1;
        assert!(matches!(exit_of(&r), Exit::Failure), "a tree entry left");
    }
}
