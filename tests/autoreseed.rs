//! AutoReseed end to end, on real mounts with short timings: the active copy's disk dies
//! under a write workload, the workflow tries to resume it (the disk is dead), assigns the
//! spare, seeds it online and verifies it, and the workload never sees an error. Without a
//! spare, the workflow reports spares exhausted and the database runs on one copy.
//!
//! Needs root, `/dev/fuse` and loop devices; elsewhere prints `SKIPPED` (fails under
//! `CI=true`).

#![cfg(target_os = "linux")]

mod common;

use std::fs;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use common::{
    Mounted, copy_is, copy_status, event_id, read_all, require_mount_privileges, wait_for,
};
use reseedfs::config::Config;
use reseedfs::testbed::Testbed;
use reseedfs::testbed::rng::Rng;
use serde_json::Value;

const DB: &str = "db001";
const PAGE: usize = 4096;
/// Pages per writer file (16 MiB).
const PAGES: u64 = 4096;
/// A file written once before the disk dies.
const COLD: u64 = 48 << 20;

fn page(file: u64, index: u64, version: u64) -> Vec<u8> {
    Rng::from_parts(&[file, index, version]).bytes(PAGE)
}

/// Short AutoReseed timings written into the testbed's config.
fn short_timings(bed: &Testbed) {
    let mut c = Config::load(&bed.config_path).expect("load config");
    c.autoreseed.dwell = Duration::from_millis(500);
    c.autoreseed.resume_attempts = 1;
    c.autoreseed.resume_interval = Duration::from_millis(500);
    c.autoreseed.spare_attempts = 2;
    c.autoreseed.spare_interval = Duration::from_secs(1);
    c.autoreseed.seed_attempts = 1;
    c.autoreseed.seed_interval = Duration::from_secs(1);
    fs::write(&bed.config_path, c.to_toml()).expect("write config");
}

/// Writers, each rewriting random pages of its own file with an fsync every 8 writes,
/// keeping the version of every page; `stop` ends them. Returns (file, versions, random
/// writes). Returns once every writer has written its whole file once (on a loaded
/// machine that first pass can take longer than a reseed), so that what follows happens
/// while they rewrite random pages.
fn start_writers(
    dir: &Path,
    n: u64,
    stop: &Arc<AtomicBool>,
) -> Vec<thread::JoinHandle<(PathBuf, Vec<u64>, u64)>> {
    let (passed, first_pass) = std::sync::mpsc::channel::<u64>();
    let writers: Vec<_> = (0..n)
        .map(|w| {
            let path = dir.join(format!("writer{w}.dat"));
            let stop = stop.clone();
            let passed = passed.clone();
            thread::spawn(move || {
                let f = fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)
                    .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
                let mut versions = vec![0u64; PAGES as usize];
                // First pass: the whole file, so the reseed has data to move.
                for i in 0..PAGES {
                    versions[i as usize] = 1;
                    f.write_all_at(&page(w, i, 1), i * PAGE as u64)
                        .unwrap_or_else(|e| panic!("writer {w} page {i}: {e}"));
                }
                f.sync_all().expect("fsync");
                let _ = passed.send(w);
                let mut rng = Rng::new(w);
                let mut writes = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let i = rng.below(PAGES);
                    let v = versions[i as usize] + 1;
                    f.write_all_at(&page(w, i, v), i * PAGE as u64)
                        .unwrap_or_else(|e| panic!("writer {w} page {i} (write {writes}): {e}"));
                    versions[i as usize] = v;
                    writes += 1;
                    if writes % 8 == 0 {
                        f.sync_data()
                            .unwrap_or_else(|e| panic!("writer {w} fsync (write {writes}): {e}"));
                    }
                }
                f.sync_all().expect("final fsync");
                (path, versions, writes)
            })
        })
        .collect();
    drop(passed);
    for _ in 0..n {
        // A writer that failed its first pass drops its sender without sending.
        if let Err(e) = first_pass.recv_timeout(Duration::from_secs(300)) {
            stop.store(true, Ordering::Relaxed);
            for w in writers {
                if let Err(panic) = w.join() {
                    std::panic::resume_unwind(panic);
                }
            }
            panic!("the writers never finished their first pass: {e}");
        }
    }
    writers
}

