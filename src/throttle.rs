//! The rebuild throttle: one scheduler per host for the bandwidth of every reseed, resync
//! and verify, so that rebuilding copies never starves the databases they protect.
//!
//! - **A shared budget** (`[throttle] max_bytes_per_s`, none by default), changeable while
//!   the mount runs (`reseedfs throttle 200MiB/s`, `reseedfs throttle --unlimited`): a
//!   token bucket with a 50 ms burst. A rebuild takes tokens for every chunk before it
//!   moves it ([`Stream::take`]), and waits when there are none.
//! - **Fair shares with priority**: the streams waiting for tokens are served in weighted
//!   fair order (virtual finish times), so each stream gets its weight's share of the
//!   budget and a stream that cannot use its share leaves it to the others. A database
//!   running on a single copy weighs [`SINGLE_COPY_WEIGHT`], the others [`WEIGHT`]: it is
//!   rebuilt first.
//! - **Latency-aware**: every [`ADJUST_EVERY`], the throttle compares the mean latency of
//!   the database's own requests on each volume a stream reads or writes
//!   ([`Volume::observe`], measured on the request path) with a target: `[throttle]
//!   latency_target`, else twice the latency the volume showed with no rebuild running
//!   (and at least [`MIN_LATENCY_TARGET`]). Above it, the effective budget shrinks by
//!   [`DECREASE`]; below it, it grows back by [`INCREASE`] of the budget per step. It
//!   never goes below `floor_bytes_per_s` (so a rebuild always progresses), unless the
//!   operator's budget itself is lower. With no budget set, backing off starts from the
//!   throughput measured at that moment, and ends when the limit is back above it.
//!
//! The scheduling itself (`Sched`) is pure: it takes the time as an argument, so its
//! tests drive a virtual clock. [`Throttle`] wraps it with a monotonic clock (a wall
//! clock stepping back would stall rebuilds) and a condition variable.
//!
//! When a stream of at least [`MIN_MEASURED`] bytes ends, its throughput is recorded
//! (`<state_dir>/throughput.json`): `reseedfs explain` predicts durations from it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};

use crate::copyset::CopyState;
use crate::copyset::Database;
use crate::names::DbName;
use crate::volume::{RebuildMark, Volume};

/// Weight of a stream rebuilding a database that runs on a single copy.
pub const SINGLE_COPY_WEIGHT: u32 = 4;
/// Weight of any other stream.
pub const WEIGHT: u32 = 1;
/// How often the effective budget is adjusted to the latency measured.
pub const ADJUST_EVERY: Duration = Duration::from_millis(250);
/// Factor applied to the effective budget at each step where the latency is too high.
pub const DECREASE: f64 = 0.7;
/// Fraction of the budget given back at each step where the latency is fine.
pub const INCREASE: f64 = 0.05;
/// The smallest latency target derived from a baseline: below it, the database is not
/// suffering from a rebuild.
pub const MIN_LATENCY_TARGET: Duration = Duration::from_millis(1);
/// Tokens the bucket holds at most, in time at the effective rate.
const BURST: Duration = Duration::from_millis(50);
/// The smallest burst: one engine chunk.
const MIN_BURST_BYTES: f64 = (1u64 << 20) as f64;
/// Longest a waiter sleeps before it looks again.
const MAX_WAIT: Duration = Duration::from_millis(50);
/// How long a seeder's window lasts at most at the effective budget ([`Pacer::window`]).
pub const WINDOW_TIME: Duration = Duration::from_millis(250);
/// Streams that moved fewer bytes are not recorded as a measured throughput.
pub const MIN_MEASURED: u64 = 64 << 20;

const MIB: f64 = (1u64 << 20) as f64;

/// The `[throttle]` section of the config. Rates accept `"200MiB/s"`, `"1.5GiB/s"`,
/// `"500MB/s"` or a number of bytes per second.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleConfig {
    /// The budget shared by every reseed, resync and verify. Default: none (unlimited).
    #[serde(with = "rate_opt", skip_serializing_if = "Option::is_none")]
    pub max_bytes_per_s: Option<u64>,
    /// Latency backoff never takes the budget below this. Default 16 MiB/s.
    #[serde(with = "rate")]
    pub floor_bytes_per_s: u64,
    /// The database request latency above which rebuilds back off. Default: twice the
    /// latency measured with no rebuild running, at least 1 ms.
    #[serde(
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub latency_target: Option<Duration>,
    /// Throughput `reseedfs explain` assumes until a reseed was measured. Default 100 MiB/s.
    #[serde(with = "rate")]
    pub estimate_bytes_per_s: u64,
}

impl Default for ThrottleConfig {
    fn default() -> ThrottleConfig {
        ThrottleConfig {
            max_bytes_per_s: None,
            floor_bytes_per_s: 16 << 20,
            latency_target: None,
            estimate_bytes_per_s: 100 << 20,
        }
    }
}

/// Parses a rate: `"200MiB/s"`, `"1.5GiB/s"`, `"500MB/s"`, `"1048576"` (bytes per second;
/// the `/s` is optional). The one parser of rates: the config, `reseedfs throttle` and
/// `reseedfs verify --max-rate` use it.
///
/// Zero is refused everywhere: a rate of 0 would stop the work it limits, and "no limit"
/// is spelled `unlimited` on the command line ([`parse_budget`]) and by leaving the key
/// out in the config.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let number = t
        .strip_suffix("/s")
        .or_else(|| t.strip_suffix("/S"))
        .unwrap_or(t)
        .trim();
    let bytes = number
        .parse::<bytesize::ByteSize>()
        .map_err(|e| format!("{text:?} is not a rate like 200MiB/s, 1.5GiB/s or 500MB/s ({e})"))?
        .as_u64();
    if bytes == 0 {
        return Err(format!(
            "{text:?}: a rate of 0 would stop every rebuild; give a positive rate, or `unlimited` for no limit"
        ));
    }
    Ok(bytes)
}

