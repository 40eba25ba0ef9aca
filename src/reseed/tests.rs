//! Reseed tests on temp directories with fault-injecting volumes: the core's data path
//! runs for real (no kernel mount), with writers racing the seeder.

use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;
use crate::copyset::CopyState;
use crate::events::EventId;
use crate::fs::HandleId;
use crate::fs::tests::{Bed, ME, copy_state, db_folder, volume};
use crate::testbed::rng::pattern;

/// Every file under the database folders of volume `a` equals volume `b`'s.
fn assert_identical(bed: &Bed, a: usize, b: usize) {
    fn walk(root: &std::path::Path, rel: &std::path::Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(root.join(rel)).expect("read_dir") {
            let e = e.expect("entry");
            let r = rel.join(e.file_name());
            out.push(r.clone());
            if e.file_type().expect("type").is_dir() {
                walk(root, &r, out);
            }
        }
    }
    let mut checked = 0;
    for folder in ["db001.db", "db001.log"] {
        let (ra, rb) = (bed.backing(a, ""), bed.backing(b, ""));
        let (mut la, mut lb) = (Vec::new(), Vec::new());
        walk(&ra, std::path::Path::new(folder), &mut la);
        walk(&rb, std::path::Path::new(folder), &mut lb);
        la.sort();
        lb.sort();
        assert_eq!(la, lb, "same names on Volume{a} and Volume{b}");
        for p in la {
            let (pa, pb) = (ra.join(&p), rb.join(&p));
            let ma = std::fs::symlink_metadata(&pa).expect("stat a");
            if ma.is_file() {
                let (da, db) = (
                    std::fs::read(&pa).expect("a"),
                    std::fs::read(&pb).expect("b"),
                );
                assert_eq!(da.len(), db.len(), "{} size", p.display());
                assert!(
                    da == db,
                    "{} differs between Volume{a} and Volume{b}",
                    p.display()
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 0);
}

/// Fails Volume `k` through a write that hits an injected EIO, then clears the fault
/// (the disk "comes back" but the copy missed writes).
fn fail_copy_on(core: &Core, k: usize, h: HandleId) {
    let v = volume(core, k);
    v.inject_fault(libc::EIO);
    core.write(h, 0, b"x")
        .expect("write is hidden from the caller");
    // The pool let go of the failed volume; the next reseed opens it anew.
    assert!(core.pool().volumes()[k - 1].volume().is_none());
    v.inject_fault(0);
}

#[test]
fn reseed_to_a_spare_while_writers_write_gives_an_identical_copy() {
    let bed = Bed::new("reseed", 3, 2);
    let (core, sink) = bed.open();
    let dir = db_folder(&core);
    // A file written in many windows, a sparse file, a subdirectory, a hard link.
    let (big, hb) = core
        .create(dir, OsStr::new("big"), 0o640, libc::O_RDWR, ME)
        .expect("create big");
    for i in 0..12u64 {
        core.write(hb, i << 20, &pattern(i, 1 << 20))
            .expect("write big");
    }
    let (_, hs) = core
        .create(dir, OsStr::new("sparse"), 0o600, libc::O_RDWR, ME)
        .expect("create sparse");
    core.write(hs, 5 << 20, b"island").expect("write sparse");
    let sub = core
        .mkdir(dir, OsStr::new("sub"), 0o750, ME)
        .expect("mkdir");
    let (_, hx) = core
        .create(sub.node, OsStr::new("x"), 0o644, libc::O_RDWR, ME)
        .expect("create x");
    core.write(hx, 0, b"xxx").expect("write x");
    core.link(big.node, sub.node, OsStr::new("big-link"))
        .expect("link");
    core.symlink(dir, OsStr::new("sym"), std::path::Path::new("big"), ME)
        .expect("symlink");
    core.release(hx);

    // Volume1 dies (and answers again): its copy missed writes.
    fail_copy_on(&core, 1, hb);
    assert_eq!(copy_state(&core, 1), CopyState::FailedAndSuspended);

    // Writers keep going for the whole reseed through handles opened before the failure.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..3u64 {
        let (core, stop) = (core.clone(), stop.clone());
        writers.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let off = (n * 7919 + w * 104_729) % (14 << 20);
                core.write(hb, off, &pattern(n + w * 1000, 8192))
                    .expect("write during reseed");
                n += 1;
            }
            n
        }));
    }
    let creator = {
        let (core, stop) = (core.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("new{}", n % 20);
                let (_, h) = core
                    .create(dir, OsStr::new(&name), 0o644, libc::O_RDWR, ME)
                    .expect("create during reseed");
                core.write(h, 0, &pattern(n, 3000)).expect("write new");
                core.setattr(
                    crate::fs::NodeId(0)
                        .max(core.lookup(dir, OsStr::new(&name)).expect("lookup").node),
                    Some(h),
                    crate::fs::SetAttr {
                        size: Some(2000),
                        ..Default::default()
                    },
                )
                .expect("truncate during reseed");
                core.release(h);
                n += 1;
            }
        })
    };
    let db = core.pool().databases()[0].clone();
    let req = SeedRequest {
        db: db.clone(),
        slot: crate::names::CopySlot::new(0),
        target: crate::names::VolumeName::from_static("Volume3"),
        from: None,
        allow_in_sync: false,
        keep_replaced: false,
        // Many windows in a small file.
        window_bytes: 1 << 20,
    };
    let progress = Progress::new(&crate::names::DbName::from_static("db001"), "Volume3");
    let report = reseed(&core, &req, &progress).expect("reseed");
    stop.store(true, Ordering::Relaxed);
    let writes: u64 = writers.into_iter().map(|w| w.join().expect("writer")).sum();
    creator.join().expect("creator");
    assert!(
        writes > 0 && report.bytes_copied >= 12 << 20,
        "{writes} writes, {report:?}"
    );

    // The copy moved to Volume3 and is in sync; Volume2 stays active.
    assert_eq!(db.copies()[0].volume_name(), "Volume3");
    assert_eq!(copy_state(&core, 1), CopyState::InSync);
    assert_eq!(db.status_word(crate::names::CopySlot::new(0)), "Healthy");
    let persisted = bed.persisted(2);
    assert_eq!(persisted.databases[0].copies[0].volume, "Volume3");
    assert_eq!(persisted.databases[0].copies[0].state, CopyState::InSync);
    assert_eq!(persisted.databases[0].retired[0].volume, "Volume1");
    assert_identical(&bed, 2, 3);
    // Holes stayed holes.
    let sparse = std::fs::metadata(bed.backing(3, "db001.db/sparse")).expect("sparse");
    use std::os::unix::fs::MetadataExt;
    assert!(
        sparse.blocks() * 512 < 1 << 20,
        "sparse file filled: {} blocks",
        sparse.blocks()
    );
    // The handle opened before the failure writes to the new copy.
    core.write(hb, 1 << 20, b"after").expect("write after");
    let b3 = std::fs::read(bed.backing(3, "db001.db/big")).expect("big on Volume3");
    assert_eq!(&b3[1 << 20..(1 << 20) + 5], b"after");
    let ids = sink.ids();
    let order: Vec<EventId> = ids
        .into_iter()
        .filter(|id| {
            matches!(
                id,
                EventId::CopyFailed
                    | EventId::SeedingStarted
                    | EventId::SeedingCompleted
                    | EventId::VerifyStarted
                    | EventId::VerifyCompleted
                    | EventId::CopyHealthy
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            EventId::CopyFailed,
            EventId::SeedingStarted,
            EventId::SeedingCompleted,
            EventId::VerifyStarted,
            EventId::VerifyCompleted,
            EventId::CopyHealthy
        ]
    );
    core.release(hb);
    core.release(hs);
}

