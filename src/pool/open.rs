//! Opening the pool for a mount, in steps: read who every volume is, know which pool this
//! is, take the newest state (a volume's or the witness's), decide which copies can be
//! trusted, refuse when the survivors may be stale, and assemble the databases over the
//! volumes that answer.
//!
//! The pool has an identity, its pool id (in the config since `init`, in every volume's
//! `volume.json`, in the witness). A volume or a witness with another pool id is never
//! adopted, whatever its epoch: it is left alone (not even probed), named in event 3006
//! and in `status`. A state file that cannot be read counts as "a newer state may be in
//! it": without a witness at least as new as every readable state, the mount refuses and
//! names the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::SystemTime;

use parking_lot::Mutex;

use super::state::{
    Foreign, PoolState, VolumeMeta, Witness, is_pool_id, pool_state_path, read_witness,
    volume_meta_path, witness_path,
};
use super::{Pool, PoolVolume, list_volumes};
use crate::config::Config;
use crate::copyset::{Copy, CopyState, Database, Store};
use crate::events::{EventId, EventSink, NewEvent};
use crate::layout;
use crate::names::DbName;
use crate::names::VolumeName;
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
    /// The config names no pool id and the volumes belong to several pools.
    #[error(
        "the volumes under {root} belong to several pools ({pools}) and the config names none: add `pool_id = \"<the id of this pool>\"` to {config}"
    )]
    Ambiguous {
        /// The volumes root.
        root: PathBuf,
        /// Each pool id and its volumes.
        pools: String,
        /// The config file.
        config: String,
    },
    /// No volume of this pool is left (the others belong to other pools, or none answers).
    #[error("no volume under {root} belongs to pool {pool_id}: {why}")]
    NoVolume {
        /// The volumes root.
        root: PathBuf,
        /// This pool.
        pool_id: String,
        /// What each volume is.
        why: String,
    },
    /// A pool state file cannot be read, and no intact witness is newer than it can be.
    #[error(
        "{files}: {newest}, and it may be newer than that, so the copies cannot be trusted without it. Restore the file from a backup; or, once you know which copies are current, move it aside (`mv FILE FILE.damaged`) and mount again: the newest readable state is then used"
    )]
    DamagedState {
        /// Each damaged file and why.
        files: String,
        /// The newest state that could be read.
        newest: String,
    },
    /// The config and the pool disagree on the databases.
    #[error(
        "database {0} is in the config but not in the pool state: the pool was initialised with other databases"
    )]
    UnknownDatabase(DbName),
    /// A copy that was in sync is gone after an unclean stop: the others may be stale.
    #[error(
        "database {db}: the copy on {lost} was in sync but its volume is missing or dead, and the last pool state (epoch {epoch}) was written while mounted (the daemon did not stop cleanly): the other copies may have missed writes that only that volume took. Bring {lost} back and mount again"
    )]
    Uncertain {
        /// The database.
        db: DbName,
        /// The volumes of the lost in-sync copies.
        lost: String,
        /// The epoch of the newest state found.
        epoch: u64,
    },
    /// No copy of a database can serve.
    #[error("database {db} has no copy in sync, refusing to mount: {reasons}")]
    NoCopyInSync {
        /// The database.
        db: DbName,
        /// One reason per copy.
        reasons: String,
    },
}

/// A file of a volume's `.reseedfs/`, read.
#[derive(Debug)]
enum Read<T> {
    /// Not there.
    Missing,
    /// There, and it cannot be read or parsed: why.
    Damaged(String),
    /// Read.
    Found(T),
}

/// A `VolumeN` of the volumes root as first read: nothing written yet.
struct Probe {
    name: VolumeName,
    path: PathBuf,
    /// The volume opened, or why not.
    volume: Result<Volume, String>,
    meta: Read<VolumeMeta>,
    state: Read<PoolState>,
}

/// A copy found untrusted at mount: database, volume, why.
type Untrusted = (DbName, VolumeName, String);