fn verify_file(path: &Path, w: u64, versions: &[u64]) {
    let data = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert_eq!(data.len(), PAGES as usize * PAGE, "{} size", path.display());
    for (i, v) in versions.iter().enumerate() {
        let got = &data[i * PAGE..(i + 1) * PAGE];
        assert!(
            got == page(w, i as u64, *v).as_slice(),
            "{} page {i}: not version {v}",
            path.display()
        );
    }
}

/// Every file under `a/<db>.db` and `a/<db>.log` equals `b`'s.
fn assert_same_tree(a: &Path, b: &Path) {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
        for e in fs::read_dir(root.join(rel)).expect("read_dir") {
            let e = e.expect("dir entry");
            let r = rel.join(e.file_name());
            if e.file_type().expect("file type").is_dir() {
                walk(root, &r, out);
            }
            out.push(r);
        }
    }
    let mut files = 0;
    for folder in [format!("{DB}.db"), format!("{DB}.log")] {
        let (mut la, mut lb) = (Vec::new(), Vec::new());
        walk(a, Path::new(&folder), &mut la);
        walk(b, Path::new(&folder), &mut lb);
        la.sort();
        lb.sort();
        assert_eq!(
            la,
            lb,
            "{} and {} list different files",
            a.display(),
            b.display()
        );
        for p in la {
            if a.join(&p).is_file() {
                let (da, db) = (
                    fs::read(a.join(&p)).expect("a"),
                    fs::read(b.join(&p)).expect("b"),
                );
                assert!(
                    da == db,
                    "{} differs between {} and {}",
                    p.display(),
                    a.display(),
                    b.display()
                );
                files += 1;
            }
        }
    }
    assert!(files > 0, "no file compared");
}

fn ids(events: &[Value]) -> Vec<u64> {
    events.iter().filter_map(event_id).collect()
}

#[test]
fn the_active_disk_dies_and_the_spare_is_seeded_while_the_database_writes() {
    if !require_mount_privileges(
        "the_active_disk_dies_and_the_spare_is_seeded_while_the_database_writes",
    ) {
        return;
    }
    let bed = Testbed::loop_volumes(3, 384 << 20).expect("three loop volumes");
    common::init(&bed, &[DB], 2);
    short_timings(&bed);
    let m = Mounted::mount_only(bed);
    let dir = m.db_files(DB);
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&dir, 3, &stop);
    // The database is busy; then Volume1 (the active copy) dies.
    thread::sleep(Duration::from_secs(2));
    m.bed.volumes[0].shutdown().expect("shut down Volume1");
    // AutoReseed: resume fails (the disk is dead), the spare Volume3 is assigned, seeded
    // and verified while the writers go on.
    let healthy = wait_for(Duration::from_secs(180), || {
        let s = m.status_json();
        copy_is(&s, DB, "Volume3", "Healthy", false).then_some(s)
    });
    let Some(status) = healthy else {
        panic!(
            "Volume3 never became Healthy; status: {}\nevents: {:#?}\nmount.log:\n{}",
            m.status_json(),
            m.events_json(),
            m.mount_log()
        );
    };
    assert!(copy_is(&status, DB, "Volume2", "Mounted", true), "{status}");
    assert!(
        copy_status(&status, DB, "Volume1").is_none(),
        "Volume1 left the placement: {status}"
    );
    // An operator reseeds the new copy again, in place, while the writers go on.
    let out = m.cli(&["reseed", DB, "--to", "Volume3", "--wait"]);
    assert!(
        out.status.success(),
        "reseedfs reseed --wait failed:\n{}\nmount.log:\n{}",
        common::describe_output(&out),
        m.mount_log()
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("is in sync"), "{said}");
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let results: Vec<_> = writers
        .into_iter()
        .map(|w| w.join().expect("a writer failed"))
        .collect();
    for (w, (path, versions, writes)) in results.iter().enumerate() {
        verify_file(path, w as u64, versions);
        total += writes;
    }
    assert!(total > 0, "the writers wrote during the reseed");

    let events = m.events_json();
    let seq: Vec<u64> = ids(&events)
        .into_iter()
        .filter(|id| [1109, 825, 826, 827, 828, 1110].contains(id))
        .collect();
    assert_eq!(
        seq,
        [1109, 825, 826, 827, 828, 1110, 825, 826, 827, 828, 1110],
        "events in order (AutoReseed, then the operator's reseed): {events:#?}"
    );
    for id in [3010, 3011, 3012, 3013] {
        assert!(
            ids(&events).contains(&id),
            "event {id} missing: {events:#?}"
        );
    }
    let bed = m.unmount();
    // The new copy is byte-identical to the surviving one, and what the writers last wrote.
    assert_same_tree(&bed.volume_path(2), &bed.volume_path(3));
    for (w, (_, versions, _)) in results.iter().enumerate() {
        verify_file(
            &bed.volume_path(3).join(format!("{DB}.db/writer{w}.dat")),
            w as u64,
            versions,
        );
    }
}

