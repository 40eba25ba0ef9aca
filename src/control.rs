//! The control socket (`<state_dir>/control.sock`): one JSON request per connection, one
//! JSON response back.
//!
//! | request   | legal when    | answer                          |
//! |-----------|---------------|---------------------------------|
//! | `Status`  | always        | copies, volumes, states         |
//! | `Events`  | always        | events after a sequence number  |
//! | `Unmount` | always        | `Ok`, then the mount goes down  |
//! | `Reseed`  | a copy is not in sync, or `to` names one | `Started`; progress in `Status` |
//! | `Block`   | always        | the copies changed              |
//! | `Throttle` | always       | the rebuild throttle, budget changed (event 3050) |
//! | `Explain` | always        | per copy not healthy: step, next action, blocker, plan; or what if a volume failed |
//! | `Verify`  | two copies in sync, none verifying | `Verify` (its status); progress with `VerifyStatus` |
//! | `VerifyStatus` | a verification ran since the mount | `Verify`: progress, then the report |
//!
//! The JSON of every answer is an API: fields are only ever added (with defaults), never
//! renamed or removed, so scripts written against `status --json` and `explain --json`
//! keep working.
//!
//! Who may ask: the kernel says who connected (`SO_PEERCRED`, `SO_PEERGROUPS`), never the
//! client. Root may ask everything; members of the config's `control_group` the
//! read-only requests ([`Request::is_read_only`]); nobody else anything. The socket
//! file is bound in a directory only root can enter and given its final mode (0600, or
//! 0660 with the group) before it is moved into the state directory, so it is never
//! reachable with wider rights. Every connection has a deadline to send its request
//! ([`REQUEST_DEADLINE`]) and read the answer, and at most [`MAX_CONNECTIONS`] are served
//! at once. The events a request causes record who asked (`asked_by`: uid, pid, command).
//!
//! On Windows the channel is a named pipe whose security descriptor admits Administrators
//! and SYSTEM only (`platform/windows/pipe.rs`): every peer counts as root, and the
//! deadlines are not enforced (blocking pipe I/O has no timeouts).

use std::io::{BufRead, BufReader, Read, Write};
#[cfg(unix)]
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::events::Event;
use crate::names::DbName;
use crate::names::VolumeName;
use crate::private::PrivateDir;
use crate::status::Status;

/// The channel's transport: a Unix socket (bound private to root, see [`serve`]); on
/// Windows a named pipe derived from the same path, open to Administrators and SYSTEM only
/// (`platform/windows/pipe.rs`).
#[cfg(unix)]
mod transport {
    use std::path::Path;
    use std::time::Duration;

    pub use std::os::unix::net::UnixStream as Stream;

    /// Connects to the daemon at `path`.
    pub fn connect(path: &Path) -> std::io::Result<Stream> {
        Stream::connect(path)
    }

    /// Bounds the wait of the next read.
    pub fn set_read_timeout(stream: &Stream, t: Option<Duration>) -> std::io::Result<()> {
        stream.set_read_timeout(t)
    }

    /// Bounds the wait of the next write.
    pub fn set_write_timeout(stream: &Stream, t: Option<Duration>) -> std::io::Result<()> {
        stream.set_write_timeout(t)
    }
}

#[cfg(windows)]
mod transport {
    use std::time::Duration;

    pub use crate::sys::pipe::{Stream, bind, connect};

    /// A pipe instance opened for blocking I/O has no timeouts: on Windows the request
    /// deadline is not enforced (only Administrators and SYSTEM can connect, and at most
    /// [`super::MAX_CONNECTIONS`] connections are served at once).
    pub fn set_read_timeout(_stream: &Stream, _t: Option<Duration>) -> std::io::Result<()> {
        Ok(())
    }

    /// As [`set_read_timeout`]: not enforced on Windows.
    pub fn set_write_timeout(_stream: &Stream, _t: Option<Duration>) -> std::io::Result<()> {
        Ok(())
    }
}

/// How long a client has to send its whole request line.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// How long a client has to read the answer.
const ANSWER_DEADLINE: Duration = Duration::from_secs(30);

/// Connections served at once; more are closed at once (an `unmount` or a `reseed
/// --wait` holds one while it lasts).
pub const MAX_CONNECTIONS: usize = 32;

/// The longest request line read.
const MAX_REQUEST_BYTES: u64 = 1 << 20;