/// Reads the JSON file `rel` of volume `v` (at `root`). A media error is no damage of the
/// file: the volume is failing, which the health probe finds.
fn read_json<T: serde::de::DeserializeOwned>(
    v: &Volume,
    root: &Path,
    rel: &Path,
) -> Result<Read<T>, String> {
    let shown = root.join(rel);
    match v.read_file(rel) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Read::Missing),
        Err(e) if crate::volume::is_media_error(&e) => {
            Err(format!("cannot read {}: {e}", shown.display()))
        }
        Err(e) => Ok(Read::Damaged(format!("{}: {e}", shown.display()))),
        Ok(bytes) => Ok(match serde_json::from_slice(&bytes) {
            Ok(t) => Read::Found(t),
            Err(e) => Read::Damaged(format!("{} is damaged: {e}", shown.display())),
        }),
    }
}

/// Opens the volume `name` at `path` and reads who it is and the pool state it holds,
/// writing nothing.
fn read_volume(name: &VolumeName, path: &Path, limits: crate::volume::Limits) -> Probe {
    let mut probe = Probe {
        name: name.clone(),
        path: path.to_owned(),
        volume: Err(String::new()),
        meta: Read::Missing,
        state: Read::Missing,
    };
    let v = match Volume::open_with(name, path, limits) {
        Ok(v) => v,
        Err(e) => {
            probe.volume = Err(format!("cannot open {}: {e}", path.display()));
            return probe;
        }
    };
    let read = read_json::<VolumeMeta>(&v, path, &volume_meta_path()).and_then(|meta| {
        let state = read_json::<PoolState>(&v, path, &pool_state_path())?;
        Ok((meta, state))
    });
    match read {
        Ok((meta, state)) => {
            probe.meta = meta;
            probe.state = state;
            probe.volume = Ok(v);
        }
        Err(why) => probe.volume = Err(why),
    }
    probe
}

/// Writes, fsyncs and reads back a canary under `.reseedfs/`: the volume answers.
fn health_check(v: &Volume) -> Result<(), String> {
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
        })
}

/// Opens volume `name` of pool `pool_id` and checks that it answers: reads its metadata
/// (it must be `name` of this pool: another pool's volume is not touched), then writes
/// and reads back a canary.
pub(super) fn probe_volume(
    name: &VolumeName,
    path: &Path,
    pool_id: &str,
    limits: crate::volume::Limits,
) -> Result<Volume, String> {
    let probe = read_volume(name, path, limits);
    let v = probe.volume?;
    match probe.meta {
        Read::Missing => Err(format!(
            "{} has no .reseedfs/volume.json: it is not a volume of a reseedfs pool",
            path.display()
        )),
        Read::Damaged(why) => Err(why),
        Read::Found(meta) if meta.pool_id != pool_id || meta.name != *name => Err(format!(
            "{} now holds volume {} of pool {}, not {name} of this pool ({pool_id}): left alone",
            path.display(),
            meta.name,
            meta.pool_id
        )),
        Read::Found(_) => {
            health_check(&v)?;
            Ok(v)
        }
    }
}

