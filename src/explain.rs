//! `reseedfs explain`: for every copy that is not healthy, the step it is in, the next
//! action and when, the prerequisite that blocks it (reason code and the command that
//! clears it), and the plan (source copy, target volume, bytes to move, expected
//! duration); and `--what-if-fail VolumeN`: what the loss of a volume would do now.
//!
//! Everything here is a pure function of [`Inputs`]: the status (as `reseedfs status`
//! shows it), the size of each database, the AutoReseed timings, `copies_per_volume`, the
//! throughput to expect ([`Rate`]) and the time. The daemon fills them from the live pool
//! ([`live`]); tests build known layouts by hand and compare the JSON with golden files.
//!
//! The rules are the ones the daemon applies:
//! - a spare is a volume that is not failed, holds no copy of the database, holds fewer
//!   than `copies_per_volume` copies and has room for the database plus 10% and 64 MiB;
//!   the one with the most free space is taken (as [`crate::pool::Pool::spares`]);
//! - the source is an in-sync copy, a passive one first (as the seeder picks it);
//! - a copy's workflow starts `dwell` after it failed; its Resume attempts probe its own
//!   volume (a dead one does not answer: each attempt fails at once, `resume_interval`
//!   apart), then AssignSpare takes a spare;
//! - the prerequisites are checked in the order of [`Reason::ALL`]
//!   (`policy::first_blocker`); those that need the disk (naming, layout split) are only
//!   known once the workflow has checked them.
//!
//! Durations come from the last reseed measured by the throttle (copy and verify), else
//! from `[throttle] estimate_bytes_per_s` (and then say so), and never exceed the
//! throttle's budget. In a what-if, the reseeds that start together share the budget by
//! their weights (a database left on a single copy weighs 4).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::autoreseed::Timings;
use crate::autoreseed::policy::{Checks, Reason, first_blocker};
use crate::pool::spares::{Candidate, needed_bytes};
use crate::reseed::Phase;
use crate::status::{CopyStatus, DbStatus, Status, VolumeState, WorkflowStatus};
use crate::throttle::{Measured, SINGLE_COPY_WEIGHT, ThrottleConfig, WEIGHT};

/// Where a rate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RateSource {
    /// The last reseed measured on this host.
    Measured,
    /// `[throttle] estimate_bytes_per_s`: nothing measured yet.
    Estimate,
}

/// The throughput explain expects of a reseed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    /// Copy phase, bytes per second (budget applied).
    pub copy_bytes_per_s: u64,
    /// Verification, bytes per second (budget applied).
    pub verify_bytes_per_s: u64,
    /// Measured or estimated.
    pub source: RateSource,
    /// The throttle's budget, which bounds both (none: unlimited).
    pub budget_bytes_per_s: Option<u64>,
    /// Where the figures come from, for people.
    pub note: String,
}

impl Rate {
    /// The rate from the throttle's measurements, the configured estimate and the budget.
    pub fn new(measured: &Measured, config: &ThrottleConfig, budget: Option<u64>) -> Rate {
        let bound = |r: f64| {
            let r = r.max(1.0) as u64;
            budget.map_or(r, |b| r.min(b))
        };
        let mib = |r: f64| r / f64::from(1u32 << 20);
        match &measured.copy {
            Some(copy) => {
                let verify = measured
                    .verify
                    .as_ref()
                    .map_or(copy.bytes_per_s, |v| v.bytes_per_s);
                Rate {
                    copy_bytes_per_s: bound(copy.bytes_per_s),
                    verify_bytes_per_s: bound(verify),
                    source: RateSource::Measured,
                    budget_bytes_per_s: budget,
                    note: format!(
                        "measured: the reseed of {} ended {} copied at {:.0} MiB/s, verified at {:.0} MiB/s{}",
                        copy.db,
                        humantime::format_rfc3339_seconds(copy.at),
                        mib(copy.bytes_per_s),
                        mib(verify),
                        budget.map_or(String::new(), |b| format!(
                            "; bounded by the budget of {:.0} MiB/s",
                            mib(b as f64)
                        ))
                    ),
                }
            }
            None => {
                let r = config.estimate_bytes_per_s as f64;
                Rate {
                    copy_bytes_per_s: bound(r),
                    verify_bytes_per_s: bound(r),
                    source: RateSource::Estimate,
                    budget_bytes_per_s: budget,
                    note: format!(
                        "estimate: no reseed measured on this host yet; [throttle] estimate_bytes_per_s is {:.0} MiB/s{}",
                        mib(r),
                        budget.map_or(String::new(), |b| format!(
                            ", bounded by the budget of {:.0} MiB/s",
                            mib(b as f64)
                        ))
                    ),
                }
            }
        }
    }

