//! `reseedfs verify` on a real mount: two copies on loop-mounted ext4 volumes, a file
//! written through the mount, then a few bytes of one copy's backing file damaged behind
//! the mount's back. `verify` must find them (exit 1, naming the file and the offset),
//! `verify --repair` must fix them from the active copy, and the copies must then be
//! byte-identical.
//!
//! Needs root, `/dev/fuse` and loop devices; elsewhere prints `SKIPPED` (fails under
//! `CI=true`).

#![cfg(target_os = "linux")]

mod common;

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use common::{Mounted, describe_output, drop_caches, event_id, read_all, require_mount_privileges};
use reseedfs::testbed::Testbed;
use reseedfs::testbed::rng::pattern;
use serde_json::Value;

const DB: &str = "db001";
/// The checksummed file: 24 MiB.
const FILE_BYTES: usize = 24 << 20;
/// Where the damage goes, in the file.
const DAMAGE_AT: u64 = (10 << 20) + 123;

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `verify ... --json`: the final status, whose `report` must be there.
fn report_of(out: &Output) -> Value {
    let s: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "verify --json printed no JSON ({e}):\n{}",
            describe_output(out)
        )
    });
    assert!(
        s["report"].is_object(),
        "no report:\n{}",
        describe_output(out)
    );
    s["report"].clone()
}

#[test]
fn verify_finds_a_damaged_copy_and_repair_fixes_it() {
    const TEST: &str = "verify_finds_a_damaged_copy_and_repair_fixes_it";
    if !require_mount_privileges(TEST) {
        return;
    }
    let bed = Testbed::loop_volumes(2, 256 << 20).expect("two loop-mounted ext4 volumes");
    let m = Mounted::start(bed, &[DB], 2);
    let data = pattern(1, FILE_BYTES);
    let file = m.db_files(DB).join("data.bin");
    {
        let mut f = fs::File::create(&file).expect("create data.bin");
        f.write_all(&data).expect("write data.bin");
        f.sync_all().expect("fsync data.bin");
    }
    let log = m
        .db_path(DB)
        .join(format!("{DB}.log"))
        .join("E0000000001.log");
    fs::write(&log, pattern(2, 300_000)).expect("write a log");

    // 1. Online, while a writer rewrites another file with fsyncs: identical, exit 0.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let path = m.db_files(DB).join("hot.dat");
        let stop = stop.clone();
        thread::spawn(move || {
            let f = fs::File::create(&path).expect("create hot.dat");
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                f.write_all_at(&pattern(n, 65536), (n % 128) * 65536)
                    .expect("write hot.dat");
                if n % 8 == 0 {
                    f.sync_data().expect("fsync hot.dat");
                }
                n += 1;
            }
            n
        })
    };
    let out = m.cli(&["verify", DB, "--max-rate", "20MiB/s", "--json"]);
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().expect("writer");
    assert_eq!(
        code(&out),
        0,
        "verify of identical copies:\n{}",
        describe_output(&out)
    );
    let r = report_of(&out);
    assert_eq!(r["extents_total"], 0, "{r:#}");
    assert_eq!(r["tree_total"], 0, "{r:#}");
    assert!(
        r["bytes_compared"].as_u64() >= Some(FILE_BYTES as u64),
        "{r:#}"
    );
    assert!(writes > 0, "the writer wrote during the verification");
    // 24 MiB and more at 20 MiB/s: 1.2 s, less at most 0.25 s of burst credit.
    let secs = r["seconds"].as_f64().unwrap_or(0.0);
    assert!(secs >= 0.9, "the rate limit held: {secs} s for {r:#}");

    // 2. A few bytes of Volume2's copy damaged behind the mount's back.
    let backing = |k: usize| m.backing_files(k, DB).join("data.bin");
    {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(backing(2))
            .expect("open Volume2's data.bin");
        f.write_all_at(b"\xde\xad\xbe\xef garbage", DAMAGE_AT)
            .expect("damage Volume2's copy");
        f.sync_all().expect("fsync the damage");
    }
    let out = m.cli(&["verify", DB, "--max-rate", "unlimited"]);
    assert_eq!(
        code(&out),
        1,
        "verify of a damaged copy:\n{}",
        describe_output(&out)
    );
    let text = stdout(&out);
    let block = DAMAGE_AT / 4096 * 4096;
    let line = format!(
        "DIFFERS {DB}.db/data.bin on Volume2: bytes {block}..{}",
        block + 4096
    );
    assert!(text.contains(&line), "no line {line:?} in:\n{text}");
    let out = m.cli(&["verify", DB, "--max-rate", "unlimited", "--json"]);
    assert_eq!(code(&out), 1, "{}", describe_output(&out));
    let r = report_of(&out);
    assert_eq!(r["extents_total"], 1, "{r:#}");
    let e = &r["extents"][0];
    assert_eq!(e["path"], format!("{DB}.db/data.bin"), "{r:#}");
    assert_eq!(e["volume"], "Volume2", "{r:#}");
    assert!(
        e["offset"].as_u64() <= Some(DAMAGE_AT)
            && e["offset"].as_u64().unwrap_or(0) + e["len"].as_u64().unwrap_or(0) > DAMAGE_AT,
        "the extent covers byte {DAMAGE_AT}: {r:#}"
    );

    // 3. Repair from the active copy (Volume1), confirmed; then verify is clean.
    let out = m.cli(&["verify", DB, "--repair"]);
    assert_eq!(code(&out), 0, "verify --repair:\n{}", describe_output(&out));
    let text = stdout(&out);
    assert!(
        text.contains("[repaired]") && text.contains("all repaired"),
        "{text}"
    );
    let out = m.cli(&["verify", DB]);
    assert_eq!(
        code(&out),
        0,
        "verify after the repair:\n{}",
        describe_output(&out)
    );
    assert!(
        stdout(&out).contains("identical"),
        "{}",
        describe_output(&out)
    );

    // The events: 3040 and 3041 once per run (five runs).
    let events = m.events_json();
    let count = |id| events.iter().filter(|e| event_id(e) == Some(id)).count();
    assert_eq!((count(3040), count(3041)), (5, 5), "{events:#?}");

    // Through the mount, the data is what was written.
    drop_caches();
    assert!(read_all(&file) == data, "data.bin through the mount");
    let (a, b) = (read_all(&backing(1)), read_all(&backing(2)));
    let bed = m.unmount();
    assert!(a == data, "Volume1's data.bin is what was written");
    assert!(a == b, "the copies are byte-identical after the repair");
    drop(bed);
}

#[test]
fn verify_exits_2_when_it_cannot_run() {
    const TEST: &str = "verify_exits_2_when_it_cannot_run";
    if !require_mount_privileges(TEST) {
        return;
    }
    let bed = Testbed::loop_volumes(2, 128 << 20).expect("two loop-mounted ext4 volumes");
    let m = Mounted::start(bed, &[DB], 1);
    let out = m.cli(&["verify", DB]);
    assert_eq!(
        code(&out),
        2,
        "one copy: nothing to compare:\n{}",
        describe_output(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nothing to compare"), "{err}");
    let out = m.cli(&["verify", "nosuchdb"]);
    assert_eq!(code(&out), 1, "{}", describe_output(&out));
    drop(m.unmount());
}
