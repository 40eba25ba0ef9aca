//! `explain` and `--what-if-fail` on pools with known layouts: the JSON answers are
//! compared exactly with the golden files in `tests/golden/` (time and throughput are
//! fixed, so they are deterministic). `UPDATE_GOLDEN=1` rewrites them; read the diff.
//!
//! Then explain's spare rules are checked against the pool's own on a real pool, and
//! `status`, `throttle` and `explain` go through a real mount and its daemon: a budget set
//! at run time paces a reseed, shows in `status`, is recorded (event 3050), and the
//! measured throughput feeds explain.

#[cfg(target_os = "linux")]
mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reseedfs::autoreseed::Timings;
use reseedfs::config::Config;
use reseedfs::events::VecSink;
use reseedfs::explain::{self, Inputs, Rate};
use reseedfs::pool::{self, Pool};
use reseedfs::reseed::{Phase, SeedStatus};
use reseedfs::status::{CopyStatus, DbStatus, Status, VolumeStatus, WorkflowStatus};
use reseedfs::testbed::Testbed;
use reseedfs::throttle::{Measured, Measurement, ThrottleConfig};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn copy(db: &str, volume: &str, status: &str) -> CopyStatus {
    CopyStatus {
        name: format!("{db}\\{volume}"),
        volume: volume.into(),
        status: status.parse().expect("a status word"),
        active: status == "Mounted",
        reseed_blocked: false,
        resume_blocked: false,
        failed_at: None,
        seed: None,
        autoreseed: None,
        queue_length: None,
        queue_bytes: None,
        volume_free_bytes: None,
        last_error: None,
    }
}

fn failed(db: &str, volume: &str, minutes_ago: u64) -> CopyStatus {
    CopyStatus {
        failed_at: Some(now() - Duration::from_secs(60 * minutes_ago)),
        last_error: Some(format!(
            "copy {db}\\{volume} is FailedAndSuspended: volume {volume} failed during write (Input/output error)"
        )),
        ..copy(db, volume, "FailedAndSuspended")
    }
}

fn db(name: &str, copies: Vec<CopyStatus>) -> DbStatus {
    DbStatus {
        name: name.into(),
        copies,
        scrub: None,
    }
}

/// A volume: `free_gib` of 1000 GiB free, or failed (`None`).
fn volume(name: &str, state: &str, free_gib: Option<u64>) -> VolumeStatus {
    VolumeStatus {
        name: name.into(),
        state: state.parse().expect("a volume state"),
        free_bytes: free_gib.map(|g| g * GIB),
        total_bytes: free_gib.map(|_| 1000 * GIB),
        io_errors: u64::from(state == "Failed"),
        slow_requests: 0,
        checksum_errors: 0,
    }
}

fn status(databases: Vec<DbStatus>, volumes: Vec<VolumeStatus>) -> Status {
    Status {
        epoch: 42,
        databases,
        volumes,
        throttle: None,
        foreign: Vec::new(),
        fuse_transport: None,
    }
}

/// The last reseed copied at 400 MiB/s and verified at 600 MiB/s.
fn rate(budget: Option<u64>) -> Rate {
    let m = |bytes_per_s: u64| Measurement {
        db: reseedfs::names::DbName::from_static("db001"),
        bytes: 80 * GIB,
        seconds: (80 * GIB / bytes_per_s) as f64,
        bytes_per_s: bytes_per_s as f64,
        at: now() - Duration::from_secs(86400),
        budget_bytes_per_s: None,
    };
    let measured = Measured {
        copy: Some(m(400 * MIB)),
        verify: Some(m(600 * MIB)),
        resync: None,
    };
    Rate::new(&measured, &ThrottleConfig::default(), budget)
}

fn sizes(list: &[(&str, u64)]) -> BTreeMap<String, u64> {
    list.iter().map(|(d, b)| ((*d).to_owned(), *b)).collect()
}

