//! The log folder as a log stream: the files in `<db>.log/` on two copies compared by
//! name, size and checksum, to find the first log where the copies diverged (Exchange's
//! event 2058 reasoning: after a split brain, logs of the same name hold different
//! content on each side, and everything from the first diverged log on is suspect).
//!
//! **Order.** The folder is walked recursively and its regular files are taken in name
//! order, component by component, names compared as bytes (`a/1.log`, `a/2.log`, `a0.log`,
//! `b.log`; and `10.log` before `2.log`). This assumes that name order is log order, which
//! holds for the usual schemes with fixed-width sequence numbers (Exchange's
//! `E00000000A1.log`, PostgreSQL's `000000010000000000000003` WAL segments, RocksDB's
//! `000123.log`). A scheme with unpadded numbers would need its own order. Symlinks and
//! other non-regular files are skipped.
//!
//! **Cost.** Both folders are listed (one `lstat` per file); then files are compared in
//! order, sizes first (no read), and only same-name same-size files are read, 1 MiB at a
//! time, for their CRC32. The walk stops at the first divergence: nothing after it is read.
//!
//! A log still being written can differ for a moment between the copies; compare a stream
//! whose writer is quiet, or read a difference in the newest log accordingly.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::layout;
use crate::names::DbName;
use crate::volume::{FileType, Mode, OFlags, Volume, child_path};

/// Bytes read per step while checksumming a log.
const READ_CHUNK: usize = 1 << 20;

/// Why a log is the first diverged one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Divergence {
    /// The log exists on copy b only.
    MissingOnA,
    /// The log exists on copy a only.
    MissingOnB,
    /// Same name, different sizes (nothing read).
    Size,
    /// Same name and size, different CRC32.
    Checksum,
}

/// The first log where the two copies differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DivergedLog {
    /// Its path inside `<db>.log/` (`E0000000003.log`, `sub/x.log`).
    pub name: String,
    /// How it differs.
    pub reason: Divergence,
    /// Its size on copy a (`None`: missing there).
    pub size_a: Option<u64>,
    /// Its size on copy b (`None`: missing there).
    pub size_b: Option<u64>,
}

/// What [`first_diverged_log`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogStreamCompare {
    /// Logs found identical (name, size and CRC32) before the first divergence.
    pub compared: usize,
    /// Bytes read on both copies together.
    pub bytes_read: u64,
    /// The first diverged log; `None` when the streams are identical.
    pub first_diverged: Option<DivergedLog>,
}

/// One log of a stream: its path relative to the log folder and its size.
type Log = (PathBuf, u64);

/// Compares `<db>.log/` on volumes `a` and `b` as log streams and returns the first log
/// (in name order) that exists on one side only, or differs in size, or in CRC32.
///
/// Fails when a volume has no `<db>.log` folder or cannot be read; the error names the
/// volume and the file.
pub fn first_diverged_log(db: &DbName, a: &Volume, b: &Volume) -> io::Result<LogStreamCompare> {
    let folder = PathBuf::from(layout::log_folder(db));
    let logs_a = list_logs(a, &folder)?;
    let logs_b = list_logs(b, &folder)?;
    let mut out = LogStreamCompare {
        compared: 0,
        bytes_read: 0,
        first_diverged: None,
    };
    let (mut i, mut j) = (0, 0);
    loop {
        let (la, lb) = (logs_a.get(i), logs_b.get(j));
        let diverged = match (la, lb) {
            (None, None) => return Ok(out),
            (Some((name, size)), None) => missing(name, Divergence::MissingOnB, Some(*size), None),
            (None, Some((name, size))) => missing(name, Divergence::MissingOnA, None, Some(*size)),
            (Some((na, sa)), Some((nb, sb))) => match na.cmp(nb) {
                std::cmp::Ordering::Less => missing(na, Divergence::MissingOnB, Some(*sa), None),
                std::cmp::Ordering::Greater => missing(nb, Divergence::MissingOnA, None, Some(*sb)),
                std::cmp::Ordering::Equal if sa != sb => {
                    missing(na, Divergence::Size, Some(*sa), Some(*sb))
                }
                std::cmp::Ordering::Equal => {
                    let rel = folder.join(na);
                    let (ca, ra) = checksum(a, &rel)?;
                    let (cb, rb) = checksum(b, &rel)?;
                    out.bytes_read += ra + rb;
                    if ca != cb || ra != rb {
                        missing(na, Divergence::Checksum, Some(ra), Some(rb))
                    } else {
                        out.compared += 1;
                        i += 1;
                        j += 1;
                        continue;
                    }
                }
            },
        };
        out.first_diverged = Some(diverged);
        return Ok(out);
    }
}

