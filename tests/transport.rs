//! FUSE over io_uring in the product (`fuse_transport = "uring"`), on real mounts over real
//! ext4 loop volumes: the ring serves a representative slice of the filesystem (names,
//! data, links, xattrs, truncate, fallocate, SEEK_DATA/SEEK_HOLE, O_DIRECT), a SQLite
//! database, and writes that go on while the active copy's disk dies; and without root's
//! knob the same setting falls back to `/dev/fuse`, says so and serves.
//!
//! The knob (`/sys/module/fuse/parameters/enable_uring`) is global: each test sets it for its
//! run and puts the previous value back when it ends, panics included (a guard), and the
//! tests of this file run one at a time (a mutex). Mounts of other test files never ask for
//! the ring, so what the knob says does not change them. Any mount suite can also run over
//! the ring: `RESEEDFS_TEST_FUSE_TRANSPORT=uring` (tests/common) with the knob set.

mod common;

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use common::{Mounted, copy_is, drop_caches, event_id, volume_state, wait_for};
use reseedfs::sys::fuse_uring::{self, Enabled};
use reseedfs::testbed::Testbed;
use reseedfs::testbed::rng::Rng;
use serde_json::Value;

const DB: &str = "db001";
const VOLUME_BYTES: u64 = 384 << 20;
const STATE_TIMEOUT: Duration = Duration::from_secs(15);
const WORKLOAD_TIMEOUT: Duration = Duration::from_secs(300);
const PAGE: usize = 4096;

/// The knob is global: one test of this file at a time.
static KNOB: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    KNOB.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Sets the knob to `on` until the guard drops; `None` (loudly skipped, a failure under
/// `CI=true`) when this kernel has no FUSE over io_uring.
fn set_knob(test: &str, on: bool) -> Option<Enabled> {
    match Enabled::set_to(on) {
        Ok(guard) => Some(guard),
        Err(e) => {
            let why = format!("cannot set {}: {e}", fuse_uring::ENABLE_URING);
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{test}: FUSE over io_uring cannot be tested in CI: {why}"
            );
            eprintln!("\n{0}\nSKIPPED: {test}: {why}\n{0}", "=".repeat(70));
            None
        }
    }
}

/// A pool of `volumes` loop volumes with db001 in 2 copies, mounted with `fuse_transport`.
fn mount(volumes: usize, transport: &str) -> Mounted {
    let bed = Testbed::loop_volumes(volumes, VOLUME_BYTES).expect("loop-mounted ext4 volumes");
    common::init(&bed, &[DB], 2);
    common::set_fuse_transport(&bed.config_path, transport);
    Mounted::mount_only(bed)
}

