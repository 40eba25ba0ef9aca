//! The locked chunk comparison every verification shares: the seeder's (phase 3 of a
//! reseed: the new copy against its source), the resync's (the extents it copied), and
//! the online verification's (every in-sync copy against the active one).
//!
//! A chunk of a file is read on every copy while the file's write-ordering locks keep
//! writers out of it ([`ChunkLocks`]): every node's resize lock shared, then the chunk's
//! stripes, in the order writes take them. A write is then never half applied (on one
//! copy and not yet on another) while the chunk is read, so a difference is real. The
//! copies are read at once ([`ChunkReader::read`]): on separate disks, a chunk takes the
//! slowest disk's time, not the sum. What the callers do with a difference is theirs:
//! the seeder and the resync fail, the online verification locates it per 4 KiB block
//! ([`ChunkReader::differing_blocks`]) and may repair it under the same locks.
//!
//! The reads go through the copies' own descriptors, outside the volumes' lanes, with the
//! writers' locks held: a hung disk would hold the database's writes to that chunk for as
//! long as it hangs. A reader given the volumes' deadline ([`ChunkReader::with_deadline`])
//! reads on threads of its own and waits at most `io_timeout`: a copy that did not answer
//! gets a [`Timeout`] error naming its volume (the callers fail it as any timeout), its
//! read is abandoned in the kernel, and the locks are released. The repairs of
//! `verify --repair` (writes, fsyncs, truncates and read-backs through the same
//! descriptors, under the same locks) run there too ([`ChunkReader::within_deadline`]).

use std::fs::File;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLockReadGuard;

use crate::fs::Node;
use crate::volume::lane::{Lane, Unanswered};
use crate::volume::{Panicked, Timeout, read_full};

/// Granularity of a located difference.
pub const BLOCK: usize = 4096;

/// Chunks smaller than this are read on one copy after the other: a thread costs more
/// than such a read (a resync compares extents as small as one block).
const PARALLEL_MIN: usize = 256 << 10;

/// Anything held until it is dropped: the stripe guards, whose type the filesystem core
/// keeps to itself.
trait Held {}
impl<T> Held for T {}

/// Writers kept out of `[offset, offset + len)` of a file while it lives.
pub struct ChunkLocks<'a> {
    _resize: Vec<RwLockReadGuard<'a, ()>>,
    _stripes: Vec<Box<dyn Held + 'a>>,
}

