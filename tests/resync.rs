//! The log tap end to end, on real mounts over loop ext4 volumes: a suspended copy
//! resumed by hand gets only what it missed; a copy written behind reseedfs's back is
//! detected, its own writes kept in quarantine and the copy resynced; a copy whose
//! generation is unknown raises 2058 and waits for its operator; a kill -9 under a
//! checksummed write load is repaired at the next mount from the activity log.
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

use common::{Mounted, copy_is, describe_output, event_id, require_mount_privileges, wait_for};
use reseedfs::config::{Config, OnDivergence};
use reseedfs::testbed::Testbed;
use reseedfs::testbed::rng::Rng;
use serde_json::Value;

const DB: &str = "db001";
const PAGE: usize = 4096;
/// Pages per writer file (8 MiB).
const PAGES: u64 = 2048;

/// A self-checking page: writer, index and version in the first 24 bytes, a CRC32 of
/// everything before it in the last 4.
fn page(w: u64, index: u64, version: u64) -> Vec<u8> {
    let mut p = vec![0u8; PAGE];
    p[..8].copy_from_slice(&w.to_le_bytes());
    p[8..16].copy_from_slice(&index.to_le_bytes());
    p[16..24].copy_from_slice(&version.to_le_bytes());
    Rng::from_parts(&[w, index, version]).fill(&mut p[24..PAGE - 4]);
    let crc = crc32(&p[..PAGE - 4]);
    p[PAGE - 4..].copy_from_slice(&crc.to_le_bytes());
    p
}

fn crc32(data: &[u8]) -> u32 {
    crc_fast::crc32_iso_hdlc(data)
}

/// Checks every page of writer `w`'s file: a valid page of that writer and index.
fn check_pages(data: &[u8], w: u64, what: &str) {
    assert_eq!(data.len(), PAGES as usize * PAGE, "{what}: size");
    for i in 0..PAGES as usize {
        let p = &data[i * PAGE..(i + 1) * PAGE];
        let crc = u32::from_le_bytes([p[PAGE - 4], p[PAGE - 3], p[PAGE - 2], p[PAGE - 1]]);
        assert_eq!(crc, crc32(&p[..PAGE - 4]), "{what}: page {i} is torn");
        let num = |k: usize| u64::from_le_bytes(p[k..k + 8].try_into().expect("8 bytes"));
        assert_eq!(
            (num(0), num(8)),
            (w, i as u64),
            "{what}: page {i} misplaced"
        );
        let v = num(16);
        assert_eq!(p, page(w, i as u64, v).as_slice(), "{what}: page {i} v{v}");
    }
}

/// Writers rewriting random pages of their own file until `stop` (or an error, which
/// ends a writer quietly when `tolerate` — the daemon was killed).
fn start_writers(
    dir: &Path,
    n: u64,
    stop: &Arc<AtomicBool>,
    tolerate: bool,
) -> Vec<thread::JoinHandle<(Vec<u64>, u64)>> {
    (0..n)
        .map(|w| {
            let path = dir.join(format!("writer{w}.dat"));
            let stop = stop.clone();
            thread::spawn(move || {
                let f = fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)
                    .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
                let mut versions = vec![1u64; PAGES as usize];
                let mut rng = Rng::new(w);
                let mut writes = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let i = rng.below(PAGES);
                    let v = versions[i as usize] + 1;
                    match f.write_all_at(&page(w, i, v), i * PAGE as u64) {
                        Ok(()) => versions[i as usize] = v,
                        Err(_) if tolerate => break,
                        Err(e) => panic!("writer {w} page {i} (write {writes}): {e}"),
                    }
                    writes += 1;
                    if writes % 16 == 0 {
                        if let Err(e) = f.sync_data() {
                            if tolerate {
                                break;
                            }
                            panic!("writer {w} fsync: {e}");
                        }
                    }
                }
                (versions, writes)
            })
        })
        .collect()
}

