//! `reseedfs mount`: config -> pool -> core -> FUSE mount -> control socket, then wait
//! for SIGINT/SIGTERM, an `unmount` request or the kernel ending the mount.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use crossbeam_channel::RecvTimeoutError;

use crate::autoreseed::{Runner, SystemClock};
use crate::config::Config;
use crate::control::{self, Request, Response};
use crate::events::{self, EventId, EventLog, EventSink, NewEvent};
use crate::fs::Core;
use crate::metrics::{CountingSink, Metrics};
use crate::pool::Pool;

/// Why the daemon is asked to stop.
#[derive(Debug)]
enum Stop {
    Signal(i32),
    /// An `unmount` request; the outcome goes back to the client.
    Request(crossbeam_channel::Sender<Result<(), String>>),
}

/// Mounts the pool of `config` and serves it until told to stop.
pub fn run(config: &Config, config_path: &Path) -> anyhow::Result<()> {
    // Modes given by the kernel are final (it already applied the caller's umask).
    rustix::process::umask(rustix::fs::Mode::empty());
    // With the umask cleared, say the mode: nobody else may write where the socket and the
    // event log live.
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o755)
        .create(&config.state_dir)
        .with_context(|| format!("create state_dir {}", config.state_dir.display()))?;
    let log = Arc::new(
        EventLog::open(&config.events_path())
            .with_context(|| format!("open event log {}", config.events_path().display()))?,
    );
    let metrics = Arc::new(Metrics::new());
    let counting: Arc<dyn EventSink> = Arc::new(CountingSink::new(log.clone(), metrics.clone()));
    // Remembers each copy's last error for `status`.
    let last_errors = Arc::new(crate::status::LastErrors::new(counting));
    let events: Arc<dyn EventSink> = last_errors.clone();
    crate::mountpoint::clear_stale(&config.databases_root)?;
    let pool = Pool::open(config, events.clone())
        .with_context(|| format!("open the pool of {}", config_path.display()))?;
    // After a crash: the copies are made identical where they may differ, before serving.
    pool.repair_after_crash();
    let checkpoints =
        crate::pool::Checkpointer::start(pool.clone(), config.tap.checkpoint_interval)
            .context("start the tap checkpoint thread")?;
    if !config.databases_root.is_dir() {
        bail!(
            "databases root {} is not a directory: create it (reseedfs init does)",
            config.databases_root.display()
        );
    }
    let core = Arc::new(Core::new(pool.clone()));
    let runner = Runner::new(core.clone(), Arc::new(SystemClock));
    let verifier = Arc::new(
        crate::verify::Verifier::new(core.clone()).with_throttle(runner.throttle().clone()),
    );
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<Stop>(4);
    let handler: control::Handler = {
        let pool = pool.clone();
        let runner = runner.clone();
        let events_path = config.events_path();
        let stop_tx = stop_tx.clone();
        let verifier = verifier.clone();
        let events = events.clone();
        let status = {
            let (pool, runner) = (pool.clone(), runner.clone());
            move || {
                let mut status = crate::status::of_pool(&pool);
                runner.annotate(&mut status);
                crate::status::complete(&mut status, Some(runner.throttle()), Some(&last_errors));
                status
            }
        };
        Arc::new(move |req| match req {
            Request::Status => Response::Status(status()),
            Request::Throttle {
                max_bytes_per_s,
                by,
            } => {
                let throttle = runner.throttle();
                let old = throttle.set_budget(max_bytes_per_s);
                let by = by.unwrap_or_else(|| "a control socket client".into());
                let rate = crate::throttle::fmt_rate;
                events.emit(
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
            Request::Explain { db, what_if_fail } => match crate::explain::live(
                &pool,
                &runner,
                &status(),
                db.as_deref(),
                what_if_fail.as_deref(),
            ) {
                Ok(crate::explain::Answer::Explain(e)) => Response::Explain(Box::new(e)),
                Ok(crate::explain::Answer::WhatIf(w)) => Response::WhatIf(Box::new(w)),
                Err(e) => Response::Error(e),
            },
            Request::Reseed { db, from, to } => match runner.manual_reseed(&db, from, to) {
                Ok(target) => Response::Started { db, target },
                Err(e) => Response::Error(e),
            },
            Request::Suspend { db, volume } => match runner.suspend(&db, &volume) {
                Ok(label) => Response::Changed(vec![label]),
                Err(e) => Response::Error(e),
            },
            Request::Resume { db, volume } => match runner.resume(&db, &volume) {
                Ok(_) => Response::Started { db, target: volume },
                Err(e) => Response::Error(e),
            },
            Request::Block {
                db,
                volume,
                reseed,
                resume,
                set,
            } => match pool.set_blocks(
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
            } => {
                let options = crate::verify::VerifyOptions {
                    repair,
                    max_bytes_per_s,
                };
                match verifier.start(&db, options) {
                    Ok(s) => Response::Verify(Box::new(s)),
                    Err(e) => Response::Error(e),
                }
            }
            Request::VerifyStatus { db } => match verifier.status(&db) {
                Some(s) => Response::Verify(Box::new(s)),
                None => Response::Error(format!(
                    "no verification of {db} ran since the mount: start one with `reseedfs verify {db}`"
                )),
            },
            Request::Events { since } => match events::read_events(&events_path) {
                Ok(all) => Response::Events(all.into_iter().filter(|e| e.seq > since).collect()),
                Err(e) => Response::Error(format!("read {}: {e}", events_path.display())),
            },
            Request::Unmount => {
                let (tx, rx) = crossbeam_channel::bounded(1);
                if stop_tx.send(Stop::Request(tx)).is_err() {
                    return Response::Ok;
                }
                match rx.recv() {
                    Ok(Ok(())) | Err(_) => Response::Ok,
                    Ok(Err(e)) => Response::Error(e),
                }
            }
        })
    };
    // The socket and the signal handlers come first: once the mount is visible, `status`
    // answers and SIGTERM unmounts cleanly.
    let socket = config.socket_path();
    let control = control::serve(&socket, handler)
        .with_context(|| format!("serve the control socket {}", socket.display()))?;
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("install signal handlers")?;
    let signal_handle = signals.handle();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let _ = stop_tx.try_send(Stop::Signal(sig));
            }
        })
        .context("start the signal thread")?;
    if let Some(addr) = config.metrics {
        let render: crate::metrics::Render = {
            let (pool, runner, metrics) = (pool.clone(), runner.clone(), metrics.clone());
            Arc::new(move || {
                let mut status = crate::status::of_pool(&pool);
                runner.annotate(&mut status);
                let mirrored: Vec<(String, u64)> = pool
                    .volumes()
                    .iter()
                    .map(|v| (v.name.clone(), v.written_bytes()))
                    .collect();
                metrics.render(&status, &mirrored)
            })
        };
        if let Err(e) = crate::metrics::serve(addr, render) {
            pool.close();
            signal_handle.close();
            let _ = std::fs::remove_file(&socket);
            return Err(e.into());
        }
    }
    let fsname = crate::mountpoint::fsname(config_path);
    let timed = config.metrics.map(|_| metrics.clone());
    let mounted =
        crate::sys::fuse::mount(core, &config.databases_root, config.threads, &fsname, timed)
            .with_context(|| format!("mount FUSE at {}", config.databases_root.display()))
            .and_then(|m| {
                let autoreseed = runner.start().context("start the AutoReseed runner")?;
                Ok((m, autoreseed))
            });
    let (mount, autoreseed) = match mounted {
        Ok(m) => m,
        Err(e) => {
            // Nothing was served: the copies are exactly as the last clean state left them.
            pool.close();
            signal_handle.close();
            let _ = std::fs::remove_file(&socket);
            return Err(e);
        }
    };

    let serving: Vec<String> = pool
        .databases()
        .iter()
        .map(|d| format!("{} on {}", d.name, d.active_volume().unwrap_or_default()))
        .collect();
    events.emit(NewEvent::new(
        EventId::MountStarted,
        format!(
            "mounted {} ({}); control socket {}",
            config.databases_root.display(),
            serving.join(", "),
            socket.display()
        ),
    ));
    // Type=notify under systemd: the databases are reachable now.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let root = config.databases_root.display().to_string();
    let why = loop {
        let (why, reply) = match stop_rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Stop::Signal(sig)) => (format!("signal {sig}"), None),
            Ok(Stop::Request(reply)) => ("unmount request".to_owned(), Some(reply)),
            Err(RecvTimeoutError::Timeout) if mount.is_finished() => {
                break "the kernel ended the mount (umount)".to_owned();
            }
            Err(_) => continue,
        };
        match mount.try_unmount() {
            Ok(()) => {
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(()));
                }
                break why;
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
    };
    signal_handle.close();
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    // Reseeds in flight stop here; their copies stay FailedAndSuspended for the next mount.
    autoreseed.stop();
    verifier.stop();
    let result = mount.unmount();
    checkpoints.stop();
    if result.is_ok() {
        pool.close();
    }
    let _ = std::fs::remove_file(&socket);
    events.emit(NewEvent::new(
        EventId::MountFinished,
        format!("unmounted {} ({why})", config.databases_root.display()),
    ));
    control.drain(Duration::from_secs(2));
    result.with_context(|| format!("unmount {}", config.databases_root.display()))
}