impl<'a> ChunkLocks<'a> {
    /// Every node's resize lock shared, then the range's stripes (the nodes of one file:
    /// its names on disk, sorted by the caller in one order for every caller).
    pub fn take(nodes: &'a [Arc<Node>], offset: u64, len: u64) -> ChunkLocks<'a> {
        let resize = nodes.iter().map(|n| n.io.resize.read()).collect();
        ChunkLocks {
            _resize: resize,
            _stripes: Self::lock_stripes(nodes, offset, len),
        }
    }

    /// Only the range's stripes, for a caller that holds the nodes' resize locks for the
    /// whole file already (taking them again could deadlock behind a waiting truncate).
    pub fn stripes(nodes: &'a [Arc<Node>], offset: u64, len: u64) -> ChunkLocks<'a> {
        ChunkLocks {
            _resize: Vec::new(),
            _stripes: Self::lock_stripes(nodes, offset, len),
        }
    }

    fn lock_stripes(nodes: &'a [Arc<Node>], offset: u64, len: u64) -> Vec<Box<dyn Held + 'a>> {
        nodes
            .iter()
            .map(|n| Box::new(n.io.lock_range(offset, len)) as Box<dyn Held + 'a>)
            .collect()
    }
}

/// One buffer per copy, the reference copy's first, reused from chunk to chunk.
#[derive(Debug)]
pub struct ChunkReader {
    bufs: Vec<Vec<u8>>,
    chunk_bytes: usize,
    deadline: Option<Deadline>,
}

/// The volumes' deadline of a reader (see the module header).
#[derive(Debug)]
struct Deadline {
    lane: Lane,
    io_timeout: Duration,
    /// The volume of each copy, the reference's first, for the errors.
    volumes: Vec<String>,
}

impl ChunkReader {
    /// Buffers for `copies` copies (the reference included) of chunks of at most
    /// `chunk_bytes`.
    pub fn new(copies: usize, chunk_bytes: usize) -> ChunkReader {
        ChunkReader {
            bufs: vec![vec![0u8; chunk_bytes]; copies],
            chunk_bytes,
            deadline: None,
        }
    }

    /// Reads with the volumes' deadline: a copy whose read takes longer than
    /// `io_timeout` gets a [`Timeout`] error naming its volume (`volumes`: each copy's,
    /// the reference's first), and the reader does not wait for it.
    pub fn with_deadline(mut self, io_timeout: Duration, volumes: Vec<String>) -> ChunkReader {
        self.deadline = Some(Deadline {
            lane: Lane::new("verify"),
            io_timeout,
            volumes,
        });
        self
    }

    /// Reads `len` bytes at `offset` of each of `files` (the reference first; `None`
    /// reads nothing) into its buffer, all at once when the chunk is large, while `locks`
    /// keep writers out. Returns, per file, the bytes read (short at the end of a file)
    /// or the error.
    pub fn read(
        &mut self,
        _locks: &ChunkLocks<'_>,
        files: &[Option<&File>],
        offset: u64,
        len: usize,
    ) -> Vec<io::Result<usize>> {
        if self.deadline.is_some() {
            return self.read_within_deadline(files, offset, len);
        }
        let read = |f: Option<&File>, buf: &mut Vec<u8>| match f {
            Some(f) => read_full(f, offset, &mut buf[..len]),
            None => Ok(0),
        };
        let bufs = &mut self.bufs[..files.len()];
        if len < PARALLEL_MIN || files.len() < 2 {
            return files
                .iter()
                .zip(bufs.iter_mut())
                .map(|(f, buf)| read(*f, buf))
                .collect();
        }
        let (first, rest) = bufs.split_at_mut(1);
        std::thread::scope(|scope| {
            let others: Vec<_> = files[1..]
                .iter()
                .zip(rest.iter_mut())
                .map(|(f, buf)| scope.spawn(move || read(*f, buf)))
                .collect();
            let mut out = vec![read(files[0], &mut first[0])];
            for h in others {
                out.push(
                    h.join()
                        .unwrap_or_else(|_| Err(io::Error::other("verification reader panicked"))),
                );
            }
            out
        })
    }

    /// [`ChunkReader::read`] on the reader's threads, each copy's read waited for until
    /// the deadline. The files are duplicated (a descriptor the abandoned read keeps) and
    /// the buffers go with the reads (a buffer left with an abandoned read is replaced).
    fn read_within_deadline(
        &mut self,
        files: &[Option<&File>],
        offset: u64,
        len: usize,
    ) -> Vec<io::Result<usize>> {
        let Some(d) = &self.deadline else {
            return Vec::new();
        };
        let until = Instant::now() + d.io_timeout;
        let pending: Vec<_> = files
            .iter()
            .zip(self.bufs.iter_mut())
            .map(|(f, buf)| {
                let f = (*f)?;
                let mut buf = std::mem::take(buf);
                Some(f.try_clone().map(|file| {
                    d.lane.submit(move || {
                        let r = read_full(&file, offset, &mut buf[..len]);
                        (buf, r)
                    })
                }))
            })
            .collect();
        let mut out = Vec::with_capacity(files.len());
        for (i, p) in pending.into_iter().enumerate() {
            let (buf, r) = match p {
                None => (None, Ok(0)),
                Some(Err(e)) => (None, Err(e)),
                Some(Ok(p)) => match p.wait_until(until) {
                    Ok((buf, r)) => (Some(buf), r),
                    Err(Unanswered::Elapsed) => (
                        None,
                        Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            Timeout {
                                volume: d.volumes.get(i).cloned().unwrap_or_default(),
                                op: "verify read",
                                after: d.io_timeout,
                            },
                        )),
                    ),
                    Err(Unanswered::Panicked(m)) => (
                        None,
                        Err(io::Error::other(format!(
                            "verification reader panicked: {m}"
                        ))),
                    ),
                },
            };
            match buf {
                Some(buf) => self.bufs[i] = buf,
                None if self.bufs[i].len() < self.chunk_bytes => {
                    self.bufs[i] = vec![0u8; self.chunk_bytes];
                }
                None => {}
            }
            out.push(r);
        }
        out
    }

    /// Runs `call`, an I/O of copy `i` (the reference is 0) named `op`, on the reader's
    /// threads and waits for it until the volumes' deadline: past it, a [`Timeout`] naming
    /// the copy's volume, the call abandoned in the kernel; a panic is the volume's
    /// [`Panicked`]. A reader without a deadline runs it here.
    pub fn within_deadline<T: Send + 'static>(
        &self,
        i: usize,
        op: &'static str,
        call: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let Some(d) = &self.deadline else {
            return call();
        };
        let volume = || d.volumes.get(i).cloned().unwrap_or_default();
        match d.lane.run(d.io_timeout, call) {
            Ok(r) => r,
            Err(Unanswered::Elapsed) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                Timeout {
                    volume: volume(),
                    op,
                    after: d.io_timeout,
                },
            )),
            Err(Unanswered::Panicked(message)) => Err(io::Error::other(Panicked {
                volume: volume(),
                op,
                message,
            })),
        }
    }

    /// The first `n` bytes copy `i` read.
    pub fn bytes(&self, i: usize, n: usize) -> &[u8] {
        &self.bufs[i][..n]
    }

    /// Whether copy `i`, which read `m` bytes, differs from the reference, which read `n`.
    pub fn differs(&self, i: usize, n: usize, m: usize) -> bool {
        n != m || self.bufs[0][..n] != self.bufs[i][..m]
    }

    /// The block-aligned ranges of the chunk (merged when adjacent) where copy `i`, which
    /// read `m` bytes, differs from the reference's `n`: a shorter copy reads as zeros
    /// past its end (its size is reported apart).
    pub fn differing_blocks(&mut self, i: usize, n: usize, m: usize) -> Vec<(usize, usize)> {
        if m < n {
            self.bufs[i][m..n].fill(0);
        }
        differing_blocks(&self.bufs[0][..n], &self.bufs[i][..n])
    }

    /// Copy `src`'s first `n` bytes, and copy `dst`'s buffer (to read a repair back into).
    pub fn pair(&mut self, src: usize, dst: usize, n: usize) -> (&[u8], &mut [u8]) {
        assert_ne!(src, dst, "a copy is repaired from another");
        if src < dst {
            let (a, b) = self.bufs.split_at_mut(dst);
            (&a[src][..n], &mut b[0][..n])
        } else {
            let (a, b) = self.bufs.split_at_mut(src);
            (&b[0][..n], &mut a[dst][..n])
        }
    }
}

