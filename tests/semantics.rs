//! The file semantics a database needs, proven one group at a time through a real kernel
//! mount of reseedfs.
//!
//! Each `r2_sem_*` test mounts its own testbed (three plain-directory volumes, `db001` with
//! two copies: Volume1 and Volume2, Volume3 a spare), runs one group of checks in
//! `<databases_root>/db001/db001.db/`, and after every mutation asserts the outcome both
//! through the mount and on each copy's backing folder `<volumes_root>/VolumeN/db001.db/`.
//!
//! The checks are plain functions `check_*(root, copies)` that know nothing about the mount.
//! `r2_sem_selfcheck_on_plain_ext4` runs them on a plain directory of the build's own
//! filesystem with `copies == [that directory]` and needs no mount, which proves the checks
//! themselves right, independently of the product.

// fcntl(2) byte-range locks, truncate(2) and mmap(2) have no safe wrapper in our dependencies;
// each unsafe block below says why it is sound.
#![allow(unsafe_code)]

mod common;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fmt::Display;
use std::fs::{self, File, FileTimes, Metadata, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reseedfs::testbed::Testbed;
use rustix::fs::{
    CWD, FallocateFlags, FlockOperation, RenameFlags, Timespec, Timestamps, XattrFlags,
};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// O_DIRECT buffers, offsets and lengths are multiples of this.
const DIRECT_ALIGN: usize = 4096;
/// The unprivileged user of the permission checks.
const NOBODY: u32 = 65534;
/// The owner set by the chown checks.
const OTHER_ID: u32 = 1234;

/// A group of checks: the folder under test through the mount, and its copies' folders.
type Check = fn(&Path, &[PathBuf]);

// ---------------------------------------------------------------------------------------
// Mounted runners
// ---------------------------------------------------------------------------------------

/// Mounts a fresh testbed of `volumes` plain-directory volumes with `dbs` (2 copies each),
/// runs `body`, unmounts. When `body` panics, the tail of the mount log is printed before the
/// panic goes on.
fn with_mount(volumes: usize, dbs: &[&str], body: impl FnOnce(&common::Mounted)) {
    let bed = Testbed::plain_dirs(volumes).must(format!(
        "create a testbed of {volumes} plain-directory volumes"
    ));
    let mounted = common::Mounted::start(bed, dbs, 2);
    assert_eq!(
        mounted.fstype().as_deref(),
        Some(common::FSTYPE),
        "{} is not a reseedfs mount",
        mounted.bed.databases_root.display()
    );
    let outcome = catch_unwind(AssertUnwindSafe(|| body(&mounted)));
    if outcome.is_err() {
        print_mount_log(&mounted);
    }
    let unmounted = catch_unwind(AssertUnwindSafe(|| mounted.unmount()));
    if let Err(panic) = outcome {
        resume_unwind(panic);
    }
    if let Err(panic) = unmounted {
        resume_unwind(panic);
    }
}

/// Mounts `db001` (3 volumes: 2 copies and a spare) and runs `check` on its `db001.db`
/// folder and its two copies.
fn on_db001(check: impl FnOnce(&Path, &[PathBuf])) {
    with_mount(3, &["db001"], |m| {
        let (root, copies) = db001_site(m);
        check(&root, &copies);
    });
}

/// The mount path of `db001.db` and its copies' backing folders (Volume1 and Volume2).
fn db001_site(m: &common::Mounted) -> (PathBuf, Vec<PathBuf>) {
    let root = m.db_files("db001");
    let copies: Vec<PathBuf> = (1..=2).map(|k| m.backing_files(k, "db001")).collect();
    for copy in &copies {
        assert!(
            copy.is_dir(),
            "db001's copy folder {} does not exist: this suite expects db001's 2 copies on \
             Volume1 and Volume2; pool status: {}",
            copy.display(),
            m.status_json()
        );
    }
    (root, copies)
}

/// The tail of the daemon's log, for a failing check.
fn print_mount_log(m: &common::Mounted) {
    let log = m.mount_log();
    let lines: Vec<&str> = log.lines().collect();
    let tail = &lines[lines.len().saturating_sub(60)..];
    eprintln!(
        "---- last {} lines of {} ----\n{}\n---- end of mount log ----",
        tail.len(),
        common::mount_log_path(&m.bed).display(),
        tail.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// The tests, one per semantic group
// ---------------------------------------------------------------------------------------

#[test]
fn r2_sem_read_write() {
    if !common::require_mount_privileges("r2_sem_read_write") {
        return;
    }
    on_db001(check_read_write);
}

#[test]
fn r2_sem_fsync() {
    if !common::require_mount_privileges("r2_sem_fsync") {
        return;
    }
    on_db001(check_fsync);
}

#[test]
fn r2_sem_truncate() {
    if !common::require_mount_privileges("r2_sem_truncate") {
        return;
    }
    on_db001(check_truncate);
}

#[test]
fn r2_sem_fallocate() {
    if !common::require_mount_privileges("r2_sem_fallocate") {
        return;
    }
    on_db001(check_fallocate);
}

#[test]
fn r2_sem_rename() {
    if !common::require_mount_privileges("r2_sem_rename") {
        return;
    }
    on_db001(check_rename);
}

#[test]
fn r2_sem_dirs() {
    if !common::require_mount_privileges("r2_sem_dirs") {
        return;
    }
    on_db001(check_dirs);
}

#[test]
fn r2_sem_attrs() {
    if !common::require_mount_privileges("r2_sem_attrs") {
        return;
    }
    on_db001(check_attrs);
}

#[test]
fn r2_sem_statfs() {
    if !common::require_mount_privileges("r2_sem_statfs") {
        return;
    }
    on_db001(check_statfs);
}

#[test]
fn r2_sem_links() {
    if !common::require_mount_privileges("r2_sem_links") {
        return;
    }
    on_db001(check_links);
}

#[test]
fn r2_sem_xattrs() {
    if !common::require_mount_privileges("r2_sem_xattrs") {
        return;
    }
    on_db001(check_xattrs);
}

#[test]
fn r2_sem_locks() {
    if !common::require_mount_privileges("r2_sem_locks") {
        return;
    }
    on_db001(check_locks);
}

#[test]
fn r2_sem_mmap() {
    if !common::require_mount_privileges("r2_sem_mmap") {
        return;
    }
    on_db001(check_mmap);
}

#[test]
fn r2_sem_name_max() {
    if !common::require_mount_privileges("r2_sem_name_max") {
        return;
    }
    on_db001(check_name_max);
}

#[test]
fn r2_sem_inode_stability() {
    if !common::require_mount_privileges("r2_sem_inode_stability") {
        return;
    }
    on_db001(check_inode_stability);
}

#[test]
fn r2_sem_permissions() {
    if !common::require_mount_privileges("r2_sem_permissions") {
        return;
    }
    with_mount(3, &["db001"], |m| {
        // The testbed's own folders are ours to open up; the mount and everything below it
        // must already be traversable (that is part of what is checked).
        for dir in m.bed.databases_root.ancestors().skip(1) {
            if dir.starts_with(&m.bed.root) {
                allow_others_to_traverse(dir);
            }
        }
        let (root, copies) = db001_site(m);
        check_permissions(&root, &copies);
    });
}

#[test]
fn r2_sem_top_level() {
    if !common::require_mount_privileges("r2_sem_top_level") {
        return;
    }
    let dbs = ["db001", "db002"];
    // Two databases of 2 copies each, plus a spare.
    let volume_count = 5;
    with_mount(volume_count, &dbs, |m| {
        let volumes: Vec<PathBuf> = (1..=volume_count).map(|k| m.bed.volume_path(k)).collect();
        check_top_level(&m.bed.databases_root, &dbs, &volumes);
    });
}

/// Every `check_*` but the top-level one (which needs a mount), with whether it needs root
/// (chown, drop_caches, setpriv).
const PLAIN_CHECKS: [(&str, Check, bool); 15] = [
    ("read_write", check_read_write, false),
    ("fsync", check_fsync, false),
    ("truncate", check_truncate, false),
    ("fallocate", check_fallocate, false),
    ("rename", check_rename, false),
    ("dirs", check_dirs, false),
    ("attrs", check_attrs, true),
    ("statfs", check_statfs, false),
    ("links", check_links, false),
    ("xattrs", check_xattrs, false),
    ("locks", check_locks, false),
    ("mmap", check_mmap, false),
    ("name_max", check_name_max, false),
    ("inode_stability", check_inode_stability, true),
    ("permissions", check_permissions, true),
];

/// The checks of [`PLAIN_CHECKS`] this process can run on a plain directory under `scratch`
/// (a note on stderr for each one skipped).
fn runnable_checks(scratch: &Path) -> impl Iterator<Item = (&'static str, Check)> {
    let is_root = rustix::process::geteuid().is_root();
    let blocked = untraversable_ancestor(scratch);
    PLAIN_CHECKS
        .into_iter()
        .filter_map(move |(name, check, needs_root)| {
            let skip = if needs_root && !is_root {
                Some("it needs root".to_owned())
            } else if let (Some((dir, mode)), "permissions") = (&blocked, name) {
                Some(format!(
                    "{} (mode {mode:o}) keeps uid 65534 out",
                    dir.display()
                ))
            } else {
                None
            };
            match skip {
                Some(why) => {
                    eprintln!("selfcheck: skipping check_{name}: {why}");
                    None
                }
                None => Some((name, check)),
            }
        })
}

/// A fresh folder `scratch/name`, mode 0755.
fn scratch_subdir(scratch: &Path, name: &str) -> PathBuf {
    let dir = scratch.join(name);
    fs::create_dir(&dir).must(format!("mkdir {}", dir.display()));
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
        .must(format!("chmod 0755 {}", dir.display()));
    dir
}

/// Runs the checks on a plain directory with `copies == [root]`, so the checks are known to
/// be right before the product is.
#[test]
fn r2_sem_selfcheck_on_plain_ext4() {
    let scratch = ScratchDir::new("selfcheck");
    allow_others_to_traverse(scratch.path());
    for (name, check) in runnable_checks(scratch.path()) {
        let dir = scratch_subdir(scratch.path(), name);
        check(&dir, std::slice::from_ref(&dir));
        eprintln!("selfcheck: check_{name} passed on {}", dir.display());
    }
}

/// The mirror assertions have teeth: with a second "copy" folder that never receives the
/// mutations, every check that promises something about the copies must fail.
#[test]
fn r2_sem_selfcheck_detects_a_stale_copy() {
    let scratch = ScratchDir::new("stale");
    allow_others_to_traverse(scratch.path());
    let about_copies =
        runnable_checks(scratch.path()).filter(|(name, _)| !["statfs", "locks"].contains(name));
    for (name, check) in about_copies {
        let dir = scratch_subdir(scratch.path(), name);
        let stale = scratch_subdir(scratch.path(), &format!("{name}-stale-copy"));
        let caught = catch_unwind(|| check(&dir, &[dir.clone(), stale.clone()]));
        assert!(
            caught.is_err(),
            "check_{name} passed although one copy never changed"
        );
        eprintln!("selfcheck: check_{name} rightly failed on a stale copy (message above)");
    }
}

// ---------------------------------------------------------------------------------------
// 1. create / open / read / write
// ---------------------------------------------------------------------------------------

/// Writes at any offset (inside, past EOF, far past EOF), O_APPEND, O_DIRECT, O_SYNC,
/// O_DSYNC, and reads at EOF.
fn check_read_write(root: &Path, copies: &[PathBuf]) {
    let s = Site::new(root, copies);

    s.step("create a file and write 10000 bytes");
    let mut expected = pattern(10_000, 1);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(s.m("data"))
            .must("create data");
        f.write_all(&expected).must("write data");
    }
    s.expect_content("data", &expected);

    s.step("overwrite 100 bytes in the middle (offset 5000)");
    let patch = pattern(100, 2);
    open_rw(&s.m("data"))
        .write_all_at(&patch, 5000)
        .must("pwrite at 5000");
    expected[5000..5100].copy_from_slice(&patch);
    s.expect_content("data", &expected);

    s.step("write 300 bytes at offset 20000, 10000 bytes past EOF");
    let tail = pattern(300, 3);
    open_rw(&s.m("data"))
        .write_all_at(&tail, 20_000)
        .must("pwrite at 20000");
    expected.resize(20_000, 0);
    expected.extend_from_slice(&tail);
    s.expect_content("data", &expected);

    s.step("sparse write of 4 KiB at 1 GiB into an empty file");
    let far = pattern(4096, 4);
    let gib = 1024 * MIB;
    open_new(&s.m("sparse"))
        .write_all_at(&far, gib)
        .must("pwrite at 1 GiB");
    s.expect_len("sparse", gib + 4096);
    s.expect_bytes_at("sparse", gib, &far);
    s.expect_bytes_at("sparse", 512 * MIB, &[0; 4096]);
    s.expect_bytes_at("sparse", 0, &[0; 4096]);
    for copy in s.copy_views() {
        let md = lstat(&copy.path("sparse"));
        assert!(
            md.blocks() * 512 < 16 * MIB,
            "{}: step `{}`: the hole was materialized on the backing file: {} bytes allocated \
             for 4 KiB of data",
            copy.label,
            s.current_step(),
            md.blocks() * 512
        );
    }

    s.step("O_APPEND writes land at the current end, even after another descriptor grew it");
    let mut log = pattern(100, 5);
    fs::write(s.m("log"), &log).must("write log");
    let mut appender = OpenOptions::new()
        .append(true)
        .open(s.m("log"))
        .must("open log O_APPEND");
    let rec1 = pattern(50, 6);
    appender.write_all(&rec1).must("append record 1");
    log.extend_from_slice(&rec1);
    s.expect_content("log", &log);
    let other = pattern(150, 7);
    open_rw(&s.m("log"))
        .write_all_at(&other, log.len() as u64)
        .must("grow log through a second descriptor");
    log.extend_from_slice(&other);
    let rec2 = pattern(30, 8);
    appender.write_all(&rec2).must("append record 2");
    log.extend_from_slice(&rec2);
    drop(appender);
    s.expect_content("log", &log);

    s.step("O_DIRECT: aligned writes and reads");
    let mut direct_expected = vec![0u8; 4 * DIRECT_ALIGN];
    {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_DIRECT)
            .open(s.m("direct"))
            .must("open direct with O_DIRECT|O_CREAT");
        let mut buf = AlignedBuf::new(2 * DIRECT_ALIGN);
        buf.as_mut_slice()
            .copy_from_slice(&pattern(2 * DIRECT_ALIGN, 9));
        f.write_all_at(buf.as_slice(), 0)
            .must("O_DIRECT pwrite 8 KiB at 0");
        direct_expected[..2 * DIRECT_ALIGN].copy_from_slice(buf.as_slice());
        let mut one = AlignedBuf::new(DIRECT_ALIGN);
        one.as_mut_slice()
            .copy_from_slice(&pattern(DIRECT_ALIGN, 10));
        f.write_all_at(one.as_slice(), 3 * DIRECT_ALIGN as u64)
            .must("O_DIRECT pwrite 4 KiB at 12 KiB");
        direct_expected[3 * DIRECT_ALIGN..].copy_from_slice(one.as_slice());
        let mut back = AlignedBuf::new(4 * DIRECT_ALIGN);
        f.read_exact_at(back.as_mut_slice(), 0)
            .must("O_DIRECT pread 16 KiB at 0");
        assert_same(
            "mount (O_DIRECT read)",
            "direct",
            back.as_slice(),
            &direct_expected,
        );
    }
    s.expect_content("direct", &direct_expected);

    for (flag, name) in [(libc::O_SYNC, "O_SYNC"), (libc::O_DSYNC, "O_DSYNC")] {
        s.step(&format!(
            "{name}: a write is on every copy as soon as it returns (before close)"
        ));
        let file = format!("sync_{name}");
        let data = pattern(5000, flag as u8);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(flag)
            .open(s.m(&file))
            .must(format!("open {file} with {name}"));
        f.write_all(&data).must(format!("{name} write"));
        s.expect_content(&file, &data);
        drop(f);
    }

    s.step("8 threads write disjoint 256 KiB regions of one file at once");
    let region = 256 * KIB as usize;
    let parallel = open_new(&s.m("parallel"));
    let mut parallel_expected = vec![0u8; 8 * region];
    std::thread::scope(|scope| {
        for (i, chunk) in parallel_expected.chunks_mut(region).enumerate() {
            chunk.copy_from_slice(&pattern(region, 20 + i as u8));
            let (f, chunk) = (&parallel, &*chunk);
            scope.spawn(move || {
                f.write_all_at(chunk, (i * region) as u64)
                    .must(format!("thread {i}: pwrite 256 KiB at {}", i * region));
            });
        }
    });
    drop(parallel);
    s.expect_content("parallel", &parallel_expected);

    s.step("one 4 MiB write at an odd offset");
    let big = pattern(4 * MIB as usize, 30);
    open_new(&s.m("big"))
        .write_all_at(&big, 12_345)
        .must("pwrite 4 MiB at 12345");
    let mut big_expected = vec![0u8; 12_345];
    big_expected.extend_from_slice(&big);
    s.expect_content("big", &big_expected);

    s.step("reads at and past EOF return 0 bytes");
    let f = File::open(s.m("data")).must("open data for reading");
    let len = expected.len() as u64;
    let mut buf = [0u8; 64];
    for offset in [len, len + 1, len + 100_000] {
        let n = f
            .read_at(&mut buf, offset)
            .must(format!("pread at {offset}"));
        assert_eq!(
            n, 0,
            "pread at offset {offset} of a {len}-byte file returned {n} bytes"
        );
    }
    let mut sequential = File::open(s.m("data")).must("open data");
    let mut all = Vec::new();
    sequential
        .read_to_end(&mut all)
        .must("read data to the end");
    assert_same("mount (sequential read)", "data", &all, &expected);
    let n = sequential.read(&mut buf).must("read at EOF");
    assert_eq!(n, 0, "read(2) at EOF returned {n} bytes");
}

// ---------------------------------------------------------------------------------------
// 2. fsync / fdatasync
// ---------------------------------------------------------------------------------------

/// fsync and fdatasync succeed on files and directories, and the data is on every copy
/// when they return (checked before the descriptor is closed).
fn check_fsync(root: &Path, copies: &[PathBuf]) {
    let s = Site::new(root, copies);

    s.step("write then fsync, file still open");
    let mut f = open_new(&s.m("synced"));
    let data = pattern(64 * KIB as usize, 11);
    f.write_all(&data).must("write synced");
    f.sync_all().must("fsync synced");
    s.expect_content("synced", &data);

    s.step("rewrite then fdatasync, file still open");
    let more = pattern(8 * KIB as usize, 12);
    f.write_all_at(&more, 4096).must("pwrite at 4096");
    f.sync_data().must("fdatasync synced");
    let mut expected = data.clone();
    expected[4096..4096 + more.len()].copy_from_slice(&more);
    s.expect_content("synced", &expected);
    drop(f);

    s.step("create a file and fsync its directory");
    let sub = s.m("subdir");
    fs::create_dir(&sub).must("mkdir subdir");
    fs::write(sub.join("entry"), b"x").must("write subdir/entry");
    File::open(&sub)
        .must("open subdir")
        .sync_all()
        .must("fsync directory subdir");
    File::open(root)
        .must("open root")
        .sync_all()
        .must("fsync the db folder");
    s.expect_content("subdir/entry", b"x");
}

// ---------------------------------------------------------------------------------------
// 3. truncate
// ---------------------------------------------------------------------------------------

/// ftruncate (shrink, grow), truncate(2) by path (shrink, grow), and O_TRUNC.
fn check_truncate(root: &Path, copies: &[PathBuf]) {
    let s = Site::new(root, copies);
    let original = pattern(10_000, 13);
    fs::write(s.m("t"), &original).must("write t");

    s.step("ftruncate shrink to 3000");
    let f = open_rw(&s.m("t"));
    f.set_len(3000).must("ftruncate 3000");
    let mut expected = original[..3000].to_vec();
    s.expect_content("t", &expected);

    s.step("ftruncate grow to 8000 (the new part reads as zeros)");
    f.set_len(8000).must("ftruncate 8000");
    expected.resize(8000, 0);
    s.expect_content("t", &expected);
    drop(f);

    s.step("truncate(2) by path shrink to 100");
    truncate_path(&s.m("t"), 100).must("truncate 100");
    expected.truncate(100);
    s.expect_content("t", &expected);

    s.step("truncate(2) by path grow to 5000");
    truncate_path(&s.m("t"), 5000).must("truncate 5000");
    expected.resize(5000, 0);
    s.expect_content("t", &expected);

    s.step("open with O_TRUNC empties the file");
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(s.m("t"))
        .must("open t O_TRUNC");
    s.expect_content("t", b"");

    s.step("write after O_TRUNC");
    f.write_all(b"fresh").must("write after O_TRUNC");
    drop(f);
    s.expect_content("t", b"fresh");
}

// ---------------------------------------------------------------------------------------
// 4. fallocate
// ---------------------------------------------------------------------------------------

/// fallocate: plain (size grows), KEEP_SIZE (size unchanged, blocks allocated),
/// PUNCH_HOLE|KEEP_SIZE (range reads as zeros, size unchanged, blocks freed).
fn check_fallocate(root: &Path, copies: &[PathBuf]) {
    let s = Site::new(root, copies);

    s.step("plain fallocate of 1 MiB grows an empty file");
    let f = open_new(&s.m("fa"));
    rustix::fs::fallocate(&f, FallocateFlags::empty(), 0, MIB).must("fallocate 0..1MiB");
    s.expect_content("fa", &vec![0; MIB as usize]);
    s.expect_blocks_at_least("fa", MIB);

    s.step("fallocate KEEP_SIZE of 1 MiB past EOF keeps the size, allocates blocks");
    rustix::fs::fallocate(&f, FallocateFlags::KEEP_SIZE, MIB, MIB)
        .must("fallocate KEEP_SIZE 1MiB..2MiB");
    s.expect_len("fa", MIB);
    s.expect_blocks_at_least("fa", 2 * MIB);
    drop(f);

    s.step("punch a 128 KiB hole at 256 KiB in a 1 MiB file of data");
    let mut data = pattern(MIB as usize, 14);
    fs::write(s.m("holey"), &data).must("write holey");
    let f = open_rw(&s.m("holey"));
    f.sync_all().must("fsync holey");
    let before: Vec<u64> = s
        .views()
        .iter()
        .map(|v| lstat(&v.path("holey")).blocks())
        .collect();
    rustix::fs::fallocate(
        &f,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        256 * KIB,
        128 * KIB,
    )
    .must("fallocate PUNCH_HOLE|KEEP_SIZE 256KiB+128KiB");
    drop(f);
    data[256 * KIB as usize..384 * KIB as usize].fill(0);
    s.expect_content("holey", &data);
    for (view, blocks_before) in s.views().iter().zip(before) {
        let blocks_after = lstat(&view.path("holey")).blocks();
        assert!(
            blocks_after * 512 + 128 * KIB <= blocks_before * 512,
            "{}: step `{}`: punching 128 KiB freed only {} bytes ({} -> {} blocks of 512)",
            view.label,
            s.current_step(),
            (blocks_before.saturating_sub(blocks_after)) * 512,
            blocks_before,
            blocks_after
        );
    }
}

// ---------------------------------------------------------------------------------------
// 5. rename
// ---------------------------------------------------------------------------------------

/// rename: plain, into a subfolder, over an existing file, a directory with contents,
/// RENAME_NOREPLACE, RENAME_EXCHANGE; inode numbers (through the mount) follow the file.
fn check_rename(root: &Path, copies: &[PathBuf]) {
    let s = Site::new(root, copies);
    let a = b"contents of a".to_vec();

    s.step("plain rename r1 -> r2 keeps st_ino");
    fs::write(s.m("r1"), &a).must("write r1");
    let ino = s.ino("r1");
    fs::rename(s.m("r1"), s.m("r2")).must("rename r1 -> r2");
    s.expect_absent("r1");
    s.expect_content("r2", &a);
    s.expect_ino("r2", ino);

    s.step("rename over an existing file replaces it");
    fs::write(s.m("victim"), b"old victim").must("write victim");
    fs::rename(s.m("r2"), s.m("victim")).must("rename r2 -> victim");
    s.expect_absent("r2");
    s.expect_content("victim", &a);
    s.expect_ino("victim", ino);

    s.step("rename a directory with contents");
    fs::create_dir_all(s.m("d1/sub")).must("mkdir d1/sub");
    fs::write(s.m("d1/f"), b"f").must("write d1/f");
    fs::write(s.m("d1/sub/g"), b"g").must("write d1/sub/g");
    let g_ino = s.ino("d1/sub/g");
    let d_ino = s.ino("d1");
    fs::rename(s.m("d1"), s.m("d2")).must("rename d1 -> d2");
    s.expect_absent("d1");
    s.expect_content("d2/f", b"f");
    s.expect_content("d2/sub/g", b"g");
    s.expect_ino("d2", d_ino);
    s.expect_ino("d2/sub/g", g_ino);

    s.step("rename a file into a subfolder");
    fs::rename(s.m("victim"), s.m("d2/sub/moved")).must("rename victim -> d2/sub/moved");
    s.expect_absent("victim");
    s.expect_content("d2/sub/moved", &a);
    s.expect_ino("d2/sub/moved", ino);

    s.step("RENAME_NOREPLACE onto an existing file fails with EEXIST, nothing changes");
    fs::write(s.m("n1"), b"n1").must("write n1");
    fs::write(s.m("n2"), b"n2").must("write n2");
    expect_errno(
        rename_flags(&s.m("n1"), &s.m("n2"), RenameFlags::NOREPLACE),
        &[libc::EEXIST],
        "renameat2(n1, n2, RENAME_NOREPLACE)",
    );
    s.expect_content("n1", b"n1");
    s.expect_content("n2", b"n2");

    s.step("RENAME_NOREPLACE onto a free name works");
    rename_flags(&s.m("n1"), &s.m("n3"), RenameFlags::NOREPLACE)
        .must("renameat2(n1, n3, RENAME_NOREPLACE)");
    s.expect_absent("n1");
    s.expect_content("n3", b"n1");

    s.step("RENAME_EXCHANGE swaps two files (contents and inode numbers)");
    fs::write(s.m("x1"), b"one").must("write x1");
    fs::write(s.m("x2"), b"two, longer").must("write x2");
    let (ino1, ino2) = (s.ino("x1"), s.ino("x2"));
    rename_flags(&s.m("x1"), &s.m("x2"), RenameFlags::EXCHANGE)
        .must("renameat2(x1, x2, RENAME_EXCHANGE)");
    s.expect_content("x1", b"two, longer");
    s.expect_content("x2", b"one");
    s.expect_ino("x1", ino2);
    s.expect_ino("x2", ino1);
}

// ---------------------------------------------------------------------------------------
// 6. unlink / mkdir / rmdir / readdir
// ---------------------------------------------------------------------------------------

/// mkdir, rmdir (ENOTEMPTY on a non-empty folder), unlink (also of an open file), the
/// usual errors, and readdir of 200 entries with spaces and UTF-8 in their names.
fn check_dirs(root: &Path, copies: &[PathBuf]) {
    let s = Site::new(root, copies);

    s.step("mkdir");
    fs::create_dir(s.m("dir")).must("mkdir dir");
    s.expect_dir("dir");
    expect_errno(
        fs::create_dir(s.m("dir")),
        &[libc::EEXIST],
        "mkdir dir again",
    );

    s.step("rmdir of a non-empty folder fails with ENOTEMPTY");
    fs::write(s.m("dir/f"), b"f").must("write dir/f");
    expect_errno(
        fs::remove_dir(s.m("dir")),
        &[libc::ENOTEMPTY],
        "rmdir non-empty dir",
    );
    s.expect_content("dir/f", b"f");
    expect_errno(
        fs::remove_dir(s.m("dir/f")),
        &[libc::ENOTDIR],
        "rmdir of a file",
    );
    expect_errno(
        fs::remove_file(s.m("dir")),
        &[libc::EISDIR, libc::EPERM],
        "unlink of a folder",
    );

    s.step("unlink, then rmdir of the emptied folder");
    fs::remove_file(s.m("dir/f")).must("unlink dir/f");
    s.expect_absent("dir/f");
    expect_errno(
        fs::remove_file(s.m("dir/f")),
        &[libc::ENOENT],
        "unlink a missing file",
    );
    fs::remove_dir(s.m("dir")).must("rmdir dir");
    s.expect_absent("dir");

    s.step("an unlinked file stays readable and writable through an open descriptor");
    fs::write(s.m("doomed"), b"still here").must("write doomed");
    let f = open_rw(&s.m("doomed"));
    fs::remove_file(s.m("doomed")).must("unlink open doomed");
    s.expect_absent("doomed");
    f.write_all_at(b"STILL", 0)
        .must("pwrite to an unlinked open file");
    let mut back = [0u8; 10];
    f.read_exact_at(&mut back, 0)
        .must("pread from an unlinked open file");
    assert_eq!(
        &back, b"STILL here",
        "unlinked open file reads back wrong data"
    );
    drop(f);
    s.expect_absent("doomed");

    s.step("readdir of a folder with 200 entries lists each exactly once");
    fs::create_dir(s.m("many")).must("mkdir many");
    const FLAVOURS: [&str; 5] = [
        "plain",
        "with  spaces ",
        "ünïcödé",
        "日本語のファイル",
        "emoji 🎉.db",
    ];
    let names: BTreeSet<String> = (0..200)
        .map(|i| format!("entry {i:03} {}", FLAVOURS[i % FLAVOURS.len()]))
        .collect();
    for name in &names {
        fs::write(s.m("many").join(name), name.as_bytes()).must(format!("create many/{name}"));
    }
    for view in s.views() {
        let listed = list_dir(&view.path("many"));
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for name in &listed {
            *counts.entry(name.as_str()).or_default() += 1;
        }
        let duplicates: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
        let unique: BTreeSet<String> = listed.iter().cloned().collect();
        let missing: Vec<_> = names.difference(&unique).collect();
        let extra: Vec<_> = unique.difference(&names).collect();
        assert!(
            duplicates.is_empty() && missing.is_empty() && extra.is_empty(),
            "{}: readdir of many/ ({} entries): duplicates {duplicates:?}, missing {missing:?}, \
             unexpected {extra:?}",
            view.label,
            listed.len()
        );
    }
    let sample = format!("entry 123 {}", FLAVOURS[123 % FLAVOURS.len()]);
    s.expect_content(&format!("many/{sample}"), sample.as_bytes());
}

// ---------------------------------------------------------------------------------------
// 7. getattr / setattr
// ---------------------------------------------------------------------------------------

/// chmod (by path and by descriptor), chown to 1234:1234, utimensat with exact times,
/// futimens, and size as seen by getattr.
fn check_attrs(root: &Path, copies: &[PathBuf]) {
    let s = Site::new(root, copies);
    fs::write(s.m("attr"), pattern(777, 15)).must("write attr");
    s.expect_meta("attr", "size 777", |md| md.len() == 777);

    s.step("chmod 0640 by path");
    fs::set_permissions(s.m("attr"), fs::Permissions::from_mode(0o640)).must("chmod 0640");
    s.expect_mode("attr", 0o640);

    s.step("fchmod 0604 through a descriptor");
    let f = open_rw(&s.m("attr"));
    f.set_permissions(fs::Permissions::from_mode(0o604))
        .must("fchmod 0604");
    s.expect_mode("attr", 0o604);

    s.step("chown to 1234:1234");
    std::os::unix::fs::chown(s.m("attr"), Some(OTHER_ID), Some(OTHER_ID)).must("chown 1234:1234");
    s.expect_owner("attr", OTHER_ID, OTHER_ID);
    s.expect_mode("attr", 0o604);

    s.step("chown of a folder to 1234:1234");
    fs::create_dir(s.m("owned_dir")).must("mkdir owned_dir");
    std::os::unix::fs::chown(s.m("owned_dir"), Some(OTHER_ID), Some(OTHER_ID))
        .must("chown owned_dir");
    s.expect_owner("owned_dir", OTHER_ID, OTHER_ID);

    s.step("utimensat sets atime and mtime to the nanosecond");
    let atime = (1_700_000_000, 123_456_789);
    let mtime = (1_600_000_000, 987_654_321);
    rustix::fs::utimensat(
        CWD,
        s.m("attr"),
        &Timestamps {
            last_access: Timespec {
                tv_sec: atime.0,
                tv_nsec: atime.1,
            },
            last_modification: Timespec {
                tv_sec: mtime.0,
                tv_nsec: mtime.1,
            },
        },
        rustix::fs::AtFlags::empty(),
    )
    .must("utimensat attr");
    s.expect_meta("attr", &format!("atime {atime:?}"), |md| {
        (md.atime(), md.atime_nsec()) == atime
    });
    s.expect_meta("attr", &format!("mtime {mtime:?}"), |md| {
        (md.mtime(), md.mtime_nsec()) == mtime
    });

    s.step("futimens sets mtime through a descriptor");
    let when = UNIX_EPOCH + Duration::new(1_234_567_890, 500_000_000);
    f.set_times(FileTimes::new().set_modified(when))
        .must("futimens attr");
    drop(f);
    s.expect_meta("attr", "mtime (1234567890, 500000000)", |md| {
        (md.mtime(), md.mtime_nsec()) == (1_234_567_890, 500_000_000)
    });
}

// ---------------------------------------------------------------------------------------
// 8. statfs
// ---------------------------------------------------------------------------------------

/// statvfs on the mount returns a sane block size and nonzero totals.
fn check_statfs(root: &Path, _copies: &[PathBuf]) {
    let st = rustix::fs::statvfs(root).must(format!("statvfs {}", root.display()));
    let desc = format!(
        "statvfs({}): bsize {} frsize {} blocks {} bfree {} bavail {} files {} ffree {} namemax {}",
        root.display(),
        st.f_bsize,
        st.f_frsize,
        st.f_blocks,
        st.f_bfree,
        st.f_bavail,
        st.f_files,
        st.f_ffree,
        st.f_namemax
    );
    let sane_size = |n: u64| n.is_power_of_two() && (512..=MIB).contains(&n);
    assert!(sane_size(st.f_bsize), "block size not sane: {desc}");
    assert!(sane_size(st.f_frsize), "fragment size not sane: {desc}");
    assert!(st.f_blocks > 0, "zero total blocks: {desc}");
    assert!(
        st.f_bfree <= st.f_blocks && st.f_bavail <= st.f_bfree,
        "free > total: {desc}"
    );
    assert!(st.f_files > 0, "zero total inodes: {desc}");
    assert!(st.f_ffree <= st.f_files, "free inodes > total: {desc}");
    assert!(st.f_namemax >= 255, "name max below 255: {desc}");
}

// ---------------------------------------------------------------------------------------
// 9. symlinks and hard links
// ---------------------------------------------------------------------------------------

/// symlink/readlink with relative targets; hard links share st_ino and data, report
/// st_nlink 2 through the mount and on every copy.
fn check_links(root: &Path, copies: &[PathBuf]) {
    let s = Site::new(root, copies);
    fs::write(s.m("target.txt"), b"the target").must("write target.txt");
    fs::create_dir(s.m("sub")).must("mkdir sub");

    s.step("symlink with a relative target");
    for (link, target) in [("sl", "target.txt"), ("sub/up", "../target.txt")] {
        std::os::unix::fs::symlink(target, s.m(link)).must(format!("symlink {link} -> {target}"));
        for view in s.views() {
            let p = view.path(link);
            assert!(
                lstat(&p).file_type().is_symlink(),
                "{}: {link} is not a symlink",
                view.label
            );
            let got = fs::read_link(&p).must(format!("{}: readlink {link}", view.label));
            assert_eq!(got, Path::new(target), "{}: readlink {link}", view.label);
        }
        let through = fs::read(s.m(link)).must(format!("read through {link}"));
        assert_eq!(through, b"the target", "reading through symlink {link}");
    }

    s.step("hard link: both names, one inode, st_nlink 2 everywhere");
    fs::write(s.m("orig"), b"0123456789").must("write orig");
    fs::hard_link(s.m("orig"), s.m("alias")).must("link orig alias");
    assert_eq!(
        s.ino("orig"),
        s.ino("alias"),
        "orig and alias have different st_ino through the mount"
    );
    for view in s.views() {
        let (o, a) = (lstat(&view.path("orig")), lstat(&view.path("alias")));
        assert!(
            o.nlink() == 2 && a.nlink() == 2 && o.ino() == a.ino(),
            "{}: after link(orig, alias): nlink {} / {}, ino {} / {} (expected nlink 2, same ino)",
            view.label,
            o.nlink(),
            a.nlink(),
            o.ino(),
            a.ino()
        );
    }

    s.step("a write through one name is seen through the other");
    open_rw(&s.m("alias"))
        .write_all_at(b"AB", 3)
        .must("pwrite through alias");
    s.expect_content("orig", b"012AB56789");
    s.expect_content("alias", b"012AB56789");

    s.step("unlink one name: the other keeps the data, st_nlink 1");
    fs::remove_file(s.m("orig")).must("unlink orig");
    s.expect_absent("orig");
    s.expect_content("alias", b"012AB56789");
    s.expect_meta("alias", "st_nlink 1", |md| md.nlink() == 1);
}

// ---------------------------------------------------------------------------------------
// 10. extended attributes
// ---------------------------------------------------------------------------------------

/// set/get/list/remove `user.test` (on a file and a folder), XATTR_CREATE/REPLACE, and
/// ENODATA for a missing attribute.
fn check_xattrs(root: &Path, copies: &[PathBuf]) {
    let s = Site::new(root, copies);
    fs::write(s.m("xf"), b"x").must("write xf");
    fs::create_dir(s.m("xd")).must("mkdir xd");

    for node in ["xf", "xd"] {
        s.step(&format!("{node}: setxattr user.test"));
        let value: &[u8] = b"value with \0 a NUL and \xff";
        rustix::fs::setxattr(s.m(node), "user.test", value, XattrFlags::CREATE)
            .must(format!("setxattr {node} user.test"));
        s.expect_xattr(node, "user.test", Some(value));
        s.expect_xattr_listed(node, "user.test", true);

        s.step(&format!(
            "{node}: XATTR_CREATE on an existing attribute fails with EEXIST"
        ));
        expect_errno(
            rustix::fs::setxattr(s.m(node), "user.test", b"x", XattrFlags::CREATE)
                .map_err(io::Error::from),
            &[libc::EEXIST],
            &format!("setxattr {node} user.test XATTR_CREATE again"),
        );

        s.step(&format!("{node}: XATTR_REPLACE changes the value"));
        rustix::fs::setxattr(s.m(node), "user.test", b"second", XattrFlags::REPLACE)
            .must(format!("setxattr {node} user.test XATTR_REPLACE"));
        s.expect_xattr(node, "user.test", Some(b"second"));

        s.step(&format!("{node}: a missing attribute gives ENODATA"));
        expect_errno(
            get_xattr(&s.m(node), "user.missing"),
            &[libc::ENODATA],
            "getxattr user.missing",
        );
        expect_errno(
            rustix::fs::removexattr(s.m(node), "user.missing").map_err(io::Error::from),
            &[libc::ENODATA],
            "removexattr user.missing",
        );

        s.step(&format!("{node}: removexattr user.test"));
        rustix::fs::removexattr(s.m(node), "user.test").must(format!("removexattr {node}"));
        s.expect_xattr(node, "user.test", None);
        s.expect_xattr_listed(node, "user.test", false);
    }
}

// ---------------------------------------------------------------------------------------
// 11. locks
// ---------------------------------------------------------------------------------------

/// POSIX byte-range locks (F_SETLK conflicts, F_GETLK reports the holder, release on the
/// holder's exit) and flock (LOCK_EX|LOCK_NB conflicts while another process holds it).
fn check_locks(root: &Path, _copies: &[PathBuf]) {
    let path = root.join("lockfile");
    fs::write(&path, vec![0u8; 4096]).must("write lockfile");
    let ours = open_rw(&path);

    // POSIX: a child write-locks bytes [0, 100).
    let holder = LockHolder::start(&path, "posix");
    let probe = posix_lock(&ours, libc::F_GETLK, libc::F_WRLCK, 10, 10)
        .must("F_GETLK on lockfile [10, 20)");
    assert!(
        i32::from(probe.l_type) == libc::F_WRLCK && probe.l_pid == holder.pid,
        "F_GETLK [10, 20) while pid {} holds a write lock on [0, 100): got l_type {} \
         (F_WRLCK = {}), l_pid {}, l_start {}, l_len {}",
        holder.pid,
        probe.l_type,
        libc::F_WRLCK,
        probe.l_pid,
        probe.l_start,
        probe.l_len
    );
    expect_errno(
        posix_lock(&ours, libc::F_SETLK, libc::F_WRLCK, 50, 10),
        &[libc::EAGAIN, libc::EACCES],
        "F_SETLK write lock on [50, 60) held by another process",
    );
    expect_errno(
        posix_lock(&ours, libc::F_SETLK, libc::F_RDLCK, 0, 1),
        &[libc::EAGAIN, libc::EACCES],
        "F_SETLK read lock on [0, 1) write-locked by another process",
    );
    posix_lock(&ours, libc::F_SETLK, libc::F_WRLCK, 200, 100)
        .must("F_SETLK write lock on the free range [200, 300)");
    let free = posix_lock(&ours, libc::F_GETLK, libc::F_WRLCK, 1000, 10).must("F_GETLK free range");
    assert_eq!(
        i32::from(free.l_type),
        libc::F_UNLCK,
        "F_GETLK on an unlocked range"
    );
    holder.release();
    posix_lock(&ours, libc::F_SETLK, libc::F_WRLCK, 0, 100)
        .must("F_SETLK [0, 100) after the holder exited (its lock must be gone)");
    posix_lock(&ours, libc::F_SETLK, libc::F_UNLCK, 0, 0).must("F_SETLK unlock all");

    // flock: a child holds LOCK_EX on the whole file.
    let holder = LockHolder::start(&path, "flock");
    let second = open_rw(&path);
    for (op, what) in [
        (FlockOperation::NonBlockingLockExclusive, "LOCK_EX|LOCK_NB"),
        (FlockOperation::NonBlockingLockShared, "LOCK_SH|LOCK_NB"),
    ] {
        expect_errno(
            rustix::fs::flock(second.as_fd(), op).map_err(io::Error::from),
            &[libc::EWOULDBLOCK],
            &format!("flock({what}) while another process holds LOCK_EX"),
        );
    }
    holder.release();
    rustix::fs::flock(second.as_fd(), FlockOperation::NonBlockingLockExclusive)
        .must("flock(LOCK_EX|LOCK_NB) after the holder exited");
    rustix::fs::flock(second.as_fd(), FlockOperation::Unlock).must("flock(LOCK_UN)");
}

// ---------------------------------------------------------------------------------------
// 12. shared writable mmap
// ---------------------------------------------------------------------------------------

/// A MAP_SHARED writable mapping of a 64 KiB file, msync'd and unmapped, is read back
/// through a new descriptor and on every copy.
fn check_mmap(root: &Path, copies: &[PathBuf]) {
    let s = Site::new(root, copies);
    let len = 64 * KIB as usize;
    let data = pattern(len, 16);

    s.step("write through a shared writable mapping, msync, munmap");
    {
        let f = open_new(&s.m("mapped"));
        f.set_len(len as u64).must("ftruncate mapped to 64 KiB");
        // SAFETY: the file was created by this function and nothing else maps, truncates or
        // writes it while the mapping lives (it is dropped at the end of this block).
        let mut map = unsafe { memmap2::MmapMut::map_mut(&f) }.must("mmap MAP_SHARED mapped");
        map.copy_from_slice(&data);
        map.flush().must("msync(MS_SYNC) mapped");
    }
    let mut back = Vec::new();
    File::open(s.m("mapped"))
        .must("reopen mapped")
        .read_to_end(&mut back)
        .must("read mapped");
    assert_same("mount (new descriptor)", "mapped", &back, &data);
    s.expect_content("mapped", &data);
}

// ---------------------------------------------------------------------------------------
// 13. name length
// ---------------------------------------------------------------------------------------

/// A 255-byte name works for files, folders and symlinks; a 256-byte one fails with
/// ENAMETOOLONG and leaves nothing behind.
fn check_name_max(root: &Path, copies: &[PathBuf]) {
    let s = Site::new(root, copies);
    // 127 two-byte characters + 1: 255 bytes of UTF-8; the ASCII ones likewise.
    let long_utf8 = format!("{}x", "é".repeat(127));
    let long_file = "f".repeat(255);
    let long_dir = "d".repeat(255);
    let too_long = "n".repeat(256);
    assert_eq!(
        (long_utf8.len(), long_file.len(), too_long.len()),
        (255, 255, 256)
    );

    s.step("255-byte names work");
    fs::write(s.m(&long_file), b"long").must("create a 255-byte file name");
    fs::write(s.m(&long_utf8), b"utf8").must("create a 255-byte UTF-8 file name");
    fs::create_dir(s.m(&long_dir)).must("mkdir a 255-byte name");
    s.expect_content(&long_file, b"long");
    s.expect_content(&long_utf8, b"utf8");
    s.expect_dir(&long_dir);

    s.step("256-byte names fail with ENAMETOOLONG");
    let tl = s.m(&too_long);
    let what = "256-byte name";
    expect_errno(
        open_create(&tl),
        &[libc::ENAMETOOLONG],
        &format!("create {what}"),
    );
    expect_errno(
        fs::create_dir(&tl),
        &[libc::ENAMETOOLONG],
        &format!("mkdir {what}"),
    );
    expect_errno(
        std::os::unix::fs::symlink("x", &tl),
        &[libc::ENAMETOOLONG],
        &format!("symlink {what}"),
    );
    expect_errno(
        fs::rename(s.m(&long_file), &tl),
        &[libc::ENAMETOOLONG],
        &format!("rename to {what}"),
    );
    expect_errno(
        fs::metadata(&tl),
        &[libc::ENAMETOOLONG],
        &format!("stat {what}"),
    );
    s.expect_content(&long_file, b"long");
    for view in s.views() {
        let names = list_dir(&view.base);
        let over: Vec<_> = names.iter().filter(|n| n.len() > 255).collect();
        assert!(
            over.is_empty(),
            "{}: names longer than 255 bytes exist: {over:?}",
            view.label
        );
    }
}

// ---------------------------------------------------------------------------------------
// 14. inode stability
// ---------------------------------------------------------------------------------------

/// st_ino through the mount survives dropping the kernel's caches and renaming the parent.
fn check_inode_stability(root: &Path, copies: &[PathBuf]) {
    let s = Site::new(root, copies);
    fs::create_dir(s.m("stable_dir")).must("mkdir stable_dir");
    fs::write(s.m("stable_dir/f"), b"f").must("write stable_dir/f");
    fs::write(s.m("other"), b"o").must("write other");
    let (dir_ino, file_ino) = (s.ino("stable_dir"), s.ino("stable_dir/f"));
    assert!(
        [dir_ino, file_ino, s.ino("other")]
            .iter()
            .collect::<BTreeSet<_>>()
            .len()
            == 3,
        "distinct files share an inode number through the mount"
    );

    s.step("drop caches, stat again");
    drop_caches();
    s.expect_ino("stable_dir", dir_ino);
    s.expect_ino("stable_dir/f", file_ino);

    s.step("rename the parent folder, drop caches, stat again");
    fs::rename(s.m("stable_dir"), s.m("renamed_dir")).must("rename stable_dir -> renamed_dir");
    drop_caches();
    s.expect_ino("renamed_dir", dir_ino);
    s.expect_ino("renamed_dir/f", file_ino);
    s.expect_content("renamed_dir/f", b"f");
    s.expect_absent("stable_dir");
}

// ---------------------------------------------------------------------------------------
// 15. permissions for another user
// ---------------------------------------------------------------------------------------

/// As uid 65534: a root-owned 0600 file is unreadable, a 0644 one readable but not
/// writable nor chmod-able; in a folder owned by 65534 the user creates a file and a folder
/// that are owned by 65534 on every copy.
fn check_permissions(root: &Path, copies: &[PathBuf]) {
    let s = Site::new(root, copies);
    expect_others_can_traverse(root);
    let me = rustix::process::geteuid().as_raw();

    s.step("a root-owned 0600 file is unreadable for uid 65534");
    write_with_mode(&s.m("secret"), b"top secret", 0o600);
    s.expect_mode("secret", 0o600);
    s.expect_owner("secret", me, rustix::process::getegid().as_raw());
    let out = run_as_nobody(&["cat", &s.m("secret").to_string_lossy()]);
    expect_denied(&out, "cat secret (0600, root) as uid 65534");

    s.step("a root-owned 0644 file is readable but not writable for uid 65534");
    write_with_mode(&s.m("public"), b"public data", 0o644);
    let out = run_as_nobody(&["cat", &s.m("public").to_string_lossy()]);
    assert!(
        out.status.success() && out.stdout == b"public data",
        "cat public (0644) as uid 65534 should work (positive control): {}",
        describe(&out)
    );
    let out = run_as_nobody(&[
        "sh",
        "-c",
        "printf x >> \"$1\"",
        "sh",
        &s.m("public").to_string_lossy(),
    ]);
    expect_denied(&out, "append to public (0644, root) as uid 65534");
    let out = run_as_nobody(&["chmod", "0666", &s.m("public").to_string_lossy()]);
    assert!(
        !out.status.success(),
        "chmod of root's file as uid 65534 succeeded"
    );
    s.expect_content("public", b"public data");
    s.expect_mode("public", 0o644);

    s.step("uid 65534 creates a file and a folder in a folder it owns");
    fs::create_dir(s.m("shared")).must("mkdir shared");
    std::os::unix::fs::chown(s.m("shared"), Some(NOBODY), Some(NOBODY)).must("chown shared");
    fs::set_permissions(s.m("shared"), fs::Permissions::from_mode(0o755)).must("chmod shared");
    s.expect_owner("shared", NOBODY, NOBODY);
    let out = run_as_nobody(&[
        "sh",
        "-c",
        "printf hello > \"$1/made_by_nobody\" && mkdir \"$1/dir_by_nobody\"",
        "sh",
        &s.m("shared").to_string_lossy(),
    ]);
    assert!(
        out.status.success(),
        "uid 65534 could not create in its own folder: {}",
        describe(&out)
    );
    s.expect_content("shared/made_by_nobody", b"hello");
    s.expect_owner("shared/made_by_nobody", NOBODY, NOBODY);
    s.expect_owner("shared/dir_by_nobody", NOBODY, NOBODY);
}

// ---------------------------------------------------------------------------------------
// 16. the fixed top level
// ---------------------------------------------------------------------------------------

/// `<databases_root>` lists exactly the databases, each `<db>` exactly `<db>.db` and
/// `<db>.log`; nothing can be created, renamed or removed there (also via `..`); a symlink to
/// `/etc/passwd` is just a symlink, and the backing volumes hold only what was created.
fn check_top_level(databases_root: &Path, dbs: &[&str], volumes: &[PathBuf]) {
    let listed: BTreeSet<String> = list_dir(databases_root).into_iter().collect();
    let want: BTreeSet<String> = dbs.iter().map(|d| d.to_string()).collect();
    assert_eq!(listed, want, "ls {}", databases_root.display());
    for db in dbs {
        let listed: BTreeSet<String> = list_dir(&databases_root.join(db)).into_iter().collect();
        let want: BTreeSet<String> = [format!("{db}.db"), format!("{db}.log")].into();
        assert_eq!(listed, want, "ls {}", databases_root.join(db).display());
    }

    let db_dir = databases_root.join("db001");
    let root = db_dir.join("db001.db");
    fs::write(root.join("inside"), b"inside").must("write db001.db/inside");

    let refused = [libc::EPERM, libc::EACCES];
    for (dir, label) in [
        (databases_root.to_path_buf(), "<databases_root>"),
        (db_dir.clone(), "<databases_root>/db001"),
        (root.join(".."), "db001.db/.."),
        (root.join("../.."), "db001.db/../.."),
    ] {
        let p = dir.join("stray");
        expect_errno(open_create(&p), &refused, &format!("create {label}/stray"));
        expect_errno(
            fs::create_dir(&p),
            &refused,
            &format!("mkdir {label}/stray"),
        );
        expect_errno(
            std::os::unix::fs::symlink("x", &p),
            &refused,
            &format!("symlink {label}/stray"),
        );
        expect_errno(
            fs::rename(root.join("inside"), &p),
            &[libc::EPERM, libc::EACCES, libc::EXDEV],
            &format!("rename db001.db/inside -> {label}/stray"),
        );
    }
    let fixed = [libc::EPERM, libc::EACCES, libc::EBUSY];
    expect_errno(
        fs::remove_dir(db_dir.join("db001.log")),
        &fixed,
        "rmdir db001/db001.log",
    );
    expect_errno(
        fs::rename(&root, db_dir.join("renamed.db")),
        &fixed,
        "rename db001/db001.db -> db001/renamed.db",
    );
    expect_errno(
        fs::remove_dir(&db_dir),
        &fixed,
        "rmdir <databases_root>/db001",
    );
    expect_errno(
        fs::set_permissions(&db_dir, fs::Permissions::from_mode(0o777)),
        &fixed,
        "chmod <databases_root>/db001",
    );

    // Absolute and `..` symlinks are stored as text and resolve in the caller's namespace.
    let passwd = fs::read("/etc/passwd").must("read /etc/passwd");
    let up = "../../../../../../../../../../etc";
    for (link, target, through) in [("pw", "/etc/passwd", "pw"), ("up", up, "up/passwd")] {
        std::os::unix::fs::symlink(target, root.join(link)).must(format!("symlink {link}"));
        assert_eq!(
            fs::read_link(root.join(link)).must("readlink"),
            Path::new(target)
        );
        let got = fs::read(root.join(through)).must(format!("read db001.db/{through}"));
        assert!(
            got == passwd,
            "db001.db/{through} does not read as the caller's /etc/passwd"
        );
    }

    // The backing volumes hold exactly what was created, nothing escaped.
    let db001_expected: BTreeSet<String> = [
        "db001.db",
        "db001.log",
        "db001.db/inside",
        "db001.db/pw",
        "db001.db/up",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut db001_holders = Vec::new();
    for volume in volumes {
        let all = walk(volume, &[reseedfs_meta_dir()]);
        let mut by_db: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for rel in &all {
            let top = rel.split('/').next().unwrap_or_default();
            let db = dbs
                .iter()
                .find(|db| top == format!("{db}.db") || top == format!("{db}.log"));
            match db {
                Some(db) => {
                    by_db.entry(db).or_default().insert(rel.clone());
                }
                None => panic!(
                    "{}: unexpected entry {rel:?} on a backing volume (everything: {all:?})",
                    volume.display()
                ),
            }
        }
        for (db, entries) in by_db {
            let want = if db == "db001" {
                db001_holders.push(volume.clone());
                db001_expected.clone()
            } else {
                [format!("{db}.db"), format!("{db}.log")].into()
            };
            assert_eq!(
                entries,
                want,
                "{}: backing entries of {db}",
                volume.display()
            );
        }
    }
    assert_eq!(
        db001_holders.len(),
        2,
        "db001 should have exactly 2 copies on the volumes, found it on {db001_holders:?}"
    );
    for volume in &db001_holders {
        let pw = volume.join("db001.db/pw");
        assert_eq!(
            fs::read_link(&pw).must(format!("readlink {}", pw.display())),
            Path::new("/etc/passwd"),
            "backing symlink {}",
            pw.display()
        );
    }
}

fn reseedfs_meta_dir() -> &'static str {
    reseedfs::layout::META_DIR
}

// ---------------------------------------------------------------------------------------
// Site: one folder seen through the mount and on every copy
// ---------------------------------------------------------------------------------------

/// One place a path can be observed: through the mount, or on one copy's backing folder.
struct View {
    label: String,
    base: PathBuf,
}

impl View {
    fn path(&self, rel: &str) -> PathBuf {
        self.base.join(rel)
    }
}

/// The folder under test through the mount (`root`) and its copies' backing folders, plus
/// the step being checked, which every failure message names.
struct Site<'a> {
    root: &'a Path,
    copies: &'a [PathBuf],
    step: RefCell<String>,
}

