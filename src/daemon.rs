//! `reseedfs mount`: config -> pool -> core -> FUSE mount -> control socket, then wait
//! for SIGINT/SIGTERM, an `unmount` request or the kernel ending the mount.
//!
//! [`run`] reads top to bottom, one step per function. What the steps set up and must be
//! undone (the checkpoint thread, the pool's clean flag, the signal handlers, the socket
//! file) is held by one `Teardown`: an early error drops it, the end of the mount calls
//! `Teardown::finish`, and nothing is undone twice or forgotten on one path.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::autoreseed::{Runner, SystemClock};
use crate::config::Config;
use crate::control::{self, Request, Response};
use crate::events::{self, EventId, EventLog, EventSink, NewEvent};
use crate::fs::Core;
use crate::metrics::{CountingSink, Metrics};
use crate::pool::{Checkpointer, Pool};
use crate::private::PrivateDir;
use crate::status::LastErrors;
use crate::verify::{Verifier, VerifyOptions};

// The OS's filesystem adapter: FUSE on Linux, WinFsp on Windows. Both take the core and
// answer `is_finished`, `try_unmount` and `unmount`.
#[cfg(target_os = "linux")]
use crate::sys::fuse::FuseMount as Mount;
#[cfg(windows)]
use crate::sys::winfsp::{WinFspMount as Mount, mount as mount_adapter};

/// Ends the delivery of stop requests from the OS (signals; on Windows console events and
/// the service's stop).
#[cfg(unix)]
type SignalHandle = signal_hook::iterator::Handle;
#[cfg(windows)]
type SignalHandle = crate::sys::stop::StopHandle;

/// Why the daemon is asked to stop.
#[derive(Debug)]
enum Stop {
    Signal(i32),
    /// An `unmount` request (and who asked); the outcome goes back to the client.
    Request(Sender<Result<(), String>>, String),
}

