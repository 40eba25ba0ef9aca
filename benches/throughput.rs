//! `cargo bench --bench throughput`: throughput of reseedfs against the same ext4 volume
//! directly, in one run, side by side.
//!
//! Needs root (loop devices, mounts, FUSE). Without it, it says so and exits 0; under
//! `CI=true` it exits 1 instead.
//!
//! # What it builds
//!
//! Two ext4 volumes on loop devices attached with `--direct-io=on`, both backed by image
//! files on the same host disk. On Volume1 it makes four folders, one per target, so every
//! target works on the same filesystem and the same device:
//!
//! | target | file |
//! |---|---|
//! | `direct` | `Volume1/direct/bench.dat` |
//! | `fuse_floor` | the thinnest FUSE filesystem on reseedfs's stack (`floor/mod.rs`: the same fuser session, threads, INIT reply and readahead; each open one backing file; `O_DIRECT` honoured as reseedfs does: small aligned reads and aligned writes `O_DIRECT`, writes through a bounce buffer) over `Volume1/floor` |
//! | `fuse_floor_cached` | the same floor writing an `O_DIRECT` caller's data through the backing page cache, as reseedfs did before (only when `--targets` names it: what that cache costs and holds) |
//! | `fuse_floor_uring` | the same floor as `fuse_floor`, served over FUSE's io_uring transport instead of `/dev/fuse` (`floor/ring.rs`, `reseedfs::sys::fuse_uring`: as many ring entries as request threads on each of the kernel's per-CPU queues, one thread each; lever 5(b) of issue 18; only when `--targets` names it; the bench sets `enable_uring` for the run and puts it back) over `Volume1/floor_uring` |
//! | `fuse_floor_uring_bounce` | `fuse_floor_uring` copying write data once into an aligned buffer before writing it, as the floor must through `/dev/fuse` (the transport alone; only when `--targets` names it) |
//! | `reseedfs_1copy` | a reseedfs mount (1 copy) whose one volume is a bind mount of `Volume1/pool1` |
//! | `reseedfs_2copies` | a reseedfs mount (2 copies) over bind mounts of `Volume1/pool2` and `Volume2/pool2` (two loop volumes sharing one host disk, as on this machine) |
//! | `reseedfs_1copy_nosums`, `reseedfs_2copies_nosums` | the same with `[checksums] enabled = false`, over `pool1_nosums`, `pool2_nosums` (only when `--targets` names them: the `cR` column and `ratio_to_nosums` give what block checksums cost, issue 17) |
//! | `reseedfs_1copy_uring`, `reseedfs_2copies_uring` | the same as `reseedfs_1copy` and `reseedfs_2copies` with `fuse_transport = "uring"` (FUSE over io_uring in the product: `threads` ring entries on each per-CPU queue), over `pool1_uring`, `pool2_uring` (only when `--targets` names them; the bench sets `enable_uring` for the run and puts it back, and fails when a daemon serves over `/dev/fuse` instead) |
//! | `reseedfs_1copy_base`, `reseedfs_2copies_base` | the same as `reseedfs_1copy` and `reseedfs_2copies` served by the binary `RESEEDFS_BENCH_BASE_BIN` names (the code before a change, measured in the same rounds as the code after it: `ratio_to_base` and the `bR` column), over `pool1_base`, `pool2_base` (only when `--targets` names them) |
//! | `mergerfs` | mergerfs over `Volume1/mergerfs`, with its manual's `cache.files=partial,dropcacheonclose=true` (only when `mergerfs` is installed) |
//!
//! Both reseedfs mounts are the real binary (`reseedfs init` + `reseedfs mount`, default
//! config: 8 request threads); the floor runs as a process of its own (this binary with
//! `--serve-fuse-floor`) with as many request threads. Every FUSE mount, mergerfs included, gets the same
//! `read_ahead_kb` (1 MiB) on its bdi, so the comparison is between the daemons.
//!
//! # Workloads
//!
//! Each job runs against one target with the page cache dropped before it (`sync`, then
//! `drop_caches`). The targets of a workload run back to back, in an order that rotates
//! from round to round (`--repeat N`), and each ratio is taken against `direct` in the same
//! round.
//!
//! | workload | what |
//! |---|---|
//! | `seq_write_1m` | `O_DIRECT` sequential write, 1 MiB `pwrite`s (psync), fresh file, `fsync` at the end (counted) |
//! | `seq_write_1m_buffered` | the same through the page cache, `fsync` at the end (counted) |
//! | `seq_read_1m` | `O_DIRECT` sequential read, 1 MiB `pread`s |
//! | `seq_read_1m_buffered` | the same through the page cache (readahead) |
//! | `rand_read_4k_qd1`, `_qd32` | `O_DIRECT` 4 KiB random reads, libaio, queue depth 1 / 32 |
//! | `rand_write_4k_qd1`, `_qd32` | `O_DIRECT` 4 KiB random overwrites, libaio, depth 1 / 32, `fsync` at the end |
//!
//! | `scrub` | `reseedfs scrub` of the `reseedfs_2copies` pool (every block of both copies read and checked against its checksum) against a plain sequential read of the same two backing files, both at once; when `reseedfs_2copies` is a target and no FILTER excludes it (issue 17) |
//!
//! Sequential jobs make one pass over the file (2 GiB by default), capped at `--seconds`;
//! random jobs run for `--seconds` (5 by default) after a 1 s ramp. fio's random map never
//! repeats an offset within a pass, and a pass is far longer than a job, so random reads
//! hit no page cache either (the daemon's backing files are buffered). fio counts the
//! final `fsync` in the elapsed time, so a write figure includes making it durable.
//!
//! fio is used when installed; otherwise a built-in generator does the same jobs (queue
//! depth N there is N threads each with one request in flight). `--builtin` forces it.
//!
//! # Reading the figures
//!
//! - reseedfs honours `O_DIRECT`: an `O_DIRECT` caller's aligned writes go `O_DIRECT` to
//!   every copy (from one page-aligned copy of FUSE's buffer), its reads of up to 64 KiB
//!   too; larger reads stay buffered (the backing readahead). The page cache column shows
//!   it: an `O_DIRECT` job leaves nothing of its data cached. `fuse_floor_cached` (on
//!   request) writes through the cache, as reseedfs did before: random writes through it
//!   can beat `direct` (ratio > 1), a weaker `O_DIRECT`, not a faster path.
//! - mergerfs passes `O_DIRECT` to its branch with libfuse's unaligned write buffers, so
//!   its `O_DIRECT` writes fail with `EINVAL` (shown as `failed: EINVAL`).
//! - This kind of machine is shared: the load average is printed before every round and
//!   flagged BUSY above half a load per core. Compare ratios, over several rounds.
//!
//! # Output
//!
//! A table of MiB/s or IOPS with the ratio to `direct` and to `fuse_floor` (medians of the
//! per-round ratios, and their range over the rounds); the daemon's CPU time per request
//! and per MiB moved (user + system of all its threads, `/proc/<pid>/stat`, over the job,
//! divided by the job's rate); the page cache the job's data holds when the job ends
//! (`fincore` of the file for `direct`, of the daemon's backing files otherwise: an
//! `O_DIRECT` job that leaves its data cached was cached by the daemon); the goals of
//! issue 18 checked one by one; and the same figures in `target/bench/throughput.json`: a
//! list of `{"workload","target","value","unit","ratio","ratio_min","ratio_max",
//! "ratio_to_floor","ratio_to_floor_min","ratio_to_floor_max","ratio_to_nosums",
//! "ratio_to_nosums_min","ratio_to_nosums_max","ratio_to_dev_fuse","ratio_to_dev_fuse_min",
//! "ratio_to_dev_fuse_max","ratio_to_base","ratio_to_base_min","ratio_to_base_max",
//! "daemon_cpu_us_per_request",
//! "daemon_cpu_us_per_mib","page_cache_mib","runs","error"}` (`value` is null and `error`
//! says why when every round failed; the floor fields are null for `direct` and the
//! floor, the CPU fields for `direct`). The `scrub` row has `"value"` (MiB/s per copy),
//! `"plain_read_mib_s"` and `"ratio_to_plain_read"` (with `_min`, `_max`). The reseed workload
//! belongs to `cargo bench --bench reseed`: when `target/bench/reseed.json` exists, its
//! rows are shown, labelled as such, and copied with `"source":"reseed.json"`.
//!
//! # Options
//!
//! `cargo bench --bench throughput -- [FILTER...] [--repeat N] [--seconds S]
//! [--file-mib M] [--builtin] [--targets direct,reseedfs_1copy,...] [--threads N]
//! [--large] [--max-pages-limit P]`
//!
//! - a FILTER keeps the workloads whose name contains it;
//! - `--large` adds `seq_write_4m`, `seq_read_4m`, `seq_write_16m`, `seq_read_16m`
//!   (`O_DIRECT`, 4 and 16 MiB requests): larger FUSE requests only show with them;
//! - `--max-pages-limit P` sets `fs.fuse.max_pages_limit` (the most pages the kernel lets a
//!   FUSE request carry; 256 = 1 MiB by default) before the mounts, restored at the end;
//! - `--repeat N` runs N rounds (default 1; use 3 or more on a shared machine);
//! - `--threads N` sets `threads` (FUSE request threads) in the reseedfs configs;
//! - `RESEEDFS_TESTBED_DIR` picks where the images go (default: the system temporary
//!   directory; it needs about one file size per target, and one more, free).
//!
//! In a VM whose balloon reports free memory to the host (`page_reporting`), the bench holds
//! the reporting off for its run and puts it back at the end (see `common::PageReportingOff`).
//!
//! The daemons' pids are printed, for `perf record -p` or `strace -fc -p` during a job.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    Daemon, Setting, bench_dir, drop_caches, machine_load, median, tool_version, tool_works,
    with_path,
};
use reseedfs::testbed::rng::Rng;
use reseedfs::testbed::{self, BindMount, Testbed};