impl Pool {
    /// Opens the pool for a mount: probes every volume, takes the newest persisted state,
    /// fails the copies whose volume is missing or dead, and persists the result.
    pub fn open(config: &Config, events: Arc<dyn EventSink>) -> Result<Arc<Pool>, OpenError> {
        let listed =
            list_volumes(&config.volumes_root).map_err(|source| OpenError::VolumesRoot {
                path: config.volumes_root.clone(),
                source,
            })?;
        let probes: Vec<Probe> = listed
            .iter()
            .map(|(_, name, path)| read_volume(name, path, config.volume.limits()))
            .collect();
        let pool_id = identify(config, &probes)?;
        let (mut state, vouched, foreign) = newest_state(config, &pool_id, &probes, &*events)?;
        for f in &foreign {
            events.emit(
                NewEvent::new(
                    EventId::ForeignVolume,
                    format!(
                        "{} ({}) belongs to pool {}, not to this pool {}: never adopted, left alone",
                        f.name,
                        f.path.display(),
                        f.pool_id,
                        f.expected_pool_id
                    ),
                )
                .volume(&f.name)
                .field("path", f.path.display().to_string())
                .field("pool_id", f.pool_id.clone())
                .field("expected_pool_id", f.expected_pool_id.clone()),
            );
        }
        let mut probed = probe_ours(&state, probes);
        // What each volume is, the strangers included, for a refusal.
        let why = probed
            .iter()
            .map(|(name, _, r)| match r {
                Ok(_) => format!("{name}: answers"),
                Err(why) => format!("{name}: {why}"),
            })
            .collect::<Vec<_>>()
            .join("; ");
        // Another pool's volume in a slot this pool never used is not one of its volumes
        // (not even a failed one); in a slot of its copies, it explains why they are gone.
        probed.retain(|(name, _, _)| {
            !foreign.iter().any(|f| &f.name == name)
                || state
                    .databases
                    .iter()
                    .any(|d| d.copies.iter().any(|c| c.volume == *name))
        });
        if !probed.iter().any(|(_, _, r)| r.is_ok()) {
            return Err(OpenError::NoVolume {
                root: config.volumes_root.clone(),
                pool_id,
                why: if why.is_empty() {
                    "there is no VolumeN".into()
                } else {
                    why
                },
            });
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
        let trusted: Vec<VolumeName> = state
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
        Pool::assemble(config, state, volumes, foreign, events)
    }

    /// The pool over `volumes` with the decided `state`: its databases and copies, the
    /// failed volumes marked, the taps started, and the state persisted (not clean: the
    /// pool is in use from here on).
    fn assemble(
        config: &Config,
        state: PoolState,
        volumes: Vec<PoolVolume>,
        foreign: Vec<Foreign>,
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
                    let db = Database::new(d.name.clone(), index, copies, store.clone())
                        .with_checksums(config.checksums.enabled);
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
                foreign,
                me: weak.clone(),
            };
            for v in &pool.volumes {
                if let Some(vol) = v.volume() {
                    pool.keep(&vol);
                }
            }
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

/// The id of this pool: the config's; for a config written before `init` recorded it, the
/// one pool the volumes belong to (or the one of those with a witness).
fn identify(config: &Config, probes: &[Probe]) -> Result<String, OpenError> {
    if let Some(id) = &config.pool_id {
        return Ok(id.clone());
    }
    let mut pools: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for p in probes {
        if let Read::Found(meta) = &p.meta
            && is_pool_id(&meta.pool_id)
        {
            pools.entry(&meta.pool_id).or_default().push(&p.name);
        }
    }
    let ids: Vec<&str> = pools.keys().copied().collect();
    match ids.as_slice() {
        [] => Err(OpenError::NoState(config.volumes_root.clone())),
        [one] => Ok((*one).to_owned()),
        many => {
            let witnessed: Vec<&&str> = many
                .iter()
                .filter(|id| matches!(read_witness(config, id), Witness::Found(_)))
                .collect();
            if let [one] = witnessed.as_slice() {
                return Ok((**one).to_owned());
            }
            Err(OpenError::Ambiguous {
                root: config.volumes_root.clone(),
                pools: pools
                    .iter()
                    .map(|(id, names)| format!("{id} on {}", names.join(", ")))
                    .collect::<Vec<_>>()
                    .join("; "),
                config: "the config".into(),
            })
        }
    }
}

/// The newest state of pool `pool_id` (its volumes' and its witness's), whether the witness
/// vouches that nothing is newer, and what belongs to other pools. Refuses when a state
/// file that cannot be read may be newer than every one that can.
fn newest_state(
    config: &Config,
    pool_id: &str,
    probes: &[Probe],
    events: &dyn EventSink,
) -> Result<(PoolState, bool, Vec<Foreign>), OpenError> {
    let mut foreign = Vec::new();
    let mut damaged = Vec::new();
    let mut best: Option<(PoolState, String)> = None;
    for p in probes {
        let ours = match &p.meta {
            Read::Found(meta) if meta.pool_id != pool_id => {
                foreign.push(Foreign {
                    name: p.name.to_string(),
                    path: p.path.clone(),
                    pool_id: meta.pool_id.clone(),
                    expected_pool_id: pool_id.to_owned(),
                });
                continue;
            }
            Read::Found(_) => true,
            Read::Damaged(_) => false,
            Read::Missing => continue,
        };
        match &p.state {
            Read::Found(s) if s.pool_id == pool_id => {
                if best.as_ref().is_none_or(|(b, _)| s.epoch > b.epoch) {
                    best = Some((s.clone(), p.name.to_string()));
                }
            }
            Read::Found(s) if ours => damaged.push(format!(
                "{} names pool {}, not this pool {pool_id}",
                p.path.join(pool_state_path()).display(),
                s.pool_id
            )),
            Read::Found(_) | Read::Missing => {}
            // A volume whose identity is damaged too may be ours: its state counts.
            Read::Damaged(why) => damaged.push(why.clone()),
        }
    }
    // The witness on the system disk saw every state change that reached a volume.
    let mut vouched = false;
    match read_witness(config, pool_id) {
        Witness::Found(w) => {
            vouched = best.as_ref().is_none_or(|(b, _)| w.epoch >= b.epoch);
            if best.as_ref().is_none_or(|(b, _)| w.epoch > b.epoch) {
                best = Some((w, "the witness".into()));
            }
        }
        Witness::Missing => {}
        Witness::Damaged(why) => damaged.push(why),
        Witness::Untrusted(why) => events.emit(NewEvent::new(
            EventId::StateDamaged,
            format!(
                "the witness is not trusted ({why}): it is rewritten, private to root, at the next state change"
            ),
        )),
        Witness::Foreign(other) => foreign.push(Foreign {
            name: "witness".into(),
            path: witness_path(config, pool_id),
            pool_id: other,
            expected_pool_id: pool_id.to_owned(),
        }),
    }
    for why in &damaged {
        events.emit(
            NewEvent::new(
                EventId::StateDamaged,
                if vouched {
                    format!("pool state {why}; the witness is newer, and the file is rewritten with the next state")
                } else {
                    format!("pool state {why}; no intact witness vouches for a newer state")
                },
            )
            .field("file", why.clone()),
        );
    }
    if !damaged.is_empty() && !vouched {
        return Err(OpenError::DamagedState {
            files: damaged.join("; "),
            newest: match &best {
                Some((s, from)) => format!(
                    "the newest readable pool state is epoch {} (on {from})",
                    s.epoch
                ),
                None => "no pool state can be read".into(),
            },
        });
    }
    match best {
        Some((state, _)) => Ok((state, vouched, foreign)),
        None => Err(OpenError::NoState(config.volumes_root.clone())),
    }
}

/// The volumes of this pool (their identity read, then a health probe), and why each
/// other one is unusable. Another pool's volume is not probed: nothing is written to it.
fn probe_ours(state: &PoolState, probes: Vec<Probe>) -> Vec<Probed> {
    probes
        .into_iter()
        .map(|p| {
            let result = p.volume.and_then(|v| match p.meta {
                Read::Found(meta) if meta.pool_id == state.pool_id && meta.name == p.name => {
                    health_check(&v).map(|()| (v, meta))
                }
                Read::Found(meta) if meta.pool_id == state.pool_id => Err(format!(
                    "it is {} of this pool, not {}: put the disk back in its place",
                    meta.name, p.name
                )),
                Read::Found(meta) => Err(format!(
                    "it belongs to pool {} as {}, not to this pool {}: left alone",
                    meta.pool_id, meta.name, state.pool_id
                )),
                Read::Damaged(why) => Err(why),
                Read::Missing => Err(format!(
                    "{} has no .reseedfs/volume.json: it is not a volume of a reseedfs pool",
                    p.path.display()
                )),
            });
            (p.name, p.path, result)
        })
        .collect()
}

/// A volume as the probe found it: open and answering with its metadata, or why it is
/// unusable.
type Probed = (VolumeName, PathBuf, Result<(Volume, VolumeMeta), String>);

/// The pool's volumes (opened where they answer and belong to this pool), and why each
/// other one is unusable.
fn adopt_volumes(
    state: &PoolState,
    probed: Vec<Probed>,
) -> (Vec<PoolVolume>, BTreeMap<VolumeName, String>) {
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
    unusable: &BTreeMap<VolumeName, String>,
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