impl<'a> Site<'a> {
    fn new(root: &'a Path, copies: &'a [PathBuf]) -> Self {
        Site {
            root,
            copies,
            step: RefCell::new("setup".into()),
        }
    }

    fn step(&self, what: &str) {
        *self.step.borrow_mut() = what.to_owned();
    }

    fn current_step(&self) -> String {
        self.step.borrow().clone()
    }

    /// `rel` through the mount.
    fn m(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// The mount first, then every copy.
    fn views(&self) -> Vec<View> {
        let mut all = vec![View {
            label: format!("mount ({})", self.root.display()),
            base: self.root.to_path_buf(),
        }];
        all.extend(self.copy_views());
        all
    }

    fn copy_views(&self) -> Vec<View> {
        self.copies
            .iter()
            .enumerate()
            .map(|(i, c)| View {
                label: format!("copy {} ({})", i + 1, c.display()),
                base: c.clone(),
            })
            .collect()
    }

    fn fail(&self, view: &View, rel: &str, msg: impl Display) -> ! {
        panic!(
            "{}: {rel}: after step `{}`: {msg}",
            view.label,
            self.current_step()
        )
    }

    /// `rel` has exactly `expected` as content everywhere.
    /// Through the mount it is read twice: normally (the kernel may answer from its page
    /// cache) and with O_DIRECT, which the kernel passes to the daemon.
    fn expect_content(&self, rel: &str, expected: &[u8]) {
        let uncached = View {
            label: format!("mount ({}) read with O_DIRECT", self.root.display()),
            base: self.root.to_path_buf(),
        };
        let views = self.views();
        let reads = views
            .iter()
            .map(|v| (v, fs::read(v.path(rel))))
            .chain(std::iter::once((
                &uncached,
                read_uncached(&uncached.path(rel)),
            )));
        for (view, got) in reads {
            let got = got.unwrap_or_else(|e| self.fail(view, rel, format!("read failed: {e}")));
            if let Some(diff) = first_difference(&got, expected) {
                self.fail(view, rel, diff);
            }
        }
    }

    /// `rel` is `len` bytes long everywhere.
    fn expect_len(&self, rel: &str, len: u64) {
        self.expect_meta(rel, &format!("size {len}"), |md| md.len() == len);
    }

    /// `rel` holds `expected` at `offset` everywhere.
    fn expect_bytes_at(&self, rel: &str, offset: u64, expected: &[u8]) {
        for view in self.views() {
            let f = File::open(view.path(rel))
                .unwrap_or_else(|e| self.fail(&view, rel, format!("open failed: {e}")));
            let mut got = vec![0u8; expected.len()];
            if let Err(e) = f.read_exact_at(&mut got, offset) {
                self.fail(
                    &view,
                    rel,
                    format!("pread of {} bytes at {offset} failed: {e}", expected.len()),
                );
            }
            if let Some(diff) = first_difference(&got, expected) {
                self.fail(&view, rel, format!("at offset {offset}: {diff}"));
            }
        }
    }

    /// lstat(`rel`) satisfies `ok` everywhere; `what` describes the expectation.
    fn expect_meta(&self, rel: &str, what: &str, ok: impl Fn(&Metadata) -> bool) {
        for view in self.views() {
            let md = fs::symlink_metadata(view.path(rel))
                .unwrap_or_else(|e| self.fail(&view, rel, format!("lstat failed: {e}")));
            if !ok(&md) {
                self.fail(
                    &view,
                    rel,
                    format!("expected {what}, but lstat says {}", describe_meta(&md)),
                );
            }
        }
    }

    fn expect_mode(&self, rel: &str, mode: u32) {
        self.expect_meta(rel, &format!("mode {mode:o}"), |md| {
            md.mode() & 0o7777 == mode
        });
    }

    fn expect_owner(&self, rel: &str, uid: u32, gid: u32) {
        self.expect_meta(rel, &format!("owner {uid}:{gid}"), |md| {
            (md.uid(), md.gid()) == (uid, gid)
        });
    }

    fn expect_dir(&self, rel: &str) {
        self.expect_meta(rel, "a directory", |md| md.is_dir());
    }

    fn expect_blocks_at_least(&self, rel: &str, bytes: u64) {
        self.expect_meta(rel, &format!("at least {bytes} bytes allocated"), |md| {
            md.blocks() * 512 >= bytes
        });
    }

    /// `rel` does not exist anywhere.
    fn expect_absent(&self, rel: &str) {
        for view in self.views() {
            match fs::symlink_metadata(view.path(rel)) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => self.fail(
                    &view,
                    rel,
                    format!("expected ENOENT, lstat failed with {e}"),
                ),
                Ok(md) => self.fail(&view, rel, format!("still exists: {}", describe_meta(&md))),
            }
        }
    }

