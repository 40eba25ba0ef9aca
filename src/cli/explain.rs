//! `reseedfs explain`: why each copy is not healthy and what happens next, or what the
//! failure of a volume would do now (see [`crate::explain`]).

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::{Exit, fmt_bytes, load, when};
use crate::config::DEFAULT_CONFIG_PATH;
use crate::control::{self, Request, Response};
use crate::explain::{CopyExplanation, Explanation, WhatIf};
use crate::names::DbName;

/// Arguments of `explain`.
#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// Only this database (default: every database).
    pub db: Option<DbName>,
    /// Instead: what would happen if this volume (`VolumeN`) failed now.
    #[arg(long, value_name = "VOLUME")]
    pub what_if_fail: Option<String>,
    /// Print JSON (stable field names).
    #[arg(long)]
    pub json: bool,
    /// The config file.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
}

fn secs(s: u64) -> String {
    humantime::format_duration(Duration::from_secs(s)).to_string()
}

fn at(t: Option<SystemTime>, in_s: Option<u64>) -> String {
    match (t, in_s) {
        (Some(t), Some(0)) => format!("now ({})", when(t)),
        (Some(t), Some(s)) => format!("at {} (in {})", when(t), secs(s)),
        (Some(t), None) => format!("at {}", when(t)),
        _ => String::new(),
    }
}

fn render_copy(c: &CopyExplanation) -> String {
    let mut out = format!("  {:<24} {:<20} step {}\n", c.copy, c.status, c.step);
    let a = &c.next_action;
    if !a.description.is_empty() {
        out += &format!("    next: {} {}\n", a.description, at(a.at, a.in_s));
    }
    if let Some(b) = &c.blocked {
        let how = if b.predicted {
            "would be blocked"
        } else {
            "blocked"
        };
        out += &format!(
            "    {how} ({}): {} To clear: {}\n",
            b.code, b.description, b.remedy
        );
    }
    if let Some(p) = &c.plan {
        let kind = if p.target_kind == "Spare" {
            "spare"
        } else {
            "in place"
        };
        out += &format!(
            "    plan: seed from {} onto {} ({kind}): {} to copy, about {}{}; in sync by {}\n",
            p.source,
            p.target,
            fmt_bytes(Some(p.bytes)),
            secs(p.expected_s),
            if p.estimate { " (estimate)" } else { "" },
            when(p.expected_done_at)
        );
    }
    if let Some(why) = &c.no_plan {
        out += &format!("    no plan: {why}\n");
    }
    if let Some(e) = &c.last_error {
        out += &format!("    last error: {e}\n");
    }
    out
}

/// An explanation as text.
pub fn render_explanation(e: &Explanation) -> String {
    let mut out = String::new();
    for d in &e.databases {
        let scrub = d
            .scrub
            .as_ref()
            .and_then(super::verify::render_scrub)
            .map(|line| format!("{}: {line}\n", d.name))
            .unwrap_or_default();
        if d.not_healthy.is_empty() {
            out += &format!(
                "{}: healthy ({} of {} copies in sync, {})\n",
                d.name,
                d.copies_in_sync,
                d.copies,
                fmt_bytes(Some(d.bytes))
            );
            out += &scrub;
            continue;
        }
        out += &format!(
            "{}: {} of {} copies in sync ({})\n",
            d.name,
            d.copies_in_sync,
            d.copies,
            fmt_bytes(Some(d.bytes))
        );
        for c in &d.not_healthy {
            out += &render_copy(c);
        }
        out += &scrub;
    }
    out += &format!("durations: {}\n", e.rate.note);
    out
}

/// A what-if as text.
pub fn render_what_if(w: &WhatIf) -> String {
    let v = &w.volume;
    if w.already_failed {
        return format!("{v} has failed already: see `reseedfs explain` for what happens now\n");
    }
    if w.spare_lost {
        return format!(
            "{v} holds no copy: no database would notice; the pool would have one spare fewer\n"
        );
    }
    let mut out = format!("If {v} failed now:\n");
    out += &format!("  copies failing: {}\n", w.copies_failing.join(", "));
    for d in &w.databases {
        let what = match d.outcome.as_str() {
            "Down" => "would go DOWN".to_owned(),
            "SingleCopy" => format!(
                "would run on a single copy ({})",
                d.source.as_deref().unwrap_or("-")
            ),
            _ => format!("keeps {} copies in sync", d.copies_in_sync_after),
        };
        out += &format!("  {}: {what}\n", d.db);
        if let (Some(spare), Some(assigned)) = (&d.spare, d.spare_assigned_in_s) {
            out += &format!(
                "    spare {spare} assigned in {}, seeded from {} ({})\n",
                secs(assigned),
                d.source.as_deref().unwrap_or("-"),
                fmt_bytes(Some(d.bytes))
            );
        }
        if let (Some(back), Some(t)) = (d.redundancy_back_in_s, d.redundancy_back_at) {
            out += &format!(
                "    redundancy back in about {} ({})\n",
                secs(back),
                when(t)
            );
        }
        if let Some(b) = &d.blocked {
            out += &format!(
                "    AutoReseed would be blocked ({}): {} To clear: {}\n",
                b.code, b.description, b.remedy
            );
        }
        if let Some(why) = &d.no_spare {
            out += &format!("    no spare: {why}\n");
        }
        if let Some(n) = &d.note {
            out += &format!("    {n}\n");
        }
    }
    match w.redundancy_back_in_s {
        Some(s) => out += &format!("every database redundant again in about {}\n", secs(s)),
        None => out += "some databases would not get their redundancy back without an operator\n",
    }
    out += &format!("durations: {}\n", w.rate.note);
    out
}

/// `reseedfs explain`.
pub fn explain(a: &ExplainArgs) -> anyhow::Result<Exit> {
    let config = match load(&a.config) {
        Ok(c) => c,
        Err(e) => return Ok(e),
    };
    let req = Request::Explain {
        db: a.db.clone(),
        what_if_fail: a.what_if_fail.clone(),
    };
    let answer = match control::call(&config.socket_path(), &req) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "reseedfs: the daemon is not running ({e}); explain needs the live state of the mount: start it with `reseedfs mount --config {}`",
                a.config.display()
            );
            return Ok(Exit::Unreachable);
        }
    };
    match answer {
        Response::Explain(e) if a.json => println!("{}", serde_json::to_string(&e)?),
        Response::Explain(e) => print!("{}", render_explanation(&e)),
        Response::WhatIf(w) if a.json => println!("{}", serde_json::to_string(&w)?),
        Response::WhatIf(w) => print!("{}", render_what_if(&w)),
        Response::Error(e) => {
            eprintln!("reseedfs: the daemon answered: {e}");
            return Ok(Exit::Failure);
        }
        other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
    }
    Ok(Exit::Ok)
}
