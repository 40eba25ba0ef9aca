//! The pool state as it is persisted: the placement of every database's copies, their
//! states as the copy set last decided them, the epoch, and who this volume is. Written
//! atomically to `.reseedfs/pool.json` on every healthy volume and to the witness on the
//! system disk.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::copyset::CopyState;
use crate::layout;
use crate::names::DbName;
use crate::names::VolumeName;
use crate::private::PrivateDir;
use crate::tap::Generation;

/// One copy in the persisted placement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyRecord {
    /// `Volume1`.
    pub volume: VolumeName,
    /// Its state.
    pub state: CopyState,
    /// When it became FailedAndSuspended (the AutoReseed dwell counts from here).
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub failed_at: Option<SystemTime>,
    /// An operator keeps AutoReseed and `reseed` off this copy.
    #[serde(default, skip_serializing_if = "is_false")]
    pub reseed_blocked: bool,
    /// An operator keeps AutoReseed from resuming this copy.
    #[serde(default, skip_serializing_if = "is_false")]
    pub resume_blocked: bool,
    /// An operator suspended the copy (`reseedfs suspend`): AutoReseed leaves it alone
    /// until `reseedfs resume`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub suspended: bool,
    /// While the copy is not in sync: the database generation it left at, which its
    /// dirty map starts from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty_base: Option<u64>,
    /// Why its incremental resync was impossible (event 2058's code): a full reseed of it
    /// keeps its old files in quarantine instead of deleting them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub divergence: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl CopyRecord {
    /// A copy on `volume` in `state`, unblocked.
    pub fn new(volume: &VolumeName, state: CopyState) -> CopyRecord {
        CopyRecord {
            volume: volume.clone(),
            state,
            failed_at: None,
            reseed_blocked: false,
            resume_blocked: false,
            suspended: false,
            dirty_base: None,
            divergence: None,
        }
    }

    pub(super) fn set_failed(&mut self) {
        if self.state != CopyState::FailedAndSuspended {
            self.state = CopyState::FailedAndSuspended;
            self.failed_at = Some(SystemTime::now());
        }
    }
}

/// A copy that left the placement (its volume failed and a spare took its place).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiredCopy {
    /// The volume it was on.
    pub volume: VolumeName,
    /// When it was retired.
    #[serde(with = "humantime_serde")]
    pub at: SystemTime,
    /// The volume that took its place.
    pub replaced_by: VolumeName,
}

/// One database in the persisted placement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbRecord {
    /// `db001`.
    pub name: DbName,
    /// Its copies, the preferred active copy first.
    pub copies: Vec<CopyRecord>,
    /// Copies retired from the placement, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<RetiredCopy>,
    /// The generation the in-sync copies share (see [`crate::tap`]).
    #[serde(default)]
    pub generation: Generation,
}

/// The pool state, written to `.reseedfs/pool.json` on every healthy volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolState {
    /// Identifies the pool; every volume's metadata carries it.
    pub pool_id: String,
    /// Grows with every change; the highest epoch found at mount wins.
    pub epoch: u64,
    /// Volumes known to have failed.
    pub failed_volumes: Vec<VolumeName>,
    /// True when written by a clean unmount: every in-sync copy had every write and no
    /// failure could have gone unrecorded since.
    #[serde(default)]
    pub clean: bool,
    /// Placement and copy states.
    pub databases: Vec<DbRecord>,
}

/// `.reseedfs/volume.json`: who this volume is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMeta {
    /// The pool this volume belongs to.
    pub pool_id: String,
    /// `Volume1`.
    pub name: String,
}

/// A volume (or a witness) that belongs to another pool: never adopted, left alone, shown
/// in `status` (`foreign`) and event 3006.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Foreign {
    /// `Volume4`, or `witness`.
    pub name: String,
    /// Its directory (the witness: its file).
    pub path: PathBuf,
    /// The pool it belongs to.
    pub pool_id: String,
    /// This pool.
    pub expected_pool_id: String,
}

/// Relative path of the volume metadata.
pub fn volume_meta_path() -> PathBuf {
    Path::new(layout::META_DIR).join("volume.json")
}

/// Relative path of the pool state.
pub fn pool_state_path() -> PathBuf {
    Path::new(layout::META_DIR).join("pool.json")
}

/// Where the witness of pool `pool_id` lives.
pub fn witness_path(config: &Config, pool_id: &str) -> PathBuf {
    config.witness_dir.join(format!("{pool_id}.json"))
}

pub use crate::layout::is_pool_id;

/// Writes the witness durably in the witness directory (private to root: see
/// [`crate::private`]), mode 0600.
pub fn write_witness(config: &Config, state: &PoolState) -> std::io::Result<()> {
    if !is_pool_id(&state.pool_id) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("pool id {:?} cannot name a witness file", state.pool_id),
        ));
    }
    let dir = PrivateDir::create(&config.witness_dir, 0o700, None)?;
    dir.write_atomic(
        &format!("{}.json", state.pool_id),
        &serde_json::to_vec_pretty(state)?,
        0o600,
    )
}

/// What the witness directory holds for a pool.
#[derive(Debug)]
pub(super) enum Witness {
    /// No witness.
    Missing,
    /// The witness of the pool.
    Found(PoolState),
    /// A file that should be the witness and cannot be read: why.
    Damaged(String),
    /// A witness others could have written (an older reseedfs made it 0666 in a 0777
    /// directory): never trusted; why.
    Untrusted(String),
    /// The file names another pool: never adopted. Its pool id.
    Foreign(String),
}

/// The witness of pool `pool_id`.
pub(super) fn read_witness(config: &Config, pool_id: &str) -> Witness {
    let path = witness_path(config, pool_id);
    let name = format!("{pool_id}.json");
    let dir = match PrivateDir::open(&config.witness_dir) {
        Ok(Some(dir)) => dir,
        Ok(None) => return Witness::Missing,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Witness::Untrusted(e.to_string());
        }
        Err(e) => return Witness::Damaged(format!("{}: {e}", path.display())),
    };
    match dir.read(&name) {
        Ok(None) => Witness::Missing,
        Ok(Some(bytes)) => match serde_json::from_slice::<PoolState>(&bytes) {
            Ok(s) if s.pool_id == pool_id => Witness::Found(s),
            Ok(s) => Witness::Foreign(s.pool_id),
            Err(e) => Witness::Damaged(format!("{}: {e}", path.display())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            Witness::Untrusted(e.to_string())
        }
        Err(e) => Witness::Damaged(e.to_string()),
    }
}

impl PoolState {
    /// The record of database `db`.
    pub fn database(&self, db: &DbName) -> Option<&DbRecord> {
        self.databases.iter().find(|d| d.name == db)
    }

    /// The record of database `db`, to change it.
    pub fn database_mut(&mut self, db: &DbName) -> Option<&mut DbRecord> {
        self.databases.iter_mut().find(|d| d.name == db)
    }

    /// The databases holding a copy on `volume`.
    pub fn holding(&self, volume: &str) -> impl Iterator<Item = &DbRecord> {
        self.databases
            .iter()
            .filter(move |d| d.copies.iter().any(|c| c.volume == volume))
    }
}
