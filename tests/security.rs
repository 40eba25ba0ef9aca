//! Issue 14: only root drives the daemon; no local user, symlink or stray volume can subvert
//! it. Each test tries an attack of the review, on a real mount, as an unprivileged user
//! where one is involved (uid 65534, `nobody`), and checks that it fails.
//!
//! The unprivileged side runs in a copy of this test binary started with the uid and gid of
//! `nobody` (std's `Command::uid`, which also drops the supplementary groups): the helper
//! tests at the bottom (`unprivileged_*`) do nothing unless the environment names their
//! job.

#![cfg(target_os = "linux")]

mod common;

use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Mounted, require_mount_privileges};
use reseedfs::testbed::Testbed;

/// The unprivileged user of the tests.
const NOBODY: u32 = 65534;

/// The environment variable that gives a helper process its job.
const JOB_ENV: &str = "RESEEDFS_SECURITY_JOB";

/// The two-volume testbed of a privileged test named `test`; `None` (said loudly, see
/// [`require_mount_privileges`]) where this host cannot mount.
fn privileged_bed(test: &str) -> Option<Testbed> {
    if !require_mount_privileges(test) {
        return None;
    }
    Some(Testbed::plain_dirs(2).expect("testbed"))
}

/// `chmod MODE PATH`.
fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// The helper test `name` of a copy of this binary (in `dir`, readable by everyone, copied
/// there once), to run as `nobody`.
fn unprivileged(dir: &Path, name: &str) -> Command {
    let exe = dir.join("security-helper");
    if !exe.exists() {
        std::fs::copy(std::env::current_exe().expect("current exe"), &exe).expect("copy exe");
        chmod(&exe, 0o755);
    }
    let mut cmd = Command::new(&exe);
    cmd.args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(JOB_ENV, name)
        .current_dir("/")
        .uid(NOBODY)
        .gid(NOBODY);
    cmd
}

/// Runs the helper test `name` of a copy of this binary (in `dir`, readable by everyone) as
/// `nobody`, with `env`; returns its stdout. Panics with its output when it fails.
fn run_unprivileged(dir: &Path, name: &str, env: &[(&str, &OsStr)]) -> String {
    let mut cmd = unprivileged(dir, name);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the unprivileged helper");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "unprivileged helper {name} failed ({}):\n{}",
        out.status,
        common::describe_output(&out)
    );
    stdout
}

/// True when this process is the helper `name` (see [`run_unprivileged`]).
fn is_job(name: &str) -> bool {
    std::env::var(JOB_ENV).as_deref() == Ok(name)
}

fn env_path(key: &str) -> PathBuf {
    PathBuf::from(std::env::var_os(key).unwrap_or_else(|| panic!("{key} not set")))
}

/// Everything an attack could change about a file outside the volumes.
#[derive(Debug, PartialEq, Eq)]
struct FileFacts {
    ino: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    content: Vec<u8>,
    xattrs: Vec<(String, Vec<u8>)>,
}

fn facts(path: &Path) -> FileFacts {
    let md = std::fs::symlink_metadata(path).expect("stat target");
    let mut names = vec![0u8; 4096];
    let n = rustix::fs::listxattr(path, &mut names).unwrap_or(0);
    let mut xattrs = Vec::new();
    for name in names[..n].split(|&b| b == 0).filter(|k| !k.is_empty()) {
        let key = String::from_utf8_lossy(name).into_owned();
        let mut value = vec![0u8; 4096];
        let len = rustix::fs::getxattr(path, key.as_str(), &mut value).unwrap_or(0);
        value.truncate(len);
        xattrs.push((key, value));
    }
    xattrs.sort();
    FileFacts {
        ino: md.ino(),
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        mtime: (md.mtime(), md.mtime_nsec()),
        content: std::fs::read(path).expect("read target"),
        xattrs,
    }
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Finding 3: a database user swaps a file of theirs with a symlink to a file outside the
/// volumes (`renameat2(RENAME_EXCHANGE)` in a loop, and a directory with a symlink to a
/// directory outside) while calling chmod, chown, utimens, truncate, open+write, xattr
/// calls, rename, link, unlink, mknod, mkdir and symlink on it through the mount. Root's
/// file outside the volumes, and the directory holding it, must not change.
#[test]
fn r14_symlink_race_through_the_mount_changes_nothing_outside() {
    let Some(bed) = privileged_bed("r14_symlink_race_through_the_mount_changes_nothing_outside")
    else {
        return;
    };
    let m = Mounted::start(bed, &["db001"], 2);
    let outside = m.bed.root.join("outside");
    std::fs::create_dir(&outside).expect("mkdir outside");
    chmod(&outside, 0o755);
    let target = outside.join("shadow");
    std::fs::write(&target, b"root:secret\n").expect("write target");
    chmod(&target, 0o640);
    rustix::fs::setxattr(&target, "user.keep", b"1", rustix::fs::XattrFlags::empty())
        .expect("xattr on the target (the test needs user xattrs on the temp filesystem)");
    std::fs::write(outside.join("victim"), b"keep me").expect("victim");
    let before = facts(&target);
    let before_listing = listing(&outside);

    let user_dir = m.db_files("db001").join("u");
    std::fs::create_dir(&user_dir).expect("mkdir u");
    std::os::unix::fs::chown(&user_dir, Some(NOBODY), Some(NOBODY)).expect("chown u");
    chmod(&user_dir, 0o755);

    let out = run_unprivileged(
        &m.bed.root,
        "unprivileged_symlink_racer",
        &[
            ("RACE_DIR", user_dir.as_os_str()),
            ("RACE_TARGET", target.as_os_str()),
            ("RACE_OUTSIDE", outside.as_os_str()),
            // Only some attacks (comma-separated names), when investigating one.
            (
                "RACE_OPS",
                &std::env::var_os("RACE_OPS").unwrap_or_default(),
            ),
        ],
    );
    eprintln!("{out}");
    let counts: Vec<(String, u64)> = out
        .lines()
        .filter_map(|l| Some(&l[l.find("count ")? + "count ".len()..]))
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect();
    assert_eq!(
        facts(&target),
        before,
        "root's file outside the volumes changed"
    );
    assert_eq!(
        listing(&outside),
        before_listing,
        "the directory outside the volumes changed"
    );
    assert_eq!(
        std::fs::read(outside.join("victim")).expect("victim"),
        b"keep me"
    );
    // Nothing the user did passes for a dying disk (a socket's ENXIO, a FIFO that never
    // opens): no volume failed. (Concurrent renames of a directory and operations under it
    // can still leave the copies disagreeing, event 3003: a limit of the copy set's
    // locking, not of the volume layer, counted here.)
    let events = m.events_json();
    let failed: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| common::event_id(e) == Some(1109))
        .collect();
    assert!(failed.is_empty(), "the race failed a volume: {failed:#?}");
    let diverged = events
        .iter()
        .filter(|e| common::event_id(e) == Some(3003))
        .count();
    eprintln!("copies failed as diverged (3003) during the race: {diverged}");
    // The race really ran: the swaps happened many times.
    assert!(
        counts.iter().any(|(k, n)| k == "exchange" && *n > 100),
        "the racer swapped too little: {counts:?}"
    );
    assert!(user_dir.is_dir());
    drop(m);
}