#[test]
fn without_a_spare_autoreseed_reports_spares_exhausted_and_the_database_runs_on() {
    if !require_mount_privileges(
        "without_a_spare_autoreseed_reports_spares_exhausted_and_the_database_runs_on",
    ) {
        return;
    }
    let bed = Testbed::loop_volumes(2, 256 << 20).expect("two loop volumes");
    common::init(&bed, &[DB], 2);
    short_timings(&bed);
    let m = Mounted::mount_only(bed);
    let dir = m.db_files(DB);
    fs::write(dir.join("before"), b"written before the failure").expect("write before");
    m.bed.volumes[0].shutdown().expect("shut down Volume1");
    fs::write(dir.join("after"), b"written after the failure").expect("write after the failure");
    let exhausted = wait_for(Duration::from_secs(60), || {
        let events = m.events_json();
        events.iter().find(|e| event_id(e) == Some(3014)).cloned()
    });
    let Some(event) = exhausted else {
        panic!(
            "no spares-exhausted event; events: {:#?}\nmount.log:\n{}",
            m.events_json(),
            m.mount_log()
        );
    };
    let msg = event["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("Volume2") && msg.contains("already holds a copy"),
        "{msg}"
    );
    // Still running on Volume2; the status says what AutoReseed is doing and why.
    fs::write(dir.join("later"), b"still running").expect("write on one copy");
    assert_eq!(
        fs::read(dir.join("before")).expect("read"),
        b"written before the failure"
    );
    let status = m.status_json();
    assert!(copy_is(&status, DB, "Volume2", "Mounted", true), "{status}");
    let failed = copy_status(&status, DB, "Volume1").expect("Volume1 still in the placement");
    assert_eq!(failed["status"], "FailedAndSuspended", "{status}");
    let last = failed["autoreseed"]["last_error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        last.contains("no spare") || last.contains("does not answer"),
        "AutoReseed's last error is shown: {status}"
    );
    let text = m.cli(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("AutoReseed:"), "{text}");

    // An operator blocks the copy: the workflow says so, with the command that clears it.
    let out = m.cli(&["block", DB, "--volume", "Volume1", "--reseed"]);
    assert!(out.status.success(), "{}", common::describe_output(&out));
    let blocked = wait_for(Duration::from_secs(30), || {
        let s = m.status_json();
        let c = copy_status(&s, DB, "Volume1")?.clone();
        (c["reseed_blocked"] == true && c["autoreseed"]["blocked"]["code"] == "ReseedBlocked")
            .then_some(c)
    });
    let Some(copy) = blocked else {
        panic!("the block never showed: {}", m.status_json());
    };
    let remedy = copy["autoreseed"]["blocked"]["remedy"]
        .as_str()
        .unwrap_or_default();
    assert!(remedy.contains("reseedfs unblock db001"), "{copy}");
    let out = m.cli(&["unblock", DB, "--volume", "Volume1", "--reseed"]);
    assert!(out.status.success(), "{}", common::describe_output(&out));
    let s = m.status_json();
    assert_eq!(
        copy_status(&s, DB, "Volume1").expect("copy")["reseed_blocked"],
        false
    );
    let events = ids(&m.events_json());
    assert!(
        events.contains(&3021) && events.contains(&3015),
        "{events:?}"
    );
    // Nothing to reseed from: a manual reseed is refused with the reason.
    let out = m.cli(&["reseed", DB, "--to", "Volume2"]);
    assert!(
        !out.status.success(),
        "reseeding the only in-sync copy must be refused"
    );
    drop(m.unmount());
}

