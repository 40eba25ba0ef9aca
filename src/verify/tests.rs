//! The verification on temp directories through the core (no kernel mount), with
//! writers racing it.

use std::ffi::OsStr;
use std::os::unix::fs::FileExt as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;
use crate::events::EventId;
use crate::fs::SetAttr;
use crate::fs::tests::{Bed, ME, db_folder, volume};
use crate::testbed::rng::pattern;
use rustix::fs::Mode;

fn options(repair: bool) -> VerifyOptions {
    VerifyOptions {
        repair,
        max_bytes_per_s: None,
        scrub: false,
    }
}

fn run_verify(core: &Core, repair: bool) -> Result<VerifyReport, VerifyError> {
    let db = core.pool().databases()[0].clone();
    let progress =
        VerifyProgress::new(&crate::names::DbName::from_static("db001"), options(repair));
    let r = verify(core, &db, options(repair), &progress);
    let s = progress.snapshot();
    assert!(!progress.is_running());
    assert_eq!(s.report.is_some(), r.is_ok());
    r
}

#[test]
fn writers_racing_the_verification_give_no_false_difference() {
    let bed = Bed::new("verify-race", 2, 2);
    let (core, sink) = bed.open();
    let dir = db_folder(&core);
    let (_, ha) = core
        .create(dir, OsStr::new("a"), 0o640, libc::O_RDWR, ME)
        .expect("create a");
    for i in 0..10u64 {
        core.write(ha, i << 20, &pattern(i, 1 << 20))
            .expect("fill a");
    }
    let (b, hb) = core
        .create(dir, OsStr::new("b"), 0o600, libc::O_RDWR, ME)
        .expect("create b");
    let sub = core
        .mkdir(dir, OsStr::new("sub"), 0o750, ME)
        .expect("mkdir");
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    // Random writes across chunk boundaries, with fsyncs.
    for w in 0..2u64 {
        let (core, stop) = (core.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let off = (n * 7919 * 4099 + w * 104_729) % (10 << 20);
                core.write(ha, off, &pattern(n + (w << 32), 96 << 10))
                    .expect("write a");
                if n % 16 == 0 {
                    core.fsync(ha, true).expect("fsync a");
                }
                n += 1;
            }
            n
        }));
    }
    // Appends, and a truncate now and then.
    {
        let (core, stop) = (core.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut n = 0u64;
            let mut end = 0u64;
            while !stop.load(Ordering::Relaxed) {
                core.write(hb, end, &pattern(n, 100_000)).expect("append b");
                end += 100_000;
                if n % 40 == 39 {
                    let size = SetAttr {
                        size: Some(12_345),
                        ..SetAttr::default()
                    };
                    core.setattr(b.node, Some(hb), size).expect("truncate b");
                    end = 12_345;
                }
                n += 1;
            }
            n
        }));
    }
    // Namespace churn: creates, renames over, unlinks, chmods, xattrs.
    {
        let (core, stop) = (core.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("tmp{}", n % 7);
                let (attr, h) = core
                    .create(sub.node, OsStr::new(&name), 0o644, libc::O_RDWR, ME)
                    .expect("create tmp");
                core.write(h, 0, &pattern(n, 5000)).expect("write tmp");
                core.release(h);
                let mode = SetAttr {
                    mode: Some(0o600 | (n as u32 & 0o044)),
                    ..SetAttr::default()
                };
                core.setattr(attr.node, None, mode).expect("chmod tmp");
                core.setxattr(attr.node, OsStr::new("user.n"), &n.to_le_bytes(), 0)
                    .expect("setxattr");
                let to = format!("kept{}", n % 3);
                core.rename(sub.node, OsStr::new(&name), sub.node, OsStr::new(&to), 0)
                    .expect("rename over");
                if n % 5 == 0 {
                    let _ = core.remove(sub.node, OsStr::new(&format!("kept{}", n % 2)), false);
                }
                n += 1;
            }
            n
        }));
    }
    let mut runs = 0;
    let mut bytes = 0;
    while runs < 10 {
        let r = run_verify(&core, false).expect("verify");
        assert!(r.identical(), "false differences under writers: {r:#?}");
        assert!(r.files >= 2 && r.directories >= 2, "{r:#?}");
        bytes += r.bytes_compared;
        runs += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let ops: Vec<u64> = threads
        .into_iter()
        .map(|t| t.join().expect("writer"))
        .collect();
    assert!(ops.iter().all(|&n| n > 0), "every writer ran: {ops:?}");
    assert!(bytes >= 10 * (10 << 20), "{bytes} bytes compared");
    // And once quiet, the copies are identical byte for byte.
    for rel in ["db001.db/a", "db001.db/b"] {
        let (x, y) = (bed.backing(1, rel), bed.backing(2, rel));
        assert!(
            std::fs::read(x).expect("a") == std::fs::read(y).expect("b"),
            "{rel}"
        );
    }
    let ids = sink.ids();
    assert!(ids.contains(&EventId::OnlineVerifyStarted), "{ids:?}");
    assert!(ids.contains(&EventId::OnlineVerifyCompleted), "{ids:?}");
    core.release(ha);
    core.release(hb);
}

