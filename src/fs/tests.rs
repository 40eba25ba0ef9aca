//! Core tests on temp directories with fault-injecting volumes: no kernel mount.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::Arc;

use super::*;
use crate::config::Config;
use crate::copyset::CopyState;
use crate::events::{EventId, VecSink};
use crate::pool::{Pool, PoolState};

pub(crate) const ME: Caller = Caller { uid: 0, gid: 0 };

pub(crate) struct Bed {
    pub(crate) root: PathBuf,
    pub(crate) config: Config,
}

impl Bed {
    pub(crate) fn new(tag: &str, volumes: usize, copies: u32) -> Bed {
        let root = std::env::temp_dir().join(format!("reseedfs-core-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for k in 1..=volumes {
            std::fs::create_dir_all(root.join(format!("vols/Volume{k}"))).expect("mkdir volume");
        }
        let mut config = Config::new(
            root.join("vols"),
            root.join("dbs"),
            vec![crate::names::DbName::from_static("db001")],
        );
        config.copies = copies;
        config.state_dir = root.join("state");
        config.witness_dir = root.join("witness");
        crate::pool::init(&config, &root.join("cfg.toml")).expect("init");
        Bed { root, config }
    }

    pub(crate) fn open(&self) -> (Arc<Core>, Arc<VecSink>) {
        let sink = Arc::new(VecSink::default());
        let pool = Pool::open(&self.config, sink.clone()).expect("open pool");
        (Arc::new(Core::new(pool)), sink)
    }

    pub(crate) fn backing(&self, k: usize, rel: &str) -> PathBuf {
        self.root.join(format!("vols/Volume{k}")).join(rel)
    }

    pub(crate) fn persisted(&self, k: usize) -> PoolState {
        let b = std::fs::read(self.backing(k, ".reseedfs/pool.json")).expect("pool.json");
        serde_json::from_slice(&b).expect("parse pool.json")
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The node of `<db>/db001.db`.
pub(crate) fn db_folder(core: &Core) -> NodeId {
    let db = core
        .lookup(NodeId::ROOT, OsStr::new("db001"))
        .expect("db dir");
    core.lookup(db.node, OsStr::new("db001.db"))
        .expect("db folder")
        .node
}

/// Creates `db001.db/f`, opened `O_RDWR | O_DIRECT` as a database managing its own cache.
fn create_direct(core: &Core) -> (Attr, HandleId) {
    core.create(
        db_folder(core),
        OsStr::new("f"),
        0o644,
        libc::O_RDWR | libc::O_DIRECT,
        ME,
    )
    .expect("create O_DIRECT")
}

pub(crate) fn volume(core: &Core, k: usize) -> Arc<crate::volume::Volume> {
    core.pool().volumes()[k - 1].volume().expect("volume open")
}

pub(crate) fn copy_state(core: &Core, k: usize) -> CopyState {
    core.pool().databases()[0].copies()[k - 1].state()
}

#[test]
fn writes_reach_every_copy_and_reads_come_back() {
    let bed = Bed::new("mirror", 3, 2);
    let (core, _) = bed.open();
    let dir = db_folder(&core);
    let (attr, h) = core
        .create(dir, OsStr::new("f"), 0o644, libc::O_RDWR, ME)
        .expect("create");
    assert_eq!(core.write(h, 4096, b"hello").expect("write"), 5);
    core.fsync(h, false).expect("fsync");
    let mut buf = [0u8; 5];
    assert_eq!(core.read(h, 4096, &mut buf).expect("read"), 5);
    assert_eq!(&buf, b"hello");
    for k in [1, 2] {
        let b = std::fs::read(bed.backing(k, "db001.db/f")).expect("backing");
        assert_eq!(b.len(), 4101);
        assert_eq!(&b[4096..], b"hello");
    }
    assert!(
        !bed.backing(3, "db001.db/f").exists(),
        "the spare holds no copy"
    );
    assert_eq!(core.getattr(attr.node, None).expect("getattr").size, 4101);
    core.release(h);
}

#[test]
fn active_volume_death_is_hidden_and_persisted() {
    let bed = Bed::new("failover", 3, 2);
    let (core, sink) = bed.open();
    let dir = db_folder(&core);
    let (_, h) = core
        .create(dir, OsStr::new("f"), 0o644, libc::O_RDWR, ME)
        .expect("create");
    core.write(h, 0, &[1u8; 8192]).expect("write before");
    volume(&core, 1).inject_fault(libc::EIO);
    // The write, the fsync and the read all succeed on the surviving copy.
    core.write(h, 8192, &[2u8; 4096])
        .expect("write after death");
    core.fsync(h, true).expect("fsync after death");
    let mut buf = vec![0u8; 12288];
    assert_eq!(core.read(h, 0, &mut buf).expect("read"), 12288);
    assert!(buf[..8192].iter().all(|&b| b == 1) && buf[8192..].iter().all(|&b| b == 2));
    assert_eq!(copy_state(&core, 1), CopyState::FailedAndSuspended);
    assert_eq!(copy_state(&core, 2), CopyState::InSync);
    assert_eq!(
        core.pool().databases()[0].active_volume().as_deref(),
        Some("Volume2")
    );
    assert!(
        sink.ids().contains(&EventId::CopyFailed),
        "{:?}",
        sink.ids()
    );
    assert!(
        sink.ids().contains(&EventId::ActiveChanged),
        "{:?}",
        sink.ids()
    );
    // Persisted on the survivors (the copy's volume and the spare) before the reply.
    for k in [2, 3] {
        let s = bed.persisted(k);
        assert!(s.failed_volumes.iter().any(|v| v == "Volume1"));
        assert_eq!(
            s.databases[0].copies[0].state,
            CopyState::FailedAndSuspended
        );
    }
    // New opens and creates keep working on the survivor.
    let (_, h2) = core
        .create(dir, OsStr::new("g"), 0o644, libc::O_RDWR, ME)
        .expect("create after");
    core.write(h2, 0, b"x").expect("write g");
    let status = crate::status::of_pool(core.pool());
    assert_eq!(status.databases[0].copies[0].status, "FailedAndSuspended");
    assert_eq!(status.databases[0].copies[1].status, "Mounted");
    assert_eq!(status.volumes[0].state, "Failed");
    assert_eq!(status.volumes[2].state, "Spare");
}

#[test]
fn restart_never_trusts_a_copy_that_missed_writes() {
    let bed = Bed::new("restart", 2, 2);
    {
        let (core, _) = bed.open();
        let dir = db_folder(&core);
        let (_, h) = core
            .create(dir, OsStr::new("f"), 0o644, libc::O_RDWR, ME)
            .expect("create");
        volume(&core, 2).inject_fault(libc::EIO);
        core.write(h, 0, b"only on Volume1").expect("write");
    }
    // The disk "comes back" (a fresh Volume object has no fault): still not trusted.
    let (core, _) = bed.open();
    assert_eq!(copy_state(&core, 2), CopyState::FailedAndSuspended);
    assert_eq!(copy_state(&core, 1), CopyState::InSync);
}

#[test]
fn mount_refuses_when_no_copy_is_in_sync() {
    let bed = Bed::new("refuse", 3, 2);
    {
        let (core, _) = bed.open();
        let dir = db_folder(&core);
        let (_, h) = core
            .create(dir, OsStr::new("f"), 0o644, libc::O_RDWR, ME)
            .expect("create");
        volume(&core, 2).inject_fault(libc::EIO);
        core.write(h, 0, b"x").expect("write");
        core.pool().close();
    }
    // Now Volume1, the only copy in sync, disappears.
    std::fs::rename(bed.root.join("vols/Volume1"), bed.root.join("gone")).expect("remove volume");
    let e = Pool::open(&bed.config, Arc::new(VecSink::default())).expect_err("must refuse");
    let m = e.to_string();
    assert!(
        m.contains("db001") && m.contains("Volume1") && m.contains("Volume2"),
        "{m}"
    );
    assert!(m.contains("missing"), "{m}");
}

#[test]
fn unclean_stop_with_a_lost_in_sync_copy_refuses_the_stale_one() {
    let bed = Bed::new("unclean", 2, 2);
    {
        let (core, _) = bed.open();
        let dir = db_folder(&core);
        let (_, h) = core
            .create(dir, OsStr::new("f"), 0o644, libc::O_RDWR, ME)
            .expect("create");
        volume(&core, 2).inject_fault(libc::EIO);
        core.write(h, 0, b"only on Volume1").expect("write");
        // No clean close: the daemon "crashed".
    }
    // Volume1, which knew Volume2 had failed, is gone; Volume2's own state is stale; and
    // the system disk was replaced too (no witness).
    std::fs::rename(bed.root.join("vols/Volume1"), bed.root.join("gone")).expect("remove volume");
    std::fs::remove_dir_all(bed.root.join("witness")).expect("remove witness");
    let e = Pool::open(&bed.config, Arc::new(VecSink::default())).expect_err("must refuse");
    let m = e.to_string();
    assert!(
        m.contains("Volume1") && m.contains("did not stop cleanly"),
        "{m}"
    );
}

#[test]
fn the_witness_vouches_for_the_survivor_after_a_crash() {
    let bed = Bed::new("witness", 2, 2);
    {
        let (core, _) = bed.open();
        core.create(db_folder(&core), OsStr::new("f"), 0o644, libc::O_RDWR, ME)
            .expect("create");
        // No clean close: the host "crashed", and Volume1's disk died with it.
    }
    std::fs::rename(bed.root.join("vols/Volume1"), bed.root.join("gone")).expect("remove volume");
    // The witness on the system disk has the newest state: Volume2 is current.
    let (core, sink) = bed.open();
    assert_eq!(copy_state(&core, 1), CopyState::FailedAndSuspended);
    assert_eq!(copy_state(&core, 2), CopyState::InSync);
    assert!(sink.ids().contains(&EventId::CopyFailed));
}

#[test]
fn the_last_copy_in_sync_is_not_demoted() {
    let bed = Bed::new("last", 1, 1);
    {
        let (core, sink) = bed.open();
        let (_, h) = core
            .create(db_folder(&core), OsStr::new("f"), 0o644, libc::O_RDWR, ME)
            .expect("create");
        core.write(h, 0, b"kept").expect("write");
        volume(&core, 1).inject_fault(libc::EIO);
        assert_eq!(core.write(h, 0, b"lost").unwrap_err(), Errno(libc::EIO));
        assert_eq!(copy_state(&core, 1), CopyState::FailedAndSuspended);
        assert!(sink.ids().contains(&EventId::CopyFailed));
        // Persisted as still in sync: it has every acknowledged write.
        assert_eq!(
            bed.persisted(1).databases[0].copies[0].state,
            CopyState::InSync
        );
    }
    // The volume answers again: the copy is trusted and the data is there.
    let (core, _) = bed.open();
    assert_eq!(copy_state(&core, 1), CopyState::InSync);
    let f = core
        .lookup(db_folder(&core), OsStr::new("f"))
        .expect("lookup");
    let h = core.open(f.node, libc::O_RDONLY).expect("open");
    let mut buf = [0u8; 4];
    core.read(h, 0, &mut buf).expect("read");
    assert_eq!(&buf, b"kept");
    assert_eq!(
        crate::status::of_pool(core.pool()).volumes[0].state,
        "InUse"
    );
}

#[test]
fn clean_stop_then_disk_death_mounts_on_the_survivor() {
    let bed = Bed::new("clean", 2, 2);
    {
        let (core, _) = bed.open();
        let dir = db_folder(&core);
        core.create(dir, OsStr::new("f"), 0o644, libc::O_RDWR, ME)
            .expect("create");
        core.pool().close();
    }
    std::fs::rename(bed.root.join("vols/Volume1"), bed.root.join("gone")).expect("remove volume");
    let (core, sink) = bed.open();
    assert_eq!(copy_state(&core, 1), CopyState::FailedAndSuspended);
    assert_eq!(copy_state(&core, 2), CopyState::InSync);
    assert!(sink.ids().contains(&EventId::CopyFailed));
}

#[test]
fn checksums_turned_off_then_on_again_never_take_what_was_written_meanwhile_for_damage() {
    let bed = Bed::new("sums-off-on", 2, 2);
    let mut config = bed.config.clone();
    let open = |config: &Config| {
        let pool = Pool::open(config, Arc::new(VecSink::default())).expect("open pool");
        // What the daemon does before the databases serve.
        for db in pool.databases() {
            db.sweep_sums();
        }
        Arc::new(Core::new(pool))
    };
    let write = |core: &Core, data: &[u8]| {
        let dir = db_folder(core);
        let h = match core.lookup(dir, OsStr::new("f")) {
            Ok(a) => core.open(a.node, libc::O_RDWR).expect("open"),
            Err(_) => {
                core.create(dir, OsStr::new("f"), 0o644, libc::O_RDWR, ME)
                    .expect("create")
                    .1
            }
        };
        assert_eq!(core.write(h, 0, data).expect("write"), data.len());
        core.fsync(h, false).expect("fsync");
        core.release(h);
        core.pool().close();
    };
    let before = vec![1u8; 16 << 10];
    let meanwhile = vec![2u8; 16 << 10];
    write(&open(&config), &before);
    let store = bed.backing(1, ".reseedfs/sums/db001");
    assert!(store.is_dir(), "checksums on: the write was summed");
    config.checksums.enabled = false;
    write(&open(&config), &meanwhile);
    assert!(
        !store.exists(),
        "checksums off: the stores that would go stale are gone"
    );
    config.checksums.enabled = true;
    let core = open(&config);
    let a = core
        .lookup(db_folder(&core), OsStr::new("f"))
        .expect("lookup");
    let h = core.open(a.node, libc::O_RDONLY).expect("open");
    let mut back = vec![0u8; meanwhile.len()];
    assert_eq!(
        core.read(h, 0, &mut back)
            .expect("read: no stale sum taken for damage"),
        back.len()
    );
    assert_eq!(back, meanwhile);
    core.release(h);
}

#[test]
fn caller_errors_fail_nothing() {
    let bed = Bed::new("caller", 2, 2);
    let (core, sink) = bed.open();
    let dir = db_folder(&core);
    core.mkdir(dir, OsStr::new("d"), 0o755, ME).expect("mkdir");
    assert_eq!(
        core.mkdir(dir, OsStr::new("d"), 0o755, ME).unwrap_err(),
        Errno(libc::EEXIST)
    );
    assert_eq!(
        core.lookup(dir, OsStr::new("nope")).unwrap_err(),
        Errno(libc::ENOENT)
    );
    assert_eq!(
        core.remove(dir, OsStr::new("nope"), false).unwrap_err(),
        Errno(libc::ENOENT)
    );
    let long = "n".repeat(256);
    assert_eq!(
        core.mkdir(dir, OsStr::new(&long), 0o755, ME).unwrap_err(),
        Errno(libc::ENAMETOOLONG)
    );
    // The fixed top levels are read-only.
    assert_eq!(
        core.mkdir(NodeId::ROOT, OsStr::new("x"), 0o755, ME)
            .unwrap_err(),
        Errno(libc::EPERM)
    );
    assert!(sink.ids().is_empty(), "{:?}", sink.ids());
    assert_eq!(copy_state(&core, 1), CopyState::InSync);
    assert_eq!(copy_state(&core, 2), CopyState::InSync);
}

#[test]
fn enospc_on_one_copy_fails_that_copy_enospc_everywhere_is_the_callers() {
    let bed = Bed::new("enospc", 2, 2);
    let (core, sink) = bed.open();
    let dir = db_folder(&core);
    let (_, h) = core
        .create(dir, OsStr::new("f"), 0o644, libc::O_RDWR, ME)
        .expect("create");
    // Both copies full: the caller gets ENOSPC and nothing fails.
    volume(&core, 1).inject_fault(libc::ENOSPC);
    volume(&core, 2).inject_fault(libc::ENOSPC);
    assert_eq!(core.write(h, 0, b"x").unwrap_err(), Errno(libc::ENOSPC));
    assert_eq!(copy_state(&core, 1), CopyState::InSync);
    assert_eq!(copy_state(&core, 2), CopyState::InSync);
    // Only the passive copy full: the write succeeds and that copy is failed.
    volume(&core, 1).inject_fault(0);
    core.write(h, 0, b"x").expect("write with one full copy");
    assert_eq!(copy_state(&core, 2), CopyState::FailedAndSuspended);
    assert!(
        sink.ids().contains(&EventId::CopyDiverged),
        "{:?}",
        sink.ids()
    );
}

#[test]
fn every_copy_dead_gives_eio() {
    let bed = Bed::new("alldead", 2, 2);
    let (core, _) = bed.open();
    let dir = db_folder(&core);
    let (_, h) = core
        .create(dir, OsStr::new("f"), 0o644, libc::O_RDWR, ME)
        .expect("create");
    volume(&core, 1).inject_fault(libc::EIO);
    volume(&core, 2).inject_fault(libc::EIO);
    assert_eq!(core.write(h, 0, b"x").unwrap_err(), Errno(libc::EIO));
    let mut b = [0u8; 1];
    assert_eq!(core.read(h, 0, &mut b).unwrap_err(), Errno(libc::EIO));
}

#[test]
fn renames_links_and_xattrs_reach_every_copy() {
    let bed = Bed::new("meta", 2, 2);
    let (core, _) = bed.open();
    let dir = db_folder(&core);
    let (a, h) = core
        .create(dir, OsStr::new("a"), 0o600, libc::O_RDWR, ME)
        .expect("create");
    core.release(h);
    core.rename(dir, OsStr::new("a"), dir, OsStr::new("b"), 0)
        .expect("rename");
    assert_eq!(
        core.lookup(dir, OsStr::new("b")).expect("lookup b").node,
        a.node
    );
    core.link(a.node, dir, OsStr::new("c")).expect("link");
    core.setxattr(a.node, OsStr::new("user.k"), b"v", 0)
        .expect("setxattr");
    core.setattr(
        a.node,
        None,
        SetAttr {
            mode: Some(0o640),
            size: Some(10),
            ..SetAttr::default()
        },
    )
    .expect("setattr");
    for k in [1, 2] {
        let b = bed.backing(k, "db001.db/b");
        let c = bed.backing(k, "db001.db/c");
        let mb = std::fs::metadata(&b).expect("b");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(mb.nlink(), 2);
        assert_eq!(mb.ino(), std::fs::metadata(&c).expect("c").ino());
        assert_eq!(mb.mode() & 0o7777, 0o640);
        assert_eq!(mb.len(), 10);
        let mut v = [0u8; 8];
        let n = rustix::fs::getxattr(&b, "user.k", &mut v[..]).expect("getxattr");
        assert_eq!(&v[..n], b"v");
    }
}

#[test]
fn kernel_internal_open_flags_do_not_reach_the_backing_open() {
    let bed = Bed::new("flags", 2, 2);
    let (core, _) = bed.open();
    let dir = db_folder(&core);
    let (a, h) = core
        .create(dir, OsStr::new("prog"), 0o755, libc::O_RDWR, ME)
        .expect("create");
    core.release(h);
    // What the kernel sends when a program on the mount is executed: O_RDONLY|__FMODE_EXEC
    // (0x20) with O_LARGEFILE; and an O_DIRECT|O_APPEND open for writing.
    let h = core
        .open(a.node, libc::O_LARGEFILE | 0x20)
        .expect("exec-style open");
    core.release(h);
    let h = core
        .open(a.node, libc::O_WRONLY | libc::O_DIRECT | libc::O_APPEND)
        .expect("direct append open");
    assert_eq!(core.write(h, 0, b"abc").expect("unaligned write"), 3);
}

#[test]
fn the_activity_log_carries_the_hot_extents_over_one_checkpoint() {
    let mut bed = Bed::new("carry", 2, 2);
    bed.config.tap.checkpoint_interval = std::time::Duration::from_secs(3600);
    let (core, _) = bed.open();
    let db = core.pool().databases()[0].clone();
    let dir = db_folder(&core);
    let (_, h) = core
        .create(dir, OsStr::new("f"), 0o644, libc::O_RDWR, ME)
        .expect("create");
    const MIB4: u64 = 4 << 20;
    let logged = || {
        let r = crate::tap::activity::read(
            &volume(&core, 1),
            &crate::names::DbName::from_static("db001"),
        )
        .expect("read log")
        .expect("a log");
        r.extents
            .get(std::path::Path::new("db001.db/f"))
            .cloned()
            .unwrap_or_default()
    };
    let log_len = || {
        std::fs::metadata(bed.backing(1, ".reseedfs/tap/db001/activity.log"))
            .expect("log")
            .len()
    };
    // Random (not sequential) writes to extents 0 and 5.
    core.write(h, 5 * MIB4, b"x").expect("write");
    core.write(h, 0, b"x").expect("write");
    assert_eq!(logged(), [0..1, 5..6].into());
    // The checkpoint carries both over: they were written in the epoch it ends.
    db.checkpoint(false);
    assert_eq!(logged(), [0..1, 5..6].into());
    // A write to a carried extent needs no log record.
    let before = log_len();
    core.write(h, 100, b"y").expect("write");
    assert_eq!(log_len(), before, "a carried extent was logged again");
    // Extent 5 was not written in the last epoch: it leaves; extent 0 stays.
    db.checkpoint(false);
    assert_eq!(
        logged(),
        rangemap::RangeSet::from_iter(std::iter::once(0..1))
    );
    // Nothing written for a whole epoch: the log is empty of the file.
    db.checkpoint(false);
    assert!(logged().is_empty());
    // Idle now: a checkpoint leaves the log file as it is (no rewrite, which replaces
    // the file), and a write after it is logged as ever and carried by the next.
    let file = || {
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::metadata(bed.backing(1, ".reseedfs/tap/db001/activity.log")).expect("log");
        (m.ino(), m.len())
    };
    let idle = file();
    db.checkpoint(false);
    assert_eq!(file(), idle, "an idle checkpoint rewrote the log");
    core.write(h, 5 * MIB4, b"w").expect("write");
    assert_eq!(
        logged(),
        rangemap::RangeSet::from_iter(std::iter::once(5..6))
    );
    db.checkpoint(false);
    assert_eq!(
        logged(),
        rangemap::RangeSet::from_iter(std::iter::once(5..6))
    );
    assert_ne!(
        file().0,
        idle.0,
        "a checkpoint after a write rewrites the log"
    );
    // A clean stop carries nothing.
    core.write(h, 0, b"z").expect("write");
    db.checkpoint(true);
    let r = crate::tap::activity::read(
        &volume(&core, 1),
        &crate::names::DbName::from_static("db001"),
    )
    .expect("read log")
    .expect("a log");
    assert!(r.clean && r.extents.is_empty());
    core.release(h);
}

/// Bytes of `path` in the page cache (`fincore`), or `None` when fincore is missing.
fn cached_bytes(path: &std::path::Path) -> Option<u64> {
    let out = std::process::Command::new("fincore")
        .args(["--bytes", "--noheadings", "--raw", "--output", "RES"])
        .arg(path)
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// A buffer for `len` bytes of write data starting 80 bytes into a page (returned: the
/// buffer and where the data starts), as FUSE hands a write over: never aligned.
fn fuse_write_buffer(len: usize) -> (Vec<u8>, usize) {
    let raw = vec![0u8; len + 8192];
    let at = raw.as_ptr().align_offset(4096) + 80;
    (raw, at)
}

#[test]
fn direct_callers_writes_bypass_the_backing_page_cache() {
    use std::os::unix::fs::OpenOptionsExt as _;
    let bed = Bed::new("direct-write", 2, 2);
    let (core, _) = bed.open();
    let rel = "db001.db/f";
    let (attr, h) = create_direct(&core);
    let (mut raw, at) = fuse_write_buffer(2 << 20);
    for (i, b) in raw[at..at + (2 << 20)].iter_mut().enumerate() {
        *b = (i % 253) as u8;
    }
    let data = &raw[at..at + (2 << 20)];
    assert_eq!(core.write(h, 0, data).expect("direct write"), 2 << 20);
    for k in 1..=2 {
        let backing = bed.backing(k, rel);
        let Some(cached) = cached_bytes(&backing) else {
            let why = "fincore (util-linux) is missing: the page cache cannot be seen";
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
            eprintln!("SKIPPED: {why}");
            return;
        };
        if cached > 0 {
            // tmpfs and some others refuse O_DIRECT: the write fell back to the cache.
            let probe = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT)
                .open(&backing);
            if probe.is_err() {
                eprintln!("SKIPPED: {} refuses O_DIRECT", backing.display());
                return;
            }
        }
        assert_eq!(
            cached,
            0,
            "copy {k}: O_DIRECT data cached in {}",
            backing.display()
        );
        assert_eq!(
            std::fs::read(&backing).expect("read copy"),
            data,
            "copy {k}"
        );
    }
    // An unaligned write of the same caller goes through the cache (O_DIRECT cannot take
    // it), and lands all the same.
    let odd = &raw[at + 3..at + 1003];
    assert_eq!(core.write(h, 4097, odd).expect("unaligned write"), 1000);
    let mut back = vec![0u8; 1000];
    assert_eq!(core.read(h, 4097, &mut back).expect("read back"), 1000);
    assert_eq!(back, odd);
    // The same write from a caller without O_DIRECT is cached, once per copy: the check
    // above can fail.
    let b = core.open(attr.node, libc::O_RDWR).expect("open buffered");
    assert_eq!(core.write(b, 0, data).expect("buffered write"), 2 << 20);
    for k in 1..=2 {
        let cached = cached_bytes(&bed.backing(k, rel)).unwrap_or(0);
        assert!(
            cached >= 1 << 20,
            "copy {k}: a buffered write left {cached} bytes cached"
        );
    }
    core.release(b);
    core.release(h);
}

#[test]
fn direct_writes_to_two_copies_defer_their_sums_to_the_checkpoint() {
    let mut bed = Bed::new("defer-sums", 2, 2);
    bed.config.tap.checkpoint_interval = std::time::Duration::from_secs(3600);
    let (core, _) = bed.open();
    let db = core.pool().databases()[0].clone();
    let rel = std::path::Path::new("db001.db/f");
    let (_, h) = create_direct(&core);
    let (mut raw, at) = fuse_write_buffer(256 << 10);
    let mut fill = |seed: u8| {
        for (i, b) in raw[at..at + (256 << 10)].iter_mut().enumerate() {
            *b = (i % 251) as u8 ^ seed;
        }
        raw[at..at + (256 << 10)].to_vec()
    };
    let (a, b) = (fill(1), fill(2));
    let bad_on_disk = |k: usize| {
        crate::checksum::check_file(&volume(&core, k), "db001", rel).expect("check the copy")
    };
    core.write(h, 0, &a).expect("write a");
    db.checkpoint(false);
    // The first write's sums are on both copies' disks after the checkpoint.
    for k in 1..=2 {
        assert_eq!(
            bad_on_disk(k),
            Vec::<u64>::new(),
            "copy {k} after the checkpoint"
        );
    }
    // Overwritten: the new sums are in memory only, where reads find them (the disk's
    // stores still hold the first write's sums)...
    core.write(h, 0, &b).expect("write b");
    let mut back = vec![0u8; 256 << 10];
    let mut buf = vec![0u8; (256 << 10) + 4096];
    let off = buf.as_ptr().align_offset(4096);
    assert_eq!(
        core.read(h, 0, &mut buf[off..off + (256 << 10)])
            .expect("read b"),
        256 << 10
    );
    back.copy_from_slice(&buf[off..off + (256 << 10)]);
    assert!(back == b, "read back what was written");
    let stale: Vec<usize> = (1..=2).filter(|&k| !bad_on_disk(k).is_empty()).collect();
    if stale.is_empty() {
        let why = "no copy deferred its sums (no io_uring here?)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        eprintln!("SKIPPED: {why}");
        return;
    }
    assert_eq!(stale, [1, 2], "both copies defer");
    // ...and the checkpoint writes them before its syncfs.
    db.checkpoint(false);
    for k in 1..=2 {
        assert_eq!(
            bad_on_disk(k),
            Vec::<u64>::new(),
            "copy {k} after the second checkpoint"
        );
    }
}

#[test]
fn direct_callers_read_what_was_just_written_aligned_or_not() {
    let bed = Bed::new("direct-read", 2, 2);
    let (core, _) = bed.open();
    let dir = db_folder(&core);
    let (attr, h) = core
        .create(dir, OsStr::new("f"), 0o644, libc::O_RDWR, ME)
        .expect("create");
    let data: Vec<u8> = (0..64 << 10).map(|i| (i % 251) as u8).collect();
    core.write(h, 0, &data).expect("write");
    // Still dirty in the backing page cache: an O_DIRECT read must see it all the same.
    let d = core
        .open(attr.node, libc::O_RDONLY | libc::O_DIRECT)
        .expect("open O_DIRECT");
    let mut raw = vec![0u8; 80 << 10];
    let start = raw.as_ptr().align_offset(crate::copyset::DIRECT_ALIGN);
    let buf = &mut raw[start..start + (8 << 10)];
    assert_eq!(core.read(d, 4096, buf).expect("aligned read"), 8 << 10);
    assert_eq!(buf, &data[4096..4096 + (8 << 10)]);
    // Unaligned offset, length and buffer: served through the page cache.
    let odd = &mut raw[start + 1..start + 1 + 1000];
    assert_eq!(core.read(d, 17, odd).expect("unaligned read"), 1000);
    assert_eq!(odd, &data[17..1017]);
    // At end of file: short.
    let tail = &mut raw[start..start + (8 << 10)];
    assert_eq!(core.read(d, 60 << 10, tail).expect("tail read"), 4 << 10);
    assert_eq!(&tail[..4 << 10], &data[60 << 10..]);
    // The active copy's disk dies: the direct read fails over like any other.
    volume(&core, 1).inject_fault(libc::EIO);
    let buf = &mut raw[start..start + (16 << 10)];
    assert_eq!(
        core.read(d, 16 << 10, buf).expect("read after death"),
        16 << 10
    );
    assert_eq!(buf, &data[16 << 10..32 << 10]);
    assert_eq!(copy_state(&core, 1), CopyState::FailedAndSuspended);
    core.release(d);
    core.release(h);
}

/// The bytes of `name` in the database folder on volume `k`.
fn backing_bytes(bed: &Bed, k: usize, name: &str) -> Vec<u8> {
    std::fs::read(bed.backing(k, &format!("db001.db/{name}"))).expect("read the backing file")
}

#[test]
fn a_write_every_copy_refuses_after_different_parts_leaves_the_copies_equal() {
    // The active copy takes 12 KiB of a 64 KiB write and the other 40 KiB, then both say
    // ENOSPC; and the other way round. The copies end up equal (size and bytes), and
    // the caller gets ENOSPC.
    for (name, active_lands, other_lands) in [("a", 12 << 10, 40 << 10), ("b", 0, 40 << 10)] {
        let bed = Bed::new(&format!("refused-{name}"), 2, 2);
        let (core, sink) = bed.open();
        let dir = db_folder(&core);
        let (_, h) = core
            .create(dir, OsStr::new(name), 0o644, libc::O_RDWR, ME)
            .expect("create");
        core.write(h, 0, &[1u8; 8192]).expect("write before");
        volume(&core, 1).inject_write_fault(libc::ENOSPC, active_lands);
        volume(&core, 2).inject_write_fault(libc::ENOSPC, other_lands);
        let e = core
            .write(h, 4096, &[2u8; 64 << 10])
            .expect_err("a write every copy refused");
        assert_eq!(e.0, libc::ENOSPC);
        let (a, b) = (backing_bytes(&bed, 1, name), backing_bytes(&bed, 2, name));
        assert_eq!(
            a.len(),
            8192.max(4096 + active_lands as usize),
            "the active copy's part"
        );
        assert!(a == b, "copies differ: {} and {} bytes", a.len(), b.len());
        assert_eq!(copy_state(&core, 1), CopyState::InSync);
        assert_eq!(copy_state(&core, 2), CopyState::InSync);
        assert!(
            !sink.ids().contains(&EventId::CopyDiverged),
            "{:?}",
            sink.ids()
        );
        core.release(h);
    }
}

#[test]
fn a_copy_that_cannot_be_made_equal_after_a_refused_write_is_failed_as_diverged() {
    // The active copy takes 40 KiB before ENOSPC, the other none and it refuses everything
    // from then on: it cannot be made equal, so it is failed (3003) and the database runs
    // on the active copy.
    let bed = Bed::new("refused-diverged", 2, 2);
    let (core, sink) = bed.open();
    let dir = db_folder(&core);
    let (_, h) = core
        .create(dir, OsStr::new("f"), 0o644, libc::O_RDWR, ME)
        .expect("create");
    volume(&core, 1).inject_write_fault(libc::ENOSPC, 40 << 10);
    volume(&core, 2).inject_fault(libc::ENOSPC);
    let e = core
        .write(h, 0, &[3u8; 64 << 10])
        .expect_err("a write every copy refused");
    assert_eq!(e.0, libc::ENOSPC);
    assert_eq!(copy_state(&core, 1), CopyState::InSync);
    assert_eq!(copy_state(&core, 2), CopyState::FailedAndSuspended);
    assert!(
        sink.ids().contains(&EventId::CopyDiverged),
        "{:?}",
        sink.ids()
    );
    core.release(h);
}

/// Descriptors of this process on files under `dir` that have no name left.
pub(crate) fn deleted_fds_under(dir: &std::path::Path) -> usize {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    fds.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t.starts_with(dir) && t.to_string_lossy().ends_with(" (deleted)"))
        .count()
}

#[test]
fn r13_an_unlinked_open_file_works_through_its_handles_until_its_last_close() {
    let bed = Bed::new("unlinked", 3, 2);
    let (core, _) = bed.open();
    let dir = db_folder(&core);
    let (attr, h) = core
        .create(dir, OsStr::new("etilqs_tmp"), 0o600, libc::O_RDWR, ME)
        .expect("create");
    let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    core.write(h, 0, &data).expect("write");
    // What SQLite does with its temporary files: unlink right after the open.
    core.remove(dir, OsStr::new("etilqs_tmp"), false)
        .expect("unlink");
    assert!(!bed.backing(1, "db001.db/etilqs_tmp").exists());
    let node = attr.node;
    // fstat: the kernel asks with the handle (FUSE_GETATTR_FH) or without it.
    for fh in [Some(h), None] {
        let a = core.getattr(node, fh).expect("getattr of an unlinked file");
        assert_eq!((a.size, a.nlink), (3 << 20, 0), "fh {fh:?}");
    }
    let mut buf = vec![0u8; 1 << 20];
    assert_eq!(core.read(h, 1 << 20, &mut buf).expect("read"), 1 << 20);
    assert_eq!(buf[..], data[1 << 20..2 << 20]);
    core.write(h, 3 << 20, b"tail").expect("write after unlink");
    // ftruncate (with the handle), then a size change without one, fallocate, fsync.
    let set = |size| SetAttr {
        size: Some(size),
        ..Default::default()
    };
    assert_eq!(
        core.setattr(node, Some(h), set(2 << 20))
            .expect("ftruncate")
            .size,
        2 << 20
    );
    assert_eq!(
        core.setattr(node, None, set(5 << 20))
            .expect("truncate")
            .size,
        5 << 20
    );
    core.fallocate(h, 6 << 20, 1 << 20, libc::FALLOC_FL_KEEP_SIZE)
        .expect("fallocate");
    core.fsync(h, false).expect("fsync");
    assert_eq!(core.lseek(h, 0, libc::SEEK_DATA).expect("SEEK_DATA"), 0);
    // fchmod and futimens reach a file with no name through its handles.
    let chmod = SetAttr {
        mode: Some(0o640),
        mtime: Some(SetTime::At(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
        )),
        ..Default::default()
    };
    let a = core.setattr(node, None, chmod).expect("fchmod");
    assert_eq!(a.perm, 0o640);
    assert_eq!(
        a.mtime,
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)
    );
    // Opened again (through /proc/<pid>/fd): the same file.
    let h2 = core.open(node, libc::O_RDONLY).expect("reopen");
    assert_eq!(core.read(h2, 0, &mut buf).expect("read h2"), 1 << 20);
    assert_eq!(buf[..], data[..1 << 20]);
    // Both copies hold it; the active one dies: reads go on from the other.
    let vols = bed.root.join("vols");
    assert!(deleted_fds_under(&vols) >= 4, "a file per copy and handle");
    volume(&core, 1).inject_fault(libc::EIO);
    assert_eq!(
        core.read(h2, 0, &mut buf).expect("read after death"),
        1 << 20
    );
    assert_eq!(buf[..], data[..1 << 20]);
    assert_eq!(core.getattr(node, None).expect("getattr").size, 5 << 20);
    // Its space is freed at the last close: no descriptor is left on it.
    core.release(h);
    assert!(deleted_fds_under(&vols) > 0, "h2 still holds it");
    core.release(h2);
    assert_eq!(deleted_fds_under(&vols), 0);
    assert_eq!(core.getattr(node, None), Err(Errno(libc::ENOENT)));
}

#[test]
fn r13_a_panic_on_a_volume_s_lane_fails_that_copy_and_the_write_completes_from_the_others() {
    // A bug on the lane of the passive copy's volume, then (on a new bed) of the active
    // one's: the write is answered from the other copy, nothing is lost, the volume is
    // failed as by an I/O error, and event 3060 names the volume and the operation.
    for k in [2, 1] {
        let bed = Bed::new(&format!("lane-panic-{k}"), 2, 2);
        let (core, sink) = bed.open();
        let dir = db_folder(&core);
        let (_, h) = core
            .create(dir, OsStr::new("f"), 0o644, libc::O_RDWR, ME)
            .expect("create");
        core.write(h, 0, &[1u8; 8192]).expect("write before");
        volume(&core, k).faults().panic_next_write();
        let started = std::time::Instant::now();
        assert_eq!(
            core.write(h, 4096, &[2u8; 16384])
                .expect("the write completes"),
            16384
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "answered at once, not at the deadline: {:?}",
            started.elapsed()
        );
        assert_eq!(copy_state(&core, k), CopyState::FailedAndSuspended);
        assert_eq!(copy_state(&core, 3 - k), CopyState::InSync);
        let mut want = vec![1u8; 4096];
        want.extend_from_slice(&[2u8; 16384]);
        assert_eq!(
            backing_bytes(&bed, 3 - k, "f"),
            want,
            "the other copy has it"
        );
        let mut back = vec![0u8; want.len()];
        assert_eq!(core.read(h, 0, &mut back).expect("read"), want.len());
        assert_eq!(back, want);
        let events = sink.0.lock().clone();
        let name = format!("Volume{k}");
        let panicked = events
            .iter()
            .find(|e| e.id == EventId::RequestPanicked)
            .unwrap_or_else(|| panic!("no event 3060: {:?}", sink.ids()));
        assert_eq!(panicked.volume.as_deref(), Some(name.as_str()));
        assert_eq!(panicked.fields["operation"], "write");
        assert!(
            panicked.fields["panic"]
                .as_str()
                .is_some_and(|p| p.contains("injected panic")),
            "{panicked:?}"
        );
        let failed = events
            .iter()
            .find(|e| e.id == EventId::CopyFailed)
            .expect("event 1109");
        assert_eq!(failed.volume.as_deref(), Some(name.as_str()));
        assert_eq!(failed.fields["reason"], "io_error");
        // The mount goes on: the next write lands on the copy left.
        core.write(h, 0, &[3u8; 4096]).expect("write after");
        core.release(h);
    }
}

#[test]
fn r13_a_refused_huge_fallocate_leaves_a_lagging_copy_s_dirty_map_as_it_was() {
    // The passive copy's disk dies and its copy lags; then a 4 EiB fallocate that the
    // active copy refuses (EFBIG: past the largest file) must not stay in the lagging
    // copy's map, while what was dirty before (and a later write) stays.
    let bed = Bed::new("fallocate-refused", 2, 2);
    let (core, _sink) = bed.open();
    let dir = db_folder(&core);
    let (_, h) = core
        .create(dir, OsStr::new("f"), 0o644, libc::O_RDWR, ME)
        .expect("create");
    core.write(h, 0, &[1u8; 4096]).expect("write before");
    volume(&core, 2).inject_fault(libc::EIO);
    core.write(h, 1 << 20, &[2u8; 8192])
        .expect("a write the passive copy misses");
    assert_eq!(copy_state(&core, 2), CopyState::FailedAndSuspended);
    let db = &core.pool().databases()[0];
    let extents = |db: &crate::copyset::Database| {
        let map = db
            .tap()
            .snapshot(crate::names::CopySlot::new(1))
            .expect("the lagging copy's map");
        let f = map
            .files
            .iter()
            .find(|(p, _)| p.ends_with("f"))
            .map(|(_, f)| f.clone())
            .expect("the file is dirty");
        (f.extents(), map.mutations)
    };
    // What it missed, and what the activity log held when it left (its disk may have
    // lost those): a few MiB from the start of the file.
    let (before, mutations) = extents(db);
    let end = before.last().map_or(0, |&(o, l)| o + l);
    assert!(
        ((1 << 20) + 8192..=16 << 20).contains(&end),
        "the map before: {before:?}"
    );
    for (offset, mode) in [(0, 0), (1 << 30, libc::FALLOC_FL_KEEP_SIZE)] {
        let e = core
            .fallocate(h, offset, 4 << 60, mode)
            .expect_err("a 4 EiB fallocate is refused");
        assert!(
            matches!(e.0, libc::EFBIG | libc::ENOSPC | libc::EINVAL),
            "errno {}",
            e.0
        );
        assert_eq!(
            copy_state(&core, 1),
            CopyState::InSync,
            "a refusal, not a failure"
        );
        assert_eq!(
            extents(db),
            (before.clone(), mutations),
            "the map is as it was"
        );
    }
    // What runs is recorded as before.
    core.fallocate(h, 64 << 20, 4096, 0)
        .expect("a small fallocate");
    core.write(h, 96 << 20, &[3u8; 4096]).expect("a write");
    let mut want = before.clone();
    want.extend([(64 << 20, 4096), (96 << 20, 4096)]);
    assert_eq!(extents(db).0, want);
    core.release(h);
}

/// The OS may keep a file's cache across opens (FUSE's `FOPEN_KEEP_CACHE`) only where
/// every name of the file is a name of its node: a hard link made before the mount has a
/// node of its own, whose writes the other node's cache would not see.
#[test]
fn a_file_keeps_its_cache_across_opens_only_when_its_node_has_all_its_names() {
    let bed = Bed::new("keep-cache", 2, 2);
    let dir = {
        let (core, _) = bed.open();
        let dir = db_folder(&core);
        let (a, h) = core
            .create(dir, OsStr::new("a"), 0o600, libc::O_RDWR, ME)
            .expect("create a");
        assert!(core.keeps_cache(h), "a new file has one name, its node's");
        core.release(h);
        // A link made through the mount is a name of the same node.
        core.link(a.node, dir, OsStr::new("a2")).expect("link");
        let h = core.open(a.node, libc::O_RDONLY).expect("open a");
        assert!(core.keeps_cache(h), "both names of a are its node's");
        core.release(h);
        let (_, h) = core
            .create(dir, OsStr::new("b"), 0o600, libc::O_RDWR, ME)
            .expect("create b");
        core.release(h);
        dir
    };
    // Behind the mount (or in a mount before this one): b gets a second name on every copy.
    for k in [1, 2] {
        std::fs::hard_link(bed.backing(k, "db001.db/b"), bed.backing(k, "db001.db/b2"))
            .expect("hard link behind the mount");
    }
    let (core, _) = bed.open();
    let dir2 = db_folder(&core);
    assert_eq!(dir, dir2);
    let b = core.lookup(dir2, OsStr::new("b")).expect("lookup b");
    let b2 = core.lookup(dir2, OsStr::new("b2")).expect("lookup b2");
    assert_ne!(
        b.node, b2.node,
        "names seen first by lookup get nodes of their own"
    );
    for node in [b.node, b2.node] {
        let h = core.open(node, libc::O_RDWR).expect("open b");
        assert!(
            !core.keeps_cache(h),
            "b has a name its node does not know: its cache must not outlive an open"
        );
        core.release(h);
    }
    // And a's two names, now seen by lookup in a new mount, are two nodes too.
    let a = core.lookup(dir2, OsStr::new("a")).expect("lookup a");
    let h = core.open(a.node, libc::O_RDONLY).expect("open a");
    assert!(!core.keeps_cache(h), "a's other name is another node now");
    core.release(h);
}

#[test]
fn an_open_only_to_fsync_a_directory_does_not_read_it() {
    // Reading a directory updates its atime (relatime: it changed since), which would
    // dirty it just before the fsync the open is for (SQLite's after each journal).
    let bed = Bed::new("opendir-lazy", 1, 1);
    let (core, _) = bed.open();
    let dir = db_folder(&core);
    let (_, h) = core
        .create(dir, OsStr::new("f"), 0o644, libc::O_RDWR, ME)
        .expect("create");
    core.release(h);
    let backing = bed.backing(1, "db001.db");
    let long_ago = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1 << 20);
    let set_atime = || {
        std::fs::File::open(&backing)
            .and_then(|d| d.set_times(std::fs::FileTimes::new().set_accessed(long_ago)))
            .expect("set the backing directory's atime");
    };
    let atime = || {
        std::fs::metadata(&backing)
            .and_then(|m| m.accessed())
            .expect("the backing directory's atime")
    };
    set_atime();
    let d = core.opendir(dir).expect("opendir");
    core.fsyncdir(dir).expect("fsyncdir");
    assert_eq!(atime(), long_ago, "opendir and fsyncdir read the directory");
    let mut names = Vec::new();
    core.readdir(d, 0, |e, _| {
        names.push(e.name.clone());
        false
    })
    .expect("readdir");
    assert!(names.iter().any(|n| n == "f"), "readdir: {names:?}");
    core.release(d);
    if atime() == long_ago {
        // A volume mounted noatime: the assertion above could not fail.
        let why = "the backing filesystem does not update atime on a directory read";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        eprintln!("SKIPPED: {why}");
    }
}
