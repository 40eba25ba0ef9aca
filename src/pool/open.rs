//! Opening the pool for a mount, in steps: probe every volume, take the newest state
//! (a volume's or the witness's), decide which copies can be trusted, refuse when the
//! survivors may be stale, and assemble the databases over the volumes that answer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::SystemTime;

use parking_lot::Mutex;

use super::state::{PoolState, VolumeMeta, pool_state_path, read_witness, volume_meta_path};
use super::{Pool, PoolVolume, list_volumes};
use crate::config::Config;
use crate::copyset::{Copy, CopyState, Database, Store};
use crate::events::{EventId, EventSink, NewEvent};
use crate::layout;
use crate::volume::Volume;

/// Why a pool cannot be mounted.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The volumes root cannot be listed.
    #[error("cannot list the volumes root {path}: {source}")]
    VolumesRoot {
        /// The volumes root.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// No volume has readable pool state.
    #[error(
        "no volume under {0} holds reseedfs pool state (.reseedfs/pool.json): run `reseedfs init` first, or check that the volumes are mounted"
    )]
    NoState(PathBuf),
    /// The config and the pool disagree on the databases.
    #[error(
        "database {0} is in the config but not in the pool state: the pool was initialised with other databases"
    )]
    UnknownDatabase(String),
    /// A copy that was in sync is gone after an unclean stop: the others may be stale.
    #[error(
        "database {db}: the copy on {lost} was in sync but its volume is missing or dead, and the last pool state (epoch {epoch}) was written while mounted (the daemon did not stop cleanly): the other copies may have missed writes that only that volume took. Bring {lost} back and mount again"
    )]
    Uncertain {
        /// The database.
        db: String,
        /// The volumes of the lost in-sync copies.
        lost: String,
        /// The epoch of the newest state found.
        epoch: u64,
    },
    /// No copy of a database can serve.
    #[error("database {db} has no copy in sync, refusing to mount: {reasons}")]
    NoCopyInSync {
        /// The database.
        db: String,
        /// One reason per copy.
        reasons: String,
    },
}

/// A volume as the probe found it: open and answering, with its metadata and the pool
/// state it holds, or why it is unusable.
type Probed = (String, PathBuf, Result<(Volume, VolumeMeta), String>);

/// A copy found untrusted at mount: database, volume, why.
type Untrusted = (String, String, String);

/// Opens a volume and checks that it answers: reads its metadata, writes and reads back
/// a canary. Returns the volume and the pool state it holds, or why it is unusable.
pub(super) fn probe_volume(
    name: &str,
    path: &Path,
    limits: crate::volume::Limits,
) -> Result<(Volume, VolumeMeta, Option<PoolState>), String> {
    let v = Volume::open_with(name, path, limits)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let meta: VolumeMeta = serde_json::from_slice(
        &v.read_file(&volume_meta_path())
            .map_err(|e| format!("cannot read {}/.reseedfs/volume.json: {e}", path.display()))?,
    )
    .map_err(|e| format!("{}/.reseedfs/volume.json is damaged: {e}", path.display()))?;
    let canary = Path::new(layout::META_DIR).join("probe");
    let stamp = format!("{:?}", SystemTime::now());
    v.write_atomic(&canary, stamp.as_bytes())
        .and_then(|()| v.read_file(&canary))
        .map_err(|e| format!("health probe failed: {e}"))
        .and_then(|back| {
            if back == stamp.as_bytes() {
                Ok(())
            } else {
                Err("health probe read back other bytes".to_owned())
            }
        })?;
    let state = v
        .read_file(&pool_state_path())
        .ok()
        .and_then(|b| serde_json::from_slice::<PoolState>(&b).ok());
    Ok((v, meta, state))
}

