//! `cargo bench --bench pgbench`: a database's own benchmark through reseedfs. PostgreSQL's
//! pgbench (TPC-B-like, the default script) on a plain ext4 volume, through the thinnest
//! FUSE filesystem on reseedfs's stack (the throughput bench's floor) and through reseedfs
//! with 1 and 2 copies, in one run, the targets alternating, ratios taken within each round.
//! Then SQLite on each target (`sqlite/mod.rs`): one insert per durable transaction, with
//! the rollback journal and with the WAL, a database that makes and unlinks a file per
//! commit beside one that appends.
//!
//! Needs root (loop devices, mounts, FUSE) and PostgreSQL's server binaries
//! (`/usr/lib/postgresql/<version>/bin`, Debian's `postgresql` package: the newest there is
//! used). Without them it says so and exits 0; under `CI=true` it exits 1 instead.
//!
//! # What it builds
//!
//! Two ext4 volumes on loop devices attached with `--direct-io=on`, both backed by image
//! files on the same host disk, laid out as in the throughput bench:
//!
//! | target | data directory and WAL |
//! |---|---|
//! | `native` | `Volume1/native/pgdata`, `Volume1/native/pg_wal` |
//! | `fuse_floor` | `pg/pgdata`, `pg/pg_wal` on the FUSE floor (`floor/mod.rs`: each request one system call on one backing file, reseedfs's fuser settings and request threads, `/dev/fuse`) over `Volume1/floor`: what FUSE itself costs PostgreSQL here (`ratio_1copy_to_floor`, `ratio_2copies_to_floor`) |
//! | `reseedfs_1copy` | `pg/pg.db/pgdata` and `pg/pg.log/pg_wal` on a reseedfs mount (1 copy) over a bind mount of `Volume1/pool1` |
//! | `reseedfs_2copies` | the same on a reseedfs mount (2 copies) over `Volume1/pool2` and `Volume2/pool2` |
//! | `reseedfs_1copy_base`, `reseedfs_2copies_base` | the same, over `pool1_base` and `pool2_base`, served by the binary `RESEEDFS_BENCH_BASE_BIN` names: the code before a change, in the same rounds as the code after it (only when `--targets` names them; `ratio_1copy_to_base`, `ratio_2copies_to_base`) |
//! | `reseedfs_1copy_uring`, `reseedfs_2copies_uring` | the same, over `pool1_uring` and `pool2_uring`, with `fuse_transport = "uring"` (FUSE over io_uring; only when `--targets` names them: the bench sets `enable_uring` for the run and puts it back, and fails when a daemon serves over `/dev/fuse` instead; `ratio_1copy_uring_to_dev_fuse`, `ratio_2copies_uring_to_dev_fuse`) |
//!
//! Each target gets its own cluster (`initdb`, then `pgbench -i -s SCALE`), run by the
//! `postgres` user with `fsync=on`, `synchronous_commit=on`, `full_page_writes=on` and
//! otherwise the defaults (shared_buffers 128 MB, max_wal_size 1 GB, checkpoint_timeout
//! 5 min): what a database on a disk does by default, commits durable.
//!
//! # A round
//!
//! For each target in turn (the order rotates from round to round): start its server,
//! warm up (`pgbench -T WARMUP`, not counted), run `pgbench -c CLIENTS -j JOBS -T SECONDS`
//! with a log of every transaction's latency, stop the server (`-m fast`), then run SQLite
//! for `--sqlite-seconds` in each journal mode in a folder beside the data directory
//! (`sqlite`). Only one database runs at a time, so the targets never compete. The reseedfs daemons stay mounted
//! throughout; their CPU time over the measured run is read from `/proc/<pid>/stat`.
//!
//! # Where a transaction's time goes
//!
//! Each run also reports the machine's CPU time per transaction and its idle share
//! (`/proc/stat`), PostgreSQL's own timing of its WAL writes and `fdatasync`s
//! (`pg_stat_wal` with `track_wal_io_timing = on`, reset before the run), and for a
//! reseedfs target the daemon's requests per transaction by operation with their mean time
//! (`reseedfs_request_duration_seconds` from the daemon's metrics endpoint, on a free
//! loopback port, scraped before and after the run): the `breakdown` of each round in
//! `pgbench.json`.
//!
//! # Output
//!
//! A table per round and the medians, the goals of issue 18 (1 copy at least 0.9 and 2
//! copies at least 0.8 of native TPS; p99 latency within 1.5x of native), and
//! `target/bench/pgbench.json`:
//! `{"rounds","native_tps","reseedfs_1copy_tps","reseedfs_2copies_tps","ratio_1copy",
//! "ratio_2copies","native_p99_ms","reseedfs_1copy_p99_ms","reseedfs_2copies_p99_ms",
//! "p99_ratio_1copy","p99_ratio_2copies","..._latency_avg_ms","..._daemon_cpu_us_per_tx",
//! "ratio_1copy_min","ratio_1copy_max","ratio_2copies_min","ratio_2copies_max",
//! "..._wal_write_ms","..._wal_sync_ms","..._host_cpu_us_per_tx","..._host_idle",
//! "..._daemon_{write,fsync,read,getattr}_us_per_tx","fuse_floor_tps","ratio_floor",
//! "ratio_1copy_to_floor","ratio_2copies_to_floor","ratio_1copy_to_base",
//! "ratio_2copies_to_base","settings","per_round","sqlite"}` (each round's `breakdown` in
//! `per_round`): TPS, p99, CPU and times are medians over the rounds; a ratio is taken
//! within each round, then the median (and its range). `sqlite` holds `seconds`, then per
//! journal mode (`delete`, `wal`) the same keys for SQLite (`<target>_tps`,
//! `<target>_p99_ms`, `<target>_daemon_cpu_us_per_tx`, `ratio_<suffix>` with `_min`,
//! `_max`, `p99_ratio_<suffix>`, `ratio_1copy_to_floor`, ...), and its `per_round`.
//!
//! # Options
//!
//! `cargo bench --bench pgbench -- [--repeat N] [--seconds S] [--warmup S] [--scale N]
//! [--clients N] [--jobs N] [--targets native,fuse_floor,reseedfs_1copy,reseedfs_2copies]
//! [--sqlite-seconds S] [--set key=value]...` (defaults: 3 rounds, 30 s, 5 s, scale 10, 8
//! clients, 2 threads, 10 s of SQLite per journal mode; 0 runs none).
//! `--set` changes both reseedfs configs, for experiments: `--set
//! tap.checkpoint_interval=30s`, `--set threads=16`. `RESEEDFS_TESTBED_DIR`
//! picks where the volume images go. The daemons' and servers' pids are printed, for
//! `perf record -p` during a run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use common::{Daemon, Setting, bench_dir, machine_load, median, with_path};
use reseedfs::testbed::{self, BindMount, Testbed};
use serde_json::{Value, json};

mod common;
#[path = "floor/mod.rs"]
mod floor;
#[path = "sqlite/mod.rs"]
mod sqlite;

