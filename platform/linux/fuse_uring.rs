//! FUSE over io_uring (Linux 6.14+, `fs/fuse/dev_uring.c`): the kernel hands requests to
//! buffers the daemon registered, and takes each reply together with the fetch of the
//! next request, in one `IORING_OP_URING_CMD` on `/dev/fuse`, instead of a `read` and a
//! `writev` per request.
//!
//! Why it is its own module: it is the transport only (entries, threads, the commands),
//! generic over a [`Handler`]; what a request means is `fuse_abi` (the kernel's structs)
//! and the handler's (the daemon's `fuse_ring`, the throughput bench's floor). It is
//! lever (b) of issue 18: the README's "FUSE over io_uring (lever b)" has the figures, and
//! the `fuse_transport` setting chooses it.
//!
//! How the kernel does it (and what this module relies on):
//! - The daemon asks for `FUSE_OVER_IO_URING` in its INIT reply; the kernel offers it only
//!   while root has set `/sys/module/fuse/parameters/enable_uring` (off by default).
//! - After INIT, each buffer pair is registered with `FUSE_IO_URING_CMD_REGISTER` on a queue
//!   (`qid`); there is one queue per *possible* CPU, and a request goes to the queue of the
//!   CPU its caller runs on. Until every queue has a registered entry, the kernel holds new
//!   requests back (they wait, nothing is lost); then it routes every request to the ring.
//!   FORGET and INTERRUPT still come through `/dev/fuse`, so a `/dev/fuse` reader must stay.
//! - The command completes when a request is in the entry's buffers: the header buffer has
//!   `fuse_in_header`, the opcode's fixed struct (`op_in`) and `commit_id`; the payload
//!   buffer has the rest (names, write data). The reply goes in the same buffers, sent with
//!   `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`, which also waits for the next request.
//! - Commands need 128-byte SQEs (`IORING_SETUP_SQE128`): the command area holds
//!   `fuse_uring_cmd_req`.
//!
//! Threads: each thread owns one small ring and one entry on one queue and serves its
//! requests synchronously, so `threads_per_queue` entries per queue are served at once (as
//! many as `/dev/fuse` request threads would be). The payload buffer is page-aligned, so
//! write data arrives aligned (an `O_DIRECT` write needs no bounce) and reads can be done
//! straight into the reply.

use std::alloc::Layout;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use io_uring::{IoUring, cqueue, opcode, squeue, types};

use super::fuse_abi::{IN_OUT_BYTES, InHeader};

/// Where root turns FUSE over io_uring on (`Y`/`N`).
pub const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// `FUSE_IO_URING_CMD_REGISTER` (uapi `enum fuse_uring_cmd`).
const CMD_REGISTER: u32 = 1;
/// `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`.
const CMD_COMMIT_AND_FETCH: u32 = 2;
/// `sizeof(struct fuse_in_header)`.
const IN_HEADER_BYTES: usize = 40;
/// `sizeof(struct fuse_out_header)`.
const OUT_HEADER_BYTES: u32 = 16;
/// Byte offset of `len` in `struct io_uring_sqe` (opcode, flags, ioprio, fd, off, addr).
const SQE_LEN_OFFSET: usize = 24;
const PAGE: usize = 4096;

/// `struct fuse_uring_req_header`: `fuse_in_header`/`fuse_out_header`, the opcode's fixed
/// struct, then `struct fuse_uring_ent_in_out`.
#[repr(C)]
struct ReqHeader {
    in_out: [u8; IN_OUT_BYTES],
    op_in: [u8; IN_OUT_BYTES],
    ent_flags: u64,
    /// The request's id, echoed in the commit.
    ent_commit_id: u64,
    /// Bytes valid in the payload, in either direction.
    ent_payload_bytes: u32,
    ent_padding: u32,
    ent_reserved: u64,
}

/// True when root has turned FUSE over io_uring on.
pub fn enabled() -> bool {
    available().is_ok()
}