    /// Seconds to copy and verify `bytes` alone.
    fn seconds(&self, bytes: u64) -> f64 {
        bytes as f64 / self.copy_bytes_per_s.max(1) as f64
            + bytes as f64 / self.verify_bytes_per_s.max(1) as f64
    }
}

/// What explain works from.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    /// The time of the answer.
    pub now: SystemTime,
    /// The status, as `reseedfs status` shows it (annotated by the runner).
    pub status: &'a Status,
    /// Bytes each database takes on an in-sync copy.
    pub db_bytes: &'a BTreeMap<String, u64>,
    /// The AutoReseed timings.
    pub timings: &'a Timings,
    /// `copies_per_volume`.
    pub copies_per_volume: u32,
    /// The throughput to expect.
    pub rate: Rate,
}

/// A prerequisite that holds a copy's workflow back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockedBy {
    /// Reason code (`ReseedBlocked`, `NoSourceCopy`, ...).
    pub code: String,
    /// What it means.
    pub description: String,
    /// The command (or act) that clears it.
    pub remedy: String,
    /// True when explain derived it from the status; false when the workflow found it.
    pub predicted: bool,
}

impl BlockedBy {
    fn new(r: Reason, db: &str, volume: &str, predicted: bool) -> BlockedBy {
        BlockedBy {
            code: r.code().to_owned(),
            description: r.describe().to_owned(),
            remedy: r.remedy(db, volume),
            predicted,
        }
    }
}

/// What happens next to a copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextAction {
    /// `Resume`, `AssignSpare`, `SeedInPlace`, `Reset`, `Copy`, `Verify`, `Reseed`, `None`.
    pub action: String,
    /// The same for people.
    pub description: String,
    /// When (none: running now, or nothing scheduled).
    #[serde(default, with = "humantime_serde::option")]
    pub at: Option<SystemTime>,
    /// Seconds from now until then (0: due now).
    pub in_s: Option<u64>,
}

/// How a copy gets back in sync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The volume of the in-sync copy read from.
    pub source: String,
    /// The volume that receives the copy.
    pub target: String,
    /// `InPlace` (its own volume) or `Spare`.
    pub target_kind: String,
    /// Bytes still to copy.
    pub bytes: u64,
    /// Seconds of copying and verification expected.
    pub expected_s: u64,
    /// When the copy should be in sync, if the plan starts as scheduled.
    #[serde(with = "humantime_serde")]
    pub expected_done_at: SystemTime,
    /// The duration is from an estimate, not from a measured reseed.
    pub estimate: bool,
}

/// One copy that is not healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyExplanation {
    /// `db001\Volume1`.
    pub copy: String,
    /// `Volume1`.
    pub volume: String,
    /// `FailedAndSuspended`, `Seeding`, ...
    pub status: String,
    /// The AutoReseed step (`Dwell`, `Resume`, `AssignSpare`, `SeedInPlace`, `Stopped`)
    /// or the reseed's phase (`Preparing`, `Copying`, `Verifying`); `None` when nothing
    /// drives the copy.
    pub step: String,
    /// What happens next, and when.
    pub next_action: NextAction,
    /// The prerequisite that holds it back.
    pub blocked: Option<BlockedBy>,
    /// How it gets back in sync.
    pub plan: Option<Plan>,
    /// Why there is no plan.
    pub no_plan: Option<String>,
    /// The last error about the copy.
    pub last_error: Option<String>,
}

/// One database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbExplanation {
    /// `db001`.
    pub name: String,
    /// Copies in sync.
    pub copies_in_sync: usize,
    /// Copies in the placement.
    pub copies: usize,
    /// Bytes a copy takes.
    pub bytes: u64,
    /// The copies that are not healthy (none: every copy is in sync).
    pub not_healthy: Vec<CopyExplanation>,
    /// Its scrubs: the schedule, the last one and what it found (as in `status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scrub: Option<crate::verify::ScrubState>,
}

/// The answer to `explain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    /// When it was computed.
    #[serde(with = "humantime_serde")]
    pub now: SystemTime,
    /// The throughput durations are computed with.
    pub rate: Rate,
    /// The databases asked about.
    pub databases: Vec<DbExplanation>,
}