/// Mounts the pool of `config` and serves it until told to stop.
pub fn run(config: &Config, config_path: &Path) -> anyhow::Result<()> {
    // Test builds only: fail points armed from the `FAILPOINTS` environment variable
    // (`name=action;...`), so that a test can hold the daemon in a chosen window.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    check_config_file(config_path)?;
    let group = control_group(config)?;
    let state_dir = prepare_state_dir(config, group)?;
    let sinks = Sinks::open(config, group)?;
    warn_open_volumes_root(config);
    crate::mountpoint::clear_stale(&config.databases_root)?;
    let pool = Pool::open(config, sinks.events.clone())
        .with_context(|| format!("open the pool of {}", config_path.display()))?;
    // From here on every way out undoes what was set up.
    let mut teardown = Teardown::new(pool.clone());
    // After a crash: the copies are made identical where they may differ, before serving.
    pool.repair_after_crash();
    // The checksum stores of files removed while open when the daemon stopped.
    for db in pool.databases() {
        db.sweep_sums();
    }
    teardown.checkpoints = Some(
        Checkpointer::start(pool.clone(), config.tap.checkpoint_interval)
            .context("start the tap checkpoint thread")?,
    );
    // WinFsp makes the mount point itself (a drive letter, or a directory it creates):
    // the Windows adapter checks it.
    #[cfg(not(windows))]
    if !config.databases_root.is_dir() {
        anyhow::bail!(
            "databases root {} is not a directory: create it (reseedfs init does)",
            config.databases_root.display()
        );
    }
    let core = Arc::new(Core::new(pool.clone()));
    let runner = Runner::new(core.clone(), Arc::new(SystemClock));
    let verifier = Arc::new(
        Verifier::new(core.clone())
            .with_throttle(runner.throttle().clone())
            .with_scrub_log(&config.state_dir),
    );
    let scrubs = match config.scrub.interval {
        Some(interval) => Some(
            verifier
                .schedule_scrubs(interval)
                .context("start the scrub schedule")?,
        ),
        None => None,
    };
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<Stop>(4);

    // The socket and the signal handlers come first: once the mount is visible, `status`
    // answers and SIGTERM unmounts cleanly.
    let socket = config.socket_path();
    let transport = Arc::new(std::sync::OnceLock::new());
    let handler = Control {
        pool: pool.clone(),
        runner: runner.clone(),
        verifier: verifier.clone(),
        events: sinks.events.clone(),
        last_errors: sinks.last_errors.clone(),
        events_path: config.events_path(),
        stop_tx: stop_tx.clone(),
        transport: Arc::clone(&transport),
    }
    .into_handler();
    let control = control::serve(
        &state_dir,
        CONTROL_SOCKET,
        control::Access {
            group,
            peer_of: peer_of_connection,
        },
        handler,
    )
    .with_context(|| format!("serve the control socket {}", socket.display()))?;
    teardown.socket = Some(socket.clone());
    teardown.signals = Some(install_signals(stop_tx)?);
    if let Some(addr) = config.metrics {
        serve_metrics(addr, &pool, &runner, &sinks.metrics, &transport)?;
    }
    let fsname = crate::mountpoint::fsname(config_path);
    let timed = config.metrics.map(|_| sinks.metrics.clone());
    #[cfg(target_os = "linux")]
    let mount = crate::sys::fuse::mount_with(
        core,
        &config.databases_root,
        config.threads,
        config.fuse_transport,
        &fsname,
        timed,
    );
    // WinFsp has one transport: `fuse_transport` does not apply.
    #[cfg(windows)]
    let mount = mount_adapter(core, &config.databases_root, config.threads, &fsname, timed);
    let mount = mount.with_context(|| format!("mount at {}", config.databases_root.display()))?;
    #[cfg(target_os = "linux")]
    let serving = Transport {
        name: mount.transport().as_str(),
        fallback: mount.fallback().map(str::to_owned),
    };
    #[cfg(windows)]
    let serving = Transport {
        name: "winfsp",
        fallback: None,
    };
    let _ = transport.set(serving.name);
    let autoreseed = runner.start().context("start the AutoReseed runner")?;
    announce(config, &pool, &sinks.events, &socket, &serving);

    let why = serve_until_stopped(&mount, &stop_rx, &config.databases_root);

    teardown.stop_signals();
    notify_stopping();
    // Reseeds in flight stop here; their copies stay FailedAndSuspended for the next mount.
    autoreseed.stop();
    drop(scrubs);
    verifier.stop();
    let result = mount.unmount();
    // A mount that would not go away may still have writes in flight: not clean.
    teardown.finish(result.is_ok());
    sinks.events.emit(NewEvent::new(
        EventId::MountFinished,
        format!("unmounted {} ({why})", config.databases_root.display()),
    ));
    control.drain(Duration::from_secs(2));
    result.with_context(|| format!("unmount {}", config.databases_root.display()))
}

/// An error that makes the config or the pool unusable (exit code 3).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unusable(pub String);

/// What `reseedfs service` does.
#[cfg(windows)]
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ServiceAction {
    /// Register the service for the config (run as Administrator).
    Install,
    /// Remove the service (once stopped).
    Uninstall,
    /// Run as the service (started by the Service Control Manager, not by hand).
    Run,
}

/// Mounts the pool of the config file at `path` (the Windows service's entry).
#[cfg(windows)]
pub fn run_config_file(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path).with_context(|| format!("load {}", path.display()))?;
    run(&config, path)
}

/// `reseedfs service install|uninstall|run` (Windows).
#[cfg(windows)]
pub fn service(action: ServiceAction, config: &Path) -> anyhow::Result<()> {
    match action {
        ServiceAction::Install => crate::sys::service::install(config),
        ServiceAction::Uninstall => crate::sys::service::uninstall(),
        ServiceAction::Run => crate::sys::service::run(config),
    }
}

/// The control socket's name in the state directory (`Config::socket_path`).
const CONTROL_SOCKET: &str = "control.sock";

/// Who is at the other end of a control connection, as the kernel says.
#[cfg(unix)]
fn peer_of_connection(
    stream: &std::os::unix::net::UnixStream,
) -> std::io::Result<control::PeerCred> {
    use std::os::fd::AsFd as _;
    let peer = crate::sys::cred::peer(stream.as_fd())?;
    Ok(control::PeerCred {
        pid: peer.pid,
        uid: peer.uid,
        gid: peer.gid,
        user: crate::sys::cred::user_name(peer.uid),
        groups: peer.groups,
    })
}