/// A request to the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// The status of every copy and volume.
    Status,
    /// Events with a sequence number above `since`.
    Events {
        /// Last sequence number already seen (0: all).
        since: u64,
    },
    /// Unmount and stop the daemon.
    Unmount,
    /// Start a reseed of a copy of `db`.
    Reseed {
        /// The database.
        db: DbName,
        /// Source volume (an in-sync copy); default: chosen by the daemon.
        from: Option<VolumeName>,
        /// Target volume: a volume holding a copy of `db` (reseeded in place) or a
        /// spare (takes the place of the copy that is not in sync). Default: the copy
        /// that is not in sync, in place when its volume answers, else the best spare.
        to: Option<VolumeName>,
    },
    /// Suspend the copy of `db` on `volume` (it misses writes from here on, recorded).
    Suspend {
        /// The database.
        db: DbName,
        /// The copy's volume.
        volume: VolumeName,
    },
    /// Resume the copy of `db` on `volume`: incremental resync from its dirty map.
    Resume {
        /// The database.
        db: DbName,
        /// The copy's volume.
        volume: VolumeName,
    },
    /// Set or clear ReseedBlocked / ResumeBlocked.
    Block {
        /// The database.
        db: DbName,
        /// Only the copy on this volume (default: every copy of `db`).
        volume: Option<String>,
        /// Change ReseedBlocked.
        reseed: bool,
        /// Change ResumeBlocked.
        resume: bool,
        /// Set (true) or clear (false).
        set: bool,
    },
    /// Change the rebuild throttle's budget at run time (until the mount stops).
    Throttle {
        /// The new budget in bytes per second; `None`: unlimited.
        max_bytes_per_s: Option<u64>,
        /// What the client says of itself: kept for older clients and ignored, since the
        /// event records who asked as the kernel says ([`Asker`]).
        #[serde(default)]
        by: Option<String>,
    },
    /// Explain the copies that are not healthy, or what a volume's failure would do.
    Explain {
        /// Only this database (default: all).
        db: Option<DbName>,
        /// Instead: what would happen if this volume failed now.
        what_if_fail: Option<String>,
    },
    /// Start an online verification of `db`'s in-sync copies against its active copy.
    Verify {
        /// The database.
        db: DbName,
        /// Rewrite what differs from the active copy.
        repair: bool,
        /// Read at most this many bytes per second (per copy); `None`: unlimited.
        max_bytes_per_s: Option<u64>,
        /// A scrub: every block of every copy checked against its checksum and repaired
        /// from a copy whose block matches (`reseedfs scrub`).
        #[serde(default)]
        scrub: bool,
    },
    /// Progress (then the report) of the running or last verification of `db`.
    VerifyStatus {
        /// The database.
        db: DbName,
    },
}

/// The daemon's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    /// Answer to `Status`.
    Status(Status),
    /// Answer to `Events`.
    Events(Vec<Event>),
    /// Done.
    Ok,
    /// The request failed.
    Error(String),
    /// A reseed started.
    Started {
        /// The database.
        db: DbName,
        /// The volume that receives the copy.
        target: String,
    },
    /// Copies whose flags changed, as `db001\Volume1`.
    Changed(Vec<String>),
    /// Answer to `Throttle`: the throttle with its new budget.
    Throttle(crate::throttle::ThrottleStatus),
    /// Answer to `Explain`.
    Explain(Box<crate::explain::Explanation>),
    /// Answer to `Explain` with `what_if_fail`.
    WhatIf(Box<crate::explain::WhatIf>),
    /// Answer to `Verify` and `VerifyStatus`.
    Verify(Box<crate::verify::VerifyStatus>),
}

impl Request {
    /// The requests that change nothing, which members of `control_group` may ask:
    /// `status`, `events`, `explain` (and a verification's progress).
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            Request::Status
                | Request::Events { .. }
                | Request::Explain { .. }
                | Request::VerifyStatus { .. }
        )
    }

    /// The request's name, for refusals.
    fn name(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Events { .. } => "events",
            Request::Unmount => "unmount",
            Request::Reseed { .. } => "reseed",
            Request::Suspend { .. } => "suspend",
            Request::Resume { .. } => "resume",
            Request::Block { .. } => "block",
            Request::Throttle { .. } => "throttle",
            Request::Explain { .. } => "explain",
            Request::Verify { .. } => "verify",
            Request::VerifyStatus { .. } => "verify --status",
        }
    }
}

/// Who asked: the process at the other end of a control connection, as the kernel says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Asker {
    /// Its user id.
    pub uid: u32,
    /// Its user's name, when it has one.
    pub user: Option<String>,
    /// Its process id (0 when it is in another pid namespace).
    pub pid: u32,
    /// Its command line (`/proc/PID/cmdline`), when known: as the process shows it.
    pub command: Option<String>,
    /// Its groups (primary first): what `control_group` is checked against.
    #[serde(skip)]
    pub groups: Vec<u32>,
}