/// What a database would go through if the volume failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhatIfDb {
    /// `db001`.
    pub db: String,
    /// The copy that would fail, `db001\Volume2`.
    pub loses: String,
    /// Copies still in sync afterwards.
    pub copies_in_sync_after: usize,
    /// `Down` (no copy in sync), `SingleCopy`, or `Redundant` (two or more left).
    pub outcome: String,
    /// The volume the copy would be reseeded from.
    pub source: Option<String>,
    /// The spare it would get.
    pub spare: Option<String>,
    /// Why it would get none.
    pub no_spare: Option<String>,
    /// A prerequisite that would hold AutoReseed back.
    pub blocked: Option<BlockedBy>,
    /// Bytes to copy.
    pub bytes: u64,
    /// Seconds until the spare is assigned (dwell and the failed Resume attempts).
    pub spare_assigned_in_s: Option<u64>,
    /// Seconds until the database has all its copies again.
    pub redundancy_back_in_s: Option<u64>,
    /// When that is.
    #[serde(default, with = "humantime_serde::option")]
    pub redundancy_back_at: Option<SystemTime>,
    /// What else to know.
    pub note: Option<String>,
}

/// The answer to `explain --what-if-fail VolumeN`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhatIf {
    /// When it was computed.
    #[serde(with = "humantime_serde")]
    pub now: SystemTime,
    /// The volume supposed to fail.
    pub volume: String,
    /// The throughput durations are computed with.
    pub rate: Rate,
    /// It has failed already (nothing more would happen).
    pub already_failed: bool,
    /// It is a spare: no copy fails, the pool has a spare fewer.
    pub spare_lost: bool,
    /// The copies that would fail.
    pub copies_failing: Vec<String>,
    /// Each database that would lose a copy.
    pub databases: Vec<WhatIfDb>,
    /// Databases that would run on a single copy.
    pub single_copy: Vec<String>,
    /// Databases that would go down: no copy in sync would remain.
    pub down: Vec<String>,
    /// Seconds until every database that can be is redundant again (none: some never).
    pub redundancy_back_in_s: Option<u64>,
}

fn in_sync(c: &CopyStatus) -> bool {
    matches!(c.status.as_str(), "Mounted" | "Healthy")
}

fn secs_between(now: SystemTime, at: SystemTime) -> u64 {
    at.duration_since(now).map_or(0, |d| d.as_secs())
}

fn rounded(s: f64) -> u64 {
    s.max(0.0).ceil() as u64
}

/// The in-sync copy a reseed of copy `slot` reads: a passive one first (as the seeder).
fn source_of(d: &DbStatus, slot: usize) -> Option<String> {
    let others: Vec<&CopyStatus> = d
        .copies
        .iter()
        .enumerate()
        .filter(|(i, c)| *i != slot && in_sync(c))
        .map(|(_, c)| c)
        .collect();
    others
        .iter()
        .find(|c| !c.active)
        .or_else(|| others.first())
        .map(|c| c.volume.clone())
}

/// The pool's spare rules over a status: the volumes that could take a copy of `db`
/// (`bytes`), best first, and why each other cannot. `free` and `holding` may differ from
/// the status (a what-if updates them as spares get assigned). A model of the pool seen
/// through its status, not the pool itself ([`crate::pool::Pool`]).
#[derive(Debug, Clone)]
struct SpareModel {
    /// Volume name, failed, free bytes, databases holding a copy there.
    volumes: Vec<(String, bool, Option<u64>, Vec<String>)>,
    copies_per_volume: u32,
}

impl SpareModel {
    fn new(status: &Status, copies_per_volume: u32) -> SpareModel {
        let volumes = status
            .volumes
            .iter()
            .map(|v| {
                let holding = status
                    .databases
                    .iter()
                    .filter(|d| d.copies.iter().any(|c| c.volume == v.name))
                    .map(|d| d.name.clone())
                    .collect();
                (
                    v.name.clone(),
                    v.state == VolumeState::Failed,
                    v.free_bytes,
                    holding,
                )
            })
            .collect();
        SpareModel {
            volumes,
            copies_per_volume,
        }
    }

    fn spares(&self, db: &str, bytes: u64) -> (Vec<String>, Vec<(String, String)>) {
        let candidates: Vec<Candidate> = self
            .volumes
            .iter()
            .map(|(name, failed, free, holding)| Candidate {
                name: name.clone(),
                failed: *failed,
                free_bytes: free.ok_or_else(|| "its free space is unknown".to_owned()),
                holding: holding.clone(),
            })
            .collect();
        crate::pool::spares::choose(&candidates, db, bytes, self.copies_per_volume)
    }

    fn best_spare(&self, db: &str, bytes: u64) -> Result<String, String> {
        let (ok, rejected) = self.spares(db, bytes);
        ok.into_iter().next().ok_or_else(|| {
            let reasons: Vec<String> = rejected.iter().map(|(v, w)| format!("{v}: {w}")).collect();
            format!(
                "no spare volume can take a copy of {db} ({} MiB): {}",
                bytes >> 20,
                reasons.join("; ")
            )
        })
    }

