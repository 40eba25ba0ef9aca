//! The demo's workload: writers of checksummed blocks at random offsets, with fsyncs,
//! through a [`Target`] (files under a directory: the kernel mount or a volume's copy; or
//! handles of the filesystem core), and the read-back that checks every block.
//!
//! Each file is cut into slots and each block lies inside one slot, so blocks never
//! overlap and the last block written into a slot is what the slot must hold. A block
//! carries a header (magic, file, slot, write number, checksum of its payload) and a
//! payload that those numbers alone determine, so a stale, misplaced or corrupt block is
//! told apart.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use parking_lot::Mutex;

use super::{DB, check, mib, step};
use crate::fs::{Caller, Core, Errno, HandleId, NodeId};
use crate::testbed::daemon::POLL;
use crate::testbed::rng::Rng;

/// Each file is cut into slots of this size.
pub(super) const SLOT: u64 = 256 * 1024;
/// Slots per file (16 MiB files).
pub(super) const SLOTS: u64 = 64;
/// Smallest block.
const MIN_BLOCK: u64 = 4 * 1024;
/// Largest block (one whole slot).
const MAX_BLOCK: u64 = SLOT;
/// Block sizes and offsets are multiples of this.
const ALIGN: u64 = 512;
/// Header of every block: magic, file, slot, write number, checksum of the payload.
const HEADER: usize = 32;
const MAGIC: &[u8; 8] = b"RSFSDEMO";
/// Each writer calls fsync after this many writes.
const FSYNC_EVERY: u64 = 8;
/// The workload dies at this fraction of `--seconds`.
const KILL_AT: f64 = 0.4;

// ---------------------------------------------------------------------------------------
// Files: through a directory (the kernel mount, a volume) or through the core.

/// One open file of the workload.
pub(super) trait DemoFile: Send + Sync {
    /// Writes all of `data` at `offset`.
    fn write_block(&self, data: &[u8], offset: u64) -> io::Result<()>;
    /// fsync.
    fn fsync(&self) -> io::Result<()>;
    /// Fills `buf` from `offset`.
    fn read_block(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Drops cached pages, so reads reach the filesystem below.
    fn drop_cache(&self) -> io::Result<()>;
}

/// Where the workload's files are made.
pub(super) trait Target: Sync {
    /// Creates (or truncates) `name` for reading and writing.
    fn create(&self, name: &str) -> anyhow::Result<Box<dyn DemoFile>>;
    /// Opens `name` for reading.
    fn open(&self, name: &str) -> anyhow::Result<Box<dyn DemoFile>>;
    /// Where `name` is, for messages.
    fn describe(&self, name: &str) -> String;
}

impl DemoFile for File {
    fn write_block(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.write_all_at(data, offset)
    }

    fn fsync(&self) -> io::Result<()> {
        self.sync_all()
    }

    fn read_block(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_exact_at(buf, offset)
    }

    fn drop_cache(&self) -> io::Result<()> {
        rustix::fs::fadvise(self, 0, None, rustix::fs::Advice::DontNeed).map_err(io::Error::from)
    }
}

/// Files in a directory: the database's folder under the mount, or a volume's copy.
pub(super) struct DirTarget {
    pub(super) dir: PathBuf,
}

impl Target for DirTarget {
    fn create(&self, name: &str) -> anyhow::Result<Box<dyn DemoFile>> {
        let path = self.dir.join(name);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .with_context(|| format!("create {}", path.display()))?;
        Ok(Box::new(f))
    }

    fn open(&self, name: &str) -> anyhow::Result<Box<dyn DemoFile>> {
        let path = self.dir.join(name);
        let f = File::open(&path).with_context(|| format!("open {}", path.display()))?;
        Ok(Box::new(f))
    }