use serde_json::{Value, json};

mod common;
mod floor;

/// The database every reseedfs pool of the bench holds.
const DB: &str = "bench";
/// The file name every target uses.
const FILE: &str = "bench.dat";
const MIB: f64 = 1024.0 * 1024.0;

// ---------------------------------------------------------------------------------------
// Targets and workloads

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Direct,
    Floor,
    /// The floor writing an `O_DIRECT` caller's data through the backing page cache, as
    /// reseedfs did before; only when `--targets` names it.
    FloorCached,
    /// The floor served over FUSE's io_uring transport; only when `--targets` names it.
    FloorUring,
    /// The same, copying write data once before writing it, as through `/dev/fuse`: the
    /// transport alone, without the aligned payload's saved copy.
    FloorUringBounce,
    Reseedfs1,
    Reseedfs2,
    /// `reseedfs_1copy` with `[checksums] enabled = false` (issue 17: what the sums cost).
    Reseedfs1NoSums,
    /// `reseedfs_2copies` with `[checksums] enabled = false`.
    Reseedfs2NoSums,
    /// `reseedfs_1copy` with `fuse_transport = "uring"` (issue 18, lever b in the product).
    Reseedfs1Uring,
    /// `reseedfs_2copies` with `fuse_transport = "uring"`.
    Reseedfs2Uring,
    /// `reseedfs_1copy` served by the binary `RESEEDFS_BENCH_BASE_BIN` names (the code
    /// before a change, in the same run as the code after it).
    Reseedfs1Base,
    /// `reseedfs_2copies` served by `RESEEDFS_BENCH_BASE_BIN`.
    Reseedfs2Base,
    Mergerfs,
}

/// Every target, in table order.
const TARGETS: [Target; 14] = [
    Target::Direct,
    Target::Floor,
    Target::FloorCached,
    Target::FloorUring,
    Target::FloorUringBounce,
    Target::Reseedfs1,
    Target::Reseedfs2,
    Target::Reseedfs1NoSums,
    Target::Reseedfs2NoSums,
    Target::Reseedfs1Uring,
    Target::Reseedfs2Uring,
    Target::Reseedfs1Base,
    Target::Reseedfs2Base,
    Target::Mergerfs,
];

/// What a run measures unless `--targets` says otherwise.
const DEFAULT_TARGETS: [Target; 5] = [
    Target::Direct,
    Target::Floor,
    Target::Reseedfs1,
    Target::Reseedfs2,
    Target::Mergerfs,
];

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Floor => "fuse_floor",
            Target::FloorCached => "fuse_floor_cached",
            Target::FloorUring => "fuse_floor_uring",
            Target::FloorUringBounce => "fuse_floor_uring_bounce",
            Target::Reseedfs1 => "reseedfs_1copy",
            Target::Reseedfs2 => "reseedfs_2copies",
            Target::Reseedfs1NoSums => "reseedfs_1copy_nosums",
            Target::Reseedfs2NoSums => "reseedfs_2copies_nosums",
            Target::Reseedfs1Uring => "reseedfs_1copy_uring",
            Target::Reseedfs2Uring => "reseedfs_2copies_uring",
            Target::Reseedfs1Base => "reseedfs_1copy_base",
            Target::Reseedfs2Base => "reseedfs_2copies_base",
            Target::Mergerfs => "mergerfs",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pattern {
    SeqWrite,
    SeqRead,
    RandRead,
    RandWrite,
}

#[derive(Debug, Clone, Copy)]
struct Workload {
    name: &'static str,
    pattern: Pattern,
    block_bytes: usize,
    direct: bool,
    depth: u32,
}

impl Workload {
    const fn new(
        name: &'static str,
        pattern: Pattern,
        block_bytes: usize,
        direct: bool,
        depth: u32,
    ) -> Workload {
        Workload {
            name,
            pattern,
            block_bytes,
            direct,
            depth,
        }
    }

    fn sequential(&self) -> bool {
        matches!(self.pattern, Pattern::SeqWrite | Pattern::SeqRead)
    }

    fn writes(&self) -> bool {
        matches!(self.pattern, Pattern::SeqWrite | Pattern::RandWrite)
    }

    fn unit(&self) -> &'static str {
        if self.sequential() { "MiB/s" } else { "IOPS" }
    }
}

const WORKLOADS: [Workload; 8] = [
    Workload::new("seq_write_1m", Pattern::SeqWrite, 1 << 20, true, 1),
    Workload::new(
        "seq_write_1m_buffered",
        Pattern::SeqWrite,
        1 << 20,
        false,
        1,
    ),
    Workload::new("seq_read_1m", Pattern::SeqRead, 1 << 20, true, 1),
    Workload::new("seq_read_1m_buffered", Pattern::SeqRead, 1 << 20, false, 1),
    Workload::new("rand_read_4k_qd1", Pattern::RandRead, 4096, true, 1),
    Workload::new("rand_read_4k_qd32", Pattern::RandRead, 4096, true, 32),
    Workload::new("rand_write_4k_qd1", Pattern::RandWrite, 4096, true, 1),
    Workload::new("rand_write_4k_qd32", Pattern::RandWrite, 4096, true, 32),
];

/// Lever (a) of issue 18: larger FUSE requests, measured with 4 and 16 MiB `O_DIRECT`
/// requests (a 1 MiB request is one FUSE request whatever the limit). Run with `--large`.
const LARGE_WORKLOADS: [Workload; 4] = [
    Workload::new("seq_write_4m", Pattern::SeqWrite, 4 << 20, true, 1),
    Workload::new("seq_read_4m", Pattern::SeqRead, 4 << 20, true, 1),
    Workload::new("seq_write_16m", Pattern::SeqWrite, 16 << 20, true, 1),
    Workload::new("seq_read_16m", Pattern::SeqRead, 16 << 20, true, 1),
];

/// Goals against `direct` (issue 18, item 5: the floor raised): (workload, target, least
/// median ratio to direct).
const GOALS: [(&str, Target, f64); 3] = [
    ("seq_write_1m", Target::Reseedfs1, 0.6),
    ("seq_read_1m", Target::Reseedfs1, 0.9),
    ("rand_read_4k_qd32", Target::Reseedfs1, 0.7),
];