/// Compares `value`'s JSON with `tests/golden/<name>.json` (or writes it with
/// `UPDATE_GOLDEN=1`).
fn golden(name: &str, value: &impl serde::Serialize) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.json"));
    let mut json = serde_json::to_string_pretty(value).expect("serialize");
    json.push('\n');
    if std::env::var("UPDATE_GOLDEN").as_deref() == Ok("1") {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir golden");
        std::fs::write(&path, &json).expect("write golden");
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it, then read it)",
            path.display()
        )
    });
    if json != want {
        let first = json
            .lines()
            .zip(want.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(json.lines().count().min(want.lines().count()));
        panic!(
            "{} differs from the answer, first at line {}:\n  golden: {}\n  answer: {}\nwhole answer:\n{json}",
            path.display(),
            first + 1,
            want.lines().nth(first).unwrap_or("<end>"),
            json.lines().nth(first).unwrap_or("<end>"),
        );
    }
}

/// Six volumes, copies_per_volume 1: db001 on Volume1 and 2, db002 on Volume3 and 4,
/// Volume5 (900 GiB free) and Volume6 (500 GiB free) spare.
fn healthy_pool() -> Status {
    status(
        vec![
            db(
                "db001",
                vec![
                    copy("db001", "Volume1", "Mounted"),
                    copy("db001", "Volume2", "Healthy"),
                ],
            ),
            db(
                "db002",
                vec![
                    copy("db002", "Volume3", "Mounted"),
                    copy("db002", "Volume4", "Healthy"),
                ],
            ),
        ],
        vec![
            volume("Volume1", "InUse", Some(800)),
            volume("Volume2", "InUse", Some(800)),
            volume("Volume3", "InUse", Some(900)),
            volume("Volume4", "InUse", Some(900)),
            volume("Volume5", "Spare", Some(900)),
            volume("Volume6", "Spare", Some(500)),
        ],
    )
}

#[test]
fn healthy_pool_with_spares() {
    let s = healthy_pool();
    let bytes = sizes(&[("db001", 100 * GIB), ("db002", 20 * GIB)]);
    let t = Timings::default();
    let i = Inputs {
        now: now(),
        status: &s,
        db_bytes: &bytes,
        timings: &t,
        copies_per_volume: 1,
        rate: rate(None),
    };
    let e = explain::explain(&i, None).expect("explain");
    assert!(e.databases.iter().all(|d| d.not_healthy.is_empty()));
    golden("explain_healthy", &e);

    let w = explain::what_if_fail(&i, "Volume1").expect("what if");
    assert_eq!(w.single_copy, vec!["db001"]);
    assert!(w.down.is_empty());
    let d = &w.databases[0];
    assert_eq!(
        d.spare.as_deref(),
        Some("Volume5"),
        "the spare with the most room"
    );
    // 15 min dwell + 2 failed Resume attempts 5 min apart, then 100 GiB copied at 400
    // MiB/s and verified at 600 MiB/s.
    assert_eq!(d.spare_assigned_in_s, Some(25 * 60));
    assert_eq!(d.redundancy_back_in_s, Some(1500 + 256 + 171));
    golden("what_if_healthy_volume1", &w);

    let spare = explain::what_if_fail(&i, "Volume6").expect("what if");
    assert!(spare.spare_lost && spare.copies_failing.is_empty());
    assert!(
        explain::what_if_fail(&i, "Volume9")
            .expect_err("refused")
            .contains("Volume1, Volume2")
    );
    assert!(
        explain::explain(&i, Some("db009"))
            .expect_err("refused")
            .contains("db001, db002")
    );
}