    /// A copy of `db` goes to `volume`: less free space, one more copy held.
    fn assign(&mut self, db: &str, volume: &str, bytes: u64) {
        if let Some(v) = self.volumes.iter_mut().find(|v| v.0 == volume) {
            v.2 = v.2.map(|f| f.saturating_sub(needed_bytes(bytes)));
            v.3.push(db.to_owned());
        }
    }

    fn fail(&mut self, volume: &str) {
        if let Some(v) = self.volumes.iter_mut().find(|v| v.0 == volume) {
            v.1 = true;
        }
    }
}

/// The prerequisites of copy `slot` of `d` as the status shows them (the ones needing the
/// disk assumed to hold), as the runner checks them.
fn predicted_blocker(
    status: &Status,
    d: &DbStatus,
    slot: usize,
    timings: &Timings,
) -> Option<Reason> {
    let c = &d.copies[slot];
    let volume = &c.volume;
    let all = || status.databases.iter().flat_map(|d| d.copies.iter());
    let active_on_volume = status.databases.iter().any(|d| {
        d.copies.iter().any(|c| c.volume == *volume && c.active)
            || (!d.copies.iter().any(|c| c.active) && d.copies.iter().any(|c| c.volume == *volume))
    });
    first_blocker(&Checks {
        reseed_blocked: c.reseed_blocked,
        resume_blocked: c.resume_blocked,
        layout_split: false,
        naming_ok: true,
        active_on_volume,
        healthy_on_volume: all().any(|x| x.volume == *volume && x.status != "FailedAndSuspended"),
        failed_copies_on_host: all().filter(|x| x.status == "FailedAndSuspended").count() as u32,
        max_failed_copies: timings.max_failed_copies,
        source_available: source_of(d, slot).is_some(),
    })
}

/// Seconds from the start of the workflow's Resume step to its AssignSpare step when the
/// volume is dead: every Resume attempt fails at once, `resume_interval` apart.
fn resume_span(t: &Timings) -> Duration {
    t.resume_interval * t.resume_attempts.saturating_sub(1)
}

