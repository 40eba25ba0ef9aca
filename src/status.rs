//! What `reseedfs status` shows, and the types of its answer (`status --json` is an API:
//! fields are only ever added): the pool's view ([`of_pool`]: every copy's state, as the
//! copy set owns it, and the volumes), annotated by the AutoReseed runner, then completed
//! here ([`complete`]): per copy the free space of its volume, its CopyQueueLength and
//! its last error; and the rebuild throttle.
//!
//! The last error of a copy comes from the events about it: [`LastErrors`] sits in front
//! of the event log and remembers, per copy, the last event that reported a problem
//! (1109 failed, 3003 diverged, 3012 AutoReseed attempt failed, 3019 reseed failed) until
//! the copy is healthy again (1110).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

pub use crate::copyset::StatusWord;
use crate::events::{EventId, EventSink, NewEvent};
use crate::names::CopySlot;
use crate::pool::Pool;
use crate::reseed::Phase;
use crate::throttle::Throttle;

/// One copy in `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CopyStatus {
    /// `db001\Volume1`, as Exchange names copies.
    pub name: String,
    /// `Volume1`.
    pub volume: String,
    /// `Mounted`, `Healthy`, `Seeding`, `FailedAndSuspended`.
    pub status: StatusWord,
    /// Whether it serves reads.
    pub active: bool,
    /// ReseedBlocked.
    #[serde(default)]
    pub reseed_blocked: bool,
    /// ResumeBlocked.
    #[serde(default)]
    pub resume_blocked: bool,
    /// When it became FailedAndSuspended.
    #[serde(default, with = "humantime_serde::option")]
    pub failed_at: Option<std::time::SystemTime>,
    /// The reseed running for it (or the last one, when it failed).
    #[serde(default)]
    pub seed: Option<crate::reseed::SeedStatus>,
    /// Where AutoReseed is with it.
    #[serde(default)]
    pub autoreseed: Option<WorkflowStatus>,
    /// CopyQueueLength: mutations the copy lacks (0 in sync; unknown: `None`).
    #[serde(default)]
    pub queue_length: Option<u64>,
    /// The bytes the copy lacks (0 in sync; for a copy being seeded, what is left to copy).
    #[serde(default)]
    pub queue_bytes: Option<u64>,
    /// Free space on the copy's volume (unknown when the volume failed).
    #[serde(default)]
    pub volume_free_bytes: Option<u64>,
    /// The last error about this copy: its failure, a reseed's or an AutoReseed attempt's.
    #[serde(default)]
    pub last_error: Option<String>,
}

/// AutoReseed's state for one copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowStatus {
    /// `Dwell`, `Resume`, `AssignSpare`, `SeedInPlace`, `Stopped`, `Done`.
    pub step: String,
    /// Attempts made in this step.
    pub attempt: u32,
    /// Attempts allowed in this step.
    pub of: u32,
    /// The action running now.
    pub running: Option<String>,
    /// When the next thing happens (dwell end, next attempt, reset).
    #[serde(default, with = "humantime_serde::option")]
    pub next_at: Option<std::time::SystemTime>,
    /// The prerequisite that holds the workflow.
    pub blocked: Option<Blocker>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

/// A prerequisite that fails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocker {
    /// Reason code (`ReseedBlocked`, `NoSourceCopy`, ...).
    pub code: String,
    /// What it means.
    pub description: String,
    /// What clears it.
    pub remedy: String,
}

/// One database in `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DbStatus {
    /// `db001`.
    pub name: String,
    /// Its copies.
    pub copies: Vec<CopyStatus>,
    /// Its scrubs: the schedule (`[scrub] interval`), whether one runs, the last one and
    /// what it found (`None` outside the daemon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scrub: Option<crate::verify::ScrubState>,
}

/// One volume in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeStatus {
    /// `Volume1`.
    pub name: String,
    /// `InUse`, `Spare` or `Failed`.
    pub state: VolumeState,
    /// Free bytes (unknown for a failed volume).
    pub free_bytes: Option<u64>,
    /// Size in bytes (unknown for a failed volume).
    pub total_bytes: Option<u64>,
    /// I/O errors seen since the mount.
    pub io_errors: u64,
    /// Operations slower than `[volume] slow_request` since the mount.
    #[serde(default)]
    pub slow_requests: u64,
    /// Blocks read from the volume that did not match their checksum, since the mount.
    #[serde(default)]
    pub checksum_errors: u64,
}

/// The answer to `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The pool state's epoch.
    pub epoch: u64,
    /// Databases and copies.
    pub databases: Vec<DbStatus>,
    /// Volumes.
    pub volumes: Vec<VolumeStatus>,
    /// The rebuild throttle: budget, effective budget, each stream's share.
    #[serde(default)]
    pub throttle: Option<crate::throttle::ThrottleStatus>,
    /// Volumes (or a witness) of other pools found at mount and left alone: each with its
    /// pool id and this pool's.
    #[serde(default)]
    pub foreign: Vec<crate::pool::Foreign>,
    /// How FUSE requests reach the daemon serving the mount: `dev_fuse` or `uring` (the
    /// `fuse_transport` setting, or `dev_fuse` when the ring was refused). Set by the
    /// daemon; absent where no mount serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuse_transport: Option<String>,
}

