//! Issue 13, on real mounts (loop-mounted ext4 volumes, the real binary): what a database
//! does that a filesystem must not break, and damage the daemon must live with.
//!
//! - SQLite with its temporary files under the mount (`SQLITE_TMPDIR`, `temp_store =
//!   FILE`, sorts larger than its cache): it unlinks them right after opening them and
//!   goes on through its descriptors. The right result, also with the active copy's disk
//!   killed mid-run.
//! - An open file with no name left is reseeded: after the reseed, the old copy's disk
//!   dies, and the file still reads back what was written to it during the reseed.
//! - A setuid/setgid file is reseeded and resynced with its bits.
//! - A torn and a non-UTF-8 line in `events.jsonl` at start; the log rotated by size
//!   while `events --follow` reads it.
//!
//! These tests need root, `/dev/fuse`, loop devices and (for SQLite) the `sqlite3` CLI;
//! elsewhere they print `SKIPPED` (and fail under `CI=true`).

#![cfg(target_os = "linux")]
// mmap(2) has no safe wrapper in our dependencies; the one unsafe block says why it is sound.
#![allow(unsafe_code)]

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, Write as _};
use std::os::unix::fs::{FileExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{Mounted, copy_is, describe_output, event_id, require_mount_privileges, wait_for};
use reseedfs::testbed::Testbed;
use reseedfs::testbed::rng::pattern;

const DB: &str = "db001";
const VOLUME_BYTES: u64 = 512 << 20;
const STATE_TIMEOUT: Duration = Duration::from_secs(20);

fn loop_bed() -> Testbed {
    Testbed::loop_volumes(3, VOLUME_BYTES).expect("three loop-mounted ext4 volumes")
}

/// Asserts that `reseedfs <args>` succeeded, with its output and the daemon's log if not.
fn cli_ok(m: &Mounted, args: &[&str]) -> String {
    let out = m.cli(args);
    assert!(
        out.status.success(),
        "reseedfs {} failed ({}):\n{}\nmount.log:\n{}",
        args.join(" "),
        out.status,
        describe_output(&out),
        m.mount_log()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_status(m: &Mounted, what: &str, check: impl Fn(&serde_json::Value) -> bool) {
    if wait_for(STATE_TIMEOUT, || check(&m.status_json()).then_some(())).is_none() {
        panic!(
            "status never showed {what}:\n{}\nmount.log:\n{}",
            m.status_json(),
            m.mount_log()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// SQLite with its temporary files under the mount
// ---------------------------------------------------------------------------------------------

/// Rows of the table the workload sorts.
const ROWS: u64 = 200_000;
/// The row the ORDER BY picks (OFFSET).
const PICK: u64 = 123_456;

/// The `b` column of row `x`, as the SQL below computes it: distinct for every row, in an
/// order that has nothing to do with `x`.
fn row_b(x: u64) -> String {
    format!("{:010}-{:040}", (x * 2_654_435_761) % 4_294_967_291, x)
}

/// What the script must print, computed here from the same formula.
fn expected_sqlite_output() -> String {
    let mut all: Vec<String> = (1..=ROWS).map(row_b).collect();
    all.sort();
    let picked = &all[PICK as usize..PICK as usize + 3];
    let prefixes: BTreeSet<&str> = all.iter().map(|b| &b[..4]).collect();
    let mut out = String::new();
    for b in picked {
        out.push_str(&format!("pick|{b}\n"));
    }
    out.push_str(&format!("distinct|{}\n", prefixes.len()));
    out.push_str(&format!("indexed|{}\n", all[PICK as usize]));
    let even: Vec<String> = (1..=ROWS).filter(|x| x % 2 == 0).map(row_b).collect();
    let (min, max) = (even.iter().min(), even.iter().max());
    out.push_str(&format!(
        "temp|{}|{}|{}\n",
        even.len(),
        min.map_or("", |s| s),
        max.map_or("", |s| s)
    ));
    let kept = (1..=even.len() as u64).filter(|r| r % 3 != 0).count();
    out.push_str(&format!("temp after|{kept}\n"));
    out.push_str("check|ok\n");
    out
}

/// The workload: a table larger than the cache, a sort, a DISTINCT and an index build,
/// each spilling to temporary files (`temp_store = FILE`, a 64-page cache).
fn sqlite_script() -> String {
    format!(
        "PRAGMA temp_store = FILE;
PRAGMA cache_size = 64;
CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {ROWS})
INSERT INTO t(b) SELECT printf('%010d-%040d', (x * 2654435761) % 4294967291, x) FROM c;
SELECT 'pick', b FROM t ORDER BY b LIMIT 3 OFFSET {PICK};
SELECT 'distinct', count(*) FROM (SELECT DISTINCT substr(b, 1, 4) FROM t);
CREATE INDEX t_b ON t(b);
SELECT 'indexed', b FROM t INDEXED BY t_b ORDER BY b LIMIT 1 OFFSET {PICK};
CREATE TEMP TABLE s AS SELECT b FROM t WHERE a % 2 = 0;
SELECT 'temp', count(*), min(b), max(b) FROM s;
BEGIN;
DELETE FROM s WHERE rowid % 3 = 0;
UPDATE t SET b = b || '' WHERE a % 1000 = 0;
COMMIT;
SELECT 'temp after', count(*) FROM s;
SELECT 'check', integrity_check FROM pragma_integrity_check;
"
    )
}

/// Temporary files of process `pid` under `dir` that have no name left (SQLite's
/// `etilqs_*`, unlinked right after their open).
fn unlinked_temp_fds(pid: u32, dir: &Path) -> usize {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    fds.filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .filter(|t| {
            let s = t.to_string_lossy();
            t.starts_with(dir) && s.contains("etilqs_") && s.ends_with(" (deleted)")
        })
        .count()
}

/// Runs the script with the `sqlite3` CLI on a database under the mount, its temporary
/// files in `tmp` (under the mount too). `kill` runs once, when the first temporary file
/// is seen open. Returns what it printed, and how many times temporary files were seen
/// open under the mount before and after `kill`.
fn run_sqlite(
    m: &Mounted,
    db: &Path,
    tmp: &Path,
    mut kill: Option<Box<dyn FnMut() + '_>>,
) -> (String, usize, usize) {
    let mut child = Command::new("sqlite3")
        .args(["-batch", "-bail"])
        .arg(db)
        .env("SQLITE_TMPDIR", tmp)
        .env_remove("TMPDIR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sqlite3");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(sqlite_script().as_bytes())
        .expect("send the script");
    drop(stdin);
    let pid = child.id();
    let started = Instant::now();
    let (mut before, mut after, mut killed) = (0, 0, false);
    loop {
        let seen = unlinked_temp_fds(pid, tmp);
        if killed {
            after += seen;
        } else {
            before += seen;
        }
        if seen > 0 {
            if let Some(mut k) = kill.take() {
                k();
                killed = true;
            }
        }
        if child.try_wait().expect("wait for sqlite3").is_some() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "sqlite3 still running after 300 s: the mount hangs; mount.log:\n{}",
            m.mount_log()
        );
        thread::sleep(Duration::from_millis(2));
    }
    let out = child.wait_with_output().expect("sqlite3 output");
    assert!(
        out.status.success(),
        "sqlite3 failed ({}):\n{}\nmount.log:\n{}",
        out.status,
        describe_output(&out),
        m.mount_log()
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        before,
        after,
    )
}

fn have_sqlite3(test: &str) -> bool {
    let found = Command::new("sqlite3")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: the sqlite3 CLI is missing (apt-get install sqlite3)"
        );
        eprintln!("\nSKIPPED: {test}: the sqlite3 CLI is missing (apt-get install sqlite3)\n");
    }
    found
}

/// SQLite sorts, a DISTINCT and an index build through temporary files under the mount.
#[test]
fn r13_sqlite_temp_files_under_the_mount() {
    const TEST: &str = "r13_sqlite_temp_files_under_the_mount";
    if !require_mount_privileges(TEST) || !have_sqlite3(TEST) {
        return;
    }
    let m = Mounted::start(loop_bed(), &[DB], 2);
    let tmp = m.db_files(DB).join("tmp");
    fs::create_dir(&tmp).expect("mkdir tmp");
    let (out, seen, _) = run_sqlite(&m, &m.db_files(DB).join("sort.sqlite"), &tmp, None);
    assert_eq!(out, expected_sqlite_output());
    assert!(
        seen > 0,
        "sqlite3 never had a temporary file open under the mount"
    );
    drop(m.unmount());
}

/// The same, with the active copy's disk killed while a sort spills to temporary files.
#[test]
fn r13_sqlite_temp_files_survive_the_active_disk_death() {
    const TEST: &str = "r13_sqlite_temp_files_survive_the_active_disk_death";
    if !require_mount_privileges(TEST) || !have_sqlite3(TEST) {
        return;
    }
    let m = Mounted::start(loop_bed(), &[DB], 2);
    let tmp = m.db_files(DB).join("tmp");
    fs::create_dir(&tmp).expect("mkdir tmp");
    let killed = Arc::new(AtomicBool::new(false));
    let kill = {
        let (killed, volume) = (killed.clone(), &m.bed.volumes[0]);
        Box::new(move || {
            eprintln!("killing Volume1 while sqlite3 has a temporary file open");
            volume.shutdown().expect("shut down Volume1");
            killed.store(true, Ordering::Release);
        })
    };
    let (out, before, after) =
        run_sqlite(&m, &m.db_files(DB).join("sort.sqlite"), &tmp, Some(kill));
    assert!(killed.load(Ordering::Acquire), "Volume1 was never killed");
    assert_eq!(out, expected_sqlite_output());
    assert!(
        before > 0 && after > 0,
        "temporary files under the mount before ({before}) and after ({after}) the kill"
    );
    wait_status(&m, "Volume2 Mounted, Volume1 failed", |s| {
        copy_is(s, DB, "Volume1", "FailedAndSuspended", false)
            && copy_is(s, DB, "Volume2", "Mounted", true)
    });
    drop(m.unmount());
}

// ---------------------------------------------------------------------------------------------
// An open file with no name left, reseeded
// ---------------------------------------------------------------------------------------------

/// A file unlinked while open is reseeded with the copy (written to during the reseed);
/// then the only other copy's disk dies and the file still reads back every byte.
#[test]
fn r13_an_unlinked_open_file_is_reseeded_and_outlives_the_old_copy() {
    const TEST: &str = "r13_an_unlinked_open_file_is_reseeded_and_outlives_the_old_copy";
    if !require_mount_privileges(TEST) {
        return;
    }
    let m = Mounted::start(loop_bed(), &[DB], 2);
    let dir = m.db_files(DB);
    // Something for the reseed to copy besides the unlinked file.
    fs::write(dir.join("data"), pattern(1, 32 << 20)).expect("write data");
    let path = dir.join("scratch");
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .expect("create scratch");
    let mut model = pattern(2, 8 << 20);
    file.write_all_at(&model, 0).expect("write scratch");
    fs::remove_file(&path).expect("unlink scratch");
    assert_eq!(file.metadata().expect("fstat after unlink").len(), 8 << 20);

    // A writer rewrites pages of it during the whole reseed of Volume2's copy.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (file, stop) = (file.try_clone().expect("dup"), stop.clone());
        thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let off = (n * 7919 % 2048) * 4096;
                let page = pattern(1000 + n, 4096);
                file.write_all_at(&page, off)
                    .expect("write during the reseed");
                model[off as usize..off as usize + 4096].copy_from_slice(&page);
                n += 1;
            }
            (n, model)
        })
    };
    cli_ok(&m, &["reseed", DB, "--to", "Volume2", "--wait"]);
    stop.store(true, Ordering::Relaxed);
    let (writes, mut model) = writer.join().expect("writer");
    assert!(writes > 0);
    wait_status(&m, "Volume2 in sync", |s| {
        copy_is(s, DB, "Volume2", "Healthy", false)
    });
    // The copy it was seeded from dies: the file is read from the new copy only (not
    // from the kernel's cache of it).
    m.bed.volumes[0].shutdown().expect("shut down Volume1");
    common::drop_caches();
    let mut back = vec![0u8; model.len()];
    file.read_exact_at(&mut back, 0)
        .expect("read the unlinked file after Volume1 died");
    assert!(back == model, "the unlinked file differs after the reseed");
    let st = file.metadata().expect("fstat");
    assert_eq!((st.len(), st.nlink()), (8 << 20, 0));
    file.write_all_at(b"still writable", 0)
        .expect("write after Volume1 died");
    file.sync_all().expect("fsync after Volume1 died");
    model[..14].copy_from_slice(b"still writable");
    // A shared writable mapping of it, written and synced, reaches the copy too.
    {
        // SAFETY: nothing else maps, truncates or writes the file while the mapping lives
        // (the writer thread has ended; the mapping is dropped at the end of this block).
        let mut map = unsafe { memmap2::MmapMut::map_mut(&file) }.expect("mmap the unlinked file");
        let page = pattern(3, 4096);
        map[8192..8192 + 4096].copy_from_slice(&page);
        map.flush().expect("msync the unlinked file");
        model[8192..8192 + 4096].copy_from_slice(&page);
    }
    common::drop_caches();
    file.read_exact_at(&mut back, 0)
        .expect("read the unlinked file after its mapping");
    assert!(
        back == model,
        "the write and the mapping did not reach the copy"
    );
    wait_status(&m, "Volume2 Mounted", |s| {
        copy_is(s, DB, "Volume2", "Mounted", true)
    });
    drop(file);
    drop(m.unmount());
}