    /// st_ino of `rel` through the mount.
    fn ino(&self, rel: &str) -> u64 {
        lstat(&self.m(rel)).ino()
    }

    /// st_ino of `rel` through the mount is `ino`.
    fn expect_ino(&self, rel: &str, ino: u64) {
        let got = self.ino(rel);
        assert_eq!(
            got,
            ino,
            "mount: {rel}: after step `{}`: st_ino changed",
            self.current_step()
        );
    }

    /// `name` on `rel` has the value `expected` everywhere (`None`: absent, ENODATA).
    fn expect_xattr(&self, rel: &str, name: &str, expected: Option<&[u8]>) {
        for view in self.views() {
            match (get_xattr(&view.path(rel), name), expected) {
                (Ok(got), Some(want)) if got == want => {}
                (Err(e), None) if e.raw_os_error() == Some(libc::ENODATA) => {}
                (got, want) => self.fail(
                    &view,
                    rel,
                    format!(
                        "xattr {name}: expected {:?}, got {:?}",
                        want.map(String::from_utf8_lossy),
                        got.map(|v| String::from_utf8_lossy(&v).into_owned())
                    ),
                ),
            }
        }
    }

    /// `name` is (or is not) in listxattr(`rel`) everywhere.
    fn expect_xattr_listed(&self, rel: &str, name: &str, listed: bool) {
        for view in self.views() {
            let names = list_xattrs(&view.path(rel));
            if names.iter().any(|n| n == name) != listed {
                self.fail(
                    &view,
                    rel,
                    format!("listxattr: {name} listed should be {listed}, list is {names:?}"),
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------

/// `.must(what)`: unwrap, or panic naming the operation and the OS error.
trait Must<T> {
    fn must(self, what: impl Display) -> T;
}

impl<T, E: Display> Must<T> for Result<T, E> {
    fn must(self, what: impl Display) -> T {
        match self {
            Ok(v) => v,
            Err(e) => panic!("{what} failed: {e}"),
        }
    }
}

/// Asserts that `result` failed with one of the `allowed` errno values.
fn expect_errno<T>(result: io::Result<T>, allowed: &[i32], what: &str) {
    let names = || {
        allowed
            .iter()
            .map(|&c| errno_name(c))
            .collect::<Vec<_>>()
            .join(" or ")
    };
    match result {
        Ok(_) => panic!("{what}: expected failure with {} but it succeeded", names()),
        Err(e) if e.raw_os_error().is_some_and(|c| allowed.contains(&c)) => {}
        Err(e) => panic!(
            "{what}: expected {} but got {} ({e})",
            names(),
            e.raw_os_error().map_or("no errno".into(), errno_name)
        ),
    }
}

fn errno_name(code: i32) -> String {
    let name = match code {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EAGAIN => "EAGAIN",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ENODATA => "ENODATA",
        libc::ENOSYS => "ENOSYS",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EIO => "EIO",
        _ => return format!("errno {code}"),
    };
    name.to_owned()
}

/// Deterministic, non-constant test data (`seed` makes different buffers differ).
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u64)
                .wrapping_mul(31)
                .wrapping_add(u64::from(seed) * 97 + (i as u64 >> 9)) as u8
                | 1
        })
        .collect()
}

/// Where two buffers first differ, or `None` when they are equal.
fn first_difference(got: &[u8], want: &[u8]) -> Option<String> {
    if got == want {
        return None;
    }
    let at = got.iter().zip(want).position(|(a, b)| a != b);
    Some(match at {
        Some(i) => format!(
            "content differs at byte {i}: got {:#04x}, expected {:#04x} (lengths {} and expected {})",
            got[i],
            want[i],
            got.len(),
            want.len()
        ),
        None => format!(
            "length {} but expected {} (common prefix equal)",
            got.len(),
            want.len()
        ),
    })
}

fn assert_same(label: &str, rel: &str, got: &[u8], want: &[u8]) {
    if let Some(diff) = first_difference(got, want) {
        panic!("{label}: {rel}: {diff}");
    }
}

fn lstat(p: &Path) -> Metadata {
    fs::symlink_metadata(p).must(format!("lstat {}", p.display()))
}

fn describe_meta(md: &Metadata) -> String {
    format!(
        "mode {:o} uid {} gid {} size {} blocks {} nlink {} ino {} atime {}.{:09} mtime {}.{:09}",
        md.mode(),
        md.uid(),
        md.gid(),
        md.len(),
        md.blocks(),
        md.nlink(),
        md.ino(),
        md.atime(),
        md.atime_nsec(),
        md.mtime(),
        md.mtime_nsec()
    )
}

fn open_rw(p: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .must(format!("open {} read-write", p.display()))
}

fn open_new(p: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(p)
        .must(format!("create {}", p.display()))
}

fn open_create(p: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(p)
}

fn write_with_mode(p: &Path, data: &[u8], mode: u32) {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(p)
        .must(format!("create {} mode {mode:o}", p.display()));
    f.write_all(data).must(format!("write {}", p.display()));
    f.set_permissions(fs::Permissions::from_mode(mode))
        .must("fchmod (past the umask)");
}

/// Names in `dir`, in readdir order, as UTF-8 (the suite only creates UTF-8 names).
fn list_dir(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .must(format!("readdir {}", dir.display()))
        .map(|e| {
            let e = e.must(format!("readdir {}", dir.display()));
            e.file_name().to_string_lossy().into_owned()
        })
        .collect()
}

/// Every path below `top` (relative, `/`-separated), not following symlinks, skipping the
/// top-level names in `skip`.
fn walk(top: &Path, skip: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = vec![String::new()];
    while let Some(rel) = pending.pop() {
        for name in list_dir(&top.join(&rel)) {
            if rel.is_empty() && skip.contains(&name.as_str()) {
                continue;
            }
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if lstat(&top.join(&child)).is_dir() {
                pending.push(child.clone());
            }
            out.push(child);
        }
    }
    out.sort();
    out
}

fn rename_flags(from: &Path, to: &Path, flags: RenameFlags) -> io::Result<()> {
    rustix::fs::renameat_with(CWD, from, CWD, to, flags).map_err(io::Error::from)
}

fn get_xattr(p: &Path, name: &str) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 64 * 1024];
    let n = rustix::fs::getxattr(p, name, &mut buf[..]).map_err(io::Error::from)?;
    buf.truncate(n);
    Ok(buf)
}