fn missing(
    name: &Path,
    reason: Divergence,
    size_a: Option<u64>,
    size_b: Option<u64>,
) -> DivergedLog {
    DivergedLog {
        name: name.to_string_lossy().into_owned(),
        reason,
        size_a,
        size_b,
    }
}

/// Every regular file under `folder` on `v`, relative to `folder`, in name order
/// (component by component).
fn list_logs(v: &Volume, folder: &Path) -> io::Result<Vec<Log>> {
    let err = |p: &Path, e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("log stream of {} on {}: {e}", p.display(), v.name()),
        )
    };
    let mut out = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let dir = folder.join(&rel);
        for e in v.read_dir(&dir).map_err(|e| err(&dir, e))? {
            let name = child_path(&rel, &e.name);
            match e.kind {
                FileType::Directory => todo.push(name),
                FileType::RegularFile | FileType::Unknown => {
                    let path = folder.join(&name);
                    let st = v.stat(&path).map_err(|e| err(&path, e))?;
                    if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile {
                        out.push((name, st.st_size as u64));
                    } else if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                        todo.push(name);
                    }
                }
                _ => {}
            }
        }
    }
    // PathBuf orders component by component: a directory's logs follow its name.
    out.sort();
    Ok(out)
}

/// CRC32 of the file `rel` on `v`, read 1 MiB at a time; and the bytes read.
fn checksum(v: &Volume, rel: &Path) -> io::Result<(u32, u64)> {
    let err = |e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("checksum {} on {}: {e}", rel.display(), v.name()),
        )
    };
    let f = v
        .open_file(rel, OFlags::RDONLY, Mode::empty())
        .map_err(err)?;
    let mut buf = vec![0u8; READ_CHUNK];
    let mut hasher = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32IsoHdlc);
    let mut total = 0u64;
    loop {
        let n = v.read_at(&f, total, &mut buf).map_err(err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hasher.finalize() as u32, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pair {
        root: PathBuf,
        a: Volume,
        b: Volume,
    }

    impl Pair {
        fn new(tag: &str) -> Pair {
            let root = std::env::temp_dir()
                .join(format!("reseedfs-logstream-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            for v in ["Volume1", "Volume2"] {
                std::fs::create_dir_all(root.join(v).join("db001.log")).expect("mkdir");
            }
            let a = Volume::open("Volume1", &root.join("Volume1")).expect("open a");
            let b = Volume::open("Volume2", &root.join("Volume2")).expect("open b");
            Pair { root, a, b }
        }

        /// Writes `data` to `db001.log/<name>` on volume 1 and/or 2.
        fn put(&self, sides: &[usize], name: &str, data: &[u8]) {
            for k in sides {
                let p = self.root.join(format!("Volume{k}/db001.log")).join(name);
                std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
                std::fs::write(&p, data).expect("write log");
            }
        }

        fn compare(&self) -> LogStreamCompare {
            first_diverged_log(
                &crate::names::DbName::from_static("db001"),
                &self.a,
                &self.b,
            )
            .expect("compare")
        }
    }

    impl Drop for Pair {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    fn log(n: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31) ^ n).collect()
    }

    #[test]
    fn identical_streams() {
        let p = Pair::new("same");
        for n in 1..=3u8 {
            p.put(&[1, 2], &format!("E0000000{n}.log"), &log(n, 3000));
        }
        p.put(&[1, 2], "sub/E00000004.log", &log(4, 100));
        let r = p.compare();
        assert_eq!(r.first_diverged, None);
        assert_eq!(r.compared, 4);
        assert_eq!(r.bytes_read, 2 * (3 * 3000 + 100));
    }

    #[test]
    fn an_extra_log_on_one_side_is_found_without_reading_it() {
        let p = Pair::new("extra");
        p.put(&[1, 2], "E01.log", &log(1, 1000));
        p.put(&[1, 2], "E02.log", &log(2, 1000));
        p.put(&[2], "E03.log", &log(3, 5000));
        let r = p.compare();
        assert_eq!(
            r.first_diverged,
            Some(DivergedLog {
                name: "E03.log".into(),
                reason: Divergence::MissingOnA,
                size_a: None,
                size_b: Some(5000),
            })
        );
        assert_eq!((r.compared, r.bytes_read), (2, 4000));

        // The other way round, and in the middle of the stream.
        p.put(&[1], "E015.log", &log(9, 10));
        let r = p.compare().first_diverged.expect("diverged");
        assert_eq!(
            (r.name.as_str(), r.reason),
            ("E015.log", Divergence::MissingOnB)
        );
    }

    #[test]
    fn a_changed_byte_is_found_by_checksum_and_later_logs_are_not_read() {
        let p = Pair::new("crc");
        let len = (3 << 20) + 17; // several 1 MiB reads
        p.put(&[1, 2], "E01.log", &log(1, 4096));
        let mut changed = log(2, len);
        p.put(&[1], "E02.log", &changed);
        changed[len / 2] ^= 0x40;
        p.put(&[2], "E02.log", &changed);
        for n in 3..=5u8 {
            p.put(&[1, 2], &format!("E0{n}.log"), &log(n, 1 << 20));
        }
        let r = p.compare();
        assert_eq!(
            r.first_diverged,
            Some(DivergedLog {
                name: "E02.log".into(),
                reason: Divergence::Checksum,
                size_a: Some(len as u64),
                size_b: Some(len as u64),
            })
        );
        assert_eq!(r.compared, 1);
        // E01 and E02 on both sides; nothing of E03..E05.
        assert_eq!(r.bytes_read, 2 * (4096 + len as u64));
    }

    #[test]
    fn a_size_difference_is_found_without_reading() {
        let p = Pair::new("size");
        p.put(&[1], "E01.log", &log(1, 100));
        p.put(&[2], "E01.log", &log(1, 101));
        let r = p.compare();
        assert_eq!(r.bytes_read, 0);
        let d = r.first_diverged.expect("diverged");
        assert_eq!(
            (d.reason, d.size_a, d.size_b),
            (Divergence::Size, Some(100), Some(101))
        );
    }

    #[test]
    fn logs_are_taken_in_name_order_component_by_component() {
        let p = Pair::new("order");
        // Created out of order; name order is a/1, a/2, a0, b.
        p.put(&[1, 2], "b.log", &log(4, 10));
        p.put(&[1, 2], "a0.log", &log(3, 10));
        p.put(&[1, 2], "a/2.log", &log(2, 10));
        p.put(&[1, 2], "a/1.log", &log(1, 10));
        let logs = list_logs(&p.a, Path::new("db001.log")).expect("list");
        let names: Vec<_> = logs
            .iter()
            .map(|(n, _)| n.to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a/1.log", "a/2.log", "a0.log", "b.log"]);
        // The first divergence in that order wins, even when a later one exists too.
        p.put(&[2], "b.log", &log(5, 10));
        p.put(&[2], "a/2.log", &log(6, 10));
        let d = p.compare().first_diverged.expect("diverged");
        assert_eq!(
            (d.name.as_str(), d.reason),
            ("a/2.log", Divergence::Checksum)
        );
    }

    #[test]
    fn a_missing_log_folder_is_an_error_naming_the_volume() {
        let p = Pair::new("nofolder");
        std::fs::remove_dir(p.root.join("Volume2/db001.log")).expect("rmdir");
        let e = first_diverged_log(&crate::names::DbName::from_static("db001"), &p.a, &p.b)
            .expect_err("no folder");
        assert!(e.to_string().contains("Volume2"), "{e}");
    }
}
