//! The monitoring shipped in `platform/linux/monitoring/`, checked by the real tools.
//!
//! - The alerting rules pass `promtool check rules`, and their unit tests
//!   (`reseedfs-alerts.test.yml`) pass `promtool test rules`; every alert has a test.
//! - The Grafana dashboard is well formed: every panel has expressions, each on the
//!   `${datasource}` variable, using only the dashboard's own variables.
//! - On a real mount (three loop-mounted ext4 volumes, `db001` on Volume1 and Volume2,
//!   Volume3 the spare, a rebuild budget of 4 MiB/s, short AutoReseed timings), a real
//!   Prometheus (Debian's `prometheus`, on loopback, scraping every second, loading the
//!   rules) evaluates every panel's expressions through its HTTP API: while the pool is
//!   healthy each panel returns data and no alert is even pending; after Volume1 is killed
//!   (EXT4_IOC_SHUTDOWN), while AutoReseed reseeds the copy onto Volume3, every expression
//!   returns data, and ReseedfsCopyFailed and ReseedfsIoErrors are active for Volume1.
//!   Every `reseedfs_*` name in the rules and the dashboard is a family the daemon exports.
//!
//! Needs `promtool` and `prometheus` (Debian's `prometheus` package; `.ci/run` installs
//! it), and for the mount root, `/dev/fuse` and loop devices. Elsewhere the tests print
//! `SKIPPED` (and fail under `CI=true`).

#![cfg(target_os = "linux")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use common::{Mounted, copy_status, describe_output, free_local_addr, require_mount_privileges};
use reseedfs::config::Config;
use reseedfs::testbed::Testbed;
use serde_json::Value;

const DB: &str = "db001";
const VOLUME_BYTES: u64 = 256 << 20;
/// Written before the disk dies: what the reseed moves (at the 4 MiB/s budget, about 12 s
/// of copying, then as long verifying), so that it still runs while the panels are read.
const COLD_BYTES: usize = 48 << 20;
/// The rebuild budget: slow enough that the reseed is seen running.
const BUDGET_BYTES_PER_S: u64 = 4 << 20;
/// Grafana's `$__rate_interval` for a 1 s scrape interval is 4 scrapes; 15 s leaves room.
const RATE_INTERVAL: &str = "15s";
/// How long Prometheus may take to be ready, and each phase to show its data.
const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(30);
const PHASE_TIMEOUT: Duration = Duration::from_secs(90);

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn rules_path() -> PathBuf {
    repo("platform/linux/monitoring/reseedfs-alerts.yml")
}

fn rule_tests_path() -> PathBuf {
    repo("platform/linux/monitoring/reseedfs-alerts.test.yml")
}

fn dashboard_path() -> PathBuf {
    repo("platform/linux/monitoring/reseedfs-dashboard.json")
}

/// Prints a loud SKIPPED banner, or panics under `CI=true`.
fn skip(test: &str, reason: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: cannot run in CI: {reason}");
    }
    let rule = "=".repeat(70);
    let _ = std::io::stderr().lock().write_all(
        format!("\n{rule}\nSKIPPED: {test}: {reason} (apt-get install prometheus)\n{rule}\n")
            .as_bytes(),
    );
}

/// `/usr/bin/NAME` (or `/bin`, `/usr/local/bin`), if installed.
fn tool(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/usr/local/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

/// The `- alert: NAME` lines of the rules file.
fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_owned())
        .collect()
}

/// Every `reseedfs_...` identifier in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("reseedfs_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |n| start + n);
        if boundary {
            names.insert(text[start..end].to_owned());
        }
        i = end;
    }
    names
}