/// The database of both reseedfs pools.
const DB: &str = "pg";
/// The user the servers run as.
const PG_USER: &str = "postgres";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Native,
    /// The thinnest FUSE filesystem on reseedfs's stack (the throughput bench's floor):
    /// what any filesystem served through fuser costs PostgreSQL here.
    Floor,
    Reseedfs1,
    Reseedfs2,
    /// `reseedfs_1copy` and `reseedfs_2copies` served by the binary
    /// `RESEEDFS_BENCH_BASE_BIN` names: the code before a change, in the same rounds as the
    /// code after it (only when `--targets` names them).
    Reseedfs1Base,
    Reseedfs2Base,
    /// `reseedfs_1copy` and `reseedfs_2copies` with `fuse_transport = "uring"` (FUSE over
    /// io_uring, issue 18 lever b; only when `--targets` names them: the bench sets
    /// `enable_uring` for the run and puts it back).
    Reseedfs1Uring,
    Reseedfs2Uring,
}

/// The targets run by default.
const TARGETS: [Target; 4] = [
    Target::Native,
    Target::Floor,
    Target::Reseedfs1,
    Target::Reseedfs2,
];

/// Every target, in the order of the tables.
const ALL_TARGETS: [Target; 8] = [
    Target::Native,
    Target::Floor,
    Target::Reseedfs1,
    Target::Reseedfs1Base,
    Target::Reseedfs1Uring,
    Target::Reseedfs2,
    Target::Reseedfs2Base,
    Target::Reseedfs2Uring,
];

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Native => "native",
            Target::Floor => "fuse_floor",
            Target::Reseedfs1 => "reseedfs_1copy",
            Target::Reseedfs2 => "reseedfs_2copies",
            Target::Reseedfs1Base => "reseedfs_1copy_base",
            Target::Reseedfs2Base => "reseedfs_2copies_base",
            Target::Reseedfs1Uring => "reseedfs_1copy_uring",
            Target::Reseedfs2Uring => "reseedfs_2copies_uring",
        }
    }

    /// The copies of a reseedfs target; `None` for `native` and the floor.
    fn copies(self) -> Option<u32> {
        match self {
            Target::Native | Target::Floor => None,
            Target::Reseedfs1 | Target::Reseedfs1Base | Target::Reseedfs1Uring => Some(1),
            Target::Reseedfs2 | Target::Reseedfs2Base | Target::Reseedfs2Uring => Some(2),
        }
    }

    /// The key suffix of its ratios to native in `pgbench.json`.
    fn suffix(self) -> Option<&'static str> {
        match self {
            Target::Native => None,
            Target::Floor => Some("floor"),
            Target::Reseedfs1 => Some("1copy"),
            Target::Reseedfs2 => Some("2copies"),
            Target::Reseedfs1Base => Some("1copy_base"),
            Target::Reseedfs2Base => Some("2copies_base"),
            Target::Reseedfs1Uring => Some("1copy_uring"),
            Target::Reseedfs2Uring => Some("2copies_uring"),
        }
    }

    /// Served over FUSE's io_uring transport.
    fn ring(self) -> bool {
        matches!(self, Target::Reseedfs1Uring | Target::Reseedfs2Uring)
    }

    /// The targets this one is compared with in the same rounds beside native (this /
    /// that), each with the key of its ratio: reseedfs against the floor and against the
    /// base build (`ratio_1copy_to_base` is reseedfs_1copy / reseedfs_1copy_base), a
    /// `_uring` target against the same reseedfs over `/dev/fuse`.
    fn references(self) -> &'static [(Target, &'static str)] {
        match self {
            Target::Reseedfs1 => &[
                (Target::Floor, "ratio_1copy_to_floor"),
                (Target::Reseedfs1Base, "ratio_1copy_to_base"),
            ],
            Target::Reseedfs2 => &[
                (Target::Floor, "ratio_2copies_to_floor"),
                (Target::Reseedfs2Base, "ratio_2copies_to_base"),
            ],
            Target::Reseedfs1Uring => &[(Target::Reseedfs1, "ratio_1copy_uring_to_dev_fuse")],
            Target::Reseedfs2Uring => &[(Target::Reseedfs2, "ratio_2copies_uring_to_dev_fuse")],
            _ => &[],
        }
    }
}

#[derive(Debug)]
struct Settings {
    repeat: usize,
    seconds: u64,
    warmup_seconds: u64,
    scale: u64,
    clients: u64,
    jobs: u64,
    targets: Vec<Target>,
    /// Changes to both reseedfs configs (`--set key=value`).
    settings: Vec<Setting>,
    /// Seconds of SQLite per journal mode, target and round after pgbench (0: none).
    sqlite_seconds: u64,
}

impl Settings {
    fn parse(args: &[String]) -> Result<Settings, String> {
        let mut s = Settings {
            repeat: 3,
            seconds: 30,
            warmup_seconds: 5,
            scale: 10,
            clients: 8,
            jobs: 2,
            targets: TARGETS.to_vec(),
            settings: Vec::new(),
            sqlite_seconds: 10,
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
                "--warmup" => s.warmup_seconds = number(arg, it.next())?,
                "--scale" => s.scale = number(arg, it.next())?,
                "--clients" => s.clients = number(arg, it.next())?,
                "--jobs" => s.jobs = number(arg, it.next())?,
                "--sqlite-seconds" => {
                    s.sqlite_seconds = it
                        .next()
                        .and_then(|v| v.parse().ok())
                        .ok_or("--sqlite-seconds needs a number (0: no SQLite)")?
                }
                "--set" => s
                    .settings
                    .push(Setting::parse(it.next().ok_or("--set needs key=value")?)?),
                "--targets" => {
                    let list = it.next().ok_or("--targets needs a list")?;
                    let mut targets = vec![Target::Native];
                    for name in list.split(',') {
                        let t = ALL_TARGETS
                            .into_iter()
                            .find(|t| t.name() == name)
                            .ok_or_else(|| format!("unknown target {name}"))?;
                        if !targets.contains(&t) {
                            targets.push(t);
                        }
                    }
                    s.targets = targets;
                }
                other => return Err(format!("unknown argument {other}")),
            }
        }
        Ok(s)
    }
}

/// What `--help` prints.
const USAGE: &str = "\
cargo bench --bench pgbench -- [--repeat N] [--seconds S] [--warmup S] [--scale N]
    [--clients N] [--jobs N] [--targets native,fuse_floor,reseedfs_1copy,reseedfs_2copies]
    [--sqlite-seconds S] [--set key=value]...

PostgreSQL's pgbench on a plain ext4 volume, through the thinnest FUSE filesystem on
reseedfs's stack (fuse_floor) and through reseedfs with 1 and 2 copies, alternating,
ratios of TPS and p99 latency taken within each round; then SQLite (one insert per
durable transaction, rollback journal and WAL) in the same place. Needs root and
PostgreSQL's server (apt-get install postgresql). Writes target/bench/pgbench.json.

  --repeat N        rounds (default 3)
  --seconds S       measured seconds per target and round (default 30)
  --warmup S        unmeasured seconds before (default 5)
  --scale N         pgbench -i -s N (default 10)
  --clients N       pgbench -c N (default 8)
  --jobs N          pgbench -j N (default 2)
  --sqlite-seconds S  SQLite's seconds per journal mode, target and round (default 10;
                    0: no SQLite)
  --targets LIST    which targets run (also reseedfs_1copy_base and reseedfs_2copies_base:
                    the binary RESEEDFS_BENCH_BASE_BIN names, in the same rounds;
                    reseedfs_1copy_uring and reseedfs_2copies_uring: FUSE over
                    io_uring, enable_uring set for the run and put back)
  --set key=value   change both reseedfs configs (threads=4, tap.checkpoint_interval=30s)
  -h, --help        this text

