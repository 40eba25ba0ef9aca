//! The real product on real mounts, with a volume killed mid-run.
//!
//! Every test builds three loop-mounted ext4 volumes, puts one database (`db001`) with two
//! copies on them (Volume1 active, Volume2 passive, Volume3 spare), mounts it with the real
//! binary, runs a workload through the mount and kills a disk with the ext4 shutdown ioctl
//! (every I/O on it then fails with `EIO`). The workload must never see an error, and what it
//! wrote must be exactly what the mount and the surviving copy hold afterwards.
//!
//! These tests need root, `/dev/fuse` and loop devices; elsewhere they print `SKIPPED` (and
//! fail under `CI=true`). Workloads are random but seeded: the seed is printed when a test
//! fails, and `RESEEDFS_TEST_SEED=<seed>` replays it.

#![cfg(target_os = "linux")]

mod common;

use std::fs;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{
    MountAttempt, Mounted, copy_is, drop_caches, event_id, read_all, require_mount_privileges,
    try_mount, volume_state, wait_for,
};
use reseedfs::testbed::Testbed;
use reseedfs::testbed::rng::Rng;
use serde_json::Value;

/// Size of each loop volume.
const VOLUME_BYTES: u64 = 384 << 20;
/// The one database of every test.
const DB: &str = "db001";
/// How long a workload may run before the test declares the mount hung.
const WORKLOAD_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a state change (copy failed, event recorded) may take to show in `status`.
const STATE_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Seeds and a small PRNG
// ---------------------------------------------------------------------------------------------

/// The workload seed of one test; printed when the test panics.
struct Seed {
    test: &'static str,
    value: u64,
}

impl Seed {
    /// `RESEEDFS_TEST_SEED` when set, else one from the clock.
    fn new(test: &'static str) -> Seed {
        let value = std::env::var("RESEEDFS_TEST_SEED")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| {
                let nanos = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                // Truncation is fine: any 64 bits of the clock make a seed.
                #[allow(clippy::cast_possible_truncation)]
                let nanos = nanos as u64;
                nanos ^ u64::from(std::process::id()).rotate_left(32)
            });
        eprintln!("{test}: seed {value} (replay with RESEEDFS_TEST_SEED={value})");
        Seed { test, value }
    }
}

impl Drop for Seed {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "{} FAILED with seed {}: replay with RESEEDFS_TEST_SEED={}",
                self.test, self.value, self.value
            );
        }
    }
}

/// FNV-1a, 64 bits.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

// ---------------------------------------------------------------------------------------------
// Checksummed pages
// ---------------------------------------------------------------------------------------------

/// The unit of the writer workload: every write covers whole pages.
const PAGE: usize = 4096;
/// Writers write in the first 32 MiB of their file.
const REGION_PAGES: u64 = (32 << 20) / PAGE as u64;
/// At most 256 KiB per write.
const MAX_PAGES_PER_WRITE: u64 = (256 << 10) / PAGE as u64;
/// Page header: magic, writer, page, generation, checksum.
const HEADER: usize = 32;
const MAGIC: &[u8; 4] = b"RSF1";

/// Fills `buf` (one page) with the content of `page` of `writer`'s file at `generation`:
/// a header naming all three and a checksum, then bytes derived from them and the seed.
fn fill_page(buf: &mut [u8], seed: u64, writer: u32, page: u64, generation: u64) {
    buf[0..4].copy_from_slice(MAGIC);
    buf[4..8].copy_from_slice(&writer.to_le_bytes());
    buf[8..16].copy_from_slice(&page.to_le_bytes());
    buf[16..24].copy_from_slice(&generation.to_le_bytes());
    let mut rng = Rng::from_parts(&[seed, u64::from(writer), page, generation]);
    rng.fill(&mut buf[HEADER..]);
    let checksum = page_checksum(buf);
    buf[24..32].copy_from_slice(&checksum.to_le_bytes());
}