/// The unprivileged side of [`r14_symlink_race_through_the_mount_changes_nothing_outside`].
#[test]
fn unprivileged_symlink_racer() {
    if !is_job("unprivileged_symlink_racer") {
        return;
    }
    use rustix::fs::{Mode, RenameFlags, Timespec, Timestamps, XattrFlags};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    assert_eq!(
        rustix::process::geteuid().as_raw(),
        NOBODY,
        "not unprivileged"
    );
    let dir = env_path("RACE_DIR");
    let target = env_path("RACE_TARGET");
    let outside = env_path("RACE_OUTSIDE");
    let f = dir.join("f");
    let l = dir.join("l");
    let d = dir.join("d");
    let ld = dir.join("ld");
    std::fs::write(&f, b"mine").expect("create f");
    std::os::unix::fs::symlink(&target, &l).expect("symlink l");
    std::fs::create_dir(&d).expect("mkdir d");
    std::os::unix::fs::symlink(&outside, &ld).expect("symlink ld");
    std::fs::write(d.join("victim"), b"mine too").expect("d/victim");
    // Two directories of the user's, `a` holding their file `x` and `b` a symlink `x` to
    // the target: swapping the directories swaps what `a/x` names without touching `x`,
    // whose inode lock the kernel holds during an operation on it.
    // `k` (the user's, setuid) and `ks` (a symlink to the target): asynchronous direct
    // writes reach the daemon after the kernel let go of `k`'s inode lock, each asking it to
    // clear the setuid bit, while `k` and `ks` are swapped.
    let (k, ks) = (dir.join("k"), dir.join("ks"));
    std::fs::write(&k, vec![1u8; 64 << 10]).expect("create k");
    std::os::unix::fs::symlink(&target, &ks).expect("symlink ks");
    // `o` (the user's file) and `sock` (a socket file): an open of `o` that reaches the
    // socket on a backing volume answers ENXIO, which must not pass for a dying disk.
    let (o, sock) = (dir.join("o"), dir.join("sock"));
    std::fs::write(&o, b"mine").expect("create o");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &sock,
        rustix::fs::FileType::Socket,
        Mode::from_raw_mode(0o600),
        0,
    )
    .expect("mknod sock");
    let (a, b) = (dir.join("a"), dir.join("b"));
    std::fs::create_dir(&a).expect("mkdir a");
    std::fs::create_dir(&b).expect("mkdir b");
    std::fs::write(a.join("x"), b"mine").expect("create a/x");
    std::os::unix::fs::symlink(&target, b.join("x")).expect("symlink b/x");
    // In `b`, `x` and `y` (a file of the user's) trade places all the time: a daemon that
    // checked `b/x` and then acts on the name meets the symlink.
    std::fs::write(b.join("y"), b"mine").expect("create b/y");

    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    let counter = |name: &'static str| (name, Arc::new(AtomicU64::new(0)));
    let exchanges = counter("exchange");
    {
        let (stop, n) = (stop.clone(), exchanges.1.clone());
        let pairs = [
            (a.clone(), b.clone()),
            (f.clone(), l.clone()),
            (d.clone(), ld.clone()),
            (k.clone(), ks.clone()),
            (o.clone(), sock.clone()),
        ];
        threads.push(std::thread::spawn(move || {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let cwd = rustix::fs::CWD;
                // The directory swap most often: it is the one the kernel does not serialize
                // with the operations on `a/x`.
                let (p, q) = &pairs[if i % 6 < 2 { 0 } else { i % 6 - 1 }];
                if rustix::fs::renameat_with(cwd, p, cwd, q, RenameFlags::EXCHANGE).is_ok() {
                    n.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }
    {
        let stop = stop.clone();
        let b_fd = rustix::fs::open(
            &b,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY,
            Mode::empty(),
        )
        .expect("open b");
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = rustix::fs::renameat_with(&b_fd, "x", &b_fd, "y", RenameFlags::EXCHANGE);
            }
        }));
    }
    type Attack = Box<dyn Fn(u64) -> bool + Send>;
    // The file attacked: `a/x` mostly, `f` every fourth time.
    let ax = a.join("x");
    let pick =
        move |f: &Path, i: u64| -> PathBuf { if i % 4 == 3 { f.to_owned() } else { ax.clone() } };
    // An attack on the file `pick` names for round `i`.
    let picked = |name: &'static str, attack: fn(&Path, u64) -> bool| -> (&'static str, Attack) {
        let (f, pick) = (f.clone(), pick.clone());
        (name, Box::new(move |i| attack(&pick(&f, i), i)))
    };
    // An attack that makes the name `{prefix}N` in `d` (`make`), then removes it.
    let made_in_d = |name: &'static str,
                     prefix: &'static str,
                     make: fn(&Path) -> bool,
                     remove: fn(&Path) -> std::io::Result<()>|
     -> (&'static str, Attack) {
        let d = d.clone();
        let attack: Attack = Box::new(move |i| {
            let p = d.join(format!("{prefix}{}", i % 4));
            let ok = make(&p);
            let _ = remove(&p);
            ok
        });
        (name, attack)
    };
    let mut attacks: Vec<(&'static str, Attack)> = vec![
        picked("chmod", |f, i| {
            let mode = if i % 2 == 0 { 0o666 } else { 0o600 };
            rustix::fs::chmod(f, Mode::from_raw_mode(mode)).is_ok()
        }),
        picked("chown", |f, _| {
            let id = Some(rustix::fs::Uid::from_raw(NOBODY));
            let gid = Some(rustix::fs::Gid::from_raw(NOBODY));
            rustix::fs::chown(f, id, gid).is_ok()
        }),
        picked("utimens", |f, _| {
            let t = Timespec {
                tv_sec: 1_000_000_000,
                tv_nsec: 0,
            };
            let times = Timestamps {
                last_access: t,
                last_modification: t,
            };
            rustix::fs::utimensat(rustix::fs::CWD, f, &times, rustix::fs::AtFlags::empty()).is_ok()
        }),
        picked("truncate", |f, _| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(f)
                .and_then(|h| h.set_len(1))
                .is_ok()
        }),
        picked("write", |f, _| {
            use std::io::Write as _;
            std::fs::OpenOptions::new()
                .write(true)
                .open(f)
                .and_then(|mut h| h.write_all(b"pwned"))
                .is_ok()
        }),
        picked("setxattr", |f, _| {
            rustix::fs::setxattr(f, "user.pwn", b"1", XattrFlags::empty()).is_ok()
        }),
        picked("removexattr", |f, _| {
            // Give the file the name first, so that the removal has something to do.
            let _ = rustix::fs::setxattr(f, "user.keep", b"1", XattrFlags::empty());
            rustix::fs::removexattr(f, "user.keep").is_ok()
        }),
        ("open", {
            let o = o.clone();
            Box::new(move |_| std::fs::File::open(&o).is_ok())
        }),
        ("rename", {
            let (dir, d) = (dir.clone(), d.clone());
            Box::new(move |i| {
                let src = dir.join(format!("src{}", i % 4));
                let _ = std::fs::write(&src, b"planted");
                std::fs::rename(&src, d.join(format!("planted{}", i % 4))).is_ok()
            })
        }),
        ("link", {
            let (f, d) = (f.clone(), d.clone());
            Box::new(move |i| {
                let p = d.join(format!("link{}", i % 4));
                let ok = std::fs::hard_link(&f, &p).is_ok();
                let _ = std::fs::remove_file(&p);
                ok
            })
        }),
        ("unlink", {
            let d = d.clone();
            Box::new(move |_| {
                let ok = std::fs::remove_file(d.join("victim")).is_ok();
                let _ = std::fs::write(d.join("victim"), b"mine too");
                ok
            })
        }),
        made_in_d(
            "mknod",
            "fifo",
            |p| {
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    p,
                    rustix::fs::FileType::Fifo,
                    Mode::from_raw_mode(0o600),
                    0,
                )
                .is_ok()
            },
            |p| std::fs::remove_file(p),
        ),
        made_in_d(
            "mkdir",
            "dir",
            |p| std::fs::create_dir(p).is_ok(),
            |p| std::fs::remove_dir(p),
        ),
        made_in_d(
            "symlink",
            "sym",
            |p| std::os::unix::fs::symlink("x", p).is_ok(),
            |p| std::fs::remove_file(p),
        ),
    ];
    attacks.push(("killpriv_dio", {
        use reseedfs::reseed::engine::{CopyEngine as _, Extent};
        let (k, src) = (k.clone(), dir.join("k-source"));
        std::fs::write(&src, vec![2u8; 32 << 10]).expect("k-source");
        let engine = std::sync::Mutex::new(None);
        Box::new(move |_| {
            let mut engine = engine.lock().expect("engine");
            let (engine, src, dst) = engine.get_or_insert_with(|| {
                use std::os::unix::fs::OpenOptionsExt as _;
                // `k` is swapped with the symlink `ks` all along: an open that meets the
                // symlink (ELOOP, or EACCES: followed, it reaches root's target, which the
                // user may not open) is tried again until it meets the file.
                let open = |p: &Path, write: bool| {
                    let mut tries = 0;
                    loop {
                        let r = std::fs::OpenOptions::new()
                            .read(!write)
                            .write(write)
                            .custom_flags(libc::O_DIRECT)
                            .open(p);
                        match r {
                            Ok(f) => break f,
                            Err(e)
                                if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::EACCES))
                                    && tries < 10_000 =>
                            {
                                tries += 1;
                            }
                            Err(e) => panic!("open O_DIRECT {}: {e}", p.display()),
                        }
                    }
                };
                let engine =
                    reseedfs::sys::uring::UringEngine::with_geometry(4096, 8).expect("io_uring");
                (engine, open(&src, false), open(&k, true))
            });
            let _ = rustix::fs::chmod(&k, Mode::from_raw_mode(0o4755));
            let extents: Vec<Extent> = (0..8)
                .map(|i| Extent {
                    offset: i * 4096,
                    len: 4096,
                })
                .collect();
            engine.copy(src, dst, &extents, true).is_ok()
        })
    }));
    let only = std::env::var("RACE_OPS").unwrap_or_default();
    let mut counts = vec![exchanges];
    for (name, attack) in attacks {
        if !only.is_empty() && !only.split(',').any(|o| o == name) {
            continue;
        }
        let (name, n) = counter(name);
        counts.push((name, n.clone()));
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if attack(i) {
                    n.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }
    let secs: u64 = std::env::var("RACE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("racer thread");
    }
    for (name, n) in counts {
        println!("count {name}={}", n.load(Ordering::Relaxed));
    }
}

