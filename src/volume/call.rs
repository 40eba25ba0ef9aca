//! Calls to a volume: each handed to the volume's lane (or made at once on the calling
//! thread, or started in the kernel by it), then waited for until the volume's deadline
//! (`[volume] io_timeout`). What a missed deadline does is decided here: the call is
//! abandoned and answers a [`Timeout`], except for a volume that holds the last copy in
//! sync of a database, which a request thread waits for however long
//! ([`serve_requests`]). [`finish_first`] waits for one call per copy at once (a write,
//! an `fsync`) and keeps the last copies when none answered in time; [`chain`] hands
//! small writes to every copy to one lane thread.
//!
//! The thread flags that steer where a call is made ([`on_this_thread`], [`held_back`],
//! [`within_deadlines`]) are here too: they only change how [`Volume::submit`] and
//! [`Volume::finish`] behave on the calling thread.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Backend, ChainWrite, Panicked, Started, Timeout, Volume, lane};

thread_local! {
    /// This thread serves the databases' requests ([`serve_requests`]).
    static SERVING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the calling thread as one that serves the databases' requests (the platform
/// adapters call it for each request). On such a thread, an operation on a volume that
/// holds the last copy in sync of a database is waited for past its deadline, however
/// long ([`Volume::finish`]): the database waits as it would on the disk itself, where
/// failing the volume would give it EIO for a disk that is slow (a loaded host) or may
/// answer yet. The daemon's own threads (checkpoints, reseeds, status) never wait past a
/// deadline, nor does work under the pool's state lock ([`within_deadlines`]).
pub fn serve_requests() {
    SERVING.with(|s| s.set(true));
}

thread_local! {
    /// Calls handed to a volume are made on this thread ([`on_this_thread`]).
    static HERE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the calling thread serves the databases' requests ([`serve_requests`]).
pub fn serving_requests() -> bool {
    SERVING.with(std::cell::Cell::get)
}

/// Whether calls handed to a volume are made on the calling thread now
/// ([`on_this_thread`]).
pub fn makes_here() -> bool {
    HERE.with(std::cell::Cell::get)
}

/// Runs `f`, in which every call handed to a volume ([`Volume::submit`]) is made at once
/// on the calling thread instead of on the volume's lane. For a request thread writing to
/// a database's only copy in sync, which waits for that copy however long anyway
/// ([`serve_requests`]): the lane's hand-off and its two wake-ups per call are saved.
pub fn on_this_thread<R>(f: impl FnOnce() -> R) -> R {
    with_flag(&HERE, true, f)
}

thread_local! {
    /// Calls handed to a volume are held back, to be chained ([`held_back`]).
    static HOLD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, in which every call handed to a volume's lane ([`Volume::submit`]) is held
/// back instead ([`Call::Held`]), for [`chain`] to hand them all to one lane thread. A
/// held call waited for on its own is handed to its lane then.
pub fn held_back<R>(f: impl FnOnce() -> R) -> R {
    with_flag(&HOLD, true, f)
}

/// Runs `f` with every deadline kept, even on a request thread.
pub fn within_deadlines<R>(f: impl FnOnce() -> R) -> R {
    with_flag(&SERVING, false, f)
}

/// Runs `f` with this thread's `flag` set to `value`, then puts it back (also when `f`
/// panics).
fn with_flag<R>(
    flag: &'static std::thread::LocalKey<std::cell::Cell<bool>>,
    value: bool,
    f: impl FnOnce() -> R,
) -> R {
    struct Restore(&'static std::thread::LocalKey<std::cell::Cell<bool>>, bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            self.0.with(|s| s.set(self.1));
        }
    }
    let _restore = Restore(flag, flag.with(|s| s.replace(value)));
    f()
}

impl Volume {
    /// Runs `f` on the volume's lane, within the deadline. A volume already failed
    /// answers `EIO` at once: nothing more is queued behind a dead disk. A request on a
    /// volume that holds the last copy in sync of a database waits for it however long
    /// anyway ([`serve_requests`]): there `f` is made at once on the calling thread,
    /// without the lane's hand-off and its two wake-ups (a stat, an xattr, an open).
    pub(super) fn call<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&dyn Backend) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let deadline = Instant::now() + self.limits.io_timeout;
        if !makes_here() && self.waits_on_late() {
            return on_this_thread(|| self.finish(op, self.submit(op, f), deadline));
        }
        self.finish(op, self.submit(op, f), deadline)
    }

    /// Hands `f` to the lane without waiting: for calls that go to several volumes at
    /// once; [`Volume::finish`] waits for the answer. Inside [`on_this_thread`], `f` is
    /// made at once on the calling thread instead.
    pub fn submit<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&dyn Backend) -> io::Result<T> + Send + 'static,
    ) -> Call<T> {
        if makes_here() {
            return self.make_here(op, f);
        }
        if self.is_failed() {
            return Call::Refused(op);
        }
        let backend = self.backend.clone();
        if HOLD.with(std::cell::Cell::get) {
            return Call::Held {
                op,
                started: Instant::now(),
                call: lane::Call::new(move || f(&*backend)),
            };
        }
        Call::Pending {
            op,
            started: Instant::now(),
            pending: self.lane.submit(move || f(&*backend)),
        }
    }

    /// Runs `f` as one call (one hand-off to the lane, one deadline), in which every
    /// call `f` makes on this volume is made at once on the thread that runs it
    /// ([`on_this_thread`]): work of several calls (a checksum store's open, `fstat` and
    /// truncation) for one lane hand-off. `f` must take no lock a caller waiting for a
    /// lane could hold.
    pub fn calls<T: Send + 'static>(
        self: &Arc<Self>,
        op: &'static str,
        f: impl FnOnce(&Volume) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let v = self.clone();
        self.call(op, move |_| on_this_thread(|| f(&v)))
    }

    /// Makes `f` at once on the calling thread, as [`Volume::submit`] does inside
    /// [`on_this_thread`]; `f` may borrow (a write from the request's own buffer).
    pub fn make_here<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&dyn Backend) -> io::Result<T>,
    ) -> Call<T> {
        if self.is_failed() {
            return Call::Refused(op);
        }
        let started = Instant::now();
        let answer = f(&*self.backend);
        Call::Made { started, answer }
    }

    /// Starts `chain` from the calling thread when the backend can
    /// ([`Backend::start_writes`]): the call's answer is the chain's, `redo` makes the
    /// writes again through the lane when the kernel refused them in a way it handles (a
    /// short write, `O_DIRECT` refused: `EINVAL`), and `after(ok)` runs once the answer is
    /// known (also when the deadline passed). `None` when the backend cannot now (the
    /// caller submits to the lane) or the volume is failed.
    pub fn start_writes(
        &self,
        op: &'static str,
        chain: Vec<ChainWrite>,
        redo: impl FnOnce(&dyn Backend) -> io::Result<()> + Send + 'static,
        after: impl FnOnce(bool) + 'static,
    ) -> Option<Call<()>> {
        if self.is_failed() {
            return None;
        }
        let writes = self.backend.start_writes(chain)?;
        Some(Call::Started(Box::new(StartedCall {
            op,
            started: Instant::now(),
            writes,
            done: (),
            redo: Box::new(redo),
            after: Box::new(after),
        })))
    }

    /// The answer of `call` (made by [`Volume::submit`] or [`Volume::start_writes`]), or
    /// a [`Timeout`] error when it did not come by `deadline`.
    pub fn finish<T: Send + 'static>(
        &self,
        op: &'static str,
        call: Call<T>,
        deadline: Instant,
    ) -> io::Result<T> {
        let mut call = match self.answer_by(op, call, deadline) {
            Waited::Answered(r) => return r,
            Waited::Late(call) => call,
        };
        if !self.waits_on_late() {
            return self.give_up(op, call, deadline);
        }
        let late = Instant::now();
        tracing::warn!(
            "{} did not answer {op} within {} and holds the last copy in sync of a database: \
             waiting for it (as the database would on the disk itself)",
            self.name,
            humantime::format_duration(self.limits.io_timeout)
        );
        loop {
            match self.answer_by(op, call, Instant::now() + LATE_RECHECK) {
                Waited::Answered(r) => {
                    tracing::warn!(
                        "{} answered {op} {} after its deadline",
                        self.name,
                        humantime::format_duration(Duration::from_millis(
                            late.elapsed().as_millis() as u64
                        ))
                    );
                    return r;
                }
                // Another copy came in sync meanwhile: this one may be failed now.
                Waited::Late(c) if !self.waits_on_late() => {
                    return self.give_up(op, c, deadline);
                }
                Waited::Late(c) => call = c,
            }
        }
    }

    /// Waits for `call` until `until`: its answer, or the call itself, still on its way
    /// (wait again, or [`Volume::give_up`] on it).
    fn answer_by<T: Send + 'static>(
        &self,
        op: &'static str,
        call: Call<T>,
        until: Instant,
    ) -> Waited<T> {
        let r = match call {
            Call::Refused(_) => Err(io::Error::from_raw_os_error(libc::EIO)),
            Call::Held { op, started, call } => {
                let pending = self.lane.submit(move || call.make());
                return self.answer_by(
                    op,
                    Call::Pending {
                        op,
                        started,
                        pending,
                    },
                    until,
                );
            }
            Call::Made { started, answer } => {
                self.note_duration(started.elapsed());
                answer
            }
            Call::Started(mut c) => {
                let Some(r) = c.writes.wait_until(until) else {
                    return Waited::Late(Call::Started(c));
                };
                let StartedCall {
                    started,
                    done,
                    redo,
                    after,
                    ..
                } = *c;
                let r = match r {
                    // Refused in a way the lane handles: made again there.
                    Err(e)
                        if e.kind() == io::ErrorKind::Interrupted
                            || e.raw_os_error() == Some(libc::EINVAL) =>
                    {
                        self.finish(op, self.submit(op, redo), self.deadline())
                    }
                    r => r.map(|()| done),
                };
                self.note_duration(started.elapsed());
                after(r.is_ok());
                r
            }
            Call::Pending {
                op: call_op,
                started,
                pending,
            } => {
                let Some(r) = pending.answer_by(until) else {
                    return Waited::Late(Call::Pending {
                        op: call_op,
                        started,
                        pending,
                    });
                };
                self.note_duration(started.elapsed());
                match r {
                    Ok(r) => r,
                    Err(lane::Unanswered::Elapsed) => {
                        Err(timeout(&self.name, op, started.elapsed()))
                    }
                    Err(lane::Unanswered::Panicked(message)) => Err(io::Error::other(Panicked {
                        volume: self.name.to_string(),
                        op,
                        message,
                    })),
                }
            }
        };
        Waited::Answered(r)
    }

    /// Gives up on `call`, whose `deadline` passed: its answer if it has one without
    /// waiting (refused, made here), else it is abandoned (not made if it is still
    /// queued; writes the kernel has keep their buffers until it completes them) and
    /// answers a [`Timeout`].
    fn give_up<T>(&self, op: &'static str, call: Call<T>, deadline: Instant) -> io::Result<T> {
        match call {
            Call::Refused(_) => Err(io::Error::from_raw_os_error(libc::EIO)),
            Call::Made { answer, .. } => answer,
            Call::Held { started, .. } => Err(timeout(
                &self.name,
                op,
                deadline.saturating_duration_since(started),
            )),
            Call::Started(c) => {
                let StartedCall {
                    started,
                    writes,
                    after,
                    ..
                } = *c;
                drop(writes);
                self.note_duration(started.elapsed());
                after(false);
                Err(timeout(
                    &self.name,
                    op,
                    deadline.saturating_duration_since(started),
                ))
            }
            Call::Pending {
                started, pending, ..
            } => {
                pending.abandon();
                self.note_duration(started.elapsed());
                Err(timeout(
                    &self.name,
                    op,
                    deadline.saturating_duration_since(started),
                ))
            }
        }
    }
}