fn list_xattrs(p: &Path) -> Vec<String> {
    let mut buf = vec![0u8; 64 * 1024];
    let n = rustix::fs::listxattr(p, &mut buf[..]).must(format!("listxattr {}", p.display()));
    buf[..n]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect()
}

/// truncate(2) by path (the FUSE setattr without a file handle).
fn truncate_path(p: &Path, len: u64) -> io::Result<()> {
    let c = CString::new(p.as_os_str().as_bytes())?;
    let len = libc::off_t::try_from(len).map_err(io::Error::other)?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    let rc = unsafe { libc::truncate(c.as_ptr(), len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// fcntl(F_SETLK / F_GETLK) on `[start, start + len)`; returns the (possibly updated) flock.
fn posix_lock(
    f: &File,
    cmd: libc::c_int,
    kind: libc::c_int,
    start: i64,
    len: i64,
) -> io::Result<libc::flock> {
    // SAFETY: `flock` is a plain C struct of integers, for which all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start;
    fl.l_len = len;
    // SAFETY: the descriptor is open for the whole call (borrowed from `f`) and `fl` is a
    // valid, exclusively borrowed flock that the kernel reads and, for F_GETLK, writes.
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), cmd, &mut fl as *mut libc::flock) };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(fl)
    }
}

/// A heap buffer starting on a 4096-byte boundary, as O_DIRECT requires.
struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let storage = vec![0u8; len + DIRECT_ALIGN];
        let start = storage.as_ptr().align_offset(DIRECT_ALIGN);
        assert!(
            start < DIRECT_ALIGN,
            "cannot align a buffer to {DIRECT_ALIGN}"
        );
        AlignedBuf {
            storage,
            start,
            len,
        }
    }
    fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

