//! A volume's lane: the threads that run its operations, so that no other thread waits on
//! the disk longer than a deadline.
//!
//! A disk that dies slowly does not fail its I/O: it stops answering, and the kernel
//! retries for minutes while every thread that touched it sleeps uninterruptibly (a
//! frozen filesystem does the same). No signal wakes such a thread. So the thread that
//! asks never makes the call itself: it hands the call to the volume's lane and waits for
//! the answer until its deadline. Past it, the caller goes on without the answer (the
//! volume is failed, see `copyset`), and the lane thread stays stuck in the kernel, alone;
//! when the call returns at last, its answer is dropped. A call still queued when its
//! caller gave up is never made.
//!
//! A lane grows a thread when every one of its threads is busy, up to [`MAX_THREADS`], and
//! a thread idle for `IDLE` ends; so a healthy volume under load has as many threads as
//! requests in flight, and an idle one keeps none.
//!
//! Calls cheap enough to make one after another (a small buffered write to each copy of
//! a database) can go to one lane as a chain ([`Lane::submit_chain`]): one thread makes
//! them in order, one hand-off and one wake-up for all. A call of the chain not started
//! yet can be taken back by its caller ([`Pending::take_back`]) and handed to its own
//! volume's lane, so that a chain stuck on a hung disk holds no other copy's call past
//! its deadline.
//!
//! Long calls that use descriptors of their own (a reseed's copy of a window) have a
//! deadline of another kind: no progress for `io_timeout`. They report each read and
//! write to a [`Watch`], and the caller waits with [`Pending::wait_while_progressing`].
//!
//! A call that panics (a bug) is answered [`Unanswered::Panicked`] with the panic's message,
//! and its thread goes on serving: the caller treats it as a failed I/O of that volume
//! (`Volume::finish`), so a write completes from the other copies, and the failure path
//! records the panic (event 3060). Unwinding through a lane thread would otherwise end it
//! for good, its caller would wait out the whole deadline, and the lane would count a
//! thread that no longer exists.

use std::collections::VecDeque;
use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// The most threads one lane runs (calls beyond wait in its queue).
pub const MAX_THREADS: usize = 64;

/// How long a lane thread waits for work before it ends.
const IDLE: Duration = Duration::from_secs(30);

type Job = Box<dyn FnOnce() + Send>;

/// The threads of one volume.
#[derive(Debug)]
pub struct Lane {
    name: String,
    shared: Arc<Shared>,
}

/// A lane's queue and threads. The queue and the answers below are a mutex and a condition
/// variable, not channels: a lane call takes tens of microseconds to milliseconds, and a
/// channel's receiver spins and yields before it sleeps, which on a machine with few cores
/// takes CPU from the very threads it waits for (measured: 12% of the daemon's CPU under
/// 4 KiB writes went to `sched_yield` and the channels' spinning).
struct Shared {
    queue: Mutex<Queue>,
    work: Condvar,
    /// Threads alive.
    threads: AtomicUsize,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Threads waiting for a job.
    idle: usize,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let q = self.queue.lock();
        f.debug_struct("Shared")
            .field("queued", &q.jobs.len())
            .field("idle", &q.idle)
            .field("threads", &self.threads.load(Ordering::Relaxed))
            .finish()
    }
}

/// Where a lane thread leaves one call's answer for its caller.
struct Slot<T> {
    state: Mutex<SlotState<T>>,
    ready: Condvar,
}

enum SlotState<T> {
    Waiting,
    Answered(Answer<T>),
    /// The call was dropped unmade (its caller gave up first) or its thread is gone.
    Dropped,
}

/// The lane's end of a [`Slot`]: answers once; dropped unanswered, it wakes the caller.
struct Reply<T>(Arc<Slot<T>>);

impl<T> Reply<T> {
    fn send(self, answer: Answer<T>) {
        let mut state = self.0.state.lock();
        *state = SlotState::Answered(answer);
        drop(state);
        self.0.ready.notify_one();
        // Drop finds the slot answered and does nothing more.
    }