/// A call handed to a volume's lane ([`Volume::submit`]); [`Volume::finish`] waits for it.
#[derive(Debug)]
pub enum Call<T> {
    /// On its way.
    Pending {
        /// The operation, for the timeout's message.
        op: &'static str,
        /// When it was handed over.
        started: Instant,
        /// The answer to come.
        pending: lane::Pending<io::Result<T>>,
    },
    /// Handed to the kernel by the calling thread ([`Volume::start_writes`]).
    Started(Box<StartedCall<T>>),
    /// Held back ([`held_back`]), not handed to the lane yet: [`chain`] hands it over
    /// with others, or waiting for it hands it over on its own.
    Held {
        /// The operation.
        op: &'static str,
        /// When it was held back.
        started: Instant,
        /// The call, for a lane thread.
        call: lane::Call<io::Result<T>>,
    },
    /// Made on the calling thread ([`on_this_thread`]): its answer.
    Made {
        /// When it was made.
        started: Instant,
        /// Its answer.
        answer: io::Result<T>,
    },
    /// Not made: the volume is failed.
    Refused(&'static str),
}

/// What waiting for a [`Call`] until some time brought.
enum Waited<T> {
    /// Its answer.
    Answered(io::Result<T>),
    /// Nothing yet: the call, still on its way.
    Late(Call<T>),
}

/// How often calls that are all past their deadline are looked at again
/// ([`finish_first`]).
const LATE_POLL: Duration = Duration::from_millis(5);

/// How often a late call on a volume holding a database's last copy asks again whether it
/// still does ([`Volume::finish`]).
const LATE_RECHECK: Duration = Duration::from_millis(500);

/// Waits for calls made to several volumes at once (one per copy of a database: a write,
/// an `fsync`, an activity log record), each until its own deadline (`calls[k]`: the
/// volume, the call, its deadline), and puts each answer in `results[k]`, telling
/// `answered(k, &result)` as it comes. Calls this thread started itself are waited for
/// first: they may hold stripe locks a lane call needs.
///
/// A call past its deadline answers a [`Timeout`], and its volume is failed as a dead
/// disk's would be, because another copy took the operation in time. But when no call
/// that `decides(k)` (an in-sync copy, not one being seeded) has succeeded by its
/// deadline, failing the late ones would fail the last copies of the database for being
/// slow: a host too loaded to meet any deadline, or every disk hanging at once. Then the
/// late calls are waited for on, however long, until one that decides succeeds (the
/// calls still late then answer [`Timeout`]) or every call has answered. `what` names
/// the database for the warning.
pub fn finish_first<T: Send + 'static>(
    what: &dyn std::fmt::Display,
    op: &'static str,
    calls: &mut [Option<(&Volume, Call<T>, Instant)>],
    results: &mut [Option<io::Result<T>>],
    decides: impl Fn(usize) -> bool,
    mut answered: impl FnMut(usize, &io::Result<T>),
) {
    debug_assert_eq!(calls.len(), results.len());
    // Call k, waited for until `until` (or its deadline): its answer to `results[k]`.
    let mut wait = |calls: &mut [Option<(&Volume, Call<T>, Instant)>],
                    results: &mut [Option<io::Result<T>>],
                    k: usize,
                    until: Option<Instant>| {
        if let Some((v, call, deadline)) = calls[k].take() {
            match v.answer_by(op, call, until.unwrap_or(deadline)) {
                Waited::Answered(r) => {
                    answered(k, &r);
                    results[k] = Some(r);
                }
                Waited::Late(call) => calls[k] = Some((v, call, deadline)),
            }
        }
    };
    for started_pass in [true, false] {
        for k in 0..calls.len() {
            if matches!(calls[k], Some((_, Call::Started(_), _))) == started_pass {
                wait(calls, results, k, None);
            }
        }
    }
    let succeeded = |results: &[Option<io::Result<T>>]| {
        (0..results.len()).any(|k| decides(k) && matches!(results[k], Some(Ok(_))))
    };
    if !succeeded(results) && (0..calls.len()).any(|k| decides(k) && calls[k].is_some()) {
        let late: Vec<String> = calls
            .iter()
            .flatten()
            .map(|(v, ..)| v.name().to_string())
            .collect();
        let since = Instant::now();
        tracing::warn!(
            "{what}: {op} missed its deadline on {} and no copy took it in time: waiting for \
             the first to answer rather than failing every copy (a host too busy to meet \
             io_timeout, or every disk hanging)",
            late.join(", ")
        );
        while !succeeded(results) && (0..calls.len()).any(|k| decides(k) && calls[k].is_some()) {
            for k in 0..calls.len() {
                wait(calls, results, k, Some(Instant::now() + LATE_POLL));
            }
        }
        tracing::warn!(
            "{what}: {op} answered {} after its deadline",
            humantime::format_duration(Duration::from_millis(since.elapsed().as_millis() as u64))
        );
    }
    for k in 0..calls.len() {
        if let Some((v, call, deadline)) = calls[k].take() {
            let r = v.give_up(op, call, deadline);
            answered(k, &r);
            results[k] = Some(r);
        }
    }
}

