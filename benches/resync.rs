//! `cargo bench --bench resync`: what the log tap saves. A 1 GiB database on two ext4
//! loop volumes (`--direct-io=on`); its copy on Volume2 is suspended, 1% of the 4 KiB
//! blocks are rewritten at random through the filesystem core (the tap records them),
//! and the copy is brought back by the incremental resync; then the same copy is
//! reseeded in full, in the same run, for comparison. Caches are dropped before each,
//! both calls are timed whole (verification included) and the copies compared byte for
//! byte after each.
//!
//! Then a crash: random writes to a hot 64 MiB run through a pool that is dropped
//! without its clean stop (as after kill -9); the next open repairs the copies from the activity log, and the
//! bytes it read are reported against the database's size.
//!
//! Writes `$CARGO_TARGET_DIR/bench/resync.json` (or `target/...`):
//! `{"db_bytes","changed_bytes","bytes_copied","resync_s","reseed_s",...}`. Needs root;
//! without it says so and exits 0 (non-zero under `CI=true`).

use std::process::ExitCode;

#[cfg(not(target_os = "linux"))]
fn main() -> ExitCode {
    println!("resync bench: Linux only (loop devices, ext4); skipped, no numbers");
    ExitCode::SUCCESS
}

/// What `--help` prints.
#[cfg(target_os = "linux")]
const USAGE: &str = "\
cargo bench --bench resync

An incremental resync (1% of a 1 GiB database's 4 KiB blocks rewritten while a copy was
out) against a full reseed of the same copy, and the crash repair of the activity log.
Needs root. Writes target/bench/resync.json. No options; environment:

  RESEEDFS_TESTBED_DIR=DIR     where the volume images go";

#[cfg(target_os = "linux")]
fn main() -> ExitCode {
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    linux::main()
}

#[cfg(target_os = "linux")]
mod linux {
    use std::ffi::OsStr;
    use std::fs;
    use std::io::Write as _;
    use std::path::{Path, PathBuf};
    use std::process::ExitCode;
    use std::sync::Arc;
    use std::time::Instant;

    use reseedfs::config::Config;
    use reseedfs::copyset::CopyState;
    use reseedfs::events::{EventSink, NewEvent};
    use reseedfs::fs::{Core, NodeId};
    use reseedfs::pool::{self, Pool};
    use reseedfs::reseed::{self, Progress, SeedRequest, resync};
    use reseedfs::testbed::rng::Rng;
    use reseedfs::testbed::{TESTBED_DIR_ENV, Testbed};

    const DB: &str = "db001";
    const DB_BYTES: u64 = 1 << 30;
    const BLOCK: u64 = 4096;
    const SLOT: reseedfs::names::CopySlot = reseedfs::names::CopySlot::new(1);
    /// The hot set written before the simulated crash.
    const HOT_BYTES: u64 = 64 << 20;
    const MIB: f64 = (1u64 << 20) as f64;

    type Result<T> = std::result::Result<T, String>;

    struct Quiet;
    impl EventSink for Quiet {
        fn emit(&self, _: NewEvent) {}
    }

    /// Entry point: root check, run, report.
    pub fn main() -> ExitCode {
        let ci = std::env::var("CI").as_deref() == Ok("true");
        if !rustix::process::geteuid().is_root() {
            println!("resync bench: needs root (loop devices, mounts, drop_caches); skipped");
            return if ci {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
        match run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("resync bench failed: {e}");
                ExitCode::FAILURE
            }
        }
    }

    fn drop_caches() -> Result<()> {
        rustix::fs::sync();
        fs::write("/proc/sys/vm/drop_caches", "3").map_err(|e| format!("drop_caches: {e}"))
    }

    fn write_database(volumes: &[PathBuf]) -> Result<()> {
        let mut files = Vec::new();
        for v in volumes {
            let dir = v.join(format!("{DB}.db"));
            files.push(
                fs::File::create(dir.join("data.bin"))
                    .map_err(|e| format!("create {}: {e}", dir.display()))?,
            );
        }
        let mut noise = Rng::new(0x2545_F491_4F6C_DD1D);
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..DB_BYTES >> 20 {
            noise.fill(&mut buf);
            for f in &mut files {
                f.write_all(&buf).map_err(|e| format!("write: {e}"))?;
            }
        }
        for f in &files {
            f.sync_all().map_err(|e| format!("fsync: {e}"))?;
        }
        Ok(())
    }