/// `Ok` when the kernel will offer FUSE over io_uring to a new mount (root has set
/// `enable_uring`), else why not, naming the knob.
pub fn available() -> Result<(), String> {
    match std::fs::read_to_string(ENABLE_URING) {
        Ok(v) if is_on(&v) => Ok(()),
        Ok(v) => Err(format!(
            "{ENABLE_URING} is {} (off: the kernel's default)",
            v.trim()
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(format!(
            "this kernel has no FUSE over io_uring ({ENABLE_URING} does not exist: Linux 6.14 \
             or later built with CONFIG_FUSE_IO_URING has it)"
        )),
        Err(e) => Err(format!("cannot read {ENABLE_URING}: {e}")),
    }
}

fn is_on(v: &str) -> bool {
    matches!(v.trim(), "Y" | "y" | "1")
}

/// Turns FUSE over io_uring on (root) and puts the knob back as it was when dropped. Only a
/// mount made while it is on can use the ring; mounts made before or after are unaffected.
/// For the tests and the bench only (feature `testbed`): the daemon never sets the knob.
#[cfg(feature = "testbed")]
#[derive(Debug)]
pub struct Enabled {
    was: bool,
}

#[cfg(feature = "testbed")]
impl Enabled {
    /// Sets `enable_uring` (`ENOENT`: this kernel has no FUSE over io_uring).
    pub fn set() -> io::Result<Enabled> {
        Enabled::set_to(true)
    }

    /// Sets `enable_uring` to `on` (off: to show a mount's fallback to `/dev/fuse`).
    pub fn set_to(on: bool) -> io::Result<Enabled> {
        let was = std::fs::read_to_string(ENABLE_URING)
            .map_err(|e| io::Error::new(e.kind(), format!("read {ENABLE_URING}: {e}")))?;
        let was = is_on(&was);
        std::fs::write(ENABLE_URING, if on { "1" } else { "0" })
            .map_err(|e| io::Error::new(e.kind(), format!("write {ENABLE_URING}: {e}")))?;
        Ok(Enabled { was })
    }
}

#[cfg(feature = "testbed")]
impl Drop for Enabled {
    fn drop(&mut self) {
        let v = if self.was { "1" } else { "0" };
        if let Err(e) = std::fs::write(ENABLE_URING, v) {
            eprintln!("cannot restore {ENABLE_URING} to {v}: {e}");
        }
    }
}

/// The number of queues the kernel makes: one per possible CPU
/// (`/sys/devices/system/cpu/possible`, e.g. `0-1` or `0-3,6`).
pub fn queue_count() -> io::Result<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    cpu_count(&text).ok_or_else(|| io::Error::other(format!("cannot parse possible CPUs {text:?}")))
}

/// How many CPUs a kernel CPU list (`0-1`, `0-3,6`) names.
fn cpu_count(list: &str) -> Option<usize> {
    let mut n = 0;
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => {
                let a: usize = a.parse().ok()?;
                let b: usize = b.parse().ok()?;
                b.checked_sub(a)? + 1
            }
            None => {
                part.parse::<usize>().ok()?;
                1
            }
        };
    }
    (n > 0).then_some(n)
}

/// Serves the requests the ring delivers.
pub trait Handler: Send + Sync + 'static {
    /// Serves one request. `op_in` is the opcode's fixed struct (`fuse_read_in`, ...;
    /// zeros past its size; empty for opcodes whose first argument is a name, such as
    /// LOOKUP and UNLINK). `payload` is the entry's whole page-aligned payload buffer: its
    /// first `in_bytes` bytes are the request's data (names, write data); the reply's data
    /// goes at its start. Returns the reply's length, or an errno (positive).
    fn handle(
        &self,
        header: &InHeader,
        op_in: &[u8; IN_OUT_BYTES],
        payload: &mut [u8],
        in_bytes: usize,
    ) -> Result<usize, i32>;
}

/// How the ring is laid out.
#[derive(Debug, Clone, Copy)]
pub struct RingConfig {
    /// Entries (and threads) per queue.
    pub threads_per_queue: usize,
    /// Bytes of each payload buffer: at least the largest request (`max_write`,
    /// `max_pages` pages), or the kernel refuses the registration (`EINVAL`).
    pub payload_bytes: usize,
    /// Bind each queue's threads to that queue's CPU (as libfuse does).
    pub pin: bool,
}

/// The ring's threads. They end when the connection ends (unmount).
#[derive(Debug)]
pub struct Ring {
    threads: Vec<JoinHandle<io::Result<()>>>,
}