/// Hands the calls held back among `calls` ([`held_back`]; `calls[k]`: the volume, the
/// call, its deadline) to one thread of the first one's volume lane, as one chain
/// ([`lane::Lane::submit_chain`]): a small buffered write to every copy of a database
/// costs one hand-off and one wake-up instead of one per copy. Waits for the chain until
/// an eighth of that volume's `io_timeout`; calls its thread has not started by then
/// (it is stuck on a hung disk, or still queued) are taken back and handed each to its
/// own volume's lane, so that a copy still answers within its deadline when another
/// copy's disk hangs.
pub fn chain<T: Send + 'static>(calls: &mut [Option<(&Volume, Call<T>, Instant)>]) {
    let mut held = Vec::new();
    let mut jobs = Vec::new();
    for (k, slot) in calls.iter_mut().enumerate() {
        match slot.take() {
            Some((v, Call::Held { op, started, call }, deadline)) => {
                held.push((k, v, op, started, deadline));
                jobs.push(call);
            }
            other => *slot = other,
        }
    }
    let Some(&(_, lead, ..)) = held.first() else {
        return;
    };
    let pendings = lead.lane.submit_chain(jobs);
    // Once the last call has answered, the chain's thread has taken every call and none
    // is left to take back.
    if let Some(last) = pendings.last() {
        last.answered_by(Instant::now() + lead.limits.io_timeout / 8);
    }
    for ((k, v, op, started, deadline), pending) in held.into_iter().zip(pendings) {
        let pending = match pending.take_back() {
            Some(call) => v.lane.submit(move || call.make()),
            None => pending,
        };
        let call = Call::Pending {
            op,
            started,
            pending,
        };
        calls[k] = Some((v, call, deadline));
    }
}

