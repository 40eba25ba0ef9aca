//! `cargo bench --bench throughput`: throughput of reseedfs against the same ext4 volume
//! directly, in one run, side by side.
//!
//! Needs root (loop devices, mounts, FUSE). Without it, it says so and exits 0; under
//! `CI=true` it exits 1 instead.
//!
//! # What it builds
//!
//! Two ext4 volumes on loop devices attached with `--direct-io=on`, both backed by image
//! files on the same host disk. On Volume1 it makes a folder per target, so every
//! target works on the same filesystem and the same device:
//!
//! | target | file |
//! |---|---|
//! | `direct` | `Volume1/direct/bench.dat` |
//! | `reseedfs_1copy` | a reseedfs mount (1 copy) whose one volume is a bind mount of `Volume1/pool1` |
//! | `reseedfs_2copies` | a reseedfs mount (2 copies) over bind mounts of `Volume1/pool2` and `Volume2/pool2` (two loop volumes sharing one host disk, as on this machine) |
//! | `reseedfs_2copies_nosums` | the same with `[checksums] enabled = false` (`pool2n`): the cost of block checksums, side by side |
//! | `mergerfs` | mergerfs over `Volume1/mergerfs`, with its manual's `cache.files=partial,dropcacheonclose=true` (only when `mergerfs` is installed) |
//!
//! Both reseedfs mounts are the real binary (`reseedfs init` + `reseedfs mount`, default
//! config: 8 request threads). Every FUSE mount, mergerfs included, gets the same
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
//! - reseedfs accepts `O_DIRECT` but writes its backing files without it (FUSE hands the
//!   daemon unaligned buffers; only reads of up to 64 KiB go `O_DIRECT` to the backing
//!   file): an `O_DIRECT` write through reseedfs lands in the backing page cache and
//!   reaches the disk soon after (a sequential run) or at the final `fsync`, sorted. Random writes through it
//!   can therefore beat `direct` (ratio > 1): that is a weaker `O_DIRECT`, not a faster
//!   path. Durability at `fsync` is the same.
//! - mergerfs passes `O_DIRECT` to its branch with libfuse's unaligned write buffers, so
//!   its `O_DIRECT` writes fail with `EINVAL` (shown as `failed: EINVAL`).
//! - This kind of machine is shared: the load average is printed before every round and
//!   flagged BUSY above half a load per core. Compare ratios, over several rounds.
//!
//! # Output
//!
//! A table of MiB/s or IOPS with the ratio to `direct` (median, and its range over the
//! rounds), the goals of the throughput issue checked one by one, and the same figures in
//! `target/bench/throughput.json`: a list of
//! `{"workload","target","value","unit","ratio","ratio_min","ratio_max","runs","error"}`
//! (`value` is null and `error` says why when every round failed). The reseed workload
//! belongs to `cargo bench --bench reseed`: when `target/bench/reseed.json` exists, its
//! rows are shown, labelled as such, and copied with `"source":"reseed.json"`.
//!
//! # Options
//!
//! `cargo bench --bench throughput -- [FILTER...] [--repeat N] [--seconds S]
//! [--file-mib M] [--builtin] [--targets direct,reseedfs_1copy,...] [--threads N]`
//!
//! - a FILTER keeps the workloads whose name contains it;
//! - `--repeat N` runs N rounds (default 1; use 3 or more on a shared machine);
//! - `--threads N` sets `threads` (FUSE request threads) in the reseedfs configs;
//! - `RESEEDFS_TESTBED_DIR` picks where the images go (default: the system temporary
//!   directory; it needs about 5 times the file size free).
//!
//! The daemons' pids are printed, for `perf record -p` or `strace -fc -p` during a job.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use reseedfs::testbed::daemon::{MOUNT_TIMEOUT, MountDaemon, StopRequest};
use reseedfs::testbed::rng::Rng;
use reseedfs::testbed::{self, BindMount, Testbed, with_path};
use serde_json::{Value, json};