#[test]
fn alerting_rules_pass_promtool_check_and_their_unit_tests() {
    let test = "alerting_rules_pass_promtool_check_and_their_unit_tests";
    let Some(promtool) = tool("promtool") else {
        return skip(test, "promtool is not installed");
    };
    let check = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(rules_path())
        .output()
        .expect("run promtool check rules");
    let said = describe_output(&check);
    assert!(check.status.success(), "promtool check rules:\n{said}");
    let rules = fs::read_to_string(rules_path()).expect("read the rules");
    let alerts = alert_names(&rules);
    assert!(alerts.len() >= 10, "alerts: {alerts:?}");
    assert!(
        said.contains(&format!("SUCCESS: {} rules found", alerts.len())),
        "promtool found another number of rules than the {} alerts: {said}",
        alerts.len()
    );

    let unit = Command::new(&promtool)
        .args(["test", "rules"])
        .arg(rule_tests_path())
        .output()
        .expect("run promtool test rules");
    assert!(
        unit.status.success(),
        "promtool test rules:\n{}",
        describe_output(&unit)
    );
    // Every alert is tested firing: its name with expected alerts after it.
    let tests = fs::read_to_string(rule_tests_path()).expect("read the rule tests");
    for alert in &alerts {
        let firing = tests
            .split("alertname: ")
            .skip(1)
            .any(|case| case.starts_with(&format!("{alert}\n")) && case.contains("exp_labels:"));
        assert!(firing, "{alert} has no unit test where it fires");
    }
}

/// A panel's title and its expressions (refId, PromQL as written).
type Panel = (String, Vec<(String, String)>);

