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

/// Runs the helper test `name` of a copy of this binary (in `dir`, readable by everyone) as
/// `nobody`, with `env`; returns its stdout. Panics with its output when it fails.
fn run_unprivileged(dir: &Path, name: &str, env: &[(&str, &OsStr)]) -> String {
    let exe = dir.join("security-helper");
    if !exe.exists() {
        std::fs::copy(std::env::current_exe().expect("current exe"), &exe).expect("copy exe");
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let mut cmd = Command::new(&exe);
    cmd.args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(JOB_ENV, name)
        .current_dir("/")
        .uid(NOBODY)
        .gid(NOBODY);
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
    if !require_mount_privileges("r14_symlink_race_through_the_mount_changes_nothing_outside") {
        return;
    }
    let bed = Testbed::plain_dirs(2).expect("testbed");
    let m = Mounted::start(bed, &["db001"], 2);
    let outside = m.bed.root.join("outside");
    std::fs::create_dir(&outside).expect("mkdir outside");
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let target = outside.join("shadow");
    std::fs::write(&target, b"root:secret\n").expect("write target");
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    rustix::fs::setxattr(&target, "user.keep", b"1", rustix::fs::XattrFlags::empty())
        .expect("xattr on the target (the test needs user xattrs on the temp filesystem)");
    std::fs::write(outside.join("victim"), b"keep me").expect("victim");
    let before = facts(&target);
    let before_listing = listing(&outside);

    let user_dir = m.db_files("db001").join("u");
    std::fs::create_dir(&user_dir).expect("mkdir u");
    std::os::unix::fs::chown(&user_dir, Some(NOBODY), Some(NOBODY)).expect("chown u");
    std::fs::set_permissions(&user_dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");

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
    let mut attacks: Vec<(&'static str, Attack)> = vec![
        ("chmod", {
            let (f, pick) = (f.clone(), pick.clone());
            Box::new(move |i| {
                let mode = if i % 2 == 0 { 0o666 } else { 0o600 };
                rustix::fs::chmod(pick(&f, i), Mode::from_raw_mode(mode)).is_ok()
            })
        }),
        ("chown", {
            let (f, pick) = (f.clone(), pick.clone());
            Box::new(move |i| {
                let f = pick(&f, i);
                let id = Some(rustix::fs::Uid::from_raw(NOBODY));
                let gid = Some(rustix::fs::Gid::from_raw(NOBODY));
                rustix::fs::chown(&f, id, gid).is_ok()
            })
        }),
        ("utimens", {
            let (f, pick) = (f.clone(), pick.clone());
            Box::new(move |i| {
                let f = pick(&f, i);
                let t = Timespec {
                    tv_sec: 1_000_000_000,
                    tv_nsec: 0,
                };
                let times = Timestamps {
                    last_access: t,
                    last_modification: t,
                };
                rustix::fs::utimensat(rustix::fs::CWD, &f, &times, rustix::fs::AtFlags::empty())
                    .is_ok()
            })
        }),
        ("truncate", {
            let (f, pick) = (f.clone(), pick.clone());
            Box::new(move |i| {
                let f = pick(&f, i);
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&f)
                    .and_then(|h| h.set_len(1))
                    .is_ok()
            })
        }),
        ("write", {
            let (f, pick) = (f.clone(), pick.clone());
            Box::new(move |i| {
                let f = pick(&f, i);
                use std::io::Write as _;
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&f)
                    .and_then(|mut h| h.write_all(b"pwned"))
                    .is_ok()
            })
        }),
        ("setxattr", {
            let (f, pick) = (f.clone(), pick.clone());
            Box::new(move |i| {
                rustix::fs::setxattr(pick(&f, i), "user.pwn", b"1", XattrFlags::empty()).is_ok()
            })
        }),
        ("removexattr", {
            let (f, pick) = (f.clone(), pick.clone());
            Box::new(move |i| {
                // Give the file the name first, so that the removal has something to do.
                let p = pick(&f, i);
                let _ = rustix::fs::setxattr(&p, "user.keep", b"1", XattrFlags::empty());
                rustix::fs::removexattr(&p, "user.keep").is_ok()
            })
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
        ("mknod", {
            let d = d.clone();
            Box::new(move |i| {
                let p = d.join(format!("fifo{}", i % 4));
                let ok = rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &p,
                    rustix::fs::FileType::Fifo,
                    Mode::from_raw_mode(0o600),
                    0,
                )
                .is_ok();
                let _ = std::fs::remove_file(&p);
                ok
            })
        }),
        ("mkdir", {
            let d = d.clone();
            Box::new(move |i| {
                let p = d.join(format!("dir{}", i % 4));
                let ok = std::fs::create_dir(&p).is_ok();
                let _ = std::fs::remove_dir(&p);
                ok
            })
        }),
        ("symlink", {
            let d = d.clone();
            Box::new(move |i| {
                let p = d.join(format!("sym{}", i % 4));
                let ok = std::os::unix::fs::symlink("x", &p).is_ok();
                let _ = std::fs::remove_file(&p);
                ok
            })
        }),
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
                let open = |p: &Path, write: bool| {
                    std::fs::OpenOptions::new()
                        .read(!write)
                        .write(write)
                        .custom_flags(libc::O_DIRECT)
                        .open(p)
                        .expect("open O_DIRECT")
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
