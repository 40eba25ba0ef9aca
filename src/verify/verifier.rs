//! The daemon side of online verification: one verification per database at a time,
//! each on its own thread, its progress kept for `reseedfs verify --status`, every one
//! cancelled when the daemon stops.
//!
//! Scrubs are verifications too (`reseedfs scrub`); the last one of each database is kept
//! in `<state_dir>/scrub.json` (its time and what it found, for `status` and `explain`),
//! and `[scrub] interval` starts one when it is due ([`ScrubSchedule`]): the time of the
//! last scrub survives restarts, so a daemon restarted more often than the interval still
//! scrubs.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::{VerifyError, VerifyOptions, VerifyProgress, VerifyReport, VerifyStatus, verify};
use crate::fs::Core;
use crate::names::DbName;
use crate::private::PrivateDir;

/// The file of the state directory that keeps the last scrub of every database.
const SCRUB_LOG: &str = "scrub.json";

/// A database's last scrub, as `status` and `explain` show it (`last_scrub`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubRecord {
    /// When it started (seconds since the Unix epoch).
    pub started_unix: u64,
    /// When it ended.
    pub finished_unix: u64,
    /// Started by `[scrub] interval` (false: by `reseedfs scrub`).
    pub scheduled: bool,
    /// It went through every file (false: it stopped, see `error`).
    pub completed: bool,
    /// Why it stopped.
    pub error: Option<String>,
    /// Bytes compared per copy.
    pub bytes: u64,
    /// Blocks (one copy's 4 KiB) checked against a known checksum.
    pub blocks_checked: u64,
    /// Blocks that did not match their checksum.
    pub checksum_errors: u64,
    /// Of those, rewritten from a good copy.
    pub checksum_repaired: u64,
    /// Blocks that matched their checksum on no copy.
    pub checksum_unrecoverable: u64,
    /// Blocks that got their first checksum.
    pub sums_filled: u64,
    /// Data extents where the copies differed (both matching their checksums, or none
    /// known), and of those repaired from the active copy.
    pub extents_mismatched: u64,
    /// Of those, repaired.
    pub extents_repaired: u64,
}

/// Scrubbing of one database in `status` and `explain` (`scrub`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ScrubState {
    /// `[scrub] interval` in seconds; `None`: no schedule.
    pub interval_s: Option<u64>,
    /// When the schedule starts the next one (seconds since the Unix epoch).
    pub next_due_unix: Option<u64>,
    /// A scrub of the database is running now.
    pub running: bool,
    /// The last one that ended.
    pub last: Option<ScrubRecord>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A verification's progress and its thread (taken when the daemon waits for it).
type Running = (Arc<VerifyProgress>, Option<JoinHandle<()>>);

/// The verifications of a mount, one at a time per database, each on its own thread.
#[derive(Debug)]
pub struct Verifier {
    core: Arc<Core>,
    runs: Mutex<HashMap<DbName, Running>>,
    throttle: Option<Arc<crate::throttle::Throttle>>,
    scrubs: Arc<Scrubs>,
}

/// The last scrub of every database, and where they are kept.
#[derive(Debug, Default)]
struct Scrubs {
    last: Mutex<BTreeMap<String, ScrubRecord>>,
    dir: Option<PrivateDir>,
    /// `[scrub] interval`, and when the schedule began (the first due time of a database
    /// never scrubbed).
    schedule: Mutex<Option<(Duration, u64)>>,
}

impl Scrubs {
    fn record(&self, db: &str, r: ScrubRecord) {
        let mut last = self.last.lock();
        last.insert(db.to_owned(), r);
        let Some(dir) = &self.dir else { return };
        let text = match serde_json::to_vec_pretty(&*last) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("the last scrubs cannot be serialized: {e}");
                return;
            }
        };
        if let Err(e) = dir.write_atomic(SCRUB_LOG, &text, 0o600) {
            tracing::warn!(
                "the last scrub of {db} is not kept across restarts: writing {}: {e}",
                dir.path().join(SCRUB_LOG).display()
            );
        }
    }

    /// When the schedule starts the next scrub of `db`.
    fn due(&self, db: &str) -> Option<u64> {
        let (interval, began) = (*self.schedule.lock())?;
        let from = self.last.lock().get(db).map_or(began, |r| r.finished_unix);
        Some(from.saturating_add(interval.as_secs()))
    }
}

