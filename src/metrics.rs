//! Prometheus metrics: `reseedfs mount --metrics 127.0.0.1:9477` (config key `metrics`)
//! serves the text exposition format at `GET /metrics`.
//!
//! Every series is prefixed `reseedfs_`:
//!
//! | series | type | labels | what |
//! |---|---|---|---|
//! | `reseedfs_build_info` | gauge | `version`, `commit` | always 1 |
//! | `reseedfs_mount_info` | gauge | `fuse_transport` | always 1: how requests reach the mount (`dev_fuse`, `uring` or `winfsp`, as `status --json` says); absent until the mount serves |
//! | `reseedfs_pool_epoch` | gauge | | the persisted pool state's epoch |
//! | `reseedfs_copy_state` | gauge | `database`, `volume`, `state` | 1 for the copy's status word, 0 for the others |
//! | `reseedfs_copy_active` | gauge | `database`, `volume` | 1 for the copy that serves reads |
//! | `reseedfs_copy_pending_resync_bytes` | gauge | `database`, `volume` | bytes the copy still lacks (when known) |
//! | `reseedfs_reseed_phase_bytes` | gauge | `database`, `volume`, `phase` | bytes to move in the running reseed's phase |
//! | `reseedfs_reseed_done_bytes` | gauge | `database`, `volume`, `phase` | bytes moved so far in that phase |
//! | `reseedfs_reseed_throughput_bytes_per_second` | gauge | `database`, `volume`, `phase` | that phase's throughput |
//! | `reseedfs_reseed_copied_bytes_total` | counter | `database` | bytes copied by reseeds that completed their copy (826) |
//! | `reseedfs_volume_state` | gauge | `volume`, `state` | 1 for `InUse`, `Spare` or `Failed`, 0 for the others |
//! | `reseedfs_volume_io_errors_total` | counter | `volume` | I/O errors seen on the volume |
//! | `reseedfs_volume_slow_requests_total` | counter | `volume` | operations slower than `[volume] slow_request` |
//! | `reseedfs_checksum_errors_total` | counter | `volume` | blocks read from the volume that did not match their checksum |
//! | `reseedfs_volume_mirrored_bytes_total` | counter | `volume` | file data written to the volume's copies through the mount |
//! | `reseedfs_volume_free_bytes`, `reseedfs_volume_size_bytes` | gauge | `volume` | when the volume answers |
//! | `reseedfs_events_total` | counter | `id`, `kind` | events recorded; those logged at ERROR from 0, the others from their first |
//! | `reseedfs_event_log_write_failures_total` | counter | | events that could not be written to `events.jsonl` |
//! | `reseedfs_autoreseed_step` | gauge | `database`, `volume`, `step` | 1 for the step of a copy's AutoReseed workflow (`Dwell` .. `Stopped`), 0 for the others |
//! | `reseedfs_autoreseed_blocked` | gauge | `database`, `volume` | 1 while a prerequisite holds the copy's workflow |
//! | `reseedfs_throttle_budget_bytes_per_second` | gauge | | the rebuild budget set (absent while unlimited) |
//! | `reseedfs_throttle_effective_bytes_per_second` | gauge | | the budget after latency backoff (absent while unlimited) |
//! | `reseedfs_throttle_backoff` | gauge | | 1 while the throttle backs off for a volume's latency |
//! | `reseedfs_throttle_stream_bytes_per_second` | gauge | `database`, `kind` | what the running reseeds, resyncs and verifies move |
//! | `reseedfs_throttle_stream_share_bytes_per_second` | gauge | `database`, `kind` | their share of the budget (while limited) |
//! | `reseedfs_request_duration_seconds` | histogram | `op` | FUSE request latency per operation (50 µs .. 5 s) |
//!
//! The hot path only touches atomics: a request adds to one bucket and to the sum of its
//! operation's histogram. Everything else is read from the pool's status at scrape time.
//! The alerting rules and the Grafana dashboard in `platform/linux/monitoring/` use only
//! these series (`tests/monitoring.rs` evaluates them on a real mount).

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::events::{EventId, EventSink, NewEvent};
use crate::reseed::Phase;
use crate::status::Status;

/// Upper bounds of the latency buckets, in seconds (`le`), from 50 µs to 5 s.
pub const BUCKET_BOUNDS_S: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
];

/// The same bounds in nanoseconds, for the hot path.
const BUCKET_BOUNDS_NS: [u64; 16] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
];

/// Buckets per histogram: one per bound, and the overflow (`+Inf`).
const BUCKETS: usize = BUCKET_BOUNDS_NS.len() + 1;

/// The copy status words, each a `state` label of `reseedfs_copy_state`.
const COPY_STATES: [&str; 7] = [
    "Mounted",
    "Healthy",
    "Seeding",
    "Resynchronizing",
    "Suspended",
    "FailedAndSuspended",
    "Failed",
];

/// The volume states, each a `state` label of `reseedfs_volume_state`.
const VOLUME_STATES: [&str; 3] = ["InUse", "Spare", "Failed"];

/// The steps of an AutoReseed workflow, each a `step` label of `reseedfs_autoreseed_step`.
const AUTORESEED_STEPS: [&str; 6] = [
    "Dwell",
    "Resume",
    "AssignSpare",
    "SeedInPlace",
    "Stopped",
    "Done",
];