#[test]
fn one_failed_copy_with_a_spare_and_one_seeding() {
    let mut db1 = failed("db001", "Volume1", 20);
    db1.autoreseed = Some(WorkflowStatus {
        step: "Resume".into(),
        attempt: 1,
        of: 3,
        running: None,
        next_at: Some(now() + Duration::from_secs(240)),
        blocked: None,
        last_error: Some(
            "volume Volume1 does not answer: health probe failed: Input/output error".into(),
        ),
    });
    let mut seeding = copy("db002", "Volume4", "Seeding");
    seeding.seed = Some(SeedStatus {
        db: "db002".into(),
        target: "Volume4".into(),
        source: "Volume3".into(),
        engine: "io_uring".into(),
        phase: Phase::Copying,
        bytes_total: 100 * GIB,
        bytes_done: 40 * GIB,
        mib_s: 150.0,
        eta_s: Some(409.6),
        elapsed_s: 280.0,
        error: None,
    });
    let mut blocked = failed("db003", "Volume7", 2);
    blocked.reseed_blocked = true;
    let s = status(
        vec![
            db("db001", vec![db1, copy("db001", "Volume2", "Mounted")]),
            db("db002", vec![copy("db002", "Volume3", "Mounted"), seeding]),
            db("db003", vec![copy("db003", "Volume6", "Mounted"), blocked]),
        ],
        vec![
            volume("Volume1", "Failed", None),
            volume("Volume2", "InUse", Some(800)),
            volume("Volume3", "InUse", Some(800)),
            volume("Volume4", "InUse", Some(860)),
            volume("Volume5", "Spare", Some(900)),
            volume("Volume6", "InUse", Some(900)),
            volume("Volume7", "Failed", None),
        ],
    );
    let bytes = sizes(&[
        ("db001", 10 * GIB),
        ("db002", 100 * GIB),
        ("db003", 5 * GIB),
    ]);
    let t = Timings::default();
    let i = Inputs {
        now: now(),
        status: &s,
        db_bytes: &bytes,
        timings: &t,
        copies_per_volume: 1,
        rate: rate(Some(200 * MIB)),
    };
    let e = explain::explain(&i, None).expect("explain");
    let c1 = &e.databases[0].not_healthy[0];
    assert_eq!(c1.step, "Resume");
    assert_eq!(c1.next_action.in_s, Some(240));
    let plan = c1.plan.as_ref().expect("a plan");
    assert_eq!(
        (plan.source.as_str(), plan.target.as_str()),
        ("Volume2", "Volume5")
    );
    // Bounded by the budget: 10 GiB at 200 MiB/s, twice (copy and verify).
    assert_eq!(plan.expected_s, 103);
    let c2 = &e.databases[1].not_healthy[0];
    assert_eq!(c2.step, "Copying");
    let c3 = &e.databases[2].not_healthy[0];
    let b = c3.blocked.as_ref().expect("blocked");
    assert_eq!(b.code, "ReseedBlocked");
    assert!(
        b.remedy
            .contains("reseedfs unblock db003 --volume Volume7 --reseed")
    );
    golden("explain_one_failed", &e);
    let only = explain::explain(&i, Some("db001")).expect("explain db001");
    assert_eq!(only.databases.len(), 1);
}

#[test]
fn what_if_the_last_copy_dies() {
    // copies_per_volume 2: Volume1 holds db001's only in-sync copy and a copy of db002.
    let s = status(
        vec![
            db(
                "db001",
                vec![
                    copy("db001", "Volume1", "Mounted"),
                    failed("db001", "Volume2", 90),
                ],
            ),
            db(
                "db002",
                vec![
                    copy("db002", "Volume1", "Healthy"),
                    copy("db002", "Volume3", "Mounted"),
                ],
            ),
        ],
        vec![
            volume("Volume1", "InUse", Some(700)),
            volume("Volume2", "Failed", None),
            volume("Volume3", "InUse", Some(800)),
            volume("Volume4", "Spare", Some(900)),
        ],
    );
    let bytes = sizes(&[("db001", 50 * GIB), ("db002", 50 * GIB)]);
    let t = Timings::default();
    let i = Inputs {
        now: now(),
        status: &s,
        db_bytes: &bytes,
        timings: &t,
        copies_per_volume: 2,
        rate: rate(None),
    };
    let w = explain::what_if_fail(&i, "Volume1").expect("what if");
    assert_eq!(w.down, vec!["db001"]);
    assert_eq!(w.single_copy, vec!["db002"]);
    let d2 = w.databases.iter().find(|d| d.db == "db002").expect("db002");
    assert_eq!(
        d2.blocked.as_ref().map(|b| b.code.as_str()),
        Some("ActiveCopyOnVolume"),
        "db001's last copy stays the active one on Volume1: AutoReseed waits for it"
    );
    assert_eq!(w.redundancy_back_in_s, None);
    golden("what_if_no_copy_left", &w);
    let already = explain::what_if_fail(&i, "Volume2").expect("what if");
    assert!(already.already_failed);
}