// ---------------------------------------------------------------------------------------------
// setuid / setgid
// ---------------------------------------------------------------------------------------------

fn mode_owner(path: &Path) -> (u32, u32, u32) {
    let st = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    (st.mode() & 0o7777, st.uid(), st.gid())
}

/// A setuid/setgid file (and a setgid directory) owned by another user is reseeded with
/// its bits, then resynced after an owner change while its copy was suspended.
#[test]
fn r13_a_setuid_file_is_reseeded_and_resynced_with_its_bits() {
    const TEST: &str = "r13_a_setuid_file_is_reseeded_and_resynced_with_its_bits";
    if !require_mount_privileges(TEST) {
        return;
    }
    let m = Mounted::start(loop_bed(), &[DB], 2);
    let dir = m.db_files(DB);
    let file = dir.join("suid-tool");
    let sgid_dir = dir.join("shared");
    fs::write(&file, pattern(3, 1 << 20)).expect("write");
    fs::create_dir(&sgid_dir).expect("mkdir");
    std::os::unix::fs::chown(&file, Some(1000), Some(1000)).expect("chown file");
    std::os::unix::fs::chown(&sgid_dir, Some(1000), Some(1000)).expect("chown dir");
    // Modes after the owner: a chown clears setuid and setgid.
    fs::set_permissions(&file, fs::Permissions::from_mode(0o6755)).expect("chmod file");
    fs::set_permissions(&sgid_dir, fs::Permissions::from_mode(0o2775)).expect("chmod dir");
    assert_eq!(mode_owner(&file), (0o6755, 1000, 1000));
    let backing = |k: usize, name: &str| m.backing_files(k, DB).join(name);
    assert_eq!(mode_owner(&backing(2, "suid-tool")), (0o6755, 1000, 1000));

    // A full reseed of Volume2's copy: the tree is recreated, owners then modes.
    cli_ok(&m, &["reseed", DB, "--to", "Volume2", "--wait"]);
    wait_status(&m, "Volume2 in sync after the reseed", |s| {
        copy_is(s, DB, "Volume2", "Healthy", false)
    });
    assert_eq!(mode_owner(&backing(2, "suid-tool")), (0o6755, 1000, 1000));
    assert_eq!(mode_owner(&backing(2, "shared")), (0o2775, 1000, 1000));

    // A resync: only the owner changes while the copy is suspended (the mode is set
    // again after it), so the resumed copy's owner must change and its bits stay.
    cli_ok(&m, &["suspend", DB, "--volume", "Volume2"]);
    std::os::unix::fs::chown(&file, Some(1001), Some(1001)).expect("chown again");
    fs::set_permissions(&file, fs::Permissions::from_mode(0o6755)).expect("chmod again");
    cli_ok(&m, &["resume", DB, "--volume", "Volume2", "--wait"]);
    wait_status(&m, "Volume2 in sync after the resync", |s| {
        copy_is(s, DB, "Volume2", "Healthy", false)
    });
    assert_eq!(mode_owner(&backing(2, "suid-tool")), (0o6755, 1001, 1001));
    assert_eq!(mode_owner(&backing(1, "suid-tool")), (0o6755, 1001, 1001));
    drop(m.unmount());
}