impl Pool {
    /// Opens the pool for a mount: probes every volume, takes the newest persisted state,
    /// fails the copies whose volume is missing or dead, and persists the result.
    pub fn open(config: &Config, events: Arc<dyn EventSink>) -> Result<Arc<Pool>, OpenError> {
        let (probed, newest) = probe_all(config)?;
        let mut state = newest.ok_or_else(|| OpenError::NoState(config.volumes_root.clone()))?;
        // The witness on the system disk saw every state change that reached a volume.
        let witness = read_witness(config, &state.pool_id);
        let vouched = witness.as_ref().is_some_and(|w| w.epoch >= state.epoch);
        if let Some(w) = witness.filter(|w| w.epoch > state.epoch) {
            state = w;
        }
        if let Some(db) = config
            .databases
            .iter()
            .find(|db| state.database(db).is_none())
        {
            return Err(OpenError::UnknownDatabase(db.clone()));
        }
        let (volumes, unusable) = adopt_volumes(&state, probed);
        let (failed_now, interrupted) = distrust(&mut state, &volumes, &unusable);
        // After an unclean stop, a copy whose volume is now missing may have taken writes
        // that the others missed (their failure recorded only on the missing volume): the
        // others cannot be trusted alone, unless the witness vouches that no newer state
        // exists. DRBD makes the same choice for an outdated peer.
        if !state.clean && !vouched {
            refuse_uncertain(config, &state, &failed_now)?;
        }
        refuse_without_copy(config, &state, &failed_now)?;
        // A volume holding an in-sync copy is not failed, whatever an older state said.
        let trusted: Vec<String> = state
            .databases
            .iter()
            .flat_map(|d| d.copies.iter())
            .filter(|c| c.state == CopyState::InSync)
            .map(|c| c.volume.clone())
            .collect();
        state.failed_volumes.retain(|v| !trusted.contains(v));
        for (_, vol, _) in &failed_now {
            if !state.failed_volumes.contains(vol) {
                state.failed_volumes.push(vol.clone());
            }
        }
        for (db, vol, why) in interrupted.iter().chain(&failed_now) {
            events.emit(
                NewEvent::new(
                    EventId::CopyFailed,
                    format!("copy {db}\\{vol} is FailedAndSuspended at mount: {why}"),
                )
                .database(db)
                .volume(vol)
                .field("operation", "mount")
                .field("status", "FailedAndSuspended"),
            );
        }
        Pool::assemble(config, state, volumes, events)
    }

    /// The pool over `volumes` with the decided `state`: its databases and copies, the
    /// failed volumes marked, the taps started, and the state persisted (not clean: the
    /// pool is in use from here on).
    fn assemble(
        config: &Config,
        state: PoolState,
        volumes: Vec<PoolVolume>,
        events: Arc<dyn EventSink>,
    ) -> Result<Arc<Pool>, OpenError> {
        let was_clean = state.clean;
        Ok(Arc::new_cyclic(|weak: &std::sync::Weak<Pool>| {
            let store: std::sync::Weak<dyn Store> = weak.clone();
            let databases = state
                .databases
                .iter()
                .filter(|d| config.databases.contains(&d.name))
                .enumerate()
                .map(|(index, d)| {
                    let copies = d
                        .copies
                        .iter()
                        .map(|c| {
                            let volume = volumes
                                .iter()
                                .find(|v| v.name == c.volume)
                                .and_then(PoolVolume::volume);
                            Copy::new(c.volume.clone(), volume, c.state)
                        })
                        .collect();
                    let db = Database::new(d.name.clone(), index, copies, store.clone());
                    db.sums().set_enabled(config.checksums.enabled);
                    Arc::new(db)
                })
                .collect();
            let pool = Pool {
                config: config.clone(),
                volumes,
                databases,
                state: Mutex::new(state),
                events,
                unpersisted: AtomicUsize::new(0),
                stranded: std::sync::atomic::AtomicBool::new(false),
                system: crate::volume::lane::Lane::new("system"),
                was_clean,
            };
            {
                let mut state = pool.state.lock();
                for v in &pool.volumes {
                    if let Some(vol) = v.volume()
                        && state.failed_volumes.contains(&v.name)
                    {
                        vol.mark_failed();
                    }
                }
                state.clean = false;
                pool.start_taps(&mut state);
                pool.persist_locked(&mut state);
            }
            pool
        }))
    }
}

/// Probes every `VolumeN` of the volumes root; returns them and the newest pool state
/// found on a volume that belongs to the pool it names.
fn probe_all(config: &Config) -> Result<(Vec<Probed>, Option<PoolState>), OpenError> {
    let listed = list_volumes(&config.volumes_root).map_err(|source| OpenError::VolumesRoot {
        path: config.volumes_root.clone(),
        source,
    })?;
    let mut probed = Vec::new();
    let mut best: Option<PoolState> = None;
    for (_, name, path) in listed {
        match probe_volume(&name, &path, config.volume.limits()) {
            Ok((v, meta, state)) => {
                if let Some(s) = state
                    && s.pool_id == meta.pool_id
                    && best.as_ref().is_none_or(|b| s.epoch > b.epoch)
                {
                    best = Some(s);
                }
                probed.push((name, path, Ok((v, meta))));
            }
            Err(why) => probed.push((name, path, Err(why))),
        }
    }
    Ok((probed, best))
}