#[test]
fn what_if_no_spare_can_take_the_copy() {
    let s = status(
        vec![
            db(
                "db001",
                vec![
                    copy("db001", "Volume1", "Mounted"),
                    copy("db001", "Volume2", "Healthy"),
                ],
            ),
            db(
                "db002",
                vec![
                    copy("db002", "Volume3", "Mounted"),
                    copy("db002", "Volume4", "Healthy"),
                ],
            ),
        ],
        vec![
            volume("Volume1", "InUse", Some(800)),
            volume("Volume2", "InUse", Some(800)),
            volume("Volume3", "InUse", Some(900)),
            volume("Volume4", "InUse", Some(900)),
            volume("Volume5", "Spare", Some(30)),
        ],
    );
    let bytes = sizes(&[("db001", 100 * GIB), ("db002", 20 * GIB)]);
    let t = Timings::default();
    let i = Inputs {
        now: now(),
        status: &s,
        db_bytes: &bytes,
        timings: &t,
        copies_per_volume: 1,
        rate: rate(None),
    };
    let w = explain::what_if_fail(&i, "Volume2").expect("what if");
    let d = &w.databases[0];
    assert_eq!(d.spare, None);
    let why = d.no_spare.as_deref().expect("why no spare");
    assert!(
        why.contains("Volume5: 30720 MiB free, 112704 MiB needed")
            && why.contains("Volume1: it already holds a copy of db001")
            && why.contains("Volume2: it is failed")
            && why.contains("Volume3: it holds 1 database copies and copies_per_volume is 1"),
        "{why}"
    );
    assert_eq!(w.redundancy_back_in_s, None);
    golden("what_if_no_spare", &w);
}

#[test]
fn what_if_two_single_copy_databases_share_the_budget() {
    // copies_per_volume 2: Volume1 holds both databases' active copies.
    let s = status(
        vec![
            db(
                "db001",
                vec![
                    copy("db001", "Volume1", "Mounted"),
                    copy("db001", "Volume2", "Healthy"),
                ],
            ),
            db(
                "db002",
                vec![
                    copy("db002", "Volume1", "Mounted"),
                    copy("db002", "Volume2", "Healthy"),
                ],
            ),
        ],
        vec![
            volume("Volume1", "InUse", Some(800)),
            volume("Volume2", "InUse", Some(800)),
            volume("Volume3", "Spare", Some(900)),
        ],
    );
    let bytes = sizes(&[("db001", 30 * GIB), ("db002", 10 * GIB)]);
    let t = Timings::default();
    let i = Inputs {
        now: now(),
        status: &s,
        db_bytes: &bytes,
        timings: &t,
        copies_per_volume: 2,
        rate: rate(Some(100 * MIB)),
    };
    let w = explain::what_if_fail(&i, "Volume1").expect("what if");
    assert_eq!(w.single_copy, vec!["db001", "db002"]);
    let back: Vec<u64> = w
        .databases
        .iter()
        .map(|d| d.redundancy_back_in_s.expect("back"))
        .collect();
    // Both on Volume3 (room for two), sharing 100 MiB/s: db002 (20 GiB of tokens) ends
    // after 410 s at 50 MiB/s, then db001 has 40 GiB left of its 60 at 100 MiB/s.
    assert_eq!(back, vec![1500 + 820, 1500 + 410]);
    golden("what_if_shared_budget", &w);
}