/// The daemon's threads whose name starts with `prefix`.
fn threads_named(pid: u32, prefix: &str) -> usize {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(Result::ok)
                .filter(|t| {
                    fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|comm| comm.starts_with(prefix))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Event 3001 of this mount.
fn mount_started(m: &Mounted) -> Value {
    m.events_json()
        .into_iter()
        .rev()
        .find(|e| event_id(e) == Some(3001))
        .unwrap_or_else(|| panic!("no event 3001; events:\n{:#?}", m.events_json()))
}

/// Checks the ring serves: `status --json`, event 3001, and the ring's threads (one per
/// entry: `threads` on each of the kernel's per-CPU queues).
fn assert_ring_serves(m: &Mounted) {
    let status = m.status_json();
    assert_eq!(
        status["fuse_transport"],
        "uring",
        "status --json:\n{status:#}\nmount.log:\n{}",
        m.mount_log()
    );
    let text = m.cli(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("FUSE transport: uring"),
        "`status` names the ring:\n{text}"
    );
    let started = mount_started(m);
    assert_eq!(started["fuse_transport"], "uring", "{started:#}");
    assert!(
        started.get("fuse_transport_fallback").is_none(),
        "{started:#}"
    );
    let queues = fuse_uring::queue_count().expect("possible CPUs");
    let entries = threads_named(m.pid(), "fuse-ring-");
    assert_eq!(
        entries,
        8 * queues,
        "8 ring entries (threads) on each of {queues} queue(s)"
    );
}

/// A page-aligned buffer of `len` bytes (O_DIRECT).
struct Aligned {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let raw = vec![0u8; len + PAGE];
        let start = raw.as_ptr().align_offset(PAGE);
        Aligned { raw, start, len }
    }

    fn buf(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

fn pattern(parts: &[u64], len: usize) -> Vec<u8> {
    Rng::from_parts(parts).bytes(len)
}

/// Names, data, links, xattrs, truncate, fallocate, SEEK_DATA/SEEK_HOLE, O_DIRECT: each
/// checked through the mount.
fn representative_slice(root: &Path) {
    use rustix::fs::{FallocateFlags, SeekFrom, XattrFlags};

    let dir = root.join("slice");
    fs::create_dir(&dir).expect("mkdir slice");
    let a = dir.join("a.txt");
    fs::write(&a, b"hello, ring").expect("create and write a.txt");
    assert_eq!(fs::read(&a).expect("read a.txt"), b"hello, ring");

    let b = dir.join("b.txt");
    fs::rename(&a, &b).expect("rename a.txt to b.txt");
    assert!(!a.exists() && b.exists(), "rename moved the name");
    assert_eq!(fs::read(&b).expect("read b.txt"), b"hello, ring");

    let sym = dir.join("sym");
    std::os::unix::fs::symlink("b.txt", &sym).expect("symlink");
    assert_eq!(fs::read_link(&sym).expect("readlink"), Path::new("b.txt"));
    assert_eq!(
        fs::read(&sym).expect("read through the symlink"),
        b"hello, ring"
    );

    let hard = dir.join("hard");
    fs::hard_link(&b, &hard).expect("link");
    assert_eq!(fs::metadata(&b).expect("stat b.txt").nlink(), 2);
    assert_eq!(fs::read(&hard).expect("read the link"), b"hello, ring");

    let mut names: Vec<String> = fs::read_dir(&dir)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["b.txt", "hard", "sym"]);

    // xattrs: set, size query, value, list, remove.
    rustix::fs::setxattr(&b, "user.ring", b"value-1", XattrFlags::empty()).expect("setxattr");
    let size = rustix::fs::getxattr_query(&b, "user.ring").expect("getxattr size");
    assert_eq!(size, 7);
    let mut value = [0u8; 64];
    let n = rustix::fs::getxattr(&b, "user.ring", &mut value).expect("getxattr");
    assert_eq!(&value[..n], b"value-1");
    let mut list = [0u8; 256];
    let n = rustix::fs::listxattr(&b, &mut list).expect("listxattr");
    assert!(
        list[..n]
            .split(|&c| c == 0)
            .any(|name| name == b"user.ring"),
        "listxattr: {:?}",
        String::from_utf8_lossy(&list[..n])
    );
    rustix::fs::removexattr(&b, "user.ring").expect("removexattr");
    assert_eq!(
        rustix::fs::getxattr(&b, "user.ring", &mut value).err(),
        Some(rustix::io::Errno::NODATA)
    );

    // truncate, shorter then longer (zeros).
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&b)
        .expect("open b.txt");
    f.set_len(5).expect("truncate to 5");
    assert_eq!(fs::read(&b).expect("read truncated"), b"hello");
    f.set_len(8192).expect("extend to 8 KiB");
    let back = fs::read(&b).expect("read extended");
    assert_eq!(back.len(), 8192);
    assert!(
        back[5..].iter().all(|&c| c == 0),
        "an extended file reads zeros"
    );
    drop(f);

    // fallocate, a punched hole, SEEK_DATA and SEEK_HOLE.
    let sparse = dir.join("sparse");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&sparse)
        .expect("create sparse");
    rustix::fs::fallocate(&f, FallocateFlags::empty(), 0, 2 << 20).expect("fallocate 2 MiB");
    assert_eq!(
        f.metadata().expect("stat").len(),
        2 << 20,
        "fallocate sized the file"
    );
    let data = pattern(&[1], 64 << 10);
    f.write_all_at(&data, 0).expect("write 64 KiB at 0");
    f.write_all_at(&data, 1 << 20)
        .expect("write 64 KiB at 1 MiB");
    f.sync_all().expect("fsync sparse");
    rustix::fs::fallocate(
        &f,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        0,
        1 << 20,
    )
    .expect("punch the first MiB");
    assert_eq!(
        rustix::fs::seek(&f, SeekFrom::Data(0)).expect("SEEK_DATA"),
        1 << 20,
        "the first data after the punched hole"
    );
    let hole = rustix::fs::seek(&f, SeekFrom::Hole(1 << 20)).expect("SEEK_HOLE");
    assert!(
        ((1 << 20) + (64 << 10)..=2 << 20).contains(&hole),
        "SEEK_HOLE from 1 MiB: {hole}"
    );
    let mut back = vec![0u8; 64 << 10];
    f.read_exact_at(&mut back, 1 << 20).expect("read at 1 MiB");
    assert!(back == data, "data after the hole");
    f.read_exact_at(&mut back, 0).expect("read the hole");
    assert!(back.iter().all(|&c| c == 0), "a punched hole reads zeros");
    drop(f);

    // O_DIRECT: aligned 1 MiB writes and reads, and 4 KiB reads.
    let direct = dir.join("direct");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(&direct)
        .expect("open O_DIRECT");
    let mut buf = Aligned::new(1 << 20);
    for k in 0..4u64 {
        buf.buf().copy_from_slice(&pattern(&[2, k], 1 << 20));
        f.write_all_at(buf.buf(), k << 20)
            .expect("O_DIRECT write 1 MiB");
    }
    for k in 0..4u64 {
        f.read_exact_at(buf.buf(), k << 20)
            .expect("O_DIRECT read 1 MiB");
        assert!(buf.buf() == pattern(&[2, k], 1 << 20), "O_DIRECT MiB {k}");
    }
    let mut small = Aligned::new(PAGE);
    for page in [0u64, 77, 300, 1023] {
        let at = page * PAGE as u64;
        f.read_exact_at(small.buf(), at)
            .expect("O_DIRECT read 4 KiB");
        let whole = pattern(&[2, at >> 20], 1 << 20);
        let off = (at % (1 << 20)) as usize;
        assert!(
            small.buf() == &whole[off..off + PAGE],
            "O_DIRECT page {page}"
        );
    }
    drop(f);

    for name in ["b.txt", "hard", "sym", "sparse", "direct"] {
        fs::remove_file(dir.join(name)).unwrap_or_else(|e| panic!("unlink {name}: {e}"));
    }
    assert_eq!(fs::read_dir(&dir).expect("readdir").count(), 0);
    fs::remove_dir(&dir).expect("rmdir slice");
    assert!(!dir.exists());
}

