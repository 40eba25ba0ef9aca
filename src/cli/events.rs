//! `reseedfs events`: the numbered events, filtered by time (`--since 10m`, or an RFC 3339
//! time) and database (`--database db001`), one line each or JSON (`--json`), and followed
//! as they happen (`--follow`).
//!
//! `--follow` tails `<state_dir>/events.jsonl` (every 250 ms), the log the daemon writes
//! each event to before anything else sees it, so it works whether the daemon runs or not,
//! and across its restarts (a log that was replaced or truncated is read again from its
//! start) and its rotations (the file it was reading is read to its end, then the files
//! rotated after it, then the new one). Both read the rotated files (`events.jsonl.N`)
//! first, oldest first.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;

use super::{EventsArgs, Exit, load, render_event};
use crate::control::{self, Request, Response};
use crate::events::Event;

/// How often `--follow` looks for new events.
const FOLLOW_PERIOD: Duration = Duration::from_millis(250);

/// Which events to show.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// Only events at or after this time.
    pub since: Option<SystemTime>,
    /// Only events about this database.
    pub database: Option<String>,
}

impl Filter {
    /// Whether `e` passes. An event whose time does not parse is shown.
    pub fn accepts(&self, e: &Event) -> bool {
        if let Some(db) = &self.database {
            if e.database.as_deref() != Some(db.as_str()) {
                return false;
            }
        }
        match (self.since, humantime::parse_rfc3339_weak(&e.time)) {
            (Some(since), Ok(t)) => t >= since,
            _ => true,
        }
    }
}

/// `--since`: a duration before `now` (`10m`, `2h 30m`, `3d`) or an RFC 3339 time
/// (`2026-11-22T06:00:00Z`).
pub fn parse_since(s: &str, now: SystemTime) -> Result<SystemTime, String> {
    if let Ok(d) = humantime::parse_duration(s) {
        return now
            .checked_sub(d)
            .ok_or_else(|| format!("--since {s}: too far back"));
    }
    humantime::parse_rfc3339_weak(s).map_err(|_| {
        format!("--since {s:?}: want a duration (10m, 2h, 3d) or an RFC 3339 time (2026-11-22T06:00:00Z)")
    })
}

/// Runs `reseedfs events`.
pub fn run(a: &EventsArgs) -> anyhow::Result<Exit> {
    let config = match load(&a.config) {
        Ok(c) => c,
        Err(e) => return Ok(e),
    };
    let since = match a
        .since
        .as_deref()
        .map(|s| parse_since(s, SystemTime::now()))
    {
        Some(Err(e)) => {
            eprintln!("reseedfs: {e}");
            return Ok(Exit::Failure);
        }
        Some(Ok(t)) => Some(t),
        None => None,
    };
    let filter = Filter {
        since,
        database: a.database.clone(),
    };
    let mut out = io::stdout().lock();
    if a.follow {
        return follow(&config.events_path(), &filter, a.json, &mut out);
    }
    // The daemon serves the log; when it is not running, the persisted file still tells.
    let list = match control::call(&config.socket_path(), &Request::Events { since: 0 }) {
        Ok(Response::Events(list)) => list,
        _ => crate::events::read_events(&config.events_path())
            .with_context(|| format!("read {}", config.events_path().display()))?,
    };
    match print(&list, &filter, a.json, &mut out) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(Exit::Ok),
        r => r.map(|()| Exit::Ok).context("write to stdout"),
    }
}

fn print(list: &[Event], filter: &Filter, json: bool, out: &mut impl Write) -> io::Result<()> {
    for e in list.iter().filter(|e| filter.accepts(e)) {
        if json {
            writeln!(out, "{}", serde_json::to_string(e)?)?;
        } else {
            writeln!(out, "{}", render_event(e))?;
        }
    }
    out.flush()
}

/// Prints the events of `path` that pass `filter`, then every new one, until stdout closes.
fn follow(path: &Path, filter: &Filter, json: bool, out: &mut impl Write) -> anyhow::Result<Exit> {
    let mut tail = Tail::new(path);
    loop {
        let events = tail
            .poll()
            .with_context(|| format!("read {}", path.display()))?;
        match print(&events, filter, json, out) {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(Exit::Ok),
            r => r.context("write to stdout")?,
        }
        std::thread::sleep(FOLLOW_PERIOD);
    }
}