fn scrub_record(
    started_unix: u64,
    scheduled: bool,
    result: &Result<VerifyReport, VerifyError>,
    progress: &VerifyProgress,
) -> ScrubRecord {
    let empty = VerifyReport::default();
    let r = result.as_ref().unwrap_or(&empty);
    ScrubRecord {
        started_unix,
        finished_unix: unix_now(),
        scheduled,
        completed: result.is_ok(),
        error: result.as_ref().err().map(|e| e.to_string()),
        bytes: if result.is_ok() {
            r.bytes_compared
        } else {
            progress.job.done()
        },
        blocks_checked: r.blocks_checked,
        checksum_errors: r.checksum_errors,
        checksum_repaired: r.checksum_repaired,
        checksum_unrecoverable: r.checksum_unrecoverable,
        sums_filled: r.sums_filled,
        extents_mismatched: r.extents_total,
        extents_repaired: r.extents_repaired,
    }
}

impl Verifier {
    /// No verification yet.
    pub fn new(core: Arc<Core>) -> Verifier {
        Verifier {
            core,
            runs: Mutex::new(HashMap::new()),
            throttle: None,
            scrubs: Arc::default(),
        }
    }

    /// Keeps the last scrub of every database in `state_dir` (read back now: the last
    /// scrubs before a restart count).
    pub fn with_scrub_log(mut self, state_dir: &std::path::Path) -> Verifier {
        let dir = match PrivateDir::open(state_dir) {
            Ok(Some(d)) => d,
            Ok(None) => return self,
            Err(e) => {
                tracing::warn!(
                    "the last scrubs are not kept: opening {}: {e}",
                    state_dir.display()
                );
                return self;
            }
        };
        let last = match dir.read(SCRUB_LOG) {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(
                    "{} is unreadable ({e}): the last scrubs start afresh",
                    dir.path().join(SCRUB_LOG).display()
                );
                BTreeMap::new()
            }),
            Ok(None) => BTreeMap::new(),
            Err(e) => {
                tracing::warn!("reading {}: {e}", dir.path().join(SCRUB_LOG).display());
                BTreeMap::new()
            }
        };
        self.scrubs = Arc::new(Scrubs {
            last: Mutex::new(last),
            dir: Some(dir),
            schedule: Mutex::new(None),
        });
        self
    }

    /// Scrubbing of `db` for `status` and `explain`.
    pub fn scrub_state(&self, db: &str) -> ScrubState {
        let interval = self.scrubs.schedule.lock().map(|(i, _)| i.as_secs());
        ScrubState {
            interval_s: interval,
            next_due_unix: self.scrubs.due(db),
            running: self
                .runs
                .lock()
                .get(db)
                .is_some_and(|(p, _)| p.is_running() && p.options().scrub),
            last: self.scrubs.last.lock().get(db).cloned(),
        }
    }

    /// Adds the scrubbing of every database to `status`.
    pub fn annotate(&self, status: &mut crate::status::Status) {
        for d in &mut status.databases {
            d.scrub = Some(self.scrub_state(&d.name));
        }
    }

    /// Paces every verification through the host's rebuild throttle as well (its
    /// budget is shared with reseeds and resyncs).
    pub fn with_throttle(mut self, throttle: Arc<crate::throttle::Throttle>) -> Verifier {
        self.throttle = Some(throttle);
        self
    }

    /// Starts a verification of `db` (see `control::Request::Verify`).
    pub fn start(&self, db: &DbName, options: VerifyOptions) -> Result<VerifyStatus, String> {
        self.start_as(db, options, false)
    }

    fn start_as(
        &self,
        db: &DbName,
        options: VerifyOptions,
        scheduled: bool,
    ) -> Result<VerifyStatus, String> {
        let d = self
            .core
            .pool()
            .database(db)
            .ok_or_else(|| format!("no database {db} in this mount"))?
            .clone();
        let mut runs = self.runs.lock();
        if runs.get(db).is_some_and(|(p, _)| p.is_running()) {
            return Err(format!(
                "a verification of {db} is already running: follow it with `reseedfs verify {db} --status`"
            ));
        }
        let progress = Arc::new(VerifyProgress::new(db, options));
        // The host's budget is shared with reseeds and resyncs; the stream starts now, so
        // that `reseedfs throttle` shows it at once.
        if let Some(t) = &self.throttle {
            progress.job.pacer.set_throttle(t.clone());
            progress
                .job
                .pacer
                .begin(crate::throttle::StreamKind::Verify, &d, None, &[]);
        }
        let (core, p, scrubs) = (self.core.clone(), progress.clone(), self.scrubs.clone());
        let started_unix = unix_now();
        let thread = std::thread::Builder::new()
            .name(format!("verify-{db}"))
            .spawn(move || {
                let result = verify(&core, &d, options, &p);
                p.job.pacer.end();
                if options.scrub {
                    scrubs.record(&d.name, scrub_record(started_unix, scheduled, &result, &p));
                }
            })
            .map_err(|e| format!("cannot start a verification thread: {e}"))?;
        let status = progress.snapshot();
        runs.insert(db.to_owned(), (progress, Some(thread)));
        Ok(status)
    }

    /// The running or last verification of `db`.
    pub fn status(&self, db: &DbName) -> Option<VerifyStatus> {
        self.runs.lock().get(db).map(|(p, _)| p.snapshot())
    }

    /// Cancels every running verification and waits for them (the daemon is stopping).
    pub fn stop(&self) {
        let threads: Vec<JoinHandle<()>> = {
            let mut runs = self.runs.lock();
            runs.values_mut()
                .filter_map(|(p, t)| {
                    p.cancel();
                    t.take()
                })
                .collect()
        };
        for t in threads {
            let _ = t.join();
        }
    }
}