/// Goals against the FUSE floor (issue 18, item 1): 1 copy at 0.95 of the floor on every
/// workload; 2 copies at 0.95 on reads and 0.6 on writes.
fn floor_goal(w: &Workload, t: Target) -> Option<f64> {
    match t {
        Target::Reseedfs1 => Some(0.95),
        Target::Reseedfs2 if w.writes() => Some(0.6),
        Target::Reseedfs2 => Some(0.95),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// Settings

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    Fio,
    Builtin,
}

#[derive(Debug)]
struct Settings {
    filters: Vec<String>,
    targets: Vec<Target>,
    repeat: usize,
    seconds: u64,
    file_bytes: u64,
    engine: Engine,
    /// `threads` of the reseedfs configs (`None`: what `reseedfs init` writes).
    threads: Option<u64>,
    /// Add the 4 and 16 MiB workloads (lever (a)).
    large: bool,
    /// `fs.fuse.max_pages_limit` to set for the run (restored at the end).
    max_pages_limit: Option<u64>,
}

impl Settings {
    fn parse(args: &[String]) -> Result<Settings, String> {
        let mut s = Settings {
            filters: Vec::new(),
            targets: DEFAULT_TARGETS.to_vec(),
            repeat: 1,
            seconds: 5,
            file_bytes: 2 << 30,
            threads: None,
            large: false,
            max_pages_limit: None,
            engine: if tool_works("fio", &["--version"]) {
                Engine::Fio
            } else {
                Engine::Builtin
            },
        };
        let mut it = args.iter();
        let number = |flag: &str, v: Option<&String>| -> Result<u64, String> {
            v.and_then(|v| v.parse().ok())
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("{flag} needs a positive number"))
        };
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--bench" => {}
                "--repeat" => s.repeat = number(arg, it.next())? as usize,
                "--seconds" => s.seconds = number(arg, it.next())?,
                "--file-mib" => s.file_bytes = number(arg, it.next())? << 20,
                "--builtin" => s.engine = Engine::Builtin,
                "--threads" => s.threads = Some(number(arg, it.next())?),
                "--large" => s.large = true,
                "--max-pages-limit" => s.max_pages_limit = Some(number(arg, it.next())?),
                "--targets" => {
                    let list = it.next().ok_or("--targets needs a list")?;
                    let mut targets = Vec::new();
                    for name in list.split(',') {
                        let t = TARGETS
                            .into_iter()
                            .find(|t| t.name() == name)
                            .ok_or_else(|| format!("unknown target {name}"))?;
                        targets.push(t);
                    }
                    if !targets.contains(&Target::Direct) {
                        targets.insert(0, Target::Direct);
                    }
                    s.targets = targets;
                }
                flag if flag.starts_with("--") => return Err(format!("unknown option {flag}")),
                filter => s.filters.push(filter.to_owned()),
            }
        }
        Ok(s)
    }

    fn workloads(&self) -> Vec<Workload> {
        let large: &[Workload] = if self.large { &LARGE_WORKLOADS } else { &[] };
        WORKLOADS
            .into_iter()
            .chain(large.iter().copied())
            .filter(|w| self.filters.is_empty() || self.filters.iter().any(|f| w.name.contains(f)))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// main

/// What `--help` prints.
const USAGE: &str = "\
cargo bench --bench throughput -- [FILTER...] [--repeat N] [--seconds S] [--file-mib M]
    [--builtin] [--targets direct,fuse_floor,reseedfs_1copy,...] [--threads N] [--large]
    [--max-pages-limit P]

Throughput of reseedfs (1 and 2 copies), the thinnest FUSE filesystem on the same stack
(fuse_floor) and mergerfs against the same ext4 volume directly, side by side in one run,
with fio (or a built-in generator). Needs root. Writes target/bench/throughput.json.

  FILTER                 keep the workloads whose name contains it
  --repeat N             rounds, the order of the targets rotating (default 1; use 3+)
  --seconds S            the longest a job runs (default 5)
  --file-mib M           the file each target works on (default 2048)
  --builtin              the built-in generator even when fio is installed
  --targets LIST         targets to measure (direct is always measured); also
                         fuse_floor_cached (the floor with cached O_DIRECT writes),
                         fuse_floor_uring (the floor over FUSE's io_uring transport:
                         sets /sys/module/fuse/parameters/enable_uring for the run and
                         puts it back), fuse_floor_uring_bounce (the same copying
                         write data once, as through /dev/fuse),
                         reseedfs_1copy_nosums, reseedfs_2copies_nosums (checksums
                         off), reseedfs_1copy_uring, reseedfs_2copies_uring (FUSE over
                         io_uring in the product), reseedfs_1copy_base,
                         reseedfs_2copies_base (the binary RESEEDFS_BENCH_BASE_BIN
                         names: before/after a change in the same rounds)
  --threads N            FUSE request threads of reseedfs and the floor (default: the
                         reseedfs default)
  --large                add 4 and 16 MiB O_DIRECT requests (seq_*_4m, seq_*_16m)
  --max-pages-limit P    set fs.fuse.max_pages_limit for the run (restored at the end)
  -h, --help             this text

RESEEDFS_TESTBED_DIR picks where the volume images go. For fuse_floor_uring:
FUSE_FLOOR_URING_ENTRIES=N ring entries (threads) per queue (default: --threads),
FUSE_FLOOR_URING_PIN=1 binds each queue's threads to its CPU, FUSE_FLOOR_URING_BOUNCE=1
copies write data once before writing it (as through /dev/fuse).";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if args.first().map(String::as_str) == Some(floor::SERVE) {
        return floor::serve_main(&args[1..]);
    }
    if !args.iter().any(|a| a == "--bench") {
        // `cargo test --benches` runs bench targets without `--bench`: nothing to do.
        println!("throughput: run it with `cargo bench --bench throughput` (as root)");
        return ExitCode::SUCCESS;
    }
    let settings = match Settings::parse(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("throughput: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(reason) = testbed::mount_privileges() {
        println!("throughput: SKIPPED: this benchmark needs root: {reason}");
        if std::env::var("CI").as_deref() == Ok("true") {
            eprintln!("throughput: a skipped benchmark is a failure under CI=true");
            return ExitCode::FAILURE;
        }
        return ExitCode::SUCCESS;
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("throughput: cannot install a signal handler: {e}");
            return ExitCode::FAILURE;
        }
    }
    match run(&settings, &stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("throughput: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(s: &Settings, stop: &AtomicBool) -> io::Result<()> {
    let workloads = s.workloads();
    let scrub = s.filters.is_empty() || s.filters.iter().any(|f| "scrub".contains(f.as_str()));
    if workloads.is_empty() && !scrub {
        return Err(io::Error::other("no workload matches the filter"));
    }
    let mut settings_line = format!(
        "engine {}, file {} MiB, {} s per random job, {} round(s)",
        match s.engine {
            Engine::Fio => tool_version("fio"),
            Engine::Builtin => "built-in generator (fio not found)".to_owned(),
        },
        s.file_bytes >> 20,
        s.seconds,
        s.repeat
    );
    let mergerfs = s.targets.contains(&Target::Mergerfs) && tool_works("mergerfs", &["-V"]);
    if mergerfs {
        let _ = write!(settings_line, ", {}", tool_version("mergerfs"));
    } else if s.targets.contains(&Target::Mergerfs) {
        settings_line.push_str(", mergerfs not installed (apt-get install mergerfs)");
    }
    println!("throughput: {settings_line}");
    println!("throughput: machine: {}", machine_load());
    let _limit = match s.max_pages_limit {
        Some(pages) => Some(MaxPagesLimit::set(pages)?),
        None => None,
    };
    println!(
        "throughput: FUSE requests up to {} pages (fs.fuse.max_pages_limit)",
        MaxPagesLimit::get().map_or_else(|| "256 (no such sysctl)".to_owned(), |p| p.to_string())
    );
    // Every target's file in the page cache, twice for two copies, and as much again.
    let _reporting = common::page_reporting_off(
        "throughput",
        (s.targets.len() as u64 + 2) * s.file_bytes * 2,
    );

    // FUSE over io_uring is offered at INIT only while `enable_uring` is set: on for the
    // run when the ring floor is measured, put back as it was at the end.
    let uring = [
        Target::FloorUring,
        Target::FloorUringBounce,
        Target::Reseedfs1Uring,
        Target::Reseedfs2Uring,
    ];
    let _uring = common::uring_for_run("throughput", s.targets.iter().any(|t| uring.contains(t)))?;
    let started = Instant::now();
    let rig = Rig::build(s, mergerfs)?;
    println!(
        "throughput: testbed ready in {:.0} s under {}",
        started.elapsed().as_secs_f64(),
        rig.bed.root.display()
    );
    for d in &rig.daemons {
        println!(
            "throughput: {} is pid {} at {}",
            d.label,
            d.pid(),
            d.mountpoint().display()
        );
    }
    let targets: Vec<Target> = s
        .targets
        .iter()
        .copied()
        .filter(|t| rig.file(*t).is_some())
        .collect();

    let mut samples: Vec<Sample> = Vec::new();
    for round in 0..s.repeat {
        println!(
            "throughput: round {}/{}; machine: {}",
            round + 1,
            s.repeat,
            machine_load()
        );
        for w in &workloads {
            // Rotate the order of the targets from round to round.
            let mut order = targets.clone();
            let shift = round % order.len().max(1);
            order.rotate_left(shift);
            for &t in &order {
                if stop.load(Ordering::Relaxed) {
                    return Err(io::Error::other("interrupted; cleaning up"));
                }
                let Some(file) = rig.file(t) else { continue };
                rig.check(t)?;
                // A target that fails a job (mergerfs refuses unaligned O_DIRECT with
                // EINVAL) is recorded as failed; the run goes on.
                let result = prepare_job(s, w, file).and_then(|()| {
                    let cpu_before = rig.daemon_cpu(t);
                    let t0 = Instant::now();
                    let value = run_job(s, w, file)?;
                    let wall = t0.elapsed().as_secs_f64();
                    let cpu = match (cpu_before, rig.daemon_cpu(t)) {
                        (Some(a), Some(b)) if wall > 0.0 => Some((b - a) / wall),
                        _ => None,
                    };
                    Ok((value, cpu))
                });
                // A daemon gone mid-job would have let the job measure the folder under
                // its mount point: stop the run.
                rig.check(t)?;
                let cache = rig.page_cache(t, file);
                let shown = match &result {
                    Ok((v, cpu)) => {
                        let mut line = format!("{v:>10.1} {:<6}", w.unit());
                        if let Some(c) = cpu {
                            let cost = CpuCost::of(w, *v, *c);
                            let _ = write!(
                                line,
                                "  daemon CPU {:>3.0}%, {:>6.1} us/request, {:>6.0} us/MiB",
                                c * 100.0,
                                cost.us_per_request,
                                cost.us_per_mib
                            );
                        }
                        let _ = write!(line, "  page cache {:.0} MiB", cache.mib);
                        line
                    }
                    Err(e) => {
                        let text = e.to_string();
                        let first = text.lines().next().unwrap_or_default();
                        let cut = first.char_indices().nth(90).map_or(first.len(), |(i, _)| i);
                        format!("FAILED ({}): {}", short_error(e), &first[..cut])
                    }
                };
                println!("  {:<22} {:<23} {shown}", w.name, t.name());
                let (value, cpu) = match result {
                    Ok((v, cpu)) => (Ok(v), cpu.map(|c| CpuCost::of(w, v, c))),
                    Err(e) => (Err(short_error(&e)), None),
                };
                samples.push(Sample {
                    workload: w.name,
                    target: t,
                    round,
                    value,
                    cpu,
                    cache,
                });
            }
        }
    }
    let mut scrub_row = None;
    if scrub && targets.contains(&Target::Reseedfs2) {
        scrub_row = Some(scrub_vs_read(s, &rig, stop)?);
    }
    println!("throughput: machine after: {}", machine_load());
    let rows = summarize(&workloads, &targets, &samples);
    let reseed = reseed_rows();
    print_table(&workloads, &targets, &rows, &reseed);
    if let Some(row) = &scrub_row {
        println!(
            "\nscrub (issue 17, reseedfs_2copies, unthrottled): {} MiB/s per copy; a plain sequential read of the same backing files, both at once: {} MiB/s per copy; ratio {} [{}-{}] (goal: the device's sequential speed, 1.0)",
            row["value"],
            row["plain_read_mib_s"],
            row["ratio_to_plain_read"],
            row["ratio_to_plain_read_min"],
            row["ratio_to_plain_read_max"]
        );
    }
    write_json(&rows, &reseed, scrub_row)?;
    drop(rig);
    Ok(())
}

/// Issue 17: `reseedfs scrub` of the `reseedfs_2copies` pool (every block of both copies
/// read and checked, unthrottled: the default `[throttle]` has no budget) against a plain
/// sequential read of the same two backing files, both at once (1 MiB buffered reads, as
/// the scrub reads), caches dropped before each, alternating, `--repeat` rounds. The
/// scrub's time is its own report's (`report.seconds`), not the CLI's polling.
fn scrub_vs_read(s: &Settings, rig: &Rig, stop: &AtomicBool) -> io::Result<Value> {
    let t = Target::Reseedfs2;
    let file = rig
        .file(t)
        .ok_or_else(|| io::Error::other("no reseedfs_2copies mount"))?;
    let backing: Vec<PathBuf> = rig
        .backing
        .iter()
        .find(|(x, _)| *x == t)
        .map(|(_, f)| f.clone())
        .unwrap_or_default();
    let config = rig.bed.root.join("pool2").join("reseedfs.toml");
    ensure_file(file, s.file_bytes)?;
    let mib = s.file_bytes as f64 / MIB;
    let (mut plain, mut scrub, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..s.repeat {
        if stop.load(Ordering::Relaxed) {
            return Err(io::Error::other("interrupted; cleaning up"));
        }
        drop_caches();
        let t0 = Instant::now();
        thread::scope(|scope| {
            let readers: Vec<_> = backing
                .iter()
                .map(|p| scope.spawn(move || read_through(p)))
                .collect();
            readers
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(io::Error::other("reader panicked")))
                })
                .collect::<io::Result<Vec<u64>>>()
        })?;
        let plain_s = t0.elapsed().as_secs_f64();
        drop_caches();
        let out = Command::new(common::bin())
            .args(["scrub", DB, "--wait", "--json", "--config"])
            .arg(&config)
            .output()?;
        let status: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            io::Error::other(format!(
                "reseedfs scrub --json: {e}: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        })?;
        let scrub_s = status["report"]["seconds"]
            .as_f64()
            .filter(|x| *x > 0.0)
            .ok_or_else(|| io::Error::other(format!("reseedfs scrub failed: {status}")))?;
        println!(
            "  scrub                  reseedfs_2copies  round {}: scrub {:.0} MiB/s per copy in {scrub_s:.2} s, plain read {:.0} MiB/s per copy in {plain_s:.2} s",
            round + 1,
            mib / scrub_s,
            mib / plain_s
        );
        plain.push(mib / plain_s);
        scrub.push(mib / scrub_s);
        ratios.push(plain_s / scrub_s);
    }
    let round3 = |x: Option<f64>| x.map(|v| (v * 1000.0).round() / 1000.0);
    let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = ratios.iter().copied().fold(0.0, f64::max);
    Ok(json!({
        "workload": "scrub",
        "target": t.name(),
        "value": median(&mut scrub).map(|x| (x * 10.0).round() / 10.0),
        "unit": "MiB/s",
        "plain_read_mib_s": median(&mut plain).map(|x| (x * 10.0).round() / 10.0),
        "ratio_to_plain_read": round3(median(&mut ratios)),
        "ratio_to_plain_read_min": round3(Some(lo)),
        "ratio_to_plain_read_max": round3(Some(hi)),
        "runs": s.repeat,
    }))
}

/// Reads `path` front to back in 1 MiB reads; returns the bytes.
fn read_through(path: &Path) -> io::Result<u64> {
    let f = fs::File::open(path).map_err(|e| with_path(e, "open", path))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    loop {
        let n = f.read_at(&mut buf, at)?;
        if n == 0 {
            return Ok(at);
        }
        at += n as u64;
    }
}

// ---------------------------------------------------------------------------------------
// The rig: volumes, bind mounts, daemons

/// Everything the bench mounts. Fields drop in order: the daemons first, then the bind
/// mounts, then the testbed (loop volumes and the directory).
struct Rig {
    daemons: Vec<Daemon>,
    binds: Vec<BindMount>,
    bed: Testbed,
    files: Vec<(Target, PathBuf)>,
    /// The files a FUSE target's daemon keeps its data in (every copy).
    backing: Vec<(Target, Vec<PathBuf>)>,
}

impl Rig {
    fn build(s: &Settings, mergerfs: bool) -> io::Result<Rig> {
        // Volume1 holds one file per target (and room for a sequential writer's fresh
        // file); Volume2 the second copy.
        let targets = s.targets.len() as u64;
        let volume_bytes = s.file_bytes * (targets + 1) + (1 << 30);
        let bed = Testbed::loop_volumes(2, volume_bytes)?;
        let mut rig = Rig {
            daemons: Vec::new(),
            binds: Vec::new(),
            bed,
            files: Vec::new(),
            backing: Vec::new(),
        };
        let vol1 = rig.bed.volume_path(1);
        let vol2 = rig.bed.volume_path(2);
        for dir in [
            vol1.join("direct"),
            vol1.join("floor"),
            vol1.join("floor_cached"),
            vol1.join("floor_uring"),
            vol1.join("floor_uring_bounce"),
            vol1.join("pool1"),
            vol1.join("pool2"),
            vol1.join("mergerfs"),
            vol2.join("pool2"),
        ] {
            fs::create_dir(&dir).map_err(|e| with_path(e, "create", &dir))?;
        }
        rig.files
            .push((Target::Direct, vol1.join("direct").join(FILE)));

        let root = rig.bed.root.clone();
        // The floor serves as many request threads as reseedfs.
        let threads = s.threads.map_or_else(
            || reseedfs::config::Config::new(PathBuf::new(), PathBuf::new(), Vec::new()).threads,
            |n| n as usize,
        );
        for (target, dir, direct, transport) in [
            (
                Target::Floor,
                "floor",
                floor::Direct::Honest,
                floor::Transport::DevFuse,
            ),
            (
                Target::FloorCached,
                "floor_cached",
                floor::Direct::Cached,
                floor::Transport::DevFuse,
            ),
            (
                Target::FloorUring,
                "floor_uring",
                floor::Direct::Honest,
                floor::Transport::Uring,
            ),
            (
                Target::FloorUringBounce,
                "floor_uring_bounce",
                floor::Direct::Honest,
                floor::Transport::Uring,
            ),
        ] {
            if !s.targets.contains(&target) {
                continue;
            }
            let backing = vol1.join(dir);
            let mountpoint = root.join(dir);
            let daemon = floor_daemon(target, &backing, &mountpoint, threads, direct, transport)?;
            rig.files.push((target, daemon.mountpoint().join(FILE)));
            rig.backing.push((target, vec![backing.join(FILE)]));
            rig.daemons.push(daemon);
        }

        for (target, copies, pool_dir, sums, ring) in [
            (Target::Reseedfs1, 1u32, "pool1", true, false),
            (Target::Reseedfs2, 2, "pool2", true, false),
            (Target::Reseedfs1NoSums, 1, "pool1_nosums", false, false),
            (Target::Reseedfs2NoSums, 2, "pool2_nosums", false, false),
            (Target::Reseedfs1Uring, 1, "pool1_uring", true, true),
            (Target::Reseedfs2Uring, 2, "pool2_uring", true, true),
            (Target::Reseedfs1Base, 1, "pool1_base", true, false),
            (Target::Reseedfs2Base, 2, "pool2_base", true, false),
        ] {
            if !s.targets.contains(&target) {
                continue;
            }
            let pool = root.join(pool_dir);
            let vols = pool.join("vols");
            for k in 1..=copies {
                let source = rig.bed.volume_path(k as usize).join(pool_dir);
                fs::create_dir_all(&source).map_err(|e| with_path(e, "create", &source))?;
                rig.binds
                    .push(BindMount::new(&source, &vols.join(format!("Volume{k}")))?);
            }
            let mut settings: Vec<Setting> = s.threads.map(Setting::threads).into_iter().collect();
            if !sums {
                settings.push(Setting::parse("checksums.enabled=false").map_err(io::Error::other)?);
            }
            if ring {
                settings.push(Setting::parse("fuse_transport=uring").map_err(io::Error::other)?);
            }
            let daemon = if matches!(target, Target::Reseedfs1Base | Target::Reseedfs2Base) {
                let base = std::env::var_os("RESEEDFS_BENCH_BASE_BIN").ok_or_else(|| {
                    io::Error::other(format!(
                        "{}: set RESEEDFS_BENCH_BASE_BIN to the reseedfs binary to compare with",
                        target.name()
                    ))
                })?;
                Daemon::reseedfs_with(
                    Path::new(&base),
                    target.name(),
                    &pool,
                    DB,
                    copies,
                    &settings,
                )?
            } else {
                Daemon::reseedfs(target.name(), &pool, DB, copies, &settings)?
            };
            // A ring that fell back to /dev/fuse would measure the wrong thing: its entries
            // are threads named fuse-ring-*.
            if ring && common::ring_threads(daemon.pid()) == 0 {
                return Err(io::Error::other(format!(
                    "{}: reseedfs serves over /dev/fuse, not the ring (its log: {})",
                    target.name(),
                    pool.display()
                )));
            }
            let file = daemon
                .mountpoint()
                .join(DB)
                .join(format!("{DB}.db"))
                .join(FILE);
            rig.daemons.push(daemon);
            rig.files.push((target, file));
            // The layout of a copy on its volume: `<db>.db/` at the volume's root.
            let on_volume = (1..=copies as usize)
                .map(|k| {
                    rig.bed
                        .volume_path(k)
                        .join(pool_dir)
                        .join(format!("{DB}.db"))
                        .join(FILE)
                })
                .collect();
            rig.backing.push((target, on_volume));
        }
        if mergerfs {
            let daemon = mergerfs_daemon(&vol1.join("mergerfs"), &root.join("mergerfs"))?;
            rig.files
                .push((Target::Mergerfs, daemon.mountpoint().join(FILE)));
            rig.backing
                .push((Target::Mergerfs, vec![vol1.join("mergerfs").join(FILE)]));
            rig.daemons.push(daemon);
        }
        Ok(rig)
    }

    fn file(&self, t: Target) -> Option<&Path> {
        self.files
            .iter()
            .find(|(x, _)| *x == t)
            .map(|(_, p)| p.as_path())
    }

    /// The page cache the data of target `t` holds now (`file`: the job's file).
    fn page_cache(&self, t: Target, file: &Path) -> Cache {
        let mib = match self.backing.iter().find(|(x, _)| *x == t) {
            Some((_, files)) => files.iter().map(|f| resident_mib(f)).sum(),
            None => resident_mib(file),
        };
        Cache { mib }
    }

    /// `Ok` while the daemon of `t` (if any) still serves its mount.
    fn check(&self, t: Target) -> io::Result<()> {
        match self.daemons.iter().find(|d| d.label == t.name()) {
            Some(d) => d.check(),
            None => Ok(()),
        }
    }

    /// CPU seconds the daemon behind `t` has used so far.
    fn daemon_cpu(&self, t: Target) -> Option<f64> {
        self.daemons
            .iter()
            .find(|d| d.label == t.name())?
            .cpu_seconds()
    }
}

/// The FUSE floor as `target` (see [`floor::daemon`]).
fn floor_daemon(
    target: Target,
    backing: &Path,
    mountpoint: &Path,
    threads: usize,
    direct: floor::Direct,
    transport: floor::Transport,
) -> io::Result<Daemon> {
    let bounce = target == Target::FloorUringBounce;
    floor::daemon(
        target.name(),
        backing,
        mountpoint,
        threads,
        direct,
        transport,
        bounce,
    )
}

/// mergerfs over one branch, with the settings its manual recommends when mmap is
/// needed (databases need it): page cache on, dropped on close.
fn mergerfs_daemon(branch: &Path, mountpoint: &Path) -> io::Result<Daemon> {
    fs::create_dir_all(mountpoint).map_err(|e| with_path(e, "create", mountpoint))?;
    let mut cmd = Command::new("mergerfs");
    cmd.arg("-f")
        .arg("-o")
        .arg(
            "allow_other,use_ino,cache.files=partial,dropcacheonclose=true,\
             category.create=mfs,minfreespace=0,fsname=mergerfs-bench",
        )
        .arg(branch)
        .arg(mountpoint);
    let log = mountpoint.with_extension("log");
    let d = Daemon::start(
        cmd,
        Target::Mergerfs.name(),
        mountpoint.to_owned(),
        None,
        &log,
        "fuse.mergerfs",
    )?;
    // The readahead reseedfs sets on its own mount.
    reseedfs::sys::fuse::raise_readahead(mountpoint);
    Ok(d)
}

// ---------------------------------------------------------------------------------------
// Jobs

/// Gets `file` ready for workload `w` (gone for a sequential write, full size otherwise),
/// then drops the page cache.
fn prepare_job(s: &Settings, w: &Workload, file: &Path) -> io::Result<()> {
    if w.pattern == Pattern::SeqWrite {
        match fs::remove_file(file) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(with_path(e, "remove", file)),
        }
    } else {
        ensure_file(file, s.file_bytes)?;
    }
    drop_caches();
    Ok(())
}