impl Ring {
    /// Registers `config.threads_per_queue` entries on every queue of the FUSE connection
    /// `dev` (a `/dev/fuse` descriptor whose INIT was answered with `FUSE_OVER_IO_URING`),
    /// each served by a thread of its own calling `handler`. Returns once every entry is
    /// registered: from then on the kernel sends every request but FORGET and INTERRUPT to
    /// the ring.
    pub fn start<H: Handler>(
        dev: &impl AsFd,
        config: RingConfig,
        handler: Arc<H>,
    ) -> io::Result<Ring> {
        let queues = queue_count()?;
        let qid_max = u16::try_from(queues).map_err(|_| io::Error::other("too many CPUs"))?;
        let (tx, rx) = mpsc::channel::<io::Result<()>>();
        let mut threads = Vec::new();
        for qid in 0..qid_max {
            for k in 0..config.threads_per_queue.max(1) {
                let dev = dev.as_fd().try_clone_to_owned()?;
                let handler = Arc::clone(&handler);
                let tx = tx.clone();
                threads.push(
                    std::thread::Builder::new()
                        .name(format!("fuse-ring-{qid}-{k}"))
                        .spawn(move || serve_entry(dev, qid, config, &*handler, &tx))?,
                );
            }
        }
        drop(tx);
        for _ in 0..threads.len() {
            match rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(io::Error::other("a ring thread ended before registering")),
            }
        }
        Ok(Ring { threads })
    }

    /// Waits for every thread to end (the connection ended); the first error, if any.
    pub fn join(self) -> io::Result<()> {
        let mut result = Ok(());
        for t in self.threads {
            let r = t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("a ring thread panicked")));
            if result.is_ok() {
                result = r;
            }
        }
        result
    }
}

/// One page-aligned heap block the kernel reads and writes while a command is in flight.
/// Only raw pointers to it exist while the kernel may write it; a slice is made of it only
/// between a command's completion and the next submission.
struct Block {
    ptr: *mut u8,
    layout: Layout,
}