/// Who is at the other end of a control connection: the pipe's security descriptor
/// admits Administrators and SYSTEM only (`platform/windows/pipe.rs`), so an administrator,
/// who is what root is on Unix (its process id is not asked for: 0, unknown).
#[cfg(windows)]
fn peer_of_connection(_pipe: &crate::sys::pipe::Stream) -> std::io::Result<control::PeerCred> {
    Ok(control::PeerCred {
        pid: 0,
        uid: 0,
        gid: 0,
        user: Some("Administrators".to_owned()),
        groups: Vec::new(),
    })
}

/// The config says where the volumes are and who may ask the daemon: a config others can
/// change is refused.
#[cfg(unix)]
fn check_config_file(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let md = std::fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
    let me = rustix::process::geteuid().as_raw();
    if (md.uid() != 0 && md.uid() != me) || md.mode() & 0o022 != 0 {
        return Err(Unusable(format!(
            "config {} can be changed by others than root (owner uid {}, mode {:o}): `chown root {0}; chmod go-w {0}`",
            path.display(),
            md.uid(),
            md.mode() & 0o7777
        ))
        .into());
    }
    Ok(())
}

/// The config file on Windows: it lives under `C:\ProgramData\reseedfs`, whose inherited
/// ACL lets only Administrators and SYSTEM change it; the ACL is not checked here.
#[cfg(windows)]
fn check_config_file(path: &Path) -> anyhow::Result<()> {
    std::fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
    Ok(())
}

/// The `control_group` on Windows: none (the control pipe admits Administrators and
/// SYSTEM only); a config that names one is refused rather than silently ignored.
#[cfg(windows)]
pub fn control_group(config: &Config) -> anyhow::Result<Option<u32>> {
    match &config.control_group {
        None => Ok(None),
        Some(name) => Err(Unusable(format!(
            "control_group {name:?}: a Unix group; on Windows the control pipe admits Administrators and SYSTEM only: remove the key"
        ))
        .into()),
    }
}

/// The `control_group`'s id: a number, or a group name known to the host.
#[cfg(unix)]
pub fn control_group(config: &Config) -> anyhow::Result<Option<u32>> {
    let Some(name) = &config.control_group else {
        return Ok(None);
    };
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(Some(gid));
    }
    match crate::sys::cred::group_id(name) {
        Ok(Some(gid)) => Ok(Some(gid)),
        Ok(None) => Err(Unusable(format!(
            "control_group {name:?}: no such group on this host (create it, or remove the key)"
        ))
        .into()),
        Err(e) => Err(Unusable(format!(
            "control_group {name:?}: cannot look the group up: {e}"
        ))
        .into()),
    }
}

/// Clears the umask (modes given by the kernel are final: it already applied the
/// caller's; the daemon's own files say their mode) and makes the state directory private
/// to root: 0700, or 0750 with the `control_group`, whose members reach the socket and
/// the event log there.
fn prepare_state_dir(config: &Config, group: Option<u32>) -> anyhow::Result<PrivateDir> {
    #[cfg(unix)]
    rustix::process::umask(rustix::fs::Mode::empty());
    let mode = if group.is_some() { 0o750 } else { 0o700 };
    PrivateDir::create(&config.state_dir, mode, group)
        .map_err(|e| Unusable(format!("state_dir: {e}")).into())
}

/// The volumes should be reachable by root only: a database user who can reach the
/// backing files directly bypasses the mount's permission checks. (On Windows the
/// volumes' ACLs are the operator's: nothing is checked.)
#[cfg(not(unix))]
fn warn_open_volumes_root(_config: &Config) {}

/// The volumes should be reachable by root only: a database user who can reach the
/// backing files directly bypasses the mount's permission checks.
#[cfg(unix)]
fn warn_open_volumes_root(config: &Config) {
    use std::os::unix::fs::MetadataExt as _;
    if let Ok(md) = std::fs::metadata(&config.volumes_root)
        && md.mode() & 0o077 != 0
    {
        tracing::warn!(
            "volumes_root {} has mode {:o}: make it 0700 (`chmod 0700 {0}`), so that only root reaches the backing files",
            config.volumes_root.display(),
            md.mode() & 0o7777
        );
    }
}

/// Tells the service manager the databases are reachable: systemd (Type=notify) on Linux,
/// the Service Control Manager on Windows.
fn notify_ready() {
    #[cfg(target_os = "linux")]
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    #[cfg(windows)]
    crate::sys::service::report_running();
}