/// Runs workload `w` on `file`; returns MiB/s or IOPS.
fn run_job(s: &Settings, w: &Workload, file: &Path) -> io::Result<f64> {
    match s.engine {
        Engine::Fio => fio(s, w, file),
        Engine::Builtin => builtin(s, w, file),
    }
}

/// Makes `file` at least `bytes` long (written through the target, so every copy has it).
fn ensure_file(file: &Path, bytes: u64) -> io::Result<()> {
    let have = fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    if have >= bytes {
        return Ok(());
    }
    let f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(file)
        .map_err(|e| with_path(e, "create", file))?;
    let chunk = Rng::new(7).bytes(1 << 20);
    let mut off = 0;
    while off < bytes {
        f.write_all_at(&chunk, off)?;
        off += chunk.len() as u64;
    }
    f.sync_all()
}

/// How much of `file` is in the page cache, in MiB (`fincore`; 0 when it cannot tell).
fn resident_mib(file: &Path) -> f64 {
    let out = Command::new("fincore")
        .args(["--bytes", "--noheadings", "--raw", "--output", "RES"])
        .arg(file)
        .stderr(Stdio::null())
        .output();
    out.ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |b| b / MIB)
}

/// `fs.fuse.max_pages_limit`: the most pages the kernel lets a FUSE request carry (root
/// may raise it on kernels that have it). Set for the run, restored when dropped.
struct MaxPagesLimit {
    old: u64,
}