/// The reseedfs binary built with this bench.
const BIN: &str = env!("CARGO_BIN_EXE_reseedfs");
/// The database every reseedfs pool of the bench holds.
const DB: &str = "bench";
/// The file name every target uses.
const FILE: &str = "bench.dat";
/// The readahead every FUSE mount gets (what reseedfs sets on its own mount).
const READ_AHEAD_KB: u32 = 1024;
const MIB: f64 = 1024.0 * 1024.0;

// ---------------------------------------------------------------------------------------
// Targets and workloads

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Direct,
    Reseedfs1,
    Reseedfs2,
    Reseedfs2NoSums,
    Mergerfs,
}

const TARGETS: [Target; 5] = [
    Target::Direct,
    Target::Reseedfs1,
    Target::Reseedfs2,
    Target::Reseedfs2NoSums,
    Target::Mergerfs,
];

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Reseedfs1 => "reseedfs_1copy",
            Target::Reseedfs2 => "reseedfs_2copies",
            Target::Reseedfs2NoSums => "reseedfs_2copies_nosums",
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

/// The targets of the throughput issue: (workload prefix, target, least ratio to direct).
const GOALS: [(&str, Target, f64); 8] = [
    ("seq_write_1m", Target::Reseedfs1, 0.95),
    ("seq_write_1m", Target::Reseedfs2, 0.45),
    ("seq_read_1m", Target::Reseedfs1, 0.9),
    ("seq_read_1m", Target::Reseedfs2, 0.9),
    ("rand_read_4k_qd32", Target::Reseedfs1, 0.7),
    ("rand_read_4k_qd32", Target::Reseedfs2, 0.7),
    ("rand_write_4k_qd32", Target::Reseedfs1, 0.6),
    // Not in the issue: half the 1-copy goal, as both copies share one disk.
    ("rand_write_4k_qd32", Target::Reseedfs2, 0.3),
];

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
}

impl Settings {
    fn parse(args: &[String]) -> Result<Settings, String> {
        let mut s = Settings {
            filters: Vec::new(),
            targets: TARGETS.to_vec(),
            repeat: 1,
            seconds: 5,
            file_bytes: 2 << 30,
            threads: None,
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
        WORKLOADS
            .into_iter()
            .filter(|w| self.filters.is_empty() || self.filters.iter().any(|f| w.name.contains(f)))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// main

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
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
    if workloads.is_empty() {
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
            d.target.name(),
            d.mount.pid().unwrap_or(0),
            d.mount.mountpoint().display()
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
                let cpu_before = rig.daemon_cpu(t);
                let t0 = Instant::now();
                // A target that fails a job (mergerfs refuses unaligned O_DIRECT with
                // EINVAL) is recorded as failed; the run goes on.
                let result = run_job(s, w, file);
                let wall = t0.elapsed().as_secs_f64();
                let cpu = match (cpu_before, rig.daemon_cpu(t)) {
                    (Some(a), Some(b)) if wall > 0.0 => Some((b - a) / wall),
                    _ => None,
                };
                let shown = match &result {
                    Ok(v) => format!("{v:>10.1} {:<6}", w.unit()),
                    Err(e) => {
                        let text = e.to_string();
                        let first = text.lines().next().unwrap_or_default();
                        let cut = first.char_indices().nth(90).map_or(first.len(), |(i, _)| i);
                        format!("FAILED ({}): {}", short_error(e), &first[..cut])
                    }
                };
                println!(
                    "  {:<22} {:<17} {shown}{}",
                    w.name,
                    t.name(),
                    cpu.map(|c| format!("  daemon CPU {:.0}%", c * 100.0))
                        .unwrap_or_default()
                );
                samples.push(Sample {
                    workload: w.name,
                    target: t,
                    round,
                    value: result.map_err(|e| short_error(&e)),
                });
            }
        }
    }
    println!("throughput: machine after: {}", machine_load());
    let rows = summarize(&workloads, &targets, &samples);
    let reseed = reseed_rows();
    print_table(&workloads, &targets, &rows, &reseed);
    write_json(&rows, &reseed)?;
    drop(rig);
    Ok(())
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
}