/// A SQLite database in WAL mode (synchronous=FULL): what each transaction inserted.
mod sqlite {
    use super::pattern;
    use rusqlite::{Connection, params};
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn open(path: &Path) -> rusqlite::Result<Connection> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(60))?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        assert_eq!(mode, "wal", "SQLite refused WAL mode on the mount");
        conn.execute_batch("PRAGMA synchronous=FULL")?;
        Ok(conn)
    }

    /// Runs `transactions` transactions of 1 to 12 rows of 100 B to 6 KiB each; the
    /// number of rows committed, or the first error.
    pub fn run(path: &Path, transactions: usize, progress: &AtomicUsize) -> Result<usize, String> {
        let mut conn = open(path).map_err(|e| format!("open: {e}"))?;
        conn.execute_batch("CREATE TABLE rows (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
            .map_err(|e| format!("create: {e}"))?;
        let mut rows = 0u64;
        for t in 0..transactions {
            let tx = conn.transaction().map_err(|e| format!("begin {t}: {e}"))?;
            for _ in 0..1 + t % 12 {
                let data = pattern(&[3, rows], 100 + (rows as usize * 997) % 6000);
                tx.execute(
                    "INSERT INTO rows (id, payload) VALUES (?1, ?2)",
                    params![rows as i64, data],
                )
                .map_err(|e| format!("insert in {t}: {e}"))?;
                rows += 1;
            }
            tx.commit().map_err(|e| format!("commit {t}: {e}"))?;
            progress.fetch_add(1, Ordering::Relaxed);
        }
        Ok(rows as usize)
    }

    /// `integrity_check` is ok and the table holds exactly the committed rows.
    pub fn verify(path: &Path, rows: usize) {
        let conn = open(path).unwrap_or_else(|e| panic!("reopen {}: {e}", path.display()));
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity_check");
        assert_eq!(check, "ok", "PRAGMA integrity_check");
        let mut stmt = conn
            .prepare("SELECT id, payload FROM rows ORDER BY id")
            .expect("prepare");
        let mut seen = 0u64;
        for row in stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
            .expect("select")
        {
            let (id, data) = row.expect("row");
            assert_eq!(id, seen as i64, "rows without gaps");
            let expected = pattern(&[3, seen], 100 + (seen as usize * 997) % 6000);
            assert!(data == expected, "row {id}: payload differs");
            seen += 1;
        }
        assert_eq!(seen as usize, rows, "committed rows");
    }
}