/// Reads the events appended to a JSON-lines log since the last call, across its
/// rotations (see [`crate::events`]).
#[derive(Debug)]
pub struct Tail {
    path: PathBuf,
    /// The file read, and its inode (none on Windows): the current file when it was opened.
    file: Option<(File, Option<u64>)>,
    offset: u64,
    partial: Vec<u8>,
}

fn inode(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().and_then(|m| file_id(&m))
}

impl Tail {
    /// A tail of `path` from the start of its oldest rotated file (the log need not
    /// exist yet).
    pub fn new(path: &Path) -> Tail {
        Tail {
            path: path.to_owned(),
            file: None,
            offset: 0,
            partial: Vec::new(),
        }
    }

    /// The events written since the last call: complete lines only (a line being written
    /// waits for the next call); lines that do not parse are skipped. When the log was
    /// rotated, the file read so far is finished first, then the files rotated after it,
    /// then the new one from its start; a log replaced by another file, or truncated, is
    /// read again from its start.
    pub fn poll(&mut self) -> io::Result<Vec<Event>> {
        let mut out = Vec::new();
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            // No log yet, or it is being rotated this instant: what the file held has
            // still to be read.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.read_more(&mut out)?;
                return Ok(out);
            }
            Err(e) => return Err(e),
        };
        let id = file_id(&meta);
        let held = self.file.as_ref().map(|(_, id)| *id);
        match held {
            Some(held) if held == id && meta.len() >= self.offset => {}
            Some(held) if held == id => self.open_current(id)?,
            Some(old) => {
                // Rotated: the rest of the file held, then what was rotated after it.
                self.read_more(&mut out)?;
                let rotated = self.rotated();
                if let Some(i) = rotated.iter().position(|p| inode(p) == old) {
                    for p in &rotated[i + 1..] {
                        out.extend(crate::events::read_file_events(p)?);
                    }
                }
                self.open_current(id)?;
            }
            None => {
                self.open_current(id)?;
                // The rotated files, oldest first; the current file is read below through
                // the descriptor just opened (even if it was rotated meanwhile; without
                // file ids, on Windows, every rotated file is read).
                for p in self
                    .rotated()
                    .iter()
                    .filter(|p| id.is_none() || inode(p) != id)
                {
                    out.extend(crate::events::read_file_events(p)?);
                }
            }
        }
        self.read_more(&mut out)?;
        Ok(out)
    }

    /// The rotated files of the log, oldest first.
    fn rotated(&self) -> Vec<PathBuf> {
        let mut files = crate::events::log_files(&self.path);
        files.retain(|p| p != &self.path);
        files
    }

    fn open_current(&mut self, id: Option<u64>) -> io::Result<()> {
        self.file = Some((File::open(&self.path)?, id));
        self.offset = 0;
        self.partial.clear();
        Ok(())
    }

    /// The complete lines appended to the file held since the last read.
    fn read_more(&mut self, out: &mut Vec<Event>) -> io::Result<()> {
        let Some((file, _)) = self.file.as_mut() else {
            return Ok(());
        };
        file.seek(SeekFrom::Start(self.offset))?;
        let n = file.read_to_end(&mut self.partial)?;
        self.offset += n as u64;
        let complete = self
            .partial
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let lines: Vec<u8> = self.partial.drain(..complete).collect();
        out.extend(
            lines
                .split(|&b| b == b'\n')
                .filter_map(|line| serde_json::from_slice::<Event>(line).ok()),
        );
        Ok(())
    }
}