impl Rig {
    fn build(s: &Settings, mergerfs: bool) -> io::Result<Rig> {
        // Volume1 holds one file per target; Volume2 the second copy.
        let volume_bytes = s.file_bytes * 6 + (1 << 30);
        let bed = Testbed::loop_volumes(2, volume_bytes)?;
        let mut rig = Rig {
            daemons: Vec::new(),
            binds: Vec::new(),
            bed,
            files: Vec::new(),
        };
        let vol1 = rig.bed.volume_path(1);
        let vol2 = rig.bed.volume_path(2);
        for dir in [
            vol1.join("direct"),
            vol1.join("pool1"),
            vol1.join("pool2"),
            vol1.join("pool2n"),
            vol1.join("mergerfs"),
            vol2.join("pool2"),
            vol2.join("pool2n"),
        ] {
            fs::create_dir(&dir).map_err(|e| with_path(e, "create", &dir))?;
        }
        rig.files
            .push((Target::Direct, vol1.join("direct").join(FILE)));

        let root = rig.bed.root.clone();
        // Checksums are on by default; `reseedfs_2copies_nosums` turns them off.
        for (target, copies, name) in [
            (Target::Reseedfs1, 1u32, "pool1"),
            (Target::Reseedfs2, 2, "pool2"),
            (Target::Reseedfs2NoSums, 2, "pool2n"),
        ] {
            if !s.targets.contains(&target) {
                continue;
            }
            let pool = root.join(name);
            let vols = pool.join("vols");
            for k in 1..=copies {
                let source = rig.bed.volume_path(k as usize).join(name);
                rig.binds
                    .push(BindMount::new(&source, &vols.join(format!("Volume{k}")))?);
            }
            let daemon = Daemon::reseedfs(&pool, copies, s.threads, target)?;
            let file = daemon
                .mount
                .mountpoint()
                .join(DB)
                .join(format!("{DB}.db"))
                .join(FILE);
            rig.daemons.push(daemon);
            rig.files.push((target, file));
        }
        if mergerfs {
            let daemon = Daemon::mergerfs(&vol1.join("mergerfs"), &root.join("mergerfs"))?;
            rig.files
                .push((Target::Mergerfs, daemon.mount.mountpoint().join(FILE)));
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

    /// CPU seconds the daemon behind `t` has used so far.
    fn daemon_cpu(&self, t: Target) -> Option<f64> {
        let d = self.daemons.iter().find(|d| d.target == t)?;
        let stat = fs::read_to_string(format!("/proc/{}/stat", d.mount.pid()?)).ok()?;
        // Fields after the command name (which may hold spaces): state is field 3.
        let rest = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
        Some(ticks / 100.0) // USER_HZ
    }
}

/// A FUSE daemon the bench started, in its own process group (a Ctrl-C reaches only the
/// bench, which then stops it in order), under the testbed's supervisor.
struct Daemon {
    target: Target,
    mount: MountDaemon,
}

impl Daemon {
    /// `reseedfs init` (one database, `copies` copies) and `reseedfs mount` on `pool/vols`.
    fn reseedfs(
        pool: &Path,
        copies: u32,
        threads: Option<u64>,
        target: Target,
    ) -> io::Result<Daemon> {
        let dbs = pool.join("dbs");
        fs::create_dir_all(&dbs).map_err(|e| with_path(e, "create", &dbs))?;
        let config = pool.join("reseedfs.toml");
        let out = Command::new(BIN)
            .arg("init")
            .arg("--volumes")
            .arg(pool.join("vols"))
            .arg("--databases")
            .arg(&dbs)
            .args(["--database", DB, "--copies", &copies.to_string()])
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(pool.join("state"))
            .arg("--witness-dir")
            .arg(pool.join("witness"))
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "reseedfs init failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        if let Some(n) = threads {
            let text = fs::read_to_string(&config)?;
            let mut lines: Vec<String> = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("threads"))
                .map(str::to_owned)
                .collect();
            // Top-level keys go before the first table.
            let at = lines
                .iter()
                .position(|l| l.trim_start().starts_with('['))
                .unwrap_or(lines.len());
            lines.insert(at, format!("threads = {n}"));
            fs::write(&config, lines.join("\n") + "\n")?;
        }
        if target == Target::Reseedfs2NoSums {
            // `reseedfs init` writes every section with its defaults.
            let text = fs::read_to_string(&config)?;
            let off = text.replace(
                "[checksums]\nenabled = true",
                "[checksums]\nenabled = false",
            );
            if off == text {
                return Err(io::Error::other(
                    "the config written by `reseedfs init` has no `[checksums] enabled = true`",
                ));
            }
            fs::write(&config, off)?;
        }
        let log = pool.join("mount.log");
        let mut cmd = Command::new(BIN);
        cmd.arg("mount").arg("--config").arg(&config);
        Daemon::start(cmd, target, dbs, Some(config), &log, "fuse.reseedfs")
    }