/// A budget on the command line: a rate ([`parse_rate`]) or `unlimited`.
pub fn parse_budget(text: &str) -> Result<Option<u64>, String> {
    if text.trim().eq_ignore_ascii_case("unlimited") {
        return Ok(None);
    }
    parse_rate(text).map(Some)
}

/// A rate for people: `200.0 MiB/s`, `1.50 GiB/s`, `unlimited`.
pub fn fmt_rate(rate: Option<u64>) -> String {
    match rate {
        None => "unlimited".into(),
        Some(b) if b >= 1 << 30 => format!("{:.2} GiB/s", b as f64 / (MIB * 1024.0)),
        Some(b) => format!("{:.1} MiB/s", b as f64 / MIB),
    }
}

/// A rate as the config spells it: `16MiB/s` for whole MiB, else bytes per second.
fn rate_text(bytes: u64) -> String {
    if bytes % (1 << 20) == 0 {
        format!("{}MiB/s", bytes >> 20)
    } else {
        bytes.to_string()
    }
}

/// A rate in the config: a number of bytes per second, or a string for [`parse_rate`].
#[derive(Deserialize)]
#[serde(untagged)]
enum RateValue {
    Bytes(u64),
    Text(String),
}

impl RateValue {
    fn bytes<E: serde::de::Error>(self) -> Result<u64, E> {
        match self {
            RateValue::Bytes(0) => Err(E::custom("a rate of 0 would stop every rebuild")),
            RateValue::Bytes(b) => Ok(b),
            RateValue::Text(t) => parse_rate(&t).map_err(E::custom),
        }
    }
}

/// Serde for a rate ([`parse_rate`]).
mod rate {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::rate_text(*v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        super::RateValue::deserialize(d)?.bytes()
    }
}

/// Serde for an optional rate.
mod rate_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => super::rate::serialize(v, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        super::RateValue::deserialize(d)?.bytes().map(Some)
    }
}

/// What a stream does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum StreamKind {
    /// The copy phase of a reseed.
    Reseed,
    /// An incremental resync.
    Resync,
    /// A verification (a reseed's, or on demand).
    Verify,
}

impl StreamKind {
    /// `Reseed`, `Resync`, `Verify`.
    pub fn name(self) -> &'static str {
        match self {
            StreamKind::Reseed => "Reseed",
            StreamKind::Resync => "Resync",
            StreamKind::Verify => "Verify",
        }
    }
}

/// One stream in `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamStatus {
    /// The database rebuilt.
    pub db: DbName,
    /// What the stream does.
    pub kind: StreamKind,
    /// The database runs on a single copy: the stream has priority.
    pub single_copy: bool,
    /// Its weight in the fair share ([`SINGLE_COPY_WEIGHT`] or [`WEIGHT`]).
    pub weight: u32,
    /// Its share of the effective budget (none while unlimited).
    pub share_bytes_per_s: Option<u64>,
    /// What it moves now (bytes per second, smoothed over a second or so).
    pub bytes_per_s: u64,
    /// Bytes it moved so far.
    pub bytes: u64,
    /// The volumes it reads and writes, whose latency it watches.
    pub volumes: Vec<String>,
}

/// The throttle in `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThrottleStatus {
    /// The budget set (config or `reseedfs throttle`); none: unlimited.
    pub max_bytes_per_s: Option<u64>,
    /// The budget after latency backoff; none: unlimited.
    pub effective_bytes_per_s: Option<u64>,
    /// The floor of the latency backoff.
    pub floor_bytes_per_s: u64,
    /// Why the throttle backs off now (the volume, its latency and the target).
    pub backoff: Option<String>,
    /// Every stream registered.
    pub streams: Vec<StreamStatus>,
}

/// A stream's throughput, recorded when it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// The database.
    pub db: DbName,
    /// Bytes moved.
    pub bytes: u64,
    /// From the stream's start to its end.
    pub seconds: f64,
    /// `bytes / seconds`.
    pub bytes_per_s: f64,
    /// When it ended.
    #[serde(with = "humantime_serde")]
    pub at: SystemTime,
    /// The budget in force when it ended.
    pub budget_bytes_per_s: Option<u64>,
}

/// The last throughput measured of each kind of stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    /// The copy phase of the last reseed.
    #[serde(default)]
    pub copy: Option<Measurement>,
    /// The last verification.
    #[serde(default)]
    pub verify: Option<Measurement>,
    /// The last resync.
    #[serde(default)]
    pub resync: Option<Measurement>,
}

/// One registered stream, in the scheduler.
#[derive(Debug)]
struct StreamState {
    db: DbName,
    kind: StreamKind,
    single_copy: bool,
    /// Virtual finish time of its last request.
    finish: f64,
    bytes: u64,
    /// Smoothed bytes per second.
    rate: f64,
    bytes_at_adjust: u64,
    /// The volumes it touches (their latency baselines are frozen meanwhile).
    marks: Vec<RebuildMark>,
    started: Duration,
}

impl StreamState {
    fn weight(&self) -> u32 {
        if self.single_copy {
            SINGLE_COPY_WEIGHT
        } else {
            WEIGHT
        }
    }
}

/// A request waiting for tokens.
#[derive(Debug, Clone, Copy)]
struct Waiter {
    ticket: u64,
    stream: u64,
    bytes: u64,
    /// Virtual finish time: the order of service.
    tag: f64,
}

/// The latency totals of a volume at the last adjustment.
#[derive(Debug, Clone, Copy)]
struct Sample {
    count: u64,
    sum_ns: u64,
}