/// Tells the service manager the mount is stopping.
fn notify_stopping() {
    #[cfg(target_os = "linux")]
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    #[cfg(windows)]
    crate::sys::service::report_stopping();
}

/// Where events go: the persisted log, counted by the metrics, each copy's last error
/// remembered for `status`.
struct Sinks {
    metrics: Arc<Metrics>,
    last_errors: Arc<LastErrors>,
    events: Arc<dyn EventSink>,
}

impl Sinks {
    fn open(config: &Config, group: Option<u32>) -> anyhow::Result<Sinks> {
        let log = Arc::new(
            EventLog::open_with(&config.events_path(), config.events, group)
                .with_context(|| format!("open event log {}", config.events_path().display()))?,
        );
        let metrics = Arc::new(Metrics::new());
        let persisted: Arc<dyn EventSink> = log.clone();
        // On Windows every event also goes to the Application event log, same id.
        #[cfg(windows)]
        let persisted: Arc<dyn EventSink> = Arc::new(crate::sys::eventlog::Tee::new(persisted));
        let counting: Arc<dyn EventSink> = Arc::new(CountingSink::new(persisted, metrics.clone()));
        let last_errors = Arc::new(LastErrors::new(counting));
        Ok(Sinks {
            metrics,
            events: last_errors.clone(),
            last_errors,
        })
    }
}

/// What the daemon undoes when it stops, whichever way: the signal handlers closed, the
/// checkpoint thread stopped, the pool closed (marked clean: nothing was served, or the
/// mount ended cleanly), the control socket's file removed.
struct Teardown {
    pool: Arc<Pool>,
    checkpoints: Option<Checkpointer>,
    signals: Option<SignalHandle>,
    socket: Option<PathBuf>,
    /// Set once done, so that dropping after [`Teardown::finish`] undoes nothing again.
    done: bool,
}

impl Teardown {
    fn new(pool: Arc<Pool>) -> Teardown {
        Teardown {
            pool,
            checkpoints: None,
            signals: None,
            socket: None,
            done: false,
        }
    }

    /// No more signals: the mount is stopping.
    fn stop_signals(&mut self) {
        if let Some(h) = self.signals.take() {
            h.close();
        }
    }

    /// Undoes everything; the pool is marked clean only when `clean`.
    fn finish(&mut self, clean: bool) {
        if self.done {
            return;
        }
        self.done = true;
        self.stop_signals();
        if let Some(c) = self.checkpoints.take() {
            c.stop();
        }
        if clean {
            self.pool.close();
        }
        if let Some(s) = self.socket.take() {
            let _ = std::fs::remove_file(s);
        }
    }
}

impl Drop for Teardown {
    /// An early error: nothing was served, so the copies are exactly as the last clean
    /// state left them (or as crash repair made them).
    fn drop(&mut self) {
        self.finish(true);
    }
}

/// SIGINT and SIGTERM become [`Stop::Signal`]; returns the handle that ends it.
#[cfg(unix)]
fn install_signals(stop_tx: Sender<Stop>) -> anyhow::Result<SignalHandle> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("install signal handlers")?;
    let handle = signals.handle();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let _ = stop_tx.try_send(Stop::Signal(sig));
            }
        })
        .context("start the signal thread")?;
    Ok(handle)
}

/// Ctrl-C, Ctrl-Break, closing the console and the service's stop become
/// [`Stop::Signal`] (2 for Ctrl-C, 15 for the others, as SIGINT and SIGTERM); returns the
/// handle that ends it.
#[cfg(windows)]
fn install_signals(stop_tx: Sender<Stop>) -> anyhow::Result<SignalHandle> {
    crate::sys::stop::on_stop(move |sig| {
        let _ = stop_tx.try_send(Stop::Signal(sig));
    })
    .context("install the console and service stop handlers")
}

