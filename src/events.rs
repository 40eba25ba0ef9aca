//! Numbered, structured records of what reseedfs did, persisted as JSON lines in the
//! state directory (`events.jsonl`).
//!
//! The log survives its own damage and never grows without bound:
//! - a line that cannot be read (torn by a crash or a full disk, not UTF-8, not an event)
//!   is skipped with a warning, never a reason to refuse to start; a torn last line is
//!   closed with a newline before the next event is appended, so it cannot swallow it;
//! - past `[events] max_bytes` the file is rotated: `events.jsonl` becomes
//!   `events.jsonl.1`, `.1` becomes `.2`, ... and the oldest beyond `[events] keep` is
//!   deleted. Readers ([`read_events`], `reseedfs events`, `--follow`) go through the
//!   rotated files oldest first, then the current one; numbering goes on across them.
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
//! | 3006 | `volume.foreign`            | a volume (or the witness) belongs to another pool: never adopted, left alone (both pool ids) |
//! | 3007 | `state.damaged`             | a pool state file cannot be read (or is not private to root): rewritten when a newer state vouches, else the mount refuses |
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
//! | 3060 | `request.panicked`          | a request hit a bug (a panic): it was answered EIO, the request thread goes on serving (operation, panic message); on a volume's lane: answered as a failed I/O of the volume, which is failed (volume, operation, `lane: true`) |
//! | 3070 | `checksum.repaired`         | a block of a copy did not match its checksum: the read was served from a copy whose block matches, and the bad block rewritten from it and read back (database, file, offset, volume, source) |
//! | 3071 | `checksum.unrecoverable`    | a block matches its checksum on no copy: the read failed with EIO (database, file, offset) |
//! | 3072 | `scrub.started`             | a scrub of a database's in-sync copies started (copies, bytes) |
//! | 3073 | `scrub.completed`           | the scrub ended: blocks checked, bad blocks found and repaired, blocks summed for the first time (or why it stopped) |
//!
//! Each event is also logged, one line each ([`EventId::severity`]): at ERROR when a human
//! must act (1109, 2058, 3003, 3005, 3007, 3014, 3017, 3019, 3060, 3071), at WARN when the system
//! carried on around a problem (3004, 3006, 3008, 3012, 3015, 3020, 3032, 3034, 3070), at INFO
//! otherwise.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
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
    /// 3006: a volume or witness of another pool was found and left alone.
    ForeignVolume,
    /// 3007: a pool state file cannot be read or trusted.
    StateDamaged,
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
    /// 3060: a request panicked (a bug): answered EIO, its thread goes on serving.
    RequestPanicked,
    /// 3070: a block did not match its checksum on a copy; served and repaired from another.
    ChecksumRepaired,
    /// 3071: a block matches its checksum on no copy: the read failed with EIO.
    ChecksumUnrecoverable,
    /// 3072: a scrub of a database's in-sync copies started.
    ScrubStarted,
    /// 3073: a scrub ended (what it found and repaired, or why it stopped).
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
            EventId::ForeignVolume => 3006,
            EventId::StateDamaged => 3007,
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
            EventId::RequestPanicked => 3060,
            EventId::ChecksumRepaired => 3070,
            EventId::ChecksumUnrecoverable => 3071,
            EventId::ScrubStarted => 3072,
            EventId::ScrubCompleted => 3073,
        }
    }

    /// How loudly the daemon logs it: [`Severity::Error`] when a human must act (one log
    /// line each), [`Severity::Warn`] when the system carried on around a problem.
    pub fn severity(self) -> Severity {
        match self {
            EventId::CopyFailed
            | EventId::CopyDiverged
            | EventId::StatePersistFailed
            | EventId::StateDamaged
            | EventId::SparesExhausted
            | EventId::AutoReseedStopped
            | EventId::IncrementalReseedError
            | EventId::ReseedFailed
            | EventId::ChecksumUnrecoverable
            | EventId::RequestPanicked => Severity::Error,
            EventId::ActiveChanged
            | EventId::ForeignVolume
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
            EventId::ForeignVolume => "volume.foreign",
            EventId::StateDamaged => "state.damaged",
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
            EventId::RequestPanicked => "request.panicked",
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

thread_local! {
    /// Who asked for what this thread does now (a control request being served).
    static ASKED_BY: std::cell::RefCell<Option<serde_json::Value>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` on behalf of `who` (the peer of a control connection, as the kernel gave it):
/// every event `f` causes on this thread records it as `asked_by`.
pub fn asked_by<T>(who: serde_json::Value, f: impl FnOnce() -> T) -> T {
    struct Reset(Option<serde_json::Value>);
    impl Drop for Reset {
        fn drop(&mut self) {
            ASKED_BY.with_borrow_mut(|a| *a = self.0.take());
        }
    }
    let _reset = Reset(ASKED_BY.with_borrow_mut(|a| a.replace(who)));
    f()
}

impl NewEvent {
    /// An event with a message and no database, volume or fields (but `asked_by` when a
    /// control request causes it: see [`asked_by`]).
    pub fn new(id: EventId, message: impl Into<String>) -> NewEvent {
        let mut fields = serde_json::Map::new();
        if let Some(who) = ASKED_BY.with_borrow(Clone::clone) {
            fields.insert("asked_by".into(), who);
        }
        NewEvent {
            id,
            database: None,
            volume: None,
            message: message.into(),
            fields,
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

/// When the event log is rotated (the `[events]` section of the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rotation {
    /// The current file is rotated before an event would take it past this size.
    /// Default 64 MiB (`"64MiB"`; a number of bytes is taken too).
    #[serde(with = "size")]
    pub max_bytes: u64,
    /// Rotated files kept (`events.jsonl.1` .. `.keep`); the oldest beyond is deleted.
    /// Default 4: with the default size, at most 320 MiB of events.
    pub keep: u32,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            max_bytes: 64 << 20,
            keep: 4,
        }
    }
}

impl Rotation {
    /// The smallest `max_bytes` accepted: a few events per file at least.
    pub const MIN_BYTES: u64 = 64 << 10;
    /// The most rotated files kept.
    pub const MAX_KEEP: u32 = 1000;
}

/// Serde for a size: a number of bytes, or a string such as `"64MiB"`.
mod size {
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Value {
        Bytes(u64),
        Text(String),
    }

    pub fn serialize<S: Serializer>(bytes: &u64, s: S) -> Result<S::Ok, S::Error> {
        if bytes % (1 << 20) == 0 {
            s.serialize_str(&format!("{}MiB", bytes >> 20))
        } else {
            s.serialize_u64(*bytes)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        use serde::de::Error;
        match Value::deserialize(d)? {
            Value::Bytes(b) => Ok(b),
            Value::Text(t) => t
                .trim()
                .parse::<bytesize::ByteSize>()
                .map(|b| b.as_u64())
                .map_err(|e| D::Error::custom(format!("{t:?} is not a size like 64MiB ({e})"))),
        }
    }
}

/// The rotated file `n` of the log at `path` (`events.jsonl.n`).
pub fn rotated_path(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// The files of the log at `path` that exist, oldest first: the rotated ones from the
/// highest number down, then the current one.
pub fn log_files(path: &Path) -> Vec<PathBuf> {
    let mut rotated = Vec::new();
    let mut n = 1;
    loop {
        let p = rotated_path(path, n);
        if !p.exists() {
            break;
        }
        rotated.push(p);
        n += 1;
    }
    rotated.reverse();
    if path.exists() {
        rotated.push(path.to_owned());
    }
    rotated
}

/// The persisted event log of one mount (`<state_dir>/events.jsonl`, rotated by size).
#[derive(Debug)]
pub struct EventLog {
    path: PathBuf,
    rotation: Rotation,
    /// The group that may read the log (`control_group`).
    group: Option<u32>,
    inner: Mutex<Current>,
    /// Events whose line could not be written and synced.
    failures: std::sync::atomic::AtomicU64,
}

/// The file events are appended to.
#[derive(Debug)]
struct Current {
    file: File,
    /// Its size.
    bytes: u64,
    /// The last event's number.
    seq: u64,
}

impl EventLog {
    /// Opens (or creates) the log with the default rotation and continues its numbering.
    pub fn open(path: &Path) -> std::io::Result<EventLog> {
        EventLog::open_with(path, Rotation::default(), None)
    }

    /// Opens (or creates) the log in its directory, which must be private to root
    /// ([`crate::private`]): the file is 0640, readable by `group` (the `control_group`,
    /// for `events --follow`) when given, never by everyone. Rotated as `rotation` says;
    /// continues the numbering. Damage (torn or unreadable lines) is skipped, never refused.
    pub fn open_with(
        path: &Path,
        rotation: Rotation,
        group: Option<u32>,
    ) -> std::io::Result<EventLog> {
        let mut file = Self::create_current(path, group)?;
        let seq = log_files(path)
            .iter()
            .rev()
            .find_map(|p| last_seq(p).ok().flatten())
            .unwrap_or(0);
        let mut bytes = file.metadata()?.len();
        if bytes > 0 {
            // A last line torn by a crash: close it, so the next event starts a line of
            // its own (the torn one is skipped by readers).
            let mut last = [0u8];
            let mut reader = File::open(path)?;
            reader.seek(SeekFrom::Start(bytes - 1))?;
            reader.read_exact(&mut last)?;
            if last[0] != b'\n' {
                tracing::warn!(
                    path = %path.display(),
                    "the event log ends in a torn line (a crash while it was written); it is kept and skipped"
                );
                file.write_all(b"\n")?;
                bytes += 1;
            }
        }
        Ok(EventLog {
            path: path.to_owned(),
            rotation,
            group,
            inner: Mutex::new(Current { file, bytes, seq }),
            failures: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Opens (or creates) the current file, 0640, in its private directory.
    fn create_current(path: &Path, group: Option<u32>) -> std::io::Result<File> {
        let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
        else {
            return Err(std::io::ErrorKind::InvalidInput.into());
        };
        let dir = crate::private::PrivateDir::open(dir)?.ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} does not exist", dir.display()),
            )
        })?;
        dir.append(name, 0o640, group)
    }

    /// The file behind the log.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the current file to `.1` (and each rotated file one number up, the oldest
    /// beyond `keep` deleted), then starts a new current file.
    fn rotate(&self, cur: &mut Current) -> std::io::Result<()> {
        let keep = self.rotation.keep;
        // The oldest kept file is about to move beyond `keep`: delete it, and whatever a
        // larger `keep` of an earlier config left after it.
        let mut n = keep.max(1);
        loop {
            match std::fs::remove_file(rotated_path(&self.path, n)) {
                Ok(()) => n += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) => return Err(e),
            }
        }
        for n in (1..keep).rev() {
            let from = rotated_path(&self.path, n);
            if from.exists() {
                std::fs::rename(&from, rotated_path(&self.path, n + 1))?;
            }
        }
        if keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            std::fs::rename(&self.path, rotated_path(&self.path, 1))?;
        }
        cur.file = Self::create_current(&self.path, self.group)?;
        cur.bytes = 0;
        if let Some(dir) = self.path.parent() {
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    }
}

impl EventSink for EventLog {
    fn emit(&self, e: NewEvent) {
        let mut cur = self.inner.lock();
        cur.seq += 1;
        let event = Event {
            seq: cur.seq,
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
        if cur.bytes > 0 && cur.bytes + line.len() as u64 > self.rotation.max_bytes {
            if let Err(err) = self.rotate(&mut cur) {
                tracing::warn!(path = %self.path.display(), %err, "cannot rotate the event log; it grows on");
            }
        }
        let file = &mut cur.file;
        match file
            .write_all(line.as_bytes())
            .and_then(|()| file.sync_data())
        {
            Ok(()) => cur.bytes += line.len() as u64,
            Err(err) => {
                self.failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(path = %self.path.display(), %err, "cannot persist event {}", event.seq);
                cur.bytes = cur.file.metadata().map_or(cur.bytes, |m| m.len());
            }
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

/// Parses the lines of `bytes` (a trailing part without a newline is a line too);
/// returns the events and how many lines were skipped.
fn parse_lines(bytes: &[u8]) -> (Vec<Event>, usize) {
    let mut skipped = 0;
    let events = bytes
        .split(|&b| b == b'\n')
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .filter_map(|line| match serde_json::from_slice::<Event>(line) {
            Ok(e) => Some(e),
            Err(_) => {
                skipped += 1;
                None
            }
        })
        .collect();
    (events, skipped)
}

/// Reads every event of one file of the log; a missing file has none. Lines that cannot
/// be read are skipped, with a warning.
pub fn read_file_events(path: &Path) -> std::io::Result<Vec<Event>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let (events, skipped) = parse_lines(&bytes);
    if skipped > 0 {
        tracing::warn!(
            path = %path.display(),
            "skipped {skipped} unreadable lines of the event log (torn by a crash, or damaged)"
        );
    }
    Ok(events)
}

/// Reads every event of the log at `path`, its rotated files first (oldest first); a
/// missing log is empty. Lines that cannot be read (a torn last line after a crash, bytes
/// that are not UTF-8) are skipped with a warning.
pub fn read_events(path: &Path) -> std::io::Result<Vec<Event>> {
    read_events_since(path, 0)
}

/// The events of the log at `path` numbered above `since`; rotated files that end at or
/// below it are not read.
pub fn read_events_since(path: &Path, since: u64) -> std::io::Result<Vec<Event>> {
    let files = log_files(path);
    // The newest rotated file that ends at or below `since`: nothing before it is needed.
    let first = if since == 0 {
        0
    } else {
        files
            .iter()
            .rposition(|p| last_seq(p).ok().flatten().is_some_and(|s| s <= since))
            .map_or(0, |i| i + 1)
    };
    let mut out = Vec::new();
    for p in &files[first..] {
        out.extend(read_file_events(p)?.into_iter().filter(|e| e.seq > since));
    }
    Ok(out)
}

/// The number of the last readable event of one file, reading from its end.
fn last_seq(path: &Path) -> std::io::Result<Option<u64>> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let mut window: u64 = 64 << 10;
    loop {
        let start = len.saturating_sub(window);
        f.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        Read::by_ref(&mut f)
            .take(len - start)
            .read_to_end(&mut buf)?;
        // The first line of a window that does not start the file may be cut.
        let whole = if start == 0 {
            &buf[..]
        } else {
            match buf.iter().position(|&b| b == b'\n') {
                Some(i) => &buf[i + 1..],
                None => &[][..],
            }
        };
        if let Some(seq) = parse_lines(whole).0.iter().map(|e| e.seq).max() {
            return Ok(Some(seq));
        }
        if start == 0 {
            return Ok(None);
        }
        window *= 4;
    }
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

    fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("reseedfs-ev-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("tempdir");
        dir
    }

    #[test]
    fn r13_a_damaged_log_is_skipped_not_refused() {
        let dir = tempdir("damaged");
        let path = dir.join("events.jsonl");
        let log = EventLog::open(&path).expect("open");
        for i in 0..3 {
            log.emit(NewEvent::new(EventId::MountStarted, format!("up {i}")));
        }
        drop(log);
        // A line that is not UTF-8 in the middle, and a last line torn by a crash.
        let mut bytes = std::fs::read(&path).expect("read");
        let second = bytes.iter().position(|&b| b == b'\n').expect("a line") + 1;
        bytes.splice(
            second..second,
            b"\xff\xfe not an event \xc3\n".iter().copied(),
        );
        bytes.extend_from_slice(b"{\"seq\":4,\"id\":3001,\"kind\":\"mount.sta");
        std::fs::write(&path, &bytes).expect("damage");
        assert_eq!(
            read_events(&path).expect("read a damaged log").len(),
            3,
            "the damaged lines are skipped"
        );
        let log = EventLog::open(&path).expect("a damaged log opens");
        log.emit(NewEvent::new(EventId::MountFinished, "down"));
        drop(log);
        let events = read_events(&path).expect("read");
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            [1, 2, 3, 4],
            "numbering goes on; the new event is not swallowed"
        );
        assert_eq!(events[3].id, 3002);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn r13_the_log_is_rotated_by_size_and_read_across_its_files() {
        let dir = tempdir("rotate");
        let path = dir.join("events.jsonl");
        let rotation = Rotation {
            max_bytes: 4096,
            keep: 2,
        };
        let log = EventLog::open_with(&path, rotation, None).expect("open");
        for i in 0..200 {
            log.emit(NewEvent::new(EventId::CopyFailed, format!("event {i}")).database("db001"));
        }
        assert!(rotated_path(&path, 1).exists() && rotated_path(&path, 2).exists());
        assert!(
            !rotated_path(&path, 3).exists(),
            "only `keep` rotated files"
        );
        for p in log_files(&path) {
            let len = std::fs::metadata(&p).expect("stat").len();
            assert!(len <= 4096, "{} is {len} bytes", p.display());
        }
        let events = read_events(&path).expect("read");
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        let first = seqs[0];
        assert!(first > 1, "the oldest events were rotated out");
        assert_eq!(
            seqs,
            (first..=200).collect::<Vec<_>>(),
            "in order, none missing"
        );
        // Since a number: the rotated files before it are not needed.
        let since: Vec<u64> = read_events_since(&path, 190)
            .expect("since")
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(since, (191..=200).collect::<Vec<_>>());
        // Reopened right after a rotation (the current file empty): numbering goes on.
        drop(log);
        std::fs::rename(rotated_path(&path, 1), rotated_path(&path, 2)).expect("shift");
        std::fs::rename(&path, rotated_path(&path, 1)).expect("rotate");
        let log = EventLog::open_with(&path, rotation, None).expect("reopen");
        log.emit(NewEvent::new(EventId::MountStarted, "up"));
        assert_eq!(
            read_events(&path).expect("read").last().map(|e| e.seq),
            Some(201)
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
