//! The spare rule, once: which volumes can take a new copy of a database, best first, and
//! why each other cannot. A pure function of what it is shown, so that the pool (on its
//! live volumes) and `explain` (on a status, and on what-if states where spares were
//! already handed out) decide the same way.

use super::Pool;

/// Bytes a volume needs free to take a copy of a database of `db_bytes`: the database,
/// 10% more, and 64 MiB.
pub fn needed_bytes(db_bytes: u64) -> u64 {
    db_bytes + db_bytes / 10 + (64 << 20)
}

/// A volume as the spare rule sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// `Volume3`.
    pub name: String,
    /// It is failed (or could not be opened).
    pub failed: bool,
    /// Its free space; `Err` says why it is not known.
    pub free_bytes: Result<u64, String>,
    /// The databases holding a copy on it.
    pub holding: Vec<String>,
}

/// The volumes of `candidates` that could take a new copy of `db` (of `db_bytes`), best
/// first (most free space), and why each other cannot.
pub fn choose(
    candidates: &[Candidate],
    db: &str,
    db_bytes: u64,
    copies_per_volume: u32,
) -> (Vec<String>, Vec<(String, String)>) {
    let need = needed_bytes(db_bytes);
    let mut ok = Vec::new();
    let mut rejected = Vec::new();
    for c in candidates {
        let why = if c.failed {
            Some("it is failed".to_owned())
        } else if c.holding.iter().any(|h| h == db) {
            Some(format!("it already holds a copy of {db}"))
        } else if c.holding.len() as u32 >= copies_per_volume {
            Some(format!(
                "it holds {} database copies and copies_per_volume is {copies_per_volume}",
                c.holding.len()
            ))
        } else {
            match &c.free_bytes {
                Err(why) => Some(why.clone()),
                Ok(f) if *f < need => {
                    Some(format!("{} MiB free, {} MiB needed", f >> 20, need >> 20))
                }
                Ok(f) => {
                    ok.push((*f, c.name.clone()));
                    None
                }
            }
        };
        if let Some(why) = why {
            rejected.push((c.name.clone(), why));
        }
    }
    ok.sort_by_key(|v| std::cmp::Reverse(v.0));
    (ok.into_iter().map(|(_, n)| n).collect(), rejected)
}

impl Pool {
    /// The volumes that could take a new copy of `db` needing `bytes`, best first, and
    /// why each other volume cannot ([`choose`] on the live volumes).
    pub fn spares(&self, db: &str, bytes: u64) -> (Vec<String>, Vec<(String, String)>) {
        let state = self.state();
        let candidates: Vec<Candidate> = self
            .volumes
            .iter()
            .map(|v| {
                let volume = v.volume();
                Candidate {
                    name: v.name.to_string(),
                    failed: state.failed_volumes.contains(&v.name),
                    free_bytes: match volume.map(|vol| vol.statvfs()) {
                        None => Err("it could not be opened".to_owned()),
                        Some(Err(e)) => Err(format!("statvfs failed: {e}")),
                        Some(Ok(st)) => Ok(st.f_bavail * st.f_frsize),
                    },
                    holding: state.holding(&v.name).map(|d| d.name.to_string()).collect(),
                }
            })
            .collect();
        choose(&candidates, db, bytes, self.config.copies_per_volume)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(name: &str, failed: bool, free_mib: u64, holding: &[&str]) -> Candidate {
        Candidate {
            name: name.into(),
            failed,
            free_bytes: Ok(free_mib << 20),
            holding: holding.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn spares_are_ranked_by_free_space_and_every_refusal_says_why() {
        let candidates = [
            vol("Volume1", false, 500, &["db001"]),
            vol("Volume2", true, 900, &[]),
            vol("Volume3", false, 300, &[]),
            vol("Volume4", false, 800, &["db002"]),
            vol("Volume5", false, 100, &[]),
            vol("Volume6", false, 600, &[]),
            Candidate {
                free_bytes: Err("statvfs failed: EIO".into()),
                ..vol("Volume7", false, 0, &[])
            },
        ];
        let (ok, rejected) = choose(&candidates, "db001", 100 << 20, 1);
        assert_eq!(ok, vec!["Volume6", "Volume3"]);
        let why = |v: &str| {
            rejected
                .iter()
                .find(|(n, _)| n == v)
                .map(|(_, w)| w.as_str())
                .unwrap_or("")
        };
        assert_eq!(why("Volume1"), "it already holds a copy of db001");
        assert_eq!(why("Volume2"), "it is failed");
        assert!(why("Volume4").contains("copies_per_volume is 1"));
        // 100 MiB + 10 MiB + 64 MiB.
        assert_eq!(why("Volume5"), "100 MiB free, 174 MiB needed");
        assert_eq!(why("Volume7"), "statvfs failed: EIO");
    }
}
