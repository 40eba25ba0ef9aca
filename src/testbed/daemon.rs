//! The one supervisor of a FUSE daemon in a child process (`reseedfs mount`, or mergerfs
//! in the benches): start it with its output in a log file, wait until its mount shows in
//! `/proc/self/mountinfo`, stop it cleanly and kill it when it does not stop in time.
//!
//! Stopping goes from polite to forceful, each step given [`EXIT_TIMEOUT`]: the caller's
//! own request ([`MountDaemon::on_stop`]: a control socket `Unmount`, `reseedfs unmount`,
//! `umount`), then SIGTERM (which `reseedfs mount` answers by unmounting), then SIGKILL;
//! a mount the daemon left behind is then detached (`umount -l`). Dropping a
//! [`MountDaemon`] stops it: a failing test or an interrupted demo leaves no daemon and no
//! mount behind.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::mountpoint::{is_mount_point, mount_fstype};

/// How long a daemon may take to show its mount.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a daemon may take to exit after each request to stop.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Polling period while waiting for the mount or the exit.
pub const POLL: Duration = Duration::from_millis(50);

/// The caller's polite request to stop: `Ok` when the daemon accepted it.
pub type StopRequest = Box<dyn FnMut() -> Result<(), String> + Send>;

/// A FUSE daemon in a child process, and the mount it should make.
pub struct MountDaemon {
    child: Option<Child>,
    name: String,
    mountpoint: PathBuf,
    fstype: String,
    log: PathBuf,
    on_stop: Option<StopRequest>,
}

impl fmt::Debug for MountDaemon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MountDaemon")
            .field("name", &self.name)
            .field("pid", &self.pid())
            .field("mountpoint", &self.mountpoint)
            .field("fstype", &self.fstype)
            .field("log", &self.log)
            .finish_non_exhaustive()
    }
}

/// Why [`MountDaemon::wait_mounted`] returned without the mount.
#[derive(Debug)]
pub enum NotMounted {
    /// The daemon exited first.
    Exited(ExitStatus),
    /// The mount did not show within the timeout (the daemon still runs).
    Timeout(Duration),
    /// The caller's `interrupted` said so.
    Interrupted,
    /// The daemon could not be waited for.
    Io(io::Error),
}

/// How a daemon ended, for the operator.
#[derive(Debug)]
pub struct Stopped {
    /// Its exit status, when it could be had.
    pub status: Option<ExitStatus>,
    /// What it took: `unmounted; the daemon exited (exit status: 0)`, ...
    pub how: String,
}

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.how)
    }
}

