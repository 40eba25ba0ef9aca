//! The TOML configuration, its defaults and its validation.
//!
//! ```toml
//! volumes_root = "/srv/ExchVols"      # alias AutoDagVolumesRootFolderPath
//! databases_root = "/srv/ExchDBs"     # alias AutoDagDatabasesRootFolderPath
//! databases = ["db001", "db002"]
//! copies = 2                          # copies of each database, on distinct volumes
//! copies_per_volume = 1               # alias AutoDagDatabaseCopiesPerVolume
//! state_dir = "/run/reseedfs"         # control socket and event log
//! witness_dir = "/var/lib/reseedfs"   # a copy of the pool state on the system disk
//! threads = 8                         # FUSE request threads
//! fuse_transport = "dev_fuse"         # or "uring": FUSE over io_uring (Linux, root knob)
//! metrics = "127.0.0.1:9477"          # Prometheus /metrics; default: none (off)
//! metrics_allow_remote = false        # a metrics address off loopback needs true
//! control_group = "dbadmin"           # may run status, events, explain; default: root only
//! pool_id = "18c2...-1f2a"            # written by `reseedfs init`: whose volumes these are
//!
//! [autoreseed]                        # defaults shown
//! enabled = true
//! dwell = "15m"
//! resume_attempts = 3
//! resume_interval = "5m"
//! spare_attempts = 5
//! spare_interval = "1h"
//! seed_attempts = 5
//! seed_interval = "1h"
//! reset_after = "3d"
//! max_failed_copies = 8
//!
//! [reseed]
//! engine = "auto"                     # or "io_uring", "threads"
//!
//! [events]                            # <state_dir>/events.jsonl, rotated by size
//! max_bytes = "64MiB"                 # rotated before an event would pass this
//! keep = 4                            # events.jsonl.1 .. .4 kept, the oldest deleted
//!
//! [volume]
//! io_timeout = "10s"                  # past it an operation fails its volume (>= 1s)
//! slow_request = "1s"                 # slower operations are counted, not failed
//!
//! [throttle]                          # every reseed, resync and verify of the host
//! max_bytes_per_s = "200MiB/s"        # default: unlimited
//! floor_bytes_per_s = "16MiB/s"       # latency backoff never goes below
//! latency_target = "20ms"             # default: 2x the latency without a rebuild (>= 1 ms)
//! estimate_bytes_per_s = "100MiB/s"   # explain's guess until a reseed was measured
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::names::DbName;

/// Where `init` writes the config and every other command reads it by default.
#[cfg(not(windows))]
pub const DEFAULT_CONFIG_PATH: &str = "/etc/reseedfs/reseedfs.toml";
/// Where `init` writes the config and every other command reads it by default.
#[cfg(windows)]
pub const DEFAULT_CONFIG_PATH: &str = r"C:\ProgramData\reseedfs\reseedfs.toml";

/// The whole configuration of one reseedfs mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Folder holding the volumes `Volume1..N`. No default.
    #[serde(alias = "AutoDagVolumesRootFolderPath")]
    pub volumes_root: PathBuf,
    /// Folder where the databases are mounted. No default.
    #[serde(alias = "AutoDagDatabasesRootFolderPath")]
    pub databases_root: PathBuf,
    /// The databases, by name. No default.
    #[serde(deserialize_with = "database_names")]
    pub databases: Vec<DbName>,
    /// Copies of each database. Default 2.
    #[serde(default = "default_copies")]
    pub copies: u32,
    /// At most this many databases share a volume. Default 1.
    #[serde(
        default = "default_copies_per_volume",
        alias = "AutoDagDatabaseCopiesPerVolume"
    )]
    pub copies_per_volume: u32,
    /// Control socket and event log. Default `/run/reseedfs`.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// A copy of the pool state off the pool, on the system disk: after a crash that also
    /// killed a disk, it tells whether the surviving copies are current. Default
    /// `/var/lib/reseedfs`.
    #[serde(default = "default_witness_dir")]
    pub witness_dir: PathBuf,
    /// Threads serving FUSE requests. Default 8.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// How FUSE requests reach the daemon (Linux): `dev_fuse` (default) or `uring` (FUSE
    /// over io_uring, when root allows it; else `/dev/fuse`, with a warning).
    #[serde(default, skip_serializing_if = "FuseTransport::is_default")]
    pub fuse_transport: FuseTransport,
    /// Where to serve Prometheus metrics (`GET /metrics`), as `127.0.0.1:9477`. Default:
    /// none, no metrics endpoint. `reseedfs mount --metrics ADDR` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<std::net::SocketAddr>,
    /// The metrics endpoint has no authentication: an address off loopback is refused
    /// unless this says so. Default false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub metrics_allow_remote: bool,
    /// A group (name or number) whose members may ask the daemon the read-only requests
    /// (`status`, `events`, `explain`) and read the event log. Default: none, root only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_group: Option<String>,
    /// The identity of the pool, written by `reseedfs init`: only volumes and a witness
    /// carrying it are ever used. Default: none (configs written before it: the pool is
    /// recognised from its volumes and witness, and must be unambiguous).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_id: Option<String>,
    /// The AutoReseed workflow's timings and limits.
    #[serde(default)]
    pub autoreseed: crate::autoreseed::Timings,
    /// How reseeds copy.
    #[serde(default)]
    pub reseed: ReseedConfig,
    /// Block checksums (`[checksums]`).
    #[serde(default)]
    pub checksums: ChecksumConfig,
    /// Scheduled scrubs (`[scrub]`).
    #[serde(default)]
    pub scrub: ScrubConfig,
    /// The log tap: checkpoints and what to do when a copy diverged.
    #[serde(default)]
    pub tap: TapConfig,
    /// The bandwidth budget of rebuilds and its latency backoff.
    #[serde(default)]
    pub throttle: crate::throttle::ThrottleConfig,
    /// When the event log is rotated, and how many rotated files are kept.
    #[serde(default)]
    pub events: crate::events::Rotation,
    /// How long a volume may take to answer.
    #[serde(default)]
    pub volume: VolumeConfig,
}