    /// Makes `call` and sends its answer. A panic answers the call instead of ending the
    /// thread (see the module header). The call owns everything it touches: nothing
    /// shared is left half-changed for the next call on this thread.
    fn make(self, call: impl FnOnce() -> T) {
        let answer =
            std::panic::catch_unwind(AssertUnwindSafe(call)).map_err(|p| panic_message(&*p));
        self.send(answer);
    }
}

impl<T> Pending<T> {
    /// A call's wait, and the lane's end of it.
    fn new(link: Option<Link<T>>) -> (Pending<T>, Reply<T>) {
        let slot = Arc::new(Slot {
            state: Mutex::new(SlotState::Waiting),
            ready: Condvar::new(),
        });
        let reply = Reply(slot.clone());
        let pending = Pending {
            slot,
            abandoned: Arc::new(AtomicBool::new(false)),
            link,
        };
        (pending, reply)
    }
}

impl<T> Drop for Reply<T> {
    fn drop(&mut self) {
        let mut state = self.0.state.lock();
        if matches!(*state, SlotState::Waiting) {
            *state = SlotState::Dropped;
            drop(state);
            self.0.ready.notify_one();
        }
    }
}

impl<T> Slot<T> {
    /// The answer, or `None` when `deadline` (if any) passed or the call was dropped.
    fn wait(&self, deadline: Option<Instant>) -> Option<Answer<T>> {
        let mut state = self.state.lock();
        loop {
            match std::mem::replace(&mut *state, SlotState::Waiting) {
                SlotState::Answered(a) => return Some(a),
                SlotState::Dropped => {
                    *state = SlotState::Dropped;
                    return None;
                }
                SlotState::Waiting => {}
            }
            match deadline {
                Some(d) => {
                    if self.ready.wait_until(&mut state, d).timed_out()
                        && matches!(*state, SlotState::Waiting)
                    {
                        return None;
                    }
                }
                None => self.ready.wait(&mut state),
            }
        }
    }
}

/// Why a call handed to a lane brought no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unanswered {
    /// The answer did not come before the deadline.
    Elapsed,
    /// The call panicked (a bug); its thread goes on serving. The panic's message.
    Panicked(String),
}

/// What a lane thread sends back: the call's answer, or its panic's message.
type Answer<T> = Result<T, String>;

/// A call handed to a lane: wait for its answer with [`Pending::wait_until`].
pub struct Pending<T> {
    slot: Arc<Slot<T>>,
    abandoned: Arc<AtomicBool>,
    /// A call of a chain ([`Lane::submit_chain`]): here until the chain's thread takes it
    /// to make it, or its caller takes it back ([`Pending::take_back`]).
    link: Option<Link<T>>,
}

/// A chained call, made by whoever takes it first: the chain's thread or its caller.
type Link<T> = Arc<Mutex<Option<Call<T>>>>;

/// A call, as a lane thread makes it.
pub struct Call<T>(Box<dyn FnOnce() -> T + Send>);

impl<T> Call<T> {
    /// `f`, for a lane thread.
    pub fn new(f: impl FnOnce() -> T + Send + 'static) -> Call<T> {
        Call(Box::new(f))
    }

    /// Makes the call.
    pub fn make(self) -> T {
        (self.0)()
    }
}

impl<T> std::fmt::Debug for Call<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Call")
    }
}

