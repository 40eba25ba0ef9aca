//! One copy of a database: where it lives ([`Placement`]) and its state ([`CopyState`]),
//! owned here and only here. The pool persists what the transitions of
//! [`super::Database`] decide; `status` shows it as an Exchange status word
//! ([`StatusWord`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::names::VolumeName;
use crate::volume::Volume;

/// The state of one copy (persisted in the pool state under these names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CopyState {
    /// Has every acknowledged mutation; serves reads and takes writes.
    InSync,
    /// Its volume failed (or an operator suspended it); it misses writes and is never
    /// trusted again as it is.
    FailedAndSuspended,
    /// Being seeded from an in-sync copy; not trusted until seeding and verification end.
    Seeding,
}

/// A copy's status as Exchange's `Get-MailboxDatabaseCopyStatus` names it, the word
/// `status` prints and `status --json` carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StatusWord {
    /// In sync and active: serves the database's reads.
    Mounted,
    /// In sync and passive.
    Healthy,
    /// Being seeded or resynchronized.
    Seeding,
    /// Failed (or suspended by an operator): misses writes.
    FailedAndSuspended,
}

impl StatusWord {
    /// The word itself.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusWord::Mounted => "Mounted",
            StatusWord::Healthy => "Healthy",
            StatusWord::Seeding => "Seeding",
            StatusWord::FailedAndSuspended => "FailedAndSuspended",
        }
    }

    /// A copy in sync (active or not).
    pub fn is_in_sync(self) -> bool {
        matches!(self, StatusWord::Mounted | StatusWord::Healthy)
    }

    /// The status of a copy in `state`, active or not.
    pub fn of(state: CopyState, active: bool) -> StatusWord {
        match (state, active) {
            (CopyState::InSync, true) => StatusWord::Mounted,
            (CopyState::InSync, false) => StatusWord::Healthy,
            (CopyState::Seeding, _) => StatusWord::Seeding,
            (CopyState::FailedAndSuspended, _) => StatusWord::FailedAndSuspended,
        }
    }

    /// True for a copy that has every acknowledged write.
    pub fn in_sync(self) -> bool {
        matches!(self, StatusWord::Mounted | StatusWord::Healthy)
    }
}

impl std::fmt::Display for StatusWord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for StatusWord {
    type Err = String;

    fn from_str(s: &str) -> Result<StatusWord, String> {
        [
            StatusWord::Mounted,
            StatusWord::Healthy,
            StatusWord::Seeding,
            StatusWord::FailedAndSuspended,
        ]
        .into_iter()
        .find(|w| w.as_str() == s)
        .ok_or_else(|| format!("{s:?} is not a copy status"))
    }
}

impl PartialEq<&str> for StatusWord {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

const IN_SYNC: u8 = 0;
const FAILED: u8 = 1;
const SEEDING: u8 = 2;

fn to_u8(s: CopyState) -> u8 {
    match s {
        CopyState::InSync => IN_SYNC,
        CopyState::FailedAndSuspended => FAILED,
        CopyState::Seeding => SEEDING,
    }
}

fn from_u8(s: u8) -> CopyState {
    match s {
        IN_SYNC => CopyState::InSync,
        SEEDING => CopyState::Seeding,
        _ => CopyState::FailedAndSuspended,
    }
}

static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// A new placement generation, unique in the process.
pub(super) fn next_generation() -> u64 {
    NEXT_GENERATION.fetch_add(1, Ordering::Relaxed)
}

/// Where a copy lives. Replaced as a whole when the copy moves to a spare, its volume is
/// opened again or let go; `generation` tells files opened on an earlier placement from
/// current ones.
#[derive(Debug)]
pub struct Placement {
    /// `Volume1`.
    pub volume_name: VolumeName,
    /// The volume; `None` when it could not be opened or was let go after a failure.
    pub volume: Option<Arc<Volume>>,
    /// Unique per placement.
    pub generation: u64,
}

/// One copy of a database.
#[derive(Debug)]
pub struct Copy {
    placement: ArcSwap<Placement>,
    state: AtomicU8,
}

impl Copy {
    /// A copy on `volume_name`; `volume` is `None` when the volume could not be opened
    /// (the copy is then FailedAndSuspended, whatever `state` says).
    pub fn new(volume_name: VolumeName, volume: Option<Arc<Volume>>, state: CopyState) -> Copy {
        let state = if volume.is_none() {
            CopyState::FailedAndSuspended
        } else {
            state
        };
        Copy {
            placement: ArcSwap::from_pointee(Placement {
                volume_name,
                volume,
                generation: next_generation(),
            }),
            state: AtomicU8::new(to_u8(state)),
        }
    }

    /// Where the copy lives now.
    pub fn placement(&self) -> Arc<Placement> {
        self.placement.load_full()
    }

    /// `Volume1`.
    pub fn volume_name(&self) -> VolumeName {
        self.placement.load().volume_name.clone()
    }

    /// The volume, when the copy is in sync.
    pub fn in_sync_volume(&self) -> Option<Arc<Volume>> {
        if self.is(CopyState::InSync) {
            self.placement.load().volume.clone()
        } else {
            None
        }
    }

    /// The placement, when the copy takes mutations: in sync or being seeded.
    pub(super) fn writable(&self) -> Option<arc_swap::Guard<Arc<Placement>>> {
        match self.state() {
            CopyState::InSync | CopyState::Seeding => {
                Some(self.placement.load()).filter(|p| p.volume.is_some())
            }
            CopyState::FailedAndSuspended => None,
        }
    }

    /// The copy's state.
    pub fn state(&self) -> CopyState {
        from_u8(self.state.load(Ordering::Acquire))
    }

    /// True when the copy is in `state`.
    pub fn is(&self, state: CopyState) -> bool {
        self.state.load(Ordering::Acquire) == to_u8(state)
    }

    /// Moves to `state`; returns the state it left.
    pub(super) fn set(&self, state: CopyState) -> CopyState {
        from_u8(self.state.swap(to_u8(state), Ordering::AcqRel))
    }

    /// Moves from `from` to `to`; false when the copy was not in `from`.
    pub(super) fn move_from(&self, from: CopyState, to: CopyState) -> bool {
        self.state
            .compare_exchange(to_u8(from), to_u8(to), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Lets go of the volume (a new placement without it), so that no file stays open
    /// there through this copy.
    pub(super) fn let_go(&self) {
        let name = self.volume_name();
        self.place(name, None);
    }

    /// A new placement; returns its generation.
    pub(super) fn place(&self, volume_name: VolumeName, volume: Option<Arc<Volume>>) -> u64 {
        let generation = next_generation();
        self.placement.store(Arc::new(Placement {
            volume_name,
            volume,
            generation,
        }));
        generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_words_serialize_as_exchange_names_them() {
        for (word, text) in [
            (StatusWord::of(CopyState::InSync, true), "Mounted"),
            (StatusWord::of(CopyState::InSync, false), "Healthy"),
            (StatusWord::of(CopyState::Seeding, false), "Seeding"),
            (
                StatusWord::of(CopyState::FailedAndSuspended, true),
                "FailedAndSuspended",
            ),
        ] {
            assert_eq!(word.as_str(), text);
            assert_eq!(
                serde_json::to_string(&word).expect("json"),
                format!("\"{text}\"")
            );
        }
    }
}
