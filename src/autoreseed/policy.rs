//! The AutoReseed state machine: one [`Workflow`] per `FailedAndSuspended` copy.
//!
//! ```text
//! Dwell --dwell elapsed--> Resume --> AssignSpare --> SeedInPlace --> Stopped
//!                            ^  any attempt succeeds: Done (terminal)  |
//!                            +------------- reset_after ---------------+
//! ```
//!
//! The workflow is pure: it never does I/O, never sleeps and never reads a clock. The
//! runner calls [`Workflow::poll`] with the time and the first failing prerequisite
//! ([`first_blocker`]), runs the [`Action`] it is handed, reports the outcome with
//! [`Workflow::finished`], and turns [`Workflow::take_notices`] into events.
//!
//! Timing rules:
//! - the dwell counts from `failed_since`, which may lie in the past (daemon restart);
//! - a failed attempt schedules the next one `interval` after it *finished*; the first
//!   attempt of a step is due as soon as the step is entered;
//! - a step whose attempt count is 0 is entered and left at once (a `StepChanged` notice);
//! - `reset_at` is `reset_after` after the cycle started (the poll that ended the dwell,
//!   or the last reset), not after the stop;
//! - a blocker only matters when an attempt is due: it holds that attempt back without
//!   consuming it, and does not stop the dwell or reset timers;
//! - `enabled = false` freezes everything except the passage of time.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::Timings;

/// Where a [`Workflow`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Step {
    /// Waiting for the copy to have been `FailedAndSuspended` for `dwell`.
    Dwell,
    /// Trying to resume the copy where it is.
    Resume,
    /// Trying to assign a spare volume and seed the copy there.
    AssignSpare,
    /// Trying to seed the copy in place, after safely deleting its files.
    SeedInPlace,
    /// Every attempt of this cycle failed; waiting for the reset.
    Stopped,
    /// An action succeeded: the copy is healthy. Terminal.
    Done,
}