/// Writes the writers' files once (version 1) and a cold file, through the mount.
fn seed_files(m: &Mounted, writers: u64, cold: u64) {
    let dir = m.db_files(DB);
    for w in 0..writers {
        let data: Vec<u8> = (0..PAGES).flat_map(|i| page(w, i, 1)).collect();
        fs::write(dir.join(format!("writer{w}.dat")), data).expect("write writer file");
    }
    let cold: Vec<u8> = (0..cold).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(dir.join("cold.dat"), cold).expect("write cold.dat");
    for e in fs::read_dir(&dir).expect("read_dir") {
        fs::File::open(e.expect("entry").path())
            .and_then(|f| f.sync_all())
            .expect("fsync");
    }
}

fn files_under(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(root.join(rel)).expect("read_dir") {
        let e = e.expect("dir entry");
        let r = rel.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            files_under(root, &r, out);
        }
        out.push(r);
    }
}

/// The database folders of two volumes hold the same names and bytes.
fn assert_copies_identical(a: &Path, b: &Path) {
    for folder in [format!("{DB}.db"), format!("{DB}.log")] {
        let (mut la, mut lb) = (Vec::new(), Vec::new());
        files_under(a, Path::new(&folder), &mut la);
        files_under(b, Path::new(&folder), &mut lb);
        la.sort();
        lb.sort();
        assert_eq!(
            la,
            lb,
            "{} and {} list different files",
            a.display(),
            b.display()
        );
        for p in la.iter().filter(|p| a.join(p).is_file()) {
            let (da, db) = (
                fs::read(a.join(p)).expect("a"),
                fs::read(b.join(p)).expect("b"),
            );
            let first = (0..da.len().max(db.len()))
                .step_by(PAGE)
                .find(|&o| da.get(o..o + PAGE) != db.get(o..o + PAGE));
            assert!(
                first.is_none(),
                "{} differs between {} and {}: first at page {:?} (versions {:?} vs {:?}) ({} vs {} bytes)",
                p.display(),
                a.display(),
                b.display(),
                first.map(|o| o / PAGE),
                first.map(|o| da.get(o + 16..o + 24).map(|v| v.to_vec())),
                first.map(|o| db.get(o + 16..o + 24).map(|v| v.to_vec())),
                da.len(),
                db.len()
            );
        }
    }
}

fn config(bed: &Testbed, on_divergence: OnDivergence) {
    let mut c = Config::load(&bed.config_path).expect("load config");
    c.tap.checkpoint_interval = Duration::from_millis(500);
    c.tap.on_divergence = on_divergence;
    // These tests drive resumes by hand.
    c.autoreseed.enabled = false;
    fs::write(&bed.config_path, c.to_toml()).expect("write config");
}

fn ok(out: &std::process::Output, what: &str) {
    assert!(out.status.success(), "{what}: {}", describe_output(out));
}

fn find_event(events: &[Value], id: u64) -> Option<&Value> {
    events.iter().rev().find(|e| event_id(e) == Some(id))
}