#[test]
fn spare_rules_are_the_pools() {
    let bed = Testbed::plain_dirs(4).expect("volumes");
    let mut config = Config::new(
        bed.volumes_root.clone(),
        bed.databases_root.clone(),
        vec![
            reseedfs::names::DbName::from_static("db001"),
            reseedfs::names::DbName::from_static("db002"),
        ],
    );
    config.state_dir = bed.state_dir.clone();
    config.witness_dir = bed.root.join("witness");
    config.copies = 1;
    pool::init(&config, &bed.config_path).expect("init");
    let pool = Pool::open(&config, Arc::new(VecSink::default())).expect("open");
    let s = reseedfs::status::of_pool(&pool);
    let digits = |t: &str| {
        t.chars()
            .filter(|c| !c.is_ascii_digit())
            .collect::<String>()
    };
    for db in ["db001", "db002"] {
        for bytes in [0, 1 << 50] {
            let (mut ok_a, no_a) = explain::spares(&s, config.copies_per_volume, db, bytes);
            let (mut ok_b, no_b) = pool.spares(db, bytes);
            // The volumes share one filesystem: their free space ties, in any order.
            ok_a.sort();
            ok_b.sort();
            assert_eq!(ok_a, ok_b, "{db} {bytes}");
            let mask = |v: Vec<(String, String)>| -> Vec<(String, String)> {
                v.into_iter().map(|(n, w)| (n, digits(&w))).collect()
            };
            assert_eq!(mask(no_a), mask(no_b), "{db} {bytes}");
        }
    }
    pool.close();
}