/// Events exported from 0 (the others appear with their first occurrence): those logged at
/// ERROR, which a human must act on and the shipped alerting rules watch. A counter series
/// that appears at 1 is invisible to `increase()`, which needs an earlier sample: the first
/// failure would never alert.
const EVENTS_FROM_ZERO: [EventId; 7] = [
    EventId::CopyFailed,
    EventId::CopyDiverged,
    EventId::StatePersistFailed,
    EventId::SparesExhausted,
    EventId::AutoReseedStopped,
    EventId::ReseedFailed,
    EventId::IncrementalReseedError,
];

/// A filesystem operation, as timed in `reseedfs_request_duration_seconds{op}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)] // one variant per FUSE operation, named after it
pub enum Op {
    Lookup,
    Forget,
    Getattr,
    Setattr,
    Readlink,
    Mknod,
    Mkdir,
    Unlink,
    Rmdir,
    Symlink,
    Rename,
    Link,
    Open,
    Read,
    Write,
    Release,
    Fsync,
    Opendir,
    Readdir,
    Releasedir,
    Fsyncdir,
    Statfs,
    Setxattr,
    Getxattr,
    Listxattr,
    Removexattr,
    Create,
    Fallocate,
    Lseek,
}

impl Op {
    /// Every operation, in the order of the exposition.
    pub const ALL: [Op; 29] = [
        Op::Lookup,
        Op::Forget,
        Op::Getattr,
        Op::Setattr,
        Op::Readlink,
        Op::Mknod,
        Op::Mkdir,
        Op::Unlink,
        Op::Rmdir,
        Op::Symlink,
        Op::Rename,
        Op::Link,
        Op::Open,
        Op::Read,
        Op::Write,
        Op::Release,
        Op::Fsync,
        Op::Opendir,
        Op::Readdir,
        Op::Releasedir,
        Op::Fsyncdir,
        Op::Statfs,
        Op::Setxattr,
        Op::Getxattr,
        Op::Listxattr,
        Op::Removexattr,
        Op::Create,
        Op::Fallocate,
        Op::Lseek,
    ];

    /// The `op` label.
    pub fn name(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Forget => "forget",
            Op::Getattr => "getattr",
            Op::Setattr => "setattr",
            Op::Readlink => "readlink",
            Op::Mknod => "mknod",
            Op::Mkdir => "mkdir",
            Op::Unlink => "unlink",
            Op::Rmdir => "rmdir",
            Op::Symlink => "symlink",
            Op::Rename => "rename",
            Op::Link => "link",
            Op::Open => "open",
            Op::Read => "read",
            Op::Write => "write",
            Op::Release => "release",
            Op::Fsync => "fsync",
            Op::Opendir => "opendir",
            Op::Readdir => "readdir",
            Op::Releasedir => "releasedir",
            Op::Fsyncdir => "fsyncdir",
            Op::Statfs => "statfs",
            Op::Setxattr => "setxattr",
            Op::Getxattr => "getxattr",
            Op::Listxattr => "listxattr",
            Op::Removexattr => "removexattr",
            Op::Create => "create",
            Op::Fallocate => "fallocate",
            Op::Lseek => "lseek",
        }
    }
}

/// A latency histogram with fixed buckets; observing is two relaxed atomic adds. Aligned
/// so that two operations never share a cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Histogram {
    /// Observations per bucket (not cumulative); the last is the overflow.
    buckets: [AtomicU64; BUCKETS],
    /// Sum of the observations, in nanoseconds.
    sum_ns: AtomicU64,
}

impl Histogram {
    #[inline]
    fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // The first bound >= ns: buckets count values <= their bound (`le`).
        let i = BUCKET_BOUNDS_NS.partition_point(|&b| b < ns);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Cumulative bucket counts (the last is `+Inf`, also the count) and the sum in seconds.
    fn snapshot(&self) -> ([u64; BUCKETS], f64) {
        let mut cumulative = [0u64; BUCKETS];
        let mut total = 0u64;
        for (c, b) in cumulative.iter_mut().zip(&self.buckets) {
            total += b.load(Ordering::Relaxed);
            *c = total;
        }
        (cumulative, self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9)
    }
}

/// What the daemon counts for the metrics endpoint: request latencies (fed by the FUSE
/// adapter) and events (fed by [`CountingSink`]).
pub struct Metrics {
    requests: [Histogram; Op::ALL.len()],
    /// Events recorded, by (id, kind).
    events: Mutex<BTreeMap<(u32, String), u64>>,
    /// Bytes copied by reseeds that completed their copy, by database.
    reseed_copied: Mutex<BTreeMap<String, u64>>,
    /// The sink that persists the events (set by [`CountingSink::new`]): its failures.
    persisted_by: std::sync::OnceLock<Arc<dyn EventSink>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("events", &self.events)
            .field("reseed_copied", &self.reseed_copied)
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Empty counters.
    pub fn new() -> Metrics {
        let events = EVENTS_FROM_ZERO
            .iter()
            .map(|id| ((id.number(), id.kind().to_owned()), 0))
            .collect();
        Metrics {
            requests: std::array::from_fn(|_| Histogram::default()),
            events: Mutex::new(events),
            reseed_copied: Mutex::new(BTreeMap::new()),
            persisted_by: std::sync::OnceLock::new(),
        }
    }

    /// Records the latency of one request.
    #[inline]
    pub fn observe(&self, op: Op, d: Duration) {
        self.requests[op as usize].observe(d);
    }