/// The `[volume]` section: deadlines of every operation on a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VolumeConfig {
    /// Every operation on a volume (data, metadata, fsync, the daemon's own state, log and
    /// tap writes) must answer within this; past it the volume is failed as a dead disk's
    /// would be, and the request completes from the other copies. Default 10s, at least
    /// 1s.
    #[serde(with = "humantime_serde")]
    pub io_timeout: std::time::Duration,
    /// Operations slower than this are counted per volume and shown (`status`, metrics;
    /// an event when a volume stays that slow for a minute). A slow volume is not failed.
    /// Default 1s.
    #[serde(with = "humantime_serde")]
    pub slow_request: std::time::Duration,
}

impl Default for VolumeConfig {
    fn default() -> Self {
        let l = crate::volume::Limits::default();
        VolumeConfig {
            io_timeout: l.io_timeout,
            slow_request: l.slow_request,
        }
    }
}

impl VolumeConfig {
    /// The limits volumes are opened with.
    pub fn limits(&self) -> crate::volume::Limits {
        crate::volume::Limits {
            io_timeout: self.io_timeout,
            slow_request: self.slow_request,
        }
    }
}

/// The `[checksums]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChecksumConfig {
    /// A CRC32C per 4 KiB block of every database file, kept by each copy, written with
    /// the data and checked on every read (a bad block is served and repaired from a copy
    /// whose block matches). Default true. Off, the mount removes the stores (they would
    /// go stale); on again, blocks are checked once written or scrubbed.
    pub enabled: bool,
}

impl Default for ChecksumConfig {
    fn default() -> Self {
        ChecksumConfig { enabled: true }
    }
}

/// The `[scrub]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScrubConfig {
    /// How often every database is scrubbed (`reseedfs scrub`, started by the daemon:
    /// every block of every in-sync copy checked against its checksum and repaired),
    /// paced by the host's rebuild throttle (`[throttle]`), e.g. `"7d"`. The time of the
    /// last scrub survives restarts. Default: off.
    #[serde(with = "humantime_serde::option")]
    pub interval: Option<std::time::Duration>,
}

/// The `[tap]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TapConfig {
    /// When a returning copy cannot be resynced incrementally (event 2058): `reseed` it in
    /// full (its old files kept in quarantine), or wait for the operator (`manual`).
    pub on_divergence: OnDivergence,
    /// How often the activity log starts a new epoch (after syncing the copies): the
    /// longer, the fewer log writes, the more to compare after a crash. Default 5s.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: std::time::Duration,
}

impl Default for TapConfig {
    fn default() -> Self {
        TapConfig {
            on_divergence: OnDivergence::Reseed,
            checkpoint_interval: std::time::Duration::from_secs(5),
        }
    }
}

/// `on_divergence`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDivergence {
    /// Full reseed; the copy's old files go to quarantine.
    Reseed,
    /// The copy stays suspended until an operator reseeds it.
    Manual,
}

/// The `[reseed]` section.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReseedConfig {
    /// `auto` (io_uring when the kernel allows it, else threads), `io_uring` or `threads`.
    pub engine: crate::reseed::engine::EngineChoice,
}