/// One writer's file: chunks of 256 KiB one after the other until `stop` (at most
/// `chunks`), O_DIRECT from aligned buffers or buffered with an fdatasync every 16; every
/// write must complete. Returns how many chunks it wrote.
fn writer(
    path: PathBuf,
    id: u64,
    chunks: u64,
    direct: bool,
    progress: &AtomicUsize,
    stop: &AtomicBool,
) -> Result<u64, String> {
    const CHUNK: usize = 256 << 10;
    let mut options = OpenOptions::new();
    options.read(true).write(true).create_new(true);
    if direct {
        options.custom_flags(libc::O_DIRECT);
    }
    let f: File = options
        .open(&path)
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    let mut buf = Aligned::new(CHUNK);
    let mut written = 0;
    for k in 0..chunks {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        buf.buf().copy_from_slice(&pattern(&[4, id, k], CHUNK));
        f.write_all_at(buf.buf(), k * CHUNK as u64)
            .map_err(|e| format!("writer {id}: write of chunk {k}: {e}"))?;
        if !direct && k % 16 == 15 {
            f.sync_data()
                .map_err(|e| format!("writer {id}: fdatasync after chunk {k}: {e}"))?;
        }
        progress.fetch_add(1, Ordering::Relaxed);
        written += 1;
    }
    f.sync_all()
        .map_err(|e| format!("writer {id}: final fsync: {e}"))?;
    Ok(written)
}

fn verify_writer(path: &Path, id: u64, chunks: u64) {
    const CHUNK: usize = 256 << 10;
    let back = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert_eq!(
        back.len() as u64,
        chunks * CHUNK as u64,
        "{}",
        path.display()
    );
    for k in 0..chunks {
        let at = (k as usize) * CHUNK;
        assert!(
            back[at..at + CHUNK] == pattern(&[4, id, k], CHUNK),
            "writer {id}, chunk {k}: what was written is not what reads back"
        );
    }
}