    /// Counts one event (and the bytes of a completed seed).
    pub fn count_event(&self, e: &NewEvent) {
        *self
            .events
            .lock()
            .entry((e.id.number(), e.id.kind().to_owned()))
            .or_default() += 1;
        if e.id == crate::events::EventId::SeedingCompleted {
            let bytes = e.fields.get("bytes").and_then(|b| b.as_u64()).unwrap_or(0);
            let db = e.database.clone().unwrap_or_default();
            *self.reseed_copied.lock().entry(db).or_default() += bytes;
        }
    }

    /// The exposition: the counters kept here, the pool's `status` (copies, volumes and
    /// reseeds, as annotated by the runner) and `mirrored` (bytes written per volume).
    pub fn render(&self, status: &Status, mirrored: &[(String, u64)]) -> String {
        let mut out = Exposition::default();
        out.family("reseedfs_build_info", "gauge", "The running reseedfs.");
        out.sample(
            "reseedfs_build_info",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("commit", env!("RESEEDFS_COMMIT")),
            ],
            1,
        );
        // An info series, as build_info: the transport is a label, so that a query or an
        // alert can select on it (`reseedfs_mount_info{fuse_transport="uring"}`).
        if let Some(transport) = &status.fuse_transport {
            out.family(
                "reseedfs_mount_info",
                "gauge",
                "The mount being served; fuse_transport: how FUSE requests reach the daemon \
                 (dev_fuse, uring, winfsp).",
            );
            out.sample(
                "reseedfs_mount_info",
                &[("fuse_transport", transport.as_str())],
                1,
            );
        }
        out.family(
            "reseedfs_pool_epoch",
            "gauge",
            "Epoch of the persisted pool state (it grows with every state change).",
        );
        out.sample("reseedfs_pool_epoch", &[], status.epoch);
        render_copies(&mut out, status);
        render_autoreseed(&mut out, status);
        self.render_reseeds(&mut out, status);
        render_volumes(&mut out, status, mirrored);
        render_throttle(&mut out, status);
        self.render_events(&mut out);
        self.render_requests(&mut out);
        out.text
    }

    fn render_reseeds(&self, out: &mut Exposition, status: &Status) {
        let running: Vec<_> = status
            .databases
            .iter()
            .flat_map(|d| d.copies.iter().map(move |c| (d, c)))
            .filter_map(|(d, c)| Some((d, c, c.seed.as_ref()?)))
            .filter(|(_, _, s)| !matches!(s.phase, Phase::Done | Phase::Failed))
            .collect();
        let series: [(&str, &str, SeedValue); 3] = [
            (
                "reseedfs_reseed_phase_bytes",
                "Bytes to move (copy) or compare (verify) in the running reseed's phase.",
                |s| s.bytes_total as f64,
            ),
            (
                "reseedfs_reseed_done_bytes",
                "Bytes moved or compared so far in the running reseed's phase.",
                |s| s.bytes_done as f64,
            ),
            (
                "reseedfs_reseed_throughput_bytes_per_second",
                "Throughput of the running reseed's phase.",
                |s| s.mib_s * 1048576.0,
            ),
        ];
        for (name, help, value) in series {
            out.family(name, "gauge", help);
            for (d, c, s) in &running {
                let phase = format!("{:?}", s.phase);
                let labels = [
                    ("database", d.name.as_str()),
                    ("volume", c.volume.as_str()),
                    ("phase", phase.as_str()),
                ];
                out.sample(name, &labels, value(s));
            }
        }
        let name = "reseedfs_reseed_copied_bytes_total";
        out.family(
            name,
            "counter",
            "Bytes copied by reseeds that completed their copy phase (event 826).",
        );
        let mut copied = self.reseed_copied.lock().clone();
        for d in &status.databases {
            copied.entry(d.name.to_string()).or_default();
        }
        for (db, bytes) in &copied {
            out.sample(name, &[("database", db)], bytes);
        }
    }

    fn render_events(&self, out: &mut Exposition) {
        let name = "reseedfs_events_total";
        out.family(
            name,
            "counter",
            "Events recorded by this daemon, by id (a series appears with its first event).",
        );
        for ((id, kind), n) in self.events.lock().iter() {
            out.sample(name, &[("id", &id.to_string()), ("kind", kind)], n);
        }
        let name = "reseedfs_event_log_write_failures_total";
        out.family(
            name,
            "counter",
            "Events that could not be written to the event log (events.jsonl) on the system disk.",
        );
        let failures = self.persisted_by.get().map_or(0, |s| s.persist_failures());
        out.sample(name, &[], failures);
    }

    fn render_requests(&self, out: &mut Exposition) {
        let name = "reseedfs_request_duration_seconds";
        out.family(
            name,
            "histogram",
            "Time the filesystem core took to serve a FUSE request, by operation.",
        );
        let bucket = format!("{name}_bucket");
        let sum = format!("{name}_sum");
        let count = format!("{name}_count");
        for op in Op::ALL {
            let (cumulative, seconds) = self.requests[op as usize].snapshot();
            for (le, n) in BUCKET_BOUNDS_S.iter().zip(&cumulative) {
                let le = le.to_string();
                out.sample(&bucket, &[("op", op.name()), ("le", &le)], n);
            }
            let total = cumulative[BUCKETS - 1];
            out.sample(&bucket, &[("op", op.name()), ("le", "+Inf")], total);
            out.sample(&sum, &[("op", op.name())], seconds);
            out.sample(&count, &[("op", op.name())], total);
        }
    }
}

