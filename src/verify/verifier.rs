//! The daemon side of online verification: one verification per database at a time,
//! each on its own thread, its progress kept for `reseedfs verify --status`, every one
//! cancelled when the daemon stops.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;

use super::{VerifyOptions, VerifyProgress, VerifyStatus, verify};
use crate::fs::Core;
use crate::names::DbName;

/// A verification's progress and its thread (taken when the daemon waits for it).
type Running = (Arc<VerifyProgress>, Option<JoinHandle<()>>);

/// The verifications of a mount, one at a time per database, each on its own thread.
#[derive(Debug)]
pub struct Verifier {
    core: Arc<Core>,
    runs: Mutex<HashMap<DbName, Running>>,
    throttle: Option<Arc<crate::throttle::Throttle>>,
}

impl Verifier {
    /// No verification yet.
    pub fn new(core: Arc<Core>) -> Verifier {
        Verifier {
            core,
            runs: Mutex::new(HashMap::new()),
            throttle: None,
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
        let (core, p) = (self.core.clone(), progress.clone());
        let thread = std::thread::Builder::new()
            .name(format!("verify-{db}"))
            .spawn(move || {
                let _ = verify(&core, &d, options, &p);
                p.job.pacer.end();
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