impl MountDaemon {
    /// Starts `cmd`, named `name` in messages, with its stdout and stderr appended to `log`
    /// and no stdin; it should mount a filesystem of type `fstype` at `mountpoint`. The
    /// caller sets the program, its arguments, its environment and its process group.
    pub fn spawn(
        mut cmd: Command,
        name: &str,
        mountpoint: &Path,
        fstype: &str,
        log: &Path,
    ) -> io::Result<MountDaemon> {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| super::with_path(e, "open the daemon log", log))?;
        let err = out
            .try_clone()
            .map_err(|e| super::with_path(e, "open the daemon log", log))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "start {name} ({}): {e}",
                        cmd.get_program().to_string_lossy()
                    ),
                )
            })?;
        Ok(MountDaemon {
            child: Some(child),
            name: name.to_owned(),
            mountpoint: mountpoint.to_owned(),
            fstype: fstype.to_owned(),
            log: log.to_owned(),
            on_stop: None,
        })
    }

    /// `exe mount --config config` (`reseedfs mount`), with `RESEEDFS_LOG=info` unless the
    /// environment says otherwise, mounting `fuse.reseedfs` at `mountpoint`. With
    /// `own_group`, in a process group of its own: a Ctrl-C then reaches the caller only,
    /// which stops the daemon in order.
    pub fn reseedfs(
        exe: &Path,
        config: &Path,
        mountpoint: &Path,
        log: &Path,
        own_group: bool,
    ) -> io::Result<MountDaemon> {
        let mut cmd = Command::new(exe);
        cmd.arg("mount").arg("--config").arg(config);
        if std::env::var_os("RESEEDFS_LOG").is_none() {
            cmd.env("RESEEDFS_LOG", "info");
        }
        if own_group {
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        }
        MountDaemon::spawn(
            cmd,
            "reseedfs mount",
            mountpoint,
            crate::mountpoint::FSTYPE,
            log,
        )
    }

    /// Asks the daemon to stop with `request` first, before SIGTERM.
    pub fn on_stop(mut self, request: StopRequest) -> MountDaemon {
        self.on_stop = Some(request);
        self
    }

    /// The daemon's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Where it mounts.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// What the daemon printed so far (or why it cannot be read).
    pub fn log_text(&self) -> String {
        match fs::read(&self.log) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => format!("(cannot read {}: {e})", self.log.display()),
        }
    }

    /// Whether its filesystem is mounted at its mount point now.
    pub fn is_mounted(&self) -> bool {
        mount_fstype(&self.mountpoint).as_deref() == Some(self.fstype.as_str())
    }

    /// The daemon's exit status, if it exited (it is then forgotten).
    pub fn try_exit_status(&mut self) -> io::Result<Option<ExitStatus>> {
        let Some(child) = &mut self.child else {
            return Ok(None);
        };
        let status = child.try_wait()?;
        if status.is_some() {
            self.child = None;
        }
        Ok(status)
    }

    /// Waits up to `timeout` for the mount; `interrupted` is asked at every poll.
    pub fn wait_mounted(
        &mut self,
        timeout: Duration,
        interrupted: &dyn Fn() -> bool,
    ) -> Result<(), NotMounted> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.is_mounted() {
                return Ok(());
            }
            if let Some(status) = self.try_exit_status().map_err(NotMounted::Io)? {
                return Err(NotMounted::Exited(status));
            }
            if interrupted() {
                return Err(NotMounted::Interrupted);
            }
            if Instant::now() >= deadline {
                return Err(NotMounted::Timeout(timeout));
            }
            thread::sleep(POLL);
        }
    }

    /// A message for `why` the mount did not show, with the daemon's log.
    pub fn describe(&self, why: &NotMounted) -> String {
        let what = match why {
            NotMounted::Exited(status) => format!(
                "{} exited ({status}) before mounting {}",
                self.name,
                self.mountpoint.display()
            ),
            NotMounted::Timeout(t) => format!(
                "no {} mount at {} after {:.0} s",
                self.fstype,
                self.mountpoint.display(),
                t.as_secs_f64()
            ),
            NotMounted::Interrupted => format!("interrupted while {} was mounting", self.name),
            NotMounted::Io(e) => format!("cannot wait for {}: {e}", self.name),
        };
        format!("{what}; {}:\n{}", self.log.display(), self.log_text())
    }

    /// Waits up to `timeout` for the daemon to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let status = wait_child(self.child.as_mut()?, timeout);
        if status.is_some() {
            self.child = None;
        }
        status
    }

    /// Stops the daemon: the caller's request ([`MountDaemon::on_stop`]), then SIGTERM,
    /// then SIGKILL, each given [`EXIT_TIMEOUT`]; then detaches a mount left behind. Says
    /// how it went; `None` when there was no daemon any more.
    pub fn stop(&mut self) -> Option<Stopped> {
        let mut child = self.child.take()?;
        let stopped = stop_child(&mut child, self.on_stop.as_mut(), &self.name);
        if is_mount_point(&self.mountpoint) {
            let _ = Command::new(super::tool("umount"))
                .arg("-l")
                .arg(&self.mountpoint)
                .stderr(Stdio::null())
                .status();
        }
        Some(stopped)
    }
}

fn stop_child(child: &mut Child, request: Option<&mut StopRequest>, name: &str) -> Stopped {
    if let Ok(Some(status)) = child.try_wait() {
        return Stopped {
            status: Some(status),
            how: format!("{name} had already exited ({status})"),
        };
    }
    let why = match request.map(|ask| ask()) {
        Some(Ok(())) => {
            if let Some(status) = wait_child(child, EXIT_TIMEOUT) {
                return Stopped {
                    status: Some(status),
                    how: format!("unmounted; {name} exited ({status})"),
                };
            }
            format!(
                "{name} did not exit within {} s of the unmount request",
                EXIT_TIMEOUT.as_secs()
            )
        }
        Some(Err(e)) => format!("the unmount request failed: {e}"),
        None => "asked to stop".to_owned(),
    };
    let pid = rustix::process::Pid::from_child(child);
    if rustix::process::kill_process(pid, rustix::process::Signal::TERM).is_ok() {
        if let Some(status) = wait_child(child, EXIT_TIMEOUT) {
            return Stopped {
                status: Some(status),
                how: format!("{why}: stopped it with SIGTERM ({status})"),
            };
        }
    }
    tracing::warn!("{name} (pid {}) ignored SIGTERM: killing it", child.id());
    match child.kill().and_then(|()| child.wait()) {
        Ok(status) => Stopped {
            status: Some(status),
            how: format!("{why}; it ignored SIGTERM: killed it ({status})"),
        },
        Err(e) => Stopped {
            status: None,
            how: format!("{why}; it ignored SIGTERM and cannot be killed: {e}"),
        },
    }
}

impl Drop for MountDaemon {
    fn drop(&mut self) {
        if let Some(stopped) = self.stop() {
            tracing::info!("stopping {}: {stopped}", self.name);
        }
    }
}

/// Waits up to `timeout` for `child` to exit; `None` if it is still running.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(POLL),
            Ok(None) | Err(_) => return None,
        }
    }
}