/// Checksum of a page: its header fields and its body.
fn page_checksum(buf: &[u8]) -> u64 {
    fnv1a(&buf[..24]) ^ fnv1a(&buf[HEADER..]).rotate_left(17)
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b.try_into().unwrap_or([0; 4]))
}

fn le_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))
}

/// What a page read back looks like, for failure messages.
fn describe_page(buf: &[u8]) -> String {
    if buf.len() < PAGE {
        return format!("a short page ({} bytes)", buf.len());
    }
    if buf.iter().all(|&b| b == 0) {
        return "zeros".into();
    }
    if &buf[0..4] != MAGIC {
        return format!("no page header (starts {:02x?})", &buf[..8]);
    }
    let checksum_ok = le_u64(&buf[24..32]) == page_checksum(buf);
    format!(
        "writer {} page {} generation {} ({})",
        le_u32(&buf[4..8]),
        le_u64(&buf[8..16]),
        le_u64(&buf[16..24]),
        if checksum_ok {
            "checksum ok"
        } else {
            "BAD checksum: torn or corrupt"
        }
    )
}

// ---------------------------------------------------------------------------------------------
// The writer workload
// ---------------------------------------------------------------------------------------------

/// What one writer's file must contain: the generation of every page (0 = never written,
/// reads as zeros) and the file length.
#[derive(Clone, Debug)]
struct WriterModel {
    writer: u32,
    name: String,
    pages: Vec<u64>,
    len: u64,
    /// Generation of the next write (one per write, from 1).
    next_generation: u64,
}

impl WriterModel {
    fn new(writer: u32) -> WriterModel {
        WriterModel {
            writer,
            name: format!("writer{writer}.dat"),
            pages: vec![0; usize::try_from(REGION_PAGES).unwrap_or(0)],
            len: 0,
            next_generation: 1,
        }
    }
}

/// Which volume to kill, and when: after `after` writes completed in all.
struct Kill<'a> {
    volume: &'a reseedfs::testbed::LoopVolume,
    after: usize,
}

/// Runs one writer: `writes` random page-aligned writes of 4 KiB to 256 KiB in its file under
/// `dir`, an fsync every 1 to 6 writes and at the end. Returns the updated model, or the first
/// error with what was being done.
fn writer_thread(
    dir: &Path,
    seed: u64,
    mut model: WriterModel,
    writes: usize,
    progress: &AtomicUsize,
) -> Result<WriterModel, String> {
    let path = dir.join(&model.name);
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    let mut rng = Rng::from_parts(&[seed, u64::from(model.writer), model.next_generation, 0x7772]);
    let mut until_fsync = rng.range(1, 6);
    let mut buf = vec![0u8; PAGE * MAX_PAGES_PER_WRITE as usize];
    for _ in 0..writes {
        let n = rng.range(1, MAX_PAGES_PER_WRITE);
        let first = rng.range(0, REGION_PAGES - n);
        let generation = model.next_generation;
        model.next_generation += 1;
        let len = usize::try_from(n).unwrap_or(1) * PAGE;
        for (i, page) in buf[..len].chunks_mut(PAGE).enumerate() {
            fill_page(page, seed, model.writer, first + i as u64, generation);
        }
        let offset = first * PAGE as u64;
        file.write_all_at(&buf[..len], offset).map_err(|e| {
            format!(
                "{}: write generation {generation} ({len} bytes at {offset}): {e}",
                path.display()
            )
        })?;
        for page in first..first + n {
            model.pages[usize::try_from(page).unwrap_or(0)] = generation;
        }
        model.len = model.len.max(offset + len as u64);
        until_fsync -= 1;
        if until_fsync == 0 {
            file.sync_all().map_err(|e| {
                format!(
                    "{}: fsync after generation {generation}: {e}",
                    path.display()
                )
            })?;
            until_fsync = rng.range(1, 6);
        }
        progress.fetch_add(1, Ordering::Relaxed);
    }
    file.sync_all()
        .map_err(|e| format!("{}: final fsync: {e}", path.display()))?;
    Ok(model)
}

