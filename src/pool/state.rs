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
use crate::tap::Generation;

/// One copy in the persisted placement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyRecord {
    /// `Volume1`.
    pub volume: String,
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
    pub fn new(volume: &str, state: CopyState) -> CopyRecord {
        CopyRecord {
            volume: volume.to_owned(),
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
    pub volume: String,
    /// When it was retired.
    #[serde(with = "humantime_serde")]
    pub at: SystemTime,
    /// The volume that took its place.
    pub replaced_by: String,
}

/// One database in the persisted placement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbRecord {
    /// `db001`.
    pub name: String,
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
    pub failed_volumes: Vec<String>,
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

/// Writes the witness durably (temp file, fsync, rename, directory fsync).
pub fn write_witness(config: &Config, state: &PoolState) -> std::io::Result<()> {
    use std::io::Write;
    let path = witness_path(config, &state.pool_id);
    std::fs::create_dir_all(&config.witness_dir)?;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(state)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(&config.witness_dir)?.sync_all()
}

/// The witness of pool `pool_id`, when it exists and is readable.
pub(super) fn read_witness(config: &Config, pool_id: &str) -> Option<PoolState> {
    let bytes = std::fs::read(witness_path(config, pool_id)).ok()?;
    serde_json::from_slice::<PoolState>(&bytes)
        .ok()
        .filter(|s| s.pool_id == pool_id)
}

impl PoolState {
    /// The record of database `db`.
    pub fn database(&self, db: &str) -> Option<&DbRecord> {
        self.databases.iter().find(|d| d.name == db)
    }

    /// The record of database `db`, to change it.
    pub fn database_mut(&mut self, db: &str) -> Option<&mut DbRecord> {
        self.databases.iter_mut().find(|d| d.name == db)
    }

    /// The databases holding a copy on `volume`.
    pub fn holding(&self, volume: &str) -> impl Iterator<Item = &DbRecord> {
        self.databases
            .iter()
            .filter(move |d| d.copies.iter().any(|c| c.volume == volume))
    }
}