/// A database with one file of `mib` MiB whose copy on Volume1 failed, and a reseed
/// request for that copy onto `target`.
fn failed_copy(
    bed: &Bed,
    mib: u64,
    target: &str,
    from: Option<&str>,
) -> (
    Arc<Core>,
    Arc<crate::events::VecSink>,
    HandleId,
    SeedRequest,
) {
    let (core, sink) = bed.open();
    let dir = db_folder(&core);
    let (_, h) = core
        .create(dir, OsStr::new("f"), 0o644, libc::O_RDWR, ME)
        .expect("create");
    for i in 0..mib {
        core.write(h, i << 20, &pattern(i, 1 << 20)).expect("write");
    }
    fail_copy_on(&core, 1, h);
    let req = SeedRequest {
        db: core.pool().databases()[0].clone(),
        slot: crate::names::CopySlot::new(0),
        target: crate::names::VolumeName::new(target).expect("a valid volume name"),
        from: from.map(|f| crate::names::VolumeName::new(f).expect("a valid volume name")),
        allow_in_sync: false,
        keep_replaced: false,
        // Many windows in a small file.
        window_bytes: 1 << 20,
    };
    (core, sink, h, req)
}

/// Runs `hook` at the failpoint after each window the seeder copies, on this test's
/// thread only (tests run side by side, and failpoints are global).
fn after_each_window(hook: impl Fn() + Send + Sync + 'static) {
    let me = std::thread::current().id();
    fail::cfg_callback("reseed::after_window", move || {
        if std::thread::current().id() == me {
            hook();
        }
    })
    .expect("failpoint reseed::after_window");
}