/// Runs one writer thread per model in `dir`, each doing `writes` writes; kills `kill.volume`
/// once `kill.after` writes completed in all. Panics (with the mount log) on any writer error
/// or when the workload hangs.
fn run_writers(
    m: &Mounted,
    dir: &Path,
    seed: u64,
    models: Vec<WriterModel>,
    writes: usize,
    kill: Option<Kill<'_>>,
) -> Vec<WriterModel> {
    let count = models.len();
    let progress = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();
    for model in models {
        let (tx, progress, dir) = (tx.clone(), Arc::clone(&progress), dir.to_path_buf());
        thread::spawn(move || {
            let result = writer_thread(&dir, seed, model, writes, &progress);
            let _ = tx.send(result);
        });
    }
    drop(tx);

    let started = Instant::now();
    let mut kill = kill;
    let mut done = Vec::with_capacity(count);
    let mut errors = Vec::new();
    while done.len() + errors.len() < count {
        if let Some(k) = &kill {
            if progress.load(Ordering::Relaxed) >= k.after {
                eprintln!(
                    "killing {} after {} writes ({:?} into the workload)",
                    k.volume.mountpoint.display(),
                    progress.load(Ordering::Relaxed),
                    started.elapsed()
                );
                k.volume.shutdown().expect("shut down the volume");
                kill = None;
            }
        }
        match rx.recv_timeout(Duration::from_millis(5)) {
            Ok(Ok(model)) => done.push(model),
            Ok(Err(e)) => errors.push(e),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("a writer thread panicked; mount.log:\n{}", m.mount_log())
            }
        }
        if started.elapsed() > WORKLOAD_TIMEOUT {
            panic!(
                "writers still running after {WORKLOAD_TIMEOUT:?} ({} writes done): the mount \
                 hangs; mount.log:\n{}",
                progress.load(Ordering::Relaxed),
                m.mount_log()
            );
        }
    }
    assert!(
        errors.is_empty(),
        "the workload saw I/O errors through the mount:\n  {}\nmount.log:\n{}",
        errors.join("\n  "),
        m.mount_log()
    );
    assert!(
        kill.is_none(),
        "the workload ended before the volume was killed"
    );
    eprintln!(
        "{count} writers x {writes} writes done in {:?}",
        started.elapsed()
    );
    done.sort_by_key(|model| model.writer);
    done
}

/// Checks that `dir/<model.name>` holds exactly what the model says, page by page.
fn verify_writer_file(dir: &Path, seed: u64, model: &WriterModel) {
    let path = dir.join(&model.name);
    let data = read_all(&path);
    assert_eq!(
        data.len() as u64,
        model.len,
        "{}: length differs from what was written",
        path.display()
    );
    let mut expected = vec![0u8; PAGE];
    let mut bad = Vec::new();
    let mut bad_count = 0usize;
    for (page, &generation) in model.pages.iter().enumerate() {
        let start = page * PAGE;
        if start as u64 >= model.len {
            break;
        }
        let got = &data[start..(start + PAGE).min(data.len())];
        if generation == 0 {
            expected.fill(0);
        } else {
            fill_page(&mut expected, seed, model.writer, page as u64, generation);
        }
        if got != &expected[..got.len()] {
            bad_count += 1;
            if bad.len() < 10 {
                bad.push(format!(
                    "page {page} (offset {start}): expected generation {generation}, found {}",
                    describe_page(got)
                ));
            }
        }
    }
    assert!(
        bad_count == 0,
        "{}: {bad_count} pages differ from what was written:\n  {}",
        path.display(),
        bad.join("\n  ")
    );
}