#[test]
fn differences_are_reported_then_repaired_from_the_active_copy() {
    let bed = Bed::new("verify-repair", 2, 2);
    let (core, sink) = bed.open();
    let dir = db_folder(&core);
    let (_, h) = core
        .create(dir, OsStr::new("data"), 0o640, libc::O_RDWR, ME)
        .expect("create data");
    for i in 0..9u64 {
        core.write(h, i << 20, &pattern(i, 1 << 20)).expect("fill");
    }
    for name in ["moded", "short", "xattr", "gone"] {
        let (_, h2) = core
            .create(dir, OsStr::new(name), 0o644, libc::O_RDWR, ME)
            .expect("create");
        core.write(h2, 0, &pattern(7, 50_000)).expect("write");
        core.release(h2);
    }
    core.fsync(h, false).expect("fsync");
    // Damage Volume2's copy behind the mount's back.
    let v2 = volume(&core, 2);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(bed.backing(2, "db001.db/data"))
        .expect("open backing");
    let hit = (5 << 20) + 100;
    f.write_all_at(b"garbage!", hit).expect("corrupt");
    f.write_all_at(&[0xAA; 5000], (8 << 20) + 4000)
        .expect("corrupt 2");
    f.sync_all().expect("fsync");
    v2.chmod(Path::new("db001.db/moded"), Mode::from_raw_mode(0o600))
        .expect("chmod");
    v2.truncate(Path::new("db001.db/short"), 10_000)
        .expect("truncate");
    v2.set_xattr(
        Path::new("db001.db/xattr"),
        OsStr::new("user.stray"),
        b"x",
        0,
    )
    .expect("setxattr");
    v2.remove(Path::new("db001.db/gone"), false)
        .expect("unlink");
    std::fs::write(bed.backing(2, "db001.db/extra"), b"extra").expect("extra");

    let r = run_verify(&core, false).expect("verify");
    assert!(!r.identical() && !r.all_repaired(), "{r:#?}");
    let mut extents: Vec<(&str, &str, u64, u64)> = r
        .extents
        .iter()
        .map(|e| (e.path.as_str(), e.volume.as_str(), e.offset, e.len))
        .collect();
    extents.sort();
    assert_eq!(
        extents,
        [
            ("db001.db/data", "Volume2", 5 << 20, 4096),
            // 4000..9000 touches blocks 0, 1 and 2 of the ninth MiB: one extent.
            ("db001.db/data", "Volume2", 8 << 20, 3 * 4096),
            // The cut tail of the truncated file (it reads as zeros there), from the
            // block holding byte 10000 to the end of the file.
            ("db001.db/short", "Volume2", 8192, 50_000 - 8192),
        ],
        "{r:#?}"
    );
    let tree: Vec<(&str, TreeField)> = r.tree.iter().map(|t| (t.path.as_str(), t.field)).collect();
    for want in [
        ("db001.db/moded", TreeField::Mode),
        ("db001.db/short", TreeField::Size),
        ("db001.db/xattr", TreeField::Xattrs),
        ("db001.db/gone", TreeField::Missing),
        ("db001.db/extra", TreeField::Extra),
    ] {
        assert!(tree.contains(&want), "{want:?} not in {tree:?}");
    }
    let moded = r
        .tree
        .iter()
        .find(|t| t.field == TreeField::Mode)
        .expect("mode");
    assert_eq!(
        (moded.active.as_str(), moded.other.as_str()),
        ("0644", "0600")
    );

    // Repair, while a writer keeps writing another file.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (core, stop) = (core.clone(), stop.clone());
        let (_, hot) = core
            .create(dir, OsStr::new("hot"), 0o644, libc::O_RDWR, ME)
            .expect("create hot");
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                core.write(hot, (n % 64) * 65536, &pattern(n, 65536))
                    .expect("hot");
                n += 1;
            }
            core.release(hot);
        })
    };
    let r = run_verify(&core, true).expect("repair");
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    assert!(
        !r.all_repaired(),
        "missing and extra names are not repaired: {r:#?}"
    );
    for e in &r.extents {
        assert!(e.repaired, "{e:?}");
    }
    for t in &r.tree {
        assert_eq!(t.repaired, t.field.repairable(), "{t:?}");
    }
    assert!(!r.tree.iter().any(|t| t.path == "db001.db/hot"), "{r:#?}");

    // What repair cannot do, by hand; then everything matches.
    std::fs::remove_file(bed.backing(2, "db001.db/extra")).expect("rm extra");
    std::fs::copy(
        bed.backing(1, "db001.db/gone"),
        bed.backing(2, "db001.db/gone"),
    )
    .expect("copy gone");
    let r = run_verify(&core, false).expect("verify again");
    assert!(r.identical(), "{r:#?}");
    for name in ["data", "short", "moded"] {
        let rel = format!("db001.db/{name}");
        assert!(
            std::fs::read(bed.backing(1, &rel)).expect("1")
                == std::fs::read(bed.backing(2, &rel)).expect("2"),
            "{rel} differs after the repair"
        );
    }
    let completed: Vec<_> = sink
        .0
        .lock()
        .iter()
        .filter(|e| e.id == EventId::OnlineVerifyCompleted)
        .map(|e| e.fields["mismatched_extents"].as_u64())
        .collect();
    assert_eq!(completed, [Some(3), Some(3), Some(0)]);
    core.release(h);
}