/// The identity of the file behind `meta`: its inode, so that a log replaced under the
/// same name is read from its start. Off Unix there is none here (`None`): a replaced log is
/// seen only once it is shorter than what was read.
fn file_id(meta: &std::fs::Metadata) -> Option<u64> {
    #[cfg(unix)]
    return Some(std::os::unix::fs::MetadataExt::ino(meta));
    #[cfg(not(unix))]
    {
        let _ = meta;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{EventId, EventLog, EventSink, NewEvent};

    fn event(seq: u64, time: &str, db: Option<&str>) -> Event {
        Event {
            seq,
            id: 1109,
            kind: "copy.failed".into(),
            time: time.into(),
            database: db.map(str::to_owned),
            volume: None,
            message: "m".into(),
            fields: Default::default(),
        }
    }

    #[test]
    fn since_takes_a_duration_or_a_time() {
        let now = humantime::parse_rfc3339("2026-11-22T07:00:00Z").unwrap();
        let t = parse_since("10m", now).unwrap();
        assert_eq!(
            humantime::format_rfc3339(t).to_string(),
            "2026-11-22T06:50:00Z"
        );
        let t = parse_since("2026-11-22T06:00:00Z", now).unwrap();
        assert_eq!(
            humantime::format_rfc3339(t).to_string(),
            "2026-11-22T06:00:00Z"
        );
        let e = parse_since("yesterday", now).unwrap_err();
        assert!(e.contains("RFC 3339"), "{e}");
    }

    #[test]
    fn filter_by_time_and_database() {
        let since = humantime::parse_rfc3339("2026-11-22T06:50:00Z").unwrap();
        let f = Filter {
            since: Some(since),
            database: Some("db001".into()),
        };
        assert!(f.accepts(&event(1, "2026-11-22T06:55:00.123Z", Some("db001"))));
        assert!(!f.accepts(&event(2, "2026-11-22T06:45:00.000Z", Some("db001"))));
        assert!(!f.accepts(&event(3, "2026-11-22T06:55:00.000Z", Some("db002"))));
        assert!(!f.accepts(&event(4, "2026-11-22T06:55:00.000Z", None)));
        assert!(Filter::default().accepts(&event(5, "garbled", None)));
    }

    #[test]
    fn tail_reads_what_is_appended_and_starts_over_on_a_new_log() {
        let dir = std::env::temp_dir().join(format!("reseedfs-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.jsonl");
        let _ = std::fs::remove_file(&path);
        let mut tail = Tail::new(&path);
        assert!(tail.poll().unwrap().is_empty(), "no log yet");
        let log = EventLog::open(&path).unwrap();
        log.emit(NewEvent::new(EventId::MountStarted, "up").database("db001"));
        log.emit(NewEvent::new(EventId::CopyFailed, "down"));
        let seqs = |v: Vec<Event>| v.iter().map(|e| e.seq).collect::<Vec<_>>();
        assert_eq!(seqs(tail.poll().unwrap()), [1, 2]);
        assert!(tail.poll().unwrap().is_empty());
        // A line being written shows once it is complete.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        let line = serde_json::to_string(&event(3, "2026-11-22T06:55:00Z", None)).unwrap();
        let (a, b) = line.split_at(10);
        f.write_all(a.as_bytes()).unwrap();
        assert!(tail.poll().unwrap().is_empty());
        f.write_all(format!("{b}\n").as_bytes()).unwrap();
        assert_eq!(seqs(tail.poll().unwrap()), [3]);
        // The log replaced (a reboot emptied /run): read from its start.
        drop(log);
        std::fs::remove_file(&path).unwrap();
        let log = EventLog::open(&path).unwrap();
        log.emit(NewEvent::new(EventId::MountStarted, "up again"));
        assert_eq!(seqs(tail.poll().unwrap()), [1]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn r13_tail_follows_the_log_across_its_rotations() {
        let dir = std::env::temp_dir().join(format!("reseedfs-tail-rot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.jsonl");
        let rotation = crate::events::Rotation {
            max_bytes: 2048,
            keep: 3,
        };
        let log = crate::events::EventLog::open_with(&path, rotation, None).unwrap();
        for i in 0..20 {
            log.emit(NewEvent::new(EventId::CopyFailed, format!("before {i}")));
        }
        assert!(crate::events::rotated_path(&path, 1).exists());
        // Started after rotations: the rotated files first, then the current one.
        let mut tail = Tail::new(&path);
        let mut seen: Vec<u64> = tail.poll().unwrap().iter().map(|e| e.seq).collect();
        let first = seen[0];
        assert_eq!(seen, (first..=20).collect::<Vec<_>>());
        // Events written between polls, with one or two rotations in between.
        let mut next = 21;
        for burst in [1, 3, 9, 14, 2, 11] {
            for _ in 0..burst {
                log.emit(NewEvent::new(EventId::CopyFailed, format!("event {next}")));
                next += 1;
            }
            seen.extend(tail.poll().unwrap().iter().map(|e| e.seq));
        }
        assert_eq!(
            seen,
            (first..next).collect::<Vec<_>>(),
            "none lost, none twice"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