/// Checks that every regular file in `mount_dir` is byte for byte the same as its namesake in
/// `backing_dir` (a copy's files on its volume). Returns how many files were compared.
fn assert_same_as_backing(mount_dir: &Path, backing_dir: &Path) -> usize {
    let mut compared = 0;
    let entries =
        fs::read_dir(mount_dir).unwrap_or_else(|e| panic!("list {}: {e}", mount_dir.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("list {}: {e}", mount_dir.display()));
        let is_file = entry
            .file_type()
            .unwrap_or_else(|e| panic!("stat {}: {e}", entry.path().display()))
            .is_file();
        if !is_file {
            continue;
        }
        let through_mount = read_all(&entry.path());
        let backing_path = backing_dir.join(entry.file_name());
        let backing = read_all(&backing_path);
        if through_mount != backing {
            let first = through_mount
                .iter()
                .zip(&backing)
                .position(|(a, b)| a != b)
                .unwrap_or(through_mount.len().min(backing.len()));
            let page = first / PAGE * PAGE;
            let around =
                |d: &[u8]| describe_page(&d[page.min(d.len())..(page + PAGE).min(d.len())]);
            panic!(
                "{} differs from the copy {}: lengths {} and {}, first difference at byte {first}; \
                 that page is {} through the mount and {} on the copy",
                entry.path().display(),
                backing_path.display(),
                through_mount.len(),
                backing.len(),
                around(&through_mount),
                around(&backing),
            );
        }
        compared += 1;
    }
    compared
}

// ---------------------------------------------------------------------------------------------
// Status and events
// ---------------------------------------------------------------------------------------------

/// Asserts the placement `init` promises for one database with two copies on three volumes.
fn assert_initial_placement(m: &Mounted) {
    let status = m.status_json();
    assert!(
        copy_is(&status, DB, "Volume1", "Mounted", true)
            && copy_is(&status, DB, "Volume2", "Healthy", false)
            && volume_state(&status, "Volume3") == Some("Spare"),
        "expected db001 Mounted on Volume1, Healthy on Volume2, Volume3 Spare; status:\n{status:#}"
    );
}

/// Waits until `status` shows the copy on `dead` failed and suspended, the one on `alive`
/// active, and the `dead` volume failed.
fn assert_failed_over(m: &Mounted, dead: &str, alive: &str) -> Value {
    let check = |status: &Value| {
        copy_is(status, DB, dead, "FailedAndSuspended", false)
            && copy_is(status, DB, alive, "Mounted", true)
            && volume_state(status, dead) == Some("Failed")
    };
    let seen = wait_for(STATE_TIMEOUT, || {
        let status = m.status_json();
        check(&status).then_some(status)
    });
    seen.unwrap_or_else(|| {
        panic!(
            "expected {dead}'s copy FailedAndSuspended and inactive, {alive}'s copy Mounted and \
             active, {dead} Failed; status after {STATE_TIMEOUT:?}:\n{:#}\nmount.log:\n{}",
            m.status_json(),
            m.mount_log()
        )
    })
}

/// Waits for an event 1109 (a copy's volume failed) naming `volume`.
fn assert_failure_event(m: &Mounted, volume: &str) {
    let names = |e: &Value| {
        e["volume"] == volume
            || e["message"]
                .as_str()
                .is_some_and(|text| text.contains(volume))
    };
    let found = wait_for(STATE_TIMEOUT, || {
        m.events_json()
            .into_iter()
            .find(|e| event_id(e) == Some(1109) && names(e))
    });
    assert!(
        found.is_some(),
        "no event 1109 naming {volume}; events:\n{:#?}",
        m.events_json()
    );
}