/// A volume's state in `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum VolumeState {
    /// Holds a copy of a database.
    InUse,
    /// Holds no copy: a spare.
    Spare,
    /// Failed (or could not be opened).
    Failed,
}

impl VolumeState {
    /// The word itself.
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeState::InUse => "InUse",
            VolumeState::Spare => "Spare",
            VolumeState::Failed => "Failed",
        }
    }
}

impl std::fmt::Display for VolumeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for VolumeState {
    type Err = String;

    fn from_str(s: &str) -> Result<VolumeState, String> {
        [VolumeState::InUse, VolumeState::Spare, VolumeState::Failed]
            .into_iter()
            .find(|w| w.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a volume state"))
    }
}

impl PartialEq<&str> for VolumeState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// The pool's own view for `status`: every copy as the copy set has it, with what the
/// pool state records about it (blocks, when it failed) and what the log tap counts for
/// it (CopyQueueLength), and every volume with its space and error count.
pub fn of_pool(pool: &Pool) -> Status {
    let state = pool.state();
    let databases = pool
        .databases()
        .iter()
        .map(|d| DbStatus {
            name: d.name.to_string(),
            copies: d
                .copies()
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let rec = state.database(&d.name).and_then(|r| r.copies.get(i));
                    let queue = d.tap().queue(CopySlot::new(i));
                    CopyStatus {
                        name: format!("{}\\{}", d.name, c.volume_name()),
                        volume: c.volume_name().to_string(),
                        status: d.status_word(CopySlot::new(i)),
                        active: d.active_index() == Some(i),
                        reseed_blocked: rec.is_some_and(|r| r.reseed_blocked),
                        resume_blocked: rec.is_some_and(|r| r.resume_blocked),
                        failed_at: rec.and_then(|r| r.failed_at),
                        seed: None,
                        autoreseed: None,
                        queue_length: queue.map(|q| q.0),
                        queue_bytes: queue.map(|q| q.1),
                        volume_free_bytes: None,
                        last_error: None,
                    }
                })
                .collect(),
            scrub: None,
        })
        .collect();
    let volumes = pool
        .volumes()
        .iter()
        .map(|v| {
            let volume = v.volume();
            let failed = state.failed_volumes.contains(&v.name) || volume.is_none();
            let (free_bytes, total_bytes) = volume
                .as_ref()
                .filter(|_| !failed)
                .and_then(|vol| vol.statvfs().ok())
                .map_or((None, None), |s| {
                    (Some(s.f_bavail * s.f_frsize), Some(s.f_blocks * s.f_frsize))
                });
            VolumeStatus {
                name: v.name.to_string(),
                state: if failed {
                    VolumeState::Failed
                } else if state.holding(&v.name).next().is_some() {
                    VolumeState::InUse
                } else {
                    VolumeState::Spare
                },
                free_bytes,
                total_bytes,
                io_errors: v.io_errors(),
                slow_requests: v.slow_requests(),
                checksum_errors: v.checksum_errors(),
            }
        })
        .collect();
    Status {
        epoch: state.epoch,
        databases,
        volumes,
        throttle: None,
        foreign: pool.foreign().to_vec(),
        fuse_transport: None,
    }
}

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
            .get(&(db.to_string(), volume.to_owned()))
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
            let in_sync = c.status.in_sync();
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
    use crate::events::VecSink;
    use crate::reseed::SeedStatus;
    use crate::status::{CopyStatus, DbStatus, VolumeStatus};

    fn copy(volume: &str, status: &str) -> CopyStatus {
        CopyStatus {
            name: format!("db001\\{volume}"),
            volume: volume.into(),
            status: status.parse().expect("a status word"),
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
                scrub: None,
            }],
            volumes: vec![
                VolumeStatus {
                    name: "Volume1".into(),
                    state: VolumeState::Failed,
                    free_bytes: None,
                    total_bytes: None,
                    io_errors: 1,
                    slow_requests: 0,
                    checksum_errors: 0,
                },
                VolumeStatus {
                    name: "Volume2".into(),
                    state: VolumeState::InUse,
                    free_bytes: Some(5 << 30),
                    total_bytes: Some(10 << 30),
                    io_errors: 0,
                    slow_requests: 0,
                    checksum_errors: 0,
                },
            ],
            throttle: None,
            foreign: Vec::new(),
            fuse_transport: None,
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
        assert_eq!(
            errors.get(&crate::names::DbName::from_static("db001"), "Volume1"),
            None
        );
    }
}