impl Asker {
    /// `root (uid 0), pid 1234 (reseedfs)`.
    pub fn describe(&self) -> String {
        let user = match &self.user {
            Some(name) => format!("{name} (uid {})", self.uid),
            None => format!("uid {}", self.uid),
        };
        match &self.command {
            Some(cmd) => format!("{user}, pid {} ({cmd})", self.pid),
            None => format!("{user}, pid {}", self.pid),
        }
    }

    /// The asker behind the kernel's word on a connection's peer.
    pub fn of(peer: PeerCred) -> Asker {
        let command = (peer.pid != 0).then(|| command_of(peer.pid)).flatten();
        let mut groups = vec![peer.gid];
        groups.extend(peer.groups.iter().copied().filter(|g| *g != peer.gid));
        Asker {
            uid: peer.uid,
            user: peer.user,
            pid: peer.pid,
            command,
            groups,
        }
    }
}

/// What the kernel says of a connection's peer (`SO_PEERCRED`, `SO_PEERGROUPS` on Linux),
/// as it was when it connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCred {
    /// Its process (0 when it is in another pid namespace).
    pub pid: u32,
    /// Its effective user id.
    pub uid: u32,
    /// Its effective group id.
    pub gid: u32,
    /// Its supplementary groups.
    pub groups: Vec<u32>,
    /// Its user's name, when it has one.
    pub user: Option<String>,
}

/// Asks the OS who is at the other end of a connection: the daemon passes its adapter's
/// (the core does not call the OS itself).
pub type PeerOf = fn(&transport::Stream) -> std::io::Result<PeerCred>;

/// The command line of process `pid` as it shows it (`/proc/PID/cmdline`, its name when
/// that is empty), at most 200 characters.
fn command_of(pid: u32) -> Option<String> {
    let argv = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mut line = argv
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(String::from_utf8_lossy)
        .collect::<Vec<_>>()
        .join(" ");
    if line.is_empty() {
        line = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        line.truncate(line.trim_end().len());
    }
    if line.len() > 200 {
        let mut end = 200;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
        line.push('…');
    }
    Some(line)
}

/// Who may ask what: root everything, members of `group` the read-only requests.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    /// The `control_group`, resolved to its id.
    pub group: Option<u32>,
    /// How to learn who connected.
    pub peer_of: PeerOf,
}

impl Access {
    /// `Ok` when `who` may ask `req`, else why not (the answer the client gets).
    pub fn check(&self, who: &Asker, req: &Request) -> Result<(), String> {
        if who.uid == 0 {
            return Ok(());
        }
        let member = self.group.is_some_and(|g| who.groups.contains(&g));
        if member && req.is_read_only() {
            return Ok(());
        }
        Err(if member {
            format!(
                "permission denied: {} may ask status, events and explain; `{}` is for root",
                who.describe(),
                req.name()
            )
        } else {
            format!(
                "permission denied: {} is not root{}",
                who.describe(),
                if self.group.is_some() {
                    " nor a member of the control_group"
                } else {
                    " (the config names no control_group)"
                }
            )
        })
    }
}

/// Handles one request of the asker.
pub type Handler = Arc<dyn Fn(Request, &Asker) -> Response + Send + Sync>;

/// A serving control socket.
#[derive(Debug)]
pub struct Server {
    in_flight: Arc<AtomicUsize>,
    _thread: JoinHandle<()>,
}