/// The group of the `control_group` tests: a number no account uses.
const CONTROL_GID: u32 = 4242;

/// Rewrites the testbed's config with `change` (the config stays root's, mode 0644).
fn set_config(bed: &Testbed, change: impl FnOnce(&mut reseedfs::config::Config)) {
    let mut config = reseedfs::config::Config::load(&bed.config_path).expect("load config");
    change(&mut config);
    std::fs::write(&bed.config_path, config.to_toml()).expect("write config");
}

/// The pool id of the testbed's pool, as its Volume1 carries it (and, since issue 14, the
/// config: checked when it is there).
fn pool_id_of(bed: &Testbed) -> String {
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(bed.volume_path(1).join(".reseedfs/volume.json")).expect("volume.json"),
    )
    .expect("parse volume.json");
    let id = meta["pool_id"].as_str().expect("pool_id").to_owned();
    if let Ok(config) = reseedfs::config::Config::load(&bed.config_path)
        && let Some(recorded) = config.pool_id
    {
        assert_eq!(recorded, id, "the config's pool id");
    }
    id
}

/// Runs `reseedfs ARGS --config CFG` as `uid`:`gid` (std drops the other groups).
fn cli_as(uid: u32, gid: u32, config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(common::BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .current_dir("/")
        .uid(uid)
        .gid(gid)
        .output()
        .expect("run reseedfs as another user")
}

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .mode()
        & 0o7777
}

