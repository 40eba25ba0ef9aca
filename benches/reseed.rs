//! `cargo bench --bench reseed`: how fast a reseed copies a database from one volume to
//! another, against `cp -a` and `dd` with direct I/O, in the same run on the same volumes.
//!
//! Needs root (loop devices, mounts, `drop_caches`); without it the bench says so and
//! exits 0 without numbers (non-zero under `CI=true`). It builds two ext4 volumes on loop
//! devices attached with `--direct-io=on` (images under `RESEEDFS_TESTBED_DIR`, default
//! `/var/tmp`), writes a database of about 2.1 GiB of incompressible data on volume 1
//! (`db001.db/`: two large files and a sparse one; `db001.log/`: log files, some with
//! unaligned sizes), and then, after `sync` and `drop_caches` each time, copies it to
//! volume 2 with: the reseed (io_uring engine), the reseed (thread engine), `cp -a
//! --reflink=never` followed by `sync -f`, and `dd bs=1M iflag=direct oflag=direct
//! conv=fsync` file by file (dd fills holes: it writes the sparse file's holes as zeros and
//! is credited with those bytes). Each reseeded tree is checked byte for byte, holes
//! included. `RESEED_BENCH_ROUNDS` (default 2) rounds, in alternating order; the table shows
//! the best run of each, and `$CARGO_TARGET_DIR/bench/reseed.json` (or `target/...`) gets
//! the figures. `RESEED_BENCH_DIRECT=0` makes the reseed copy buffered instead of with
//! `O_DIRECT`; `RESEED_BENCH_THREADS=N` gives the thread engine N workers;
//! `RESEED_BENCH_SWEEP=1` instead compares io_uring chunk sizes and depths, direct and
//! buffered, with and without preallocation, and the thread engine, against `cp` (byte
//! counts checked, no JSON).

use std::process::ExitCode;

#[cfg(not(target_os = "linux"))]
fn main() -> ExitCode {
    println!("reseed bench: Linux only (loop devices, ext4, io_uring); skipped, no numbers");
    ExitCode::SUCCESS
}

#[cfg(target_os = "linux")]
fn main() -> ExitCode {
    linux::main()
}

#[cfg(target_os = "linux")]
mod linux {
    use std::fs::{self, File, OpenOptions};
    use std::io::{self, Read as _};
    use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
    use std::path::{Path, PathBuf};
    use std::process::{Command, ExitCode};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    use reseedfs::reseed::engine::{
        self, CHUNK, CopyEngine, EngineChoice, Extent, IN_FLIGHT, ThreadEngine, data_extents,
        split_aligned,
    };
    use reseedfs::sys::uring::UringEngine;
    use reseedfs::testbed::{TESTBED_DIR_ENV, Testbed};

    /// Size of each volume image (sparse on the host).
    const VOLUME_BYTES: u64 = 4 << 30;
    /// Free space the images need on the host: the database, one copy of it (dd writes
    /// the holes too) and the fill that warms volume 2.
    const HOST_FREE_BYTES: u64 = 7 << 30;
    /// The database's name, as in the naming convention (`db001.db/`, `db001.log/`).
    const DB: &str = "db001";
    const MIB: f64 = (1u64 << 20) as f64;

    type Result<T> = std::result::Result<T, String>;

    /// Entry point: root check, run, report.
    pub fn main() -> ExitCode {
        let ci = std::env::var("CI").as_deref() == Ok("true");
        if !rustix::process::geteuid().is_root() {
            println!(
                "reseed bench: needs root (loop devices, mounts, drop_caches); skipped, no numbers"
            );
            return if ci {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
        match run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("reseed bench failed: {e}");
                ExitCode::FAILURE
            }
        }
    }