RESEEDFS_TESTBED_DIR picks where the volume images go.";

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
        println!("pgbench: run it with `cargo bench --bench pgbench` (as root)");
        return ExitCode::SUCCESS;
    }
    let settings = match Settings::parse(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pgbench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let missing = match (testbed::mount_privileges(), pg_bin()) {
        (Err(reason), _) => Some(format!("this benchmark needs root: {reason}")),
        (Ok(()), None) => Some(
            "no PostgreSQL server under /usr/lib/postgresql (apt-get install postgresql)"
                .to_owned(),
        ),
        (Ok(()), Some(_)) => None,
    };
    if let Some(why) = missing {
        println!("pgbench: SKIPPED: {why}");
        if ci {
            eprintln!("pgbench: a skipped benchmark is a failure under CI=true");
            return ExitCode::FAILURE;
        }
        return ExitCode::SUCCESS;
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("pgbench: cannot install a signal handler: {e}");
            return ExitCode::FAILURE;
        }
    }
    match run(&settings, &stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgbench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The newest PostgreSQL server binaries installed, if any.
fn pg_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| {
            ["initdb", "pg_ctl", "pgbench", "postgres"]
                .iter()
                .all(|p| bin.join(p).exists())
        })
        .collect();
    versions.sort();
    versions.pop()
}

fn run(s: &Settings, stop: &AtomicBool) -> io::Result<()> {
    let bin = pg_bin().ok_or_else(|| io::Error::other("PostgreSQL binaries vanished"))?;
    let version = command_output(Command::new(bin.join("postgres")).arg("--version"))
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| bin.display().to_string());
    println!(
        "pgbench: {version}; scale {}, {} clients, {} threads, {} s per run after {} s of \
         warm-up, {} round(s)",
        s.scale, s.clients, s.jobs, s.seconds, s.warmup_seconds, s.repeat
    );
    if !s.settings.is_empty() {
        let set: Vec<String> = s.settings.iter().map(Setting::text).collect();
        println!("pgbench: reseedfs config changed: {}", set.join(", "));
    }
    println!("pgbench: machine: {}", machine_load());
    let _reporting = common::page_reporting_off("pgbench", 4 << 30);
    // FUSE over io_uring is offered at INIT only while `enable_uring` is set: on for the
    // run when a `_uring` target is measured, put back as it was at the end.
    let _uring = common::uring_for_run("pgbench", s.targets.iter().any(|t| t.ring()))?;

    let started = Instant::now();
    let rig = Rig::build(s, &bin)?;
    println!(
        "pgbench: {} clusters ready in {:.0} s under {}",
        rig.clusters.len(),
        started.elapsed().as_secs_f64(),
        rig.bed.root.display()
    );
    for d in &rig.daemons {
        println!(
            "pgbench: {} is pid {} at {}",
            d.label,
            d.pid(),
            d.mountpoint().display()
        );
    }

    let mut samples: Vec<Sample> = Vec::new();
    let mut lite_samples: Vec<LiteSample> = Vec::new();
    for round in 0..s.repeat {
        println!(
            "pgbench: round {}/{}; machine: {}",
            round + 1,
            s.repeat,
            machine_load()
        );
        let mut order = s.targets.clone();
        let shift = round % order.len();
        order.rotate_left(shift);
        for t in order {
            if stop.load(Ordering::Relaxed) {
                return Err(io::Error::other("interrupted; cleaning up"));
            }
            let cluster = rig
                .cluster(t)
                .ok_or_else(|| io::Error::other("no cluster"))?;
            let daemon = rig.daemons.iter().find(|d| d.label == t.name());
            if let Some(d) = daemon {
                d.check()?;
            }
            let sample = cluster.measure(s, daemon, round)?;
            if let Some(d) = daemon {
                d.check()?;
            }
            println!(
                "  {:<17} {:>8.1} tps  latency avg {:>6.2} ms, p99 {:>6.2} ms{}",
                t.name(),
                sample.tps,
                sample.latency_avg_ms,
                sample.p99_ms,
                sample
                    .cpu_us_per_tx
                    .map(|c| format!("  daemon CPU {c:.0} us/transaction"))
                    .unwrap_or_default()
            );
            println!("    {}", sample.breakdown.line());
            samples.push(sample);
            if s.sqlite_seconds > 0 {
                for journal in sqlite::JOURNALS {
                    let lite = LiteSample::measure(cluster, daemon, journal, s, round)?;
                    println!(
                        "    SQLite {:<6} {:>8.1} tps  p99 {:>6.2} ms{}",
                        journal.name(),
                        lite.tps,
                        lite.p99_ms,
                        lite.cpu_us_per_tx
                            .map(|c| format!("  daemon CPU {c:.0} us/transaction"))
                            .unwrap_or_default()
                    );
                    lite_samples.push(lite);
                }
                if let Some(d) = daemon {
                    d.check()?;
                }
            }
        }
    }
    println!("pgbench: machine after: {}", machine_load());
    let mut summary = summarize(s, &samples);
    if s.sqlite_seconds > 0 {
        summary["sqlite"] = summarize_sqlite(s, &lite_samples);
    }
    print_summary(&summary);
    let dir = bench_dir();
    fs::create_dir_all(&dir).map_err(|e| with_path(e, "create", &dir))?;
    let path = dir.join("pgbench.json");
    let text = serde_json::to_string_pretty(&summary).map_err(io::Error::other)?;
    fs::write(&path, text + "\n").map_err(|e| with_path(e, "write", &path))?;
    println!("\npgbench: wrote {}", path.display());
    drop(rig);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The rig

/// Fields drop in order: the clusters (servers stopped), the daemons, the bind mounts,
/// then the testbed.
struct Rig {
    clusters: Vec<Cluster>,
    daemons: Vec<Daemon>,
    binds: Vec<BindMount>,
    bed: Testbed,
}