/// Every file under `dir` with its content and mtime: what "left alone" means.
/// A file's path, content, mtime (seconds, nanoseconds) and mode.
type FileState = (PathBuf, Vec<u8>, (i64, i64), u32);

fn snapshot(dir: &Path) -> Vec<FileState> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("list") {
            let p = e.expect("entry").path();
            let md = std::fs::symlink_metadata(&p).expect("stat");
            if md.is_dir() {
                stack.push(p.clone());
                out.push((p, Vec::new(), (md.mtime(), md.mtime_nsec()), md.mode()));
            } else {
                let content = std::fs::read(&p).unwrap_or_default();
                out.push((p, content, (md.mtime(), md.mtime_nsec()), md.mode()));
            }
        }
    }
    out.sort();
    out
}

/// Finding 1: the daemon's state is private to root, whatever an older reseedfs left. A
/// witness directory left 0777 with a 0666 witness, and the temporary name planted as a
/// symlink to a file of root's: the mount overwrites nothing through the symlink, does not
/// trust the loose witness, and leaves the directories 0700 and the files 0600 (the event
/// log 0640). Then `nobody` can neither edit the witness, nor plant a name beside it, nor
/// read the event log, nor reach the control socket.
#[test]
fn r14_state_files_are_private_and_nobody_can_edit_the_witness() {
    let Some(bed) = privileged_bed("r14_state_files_are_private_and_nobody_can_edit_the_witness")
    else {
        return;
    };
    common::init(&bed, &["db001"], 2);
    let pool_id = pool_id_of(&bed);
    let witness_dir = bed.root.join("witness");
    let witness = witness_dir.join(format!("{pool_id}.json"));
    assert!(witness.is_file(), "init writes the witness");
    // What a reseedfs before issue 14 left behind, and what a local user planted in it.
    chmod(&witness_dir, 0o777);
    chmod(&witness, 0o666);
    let victim = bed.root.join("victim");
    std::fs::write(&victim, b"root's file\n").expect("victim");
    std::os::unix::fs::symlink(&victim, witness_dir.join(format!("{pool_id}.json.tmp")))
        .expect("plant the symlink");
    let m = Mounted::mount_only(bed);
    // A state change, so that the witness is written again.
    let f = m.db_files("db001").join("f");
    std::fs::write(&f, b"data").expect("write through the mount");
    let out = m.cli(&["suspend", "db001", "--volume", "Volume2"]);
    assert!(out.status.success(), "{}", common::describe_output(&out));
    assert_eq!(
        std::fs::read(&victim).expect("victim"),
        b"root's file\n",
        "root's file was overwritten through a planted symlink"
    );
    let untrusted = m.events_json().into_iter().any(|e| {
        common::event_id(&e) == Some(3007)
            && e["message"].as_str().is_some_and(|s| s.contains("witness"))
    });
    assert!(
        untrusted,
        "the loose witness was trusted without a word (3007)"
    );
    let state_dir = m.bed.state_dir.clone();
    assert_eq!(mode_of(&witness_dir), 0o700, "witness directory");
    assert_eq!(mode_of(&witness), 0o600, "witness");
    assert_eq!(mode_of(&state_dir), 0o700, "state directory");
    assert_eq!(mode_of(&state_dir.join("events.jsonl")), 0o640, "event log");
    assert_eq!(
        mode_of(&state_dir.join("control.sock")),
        0o600,
        "control socket"
    );
    for v in 1..=2 {
        let meta = m.bed.volume_path(v).join(".reseedfs");
        assert_eq!(mode_of(&meta), 0o700, "{}", meta.display());
        assert_eq!(mode_of(&meta.join("pool.json")) & 0o022, 0, "pool.json");
    }
    let witness_before = std::fs::read(&witness).expect("witness");
    let out = run_unprivileged(
        &m.bed.root,
        "unprivileged_state_editor",
        &[
            ("WITNESS", witness.as_os_str()),
            ("STATE_DIR", state_dir.as_os_str()),
        ],
    );
    eprintln!("{out}");
    assert_eq!(std::fs::read(&witness).expect("witness"), witness_before);
    drop(m);
}

/// The unprivileged side of [`r14_state_files_are_private_and_nobody_can_edit_the_witness`]:
/// every attempt must be refused by the kernel.
#[test]
fn unprivileged_state_editor() {
    if !is_job("unprivileged_state_editor") {
        return;
    }
    use std::io::Write as _;
    let witness = env_path("WITNESS");
    let witness_dir = witness.parent().expect("witness dir").to_owned();
    let state_dir = env_path("STATE_DIR");
    let refused = |what: &str, r: std::io::Result<()>| match r {
        Ok(()) => panic!("{what}: allowed to nobody"),
        Err(e) => println!("{what}: refused ({e})"),
    };
    refused(
        "raise the witness's epoch",
        std::fs::OpenOptions::new()
            .write(true)
            .open(&witness)
            .and_then(|mut f| f.write_all(b"{\"epoch\": 999999}")),
    );
    refused("read the witness", std::fs::read(&witness).map(|_| ()));
    refused(
        "plant a name beside the witness",
        std::os::unix::fs::symlink("/etc/shadow", witness_dir.join("planted.json.tmp")),
    );
    refused(
        "plant a name in the state directory",
        std::fs::write(state_dir.join("throughput.json.tmp"), b"{}"),
    );
    refused(
        "read the event log",
        std::fs::read(state_dir.join("events.jsonl")).map(|_| ()),
    );
    refused(
        "connect to the control socket",
        std::os::unix::net::UnixStream::connect(state_dir.join("control.sock")).map(|_| ()),
    );
}

