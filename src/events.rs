//! Numbered, structured records of what reseedfs did, persisted as JSON lines in the
//! state directory (`events.jsonl`).
//!
//! Every event id is in one table, [`EventId`], also printed in the README:
//!
//! | id   | kind                        | meaning |
//! |------|-----------------------------|---------|
//! | 825  | `seed.started`              | seeding of a copy started (source, target, bytes, engine) |
//! | 826  | `seed.completed`            | seeding completed: every byte copied (bytes, seconds, MiB/s) |
//! | 827  | `verify.started`            | verification of the new copy against its source started |
//! | 828  | `verify.completed`          | verification completed: the new copy matches its source (checksums) |
//! | 1109 | `copy.failed`               | a copy's volume failed (I/O error, missing or dead at mount): copy FailedAndSuspended |
//! | 1110 | `copy.healthy`              | final checks passed: the copy is Healthy (in sync) |
//! | 3001 | `mount.started`             | the mount is up; which copies serve each database |
//! | 3002 | `mount.finished`            | the mount is down (unmount, signal, or the kernel ended it) |
//! | 3003 | `copy.diverged`             | a copy gave a different result than the active copy: failed to keep copies identical |
//! | 3004 | `active.changed`            | a database's active copy moved to another volume |
//! | 3005 | `state.persist_failed`      | the pool state could not be written to a volume |
//! | 3008 | `volume.slow`               | every operation on a volume has been slower than `slow_request` for a minute (it is not failed) |
//! | 3010 | `autoreseed.started`        | a copy was FailedAndSuspended for the dwell time: the workflow starts |
//! | 3011 | `autoreseed.attempt`        | an attempt (Resume, AssignSpare, SeedInPlace) starts, `n of N` |
//! | 3012 | `autoreseed.attempt_failed` | the attempt failed (why); when the next one is due |
//! | 3013 | `autoreseed.spare_assigned` | a spare volume took the failed copy's place in the placement |
//! | 3014 | `autoreseed.spares_exhausted` | no spare can take the copy (each volume's reason) |
//! | 3015 | `autoreseed.blocked`        | a prerequisite fails (reason code and the command that clears it) |
//! | 3016 | `autoreseed.unblocked`      | the blocking prerequisite holds again |
//! | 3017 | `autoreseed.stopped`        | every attempt failed; the workflow waits for its reset |
//! | 3018 | `autoreseed.reset`          | still failed after `reset_after`: the workflow starts over |
//! | 3019 | `seed.failed`               | a reseed failed (why); the database runs on its other copies |
//! | 3020 | `seed.source_changed`       | the reseed's source failed; it goes on from another in-sync copy |
//! | 3021 | `copy.block_changed`        | an operator set or cleared ReseedBlocked / ResumeBlocked |
//! | 3022 | `volume.returned`           | a failed volume answers its health probe again |
//! | 2058 | `resync.incremental_error` | an incremental resync is impossible (error code: no common generation, no dirty map); then a full reseed or the operator, per `on_divergence` |
//! | 3030 | `resync.started` | an incremental resync of a copy that missed writes started (files, bytes to copy) |
//! | 3031 | `resync.completed` | the resync completed: `bytes_copied`, `extents`, seconds; the copy is in sync |
//! | 3032 | `copy.divergence` | a returning copy was changed behind reseedfs's back: its divergent extents and files are kept in quarantine, the first diverged log named |
//! | 3033 | `tap.crash_repaired` | after an unclean stop the copies were compared where the activity log says they may differ, and repaired |
//! | 3034 | `copy.suspended` | an operator suspended a copy; what it misses is recorded for an incremental resume |
//! | 3040 | `verify.online_started`     | an online verification of a database's in-sync copies started (copies, repair, rate) |
//! | 3041 | `verify.online_completed`   | it ended: bytes compared, mismatched extents and tree entries, repaired (or why it stopped) |
//! | 3050 | `throttle.changed`          | the rebuild budget was changed at run time (old, new, who) |
//! | 3060 | `checksum.repaired`         | a block of a copy did not match its checksum: the read was served from a copy whose block matches, and the bad block rewritten from it and read back (database, file, offset, volume, source) |
//! | 3061 | `checksum.unrecoverable`    | a block matches its checksum on no copy: the read failed with EIO (database, file, offset) |
//! | 3062 | `scrub.started`             | a scrub of a database's in-sync copies started (copies, bytes) |
//! | 3063 | `scrub.completed`           | the scrub ended: blocks checked, bad blocks found and repaired, blocks summed for the first time (or why it stopped) |
//!
//! Each event is also logged, one line each ([`EventId::severity`]): at ERROR when a human
//! must act (1109, 2058, 3003, 3005, 3014, 3017, 3019, 3061), at WARN when the system carried
//! on around a problem (3004, 3012, 3015, 3020, 3032, 3034, 3060), at INFO otherwise.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// The event ids, one table for the whole product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventId {
    /// 1109: a copy's volume failed; the copy is FailedAndSuspended.
    CopyFailed,
    /// 3001: the mount is up.
    MountStarted,
    /// 3002: the mount is down.
    MountFinished,
    /// 3003: a copy disagreed with the active copy and was failed.
    CopyDiverged,
    /// 3004: a database's active copy moved.
    ActiveChanged,
    /// 3005: the pool state could not be persisted on a volume.
    StatePersistFailed,
    /// 3008: a volume has been slow for a minute (counted, not failed).
    VolumeSlow,
    /// 825: seeding of a copy started.
    SeedingStarted,
    /// 826: seeding of a copy completed (every byte copied).
    SeedingCompleted,
    /// 827: verification of a seeded copy against its source started.
    VerifyStarted,
    /// 828: verification completed: the new copy matches its source.
    VerifyCompleted,
    /// 1110: final checks passed; the copy is Healthy (in sync).
    CopyHealthy,
    /// 3010: a copy was FailedAndSuspended for the dwell time: the AutoReseed workflow starts.
    AutoReseedStarted,
    /// 3011: an AutoReseed attempt (resume, spare assignment or in-place seed) starts.
    AutoReseedAttempt,
    /// 3012: an AutoReseed attempt failed; the next one is scheduled.
    AutoReseedAttemptFailed,
    /// 3013: a spare volume was assigned to a failed copy; the placement moved.
    SpareAssigned,
    /// 3014: no spare volume can take a failed copy.
    SparesExhausted,
    /// 3015: an AutoReseed prerequisite fails; the workflow waits (reason code).
    AutoReseedBlocked,
    /// 3016: the prerequisite that blocked the workflow holds again.
    AutoReseedUnblocked,
    /// 3017: every AutoReseed attempt failed; the workflow stops until its reset.
    AutoReseedStopped,
    /// 3018: the copy is still failed after reset_after: the workflow starts over.
    AutoReseedReset,
    /// 3019: a reseed failed; the database runs on its other copies.
    ReseedFailed,
    /// 3020: the reseed's source copy failed; the reseed goes on from another in-sync copy.
    ReseedSourceChanged,
    /// 3021: an operator set or cleared ReseedBlocked / ResumeBlocked on a copy.
    BlockChanged,
    /// 3022: a failed volume answers its health probe again.
    VolumeReturned,
    /// 2058: an incremental resync cannot be done (IncrementalReseedError).
    IncrementalReseedError,
    /// 3030: an incremental resync started.
    ResyncStarted,
    /// 3031: an incremental resync completed.
    ResyncCompleted,
    /// 3032: a returning copy diverged; its changes were quarantined.
    DivergenceFound,
    /// 3033: crash repair after an unclean stop.
    CrashRepaired,
    /// 3034: an operator suspended a copy.
    CopySuspended,
    /// 3050: the rebuild throttle's budget was changed at run time.
    ThrottleChanged,
    /// 3040: an online verification of a database's in-sync copies started.
    OnlineVerifyStarted,
    /// 3041: an online verification ended (what differed, what was repaired, or why it
    /// stopped).
    OnlineVerifyCompleted,
    /// 3060: a block did not match its checksum on a copy; served and repaired from another.
    ChecksumRepaired,
    /// 3061: a block matches its checksum on no copy: the read failed with EIO.
    ChecksumUnrecoverable,
    /// 3062: a scrub of a database's in-sync copies started.
    ScrubStarted,
    /// 3063: a scrub ended (what it found and repaired, or why it stopped).
    ScrubCompleted,
}