    fn describe(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

fn errno(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e.0)
}

/// The database's folder `<db>.db` in the core (no kernel involved).
pub(super) struct CoreTarget {
    core: Arc<Core>,
    dir: NodeId,
    caller: Caller,
    pub(super) label: String,
}

impl CoreTarget {
    /// Looks up `/db001/db001.db` from the root, as the kernel would.
    pub(super) fn new(core: Arc<Core>) -> anyhow::Result<CoreTarget> {
        let folder = format!("{DB}.db");
        let db = core
            .lookup(NodeId::ROOT, OsStr::new(DB))
            .map_err(errno)
            .with_context(|| format!("look up /{DB} in the core"))?;
        let dir = core
            .lookup(db.node, OsStr::new(&folder))
            .map_err(errno)
            .with_context(|| format!("look up /{DB}/{folder} in the core"))?;
        let caller = Caller {
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
        };
        Ok(CoreTarget {
            core,
            dir: dir.node,
            caller,
            label: format!("core:/{DB}/{folder}/"),
        })
    }
}

impl Target for CoreTarget {
    fn create(&self, name: &str) -> anyhow::Result<Box<dyn DemoFile>> {
        let (attr, handle) = self
            .core
            .create(self.dir, OsStr::new(name), 0o644, libc::O_RDWR, self.caller)
            .map_err(errno)
            .with_context(|| format!("create {}", self.describe(name)))?;
        Ok(Box::new(CoreFile {
            core: self.core.clone(),
            node: attr.node,
            handle,
        }))
    }

    fn open(&self, name: &str) -> anyhow::Result<Box<dyn DemoFile>> {
        let attr = self
            .core
            .lookup(self.dir, OsStr::new(name))
            .map_err(errno)
            .with_context(|| format!("look up {}", self.describe(name)))?;
        match self.core.open(attr.node, libc::O_RDONLY) {
            Ok(handle) => Ok(Box::new(CoreFile {
                core: self.core.clone(),
                node: attr.node,
                handle,
            })),
            Err(e) => {
                self.core.forget(attr.node, 1);
                Err(errno(e)).with_context(|| format!("open {}", self.describe(name)))
            }
        }
    }

    fn describe(&self, name: &str) -> String {
        format!("core:/{DB}/{DB}.db/{name}")
    }
}

/// An open handle of the core, with the node reference its lookup (or create) counted.
struct CoreFile {
    core: Arc<Core>,
    node: NodeId,
    handle: HandleId,
}

impl DemoFile for CoreFile {
    fn write_block(&self, data: &[u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < data.len() {
            let n = self
                .core
                .write(self.handle, offset + done as u64, &data[done..])
                .map_err(errno)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the core wrote 0 bytes",
                ));
            }
            done += n;
        }
        Ok(())
    }

    fn fsync(&self) -> io::Result<()> {
        self.core.fsync(self.handle, false).map_err(errno)
    }