/// Finding 2: the control socket. While the daemon starts, `nobody` tries to connect all
/// along (the old socket was 0777 for an instant); once it serves, a member of the
/// `control_group` may ask `status`, `events` and `explain` and nothing else, and a
/// non-member nothing. Who asked is what the kernel says (uid, pid, command), never what
/// the client claims. A silent connection is closed at its deadline, and connections past
/// the limit are closed at once.
#[test]
fn r14_control_socket_is_for_root_and_the_control_group_only() {
    let Some(bed) = privileged_bed("r14_control_socket_is_for_root_and_the_control_group_only")
    else {
        return;
    };
    common::init(&bed, &["db001"], 2);
    set_config(&bed, |c| c.control_group = Some(CONTROL_GID.to_string()));
    let socket = bed.state_dir.join("control.sock");
    let stop = bed.root.join("stop-racer");
    // The racer needs the test binary where nobody can run it.
    let racer = unprivileged(&bed.root, "unprivileged_socket_racer")
        .env("SOCKET", &socket)
        .env("STOP", &stop)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the racer");
    std::thread::sleep(Duration::from_millis(300));
    let m = Mounted::mount_only(bed);
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&stop, b"").expect("stop the racer");
    let raced = racer.wait_with_output().expect("racer");
    assert!(
        raced.status.success(),
        "nobody reached the control socket while the daemon started:\n{}",
        common::describe_output(&raced)
    );
    let raced = String::from_utf8_lossy(&raced.stdout).into_owned();
    eprintln!("{raced}");
    assert!(
        raced.contains("attempts "),
        "the racer did not run: {raced}"
    );

    let cfg = m.bed.config_path.clone();
    assert_eq!(mode_of(&m.bed.state_dir), 0o750);
    assert_eq!(mode_of(&socket), 0o660);
    // A member of the control_group: the read-only requests.
    for args in [
        &["status", "--json"][..],
        &["events", "--json"][..],
        &["explain", "--json"][..],
    ] {
        let out = cli_as(NOBODY, CONTROL_GID, &cfg, args);
        assert!(
            out.status.success(),
            "a control_group member was refused {args:?}:\n{}",
            common::describe_output(&out)
        );
    }
    let status: serde_json::Value =
        serde_json::from_slice(&cli_as(NOBODY, CONTROL_GID, &cfg, &["status", "--json"]).stdout)
            .expect("status JSON");
    assert_eq!(status["databases"][0]["name"], "db001");
    // ... and nothing that changes anything.
    for args in [
        &["throttle", "1B/s"][..],
        &["suspend", "db001", "--volume", "Volume2"][..],
        &["block", "db001", "--reseed"][..],
        &["unmount"][..],
    ] {
        let out = cli_as(NOBODY, CONTROL_GID, &cfg, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "a control_group member asked {args:?}:\n{}",
            common::describe_output(&out)
        );
        assert!(err.contains("permission denied"), "{args:?}: {err}");
    }
    assert!(m.daemon.is_mounted(), "a member's unmount was obeyed");
    let status = m.status_json();
    assert!(
        common::copy_is(&status, "db001", "Volume2", "Healthy", false),
        "a member's suspend was obeyed: {status:#}"
    );
    assert!(
        status["throttle"]["max_bytes_per_s"].is_null(),
        "{status:#}"
    );
    // Not a member: nothing at all (the directory keeps it out).
    let out = cli_as(NOBODY, NOBODY, &cfg, &["status", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "a non-member reached the daemon:\n{}",
        common::describe_output(&out)
    );
    // Who asked: the kernel's word, not the client's.
    let out = m.cli(&["throttle", "40MiB/s"]);
    assert!(out.status.success(), "{}", common::describe_output(&out));
    let r = reseedfs::control::call(
        &socket,
        &reseedfs::control::Request::Throttle {
            max_bytes_per_s: None,
            by: Some("alice (uid 1000), pid 1 (forged)".into()),
        },
    )
    .expect("ask as root");
    assert!(
        matches!(r, reseedfs::control::Response::Throttle(_)),
        "{r:?}"
    );
    let changes: Vec<serde_json::Value> = m
        .events_json()
        .into_iter()
        .filter(|e| common::event_id(e) == Some(3050))
        .collect();
    assert_eq!(changes.len(), 2, "{changes:#?}");
    let cli_asked = &changes[0]["asked_by"];
    assert_eq!(cli_asked["uid"], 0, "{changes:#?}");
    assert!(
        cli_asked["pid"].as_u64().is_some_and(|p| p > 0),
        "{changes:#?}"
    );
    assert!(
        cli_asked["command"]
            .as_str()
            .is_some_and(|c| c.contains("throttle")),
        "{changes:#?}"
    );
    let forged = &changes[1];
    assert_eq!(
        forged["asked_by"]["pid"].as_u64(),
        Some(u64::from(std::process::id())),
        "{forged:#}"
    );
    assert!(
        !forged.to_string().contains("alice"),
        "the client's claim was recorded: {forged:#}"
    );
    // A connection that says nothing is closed at its deadline.
    let started = Instant::now();
    let mut silent = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
    silent
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    let n = std::io::Read::read(&mut silent, &mut buf).unwrap_or(0);
    let held = started.elapsed();
    assert_eq!(n, 0, "the daemon answered a request never sent");
    assert!(
        held < reseedfs::control::REQUEST_DEADLINE + Duration::from_secs(5),
        "a silent connection was held {held:?}"
    );
    // Connections past the limit are closed at once.
    let extra = 8;
    let idle: Vec<std::os::unix::net::UnixStream> = (0..reseedfs::control::MAX_CONNECTIONS + extra)
        .map(|_| std::os::unix::net::UnixStream::connect(&socket).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let closed = idle
        .iter()
        .filter(|s| {
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .expect("timeout");
            matches!(std::io::Read::read(&mut &**s, &mut [0u8; 8]), Ok(0))
        })
        .count();
    assert!(
        closed >= extra,
        "{closed} of {} connections closed at once, the limit is {}",
        idle.len(),
        reseedfs::control::MAX_CONNECTIONS
    );
    drop(idle);
    let out = common::wait_for(Duration::from_secs(15), || {
        let out = m.cli(&["status", "--json"]);
        out.status.success().then_some(out)
    });
    assert!(out.is_some(), "the daemon does not answer after the flood");
    drop(m);
}

/// The unprivileged side of [`r14_control_socket_is_for_root_and_the_control_group_only`]:
/// connects to the socket in a loop until told to stop; fails if a connection succeeded.
#[test]
fn unprivileged_socket_racer() {
    if !is_job("unprivileged_socket_racer") {
        return;
    }
    let socket = env_path("SOCKET");
    let stop = env_path("STOP");
    let started = Instant::now();
    let mut attempts = 0u64;
    let mut reached = Vec::new();
    while !stop.exists() && started.elapsed() < Duration::from_secs(120) {
        attempts += 1;
        if let Ok(s) = std::os::unix::net::UnixStream::connect(&socket) {
            // Connected: is it still usable? Ask for the status.
            use std::io::{BufRead as _, Write as _};
            let _ = (&s).write_all(b"\"Status\"\n");
            let mut line = String::new();
            let _ = std::io::BufReader::new(&s).read_line(&mut line);
            reached.push(line.chars().take(80).collect::<String>());
        }
    }
    println!("attempts {attempts}");
    assert!(
        reached.is_empty(),
        "nobody connected {} times: {reached:?}",
        reached.len()
    );
}

/// Sets the `epoch` of the pool state file `path` (as a stray disk could carry any).
fn set_epoch(path: &Path, epoch: u64) {
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("read pool.json")).expect("parse");
    state["epoch"] = epoch.into();
    std::fs::write(path, serde_json::to_vec_pretty(&state).expect("json")).expect("write");
}

