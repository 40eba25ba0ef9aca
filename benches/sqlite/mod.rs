//! SQLite's own workload for the pgbench bench: one connection, one small insert per
//! transaction, commits durable (`synchronous=FULL`), in each of the two journal modes a
//! database host meets: the rollback journal (`DELETE`: every commit creates, writes,
//! fsyncs and unlinks `-journal` and fsyncs the directory, so it measures the namespace
//! path as much as the data path) and the write-ahead log (`WAL`: an append and an fsync of
//! `-wal` per commit).

use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::Connection;

/// The journal modes measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Journal {
    Delete,
    Wal,
}

pub const JOURNALS: [Journal; 2] = [Journal::Delete, Journal::Wal];

impl Journal {
    pub fn name(self) -> &'static str {
        match self {
            Journal::Delete => "delete",
            Journal::Wal => "wal",
        }
    }
}

/// One measured run.
pub struct Run {
    pub transactions: u64,
    pub tps: f64,
    /// Each transaction's latency (µs), as the caller saw it.
    pub latencies_us: Vec<f64>,
}

/// `seconds` of one-insert transactions on a new database `bench-<mode>.db` in `dir`,
/// removed with its journal files before and after.
pub fn run(dir: &Path, journal: Journal, seconds: u64) -> io::Result<Run> {
    let path = dir.join(format!("bench-{}.db", journal.name()));
    let files = || {
        ["", "-journal", "-wal", "-shm"].map(|s| {
            let mut p = path.clone().into_os_string();
            p.push(s);
            p
        })
    };
    let remove = || {
        for f in files() {
            match fs::remove_file(&f) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("remove {}: {e}", Path::new(&f).display()),
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    };
    remove()?;
    let sql = |e: rusqlite::Error| {
        io::Error::other(format!(
            "SQLite ({} journal) on {}: {e}",
            journal.name(),
            path.display()
        ))
    };
    let run = (|| -> io::Result<Run> {
        let c = Connection::open(&path).map_err(sql)?;
        c.pragma_update(None, "journal_mode", journal.name())
            .map_err(sql)?;
        c.pragma_update(None, "synchronous", "FULL").map_err(sql)?;
        c.execute_batch("CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT)")
            .map_err(sql)?;
        let row = "x".repeat(200);
        let mut insert = c.prepare("INSERT INTO t(b) VALUES (?1)").map_err(sql)?;
        let mut latencies_us = Vec::new();
        let started = Instant::now();
        let until = Duration::from_secs(seconds);
        while started.elapsed() < until {
            let t = Instant::now();
            // Autocommit: each insert is its own transaction, committed before it returns.
            insert.execute([&row]).map_err(sql)?;
            latencies_us.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let elapsed = started.elapsed().as_secs_f64();
        let transactions = latencies_us.len() as u64;
        Ok(Run {
            transactions,
            tps: transactions as f64 / elapsed,
            latencies_us,
        })
    })();
    let removed = remove();
    let run = run?;
    removed?;
    Ok(run)
}