impl Step {
    /// The step's name, as `status` prints it and serde spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Step::Dwell => "Dwell",
            Step::Resume => "Resume",
            Step::AssignSpare => "AssignSpare",
            Step::SeedInPlace => "SeedInPlace",
            Step::Stopped => "Stopped",
            Step::Done => "Done",
        }
    }

    /// The action this step runs; `None` for the steps that only wait.
    fn action(self) -> Option<Action> {
        match self {
            Step::Resume => Some(Action::Resume),
            Step::AssignSpare => Some(Action::AssignSpare),
            Step::SeedInPlace => Some(Action::SeedInPlace),
            Step::Dwell | Step::Stopped | Step::Done => None,
        }
    }

    /// The step after an action step whose attempts are used up.
    fn after_exhausted(self) -> Step {
        match self {
            Step::Resume => Step::AssignSpare,
            Step::AssignSpare => Step::SeedInPlace,
            Step::SeedInPlace | Step::Stopped => Step::Stopped,
            Step::Dwell => Step::Resume,
            Step::Done => Step::Done,
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the runner must do for one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    /// Resume the copy on its own volume (it is reseeded in place if the volume answers).
    Resume,
    /// Assign a spare volume from the pool and seed the copy there.
    AssignSpare,
    /// Safe-delete the copy's existing files and seed it in place.
    SeedInPlace,
}

impl Action {
    /// The action's name: "Resume", "AssignSpare" or "SeedInPlace".
    pub fn name(&self) -> &'static str {
        match self {
            Action::Resume => "Resume",
            Action::AssignSpare => "AssignSpare",
            Action::SeedInPlace => "SeedInPlace",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One attempt handed to the runner by [`Workflow::poll`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// What to do.
    pub action: Action,
    /// Which attempt of the current step this is, from 1.
    pub number: u32,
    /// How many attempts the step allows.
    pub of: u32,
}

/// A prerequisite of AutoReseed that does not hold. While one is present, a due attempt
/// waits (and is not consumed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Reason {
    /// The copy is marked `ReseedBlocked`.
    ReseedBlocked,
    /// The copy is marked `ResumeBlocked`.
    ResumeBlocked,
    /// The database and log folders are not on the same volume.
    LayoutSplit,
    /// The folders do not follow the `<db>.db` / `<db>.log` naming convention.
    NamingConvention,
    /// An active (Mounted) copy is still on the failed volume.
    ActiveCopyOnVolume,
    /// Not every copy on the failed volume is `FailedAndSuspended`.
    HealthyCopyOnVolume,
    /// More than `max_failed_copies` copies are `FailedAndSuspended` on this host.
    TooManyFailedCopies,
    /// No in-sync copy of the database to seed from.
    NoSourceCopy,
}

impl Reason {
    /// Every reason, in the order [`first_blocker`] checks them.
    pub const ALL: [Reason; 8] = [
        Reason::ReseedBlocked,
        Reason::ResumeBlocked,
        Reason::LayoutSplit,
        Reason::NamingConvention,
        Reason::ActiveCopyOnVolume,
        Reason::HealthyCopyOnVolume,
        Reason::TooManyFailedCopies,
        Reason::NoSourceCopy,
    ];

    /// The variant's name, as used in status, events and JSON.
    pub fn code(&self) -> &'static str {
        match self {
            Reason::ReseedBlocked => "ReseedBlocked",
            Reason::ResumeBlocked => "ResumeBlocked",
            Reason::LayoutSplit => "LayoutSplit",
            Reason::NamingConvention => "NamingConvention",
            Reason::ActiveCopyOnVolume => "ActiveCopyOnVolume",
            Reason::HealthyCopyOnVolume => "HealthyCopyOnVolume",
            Reason::TooManyFailedCopies => "TooManyFailedCopies",
            Reason::NoSourceCopy => "NoSourceCopy",
        }
    }

    /// One sentence for an operator.
    pub fn describe(&self) -> &'static str {
        match self {
            Reason::ReseedBlocked => {
                "The copy is marked ReseedBlocked, so AutoReseed may not reseed it."
            }
            Reason::ResumeBlocked => {
                "The copy is marked ResumeBlocked, so AutoReseed may not resume it."
            }
            Reason::LayoutSplit => {
                "The copy's database and log folders are not on the same volume (one may be a symlink to another disk)."
            }
            Reason::NamingConvention => {
                "The copy's folders do not follow the <db>.db / <db>.log naming convention."
            }
            Reason::ActiveCopyOnVolume => {
                "An active (Mounted) copy is still on the failed volume and no other copy is in sync to take over."
            }
            Reason::HealthyCopyOnVolume => {
                "Not every copy on the failed volume is FailedAndSuspended, so the volume is not treated as dead."
            }
            Reason::TooManyFailedCopies => {
                "More than max_failed_copies copies are FailedAndSuspended on this host; something bigger than one disk is wrong."
            }
            Reason::NoSourceCopy => "No in-sync copy of the database is available to seed from.",
        }
    }

    /// The command or action that clears this reason for database `db` on `volume`.
    pub fn remedy(&self, db: &str, volume: &str) -> String {
        match self {
            Reason::ReseedBlocked => format!("reseedfs unblock {db} --volume {volume} --reseed"),
            Reason::ResumeBlocked => format!("reseedfs unblock {db} --volume {volume} --resume"),
            Reason::LayoutSplit => {
                format!(
                    "move {db}.db and {db}.log onto one volume ({volume}), with no symlink to another disk"
                )
            }
            Reason::NamingConvention => {
                format!("rename the copy's folders on {volume} to {db}.db and {db}.log")
            }
            Reason::ActiveCopyOnVolume => {
                format!("bring {volume} back online, or restore a copy of {db} from backup")
            }
            Reason::HealthyCopyOnVolume => format!(
                "wait until every copy on {volume} is FailedAndSuspended, or suspend the other copies on it"
            ),
            Reason::TooManyFailedCopies => format!(
                "fix the common cause of the failed copies (controller, enclosure) first; {db} on {volume} then proceeds"
            ),
            Reason::NoSourceCopy => {
                format!(
                    "bring an in-sync copy of {db} online (or restore one) to seed {volume} from"
                )
            }
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// The prerequisites of one copy, as the runner found them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checks {
    /// The copy is marked `ReseedBlocked`.
    pub reseed_blocked: bool,
    /// The copy is marked `ResumeBlocked`.
    pub resume_blocked: bool,
    /// The database and log folders are on different volumes.
    pub layout_split: bool,
    /// The folders follow `<db>.db` / `<db>.log`.
    pub naming_ok: bool,
    /// An active (Mounted) copy is on the failed volume.
    pub active_on_volume: bool,
    /// A copy on the failed volume is not `FailedAndSuspended`.
    pub healthy_on_volume: bool,
    /// `FailedAndSuspended` copies on this host.
    pub failed_copies_on_host: u32,
    /// The most `FailedAndSuspended` copies the host may have (`Timings::max_failed_copies`).
    pub max_failed_copies: u32,
    /// An in-sync copy of the database exists to seed from.
    pub source_available: bool,
}

/// The first prerequisite that fails, in the order of [`Reason::ALL`]; `None` when all hold.
pub fn first_blocker(checks: &Checks) -> Option<Reason> {
    let failing = [
        checks.reseed_blocked,
        checks.resume_blocked,
        checks.layout_split,
        !checks.naming_ok,
        checks.active_on_volume,
        checks.healthy_on_volume,
        checks.failed_copies_on_host > checks.max_failed_copies,
        !checks.source_available,
    ];
    Reason::ALL
        .into_iter()
        .zip(failing)
        .find_map(|(reason, fails)| fails.then_some(reason))
}

/// Something that happened in a [`Workflow`], for the runner to turn into an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Notice {
    /// The dwell is over; the first cycle begins at `Resume`.
    Started,
    /// The attempts of `from` are used up (or it allows none); `to` begins.
    StepChanged {
        /// The step left.
        from: Step,
        /// The step entered.
        to: Step,
    },
    /// An attempt was handed to the runner.
    AttemptStarted(Attempt),
    /// An attempt failed.
    AttemptFailed {
        /// The attempt.
        attempt: Attempt,
        /// Why, as the runner reported it.
        error: String,
        /// When the next attempt is due (now when a new step begins); `None` when this
        /// was the cycle's last attempt (a `Stopped` notice follows).
        next_at: Option<SystemTime>,
    },
    /// A due attempt is held back by this reason (emitted when it appears or changes).
    Blocked(Reason),
    /// The reason that held an attempt back has cleared.
    Unblocked(Reason),
    /// Every attempt of the cycle failed; the workflow resets at `reset_at`.
    Stopped {
        /// When the workflow starts over at `Resume`.
        reset_at: SystemTime,
    },
    /// The workflow started over at `Resume` with fresh counters.
    Reset,
    /// An action succeeded: the copy is healthy.
    Healed,
}

/// The AutoReseed workflow of one `FailedAndSuspended` copy.
#[derive(Debug, Clone, Serialize)]
pub struct Workflow {
    failed_since: SystemTime,
    step: Step,
    /// Attempts made in the current step (including a running one).
    attempt: u32,
    /// When the current cycle began: `None` during `Dwell`.
    cycle_started: Option<SystemTime>,
    /// When the next attempt is due, in an action step.
    next_attempt_at: Option<SystemTime>,
    running: Option<Attempt>,
    blocked: Option<Reason>,
    last_error: Option<String>,
    #[serde(skip)]
    notices: Vec<Notice>,
}

impl Workflow {
    /// A workflow for a copy `FailedAndSuspended` since `failed_since`, in `Dwell`.
    pub fn new(failed_since: SystemTime) -> Workflow {
        Workflow {
            failed_since,
            step: Step::Dwell,
            attempt: 0,
            cycle_started: None,
            next_attempt_at: None,
            running: None,
            blocked: None,
            last_error: None,
            notices: Vec::new(),
        }
    }

    /// What to do now. `blocker`: the first prerequisite that fails at `now` (`None`: all
    /// hold).
    ///
    /// Returns `Some(Attempt)` when an action must start now; the workflow is then
    /// [`running`](Workflow::running) until [`finished`](Workflow::finished) is called,
    /// and `poll` returns `None` meanwhile. Returns `None` when disabled, done, waiting,
    /// or when `blocker` holds a due attempt back (the attempt is not consumed).
    pub fn poll(
        &mut self,
        t: &Timings,
        now: SystemTime,
        blocker: Option<Reason>,
    ) -> Option<Attempt> {
        if !t.enabled || self.running.is_some() {
            return None;
        }
        match self.step {
            Step::Done => return None,
            Step::Dwell => {
                if now < after(self.failed_since, t.dwell) {
                    return None;
                }
                self.notices.push(Notice::Started);
                self.begin_cycle(t, now);
            }
            Step::Stopped => {
                if now < self.reset_at(t) {
                    return None;
                }
                self.notices.push(Notice::Reset);
                self.begin_cycle(t, now);
            }
            Step::Resume | Step::AssignSpare | Step::SeedInPlace => {}
        }
        // Attempt counts may have shrunk in a config reload.
        self.leave_exhausted_steps(t, now);
        let action = self.step.action()?;
        if now < self.next_attempt_at? {
            return None;
        }
        if self.blocked != blocker {
            match (blocker, self.blocked) {
                (Some(reason), _) => self.notices.push(Notice::Blocked(reason)),
                (None, Some(old)) => self.notices.push(Notice::Unblocked(old)),
                (None, None) => {}
            }
            self.blocked = blocker;
        }
        if blocker.is_some() {
            return None;
        }
        self.attempt += 1;
        let attempt = Attempt {
            action,
            number: self.attempt,
            of: self.attempts_allowed(t),
        };
        self.running = Some(attempt);
        self.notices.push(Notice::AttemptStarted(attempt));
        Some(attempt)
    }

    /// The outcome of the action [`poll`](Workflow::poll) last returned, at `now`.
    ///
    /// `Ok(())`: the copy is healthy again (`Done`, notice `Healed`). `Err(why)`: the
    /// next attempt is due `interval` after `now`, or, when the step's attempts are used
    /// up, the next step's first attempt is due now (or the workflow stops). Ignored
    /// when no action is running.
    pub fn finished(&mut self, t: &Timings, now: SystemTime, outcome: Result<(), String>) {
        let Some(attempt) = self.running.take() else {
            return;
        };
        match outcome {
            Ok(()) => {
                self.step = Step::Done;
                self.next_attempt_at = None;
                self.notices.push(Notice::Healed);
            }
            Err(error) => {
                self.last_error = Some(error.clone());
                let mark = self.notices.len();
                if self.attempt < self.attempts_allowed(t) {
                    self.next_attempt_at = Some(after(now, interval(t, self.step)));
                } else {
                    self.leave_exhausted_steps(t, now);
                }
                let next_at = self.step.action().and(self.next_attempt_at);
                self.notices.insert(
                    mark,
                    Notice::AttemptFailed {
                        attempt,
                        error,
                        next_at,
                    },
                );
            }
        }
    }

    /// The current step.
    pub fn step(&self) -> Step {
        self.step
    }

    /// Attempts made in the current step, counting a running one.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Attempts the current step allows (0 for `Dwell`, `Stopped` and `Done`).
    pub fn attempts_allowed(&self, t: &Timings) -> u32 {
        match self.step {
            Step::Resume => t.resume_attempts,
            Step::AssignSpare => t.spare_attempts,
            Step::SeedInPlace => t.seed_attempts,
            Step::Dwell | Step::Stopped | Step::Done => 0,
        }
    }

    /// When something happens next: the end of the dwell, the next attempt (in the past
    /// while a blocker holds it back), or the reset. `None` while an action runs, when
    /// `Done`, and when the workflow is disabled.
    pub fn next_at(&self, t: &Timings) -> Option<SystemTime> {
        if !t.enabled || self.running.is_some() {
            return None;
        }
        match self.step {
            Step::Dwell => Some(after(self.failed_since, t.dwell)),
            Step::Resume | Step::AssignSpare | Step::SeedInPlace => self.next_attempt_at,
            Step::Stopped => Some(self.reset_at(t)),
            Step::Done => None,
        }
    }

    /// The action running now, if any.
    pub fn running(&self) -> Option<Action> {
        self.running.map(|a| a.action)
    }

    /// The reason holding a due attempt back, if any.
    pub fn blocked(&self) -> Option<Reason> {
        self.blocked
    }

    /// The error of the most recent failed attempt (kept across steps, resets and healing).
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Since when the copy has been `FailedAndSuspended`.
    pub fn failed_since(&self) -> SystemTime {
        self.failed_since
    }

    /// The notices since the last call, in order of occurrence.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    /// `cycle_started + reset_after` (only meaningful once started).
    fn reset_at(&self, t: &Timings) -> SystemTime {
        after(
            self.cycle_started.unwrap_or(self.failed_since),
            t.reset_after,
        )
    }

    /// Enters `Resume` with fresh counters, its first attempt due now.
    fn begin_cycle(&mut self, t: &Timings, now: SystemTime) {
        self.step = Step::Resume;
        self.attempt = 0;
        self.cycle_started = Some(now);
        self.next_attempt_at = Some(now);
        self.blocked = None;
        self.leave_exhausted_steps(t, now);
    }

    /// While the current action step has no attempts left, moves to the next one (its
    /// first attempt due now), ending in `Stopped` after `SeedInPlace`.
    fn leave_exhausted_steps(&mut self, t: &Timings, now: SystemTime) {
        while self.step.action().is_some() && self.attempt >= self.attempts_allowed(t) {
            let from = self.step;
            let to = from.after_exhausted();
            self.step = to;
            self.attempt = 0;
            if to == Step::Stopped {
                self.next_attempt_at = None;
                self.blocked = None;
                self.notices.push(Notice::Stopped {
                    reset_at: self.reset_at(t),
                });
            } else {
                self.next_attempt_at = Some(now);
                self.notices.push(Notice::StepChanged { from, to });
            }
        }
    }
}

/// The interval between attempts of `step`.
fn interval(t: &Timings, step: Step) -> Duration {
    match step {
        Step::Resume => t.resume_interval,
        Step::AssignSpare => t.spare_interval,
        Step::SeedInPlace => t.seed_interval,
        Step::Dwell | Step::Stopped | Step::Done => Duration::ZERO,
    }
}

/// `at + d`; a sum the platform cannot represent becomes `at + 2^40 s` (about 35,000
/// years), and failing that `at`, instead of a panic.
fn after(at: SystemTime, d: Duration) -> SystemTime {
    at.checked_add(d)
        .or_else(|| at.checked_add(Duration::from_secs(1 << 40)))
        .unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::super::{Clock, ManualClock, Timings};
    use super::*;

    const MIN: Duration = Duration::from_secs(60);
    const HOUR: Duration = Duration::from_secs(3600);
    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn minutes(n: u64) -> Duration {
        MIN * u32::try_from(n).unwrap()
    }

    /// A notice and the simulated time it was taken at.
    type Log = Vec<(SystemTime, Notice)>;

    /// Polls every simulated minute until `until` (exclusive), answering each action with
    /// `answer` at once and asking `blocker` for the prerequisites. After an attempt
    /// finishes it polls again at the same time (the runner polls about every second).
    fn drive(
        wf: &mut Workflow,
        t: &Timings,
        clock: &ManualClock,
        until: SystemTime,
        mut answer: impl FnMut(&Attempt, SystemTime) -> Result<(), String>,
        mut blocker: impl FnMut(SystemTime) -> Option<Reason>,
    ) -> Log {
        let mut log = Log::new();
        while clock.now() < until {
            let now = clock.now();
            while let Some(a) = wf.poll(t, now, blocker(now)) {
                assert_eq!(wf.running(), Some(a.action));
                assert_eq!(
                    wf.poll(t, now, None),
                    None,
                    "a second action while one runs"
                );
                wf.finished(t, now, answer(&a, now));
                assert_eq!(wf.running(), None);
            }
            log.extend(wf.take_notices().into_iter().map(|n| (now, n)));
            clock.advance(MIN);
        }
        log
    }

    fn fail_all(a: &Attempt, _: SystemTime) -> Result<(), String> {
        Err(format!("{} failed", a.action))
    }

    fn never_blocked(_: SystemTime) -> Option<Reason> {
        None
    }

    fn started(log: &Log) -> Vec<(SystemTime, Attempt)> {
        log.iter()
            .filter_map(|(at, n)| match n {
                Notice::AttemptStarted(a) => Some((*at, *a)),
                _ => None,
            })
            .collect()
    }

    /// The notices one failing cycle of the default timings produces, starting at `start`.
    fn failing_cycle(start: SystemTime) -> Log {
        let t = Timings::default();
        let mut log = Log::new();
        let mut at = start;
        let steps = [
            (Action::Resume, 3, 5 * MIN),
            (Action::AssignSpare, 5, HOUR),
            (Action::SeedInPlace, 5, HOUR),
        ];
        for (i, (action, of, every)) in steps.into_iter().enumerate() {
            for number in 1..=of {
                let attempt = Attempt { action, number, of };
                log.push((at, Notice::AttemptStarted(attempt)));
                let last_of_step = number == of;
                let last = last_of_step && i == steps.len() - 1;
                let next_at = match (last_of_step, last) {
                    (_, true) => None,
                    (true, false) => Some(at),
                    (false, false) => Some(at + every),
                };
                log.push((
                    at,
                    Notice::AttemptFailed {
                        attempt,
                        error: format!("{action} failed"),
                        next_at,
                    },
                ));
                if last {
                    log.push((
                        at,
                        Notice::Stopped {
                            reset_at: start + t.reset_after,
                        },
                    ));
                } else if last_of_step {
                    let (from, to) = match action {
                        Action::Resume => (Step::Resume, Step::AssignSpare),
                        _ => (Step::AssignSpare, Step::SeedInPlace),
                    };
                    log.push((at, Notice::StepChanged { from, to }));
                } else {
                    at += every;
                }
            }
        }
        log
    }

    #[test]
    fn default_timings_run_two_full_failing_cycles() {
        let t = Timings::default();
        let clock = ManualClock::new(t0());
        let mut wf = Workflow::new(t0());
        let start1 = t0() + 15 * MIN;
        let start2 = start1 + 3 * DAY;
        let log = drive(
            &mut wf,
            &t,
            &clock,
            start2 + 9 * HOUR,
            fail_all,
            never_blocked,
        );

        let mut expected = vec![(start1, Notice::Started)];
        expected.extend(failing_cycle(start1));
        expected.push((start2, Notice::Reset));
        expected.extend(failing_cycle(start2));
        assert_eq!(log, expected);

        // The times and counts spelled out for the first cycle, independent of the model.
        let attempts = started(&log);
        assert_eq!(attempts.len(), 26);
        let first: Vec<_> = attempts[..13]
            .iter()
            .map(|(at, a)| (*at, a.action, a.number))
            .collect();
        let mut want = Vec::new();
        for (n, m) in [(1, 15), (2, 20), (3, 25)] {
            want.push((t0() + minutes(m), Action::Resume, n));
        }
        for n in 1..=5u32 {
            want.push((t0() + minutes(25) + HOUR * (n - 1), Action::AssignSpare, n));
        }
        for n in 1..=5u32 {
            want.push((t0() + minutes(25) + HOUR * (n + 3), Action::SeedInPlace, n));
        }
        assert_eq!(first, want);
        assert_eq!(
            attempts[13].0,
            t0() + 15 * MIN + 3 * DAY,
            "Reset at failed_since + dwell + 3d"
        );
        assert_eq!(attempts[13].1.action, Action::Resume);
        assert_eq!(attempts[25].0, start2 + 8 * HOUR + 10 * MIN);

        assert_eq!(wf.step(), Step::Stopped);
        assert_eq!(wf.last_error(), Some("SeedInPlace failed"));
        assert_eq!(wf.next_at(&t), Some(start2 + 3 * DAY));
        assert_eq!(wf.failed_since(), t0());
    }

    #[test]
    fn success_on_second_spare_attempt_heals_and_ends() {
        let t = Timings::default();
        let clock = ManualClock::new(t0());
        let mut wf = Workflow::new(t0());
        let answer = |a: &Attempt, _: SystemTime| match (a.action, a.number) {
            (Action::AssignSpare, 2) => Ok(()),
            _ => Err("no".to_string()),
        };
        let log = drive(&mut wf, &t, &clock, t0() + 10 * DAY, answer, never_blocked);
        let attempts = started(&log);
        assert_eq!(attempts.len(), 5);
        assert_eq!(attempts[4].0, t0() + minutes(25) + HOUR);
        assert_eq!(
            log.last(),
            Some(&(t0() + minutes(25) + HOUR, Notice::Healed))
        );
        assert_eq!(log.iter().filter(|(_, n)| *n == Notice::Healed).count(), 1);
        assert_eq!(wf.step(), Step::Done);
        assert_eq!(wf.next_at(&t), None);
        assert_eq!(wf.running(), None);
        // Nothing moves afterwards, not even a stray `finished`.
        wf.finished(&t, clock.now(), Err("late".into()));
        assert_eq!(
            wf.poll(&t, clock.now() + 30 * DAY, Some(Reason::NoSourceCopy)),
            None
        );
        assert!(wf.take_notices().is_empty());
        assert_eq!(wf.step(), Step::Done);
    }

    #[test]
    fn every_reason_holds_a_due_attempt_back_once() {
        let t = Timings::default();
        for reason in Reason::ALL {
            let clock = ManualClock::new(t0());
            let mut wf = Workflow::new(t0());
            // Resume #2 is due at +20m; the blocker is present from +18m to +50m.
            let blocker = |now: SystemTime| {
                (now >= t0() + minutes(18) && now < t0() + minutes(50)).then_some(reason)
            };
            let log = drive(&mut wf, &t, &clock, t0() + minutes(19), fail_all, blocker);
            assert_eq!(started(&log).len(), 1);
            assert_eq!(
                wf.blocked(),
                None,
                "{reason}: not blocked before an attempt is due"
            );

            let log = drive(&mut wf, &t, &clock, t0() + minutes(50), fail_all, blocker);
            assert_eq!(
                started(&log),
                vec![],
                "{reason}: an attempt ran while blocked"
            );
            assert_eq!(
                wf.attempt(),
                1,
                "{reason}: an attempt was consumed while blocked"
            );
            assert_eq!(wf.blocked(), Some(reason));
            assert_eq!(wf.next_at(&t), Some(t0() + minutes(20)));
            assert_eq!(log, vec![(t0() + minutes(20), Notice::Blocked(reason))]);

            let log = drive(&mut wf, &t, &clock, t0() + minutes(56), fail_all, blocker);
            assert_eq!(log[0], (t0() + minutes(50), Notice::Unblocked(reason)));
            let a = started(&log);
            assert_eq!(
                a.len(),
                3,
                "{reason}: resume #2, #3, then the first spare attempt"
            );
            assert_eq!((a[0].0, a[0].1.number), (t0() + minutes(50), 2));
            assert_eq!((a[1].0, a[1].1.number), (t0() + minutes(55), 3));
            assert_eq!(
                (a[2].0, a[2].1.action),
                (t0() + minutes(55), Action::AssignSpare)
            );
            assert_eq!(wf.blocked(), None);
        }
    }

    #[test]
    fn a_changed_blocker_is_reported_once_per_reason() {
        let t = Timings::default();
        let clock = ManualClock::new(t0());
        let mut wf = Workflow::new(t0());
        let blocker = |now: SystemTime| {
            if now < t0() + minutes(30) {
                Some(Reason::ReseedBlocked)
            } else if now < t0() + minutes(40) {
                Some(Reason::TooManyFailedCopies)
            } else {
                None
            }
        };
        let log = drive(&mut wf, &t, &clock, t0() + minutes(41), fail_all, blocker);
        let blocks: Vec<_> = log
            .into_iter()
            .filter(|(_, n)| matches!(n, Notice::Blocked(_) | Notice::Unblocked(_)))
            .collect();
        assert_eq!(
            blocks,
            vec![
                (t0() + minutes(15), Notice::Blocked(Reason::ReseedBlocked)),
                (
                    t0() + minutes(30),
                    Notice::Blocked(Reason::TooManyFailedCopies)
                ),
                (
                    t0() + minutes(40),
                    Notice::Unblocked(Reason::TooManyFailedCopies)
                ),
            ]
        );
        assert_eq!(wf.attempt(), 1);
    }

    #[test]
    fn a_blocker_during_dwell_does_not_delay_the_start() {
        let t = Timings::default();
        let clock = ManualClock::new(t0());
        let mut wf = Workflow::new(t0());
        let blocker =
            |now: SystemTime| (now < t0() + minutes(15)).then_some(Reason::HealthyCopyOnVolume);
        let log = drive(&mut wf, &t, &clock, t0() + minutes(16), fail_all, blocker);
        assert_eq!(log[0], (t0() + minutes(15), Notice::Started));
        assert_eq!(started(&log)[0].0, t0() + minutes(15));
        assert!(!log.iter().any(|(_, n)| matches!(n, Notice::Blocked(_))));

        // A blocker still present when the dwell ends holds the first attempt, not the start.
        let clock = ManualClock::new(t0());
        let mut wf = Workflow::new(t0());
        let blocker = |now: SystemTime| (now < t0() + minutes(17)).then_some(Reason::NoSourceCopy);
        let log = drive(&mut wf, &t, &clock, t0() + minutes(18), fail_all, blocker);
        let at = t0() + minutes(15);
        assert_eq!(
            log[..2],
            [
                (at, Notice::Started),
                (at, Notice::Blocked(Reason::NoSourceCopy))
            ]
        );
        assert_eq!(started(&log)[0].0, t0() + minutes(17));
    }

    #[test]
    fn failed_since_in_the_past_starts_at_the_first_poll() {
        let t = Timings::default();
        let clock = ManualClock::new(t0());
        let mut wf = Workflow::new(t0() - 2 * HOUR);
        let log = drive(&mut wf, &t, &clock, t0() + MIN, fail_all, never_blocked);
        assert_eq!(log[0], (t0(), Notice::Started));
        assert_eq!(started(&log)[0].0, t0());
        // The cycle counts from the start, not from failed_since.
        let log = drive(
            &mut wf,
            &t,
            &clock,
            t0() + 3 * DAY + MIN,
            fail_all,
            never_blocked,
        );
        assert_eq!(
            log.last(),
            Some(&(
                t0() + 3 * DAY,
                Notice::AttemptFailed {
                    attempt: Attempt {
                        action: Action::Resume,
                        number: 1,
                        of: 3
                    },
                    error: "Resume failed".into(),
                    next_at: Some(t0() + 3 * DAY + 5 * MIN),
                }
            ))
        );
    }

    #[test]
    fn disabled_freezes_everything_but_the_clock() {
        let on = Timings::default();
        let off = Timings {
            enabled: false,
            ..Timings::default()
        };
        let clock = ManualClock::new(t0());
        let mut wf = Workflow::new(t0());
        let log = drive(&mut wf, &off, &clock, t0() + DAY, fail_all, never_blocked);
        assert!(log.is_empty());
        assert_eq!(wf.step(), Step::Dwell);
        assert_eq!(wf.next_at(&off), None);
        assert_eq!(wf.next_at(&on), Some(t0() + 15 * MIN));

        // Enabled a day later: starts at once, the dwell having long passed.
        let log = drive(
            &mut wf,
            &on,
            &clock,
            t0() + DAY + 6 * MIN,
            fail_all,
            never_blocked,
        );
        let a = started(&log);
        assert_eq!(log[0], (t0() + DAY, Notice::Started));
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].0, t0() + DAY);

        // Disabled mid-step: the due attempt waits, even through a blocker, and runs on enable.
        let log = drive(&mut wf, &off, &clock, t0() + 2 * DAY, fail_all, |_| {
            Some(Reason::LayoutSplit)
        });
        assert!(log.is_empty());
        assert_eq!(
            (wf.step(), wf.attempt(), wf.blocked()),
            (Step::Resume, 2, None)
        );
        let log = drive(
            &mut wf,
            &on,
            &clock,
            t0() + 2 * DAY + MIN,
            fail_all,
            never_blocked,
        );
        assert_eq!(
            started(&log)[0],
            (
                t0() + 2 * DAY,
                Attempt {
                    action: Action::Resume,
                    number: 3,
                    of: 3
                }
            )
        );
    }

    #[test]
    fn zero_attempt_steps_are_entered_and_left_at_once() {
        let t = Timings {
            resume_attempts: 0,
            ..Timings::default()
        };
        let clock = ManualClock::new(t0());
        let mut wf = Workflow::new(t0());
        let log = drive(
            &mut wf,
            &t,
            &clock,
            t0() + 16 * MIN,
            fail_all,
            never_blocked,
        );
        let at = t0() + 15 * MIN;
        assert_eq!(
            log[..3],
            [
                (at, Notice::Started),
                (
                    at,
                    Notice::StepChanged {
                        from: Step::Resume,
                        to: Step::AssignSpare
                    }
                ),
                (
                    at,
                    Notice::AttemptStarted(Attempt {
                        action: Action::AssignSpare,
                        number: 1,
                        of: 5
                    })
                ),
            ]
        );

        let t = Timings {
            spare_attempts: 0,
            ..Timings::default()
        };
        let clock = ManualClock::new(t0());
        let mut wf = Workflow::new(t0());
        let log = drive(
            &mut wf,
            &t,
            &clock,
            t0() + 26 * MIN,
            fail_all,
            never_blocked,
        );
        let steps: Vec<_> = log
            .iter()
            .filter(|(_, n)| matches!(n, Notice::StepChanged { .. }))
            .cloned()
            .collect();
        let at = t0() + 25 * MIN;
        assert_eq!(
            steps,
            [
                (
                    at,
                    Notice::StepChanged {
                        from: Step::Resume,
                        to: Step::AssignSpare
                    }
                ),
                (
                    at,
                    Notice::StepChanged {
                        from: Step::AssignSpare,
                        to: Step::SeedInPlace
                    }
                ),
            ]
        );
        assert_eq!(
            started(&log).last().map(|(at, a)| (*at, a.action)),
            Some((at, Action::SeedInPlace))
        );

        // No attempts at all: one stop per cycle, one reset per poll at most.
        let t = Timings {
            resume_attempts: 0,
            spare_attempts: 0,
            seed_attempts: 0,
            reset_after: Duration::ZERO,
            ..Timings::default()
        };
        let mut wf = Workflow::new(t0());
        assert_eq!(wf.poll(&t, t0() + 15 * MIN, None), None);
        assert_eq!(wf.step(), Step::Stopped);
        assert_eq!(
            wf.take_notices().last(),
            Some(&Notice::Stopped {
                reset_at: t0() + 15 * MIN
            })
        );
        assert_eq!(wf.poll(&t, t0() + 16 * MIN, None), None);
        assert_eq!(wf.take_notices().first(), Some(&Notice::Reset));
    }

    #[test]
    fn next_at_follows_the_workflow() {
        let t = Timings::default();
        let mut wf = Workflow::new(t0());
        assert_eq!(wf.next_at(&t), Some(t0() + 15 * MIN));
        assert_eq!((wf.attempt(), wf.attempts_allowed(&t)), (0, 0));
        assert_eq!(wf.poll(&t, t0() + 14 * MIN, None), None);

        let now = t0() + 15 * MIN;
        let a = wf.poll(&t, now, None).unwrap();
        assert_eq!(
            a,
            Attempt {
                action: Action::Resume,
                number: 1,
                of: 3
            }
        );
        assert_eq!((wf.attempt(), wf.attempts_allowed(&t)), (1, 3));
        assert_eq!(wf.next_at(&t), None, "running");

        // The interval counts from the end of the failed attempt.
        let end = now + 7 * MIN;
        wf.finished(&t, end, Err("probe timed out".into()));
        assert_eq!(wf.next_at(&t), Some(end + 5 * MIN));
        assert_eq!(wf.last_error(), Some("probe timed out"));
        assert_eq!(wf.poll(&t, end + 4 * MIN, None), None);

        // Blocked past its due time: next_at stays at the due time.
        assert_eq!(
            wf.poll(&t, end + 6 * MIN, Some(Reason::ReseedBlocked)),
            None
        );
        assert_eq!(wf.next_at(&t), Some(end + 5 * MIN));

        // Through the end of Resume, into AssignSpare, due now.
        for n in 2..=3 {
            let at = end + 10 * MIN * n;
            wf.poll(&t, at, None).unwrap();
            wf.finished(&t, at, Err("again".into()));
        }
        assert_eq!(wf.step(), Step::AssignSpare);
        assert_eq!(wf.next_at(&t), Some(end + 30 * MIN));
        assert_eq!((wf.attempt(), wf.attempts_allowed(&t)), (0, 5));

        // Stopped: next_at is the reset, cycle start + reset_after.
        let mut at = end + 30 * MIN;
        while wf.step() != Step::Stopped {
            wf.poll(&t, at, None).unwrap();
            wf.finished(&t, at, Err("again".into()));
            at += HOUR;
        }
        assert_eq!(wf.next_at(&t), Some(now + 3 * DAY));
        assert_eq!(wf.attempts_allowed(&t), 0);
        assert_eq!(wf.poll(&t, now + 3 * DAY - MIN, None), None);
        assert_eq!(wf.step(), Step::Stopped);
        assert!(wf.poll(&t, now + 3 * DAY, None).is_some());
        assert_eq!(wf.step(), Step::Resume);
    }

    #[test]
    fn first_blocker_checks_in_order() {
        let mut c = Checks {
            reseed_blocked: true,
            resume_blocked: true,
            layout_split: true,
            naming_ok: false,
            active_on_volume: true,
            healthy_on_volume: true,
            failed_copies_on_host: 9,
            max_failed_copies: 8,
            source_available: false,
        };
        let clears: [fn(&mut Checks); 8] = [
            |c| c.reseed_blocked = false,
            |c| c.resume_blocked = false,
            |c| c.layout_split = false,
            |c| c.naming_ok = true,
            |c| c.active_on_volume = false,
            |c| c.healthy_on_volume = false,
            |c| c.failed_copies_on_host = 8,
            |c| c.source_available = true,
        ];
        for (reason, clear) in Reason::ALL.into_iter().zip(clears) {
            assert_eq!(first_blocker(&c), Some(reason));
            clear(&mut c);
        }
        assert_eq!(
            first_blocker(&c),
            None,
            "8 failed copies of 8 allowed is fine"
        );
        // Each reason on its own.
        let clear = c;
        for (i, reason) in Reason::ALL.into_iter().enumerate() {
            let mut one = clear;
            match i {
                0 => one.reseed_blocked = true,
                1 => one.resume_blocked = true,
                2 => one.layout_split = true,
                3 => one.naming_ok = false,
                4 => one.active_on_volume = true,
                5 => one.healthy_on_volume = true,
                6 => one.failed_copies_on_host = 9,
                _ => one.source_available = false,
            }
            assert_eq!(first_blocker(&one), Some(reason));
        }
    }

    #[test]
    fn names_codes_and_serde_agree() {
        for reason in Reason::ALL {
            assert_eq!(
                serde_json::to_string(&reason).unwrap(),
                format!("\"{}\"", reason.code())
            );
            assert_eq!(reason.to_string(), reason.code());
            assert!(reason.describe().ends_with('.'));
        }
        for step in [
            Step::Dwell,
            Step::Resume,
            Step::AssignSpare,
            Step::SeedInPlace,
            Step::Stopped,
            Step::Done,
        ] {
            assert_eq!(
                serde_json::to_string(&step).unwrap(),
                format!("\"{}\"", step.name())
            );
            assert_eq!(step.to_string(), step.name());
        }
        for action in [Action::Resume, Action::AssignSpare, Action::SeedInPlace] {
            assert_eq!(
                serde_json::to_string(&action).unwrap(),
                format!("\"{action}\"")
            );
        }
        assert_eq!(
            Reason::ReseedBlocked.remedy("db001", "Volume3"),
            "reseedfs unblock db001 --volume Volume3 --reseed"
        );
        assert_eq!(
            Reason::ResumeBlocked.remedy("db001", "Volume3"),
            "reseedfs unblock db001 --volume Volume3 --resume"
        );
        let mut wf = Workflow::new(t0());
        wf.poll(&Timings::default(), t0() + HOUR, Some(Reason::LayoutSplit));
        let json = serde_json::to_value(&wf).unwrap();
        assert_eq!(json["step"], "Resume");
        assert_eq!(json["blocked"], "LayoutSplit");
        assert!(json.get("notices").is_none());
    }
}
