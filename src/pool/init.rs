//! `reseedfs init`: check the pool, place the copies, write the volume metadata, the
//! pool state and the config. Everything is checked before anything is written, so a
//! refused init changes nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::{
    CopyRecord, DbRecord, PoolState, VolumeMeta, list_volumes, pool_state_path, volume_meta_path,
};
use crate::config::Config;
use crate::copyset::CopyState;
use crate::layout;
use crate::names::DbName;
use crate::names::VolumeName;
use crate::volume::Volume;

/// What `init` did.
#[derive(Debug)]
pub struct InitReport {
    /// The placement: database -> volumes of its copies.
    pub placement: Vec<(DbName, Vec<VolumeName>)>,
    /// Volumes left without copies.
    pub spares: Vec<VolumeName>,
    /// Warnings the operator must read (volumes sharing a filesystem, ...).
    pub warnings: Vec<String>,
}

fn new_pool_id() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{:x}-{:x}", t.as_nanos(), std::process::id())
}

/// Why `init` refused: the config it would write is unusable (exit code 3), or it could
/// not do its work (1).
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The config (names, copies, paths) is unusable.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The volumes cannot take this pool (missing, already in a pool, too few, ...).
    #[error("{0:#}")]
    Refused(anyhow::Error),
}

/// Checks the paths `init` is given, as the filesystem resolves them: the volumes root
/// exists; no path goes through `..`; the daemon's state directories are outside the
/// databases root and the volumes (they would be reachable by the databases' users, or
/// lost with a disk).
fn check_paths(config: &Config, config_path: &Path) -> anyhow::Result<()> {
    let resolved = |p: &Path| -> PathBuf {
        // The longest existing prefix, resolved; the rest as written.
        let mut existing = p;
        let mut rest = Vec::new();
        while std::fs::symlink_metadata(existing).is_err() {
            match (existing.parent(), existing.file_name()) {
                (Some(parent), Some(name)) => {
                    rest.push(name.to_owned());
                    existing = parent;
                }
                _ => break,
            }
        }
        let mut out = std::fs::canonicalize(existing).unwrap_or_else(|_| existing.to_owned());
        out.extend(rest.iter().rev());
        out
    };
    let volumes = resolved(&config.volumes_root);
    let databases = resolved(&config.databases_root);
    for (key, p) in [
        ("state_dir", &config.state_dir),
        ("witness_dir", &config.witness_dir),
        ("config", &config_path.to_path_buf()),
    ] {
        let r = resolved(p);
        for (other, root) in [("databases root", &databases), ("volumes root", &volumes)] {
            if r.starts_with(root) || (key != "config" && root.starts_with(&r)) {
                bail!(
                    "{key} {} is inside the {other} {} (resolved: {}): the daemon's state must stay private to root and off the volumes; choose another path",
                    p.display(),
                    root.display(),
                    r.display()
                );
            }
        }
    }
    if databases.starts_with(&volumes) || volumes.starts_with(&databases) {
        bail!(
            "the databases root {} and the volumes root {} contain each other once resolved ({} and {})",
            config.databases_root.display(),
            config.volumes_root.display(),
            databases.display(),
            volumes.display()
        );
    }
    Ok(())
}

/// Initialises the pool described by `config` and writes the config, with the new pool's
/// id, to `config_path`.
pub fn init(config: &Config, config_path: &Path) -> anyhow::Result<InitReport> {
    let (volumes, warnings, placement) =
        plan(config, config_path).map_err(|e| match e.downcast::<InitError>() {
            Ok(e) => anyhow::Error::new(e),
            Err(e) => anyhow::Error::new(InitError::Refused(e)),
        })?;
    write(config, config_path, volumes, warnings, placement)
}

/// A volume found by `init`: name, directory, device.
type Found = (VolumeName, PathBuf, u64);