impl MaxPagesLimit {
    const KNOB: &str = "/proc/sys/fs/fuse/max_pages_limit";

    fn get() -> Option<u64> {
        fs::read_to_string(Self::KNOB).ok()?.trim().parse().ok()
    }

    fn set(pages: u64) -> io::Result<MaxPagesLimit> {
        let old = Self::get().ok_or_else(|| {
            io::Error::other(format!(
                "{} does not exist: this kernel caps FUSE requests at 256 pages",
                Self::KNOB
            ))
        })?;
        fs::write(Self::KNOB, pages.to_string())
            .map_err(|e| with_path(e, "write", Path::new(Self::KNOB)))?;
        Ok(MaxPagesLimit { old })
    }
}

impl Drop for MaxPagesLimit {
    fn drop(&mut self) {
        if let Err(e) = fs::write(Self::KNOB, self.old.to_string()) {
            eprintln!("throughput: cannot restore {}: {e}", Self::KNOB);
        }
    }
}

fn fio(s: &Settings, w: &Workload, file: &Path) -> io::Result<f64> {
    let rw = match w.pattern {
        Pattern::SeqWrite => "write",
        Pattern::SeqRead => "read",
        Pattern::RandRead => "randread",
        Pattern::RandWrite => "randwrite",
    };
    let mut cmd = Command::new("fio");
    cmd.arg(format!("--name={}", w.name))
        .arg(format!("--filename={}", file.display()))
        .arg(format!("--rw={rw}"))
        .arg(format!("--bs={}", w.block_bytes))
        .arg(format!("--size={}", s.file_bytes))
        .arg(format!("--direct={}", u8::from(w.direct)))
        .arg(format!("--runtime={}", s.seconds))
        .args(["--fallocate=none", "--output-format=json"]);
    if w.sequential() {
        cmd.arg("--ioengine=psync");
    } else {
        cmd.args(["--ioengine=libaio", "--time_based", "--ramp_time=1"])
            .arg(format!("--iodepth={}", w.depth));
    }
    if w.writes() {
        cmd.arg("--end_fsync=1");
    }
    let out = cmd.output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // fio may print warnings before the JSON document.
    let doc: Value = text
        .find('{')
        .and_then(|i| serde_json::from_str(&text[i..]).ok())
        .ok_or_else(|| {
            io::Error::other(format!(
                "fio printed no JSON ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        })?;
    let job = &doc["jobs"][0];
    if job["error"].as_i64().unwrap_or(0) != 0 || !out.status.success() {
        return Err(io::Error::other(format!(
            "fio failed ({}, error {}): {}",
            out.status,
            job["error"],
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let side = if w.writes() {
        &job["write"]
    } else {
        &job["read"]
    };
    let value = if w.sequential() {
        side["bw"].as_f64().unwrap_or(0.0) / 1024.0
    } else {
        side["iops"].as_f64().unwrap_or(0.0)
    };
    Ok(value)
}

/// The built-in generator: the same jobs with `pread`/`pwrite`; queue depth N is N threads.
fn builtin(s: &Settings, w: &Workload, file: &Path) -> io::Result<f64> {
    let deadline = Duration::from_secs(s.seconds);
    let open = |write: bool, create: bool| -> io::Result<fs::File> {
        let mut o = fs::OpenOptions::new();
        o.read(true).write(write).create(create).truncate(false);
        if w.direct {
            o.custom_flags(libc::O_DIRECT);
        }
        o.open(file).map_err(|e| with_path(e, "open", file))
    };
    let bs = w.block_bytes;
    match w.pattern {
        Pattern::SeqWrite | Pattern::SeqRead => {
            let write = w.pattern == Pattern::SeqWrite;
            let f = open(write, write)?;
            let mut buf = Aligned::new(bs, 11);
            let t0 = Instant::now();
            let mut off = 0u64;
            while off < s.file_bytes && t0.elapsed() < deadline {
                if write {
                    f.write_all_at(buf.get(), off)?;
                } else if f.read_at(buf.get_mut(), off)? == 0 {
                    break;
                }
                off += bs as u64;
            }
            if write {
                f.sync_all()?;
            }
            Ok(off as f64 / MIB / t0.elapsed().as_secs_f64())
        }
        Pattern::RandRead | Pattern::RandWrite => {
            let write = w.pattern == Pattern::RandWrite;
            let blocks = (s.file_bytes / bs as u64).max(1);
            let ops = AtomicU64::new(0);
            let t0 = Instant::now();
            thread::scope(|scope| -> io::Result<()> {
                let mut workers = Vec::new();
                for n in 0..w.depth {
                    let f = open(write, false)?;
                    let ops = &ops;
                    workers.push(scope.spawn(move || -> io::Result<()> {
                        let mut buf = Aligned::new(bs, u64::from(n) + 1);
                        let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (u64::from(n) << 32);
                        let mut done = 0;
                        while t0.elapsed() < deadline {
                            rng ^= rng << 13;
                            rng ^= rng >> 7;
                            rng ^= rng << 17;
                            let off = (rng % blocks) * bs as u64;
                            if write {
                                f.write_all_at(buf.get(), off)?;
                            } else {
                                f.read_at(buf.get_mut(), off)?;
                            }
                            done += 1;
                        }
                        ops.fetch_add(done, Ordering::Relaxed);
                        Ok(())
                    }));
                }
                for h in workers {
                    h.join()
                        .map_err(|_| io::Error::other("a generator thread panicked"))??;
                }
                Ok(())
            })?;
            if write {
                open(true, false)?.sync_all()?;
            }
            Ok(ops.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64())
        }
    }
}

/// A buffer aligned for `O_DIRECT` (4 KiB), filled with a non-repeating pattern.
struct Aligned {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize, seed: u64) -> Aligned {
        let mut raw = Rng::new(seed).bytes(len + 4096);
        let start = raw.as_mut_ptr().align_offset(4096).min(4096);
        Aligned { raw, start, len }
    }
    fn get(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }
    fn get_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

// ---------------------------------------------------------------------------------------
// Results

struct Sample {
    workload: &'static str,
    target: Target,
    round: usize,
    /// MiB/s or IOPS, or why the job failed.
    value: Result<f64, String>,
    /// The daemon's CPU time per request and per MiB (`None`: no daemon, or it failed).
    cpu: Option<CpuCost>,
    /// The page cache the job's data holds when the job ends.
    cache: Cache,
}

/// The daemon's CPU time (user + system, all its threads, from `/proc/<pid>/stat`) per
/// request of the workload's size and per MiB moved. Taken as the daemon's CPU use over
/// the job (CPU seconds per wall second) divided by the job's rate: fio's ramp second and
/// final `fsync` are in both, at the same rate.
#[derive(Debug, Clone, Copy)]
struct CpuCost {
    us_per_request: f64,
    us_per_mib: f64,
}

impl CpuCost {
    /// `value`: MiB/s or IOPS as the workload reports it; `cpu`: CPU seconds per second.
    fn of(w: &Workload, value: f64, cpu: f64) -> CpuCost {
        let mib_per_request = w.block_bytes as f64 / MIB;
        let (requests_per_s, mib_per_s) = if w.sequential() {
            (value / mib_per_request, value)
        } else {
            (value, value * mib_per_request)
        };
        let per = |rate: f64| if rate > 0.0 { cpu / rate * 1e6 } else { 0.0 };
        CpuCost {
            us_per_request: per(requests_per_s),
            us_per_mib: per(mib_per_s),
        }
    }
}

/// Page cache held by a job's data when it ends (`fincore`): for `direct` the file itself,
/// for a FUSE target its daemon's backing files (every copy). The FUSE file's own page
/// cache is not counted: every open of it (fincore's too) drops it, as none of these
/// daemons asks the kernel to keep it (`FOPEN_KEEP_CACHE`).
#[derive(Debug, Clone, Copy, Default)]
struct Cache {
    mib: f64,
}

/// `EINVAL` and the like from a job's error, for the table.
fn short_error(e: &io::Error) -> String {
    let text = e.to_string();
    for (needle, name) in [
        ("Invalid argument", "EINVAL"),
        ("No space left", "ENOSPC"),
        ("Input/output error", "EIO"),
        ("Operation not supported", "EOPNOTSUPP"),
        ("Permission denied", "EACCES"),
    ] {
        if text.contains(needle) {
            return name.to_owned();
        }
    }
    "failed".to_owned()
}

struct Row {
    workload: &'static str,
    target: Target,
    unit: &'static str,
    /// Median over the rounds that succeeded; `None` when every round failed.
    value: Option<f64>,
    /// Why the last failed round failed.
    error: Option<String>,
    ratio: Option<f64>,
    ratio_min: Option<f64>,
    ratio_max: Option<f64>,
    /// Ratio to `fuse_floor` in the same round (median, range).
    ratio_to_floor: Option<f64>,
    ratio_to_floor_min: Option<f64>,
    ratio_to_floor_max: Option<f64>,
    /// Ratio of a checksummed reseedfs target to the same target without checksums in
    /// the same round (median, range; issue 17: the cost of the sums).
    ratio_to_nosums: Option<f64>,
    ratio_to_nosums_min: Option<f64>,
    ratio_to_nosums_max: Option<f64>,
    /// A `_uring` target against the same reseedfs over `/dev/fuse`, same round.
    ratio_to_dev_fuse: Option<f64>,
    ratio_to_dev_fuse_min: Option<f64>,
    ratio_to_dev_fuse_max: Option<f64>,
    /// Ratio of a reseedfs target to the same target served by the base binary
    /// (`RESEEDFS_BENCH_BASE_BIN`) in the same round.
    ratio_to_base: Option<f64>,
    ratio_to_base_min: Option<f64>,
    ratio_to_base_max: Option<f64>,
    /// Medians of the daemon's CPU cost.
    cpu_us_per_request: Option<f64>,
    cpu_us_per_mib: Option<f64>,
    /// Median of the page cache at the end of the job ([`Cache`]).
    cache_mib: Option<f64>,
    runs: usize,
}

/// Median, least and greatest of the ratios of `mine` to `base` in the same round.
fn ratios(
    mine: &[&Sample],
    base: &BTreeMap<usize, f64>,
) -> (Option<f64>, Option<f64>, Option<f64>) {
    let mut r: Vec<f64> = mine
        .iter()
        .filter_map(|x| {
            let v = x.value.as_ref().ok()?;
            base.get(&x.round).filter(|d| **d > 0.0).map(|d| v / d)
        })
        .collect();
    let lo = r.iter().copied().reduce(f64::min);
    let hi = r.iter().copied().reduce(f64::max);
    (median(&mut r), lo, hi)
}

fn summarize(workloads: &[Workload], targets: &[Target], samples: &[Sample]) -> Vec<Row> {
    let mut rows = Vec::new();
    for w in workloads {
        let by_round = |t: Target| -> BTreeMap<usize, f64> {
            samples
                .iter()
                .filter(|x| x.workload == w.name && x.target == t)
                .filter_map(|x| Some((x.round, *x.value.as_ref().ok()?)))
                .collect()
        };
        let direct = by_round(Target::Direct);
        let floor = by_round(Target::Floor);
        for &t in targets {
            let mine: Vec<&Sample> = samples
                .iter()
                .filter(|x| x.workload == w.name && x.target == t)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let mut values: Vec<f64> = mine.iter().filter_map(|x| x.value.clone().ok()).collect();
            let error = mine.iter().rev().find_map(|x| x.value.clone().err());
            let (ratio, ratio_min, ratio_max) = ratios(&mine, &direct);
            let (ratio_to_floor, ratio_to_floor_min, ratio_to_floor_max) =
                if t == Target::Direct || t == Target::Floor {
                    (None, None, None)
                } else {
                    ratios(&mine, &floor)
                };
            let (ratio_to_nosums, ratio_to_nosums_min, ratio_to_nosums_max) = match t {
                Target::Reseedfs1 => ratios(&mine, &by_round(Target::Reseedfs1NoSums)),
                Target::Reseedfs2 => ratios(&mine, &by_round(Target::Reseedfs2NoSums)),
                _ => (None, None, None),
            };
            let (ratio_to_dev_fuse, ratio_to_dev_fuse_min, ratio_to_dev_fuse_max) = match t {
                Target::Reseedfs1Uring => ratios(&mine, &by_round(Target::Reseedfs1)),
                Target::Reseedfs2Uring => ratios(&mine, &by_round(Target::Reseedfs2)),
                _ => (None, None, None),
            };
            let (ratio_to_base, ratio_to_base_min, ratio_to_base_max) = match t {
                Target::Reseedfs1 => ratios(&mine, &by_round(Target::Reseedfs1Base)),
                Target::Reseedfs2 => ratios(&mine, &by_round(Target::Reseedfs2Base)),
                _ => (None, None, None),
            };
            let pick = |f: &dyn Fn(&Sample) -> Option<f64>| {
                let mut v: Vec<f64> = mine.iter().filter_map(|x| f(x)).collect();
                median(&mut v)
            };
            rows.push(Row {
                workload: w.name,
                target: t,
                unit: w.unit(),
                value: median(&mut values),
                error,
                ratio,
                ratio_min,
                ratio_max,
                ratio_to_floor,
                ratio_to_floor_min,
                ratio_to_floor_max,
                ratio_to_nosums,
                ratio_to_nosums_min,
                ratio_to_nosums_max,
                ratio_to_dev_fuse,
                ratio_to_dev_fuse_min,
                ratio_to_dev_fuse_max,
                ratio_to_base,
                ratio_to_base_min,
                ratio_to_base_max,
                cpu_us_per_request: pick(&|x| x.cpu.map(|c| c.us_per_request)),
                cpu_us_per_mib: pick(&|x| x.cpu.map(|c| c.us_per_mib)),
                cache_mib: pick(&|x| x.value.is_ok().then_some(x.cache.mib)),
                runs: mine.len(),
            });
        }
    }
    rows
}

/// The reseed row from `target/bench/reseed.json` (written by `cargo bench --bench
/// reseed`): the reseed's copy rate, and its ratio to the faster of `cp` and `dd` on the
/// same volumes (the reseed's own baseline: there is no "direct" reseed). Empty when the
/// file does not exist.
fn reseed_rows() -> Vec<Value> {
    let path = bench_dir().join("reseed.json");
    let row = |r: &Value| {
        let value = r["reseed_mib_s"].as_f64();
        let base = match (r["cp_mib_s"].as_f64(), r["dd_mib_s"].as_f64()) {
            (Some(cp), Some(dd)) => Some(cp.max(dd)),
            (cp, dd) => cp.or(dd),
        };
        serde_json::json!({
            "workload": "reseed",
            "target": format!("reseedfs_2copies ({})", r["engine"].as_str().unwrap_or("?")),
            "value": value,
            "unit": "MiB/s",
            "ratio": value.zip(base).map(|(v, b)| (v / b * 100.0).round() / 100.0),
            "baseline": "max(cp, dd) on the same volumes",
        })
    };
    match fs::read(&path) {
        Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Array(rows)) => rows.iter().map(row).collect(),
            Ok(other) => vec![row(&other)],
            Err(e) => {
                eprintln!("throughput: {} is no JSON: {e}", path.display());
                Vec::new()
            }
        },
        Err(_) => Vec::new(),
    }
}

fn print_table(workloads: &[Workload], targets: &[Target], rows: &[Row], reseed: &[Value]) {
    let row = |w: &str, t: Target| rows.iter().find(|r| r.workload == w && r.target == t);
    let mut out = String::new();
    let _ = write!(out, "\n{:<22} {:<6}", "workload", "unit");
    for t in targets {
        let _ = write!(out, " {:>34}", t.name());
    }
    out.push('\n');
    for w in workloads {
        let _ = write!(out, "{:<22} {:<6}", w.name, w.unit());
        for &t in targets {
            let cell = row(w.name, t)
                .map(|r| {
                    let Some(value) = r.value else {
                        return format!("failed: {}", r.error.as_deref().unwrap_or("?"));
                    };
                    let mut cell = format!("{value:.1}");
                    match (r.ratio, r.ratio_min, r.ratio_max) {
                        _ if t == Target::Direct => {}
                        (Some(m), Some(lo), Some(hi)) if r.runs > 1 => {
                            let _ = write!(cell, " x{m:.2} [{lo:.2}-{hi:.2}]");
                        }
                        (Some(m), _, _) => {
                            let _ = write!(cell, " x{m:.2}");
                        }
                        _ => cell.push_str(" x?"),
                    }
                    if let Some(f) = r.ratio_to_floor {
                        let _ = write!(cell, " f{f:.2}");
                    }
                    if let Some(c) = r.ratio_to_nosums {
                        let _ = write!(cell, " c{c:.2}");
                    }
                    if let Some(u) = r.ratio_to_dev_fuse {
                        let _ = write!(cell, " u{u:.2}");
                    }
                    if let Some(b) = r.ratio_to_base {
                        let _ = write!(cell, " b{b:.2}");
                    }
                    cell
                })
                .unwrap_or_else(|| "-".to_owned());
            let _ = write!(out, " {cell:>34}");
        }
        out.push('\n');
    }
    out.push_str(
        "(value: median over the rounds; xR: ratio to direct in the same round, [range]; \
         fR: ratio to fuse_floor in the same round; cR: checksums on / off, same round; \
         uR: the ring / /dev/fuse, same round; bR: this build / RESEEDFS_BENCH_BASE_BIN, \
         same round)\n",
    );

    let daemons: Vec<Target> = targets
        .iter()
        .copied()
        .filter(|&t| t != Target::Direct)
        .collect();
    out.push_str("\ndaemon CPU per request (us) / per MiB moved (us)");
    if daemons.is_empty() {
        out.push_str(": no daemon among the targets\n");
    } else {
        let _ = write!(out, ", medians\n{:<22}", "workload");
        for t in &daemons {
            let _ = write!(out, " {:>20}", t.name());
        }
        out.push('\n');
        for w in workloads {
            let _ = write!(out, "{:<22}", w.name);
            for &t in &daemons {
                let cell = row(w.name, t)
                    .and_then(|r| Some((r.cpu_us_per_request?, r.cpu_us_per_mib?)))
                    .map_or_else(|| "-".to_owned(), |(q, m)| format!("{q:.1} / {m:.0}"));
                let _ = write!(out, " {cell:>20}");
            }
            out.push('\n');
        }
    }

    let _ = write!(
        out,
        "\npage cache the job's data holds at its end (MiB; FUSE targets: their backing \
         files), medians\n{:<22}",
        "workload"
    );
    for t in targets {
        let _ = write!(out, " {:>20}", t.name());
    }
    out.push('\n');
    for w in workloads {
        let _ = write!(out, "{:<22}", w.name);
        for &t in targets {
            let cell = row(w.name, t)
                .and_then(|r| r.cache_mib)
                .map_or_else(|| "-".to_owned(), |m| format!("{m:.0}"));
            let _ = write!(out, " {cell:>20}");
        }
        out.push('\n');
    }

    out.push_str(&goal_sections(workloads, targets, rows));

    out.push_str("\nreseed: ");
    if reseed.is_empty() {
        out.push_str(
            "not measured here; `cargo bench --bench reseed` writes target/bench/reseed.json, \
             shown here when present\n",
        );
    } else {
        out.push_str(
            "from target/bench/reseed.json (cargo bench --bench reseed), ratio to max(cp, dd):\n",
        );
        for r in reseed {
            let _ = writeln!(
                out,
                "  {:<22} {:<17} {:>10} {}  ratio {}",
                r["workload"].as_str().unwrap_or("reseed"),
                r["target"].as_str().unwrap_or("-"),
                r["value"],
                r["unit"].as_str().unwrap_or(""),
                r["ratio"]
            );
        }
    }
    print!("{out}");
    let _ = io::stdout().flush();
}

/// Why a goal section is empty when the FILTERs kept no workload (a `scrub`-only run).
const NO_WORKLOAD: &str = "no workload ran (the FILTER kept none)";

/// The goals of issues 18 and 17, checked one by one. A section's header is printed only
/// with lines under it; a section with none says in one line why (its targets or workloads
/// were left out of the run, or every job it needs failed), so an empty header never reads
/// as "nothing missed".
fn goal_sections(workloads: &[Workload], targets: &[Target], rows: &[Row]) -> String {
    let row = |w: &str, t: Target| rows.iter().find(|r| r.workload == w && r.target == t);
    let ran = |t: Target| targets.contains(&t);
    let mut out = String::new();

    let mut lines = Vec::new();
    for (name, t, least) in GOALS {
        if let Some(m) = row(name, t).and_then(|r| r.ratio) {
            lines.push(format!(
                "  {:<4} {:<22} {:<17} {m:.2} >= {least:.2} of direct",
                if m >= least { "ok" } else { "MISS" },
                name,
                t.name()
            ));
        }
    }
    for w in workloads {
        for &t in targets {
            let (Some(least), Some(m)) = (
                floor_goal(w, t),
                row(w.name, t).and_then(|r| r.ratio_to_floor),
            ) else {
                continue;
            };
            lines.push(format!(
                "  {:<4} {:<22} {:<17} {m:.2} >= {least:.2} of fuse_floor",
                if m >= least { "ok" } else { "MISS" },
                w.name,
                t.name()
            ));
        }
    }
    for w in workloads {
        let Some(m) = row(w.name, Target::Mergerfs) else {
            continue;
        };
        // Like for like: one copy against mergerfs's one branch. Two copies write twice.
        let Some(r) = row(w.name, Target::Reseedfs1) else {
            continue;
        };
        let Some(v) = r.ratio else {
            continue;
        };
        let (ok, versus) = match (m.ratio, m.value) {
            (Some(mv), _) => (v >= mv, format!("x{v:.2} vs x{mv:.2} of direct")),
            // mergerfs ran but direct never did in the same round: nothing to compare.
            (None, Some(_)) => continue,
            (None, None) => (
                true,
                format!("mergerfs failed: {}", m.error.as_deref().unwrap_or("?")),
            ),
        };
        lines.push(format!(
            "  {:<4} {:<22} {:<17} ahead of mergerfs ({versus})",
            if ok { "ok" } else { "MISS" },
            w.name,
            Target::Reseedfs1.name()
        ));
    }
    // What the goals need: a goal's target beside its baseline (and, against direct, its
    // workload); with none of that in the run, saying so beats an empty header.
    let against_direct = GOALS
        .iter()
        .any(|&(name, t, _)| ran(t) && workloads.iter().any(|w| w.name == name));
    let against_floor = ran(Target::Floor) && (ran(Target::Reseedfs1) || ran(Target::Reseedfs2));
    let against_mergerfs = ran(Target::Mergerfs) && ran(Target::Reseedfs1);
    let why = if workloads.is_empty() {
        NO_WORKLOAD.to_owned()
    } else if !ran(Target::Reseedfs1) && !ran(Target::Reseedfs2) {
        "none of their targets ran (reseedfs_1copy, reseedfs_2copies)".to_owned()
    } else if !(against_direct || against_floor || against_mergerfs) {
        let mut by_target: BTreeMap<Target, Vec<&str>> = BTreeMap::new();
        for (name, t, _) in GOALS {
            by_target.entry(t).or_default().push(name);
        }
        let direct_goals: Vec<String> = by_target
            .iter()
            .map(|(t, names)| format!("{} on {}", t.name(), names.join(" or ")))
            .collect();
        format!(
            "none applies to this run (against direct they need {}; against fuse_floor, \
             fuse_floor beside reseedfs_1copy or reseedfs_2copies; against mergerfs, \
             mergerfs beside reseedfs_1copy)",
            direct_goals.join("; ")
        )
    } else {
        "every job they compare failed (see the table)".to_owned()
    };
    section(&mut out, "goals of issue 18", "medians", &lines, &why);

    let mut lines = Vec::new();
    for w in workloads {
        for t in [Target::Reseedfs1, Target::Reseedfs2] {
            let Some(r) = row(w.name, t) else { continue };
            let Some(c) = r.ratio_to_nosums else { continue };
            lines.push(format!(
                "  {:<4} {:<22} {:<17} {c:.2} >= 0.90 of checksums off",
                if c >= 0.9 { "ok" } else { "MISS" },
                w.name,
                t.name()
            ));
        }
    }
    let pairs = [
        (Target::Reseedfs1, Target::Reseedfs1NoSums),
        (Target::Reseedfs2, Target::Reseedfs2NoSums),
    ];
    let why = if workloads.is_empty() {
        NO_WORKLOAD
    } else if pairs.iter().any(|&(on, off)| ran(on) && ran(off)) {
        "every job it compares failed (see the table)"
    } else {
        "not measured: it needs reseedfs_1copy_nosums or reseedfs_2copies_nosums in \
         --targets beside reseedfs_1copy or reseedfs_2copies"
    };
    section(
        &mut out,
        "goal of issue 17",
        "checksums cost within 10%; medians",
        &lines,
        why,
    );
    out
}

/// Appends `header (note):` and `lines` to `out`, or `header: why` alone when there are no
/// lines.
fn section(out: &mut String, header: &str, note: &str, lines: &[String], why: &str) {
    if lines.is_empty() {
        let _ = writeln!(out, "\n{header}: {why}");
        return;
    }
    let _ = writeln!(out, "\n{header} ({note}):");
    for line in lines {
        let _ = writeln!(out, "{line}");
    }
}

fn write_json(rows: &[Row], reseed: &[Value], scrub: Option<Value>) -> io::Result<()> {
    let mut list: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "workload": r.workload,
                "target": r.target.name(),
                "value": r.value.map(|x| (x * 10.0).round() / 10.0),
                "error": r.error,
                "unit": r.unit,
                "ratio": r.ratio.map(|x| (x * 1000.0).round() / 1000.0),
                "ratio_min": r.ratio_min.map(|x| (x * 1000.0).round() / 1000.0),
                "ratio_max": r.ratio_max.map(|x| (x * 1000.0).round() / 1000.0),
                "ratio_to_floor": r.ratio_to_floor.map(|x| (x * 1000.0).round() / 1000.0),
                "ratio_to_floor_min": r.ratio_to_floor_min.map(|x| (x * 1000.0).round() / 1000.0),
                "ratio_to_floor_max": r.ratio_to_floor_max.map(|x| (x * 1000.0).round() / 1000.0),
                "ratio_to_nosums": r.ratio_to_nosums.map(|x| (x * 1000.0).round() / 1000.0),
                "ratio_to_nosums_min": r.ratio_to_nosums_min.map(|x| (x * 1000.0).round() / 1000.0),
                "ratio_to_nosums_max": r.ratio_to_nosums_max.map(|x| (x * 1000.0).round() / 1000.0),
                "ratio_to_dev_fuse": r.ratio_to_dev_fuse.map(|x| (x * 1000.0).round() / 1000.0),
                "ratio_to_dev_fuse_min": r.ratio_to_dev_fuse_min.map(|x| (x * 1000.0).round() / 1000.0),
                "ratio_to_dev_fuse_max": r.ratio_to_dev_fuse_max.map(|x| (x * 1000.0).round() / 1000.0),
                "ratio_to_base": r.ratio_to_base.map(|x| (x * 1000.0).round() / 1000.0),
                "ratio_to_base_min": r.ratio_to_base_min.map(|x| (x * 1000.0).round() / 1000.0),
                "ratio_to_base_max": r.ratio_to_base_max.map(|x| (x * 1000.0).round() / 1000.0),
                "daemon_cpu_us_per_request": r.cpu_us_per_request.map(|x| (x * 10.0).round() / 10.0),
                "daemon_cpu_us_per_mib": r.cpu_us_per_mib.map(|x| x.round()),
                "page_cache_mib": r.cache_mib.map(|x| x.round()),
                "runs": r.runs,
            })
        })
        .collect();
    for r in reseed {
        let mut r = r.clone();
        if let Value::Object(map) = &mut r {
            map.insert("source".into(), json!("reseed.json"));
        }
        list.push(r);
    }
    list.extend(scrub);
    let dir = bench_dir();
    fs::create_dir_all(&dir).map_err(|e| with_path(e, "create", &dir))?;
    let path = dir.join("throughput.json");
    let text = serde_json::to_string_pretty(&list).map_err(io::Error::other)?;
    fs::write(&path, text + "\n").map_err(|e| with_path(e, "write", &path))?;
    println!("\nthroughput: wrote {}", path.display());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Small helpers