impl<T> std::fmt::Debug for Pending<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("abandoned", &self.abandoned.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<T> Pending<T> {
    /// The answer, or [`Unanswered::Elapsed`] when it did not come by `deadline` (the
    /// call is then abandoned: not made if it is still queued, its answer dropped
    /// otherwise), or [`Unanswered::Panicked`].
    pub fn wait_until(self, deadline: Instant) -> Result<T, Unanswered> {
        match self.answer_by(deadline) {
            Some(answer) => answer,
            None => {
                self.abandon();
                Err(Unanswered::Elapsed)
            }
        }
    }

    /// The answer if it comes by `deadline`; `None` leaves the call on its way (wait
    /// again, or [`Pending::abandon`] it). A call its lane dropped unanswered is
    /// [`Unanswered::Elapsed`].
    pub fn answer_by(&self, deadline: Instant) -> Option<Result<T, Unanswered>> {
        match self.slot.wait(Some(deadline)) {
            Some(answer) => Some(answer.map_err(Unanswered::Panicked)),
            None if matches!(*self.slot.state.lock(), SlotState::Dropped) => {
                Some(Err(Unanswered::Elapsed))
            }
            None => None,
        }
    }

    /// Whether the call answered (or was dropped) by `deadline`, its answer left in place.
    pub fn answered_by(&self, deadline: Instant) -> bool {
        let mut state = self.slot.state.lock();
        while matches!(*state, SlotState::Waiting) {
            if self.slot.ready.wait_until(&mut state, deadline).timed_out() {
                return !matches!(*state, SlotState::Waiting);
            }
        }
        true
    }

    /// Gives the call up: not made if it is still queued, its answer dropped otherwise.
    pub fn abandon(self) {
        self.abandoned.store(true, Ordering::Release);
        // A chained call not made yet never will be.
        drop(self.take_back());
    }

    /// A chained call ([`Lane::submit_chain`]) that the chain's thread has not started
    /// yet, taken back from it: the chain passes it by, and the caller makes it some
    /// other way. `None` once the chain's thread has it (made or being made), and for a
    /// call handed to a lane on its own.
    pub fn take_back(&self) -> Option<Call<T>> {
        self.link.as_ref().and_then(|l| l.lock().take())
    }

    /// The answer, waiting as long as `stalled` (asked every `tick`) says the call is still
    /// making progress; once it says the call is stuck, [`Unanswered::Elapsed`] (the call
    /// is abandoned as by [`Pending::wait_until`]). For long calls whose deadline is "no
    /// progress for a while" rather than a fixed time (a reseed's copy of a window).
    pub fn wait_while_progressing(
        self,
        tick: Duration,
        mut stalled: impl FnMut() -> bool,
    ) -> Result<T, Unanswered> {
        loop {
            if let Some(answer) = self.slot.wait(Some(Instant::now() + tick)) {
                return answer.map_err(Unanswered::Panicked);
            }
            let dropped = matches!(*self.slot.state.lock(), SlotState::Dropped);
            if dropped || stalled() {
                self.abandoned.store(true, Ordering::Release);
                return Err(Unanswered::Elapsed);
            }
        }
    }
}

/// The message a panic carried (`panic!("...")` carries a `&str` or a `String`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

impl Lane {
    /// A lane for the volume `name` (threads are started on demand).
    pub fn new(name: &str) -> Lane {
        Lane {
            name: name.to_owned(),
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue::default()),
                work: Condvar::new(),
                threads: AtomicUsize::new(0),
            }),
        }
    }

    /// Hands `call` to the lane; its answer comes through the returned [`Pending`].
    pub fn submit<T: Send + 'static>(
        &self,
        call: impl FnOnce() -> T + Send + 'static,
    ) -> Pending<T> {
        let (pending, reply) = Pending::new(None);
        let gave_up = pending.abandoned.clone();
        self.queue(Box::new(move || {
            if !gave_up.load(Ordering::Acquire) {
                reply.make(call);
            }
        }));
        pending
    }

    /// Hands `calls` to the lane as one job: one of its threads makes them in order,
    /// so that calls cheap enough to make one after another (a small buffered write to
    /// each copy of a database) cost one hand-off and one wake-up instead of one per
    /// call. Each answers through its own [`Pending`], in order. A call its caller took
    /// back ([`Pending::take_back`]) or gave up before the thread came to it is passed by;
    /// a call that hangs holds the ones after it until their callers take them back.
    pub fn submit_chain<T: Send + 'static>(&self, calls: Vec<Call<T>>) -> Vec<Pending<T>> {
        let mut links = Vec::with_capacity(calls.len());
        let pendings = calls
            .into_iter()
            .map(|call| {
                let link = Arc::new(Mutex::new(Some(call)));
                let (pending, reply) = Pending::new(Some(link.clone()));
                links.push((link, pending.abandoned.clone(), reply));
                pending
            })
            .collect();
        self.queue(Box::new(move || {
            for (link, gave_up, reply) in links {
                let call = link.lock().take();
                if let Some(call) = call
                    && !gave_up.load(Ordering::Acquire)
                {
                    reply.make(|| call.make());
                }
            }
        }));
        pendings
    }

    /// Queues `job`, and starts a thread when none is idle to take it.
    fn queue(&self, job: Job) {
        let start_one = {
            let mut q = self.shared.queue.lock();
            q.jobs.push_back(job);
            q.idle < q.jobs.len()
        };
        self.shared.work.notify_one();
        if start_one {
            self.start_thread();
        }
    }

    /// Runs `call` on the lane and waits for its answer until `timeout` has passed.
    pub fn run<T: Send + 'static>(
        &self,
        timeout: Duration,
        call: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Unanswered> {
        self.submit(call).wait_until(Instant::now() + timeout)
    }

    /// Threads alive, and of those stuck in a call (not idle).
    pub fn threads(&self) -> (usize, usize) {
        let threads = self.shared.threads.load(Ordering::Relaxed);
        let idle = self.shared.queue.lock().idle;
        (threads, threads.saturating_sub(idle))
    }

    /// Starts a thread (a job is queued and no thread is idle), unless the lane is at
    /// [`MAX_THREADS`].
    fn start_thread(&self) {
        let s = &self.shared;
        let n = s.threads.fetch_add(1, Ordering::AcqRel);
        if n >= MAX_THREADS {
            s.threads.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("lane-{}", self.name))
            .spawn(move || worker(&shared));
        if let Err(e) = spawned {
            s.threads.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!("cannot start a thread for volume {}: {e}", self.name);
        }
    }
}