#[test]
fn a_disk_that_comes_back_is_resynced_in_place_while_the_database_writes() {
    if !require_mount_privileges(
        "a_disk_that_comes_back_is_resumed_in_place_while_the_database_writes",
    ) {
        return;
    }
    let bed = Testbed::loop_volumes(2, 256 << 20).expect("two loop volumes");
    common::init(&bed, &[DB], 2);
    let mut c = Config::load(&bed.config_path).expect("load config");
    c.autoreseed.dwell = Duration::from_millis(300);
    c.autoreseed.resume_attempts = 100;
    c.autoreseed.resume_interval = Duration::from_millis(300);
    c.tap.checkpoint_interval = Duration::from_millis(500);
    fs::write(&bed.config_path, c.to_toml()).expect("write config");
    let m = Mounted::mount_only(bed);
    // Data the database does not touch while the disk is away: the resync leaves it be.
    let cold = m.db_files(DB).join("cold.dat");
    let cold_bytes: Vec<u8> = (0..COLD).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(&cold, &cold_bytes).expect("write cold.dat");
    fs::File::open(&cold)
        .and_then(|f| f.sync_all())
        .expect("fsync cold.dat");
    // Two checkpoints later the activity log no longer lists it: a dying disk cannot
    // have lost any of it.
    common::wait_out_of_activity_log(&m.bed, DB, &format!("{DB}.db/cold.dat"));
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&m.db_files(DB), 2, &stop);
    thread::sleep(Duration::from_secs(1));
    // Volume2 (the passive copy) dies; the writers' next write fails it.
    m.bed.volumes[1].shutdown().expect("shut down Volume2");
    let failed = wait_for(Duration::from_secs(30), || {
        let s = m.status_json();
        copy_is(&s, DB, "Volume2", "FailedAndSuspended", false).then_some(())
    });
    assert!(
        failed.is_some(),
        "Volume2 never failed: {}",
        m.status_json()
    );
    // The disk comes back: umount, e2fsck -fy, mount. The daemon holds nothing on the dead
    // filesystem, so this works while the database runs.
    m.bed.volumes[1]
        .revive()
        .expect("revive Volume2 while mounted (the daemon must let go of it)");
    // What the returned disk holds of cold.dat (read before the resync can write to it,
    // most likely): a resync that copies part of it is explained by this, or is wrong.
    let cold_came_back = fs::metadata(m.backing_files(2, DB).join("cold.dat")).map(|md| md.len());
    let healthy = wait_for(Duration::from_secs(120), || {
        let s = m.status_json();
        copy_is(&s, DB, "Volume2", "Healthy", false).then_some(())
    });
    assert!(
        healthy.is_some(),
        "Volume2 never came back: {}\nevents: {:#?}",
        m.status_json(),
        m.events_json()
    );
    stop.store(true, Ordering::Relaxed);
    let results: Vec<_> = writers
        .into_iter()
        .map(|w| w.join().expect("a writer failed"))
        .collect();
    for (w, (path, versions, _)) in results.iter().enumerate() {
        verify_file(path, w as u64, versions);
    }
    let events = m.events_json();
    let returned = events.iter().position(|e| event_id(e) == Some(3022));
    let seeded = events.iter().position(|e| event_id(e) == Some(1110));
    assert!(
        returned.is_some() && seeded > returned,
        "volume returned (3022) then copy healthy (1110): {events:#?}"
    );
    let resumed = events.iter().any(|e| {
        event_id(e) == Some(3011) && e["message"].as_str().is_some_and(|m| m.contains("Resume"))
    });
    assert!(resumed, "a Resume attempt brought it back: {events:#?}");
    // Incrementally: only what it missed was copied, and the event says how much.
    let resync = events
        .iter()
        .find(|e| event_id(e) == Some(3031))
        .unwrap_or_else(|| panic!("no resync.completed (3031): {events:#?}"));
    let copied = resync["bytes_copied"].as_u64().expect("bytes_copied");
    let extents = resync["extents"].as_u64().expect("extents");
    let total = COLD + 2 * PAGES * PAGE as u64;
    eprintln!("resync copied {copied} bytes in {extents} extents of a {total}-byte database");
    assert!(copied > 0 && extents > 0, "{resync}");
    assert!(
        copied < total / 2,
        "the resync copied {copied} of {total} bytes: it must not copy the untouched file \
         (cold.dat on Volume2 after its return: {cold_came_back:?} bytes of {COLD}); \
         resync events: {:#?}",
        events
            .iter()
            .filter(|e| matches!(event_id(e), Some(2058 | 3030 | 3031 | 3032)))
            .collect::<Vec<_>>()
    );
    assert!(
        !events.iter().any(|e| event_id(e) == Some(825)),
        "no full reseed (825) happened: {events:#?}"
    );
    assert_eq!(read_all(&cold), cold_bytes, "cold.dat through the mount");
    let bed = m.unmount();
    assert_same_tree(&bed.volume_path(1), &bed.volume_path(2));
}