fn default_copies() -> u32 {
    2
}
fn default_copies_per_volume() -> u32 {
    1
}
fn default_state_dir() -> PathBuf {
    #[cfg(windows)]
    return PathBuf::from(r"C:\ProgramData\reseedfs\run");
    #[cfg(not(windows))]
    PathBuf::from("/run/reseedfs")
}
fn default_witness_dir() -> PathBuf {
    #[cfg(windows)]
    return PathBuf::from(r"C:\ProgramData\reseedfs\witness");
    #[cfg(not(windows))]
    PathBuf::from("/var/lib/reseedfs")
}
/// How FUSE requests reach the daemon (`fuse_transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FuseTransport {
    /// `/dev/fuse`: a request thread reads each request and writes its reply (fuser).
    #[default]
    DevFuse,
    /// FUSE over io_uring (Linux 6.14+): per-CPU queues of ring entries, `threads` per
    /// queue, one system call per request. The kernel offers it only while root has set
    /// `/sys/module/fuse/parameters/enable_uring`; without it the mount falls back to
    /// `/dev/fuse` and says so (a warning, and event 3001's `fuse_transport_fallback`).
    Uring,
}

impl FuseTransport {
    /// The setting's value, as written in the config and shown by `status --json`.
    pub fn as_str(self) -> &'static str {
        match self {
            FuseTransport::DevFuse => "dev_fuse",
            FuseTransport::Uring => "uring",
        }
    }

    fn is_default(&self) -> bool {
        *self == FuseTransport::DevFuse
    }
}

impl std::fmt::Display for FuseTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

fn default_threads() -> usize {
    8
}
fn is_false(b: &bool) -> bool {
    !*b
}

/// A configuration that cannot be used; every variant names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error(
        "cannot read config {path}: {source} (create one with `reseedfs init`, or pass --config FILE)"
    )]
    Read {
        /// The config file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("config {path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The parser's message, with the key and line.
        message: String,
    },
    /// A key has a value that cannot work.
    #[error("config {path}: key `{key}`: {message}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// The offending key.
        key: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
}

impl Config {
    /// A config with defaults for everything but the paths and databases.
    pub fn new(volumes_root: PathBuf, databases_root: PathBuf, databases: Vec<DbName>) -> Config {
        Config {
            volumes_root,
            databases_root,
            databases,
            copies: default_copies(),
            copies_per_volume: default_copies_per_volume(),
            state_dir: default_state_dir(),
            witness_dir: default_witness_dir(),
            threads: default_threads(),
            fuse_transport: FuseTransport::default(),
            autoreseed: Default::default(),
            reseed: Default::default(),
            checksums: Default::default(),
            scrub: Default::default(),
            tap: Default::default(),
            throttle: Default::default(),
            events: Default::default(),
            volume: Default::default(),
            metrics: None,
            metrics_allow_remote: false,
            control_group: None,
            pool_id: None,
        }
    }