fn worker(s: &Shared) {
    loop {
        let job = {
            let mut q = s.queue.lock();
            loop {
                if let Some(job) = q.jobs.pop_front() {
                    break Some(job);
                }
                q.idle += 1;
                let timed_out = s.work.wait_for(&mut q, IDLE).timed_out();
                q.idle -= 1;
                if timed_out && q.jobs.is_empty() {
                    // Counted out under the queue's lock: a job queued after this finds
                    // one idle thread fewer, and starts a thread.
                    s.threads.fetch_sub(1, Ordering::AcqRel);
                    break None;
                }
            }
        };
        match job {
            Some(job) => job(),
            None => return,
        }
    }
}

/// A side of a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The volume read from.
    Source,
    /// The volume written to.
    Dest,
}

/// The requests in flight on each side of a copy, and when each last made progress.
#[derive(Debug)]
pub struct Watch {
    origin: Instant,
    sides: [SideWatch; 2],
    /// The caller gave up on the work: it stops at its next chunk (a hung disk that
    /// answers at last must not see the rest of an abandoned copy).
    abandoned: AtomicBool,
}

#[derive(Debug, Default)]
struct SideWatch {
    in_flight: AtomicU32,
    /// Milliseconds after `origin` of the last progress: a request ended, or one started
    /// with none in flight.
    progress_ms: AtomicU64,
}

impl Default for Watch {
    fn default() -> Self {
        Watch::new()
    }
}

impl Watch {
    /// A watch with nothing in flight.
    pub fn new() -> Watch {
        Watch {
            origin: Instant::now(),
            sides: Default::default(),
            abandoned: AtomicBool::new(false),
        }
    }

    /// The caller gave up on the work: [`Watch::check`] says so from now on.
    pub fn abandon(&self) {
        self.abandoned.store(true, Ordering::Relaxed);
    }