/// One number of a reseed's status.
type SeedValue = fn(&crate::reseed::SeedStatus) -> f64;

fn render_copies(out: &mut Exposition, status: &Status) {
    let copies: Vec<_> = status
        .databases
        .iter()
        .flat_map(|d| d.copies.iter().map(move |c| (d.name.as_str(), c)))
        .collect();
    let name = "reseedfs_copy_state";
    out.family(
        name,
        "gauge",
        "1 for the copy's status (Mounted, Healthy, Seeding, FailedAndSuspended, ...), 0 for the others.",
    );
    for (db, c) in &copies {
        let known = COPY_STATES.contains(&c.status.as_str());
        let states = COPY_STATES
            .iter()
            .copied()
            .chain((!known).then_some(c.status.as_str()));
        for state in states {
            let labels = [("database", *db), ("volume", &c.volume), ("state", state)];
            out.sample(name, &labels, u8::from(c.status == state));
        }
    }
    let name = "reseedfs_copy_active";
    out.family(
        name,
        "gauge",
        "1 for the copy that serves the database's reads.",
    );
    for (db, c) in &copies {
        let labels = [("database", *db), ("volume", c.volume.as_str())];
        out.sample(name, &labels, u8::from(c.active));
    }
    let name = "reseedfs_copy_pending_resync_bytes";
    out.family(
        name,
        "gauge",
        "Bytes the copy still lacks (its copy queue length in bytes), when known.",
    );
    for (db, c) in &copies {
        if let Some(bytes) = c.queue_bytes {
            let labels = [("database", *db), ("volume", c.volume.as_str())];
            out.sample(name, &labels, bytes);
        }
    }
}

fn render_autoreseed(out: &mut Exposition, status: &Status) {
    let workflows: Vec<_> = status
        .databases
        .iter()
        .flat_map(|d| d.copies.iter().map(move |c| (d.name.as_str(), c)))
        .filter_map(|(db, c)| Some((db, c.volume.as_str(), c.autoreseed.as_ref()?)))
        .collect();
    let name = "reseedfs_autoreseed_step";
    out.family(
        name,
        "gauge",
        "1 for the step of the copy's AutoReseed workflow (Dwell, Resume, AssignSpare, SeedInPlace, Stopped, Done), 0 for the others.",
    );
    for (db, volume, w) in &workflows {
        let known = AUTORESEED_STEPS.contains(&w.step.as_str());
        let steps = AUTORESEED_STEPS
            .iter()
            .copied()
            .chain((!known).then_some(w.step.as_str()));
        for step in steps {
            let labels = [("database", *db), ("volume", *volume), ("step", step)];
            out.sample(name, &labels, u8::from(step == w.step));
        }
    }
    let name = "reseedfs_autoreseed_blocked";
    out.family(
        name,
        "gauge",
        "1 while a prerequisite holds the copy's AutoReseed workflow (reseedfs explain says which).",
    );
    for (db, volume, w) in &workflows {
        let labels = [("database", *db), ("volume", *volume)];
        out.sample(name, &labels, u8::from(w.blocked.is_some()));
    }
}

fn render_throttle(out: &mut Exposition, status: &Status) {
    let Some(t) = &status.throttle else {
        return;
    };
    for (name, help, value) in [
        (
            "reseedfs_throttle_budget_bytes_per_second",
            "The budget shared by every reseed, resync and verify (absent while unlimited).",
            t.max_bytes_per_s,
        ),
        (
            "reseedfs_throttle_effective_bytes_per_second",
            "The budget after the latency backoff (absent while unlimited).",
            t.effective_bytes_per_s,
        ),
    ] {
        out.family(name, "gauge", help);
        if let Some(v) = value {
            out.sample(name, &[], v);
        }
    }
    let name = "reseedfs_throttle_backoff";
    out.family(
        name,
        "gauge",
        "1 while the throttle backs off because a volume's latency is over its target.",
    );
    out.sample(name, &[], u8::from(t.backoff.is_some()));
    // Two streams of one kind on one database (two copies seeded at once) add up.
    let mut streams: BTreeMap<(&str, &str), (u64, Option<u64>)> = BTreeMap::new();
    for s in &t.streams {
        let e = streams.entry((s.db.as_str(), s.kind.name())).or_default();
        e.0 += s.bytes_per_s;
        if let Some(share) = s.share_bytes_per_s {
            *e.1.get_or_insert(0) += share;
        }
    }
    let name = "reseedfs_throttle_stream_bytes_per_second";
    out.family(
        name,
        "gauge",
        "What the running rebuild streams (Reseed, Resync, Verify) move now.",
    );
    for ((db, kind), (rate, _)) in &streams {
        out.sample(name, &[("database", db), ("kind", kind)], rate);
    }
    let name = "reseedfs_throttle_stream_share_bytes_per_second";
    out.family(
        name,
        "gauge",
        "The running rebuild streams' share of the budget (while it is limited).",
    );
    for ((db, kind), (_, share)) in &streams {
        if let Some(share) = share {
            out.sample(name, &[("database", db), ("kind", kind)], share);
        }
    }
}