/// Explains copy `slot` of `d`.
fn explain_copy(i: &Inputs, d: &DbStatus, slot: usize, pool: &SpareModel) -> CopyExplanation {
    let c = &d.copies[slot];
    let t = i.timings;
    let bytes = i.db_bytes.get(&d.name).copied().unwrap_or(0);
    let estimate = i.rate.source == RateSource::Estimate;
    let volume_failed = i
        .status
        .volumes
        .iter()
        .any(|v| v.name == c.volume && v.state == "Failed");
    let mut out = CopyExplanation {
        copy: c.name.clone(),
        volume: c.volume.clone(),
        status: c.status.to_string(),
        step: "None".into(),
        next_action: NextAction {
            action: "None".into(),
            description: String::new(),
            at: None,
            in_s: None,
        },
        blocked: None,
        plan: None,
        no_plan: None,
        last_error: c
            .last_error
            .clone()
            .or_else(|| c.autoreseed.as_ref().and_then(|w| w.last_error.clone())),
    };
    let at = |when: SystemTime| (Some(when), Some(secs_between(i.now, when)));

    // A reseed running: its phase, and its own measured progress.
    if let Some(seed) = c
        .seed
        .as_ref()
        .filter(|s| !matches!(s.phase, Phase::Failed | Phase::Done))
    {
        out.step = format!("{:?}", seed.phase);
        let left = seed.bytes_total.saturating_sub(seed.bytes_done);
        let live = seed.mib_s * f64::from(1u32 << 20);
        let (copy_s, verify_s) = match seed.phase {
            Phase::Verifying => (
                0.0,
                left as f64
                    / if live > 0.0 {
                        live
                    } else {
                        i.rate.verify_bytes_per_s.max(1) as f64
                    },
            ),
            Phase::Copying => (
                left as f64
                    / if live > 0.0 {
                        live
                    } else {
                        i.rate.copy_bytes_per_s as f64
                    },
                seed.bytes_total as f64 / i.rate.verify_bytes_per_s.max(1) as f64,
            ),
            _ => (
                bytes as f64 / i.rate.copy_bytes_per_s.max(1) as f64,
                bytes as f64 / i.rate.verify_bytes_per_s.max(1) as f64,
            ),
        };
        let phase_end = i.now
            + Duration::from_secs(rounded(if seed.phase == Phase::Verifying {
                verify_s
            } else {
                copy_s
            }));
        let (when, in_s) = at(phase_end);
        out.next_action = NextAction {
            action: if seed.phase == Phase::Verifying {
                "InSync"
            } else {
                "Verify"
            }
            .into(),
            description: match seed.phase {
                Phase::Verifying => format!(
                    "verifying against {}: {} of {} MiB compared; in sync when it ends",
                    seed.source,
                    seed.bytes_done >> 20,
                    seed.bytes_total >> 20
                ),
                _ => format!(
                    "copying from {}: {} of {} MiB done; verification follows",
                    seed.source,
                    seed.bytes_done >> 20,
                    seed.bytes_total >> 20
                ),
            },
            at: when,
            in_s,
        };
        let expected = rounded(copy_s + verify_s);
        out.plan = Some(Plan {
            source: seed.source.clone(),
            target: c.volume.clone(),
            target_kind: "InPlace".into(),
            bytes: if seed.phase == Phase::Verifying {
                0
            } else {
                left
            },
            expected_s: expected,
            expected_done_at: i.now + Duration::from_secs(expected),
            estimate: estimate && live <= 0.0,
        });
        return out;
    }

    if c.status == "Seeding" {
        out.step = "Preparing".into();
        out.next_action.description = "a reseed is being set up".into();
        return out;
    }
    let reason = c
        .autoreseed
        .as_ref()
        .and_then(|w| w.blocked.clone())
        .map(|b| BlockedBy {
            code: b.code,
            description: b.description,
            remedy: b.remedy,
            predicted: false,
        })
        .or_else(|| {
            predicted_blocker(i.status, d, slot, t)
                .map(|r| BlockedBy::new(r, &d.name, &c.volume, true))
        });
    out.blocked = reason;

    // When the workflow acts next, and when it would reach AssignSpare.
    let failed_at = c.failed_at.unwrap_or(i.now);
    let w: Option<&WorkflowStatus> = c.autoreseed.as_ref();
    let dwell_end = failed_at + t.dwell;
    let due = |x: Option<SystemTime>| x.map_or(i.now, |x| x.max(i.now));
    let (step, spare_step_at, in_place_at) = match w {
        None => (
            "None".to_owned(),
            due(Some(dwell_end)) + resume_span(t),
            due(Some(dwell_end)),
        ),
        Some(w) => {
            let next = due(w.next_at);
            match w.step.as_str() {
                "Dwell" => (w.step.clone(), next + resume_span(t), next),
                "Resume" => {
                    let left = w.of.saturating_sub(w.attempt).saturating_sub(1);
                    (w.step.clone(), next + t.resume_interval * left, next)
                }
                "Stopped" => (w.step.clone(), next + resume_span(t), next),
                _ => (w.step.clone(), next, next),
            }
        }
    };
    out.step = step;
    out.next_action = match w {
        None if !t.enabled => NextAction {
            action: "None".into(),
            description: format!(
                "nothing: AutoReseed is disabled; reseed it by hand with `reseedfs reseed {}`",
                d.name
            ),
            at: None,
            in_s: None,
        },
        None => {
            let (at, in_s) = at(due(Some(dwell_end)));
            NextAction {
                action: "Resume".into(),
                description: format!(
                    "AutoReseed starts once the copy has been FailedAndSuspended for {} (dwell): first a Resume attempt",
                    humantime::format_duration(t.dwell)
                ),
                at,
                in_s,
            }
        }
        Some(w) => {
            match (&w.running, w.step.as_str()) {
                (Some(a), _) => NextAction {
                    action: a.clone(),
                    description: format!("running {a} (attempt {} of {})", w.attempt, w.of),
                    at: None,
                    in_s: None,
                },
                (None, "Dwell") => {
                    let (at, in_s) = at(due(w.next_at));
                    NextAction {
                        action: "Resume".into(),
                        description: format!(
                            "AutoReseed starts at the end of the dwell ({}): first a Resume attempt",
                            humantime::format_duration(t.dwell)
                        ),
                        at,
                        in_s,
                    }
                }
                (None, "Stopped") => {
                    let (at, in_s) = at(due(w.next_at));
                    NextAction {
                    action: "Reset".into(),
                    description: "every attempt of this cycle failed: the workflow starts over (reset_after)".into(),
                    at,
                    in_s,
                }
                }
                (None, "Done") => NextAction {
                    action: "None".into(),
                    description: "the workflow succeeded; the copy is being brought in sync".into(),
                    at: None,
                    in_s: None,
                },
                (None, step) => {
                    let (at, in_s) = at(due(w.next_at));
                    let held = out.blocked.as_ref().map_or(String::new(), |b| {
                        format!(", held back by {} until it clears", b.code)
                    });
                    NextAction {
                        action: step.to_owned(),
                        description: format!("{step} attempt {} of {}{held}", w.attempt + 1, w.of),
                        at,
                        in_s,
                    }
                }
            }
        }
    };

    // The plan: in place when the workflow will seed there (its volume answers, or the
    // SeedInPlace step), else onto the best spare.
    let Some(source) = source_of(d, slot) else {
        out.no_plan = Some(format!(
            "no copy of {} is in sync to seed from: bring a copy back",
            d.name
        ));
        return out;
    };
    let in_place = out.step == "SeedInPlace" || (!volume_failed && out.step != "AssignSpare");
    let (target, kind, start) = if in_place {
        (c.volume.clone(), "InPlace", in_place_at)
    } else if t.spare_attempts == 0 {
        out.no_plan = Some("spare_attempts is 0: AutoReseed never assigns a spare".into());
        return out;
    } else {
        match pool.best_spare(&d.name, bytes) {
            Ok(v) => (v, "Spare", spare_step_at),
            Err(why) => {
                out.no_plan = Some(why);
                return out;
            }
        }
    };
    let expected = rounded(i.rate.seconds(bytes));
    out.plan = Some(Plan {
        source,
        target,
        target_kind: kind.into(),
        bytes,
        expected_s: expected,
        expected_done_at: start + Duration::from_secs(expected),
        estimate,
    });
    out
}