/// The pool's volumes (opened where they answer and belong to this pool), and why each
/// other one is unusable.
fn adopt_volumes(
    state: &PoolState,
    probed: Vec<Probed>,
) -> (Vec<PoolVolume>, BTreeMap<String, String>) {
    let mut volumes = Vec::new();
    let mut unusable = BTreeMap::new();
    for (name, path, res) in probed {
        match res {
            Ok((v, meta)) if meta.pool_id == state.pool_id && meta.name == name => {
                volumes.push(PoolVolume::new(name, path, Some(v)));
            }
            Ok((_, meta)) => {
                unusable.insert(
                    name.clone(),
                    format!(
                        "it belongs to pool {} as {}, not to this pool",
                        meta.pool_id, meta.name
                    ),
                );
                volumes.push(PoolVolume::new(name, path, None));
            }
            Err(why) => {
                unusable.insert(name.clone(), why);
                volumes.push(PoolVolume::new(name, path, None));
            }
        }
    }
    (volumes, unusable)
}

/// Fails, in `state`, the copies that cannot be trusted: in-sync copies whose volume is
/// gone or dead, and copies whose reseed a stop interrupted. Returns both lists.
fn distrust(
    state: &mut PoolState,
    volumes: &[PoolVolume],
    unusable: &BTreeMap<String, String>,
) -> (Vec<Untrusted>, Vec<Untrusted>) {
    let mut failed_now = Vec::new();
    let mut interrupted = Vec::new();
    for db in &mut state.databases {
        for c in &mut db.copies {
            let why = if !volumes.iter().any(|v| v.name == c.volume) {
                Some("its volume is missing".to_owned())
            } else {
                unusable.get(&c.volume).cloned()
            };
            match (why, c.state) {
                (Some(why), CopyState::InSync) => {
                    c.set_failed();
                    failed_now.push((db.name.clone(), c.volume.clone(), why));
                }
                (why, CopyState::Seeding) => {
                    // A reseed interrupted by a stop: the copy is incomplete.
                    c.set_failed();
                    let why = why.unwrap_or_else(|| {
                        "its reseed was interrupted by a stop of the daemon".into()
                    });
                    interrupted.push((db.name.clone(), c.volume.clone(), why));
                }
                _ => {}
            }
        }
    }
    (failed_now, interrupted)
}

/// After an unclean stop without the witness's word: refuses when a database lost an
/// in-sync copy (the others may lack what only it took).
fn refuse_uncertain(
    config: &Config,
    state: &PoolState,
    failed_now: &[Untrusted],
) -> Result<(), OpenError> {
    for db in state
        .databases
        .iter()
        .filter(|d| config.databases.contains(&d.name))
    {
        let lost: Vec<&str> = failed_now
            .iter()
            .filter(|(d, _, _)| d == &db.name)
            .map(|(_, v, _)| v.as_str())
            .collect();
        if !lost.is_empty() {
            return Err(OpenError::Uncertain {
                db: db.name.clone(),
                lost: lost.join(", "),
                epoch: state.epoch,
            });
        }
    }
    Ok(())
}

/// Refuses when a database of the config has no copy in sync, naming every copy and why.
fn refuse_without_copy(
    config: &Config,
    state: &PoolState,
    failed_now: &[Untrusted],
) -> Result<(), OpenError> {
    for db in &state.databases {
        if !config.databases.contains(&db.name)
            || db.copies.iter().any(|c| c.state == CopyState::InSync)
        {
            continue;
        }
        let reasons = db
            .copies
            .iter()
            .map(|c| {
                let why = failed_now
                    .iter()
                    .find(|(d, v, _)| d == &db.name && v == &c.volume)
                    .map(|(_, _, w)| w.clone())
                    .unwrap_or_else(|| "it missed writes after an earlier failure".into());
                format!("copy on {} is {:?}: {why}", c.volume, c.state)
            })
            .collect::<Vec<_>>()
            .join("; ");
        return Err(OpenError::NoCopyInSync {
            db: db.name.clone(),
            reasons,
        });
    }
    Ok(())
}
