//! The metrics endpoint and `events --follow` on a real mount, with a disk killed.
//!
//! One database (`db001`) with two copies on loop-mounted ext4 volumes (Volume1 active,
//! Volume2 passive, Volume3 spare), the config key `metrics` set to a free local port. Every
//! scrape is parsed by a strict reading of the Prometheus text format (0.0.4): HELP/TYPE
//! lines, metric and label names, label escapes, float values, families kept together,
//! no duplicate series, histogram buckets cumulative with `+Inf` equal to `_count`. Then a
//! write, the active copy's disk killed (EXT4_IOC_SHUTDOWN), another write: the counters
//! must move (I/O errors of Volume1, bytes mirrored onto Volume2, request counts) and the
//! copy state gauges change; `events --follow --database db001` prints the failure as it
//! happens.
//!
//! Needs root, `/dev/fuse` and loop devices; elsewhere it prints `SKIPPED` (and fails under
//! `CI=true`).

#![cfg(target_os = "linux")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{
    BIN, Mounted, copy_is, event_id, free_local_addr, http_get, require_mount_privileges, wait_for,
};
use reseedfs::config::Config;
use reseedfs::testbed::Testbed;
use serde_json::Value;

const VOLUME_BYTES: u64 = 256 << 20;
const DB: &str = "db001";
/// How long a state change may take to show.
const STATE_TIMEOUT: Duration = Duration::from_secs(15);
/// Bytes written through the mount at each step.
const WRITE_BYTES: usize = 4 << 20;

// ---------------------------------------------------------------------------------------------
// The Prometheus text format, read strictly
// ---------------------------------------------------------------------------------------------

/// One sample line.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition: the type of every family and every sample, in order.
#[derive(Debug)]
struct Scrape {
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Scrape {
    /// The value of the series `name{labels}` (exactly these labels).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    /// Like [`Scrape::get`], panicking with the series when it is missing.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no series {name}{labels:?} in the scrape"))
    }
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with("__")
}

/// A Go-style float: `+Inf`, `-Inf`, `NaN`, or a decimal with an optional exponent.
fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" | "Inf" => return Ok(f64::INFINITY),
        "-Inf" => return Ok(f64::NEG_INFINITY),
        "NaN" => return Ok(f64::NAN),
        _ => {}
    }
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let digits = mantissa.replacen('.', "", 1);
    let mantissa_ok = !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit())
        && mantissa.matches('.').count() <= 1;
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && e.chars().all(|c| c.is_ascii_digit())
    });
    if !(mantissa_ok && exponent_ok) {
        return Err(format!("bad value {s:?}"));
    }
    s.parse().map_err(|e| format!("bad value {s:?}: {e}"))
}

/// Parses `{a="x",b="y\"z"}` from the start of `s`; returns the labels and the rest.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("labels must start with {")?;
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("a label without =")?;
        let name = &rest[..eq];
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        let mut chars = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("a label value must be quoted")?
            .char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape in a label value: {other:?}")),
                },
                Some((_, '\n')) => return Err("raw newline in a label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(format!("label {name} given twice"));
        }
        rest = &rest[eq + 1..][1 + end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(['{', ' ', '\t'])
        .ok_or("a sample without value")?;
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let (labels, rest) = if line[name_end..].starts_with('{') {
        parse_labels(&line[name_end..])?
    } else {
        (BTreeMap::new(), &line[name_end..])
    };
    let mut fields = rest.split([' ', '\t']).filter(|f| !f.is_empty());
    let value = parse_value(fields.next().ok_or("a sample without value")?)?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|e| format!("bad timestamp {ts:?}: {e}"))?;
    }
    if fields.next().is_some() {
        return Err("junk after the timestamp".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// The family a sample belongs to (`x` for `x_bucket` of histogram `x`).
fn family_of<'a>(types: &BTreeMap<String, String>, name: &'a str) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        (types.get(base).map(String::as_str) == Some("histogram")).then_some(base)
    })
}