    fn read_block(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let n = self
                .core
                .read(self.handle, offset + done as u64, &mut buf[done..])
                .map_err(errno)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file ends before the block",
                ));
            }
            done += n;
        }
        Ok(())
    }

    fn drop_cache(&self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for CoreFile {
    fn drop(&mut self) {
        self.core.release(self.handle);
        self.core.forget(self.node, 1);
    }
}

// ---------------------------------------------------------------------------------------
// Blocks.

/// FNV-1a over 64-bit words.
fn checksum(data: &[u8]) -> u64 {
    let mut h = 0xCBF2_9CE4_8422_2325_u64;
    for chunk in data.chunks(8) {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// Fills `buf` with block number `seq` of `file` in `slot`: a header (magic, file, slot,
/// seq, checksum of the payload) and a payload that only those three numbers determine.
fn fill_block(buf: &mut [u8], file: u32, slot: u32, seq: u64) {
    let (header, payload) = buf.split_at_mut(HEADER);
    let mut rng = Rng::from_parts(&[u64::from(file), u64::from(slot), seq]);
    rng.fill(payload);
    let sum = checksum(payload);
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&file.to_le_bytes());
    header[12..16].copy_from_slice(&slot.to_le_bytes());
    header[16..24].copy_from_slice(&seq.to_le_bytes());
    header[24..32].copy_from_slice(&sum.to_le_bytes());
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Checks that `got` is block `seq` of `file` in `slot`; `scratch` is as long as `got`.
fn check_block(
    got: &[u8],
    scratch: &mut [u8],
    file: u32,
    slot: u32,
    seq: u64,
) -> Result<(), String> {
    if got.len() < HEADER || &got[..8] != MAGIC {
        return Err("no block header there (zeros or foreign bytes)".into());
    }
    let (h_file, h_slot, h_seq) = (le_u32(&got[8..]), le_u32(&got[12..]), le_u64(&got[16..]));
    if (h_file, h_slot, h_seq) != (file, slot, seq) {
        return Err(format!(
            "holds write #{h_seq} of file {h_file} slot {h_slot} instead of write #{seq} \
             (a stale or misplaced block)"
        ));
    }
    if checksum(&got[HEADER..]) != le_u64(&got[24..]) {
        return Err("checksum mismatch: the payload is corrupt".into());
    }
    fill_block(scratch, file, slot, seq);
    if got != scratch {
        return Err("differs from what was written".into());
    }
    Ok(())
}

/// The last block written into a slot.
#[derive(Debug, Clone, Copy)]
struct Block {
    offset: u64,
    len: usize,
    seq: u64,
}

/// What one file must hold.
#[derive(Debug)]
pub(super) struct FileLog {
    name: String,
    index: u32,
    /// `None`: never written, or its last write failed (content unknown).
    slots: Vec<Option<Block>>,
}

// ---------------------------------------------------------------------------------------
// The workload.

/// How the workload runs and how the disk dies.
pub(super) struct Plan<'a> {
    pub(super) threads: u64,
    pub(super) seconds: u64,
    /// Kills the active copy's volume.
    pub(super) kill: &'a dyn Fn() -> anyhow::Result<()>,
    /// How it is killed, for the operator.
    pub(super) kill_note: String,
    /// The active copy's volume.
    pub(super) active: &'a str,
    pub(super) interrupted: &'a AtomicBool,
}

#[derive(Default)]
struct Counters {
    writes: AtomicU64,
    bytes: AtomicU64,
    fsyncs: AtomicU64,
    failures: AtomicU64,
    first_failures: Mutex<Vec<String>>,
}

impl Counters {
    fn fail(&self, what: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_failures.lock();
        if first.len() < 5 {
            first.push(what);
        }
    }
}

/// What the workload did.
pub(super) struct Written {
    pub(super) files: Vec<FileLog>,
    pub(super) writes: u64,
    pub(super) fsyncs: u64,
    pub(super) failures: u64,
    pub(super) kill_error: Option<String>,
}

pub(super) fn write_workload(target: &dyn Target, plan: &Plan<'_>) -> anyhow::Result<Written> {
    let total = Duration::from_secs(plan.seconds);
    let kill_at = total.mul_f64(KILL_AT);
    step(
        4,
        format_args!(
            "writing for {} s: {} threads, blocks of 4-256 KiB with a checksum at random \
             offsets, fsync every {FSYNC_EVERY} writes; {} dies at {:.1} s",
            plan.seconds,
            plan.threads,
            plan.active,
            kill_at.as_secs_f64()
        ),
    );
    let mut files = Vec::new();
    for i in 0..plan.threads {
        let name = format!("demo-{}.dat", i + 1);
        let file = target.create(&name)?;
        files.push((i as u32, name, file));
    }
    if let (Some((_, first, _)), Some((_, last, _))) = (files.first(), files.last()) {
        println!("  files: {} .. {last}", target.describe(first));
    }
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x5EED);
    let counters = Counters::default();
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let mut kill_error = None;
    let mut writes_at_kill = None;
    let joined = thread::scope(|s| {
        let workers: Vec<_> = files
            .iter()
            .map(|(index, name, file)| {
                let (counters, stop) = (&counters, &stop);
                s.spawn(move || writer(*index, name, file.as_ref(), seed, counters, stop))
            })
            .collect();
        let mut next_report = Duration::from_secs(1);
        let (mut last_t, mut last_writes) = (Duration::ZERO, 0);
        loop {
            thread::sleep(POLL);
            let now = start.elapsed();
            if plan.interrupted.load(Ordering::SeqCst) {
                println!("  signal received: stopping the writers");
                break;
            }
            if writes_at_kill.is_none() && kill_error.is_none() && now >= kill_at {
                match (plan.kill)() {
                    Ok(()) => {
                        writes_at_kill = Some(counters.writes.load(Ordering::Relaxed));
                        println!();
                        println!(
                            "  >>> {} (active copy of {DB}) is dead: every I/O on it now fails \
                             with EIO",
                            plan.active
                        );
                        println!("  >>> ({}); the writers carry on:", plan.kill_note);
                        println!();
                    }
                    Err(e) => {
                        println!("  cannot kill {}: {e:#}", plan.active);
                        kill_error = Some(format!("{e:#}"));
                    }
                }
            }
            if now >= next_report {
                let writes = counters.writes.load(Ordering::Relaxed);
                let rate = (writes - last_writes) as f64 / (now - last_t).as_secs_f64().max(1e-3);
                println!(
                    "  {:>5.1} s  {:>10} written  {:>6.0} writes/s  {:>5} fsyncs  {} errors{}",
                    now.as_secs_f64(),
                    mib(counters.bytes.load(Ordering::Relaxed)),
                    rate,
                    counters.fsyncs.load(Ordering::Relaxed),
                    counters.failures.load(Ordering::Relaxed),
                    if writes_at_kill.is_some() {
                        format!("   ({} dead)", plan.active)
                    } else {
                        String::new()
                    }
                );
                (last_t, last_writes) = (now, writes);
                next_report += Duration::from_secs(1);
            }
            if now >= total {
                break;
            }
        }
        stop.store(true, Ordering::SeqCst);
        workers
            .into_iter()
            .map(|w| w.join())
            .collect::<Result<Vec<FileLog>, _>>()
    });
    let logs = joined.map_err(|_| anyhow::anyhow!("a writer thread panicked"))?;
    drop(files);
    let writes = counters.writes.load(Ordering::Relaxed);
    let fsyncs = counters.fsyncs.load(Ordering::Relaxed);
    let failures = counters.failures.load(Ordering::Relaxed);
    let after = writes_at_kill
        .map(|w| format!(", {} of them after {} died", writes - w, plan.active))
        .unwrap_or_default();
    println!(
        "  stopped after {:.1} s: {writes} writes ({}){after}, {fsyncs} fsyncs, {failures} errors",
        start.elapsed().as_secs_f64(),
        mib(counters.bytes.load(Ordering::Relaxed))
    );
    for f in counters.first_failures.lock().iter() {
        println!("  error: {f}");
    }
    if failures == 0 && writes_at_kill.is_some() {
        println!("  not one write or fsync failed: the disk's death was hidden from the writers");
    }
    Ok(Written {
        files: logs,
        writes,
        fsyncs,
        failures,
        kill_error,
    })
}

/// One writer: random blocks into its file until told to stop, fsync every few writes and
/// at the end. Returns what the file must hold.
fn writer(
    index: u32,
    name: &str,
    file: &dyn DemoFile,
    seed: u64,
    counters: &Counters,
    stop: &AtomicBool,
) -> FileLog {
    let mut rng = Rng::from_parts(&[seed, u64::from(index)]);
    let mut slots = vec![None; SLOTS as usize];
    let mut buf = vec![0u8; MAX_BLOCK as usize];
    let mut seq = 0u64;
    let sync = |what: &str| match file.fsync() {
        Ok(()) => {
            counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => counters.fail(format!("fsync {name} ({what}): {e}")),
    };
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let slot = rng.below(SLOTS);
        let len = MIN_BLOCK + rng.below((MAX_BLOCK - MIN_BLOCK) / ALIGN + 1) * ALIGN;
        let offset = slot * SLOT + rng.below((SLOT - len) / ALIGN + 1) * ALIGN;
        let block = &mut buf[..len as usize];
        fill_block(block, index, slot as u32, seq);
        match file.write_block(block, offset) {
            Ok(()) => {
                slots[slot as usize] = Some(Block {
                    offset,
                    len: len as usize,
                    seq,
                });
                counters.writes.fetch_add(1, Ordering::Relaxed);
                counters.bytes.fetch_add(len, Ordering::Relaxed);
            }
            Err(e) => {
                slots[slot as usize] = None;
                counters.fail(format!(
                    "write of {len} bytes at offset {offset} into {name}: {e}"
                ));
            }
        }
        if seq % FSYNC_EVERY == 0 {
            sync("periodic");
        }
    }
    sync("final");
    FileLog {
        name: name.to_owned(),
        index,
        slots,
    }
}

/// What a read-back found.
pub(super) struct Verified {
    pub(super) bad: u64,
}

/// Reads back the last block of every slot of every file from `target` and checks it.
pub(super) fn verify(
    target: &dyn Target,
    logs: &[FileLog],
    interrupted: &AtomicBool,
) -> anyhow::Result<Verified> {
    let (mut blocks, mut bytes, mut bad) = (0u64, 0u64, 0u64);
    let mut first_bad = Vec::new();
    let mut wrong = |n: u64, what: String, bad: &mut u64| {
        *bad += n;
        if first_bad.len() < 5 {
            first_bad.push(what);
        }
    };
    let mut got = vec![0u8; MAX_BLOCK as usize];
    let mut scratch = vec![0u8; MAX_BLOCK as usize];
    for log in logs {
        check(interrupted)?;
        let expected = log.slots.iter().flatten().count() as u64;
        let file = match target.open(&log.name) {
            Ok(f) => f,
            Err(e) => {
                wrong(expected, format!("{e:#}"), &mut bad);
                continue;
            }
        };
        if let Err(e) = file.drop_cache() {
            println!(
                "  (cannot drop the cached pages of {}: {e}; reads may come from the cache)",
                target.describe(&log.name)
            );
        }
        for (slot, b) in log.slots.iter().enumerate() {
            let Some(b) = b else { continue };
            let (got, scratch) = (&mut got[..b.len], &mut scratch[..b.len]);
            let outcome = file
                .read_block(got, b.offset)
                .map_err(|e| format!("read error: {e}"))
                .and_then(|()| check_block(got, scratch, log.index, slot as u32, b.seq));
            match outcome {
                Ok(()) => {
                    blocks += 1;
                    bytes += b.len as u64;
                }
                Err(why) => wrong(
                    1,
                    format!(
                        "{} bytes at offset {} of {}: {why}",
                        b.len,
                        b.offset,
                        target.describe(&log.name)
                    ),
                    &mut bad,
                ),
            }
        }
    }
    if bad == 0 {
        println!("  verified {blocks} blocks, {}: all intact", mib(bytes));
    } else {
        println!(
            "  verified {} blocks: {blocks} intact ({}), {bad} WRONG",
            blocks + bad,
            mib(bytes)
        );
        for b in &first_bad {
            println!("  wrong: {b}");
        }
    }
    Ok(Verified { bad })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_check_and_detect_damage() {
        let mut block = vec![0u8; 8192];
        let mut scratch = vec![0u8; 8192];
        fill_block(&mut block, 2, 7, 41);
        assert_eq!(check_block(&block, &mut scratch, 2, 7, 41), Ok(()));
        let stale = check_block(&block, &mut scratch, 2, 7, 42);
        assert!(stale.is_err_and(|e| e.contains("stale")));
        block[5000] ^= 1;
        let corrupt = check_block(&block, &mut scratch, 2, 7, 41);
        assert!(corrupt.is_err_and(|e| e.contains("checksum")));
        let zeros = vec![0u8; 8192];
        assert!(check_block(&zeros, &mut scratch, 2, 7, 41).is_err());
    }
}
