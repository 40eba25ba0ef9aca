//! The daemon's life cycle through the real binary: control socket, signals, busy unmounts,
//! bad configs.

#![cfg(target_os = "linux")]

mod common;

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;

use common::{Mounted, require_mount_privileges};
use reseedfs::mountpoint::mount_fstype;
use reseedfs::testbed::Testbed;

#[test]
fn r2_unmount_while_busy_keeps_serving() {
    if !require_mount_privileges("r2_unmount_while_busy_keeps_serving") {
        return;
    }
    let bed = Testbed::plain_dirs(3).expect("testbed");
    let m = Mounted::start(bed, &["db001"], 2);
    let path = m.db_files("db001").join("open-file");
    let mut f = std::fs::File::create(&path).expect("create");
    f.write_all(b"before").expect("write");

    // A file is open: the unmount is refused with a reason, and the mount keeps serving.
    let out = m.cli(&["unmount"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "unmount of a busy mount succeeded");
    assert!(stderr.contains("busy"), "no reason given: {stderr}");
    assert_eq!(
        mount_fstype(&m.bed.databases_root).as_deref(),
        Some("fuse.reseedfs")
    );
    f.write_all(b" after")
        .expect("write after the refused unmount");
    f.sync_all().expect("fsync after the refused unmount");
    drop(f);
    assert_eq!(std::fs::read(&path).expect("read"), b"before after");

    // Closed: now it unmounts cleanly.
    let bed = m.unmount();
    assert_eq!(mount_fstype(&bed.databases_root), None);
}

#[test]
fn r2_sigterm_unmounts_cleanly_and_records_it() {
    if !require_mount_privileges("r2_sigterm_unmounts_cleanly_and_records_it") {
        return;
    }
    let bed = Testbed::plain_dirs(2).expect("testbed");
    let mut m = Mounted::start(bed, &["db001"], 2);
    let socket = m.bed.state_dir.join("control.sock");
    let mode = std::fs::metadata(&socket)
        .expect("control socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "control socket mode {mode:o}");
    std::fs::write(m.db_files("db001").join("f"), b"x").expect("write");
    let pid = m.pid().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(kill.success());
    let status = m
        .daemon
        .wait_exit(std::time::Duration::from_secs(10))
        .expect("daemon still running 10 s after SIGTERM");
    assert!(
        status.success(),
        "daemon exited {status} after SIGTERM:\n{}",
        m.mount_log()
    );
    assert_eq!(mount_fstype(&m.bed.databases_root), None);
    assert!(!socket.exists(), "control socket left behind");
    // The clean stop is recorded, both as an event and in the persisted state.
    let events = m.events_json();
    assert!(
        events.iter().any(|e| e["id"] == 3002),
        "no mount.finished event: {events:?}"
    );
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(m.bed.volume_path(1).join(".reseedfs/pool.json")).expect("pool.json"),
    )
    .expect("parse pool.json");
    assert_eq!(state["clean"], true, "{state}");
}

#[test]
fn r2_bad_input_is_refused_and_changes_nothing() {
    // No mount needed: init and config checks run anywhere.
    let bed = Testbed::plain_dirs(2).expect("testbed");
    let bin = env!("CARGO_BIN_EXE_reseedfs");
    let run = |args: &[&str]| {
        std::process::Command::new(bin)
            .args(args)
            .output()
            .expect("run")
    };
    let vols = bed.volumes_root.to_str().expect("utf-8 path");
    let dbs = bed.databases_root.to_str().expect("utf-8 path");
    let cfg = bed.config_path.to_str().expect("utf-8 path");
    let cases: [(&[&str], &str); 3] = [
        (&["--database", "db 1"], "invalid"),
        (&["--database", "a", "--database", "a"], "listed twice"),
        (&["--database", "a", "--copies", "3"], "distinct volumes"),
    ];
    for (extra, want) in cases {
        let mut args = vec![
            "init",
            "--volumes",
            vols,
            "--databases",
            dbs,
            "--config",
            cfg,
        ];
        args.extend_from_slice(extra);
        let out = run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} accepted");
        assert!(stderr.contains(want), "{extra:?}: {stderr}");
        assert!(!bed.config_path.exists(), "{extra:?} wrote a config");
        assert!(
            !bed.volume_path(1).join(".reseedfs").exists(),
            "{extra:?} wrote volume metadata"
        );
    }
    // A config error names the file and the key.
    std::fs::write(
        &bed.config_path,
        format!("volumes_root = \"{vols}\"\ndatabases_root = \"{dbs}\"\ndatabases = [\"a\"]\ncopies = \"two\"\n"),
    )
    .expect("write config");
    let out = run(&["mount", "--config", cfg]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains(cfg) && stderr.contains("copies"),
        "{stderr}"
    );
}