impl EventId {
    /// The number shown to operators.
    pub fn number(self) -> u32 {
        match self {
            EventId::CopyFailed => 1109,
            EventId::MountStarted => 3001,
            EventId::MountFinished => 3002,
            EventId::CopyDiverged => 3003,
            EventId::ActiveChanged => 3004,
            EventId::StatePersistFailed => 3005,
            EventId::VolumeSlow => 3008,
            EventId::SeedingStarted => 825,
            EventId::SeedingCompleted => 826,
            EventId::VerifyStarted => 827,
            EventId::VerifyCompleted => 828,
            EventId::CopyHealthy => 1110,
            EventId::AutoReseedStarted => 3010,
            EventId::AutoReseedAttempt => 3011,
            EventId::AutoReseedAttemptFailed => 3012,
            EventId::SpareAssigned => 3013,
            EventId::SparesExhausted => 3014,
            EventId::AutoReseedBlocked => 3015,
            EventId::AutoReseedUnblocked => 3016,
            EventId::AutoReseedStopped => 3017,
            EventId::AutoReseedReset => 3018,
            EventId::ReseedFailed => 3019,
            EventId::ReseedSourceChanged => 3020,
            EventId::BlockChanged => 3021,
            EventId::VolumeReturned => 3022,
            EventId::IncrementalReseedError => 2058,
            EventId::ResyncStarted => 3030,
            EventId::ResyncCompleted => 3031,
            EventId::DivergenceFound => 3032,
            EventId::CrashRepaired => 3033,
            EventId::CopySuspended => 3034,
            EventId::ThrottleChanged => 3050,
            EventId::OnlineVerifyStarted => 3040,
            EventId::OnlineVerifyCompleted => 3041,
            EventId::ChecksumRepaired => 3060,
            EventId::ChecksumUnrecoverable => 3061,
            EventId::ScrubStarted => 3062,
            EventId::ScrubCompleted => 3063,
        }
    }