/// The pure scheduler: token bucket, weighted fair queue, latency backoff. Time is an
/// argument (since an arbitrary origin).
#[derive(Debug)]
pub(crate) struct Sched {
    /// The budget set, bytes per second.
    cap: Option<f64>,
    floor: f64,
    latency_target: Option<Duration>,
    /// The latency backoff's limit; `None`: not backing off.
    limit: Option<f64>,
    /// With no budget, the throughput when backing off began: the limit to grow back to.
    peak: f64,
    tokens: f64,
    refilled_at: Duration,
    /// System virtual time: the start tag of the last request served.
    vtime: f64,
    next_ticket: u64,
    next_stream: u64,
    streams: BTreeMap<u64, StreamState>,
    queue: Vec<Waiter>,
    adjusted_at: Duration,
    samples: BTreeMap<String, Sample>,
    backoff: Option<String>,
}

impl Sched {
    pub(crate) fn new(config: &ThrottleConfig, now: Duration) -> Sched {
        Sched {
            cap: config.max_bytes_per_s.map(|b| b as f64),
            floor: config.floor_bytes_per_s as f64,
            latency_target: config.latency_target,
            limit: None,
            peak: 0.0,
            tokens: 0.0,
            refilled_at: now,
            vtime: 0.0,
            next_ticket: 0,
            next_stream: 0,
            streams: BTreeMap::new(),
            queue: Vec::new(),
            adjusted_at: now,
            samples: BTreeMap::new(),
            backoff: None,
        }
    }

    /// The rate tokens come at now; `None`: unlimited.
    pub(crate) fn effective(&self) -> Option<f64> {
        match (self.cap, self.limit) {
            (None, None) => None,
            (Some(cap), None) => Some(cap),
            (cap, Some(limit)) => {
                let limit = limit.max(self.floor);
                Some(cap.map_or(limit, |cap| cap.min(limit)))
            }
        }
    }

    fn set_cap(&mut self, cap: Option<u64>, now: Duration) {
        self.refill(now);
        let old = self.cap;
        self.cap = cap.map(|b| b as f64);
        match (self.cap, self.limit) {
            (Some(cap), Some(limit)) if limit >= cap => self.limit = None,
            // Backing off with no budget any more: grow back to the old budget.
            (None, Some(_)) => self.peak = self.peak.max(old.unwrap_or(0.0)),
            _ => {}
        }
        // A new budget applies at once: no debt or credit carried over from the old one.
        self.tokens = self.tokens.clamp(0.0, self.burst());
    }

    pub(crate) fn register(
        &mut self,
        db: &DbName,
        kind: StreamKind,
        single_copy: bool,
        now: Duration,
    ) -> u64 {
        let id = self.next_stream;
        self.next_stream += 1;
        self.streams.insert(
            id,
            StreamState {
                db: db.to_owned(),
                kind,
                single_copy,
                finish: self.vtime,
                bytes: 0,
                rate: 0.0,
                bytes_at_adjust: 0,
                marks: Vec::new(),
                started: now,
            },
        );
        id
    }

    fn unregister(&mut self, id: u64) -> Option<StreamState> {
        self.queue.retain(|w| w.stream != id);
        self.streams.remove(&id)
    }

    fn burst(&self) -> f64 {
        self.effective()
            .map_or(0.0, |r| (r * BURST.as_secs_f64()).max(MIN_BURST_BYTES))
    }

    fn refill(&mut self, now: Duration) {
        let dt = now.saturating_sub(self.refilled_at).as_secs_f64();
        self.refilled_at = self.refilled_at.max(now);
        match self.effective() {
            Some(rate) => self.tokens = (self.tokens + rate * dt).min(self.burst()),
            None => self.tokens = 0.0,
        }
    }