#[cfg(feature = "failpoints")]
#[test]
fn a_source_read_error_moves_the_reseed_to_another_copy() {
    let bed = Bed::new("reseed-src", 4, 3);
    let (core, sink, h, req) = failed_copy(&bed, 6, "Volume1", Some("Volume2"));
    let progress = Progress::new(&crate::names::DbName::from_static("db001"), "Volume1");
    // Volume2 dies after the first window.
    let v2 = volume(&core, 2);
    let scenario = fail::FailScenario::setup();
    after_each_window(move || v2.inject_fault(libc::EIO));
    let report = reseed(&core, &req, &progress);
    scenario.teardown();
    let report = report.expect("reseed goes on from Volume3");
    assert_eq!(report.source, "Volume3");
    assert_eq!(copy_state(&core, 2), CopyState::FailedAndSuspended);
    assert_eq!(copy_state(&core, 1), CopyState::InSync);
    assert!(sink.ids().contains(&EventId::ReseedSourceChanged));
    assert_identical(&bed, 1, 3);
    core.release(h);
}

#[cfg(feature = "failpoints")]
#[test]
fn a_read_error_on_the_last_source_fails_the_reseed_not_the_database() {
    let bed = Bed::new("reseed-last", 3, 2);
    let (core, sink, h, req) = failed_copy(&bed, 4, "Volume3", None);
    let progress = Progress::new(&crate::names::DbName::from_static("db001"), "Volume3");
    let v2 = volume(&core, 2);
    let v2_hook = v2.clone();
    // Unreadable sectors: reads fail, writes (the pool state) still work.
    let scenario = fail::FailScenario::setup();
    after_each_window(move || v2_hook.inject_read_fault(libc::EIO));
    let err = reseed(&core, &req, &progress);
    scenario.teardown();
    let err = err.expect_err("no other source");
    assert!(matches!(err, SeedError::Source(_)), "{err}");
    assert!(
        err.to_string().contains("keeps running on Volume2"),
        "{err}"
    );
    v2.inject_read_fault(0);
    // The database still runs on Volume2; the copy is FailedAndSuspended on Volume3.
    assert_eq!(copy_state(&core, 2), CopyState::InSync);
    assert_eq!(copy_state(&core, 1), CopyState::FailedAndSuspended);
    core.write(h, 0, b"still here")
        .expect("the database keeps running");
    assert!(sink.ids().contains(&EventId::ReseedFailed));
    assert_eq!(progress.phase(), Phase::Failed);
    core.release(h);
}