fn render_volumes(out: &mut Exposition, status: &Status, mirrored: &[(String, u64)]) {
    let name = "reseedfs_volume_state";
    out.family(
        name,
        "gauge",
        "1 for the volume's state (InUse, Spare or Failed), 0 for the others.",
    );
    for v in &status.volumes {
        for state in VOLUME_STATES {
            let labels = [("volume", v.name.as_str()), ("state", state)];
            out.sample(name, &labels, u8::from(v.state == state));
        }
    }
    let name = "reseedfs_volume_io_errors_total";
    out.family(
        name,
        "counter",
        "I/O errors seen on the volume since the mount.",
    );
    for v in &status.volumes {
        out.sample(name, &[("volume", v.name.as_str())], v.io_errors);
    }
    let name = "reseedfs_volume_slow_requests_total";
    out.family(
        name,
        "counter",
        "Operations on the volume slower than [volume] slow_request since the mount.",
    );
    for v in &status.volumes {
        out.sample(name, &[("volume", v.name.as_str())], v.slow_requests);
    }
    let name = "reseedfs_checksum_errors_total";
    out.family(
        name,
        "counter",
        "Blocks read from the volume that did not match their checksum since the mount (each served from a good copy and repaired, or failed with EIO).",
    );
    for v in &status.volumes {
        out.sample(name, &[("volume", v.name.as_str())], v.checksum_errors);
    }
    let name = "reseedfs_volume_mirrored_bytes_total";
    out.family(
        name,
        "counter",
        "File data written to the volume's copies through the mount since it started.",
    );
    for (volume, bytes) in mirrored {
        out.sample(name, &[("volume", volume.as_str())], bytes);
    }
    for (name, help, field) in [
        (
            "reseedfs_volume_free_bytes",
            "Bytes available on the volume (absent while it is failed).",
            (|v| v.free_bytes) as fn(&crate::status::VolumeStatus) -> Option<u64>,
        ),
        (
            "reseedfs_volume_size_bytes",
            "Size of the volume (absent while it is failed).",
            |v| v.total_bytes,
        ),
    ] {
        out.family(name, "gauge", help);
        for v in &status.volumes {
            if let Some(bytes) = field(v) {
                out.sample(name, &[("volume", v.name.as_str())], bytes);
            }
        }
    }
}

/// The text exposition format, version 0.0.4.
#[derive(Debug, Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    /// `# HELP` and `# TYPE` of a family; its samples follow.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        self.text += &format!("# HELP {name} {help}\n# TYPE {name} {kind}\n");
    }

    /// One sample line.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.text += name;
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                self.text += &format!("{k}=\"{v}\"");
            }
            self.text.push('}');
        }
        self.text += &format!(" {value}\n");
    }
}

/// An [`EventSink`] that counts every event for the metrics, then hands it on.
pub struct CountingSink {
    inner: Arc<dyn EventSink>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for CountingSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountingSink").finish_non_exhaustive()
    }
}

impl CountingSink {
    /// Counts into `metrics`, records into `inner`; the metrics also export the events
    /// `inner` could not persist.
    pub fn new(inner: Arc<dyn EventSink>, metrics: Arc<Metrics>) -> CountingSink {
        let _ = metrics.persisted_by.set(inner.clone());
        CountingSink { inner, metrics }
    }
}

impl EventSink for CountingSink {
    fn emit(&self, event: NewEvent) {
        self.metrics.count_event(&event);
        self.inner.emit(event);
    }

    fn persist_failures(&self) -> u64 {
        self.inner.persist_failures()
    }
}

/// Produces the exposition at each scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// The largest request head read (`GET /metrics HTTP/1.1` and its headers).
const MAX_REQUEST_BYTES: usize = 8192;

/// How long a client has for its whole request head, from its connection: a client that
/// sends a byte every few seconds is cut off here, not at a timeout per read.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// How long a client has to take the whole answer.
pub const ANSWER_DEADLINE: Duration = Duration::from_secs(10);

/// Connections served at once, each on its own thread; more are closed at once.
pub const MAX_CONNECTIONS: usize = 16;

/// Serves `GET /metrics` on `addr`: each connection on its own thread (at most
/// [`MAX_CONNECTIONS`] at once), with [`REQUEST_DEADLINE`] for its whole request and
/// [`ANSWER_DEADLINE`] for the answer; anything but `GET /metrics` is 404 or 405.
/// Returns the bound address (the port, when `addr` asked for port 0).
///
/// Hand-written rather than a crate: the maintained small servers (tiny_http 0.12) have no
/// deadline for a whole request and no bound on the connections they serve, which is what
/// this endpoint needs against a slow client; one request, one path, `Connection: close`.
pub fn serve(addr: SocketAddr, render: Render) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("serve metrics on {addr}: {e} (pick another address with --metrics ADDR or the `metrics` config key)"),
        )
    })?;
    let bound = listener.local_addr()?;
    let in_flight = Arc::new(AtomicU64::new(0));
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            let mut refused = 0u64;
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if in_flight.load(Ordering::Acquire) >= MAX_CONNECTIONS as u64 {
                    refused += 1;
                    if refused.is_power_of_two() {
                        tracing::warn!(
                            "metrics: {MAX_CONNECTIONS} connections already served, closed {refused} more"
                        );
                    }
                    continue;
                }
                in_flight.fetch_add(1, Ordering::AcqRel);
                let guard = Connection(in_flight.clone());
                let render = render.clone();
                let spawned = std::thread::Builder::new()
                    .name("metrics-conn".into())
                    .spawn(move || {
                        let _guard = guard;
                        if let Err(err) = answer(stream, &render) {
                            tracing::debug!(%err, "metrics client");
                        }
                    });
                if let Err(err) = spawned {
                    tracing::warn!(%err, "metrics: cannot start a thread for a client");
                }
            }
        })?;
    Ok(bound)
}