/// Finding 4: a volume of another pool (holding its own `db001`, with a much higher epoch)
/// dropped in as `Volume4` is never adopted: the mount serves this pool's `db001`, names
/// the stranger in event 3006 and in `status` (both pool ids), and writes nothing to it.
/// With none of this pool's volumes left, the mount refuses and says why.
#[test]
fn r14_a_foreign_volume_is_never_adopted() {
    if !require_mount_privileges("r14_a_foreign_volume_is_never_adopted") {
        return;
    }
    // The other pool: one volume, its own db001.
    let theirs = Testbed::plain_dirs(1).expect("testbed");
    let m = Mounted::start(theirs, &["db001"], 1);
    std::fs::write(m.db_files("db001").join("f"), b"theirs").expect("write theirs");
    let theirs = m.unmount();
    let their_id = pool_id_of(&theirs);
    set_epoch(
        &theirs.volume_path(1).join(".reseedfs/pool.json"),
        1_000_000,
    );

    let ours = Testbed::plain_dirs(3).expect("testbed");
    let m = Mounted::start(ours, &["db001"], 2);
    std::fs::write(m.db_files("db001").join("f"), b"ours").expect("write ours");
    let ours = m.unmount();
    let our_id = pool_id_of(&ours);
    assert_ne!(our_id, their_id);
    let stranger = ours.volumes_root.join("Volume4");
    std::fs::rename(theirs.volume_path(1), &stranger).expect("drop the volume in");
    let before = snapshot(&stranger);

    let m = Mounted::mount_only(ours);
    assert_eq!(
        std::fs::read(m.db_files("db001").join("f")).expect("read"),
        b"ours",
        "the mount serves another pool's db001"
    );
    let status = m.status_json();
    assert!(
        status["epoch"].as_u64().is_some_and(|e| e < 1_000_000),
        "{status:#}"
    );
    let foreign = status["foreign"]
        .as_array()
        .expect("status names foreign volumes");
    assert!(
        foreign.iter().any(|f| f["name"] == "Volume4"
            && f["pool_id"] == their_id.as_str()
            && f["expected_pool_id"] == our_id.as_str()),
        "{status:#}"
    );
    assert!(
        !status["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .any(|v| v["name"] == "Volume4"),
        "another pool's volume is listed as one of ours: {status:#}"
    );
    let text = m.cli(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("Volume4") && text.contains(&their_id) && text.contains(&our_id),
        "{text}"
    );
    let named = m.events_json().into_iter().any(|e| {
        common::event_id(&e) == Some(3006)
            && e["volume"] == "Volume4"
            && e["pool_id"] == their_id.as_str()
            && e["expected_pool_id"] == our_id.as_str()
    });
    assert!(named, "no event 3006 names Volume4 and both pool ids");
    let recorded = reseedfs::config::Config::load(&m.bed.config_path)
        .expect("config")
        .pool_id;
    assert_eq!(
        recorded.as_deref(),
        Some(our_id.as_str()),
        "init records the pool id in the config"
    );
    // Not a spare either: a reseed of ours never lands on it.
    let ours = m.unmount();
    assert_eq!(
        snapshot(&stranger),
        before,
        "the foreign volume was written to"
    );

    // With only the stranger left, the mount refuses, naming it and both ids.
    let away = ours.root.join("our-volumes");
    std::fs::create_dir(&away).expect("mkdir");
    for k in 1..=3 {
        std::fs::rename(ours.volume_path(k), away.join(format!("Volume{k}"))).expect("move");
    }
    match common::try_mount(&ours, common::MOUNT_TIMEOUT) {
        common::MountAttempt::Exited { status, log } => {
            assert_eq!(status.code(), Some(3), "{log}");
            assert!(
                log.contains("Volume4") && log.contains(&their_id) && log.contains(&our_id),
                "the refusal does not say why: {log}"
            );
        }
        other => panic!("a pool of only a foreign volume was mounted: {other:?}"),
    }
    assert_eq!(
        snapshot(&stranger),
        before,
        "the foreign volume was written to"
    );
    for k in 1..=3 {
        std::fs::rename(away.join(format!("Volume{k}")), ours.volume_path(k)).expect("move back");
    }
}

/// Finding 5: damaged state is not taken as absent. Every `pool.json` truncated, the
/// witness intact: the mount goes on from the witness and says which files are damaged
/// (3007), and rewrites them. Without the witness, one damaged `pool.json` (it may hold a
/// newer state than the other volume's) makes the mount refuse with exit code 3, naming
/// the file and what to do; once the operator moves it aside, the mount goes on.
#[test]
fn r14_damaged_state_is_not_taken_as_absent() {
    let Some(bed) = privileged_bed("r14_damaged_state_is_not_taken_as_absent") else {
        return;
    };
    let m = Mounted::start(bed, &["db001"], 2);
    std::fs::write(m.db_files("db001").join("f"), b"data").expect("write");
    let bed = m.unmount();
    let volumes_root = bed.volumes_root.clone();
    let state_of = move |k: usize| {
        volumes_root
            .join(format!("Volume{k}"))
            .join(".reseedfs/pool.json")
    };
    for k in 1..=2 {
        std::fs::write(state_of(k), b"").expect("truncate pool.json");
    }
    let m = Mounted::mount_only(bed);
    assert_eq!(
        std::fs::read(m.db_files("db001").join("f")).expect("read"),
        b"data"
    );
    let damaged: Vec<serde_json::Value> = m
        .events_json()
        .into_iter()
        .filter(|e| common::event_id(e) == Some(3007))
        .collect();
    for k in 1..=2 {
        let file = m.bed.volume_path(k).join(".reseedfs/pool.json");
        assert!(
            damaged.iter().any(|e| e["message"]
                .as_str()
                .is_some_and(|s| s.contains(&*file.to_string_lossy()))),
            "no event 3007 names {}: {damaged:#?}",
            file.display()
        );
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&file).expect("read")).expect("rewritten");
        assert!(state["epoch"].as_u64().is_some_and(|e| e > 0));
    }
    let bed = m.unmount();

    let pool_id = pool_id_of(&bed);
    std::fs::remove_file(bed.root.join("witness").join(format!("{pool_id}.json")))
        .expect("remove the witness");
    std::fs::write(state_of(1), b"{\"pool_id\": \"").expect("damage Volume1's pool.json");
    let shown = state_of(1).display().to_string();
    match common::try_mount(&bed, common::MOUNT_TIMEOUT) {
        common::MountAttempt::Exited { status, log } => {
            assert_eq!(status.code(), Some(3), "{log}");
            assert!(
                log.contains(&shown),
                "the refusal does not name {shown}: {log}"
            );
            assert!(log.contains("move it aside"), "nor says what to do: {log}");
        }
        other => panic!("mounted on a lone state beside a damaged one: {other:?}"),
    }
    std::fs::rename(state_of(1), format!("{shown}.damaged")).expect("move aside");
    let m = Mounted::mount_only(bed);
    assert_eq!(
        std::fs::read(m.db_files("db001").join("f")).expect("read"),
        b"data"
    );
    drop(m);
}