/// Every check of `init`, before anything is written: the volumes, the warnings, and the
/// placement (database, indexes of its volumes).
#[allow(clippy::type_complexity)]
fn plan(
    config: &Config,
    config_path: &Path,
) -> anyhow::Result<(Vec<Found>, Vec<String>, Vec<(DbName, Vec<usize>)>)> {
    config.validate(config_path).map_err(InitError::Config)?;
    check_paths(config, config_path)?;
    let root = &config.volumes_root;
    let meta = std::fs::metadata(root).with_context(|| {
        format!(
            "volumes root {} does not exist: create it and mount one disk per VolumeN folder under it",
            root.display()
        )
    })?;
    if !meta.is_dir() {
        bail!("volumes root {} is not a directory", root.display());
    }
    let mut volumes = Vec::new();
    for entry in std::fs::read_dir(root).with_context(|| format!("list {}", root.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("Volume") && layout::volume_number(&name).is_none() {
            bail!("{}", layout::NameError::Volume(name));
        }
    }
    for (_, name, path) in list_volumes(root).with_context(|| format!("list {}", root.display()))? {
        let m = std::fs::metadata(&path).with_context(|| format!("stat {}", path.display()))?;
        if !m.is_dir() {
            bail!(
                "volume {} is not a directory: every VolumeN under {} must be a directory (the mount point of one disk)",
                path.display(),
                root.display()
            );
        }
        if path.join(layout::META_DIR).join("pool.json").exists() {
            bail!(
                "volume {} already belongs to a reseedfs pool ({}): refusing to initialise over it",
                path.display(),
                path.join(layout::META_DIR).join("pool.json").display()
            );
        }
        let fs_id = crate::volume::filesystem_id(&path, &m)
            .with_context(|| format!("identify the filesystem of {}", path.display()))?;
        volumes.push((name, path, fs_id));
    }
    if volumes.is_empty() {
        bail!(
            "no volumes under {}: create Volume1, Volume2, ... (one mounted disk each)",
            root.display()
        );
    }
    let mut warnings = Vec::new();
    let mut by_dev: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
    for (name, _, dev) in &volumes {
        by_dev.entry(*dev).or_default().push(name);
    }
    for names in by_dev.values().filter(|n| n.len() > 1) {
        warnings.push(format!(
            "volumes {} are on the same filesystem: one disk failure takes all their copies, which defeats redundancy",
            names.join(", ")
        ));
    }
    let copies = config.copies as usize;
    if copies > volumes.len() {
        bail!(
            "{copies} copies per database need {copies} distinct volumes, but {} has only {}",
            root.display(),
            volumes.len()
        );
    }
    // Place copies: each database on `copies` distinct volumes, volumes filled in order,
    // at most `copies_per_volume` databases per volume.
    let mut load = vec![0u32; volumes.len()];
    let mut placement = Vec::new();
    for db in &config.databases {
        let mut chosen = Vec::new();
        for (i, l) in load.iter_mut().enumerate() {
            if chosen.len() == copies {
                break;
            }
            if *l < config.copies_per_volume {
                *l += 1;
                chosen.push(i);
            }
        }
        if chosen.len() < copies {
            bail!(
                "not enough room to place {copies} copies of {db}: {} volumes with {} database(s) each are full; add volumes or raise copies_per_volume",
                volumes.len(),
                config.copies_per_volume
            );
        }
        for &i in &chosen {
            for folder in layout::db_folders(db) {
                let p = volumes[i].1.join(&folder);
                if p.exists() {
                    bail!(
                        "{} already exists: move it away or choose another database name (init never adopts existing files)",
                        p.display()
                    );
                }
            }
        }
        placement.push((db.clone(), chosen));
    }
    if config.databases_root.exists() && !config.databases_root.is_dir() {
        bail!(
            "databases root {} is not a directory",
            config.databases_root.display()
        );
    }

    Ok((volumes, warnings, placement))
}

/// Writes what `plan` decided.
fn write(
    config: &Config,
    config_path: &Path,
    volumes: Vec<Found>,
    warnings: Vec<String>,
    placement: Vec<(DbName, Vec<usize>)>,
) -> anyhow::Result<InitReport> {
    let pool_id = new_pool_id();
    let state = PoolState {
        pool_id: pool_id.clone(),
        epoch: 1,
        failed_volumes: Vec::new(),
        clean: true,
        databases: placement
            .iter()
            .map(|(db, chosen)| DbRecord {
                name: db.clone(),
                copies: chosen
                    .iter()
                    .map(|&i| CopyRecord::new(&volumes[i].0, CopyState::InSync))
                    .collect(),
                retired: Vec::new(),
                generation: crate::tap::Generation {
                    current: crate::tap::new_generation_id(),
                    history: Vec::new(),
                },
            })
            .collect(),
    };
    let state_bytes = serde_json::to_vec_pretty(&state)?;
    for (i, (name, path, _)) in volumes.iter().enumerate() {
        let meta_dir = path.join(layout::META_DIR);
        // Private to root, whatever the umask (on Windows: the volume's ACL).
        let builder = &mut std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(builder, 0o700);
        match builder.create(&meta_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(e).with_context(|| format!("create {}", meta_dir.display()));
            }
            _ => {}
        }
        #[cfg(unix)]
        std::fs::set_permissions(
            &meta_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .with_context(|| format!("chmod {}", meta_dir.display()))?;
        let v =
            Volume::open(name, path).with_context(|| format!("open volume {}", path.display()))?;
        let meta = VolumeMeta {
            pool_id: pool_id.clone(),
            name: name.to_string(),
        };
        v.write_atomic(&volume_meta_path(), &serde_json::to_vec_pretty(&meta)?)
            .with_context(|| format!("write {}", meta_dir.join("volume.json").display()))?;
        for (db, chosen) in &placement {
            if chosen.contains(&i) {
                for folder in layout::db_folders(db) {
                    let p = path.join(folder);
                    std::fs::create_dir(&p).with_context(|| format!("create {}", p.display()))?;
                }
            }
        }
        v.write_atomic(&pool_state_path(), &state_bytes)
            .with_context(|| format!("write {}", meta_dir.join("pool.json").display()))?;
    }
    super::write_witness(config, &state).with_context(|| {
        format!(
            "write the pool state witness {}",
            super::witness_path(config, &pool_id).display()
        )
    })?;
    std::fs::create_dir_all(&config.databases_root)
        .with_context(|| format!("create {}", config.databases_root.display()))?;
    if let Some(dir) = config_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let mut written = config.clone();
    written.pool_id = Some(pool_id.clone());
    write_config(config_path, &written.to_toml())
        .with_context(|| format!("write config {}", config_path.display()))?;
    let placement: Vec<(DbName, Vec<VolumeName>)> = placement
        .into_iter()
        .map(|(db, chosen)| (db, chosen.iter().map(|&i| volumes[i].0.clone()).collect()))
        .collect();
    let spares = volumes
        .iter()
        .filter(|(n, _, _)| !placement.iter().any(|(_, vs)| vs.contains(n)))
        .map(|(n, _, _)| n.clone())
        .collect();
    Ok(InitReport {
        placement,
        spares,
        warnings,
    })
}

/// Writes the config: readable by everyone (the commands of a `control_group` member
/// read it), writable by root only, whatever the umask (on Windows: the directory's ACL);
/// replaced atomically.
fn write_config(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("toml.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o644),
        libc::O_NOFOLLOW,
    );
    let mut f = options.open(&tmp)?;
    #[cfg(unix)]
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn bed(tag: &str, n: usize) -> (PathBuf, Config) {
        let root = std::env::temp_dir().join(format!("reseedfs-init-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for k in 1..=n {
            std::fs::create_dir_all(root.join(format!("vols/Volume{k}"))).expect("mkdir");
        }
        let mut c = Config::new(
            root.join("vols"),
            root.join("dbs"),
            vec![
                crate::names::DbName::from_static("db001"),
                crate::names::DbName::from_static("db002"),
            ],
        );
        c.state_dir = root.join("state");
        c.witness_dir = root.join("witness");
        (root, c)
    }

    #[test]
    fn places_copies_on_distinct_volumes_and_leaves_spares() {
        let (root, c) = bed("place", 5);
        let r = init(&c, &root.join("cfg.toml")).expect("init");
        assert_eq!(
            r.placement,
            vec![
                (
                    crate::names::DbName::from_static("db001"),
                    vec![
                        crate::names::VolumeName::from_static("Volume1"),
                        crate::names::VolumeName::from_static("Volume2")
                    ]
                ),
                (
                    crate::names::DbName::from_static("db002"),
                    vec![
                        crate::names::VolumeName::from_static("Volume3"),
                        crate::names::VolumeName::from_static("Volume4")
                    ]
                ),
            ]
        );
        assert_eq!(r.spares, vec!["Volume5".to_string()]);
        assert!(!r.warnings.is_empty(), "same-filesystem warning expected");
        assert!(root.join("vols/Volume1/db001.db").is_dir());
        assert!(root.join("vols/Volume4/db002.log").is_dir());
        assert!(root.join("vols/Volume5/.reseedfs/volume.json").is_file());
        assert!(Config::load(&root.join("cfg.toml")).is_ok());
        // A second init over the same pool is refused and changes nothing.
        let e = init(&c, &root.join("cfg.toml")).expect_err("second init");
        assert!(e.to_string().contains("already belongs"), "{e:#}");
        std::fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn refusals_change_nothing() {
        let (root, mut c) = bed("refuse", 3);
        c.copies = 2;
        // 2 databases x 2 copies on 3 volumes with 1 per volume: no room.
        let e = init(&c, &root.join("cfg.toml")).expect_err("no room");
        assert!(e.to_string().contains("not enough room"), "{e:#}");
        assert!(!root.join("vols/Volume1/.reseedfs").exists());
        assert!(!root.join("cfg.toml").exists());
        std::fs::write(root.join("vols/Volume4"), b"x").expect("file");
        c.databases = vec![crate::names::DbName::from_static("db001")];
        let e = init(&c, &root.join("cfg.toml")).expect_err("not a dir");
        assert!(e.to_string().contains("not a directory"), "{e:#}");
        c.volumes_root = root.join("missing");
        let e = init(&c, &root.join("cfg.toml")).expect_err("missing root");
        assert!(e.to_string().contains("does not exist"), "{e:#}");
        std::fs::remove_dir_all(&root).expect("cleanup");
    }
}