    /// Queues a request of `bytes` for stream `id`; returns its ticket.
    pub(crate) fn request(&mut self, id: u64, bytes: u64) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let Some(s) = self.streams.get_mut(&id) else {
            return ticket;
        };
        let tag = self.vtime.max(s.finish) + bytes as f64 / f64::from(s.weight());
        s.finish = tag;
        self.queue.push(Waiter {
            ticket,
            stream: id,
            bytes,
            tag,
        });
        ticket
    }

    /// Serves `ticket` if its turn has come and tokens allow: `Ok`. Else how long to wait
    /// before asking again (`None`: until another request is served).
    pub(crate) fn poll(&mut self, ticket: u64, now: Duration) -> Result<(), Option<Duration>> {
        self.refill(now);
        self.adjust(now);
        let Some(pos) = self.queue.iter().position(|w| w.ticket == ticket) else {
            return Ok(()); // its stream is gone
        };
        let rate = self.effective();
        if rate.is_some() {
            let head = self
                .queue
                .iter()
                .min_by(|a, b| a.tag.total_cmp(&b.tag).then(a.ticket.cmp(&b.ticket)))
                .map(|w| w.ticket);
            if head != Some(ticket) {
                return Err(None);
            }
        }
        if let Some(rate) = rate {
            if self.tokens < 0.0 {
                return Err(Some(Duration::from_secs_f64(-self.tokens / rate)));
            }
        }
        let w = self.queue.swap_remove(pos);
        if rate.is_some() {
            self.tokens -= w.bytes as f64;
        }
        if let Some(s) = self.streams.get_mut(&w.stream) {
            s.bytes += w.bytes;
            let start = w.tag - w.bytes as f64 / f64::from(s.weight());
            self.vtime = self.vtime.max(start);
        }
        Ok(())
    }

    /// Serves `bytes` for stream `id` at once if no other request is ahead and tokens
    /// allow; else changes nothing and returns false.
    pub(crate) fn try_grant(&mut self, id: u64, bytes: u64, now: Duration) -> bool {
        self.refill(now);
        self.adjust(now);
        let rate = self.effective();
        let vtime = self.vtime;
        let Some(s) = self.streams.get_mut(&id) else {
            return true;
        };
        let start = vtime.max(s.finish);
        let tag = start + bytes as f64 / f64::from(s.weight());
        if rate.is_some() {
            let ahead = self.queue.iter().any(|w| w.tag <= tag);
            if ahead || self.tokens < 0.0 {
                return false;
            }
            self.tokens -= bytes as f64;
        }
        s.finish = tag;
        s.bytes += bytes;
        self.vtime = start;
        true
    }

    /// Every [`ADJUST_EVERY`]: the streams' rates, and the latency backoff.
    pub(crate) fn adjust(&mut self, now: Duration) {
        let dt = now.saturating_sub(self.adjusted_at);
        if dt < ADJUST_EVERY {
            return;
        }
        self.adjusted_at = now;
        let secs = dt.as_secs_f64();
        let mut measured = 0.0;
        for s in self.streams.values_mut() {
            let r = (s.bytes - s.bytes_at_adjust) as f64 / secs;
            s.bytes_at_adjust = s.bytes;
            // A little smoothing: status shows a steady figure.
            s.rate = if s.rate == 0.0 {
                r
            } else {
                0.5 * s.rate + 0.5 * r
            };
            measured += s.rate;
        }
        let pressure = self.latency_pressure();
        match (&pressure, self.limit) {
            (Some(_), limit) => {
                let base = match (limit, self.effective()) {
                    (Some(l), _) => l,
                    (None, Some(e)) => e,
                    (None, None) => {
                        self.peak = measured.max(self.floor);
                        self.peak
                    }
                };
                self.limit = Some((base * DECREASE).max(self.floor));
            }
            (None, Some(limit)) => {
                let ceiling = self.cap.unwrap_or(self.peak);
                let grown = limit + (ceiling * INCREASE).max(MIN_BURST_BYTES);
                self.limit = (grown < ceiling).then_some(grown);
            }
            (None, None) => {}
        }
        if pressure != self.backoff {
            match &pressure {
                Some(why) => tracing::info!("rebuild throttle backs off: {why}"),
                None => tracing::info!("rebuild throttle: database latency is back to normal"),
            }
        }
        self.backoff = pressure;
    }

    /// The first watched volume whose requests took longer than its target since the last
    /// adjustment, as a sentence.
    fn latency_pressure(&mut self) -> Option<String> {
        let mut volumes: BTreeMap<String, Arc<Volume>> = BTreeMap::new();
        for s in self.streams.values() {
            for m in &s.marks {
                volumes.insert(m.volume().name().to_string(), m.volume().clone());
            }
        }
        self.samples.retain(|name, _| volumes.contains_key(name));
        let mut pressure = None;
        for (name, v) in volumes {
            let (count, sum_ns) = v.latency_totals();
            let before = self.samples.insert(name.clone(), Sample { count, sum_ns });
            let Some(before) = before.filter(|b| count > b.count) else {
                continue; // no request since: nothing to protect
            };
            let mean =
                Duration::from_nanos((sum_ns - before.sum_ns) / (count - before.count).max(1));
            let target = self.latency_target.or_else(|| {
                v.baseline_latency()
                    .map(|b| (b * 2).max(MIN_LATENCY_TARGET))
            });
            if let Some(target) = target.filter(|t| mean > *t) {
                pressure.get_or_insert(format!(
                    "database requests on {name} take {:.2} ms on average, above the target of {:.2} ms",
                    mean.as_secs_f64() * 1e3,
                    target.as_secs_f64() * 1e3
                ));
            }
        }
        pressure
    }

    fn status(&self) -> ThrottleStatus {
        let effective = self.effective();
        let weights: u32 = self.streams.values().map(StreamState::weight).sum();
        let streams = self
            .streams
            .values()
            .map(|s| StreamStatus {
                db: s.db.clone(),
                kind: s.kind,
                single_copy: s.single_copy,
                weight: s.weight(),
                share_bytes_per_s: effective
                    .map(|e| (e * f64::from(s.weight()) / f64::from(weights.max(1))) as u64),
                bytes_per_s: s.rate as u64,
                bytes: s.bytes,
                volumes: s
                    .marks
                    .iter()
                    .map(|m| m.volume().name().to_string())
                    .collect(),
            })
            .collect();
        ThrottleStatus {
            max_bytes_per_s: self.cap.map(|c| c as u64),
            effective_bytes_per_s: effective.map(|e| e as u64),
            floor_bytes_per_s: self.floor as u64,
            backoff: self.backoff.clone(),
            streams,
        }
    }
}

/// The host's rebuild scheduler (one per daemon). See the module documentation.
#[derive(Debug)]
pub struct Throttle {
    sched: Mutex<Sched>,
    served: Condvar,
    origin: Instant,
    /// Where measured throughputs are kept (`<state_dir>/throughput.json`), if anywhere.
    record: Option<PathBuf>,
    measured: Mutex<Measured>,
}