fn loop_bed() -> Testbed {
    Testbed::loop_volumes(3, VOLUME_BYTES).expect("three loop-mounted ext4 volumes")
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

/// Four writers, checksummed pages, the active copy's disk dies a third of the way in.
#[test]
fn r2_checksummed_writers_survive_active_volume_death() {
    const TEST: &str = "r2_checksummed_writers_survive_active_volume_death";
    if !require_mount_privileges(TEST) {
        return;
    }
    let seed = Seed::new(TEST);
    let m = Mounted::start(loop_bed(), &[DB], 2);
    assert_initial_placement(&m);

    let dir = m.db_files(DB);
    let (writers, writes) = (4, 300);
    let models = (0..writers).map(WriterModel::new).collect();
    let kill = Kill {
        volume: &m.bed.volumes[0],
        after: writers as usize * writes / 3,
    };
    let models = run_writers(&m, &dir, seed.value, models, writes, Some(kill));

    drop_caches();
    for model in &models {
        verify_writer_file(&dir, seed.value, model);
    }
    let compared = assert_same_as_backing(&dir, &m.backing_files(2, DB));
    assert_eq!(
        compared,
        models.len(),
        "every writer file is on the surviving copy"
    );
    assert_failed_over(&m, "Volume1", "Volume2");
    assert_failure_event(&m, "Volume1");
    drop(m.unmount());
}

/// SQLite in WAL mode with synchronous=FULL; the active copy's disk dies mid-workload.
#[test]
fn r2_sqlite_wal_survives_active_volume_death() {
    const TEST: &str = "r2_sqlite_wal_survives_active_volume_death";
    if !require_mount_privileges(TEST) {
        return;
    }
    let seed = Seed::new(TEST);
    let m = Mounted::start(loop_bed(), &[DB], 2);
    assert_initial_placement(&m);

    let path = m.db_files(DB).join("wal.sqlite");
    sqlite::create(&path);
    let (writers, transactions) = (2u32, 150usize);
    let progress = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();
    for writer in 0..writers {
        let (tx, progress, path) = (tx.clone(), Arc::clone(&progress), path.clone());
        let seed = seed.value;
        thread::spawn(move || {
            let _ = tx.send(sqlite::writer(&path, seed, writer, transactions, &progress));
        });
    }
    drop(tx);

    let started = Instant::now();
    let mut killed = false;
    let mut models = Vec::new();
    let mut errors = Vec::new();
    while models.len() + errors.len() < writers as usize {
        if !killed && progress.load(Ordering::Relaxed) >= writers as usize * transactions / 3 {
            eprintln!(
                "killing Volume1 after {} commits ({:?} into the workload)",
                progress.load(Ordering::Relaxed),
                started.elapsed()
            );
            m.bed.volumes[0].shutdown().expect("shut down Volume1");
            killed = true;
        }
        match rx.recv_timeout(Duration::from_millis(5)) {
            Ok(Ok(model)) => models.push(model),
            Ok(Err(e)) => errors.push(e),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("a SQLite writer panicked; mount.log:\n{}", m.mount_log())
            }
        }
        assert!(
            started.elapsed() < WORKLOAD_TIMEOUT,
            "SQLite writers still running after {WORKLOAD_TIMEOUT:?}: the mount hangs; \
             mount.log:\n{}",
            m.mount_log()
        );
    }
    assert!(
        errors.is_empty(),
        "SQLite saw errors through the mount:\n  {}\nmount.log:\n{}",
        errors.join("\n  "),
        m.mount_log()
    );
    assert!(killed, "the workload ended before Volume1 was killed");
    eprintln!("SQLite workload done in {:?}", started.elapsed());

    drop_caches();
    sqlite::verify(&path, seed.value, &models);
    // Every connection is closed: the WAL is checkpointed into the database file.
    let compared = assert_same_as_backing(&m.db_files(DB), &m.backing_files(2, DB));
    assert!(compared >= 1, "the database file is on the surviving copy");
    assert_failed_over(&m, "Volume1", "Volume2");
    assert_failure_event(&m, "Volume1");
    drop(m.unmount());
}