#[cfg(feature = "failpoints")]
#[test]
fn r13_an_open_file_with_no_name_is_reseeded_and_outlives_the_old_copies() {
    let bed = Bed::new("reseed-unlinked", 3, 2);
    let (core, _sink, h, req) = failed_copy(&bed, 4, "Volume3", None);
    let dir = db_folder(&core);
    // A temporary file unlinked before the reseed, and one unlinked during it.
    let mut tmp_model = pattern(7, 3 << 20);
    let (tmp, ht) = core
        .create(dir, OsStr::new("etilqs_1"), 0o600, libc::O_RDWR, ME)
        .expect("create tmp");
    core.write(ht, 0, &tmp_model).expect("write tmp");
    core.remove(dir, OsStr::new("etilqs_1"), false)
        .expect("unlink tmp");
    // Two more unlinked after the first window: whichever file that window belonged
    // to, one of them is not copied yet, so the seeder finds it without a name.
    let mut late = Vec::new();
    for (i, name) in ["etilqs_2", "etilqs_3"].into_iter().enumerate() {
        let data = pattern(8 + i as u64, 3 << 20);
        let (attr, hl) = core
            .create(dir, OsStr::new(name), 0o640, libc::O_RDWR, ME)
            .expect("create late");
        core.write(hl, 0, &data).expect("write late");
        late.push((attr, hl, data));
    }
    let progress = Progress::new(&crate::names::DbName::from_static("db001"), "Volume3");
    let unlinked = Arc::new(AtomicBool::new(false));
    let scenario = fail::FailScenario::setup();
    {
        let (core, unlinked) = (core.clone(), unlinked.clone());
        after_each_window(move || {
            if !unlinked.swap(true, Ordering::AcqRel) {
                for name in ["etilqs_2", "etilqs_3"] {
                    core.remove(dir, OsStr::new(name), false)
                        .expect("unlink late");
                }
            }
        });
    }
    // A writer keeps rewriting the unlinked file during the whole reseed.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (core, stop) = (core.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let off = (n * 7919 * 4096) % (4 << 20);
                let data = pattern(100 + n, 4096);
                core.write(ht, off, &data).expect("write the unlinked file");
                let end = off as usize + data.len();
                if tmp_model.len() < end {
                    tmp_model.resize(end, 0);
                }
                tmp_model[off as usize..end].copy_from_slice(&data);
                n += 1;
            }
            (n, tmp_model)
        })
    };
    let seeded = reseed(&core, &req, &progress);
    scenario.teardown();
    seeded.expect("reseed");
    stop.store(true, Ordering::Relaxed);
    let (writes, tmp_model) = writer.join().expect("writer");
    assert!(writes > 0 && unlinked.load(Ordering::Acquire));
    assert_eq!(copy_state(&core, 1), CopyState::InSync);
    // Volume3 holds both files with no name: the old copy's disk dies, and the database
    // still reads every byte it wrote.
    volume(&core, 2).inject_fault(libc::EIO);
    core.write(h, 0, b"x").expect("a write fails Volume2");
    assert_eq!(copy_state(&core, 2), CopyState::FailedAndSuspended);
    assert_eq!(db_active(&core), Some(0));
    let read_all = |h: HandleId, len: usize| {
        let mut buf = vec![0u8; len];
        assert_eq!(core.read(h, 0, &mut buf).expect("read from Volume3"), len);
        buf
    };
    assert_eq!(
        core.getattr(tmp.node, None).expect("fstat").size as usize,
        tmp_model.len()
    );
    assert!(
        read_all(ht, tmp_model.len()) == tmp_model,
        "the unlinked file on Volume3"
    );
    for (attr, hl, data) in &late {
        assert!(
            read_all(*hl, data.len()) == *data,
            "a file unlinked during it"
        );
        assert_eq!(
            core.getattr(attr.node, Some(*hl)).expect("fstat").perm,
            0o640
        );
    }
    core.write(ht, 0, b"still writable")
        .expect("write on Volume3");
    // Freed at the last close.
    let vol3 = bed.backing(3, "");
    assert!(crate::fs::tests::deleted_fds_under(&vol3) >= 3);
    core.release(ht);
    for (_, hl, _) in late {
        core.release(hl);
    }
    assert_eq!(crate::fs::tests::deleted_fds_under(&vol3), 0);
    core.release(h);
}

fn db_active(core: &Core) -> Option<usize> {
    core.pool().databases()[0].active_index()
}