impl Rig {
    fn build(s: &Settings, bin: &Path) -> io::Result<Rig> {
        // Per cluster: the data (about 16 MB per unit of scale) and up to max_wal_size of
        // WAL (1 GiB) plus headroom; Volume1 holds every target's cluster.
        let cluster_bytes = s.scale * (16 << 20) * 2 + (2 << 30);
        let bed = Testbed::loop_volumes(2, cluster_bytes * s.targets.len() as u64 + (1 << 30))?;
        let mut rig = Rig {
            clusters: Vec::new(),
            daemons: Vec::new(),
            binds: Vec::new(),
            bed,
        };
        // The postgres user must reach the data directories: o+x on every folder above.
        let mut dir = rig.bed.root.clone();
        while dir != Path::new("/") {
            let mode = fs::metadata(&dir)
                .map_err(|e| with_path(e, "stat", &dir))?
                .permissions();
            let mut p = mode.clone();
            p.set_mode(mode.mode() | 0o001);
            fs::set_permissions(&dir, p).map_err(|e| with_path(e, "chmod", &dir))?;
            dir = match dir.parent() {
                Some(d) => d.to_owned(),
                None => break,
            };
        }
        let vol1 = rig.bed.volume_path(1);
        let vol2 = rig.bed.volume_path(2);
        for d in [
            vol1.join("native"),
            vol1.join("floor"),
            vol1.join("pool1"),
            vol1.join("pool2"),
            vol2.join("pool2"),
        ] {
            fs::create_dir(&d).map_err(|e| with_path(e, "create", &d))?;
        }
        let root = rig.bed.root.clone();
        // The servers' sockets and logs, and pgbench's transaction logs: the postgres
        // user's.
        let run_dir = root.join("pg");
        fs::create_dir(&run_dir).map_err(|e| with_path(e, "create", &run_dir))?;
        chown(&run_dir)?;

        let port_base = 54000 + std::process::id() % 900 * 10;
        for (n, &t) in s.targets.iter().enumerate() {
            let mut metrics = None;
            let (data_parent, wal_parent) = match t {
                Target::Native => (vol1.join("native"), vol1.join("native")),
                Target::Floor => {
                    // As many request threads as reseedfs's default, honest O_DIRECT
                    // (PostgreSQL's WAL uses none here), over /dev/fuse.
                    let threads =
                        reseedfs::config::Config::new(PathBuf::new(), PathBuf::new(), Vec::new())
                            .threads;
                    let daemon = floor::daemon(
                        t.name(),
                        &vol1.join("floor"),
                        &root.join("floor"),
                        threads,
                        floor::Direct::Honest,
                        floor::Transport::DevFuse,
                        false,
                    )?;
                    let pg = daemon.mountpoint().join("pg");
                    fs::create_dir(&pg).map_err(|e| with_path(e, "create", &pg))?;
                    rig.daemons.push(daemon);
                    (pg.clone(), pg)
                }
                Target::Reseedfs1
                | Target::Reseedfs2
                | Target::Reseedfs1Base
                | Target::Reseedfs2Base
                | Target::Reseedfs1Uring
                | Target::Reseedfs2Uring => {
                    let copies = t.copies().unwrap_or(1);
                    let base = matches!(t, Target::Reseedfs1Base | Target::Reseedfs2Base);
                    let pool_name = format!(
                        "pool{copies}{}",
                        if base {
                            "_base"
                        } else if t.ring() {
                            "_uring"
                        } else {
                            ""
                        }
                    );
                    let pool = root.join(&pool_name);
                    for k in 1..=copies {
                        let source = rig.bed.volume_path(k as usize).join(&pool_name);
                        fs::create_dir_all(&source).map_err(|e| with_path(e, "create", &source))?;
                        let at = pool.join("vols").join(format!("Volume{k}"));
                        rig.binds.push(BindMount::new(&source, &at)?);
                    }
                    // Each daemon serves its request timings on a port of its own: the
                    // breakdown of a transaction's time (see `Breakdown`).
                    let port = free_port()?;
                    let mut settings = s.settings.clone();
                    settings.push(
                        Setting::parse(&format!("metrics=127.0.0.1:{port}"))
                            .map_err(io::Error::other)?,
                    );
                    metrics = Some(port);
                    if t.ring() {
                        settings.push(
                            Setting::parse("fuse_transport=uring").map_err(io::Error::other)?,
                        );
                    }
                    let daemon = if base {
                        let bin = std::env::var_os("RESEEDFS_BENCH_BASE_BIN").ok_or_else(|| {
                            io::Error::other(format!(
                                "{}: set RESEEDFS_BENCH_BASE_BIN to the reseedfs binary to \
                                 compare with",
                                t.name()
                            ))
                        })?;
                        Daemon::reseedfs_with(
                            Path::new(&bin),
                            t.name(),
                            &pool,
                            DB,
                            copies,
                            &settings,
                        )
                    } else {
                        Daemon::reseedfs(t.name(), &pool, DB, copies, &settings)
                    }
                    .map_err(|e| io::Error::other(format!("{}: {e}", t.name())))?;
                    // A ring that fell back to /dev/fuse would measure the wrong thing.
                    if t.ring() && common::ring_threads(daemon.pid()) == 0 {
                        return Err(io::Error::other(format!(
                            "{}: reseedfs serves over /dev/fuse, not the ring (its log: {})",
                            t.name(),
                            pool.display()
                        )));
                    }
                    let db = daemon.mountpoint().join(DB);
                    rig.daemons.push(daemon);
                    (db.join(format!("{DB}.db")), db.join(format!("{DB}.log")))
                }
            };
            chown(&data_parent)?;
            chown(&wal_parent)?;
            let cluster = Cluster {
                target: t,
                bin: bin.to_owned(),
                data: data_parent.join("pgdata"),
                socket_dir: run_dir.clone(),
                port: (port_base + n as u32).to_string(),
                log: run_dir.join(format!("{}.log", t.name())),
                logs: run_dir.join(format!("{}-txlog", t.name())),
                sqlite_dir: data_parent.join("sqlite"),
                metrics,
            };
            fs::create_dir(&cluster.sqlite_dir)
                .map_err(|e| with_path(e, "create", &cluster.sqlite_dir))?;
            let started = Instant::now();
            cluster.init(s, &wal_parent.join("pg_wal"))?;
            println!(
                "pgbench: {} initialized (initdb, pgbench -i -s {}) in {:.0} s",
                t.name(),
                s.scale,
                started.elapsed().as_secs_f64()
            );
            rig.clusters.push(cluster);
        }
        Ok(rig)
    }

    fn cluster(&self, t: Target) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.target == t)
    }
}