/// The passive copy's disk dies: nothing changes for the writers, Volume1 stays Mounted.
#[test]
fn r2_passive_volume_death_is_invisible() {
    const TEST: &str = "r2_passive_volume_death_is_invisible";
    if !require_mount_privileges(TEST) {
        return;
    }
    let seed = Seed::new(TEST);
    let m = Mounted::start(loop_bed(), &[DB], 2);
    assert_initial_placement(&m);

    let dir = m.db_files(DB);
    let (writers, writes) = (3, 100);
    let models = (0..writers).map(WriterModel::new).collect();
    let kill = Kill {
        volume: &m.bed.volumes[1],
        after: writers as usize * writes / 3,
    };
    let models = run_writers(&m, &dir, seed.value, models, writes, Some(kill));

    drop_caches();
    for model in &models {
        verify_writer_file(&dir, seed.value, model);
    }
    assert_same_as_backing(&dir, &m.backing_files(1, DB));
    assert_failed_over(&m, "Volume2", "Volume1");
    assert_failure_event(&m, "Volume2");
    drop(m.unmount());
}

/// Writes both before and after the passive copy's disk dies, a restart with that disk
/// repaired: the stale copy must stay FailedAndSuspended and the data written after the
/// failure must be intact.
#[test]
fn r2_restart_does_not_trust_a_stale_copy() {
    const TEST: &str = "r2_restart_does_not_trust_a_stale_copy";
    if !require_mount_privileges(TEST) {
        return;
    }
    let seed = Seed::new(TEST);
    let m = Mounted::start(loop_bed(), &[DB], 2);
    assert_initial_placement(&m);
    let dir = m.db_files(DB);
    let models = (0..2).map(WriterModel::new).collect();
    let models = run_writers(&m, &dir, seed.value, models, 40, None);

    m.bed.volumes[1].shutdown().expect("shut down Volume2");
    let models = run_writers(&m, &dir, seed.value, models, 40, None);
    assert_failed_over(&m, "Volume2", "Volume1");

    let bed = m.unmount();
    bed.volumes[1].revive().expect("revive Volume2");
    let stale = bed
        .volume_path(2)
        .join(format!("{DB}.db"))
        .join(&models[0].name);
    eprintln!(
        "Volume2 is back; its stale copy of {} has {} bytes",
        models[0].name,
        fs::metadata(&stale).map(|md| md.len()).unwrap_or(0)
    );

    let m = Mounted::mount_only(bed);
    let status = m.status_json();
    assert!(
        copy_is(&status, DB, "Volume2", "FailedAndSuspended", false)
            && copy_is(&status, DB, "Volume1", "Mounted", true),
        "after a restart the stale copy on Volume2 must stay FailedAndSuspended and Volume1 \
         stay Mounted; status:\n{status:#}\nmount.log:\n{}",
        m.mount_log()
    );
    for model in &models {
        verify_writer_file(&dir, seed.value, model);
    }
    assert_same_as_backing(&dir, &m.backing_files(1, DB));
    drop(m.unmount());
}

/// Both copies' disks are dead before the mount: it must refuse, naming the copies and why.
#[test]
fn r2_mount_refuses_with_no_copy_in_sync() {
    const TEST: &str = "r2_mount_refuses_with_no_copy_in_sync";
    if !require_mount_privileges(TEST) {
        return;
    }
    let bed = loop_bed();
    common::init(&bed, &[DB], 2);
    bed.volumes[0].shutdown().expect("shut down Volume1");
    bed.volumes[1].shutdown().expect("shut down Volume2");
    assert_mount_refused(&bed, &["Volume1", "Volume2"]);
}