#[test]
fn suspended_copy_resumes_incrementally_and_divergent_writes_go_to_quarantine() {
    if !require_mount_privileges(
        "suspended_copy_resumes_incrementally_and_divergent_writes_go_to_quarantine",
    ) {
        return;
    }
    let bed = Testbed::loop_volumes(2, 256 << 20).expect("two loop volumes");
    common::init(&bed, &[DB], 2);
    config(&bed, OnDivergence::Reseed);
    let m = Mounted::mount_only(bed);
    const COLD: u64 = 64 << 20;
    seed_files(&m, 2, COLD);
    // Two checkpoints: nothing written so far can still differ between the copies.
    common::wait_out_of_activity_log(&m.bed, DB, &format!("{DB}.db/cold.dat"));

    ok(&m.cli(&["suspend", DB, "--volume", "Volume2"]), "suspend");
    let s = m.status_json();
    assert!(
        copy_is(&s, DB, "Volume2", "FailedAndSuspended", false),
        "{s}"
    );
    // The database keeps writing on Volume1 alone.
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&m.db_files(DB), 2, &stop, false);
    thread::sleep(Duration::from_secs(3));
    // Meanwhile someone writes to the suspended copy's files directly.
    let backing = m.backing_files(2, DB);
    let rogue = vec![0xEEu8; 3 * PAGE];
    let f = fs::OpenOptions::new()
        .write(true)
        .open(backing.join("cold.dat"))
        .expect("open the suspended copy's cold.dat");
    f.write_all_at(&rogue, 5 * PAGE as u64)
        .expect("write behind its back");
    f.sync_all().expect("fsync");
    fs::write(backing.join("only-on-volume2.txt"), b"mine").expect("a file only it has");

    // Resume under load: incremental, the divergence detected and kept.
    let out = m.cli(&["resume", DB, "--volume", "Volume2", "--wait"]);
    ok(&out, "resume --wait");
    stop.store(true, Ordering::Relaxed);
    let results: Vec<_> = writers
        .into_iter()
        .map(|w| w.join().expect("a writer failed"))
        .collect();
    let events = m.events_json();
    let resync = find_event(&events, 3031).unwrap_or_else(|| panic!("no 3031: {events:#?}"));
    let copied = resync["bytes_copied"].as_u64().expect("bytes_copied");
    eprintln!("{}", resync["message"]);
    assert!(
        copied > 0 && resync["extents"].as_u64() > Some(0),
        "{resync}"
    );
    assert!(
        copied < COLD / 2,
        "copied {copied} bytes: the untouched part of cold.dat must not be copied"
    );
    let divergence = find_event(&events, 3032).unwrap_or_else(|| panic!("no 3032: {events:#?}"));
    assert!(
        find_event(&events, 825).is_none(),
        "no full reseed: {events:#?}"
    );

    // The quarantine lists both, and holds the rogue bytes at their offsets.
    let out = m.cli(&["quarantine", DB, "--json"]);
    ok(&out, "quarantine --json");
    let listed: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(listed.len(), 1, "{listed:#?}");
    let q = &listed[0];
    let files = q["manifest"]["files"].as_array().expect("files");
    let cold = files
        .iter()
        .find(|f| f["path"] == format!("{DB}.db/cold.dat"))
        .unwrap_or_else(|| panic!("cold.dat not quarantined: {q}"));
    assert_eq!(cold["kind"], "extents");
    assert_eq!(
        cold["extents"],
        serde_json::json!([[5 * PAGE, 3 * PAGE]]),
        "{q}"
    );
    assert!(
        files
            .iter()
            .any(|f| f["path"] == format!("{DB}.db/only-on-volume2.txt")),
        "{q}"
    );
    let dir = PathBuf::from(q["path"].as_str().expect("path"));
    assert_eq!(
        divergence["quarantine"]
            .as_str()
            .map(|p| m.bed.volume_path(2).join(p)),
        Some(dir.clone())
    );
    let kept = fs::read(dir.join(format!("{DB}.db/cold.dat"))).expect("quarantined cold.dat");
    assert_eq!(&kept[5 * PAGE..8 * PAGE], rogue.as_slice());
    assert_eq!(
        fs::read(dir.join(format!("{DB}.db/only-on-volume2.txt"))).expect("kept file"),
        b"mine"
    );
    let text = m.cli(&["quarantine", DB]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("cold.dat"));

    // Through the mount: the in-sync copy's version won everywhere.
    for (w, (versions, _)) in results.iter().enumerate() {
        let data = fs::read(m.db_files(DB).join(format!("writer{w}.dat"))).expect("read");
        check_pages(&data, w as u64, "after resume");
        for (i, v) in versions.iter().enumerate() {
            assert_eq!(
                data[i * PAGE + 16..i * PAGE + 24],
                v.to_le_bytes(),
                "page {i}"
            );
        }
    }
    let bed = m.unmount();
    assert_copies_identical(&bed.volume_path(1), &bed.volume_path(2));
}

