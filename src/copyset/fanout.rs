//! The fan-out threads: a request's writes and fsyncs to its copies go out at the same
//! time. The request thread does the first copy itself and hands the others to these
//! threads, then waits for their completions.

use std::io;
use std::thread;

use crossbeam_channel::{Receiver, Sender};

/// The most copies one database can have.
pub const MAX_COPIES: usize = 8;

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of threads running copy I/O for request threads.
#[derive(Debug, Clone)]
pub struct Fanout {
    tx: Sender<Job>,
}

impl Fanout {
    /// Starts `threads` fan-out threads. They end when the last `Fanout` clone is dropped.
    pub fn new(threads: usize) -> io::Result<Fanout> {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        for n in 0..threads.max(1) {
            let rx = rx.clone();
            thread::Builder::new()
                .name(format!("fanout-{n}"))
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        job();
                    }
                })?;
        }
        Ok(Fanout { tx })
    }

    /// Runs `job` on a fan-out thread.
    pub fn submit(&self, job: Job) {
        if let Err(e) = self.tx.send(job) {
            // Only possible if every worker died: run it here rather than lose it.
            (e.into_inner())();
        }
    }

    /// A batch of `n` completions: the completer goes to the jobs, the waiter stays.
    pub fn batch<T>(&self, n: usize) -> (Completer<T>, Waiter<T>) {
        let (tx, rx) = crossbeam_channel::bounded(n);
        (Completer { tx }, Waiter { rx, n })
    }
}

/// Reports one job's result (cloned into each job).
#[derive(Debug)]
pub struct Completer<T> {
    tx: Sender<(usize, io::Result<T>)>,
}

impl<T> Clone for Completer<T> {
    fn clone(&self) -> Self {
        Completer {
            tx: self.tx.clone(),
        }
    }
}

impl<T> Completer<T> {
    /// Reports the result for `slot`.
    pub fn done(&self, slot: usize, result: io::Result<T>) {
        let _ = self.tx.send((slot, result));
    }
}

/// Waits for a batch.
#[derive(Debug)]
pub struct Waiter<T> {
    rx: Receiver<(usize, io::Result<T>)>,
    n: usize,
}

impl<T> Waiter<T> {
    /// Waits for every job of the batch. A job that died without reporting (its
    /// completer dropped) ends the wait early; its slot stays empty.
    pub fn wait(self) -> Vec<(usize, io::Result<T>)> {
        let mut out = Vec::with_capacity(self.n);
        while out.len() < self.n {
            match self.rx.recv() {
                Ok(r) => out.push(r),
                Err(_) => break,
            }
        }
        out
    }
}