    /// `Err` once the caller gave up on the work: checked before each chunk.
    #[inline]
    pub fn check(&self) -> io::Result<()> {
        if self.abandoned.load(Ordering::Relaxed) {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "abandoned: a volume of the copy missed its deadline",
            ));
        }
        Ok(())
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn side(&self, side: Side) -> &SideWatch {
        &self.sides[side as usize]
    }

    /// A request on `side` starts.
    #[inline]
    pub fn begin(&self, side: Side) {
        let s = self.side(side);
        if s.in_flight.fetch_add(1, Ordering::AcqRel) == 0 {
            s.progress_ms.store(self.now_ms(), Ordering::Release);
        }
    }

    /// A request on `side` ended (done or failed).
    #[inline]
    pub fn end(&self, side: Side) {
        let s = self.side(side);
        s.progress_ms.store(self.now_ms(), Ordering::Release);
        s.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// Runs `f`, one request on `side`.
    #[inline]
    pub fn on<T>(&self, side: Side, f: impl FnOnce() -> T) -> T {
        self.begin(side);
        let r = f();
        self.end(side);
        r
    }

    /// The side that has had a request in flight and no progress for `idle`, if any (the
    /// one stuck longer when both are).
    pub fn stuck(&self, idle: Duration) -> Option<Side> {
        let now = self.now_ms();
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        [Side::Dest, Side::Source]
            .into_iter()
            .filter_map(|side| {
                let s = self.side(side);
                if s.in_flight.load(Ordering::Acquire) == 0 {
                    return None;
                }
                let quiet = now.saturating_sub(s.progress_ms.load(Ordering::Acquire));
                (quiet >= idle_ms).then_some((quiet, side))
            })
            .max_by_key(|&(quiet, _)| quiet)
            .map(|(_, side)| side)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stuck_call_leaves_its_caller_at_the_deadline_and_the_lane_serving() {
        let lane = Lane::new("VolumeT");
        let (release, stuck) = crossbeam_channel::bounded::<()>(0);
        let started = Instant::now();
        let r = lane.run(Duration::from_millis(100), move || {
            let _ = stuck.recv();
            1
        });
        assert_eq!(r, Err(Unanswered::Elapsed));
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(100), "{waited:?}");
        assert!(waited < Duration::from_secs(2), "{waited:?}");
        // Another call goes on a new thread while the first is still stuck.
        assert_eq!(lane.run(Duration::from_secs(5), || 2), Ok(2));
        assert_eq!(lane.threads().0, 2);
        drop(release);
    }

    #[test]
    fn a_chain_is_made_in_order_by_one_thread_and_a_call_taken_back_is_passed_by() {
        let lane = Lane::new("VolumeC");
        let names = |tag: &'static str| Call::new(move || (tag, std::thread::current().id()));
        let mut chain = lane.submit_chain(vec![names("a"), names("b"), names("c")]);
        let c = chain.pop().expect("c");
        let b = chain.pop().expect("b");
        let a = chain.pop().expect("a");
        let deadline = Instant::now() + Duration::from_secs(5);
        let (ta, tb) = (a.wait_until(deadline), b.wait_until(deadline));
        let (ta, tb) = (ta.expect("a"), tb.expect("b"));
        assert_eq!((ta.0, tb.0), ("a", "b"));
        assert_eq!(ta.1, tb.1, "one thread makes the whole chain");
        assert!(c.answered_by(deadline));
        assert!(
            c.take_back().is_none(),
            "made already: nothing to take back"
        );
        assert_eq!(c.wait_until(deadline).map(|t| t.0), Ok("c"));

        // The first call hangs: the second is taken back, made elsewhere, and the chain
        // passes it by when the first returns.
        let (release, stuck) = crossbeam_channel::bounded::<()>(0);
        let made = Arc::new(AtomicU32::new(0));
        let counted = |n: u32| {
            let made = made.clone();
            Call::new(move || made.fetch_add(n, Ordering::SeqCst))
        };
        let hang = Call::new(move || {
            let _ = stuck.recv();
            0
        });
        let mut chain = lane.submit_chain(vec![hang, counted(1), counted(10)]);
        let last = chain.pop().expect("third");
        let second = chain.pop().expect("second");
        assert!(!last.answered_by(Instant::now() + Duration::from_millis(50)));
        let taken = second.take_back().expect("not started: taken back");
        assert_eq!(taken.make(), 0);
        assert_eq!(made.load(Ordering::SeqCst), 1);
        drop(release);
        assert_eq!(last.wait_until(deadline), Ok(1));
        assert_eq!(
            second.wait_until(Instant::now() + Duration::from_millis(100)),
            Err(Unanswered::Elapsed),
            "taken back: the chain never made it"
        );
        assert_eq!(made.load(Ordering::SeqCst), 11);
    }

    #[test]
    fn a_call_abandoned_in_the_queue_is_never_made() {
        let lane = Lane::new("VolumeQ");
        let ran = Arc::new(AtomicBool::new(false));
        // Fill every thread the lane may have, so the next call stays queued.
        let (release, stuck) = crossbeam_channel::bounded::<()>(0);
        for _ in 0..MAX_THREADS {
            let stuck = stuck.clone();
            drop(lane.submit(move || {
                let _ = stuck.recv();
            }));
        }
        let flag = ran.clone();
        let r = lane.run(Duration::from_millis(50), move || {
            flag.store(true, Ordering::SeqCst)
        });
        assert_eq!(r, Err(Unanswered::Elapsed));
        drop(release);
        // The stuck calls return; the abandoned one must not run.
        assert_eq!(lane.run(Duration::from_secs(5), || 3), Ok(3));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!ran.load(Ordering::SeqCst));
    }

    #[test]
    fn a_panicking_call_is_answered_and_its_thread_goes_on_serving() {
        let lane = Lane::new("VolumeP");
        let started = Instant::now();
        let (tell, told) = crossbeam_channel::bounded(1);
        let r: Result<u32, _> = lane.run(Duration::from_secs(30), move || {
            let _ = tell.send(std::thread::current().id());
            panic!("injected bug")
        });
        assert_eq!(r, Err(Unanswered::Panicked("injected bug".into())));
        // Answered at once, not at the deadline.
        assert!(started.elapsed() < Duration::from_secs(5), "{started:?}");
        let panicked_on = told.recv().expect("the call ran");
        // Once it is idle again, the same thread serves the next call: none lost.
        std::thread::sleep(Duration::from_millis(100));
        let next = lane.run(Duration::from_secs(5), || std::thread::current().id());
        assert_eq!(next, Ok(panicked_on));
        assert_eq!(lane.threads().0, 1);
        let r: Result<(), _> = lane.run(Duration::from_secs(5), || {
            std::panic::panic_any(format!("bug number {}", 2))
        });
        assert_eq!(r, Err(Unanswered::Panicked("bug number 2".into())));
        assert_eq!(lane.run(Duration::from_secs(5), || 7), Ok(7));
    }

    #[test]
    fn a_call_making_progress_is_waited_for_and_a_stuck_one_is_not() {
        let lane = Lane::new("VolumeW");
        let ticks = Arc::new(AtomicUsize::new(0));
        let t = ticks.clone();
        // Takes 300 ms, well past a 50 ms tick, but progresses all along.
        let slow = lane.submit(move || {
            for _ in 0..30 {
                std::thread::sleep(Duration::from_millis(10));
                t.fetch_add(1, Ordering::Relaxed);
            }
            5
        });
        let mut seen = 0;
        let r = slow.wait_while_progressing(Duration::from_millis(50), || {
            let now = ticks.load(Ordering::Relaxed);
            let stuck = now == seen;
            seen = now;
            stuck
        });
        assert_eq!(r, Ok(5));
        let (release, stuck) = crossbeam_channel::bounded::<()>(0);
        let started = Instant::now();
        let r = lane
            .submit(move || stuck.recv().is_ok())
            .wait_while_progressing(Duration::from_millis(50), || true);
        assert_eq!(r, Err(Unanswered::Elapsed));
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(release);
    }
}