    /// mergerfs over one branch, with the settings its manual recommends when mmap is
    /// needed (databases need it): page cache on, dropped on close.
    fn mergerfs(branch: &Path, mountpoint: &Path) -> io::Result<Daemon> {
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
            Target::Mergerfs,
            mountpoint.to_owned(),
            None,
            &log,
            "fuse.mergerfs",
        )?;
        raise_readahead(mountpoint);
        Ok(d)
    }

    /// Starts `cmd` and waits for its mount. Stopped with `reseedfs unmount` (`config`)
    /// or `umount`, then SIGTERM, then SIGKILL.
    fn start(
        mut cmd: Command,
        target: Target,
        mountpoint: PathBuf,
        config: Option<PathBuf>,
        log: &Path,
        fstype: &str,
    ) -> io::Result<Daemon> {
        cmd.env("RESEEDFS_LOG", "warn").process_group(0);
        let at = mountpoint.clone();
        let stop: StopRequest = Box::new(move || {
            let mut ask = match &config {
                Some(config) => {
                    let mut c = Command::new(BIN);
                    c.arg("unmount").arg("--config").arg(config);
                    c
                }
                None => {
                    let mut c = Command::new("umount");
                    c.arg(&at);
                    c
                }
            };
            match ask.stdout(Stdio::null()).stderr(Stdio::null()).status() {
                Ok(s) if s.success() => Ok(()),
                Ok(s) => Err(format!("{ask:?}: {s}")),
                Err(e) => Err(format!("{ask:?}: {e}")),
            }
        });
        let mut mount =
            MountDaemon::spawn(cmd, target.name(), &mountpoint, fstype, log)?.on_stop(stop);
        mount
            .wait_mounted(MOUNT_TIMEOUT, &|| false)
            .map_err(|why| io::Error::other(mount.describe(&why)))?;
        Ok(Daemon { target, mount })
    }
}

/// Sets the bdi `read_ahead_kb` of the FUSE mount at `mountpoint` (reseedfs does it on its
/// own mount; mergerfs gets the same, so the comparison is between the daemons).
fn raise_readahead(mountpoint: &Path) {
    let Ok(st) = rustix::fs::stat(mountpoint) else {
        return;
    };
    let knob = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        rustix::fs::major(st.st_dev),
        rustix::fs::minor(st.st_dev)
    );
    if let Err(e) = fs::write(&knob, READ_AHEAD_KB.to_string()) {
        eprintln!("throughput: cannot set {knob}: {e}");
    }
}

// ---------------------------------------------------------------------------------------
// Jobs