    fn same(a: &Path, b: &Path) -> Result<()> {
        use std::io::Read as _;
        let open = |p: &Path| fs::File::open(p).map_err(|e| format!("open {}: {e}", p.display()));
        let (mut fa, mut fb) = (open(a)?, open(b)?);
        let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
        loop {
            let n = fa.read(&mut x).map_err(|e| e.to_string())?;
            let m = fb
                .read_exact(&mut y[..n])
                .map(|()| n)
                .map_err(|e| e.to_string())?;
            if x[..n] != y[..m] {
                return Err(format!("{} and {} differ", a.display(), b.display()));
            }
            if n == 0 {
                return Ok(());
            }
        }
    }

    fn open_data(core: &Core) -> Result<reseedfs::fs::HandleId> {
        let err = |what: &'static str| move |e: reseedfs::fs::Errno| format!("{what}: {e:?}");
        let dir = core
            .lookup(NodeId::ROOT, OsStr::new(DB))
            .map_err(err("lookup db"))?;
        let sub = core
            .lookup(dir.node, OsStr::new(&format!("{DB}.db")))
            .map_err(err("lookup folder"))?;
        let f = core
            .lookup(sub.node, OsStr::new("data.bin"))
            .map_err(err("lookup data.bin"))?;
        core.open(f.node, libc::O_RDWR)
            .map_err(err("open data.bin"))
    }

    /// Rewrites `n` distinct random blocks of the first `span` bytes; returns the bytes
    /// written.
    fn rewrite_blocks(core: &Core, n: u64, span: u64, seed: u64) -> Result<u64> {
        let h = open_data(core)?;
        let mut noise = Rng::new(seed);
        let mut chosen = std::collections::BTreeSet::new();
        while (chosen.len() as u64) < n {
            chosen.insert(noise.below(span / BLOCK));
        }
        let mut buf = vec![0u8; BLOCK as usize];
        for b in chosen {
            noise.fill(&mut buf);
            core.write(h, b * BLOCK, &buf)
                .map_err(|e| format!("write block {b}: {e:?}"))?;
        }
        core.fsync(h, false).map_err(|e| format!("fsync: {e:?}"))?;
        core.release(h);
        Ok(n * BLOCK)
    }

    fn run() -> Result<()> {
        let base = std::env::var_os(TESTBED_DIR_ENV)
            .map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from);
        let bed = Testbed::loop_volumes_in(&base, 2, 3 << 30)
            .map_err(|e| format!("make two loop volumes under {}: {e}", base.display()))?;
        let mut config = Config::new(
            bed.volumes_root.clone(),
            bed.databases_root.clone(),
            vec![DB.parse().expect("a valid database name")],
        );
        config.copies = 2;
        config.state_dir = bed.state_dir.clone();
        config.witness_dir = bed.root.join("witness");
        pool::init(&config, &bed.config_path).map_err(|e| format!("init the pool: {e:#}"))?;
        let (v1, v2) = (bed.volume_path(1), bed.volume_path(2));
        write_database(&[v1.clone(), v2.clone()])?;
        let data = |v: &Path| v.join(format!("{DB}.db/data.bin"));

        let pool = Pool::open(&config, Arc::new(Quiet)).map_err(|e| format!("open: {e}"))?;
        let core = Arc::new(Core::new(pool.clone()));
        let db = pool.database(DB).cloned().ok_or("no database")?;
        // Nothing written before the suspend can differ any more.
        db.checkpoint(false);
        db.checkpoint(false);
        pool.suspend(&db, SLOT)?;
        let changed = rewrite_blocks(&core, DB_BYTES / BLOCK / 100, DB_BYTES, 7)?;
        let (mutations, queued) = db.tap().queue(SLOT).unwrap_or_default();
        drop_caches()?;
        let progress = Progress::new(&db.name, "Volume2");
        let started = Instant::now();
        let report =
            resync::resync(&core, &db, SLOT, &progress).map_err(|e| format!("resync: {e}"))?;
        let resync_s = started.elapsed().as_secs_f64();
        if db.copies()[SLOT].state() != CopyState::InSync {
            return Err("the copy is not in sync after the resync".into());
        }
        same(&data(&v1), &data(&v2))?;