/// The volumes of `status` that could take a new copy of `db` needing `bytes`, best
/// first, and why each other cannot: the rules of [`crate::pool::Pool::spares`], on the
/// status's view of the pool.
pub fn spares(
    status: &Status,
    copies_per_volume: u32,
    db: &str,
    bytes: u64,
) -> (Vec<String>, Vec<(String, String)>) {
    SpareModel::new(status, copies_per_volume).spares(db, bytes)
}

/// Explains every copy that is not healthy, of `db` or of every database.
pub fn explain(i: &Inputs, db: Option<&str>) -> Result<Explanation, String> {
    if let Some(db) = db {
        if !i.status.databases.iter().any(|d| d.name == db) {
            let names: Vec<&str> = i.status.databases.iter().map(|d| d.name.as_str()).collect();
            return Err(format!(
                "no database {db} in this mount (it has {})",
                names.join(", ")
            ));
        }
    }
    // Every copy of the pool (not only those asked about) may compete for the spares:
    // each is planned alone first, then the spares go to the copies that reach their
    // AssignSpare step first (unblocked ones before blocked ones), one copy per spare
    // and copies_per_volume respected, as the runner would hand them out.
    let fresh = SpareModel::new(i.status, i.copies_per_volume);
    let mut copies: Vec<(usize, usize, CopyExplanation)> = Vec::new();
    for (k, d) in i.status.databases.iter().enumerate() {
        for (slot, c) in d.copies.iter().enumerate().filter(|(_, c)| !in_sync(c)) {
            let _ = c;
            copies.push((k, slot, explain_copy(i, d, slot, &fresh)));
        }
    }
    let start = |e: &CopyExplanation| {
        e.plan
            .as_ref()
            .filter(|p| p.target_kind == "Spare")
            .map(|p| {
                (
                    e.blocked.is_some(),
                    p.expected_done_at - Duration::from_secs(p.expected_s),
                )
            })
    };
    let mut wanting: Vec<usize> = (0..copies.len())
        .filter(|&n| start(&copies[n].2).is_some())
        .collect();
    wanting.sort_by_key(|&n| (start(&copies[n].2), n));
    let mut pool = fresh.clone();
    for n in wanting {
        let (k, slot, _) = copies[n];
        let d = &i.status.databases[k];
        let e = explain_copy(i, d, slot, &pool);
        if let Some(p) = e.plan.as_ref().filter(|p| p.target_kind == "Spare") {
            pool.assign(&d.name, &p.target, p.bytes);
        }
        copies[n].2 = e;
    }
    let databases = i
        .status
        .databases
        .iter()
        .enumerate()
        .filter(|(_, d)| db.is_none_or(|n| d.name == n))
        .map(|(k, d)| DbExplanation {
            name: d.name.clone(),
            copies_in_sync: d.copies.iter().filter(|c| in_sync(c)).count(),
            copies: d.copies.len(),
            bytes: i.db_bytes.get(&d.name).copied().unwrap_or(0),
            not_healthy: copies
                .iter()
                .filter(|(dk, _, _)| *dk == k)
                .map(|(_, _, e)| e.clone())
                .collect(),
            scrub: d.scrub.clone(),
        })
        .collect();
    Ok(Explanation {
        now: i.now,
        rate: i.rate.clone(),
        databases,
    })
}

