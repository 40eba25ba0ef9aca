//! The AutoReseed runner: one thread that keeps a [`Workflow`] per FailedAndSuspended
//! copy, checks the prerequisites, carries out the actions the workflows ask for (probe
//! a volume and reseed in place, assign a spare and seed it, seed in place), turns the
//! workflows' notices into events, and starts the reseeds operators ask for.
//!
//! Reseeds run on their own threads (one per database at a time); the runner only
//! decides and records.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

use super::policy::{Action, Checks, Notice, Reason, Workflow, first_blocker};
use super::{Clock, Timings};
use crate::config::OnDivergence;
use crate::copyset::CopyState;
use crate::copyset::Database;
use crate::events::{EventId, NewEvent};
use crate::fs::Core;
use crate::layout;
use crate::names::CopySlot;
use crate::names::DbName;
use crate::names::VolumeName;
use crate::reseed::resync::ResyncError;
use crate::reseed::{self, Phase, Progress, SeedRequest};
use crate::status::{Blocker, Status, WorkflowStatus};
use crate::tap::IncrementalError;
use crate::throttle::Throttle;

/// A copy: database name and index in its placement.
type CopyKey = (DbName, CopySlot);

/// The outcome of an action, sent back by its thread.
struct Outcome {
    key: CopyKey,
    result: Result<(), String>,
    automatic: bool,
}

struct Shared {
    workflows: HashMap<CopyKey, Workflow>,
    /// The reseed running for a copy, or the last one (kept for `status` when it failed).
    seeds: HashMap<CopyKey, Arc<Progress>>,
    threads: Vec<JoinHandle<()>>,
}

/// The AutoReseed runner of one mount.
pub struct Runner {
    core: Arc<Core>,
    clock: Arc<dyn Clock>,
    timings: Timings,
    shared: Mutex<Shared>,
    done_tx: Sender<Outcome>,
    done_rx: Receiver<Outcome>,
    stop: AtomicBool,
    /// The host's rebuild throttle: every reseed started here is paced by it.
    throttle: Arc<Throttle>,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner").finish_non_exhaustive()
    }
}

/// The runner's thread; stops it when dropped.
#[derive(Debug)]
pub struct RunnerHandle {
    runner: Arc<Runner>,
    thread: Option<JoinHandle<()>>,
}

impl RunnerHandle {
    /// The runner.
    pub fn runner(&self) -> &Arc<Runner> {
        &self.runner
    }

