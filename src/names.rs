//! The names reseedfs gives things, as types: a database's name, a volume's name and a
//! copy's slot in its database. A name is checked once, where it enters (the config, the
//! CLI, a control request, a volume's folder, the persisted pool state); past that a
//! `DbName` is known to be `[A-Za-z0-9_-]{1,64}` and a `VolumeName` to be `VolumeN`, so
//! neither can be a path, and a function cannot be handed one where the other belongs.
//!
//! Both serialize as the plain string they hold: the JSON APIs (`status --json`, events,
//! the pool state) carry the same words as before.

use std::borrow::Borrow;
use std::ffi::OsStr;
use std::fmt;
use std::ops::Deref;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::layout::{self, NameError};

/// Implements what both string names share: read access as `&str`, comparison with
/// strings, display, parsing through `new`, serde through the checked constructor.
macro_rules! string_name {
    ($ty:ident) => {
        impl $ty {
            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl Deref for $ty {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<Path> for $ty {
            fn as_ref(&self) -> &Path {
                Path::new(&*self.0)
            }
        }

        impl AsRef<OsStr> for $ty {
            fn as_ref(&self) -> &OsStr {
                OsStr::new(&*self.0)
            }
        }

        impl Borrow<str> for $ty {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl PartialEq<str> for $ty {
            fn eq(&self, other: &str) -> bool {
                &*self.0 == other
            }
        }

        impl PartialEq<&str> for $ty {
            fn eq(&self, other: &&str) -> bool {
                &*self.0 == *other
            }
        }

        impl PartialEq<String> for $ty {
            fn eq(&self, other: &String) -> bool {
                *self.0 == **other
            }
        }

        impl PartialEq<&$ty> for $ty {
            fn eq(&self, other: &&$ty) -> bool {
                self == *other
            }
        }

        impl PartialEq<$ty> for str {
            fn eq(&self, other: &$ty) -> bool {
                self == &*other.0
            }
        }

        impl PartialEq<$ty> for &str {
            fn eq(&self, other: &$ty) -> bool {
                *self == &*other.0
            }
        }

        impl PartialEq<$ty> for String {
            fn eq(&self, other: &$ty) -> bool {
                **self == *other.0
            }
        }

        impl FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<$ty, NameError> {
                $ty::new(s)
            }
        }

        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(s: String) -> Result<$ty, NameError> {
                $ty::new(s)
            }
        }

        impl TryFrom<&str> for $ty {
            type Error = NameError;
            fn try_from(s: &str) -> Result<$ty, NameError> {
                $ty::new(s)
            }
        }

        impl From<&$ty> for serde_json::Value {
            fn from(n: &$ty) -> serde_json::Value {
                serde_json::Value::String(n.0.clone().into())
            }
        }

        impl From<$ty> for serde_json::Value {
            fn from(n: $ty) -> serde_json::Value {
                serde_json::Value::String(n.0.into())
            }
        }

        impl From<$ty> for String {
            fn from(n: $ty) -> String {
                n.0.into()
            }
        }
    };
}

/// A database's name, `[A-Za-z0-9_-]{1,64}` (`db001`): the folder under the databases root
/// and the stem of its `<db>.db` and `<db>.log` folders on every volume.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DbName(Box<str>);

impl DbName {
    /// Checks `name` against the database naming rule.
    pub fn new(name: impl AsRef<str> + Into<String>) -> Result<DbName, NameError> {
        layout::check_db_name(name.as_ref())?;
        Ok(DbName(name.into().into_boxed_str()))
    }
}

impl DbName {
    /// A name written in the code (the demo's database, tests): panics when it breaks the
    /// rule, which is a bug in that code, never a user's input.
    pub fn from_static(name: &'static str) -> DbName {
        DbName::new(name).unwrap_or_else(|e| panic!("{e}"))
    }
}

string_name!(DbName);

/// A volume's name, `VolumeN` with N = 1, 2, ... (`Volume7`): its folder under the volumes
/// root, and how events, `status` and the pool state name it.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VolumeName(Box<str>);

impl VolumeName {
    /// Checks `name` against the `VolumeN` convention.
    pub fn new(name: impl AsRef<str> + Into<String>) -> Result<VolumeName, NameError> {
        match layout::volume_number(name.as_ref()) {
            Some(_) => Ok(VolumeName(name.into().into_boxed_str())),
            None => Err(NameError::Volume(name.into())),
        }
    }

    /// A name written in the code (tests, benches): panics when it breaks the rule, which
    /// is a bug in that code, never a user's input.
    pub fn from_static(name: &'static str) -> VolumeName {
        VolumeName::new(name).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `Volume7` -> 7.
    pub fn number(&self) -> u32 {
        layout::volume_number(&self.0).expect("a VolumeName is checked when it is made")
    }
}

/// Volumes sort by number (`Volume2` before `Volume10`), as the pool lists them.
impl Ord for VolumeName {
    fn cmp(&self, other: &VolumeName) -> std::cmp::Ordering {
        self.number().cmp(&other.number())
    }
}

impl PartialOrd for VolumeName {
    fn partial_cmp(&self, other: &VolumeName) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

string_name!(VolumeName);

/// A copy's place in its database's list of copies (0 = the preferred active copy). Slots
/// are stable while the database is mounted: a reseed puts the new copy in the slot of the
/// copy it replaces.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CopySlot(usize);

impl CopySlot {
    /// The slot at `index` in the database's copies.
    pub const fn new(index: usize) -> CopySlot {
        CopySlot(index)
    }

    /// The index into the database's copies.
    pub const fn index(self) -> usize {
        self.0
    }

    /// Every slot of a database with `n` copies, in order.
    pub fn all(n: usize) -> impl Iterator<Item = CopySlot> {
        (0..n).map(CopySlot)
    }
}

/// A slot indexes any per-copy list (copies, their records, their dirty maps).
impl<T> std::ops::Index<CopySlot> for [T] {
    type Output = T;
    fn index(&self, slot: CopySlot) -> &T {
        &self[slot.0]
    }
}

impl<T> std::ops::IndexMut<CopySlot> for [T] {
    fn index_mut(&mut self, slot: CopySlot) -> &mut T {
        &mut self[slot.0]
    }
}

impl PartialEq<usize> for CopySlot {
    fn eq(&self, other: &usize) -> bool {
        self.0 == *other
    }
}

impl PartialEq<CopySlot> for usize {
    fn eq(&self, other: &CopySlot) -> bool {
        *self == other.0
    }
}

impl fmt::Display for CopySlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for CopySlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "slot {}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_where_they_are_made() {
        assert_eq!(DbName::new("db001").unwrap(), "db001");
        assert!(DbName::new("../etc").is_err());
        assert!("a b".parse::<DbName>().is_err());
        assert_eq!(VolumeName::new("Volume12").unwrap().number(), 12);
        assert!(VolumeName::new("Volume0").is_err());
        assert!(VolumeName::new("../Volume1").is_err());
    }

    #[test]
    fn names_serialize_as_the_same_words() {
        let db = DbName::new("db001").unwrap();
        assert_eq!(serde_json::to_string(&db).unwrap(), "\"db001\"");
        let v: VolumeName = serde_json::from_str("\"Volume3\"").unwrap();
        assert_eq!(v, "Volume3");
        assert!(serde_json::from_str::<DbName>("\"../x\"").is_err());
        assert!(serde_json::from_str::<VolumeName>("\"/etc\"").is_err());
        assert_eq!(serde_json::to_string(&CopySlot::new(1)).unwrap(), "1");
    }

    #[test]
    fn volumes_sort_by_number() {
        let mut v: Vec<VolumeName> = ["Volume10", "Volume2", "Volume1"]
            .iter()
            .map(|n| VolumeName::new(*n).unwrap())
            .collect();
        v.sort();
        assert_eq!(v, ["Volume1", "Volume2", "Volume10"]);
    }
}
