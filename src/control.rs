//! The control socket (`<state_dir>/control.sock`, mode 0600): one JSON request per
//! connection, one JSON response back.
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
//!
//! The JSON of every answer is an API: fields are only ever added (with defaults), never
//! renamed or removed, so scripts written against `status --json` and `explain --json`
//! keep working.
//! | `Verify`  | two copies in sync, none verifying | `Verify` (its status); progress with `VerifyStatus` |
//! | `VerifyStatus` | a verification ran since the mount | `Verify`: progress, then the report |

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::events::Event;
use crate::status::Status;

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
        db: String,
        /// Source volume (an in-sync copy); default: chosen by the daemon.
        from: Option<String>,
        /// Target volume: a volume holding a copy of `db` (reseeded in place) or a
        /// spare (takes the place of the copy that is not in sync). Default: the copy
        /// that is not in sync, in place when its volume answers, else the best spare.
        to: Option<String>,
    },
    /// Suspend the copy of `db` on `volume` (it misses writes from here on, recorded).
    Suspend {
        /// The database.
        db: String,
        /// The copy's volume.
        volume: String,
    },
    /// Resume the copy of `db` on `volume`: incremental resync from its dirty map.
    Resume {
        /// The database.
        db: String,
        /// The copy's volume.
        volume: String,
    },
    /// Set or clear ReseedBlocked / ResumeBlocked.
    Block {
        /// The database.
        db: String,
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
        /// Who asks (user and process), for the event.
        #[serde(default)]
        by: Option<String>,
    },
    /// Explain the copies that are not healthy, or what a volume's failure would do.
    Explain {
        /// Only this database (default: all).
        db: Option<String>,
        /// Instead: what would happen if this volume failed now.
        what_if_fail: Option<String>,
    },
    /// Start an online verification of `db`'s in-sync copies against its active copy.
    Verify {
        /// The database.
        db: String,
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
        db: String,
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
        db: String,
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

/// Handles one request.
pub type Handler = Arc<dyn Fn(Request) -> Response + Send + Sync>;

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

/// Binds the socket at `path` (refusing if a live daemon answers there, replacing a
/// stale one) and serves requests on a thread.
pub fn serve(path: &Path, handler: Handler) -> std::io::Result<Server> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!(
                    "a reseedfs daemon already answers on {}: unmount it first, or give this mount its own state_dir",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let in_flight = Arc::new(AtomicUsize::new(0));
    let counter = in_flight.clone();
    let thread = std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                counter.fetch_add(1, Ordering::AcqRel);
                let guard = InFlight(counter.clone());
                let handler = handler.clone();
                let _ = std::thread::Builder::new()
                    .name("control-conn".into())
                    .spawn(move || {
                        serve_one(stream, &handler);
                        drop(guard);
                    });
            }
        })?;
    Ok(Server {
        in_flight,
        _thread: thread,
    })
}

fn serve_one(stream: UnixStream, handler: &Handler) {
    let mut line = String::new();
    let mut reader = BufReader::new(&stream);
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(req) => handler(req),
        Err(e) => Response::Error(format!("bad request: {e}")),
    };
    let mut out = serde_json::to_vec(&response).unwrap_or_default();
    out.push(b'\n');
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
    let mut stream = UnixStream::connect(path).map_err(err)?;
    let mut out = serde_json::to_vec(req).map_err(|e| err(e.into()))?;
    out.push(b'\n');
    stream.write_all(&out).map_err(err)?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).map_err(err)?;
    serde_json::from_str(&line).map_err(|e| err(e.into()))
}
