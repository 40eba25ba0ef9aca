//! reseedfs: stable database paths over a pool of volumes, every write mirrored to the
//! database's copies, and a disk's death hidden from the database.
//!
//! Layer map (a request travels top to bottom):
//!
//! ```text
//! cli/            one module per subcommand (init, mount, status, events, unmount, demo)
//! daemon          mount orchestration: config -> pool -> core -> control socket -> adapter
//! sys (platform/) OS adapters only: FUSE (fuser) on Linux, the ext4 shutdown ioctl
//! fs/             platform-neutral filesystem core: translates requests, NodeId/HandleId
//!                 tables
//! pool/           volumes, placement map, persisted pool state (the copy set's Store),
//!                 spares, `init`
//! checksum/       a CRC32C per 4 KiB block of every database file, per copy (format, stores)
//! copyset/        one database's copies: owns copy states; every mutation in one call
//!                 (locks, tap, seed routing, fan-out, outcome rules); read failover;
//!                 crash repair
//! tap/            the log tap: mutation numbers, dirty maps of lagging copies, activity
//!                 log, generations, tree reconciliation
//! volume/         one backing volume behind one interface: the Unix backend (openat2
//!                 RESOLVE_BENEATH + *at), a fault-injecting wrapper for tests
//! reseed/         online block copy of a database onto a new copy (and incremental
//!                 resync of a copy that missed writes), and its engines
//! verify/         online comparison of a database's in-sync copies, and repair; the locked
//!                 chunk comparison the seeder and the resync share
//! job             a background job's progress (reseed, resync, verify): phase, bytes, rate
//! autoreseed/     the AutoReseed policy (state machine on a Clock) and its runner
//! throttle        the host's rebuild scheduler: shared budget, fair shares, latency backoff
//! explain         why each copy is not healthy and what happens next; what if a volume dies
//! status          what `status` shows and its JSON types: the pool's view, completed
//! events          numbered event records (ids in one table), persisted as JSON lines
//! control         control socket: requests and responses
//! metrics         Prometheus `/metrics` (request latency, copies, volumes, reseeds)
//! mountpoint      what is mounted at the databases root; dead mounts of a crashed daemon
//! private         the daemon's own files on the system disk, private to root
//! config, layout  TOML config (Exchange aliases), naming convention and name checks
//! testbed         throwaway pools on loop-mounted ext4 volumes, the daemon supervisor and
//!                 the PRNG of the demo, tests and benches (feature `testbed`; not the product)
//! ```
//!
//! `src/` is free of `unsafe`; the few system calls that need it live in `platform/`.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod autoreseed;
pub mod checksum;
pub mod cli;
pub mod config;
pub mod control;
pub mod copyset;
pub mod daemon;
pub mod events;
pub mod explain;
pub mod fs;
pub mod job;
pub mod layout;
pub mod metrics;
pub mod mountpoint;
pub mod names;
pub mod pool;
#[cfg(unix)]
pub mod private;
/// The daemon's own files, Windows (the same API; see the file's header).
#[cfg(windows)]
#[path = "../platform/windows/private.rs"]
pub mod private;
pub mod reseed;
pub mod status;
pub mod tap;
#[cfg(any(test, feature = "testbed"))]
pub mod testbed;
pub mod throttle;
pub mod verify;
pub mod volume;

/// OS adapters (the `platform/` tree). Only this module may contain `unsafe`.
#[cfg(target_os = "linux")]
#[path = "../platform/linux/mod.rs"]
#[allow(unsafe_code)]
pub mod sys;

/// OS adapters (the `platform/` tree): WinFsp, the volume backend, the named pipe, the
/// service and the event log. Only this module may contain `unsafe`.
#[cfg(windows)]
#[path = "../platform/windows/mod.rs"]
#[allow(unsafe_code)]
pub mod sys;

/// The Windows adapters' rules that need no Windows API (name rules, path walking, the
/// errno/Win32/NTSTATUS mappings, security descriptors from owner and mode, the control
/// pipe's name): compiled on every OS, so that their tests run on Linux.
#[cfg(any(windows, test))]
#[path = "../platform/windows/rules/mod.rs"]
pub mod winrules;