    /// How loudly the daemon logs it: [`Severity::Error`] when a human must act (one log
    /// line each), [`Severity::Warn`] when the system carried on around a problem.
    pub fn severity(self) -> Severity {
        match self {
            EventId::CopyFailed
            | EventId::CopyDiverged
            | EventId::StatePersistFailed
            | EventId::SparesExhausted
            | EventId::AutoReseedStopped
            | EventId::IncrementalReseedError
            | EventId::ChecksumUnrecoverable
            | EventId::ReseedFailed => Severity::Error,
            EventId::ActiveChanged
            | EventId::AutoReseedAttemptFailed
            | EventId::AutoReseedBlocked
            | EventId::ReseedSourceChanged
            | EventId::VolumeSlow
            | EventId::DivergenceFound
            | EventId::ChecksumRepaired
            | EventId::CopySuspended => Severity::Warn,
            _ => Severity::Info,
        }
    }

    /// The `source.event` name.
    pub fn kind(self) -> &'static str {
        match self {
            EventId::CopyFailed => "copy.failed",
            EventId::MountStarted => "mount.started",
            EventId::MountFinished => "mount.finished",
            EventId::CopyDiverged => "copy.diverged",
            EventId::ActiveChanged => "active.changed",
            EventId::StatePersistFailed => "state.persist_failed",
            EventId::VolumeSlow => "volume.slow",
            EventId::SeedingStarted => "seed.started",
            EventId::SeedingCompleted => "seed.completed",
            EventId::VerifyStarted => "verify.started",
            EventId::VerifyCompleted => "verify.completed",
            EventId::CopyHealthy => "copy.healthy",
            EventId::AutoReseedStarted => "autoreseed.started",
            EventId::AutoReseedAttempt => "autoreseed.attempt",
            EventId::AutoReseedAttemptFailed => "autoreseed.attempt_failed",
            EventId::SpareAssigned => "autoreseed.spare_assigned",
            EventId::SparesExhausted => "autoreseed.spares_exhausted",
            EventId::AutoReseedBlocked => "autoreseed.blocked",
            EventId::AutoReseedUnblocked => "autoreseed.unblocked",
            EventId::AutoReseedStopped => "autoreseed.stopped",
            EventId::AutoReseedReset => "autoreseed.reset",
            EventId::ReseedFailed => "seed.failed",
            EventId::ReseedSourceChanged => "seed.source_changed",
            EventId::BlockChanged => "copy.block_changed",
            EventId::VolumeReturned => "volume.returned",
            EventId::IncrementalReseedError => "resync.incremental_error",
            EventId::ResyncStarted => "resync.started",
            EventId::ResyncCompleted => "resync.completed",
            EventId::DivergenceFound => "copy.divergence",
            EventId::CrashRepaired => "tap.crash_repaired",
            EventId::CopySuspended => "copy.suspended",
            EventId::ThrottleChanged => "throttle.changed",
            EventId::OnlineVerifyStarted => "verify.online_started",
            EventId::OnlineVerifyCompleted => "verify.online_completed",
            EventId::ChecksumRepaired => "checksum.repaired",
            EventId::ChecksumUnrecoverable => "checksum.unrecoverable",
            EventId::ScrubStarted => "scrub.started",
            EventId::ScrubCompleted => "scrub.completed",
        }
    }
}