fn load_dashboard() -> (Value, Vec<Panel>) {
    let text = fs::read_to_string(dashboard_path()).expect("read the dashboard");
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut panels = Vec::new();
    let mut stack: Vec<&Value> = dash["panels"].as_array().expect("panels").iter().collect();
    while let Some(p) = stack.pop() {
        if p["type"] == "row" {
            stack.extend(p["panels"].as_array().into_iter().flatten());
            continue;
        }
        let title = p["title"].as_str().unwrap_or_default().to_owned();
        let exprs = p["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                (
                    t["refId"].as_str().unwrap_or_default().to_owned(),
                    t["expr"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        panels.push((title, exprs));
    }
    panels.sort();
    (dash, panels)
}

/// The dashboard's expression with its variables as Grafana would fill them in with
/// "All" selected.
fn substitute(expr: &str) -> String {
    let out = expr
        .replace("$__rate_interval", RATE_INTERVAL)
        .replace("$__range", "5m")
        .replace("$instance", ".*")
        .replace("$database", ".*")
        .replace("$op", ".*");
    assert!(!out.contains('$'), "a variable is left in {out}");
    out
}

#[test]
fn the_dashboard_is_well_formed() {
    let (dash, panels) = load_dashboard();
    assert_eq!(dash["uid"], "reseedfs");
    let vars: BTreeSet<&str> = dash["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(
        vars,
        BTreeSet::from(["datasource", "instance", "database", "op"])
    );
    let mut ids = BTreeSet::new();
    let mut all = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        assert!(
            ids.insert(p["id"].as_u64().expect("a panel id")),
            "id twice"
        );
        for key in ["h", "w", "x", "y"] {
            assert!(p["gridPos"][key].is_u64(), "{}: gridPos.{key}", p["title"]);
        }
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
            all.push(p);
        }
    }
    assert!(panels.len() >= 12, "{} panels", panels.len());
    for (title, exprs) in &panels {
        assert!(!exprs.is_empty(), "panel {title:?} has no expression");
        for (ref_id, expr) in exprs {
            assert!(
                !ref_id.is_empty() && !expr.is_empty(),
                "{title}: {ref_id:?} {expr:?}"
            );
            substitute(expr);
        }
    }
    // What the issue asks the dashboard to show, each by the series that shows it.
    let text = serde_json::to_string(&dash).expect("dashboard text");
    for series in [
        "reseedfs_copy_state",
        "reseedfs_volume_state",
        "reseedfs_volume_io_errors_total",
        "reseedfs_reseed_done_bytes",
        "reseedfs_reseed_throughput_bytes_per_second",
        "histogram_quantile(0.99",
        "reseedfs_request_duration_seconds_bucket",
        "reseedfs_throttle_budget_bytes_per_second",
    ] {
        assert!(
            text.contains(series),
            "the dashboard does not show {series}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A real Prometheus on a real mount
// ---------------------------------------------------------------------------------------------

/// A Prometheus server on loopback, stopped (and its data removed) on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts `prometheus` scraping `target` every second and evaluating the shipped
    /// rules every second; waits until it is ready.
    fn start(binary: &Path, dir: PathBuf, target: SocketAddr) -> Prometheus {
        fs::create_dir_all(&dir).expect("create the Prometheus dir");
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules}\n\
                 scrape_configs:\n  - job_name: reseedfs\n    static_configs:\n      - targets: [\"{target}\"]\n",
                rules = rules_path().display()
            ),
        )
        .expect("write prometheus.yml");
        let addr = free_local_addr();
        let log = fs::File::create(dir.join("prometheus.log")).expect("create prometheus.log");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let mut p = Prometheus { child, addr, dir };
        let deadline = Instant::now() + PROMETHEUS_TIMEOUT;
        loop {
            if let Ok((200, _)) = get(addr, "/-/ready") {
                return p;
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", p.log());
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready after {PROMETHEUS_TIMEOUT:?}:\n{}",
                p.log()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// `/api/v1/query` at `time`: the result vector, or the error Prometheus gave.
    fn query(&self, expr: &str, time: f64) -> Result<Vec<Value>, String> {
        let path = format!("/api/v1/query?query={}&time={time:.3}", encode(expr));
        let (code, body) = get(self.addr, &path).map_err(|e| format!("GET {path}: {e}"))?;
        let doc: Value = serde_json::from_str(&body).map_err(|e| format!("{code} {e}: {body}"))?;
        if doc["status"] != "success" {
            return Err(format!("{code}: {} {}", doc["errorType"], doc["error"]));
        }
        Ok(doc["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// The alerts Prometheus holds now (pending and firing).
    fn alerts(&self) -> Vec<Value> {
        let (_, body) = get(self.addr, "/api/v1/alerts").expect("GET /api/v1/alerts");
        let doc: Value = serde_json::from_str(&body).expect("alerts JSON");
        doc["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The values of `label` among the series `selector` (what a Grafana variable's
    /// `label_values(selector, label)` lists).
    fn label_values(&self, selector: &str, label: &str) -> Vec<String> {
        let path = format!("/api/v1/label/{label}/values?match[]={}", encode(selector));
        let (_, body) = get(self.addr, &path).expect("GET label values");
        let doc: Value = serde_json::from_str(&body).expect("label values JSON");
        doc["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        if reseedfs::testbed::daemon::wait_child(&mut self.child, Duration::from_secs(10)).is_none()
        {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET path` in HTTP/1.0 (no chunked answer): the status code and the body.
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_owned()))
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Whether a query result holds a sample with a finite value.
fn has_data(result: &[Value]) -> bool {
    result.iter().any(|s| {
        s["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(f64::is_finite)
    })
}

/// Every expression of every panel at one instant: per panel, which refIds returned data.
/// An expression Prometheus refuses fails the test at once.
fn evaluate(prom: &Prometheus, panels: &[Panel], time: f64) -> BTreeMap<String, Vec<String>> {
    let mut answered = BTreeMap::new();
    for (title, exprs) in panels {
        let with_data: &mut Vec<String> = answered.entry(title.clone()).or_default();
        for (ref_id, expr) in exprs {
            let result = prom.query(&substitute(expr), time).unwrap_or_else(|e| {
                panic!("panel {title:?} {ref_id}: Prometheus refused {expr}: {e}")
            });
            if has_data(&result) {
                with_data.push(ref_id.clone());
            }
        }
    }
    answered
}

/// Polls until `done` holds for an evaluation of every panel at one instant, or the
/// timeout passes; returns the last evaluation and whether `done` held.
fn evaluate_until(
    prom: &Prometheus,
    panels: &[Panel],
    done: impl Fn(&BTreeMap<String, Vec<String>>) -> bool,
) -> (BTreeMap<String, Vec<String>>, bool) {
    let deadline = Instant::now() + PHASE_TIMEOUT;
    loop {
        let answered = evaluate(prom, panels, now_s());
        if done(&answered) {
            return (answered, true);
        }
        if Instant::now() >= deadline {
            return (answered, false);
        }
        thread::sleep(Duration::from_millis(500));
    }
}

/// A light load through the mount (64 KiB writes with fsync, reads back), so that the
/// latency and throughput panels have requests to show. Dropping it (a failed assertion
/// too) stops it before the mount goes away.
struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<u64>>,
}

impl Load {
    fn start(dir: PathBuf) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let path = dir.join("load.dat");
            let mut f = fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
            let chunk = vec![0x5au8; 64 << 10];
            let mut rounds = 0u64;
            while !flag.load(Ordering::Relaxed) {
                use std::io::Seek as _;
                let at = (rounds % 64) * chunk.len() as u64;
                f.seek(std::io::SeekFrom::Start(at))
                    .and_then(|_| f.write_all(&chunk))
                    .and_then(|()| f.sync_data())
                    .unwrap_or_else(|e| panic!("load write {rounds}: {e}"));
                let mut back = vec![0u8; chunk.len()];
                f.seek(std::io::SeekFrom::Start(at))
                    .and_then(|_| f.read_exact(&mut back))
                    .unwrap_or_else(|e| panic!("load read {rounds}: {e}"));
                assert!(
                    back == chunk,
                    "load read {rounds}: other bytes than written"
                );
                rounds += 1;
                thread::sleep(Duration::from_millis(20));
            }
            rounds
        });
        Load {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the load; the rounds it made (panics with the load's own panic).
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("the load thread");
        match thread.join() {
            Ok(rounds) => rounds,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn describe(answered: &BTreeMap<String, Vec<String>>, panels: &[Panel]) -> String {
    panels
        .iter()
        .map(|(title, exprs)| {
            let got = &answered[title];
            let lines: Vec<String> = exprs
                .iter()
                .map(|(r, e)| {
                    let mark = if got.contains(r) {
                        "data   "
                    } else {
                        "NO DATA"
                    };
                    format!("    {mark} {r}: {}", substitute(e))
                })
                .collect();
            format!("  {title}\n{}", lines.join("\n"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn active_alerts(prom: &Prometheus) -> Vec<(String, String, String)> {
    prom.alerts()
        .iter()
        .map(|a| {
            let l = &a["labels"];
            let what = l["volume"]
                .as_str()
                .or_else(|| l["database"].as_str())
                .unwrap_or_default();
            (
                l["alertname"].as_str().unwrap_or_default().to_owned(),
                what.to_owned(),
                a["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[test]
fn every_dashboard_panel_returns_data_from_a_real_prometheus_before_and_after_a_disk_dies() {
    let test =
        "every_dashboard_panel_returns_data_from_a_real_prometheus_before_and_after_a_disk_dies";
    if !require_mount_privileges(test) {
        return;
    }
    let Some(prometheus) = tool("prometheus") else {
        return skip(test, "prometheus is not installed");
    };
    let (_, panels) = load_dashboard();

    let bed = Testbed::loop_volumes(3, VOLUME_BYTES).expect("build three loop volumes");
    common::init(&bed, &[DB], 2);
    let metrics_addr = free_local_addr();
    let mut c = Config::load(&bed.config_path).expect("load the config init wrote");
    c.metrics = Some(metrics_addr);
    // Long enough for the failed copy to be scraped and its alert evaluated a few times.
    c.autoreseed.dwell = Duration::from_secs(3);
    c.autoreseed.resume_attempts = 1;
    c.autoreseed.resume_interval = Duration::from_millis(500);
    c.autoreseed.spare_attempts = 2;
    c.autoreseed.spare_interval = Duration::from_secs(1);
    c.throttle.max_bytes_per_s = Some(BUDGET_BYTES_PER_S);
    c.throttle.floor_bytes_per_s = 1 << 20;
    fs::write(&bed.config_path, c.to_toml()).expect("write the config");
    let m = Mounted::mount_only(bed);

    let cold = m.db_files(DB).join("cold.dat");
    let mut f = fs::File::create(&cold).expect("create cold.dat");
    f.write_all(&vec![0xc3; COLD_BYTES])
        .and_then(|()| f.sync_all())
        .expect("write cold.dat");
    drop(f);
    let load = Load::start(m.db_files(DB));

    let prom = Prometheus::start(&prometheus, m.bed.root.join("prometheus"), metrics_addr);

    // Healthy: every panel shows something, and no alert is even pending.
    let (before, ok) = evaluate_until(&prom, &panels, |a| a.values().all(|refs| !refs.is_empty()));
    assert!(
        ok,
        "panels without data on a healthy pool:\n{}\nprometheus.log:\n{}",
        describe(&before, &panels),
        prom.log()
    );
    let quiet = active_alerts(&prom);
    assert!(quiet.is_empty(), "alerts on a healthy pool: {quiet:?}");
    for (selector, label, want) in [
        ("reseedfs_build_info", "instance", metrics_addr.to_string()),
        (
            "reseedfs_copy_state{instance=~\".*\"}",
            "database",
            DB.to_owned(),
        ),
        (
            "reseedfs_request_duration_seconds_count{instance=~\".*\"}",
            "op",
            "write".to_owned(),
        ),
    ] {
        let values = prom.label_values(selector, label);
        assert!(
            values.contains(&want),
            "label_values({selector}, {label}) = {values:?}"
        );
    }

    // Volume1 dies: its copy fails, AutoReseed assigns Volume3 and reseeds it (slowly).
    m.bed.volumes[0].shutdown().expect("kill Volume1");
    let seeding = common::wait_for(PHASE_TIMEOUT, || {
        let s = m.status_json();
        let phase = copy_status(&s, DB, "Volume3")?["seed"]["phase"]
            .as_str()?
            .to_owned();
        matches!(phase.as_str(), "Copying" | "Verifying").then_some(())
    });
    assert!(
        seeding.is_some(),
        "no reseed onto Volume3 after Volume1 died: {}\nmount.log:\n{}",
        m.status_json(),
        m.mount_log()
    );
    let (after, ok) = evaluate_until(&prom, &panels, |a| {
        panels
            .iter()
            .all(|(title, exprs)| a[title].len() == exprs.len())
    });
    assert!(
        ok,
        "expressions without data after Volume1 died, during the reseed:\n{}\nstatus: {}",
        describe(&after, &panels),
        m.status_json()
    );
    // The shipped rules, evaluated by this Prometheus, saw the failure: the failed copy
    // (pending for its `for:`, until the spare took its place), the I/O errors (firing),
    // the single copy during the reseed (pending for the dwell); and nothing that did not
    // happen. ALERTS keeps every pending and firing alert as a series.
    let saw = |selector: &str| {
        let expr = format!("max_over_time(ALERTS{{{selector}}}[5m])");
        let result = prom
            .query(&expr, now_s())
            .unwrap_or_else(|e| panic!("{expr}: {e}"));
        has_data(&result)
    };
    let expected = [
        r#"alertname="ReseedfsCopyFailed",database="db001",volume="Volume1""#,
        r#"alertname="ReseedfsIoErrors",volume="Volume1",alertstate="firing""#,
        r#"alertname="ReseedfsSingleCopy",database="db001""#,
    ];
    let all_seen = common::wait_for(Duration::from_secs(20), || {
        expected.iter().all(|s| saw(s)).then_some(())
    });
    assert!(
        all_seen.is_some(),
        "alerts missing: {:?}; active now: {:?}",
        expected.iter().filter(|s| !saw(s)).collect::<Vec<_>>(),
        active_alerts(&prom)
    );
    let unexpected = r#"alertname=~"ReseedfsRebuildFailed|ReseedfsDatabaseWithoutCopy|ReseedfsStateNotPersisted|ReseedfsEventLogNotPersisted|ReseedfsAutoReseedStopped""#;
    assert!(
        !saw(unexpected),
        "an alert for what did not happen: {:?}",
        active_alerts(&prom)
    );

    // Every series the rules and the dashboard name is a family the daemon exports.
    let (_, scrape) = get(metrics_addr, "/metrics").expect("scrape the daemon");
    let families: BTreeSet<String> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let named = metric_names(&fs::read_to_string(rules_path()).expect("rules"))
        .into_iter()
        .chain(metric_names(
            &fs::read_to_string(dashboard_path()).expect("dashboard"),
        ));
    for name in named {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| families.contains(*f)))
            .unwrap_or(&name);
        assert!(
            families.contains(family),
            "{name} is not exported by the daemon (families: {families:?})"
        );
    }

    let rounds = load.finish();
    assert!(rounds > 0, "the load made no round");
    drop(prom);
    m.unmount();
}