impl Block {
    fn new(bytes: usize) -> io::Result<Block> {
        let layout = Layout::from_size_align(bytes.max(PAGE), PAGE)
            .map_err(|e| io::Error::other(format!("ring buffer of {bytes} bytes: {e}")))?;
        // SAFETY: `layout` has a non-zero size (at least a page).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        Ok(Block { ptr, layout })
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc_zeroed` with this `layout`, once.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// A connection gone (unmounted, aborted) or the ring being torn down: the end.
fn is_end(errno: i32) -> bool {
    matches!(
        errno,
        libc::ENOTCONN | libc::ECANCELED | libc::ENODEV | libc::ECONNABORTED
    )
}

fn cmd_req(qid: u16, commit_id: u64) -> [u8; 80] {
    // struct fuse_uring_cmd_req { u64 flags; u64 commit_id; u16 qid; u8 padding[6]; }
    let mut cmd = [0u8; 80];
    cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    cmd[16..18].copy_from_slice(&qid.to_ne_bytes());
    cmd
}

/// One entry on queue `qid`, served by the calling thread until the connection ends.
fn serve_entry<H: Handler + ?Sized>(
    dev: OwnedFd,
    qid: u16,
    config: RingConfig,
    handler: &H,
    registered: &mpsc::Sender<io::Result<()>>,
) -> io::Result<()> {
    // Declared before the ring, so the ring (and with it any command still in flight)
    // is gone before the buffers its commands point at are freed.
    let setup = (|| -> io::Result<_> {
        if config.pin {
            let mut set = rustix::thread::CpuSet::new();
            set.set(usize::from(qid));
            rustix::thread::sched_setaffinity(None, &set)?;
        }
        let header = Block::new(std::mem::size_of::<ReqHeader>())?;
        let payload = Block::new(config.payload_bytes)?;
        Ok((header, payload))
    })();
    let (header, payload) = match setup {
        Ok(s) => s,
        Err(e) => return refuse(registered, qid, e),
    };
    let payload_bytes = payload.layout.size();
    // The iovec pair REGISTER points at; the kernel reads it while it registers.
    let iov = Box::new([
        libc::iovec {
            iov_base: header.ptr.cast(),
            iov_len: std::mem::size_of::<ReqHeader>(),
        },
        libc::iovec {
            iov_base: payload.ptr.cast(),
            iov_len: payload_bytes,
        },
    ]);
    let mut ring: IoUring<squeue::Entry128, cqueue::Entry> = match IoUring::builder().build(2) {
        Ok(r) => r,
        Err(e) => return refuse(registered, qid, e),
    };
    let fd = types::Fd(dev.as_raw_fd());

    let mut sqe = opcode::UringCmd80::new(fd, CMD_REGISTER)
        .cmd(cmd_req(qid, 0))
        .addr(Some(iov.as_ptr() as u64))
        .build();
    // `io-uring`'s UringCmd80 has no `len`; REGISTER needs len = 2 (the iovec count).
    // SAFETY: `Entry128` is `repr(C)` over `struct io_uring_sqe` followed by the 64-byte
    // command tail; `len` is the `u32` at byte 24 of the SQE, inside the value we own.
    unsafe {
        std::ptr::from_mut(&mut sqe)
            .cast::<u8>()
            .add(SQE_LEN_OFFSET)
            .cast::<u32>()
            .write_unaligned(2);
    }
    let first = submit(&mut ring, &sqe).and_then(|()| {
        // A refused registration completes at once; an accepted one only when a request
        // arrives.
        match ring.completion().next() {
            Some(c) if c.result() < 0 => Err(io::Error::from_raw_os_error(-c.result())),
            Some(_) => Err(io::Error::other("REGISTER completed without a request")),
            None => Ok(()),
        }
    });
    if let Err(e) = first {
        return refuse(registered, qid, e);
    }
    let _ = registered.send(Ok(()));

    loop {
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
        let Some(c) = ring.completion().next() else {
            continue;
        };
        if c.result() < 0 {
            let errno = -c.result();
            if is_end(errno) {
                return Ok(());
            }
            return Err(io::Error::from_raw_os_error(errno));
        }
        // SAFETY: the command completed, so the kernel is done with both blocks until the
        // next submission; they are ours, live (owned by this frame) and sized as
        // `ReqHeader` and `payload_bytes`. The slices end before `submit` below.
        let (h, body) = unsafe {
            (
                &mut *header.ptr.cast::<ReqHeader>(),
                std::slice::from_raw_parts_mut(payload.ptr, payload_bytes),
            )
        };
        let head = InHeader::decode(&h.in_out);
        let commit_id = h.ent_commit_id;
        let in_bytes = (h.ent_payload_bytes as usize).min(payload_bytes);
        let (error, out_bytes) = match handler.handle(&head, &h.op_in, body, in_bytes) {
            Ok(n) => (0i32, n.min(payload_bytes)),
            Err(errno) => (-errno.abs(), 0),
        };
        // struct fuse_out_header { u32 len; i32 error; u64 unique; }
        let out_len = OUT_HEADER_BYTES + u32::try_from(out_bytes).unwrap_or(u32::MAX);
        h.in_out[..IN_HEADER_BYTES].fill(0);
        h.in_out[0..4].copy_from_slice(&out_len.to_ne_bytes());
        h.in_out[4..8].copy_from_slice(&error.to_ne_bytes());
        h.in_out[8..16].copy_from_slice(&head.unique.to_ne_bytes());
        h.ent_payload_bytes = u32::try_from(out_bytes).unwrap_or(u32::MAX);
        h.ent_flags = 0;
        let sqe = opcode::UringCmd80::new(fd, CMD_COMMIT_AND_FETCH)
            .cmd(cmd_req(qid, commit_id))
            .build();
        // Submitted by the wait at the top of the loop: one system call per request sends
        // this reply and waits for the next request. A refused commit completes with its
        // error.
        push(&mut ring, &sqe)?;
    }
}

/// Reports a queue's entry that could not be registered, and ends its thread.
fn refuse(registered: &mpsc::Sender<io::Result<()>>, qid: u16, e: io::Error) -> io::Result<()> {
    let msg = format!("FUSE ring queue {qid}: registering an entry: {e}");
    let _ = registered.send(Err(io::Error::new(e.kind(), msg.clone())));
    Err(io::Error::new(e.kind(), msg))
}

/// Pushes `sqe` and submits it.
fn submit(
    ring: &mut IoUring<squeue::Entry128, cqueue::Entry>,
    sqe: &squeue::Entry128,
) -> io::Result<()> {
    push(ring, sqe)?;
    loop {
        match ring.submit() {
            Ok(_) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Pushes `sqe` (the ring has room: one command in flight per ring).
fn push(
    ring: &mut IoUring<squeue::Entry128, cqueue::Entry>,
    sqe: &squeue::Entry128,
) -> io::Result<()> {
    // SAFETY: what `sqe` points at (the iovec pair, the header and payload blocks) is owned
    // by `serve_entry`'s frame and declared before its ring, so it outlives the ring and
    // every command in it; `serve_entry` makes no reference to it until the command
    // completes.
    unsafe {
        ring.submission()
            .push(sqe)
            .map_err(|_| io::Error::other("the FUSE ring's submission queue is full"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_count_as_the_kernel_counts_possible_cpus() {
        assert_eq!(cpu_count("0-1\n"), Some(2));
        assert_eq!(cpu_count("0"), Some(1));
        assert_eq!(cpu_count("0-3,6,8-9"), Some(7));
        assert_eq!(cpu_count(""), None);
        assert_eq!(cpu_count("3-1"), None);
        assert_eq!(cpu_count("x"), None);
    }

    #[test]
    fn the_request_header_is_the_uapi_layout() {
        // struct fuse_uring_req_header: 128 + 128 + struct fuse_uring_ent_in_out (32).
        assert_eq!(std::mem::size_of::<ReqHeader>(), 288);
        assert_eq!(std::mem::offset_of!(ReqHeader, ent_commit_id), 264);
        assert_eq!(std::mem::offset_of!(ReqHeader, ent_payload_bytes), 272);
    }
}