#[test]
fn a_lone_copy_in_sync_is_refused() {
    let bed = Bed::new("verify-lone", 2, 2);
    let (core, _) = bed.open();
    let dir = db_folder(&core);
    let (_, h) = core
        .create(dir, OsStr::new("f"), 0o644, libc::O_RDWR, ME)
        .expect("create");
    volume(&core, 2).inject_fault(libc::EIO);
    core.write(h, 0, b"x").expect("write hides the failure");
    let e = run_verify(&core, false).expect_err("nothing to compare");
    assert!(matches!(e, VerifyError::Refused(_)), "{e}");
    assert!(e.to_string().contains("Volume1"), "{e}");
    core.release(h);
}

#[test]
fn rates_parse_and_pace() {
    // `--max-rate` is parsed by the throttle's one parser of rates.
    use crate::throttle::parse_budget;
    assert_eq!(parse_budget("200MiB/s"), Ok(Some(200 << 20)));
    assert_eq!(parse_budget("1 GiB/s"), Ok(Some(1 << 30)));
    assert_eq!(parse_budget("500MB"), Ok(Some(500_000_000)));
    assert_eq!(parse_budget("unlimited"), Ok(None));
    assert!(parse_budget("fast").is_err());
    let progress = VerifyProgress::new(
        &crate::names::DbName::from_static("db001"),
        VerifyOptions {
            repair: false,
            max_bytes_per_s: Some(20 << 20),
            scrub: false,
        },
    );
    let t = Instant::now();
    for _ in 0..4 {
        progress.job.pacer.take(1 << 20);
    }
    // 4 MiB at 20 MiB/s: 200 ms.
    let secs = t.elapsed().as_secs_f64();
    assert!((0.19..1.0).contains(&secs), "{secs} s");
}