/// Seconds each job takes when they start together and share `budget` by weight (each
/// job at most at its own `alone` speed, in bytes per second of `work`).
fn shared_finish(jobs: &[(f64, f64, u32)], budget: Option<f64>) -> Vec<f64> {
    let mut left: Vec<f64> = jobs.iter().map(|j| j.0).collect();
    let mut done = vec![None; jobs.len()];
    let mut now = 0.0;
    loop {
        let active: Vec<usize> = (0..jobs.len()).filter(|&k| done[k].is_none()).collect();
        if active.is_empty() {
            break;
        }
        let weights: u32 = active.iter().map(|&k| jobs[k].2).sum();
        let speed = |k: usize| {
            let alone = jobs[k].1.max(1.0);
            budget.map_or(alone, |b| {
                alone.min(b * f64::from(jobs[k].2) / f64::from(weights.max(1)))
            })
        };
        let dt = active
            .iter()
            .map(|&k| left[k] / speed(k))
            .fold(f64::INFINITY, f64::min);
        for &k in &active {
            left[k] -= speed(k) * dt;
            if left[k] <= 1e-6 * jobs[k].0.max(1.0) {
                done[k] = Some(now + dt);
            }
        }
        now += dt;
    }
    done.into_iter().map(|d| d.unwrap_or(now)).collect()
}

/// What would happen if `volume` failed now.
pub fn what_if_fail(i: &Inputs, volume: &str) -> Result<WhatIf, String> {
    let status = i.status;
    let t = i.timings;
    let Some(v) = status.volumes.iter().find(|v| v.name == volume) else {
        let names: Vec<&str> = status.volumes.iter().map(|v| v.name.as_str()).collect();
        return Err(format!(
            "{volume} is not a volume of this pool (it has {})",
            names.join(", ")
        ));
    };
    let mut out = WhatIf {
        now: i.now,
        volume: volume.to_owned(),
        rate: i.rate.clone(),
        already_failed: v.state == "Failed",
        spare_lost: false,
        copies_failing: Vec::new(),
        databases: Vec::new(),
        single_copy: Vec::new(),
        down: Vec::new(),
        redundancy_back_in_s: Some(0),
    };
    if out.already_failed {
        out.redundancy_back_in_s = None;
        return Ok(out);
    }
    let failing: Vec<(&DbStatus, usize)> = status
        .databases
        .iter()
        .flat_map(|d| {
            d.copies
                .iter()
                .enumerate()
                .filter(|(_, c)| c.volume == volume && c.status != "FailedAndSuspended")
                .map(move |(slot, _)| (d, slot))
        })
        .collect();
    out.spare_lost = failing.is_empty()
        && !status
            .databases
            .iter()
            .any(|d| d.copies.iter().any(|c| c.volume == volume));
    out.copies_failing = failing
        .iter()
        .map(|(d, s)| d.copies[*s].name.clone())
        .collect();
    let failed_after = status
        .databases
        .iter()
        .flat_map(|d| d.copies.iter())
        .filter(|c| c.status == "FailedAndSuspended")
        .count()
        + failing.len();
    // A database whose last in-sync copy is on the volume keeps it as its (failed) active
    // copy: AutoReseed then leaves every copy on that volume alone (ActiveCopyOnVolume).
    let mut entries: Vec<WhatIfDb> = Vec::new();
    for (d, slot) in &failing {
        let c = &d.copies[*slot];
        let left = d
            .copies
            .iter()
            .filter(|x| x.volume != volume && in_sync(x))
            .count();
        let outcome = match left {
            0 => "Down",
            1 => "SingleCopy",
            _ => "Redundant",
        };
        let mut note = None;
        if c.status == "Seeding" {
            note = Some(format!("the reseed onto {volume} fails with it"));
        } else if let Some(seed) = d
            .copies
            .iter()
            .filter_map(|x| x.seed.as_ref())
            .find(|s| s.source == volume)
        {
            note = Some(if left > 0 {
                format!(
                    "the reseed onto {} goes on from another in-sync copy",
                    seed.target
                )
            } else {
                format!("the reseed onto {} fails: its source dies", seed.target)
            });
        }
        if left == 0 {
            note = Some(format!(
                "no copy in sync would remain: {} gets EIO until {volume} answers again (the copy there keeps every acknowledged write)",
                d.name
            ));
        }
        entries.push(WhatIfDb {
            db: d.name.clone(),
            loses: c.name.clone(),
            copies_in_sync_after: left,
            outcome: outcome.into(),
            source: d
                .copies
                .iter()
                .filter(|x| x.volume != volume && in_sync(x))
                .find(|x| !x.active)
                .or_else(|| d.copies.iter().find(|x| x.volume != volume && in_sync(x)))
                .map(|x| x.volume.clone()),
            spare: None,
            no_spare: None,
            blocked: None,
            bytes: i.db_bytes.get(&d.name).copied().unwrap_or(0),
            spare_assigned_in_s: None,
            redundancy_back_in_s: None,
            redundancy_back_at: None,
            note,
        });
    }
    let active_left_on_volume = entries.iter().any(|e| e.copies_in_sync_after == 0);
    let host_blocked = failed_after as u32 > t.max_failed_copies;
    let mut pool = SpareModel::new(status, i.copies_per_volume);
    pool.fail(volume);
    // Single-copy databases first, as the throttle favours them.
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&k| (entries[k].copies_in_sync_after != 1, k));
    let spare_at = t.dwell + resume_span(t);
    let mut jobs = Vec::new();
    for k in order {
        let e = &mut entries[k];
        let (d, slot) = failing[k];
        let c = &d.copies[slot];
        let reason = if c.reseed_blocked {
            Some(Reason::ReseedBlocked)
        } else if c.resume_blocked {
            Some(Reason::ResumeBlocked)
        } else if active_left_on_volume {
            Some(Reason::ActiveCopyOnVolume)
        } else if host_blocked {
            Some(Reason::TooManyFailedCopies)
        } else if e.copies_in_sync_after == 0 {
            Some(Reason::NoSourceCopy)
        } else {
            None
        };
        if let Some(r) = reason {
            e.blocked = Some(BlockedBy::new(r, &d.name, volume, true));
            continue;
        }
        if !t.enabled {
            e.no_spare = Some("AutoReseed is disabled: reseed it by hand".into());
            continue;
        }
        if t.spare_attempts == 0 {
            e.no_spare = Some("spare_attempts is 0: AutoReseed never assigns a spare".into());
            continue;
        }
        match pool.best_spare(&d.name, e.bytes) {
            Ok(spare) => {
                pool.assign(&d.name, &spare, e.bytes);
                e.spare = Some(spare);
                e.spare_assigned_in_s = Some(spare_at.as_secs());
                let weight = if e.copies_in_sync_after == 1 {
                    SINGLE_COPY_WEIGHT
                } else {
                    WEIGHT
                };
                // Work in bytes of throttle tokens: copied once and verified once.
                let alone = 2.0 * e.bytes as f64 / i.rate.seconds(e.bytes).max(1e-9);
                jobs.push((k, (2.0 * e.bytes as f64, alone, weight)));
            }
            Err(why) => e.no_spare = Some(why),
        }
    }
    let budget = i.rate.budget_bytes_per_s.map(|b| b as f64);
    let specs: Vec<(f64, f64, u32)> = jobs.iter().map(|j| j.1).collect();
    for ((k, _), secs) in jobs.iter().zip(shared_finish(&specs, budget)) {
        let e = &mut entries[*k];
        let back = spare_at.as_secs() + rounded(secs);
        e.redundancy_back_in_s = Some(back);
        e.redundancy_back_at = Some(i.now + Duration::from_secs(back));
    }
    out.single_copy = entries
        .iter()
        .filter(|e| e.outcome == "SingleCopy")
        .map(|e| e.db.clone())
        .collect();
    out.down = entries
        .iter()
        .filter(|e| e.outcome == "Down")
        .map(|e| e.db.clone())
        .collect();
    out.redundancy_back_in_s = entries
        .iter()
        .try_fold(0u64, |acc, e| e.redundancy_back_in_s.map(|b| acc.max(b)));
    out.databases = entries;
    Ok(out)
}