/// Volume2 fell behind (its disk died while Volume1 took more writes), then Volume1's disk
/// dies while unmounted and Volume2's comes back: the only copy left is stale, so the mount
/// must refuse rather than serve old data.
#[test]
fn r2_mount_refuses_when_only_a_stale_copy_is_left() {
    const TEST: &str = "r2_mount_refuses_when_only_a_stale_copy_is_left";
    if !require_mount_privileges(TEST) {
        return;
    }
    let seed = Seed::new(TEST);
    let m = Mounted::start(loop_bed(), &[DB], 2);
    let dir = m.db_files(DB);
    let models = run_writers(&m, &dir, seed.value, vec![WriterModel::new(0)], 20, None);
    m.bed.volumes[1].shutdown().expect("shut down Volume2");
    run_writers(&m, &dir, seed.value, models, 20, None);
    assert_failed_over(&m, "Volume2", "Volume1");

    let bed = m.unmount();
    bed.volumes[0].shutdown().expect("shut down Volume1");
    bed.volumes[1].revive().expect("revive Volume2");
    assert_mount_refused(&bed, &["Volume1", "Volume2"]);
}

/// Runs `reseedfs mount` and asserts that it exits non-zero without mounting, and that what
/// it printed names `db001` and each of `volumes`.
fn assert_mount_refused(bed: &Testbed, volumes: &[&str]) {
    match try_mount(bed, Duration::from_secs(20)) {
        MountAttempt::Exited { status, log } => {
            eprintln!("reseedfs mount refused ({status}) as it should:\n{log}");
            assert!(
                !status.success(),
                "reseedfs mount exited 0 without a copy in sync; log:\n{log}"
            );
            for name in std::iter::once(DB).chain(volumes.iter().copied()) {
                assert!(
                    log.contains(name),
                    "the refusal does not name {name}; log:\n{log}"
                );
            }
        }
        MountAttempt::Mounted { log } => {
            panic!("reseedfs mount mounted with no copy in sync; log:\n{log}")
        }
        MountAttempt::Hung { log } => panic!(
            "reseedfs mount neither mounted nor exited within 20 s with no copy in sync; \
             log:\n{log}"
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// The SQLite workload
// ---------------------------------------------------------------------------------------------

mod sqlite {
    use super::{Rng, fnv1a};
    use rusqlite::{Connection, TransactionBehavior, params};
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// What one writer committed: the generation of each of its rows, by sequence number.
    pub struct Model {
        pub writer: u32,
        pub generations: Vec<u32>,
    }

    /// The payload of row (`writer`, `seq`) at `generation`: 200 B to 8 KiB from the seed.
    fn payload(seed: u64, writer: u32, seq: usize, generation: u32) -> Vec<u8> {
        let mut rng =
            Rng::from_parts(&[seed, u64::from(writer), seq as u64, u64::from(generation)]);
        let len = rng.range(200, 8 << 10) as usize;
        rng.bytes(len)
    }

    fn open(path: &Path) -> rusqlite::Result<Connection> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(60))?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        assert_eq!(mode, "wal", "SQLite refused WAL mode on the mount");
        conn.execute_batch("PRAGMA synchronous=FULL")?;
        Ok(conn)
    }

    /// Creates the schema.
    pub fn create(path: &Path) {
        let conn = open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        conn.execute_batch(
            "CREATE TABLE rows (writer INTEGER NOT NULL, seq INTEGER NOT NULL,
                 generation INTEGER NOT NULL, digest INTEGER NOT NULL, payload BLOB NOT NULL,
                 PRIMARY KEY (writer, seq));
             CREATE TABLE totals (writer INTEGER PRIMARY KEY, rows INTEGER NOT NULL);",
        )
        .unwrap_or_else(|e| panic!("create the schema in {}: {e}", path.display()));
    }

    /// Runs `transactions` transactions, each inserting 1 to 20 rows, updating up to 5 of the
    /// writer's earlier rows and its row count. Returns what was committed, or the first error.
    pub fn writer(
        path: &Path,
        seed: u64,
        writer: u32,
        transactions: usize,
        progress: &AtomicUsize,
    ) -> Result<Model, String> {
        let mut conn = open(path).map_err(|e| format!("writer {writer}: open: {e}"))?;
        let mut rng = Rng::from_parts(&[seed, u64::from(writer), 0x5351]);
        let mut model = Model {
            writer,
            generations: Vec::new(),
        };
        for t in 0..transactions {
            let fail = |what: &str, e: rusqlite::Error| {
                format!("writer {writer}, transaction {t}: {what}: {e}")
            };
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| fail("begin", e))?;
            let mut staged = model.generations.clone();
            for _ in 0..rng.range(1, 20) {
                let seq = staged.len();
                let data = payload(seed, writer, seq, 1);
                tx.execute(
                    "INSERT INTO rows (writer, seq, generation, digest, payload)
                     VALUES (?1, ?2, 1, ?3, ?4)",
                    params![writer, seq as i64, fnv1a(&data) as i64, data],
                )
                .map_err(|e| fail("insert", e))?;
                staged.push(1);
            }
            for _ in 0..rng.range(0, 5) {
                let seq = rng.range(0, staged.len() as u64 - 1) as usize;
                staged[seq] += 1;
                let data = payload(seed, writer, seq, staged[seq]);
                tx.execute(
                    "UPDATE rows SET generation = ?1, digest = ?2, payload = ?3
                     WHERE writer = ?4 AND seq = ?5",
                    params![staged[seq], fnv1a(&data) as i64, data, writer, seq as i64],
                )
                .map_err(|e| fail("update", e))?;
            }
            tx.execute(
                "INSERT INTO totals (writer, rows) VALUES (?1, ?2)
                 ON CONFLICT (writer) DO UPDATE SET rows = excluded.rows",
                params![writer, staged.len() as i64],
            )
            .map_err(|e| fail("update totals", e))?;
            tx.commit().map_err(|e| fail("commit", e))?;
            model.generations = staged;
            progress.fetch_add(1, Ordering::Relaxed);
        }
        Ok(model)
    }

    /// `PRAGMA integrity_check` is "ok", and the tables hold exactly the committed rows.
    pub fn verify(path: &Path, seed: u64, models: &[Model]) {
        let conn = open(path).unwrap_or_else(|e| panic!("reopen {}: {e}", path.display()));
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("integrity_check: {e}"));
        assert_eq!(check, "ok", "PRAGMA integrity_check");
        let committed: usize = models.iter().map(|m| m.generations.len()).sum();
        let count: i64 = conn
            .query_row("SELECT count(*) FROM rows", [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("count rows: {e}"));
        assert_eq!(count, committed as i64, "committed rows");
        for model in models {
            let total: i64 = conn
                .query_row(
                    "SELECT rows FROM totals WHERE writer = ?1",
                    [model.writer],
                    |r| r.get(0),
                )
                .unwrap_or_else(|e| panic!("totals of writer {}: {e}", model.writer));
            assert_eq!(
                total,
                model.generations.len() as i64,
                "totals of writer {}",
                model.writer
            );
            let mut stmt = conn
                .prepare("SELECT seq, generation, digest, payload FROM rows WHERE writer = ?1 ORDER BY seq")
                .unwrap_or_else(|e| panic!("prepare: {e}"));
            let rows = stmt
                .query_map([model.writer], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, u32>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Vec<u8>>(3)?,
                    ))
                })
                .unwrap_or_else(|e| panic!("select rows of writer {}: {e}", model.writer));
            let mut seen = 0usize;
            for row in rows {
                let (seq, generation, digest, data) =
                    row.unwrap_or_else(|e| panic!("read a row of writer {}: {e}", model.writer));
                assert_eq!(
                    seq, seen as i64,
                    "writer {}: rows are numbered without gaps",
                    model.writer
                );
                assert_eq!(
                    generation, model.generations[seen],
                    "writer {} row {seq}: generation",
                    model.writer
                );
                let expected = payload(seed, model.writer, seen, generation);
                assert!(
                    data == expected && digest == fnv1a(&expected) as i64,
                    "writer {} row {seq}: payload differs from what was committed",
                    model.writer
                );
                seen += 1;
            }
            assert_eq!(
                seen,
                model.generations.len(),
                "rows of writer {}",
                model.writer
            );
        }
    }
}