        // The same copy, reseeded in full.
        pool.suspend(&db, SLOT)?;
        rewrite_blocks(&core, DB_BYTES / BLOCK / 100, DB_BYTES, 11)?;
        drop_caches()?;
        let req = SeedRequest {
            db: db.clone(),
            slot: SLOT,
            target: reseedfs::names::VolumeName::from_static("Volume2"),
            from: None,
            allow_in_sync: false,
            keep_replaced: false,
            window_bytes: reseed::WINDOW_BYTES,
        };
        let progress = Progress::new(&db.name, "Volume2");
        let started = Instant::now();
        let full = reseed::reseed(&core, &req, &progress).map_err(|e| format!("reseed: {e}"))?;
        let reseed_s = started.elapsed().as_secs_f64();
        same(&data(&v1), &data(&v2))?;

        // The daemon checkpoints every few seconds: what was written so far is synced.
        db.checkpoint(false);
        db.checkpoint(false);
        // A crash under writes to a hot set (the first 64 MiB, as a database's recent
        // pages): the pool is dropped without its clean stop.
        let crash_writes = rewrite_blocks(&core, 8_000, HOT_BYTES, 13)?;
        drop(core);
        drop(pool);
        let pool = Pool::open(&config, Arc::new(Quiet)).map_err(|e| format!("reopen: {e}"))?;
        let started = Instant::now();
        let repairs = pool.repair_after_crash();
        let repair_s = started.elapsed().as_secs_f64();
        let repair = repairs.first().cloned().unwrap_or_default();
        pool.close();
        same(&data(&v1), &data(&v2))?;

        let ratio_bytes = report.bytes_copied as f64 / DB_BYTES as f64;
        let ratio_time = resync_s / reseed_s;
        println!(
            "resync bench (1 GiB database, 1% of its 4 KiB blocks rewritten while the copy was out)"
        );
        println!("  {:<34} {:>12} {:>10}", "", "bytes", "seconds");
        println!(
            "  {:<34} {:>12} {:>10.3}",
            "incremental resync", report.bytes_copied, resync_s
        );
        println!(
            "  {:<34} {:>12} {:>10.3}",
            "full reseed (same copy)", full.bytes_copied, reseed_s
        );
        println!(
            "  resync / database bytes = {ratio_bytes:.4} (target <= 0.02); resync / reseed time = {ratio_time:.4} (target <= 0.05)"
        );
        println!(
            "  resync phases: prepare {:.3} s, copy {:.3} s, verify {:.3} s",
            report.prepare_s, report.copy_s, report.verify_s
        );
        println!(
            "  the tap counted {mutations} mutations, {queued} bytes queued ({} MiB changed); {} extents copied",
            changed >> 20,
            report.extents
        );
        println!(
            "  crash repair after {crash_writes} bytes of random writes to a hot {} MiB: {} extents of 4 MiB compared, {} MiB read per copy ({:.4} of the database), {} bytes repaired, {repair_s:.2} s",
            HOT_BYTES >> 20,
            repair.extents,
            repair.bytes_read as f64 / MIB,
            repair.bytes_read as f64 / DB_BYTES as f64,
            repair.bytes_repaired
        );
        let json = serde_json::json!({
            "db_bytes": DB_BYTES,
            "changed_bytes": changed,
            "bytes_copied": report.bytes_copied,
            "extents": report.extents,
            "resync_s": resync_s,
            "reseed_s": reseed_s,
            "reseed_bytes_copied": full.bytes_copied,
            "ratio_bytes": ratio_bytes,
            "ratio_time": ratio_time,
            "crash_repair_extents": repair.extents,
            "crash_repair_bytes_read": repair.bytes_read,
            "crash_repair_bytes_repaired": repair.bytes_repaired,
            "crash_repair_s": repair_s,
        });
        let dir =
            PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()))
                .join("bench");
        fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let path = dir.join("resync.json");
        fs::write(
            &path,
            serde_json::to_vec_pretty(&json).map_err(|e| e.to_string())?,
        )
        .map_err(|e| format!("write {}: {e}", path.display()))?;
        println!("  wrote {}", path.display());
        Ok(())
    }
}