impl Throttle {
    /// A throttle with `config`'s budget; measured throughputs are read from and written
    /// to `record` when given.
    pub fn new(config: &ThrottleConfig, record: Option<PathBuf>) -> Arc<Throttle> {
        let measured = record
            .as_deref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Arc::new(Throttle {
            sched: Mutex::new(Sched::new(config, Duration::ZERO)),
            served: Condvar::new(),
            origin: Instant::now(),
            record,
            measured: Mutex::new(measured),
        })
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Registers a stream for `db`: every byte it moves goes through [`Stream::take`].
    /// `single_copy`: the database runs on a single copy (the stream has priority).
    pub fn stream(self: &Arc<Self>, db: &DbName, kind: StreamKind, single_copy: bool) -> Stream {
        let now = self.now();
        let id = self.sched.lock().register(db, kind, single_copy, now);
        Stream {
            throttle: self.clone(),
            id,
        }
    }

    /// Sets the budget (`None`: unlimited); returns the old one. Applies at once to every
    /// stream.
    pub fn set_budget(&self, max_bytes_per_s: Option<u64>) -> Option<u64> {
        let now = self.now();
        let mut s = self.sched.lock();
        let old = s.cap.map(|c| c as u64);
        s.set_cap(max_bytes_per_s, now);
        drop(s);
        self.served.notify_all();
        old
    }

    /// The budget set; `None`: unlimited.
    pub fn budget(&self) -> Option<u64> {
        self.sched.lock().cap.map(|c| c as u64)
    }

    /// The budget, the effective budget, and every stream's share.
    pub fn status(&self) -> ThrottleStatus {
        let now = self.now();
        let mut s = self.sched.lock();
        s.adjust(now);
        s.status()
    }

    /// The last throughputs measured (kept across restarts when a record file is set).
    pub fn measured(&self) -> Measured {
        self.measured.lock().clone()
    }

    fn record(&self, state: &StreamState, seconds: f64, budget: Option<u64>) {
        if state.bytes < MIN_MEASURED || seconds <= 0.0 {
            return;
        }
        let m = Measurement {
            db: state.db.clone(),
            bytes: state.bytes,
            seconds,
            bytes_per_s: state.bytes as f64 / seconds,
            at: SystemTime::now(),
            budget_bytes_per_s: budget,
        };
        let mut measured = self.measured.lock();
        match state.kind {
            StreamKind::Reseed => measured.copy = Some(m),
            StreamKind::Verify => measured.verify = Some(m),
            StreamKind::Resync => measured.resync = Some(m),
        }
        if let Some(path) = &self.record {
            if let Err(e) = write_atomic(path, &measured) {
                tracing::warn!(
                    "cannot record the measured throughput in {}: {e}",
                    path.display()
                );
            }
        }
    }
}

/// Replaces the record: mode 0600, through a temporary file created `O_EXCL |
/// O_NOFOLLOW` in the state directory, which must be private to root.
fn write_atomic(path: &Path, value: &Measured) -> std::io::Result<()> {
    crate::private::write_file(path, &serde_json::to_vec_pretty(value)?)
}

/// One reseed's, resync's or verify's share of the throttle; unregistered when dropped.
#[derive(Debug)]
pub struct Stream {
    throttle: Arc<Throttle>,
    id: u64,
}

impl Stream {
    /// Blocks until the throttle lets this stream move `bytes` more (at once when
    /// unlimited). Call it before moving each chunk.
    pub fn take(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let t = &self.throttle;
        let mut s = t.sched.lock();
        let ticket = s.request(self.id, bytes);
        loop {
            match s.poll(ticket, t.now()) {
                Ok(()) => {
                    drop(s);
                    t.served.notify_all();
                    return;
                }
                Err(wait) => {
                    let wait = wait.map_or(MAX_WAIT, |w| w.min(MAX_WAIT));
                    t.served.wait_for(&mut s, wait);
                }
            }
        }
    }

    /// Like [`Stream::take`] without waiting: true when the bytes were granted, false
    /// (and nothing taken) when the stream would have to wait.
    pub fn try_take(&self, bytes: u64) -> bool {
        let t = &self.throttle;
        let now = t.now();
        let granted = t.sched.lock().try_grant(self.id, bytes, now);
        if granted {
            t.served.notify_all();
        }
        granted
    }

    /// Watches the database's request latency on `volumes` (the stream's source and
    /// target): the throttle backs off when it rises. Replaces what was watched.
    pub fn watch(&self, volumes: &[&Arc<Volume>]) {
        let marks: Vec<RebuildMark> = volumes.iter().map(|v| v.mark_rebuild()).collect();
        if let Some(s) = self.throttle.sched.lock().streams.get_mut(&self.id) {
            s.marks = marks;
        }
    }