#[cfg(target_os = "linux")]
#[test]
fn status_throttle_and_explain_through_the_daemon() {
    use common::{Mounted, copy_status, event_id, require_mount_privileges, wait_for};
    if !require_mount_privileges("status_throttle_and_explain_through_the_daemon") {
        return;
    }
    let bed = Testbed::plain_dirs(3).expect("testbed");
    let m = Mounted::start(bed, &["db001"], 2);
    let data: Vec<u8> = (0..80u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(m.db_files("db001").join("big"), &data).expect("write 80 MiB");

    let s = m.status_json();
    let c = copy_status(&s, "db001", "Volume1").expect("copy").clone();
    assert_eq!(
        (c["queue_length"].as_u64(), c["queue_bytes"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(
        c["volume_free_bytes"].as_u64().is_some_and(|f| f > 0),
        "{c}"
    );
    assert!(s["throttle"]["max_bytes_per_s"].is_null(), "unlimited: {s}");
    let text = m.cli(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("NAME") && text.contains("THROTTLE  budget unlimited"),
        "{text}"
    );

    let out = m.cli(&["throttle", "bogus"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("200MiB/s"));
    let out = m.cli(&["throttle", "40MiB/s"]);
    assert!(out.status.success(), "{}", common::describe_output(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("budget 40.0 MiB/s"));
    let changed = m
        .events_json()
        .into_iter()
        .find(|e| event_id(e) == Some(3050))
        .expect("event 3050");
    assert_eq!(changed["new"], 40 << 20, "{changed}");
    assert!(changed["old"].is_null(), "{changed}");
    assert!(
        changed["by"]
            .as_str()
            .is_some_and(|b| b.contains("reseedfs throttle"))
    );

    let e: serde_json::Value =
        serde_json::from_slice(&m.cli(&["explain", "--json"]).stdout).expect("explain json");
    assert_eq!(
        e["databases"][0]["not_healthy"],
        serde_json::json!([]),
        "{e}"
    );
    assert_eq!(e["rate"]["source"], "Estimate", "{e}");
    let w = m.cli(&["explain", "--what-if-fail", "Volume1", "--json"]);
    let w: serde_json::Value = serde_json::from_slice(&w.stdout).expect("what-if json");
    assert_eq!(w["single_copy"], serde_json::json!(["db001"]), "{w}");
    assert_eq!(w["databases"][0]["spare"], "Volume3", "{w}");
    let out = m.cli(&["explain", "db009"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no database db009"));

    // A reseed under the budget: its stream shows in status, with priority (db001 runs on
    // one copy meanwhile), and its measured throughput is kept for explain.
    let out = m.cli(&["reseed", "db001", "--to", "Volume2"]);
    assert!(out.status.success(), "{}", common::describe_output(&out));
    let stream = wait_for(Duration::from_secs(20), || {
        let s = m.status_json();
        s["throttle"]["streams"]
            .as_array()
            .and_then(|a| a.first().cloned())
    })
    .expect("the reseed's stream in status");
    assert_eq!(
        (stream["db"].as_str(), stream["weight"].as_u64()),
        (Some("db001"), Some(4))
    );
    assert_eq!(stream["share_bytes_per_s"], 40 << 20, "{stream}");
    let done = wait_for(Duration::from_secs(60), || {
        let s = m.status_json();
        let c = copy_status(&s, "db001", "Volume2")?;
        (c["status"] == "Healthy" && s["throttle"]["streams"] == serde_json::json!([]))
            .then_some(())
    });
    assert!(
        done.is_some(),
        "the reseed did not end: {}",
        m.status_json()
    );
    let measured: serde_json::Value = serde_json::from_slice(
        &std::fs::read(m.bed.state_dir.join("throughput.json")).expect("throughput.json"),
    )
    .expect("json");
    let copy_rate = measured["copy"]["bytes_per_s"].as_f64().expect("copy rate");
    assert!(copy_rate <= 1.1 * f64::from(40u32 << 20), "{measured}");
    let e: serde_json::Value =
        serde_json::from_slice(&m.cli(&["explain", "--json"]).stdout).expect("explain json");
    assert_eq!(e["rate"]["source"], "Measured", "{e}");
    assert_eq!(e["rate"]["budget_bytes_per_s"], 40 << 20, "{e}");

    let config = m.bed.config_path.clone();
    let _bed = m.unmount();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_reseedfs"))
        .args(["explain", "--config"])
        .arg(&config)
        .output()
        .expect("run explain");
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the daemon is not running"));
}

/// The latency backoff end to end: with a target no request can meet, a database writing
/// with fsync during a reseed makes the throttle back off from its budget (32 MiB/s) to
/// its floor (8 MiB/s), and `status` says why (the source volume and its latency).
#[cfg(target_os = "linux")]
#[test]
fn database_latency_makes_a_reseed_back_off_to_the_floor() {
    use common::{Mounted, copy_status, init, require_mount_privileges, wait_for};
    use std::io::Write as _;
    if !require_mount_privileges("database_latency_makes_a_reseed_back_off_to_the_floor") {
        return;
    }
    let bed = Testbed::plain_dirs(3).expect("testbed");
    init(&bed, &["db001"], 2);
    let config = std::fs::read_to_string(&bed.config_path).expect("config");
    let floor = "floor_bytes_per_s = \"16MiB/s\"";
    assert!(
        config.contains(floor),
        "init writes the throttle's defaults: {config}"
    );
    let config = config.replace(
        floor,
        "floor_bytes_per_s = \"8MiB/s\"\nlatency_target = \"1us\"\nmax_bytes_per_s = \"32MiB/s\"",
    );
    std::fs::write(&bed.config_path, config).expect("write config");
    let m = Mounted::mount_only(bed);
    let data: Vec<u8> = (0..48u32 << 20).map(|i| (i % 253) as u8).collect();
    std::fs::write(m.db_files("db001").join("big"), &data).expect("write 48 MiB");

    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let log = m.db_files("db001").join("log");
        let stop = &stop;
        scope.spawn(move || {
            let mut f = std::fs::File::create(log).expect("create the log");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.write_all(&[7u8; 4096]).expect("write");
                f.sync_data().expect("fsync");
            }
        });
        let out = m.cli(&["reseed", "db001", "--to", "Volume2"]);
        assert!(out.status.success(), "{}", common::describe_output(&out));
        let backed_off = wait_for(Duration::from_secs(20), || {
            let s = m.status_json();
            let t = &s["throttle"];
            (t["effective_bytes_per_s"] == 8 << 20 && !t["streams"].as_array()?.is_empty())
                .then(|| t["backoff"].as_str().map(str::to_owned))
                .flatten()
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let why = backed_off.unwrap_or_else(|| panic!("no backoff: {}", m.status_json()));
        assert!(
            why.contains("Volume1") && why.contains("above the target"),
            "{why}"
        );
    });
    let healthy = wait_for(Duration::from_secs(60), || {
        let s = m.status_json();
        (copy_status(&s, "db001", "Volume2")?["status"] == "Healthy").then_some(())
    });
    assert!(
        healthy.is_some(),
        "the reseed never ended: {}",
        m.status_json()
    );
    m.unmount();
}
