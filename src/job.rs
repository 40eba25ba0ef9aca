//! The progress of a background job (a reseed, a resync, an online verification): its
//! phase, the bytes it has to move and has moved in that phase, its throughput, why it
//! failed, whether it was asked to stop, and the pacing of its reads. The job's thread
//! writes it; `status`, `reseedfs verify` and the metrics read snapshots of it. One type,
//! so that every job counts, times and cancels the same way.

use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;

use crate::throttle::Pacer;

/// The phases of a kind of job.
pub trait JobPhase: Copy + PartialEq + Debug + Send + Sync + 'static {
    /// The phase a job that gave up ends in.
    const FAILED: Self;
    /// Whether the job still runs in this phase (not done, not failed).
    fn running(self) -> bool;
    /// Whether this phase moves bytes: entering it starts its byte count and clock, and
    /// its throughput and time left are shown.
    fn measured(self) -> bool;
}

/// Live progress of one job, shared between its thread and its readers.
#[derive(Debug)]
pub struct JobProgress<P> {
    phase: Mutex<(P, Instant)>,
    total: AtomicU64,
    done: AtomicU64,
    started: Instant,
    error: Mutex<Option<String>>,
    cancelled: AtomicBool,
    /// How the job's reads are paced: its own rate limit, the host's rebuild throttle.
    pub pacer: Pacer,
}

/// A job's bytes and throughput in its phase, at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Bytes to move in this phase (0 while unknown).
    pub bytes_total: u64,
    /// Bytes moved in this phase.
    pub bytes_done: u64,
    /// Throughput of this phase (0 outside measured phases).
    pub mib_s: f64,
    /// Seconds left in this phase at this throughput.
    pub eta_s: Option<f64>,
    /// Seconds since the job started.
    pub elapsed_s: f64,
}

const MIB: f64 = 1048576.0;

impl<P: JobPhase> JobProgress<P> {
    /// A job in phase `first`, not started.
    pub fn new(first: P) -> JobProgress<P> {
        let now = Instant::now();
        JobProgress {
            phase: Mutex::new((first, now)),
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
            started: now,
            error: Mutex::new(None),
            cancelled: AtomicBool::new(false),
            pacer: Pacer::default(),
        }
    }

    /// The phase now.
    pub fn phase(&self) -> P {
        self.phase.lock().0
    }

    /// Moves to phase `p`; a measured phase starts counting its bytes from 0.
    pub fn set_phase(&self, p: P) {
        let mut phase = self.phase.lock();
        if p.measured() && phase.0 != p {
            self.done.store(0, Ordering::Relaxed);
        }
        *phase = (p, Instant::now());
    }

    /// True until the job ends (either way).
    pub fn is_running(&self) -> bool {
        self.phase().running()
    }

    /// Bytes the job has to move (in every measured phase).
    pub fn set_total(&self, bytes: u64) {
        self.total.store(bytes, Ordering::Relaxed);
    }

    /// Counts `bytes` more moved in this phase.
    pub fn add_done(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Bytes moved in this phase.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Marks the job failed with `why`.
    pub fn fail(&self, why: &str) {
        *self.error.lock() = Some(why.to_owned());
        self.set_phase(P::FAILED);
    }

    /// Why it failed, if it did.
    pub fn error(&self) -> Option<String> {
        self.error.lock().clone()
    }

    /// Asks the job to stop at its next step (the daemon is stopping).
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
    }

    /// Whether [`JobProgress::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// The phase, the bytes and the throughput of the phase now.
    pub fn rate(&self) -> (P, Rate) {
        let (phase, since) = *self.phase.lock();
        let total = self.total.load(Ordering::Relaxed);
        let done = self.done();
        let secs = since.elapsed().as_secs_f64();
        let mib_s = if phase.measured() && secs > 0.0 {
            done as f64 / secs / MIB
        } else {
            0.0
        };
        let eta_s = (mib_s > 0.0).then(|| total.saturating_sub(done) as f64 / MIB / mib_s);
        let rate = Rate {
            bytes_total: total,
            bytes_done: done,
            mib_s,
            eta_s,
            elapsed_s: self.started.elapsed().as_secs_f64(),
        };
        (phase, rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Step {
        Prepare,
        Copy,
        Check,
        Done,
        Failed,
    }

    impl JobPhase for Step {
        const FAILED: Step = Step::Failed;
        fn running(self) -> bool {
            !matches!(self, Step::Done | Step::Failed)
        }
        fn measured(self) -> bool {
            matches!(self, Step::Copy | Step::Check)
        }
    }

    #[test]
    fn each_measured_phase_counts_its_own_bytes() {
        let p = JobProgress::new(Step::Prepare);
        p.set_total(100);
        p.add_done(7);
        assert_eq!(p.rate().1.mib_s, 0.0, "not a measured phase");
        p.set_phase(Step::Copy);
        assert_eq!(p.done(), 0);
        p.add_done(40);
        std::thread::sleep(std::time::Duration::from_millis(5));
        let (phase, r) = p.rate();
        assert_eq!((phase, r.bytes_total, r.bytes_done), (Step::Copy, 100, 40));
        assert!(r.mib_s > 0.0 && r.eta_s.is_some(), "{r:?}");
        p.set_phase(Step::Copy);
        assert_eq!(p.done(), 40, "the same phase again keeps its count");
        p.set_phase(Step::Check);
        assert_eq!(p.done(), 0);
        p.add_done(100);
        p.set_phase(Step::Done);
        assert_eq!(p.done(), 100, "the last phase's count stays");
        assert!(!p.is_running());
        let q = JobProgress::new(Step::Prepare);
        assert!(q.is_running() && !q.is_cancelled());
        q.cancel();
        assert!(q.is_cancelled());
        q.fail("disk gone");
        assert_eq!(
            (q.phase(), q.error().as_deref()),
            (Step::Failed, Some("disk gone"))
        );
    }
}
