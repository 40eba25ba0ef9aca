//! The naming convention (Exchange's AutoReseed layout) and the checks that keep every
//! path inside its volume.
//!
//! ```text
//! <volumes_root>/VolumeN/.reseedfs/        volume id, pool state
//! <volumes_root>/VolumeN/<db>.db/          a copy's database files
//! <volumes_root>/VolumeN/<db>.log/         a copy's log files
//! <databases_root>/<db>/<db>.db/           what the database opens (the mount)
//! ```

use std::ffi::OsStr;
use std::path::{Component, Path};

/// Name of the per-volume metadata folder.
pub const META_DIR: &str = ".reseedfs";

/// The longest file name the mount accepts (bytes), as on ext4.
pub const NAME_MAX: usize = 255;

/// A bad database or volume name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    /// The database name breaks `[A-Za-z0-9_-]{1,64}`.
    #[error("database name {0:?} is invalid: use 1 to 64 characters from A-Z a-z 0-9 _ -")]
    Database(String),
    /// The volume folder name is not `VolumeN`.
    #[error("volume folder {0:?} does not follow the naming convention VolumeN (N = 1, 2, ...)")]
    Volume(String),
}

/// Checks a database name against `[A-Za-z0-9_-]{1,64}`.
pub fn check_db_name(name: &str) -> Result<(), NameError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(NameError::Database(name.to_owned()))
    }
}

/// True for a pool id as `init` makes them (`[A-Za-z0-9_-]{1,64}`): it names the witness
/// file, so an id read from a volume must never be a path.
pub fn is_pool_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `db001` -> `db001.db`: the folder of database files.
pub fn db_folder(db: &str) -> String {
    format!("{db}.db")
}

/// `db001` -> `db001.log`: the folder of log files.
pub fn log_folder(db: &str) -> String {
    format!("{db}.log")
}

/// The two folders of a database, in the order they are listed.
pub fn db_folders(db: &str) -> [String; 2] {
    [db_folder(db), log_folder(db)]
}

/// `Volume7` -> `Some(7)`.
pub fn volume_number(name: &str) -> Option<u32> {
    let n = name.strip_prefix("Volume")?;
    if n.is_empty() || n.starts_with('0') || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// Why a single path component is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComponentError {
    /// Longer than [`NAME_MAX`] bytes.
    TooLong,
    /// Empty, `.`, `..`, or containing `/` or NUL.
    Invalid,
}

/// Checks one file name received from the kernel before it is joined to a backing path.
pub fn check_component(name: &OsStr) -> Result<(), ComponentError> {
    let b = name.as_encoded_bytes();
    if b.len() > NAME_MAX {
        return Err(ComponentError::TooLong);
    }
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(ComponentError::Invalid);
    }
    Ok(())
}

/// True when `rel` is a relative path made only of normal components (no `..`, no root).
pub fn is_safe_relative(rel: &Path) -> bool {
    rel.components().all(|c| matches!(c, Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_names() {
        assert!(check_db_name("db001").is_ok());
        assert!(check_db_name("A_b-9").is_ok());
        assert!(check_db_name(&"x".repeat(64)).is_ok());
        for bad in ["", "a b", "../x", "db.1", "é", &"x".repeat(65)] {
            assert!(check_db_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn volume_names() {
        assert_eq!(volume_number("Volume1"), Some(1));
        assert_eq!(volume_number("Volume12"), Some(12));
        for bad in [
            "Volume", "Volume0", "Volume01", "volume1", "Volume1a", "Vol1",
        ] {
            assert_eq!(volume_number(bad), None, "{bad}");
        }
    }

    #[test]
    fn components() {
        assert_eq!(check_component(OsStr::new("a.db")), Ok(()));
        assert_eq!(check_component(OsStr::new(&"n".repeat(255))), Ok(()));
        assert_eq!(
            check_component(OsStr::new(&"n".repeat(256))),
            Err(ComponentError::TooLong)
        );
        for bad in ["", ".", "..", "a/b"] {
            assert_eq!(
                check_component(OsStr::new(bad)),
                Err(ComponentError::Invalid)
            );
        }
        assert!(is_safe_relative(Path::new("db.db/a/b")));
        assert!(!is_safe_relative(Path::new("db.db/../../etc")));
        assert!(!is_safe_relative(Path::new("/etc")));
    }
}
