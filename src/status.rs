//! What `reseedfs status` adds to the pool's own view ([`crate::pool::Pool::status`],
//! annotated by the AutoReseed runner): per copy, the free space of its volume, its
//! CopyQueueLength and its last error; and the rebuild throttle.
//!
//! The last error of a copy comes from the events about it: [`LastErrors`] sits in front
//! of the event log and remembers, per copy, the last event that reported a problem
//! (1109 failed, 3003 diverged, 3012 AutoReseed attempt failed, 3019 reseed failed) until
//! the copy is healthy again (1110).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::control::Status;
use crate::events::{EventId, EventSink, NewEvent};
use crate::reseed::Phase;
use crate::throttle::Throttle;

/// An event sink that remembers the last error reported about each copy, and passes every
/// event on.
pub struct LastErrors {
    inner: Arc<dyn EventSink>,
    /// `(db, volume)` to the message of the last error event.
    last: Mutex<HashMap<(String, String), String>>,
}

impl std::fmt::Debug for LastErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LastErrors")
            .field("copies", &self.last.lock().len())
            .finish_non_exhaustive()
    }
}

impl LastErrors {
    /// In front of `inner`.
    pub fn new(inner: Arc<dyn EventSink>) -> LastErrors {
        LastErrors {
            inner,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// The last error reported about copy `db\volume`, if it is not healthy since.
    pub fn get(&self, db: &str, volume: &str) -> Option<String> {
        self.last
            .lock()
            .get(&(db.to_owned(), volume.to_owned()))
            .cloned()
    }
}

impl EventSink for LastErrors {
    fn emit(&self, event: NewEvent) {
        if let (Some(db), Some(volume)) = (&event.database, &event.volume) {
            let key = (db.clone(), volume.clone());
            match event.id {
                EventId::CopyFailed
                | EventId::CopyDiverged
                | EventId::AutoReseedAttemptFailed
                | EventId::ReseedFailed => {
                    self.last.lock().insert(key, event.message.clone());
                }
                EventId::CopyHealthy => {
                    self.last.lock().remove(&key);
                }
                _ => {}
            }
        }
        self.inner.emit(event);
    }
}

/// Fills in what the pool and the runner do not know: per copy the volume's free space,
/// CopyQueueLength (0 for an in-sync copy; for a copy being seeded, the bytes left to
/// copy) and the last error; and the throttle's section. Values already set (by the log
/// tap, for a lagging copy) are kept.
pub fn complete(status: &mut Status, throttle: Option<&Throttle>, errors: Option<&LastErrors>) {
    let free: HashMap<String, Option<u64>> = status
        .volumes
        .iter()
        .map(|v| (v.name.clone(), v.free_bytes))
        .collect();
    for d in &mut status.databases {
        for c in &mut d.copies {
            c.volume_free_bytes = free.get(&c.volume).copied().flatten();
            let in_sync = matches!(c.status.as_str(), "Mounted" | "Healthy");
            if in_sync {
                c.queue_length.get_or_insert(0);
                c.queue_bytes.get_or_insert(0);
                continue;
            }
            if let Some(seed) = &c.seed {
                match seed.phase {
                    Phase::Copying => {
                        c.queue_bytes = Some(seed.bytes_total.saturating_sub(seed.bytes_done));
                    }
                    Phase::Verifying | Phase::Done => c.queue_bytes = Some(0),
                    Phase::Preparing | Phase::Failed => {}
                }
            }
            c.last_error = errors
                .and_then(|e| e.get(&d.name, &c.volume))
                .or_else(|| c.seed.as_ref().and_then(|s| s.error.clone()))
                .or_else(|| c.autoreseed.as_ref().and_then(|w| w.last_error.clone()));
        }
    }
    status.throttle = throttle.map(Throttle::status);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{CopyStatus, DbStatus, VolumeStatus};
    use crate::events::VecSink;
    use crate::reseed::SeedStatus;

    fn copy(volume: &str, status: &str) -> CopyStatus {
        CopyStatus {
            name: format!("db001\\{volume}"),
            volume: volume.into(),
            status: status.into(),
            active: status == "Mounted",
            reseed_blocked: false,
            resume_blocked: false,
            failed_at: None,
            seed: None,
            autoreseed: None,
            queue_length: None,
            queue_bytes: None,
            volume_free_bytes: None,
            last_error: None,
        }
    }

    #[test]
    fn copies_get_free_space_queue_and_last_error() {
        let sink = Arc::new(VecSink::default());
        let errors = LastErrors::new(sink.clone());
        errors.emit(
            NewEvent::new(
                EventId::CopyFailed,
                "volume Volume1 failed during write (EIO)",
            )
            .database("db001")
            .volume("Volume1"),
        );
        errors.emit(NewEvent::new(EventId::MountStarted, "up"));
        assert_eq!(sink.ids(), vec![EventId::CopyFailed, EventId::MountStarted]);
        let mut seeding = copy("Volume3", "Seeding");
        seeding.seed = Some(SeedStatus {
            db: "db001".into(),
            target: "Volume3".into(),
            source: "Volume2".into(),
            engine: "io_uring".into(),
            phase: Phase::Copying,
            bytes_total: 100 << 20,
            bytes_done: 40 << 20,
            mib_s: 300.0,
            eta_s: Some(0.2),
            elapsed_s: 1.0,
            error: None,
        });
        let mut s = Status {
            epoch: 7,
            databases: vec![DbStatus {
                name: "db001".into(),
                copies: vec![
                    copy("Volume1", "FailedAndSuspended"),
                    copy("Volume2", "Mounted"),
                    seeding,
                ],
            }],
            volumes: vec![
                VolumeStatus {
                    name: "Volume1".into(),
                    state: "Failed".into(),
                    free_bytes: None,
                    total_bytes: None,
                    io_errors: 1,
                },
                VolumeStatus {
                    name: "Volume2".into(),
                    state: "InUse".into(),
                    free_bytes: Some(5 << 30),
                    total_bytes: Some(10 << 30),
                    io_errors: 0,
                },
            ],
            throttle: None,
        };
        complete(&mut s, None, Some(&errors));
        let c = &s.databases[0].copies;
        assert_eq!(
            c[0].last_error.as_deref(),
            Some("volume Volume1 failed during write (EIO)")
        );
        assert_eq!(
            (c[0].queue_length, c[0].queue_bytes),
            (None, None),
            "unknown"
        );
        assert_eq!((c[1].queue_length, c[1].queue_bytes), (Some(0), Some(0)));
        assert_eq!(c[1].volume_free_bytes, Some(5 << 30));
        assert_eq!(c[2].queue_bytes, Some(60 << 20));
        errors.emit(
            NewEvent::new(EventId::CopyHealthy, "healthy")
                .database("db001")
                .volume("Volume1"),
        );
        assert_eq!(errors.get("db001", "Volume1"), None);
    }
}