/// Issue 13, item 6: a database that bulk-loads with fsync and loses a disk seconds later
/// (its extents still in the activity log) resyncs what it wrote after its last fsync, not
/// the whole load.
#[test]
fn an_fsync_takes_a_bulk_load_out_of_what_a_returning_disk_resyncs() {
    if !require_mount_privileges("an_fsync_takes_a_bulk_load_out_of_what_a_returning_disk_resyncs")
    {
        return;
    }
    const LOAD: u64 = 96 << 20;
    const CHUNK: usize = 1 << 20;
    let bed = Testbed::loop_volumes(2, 256 << 20).expect("two loop volumes");
    common::init(&bed, &[DB], 2);
    let mut c = Config::load(&bed.config_path).expect("load config");
    c.autoreseed.dwell = Duration::from_millis(300);
    c.autoreseed.resume_attempts = 100;
    c.autoreseed.resume_interval = Duration::from_millis(300);
    // No checkpoint while the load runs and the disk dies: only the fsyncs can take the
    // load out of the activity log's extents.
    c.tap.checkpoint_interval = Duration::from_secs(600);
    fs::write(&bed.config_path, c.to_toml()).expect("write config");
    let m = Mounted::mount_only(bed);
    let path = m.db_files(DB).join("load.dat");
    let f = fs::File::create(&path).expect("create load.dat");
    let chunk = |i: u64| -> Vec<u8> { (0..CHUNK).map(|b| (i as usize * 31 + b) as u8).collect() };
    for i in 0..LOAD / CHUNK as u64 {
        f.write_all_at(&chunk(i), i * CHUNK as u64).expect("load");
        if i % 8 == 7 {
            f.sync_data().expect("fsync the load");
        }
    }
    // The passive copy's disk dies; the next write (not fsynced) fails its copy.
    m.bed.volumes[1].shutdown().expect("shut down Volume2");
    f.write_all_at(&chunk(1000), 0)
        .expect("a write after the death");
    let failed = wait_for(Duration::from_secs(30), || {
        copy_is(&m.status_json(), DB, "Volume2", "FailedAndSuspended", false).then_some(())
    });
    assert!(
        failed.is_some(),
        "Volume2 never failed: {}",
        m.status_json()
    );
    m.bed.volumes[1].revive().expect("revive Volume2");
    let healthy = wait_for(Duration::from_secs(120), || {
        copy_is(&m.status_json(), DB, "Volume2", "Healthy", false).then_some(())
    });
    assert!(
        healthy.is_some(),
        "Volume2 never came back: {}\nevents: {:#?}",
        m.status_json(),
        m.events_json()
    );
    let events = m.events_json();
    let resync = events
        .iter()
        .find(|e| event_id(e) == Some(3031))
        .unwrap_or_else(|| panic!("no resync.completed (3031): {events:#?}"));
    let copied = resync["bytes_copied"].as_u64().expect("bytes_copied");
    eprintln!("resync copied {copied} bytes after a {LOAD}-byte load with fsync");
    // The write after the death (one extent of the log, 4 MiB) and nothing of the load.
    assert!(
        copied <= 4 << 20,
        "the resync copied {copied} bytes of a {LOAD}-byte load made durable by fsync"
    );
    drop(f);
    let mut want = Vec::with_capacity(LOAD as usize);
    for i in 0..LOAD / CHUNK as u64 {
        want.extend(chunk(if i == 0 { 1000 } else { i }));
    }
    assert!(read_all(&path) == want, "load.dat through the mount");
    let bed = m.unmount();
    assert_same_tree(&bed.volume_path(1), &bed.volume_path(2));
}