/// Runs workload `w` on `file`; returns MiB/s or IOPS.
fn run_job(s: &Settings, w: &Workload, file: &Path) -> io::Result<f64> {
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

/// `sync`, then drop the clean page cache, dentries and inodes.
fn drop_caches() {
    rustix::fs::sync();
    if let Err(e) = fs::write("/proc/sys/vm/drop_caches", "3") {
        eprintln!("throughput: cannot drop caches: {e}");
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
    runs: usize,
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn summarize(workloads: &[Workload], targets: &[Target], samples: &[Sample]) -> Vec<Row> {
    let mut rows = Vec::new();
    for w in workloads {
        let direct: BTreeMap<usize, f64> = samples
            .iter()
            .filter(|x| x.workload == w.name && x.target == Target::Direct)
            .filter_map(|x| Some((x.round, *x.value.as_ref().ok()?)))
            .collect();
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
            let mut ratios: Vec<f64> = mine
                .iter()
                .filter_map(|x| {
                    let v = x.value.as_ref().ok()?;
                    direct.get(&x.round).filter(|d| **d > 0.0).map(|d| v / d)
                })
                .collect();
            let ratio_min = ratios.iter().copied().reduce(f64::min);
            let ratio_max = ratios.iter().copied().reduce(f64::max);
            rows.push(Row {
                workload: w.name,
                target: t,
                unit: w.unit(),
                value: median(&mut values),
                error,
                ratio: median(&mut ratios),
                ratio_min,
                ratio_max,
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
    let mut out = String::new();
    let _ = write!(out, "\n{:<22} {:<6}", "workload", "unit");
    for t in targets {
        let _ = write!(out, " {:>26}", t.name());
    }
    out.push('\n');
    for w in workloads {
        let _ = write!(out, "{:<22} {:<6}", w.name, w.unit());
        for &t in targets {
            let cell = rows
                .iter()
                .find(|r| r.workload == w.name && r.target == t)
                .map(|r| {
                    let Some(value) = r.value else {
                        return format!("failed: {}", r.error.as_deref().unwrap_or("?"));
                    };
                    let ratio = match (r.ratio, r.ratio_min, r.ratio_max) {
                        (Some(m), Some(lo), Some(hi)) if r.runs > 1 && t != Target::Direct => {
                            format!("x{m:.2} [{lo:.2}-{hi:.2}]")
                        }
                        (Some(m), _, _) => format!("x{m:.2}"),
                        _ => "x?".to_owned(),
                    };
                    format!("{value:.1} {ratio}")
                })
                .unwrap_or_else(|| "-".to_owned());
            let _ = write!(out, " {cell:>26}");
        }
        out.push('\n');
    }
    out.push_str(
        "(value: median over the rounds; xR: ratio to direct in the same round, [range])\n",
    );

    out.push_str("\ngoals of the throughput issue (ratio to direct, median):\n");
    for (prefix, t, least) in GOALS {
        for r in rows
            .iter()
            .filter(|r| r.target == t && r.workload.starts_with(prefix))
        {
            if let Some(m) = r.ratio {
                let _ = writeln!(
                    out,
                    "  {:<4} {:<22} {:<17} {m:.2} >= {least:.2}",
                    if m >= least { "ok" } else { "MISS" },
                    r.workload,
                    t.name()
                );
            }
        }
    }
    for w in workloads {
        let row = |t: Target| rows.iter().find(|r| r.workload == w.name && r.target == t);
        let Some(m) = row(Target::Mergerfs) else {
            continue;
        };
        // Like for like: one copy against mergerfs's one branch. Two copies write twice.
        let Some(r) = row(Target::Reseedfs1) else {
            continue;
        };
        let Some(v) = r.ratio.or(r.value) else {
            continue;
        };
        let (ok, versus) = match m.ratio.or(m.value) {
            Some(mv) => (v >= mv, format!("x{v:.2} vs x{mv:.2} of direct")),
            None => (
                true,
                format!("mergerfs failed: {}", m.error.as_deref().unwrap_or("?")),
            ),
        };
        let _ = writeln!(
            out,
            "  {:<4} {:<22} {:<17} ahead of mergerfs ({versus})",
            if ok { "ok" } else { "MISS" },
            w.name,
            Target::Reseedfs1.name()
        );
    }

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

fn bench_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is `<target dir>/tmp`, honouring CARGO_TARGET_DIR.
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("bench")
}

fn write_json(rows: &[Row], reseed: &[Value]) -> io::Result<()> {
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

fn tool_works(tool: &str, args: &[&str]) -> bool {
    Command::new(tool)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn tool_version(tool: &str) -> String {
    let flag = if tool == "mergerfs" {
        "-V"
    } else {
        "--version"
    };
    Command::new(tool)
        .arg(flag)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim().to_owned())
        })
        .unwrap_or_else(|| tool.to_owned())
}

/// The load average and the busiest other processes: this 2-core machine is shared.
fn machine_load() -> String {
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let one: f64 = load.first().and_then(|l| l.parse().ok()).unwrap_or(0.0);
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    let busy = if one > cores as f64 * 0.5 {
        " (BUSY: other work is running, figures are noisy)"
    } else {
        ""
    };
    format!("load {} on {cores} cores{busy}", load.join(" "))
}