/// Prometheus `/metrics` at `addr`, rendered from the pool at each scrape (with the FUSE
/// transport once the mount serves, as `status` has it).
fn serve_metrics(
    addr: std::net::SocketAddr,
    pool: &Arc<Pool>,
    runner: &Arc<Runner>,
    metrics: &Arc<Metrics>,
    transport: &Arc<std::sync::OnceLock<&'static str>>,
) -> anyhow::Result<()> {
    let render: crate::metrics::Render = {
        let (pool, runner, metrics) = (pool.clone(), runner.clone(), metrics.clone());
        let transport = Arc::clone(transport);
        Arc::new(move || {
            let mut status = crate::status::of_pool(&pool);
            status.fuse_transport = transport.get().map(|t| (*t).to_owned());
            runner.annotate(&mut status);
            // The throttle's section and the queue of in-sync copies, as `status` has them.
            crate::status::complete(&mut status, Some(runner.throttle()), None);
            let mirrored: Vec<(String, u64)> = pool
                .volumes()
                .iter()
                .map(|v| (v.name.to_string(), v.written_bytes()))
                .collect();
            metrics.render(&status, &mirrored)
        })
    };
    crate::metrics::serve(addr, render)?;
    Ok(())
}

/// How requests reach the mount, for event 3001 and `status`.
struct Transport {
    /// `dev_fuse`, `uring` (Linux) or `winfsp`.
    name: &'static str,
    /// Why the ring was asked for and not had.
    fallback: Option<String>,
}

/// Event 3001 and, under systemd (Type=notify), READY=1: the databases are reachable now.
/// The event names the FUSE transport serving, and why not the ring when it was asked for
/// (`fuse_transport_fallback`, severity unchanged: the mount serves, a little slower).
fn announce(
    config: &Config,
    pool: &Pool,
    events: &Arc<dyn EventSink>,
    socket: &Path,
    transport: &Transport,
) {
    let serving: Vec<String> = pool
        .databases()
        .iter()
        .map(|d| {
            format!(
                "{} on {}",
                d.name,
                d.active_volume().map(String::from).unwrap_or_default()
            )
        })
        .collect();
    let fallback = transport
        .fallback
        .as_ref()
        .map(|why| format!("; {why}"))
        .unwrap_or_default();
    let mut event = NewEvent::new(
        EventId::MountStarted,
        format!(
            "mounted {} ({}); control socket {}; FUSE transport {}{fallback}",
            config.databases_root.display(),
            serving.join(", "),
            socket.display(),
            transport.name,
        ),
    )
    .field("fuse_transport", transport.name);
    if let Some(why) = &transport.fallback {
        event = event.field("fuse_transport_fallback", why.as_str());
    }
    events.emit(event);
    notify_ready();
}

/// Serves until a signal or an `unmount` request unmounts the filesystem, or the kernel
/// ends the mount; returns why. A busy mount is not pulled from under its users: the
/// request fails, says why, and the mount keeps serving.
fn serve_until_stopped(mount: &Mount, stop_rx: &Receiver<Stop>, databases_root: &Path) -> String {
    let root = databases_root.display().to_string();
    loop {
        let (why, reply) = match stop_rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Stop::Signal(sig)) => (format!("signal {sig}"), None),
            Ok(Stop::Request(reply, who)) => (format!("unmount request by {who}"), Some(reply)),
            Err(RecvTimeoutError::Timeout) if mount.is_finished() => {
                return "the kernel ended the mount (umount)".to_owned();
            }
            Err(_) => continue,
        };
        match mount.try_unmount() {
            Ok(()) => {
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(()));
                }
                return why;
            }
            Err(err) => {
                let busy = err.raw_os_error() == Some(libc::EBUSY);
                let msg = if busy {
                    format!(
                        "cannot unmount {root} ({why}): it is busy, a process still has files open under it (see `fuser -vm {root}`); stop the database first. The mount keeps serving"
                    )
                } else {
                    format!("cannot unmount {root} ({why}): {err}. The mount keeps serving")
                };
                tracing::error!("{msg}");
                if let Some(reply) = reply {
                    let _ = reply.send(Err(msg));
                }
            }
        }
    }
}

/// What the control socket's requests reach.
struct Control {
    pool: Arc<Pool>,
    runner: Arc<Runner>,
    verifier: Arc<Verifier>,
    events: Arc<dyn EventSink>,
    last_errors: Arc<LastErrors>,
    events_path: PathBuf,
    stop_tx: Sender<Stop>,
    /// The FUSE transport serving the mount, once mounted (`status --json`).
    transport: Arc<std::sync::OnceLock<&'static str>>,
}

impl Control {
    fn into_handler(self) -> control::Handler {
        Arc::new(move |req, who| self.handle(req, who))
    }