/// Reads `text` strictly; every violation is an error naming the line.
fn parse_exposition(text: &str) -> Result<Scrape, String> {
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("the exposition must end with a newline".into());
    }
    let mut types = BTreeMap::new();
    let mut helps = BTreeSet::new();
    let mut samples = Vec::new();
    let mut series = BTreeSet::new();
    let mut done_families = BTreeSet::new();
    let mut current: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("HELP"), Some(name), Some(doc)) => {
                    if !is_metric_name(name) || !helps.insert(name.to_owned()) {
                        return Err(at("bad or repeated HELP".into()));
                    }
                    let mut chars = doc.chars();
                    while let Some(c) = chars.next() {
                        if c == '\\' && !matches!(chars.next(), Some('\\' | 'n')) {
                            return Err(at("bad escape in HELP".into()));
                        }
                    }
                }
                (Some("TYPE"), Some(name), Some(kind)) => {
                    let known = ["counter", "gauge", "histogram", "summary", "untyped"];
                    if !is_metric_name(name) || !known.contains(&kind) {
                        return Err(at("bad TYPE".into()));
                    }
                    if types.insert(name.to_owned(), kind.to_owned()).is_some() {
                        return Err(at("TYPE given twice".into()));
                    }
                    if done_families.contains(name) || current.as_deref() == Some(name) {
                        return Err(at("TYPE after the family's samples".into()));
                    }
                }
                (Some("HELP" | "TYPE"), _, _) => return Err(at("incomplete HELP/TYPE".into())),
                _ => {} // a comment
            }
            continue;
        }
        let sample = parse_sample(line).map_err(at)?;
        let family = family_of(&types, &sample.name)
            .ok_or_else(|| at("a sample of a family without TYPE".into()))?
            .to_owned();
        if current.as_deref() != Some(family.as_str()) {
            if done_families.contains(&family) {
                return Err(at(format!("family {family} is split")));
            }
            if let Some(previous) = current.replace(family.clone()) {
                done_families.insert(previous);
            }
        }
        if types[&family] == "counter" && (sample.value.is_nan() || sample.value < 0.0) {
            return Err(at("a negative or NaN counter".into()));
        }
        let key = format!("{}{:?}", sample.name, sample.labels);
        if !series.insert(key) {
            return Err(at("a duplicate series".into()));
        }
        samples.push(sample);
    }
    let scrape = Scrape { types, samples };
    check_histograms(&scrape)?;
    Ok(scrape)
}

/// Each histogram series: `le` increasing and ending at `+Inf`, counts cumulative,
/// `+Inf` equal to `_count`, a `_sum`.
fn check_histograms(scrape: &Scrape) -> Result<(), String> {
    for (family, _) in scrape.types.iter().filter(|(_, t)| *t == "histogram") {
        let mut buckets: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for s in scrape
            .samples
            .iter()
            .filter(|s| s.name == format!("{family}_bucket"))
        {
            let mut labels = s.labels.clone();
            let le = labels
                .remove("le")
                .ok_or_else(|| format!("{family}_bucket without le"))?;
            let le = parse_value(&le)?;
            buckets
                .entry(format!("{labels:?}"))
                .or_default()
                .push((le, s.value));
        }
        if buckets.is_empty() {
            return Err(format!("histogram {family} has no buckets"));
        }
        for (labels, list) in &buckets {
            for pair in list.windows(2) {
                if !(pair[0].0 < pair[1].0 && pair[0].1 <= pair[1].1) {
                    return Err(format!(
                        "{family}{labels}: buckets not cumulative: {list:?}"
                    ));
                }
            }
            let Some(&(last_le, inf)) = list.last() else {
                continue;
            };
            if last_le != f64::INFINITY {
                return Err(format!("{family}{labels}: no +Inf bucket"));
            }
            let find = |suffix: &str| {
                scrape.samples.iter().find(|s| {
                    s.name == format!("{family}{suffix}") && format!("{:?}", s.labels) == *labels
                })
            };
            let count = find("_count").ok_or_else(|| format!("{family}{labels}: no _count"))?;
            if count.value != inf {
                return Err(format!(
                    "{family}{labels}: +Inf bucket {inf} != _count {}",
                    count.value
                ));
            }
            find("_sum").ok_or_else(|| format!("{family}{labels}: no _sum"))?;
        }
    }
    Ok(())
}