    /// The database now runs on a single copy (or no longer does).
    pub fn set_single_copy(&self, single_copy: bool) {
        if let Some(s) = self.throttle.sched.lock().streams.get_mut(&self.id) {
            s.single_copy = single_copy;
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let t = &self.throttle;
        let now = t.now();
        let (state, budget) = {
            let mut s = t.sched.lock();
            (s.unregister(self.id), s.cap.map(|c| c as u64))
        };
        t.served.notify_all();
        if let Some(state) = state {
            let seconds = now.saturating_sub(state.started).as_secs_f64();
            t.record(&state, seconds, budget);
        }
    }
}

/// Credit a [`RateLimit`] lets build up while its user is busy elsewhere.
const LIMIT_BURST: Duration = Duration::from_millis(250);

/// A job's own rate limit (`reseedfs verify --max-rate`), on top of the host's budget:
/// `take` sleeps until the bytes taken so far fit the rate.
#[derive(Debug)]
pub struct RateLimit {
    bytes_per_s: u64,
    next: Mutex<Instant>,
}

impl RateLimit {
    /// At most `bytes_per_s` (at least 1) on average.
    pub fn new(bytes_per_s: u64) -> RateLimit {
        RateLimit {
            bytes_per_s: bytes_per_s.max(1),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Accounts for `bytes` and waits as long as the rate requires.
    pub fn take(&self, bytes: u64) {
        let wait = {
            let mut next = self.next.lock();
            let now = Instant::now();
            // The time spent working counts, but no more credit than a short burst builds
            // up while the user is busy elsewhere.
            let floor = now.checked_sub(LIMIT_BURST).unwrap_or(now);
            *next = (*next).max(floor)
                + Duration::from_secs_f64(bytes as f64 / self.bytes_per_s as f64);
            next.saturating_duration_since(now)
        };
        std::thread::sleep(wait);
    }
}

/// How a job (a reseed, a resync, a verification) is paced: its own [`RateLimit`], if it
/// has one, and the host's throttle, set by whoever starts the job (the AutoReseed runner,
/// the verifier), one stream per phase. With neither, every call is a no-op.
#[derive(Debug, Default)]
pub struct Pacer {
    throttle: Mutex<Option<Arc<Throttle>>>,
    stream: Mutex<Option<Arc<Stream>>>,
    limit: Mutex<Option<Arc<RateLimit>>>,
}

impl Pacer {
    /// Limits the job to `bytes_per_s` (`None`: no limit of its own), whatever the
    /// host's budget allows.
    pub fn set_limit(&self, bytes_per_s: Option<u64>) {
        *self.limit.lock() = bytes_per_s.map(|r| Arc::new(RateLimit::new(r)));
    }

    /// Paces through `throttle` from the next [`Pacer::begin`] on.
    pub fn set_throttle(&self, throttle: Arc<Throttle>) {
        *self.throttle.lock() = Some(throttle);
    }

    /// Starts a `kind` stream (ending the previous one) for copy `slot` of `db`, or for
    /// the whole database (`None`: a verification), watching `volumes`; returns it, for a
    /// copy engine. `None` when no throttle is set. The stream weighs more when the
    /// database has a single copy in sync besides `slot`.
    pub fn begin(
        &self,
        kind: StreamKind,
        db: &Database,
        slot: Option<usize>,
        volumes: &[&Arc<Volume>],
    ) -> Option<Arc<Stream>> {
        self.end();
        let throttle = self.throttle.lock().clone()?;
        let in_sync = db
            .copies()
            .iter()
            .enumerate()
            .filter(|(i, c)| Some(*i) != slot && c.state() == CopyState::InSync)
            .count();
        let stream = Arc::new(throttle.stream(&db.name, kind, in_sync <= 1));
        stream.watch(volumes);
        *self.stream.lock() = Some(stream.clone());
        Some(stream)
    }

    /// Waits until `bytes` more may be moved: the job's own limit first, then the
    /// current stream of the host's throttle.
    pub fn take(&self, bytes: u64) {
        let limit = self.limit.lock().clone();
        if let Some(l) = limit {
            l.take(bytes);
        }
        let stream = self.stream.lock().clone();
        if let Some(s) = stream {
            s.take(bytes);
        }
    }

    /// The seeder's window (bytes copied under one hold of a file's resize lock): `max`,
    /// or what the effective budget moves in [`WINDOW_TIME`] when that is less (at least
    /// 1 MiB), so that a truncate never waits long behind a throttled window.
    pub fn window(&self, max: u64) -> u64 {
        let stream = self.stream.lock().clone();
        let Some(rate) = stream.and_then(|s| s.throttle.sched.lock().effective()) else {
            return max;
        };
        let bytes = (rate * WINDOW_TIME.as_secs_f64()) as u64 / (1 << 20) * (1 << 20);
        bytes.clamp((1 << 20).min(max), max)
    }

    /// Ends the current stream (it is unregistered once every holder dropped it).
    pub fn end(&self) {
        self.stream.lock().take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    fn config(max_mib: Option<u64>) -> ThrottleConfig {
        ThrottleConfig {
            max_bytes_per_s: max_mib.map(|m| m * MB),
            ..ThrottleConfig::default()
        }
    }

    /// Drives `streams` (each always wanting one more 1 MiB chunk) through `sched` on a
    /// virtual clock for `seconds`; returns the bytes each got. `each_step` runs after
    /// every grant or wait, with the time.
    fn drive(
        sched: &mut Sched,
        streams: &[u64],
        from: Duration,
        seconds: f64,
        mut each_step: impl FnMut(&mut Sched, Duration),
    ) -> (Vec<u64>, Duration) {
        let mut now = from;
        let end = from + Duration::from_secs_f64(seconds);
        let mut got = vec![0u64; streams.len()];
        let mut tickets: Vec<u64> = streams.iter().map(|&s| sched.request(s, MB)).collect();
        while now < end {
            let mut waits = Vec::new();
            let mut served = false;
            for (k, &s) in streams.iter().enumerate() {
                match sched.poll(tickets[k], now) {
                    Ok(()) => {
                        got[k] += MB;
                        tickets[k] = sched.request(s, MB);
                        served = true;
                    }
                    Err(Some(w)) => waits.push(w),
                    Err(None) => {}
                }
            }
            if !served {
                let step = waits
                    .into_iter()
                    .min()
                    .unwrap_or(Duration::from_millis(1))
                    .max(Duration::from_micros(1));
                now += step;
            }
            each_step(sched, now);
        }
        // The streams stop wanting: their last requests leave the queue.
        sched.queue.retain(|w| !tickets.contains(&w.ticket));
        (got, now)
    }

    #[test]
    fn rates_parse_as_operators_write_them() {
        assert_eq!(parse_rate("200MiB/s"), Ok(200 << 20));
        assert_eq!(parse_rate("1.5GiB/s"), Ok(3 << 29));
        assert_eq!(parse_rate("500MB/s"), Ok(500_000_000));
        assert_eq!(parse_rate(" 64 MiB "), Ok(64 << 20));
        assert_eq!(parse_rate("1048576"), Ok(1 << 20));
        assert!(parse_rate("0MiB/s").unwrap_err().contains("positive"));
        assert!(parse_rate("fast").unwrap_err().contains("200MiB/s"));
        assert_eq!(parse_budget("unlimited"), Ok(None));
        assert_eq!(fmt_rate(Some(200 << 20)), "200.0 MiB/s");
        assert_eq!(fmt_rate(None), "unlimited");
        // One meaning of 0 everywhere: refused, with the word for no limit.
        assert!(parse_budget("0").unwrap_err().contains("unlimited"));
        assert!(parse_budget("0MiB/s").is_err());
        assert_eq!(parse_budget("1 GiB/s"), Ok(Some(1 << 30)));
        assert_eq!(parse_budget("500MB"), Ok(Some(500_000_000)));
    }

    #[test]
    fn a_rate_limit_paces_its_job() {
        let pacer = Pacer::default();
        pacer.set_limit(Some(20 << 20));
        let t = Instant::now();
        for _ in 0..4 {
            pacer.take(1 << 20);
        }
        // 4 MiB at 20 MiB/s: 200 ms.
        let secs = t.elapsed().as_secs_f64();
        assert!((0.19..1.0).contains(&secs), "{secs} s");
        pacer.set_limit(None);
        let t = Instant::now();
        pacer.take(1 << 30);
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "no limit, no wait"
        );
    }

    #[test]
    fn config_section_parses_and_round_trips() {
        #[derive(Debug, Deserialize, Serialize, PartialEq)]
        struct Doc {
            throttle: ThrottleConfig,
        }
        let d: Doc = toml::from_str(
            "[throttle]\nmax_bytes_per_s = \"200MiB/s\"\nfloor_bytes_per_s = 8388608\nlatency_target = \"20ms\"\n",
        )
        .expect("parse");
        assert_eq!(d.throttle.max_bytes_per_s, Some(200 << 20));
        assert_eq!(d.throttle.floor_bytes_per_s, 8 << 20);
        assert_eq!(d.throttle.latency_target, Some(Duration::from_millis(20)));
        assert_eq!(d.throttle.estimate_bytes_per_s, 100 << 20);
        let text = toml::to_string(&d).expect("serialize");
        assert!(text.contains("\"200MiB/s\""), "{text}");
        assert_eq!(toml::from_str::<Doc>(&text).expect("again"), d);
        let bad = toml::from_str::<Doc>("[throttle]\nmax_bytes_per_s = \"fast\"\n");
        assert!(bad.unwrap_err().to_string().contains("max_bytes_per_s"));
    }

    #[test]
    fn token_bucket_holds_the_budget() {
        let mut s = Sched::new(&config(Some(100)), Duration::ZERO);
        let a = s.register(
            &crate::names::DbName::from_static("db001"),
            StreamKind::Reseed,
            false,
            Duration::ZERO,
        );
        let (got, end) = drive(&mut s, &[a], Duration::ZERO, 10.0, |_, _| {});
        let rate = got[0] as f64 / end.as_secs_f64() / MIB;
        assert!((rate - 100.0).abs() < 1.5, "{rate} MiB/s against 100");
    }

    #[test]
    fn single_copy_databases_get_four_fifths() {
        let mut s = Sched::new(&config(Some(100)), Duration::ZERO);
        let single = s.register(
            &crate::names::DbName::from_static("db001"),
            StreamKind::Reseed,
            true,
            Duration::ZERO,
        );
        let other = s.register(
            &crate::names::DbName::from_static("db002"),
            StreamKind::Reseed,
            false,
            Duration::ZERO,
        );
        let (got, end) = drive(&mut s, &[single, other], Duration::ZERO, 20.0, |_, _| {});
        let total = (got[0] + got[1]) as f64 / end.as_secs_f64() / MIB;
        assert!((total - 100.0).abs() < 1.5, "{total} MiB/s in all");
        let share = got[0] as f64 / (got[0] + got[1]) as f64;
        assert!((share - 0.8).abs() < 0.01, "single-copy share {share}");
        let st = s.status();
        assert_eq!(st.streams[0].share_bytes_per_s, Some(80 << 20));
        assert_eq!(st.streams[1].share_bytes_per_s, Some(20 << 20));
    }

    #[test]
    fn a_lone_stream_gets_the_whole_budget_and_unlimited_never_waits() {
        let mut s = Sched::new(&config(Some(50)), Duration::ZERO);
        let a = s.register(
            &crate::names::DbName::from_static("db002"),
            StreamKind::Verify,
            false,
            Duration::ZERO,
        );
        let (got, end) = drive(&mut s, &[a], Duration::ZERO, 4.0, |_, _| {});
        let rate = got[0] as f64 / end.as_secs_f64() / MIB;
        assert!((rate - 50.0).abs() < 1.5, "{rate}");
        s.set_cap(None, end);
        let t = s.request(a, 1 << 30);
        assert_eq!(s.poll(t, end), Ok(()), "unlimited: served at once");
        s.set_cap(Some(10 * MB), end);
        let (got, end2) = drive(&mut s, &[a], end, 5.0, |_, _| {});
        let rate = got[0] as f64 / (end2 - end).as_secs_f64() / MIB;
        assert!(
            (rate - 10.0).abs() < 0.5,
            "the new budget applies at once: {rate}"
        );
    }

    #[test]
    fn try_grant_respects_the_queue_and_the_tokens() {
        let mut s = Sched::new(&config(Some(10)), Duration::ZERO);
        let a = s.register(
            &crate::names::DbName::from_static("db001"),
            StreamKind::Reseed,
            false,
            Duration::ZERO,
        );
        let b = s.register(
            &crate::names::DbName::from_static("db002"),
            StreamKind::Reseed,
            false,
            Duration::ZERO,
        );
        let now = Duration::from_secs(1);
        assert!(
            s.try_grant(a, 2 * MB, now),
            "a full bucket (1 MiB) goes into debt"
        );
        assert!(!s.try_grant(a, MB, now), "in debt: no");
        let t = s.request(b, MB);
        let later = Duration::from_secs(2);
        assert!(!s.try_grant(a, MB, later), "b waits ahead of a");
        assert_eq!(s.poll(t, later), Ok(()));
        assert_eq!(s.streams[&a].bytes, 2 * MB);
    }

    fn temp_volume(tag: &str) -> (PathBuf, Arc<Volume>) {
        let d = std::env::temp_dir().join(format!(
            "reseedfs-throttle-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).expect("tempdir");
        let v = Arc::new(Volume::open("Volume2", &d).expect("open"));
        (d, v)
    }

    #[test]
    fn latency_above_twice_the_baseline_backs_off_to_the_floor_and_recovers() {
        let (dir, v) = temp_volume("backoff");
        for _ in 0..200 {
            v.observe(Duration::from_millis(2)); // the database alone: 2 ms
        }
        let mut s = Sched::new(&config(Some(200)), Duration::ZERO);
        let a = s.register(
            &crate::names::DbName::from_static("db001"),
            StreamKind::Reseed,
            true,
            Duration::ZERO,
        );
        s.streams.get_mut(&a).expect("stream").marks = vec![v.mark_rebuild()];
        // The rebuild makes the database's requests take 10 ms (target: 4 ms).
        let slow = |_: &mut Sched, _: Duration| v.observe(Duration::from_millis(10));
        // The first adjustment takes the volume's first reading; the second judges it.
        let (_, t1) = drive(&mut s, &[a], Duration::ZERO, 0.6, slow);
        let first = s.effective().expect("limited");
        assert!(first < 200.0 * MIB, "backed off: {}", first / MIB);
        assert!(s.status().backoff.expect("why").contains("Volume2"));
        let (got, t2) = drive(&mut s, &[a], t1, 5.0, slow);
        assert_eq!(
            s.effective(),
            Some(16.0 * MIB),
            "down to the floor, not below"
        );
        let (got2, t3) = drive(&mut s, &[a], t2, 5.0, slow);
        let at_floor = got2[0] as f64 / (t3 - t2).as_secs_f64() / MIB;
        assert!(
            (at_floor - 16.0).abs() < 1.0,
            "rebuilds still progress: {at_floor}"
        );
        assert!(got[0] > 0);
        // Back to 2 ms: the budget grows back step by step (additively), then whole.
        let fast = |_: &mut Sched, _: Duration| v.observe(Duration::from_millis(2));
        let (_, t4) = drive(&mut s, &[a], t3, 0.6, fast);
        let step1 = s.effective().expect("limited");
        assert!(
            step1 > 16.0 * MIB && step1 <= 36.0 * MIB + 1.0,
            "{}",
            step1 / MIB
        );
        let (_, _) = drive(&mut s, &[a], t4, 6.0, fast);
        assert_eq!(s.effective(), Some(200.0 * MIB), "recovered");
        assert_eq!(s.status().backoff, None);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn unlimited_backs_off_from_the_measured_rate_and_idle_volumes_do_not_count() {
        let (dir, v) = temp_volume("unlimited");
        let mut s = Sched::new(
            &ThrottleConfig {
                latency_target: Some(Duration::from_millis(5)),
                ..config(None)
            },
            Duration::ZERO,
        );
        let a = s.register(
            &crate::names::DbName::from_static("db001"),
            StreamKind::Resync,
            false,
            Duration::ZERO,
        );
        s.streams.get_mut(&a).expect("stream").marks = vec![v.mark_rebuild()];
        // No database request at all: nothing to protect, no backoff.
        let t = s.request(a, 300 * MB);
        assert_eq!(s.poll(t, Duration::from_secs(1)), Ok(()));
        s.adjust(Duration::from_secs(2));
        assert_eq!(s.effective(), None);
        // Requests at 20 ms against a 5 ms target: limited to 70% of what it moved (300
        // MiB/s, then nothing: 150 MiB/s smoothed).
        v.observe(Duration::from_millis(20));
        s.adjust(Duration::from_secs(3));
        let limit = s.effective().expect("backing off");
        assert!((limit / MIB - 105.0).abs() < 0.5, "{}", limit / MIB);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn blocking_take_paces_threads_in_real_time() {
        let t = Throttle::new(&config(Some(64)), None);
        let started = Instant::now();
        std::thread::scope(|scope| {
            for db in ["db001", "db002"] {
                let t = t.clone();
                scope.spawn(move || {
                    let s = t.stream(
                        &crate::names::DbName::from_static(db),
                        StreamKind::Reseed,
                        false,
                    );
                    for _ in 0..16 {
                        s.take(MB);
                    }
                });
            }
        });
        // 32 MiB at 64 MiB/s: half a second, less the first burst (1 MiB).
        let secs = started.elapsed().as_secs_f64();
        assert!(secs >= 0.45, "{secs} s");
        assert!(
            t.status().streams.is_empty(),
            "streams unregister when dropped"
        );
        assert_eq!(t.set_budget(None), Some(64 * MB));
        let s = t.stream(
            &crate::names::DbName::from_static("db001"),
            StreamKind::Reseed,
            false,
        );
        let started = Instant::now();
        s.take(1 << 40);
        assert!(started.elapsed() < Duration::from_secs(1), "unlimited");
    }

    #[test]
    fn a_finished_stream_records_its_throughput() {
        let (dir, _) = temp_volume("record");
        let path = dir.join("throughput.json");
        let t = Throttle::new(&config(None), Some(path.clone()));
        let s = t.stream(
            &crate::names::DbName::from_static("db001"),
            StreamKind::Reseed,
            false,
        );
        s.take(MIN_MEASURED);
        std::thread::sleep(Duration::from_millis(20));
        drop(s);
        let small = t.stream(
            &crate::names::DbName::from_static("db001"),
            StreamKind::Verify,
            false,
        );
        small.take(MB);
        drop(small);
        let m = t.measured();
        let copy = m.copy.expect("recorded");
        assert_eq!((copy.db.as_str(), copy.bytes), ("db001", MIN_MEASURED));
        assert!(copy.seconds >= 0.02 && copy.bytes_per_s > 0.0);
        assert_eq!(m.verify, None, "too small to count");
        let again = Throttle::new(&config(None), Some(path));
        assert_eq!(again.measured().copy.map(|c| c.bytes), Some(MIN_MEASURED));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