/// The block-aligned ranges (merged when adjacent) where `a` and `b` differ.
fn differing_blocks(a: &[u8], b: &[u8]) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    let mut pos = 0;
    while pos < a.len() {
        let end = (pos + BLOCK).min(a.len());
        if a[pos..end] != b[pos..end] {
            match out.last_mut() {
                Some(last) if last.1 == pos => last.1 = end,
                _ => out.push((pos, end)),
            }
        }
        pos = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_are_located_per_block_and_merged() {
        let a = vec![7u8; 5 * BLOCK + 100];
        let mut b = a.clone();
        b[10] = 0;
        b[BLOCK + 1] = 0;
        b[3 * BLOCK] = 0;
        b[5 * BLOCK + 99] = 0;
        assert_eq!(
            differing_blocks(&a, &b),
            [
                (0, 2 * BLOCK),
                (3 * BLOCK, 4 * BLOCK),
                (5 * BLOCK, 5 * BLOCK + 100)
            ]
        );
        assert!(differing_blocks(&a, &a).is_empty());
    }

    #[test]
    fn copies_are_read_at_once_and_compared() {
        let dir = std::env::temp_dir().join(format!("reseedfs-chunk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let data = crate::testbed::rng::pattern(3, 1 << 20);
        let mut other = data.clone();
        other[700_000] ^= 1;
        let (pa, pb, pc) = (dir.join("a"), dir.join("b"), dir.join("c"));
        std::fs::write(&pa, &data).expect("a");
        std::fs::write(&pb, &other).expect("b");
        std::fs::write(&pc, &data[..500_000]).expect("c");
        let open = |p| File::open(p).expect("open");
        let (a, b, c) = (open(&pa), open(&pb), open(&pc));
        let mut r = ChunkReader::new(4, 1 << 20);
        let no_locks = ChunkLocks::take(&[], 0, 1 << 20);
        for len in [1 << 20, 64 << 10] {
            let reads = r.read(&no_locks, &[Some(&a), Some(&b), Some(&c), None], 0, len);
            let n: Vec<usize> = reads.into_iter().map(|x| x.expect("read")).collect();
            assert_eq!(n, [len, len, len.min(500_000), 0]);
            assert_eq!(r.bytes(0, len), &data[..len]);
        }
        let reads = r.read(&no_locks, &[Some(&a), Some(&b), Some(&c)], 0, 1 << 20);
        let n: Vec<usize> = reads.into_iter().map(|x| x.expect("read")).collect();
        assert!(r.differs(1, n[0], n[1]) && r.differs(2, n[0], n[2]));
        let block = 700_000 / BLOCK * BLOCK;
        assert_eq!(r.differing_blocks(1, n[0], n[1]), [(block, block + BLOCK)]);
        let cut = 500_000 / BLOCK * BLOCK;
        assert_eq!(r.differing_blocks(2, n[0], n[2]), [(cut, 1 << 20)]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