#[test]
fn the_strict_reader_refuses_what_prometheus_refuses() {
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"q\\\"\\\\\\n\"} 1e3\n";
    let s = parse_exposition(ok).expect("valid");
    assert_eq!(s.value("a_total", &[("x", "q\"\\\n")]), 1000.0);
    for bad in [
        "a 1\n",                                                   // no TYPE
        "# TYPE a gauge\na{x=\"1\"} one\n",                        // bad value
        "# TYPE a gauge\na{x=1} 1\n",                              // unquoted label
        "# TYPE a gauge\na{x=\"\\t\"} 1\n",                        // bad escape
        "# TYPE a gauge\na 1\na 2\n",                              // duplicate series
        "# TYPE a gauge\n# TYPE b gauge\na 1\nb 1\na{x=\"\"} 1\n", // split family
        "# TYPE a counter\na -1\n",                                // negative counter
        "# TYPE 1a gauge\n",                                       // bad name
        "# TYPE a gauge\na 1",                                     // no final newline
        "# HELP a x\\t\n# TYPE a gauge\na 1\n",                    // bad escape in HELP
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted: {bad:?}");
    }
}

#[test]
fn the_rendered_exposition_reads_back_without_a_mount() {
    let m = reseedfs::metrics::Metrics::new();
    m.observe(reseedfs::metrics::Op::Read, Duration::from_micros(70));
    let status: reseedfs::status::Status = serde_json::from_value(serde_json::json!({
        "epoch": 3,
        "databases": [{"name": "db\"1", "copies": [
            {"name": "x", "volume": "Volume1", "status": "Mounted", "active": true}
        ]}],
        "volumes": [{"name": "Volume1", "state": "InUse", "free_bytes": 1, "total_bytes": 2, "io_errors": 0}]
    }))
    .expect("a status");
    let text = m.render(&status, &[("Volume1".into(), 5)]);
    let scrape = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(
        scrape.value(
            "reseedfs_copy_state",
            &[
                ("database", "db\"1"),
                ("volume", "Volume1"),
                ("state", "Mounted")
            ]
        ),
        1.0
    );
    assert_eq!(
        scrape.value(
            "reseedfs_request_duration_seconds_bucket",
            &[("op", "read"), ("le", "0.0001")]
        ),
        1.0
    );
}

// ---------------------------------------------------------------------------------------------
// On a real mount
// ---------------------------------------------------------------------------------------------

/// GET /metrics, checked and parsed.
fn scrape(addr: SocketAddr) -> Scrape {
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "GET /metrics:\n{body}");
    let scrape = parse_exposition(&body).unwrap_or_else(|e| panic!("{e}\n--- scrape ---\n{body}"));
    for s in &scrape.samples {
        assert!(
            s.name.starts_with("reseedfs_"),
            "{} is not prefixed reseedfs_",
            s.name
        );
    }
    scrape
}