/// Finding 7: privileges are cleared as the kernel clears them on a local filesystem. A
/// truncate (by path, and by an open with O_TRUNC) by a user other than root clears
/// setuid and setgid; a write by them clears setuid, setgid and `security.capability`;
/// on every copy.
#[test]
fn r14_truncate_and_write_by_a_user_clear_privileges() {
    let Some(bed) = privileged_bed("r14_truncate_and_write_by_a_user_clear_privileges") else {
        return;
    };
    let m = Mounted::start(bed, &["db001"], 2);
    let f = m.db_files("db001").join("tool");
    let copies = [
        m.backing_files(1, "db001").join("tool"),
        m.backing_files(2, "db001").join("tool"),
    ];
    let as_nobody = |script: &str| {
        let out = Command::new("sh")
            .args(["-c", script, "sh"])
            .arg(&f)
            .uid(NOBODY)
            .gid(NOBODY)
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "{script}: {}",
            common::describe_output(&out)
        );
    };
    // A v2 file capability (CAP_NET_BIND_SERVICE, effective).
    let cap: Vec<u8> = [0x0200_0001u32, 0x400, 0, 0, 0]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    for (how, script) in [
        ("truncate", "truncate -s 2 \"$1\""),
        ("open O_TRUNC", ": > \"$1\""),
        ("write", "printf x >> \"$1\""),
    ] {
        std::fs::write(&f, b"#!/bin/sh\n").expect("write");
        chmod(&f, 0o6777);
        rustix::fs::setxattr(
            &f,
            "security.capability",
            &cap,
            rustix::fs::XattrFlags::empty(),
        )
        .expect("set a file capability");
        as_nobody(script);
        for p in std::iter::once(&f).chain(&copies) {
            assert_eq!(
                mode_of(p) & 0o6000,
                0,
                "{how} by nobody left setuid/setgid on {}",
                p.display()
            );
        }
        if how == "write" {
            for p in std::iter::once(&f).chain(&copies) {
                let mut buf = [0u8; 64];
                assert!(
                    rustix::fs::getxattr(p, "security.capability", &mut buf).is_err(),
                    "a write by nobody left security.capability on {}",
                    p.display()
                );
            }
        }
    }
    // The mount remembers that a file has neither bit after a write cleared them (a stat
    // per write would cost a volume call each): a chmod that sets them again is seen.
    for round in 0..2 {
        chmod(&f, 0o4777);
        as_nobody("printf y >> \"$1\"");
        for p in std::iter::once(&f).chain(&copies) {
            assert_eq!(
                mode_of(p) & 0o6000,
                0,
                "write {round} by nobody after a chmod left setuid on {}",
                p.display()
            );
        }
    }
    // Without group execute, setgid is not a privilege (mandatory locking): kept, as the
    // kernel keeps it.
    chmod(&f, 0o6766);
    as_nobody("truncate -s 1 \"$1\"");
    assert_eq!(mode_of(&f), 0o2766);
    drop(m);
}

/// Finding 7: the mount helper refuses the options that let others than root mount.
#[test]
fn r14_mount_helper_refuses_user_mounts() {
    let dir = std::env::temp_dir();
    for opt in ["user", "users", "owner", "group", "rw,user"] {
        for sloppy in [false, true] {
            let mut cmd = Command::new(common::BIN);
            cmd.arg("mount-helper")
                .arg("/etc/reseedfs/none.toml")
                .arg(&dir)
                .args(["-o", opt]);
            if sloppy {
                cmd.arg("-s");
            }
            let out = cmd.output().expect("run the helper");
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "-o {opt}: {err}");
            assert!(err.contains("only root may mount"), "-o {opt}: {err}");
        }
    }
}