/// What [`live`] answers.
#[derive(Debug)]
pub enum Answer {
    /// Why the copies are not healthy.
    Explain(Explanation),
    /// What the loss of a volume would do.
    WhatIf(WhatIf),
}

/// Explain on the live pool: the status (completed as `status` shows it), the sizes of
/// the databases, the config's timings and the throttle's measurements.
pub fn live(
    pool: &crate::pool::Pool,
    runner: &crate::autoreseed::Runner,
    status: &Status,
    db: Option<&str>,
    what_if: Option<&str>,
) -> Result<Answer, String> {
    let db_bytes: BTreeMap<String, u64> = pool
        .databases()
        .iter()
        .map(|d| (d.name.to_string(), crate::autoreseed::db_bytes(d)))
        .collect();
    let throttle = runner.throttle();
    let inputs = Inputs {
        now: SystemTime::now(),
        status,
        db_bytes: &db_bytes,
        timings: &pool.config.autoreseed,
        copies_per_volume: pool.config.copies_per_volume,
        rate: Rate::new(
            &throttle.measured(),
            &pool.config.throttle,
            throttle.budget(),
        ),
    };
    match what_if {
        Some(v) => what_if_fail(&inputs, v).map(Answer::WhatIf),
        None => explain(&inputs, db).map(Answer::Explain),
    }
}