/// How loudly an event is logged (`RESEEDFS_LOG` filters the log by level).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// A human must act: a copy or the pool state was lost, AutoReseed gave up.
    Error,
    /// The system carried on around a problem (an attempt failed, the active copy moved).
    Warn,
    /// A state change.
    Info,
}

/// An event about to be recorded.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Which event.
    pub id: EventId,
    /// The database concerned, if any.
    pub database: Option<String>,
    /// The volume concerned, if any.
    pub volume: Option<String>,
    /// A sentence for humans.
    pub message: String,
    /// Machine-readable details (operation, errno, ...).
    pub fields: serde_json::Map<String, serde_json::Value>,
}

impl NewEvent {
    /// An event with a message and no database, volume or fields.
    pub fn new(id: EventId, message: impl Into<String>) -> NewEvent {
        NewEvent {
            id,
            database: None,
            volume: None,
            message: message.into(),
            fields: serde_json::Map::new(),
        }
    }

    /// Names the database.
    pub fn database(mut self, db: &str) -> Self {
        self.database = Some(db.to_owned());
        self
    }

    /// Names the volume.
    pub fn volume(mut self, volume: &str) -> Self {
        self.volume = Some(volume.to_owned());
        self
    }

    /// Adds a machine-readable field.
    pub fn field(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.fields.insert(key.to_owned(), value.into());
        self
    }
}

/// A recorded event, as persisted and served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the log, from 1.
    pub seq: u64,
    /// The event id (1109, ...).
    pub id: u32,
    /// `source.event` name.
    pub kind: String,
    /// RFC 3339 UTC time.
    pub time: String,
    /// The database concerned.
    pub database: Option<String>,
    /// The volume concerned.
    pub volume: Option<String>,
    /// A sentence for humans.
    pub message: String,
    /// Details.
    #[serde(flatten)]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// Where events go. The daemon writes to an [`EventLog`]; tests use [`VecSink`].
pub trait EventSink: Send + Sync {
    /// Records one event. Never fails the caller: a sink that cannot persist logs it.
    fn emit(&self, event: NewEvent);

    /// Events this sink could not persist so far (the metrics export it: an event log on a
    /// full or dead system disk must page someone). 0 for sinks that persist nothing.
    fn persist_failures(&self) -> u64 {
        0
    }
}

