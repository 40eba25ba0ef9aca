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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

/// The most threads one lane runs (calls beyond wait in its queue).
pub const MAX_THREADS: usize = 64;

/// How long a lane thread waits for work before it ends.
const IDLE: Duration = Duration::from_secs(30);

type Job = Box<dyn FnOnce() + Send>;

/// The threads of one volume.
#[derive(Debug)]
pub struct Lane {
    name: String,
    tx: Sender<Job>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    rx: Receiver<Job>,
    /// Threads alive.
    threads: AtomicUsize,
    /// Threads waiting for a job.
    idle: AtomicUsize,
}

/// The answer of a call did not come before its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

/// A call handed to a lane: wait for its answer with [`Pending::wait_until`].
#[derive(Debug)]
pub struct Pending<T> {
    rx: Receiver<T>,
    abandoned: Arc<AtomicBool>,
}

impl<T> Pending<T> {
    /// The answer, or [`Elapsed`] when it did not come by `deadline` (the call is then
    /// abandoned: not made if it is still queued, its answer dropped otherwise).
    pub fn wait_until(self, deadline: Instant) -> Result<T, Elapsed> {
        match self.rx.recv_deadline(deadline) {
            Ok(t) => Ok(t),
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                self.abandoned.store(true, Ordering::Release);
                Err(Elapsed)
            }
        }
    }
}

impl Lane {
    /// A lane for the volume `name` (threads are started on demand).
    pub fn new(name: &str) -> Lane {
        let (tx, rx) = crossbeam_channel::unbounded();
        Lane {
            name: name.to_owned(),
            tx,
            shared: Arc::new(Shared {
                rx,
                threads: AtomicUsize::new(0),
                idle: AtomicUsize::new(0),
            }),
        }
    }

    /// Hands `call` to the lane; its answer comes through the returned [`Pending`].
    pub fn submit<T: Send + 'static>(
        &self,
        call: impl FnOnce() -> T + Send + 'static,
    ) -> Pending<T> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let abandoned = Arc::new(AtomicBool::new(false));
        let gave_up = abandoned.clone();
        let job: Job = Box::new(move || {
            if !gave_up.load(Ordering::Acquire) {
                let _ = tx.send(call());
            }
        });
        self.ensure_thread();
        if let Err(e) = self.tx.send(job) {
            // The receiver lives in `shared` as long as the lane: cannot happen. Run it
            // here rather than lose it.
            (e.into_inner())();
        }
        Pending { rx, abandoned }
    }

    /// Runs `call` on the lane and waits for its answer until `timeout` has passed.
    pub fn run<T: Send + 'static>(
        &self,
        timeout: Duration,
        call: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Elapsed> {
        self.submit(call).wait_until(Instant::now() + timeout)
    }

    /// Threads alive, and of those stuck in a call (not idle).
    pub fn threads(&self) -> (usize, usize) {
        let threads = self.shared.threads.load(Ordering::Relaxed);
        let idle = self.shared.idle.load(Ordering::Relaxed);
        (threads, threads.saturating_sub(idle))
    }

    /// Starts a thread when none is idle (and the lane may grow).
    fn ensure_thread(&self) {
        let s = &self.shared;
        if s.idle.load(Ordering::Acquire) > s.rx.len() {
            return;
        }
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
        s.idle.fetch_add(1, Ordering::AcqRel);
        let job = s.rx.recv_timeout(IDLE);
        s.idle.fetch_sub(1, Ordering::AcqRel);
        match job {
            Ok(job) => job(),
            Err(_) => {
                s.threads.fetch_sub(1, Ordering::AcqRel);
                // A job queued between the timeout and the decrement finds no thread
                // idle, and the next submit starts one.
                return;
            }
        }
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
        assert_eq!(r, Err(Elapsed));
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(100), "{waited:?}");
        assert!(waited < Duration::from_secs(2), "{waited:?}");
        // Another call goes on a new thread while the first is still stuck.
        assert_eq!(lane.run(Duration::from_secs(5), || 2), Ok(2));
        assert_eq!(lane.threads().0, 2);
        drop(release);
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
        assert_eq!(r, Err(Elapsed));
        drop(release);
        // The stuck calls return; the abandoned one must not run.
        assert_eq!(lane.run(Duration::from_secs(5), || 3), Ok(3));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!ran.load(Ordering::SeqCst));
    }
}
