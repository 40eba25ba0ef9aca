//! AutoReseed: the policy that turns a `FailedAndSuspended` copy into a healthy one again
//! without an operator, after Exchange 2013's workflow (see
//! `../shared/reference/exchange-2013-autoreseed.txt`):
//!
//! 1. a copy `FailedAndSuspended` for `dwell` starts the workflow;
//! 2. resume up to `resume_attempts` times, `resume_interval` apart: if the copy's volume
//!    answers a probe again, the copy is reseeded in place;
//! 3. assign a spare volume up to `spare_attempts` times, `spare_interval` apart, and
//!    seed the copy there;
//! 4. seed in place (safe-delete the existing files first) up to `seed_attempts` times,
//!    `seed_interval` apart;
//! 5. stop; `reset_after` after the workflow started, if the copy is still failed, start
//!    over at step 2.
//!
//! [`policy`] is the pure state machine, driven by a [`Clock`] so tests run days of
//! workflow in milliseconds; the runner that probes volumes, assigns spares and starts
//! reseeds lives next to it.

pub mod policy;
mod runner;

pub(crate) use runner::db_bytes;
pub use runner::{Runner, RunnerHandle};

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// The `[autoreseed]` section of the config. Durations accept "500ms", "2s", "15m",
/// "1h", "3d".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timings {
    /// Run the workflow at all. Default true.
    pub enabled: bool,
    /// How long a copy stays `FailedAndSuspended` before the workflow starts. Default 15m.
    #[serde(with = "humantime_serde")]
    pub dwell: Duration,
    /// Resume attempts. Default 3.
    pub resume_attempts: u32,
    /// Between resume attempts. Default 5m.
    #[serde(with = "humantime_serde")]
    pub resume_interval: Duration,
    /// Spare assignment attempts. Default 5.
    pub spare_attempts: u32,
    /// Between spare assignment attempts. Default 1h.
    #[serde(with = "humantime_serde")]
    pub spare_interval: Duration,
    /// In-place seed attempts. Default 5.
    pub seed_attempts: u32,
    /// Between in-place seed attempts. Default 1h.
    #[serde(with = "humantime_serde")]
    pub seed_interval: Duration,
    /// After this long since the workflow started, a copy still failed starts over.
    /// Default 3d.
    #[serde(with = "humantime_serde")]
    pub reset_after: Duration,
    /// The workflow waits while more copies than this are `FailedAndSuspended` on the
    /// host (something bigger than one disk is wrong). Default 8.
    pub max_failed_copies: u32,
}

impl Default for Timings {
    fn default() -> Timings {
        Timings {
            enabled: true,
            dwell: Duration::from_secs(15 * 60),
            resume_attempts: 3,
            resume_interval: Duration::from_secs(5 * 60),
            spare_attempts: 5,
            spare_interval: Duration::from_secs(3600),
            seed_attempts: 5,
            seed_interval: Duration::from_secs(3600),
            reset_after: Duration::from_secs(3 * 24 * 3600),
            max_failed_copies: 8,
        }
    }
}

/// Where the workflow gets the time: the system clock in production, a hand-driven
/// clock in tests.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now.
    fn now(&self) -> SystemTime;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock {
    now: parking_lot::Mutex<SystemTime>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: SystemTime) -> ManualClock {
        ManualClock {
            now: parking_lot::Mutex::new(start),
        }
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        *self.now.lock() += d;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.now.lock()
    }
}