    /// Stops the runner: no new action starts, running reseeds are cancelled (their
    /// copies stay FailedAndSuspended) and joined.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.runner.stop.store(true, Ordering::Release);
        for p in self.runner.shared.lock().seeds.values() {
            p.cancel();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let threads = std::mem::take(&mut self.runner.shared.lock().threads);
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for RunnerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// How often the runner looks: often enough for the shortest timing, at most 1 s.
fn tick(t: &Timings) -> Duration {
    [
        t.dwell,
        t.resume_interval,
        t.spare_interval,
        t.seed_interval,
    ]
    .into_iter()
    .min()
    .unwrap_or(Duration::from_secs(1))
    .div_f64(5.0)
    .clamp(Duration::from_millis(20), Duration::from_secs(1))
}

impl Runner {
    /// A runner for `core`'s pool, with the pool config's timings.
    pub fn new(core: Arc<Core>, clock: Arc<dyn Clock>) -> Arc<Runner> {
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        let config = &core.pool().config;
        let throttle = Throttle::new(&config.throttle, Some(config.throughput_path()));
        Arc::new(Runner {
            timings: core.pool().config.autoreseed.clone(),
            core,
            clock,
            shared: Mutex::new(Shared {
                workflows: HashMap::new(),
                seeds: HashMap::new(),
                threads: Vec::new(),
            }),
            done_tx,
            done_rx,
            stop: AtomicBool::new(false),
            throttle,
        })
    }

    /// The host's rebuild throttle (reseeds, resyncs and verifies take their bytes from it).
    pub fn throttle(&self) -> &Arc<Throttle> {
        &self.throttle
    }

    /// Starts the runner's thread.
    pub fn start(self: &Arc<Runner>) -> std::io::Result<RunnerHandle> {
        let runner = self.clone();
        let thread = std::thread::Builder::new()
            .name("autoreseed".into())
            .spawn(move || {
                let every = tick(&runner.timings);
                while !runner.stop.load(Ordering::Acquire) {
                    runner.step();
                    std::thread::sleep(every);
                }
            })?;
        Ok(RunnerHandle {
            runner: self.clone(),
            thread: Some(thread),
        })
    }

    /// One pass: outcomes in, workflows polled, actions started, notices out.
    pub fn step(&self) {
        let now = self.clock.now();
        let t = &self.timings;
        while let Ok(done) = self.done_rx.try_recv() {
            if !done.automatic {
                continue;
            }
            if let Some(wf) = self.shared.lock().workflows.get_mut(&done.key) {
                wf.finished(t, now, done.result);
            }
        }
        let pool = self.core.pool();
        let mut start = Vec::new();
        {
            let mut shared = self.shared.lock();
            let seeding: Vec<CopyKey> = shared
                .seeds
                .iter()
                .filter(|(_, p)| p.is_running())
                .map(|(k, _)| k.clone())
                .collect();
            for db in pool.databases() {
                for (slot, c) in db.slots() {
                    let key = (db.name.clone(), slot);
                    // A copy an operator suspended is theirs until they resume it.
                    let failed = c.state() == CopyState::FailedAndSuspended
                        && !pool
                            .copy_record(&db.name, slot)
                            .is_some_and(|r| r.suspended);
                    let busy = seeding.contains(&key);
                    match shared.workflows.get(&key) {
                        None if failed && !busy => {
                            let since = pool
                                .copy_record(&db.name, slot)
                                .and_then(|r| r.failed_at)
                                .unwrap_or(now);
                            shared.workflows.insert(key.clone(), Workflow::new(since));
                        }
                        Some(wf) if !failed && wf.running().is_none() && !busy => {
                            // In sync again by other means (an operator's reseed).
                            shared.workflows.remove(&key);
                        }
                        _ => {}
                    }
                }
            }
            let keys: Vec<CopyKey> = shared.workflows.keys().cloned().collect();
            for key in keys {
                let Some(db) = pool.database(&key.0) else {
                    continue;
                };
                if seeding.contains(&key) {
                    // A reseed (an operator's) is on it already: let it finish.
                    continue;
                }
                let blocker = self.blocker(db, key.1);
                let Some(wf) = shared.workflows.get_mut(&key) else {
                    continue;
                };
                if self.stop.load(Ordering::Acquire) {
                    break;
                }
                if let Some(attempt) = wf.poll(t, now, blocker) {
                    start.push((key.clone(), attempt.action));
                }
                let notices = wf.take_notices();
                let volume = db.copies()[key.1].volume_name();
                for n in notices {
                    self.emit_notice(db, &volume, wf, n);
                }
            }
        }
        for (key, action) in start {
            if let Err(e) = self.start_action(&key, action) {
                let _ = self.done_tx.send(Outcome {
                    key,
                    result: Err(e),
                    automatic: true,
                });
            }
        }
    }

    /// The first prerequisite that fails for copy `slot` of `db`.
    fn blocker(&self, db: &Database, slot: CopySlot) -> Option<Reason> {
        let pool = self.core.pool();
        let rec = pool.copy_record(&db.name, slot)?;
        let volume = rec.volume.clone();
        let state = pool.state();
        // A copy on the failed volume still trusted (the last in-sync copy of its
        // database, kept in the persisted state), or in memory active there.
        let active_on_volume = state.databases.iter().any(|d| {
            d.copies
                .iter()
                .any(|c| c.volume == volume && c.state == CopyState::InSync)
                && pool
                    .database(&d.name)
                    .is_none_or(|live| live.active_index().is_none())
        }) || pool
            .databases()
            .iter()
            .any(|d| d.active_volume().as_deref() == Some(volume.as_str()));
        let healthy_on_volume = pool.databases().iter().any(|d| {
            d.copies()
                .iter()
                .any(|c| c.volume_name() == volume && c.state() != CopyState::FailedAndSuspended)
        });
        let failed_copies_on_host = pool
            .databases()
            .iter()
            .flat_map(|d| d.copies())
            .filter(|c| c.state() == CopyState::FailedAndSuspended)
            .count() as u32;
        let source = db
            .copies()
            .iter()
            .enumerate()
            .find_map(|(i, c)| (i != slot).then(|| c.in_sync_volume()).flatten());
        let (naming_ok, layout_split) = source
            .as_ref()
            .map_or((true, false), |v| reseed::check_folders(v, &db.name));
        first_blocker(&Checks {
            reseed_blocked: rec.reseed_blocked,
            resume_blocked: rec.resume_blocked,
            layout_split,
            naming_ok,
            active_on_volume,
            healthy_on_volume,
            failed_copies_on_host,
            max_failed_copies: self.timings.max_failed_copies,
            source_available: source.is_some(),
        })
    }

    fn emit_notice(&self, db: &Database, volume: &str, wf: &Workflow, n: Notice) {
        let label = format!("{}\\{volume}", db.name);
        let when = |t: Option<SystemTime>| {
            t.map(|t| humantime::format_rfc3339_seconds(t).to_string())
                .unwrap_or_else(|| "-".into())
        };
        let (id, message) = match &n {
            Notice::Started => (
                EventId::AutoReseedStarted,
                format!(
                    "copy {label} has been FailedAndSuspended since {}: AutoReseed starts",
                    when(Some(wf.failed_since()))
                ),
            ),
            Notice::StepChanged { from, to } => (
                EventId::AutoReseedAttemptFailed,
                format!("AutoReseed for {label}: {from} attempts used up, moving on to {to}"),
            ),
            Notice::AttemptStarted(a) => (
                EventId::AutoReseedAttempt,
                format!(
                    "AutoReseed for {label}: {} attempt {} of {}",
                    a.action, a.number, a.of
                ),
            ),
            Notice::AttemptFailed {
                attempt,
                error,
                next_at,
            } => (
                EventId::AutoReseedAttemptFailed,
                format!(
                    "AutoReseed for {label}: {} attempt {} of {} failed: {error}; next at {}",
                    attempt.action,
                    attempt.number,
                    attempt.of,
                    when(*next_at)
                ),
            ),
            Notice::Blocked(r) => (
                EventId::AutoReseedBlocked,
                format!(
                    "AutoReseed for {label} is blocked ({}): {} To clear: {}",
                    r.code(),
                    r.describe(),
                    r.remedy(&db.name, volume)
                ),
            ),
            Notice::Unblocked(r) => (
                EventId::AutoReseedUnblocked,
                format!("AutoReseed for {label}: {} holds again", r.code()),
            ),
            Notice::Stopped { reset_at } => (
                EventId::AutoReseedStopped,
                format!(
                    "AutoReseed for {label}: every attempt failed; it stops and starts over at {} if the copy is still failed. Last error: {}",
                    when(Some(*reset_at)),
                    wf.last_error().unwrap_or("-")
                ),
            ),
            Notice::Reset => (
                EventId::AutoReseedReset,
                format!("AutoReseed for {label}: still failed after reset_after, starting over"),
            ),
            Notice::Healed => return,
        };
        let mut e = NewEvent::new(id, message)
            .database(&db.name)
            .volume(volume)
            .field("step", wf.step().name());
        if let Notice::Blocked(r) = &n {
            e = e.field("reason", r.code());
        }
        if let Notice::AttemptStarted(a) | Notice::AttemptFailed { attempt: a, .. } = &n {
            e = e
                .field("action", a.action.name())
                .field("attempt", a.number)
                .field("of", a.of);
        }
        self.core.pool().events().emit(e);
    }

    /// Carries out `action` for a copy on a new thread; its outcome comes back to the
    /// workflow. Errors that happen before the thread starts are the outcome.
    fn start_action(&self, key: &CopyKey, action: Action) -> Result<(), String> {
        let pool = self.core.pool();
        let db = pool
            .database(&key.0)
            .ok_or_else(|| format!("no database {}", key.0))?
            .clone();
        let volume = db.copies()[key.1].volume_name();
        let target = match action {
            Action::Resume => {
                pool.reprobe_volume(&volume)
                    .map_err(|why| format!("volume {volume} does not answer: {why}"))?;
                if db.tap().snapshot(key.1).is_some() {
                    // The copy missed only what its dirty map holds: resync that.
                    return self.spawn_resync(db, key.1, true);
                }
                volume
            }
            Action::SeedInPlace => volume,
            Action::AssignSpare => self.pick_spare(&db)?,
        };
        self.spawn_reseed(db, key.1, target, None, false, true)
    }

    /// The best spare for a new copy of `db`, or why there is none (event 3014).
    fn pick_spare(&self, db: &Database) -> Result<VolumeName, String> {
        let pool = self.core.pool();
        let bytes = db_bytes(db);
        let (ok, rejected) = pool.spares(&db.name, bytes);
        if let Some(v) = ok.into_iter().next() {
            return VolumeName::new(v).map_err(|e| e.to_string());
        }
        let reasons = rejected
            .iter()
            .map(|(v, why)| format!("{v}: {why}"))
            .collect::<Vec<_>>()
            .join("; ");
        let msg = format!(
            "no spare volume can take a copy of {} ({} MiB): {reasons}",
            db.name,
            bytes >> 20
        );
        pool.events().emit(
            NewEvent::new(EventId::SparesExhausted, msg.clone())
                .database(&db.name)
                .field("bytes", bytes),
        );
        Err(msg)
    }

    fn spawn_reseed(
        &self,
        db: Arc<Database>,
        slot: CopySlot,
        target: VolumeName,
        from: Option<VolumeName>,
        allow_in_sync: bool,
        automatic: bool,
    ) -> Result<(), String> {
        let keep_replaced = self
            .core
            .pool()
            .copy_record(&db.name, slot)
            .is_some_and(|r| r.divergence.is_some() && r.volume == target);
        let req = SeedRequest {
            db,
            slot,
            target,
            from,
            allow_in_sync,
            keep_replaced,
            window_bytes: reseed::WINDOW_BYTES,
        };
        let (db, target) = (req.db.clone(), req.target.clone());
        self.spawn_work(
            "reseed",
            &db,
            slot,
            &target,
            automatic,
            move |core, progress| {
                reseed::reseed(core, &req, progress)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
        )
    }

    /// Resyncs copy `slot` of `db` from its dirty map on a new thread. When that is
    /// impossible (event 2058), `[tap] on_divergence` decides: a full reseed in place
    /// that keeps the copy's old files in quarantine, or the operator.
    fn spawn_resync(
        &self,
        db: Arc<Database>,
        slot: CopySlot,
        automatic: bool,
    ) -> Result<(), String> {
        let volume = db.copies()[slot].volume_name();
        let d = db.clone();
        self.spawn_work(
            "resync",
            &db,
            slot,
            &volume.clone(),
            automatic,
            move |core, progress| match reseed::resync::resync(core, &d, slot, progress) {
                Ok(_) => Ok(()),
                Err(ResyncError::Incremental(code, why)) => {
                    incremental_failed(core, &d, slot, &volume, code, &why, progress)
                }
                Err(e) => Err(e.to_string()),
            },
        )
    }

    /// Runs `work` (a reseed or a resync of copy `slot` of `db` onto `target`) on its own
    /// thread, one per database at a time, its progress shown by `status`; its outcome
    /// goes back to the workflow.
    fn spawn_work(
        &self,
        what: &str,
        db: &Database,
        slot: CopySlot,
        target: &str,
        automatic: bool,
        work: impl FnOnce(&Arc<Core>, &Progress) -> Result<(), String> + Send + 'static,
    ) -> Result<(), String> {
        let key = (db.name.clone(), slot);
        let progress = Arc::new(Progress::new(&db.name, target));
        progress.job.pacer.set_throttle(self.throttle.clone());
        let mut shared = self.shared.lock();
        if shared
            .seeds
            .values()
            .any(|p| p.db() == db.name && p.is_running())
        {
            return Err(format!("a reseed of {} is already running", db.name));
        }
        shared.seeds.insert(key.clone(), progress.clone());
        let core = self.core.clone();
        let done = self.done_tx.clone();
        let thread = std::thread::Builder::new()
            .name(format!("{what}-{}", key.0))
            .spawn(move || {
                let result = work(&core, &progress);
                let _ = done.send(Outcome {
                    key,
                    result,
                    automatic,
                });
            })
            .map_err(|e| format!("cannot start a {what} thread: {e}"))?;
        shared.threads.retain(|t| !t.is_finished());
        shared.threads.push(thread);
        Ok(())
    }

    /// An operator's suspend of the copy of `db` on `volume`.
    pub fn suspend(&self, db: &DbName, volume: &VolumeName) -> Result<String, String> {
        let pool = self.core.pool();
        let (d, slot) = self.copy_on(db, volume)?;
        pool.suspend(&d, slot)?;
        self.shared.lock().workflows.remove(&(db.to_owned(), slot));
        Ok(format!("{db}\\{volume}"))
    }

    /// An operator's resume of the copy of `db` on `volume`: an incremental resync when
    /// its dirty map allows it, else (event 2058) as `[tap] on_divergence` says.
    pub fn resume(&self, db: &DbName, volume: &VolumeName) -> Result<String, String> {
        let pool = self.core.pool();
        let (d, slot) = self.copy_on(db, volume)?;
        let label = format!("{db}\\{volume}");
        if d.copies()[slot].state() != CopyState::FailedAndSuspended {
            return Err(format!(
                "copy {label} is {}: nothing to resume",
                d.status_word(slot)
            ));
        }
        if pool.copy_record(db, slot).is_some_and(|r| r.resume_blocked) {
            return Err(format!(
                "copy {label} is ResumeBlocked: `reseedfs unblock {db} --volume {volume} --resume` first"
            ));
        }
        pool.reprobe_volume(volume)
            .map_err(|why| format!("volume {volume} does not answer: {why}"))?;
        if d.tap().snapshot(slot).is_some() {
            self.spawn_resync(d, slot, false)?;
        } else {
            self.spawn_reseed(d, slot, volume.clone(), None, false, false)?;
        }
        Ok(label)
    }

    fn copy_on(
        &self,
        db: &DbName,
        volume: &VolumeName,
    ) -> Result<(Arc<Database>, CopySlot), String> {
        let d = self
            .core
            .pool()
            .database(db)
            .ok_or_else(|| format!("no database {db} in this mount"))?
            .clone();
        let slot = d
            .slots()
            .find_map(|(slot, c)| (c.volume_name() == volume).then_some(slot))
            .ok_or_else(|| {
                let on: Vec<String> = d.copies().iter().map(|c| c.volume_name().into()).collect();
                format!(
                    "{db} has no copy on {volume} (its copies are on {})",
                    on.join(", ")
                )
            })?;
        Ok((d, slot))
    }

    /// An operator's reseed of `db` (see `control::Request::Reseed`). Returns the target.
    pub fn manual_reseed(
        &self,
        db: &DbName,
        from: Option<VolumeName>,
        to: Option<VolumeName>,
    ) -> Result<VolumeName, String> {
        let pool = self.core.pool();
        let d = pool
            .database(db)
            .ok_or_else(|| format!("no database {db} in this mount"))?
            .clone();
        let copies = d.copies();
        let not_in_sync = copies
            .iter()
            .position(|c| c.state() == CopyState::FailedAndSuspended);
        let (slot, target, allow_in_sync) = match to {
            Some(to) => match copies.iter().position(|c| c.volume_name() == to) {
                Some(slot) => (slot, to, true),
                None => {
                    let slot = not_in_sync.ok_or_else(|| {
                        format!(
                            "every copy of {db} is in sync: to reseed one, name its volume with --to ({})",
                            copies.iter().map(|c| c.volume_name()).collect::<Vec<_>>().join(", ")
                        )
                    })?;
                    (slot, to, false)
                }
            },
            None => {
                let slot = not_in_sync.ok_or_else(|| {
                    format!(
                        "every copy of {db} is in sync: name the copy to reseed with --to VolumeN"
                    )
                })?;
                let own = copies[slot].volume_name();
                match pool.reprobe_volume(&own) {
                    Ok(_) => (slot, own, false),
                    Err(_) => (slot, self.pick_spare(&d)?, false),
                }
            }
        };
        if pool.pool_volume(&target).is_none() {
            return Err(format!("{target} is not a volume of this pool"));
        }
        // Refuse now what the reseed would refuse: the operator gets the reason at once.
        let label = format!("{db}\\{}", copies[slot].volume_name());
        if !copies
            .iter()
            .enumerate()
            .any(|(i, c)| i != slot && c.state() == CopyState::InSync)
        {
            return Err(format!(
                "no other copy of {db} is in sync to seed {label} from: it would leave {db} without a copy"
            ));
        }
        if pool
            .copy_record(db, CopySlot::new(slot))
            .is_some_and(|r| r.reseed_blocked)
        {
            return Err(format!(
                "copy {label} is ReseedBlocked: `reseedfs unblock {db} --volume {} --reseed` first",
                copies[slot].volume_name()
            ));
        }
        self.spawn_reseed(
            d,
            CopySlot::new(slot),
            target.clone(),
            from,
            allow_in_sync,
            false,
        )?;
        Ok(target)
    }

    /// Fills in seed progress and AutoReseed state in `status`.
    pub fn annotate(&self, status: &mut Status) {
        let shared = self.shared.lock();
        for d in &mut status.databases {
            for (slot, c) in d.copies.iter_mut().enumerate() {
                let Ok(name) = DbName::new(d.name.as_str()) else {
                    continue;
                };
                let key = (name, CopySlot::new(slot));
                // A reseed shows while it runs, and after it failed until the copy is
                // in sync again.
                if let Some(p) = shared.seeds.get(&key) {
                    let s = p.snapshot();
                    if s.target == c.volume && (p.is_running() || s.phase == Phase::Failed) {
                        c.seed = Some(s);
                    }
                }
                if let Some(wf) = shared.workflows.get(&key) {
                    c.autoreseed = Some(WorkflowStatus {
                        step: wf.step().name().to_owned(),
                        attempt: wf.attempt(),
                        of: wf.attempts_allowed(&self.timings),
                        running: wf.running().map(|a| a.name().to_owned()),
                        next_at: wf.next_at(&self.timings),
                        blocked: wf.blocked().map(|r| Blocker {
                            code: r.code().to_owned(),
                            description: r.describe().to_owned(),
                            remedy: r.remedy(&d.name, &c.volume),
                        }),
                        last_error: wf.last_error().map(str::to_owned),
                    });
                }
            }
        }
    }
}

/// Event 2058, then what `[tap] on_divergence` says: a full reseed in place keeping the
/// copy's old files in quarantine, or a suspended copy waiting for its operator.
fn incremental_failed(
    core: &Arc<Core>,
    db: &Arc<Database>,
    slot: CopySlot,
    volume: &VolumeName,
    code: IncrementalError,
    why: &str,
    progress: &Progress,
) -> Result<(), String> {
    let pool = core.pool();
    let label = format!("{}\\{volume}", db.name);
    let manual = pool.config.tap.on_divergence == OnDivergence::Manual;
    let first_log = match (
        db.in_sync_volumes().first(),
        pool.pool_volume(volume).and_then(|v| v.volume()),
    ) {
        (Some(a), Some(b)) => reseed::resync::first_diverged_log(&db.name, a, &b),
        _ => "unknown: no volume to compare".to_owned(),
    };
    let next = if manual {
        format!(
            "it stays suspended until an operator decides: `reseedfs reseed {} --to {volume}` copies it in full and keeps its old files in quarantine",
            db.name
        )
    } else {
        "a full reseed in place follows; its old files are kept in quarantine".to_owned()
    };
    pool.events().emit(
        NewEvent::new(
            EventId::IncrementalReseedError,
            format!(
                "incremental resync of {label} is impossible ({}): {why}; {next}",
                code.code()
            ),
        )
        .database(&db.name)
        .volume(volume)
        .field("error_code", code.code())
        .field("first_diverged_log", first_log.as_str())
        .field("on_divergence", if manual { "manual" } else { "reseed" }),
    );
    pool.mark_divergent(db, slot, code.code(), manual);
    if manual {
        let why = format!(
            "incremental resync impossible ({}); waiting for the operator",
            code.code()
        );
        progress.fail(&why);
        return Err(why);
    }
    let req = SeedRequest {
        db: db.clone(),
        slot,
        target: volume.clone(),
        from: None,
        allow_in_sync: false,
        keep_replaced: true,
        window_bytes: reseed::WINDOW_BYTES,
    };
    reseed::reseed(core, &req, progress)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Bytes a copy of `db` takes (allocated on an in-sync copy).
pub(crate) fn db_bytes(db: &Database) -> u64 {
    let Some(v) = db.copies().iter().find_map(|c| c.in_sync_volume()) else {
        return 0;
    };
    let mut total = 0;
    let mut todo: Vec<std::path::PathBuf> = layout::db_folders(&db.name)
        .into_iter()
        .map(Into::into)
        .collect();
    while let Some(p) = todo.pop() {
        let Ok(st) = v.stat(&p) else { continue };
        total += st.st_blocks as u64 * 512;
        if crate::volume::FileType::from_raw_mode(st.st_mode) == crate::volume::FileType::Directory
        {
            if let Ok(entries) = v.read_dir(&p) {
                todo.extend(
                    entries
                        .into_iter()
                        .map(|e| crate::volume::child_path(Path::new(&p), &e.name)),
                );
            }
        }
    }
    total
}