// ---------------------------------------------------------------------------------------------
// The event log: damage at start, rotation while followed
// ---------------------------------------------------------------------------------------------

/// A non-UTF-8 line and a torn last line in `events.jsonl` when the daemon starts; then
/// the log is rotated by size while `events --follow` reads it, and nothing is lost.
#[test]
fn r13_a_torn_event_log_at_start_and_its_rotation() {
    const TEST: &str = "r13_a_torn_event_log_at_start_and_its_rotation";
    if !require_mount_privileges(TEST) {
        return;
    }
    let bed = loop_bed();
    common::init(&bed, &[DB], 2);
    // Rotate at 64 KiB, keep two rotated files.
    let config = fs::read_to_string(&bed.config_path).expect("read config");
    let config = config
        .replace("max_bytes = \"64MiB\"", "max_bytes = \"64KiB\"")
        .replace("keep = 4", "keep = 2");
    assert!(config.contains("max_bytes = \"64KiB\""), "{config}");
    fs::write(&bed.config_path, config).expect("write config");
    let log = bed.state_dir.join("events.jsonl");
    fs::create_dir_all(&bed.state_dir).expect("state dir");
    let good = |seq: u64| {
        format!(
            "{{\"seq\":{seq},\"id\":3002,\"kind\":\"mount.finished\",\"time\":\"2026-01-01T00:00:0{seq}.000Z\",\"database\":null,\"volume\":null,\"message\":\"earlier\"}}\n"
        )
    };
    let mut damaged = Vec::new();
    damaged.extend_from_slice(good(1).as_bytes());
    damaged.extend_from_slice(b"\xff\xfe\x00 not UTF-8, not an event\n");
    damaged.extend_from_slice(good(2).as_bytes());
    damaged.extend_from_slice(b"{\"seq\":3,\"id\":3001,\"kind\":\"mount.sta");
    fs::write(&log, &damaged).expect("write a damaged log");

    let m = Mounted::mount_only(bed);
    let events = m.events_json();
    let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(
        &seqs[..3],
        [1, 2, 3],
        "the readable old events, then numbering goes on: {events:?}"
    );
    assert!(
        events.iter().any(|e| event_id(e) == Some(3001)),
        "no 3001 after a damaged log: {events:?}"
    );

    // Follow while enough events are recorded to rotate the log three times.
    let mut follow = Command::new(common::BIN)
        .args(["events", "--json", "--follow", "--config"])
        .arg(&m.bed.config_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn events --follow");
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    let stdout = follow.stdout.take().expect("stdout");
    thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON event");
            if tx.send(v["seq"].as_u64().expect("seq")).is_err() {
                break;
            }
        }
    });
    // Until the oldest kept file no longer holds the first events: three rotations.
    let oldest_kept = || {
        let text = fs::read_to_string(m.bed.state_dir.join("events.jsonl.2")).ok()?;
        let first: serde_json::Value = serde_json::from_str(text.lines().next()?).ok()?;
        first["seq"].as_u64()
    };
    let mut n = 0;
    while oldest_kept().is_none_or(|seq| seq <= 3) {
        let rate = if n % 2 == 0 {
            "100MiB/s"
        } else {
            "--unlimited"
        };
        cli_ok(&m, &["throttle", rate]);
        n += 1;
        assert!(n < 5000, "the log was never rotated three times");
    }
    // A few more into the new current file.
    for _ in 0..10 {
        cli_ok(&m, &["throttle", "--unlimited"]);
    }
    let last = m
        .events_json()
        .last()
        .and_then(|e| e["seq"].as_u64())
        .expect("events");
    let mut followed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while followed.last() != Some(&last) && Instant::now() < deadline {
        if let Ok(seq) = rx.recv_timeout(Duration::from_millis(200)) {
            followed.push(seq);
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    let first = followed.first().copied().unwrap_or(0);
    assert_eq!(
        followed,
        (first..=last).collect::<Vec<_>>(),
        "events --follow across three rotations: none lost, none twice"
    );
    assert!(!m.bed.state_dir.join("events.jsonl.3").exists());
    for p in ["events.jsonl", "events.jsonl.1", "events.jsonl.2"] {
        let len = fs::metadata(m.bed.state_dir.join(p)).expect("stat").len();
        assert!(len <= 64 << 10, "{p} is {len} bytes");
    }
    // `events` reads the rotated files too, in order.
    let all: Vec<u64> = m
        .events_json()
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    let oldest = all[0];
    assert!(oldest > 3, "the oldest events were rotated out");
    assert_eq!(all, (oldest..=last).collect::<Vec<_>>());
    drop(m.unmount());
}