/// [`finish_first`] for calls that all decide (one per copy in sync), each with its
/// volume's deadline from now: their answers, in order.
pub fn finish_all<'a, T: Send + 'static>(
    what: &dyn std::fmt::Display,
    op: &'static str,
    calls: impl IntoIterator<Item = (&'a Volume, Call<T>)>,
) -> Vec<io::Result<T>> {
    let mut calls: Vec<_> = calls
        .into_iter()
        .map(|(v, call)| Some((v, call, v.deadline())))
        .collect();
    let mut results: Vec<_> = calls.iter().map(|_| None).collect();
    finish_first(what, op, &mut calls, &mut results, |_| true, |_, _| {});
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(io::Error::from_raw_os_error(libc::EIO))))
        .collect()
}

/// A chain of writes started by the calling thread: its wait, what makes the writes again
/// through the lane when the kernel refused them in a way the lane handles (a short
/// write, `O_DIRECT` refused), and what is done after either.
pub struct StartedCall<T> {
    op: &'static str,
    started: Instant,
    writes: Box<dyn Started>,
    /// The call's answer when the writes succeed.
    done: T,
    redo: LaneCall<T>,
    after: Box<dyn FnOnce(bool)>,
}

/// A call for a volume's lane, boxed.
type LaneCall<T> = Box<dyn FnOnce(&dyn Backend) -> io::Result<T> + Send>;

impl<T> std::fmt::Debug for StartedCall<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartedCall")
            .field("op", &self.op)
            .field("writes", &self.writes)
            .finish_non_exhaustive()
    }
}

/// The error of an operation that missed its deadline.
pub(super) fn timeout(volume: &str, op: &'static str, after: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        Timeout {
            volume: volume.to_owned(),
            op,
            after,
        },
    )
}