/// The whole file read with O_DIRECT (aligned buffer), bypassing the kernel's page cache.
fn read_uncached(p: &Path) -> io::Result<Vec<u8>> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(p)?;
    let len = usize::try_from(f.metadata()?.len()).map_err(io::Error::other)?;
    let mut buf = AlignedBuf::new(len.div_ceil(DIRECT_ALIGN).max(1) * DIRECT_ALIGN);
    let mut done = 0;
    loop {
        let n = f.read_at(&mut buf.as_mut_slice()[done..], done as u64)?;
        done += n;
        if n == 0 || done == buf.as_slice().len() {
            break;
        }
    }
    Ok(buf.as_slice()[..done].to_vec())
}

/// Empties the kernel's page, dentry and inode caches, so FUSE must look names up again.
fn drop_caches() {
    rustix::fs::sync();
    fs::write("/proc/sys/vm/drop_caches", "3").must("echo 3 > /proc/sys/vm/drop_caches");
}

/// Runs `args` as uid/gid 65534 with no supplementary groups.
fn run_as_nobody(args: &[&str]) -> Output {
    let id = NOBODY.to_string();
    Command::new("setpriv")
        .args(["--reuid", &id, "--regid", &id, "--clear-groups"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .must(format!("run setpriv {args:?}"))
}

fn describe(out: &Output) -> String {
    format!(
        "{}, stdout {:?}, stderr {:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn expect_denied(out: &Output, what: &str) {
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{what}: expected `Permission denied`, got {}",
        describe(out)
    );
}

/// Adds o+x to `dir` (a folder this test owns) so uid 65534 can walk through it.
fn allow_others_to_traverse(dir: &Path) {
    let mode = lstat(dir).mode();
    if mode & 0o001 == 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode((mode & 0o7777) | 0o005))
            .must(format!("chmod o+rx {}", dir.display()));
    }
}

