//! A real PostgreSQL on reseedfs: its data directory in `db001.db`, its WAL in `db001.log`,
//! pgbench running, and the active copy's disk dies mid-run. On plain ext4 PostgreSQL
//! PANICs at the first EIO; here no transaction may fail, the balances must match the
//! history, and `pg_amcheck` must find nothing.
//!
//! Needs root, `/dev/fuse`, loop devices and PostgreSQL's server binaries
//! (`/usr/lib/postgresql/<version>/bin`, Debian's `postgresql` package). A missing piece
//! prints `SKIPPED`; under `CI=true` it fails.

#![cfg(target_os = "linux")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{Mounted, copy_is, require_mount_privileges, wait_for};
use reseedfs::testbed::Testbed;

/// The newest PostgreSQL server binaries installed, if any.
fn pg_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists() && bin.join("pgbench").exists())
        .collect();
    versions.sort();
    versions.pop()
}

/// Runs a PostgreSQL program as the `postgres` user.
fn as_postgres(bin: &Path, program: &str, args: &[&str]) -> Output {
    Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin.join(program))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program} as postgres: {e}"))
}

fn check(out: &Output, what: &str, log: &Path) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}\npostgres log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

struct Server<'a> {
    bin: &'a Path,
    data: PathBuf,
    socket_dir: PathBuf,
    port: String,
    log: PathBuf,
}

impl Server<'_> {
    fn conn(&self) -> [&str; 4] {
        [
            "-h",
            self.socket_dir.to_str().expect("utf-8 path"),
            "-p",
            &self.port,
        ]
    }

    fn sql(&self, query: &str) -> String {
        let mut args = self.conn().to_vec();
        args.extend_from_slice(&["-d", "postgres", "-Atc", query]);
        let out = as_postgres(self.bin, "psql", &args);
        check(&out, query, &self.log);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn pg_ctl(&self, args: &[&str]) -> Output {
        let mut all = vec![
            "-D",
            self.data.to_str().expect("utf-8 path"),
            "-l",
            self.log.to_str().expect("utf-8 path"),
        ];
        all.extend_from_slice(args);
        as_postgres(self.bin, "pg_ctl", &all)
    }
}

impl Drop for Server<'_> {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["stop", "-m", "immediate"]);
    }
}

#[test]
fn r2_postgres_pgbench_survives_active_volume_death() {
    const TEST: &str = "r2_postgres_pgbench_survives_active_volume_death";
    if !require_mount_privileges(TEST) {
        return;
    }
    let Some(bin) = pg_bin() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{TEST}: PostgreSQL server binaries are missing (apt-get install postgresql)"
        );
        eprintln!("SKIPPED: {TEST}: no PostgreSQL server under /usr/lib/postgresql");
        return;
    };
    let bed = Testbed::loop_volumes(3, 768 << 20).expect("three loop-mounted ext4 volumes");
    let m = Mounted::start(bed, &["db001"], 2);

    // The postgres user must reach the mount; the folders above it belong to the testbed.
    let mut dir = m.bed.root.clone();
    while dir != Path::new("/") {
        let mode = std::fs::metadata(&dir).expect("stat").permissions();
        use std::os::unix::fs::PermissionsExt as _;
        let mut p = mode.clone();
        p.set_mode(mode.mode() | 0o001);
        std::fs::set_permissions(&dir, p).expect("o+x");
        dir = dir.parent().expect("parent").to_owned();
    }
    let data = m.db_files("db001").join("pgdata");
    let wal = m.db_path("db001").join("db001.log").join("pg_wal");
    let socket_dir = m.bed.root.join("pgsock");
    std::fs::create_dir_all(&socket_dir).expect("socket dir");
    for p in [
        &m.db_files("db001"),
        &m.db_path("db001").join("db001.log"),
        &socket_dir,
    ] {
        let out = Command::new("chown")
            .arg("postgres:postgres")
            .arg(p)
            .output()
            .expect("chown");
        assert!(out.status.success(), "chown {}", p.display());
    }
    let log = socket_dir.join("postgres.log");
    let server = Server {
        bin: &bin,
        data: data.clone(),
        socket_dir: socket_dir.clone(),
        port: (54000 + std::process::id() % 1000).to_string(),
        log: log.clone(),
    };

    let out = as_postgres(
        &bin,
        "initdb",
        &[
            "-D",
            data.to_str().expect("utf-8 path"),
            "--waldir",
            wal.to_str().expect("utf-8 path"),
            "-A",
            "trust",
            "-U",
            "postgres",
        ],
    );
    check(&out, "initdb", &log);
    let opts = format!(
        "-p {} -k {} -c listen_addresses='' -c fsync=on -c full_page_writes=on",
        server.port,
        socket_dir.display()
    );
    check(
        &server.pg_ctl(&["-w", "-o", &opts, "start"]),
        "pg_ctl start",
        &log,
    );

    let conn = server.conn();
    let mut init = conn.to_vec();
    init.extend_from_slice(&["-i", "-s", "4", "-q", "postgres"]);
    check(&as_postgres(&bin, "pgbench", &init), "pgbench -i", &log);

    // pgbench for 10 s; Volume1 (the active copy) dies 3 s in.
    let mut run = conn.to_vec();
    run.extend_from_slice(&["-c", "4", "-j", "2", "-T", "10", "postgres"]);
    let mut args: Vec<String> = vec!["-u".into(), "postgres".into(), "--".into()];
    args.push(bin.join("pgbench").display().to_string());
    args.extend(run.iter().map(|s| s.to_string()));
    let bench = Command::new("runuser")
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start pgbench");
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    m.bed.volumes[0].shutdown().expect("kill Volume1");
    eprintln!("Volume1 shut down {:?} into pgbench", started.elapsed());
    let out = bench.wait_with_output().expect("wait for pgbench");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{report}");
    check(&out, "pgbench run", &log);
    assert!(
        report.contains("number of failed transactions: 0"),
        "pgbench saw failed transactions:\n{report}"
    );
    let done: u64 = report
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|s| s.split('/').next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    assert!(done > 0, "pgbench processed nothing:\n{report}");

    // The failure happened under the database, and it never noticed.
    let status = wait_for(Duration::from_secs(15), || {
        let s = m.status_json();
        copy_is(&s, "db001", "Volume1", "FailedAndSuspended", false).then_some(s)
    })
    .unwrap_or_else(|| panic!("Volume1 not failed: {}", m.status_json()));
    assert!(
        copy_is(&status, "db001", "Volume2", "Mounted", true),
        "{status}"
    );
    let postgres_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !postgres_log.contains("PANIC"),
        "PostgreSQL panicked:\n{postgres_log}"
    );

    // Every committed transaction is there and consistent.
    let balance = server.sql("SELECT sum(abalance) FROM pgbench_accounts");
    let history = server.sql("SELECT coalesce(sum(delta), 0) FROM pgbench_history");
    assert_eq!(
        balance, history,
        "account balances do not match the history"
    );
    let rows: u64 = server
        .sql("SELECT count(*) FROM pgbench_history")
        .parse()
        .expect("count");
    assert!(rows >= done, "{rows} history rows for {done} transactions");
    let mut amcheck = conn.to_vec();
    amcheck.extend_from_slice(&["--install-missing", "--heapallindexed", "-d", "postgres"]);
    check(
        &as_postgres(&bin, "pg_amcheck", &amcheck),
        "pg_amcheck",
        &log,
    );

    check(
        &server.pg_ctl(&["-w", "-m", "fast", "stop"]),
        "pg_ctl stop",
        &log,
    );
    drop(server);
    drop(m.unmount());
}