/// Counts a connection being served, until dropped.
struct Connection(Arc<AtomicU64>);

impl Drop for Connection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Reads one request (before its deadline) and writes its answer (before its own).
fn answer(mut stream: TcpStream, render: &Render) -> io::Result<()> {
    let head = read_head(&mut stream, Instant::now() + REQUEST_DEADLINE)?;
    let line = head.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or_default(), parts.next());
    let path = target.map(|t| t.split('?').next().unwrap_or_default());
    let (code, body, extra) = match (method, path) {
        (_, None) => ("400 Bad Request", "bad request\n".to_owned(), ""),
        ("GET" | "HEAD", Some("/metrics")) => ("200 OK", render(), ""),
        (_, Some("/metrics")) => (
            "405 Method Not Allowed",
            "only GET\n".to_owned(),
            "Allow: GET, HEAD\r\n",
        ),
        _ => ("404 Not Found", "not found: try /metrics\n".to_owned(), ""),
    };
    let content_type = if code.starts_with("200") {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut response = format!(
        "HTTP/1.1 {code}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    );
    if method != "HEAD" {
        response += &body;
    }
    write_before(
        &mut stream,
        response.as_bytes(),
        Instant::now() + ANSWER_DEADLINE,
    )
}

/// The time left before `deadline`, or `TimedOut`.
fn left(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client missed its deadline",
        ));
    }
    Ok(left)
}

