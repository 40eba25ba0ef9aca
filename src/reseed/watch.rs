//! The volume deadline for the copy paths that hold their own descriptors (the reseed's
//! engines and its windows, the resync's extent copy, the online verify's readers).
//!
//! Those paths do not go through a volume's lane: an engine keeps 16 MiB in flight on
//! one file pair, and a lane's round trip per chunk would cost the reseed its throughput.
//! But a disk that hangs under them would hang the reseed forever, with the seeder's
//! locks held. So the seeder hands each piece of raw work to a thread of its own
//! ([`Watched::run`], a [`Lane`] of the reseed) and waits while the work makes progress:
//! the work reports each read and write it starts and ends on a [`Watch`] (two relaxed
//! atomics and a clock read per 1 MiB chunk), and when one side has had a request in
//! flight and nothing done for `io_timeout`, that side's volume missed its deadline. The
//! caller gets the same [`Timeout`] error a lane gives (the failure path fails the volume,
//! event 1109 with `reason: "timeout"`), the stuck thread is abandoned in the kernel (its
//! answer dropped when it comes), and the seeder's locks are released.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::volume::Timeout;
use crate::volume::lane::{Lane, Unanswered};
pub use crate::volume::lane::{Side, Watch};

use super::engine::{CopyEngine, CopyError};

/// How often a waiting caller looks at the [`Watch`].
const TICK: Duration = Duration::from_millis(50);

/// Raw work of one copy run on threads of its own, under the volumes' deadline.
#[derive(Debug)]
pub struct Watched {
    lane: Lane,
    watch: Arc<Watch>,
    idle: Duration,
}

impl Watched {
    /// For the copy `what` (`db001\Volume3`, the threads' name): a side with no progress
    /// for `io_timeout` has missed its deadline.
    pub fn new(what: &str, io_timeout: Duration) -> Watched {
        Watched {
            lane: Lane::new(&format!("copy-{what}")),
            watch: Arc::new(Watch::new()),
            idle: io_timeout,
        }
    }

    /// The watch the work reports to (engines get it through `CopyEngine::set_watch`).
    pub fn watch(&self) -> &Arc<Watch> {
        &self.watch
    }

    /// Runs `work` on the copy's threads and waits for it while it makes progress. When
    /// a side stops making progress for `io_timeout`, returns a [`Timeout`] of the volume
    /// on that side (`source`, `dest`: their names) as that side's [`CopyError`], and the
    /// work is abandoned; its request stays in flight on the watch, so a copy ends after
    /// its first stall. A panic in the work is a `Dest` error naming it.
    pub fn run<T: Send + 'static>(
        &self,
        source: &str,
        dest: &str,
        work: impl FnOnce(&Watch) -> Result<T, CopyError> + Send + 'static,
    ) -> Result<T, CopyError> {
        let watch = self.watch.clone();
        let pending = self.lane.submit(move || work(&watch));
        let mut stuck = None;
        let answer = pending.wait_while_progressing(TICK, || {
            stuck = self.watch.stuck(self.idle);
            stuck.is_some()
        });
        match answer {
            Ok(r) => r,
            Err(Unanswered::Panicked(message)) => Err(CopyError::Dest(io::Error::other(format!(
                "the copy from {source} to {dest} panicked: {message}"
            )))),
            Err(Unanswered::Elapsed) => {
                self.watch.abandon();
                let (side, volume, op) = match stuck {
                    Some(Side::Source) => (Side::Source, source, "reseed read"),
                    _ => (Side::Dest, dest, "reseed write"),
                };
                let e = io::Error::new(
                    io::ErrorKind::TimedOut,
                    Timeout {
                        volume: volume.to_owned(),
                        op,
                        after: self.idle,
                    },
                );
                Err(match side {
                    Side::Source => CopyError::Source(e),
                    Side::Dest => CopyError::Dest(e),
                })
            }
        }
    }

    /// [`Watched::run`] with the engine: it goes to the work and comes back with its
    /// answer. When the work is abandoned, the engine stays with it (`engine` is then
    /// `None`, and later copies fail: the reseed ends).
    pub fn run_engine<T: Send + 'static>(
        &self,
        engine: &mut Option<Box<dyn CopyEngine>>,
        source: &str,
        dest: &str,
        work: impl FnOnce(&Watch, &mut dyn CopyEngine) -> Result<T, CopyError> + Send + 'static,
    ) -> Result<T, CopyError> {
        let Some(mut e) = engine.take() else {
            return Err(CopyError::Dest(io::Error::other(
                "the copy engine was lost to a hung volume",
            )));
        };
        let (back, r) = self.run(source, dest, move |watch| {
            let r = work(watch, e.as_mut());
            Ok((e, r))
        })?;
        *engine = Some(back);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::is_timeout;
    use std::time::Instant;

    #[test]
    fn a_side_with_a_request_and_no_progress_for_the_deadline_is_stuck() {
        let w = Watch::new();
        assert_eq!(w.stuck(Duration::ZERO), None, "nothing in flight");
        w.begin(Side::Source);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(w.stuck(Duration::from_millis(20)), Some(Side::Source));
        assert_eq!(w.stuck(Duration::from_secs(5)), None);
        w.end(Side::Source);
        assert_eq!(w.stuck(Duration::ZERO), None);
        // Progress on one side does not hide the other side's stuck request.
        w.begin(Side::Dest);
        std::thread::sleep(Duration::from_millis(30));
        w.on(Side::Source, || ());
        assert_eq!(w.stuck(Duration::from_millis(20)), Some(Side::Dest));
    }

    #[test]
    fn work_that_stops_progressing_times_out_on_its_side_and_work_that_goes_on_does_not() {
        let watched = Watched::new("db001\\Volume3", Duration::from_millis(200));
        // 600 ms of work, progressing every 20 ms: waited for.
        let r = watched.run("Volume1", "Volume3", |w| {
            for _ in 0..30 {
                w.on(Side::Dest, || std::thread::sleep(Duration::from_millis(20)));
            }
            Ok(7)
        });
        assert_eq!(r.ok(), Some(7));
        // A write that never returns: the destination's deadline, soon after 200 ms.
        let (release, stuck) = crossbeam_channel::bounded::<()>(0);
        let started = Instant::now();
        let r = watched.run("Volume1", "Volume3", move |w| {
            w.on(Side::Dest, || stuck.recv().ok());
            Ok(())
        });
        let took = started.elapsed();
        match r {
            Err(CopyError::Dest(e)) => {
                assert!(is_timeout(&e), "{e}");
                assert!(e.to_string().contains("Volume3"), "{e}");
            }
            other => panic!("expected the destination's timeout: {other:?}"),
        }
        assert!(took < Duration::from_secs(2), "{took:?}");
        // A read that never returns: the source's (a new copy: the abandoned write stays
        // in flight on the first one's watch, which is done).
        let watched = Watched::new("db001\\Volume3", Duration::from_millis(200));
        let (release2, stuck) = crossbeam_channel::bounded::<()>(0);
        let r = watched.run("Volume1", "Volume3", move |w| {
            w.on(Side::Source, || stuck.recv().ok());
            Ok(())
        });
        match r {
            Err(CopyError::Source(e)) => assert!(e.to_string().contains("Volume1"), "{e}"),
            other => panic!("expected the source's timeout: {other:?}"),
        }
        drop((release, release2));
    }
}
