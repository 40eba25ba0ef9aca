//! The thread that runs the log tap's checkpoints of every database of the pool, every
//! `[tap] checkpoint_interval`.

use std::sync::atomic::Ordering;

use super::Pool;

/// The thread that runs the tap checkpoints of every database of a pool.
#[derive(Debug)]
pub struct Checkpointer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing `pool`'s databases every `every`.
    pub fn start(
        pool: std::sync::Arc<Pool>,
        every: std::time::Duration,
    ) -> std::io::Result<Checkpointer> {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tap-checkpoint".into())
            .spawn(move || {
                let tick = std::time::Duration::from_millis(50);
                let mut next = std::time::Instant::now() + every;
                let mut watched = std::time::Instant::now();
                while !flag.load(Ordering::Acquire) {
                    std::thread::sleep(tick);
                    if watched.elapsed() >= std::time::Duration::from_secs(1) {
                        pool.watch_slow();
                        watched = std::time::Instant::now();
                    }
                    if std::time::Instant::now() >= next {
                        for db in pool.databases() {
                            db.checkpoint(false);
                        }
                        next = std::time::Instant::now() + every;
                    }
                }
            })?;
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread (after the checkpoint in progress).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.shutdown();
    }
}