/// Reads up to the blank line that ends the request head, all of it before `deadline`.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> io::Result<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        if head.len() > MAX_REQUEST_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
        // Each read may wait only for what is left of the whole request's time.
        stream.set_read_timeout(Some(left(deadline)?))?;
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client missed its deadline",
                ));
            }
            Err(e) => return Err(e),
        };
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// Writes `data` in pieces, all of it before `deadline` (a client that reads slowly does
/// not hold the thread past it).
fn write_before(stream: &mut TcpStream, mut data: &[u8], deadline: Instant) -> io::Result<()> {
    while !data.is_empty() {
        stream.set_write_timeout(Some(left(deadline)?))?;
        let piece = data.len().min(16 * 1024);
        match stream.write(&data[..piece]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventId;
    use crate::status::{CopyStatus, DbStatus, VolumeStatus};

    fn status() -> Status {
        let copy = |volume: &str, status: &str, active| CopyStatus {
            name: format!("db001\\{volume}"),
            volume: volume.to_owned(),
            status: status.parse().expect("a status word"),
            active,
            reseed_blocked: false,
            resume_blocked: false,
            failed_at: None,
            seed: None,
            autoreseed: None,
            queue_length: None,
            queue_bytes: None,
            volume_free_bytes: None,
            last_error: None,
        };
        let volume = |name: &str, state: &str, io_errors| VolumeStatus {
            name: name.to_owned(),
            state: state.parse().expect("a volume state"),
            free_bytes: (state != "Failed").then_some(1 << 20),
            total_bytes: (state != "Failed").then_some(2 << 20),
            io_errors,
            slow_requests: 0,
            checksum_errors: 0,
        };
        let mut queued = copy("Volume2", "Mounted", true);
        queued.queue_bytes = Some(4096);
        let mut failed = copy("Volume1", "FailedAndSuspended", false);
        failed.autoreseed = Some(crate::status::WorkflowStatus {
            step: "Stopped".into(),
            attempt: 5,
            of: 5,
            running: None,
            next_at: None,
            blocked: None,
            last_error: None,
        });
        let stream = |kind, rate| crate::throttle::StreamStatus {
            db: crate::names::DbName::from_static("db001"),
            kind,
            single_copy: true,
            weight: 4,
            share_bytes_per_s: Some(100),
            bytes_per_s: rate,
            bytes: 1,
            volumes: vec!["Volume2".into()],
        };
        Status {
            epoch: 7,
            databases: vec![DbStatus {
                name: "db001".into(),
                copies: vec![failed, queued],
                scrub: None,
            }],
            volumes: vec![
                volume("Volume1", "Failed", 3),
                volume("Volume2", "InUse", 0),
            ],
            throttle: Some(crate::throttle::ThrottleStatus {
                max_bytes_per_s: Some(1000),
                effective_bytes_per_s: Some(500),
                floor_bytes_per_s: 100,
                backoff: Some("Volume2 is slow".into()),
                streams: vec![
                    stream(crate::throttle::StreamKind::Reseed, 30),
                    stream(crate::throttle::StreamKind::Reseed, 12),
                    stream(crate::throttle::StreamKind::Verify, 7),
                ],
            }),
            foreign: Vec::new(),
            fuse_transport: None,
        }
    }

    #[test]
    fn histogram_buckets_are_le_and_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(50)); // == the first bound: first bucket
        h.observe(Duration::from_micros(51));
        h.observe(Duration::from_secs(10)); // overflow
        let (c, sum) = h.snapshot();
        assert_eq!((c[0], c[1], c[BUCKETS - 2], c[BUCKETS - 1]), (1, 2, 2, 3));
        assert!((sum - 10.000101).abs() < 1e-9, "{sum}");
        assert_eq!(BUCKET_BOUNDS_S.len(), BUCKET_BOUNDS_NS.len());
        for (s, ns) in BUCKET_BOUNDS_S.iter().zip(BUCKET_BOUNDS_NS) {
            assert_eq!((s * 1e9).round() as u64, ns);
        }
    }

    #[test]
    fn render_names_every_copy_volume_and_op() {
        let m = Metrics::new();
        m.observe(Op::Write, Duration::from_millis(2));
        m.count_event(&NewEvent::new(EventId::CopyFailed, "Volume1 failed"));
        m.count_event(
            &NewEvent::new(EventId::SeedingCompleted, "done")
                .database("db001")
                .field("bytes", 1000u64),
        );
        let mirrored = vec![("Volume1".to_owned(), 10), ("Volume2".to_owned(), 20)];
        let text = m.render(&status(), &mirrored);
        for line in [
            "reseedfs_pool_epoch 7",
            "reseedfs_copy_state{database=\"db001\",volume=\"Volume1\",state=\"FailedAndSuspended\"} 1",
            "reseedfs_copy_state{database=\"db001\",volume=\"Volume1\",state=\"Mounted\"} 0",
            "reseedfs_copy_active{database=\"db001\",volume=\"Volume2\"} 1",
            "reseedfs_copy_pending_resync_bytes{database=\"db001\",volume=\"Volume2\"} 4096",
            "reseedfs_volume_io_errors_total{volume=\"Volume1\"} 3",
            "reseedfs_volume_state{volume=\"Volume1\",state=\"Failed\"} 1",
            "reseedfs_volume_mirrored_bytes_total{volume=\"Volume2\"} 20",
            "reseedfs_events_total{id=\"1109\",kind=\"copy.failed\"} 1",
            "reseedfs_reseed_copied_bytes_total{database=\"db001\"} 1000",
            "reseedfs_request_duration_seconds_bucket{op=\"write\",le=\"0.001\"} 0",
            "reseedfs_request_duration_seconds_bucket{op=\"write\",le=\"0.0025\"} 1",
            "reseedfs_request_duration_seconds_bucket{op=\"write\",le=\"+Inf\"} 1",
            "reseedfs_request_duration_seconds_count{op=\"write\"} 1",
            "reseedfs_request_duration_seconds_count{op=\"lseek\"} 0",
            "reseedfs_events_total{id=\"3017\",kind=\"autoreseed.stopped\"} 0",
            "reseedfs_events_total{id=\"3005\",kind=\"state.persist_failed\"} 0",
            "reseedfs_event_log_write_failures_total 0",
            "reseedfs_autoreseed_step{database=\"db001\",volume=\"Volume1\",step=\"Stopped\"} 1",
            "reseedfs_autoreseed_step{database=\"db001\",volume=\"Volume1\",step=\"Dwell\"} 0",
            "reseedfs_autoreseed_blocked{database=\"db001\",volume=\"Volume1\"} 0",
            "reseedfs_throttle_budget_bytes_per_second 1000",
            "reseedfs_throttle_effective_bytes_per_second 500",
            "reseedfs_throttle_backoff 1",
            "reseedfs_throttle_stream_bytes_per_second{database=\"db001\",kind=\"Reseed\"} 42",
            "reseedfs_throttle_stream_bytes_per_second{database=\"db001\",kind=\"Verify\"} 7",
            "reseedfs_throttle_stream_share_bytes_per_second{database=\"db001\",kind=\"Reseed\"} 200",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in:\n{text}"
            );
        }
        assert!(!text.contains("reseedfs_volume_free_bytes{volume=\"Volume1\"}"));
        assert!(
            !text.contains("reseedfs_autoreseed_step{database=\"db001\",volume=\"Volume2\""),
            "a copy without a workflow has no step: {text}"
        );
        assert!(
            !text.contains("id=\"3001\""),
            "3001 before it happened: {text}"
        );
        assert!(
            text.lines()
                .all(|l| l.starts_with("reseedfs_") || l.starts_with("# ")),
            "{text}"
        );
    }

    #[test]
    fn the_mount_info_names_the_fuse_transport_once_the_mount_serves() {
        let m = Metrics::new();
        let mut s = status();
        let text = m.render(&s, &[]);
        assert!(
            !text.contains("reseedfs_mount_info"),
            "a mount info before the mount serves: {text}"
        );
        for transport in ["dev_fuse", "uring"] {
            s.fuse_transport = Some(transport.to_owned());
            let text = m.render(&s, &[]);
            let line = format!("reseedfs_mount_info{{fuse_transport=\"{transport}\"}} 1");
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in:\n{text}"
            );
            assert!(
                text.lines()
                    .any(|l| l == "# TYPE reseedfs_mount_info gauge"),
                "{text}"
            );
            assert_eq!(
                text.lines()
                    .filter(|l| l.starts_with("reseedfs_mount_info"))
                    .count(),
                1,
                "one sample: {text}"
            );
        }
    }

    /// A sink that fails to persist every other event.
    #[derive(Default)]
    struct Flaky(AtomicU64);

    impl EventSink for Flaky {
        fn emit(&self, _event: NewEvent) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        fn persist_failures(&self) -> u64 {
            self.0.load(Ordering::Relaxed) / 2
        }
    }

    #[test]
    fn events_the_log_could_not_persist_are_counted() {
        let metrics = Arc::new(Metrics::new());
        let sink = CountingSink::new(Arc::new(Flaky::default()), metrics.clone());
        for _ in 0..4 {
            sink.emit(NewEvent::new(EventId::StatePersistFailed, "disk full"));
        }
        let text = metrics.render(&status(), &[]);
        for line in [
            "reseedfs_event_log_write_failures_total 2",
            "reseedfs_events_total{id=\"3005\",kind=\"state.persist_failed\"} 4",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }

    #[test]
    fn an_unlimited_throttle_exports_no_budget() {
        let mut s = status();
        let t = s.throttle.as_mut().unwrap();
        t.max_bytes_per_s = None;
        t.effective_bytes_per_s = None;
        t.backoff = None;
        t.streams.clear();
        let text = Metrics::new().render(&s, &[]);
        assert!(
            text.lines().any(|l| l == "reseedfs_throttle_backoff 0"),
            "{text}"
        );
        for absent in [
            "reseedfs_throttle_budget_bytes_per_second",
            "reseedfs_throttle_effective_bytes_per_second",
            "reseedfs_throttle_stream_bytes_per_second",
        ] {
            assert!(
                !text.lines().any(|l| l.starts_with(absent)),
                "{absent}: {text}"
            );
        }
    }

    #[test]
    fn the_events_from_zero_are_those_a_human_must_act_on() {
        for id in EVENTS_FROM_ZERO {
            assert_eq!(
                id.severity(),
                crate::events::Severity::Error,
                "{}",
                id.number()
            );
        }
    }

    #[test]
    fn ops_index_their_histograms() {
        for (i, op) in Op::ALL.iter().enumerate() {
            assert_eq!(*op as usize, i, "{}", op.name());
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let mut e = Exposition::default();
        e.sample("x", &[("a", "q\"b\\s\nn")], 1);
        assert_eq!(e.text, "x{a=\"q\\\"b\\\\s\\nn\"} 1\n");
    }

    fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_get_metrics_only() {
        let render: Render = Arc::new(|| "reseedfs_up 1\n".to_owned());
        let addr = serve("127.0.0.1:0".parse().unwrap(), render).unwrap();
        let ok = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("Content-Type: text/plain; version=0.0.4"),
            "{ok}"
        );
        assert!(ok.ends_with("\r\n\r\nreseedfs_up 1\n"), "{ok}");
        let q = get(addr, "GET /metrics?x=1 HTTP/1.0\r\n\r\n");
        assert!(q.starts_with("HTTP/1.1 200 OK\r\n"), "{q}");
        let missing = get(addr, "GET / HTTP/1.1\r\n\r\n");
        assert!(
            missing.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{missing}"
        );
        let post = get(addr, "POST /metrics HTTP/1.1\r\n\r\n");
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        let head = get(addr, "HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(
            head.ends_with("\r\n\r\n") && head.contains("Content-Length: 14"),
            "{head}"
        );
        let taken = serve(addr, Arc::new(String::new)).unwrap_err();
        assert!(taken.to_string().contains(&addr.to_string()), "{taken}");
    }

    /// Issue 14, finding 6: a client sending a byte every second holds neither the endpoint
    /// (another scrape is answered at once) nor its own connection past the deadline.
    #[test]
    fn r14_a_slow_client_holds_neither_the_endpoint_nor_its_connection() {
        let render: Render = Arc::new(|| "reseedfs_up 1\n".to_owned());
        let addr = serve("127.0.0.1:0".parse().unwrap(), render).unwrap();
        let started = Instant::now();
        let slow = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            // Never ends its head: one header byte a second, as a slowloris does.
            for _ in 0..30 {
                if s.write_all(b"X").is_err() {
                    break;
                }
                let mut b = [0u8; 1];
                s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                match s.read(&mut b) {
                    Ok(0) => break,                                           // closed by the server
                    Err(e) if e.kind() != io::ErrorKind::WouldBlock => break, // reset
                    _ => {}
                }
            }
            started.elapsed()
        });
        std::thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        let ok = get(addr, "GET /metrics HTTP/1.1\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "a scrape waited {:?} behind a slow client",
            t.elapsed()
        );
        let held = slow.join().unwrap();
        assert!(
            held < REQUEST_DEADLINE + Duration::from_secs(3),
            "the slow client was served for {held:?}, past the {REQUEST_DEADLINE:?} deadline"
        );
        // More connections than the limit: those past it are closed, the endpoint answers
        // again once they go.
        let idle: Vec<TcpStream> = (0..MAX_CONNECTIONS + 4)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let mut last = TcpStream::connect(addr).unwrap();
        last.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = last.write_all(b"GET /metrics HTTP/1.1\r\n\r\n");
        let mut out = String::new();
        match last.read_to_string(&mut out) {
            Ok(_) => assert!(
                out.is_empty(),
                "a connection past the limit was served: {out}"
            ),
            Err(e) => assert!(
                !matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ),
                "a connection past the limit was left waiting instead of closed"
            ),
        }
        drop(idle);
        std::thread::sleep(Duration::from_secs(1));
        let ok = get(addr, "GET /metrics HTTP/1.1\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
    }
}