/// `[scrub] interval`: a thread that starts the scrub of every database when it is due
/// (its last scrub ended an interval ago, or, never scrubbed, an interval after the
/// schedule began), through the verifier (one verification per database at a time,
/// paced by the host's rebuild throttle like every other). A database that cannot be
/// scrubbed now (fewer than two copies in sync, a verification running) is tried again at
/// the next tick. Stops when dropped.
#[derive(Debug)]
pub struct ScrubSchedule {
    stop: Option<crossbeam_channel::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Verifier {
    /// Starts the schedule of `interval` (see [`ScrubSchedule`]).
    pub fn schedule_scrubs(self: &Arc<Self>, interval: Duration) -> std::io::Result<ScrubSchedule> {
        *self.scrubs.schedule.lock() = Some((interval, unix_now()));
        let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
        // Checked often enough that a scrub starts within a tenth of the interval (at most
        // a minute) of being due.
        let tick = (interval / 10).clamp(Duration::from_millis(200), Duration::from_secs(60));
        let me = self.clone();
        let thread = std::thread::Builder::new()
            .name("scrub-schedule".into())
            .spawn(move || {
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(tick)
                {
                    me.start_due_scrubs();
                }
            })?;
        Ok(ScrubSchedule {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    fn start_due_scrubs(&self) {
        let now = unix_now();
        let names: Vec<DbName> = self
            .core
            .pool()
            .databases()
            .iter()
            .filter(|d| d.sums().enabled())
            .map(|d| d.name.clone())
            .collect();
        for db in names {
            if self.scrubs.due(&db).is_none_or(|due| due > now) {
                continue;
            }
            let options = VerifyOptions {
                repair: true,
                max_bytes_per_s: None,
                scrub: true,
            };
            if let Err(why) = self.start_as(&db, options, true) {
                tracing::debug!("the scheduled scrub of {db} waits: {why}");
            }
        }
    }
}

impl Drop for ScrubSchedule {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