/// Writes [`WRITE_BYTES`] to `name` in the database and fsyncs it.
fn write_file(m: &Mounted, name: &str, fill: u8) {
    let path = m.db_files(DB).join(name);
    let mut f =
        std::fs::File::create(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(&vec![fill; WRITE_BYTES])
        .and_then(|()| f.sync_all())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn copy_state(s: &Scrape, volume: &str, state: &str) -> f64 {
    s.value(
        "reseedfs_copy_state",
        &[("database", DB), ("volume", volume), ("state", state)],
    )
}

fn mirrored(s: &Scrape, volume: &str) -> f64 {
    s.value(
        "reseedfs_volume_mirrored_bytes_total",
        &[("volume", volume)],
    )
}

fn io_errors(s: &Scrape, volume: &str) -> f64 {
    s.value("reseedfs_volume_io_errors_total", &[("volume", volume)])
}

fn requests(s: &Scrape, op: &str) -> f64 {
    s.value("reseedfs_request_duration_seconds_count", &[("op", op)])
}

/// `db001` with two copies on `volumes` loop volumes (the third a spare), the config key
/// `metrics` set to a free local port, mounted: the mount and the endpoint's address.
fn mount_with_metrics(volumes: usize) -> (Mounted, SocketAddr) {
    let bed = Testbed::loop_volumes(volumes, VOLUME_BYTES).expect("build the loop volumes");
    common::init(&bed, &[DB], 2);
    let addr = free_local_addr();
    let mut config = Config::load(&bed.config_path).expect("load the config init wrote");
    config.metrics = Some(addr);
    std::fs::write(&bed.config_path, config.to_toml()).expect("write the metrics key");
    (Mounted::mount_only(bed), addr)
}

/// `reseedfs events --follow --json --database db001`, its lines sent to the receiver.
fn follow_events(m: &Mounted) -> (std::process::Child, mpsc::Receiver<Value>) {
    let mut child = Command::new(BIN)
        .args(["events", "--follow", "--json", "--database", DB, "--config"])
        .arg(&m.bed.config_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn reseedfs events --follow");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let event = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("events --follow printed no JSON ({e}): {line}"));
            if tx.send(event).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

#[test]
fn metrics_move_when_a_copy_fails_and_events_follow_it() {
    if !require_mount_privileges("metrics_move_when_a_copy_fails_and_events_follow_it") {
        return;
    }
    let (m, addr) = mount_with_metrics(3);

    let events_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(m.bed.state_dir.join("events.jsonl"))
            .expect("events.jsonl")
            .permissions(),
    );
    assert_eq!(
        events_mode & 0o022,
        0,
        "events.jsonl is writable by others: {events_mode:o}"
    );
    let (status, _) = http_get(addr, "/");
    assert!(status.starts_with("HTTP/1.1 404"), "GET /: {status}");
    let first = scrape(addr);
    assert_eq!(copy_state(&first, "Volume1", "Mounted"), 1.0);
    assert_eq!(copy_state(&first, "Volume2", "Healthy"), 1.0);
    assert_eq!(copy_state(&first, "Volume1", "FailedAndSuspended"), 0.0);
    assert_eq!(io_errors(&first, "Volume1"), 0.0);
    assert_eq!(
        first.value(
            "reseedfs_volume_state",
            &[("volume", "Volume3"), ("state", "Spare")]
        ),
        1.0
    );
    assert_eq!(
        first.types["reseedfs_request_duration_seconds"],
        "histogram"
    );

    let (mut follower, events) = follow_events(&m);
    write_file(&m, "before.dat", 0xa5);
    let second = scrape(addr);
    for volume in ["Volume1", "Volume2"] {
        let moved = mirrored(&second, volume) - mirrored(&first, volume);
        assert!(
            moved >= WRITE_BYTES as f64,
            "{volume}: {moved} bytes mirrored, want {WRITE_BYTES}"
        );
    }
    assert!(requests(&second, "write") > requests(&first, "write"));
    assert!(requests(&second, "fsync") > requests(&first, "fsync"));
    assert!(requests(&second, "create") > requests(&first, "create"));

    m.bed.volumes[0].shutdown().expect("kill Volume1");
    write_file(&m, "after.dat", 0x5a);
    let failed = wait_for(STATE_TIMEOUT, || {
        let s = m.status_json();
        copy_is(&s, DB, "Volume1", "FailedAndSuspended", false).then_some(())
    });
    assert!(
        failed.is_some(),
        "Volume1's copy never failed: {}",
        m.status_json()
    );
    let third = scrape(addr);
    assert!(
        io_errors(&third, "Volume1") > io_errors(&second, "Volume1"),
        "reseedfs_volume_io_errors_total{{volume=\"Volume1\"}} did not move: {} then {}",
        io_errors(&second, "Volume1"),
        io_errors(&third, "Volume1")
    );
    assert_eq!(copy_state(&third, "Volume1", "FailedAndSuspended"), 1.0);
    assert_eq!(copy_state(&third, "Volume1", "Mounted"), 0.0);
    assert_eq!(copy_state(&third, "Volume2", "Mounted"), 1.0);
    assert_eq!(
        third.value(
            "reseedfs_copy_active",
            &[("database", DB), ("volume", "Volume2")]
        ),
        1.0
    );
    assert_eq!(
        third.value(
            "reseedfs_volume_state",
            &[("volume", "Volume1"), ("state", "Failed")]
        ),
        1.0
    );
    let moved = mirrored(&third, "Volume2") - mirrored(&second, "Volume2");
    assert!(
        moved >= WRITE_BYTES as f64,
        "Volume2: {moved} bytes mirrored after the failure"
    );
    assert!(
        mirrored(&third, "Volume1") >= mirrored(&second, "Volume1"),
        "a counter went down"
    );
    assert!(
        third.value(
            "reseedfs_events_total",
            &[("id", "1109"), ("kind", "copy.failed")]
        ) >= 1.0
    );

    // events --follow printed the failure as it happened, and only db001's events.
    let mut seen = Vec::new();
    let got = wait_for(STATE_TIMEOUT, || {
        while let Ok(e) = events.try_recv() {
            seen.push(e);
        }
        seen.iter().any(|e| event_id(e) == Some(1109)).then_some(())
    });
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(
        got.is_some(),
        "events --follow never printed 1109; it printed {seen:?}"
    );
    assert!(
        seen.iter().all(|e| e["database"] == DB),
        "--database db001 let other events through: {seen:?}"
    );
    // --since: everything of the last hour, nothing from the future.
    let recent = m.cli(&["events", "--json", "--since", "1h"]);
    assert!(String::from_utf8_lossy(&recent.stdout).contains("\"id\":1109"));
    let future = m.cli(&["events", "--json", "--since", "2099-01-01T00:00:00Z"]);
    assert!(future.status.success() && future.stdout.is_empty());
    m.unmount();
}

/// The kernel follows every write of an `O_DSYNC` or `O_SYNC` handle (`O_DIRECT` or not)
/// with an `FSYNC` request before the write returns: the adapter counts on it to make such a write durable
/// on every copy (`without_sync` in `platform/linux/fuse.rs`: the backing files are not
/// opened `O_DSYNC`). Counted here through the daemon's request metrics.
#[test]
fn every_write_of_a_sync_handle_is_followed_by_an_fsync_request() {
    const TEST: &str = "every_write_of_a_sync_handle_is_followed_by_an_fsync_request";
    if !require_mount_privileges(TEST) {
        return;
    }
    let (m, addr) = mount_with_metrics(2);
    const WRITES: usize = 20;
    // An O_DIRECT write needs an aligned buffer: a page-aligned 8 KiB inside this one.
    let mut raw = vec![0u8; 8192 + 4096];
    let at = raw.as_ptr().align_offset(4096);
    for (name, flag) in [
        ("dsync.dat", libc::O_DSYNC),
        ("sync.dat", libc::O_SYNC),
        ("direct_dsync.dat", libc::O_DIRECT | libc::O_DSYNC),
    ] {
        let path = m.db_files(DB).join(name);
        let mut f = std::os::unix::fs::OpenOptionsExt::custom_flags(
            std::fs::OpenOptions::new().create(true).write(true),
            flag,
        )
        .open(&path)
        .unwrap_or_else(|e| panic!("open {} with {flag:#o}: {e}", path.display()));
        let before = scrape(addr);
        for k in 0..WRITES {
            let buf = &mut raw[at..at + 8192];
            buf.fill(k as u8);
            f.write_all(buf)
                .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        }
        let after = scrape(addr);
        let writes = requests(&after, "write") - requests(&before, "write");
        let fsyncs = requests(&after, "fsync") - requests(&before, "fsync");
        assert!(
            writes >= WRITES as f64 && fsyncs >= writes,
            "{name}: {writes} write and {fsyncs} fsync requests for {WRITES} writes: the \
             kernel no longer syncs each write of a sync handle, which the adapter counts on"
        );
        drop(f);
        let back = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        assert_eq!(back.len(), WRITES * 8192, "{name}: size");
        assert!(
            back.chunks(8192)
                .enumerate()
                .all(|(k, c)| c.iter().all(|&b| b == k as u8))
        );
    }
    m.unmount();
}