/// Over the ring: the slice, then two writers (one O_DIRECT) and a SQLite database while
/// the active copy's volume dies; every write completes and reads back right, and the
/// copy on the second volume takes over.
#[test]
fn the_ring_serves_the_filesystem_a_database_and_writes_through_a_dying_volume() {
    const TEST: &str =
        "the_ring_serves_the_filesystem_a_database_and_writes_through_a_dying_volume";
    if !common::require_mount_privileges(TEST) {
        return;
    }
    let _serial = serial();
    let Some(_knob) = set_knob(TEST, true) else {
        return;
    };
    let m = mount(3, "uring");
    assert_ring_serves(&m);
    assert!(
        copy_is(&m.status_json(), DB, "Volume1", "Mounted", true),
        "db001 active on Volume1:\n{:#}",
        m.status_json()
    );

    let root = m.db_files(DB);
    representative_slice(&root);

    // Writers go on until a while after the kill; SQLite runs all its transactions.
    let chunks = 240u64;
    let sqlite_transactions = 150usize;
    let progress = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let db_path = root.join("ring.sqlite");
    let mut writers = Vec::new();
    for (id, direct) in [(0u64, true), (1, false)] {
        let (path, progress, stop) = (
            root.join(format!("w{id}.dat")),
            Arc::clone(&progress),
            Arc::clone(&stop),
        );
        writers.push(thread::spawn(move || {
            writer(path, id, chunks, direct, &progress, &stop)
        }));
    }
    let sqlite_progress = Arc::new(AtomicUsize::new(0));
    let database = {
        let (path, progress) = (db_path.clone(), Arc::clone(&sqlite_progress));
        thread::spawn(move || sqlite::run(&path, sqlite_transactions, &progress))
    };
    let started = Instant::now();
    let in_flight = || {
        sqlite_progress.load(Ordering::Relaxed) >= sqlite_transactions / 4
            || progress.load(Ordering::Relaxed) >= chunks as usize / 2
            || database.is_finished()
            || writers.iter().any(|w| w.is_finished())
    };
    while !in_flight() {
        assert!(started.elapsed() < WORKLOAD_TIMEOUT, "the workload stalled");
        thread::sleep(Duration::from_millis(2));
    }
    let chunks_before = progress.load(Ordering::Relaxed);
    let commits_before = sqlite_progress.load(Ordering::Relaxed);
    eprintln!(
        "killing Volume1 after {chunks_before} chunks and {commits_before} SQLite commits \
         ({:?} in)",
        started.elapsed()
    );
    m.bed.volumes[0].shutdown().expect("shut down Volume1");
    // Writes go on through the failover, then stop.
    let _ = wait_for(WORKLOAD_TIMEOUT, || {
        (progress.load(Ordering::Relaxed) >= chunks_before + 64
            || writers.iter().all(|w| w.is_finished()))
        .then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    fn finished<T>(w: &thread::JoinHandle<T>) -> bool {
        wait_for(WORKLOAD_TIMEOUT, || w.is_finished().then_some(())).is_some()
    }
    let mut written = Vec::new();
    let mut errors = Vec::new();
    for w in writers {
        assert!(
            finished(&w),
            "a writer still runs after {WORKLOAD_TIMEOUT:?}: the mount hangs; mount.log:\n{}",
            m.mount_log()
        );
        match w.join().expect("a writer panicked") {
            Ok(n) => written.push(n),
            Err(e) => errors.push(e),
        }
    }
    assert!(
        finished(&database),
        "SQLite still runs after {WORKLOAD_TIMEOUT:?}: the mount hangs; mount.log:\n{}",
        m.mount_log()
    );
    let rows = database.join().expect("the SQLite thread panicked");
    if let Err(e) = &rows {
        errors.push(format!("SQLite: {e}"));
    }
    assert!(
        errors.is_empty(),
        "writes failed over the ring while Volume1 died: {errors:?}\nmount.log:\n{}",
        m.mount_log()
    );
    let rows = rows.expect("checked");
    let total: u64 = written.iter().sum();
    eprintln!(
        "{total} chunks written ({} after the kill), {} SQLite commits after it",
        total as usize - chunks_before,
        sqlite_transactions - commits_before
    );
    assert!(
        total as usize > chunks_before && commits_before < sqlite_transactions,
        "writes went on after the kill"
    );

    drop_caches();
    for (id, n) in written.iter().enumerate() {
        verify_writer(&root.join(format!("w{id}.dat")), id as u64, *n);
    }
    sqlite::verify(&db_path, rows);
    let failed_over = wait_for(STATE_TIMEOUT, || {
        let s = m.status_json();
        (copy_is(&s, DB, "Volume1", "FailedAndSuspended", false)
            && copy_is(&s, DB, "Volume2", "Mounted", true)
            && volume_state(&s, "Volume1") == Some("Failed"))
        .then_some(s)
    });
    assert!(
        failed_over.is_some(),
        "db001 did not fail over to Volume2:\n{:#}\nmount.log:\n{}",
        m.status_json(),
        m.mount_log()
    );
    // Still the ring after the failover.
    assert_eq!(m.status_json()["fuse_transport"], "uring");
    drop(m.unmount());
}

/// `fuse_transport = "uring"` without root's knob: the mount serves over `/dev/fuse`, and
/// says why and how to allow the ring (the log's warning, event 3001), once.
#[test]
fn without_the_knob_the_ring_falls_back_to_dev_fuse_and_says_so() {
    const TEST: &str = "without_the_knob_the_ring_falls_back_to_dev_fuse_and_says_so";
    if !common::require_mount_privileges(TEST) {
        return;
    }
    let _serial = serial();
    let Some(_knob) = set_knob(TEST, false) else {
        return;
    };
    let m = mount(2, "uring");
    let status = m.status_json();
    assert_eq!(status["fuse_transport"], "dev_fuse", "{status:#}");
    assert_eq!(threads_named(m.pid(), "fuse-ring-"), 0, "no ring threads");

    let log = m.mount_log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("FUSE over io_uring"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning; mount.log:\n{log}");
    for needle in [
        fuse_uring::ENABLE_URING,
        "echo 1 >",
        "modprobe fuse enable_uring=1",
        "/dev/fuse",
    ] {
        assert!(
            warnings[0].contains(needle),
            "{needle:?} in {}",
            warnings[0]
        );
    }
    let started = mount_started(&m);
    assert_eq!(started["fuse_transport"], "dev_fuse", "{started:#}");
    let why = started["fuse_transport_fallback"]
        .as_str()
        .unwrap_or_else(|| panic!("event 3001 says why not the ring: {started:#}"));
    assert!(
        why.contains(fuse_uring::ENABLE_URING) && why.contains("modprobe fuse enable_uring=1"),
        "{why}"
    );

    // And it serves.
    let file = m.db_files(DB).join("fallback.dat");
    let data = pattern(&[5], 3 << 20);
    fs::write(&file, &data).expect("write through /dev/fuse");
    drop_caches();
    assert!(
        fs::read(&file).expect("read back") == data,
        "data read back"
    );
    drop(m.unmount());
}