impl Server {
    /// Waits (up to `timeout`) until every accepted request has had its answer written:
    /// the daemon calls it last, so that `unmount` gets its answer before the exit.
    pub fn drain(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.in_flight.load(Ordering::Acquire) != 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Counts one connection from accept until its answer is written.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Binds the socket `name` in the private directory `dir` (refusing if a live daemon
/// answers there, replacing a stale one), with mode 0600, or 0660 and group
/// `access.group`, and serves requests on a thread.
pub fn serve(
    dir: &PrivateDir,
    name: &str,
    access: Access,
    handler: Handler,
) -> std::io::Result<Server> {
    let path = dir.path().join(name);
    // On Windows the pipe has no file: a live daemon is asked whatever the directory holds.
    let stale = std::fs::symlink_metadata(&path).is_ok();
    if stale || cfg!(windows) {
        if transport::connect(&path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!(
                    "a reseedfs daemon already answers on {}: unmount it first, or give this mount its own state_dir",
                    path.display()
                ),
            ));
        }
        dir.remove(name)?;
    }
    #[cfg(unix)]
    let listener = bind_private(dir, name, access.group)?;
    #[cfg(windows)]
    let listener = transport::bind(&path)?;
    let in_flight = Arc::new(AtomicUsize::new(0));
    let counter = in_flight.clone();
    let thread = std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            let mut refused = 0u64;
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if counter.load(Ordering::Acquire) >= MAX_CONNECTIONS {
                    // Dropped: closed at once. Said once per burst.
                    refused += 1;
                    if refused.is_power_of_two() {
                        tracing::warn!(
                            "control socket: {MAX_CONNECTIONS} connections already served, closed {refused} more"
                        );
                    }
                    continue;
                }
                counter.fetch_add(1, Ordering::AcqRel);
                let guard = InFlight(counter.clone());
                let handler = handler.clone();
                let _ = std::thread::Builder::new()
                    .name("control-conn".into())
                    .spawn(move || {
                        serve_one(stream, access, &handler);
                        drop(guard);
                    });
            }
        })?;
    Ok(Server {
        in_flight,
        _thread: thread,
    })
}

/// Binds `name` in `dir` without it ever being reachable with wider rights than its final
/// ones: bound in a fresh subdirectory only root can enter, given its mode and group
/// there, then renamed into place.
#[cfg(unix)]
fn bind_private(dir: &PrivateDir, name: &str, group: Option<u32>) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    let staging = dir.path().join(format!(".{name}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&staging)?;
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o700))?;
    let bound = staging.join(name);
    let result = (|| {
        let listener = UnixListener::bind(&bound)?;
        let mode = if group.is_some() { 0o660 } else { 0o600 };
        std::fs::set_permissions(&bound, std::fs::Permissions::from_mode(mode))?;
        if let Some(gid) = group {
            std::os::unix::fs::lchown(&bound, None, Some(gid))?;
        }
        std::fs::rename(&bound, dir.path().join(name))?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}

/// Reads one request line before `deadline`, at most [`MAX_REQUEST_BYTES`].
fn read_request(stream: &transport::Stream, deadline: Instant) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut reader = BufReader::new(stream.take(MAX_REQUEST_BYTES));
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        transport::set_read_timeout(stream, Some(left))?;
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(std::io::ErrorKind::TimedOut.into());
            }
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            break; // end of stream (or the size limit)
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                line.extend_from_slice(&buf[..i]);
                break;
            }
            None => {
                let n = buf.len();
                line.extend_from_slice(buf);
                reader.consume(n);
            }
        }
    }
    String::from_utf8(line).map_err(|_| std::io::ErrorKind::InvalidData.into())
}

fn serve_one(stream: transport::Stream, access: Access, handler: &Handler) {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let response = match (access.peer_of)(&stream).map(Asker::of) {
        Err(e) => Response::Error(format!("cannot tell who is asking: {e}")),
        Ok(who) => match read_request(&stream, deadline) {
            Err(e) => {
                tracing::debug!(asker = %who.describe(), %e, "control: no request");
                return;
            }
            Ok(line) => match serde_json::from_str::<Request>(&line) {
                Err(e) => Response::Error(format!("bad request: {e}")),
                Ok(req) => match access.check(&who, &req) {
                    Err(why) => {
                        tracing::warn!("control socket: {why}");
                        Response::Error(why)
                    }
                    Ok(()) => {
                        let asked_by = serde_json::to_value(&who).unwrap_or_default();
                        crate::events::asked_by(asked_by, || handler(req, &who))
                    }
                },
            },
        },
    };
    let mut out = serde_json::to_vec(&response).unwrap_or_default();
    out.push(b'\n');
    let _ = transport::set_write_timeout(&stream, Some(ANSWER_DEADLINE));
    let _ = (&stream).write_all(&out);
}

/// Why the daemon could not be asked.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot reach the reseedfs daemon at {path}: {source} (is `reseedfs mount` running with this config?)"
)]
pub struct CallError {
    /// The socket.
    pub path: PathBuf,
    /// The error.
    #[source]
    pub source: std::io::Error,
}

/// Sends one request to the daemon at `path`.
pub fn call(path: &Path, req: &Request) -> Result<Response, CallError> {
    let err = |source| CallError {
        path: path.to_owned(),
        source,
    };
    let mut stream = transport::connect(path).map_err(err)?;
    let mut out = serde_json::to_vec(req).map_err(|e| err(e.into()))?;
    out.push(b'\n');
    stream.write_all(&out).map_err(err)?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).map_err(err)?;
    serde_json::from_str(&line).map_err(|e| err(e.into()))
}