fn chown(path: &Path) -> io::Result<()> {
    let out = command_output(
        Command::new("chown")
            .arg(format!("{PG_USER}:{PG_USER}"))
            .arg(path),
    )?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "chown {PG_USER} {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

fn command_output(cmd: &mut Command) -> io::Result<Output> {
    cmd.stdin(Stdio::null()).output()
}

/// One PostgreSQL cluster of a target.
struct Cluster {
    target: Target,
    bin: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    port: String,
    /// The server's log.
    log: PathBuf,
    /// Where pgbench writes its per-transaction logs.
    logs: PathBuf,
    /// Where SQLite's databases go, beside the data directory.
    sqlite_dir: PathBuf,
    /// The port of the reseedfs daemon's metrics, for a reseedfs target.
    metrics: Option<u16>,
}

impl Cluster {
    /// Runs `program` (a PostgreSQL binary) as the postgres user.
    fn as_postgres(&self, program: &str, args: &[&str]) -> io::Result<Output> {
        command_output(
            Command::new("runuser")
                .args(["-u", PG_USER, "--"])
                .arg(self.bin.join(program))
                .args(args),
        )
    }

    fn check(&self, out: io::Result<Output>, what: &str) -> io::Result<Output> {
        let out = out?;
        if out.status.success() {
            return Ok(out);
        }
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        Err(io::Error::other(format!(
            "{}: {what} failed ({}):\n{}{}\nserver log (last lines):\n{}",
            self.target.name(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )))
    }

    fn conn(&self) -> Vec<String> {
        vec![
            "-h".into(),
            self.socket_dir.display().to_string(),
            "-p".into(),
            self.port.clone(),
            "-U".into(),
            PG_USER.into(),
        ]
    }

    fn init(&self, s: &Settings, waldir: &Path) -> io::Result<()> {
        let data = self.data.display().to_string();
        let wal = waldir.display().to_string();
        self.check(
            self.as_postgres(
                "initdb",
                &[
                    "-D", &data, "--waldir", &wal, "-A", "trust", "-U", PG_USER, "-E", "UTF8",
                ],
            ),
            "initdb",
        )?;
        self.start()?;
        let mut args = self.conn();
        args.extend(["-i", "-q", "-s"].map(String::from));
        args.push(s.scale.to_string());
        args.push("postgres".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = self.check(self.as_postgres("pgbench", &args), "pgbench -i");
        self.stop()?;
        r.map(drop)
    }

    fn start(&self) -> io::Result<()> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses='' -c fsync=on -c synchronous_commit=on \
             -c full_page_writes=on -c track_wal_io_timing=on",
            self.port,
            self.socket_dir.display()
        );
        let data = self.data.display().to_string();
        let log = self.log.display().to_string();
        self.check(
            self.as_postgres(
                "pg_ctl",
                &["-D", &data, "-l", &log, "-w", "-o", &opts, "start"],
            ),
            "pg_ctl start",
        )
        .map(drop)
    }

    fn stop(&self) -> io::Result<()> {
        let data = self.data.display().to_string();
        self.check(
            self.as_postgres("pg_ctl", &["-D", &data, "-w", "-m", "fast", "stop"]),
            "pg_ctl stop",
        )
        .map(drop)
    }

    /// The answer of `psql -c query` (unaligned, tuples only), as the postgres user.
    fn sql(&self, query: &str) -> io::Result<String> {
        let mut args = self.conn();
        args.extend(["-X", "-A", "-t", "-c", query, "postgres"].map(String::from));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.check(self.as_postgres("psql", &args), query)?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// The postmaster's pid, from `postmaster.pid`.
    fn server_pid(&self) -> Option<u32> {
        let text = fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// `pgbench -T seconds`; `log`: write every transaction's latency under `self.logs`.
    fn pgbench(&self, s: &Settings, seconds: u64, log: bool) -> io::Result<String> {
        let mut args = self.conn();
        args.extend([
            "-c".to_owned(),
            s.clients.to_string(),
            "-j".to_owned(),
            s.jobs.to_string(),
            "-T".to_owned(),
            seconds.to_string(),
        ]);
        if log {
            let _ = fs::remove_dir_all(&self.logs);
            fs::create_dir_all(&self.logs).map_err(|e| with_path(e, "create", &self.logs))?;
            chown(&self.logs)?;
            args.push("-l".into());
            args.push(format!("--log-prefix={}/tx", self.logs.display()));
        }
        args.push("postgres".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.check(self.as_postgres("pgbench", &args), "pgbench")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// One measured run: start, warm up, run, stop.
    fn measure(&self, s: &Settings, daemon: Option<&Daemon>, round: usize) -> io::Result<Sample> {
        self.start()?;
        let r = (|| -> io::Result<Sample> {
            self.pgbench(s, s.warmup_seconds, false)?;
            self.sql("select pg_stat_reset_shared('wal')")?;
            let ops_before = self.metrics.map(scrape_request_times).transpose()?;
            let cpu_before = daemon.and_then(Daemon::cpu_seconds);
            let host_before = host_cpu();
            let report = self.pgbench(s, s.seconds, true)?;
            let host = host_cpu().zip(host_before).map(|(b, a)| b.since(&a));
            let cpu = match (cpu_before, daemon.and_then(Daemon::cpu_seconds)) {
                (Some(a), Some(b)) => Some(b - a),
                _ => None,
            };
            let ops_after = self.metrics.map(scrape_request_times).transpose()?;
            let wal = self.sql(
                "select wal_write, wal_sync, wal_write_time, wal_sync_time from pg_stat_wal",
            )?;
            let tps = report_value(&report, "tps = ").ok_or_else(|| {
                io::Error::other(format!("no tps in pgbench's report:\n{report}"))
            })?;
            let latency_avg_ms = report_value(&report, "latency average = ").unwrap_or(0.0);
            let transactions = report_value(&report, "number of transactions actually processed: ")
                .unwrap_or(tps * s.seconds as f64);
            let mut latencies = self.latencies_us()?;
            let p99_ms = percentile(&mut latencies, 0.99).map_or(0.0, |us| us / 1000.0);
            let breakdown = Breakdown::new(&wal, ops_before, ops_after, host, transactions)
                .map_err(|e| io::Error::other(format!("{}: {e}", self.target.name())))?;
            Ok(Sample {
                target: self.target,
                round,
                tps,
                latency_avg_ms,
                p99_ms,
                cpu_us_per_tx: cpu
                    .filter(|_| transactions > 0.0)
                    .map(|c| c / transactions * 1e6),
                breakdown,
            })
        })();
        let stopped = self.stop();
        let sample = r?;
        stopped?;
        Ok(sample)
    }

    /// Every transaction's latency (µs) from pgbench's logs: `client_id transaction_no
    /// time script_no time_epoch time_us`, `time` being the latency.
    fn latencies_us(&self) -> io::Result<Vec<f64>> {
        let mut all = Vec::new();
        for e in fs::read_dir(&self.logs).map_err(|e| with_path(e, "read", &self.logs))? {
            let path = e?.path();
            let text = fs::read_to_string(&path).map_err(|e| with_path(e, "read", &path))?;
            all.extend(
                text.lines()
                    .filter_map(|l| l.split_whitespace().nth(2)?.parse::<f64>().ok()),
            );
        }
        Ok(all)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.server_pid().is_some() {
            let data = self.data.display().to_string();
            let _ = self.as_postgres("pg_ctl", &["-D", &data, "-w", "-m", "immediate", "stop"]);
        }
    }
}

/// The number after `key` on the line of pgbench's report that has it.
fn report_value(report: &str, key: &str) -> Option<f64> {
    report.lines().find_map(|l| {
        let rest = &l[l.find(key)? + key.len()..];
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn percentile(v: &mut [f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    Some(v[i])
}

// ---------------------------------------------------------------------------------------
// Results

struct Sample {
    target: Target,
    round: usize,
    tps: f64,
    latency_avg_ms: f64,
    p99_ms: f64,
    cpu_us_per_tx: Option<f64>,
    breakdown: Breakdown,
}

/// One SQLite run (see `sqlite/mod.rs`) of a target in a round.
struct LiteSample {
    target: Target,
    journal: sqlite::Journal,
    round: usize,
    tps: f64,
    p99_ms: f64,
    cpu_us_per_tx: Option<f64>,
}

impl LiteSample {
    /// SQLite beside the target's cluster, its server stopped.
    fn measure(
        cluster: &Cluster,
        daemon: Option<&Daemon>,
        journal: sqlite::Journal,
        s: &Settings,
        round: usize,
    ) -> io::Result<LiteSample> {
        let cpu_before = daemon.and_then(Daemon::cpu_seconds);
        let mut run = sqlite::run(&cluster.sqlite_dir, journal, s.sqlite_seconds)
            .map_err(|e| io::Error::other(format!("{}: {e}", cluster.target.name())))?;
        let cpu = cpu_before
            .zip(daemon.and_then(Daemon::cpu_seconds))
            .map(|(a, b)| b - a);
        Ok(LiteSample {
            target: cluster.target,
            journal,
            round,
            tps: run.tps,
            p99_ms: percentile(&mut run.latencies_us, 0.99).map_or(0.0, |us| us / 1000.0),
            cpu_us_per_tx: cpu
                .filter(|_| run.transactions > 0)
                .map(|c| c / run.transactions as f64 * 1e6),
        })
    }
}

/// Where a measured run's transactions spent their time: PostgreSQL's WAL writes and
/// syncs (`pg_stat_wal` with `track_wal_io_timing`), and for a reseedfs target the
/// daemon's requests by operation (`reseedfs_request_duration_seconds`, the difference
/// of two scrapes around the run).
struct Breakdown {
    /// WAL `write` calls and `fdatasync` calls per transaction.
    wal_writes_per_tx: f64,
    wal_syncs_per_tx: f64,
    /// Their mean time (ms).
    wal_write_ms: f64,
    wal_sync_ms: f64,
    /// Per operation: requests per transaction, mean time per request (µs).
    ops: BTreeMap<String, (f64, f64)>,
    /// The whole machine's CPU time per transaction (µs, every process and the kernel),
    /// and the share of the CPUs idle (or waiting for I/O) during the run.
    host_cpu_us_per_tx: Option<f64>,
    host_idle: Option<f64>,
}

/// The machine's CPU time, from `/proc/stat` (in USER_HZ ticks).
#[derive(Clone, Copy)]
struct HostCpu {
    busy: f64,
    idle: f64,
}

impl HostCpu {
    fn since(&self, before: &HostCpu) -> HostCpu {
        HostCpu {
            busy: self.busy - before.busy,
            idle: self.idle - before.idle,
        }
    }
}

/// The first line of `/proc/stat`: busy (user, nice, system, irq, softirq, steal) and idle
/// (idle, iowait) ticks of all CPUs.
fn host_cpu() -> Option<HostCpu> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<f64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let at = |i: usize| f.get(i).copied().unwrap_or(0.0);
    Some(HostCpu {
        busy: at(0) + at(1) + at(2) + at(5) + at(6) + at(7),
        idle: at(3) + at(4),
    })
}

/// Requests and seconds spent per operation, as a daemon's metrics count them.
type RequestTimes = BTreeMap<String, (f64, f64)>;

impl Breakdown {
    fn new(
        wal: &str,
        before: Option<RequestTimes>,
        after: Option<RequestTimes>,
        host: Option<HostCpu>,
        transactions: f64,
    ) -> Result<Breakdown, String> {
        let f: Vec<f64> = wal
            .split('|')
            .map(|x| x.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("pg_stat_wal answered {wal:?}: {e}"))?;
        let [writes, syncs, write_ms, sync_ms] = f[..] else {
            return Err(format!("pg_stat_wal answered {wal:?}, not four numbers"));
        };
        let per = |n: f64| {
            if transactions > 0.0 {
                n / transactions
            } else {
                0.0
            }
        };
        let mean = |ms: f64, n: f64| if n > 0.0 { ms / n } else { 0.0 };
        let mut ops = BTreeMap::new();
        if let (Some(before), Some(after)) = (before, after) {
            for (op, &(n1, s1)) in &after {
                let (n0, s0) = before.get(op).copied().unwrap_or((0.0, 0.0));
                let n = n1 - n0;
                if n > 0.0 {
                    ops.insert(op.clone(), (per(n), (s1 - s0) / n * 1e6));
                }
            }
        }
        Ok(Breakdown {
            wal_writes_per_tx: per(writes),
            wal_syncs_per_tx: per(syncs),
            wal_write_ms: mean(write_ms, writes),
            wal_sync_ms: mean(sync_ms, syncs),
            ops,
            host_cpu_us_per_tx: host
                .filter(|_| transactions > 0.0)
                .map(|h| h.busy / 100.0 / transactions * 1e6),
            host_idle: host
                .filter(|h| h.busy + h.idle > 0.0)
                .map(|h| h.idle / (h.busy + h.idle)),
        })
    }

    /// The daemon's time per transaction (µs) in operation `op`.
    fn op_us_per_tx(&self, op: &str) -> f64 {
        self.ops.get(op).map_or(0.0, |(n, us)| n * us)
    }

    /// One line: the WAL, then the daemon's operations that took most time per transaction.
    fn line(&self) -> String {
        let mut text = format!(
            "WAL {:.2} writes/tx {:.3} ms, {:.2} syncs/tx {:.3} ms",
            self.wal_writes_per_tx, self.wal_write_ms, self.wal_syncs_per_tx, self.wal_sync_ms
        );
        if let (Some(cpu), Some(idle)) = (self.host_cpu_us_per_tx, self.host_idle) {
            let _ = write!(
                text,
                "; machine CPU {cpu:.0} us/tx, {:.0}% idle",
                idle * 100.0
            );
        }
        let mut ops: Vec<(&String, &(f64, f64))> = self.ops.iter().collect();
        ops.sort_by(|a, b| (b.1.0 * b.1.1).total_cmp(&(a.1.0 * a.1.1)));
        if !ops.is_empty() {
            text.push_str("; daemon per tx:");
            for (op, (n, us)) in ops.into_iter().take(6) {
                let _ = write!(text, " {op} {n:.2}x{us:.0}us");
            }
        }
        text
    }

    fn json(&self) -> Value {
        let ops: serde_json::Map<String, Value> = self
            .ops
            .iter()
            .map(|(op, (n, us))| {
                (
                    op.clone(),
                    json!({"per_tx": round3(*n), "mean_us": round3(*us),
                           "us_per_tx": round3(n * us)}),
                )
            })
            .collect();
        json!({
            "wal_writes_per_tx": round3(self.wal_writes_per_tx),
            "wal_write_ms": round3(self.wal_write_ms),
            "wal_syncs_per_tx": round3(self.wal_syncs_per_tx),
            "wal_sync_ms": round3(self.wal_sync_ms),
            "daemon_ops": ops,
            "host_cpu_us_per_tx": self.host_cpu_us_per_tx.map(round3),
            "host_idle": self.host_idle.map(round3),
        })
    }
}

/// A free TCP port on the loopback (for a daemon's metrics; the port is free when asked).
fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `reseedfs_request_duration_seconds`'s count and sum per operation, from the daemon's
/// metrics at `127.0.0.1:port`.
fn scrape_request_times(port: u16) -> io::Result<RequestTimes> {
    use std::io::Read as _;
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port))?;
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(
        conn,
        "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    conn.read_to_string(&mut text)?;
    let mut times = RequestTimes::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("reseedfs_request_duration_seconds_") else {
            continue;
        };
        let (which, rest) = match rest.split_once("{op=\"") {
            Some(x) => x,
            None => continue,
        };
        let Some((op, value)) = rest.split_once("\"} ") else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let e = times.entry(op.to_owned()).or_default();
        match which {
            "count" => e.0 = value,
            "sum" => e.1 = value,
            _ => {}
        }
    }
    if times.is_empty() {
        return Err(io::Error::other(format!(
            "127.0.0.1:{port}/metrics has no reseedfs_request_duration_seconds"
        )));
    }
    Ok(times)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn summarize(s: &Settings, samples: &[Sample]) -> Value {
    let of = |t: Target| samples.iter().filter(move |x| x.target == t);
    let med = |t: Target, f: &dyn Fn(&Sample) -> Option<f64>| {
        let mut v: Vec<f64> = of(t).filter_map(f).collect();
        median(&mut v).map(round3)
    };
    let native: BTreeMap<usize, &Sample> = of(Target::Native).map(|x| (x.round, x)).collect();
    // Ratios within a round, then the median and range.
    let ratio = |t: Target, f: &dyn Fn(&Sample) -> f64| {
        let mut v: Vec<f64> = of(t)
            .filter_map(|x| {
                let n = f(native.get(&x.round)?);
                (n > 0.0).then(|| f(x) / n)
            })
            .collect();
        let lo = v.iter().copied().reduce(f64::min).map(round3);
        let hi = v.iter().copied().reduce(f64::max).map(round3);
        (median(&mut v).map(round3), lo, hi)
    };
    let mut doc = serde_json::Map::new();
    doc.insert("rounds".into(), json!(s.repeat));
    for t in ALL_TARGETS {
        let key = t.name();
        doc.insert(format!("{key}_tps"), json!(med(t, &|x| Some(x.tps))));
        doc.insert(format!("{key}_p99_ms"), json!(med(t, &|x| Some(x.p99_ms))));
        doc.insert(
            format!("{key}_latency_avg_ms"),
            json!(med(t, &|x| Some(x.latency_avg_ms))),
        );
        doc.insert(
            format!("{key}_wal_sync_ms"),
            json!(med(t, &|x| Some(x.breakdown.wal_sync_ms))),
        );
        doc.insert(
            format!("{key}_wal_write_ms"),
            json!(med(t, &|x| Some(x.breakdown.wal_write_ms))),
        );
        doc.insert(
            format!("{key}_host_cpu_us_per_tx"),
            json!(med(t, &|x| x.breakdown.host_cpu_us_per_tx)),
        );
        doc.insert(
            format!("{key}_host_idle"),
            json!(med(t, &|x| x.breakdown.host_idle)),
        );
        // The floor has no metrics endpoint: its CPU only.
        if t.copies().is_some() {
            for op in ["write", "fsync", "read", "getattr"] {
                doc.insert(
                    format!("{key}_daemon_{op}_us_per_tx"),
                    json!(med(t, &|x| Some(x.breakdown.op_us_per_tx(op)))),
                );
            }
        }
        if t != Target::Native {
            doc.insert(
                format!("{key}_daemon_cpu_us_per_tx"),
                json!(med(t, &|x| x.cpu_us_per_tx)),
            );
        }
    }
    for t in ALL_TARGETS {
        let Some(suffix) = t.suffix() else { continue };
        let (m, lo, hi) = ratio(t, &|x| x.tps);
        doc.insert(format!("ratio_{suffix}"), json!(m));
        doc.insert(format!("ratio_{suffix}_min"), json!(lo));
        doc.insert(format!("ratio_{suffix}_max"), json!(hi));
        let (p, _, _) = ratio(t, &|x| x.p99_ms);
        doc.insert(format!("p99_ratio_{suffix}"), json!(p));
    }
    // Against the floor (what FUSE itself costs), the build against the base build
    // (`RESEEDFS_BENCH_BASE_BIN`), the ring against `/dev/fuse`, in the same rounds.
    for t in ALL_TARGETS {
        for &(reference, key) in t.references() {
            let refs: BTreeMap<usize, f64> = of(reference).map(|x| (x.round, x.tps)).collect();
            let mut v: Vec<f64> = of(t)
                .filter_map(|x| refs.get(&x.round).filter(|b| **b > 0.0).map(|b| x.tps / b))
                .collect();
            if !v.is_empty() {
                doc.insert(key.into(), json!(median(&mut v).map(round3)));
            }
        }
    }
    doc.insert(
        "settings".into(),
        json!({
            "scale": s.scale, "clients": s.clients, "jobs": s.jobs,
            "seconds": s.seconds, "warmup_seconds": s.warmup_seconds,
            "reseedfs_config": s.settings.iter().map(Setting::text).collect::<Vec<_>>(),
        }),
    );
    let per_round: Vec<Value> = samples
        .iter()
        .map(|x| {
            json!({
                "round": x.round + 1, "target": x.target.name(), "tps": round3(x.tps),
                "latency_avg_ms": round3(x.latency_avg_ms), "p99_ms": round3(x.p99_ms),
                "daemon_cpu_us_per_tx": x.cpu_us_per_tx.map(round3),
                "breakdown": x.breakdown.json(),
            })
        })
        .collect();
    doc.insert("per_round".into(), Value::Array(per_round));
    Value::Object(doc)
}

/// SQLite's figures, per journal mode as `summarize`'s: medians over the rounds, ratios
/// within a round (to native, to the floor, to the base build), then their median.
fn summarize_sqlite(s: &Settings, samples: &[LiteSample]) -> Value {
    let mut doc = serde_json::Map::new();
    doc.insert("seconds".into(), json!(s.sqlite_seconds));
    for journal in sqlite::JOURNALS {
        let of = |t: Target| {
            samples
                .iter()
                .filter(move |x| x.target == t && x.journal == journal)
        };
        let within = |t: Target, reference: Target, f: &dyn Fn(&LiteSample) -> f64| {
            let refs: BTreeMap<usize, f64> = of(reference).map(|x| (x.round, f(x))).collect();
            let mut v: Vec<f64> = of(t)
                .filter_map(|x| refs.get(&x.round).filter(|b| **b > 0.0).map(|b| f(x) / b))
                .collect();
            let lo = v.iter().copied().reduce(f64::min).map(round3);
            let hi = v.iter().copied().reduce(f64::max).map(round3);
            (median(&mut v).map(round3), lo, hi)
        };
        let mut mode = serde_json::Map::new();
        for t in ALL_TARGETS {
            let key = t.name();
            let med = |f: &dyn Fn(&LiteSample) -> Option<f64>| {
                let mut v: Vec<f64> = of(t).filter_map(f).collect();
                median(&mut v).map(round3)
            };
            if of(t).next().is_none() {
                continue;
            }
            mode.insert(format!("{key}_tps"), json!(med(&|x| Some(x.tps))));
            mode.insert(format!("{key}_p99_ms"), json!(med(&|x| Some(x.p99_ms))));
            if t != Target::Native {
                mode.insert(
                    format!("{key}_daemon_cpu_us_per_tx"),
                    json!(med(&|x| x.cpu_us_per_tx)),
                );
            }
            let Some(suffix) = t.suffix() else { continue };
            let (m, lo, hi) = within(t, Target::Native, &|x| x.tps);
            mode.insert(format!("ratio_{suffix}"), json!(m));
            mode.insert(format!("ratio_{suffix}_min"), json!(lo));
            mode.insert(format!("ratio_{suffix}_max"), json!(hi));
            let (p, _, _) = within(t, Target::Native, &|x| x.p99_ms);
            mode.insert(format!("p99_ratio_{suffix}"), json!(p));
            for &(r, key) in t.references() {
                if let (Some(m), _, _) = within(t, r, &|x| x.tps) {
                    mode.insert(key.into(), json!(m));
                }
            }
        }
        doc.insert(journal.name().into(), Value::Object(mode));
    }
    let per_round: Vec<Value> = samples
        .iter()
        .map(|x| {
            json!({
                "round": x.round + 1, "target": x.target.name(), "journal": x.journal.name(),
                "tps": round3(x.tps), "p99_ms": round3(x.p99_ms),
                "daemon_cpu_us_per_tx": x.cpu_us_per_tx.map(round3),
            })
        })
        .collect();
    doc.insert("per_round".into(), Value::Array(per_round));
    Value::Object(doc)
}

fn print_summary(doc: &Value) {
    let mut out = String::new();
    let targets: Vec<Target> = ALL_TARGETS
        .into_iter()
        .filter(|t| !doc[format!("{}_tps", t.name())].is_null())
        .collect();
    let _ = writeln!(
        out,
        "\n{:<21} {:>10} {:>12} {:>10} {:>22} {:>16}",
        "target", "tps", "latency avg", "p99", "ratio to native", "daemon CPU/tx"
    );
    for &t in &targets {
        let key = t.name();
        let tps = &doc[format!("{key}_tps")];
        let suffix = t.suffix();
        let num = |k: String| doc[k].as_f64().unwrap_or(f64::NAN);
        let ratio = suffix.map_or_else(
            || "-".to_owned(),
            |x| {
                format!(
                    "{:.3} [{:.3}-{:.3}]",
                    num(format!("ratio_{x}")),
                    num(format!("ratio_{x}_min")),
                    num(format!("ratio_{x}_max"))
                )
            },
        );
        let cpu = doc
            .get(format!("{key}_daemon_cpu_us_per_tx"))
            .and_then(Value::as_f64)
            .map_or_else(|| "-".to_owned(), |c| format!("{c:.0} us"));
        let _ = writeln!(
            out,
            "{key:<21} {:>10.1} {:>9.2} ms {:>7.2} ms {ratio:>22} {cpu:>16}",
            tps.as_f64().unwrap_or(f64::NAN),
            num(format!("{key}_latency_avg_ms")),
            num(format!("{key}_p99_ms")),
        );
    }
    out.push_str("(medians over the rounds; ratios taken within a round, [range])\n");
    for t in ALL_TARGETS {
        for &(reference, key) in t.references() {
            if let Some(r) = doc.get(key).and_then(Value::as_f64) {
                let _ = writeln!(
                    out,
                    "{} / {}, TPS in the same rounds: {r:.3}",
                    t.name(),
                    reference.name()
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "\nwhere the time goes (medians): the machine's CPU per transaction and idle share,\n\
         PostgreSQL's WAL write and fdatasync (mean ms each), the daemon's time per\n\
         transaction in its write, fsync, read and getattr requests (us)"
    );
    for &t in &targets {
        let key = t.name();
        let num = |k: String| doc[k].as_f64().unwrap_or(f64::NAN);
        let mut line = format!(
            "{key:<21} machine CPU {:.0} us/tx ({:.0}% idle), WAL write {:.3} ms, fdatasync {:.3} ms",
            num(format!("{key}_host_cpu_us_per_tx")),
            num(format!("{key}_host_idle")) * 100.0,
            num(format!("{key}_wal_write_ms")),
            num(format!("{key}_wal_sync_ms"))
        );
        if t.copies().is_some() {
            for op in ["write", "fsync", "read", "getattr"] {
                let _ = write!(
                    line,
                    ", {op} {:.0}",
                    num(format!("{key}_daemon_{op}_us_per_tx"))
                );
            }
        }
        let _ = writeln!(out, "{line}");
    }
    for journal in sqlite::JOURNALS {
        let Some(mode) = doc.get("sqlite").and_then(|l| l.get(journal.name())) else {
            continue;
        };
        let _ = writeln!(
            out,
            "\nSQLite, {} journal, one insert per transaction (synchronous=FULL):",
            journal.name()
        );
        for t in ALL_TARGETS {
            let key = t.name();
            let Some(tps) = mode.get(format!("{key}_tps")).and_then(Value::as_f64) else {
                continue;
            };
            let num = |k: String| mode.get(k).and_then(Value::as_f64);
            let mut line = format!(
                "{key:<21} {tps:>10.1} tps  p99 {:>6.2} ms",
                num(format!("{key}_p99_ms")).unwrap_or(f64::NAN)
            );
            if let Some(x) = t.suffix() {
                let _ = write!(
                    line,
                    "  {:.3} [{:.3}-{:.3}] of native",
                    num(format!("ratio_{x}")).unwrap_or(f64::NAN),
                    num(format!("ratio_{x}_min")).unwrap_or(f64::NAN),
                    num(format!("ratio_{x}_max")).unwrap_or(f64::NAN)
                );
                for &(reference, key) in t.references() {
                    if let Some(r) = num(key.to_owned()) {
                        let _ = write!(line, ", {r:.3} of {}", reference.name());
                    }
                }
            }
            if let Some(c) = num(format!("{key}_daemon_cpu_us_per_tx")) {
                let _ = write!(line, "  daemon CPU {c:.0} us/tx");
            }
            let _ = writeln!(out, "{line}");
        }
    }
    out.push_str("\ngoals of issue 18:\n");
    for (suffix, least) in [("1copy", 0.9), ("2copies", 0.8)] {
        if let Some(r) = doc[format!("ratio_{suffix}")].as_f64() {
            let _ = writeln!(
                out,
                "  {:<4} TPS {suffix:<8} {r:.3} >= {least} of native",
                if r >= least { "ok" } else { "MISS" }
            );
        }
    }
    for suffix in ["1copy", "2copies"] {
        if let Some(r) = doc[format!("p99_ratio_{suffix}")].as_f64() {
            let _ = writeln!(
                out,
                "  {:<4} p99 {suffix:<8} {r:.3} <= 1.5 of native",
                if r <= 1.5 { "ok" } else { "MISS" }
            );
        }
    }
    print!("{out}");
    let _ = io::stdout().flush();
}