    /// Reads and validates the config at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };
        if self.databases.is_empty() {
            return Err(invalid("databases", "name at least one database".into()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for db in &self.databases {
            if !seen.insert(db) {
                return Err(invalid(
                    "databases",
                    format!("database {db:?} is listed twice"),
                ));
            }
        }
        let max = crate::copyset::MAX_COPIES as u32;
        if self.copies == 0 || self.copies > max {
            return Err(invalid("copies", format!("must be between 1 and {max}")));
        }
        if self.copies_per_volume == 0 {
            return Err(invalid("copies_per_volume", "must be at least 1".into()));
        }
        let (min, max_keep) = (
            crate::events::Rotation::MIN_BYTES,
            crate::events::Rotation::MAX_KEEP,
        );
        if self.events.max_bytes < min {
            return Err(invalid(
                "events.max_bytes",
                format!("must be at least {} KiB", min >> 10),
            ));
        }
        if self.events.keep > max_keep {
            return Err(invalid(
                "events.keep",
                format!("must be at most {max_keep}"),
            ));
        }
        if self.threads == 0 || self.threads > 256 {
            return Err(invalid("threads", "must be between 1 and 256".into()));
        }
        if self.volume.io_timeout < std::time::Duration::from_secs(1) {
            return Err(invalid(
                "volume.io_timeout",
                "must be at least \"1s\": a healthy disk under load can take hundreds of milliseconds".into(),
            ));
        }
        if self.volume.slow_request.is_zero() || self.volume.slow_request >= self.volume.io_timeout
        {
            return Err(invalid(
                "volume.slow_request",
                "must be above 0 and below volume.io_timeout".into(),
            ));
        }
        for (key, p) in [
            ("volumes_root", &self.volumes_root),
            ("databases_root", &self.databases_root),
            ("state_dir", &self.state_dir),
            ("witness_dir", &self.witness_dir),
        ] {
            if !p.is_absolute() {
                return Err(invalid(
                    key,
                    format!("{} must be an absolute path", p.display()),
                ));
            }
        }
        for (key, p) in [
            ("volumes_root", &self.volumes_root),
            ("databases_root", &self.databases_root),
            ("state_dir", &self.state_dir),
            ("witness_dir", &self.witness_dir),
        ] {
            // `a/zz/../b` is `a/b` only when `zz` is a directory there: spell it out.
            if p.components().any(|c| {
                matches!(
                    c,
                    std::path::Component::ParentDir | std::path::Component::CurDir
                )
            }) {
                return Err(invalid(
                    key,
                    format!("{} must not contain `.` or `..`", p.display()),
                ));
            }
        }
        if self.databases_root.starts_with(&self.volumes_root)
            || self.volumes_root.starts_with(&self.databases_root)
        {
            return Err(invalid(
                "databases_root",
                "the databases root and the volumes root must not contain each other".into(),
            ));
        }
        // The daemon's own state is private to root: never where the databases' users
        // or the volumes reach it.
        for (key, p) in [
            ("state_dir", &self.state_dir),
            ("witness_dir", &self.witness_dir),
        ] {
            for (other, root) in [
                ("databases_root", &self.databases_root),
                ("volumes_root", &self.volumes_root),
            ] {
                if p.starts_with(root) || root.starts_with(p) {
                    return Err(invalid(
                        key,
                        format!(
                            "{} must be outside {other} {} (and not contain it)",
                            p.display(),
                            root.display()
                        ),
                    ));
                }
            }
        }
        if let Some(addr) = self.metrics
            && !addr.ip().is_loopback()
            && !self.metrics_allow_remote
        {
            return Err(invalid(
                "metrics",
                format!(
                    "{addr} is not a loopback address and the metrics endpoint has no authentication: bind it to 127.0.0.1, or set metrics_allow_remote = true to serve it to the network"
                ),
            ));
        }
        if let Some(id) = &self.pool_id
            && !crate::layout::is_pool_id(id)
        {
            return Err(invalid(
                "pool_id",
                format!("{id:?} is not a pool id ([A-Za-z0-9_-], 1 to 64)"),
            ));
        }
        if let Some(g) = &self.control_group
            && (g.is_empty() || g.contains(['\0', '/', ':', '\n']))
        {
            return Err(invalid(
                "control_group",
                format!("{g:?} is not a group name"),
            ));
        }
        Ok(())
    }

    /// The config as TOML text, with a header comment.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string_pretty(self).unwrap_or_default();
        format!("# reseedfs configuration (written by `reseedfs init`)\n{body}")
    }

    /// Path of the control socket.
    pub fn socket_path(&self) -> PathBuf {
        self.state_dir.join("control.sock")
    }

    /// Path of the persisted event log.
    pub fn events_path(&self) -> PathBuf {
        self.state_dir.join("events.jsonl")
    }

    /// Path of the last throughputs measured by the rebuild throttle.
    pub fn throughput_path(&self) -> PathBuf {
        self.state_dir.join("throughput.json")
    }
}

/// Reads `databases`, naming the key in the error of a name that breaks the rule.
fn database_names<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<DbName>, D::Error> {
    Vec::<String>::deserialize(d)?
        .into_iter()
        .map(|n| DbName::new(n).map_err(|e| serde::de::Error::custom(format!("`databases`: {e}"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/reseedfs/test.toml"))
    }

    #[test]
    fn defaults_and_exchange_aliases() {
        let c = parse(
            r#"
            AutoDagVolumesRootFolderPath = "/srv/ExchVols"
            AutoDagDatabasesRootFolderPath = "/srv/ExchDBs"
            AutoDagDatabaseCopiesPerVolume = 4
            databases = ["db001"]
            "#,
        )
        .expect("valid config");
        assert_eq!(c.volumes_root, PathBuf::from("/srv/ExchVols"));
        assert_eq!(c.databases_root, PathBuf::from("/srv/ExchDBs"));
        assert_eq!(c.copies_per_volume, 4);
        assert_eq!(c.copies, 2);
        assert_eq!(c.state_dir, PathBuf::from("/run/reseedfs"));
        let again = parse(&c.to_toml()).expect("round trip");
        assert_eq!(again, c);
    }

    /// Issue 14: the metrics endpoint has no authentication, so an address off loopback
    /// needs `metrics_allow_remote`; the daemon's state stays off the databases and the
    /// volumes; the security keys round-trip.
    #[test]
    fn r14_security_keys() {
        let base = "volumes_root = \"/v\"\ndatabases_root = \"/d\"\ndatabases = [\"db001\"]\n";
        let e = parse(&format!("{base}metrics = \"0.0.0.0:9477\"")).unwrap_err();
        assert!(e.to_string().contains("metrics_allow_remote"), "{e}");
        let e = parse(&format!("{base}metrics = \"[::]:9477\"")).unwrap_err();
        assert!(e.to_string().contains("metrics_allow_remote"), "{e}");
        let c = parse(&format!(
            "{base}metrics = \"0.0.0.0:9477\"\nmetrics_allow_remote = true\ncontrol_group = \"dbadmin\"\npool_id = \"18c2-1f2a\""
        ))
        .expect("allowed");
        assert_eq!(parse(&c.to_toml()).expect("round trip"), c);
        parse(&format!("{base}metrics = \"127.0.0.1:9477\"")).expect("loopback");
        parse(&format!("{base}metrics = \"[::1]:9477\"")).expect("loopback v6");
        for (key, value) in [
            ("state_dir", "/d/state"),
            ("witness_dir", "/v/Volume1/w"),
            ("state_dir", "/srv/../v/state"),
            ("pool_id", "../etc"),
            ("control_group", "a:b"),
        ] {
            let e = parse(&format!("{base}{key} = \"{value}\"")).unwrap_err();
            assert!(e.to_string().contains(key), "{key} = {value}: {e}");
        }
    }

    #[test]
    fn errors_name_file_and_key() {
        let base = "volumes_root = \"/v\"\ndatabases_root = \"/d\"\n";
        let e = parse(&format!("{base}databases = [\"db 1\"]")).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("test.toml") && m.contains("`databases`"), "{m}");
        let e = parse(&format!("{base}databases = [\"a\", \"a\"]")).unwrap_err();
        assert!(e.to_string().contains("listed twice"), "{e}");
        let e = parse(&format!("{base}databases = [\"a\"]\ncopies = \"two\"")).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("test.toml") && m.contains("copies"), "{m}");
        let e = parse(&format!("{base}databases = [\"a\"]\nvolume_root = \"/x\"")).unwrap_err();
        assert!(e.to_string().contains("volume_root"), "{e}");
        let e = parse("volumes_root = \"/v\"\ndatabases_root = \"/v/d\"\ndatabases=[\"a\"]")
            .unwrap_err();
        assert!(e.to_string().contains("contain each other"), "{e}");
    }

    #[test]
    fn event_log_rotation() {
        let base = "volumes_root = \"/v\"\ndatabases_root = \"/d\"\ndatabases = [\"a\"]\n";
        let c = parse(base).expect("defaults");
        assert_eq!((c.events.max_bytes, c.events.keep), (64 << 20, 4));
        let c = parse(&format!("{base}[events]\nmax_bytes = \"1MiB\"\nkeep = 2\n")).expect("set");
        assert_eq!((c.events.max_bytes, c.events.keep), (1 << 20, 2));
        assert_eq!(parse(&c.to_toml()).expect("round trip"), c);
        let c = parse(&format!("{base}[events]\nmax_bytes = 100000\n")).expect("bytes");
        assert_eq!(c.events.max_bytes, 100_000);
        assert_eq!(parse(&c.to_toml()).expect("round trip"), c);
        let e = parse(&format!("{base}[events]\nmax_bytes = \"1KiB\"\n")).unwrap_err();
        assert!(e.to_string().contains("events.max_bytes"), "{e}");
        let e = parse(&format!("{base}[events]\nmax_bytes = \"lots\"\n")).unwrap_err();
        assert!(e.to_string().contains("max_bytes"), "{e}");
        let e = parse(&format!("{base}[events]\nkeeep = 3\n")).unwrap_err();
        assert!(e.to_string().contains("keeep"), "{e}");
    }

    #[test]
    fn metrics_address() {
        let base = "volumes_root = \"/v\"\ndatabases_root = \"/d\"\ndatabases = [\"a\"]\n";
        assert_eq!(parse(base).expect("no metrics key").metrics, None);
        let c = parse(&format!("{base}metrics = \"127.0.0.1:9477\"")).expect("metrics");
        assert_eq!(c.metrics, Some("127.0.0.1:9477".parse().expect("addr")));
        assert_eq!(parse(&c.to_toml()).expect("round trip"), c);
        let e = parse(&format!("{base}metrics = \"localhost\"")).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("test.toml") && m.contains("metrics"), "{m}");
    }
}