/// Runs `reseedfs init` on `bed` with `extra` arguments replacing defaults; returns the
/// output.
fn init_with(bed: &Testbed, volumes: &Path, args: &[&std::ffi::OsStr]) -> std::process::Output {
    let mut cmd = Command::new(common::BIN);
    cmd.arg("init")
        .arg("--volumes")
        .arg(volumes)
        .arg("--databases")
        .arg(&bed.databases_root)
        .arg("--config")
        .arg(&bed.config_path)
        .args(args);
    cmd.output().expect("run init")
}

/// Finding 7: `init` checks paths as the filesystem resolves them, keeps the daemon's state
/// off the databases root and the volumes, and refuses with exit code 3 (the config is
/// unusable), writing nothing.
#[test]
fn r14_init_checks_paths_as_resolved_and_exits_3() {
    let bed = Testbed::plain_dirs(2).expect("testbed");
    let os = |s: &str| std::ffi::OsString::from(s);
    let path = |p: PathBuf| p.into_os_string();
    let link = bed.root.join("link-into-volumes");
    std::os::unix::fs::symlink(&bed.volumes_root, &link).expect("symlink");
    let state = path(bed.root.join("state"));
    let witness = path(bed.root.join("witness"));
    let cases: Vec<(&str, PathBuf, Vec<std::ffi::OsString>, &str)> = vec![
        (
            "a volumes root through `..`",
            bed.root.join("zz/../vols"),
            vec![
                os("--database"),
                os("db001"),
                os("--state-dir"),
                state.clone(),
                os("--witness-dir"),
                witness.clone(),
            ],
            "..",
        ),
        (
            "a state_dir inside the databases root",
            bed.volumes_root.clone(),
            vec![
                os("--database"),
                os("db001"),
                os("--state-dir"),
                path(bed.databases_root.join("state")),
                os("--witness-dir"),
                witness.clone(),
            ],
            "state_dir",
        ),
        (
            "a witness_dir inside a volume",
            bed.volumes_root.clone(),
            vec![
                os("--database"),
                os("db001"),
                os("--state-dir"),
                state.clone(),
                os("--witness-dir"),
                path(bed.volume_path(1).join("w")),
            ],
            "witness_dir",
        ),
        (
            "a state_dir in a volume through a symlink",
            bed.volumes_root.clone(),
            vec![
                os("--database"),
                os("db001"),
                os("--state-dir"),
                path(link.join("Volume2/state")),
                os("--witness-dir"),
                witness.clone(),
            ],
            "state_dir",
        ),
        (
            "a bad database name",
            bed.volumes_root.clone(),
            vec![
                os("--database"),
                os("db 1"),
                os("--state-dir"),
                state.clone(),
                os("--witness-dir"),
                witness.clone(),
            ],
            "db 1",
        ),
        (
            "no copy",
            bed.volumes_root.clone(),
            vec![
                os("--database"),
                os("db001"),
                os("--copies"),
                os("0"),
                os("--state-dir"),
                state.clone(),
                os("--witness-dir"),
                witness.clone(),
            ],
            "copies",
        ),
        (
            "more copies than volumes",
            bed.volumes_root.clone(),
            vec![
                os("--database"),
                os("db001"),
                os("--copies"),
                os("3"),
                os("--state-dir"),
                state.clone(),
                os("--witness-dir"),
                witness.clone(),
            ],
            "",
        ),
    ];
    for (what, volumes, args, named) in cases {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let out = init_with(&bed, &volumes, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{what}: {}",
            common::describe_output(&out)
        );
        assert!(
            err.contains(named),
            "{what}: the refusal does not name {named:?}: {err}"
        );
        for k in 1..=2 {
            assert!(
                !bed.volume_path(k).join(".reseedfs").exists(),
                "{what}: init wrote to Volume{k}"
            );
        }
        assert!(!bed.config_path.exists(), "{what}: init wrote the config");
    }
}

/// The exit codes of the README's table, each produced: 0 success, 1 the command failed,
/// 2 `verify` could not finish, 3 the config or the pool is unusable, 4 the daemon cannot
/// be reached.
#[test]
fn r14_exit_codes_match_the_readme() {
    let Some(bed) = privileged_bed("r14_exit_codes_match_the_readme") else {
        return;
    };
    common::init(&bed, &["db001"], 1);
    let cfg = bed.config_path.clone();
    let code = |args: &[&str]| {
        let out = Command::new(common::BIN)
            .args(args)
            .arg("--config")
            .arg(&cfg)
            .output()
            .expect("run reseedfs");
        (out.status.code(), common::describe_output(&out))
    };
    let (c, out) = code(&["status"]);
    assert_eq!(c, Some(4), "status with no daemon: {out}");
    // The metrics endpoint has no authentication: off loopback only when allowed (a
    // daemon that accepts it mounts and serves: stopped after a while, and the test fails).
    let mut mount = Command::new(common::BIN)
        .args(["mount", "--metrics", "0.0.0.0:0", "--config"])
        .arg(&cfg)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run reseedfs mount");
    let exited = reseedfs::testbed::daemon::wait_child(&mut mount, Duration::from_secs(20));
    if exited.is_none() {
        let _ = mount.kill();
    }
    let out = mount.wait_with_output().expect("wait");
    let out_text = common::describe_output(&out);
    assert_eq!(
        exited.and_then(|s| s.code()),
        Some(3),
        "mount with metrics on every address: {out_text}"
    );
    assert!(out_text.contains("metrics_allow_remote"), "{out_text}");
    let good = std::fs::read(&cfg).expect("config");
    std::fs::write(&cfg, b"databases = [").expect("break the config");
    let (c, out) = code(&["mount"]);
    assert_eq!(c, Some(3), "mount with a broken config: {out}");
    std::fs::write(&cfg, &good).expect("restore the config");
    let m = Mounted::mount_only(bed);
    let (c, out) = code(&["status"]);
    assert_eq!(c, Some(0), "status: {out}");
    let (c, out) = code(&["reseed", "db999"]);
    assert_eq!(
        c,
        Some(1),
        "reseed of a database the pool does not have: {out}"
    );
    let (c, out) = code(&["verify", "db001"]);
    assert_eq!(c, Some(2), "verify with one copy: {out}");
    drop(m);
}