    /// What a variant stands for in the summary and the JSON file.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Role {
        ReseedUring,
        ReseedThreads,
        Cp,
        Dd,
        /// A tuning variant (`RESEED_BENCH_SWEEP=1`).
        Tuning,
    }

    /// How a variant copies.
    enum Kind {
        /// `reseed_tree` with this engine; `direct`: `O_DIRECT` where the filesystem allows;
        /// `prealloc`: `fallocate` the data extents first.
        Reseed {
            engine: Box<dyn CopyEngine>,
            direct: bool,
            prealloc: bool,
        },
        Cp,
        Dd,
    }

    /// One way of copying the database to volume 2, and its timed runs.
    struct Variant {
        label: String,
        role: Role,
        kind: Kind,
        runs: Vec<Run>,
    }

    impl Variant {
        fn new(label: impl Into<String>, role: Role, kind: Kind) -> Variant {
            Variant {
                label: label.into(),
                role,
                kind,
                runs: Vec::new(),
            }
        }

        /// The fastest run.
        fn best(&self) -> Option<Run> {
            self.runs
                .iter()
                .copied()
                .max_by(|a, b| a.mib_s().total_cmp(&b.mib_s()))
        }
    }

    /// One timed copy.
    #[derive(Debug, Clone, Copy)]
    struct Run {
        seconds: f64,
        bytes: u64,
    }

    impl Run {
        fn mib_s(&self) -> f64 {
            self.bytes as f64 / MIB / self.seconds
        }
    }

    /// What was written on volume 1.
    #[derive(Debug, Default)]
    struct DbStats {
        files: usize,
        /// Bytes of data (holes excluded).
        data_bytes: u64,
        /// Sum of the file sizes (holes included).
        logical_bytes: u64,
    }

    fn run() -> Result<()> {
        let interrupted = Arc::new(AtomicBool::new(false));
        for signal in [
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGHUP,
        ] {
            signal_hook::flag::register(signal, Arc::clone(&interrupted))
                .map_err(|e| format!("install a signal handler: {e}"))?;
        }
        let stop = || -> Result<()> {
            if interrupted.load(Ordering::Relaxed) {
                Err("interrupted; cleaning up".into())
            } else {
                Ok(())
            }
        };
        let rounds: usize = match std::env::var("RESEED_BENCH_ROUNDS") {
            Ok(s) => s
                .parse()
                .map_err(|e| format!("RESEED_BENCH_ROUNDS={s}: {e}"))?,
            Err(_) => 2,
        };
        let base = std::env::var_os(TESTBED_DIR_ENV)
            .map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from);
        check_host_dir(&base)?;
        println!(
            "reseed bench: load average at start {}; CHUNK {} KiB, IN_FLIGHT {IN_FLIGHT}",
            load_average(),
            CHUNK >> 10
        );

        let bed = Testbed::loop_volumes_in(&base, 2, VOLUME_BYTES)
            .map_err(|e| format!("make two loop volumes under {}: {e}", base.display()))?;
        let (vol1, vol2) = (bed.volume_path(1), bed.volume_path(2));
        for v in &bed.volumes {
            println!(
                "volume {} on {} ({} GiB, ext4, loop --direct-io=on)",
                v.mountpoint.display(),
                v.device.display(),
                VOLUME_BYTES >> 30
            );
        }

        let started = Instant::now();
        let db = make_database(&vol1, &stop)?;
        println!(
            "database: {} files, {:.0} MiB of data, {:.0} MiB with holes, written and fsynced \
             in {:.1} s",
            db.files,
            db.data_bytes as f64 / MIB,
            db.logical_bytes as f64 / MIB,
            started.elapsed().as_secs_f64()
        );
        // Writes on a fresh image allocate blocks on the host; fill volume 2 once so every
        // method writes over blocks that exist.
        warm_volume(&vol2, &stop)?;

        let sweep = std::env::var("RESEED_BENCH_SWEEP").as_deref() == Ok("1");
        let mut variants = if sweep {
            sweep_variants()?
        } else {
            standard_variants()?
        };

        for round in 0..rounds {
            let mut order: Vec<usize> = (0..variants.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for k in order {
                let variant = &mut variants[k];
                stop()?;
                clear_volume(&vol2)?;
                drop_caches()?;
                let started = Instant::now();
                let bytes = match &mut variant.kind {
                    Kind::Reseed {
                        engine,
                        direct,
                        prealloc,
                    } => {
                        DIRECT.store(*direct, Ordering::Relaxed);
                        PREALLOC.store(*prealloc, Ordering::Relaxed);
                        reseed_folders(&vol1, &vol2, engine.as_mut())?
                    }
                    Kind::Cp => copy_with_cp(&vol1, &vol2.join("cp"))?,
                    Kind::Dd => copy_with_dd(&vol1, &vol2.join("dd"), &stop)?,
                };
                let run = Run {
                    seconds: started.elapsed().as_secs_f64(),
                    bytes,
                };
                println!(
                    "round {}: {:<42} {:>7.2} s {:>8.0} MiB {:>7.1} MiB/s",
                    round + 1,
                    variant.label,
                    run.seconds,
                    run.bytes as f64 / MIB,
                    run.mib_s()
                );
                if matches!(variant.kind, Kind::Reseed { .. }) {
                    if bytes != db.data_bytes {
                        return Err(format!(
                            "{}: copied {bytes} bytes, the database holds {}",
                            variant.label, db.data_bytes
                        ));
                    }
                    // The sweep checks the byte count only, to keep its runs short.
                    if !sweep {
                        for folder in db_folders() {
                            verify_tree(&vol1.join(&folder), &vol2.join(&folder), &stop)?;
                        }
                    }
                }
                variant.runs.push(run);
            }
        }
        clear_volume(&vol2)?;
        if sweep {
            print_table(&variants);
        } else {
            println!("verified: every reseeded tree is byte-identical, holes included");
            report(&variants, &db)?;
        }
        println!("load average at the end {}", load_average());
        drop(bed);
        Ok(())
    }

    /// The database's two folders.
    fn db_folders() -> [String; 2] {
        [format!("{DB}.db"), format!("{DB}.log")]
    }

    /// The io_uring engine with `CHUNK` x `IN_FLIGHT`, the thread engine, `cp` and `dd`.
    fn standard_variants() -> Result<Vec<Variant>> {
        let direct = std::env::var("RESEED_BENCH_DIRECT").as_deref() != Ok("0");
        let mut variants = Vec::new();
        match engine::select(EngineChoice::IoUring) {
            Ok((engine, _)) => variants.push(Variant::new(
                "reseed (io_uring)",
                Role::ReseedUring,
                Kind::Reseed {
                    engine,
                    direct,
                    prealloc: true,
                },
            )),
            Err(reason) => println!("reseed (io_uring) skipped: {reason}"),
        }
        let threads: Box<dyn CopyEngine> = match std::env::var("RESEED_BENCH_THREADS") {
            Ok(s) => Box::new(ThreadEngine::with_threads(
                s.parse()
                    .map_err(|e| format!("RESEED_BENCH_THREADS={s}: {e}"))?,
            )),
            Err(_) => Box::new(ThreadEngine::new()),
        };
        variants.push(Variant::new(
            "reseed (threads)",
            Role::ReseedThreads,
            Kind::Reseed {
                engine: threads,
                direct,
                prealloc: true,
            },
        ));
        variants.push(Variant::new("cp -a + sync", Role::Cp, Kind::Cp));
        variants.push(Variant::new("dd direct (per file)", Role::Dd, Kind::Dd));
        Ok(variants)
    }

    /// `RESEED_BENCH_SWEEP=1`: io_uring chunk sizes and depths, direct and buffered, and
    /// the thread engine with 4 and 8 workers, against `cp`.
    fn sweep_variants() -> Result<Vec<Variant>> {
        let mut variants = Vec::new();
        for (chunk_kib, depth, direct, prealloc) in [
            (512u64, 16usize, true, true),
            (1024, 16, true, true),
            (1024, 32, true, true),
            (4096, 8, true, true),
            (1024, 16, true, false),
            (1024, 16, false, true),
        ] {
            let engine = UringEngine::with_geometry(chunk_kib << 10, depth)
                .map_err(|e| format!("io_uring {chunk_kib} KiB x {depth}: {e}"))?;
            variants.push(Variant::new(
                format!(
                    "io_uring {chunk_kib:>4} KiB x {depth:>2} {}",
                    mode(direct, prealloc)
                ),
                Role::Tuning,
                Kind::Reseed {
                    engine: Box::new(engine),
                    direct,
                    prealloc,
                },
            ));
        }
        for (threads, direct, prealloc) in
            [(4usize, true, true), (4, true, false), (8, false, true)]
        {
            variants.push(Variant::new(
                format!("threads x {threads} {}", mode(direct, prealloc)),
                Role::Tuning,
                Kind::Reseed {
                    engine: Box::new(ThreadEngine::with_threads(threads)),
                    direct,
                    prealloc,
                },
            ));
        }
        variants.push(Variant::new("cp -a + sync", Role::Cp, Kind::Cp));
        Ok(variants)
    }

    /// `direct`/`buffered`, and whether the data extents are preallocated.
    fn mode(direct: bool, prealloc: bool) -> String {
        let io = if direct { "direct" } else { "buffered" };
        if prealloc {
            io.to_owned()
        } else {
            format!("{io} no-prealloc")
        }
    }

    /// The best run of each variant, and all runs.
    fn print_table(variants: &[Variant]) {
        println!();
        println!(
            "{:<42} {:>9} {:>9} {:>9}   all runs (MiB/s)",
            "best of rounds", "seconds", "MiB", "MiB/s"
        );
        for variant in variants {
            let Some(run) = variant.best() else { continue };
            let all: Vec<String> = variant
                .runs
                .iter()
                .map(|r| format!("{:.0}", r.mib_s()))
                .collect();
            println!(
                "{:<42} {:>9.2} {:>9.0} {:>9.1}   {}",
                variant.label,
                run.seconds,
                run.bytes as f64 / MIB,
                run.mib_s(),
                all.join(" ")
            );
        }
    }

    /// Prints the table and the ratios, and writes the JSON file.
    fn report(variants: &[Variant], db: &DbStats) -> Result<()> {
        let best = |role: Role| -> Option<Run> {
            variants
                .iter()
                .find(|v| v.role == role)
                .and_then(Variant::best)
        };
        print_table(variants);
        let (engine_name, reseed) = match best(Role::ReseedUring) {
            Some(run) => ("io_uring", run),
            None => ("threads", best(Role::ReseedThreads).ok_or("no reseed run")?),
        };
        let threads = best(Role::ReseedThreads).ok_or("no threads run")?;
        let cp = best(Role::Cp).ok_or("no cp run")?;
        let dd = best(Role::Dd).ok_or("no dd run")?;
        println!(
            "reseed ({engine_name}) / cp = {:.2}, reseed / dd = {:.2}, reseed / max(cp, dd) = {:.2}",
            reseed.mib_s() / cp.mib_s(),
            reseed.mib_s() / dd.mib_s(),
            reseed.mib_s() / cp.mib_s().max(dd.mib_s())
        );
        println!(
            "(MiB/s = bytes moved / time; dd also writes the {:.0} MiB of holes as zeros)",
            (db.logical_bytes - db.data_bytes) as f64 / MIB
        );

        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| PathBuf::from("target"), PathBuf::from);
        let dir = target.join("bench");
        fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let json = serde_json::json!({
            "bytes": db.data_bytes,
            "reseed_mib_s": round1(reseed.mib_s()),
            "cp_mib_s": round1(cp.mib_s()),
            "dd_mib_s": round1(dd.mib_s()),
            "engine": engine_name,
            "threads_mib_s": round1(threads.mib_s()),
        });
        let path = dir.join("reseed.json");
        fs::write(&path, format!("{json}\n"))
            .map_err(|e| format!("write {}: {e}", path.display()))?;
        println!("wrote {}", path.display());
        Ok(())
    }

    fn round1(x: f64) -> f64 {
        (x * 10.0).round() / 10.0
    }

    fn load_average() -> String {
        fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "?".into())
    }

    /// The images' directory must be on a disk with room for them.
    fn check_host_dir(base: &Path) -> Result<()> {
        const TMPFS_MAGIC: i64 = 0x0102_1994;
        fs::create_dir_all(base).map_err(|e| format!("create {}: {e}", base.display()))?;
        let st = rustix::fs::statfs(base).map_err(|e| format!("statfs {}: {e}", base.display()))?;
        // `f_type`'s integer type differs between architectures.
        #[allow(clippy::useless_conversion)]
        let f_type = i64::from(st.f_type);
        if f_type == TMPFS_MAGIC {
            return Err(format!(
                "{} is a tmpfs (memory); set {TESTBED_DIR_ENV} to a directory on a disk",
                base.display()
            ));
        }
        let free = st.f_bavail * st.f_bsize as u64;
        if free < HOST_FREE_BYTES {
            return Err(format!(
                "{} has {} MiB free, the bench needs {} MiB (set {TESTBED_DIR_ENV})",
                base.display(),
                free >> 20,
                HOST_FREE_BYTES >> 20
            ));
        }
        Ok(())
    }

    /// `sync; echo 3 > /proc/sys/vm/drop_caches`.
    fn drop_caches() -> Result<()> {
        rustix::fs::sync();
        fs::write("/proc/sys/vm/drop_caches", "3\n").map_err(|e| format!("drop_caches: {e}"))
    }

    /// Fast incompressible bytes (xorshift64*), one stream per seed.
    struct Noise(u64);

    impl Noise {
        fn new(seed: u64) -> Noise {
            Noise(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
        }

        fn fill(&mut self, buf: &mut [u8]) {
            for word in buf.chunks_mut(8) {
                self.0 ^= self.0 >> 12;
                self.0 ^= self.0 << 25;
                self.0 ^= self.0 >> 27;
                let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
                word.copy_from_slice(&x[..word.len()]);
            }
        }
    }

    /// A file of the database: path under the volume, size, data regions (offset, length).
    type DbFile = (String, u64, Vec<(u64, u64)>);

    /// Writes the database on `volume`: file path, size, and data regions (the rest are
    /// holes).
    fn make_database(volume: &Path, stop: &dyn Fn() -> Result<()>) -> Result<DbStats> {
        const M: u64 = 1 << 20;
        let (dbf, logf) = (format!("{DB}.db"), format!("{DB}.log"));
        let mut files: Vec<DbFile> = vec![
            (format!("{dbf}/{DB}.edb"), 1152 * M, vec![(0, 1152 * M)]),
            (
                format!("{dbf}/{DB}.stm"),
                640 * M + 12_345,
                vec![(0, 640 * M + 12_345)],
            ),
            // 512 MiB with 16 MiB of data every 32 MiB, ending in a hole.
            (
                format!("{dbf}/{DB}-sparse.edb"),
                512 * M,
                (0..16).map(|k| (k * 32 * M, 16 * M)).collect(),
            ),
            (format!("{dbf}/{DB}.chk"), 8192 + 100, vec![(0, 8192 + 100)]),
            (format!("{logf}/E00.chk"), 1000, vec![(0, 1000)]),
        ];
        for k in 1..=9u64 {
            files.push((format!("{logf}/E00{k:08X}.log"), 8 * M, vec![(0, 8 * M)]));
        }
        // The current log: partly written, an unaligned end.
        files.push((
            format!("{logf}/E00.log"),
            3 * M + 777,
            vec![(0, 3 * M + 777)],
        ));

        let mut stats = DbStats::default();
        let mut buf = vec![0u8; 4 << 20];
        for (seed, (rel, size, regions)) in files.iter().enumerate() {
            let path = volume.join(rel);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)
                    .map_err(|e| format!("create {}: {e}", parent.display()))?;
            }
            let file =
                File::create(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
            let mut noise = Noise::new(seed as u64 + 1);
            for &(offset, len) in regions {
                let mut done = 0;
                while done < len {
                    stop()?;
                    let n = (len - done).min(buf.len() as u64);
                    let piece = &mut buf[..n as usize];
                    noise.fill(piece);
                    file.write_all_at(piece, offset + done)
                        .map_err(|e| format!("write {}: {e}", path.display()))?;
                    done += n;
                }
                stats.data_bytes += len;
            }
            file.set_len(*size)
                .and_then(|()| file.sync_all())
                .map_err(|e| format!("size and fsync {}: {e}", path.display()))?;
            stats.logical_bytes += size;
            stats.files += 1;
        }
        for dir in [volume.join(&dbf), volume.join(&logf)] {
            sync_dir(&dir)?;
        }
        Ok(stats)
    }

    /// Writes volume 2 nearly full once, then frees it.
    fn warm_volume(volume: &Path, stop: &dyn Fn() -> Result<()>) -> Result<()> {
        let started = Instant::now();
        let path = volume.join("warm");
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .map_err(|e| format!("create {}: {e}", path.display()))?;
        let mut buf = memmap2::MmapMut::map_anon(4 << 20).map_err(|e| e.to_string())?;
        Noise::new(99).fill(&mut buf);
        let target = VOLUME_BYTES - (512 << 20);
        let mut offset = 0;
        while offset < target {
            stop()?;
            match file.write_at(&buf, offset) {
                Ok(n) => offset += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(format!("write {}: {e}", path.display())),
            }
        }
        drop(file);
        fs::remove_file(&path).map_err(|e| format!("remove {}: {e}", path.display()))?;
        rustix::fs::sync();
        println!(
            "volume 2 warmed: {:.0} MiB written and freed in {:.1} s",
            offset as f64 / MIB,
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Removes every copy a method made on volume 2.
    fn clear_volume(volume: &Path) -> Result<()> {
        let mut names = db_folders().to_vec();
        names.extend(["cp".into(), "dd".into()]);
        for name in names {
            let path = volume.join(name);
            match fs::remove_dir_all(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("remove {}: {e}", path.display())),
            }
        }
        Ok(())
    }

    fn sync_dir(dir: &Path) -> Result<()> {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("fsync {}: {e}", dir.display()))
    }

    /// Reseeds the database's folders from volume `src` to volume `dst`.
    fn reseed_folders(src: &Path, dst: &Path, engine: &mut dyn CopyEngine) -> Result<u64> {
        let mut bytes = 0;
        for folder in db_folders() {
            // The production seeder replaces this call once it lands
            bytes += reseed_tree(&src.join(&folder), &dst.join(&folder), engine)?;
        }
        sync_dir(dst)?;
        Ok(bytes)
    }

    /// A stand-in for the seeder: copies the tree at `src_root` to `dst_root` (which must
    /// not exist) with `engine`, file by file: preallocates the data extents, copies the
    /// aligned part with `O_DIRECT` (buffered where refused) and the unaligned pieces
    /// buffered, sets the length, fsyncs files and directories. Returns the data bytes
    /// copied.
    fn reseed_tree(src_root: &Path, dst_root: &Path, engine: &mut dyn CopyEngine) -> Result<u64> {
        fs::create_dir(dst_root).map_err(|e| format!("create {}: {e}", dst_root.display()))?;
        let mut entries: Vec<_> = fs::read_dir(src_root)
            .and_then(|dir| dir.collect::<io::Result<Vec<_>>>())
            .map_err(|e| format!("list {}: {e}", src_root.display()))?;
        entries.sort_by_key(|e| e.file_name());
        let mut bytes = 0;
        for entry in entries {
            let (src, dst) = (entry.path(), dst_root.join(entry.file_name()));
            let kind = entry
                .file_type()
                .map_err(|e| format!("stat {}: {e}", src.display()))?;
            if kind.is_dir() {
                bytes += reseed_tree(&src, &dst, engine)?;
            } else if kind.is_file() {
                bytes += reseed_file(&src, &dst, engine)
                    .map_err(|e| format!("reseed {}: {e}", src.display()))?;
            }
        }
        sync_dir(dst_root)?;
        Ok(bytes)
    }

    /// Whether `reseed_tree` opens files with `O_DIRECT` (set per variant).
    static DIRECT: AtomicBool = AtomicBool::new(true);
    /// Whether `reseed_tree` preallocates the data extents (set per variant).
    static PREALLOC: AtomicBool = AtomicBool::new(true);

    /// Opens with `O_DIRECT`.
    fn open_direct(path: &Path, write: bool) -> io::Result<File> {
        OpenOptions::new()
            .read(!write)
            .write(write)
            .custom_flags(libc::O_DIRECT)
            .open(path)
    }

    /// Copies one file; see [`reseed_tree`].
    fn reseed_file(
        src_path: &Path,
        dst_path: &Path,
        engine: &mut dyn CopyEngine,
    ) -> io::Result<u64> {
        let src = File::open(src_path)?;
        let meta = src.metadata()?;
        let size = meta.len();
        let dst = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dst_path)?;
        dst.set_permissions(meta.permissions())?;
        let extents = data_extents(&src, 0, size)?;
        // The full length first: writes inside the size are not extending writes, which
        // ext4 would serialize for direct I/O. Then allocate the data extents in one go,
        // so that the direct writes are overwrites of preallocated blocks.
        dst.set_len(size)?;
        for e in extents.iter().filter(|_| PREALLOC.load(Ordering::Relaxed)) {
            match rustix::fs::fallocate(
                &dst,
                rustix::fs::FallocateFlags::KEEP_SIZE,
                e.offset,
                e.len,
            ) {
                Ok(()) | Err(rustix::io::Errno::OPNOTSUPP) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let (aligned, unaligned) = split_aligned(&extents);
        let mut bytes = 0;
        if !aligned.is_empty() {
            let direct = if DIRECT.load(Ordering::Relaxed) {
                open_direct(src_path, false).and_then(|s| Ok((s, open_direct(dst_path, true)?)))
            } else {
                Err(io::Error::other("buffered variant"))
            };
            // Buffered where the filesystem refuses O_DIRECT (EINVAL).
            bytes += match direct {
                Ok((s, d)) => engine.copy(&s, &d, &aligned, true),
                Err(_) => engine.copy(&src, &dst, &aligned, false),
            }
            .map_err(io::Error::other)?;
        }
        bytes += engine
            .copy(&src, &dst, &unaligned, false)
            .map_err(io::Error::other)?;
        // A direct read that met an unaligned end of file was written padded.
        dst.set_len(size)?;
        dst.sync_all()?;
        Ok(bytes)
    }

    /// `cp -a --reflink=never` of the database's folders into `dst`, then `sync -f`.
    fn copy_with_cp(src: &Path, dst: &Path) -> Result<u64> {
        fs::create_dir(dst).map_err(|e| format!("create {}: {e}", dst.display()))?;
        let mut cp = Command::new("cp");
        cp.args(["-a", "--reflink=never"]);
        for folder in db_folders() {
            cp.arg(src.join(folder));
        }
        cp.arg(dst);
        run_tool(&mut cp)?;
        run_tool(Command::new("sync").arg("-f").arg(dst))?;
        let mut bytes = 0;
        for folder in db_folders() {
            bytes += tree_data_bytes(&dst.join(folder))?;
        }
        Ok(bytes)
    }

    /// `dd bs=1M iflag=direct oflag=direct conv=fsync` of every file into `dst`.
    fn copy_with_dd(src: &Path, dst: &Path, stop: &dyn Fn() -> Result<()>) -> Result<u64> {
        let mut bytes = 0;
        for folder in db_folders() {
            for file in tree_files(&src.join(&folder))? {
                stop()?;
                let rel = file.strip_prefix(src).map_err(|e| e.to_string())?;
                let target = dst.join(rel);
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent)
                        .map_err(|e| format!("create {}: {e}", parent.display()))?;
                }
                let mut dd = Command::new("dd");
                dd.arg(format!("if={}", file.display()))
                    .arg(format!("of={}", target.display()))
                    .args([
                        "bs=1M",
                        "iflag=direct",
                        "oflag=direct",
                        "conv=fsync",
                        "status=none",
                    ]);
                run_tool(&mut dd)?;
                bytes += fs::metadata(&target)
                    .map_err(|e| format!("stat {}: {e}", target.display()))?
                    .len();
            }
        }
        Ok(bytes)
    }

    fn run_tool(cmd: &mut Command) -> Result<()> {
        let out = cmd.output().map_err(|e| format!("run {cmd:?}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{cmd:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Every regular file under `root`, sorted.
    fn tree_files(root: &Path) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        let mut dirs = vec![root.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            let entries = fs::read_dir(&dir).map_err(|e| format!("list {}: {e}", dir.display()))?;
            for entry in entries {
                let entry = entry.map_err(|e| format!("list {}: {e}", dir.display()))?;
                let kind = entry.file_type().map_err(|e| e.to_string())?;
                if kind.is_dir() {
                    dirs.push(entry.path());
                } else if kind.is_file() {
                    out.push(entry.path());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The data bytes (holes excluded) of the files under `root`.
    fn tree_data_bytes(root: &Path) -> Result<u64> {
        let mut bytes = 0;
        for path in tree_files(root)? {
            let f = File::open(&path).map_err(|e| format!("open {}: {e}", path.display()))?;
            let len = f.metadata().map_err(|e| e.to_string())?.len();
            bytes += data_extents(&f, 0, len)
                .map_err(|e| format!("SEEK_DATA {}: {e}", path.display()))?
                .iter()
                .map(|e| e.len)
                .sum::<u64>();
        }
        Ok(bytes)
    }

    /// The two trees hold the same files with the same bytes and the same holes.
    fn verify_tree(src_root: &Path, dst_root: &Path, stop: &dyn Fn() -> Result<()>) -> Result<()> {
        let src_files = tree_files(src_root)?;
        let dst_files = tree_files(dst_root)?;
        let rel = |root: &Path, files: &[PathBuf]| -> Vec<PathBuf> {
            files
                .iter()
                .filter_map(|f| f.strip_prefix(root).ok().map(Path::to_path_buf))
                .collect()
        };
        if rel(src_root, &src_files) != rel(dst_root, &dst_files) {
            return Err(format!(
                "{} and {} hold different files",
                src_root.display(),
                dst_root.display()
            ));
        }
        let (mut a, mut b) = (vec![0u8; CHUNK as usize], vec![0u8; CHUNK as usize]);
        for (s, d) in src_files.iter().zip(&dst_files) {
            let open = |p: &Path| File::open(p).map_err(|e| format!("open {}: {e}", p.display()));
            let (mut sf, mut df) = (open(s)?, open(d)?);
            let extents = |f: &File, p: &Path| -> Result<Vec<Extent>> {
                let len = f.metadata().map_err(|e| e.to_string())?.len();
                data_extents(f, 0, len).map_err(|e| format!("SEEK_DATA {}: {e}", p.display()))
            };
            let (se, de) = (extents(&sf, s)?, extents(&df, d)?);
            if se != de {
                return Err(format!(
                    "{}: holes differ from the source: {se:?} vs {de:?}",
                    d.display()
                ));
            }
            // data_extents moved the offsets.
            let rewind =
                |f: &mut File| -> Result<()> { io::Seek::rewind(f).map_err(|e| e.to_string()) };
            rewind(&mut sf)?;
            rewind(&mut df)?;
            let mut offset = 0u64;
            loop {
                stop()?;
                let n =
                    read_full(&mut sf, &mut a).map_err(|e| format!("read {}: {e}", s.display()))?;
                let m =
                    read_full(&mut df, &mut b).map_err(|e| format!("read {}: {e}", d.display()))?;
                if n != m || a[..n] != b[..m] {
                    return Err(format!(
                        "{} differs from {} in the MiB at {offset}",
                        d.display(),
                        s.display()
                    ));
                }
                if n == 0 {
                    break;
                }
                offset += n as u64;
            }
        }
        Ok(())
    }

    /// Reads until `buf` is full or the end of the file.
    fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            match f.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(got)
    }
}