#[test]
fn unknown_generation_raises_2058_and_waits_for_the_operator() {
    if !require_mount_privileges("unknown_generation_raises_2058_and_waits_for_the_operator") {
        return;
    }
    let bed = Testbed::loop_volumes(2, 256 << 20).expect("two loop volumes");
    common::init(&bed, &[DB], 2);
    config(&bed, OnDivergence::Manual);
    let m = Mounted::mount_only(bed);
    seed_files(&m, 1, 4 << 20);
    ok(&m.cli(&["suspend", DB, "--volume", "Volume2"]), "suspend");
    fs::write(
        m.db_files(DB).join("later.dat"),
        b"written while Volume2 was out",
    )
    .expect("write");
    // The copy comes back from somewhere else: a generation this database never had.
    let gen_file = m
        .bed
        .volume_path(2)
        .join(format!(".reseedfs/tap/{DB}/generation.json"));
    assert!(gen_file.exists(), "{} exists", gen_file.display());
    fs::write(
        &gen_file,
        format!(r#"{{"db":"{DB}","current":12345,"history":[]}}"#),
    )
    .expect("overwrite its generation");
    ok(&m.cli(&["resume", DB, "--volume", "Volume2"]), "resume");
    let e2058 = wait_for(Duration::from_secs(30), || {
        find_event(&m.events_json(), 2058).cloned()
    })
    .unwrap_or_else(|| panic!("no 2058: {:#?}", m.events_json()));
    assert_eq!(e2058["error_code"], "GenerationUnknown", "{e2058}");
    assert_eq!(e2058["on_divergence"], "manual", "{e2058}");
    let msg = e2058["message"].as_str().unwrap_or_default();
    assert!(msg.contains("reseedfs reseed db001 --to Volume2"), "{msg}");
    // It waits: still suspended, nothing copied.
    thread::sleep(Duration::from_secs(1));
    let s = m.status_json();
    assert!(
        copy_is(&s, DB, "Volume2", "FailedAndSuspended", false),
        "{s}"
    );
    assert!(find_event(&m.events_json(), 825).is_none());
    // The operator decides: a full reseed, the copy's old files kept in quarantine.
    ok(
        &m.cli(&["reseed", DB, "--to", "Volume2", "--wait"]),
        "reseed --to Volume2 --wait",
    );
    let out = m.cli(&["quarantine", DB, "--json"]);
    ok(&out, "quarantine");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("2058"),
        "the old files are in quarantine: {text}"
    );
    let bed = m.unmount();
    assert_copies_identical(&bed.volume_path(1), &bed.volume_path(2));
}

#[test]
fn kill_9_under_writes_is_repaired_from_the_activity_log_at_the_next_mount() {
    if !require_mount_privileges(
        "kill_9_under_writes_is_repaired_from_the_activity_log_at_the_next_mount",
    ) {
        return;
    }
    let bed = Testbed::loop_volumes(2, 256 << 20).expect("two loop volumes");
    common::init(&bed, &[DB], 2);
    config(&bed, OnDivergence::Reseed);
    let mut m = Mounted::mount_only(bed);
    const COLD: u64 = 64 << 20;
    seed_files(&m, 4, COLD);
    common::wait_out_of_activity_log(&m.bed, DB, &format!("{DB}.db/cold.dat"));
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&m.db_files(DB), 4, &stop, true);
    thread::sleep(Duration::from_secs(2));
    // kill -9 in the middle of the writes.
    m.kill();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.join();
    }
    let root = m.bed.databases_root.clone();
    let _ = std::process::Command::new("umount")
        .arg("-l")
        .arg(&root)
        .status();
    let bed = m.bed.take();
    drop(m);

    let m = Mounted::mount_only(bed);
    let events = m.events_json();
    let repair = find_event(&events, 3033).unwrap_or_else(|| panic!("no 3033: {events:#?}"));
    eprintln!("{}", repair["message"]);
    let extents = repair["extents"].as_u64().expect("extents");
    let read = repair["bytes_read"].as_u64().expect("bytes_read");
    assert!(extents > 0, "the writers' extents are in the log: {repair}");
    assert!(
        read <= extents * (4 << 20),
        "read {read} bytes for {extents} extents of 4 MiB: {repair}"
    );
    assert!(
        read < COLD,
        "the repair read {read} bytes: not the whole database ({COLD} bytes cold)"
    );
    for w in 0..4 {
        let data = fs::read(m.db_files(DB).join(format!("writer{w}.dat"))).expect("read");
        check_pages(&data, w, "through the mount after the repair");
    }
    let bed = m.unmount();
    assert_copies_identical(&bed.volume_path(1), &bed.volume_path(2));
    for w in 0..4 {
        let data =
            fs::read(bed.volume_path(2).join(format!("{DB}.db/writer{w}.dat"))).expect("read copy");
        check_pages(&data, w, "Volume2 after the repair");
    }
}