    fn handle(&self, req: Request, who: &control::Asker) -> Response {
        match req {
            Request::Status => Response::Status(self.status()),
            // Who asked is who connected, whatever the client says (`by`).
            Request::Throttle {
                max_bytes_per_s, ..
            } => self.throttle(max_bytes_per_s, who),
            Request::Explain { db, what_if_fail } => match crate::explain::live(
                &self.pool,
                &self.runner,
                &self.status(),
                db.as_deref(),
                what_if_fail.as_deref(),
            ) {
                Ok(crate::explain::Answer::Explain(e)) => Response::Explain(Box::new(e)),
                Ok(crate::explain::Answer::WhatIf(w)) => Response::WhatIf(Box::new(w)),
                Err(e) => Response::Error(e),
            },
            Request::Reseed { db, from, to } => match self.runner.manual_reseed(&db, from, to) {
                Ok(target) => Response::Started {
                    db,
                    target: target.to_string(),
                },
                Err(e) => Response::Error(e),
            },
            Request::Suspend { db, volume } => match self.runner.suspend(&db, &volume) {
                Ok(label) => Response::Changed(vec![label]),
                Err(e) => Response::Error(e),
            },
            Request::Resume { db, volume } => match self.runner.resume(&db, &volume) {
                Ok(_) => Response::Started {
                    db,
                    target: volume.to_string(),
                },
                Err(e) => Response::Error(e),
            },
            Request::Block {
                db,
                volume,
                reseed,
                resume,
                set,
            } => match self.pool.set_blocks(
                &db,
                volume.as_deref(),
                reseed.then_some(set),
                resume.then_some(set),
            ) {
                Ok(changed) => Response::Changed(changed),
                Err(e) => Response::Error(e),
            },
            Request::Verify {
                db,
                repair,
                max_bytes_per_s,
                scrub,
            } => {
                let options = VerifyOptions {
                    scrub,
                    repair: repair || scrub,
                    max_bytes_per_s,
                };
                match self.verifier.start(&db, options) {
                    Ok(s) => Response::Verify(Box::new(s)),
                    Err(e) => Response::Error(e),
                }
            }
            Request::VerifyStatus { db } => match self.verifier.status(&db) {
                Some(s) => Response::Verify(Box::new(s)),
                None => Response::Error(format!(
                    "no verification of {db} ran since the mount: start one with `reseedfs verify {db}`"
                )),
            },
            Request::Events { since } => {
                match events::read_events_since(&self.events_path, since) {
                    Ok(list) => Response::Events(list),
                    Err(e) => Response::Error(format!("read {}: {e}", self.events_path.display())),
                }
            }
            Request::Unmount => self.unmount(who),
        }
    }

    /// The pool's status with the runner's progress, the throttle and the last errors.
    fn status(&self) -> crate::status::Status {
        let mut status = crate::status::of_pool(&self.pool);
        status.fuse_transport = self.transport.get().map(|t| (*t).to_owned());
        self.runner.annotate(&mut status);
        self.verifier.annotate(&mut status);
        crate::status::complete(
            &mut status,
            Some(self.runner.throttle()),
            Some(&self.last_errors),
        );
        status
    }

    /// A new rebuild budget (event 3050).
    fn throttle(&self, max_bytes_per_s: Option<u64>, who: &control::Asker) -> Response {
        let throttle = self.runner.throttle();
        let old = throttle.set_budget(max_bytes_per_s);
        let by = who.describe();
        let rate = crate::throttle::fmt_rate;
        self.events.emit(
            NewEvent::new(
                EventId::ThrottleChanged,
                format!(
                    "rebuild budget changed from {} to {} by {by}",
                    rate(old),
                    rate(max_bytes_per_s)
                ),
            )
            .field("old", old)
            .field("new", max_bytes_per_s)
            .field("by", by),
        );
        Response::Throttle(throttle.status())
    }

    /// Asks the main loop to unmount and waits for its verdict.
    fn unmount(&self, who: &control::Asker) -> Response {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self
            .stop_tx
            .send(Stop::Request(tx, who.describe()))
            .is_err()
        {
            return Response::Ok;
        }
        match rx.recv() {
            Ok(Ok(())) | Err(_) => Response::Ok,
            Ok(Err(e)) => Response::Error(e),
        }
    }
}