/// Collects events in memory (tests).
#[derive(Debug, Default)]
pub struct VecSink(pub Mutex<Vec<NewEvent>>);

impl EventSink for VecSink {
    fn emit(&self, event: NewEvent) {
        self.0.lock().push(event);
    }
}

impl VecSink {
    /// The ids recorded so far.
    pub fn ids(&self) -> Vec<EventId> {
        self.0.lock().iter().map(|e| e.id).collect()
    }
}

/// The persisted event log of one mount (`<state_dir>/events.jsonl`).
#[derive(Debug)]
pub struct EventLog {
    path: PathBuf,
    inner: Mutex<(File, u64)>,
    /// Events whose line could not be written and synced.
    failures: std::sync::atomic::AtomicU64,
}

impl EventLog {
    /// Opens (or creates) the log and continues its numbering.
    pub fn open(path: &Path) -> std::io::Result<EventLog> {
        let last = read_events(path)?.last().map_or(0, |e| e.seq);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o644)
            .open(path)?;
        Ok(EventLog {
            path: path.to_owned(),
            inner: Mutex::new((file, last)),
            failures: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The file behind the log.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl EventSink for EventLog {
    fn emit(&self, e: NewEvent) {
        let mut inner = self.inner.lock();
        inner.1 += 1;
        let event = Event {
            seq: inner.1,
            id: e.id.number(),
            kind: e.id.kind().to_owned(),
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            database: e.database,
            volume: e.volume,
            message: e.message,
            fields: e.fields,
        };
        log(e.id.severity(), &event);
        let mut line = serde_json::to_string(&event).unwrap_or_default();
        line.push('\n');
        let file = &mut inner.0;
        if let Err(err) = file
            .write_all(line.as_bytes())
            .and_then(|()| file.sync_data())
        {
            self.failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(path = %self.path.display(), %err, "cannot persist event {}", event.seq);
        }
    }

    fn persist_failures(&self) -> u64 {
        self.failures.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Logs one event as one line, at its severity, with its id, kind, database and volume.
fn log(severity: Severity, e: &Event) {
    // One line per event: a message never spans lines in the log.
    let message = e.message.replace(['\n', '\r'], " ");
    let db = e.database.as_deref().unwrap_or("-");
    let volume = e.volume.as_deref().unwrap_or("-");
    match severity {
        Severity::Error => {
            tracing::error!(id = e.id, kind = %e.kind, database = db, volume, "{message}");
        }
        Severity::Warn => {
            tracing::warn!(id = e.id, kind = %e.kind, database = db, volume, "{message}");
        }
        Severity::Info => {
            tracing::info!(id = e.id, kind = %e.kind, database = db, volume, "{message}");
        }
    }
}

/// Reads every event of a log file; a missing file is an empty log. Lines that do not
/// parse (a torn last line after a crash) are skipped.
pub fn read_events(path: &Path) -> std::io::Result<Vec<Event>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut events = Vec::new();
    for line in BufReader::new(file).lines() {
        if let Ok(event) = serde_json::from_str::<Event>(&line?) {
            events.push(event);
        }
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_numbers_and_persists() {
        let dir = std::env::temp_dir().join(format!("reseedfs-ev-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tempdir");
        let path = dir.join("events.jsonl");
        let _ = std::fs::remove_file(&path);
        let log = EventLog::open(&path).expect("open");
        log.emit(
            NewEvent::new(EventId::CopyFailed, "Volume1 failed")
                .database("db001")
                .volume("Volume1")
                .field("errno", 5),
        );
        drop(log);
        let log = EventLog::open(&path).expect("reopen");
        log.emit(NewEvent::new(EventId::MountFinished, "down"));
        let events = read_events(&path).expect("read");
        assert_eq!(events.len(), 2);
        assert_eq!((events[0].seq, events[0].id), (1, 1109));
        assert_eq!(events[0].fields["errno"], 5);
        assert_eq!(events[0].volume.as_deref(), Some("Volume1"));
        assert_eq!((events[1].seq, events[1].id), (2, 3002));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