/// The first of `dir` and its ancestors that other users cannot search, if any.
fn untraversable_ancestor(dir: &Path) -> Option<(PathBuf, u32)> {
    dir.ancestors()
        .map(|p| (p.to_path_buf(), lstat(p).mode() & 0o7777))
        .find(|(_, mode)| mode & 0o001 == 0)
}

/// Every ancestor of `dir` (and `dir`) must be searchable by others, or the permission
/// checks would fail for the wrong reason.
fn expect_others_can_traverse(dir: &Path) {
    if let Some((p, mode)) = untraversable_ancestor(dir) {
        panic!(
            "{} (mode {mode:o}) is not searchable by other users, so uid 65534 cannot reach {}",
            p.display(),
            dir.display()
        );
    }
}

/// A python3 child process holding a lock on a file until `release` (or drop).
struct LockHolder {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    /// The holder's pid as it reported it (what F_GETLK must name).
    pid: i32,
}

impl LockHolder {
    const SCRIPT: &'static str = r#"
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
if sys.argv[2] == "posix":
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 100, 0)
else:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("locked", os.getpid(), flush=True)
sys.stdin.read()
"#;

    /// Starts the holder (`kind`: "posix" = write lock on [0, 100), "flock" = LOCK_EX) and
    /// waits until it reports the lock taken.
    fn start(path: &Path, kind: &str) -> Self {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(Self::SCRIPT)
            .arg(path)
            .arg(kind)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .must("spawn python3 lock holder");
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        let pid = line
            .strip_prefix("locked ")
            .and_then(|p| p.trim().parse().ok());
        let mut holder = LockHolder {
            child: Some(child),
            stdin,
            pid: pid.unwrap_or(0),
        };
        if pid.is_none() {
            let stderr = holder.stop();
            panic!(
                "the {kind} lock holder on {} did not report its lock (said {line:?}); stderr: {stderr}",
                path.display()
            );
        }
        holder
    }

    /// Lets the holder exit (closing its stdin) and waits for it: its locks are gone after.
    fn release(mut self) {
        drop(self.stdin.take());
        if let Some(mut child) = self.child.take() {
            let status = child.wait().must("wait for the lock holder");
            assert!(status.success(), "the lock holder exited with {status}");
        }
    }

    /// Kills the holder (a process this test started) and returns its stderr.
    fn stop(&mut self) -> String {
        drop(self.stdin.take());
        let Some(mut child) = self.child.take() else {
            return String::new();
        };
        let _ = child.kill();
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let _ = child.wait();
        err
    }
}

impl Drop for LockHolder {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A scratch folder for the self-check, in the build's own tmp folder (on the project's
/// filesystem, not a tmpfs), removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(tag: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("semantics-{tag}-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&dir).must(format!("mkdir {}", dir.display()));
        ScratchDir(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
