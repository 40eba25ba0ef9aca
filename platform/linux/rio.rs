//! Request writes over io_uring: a request thread hands its writes straight to the
//! kernel and waits for them itself, until a deadline, with no lane thread in between.
//!
//! Each thread that starts writes has a ring of its own (thread-local, single issuer).
//! Its task work is not deferred to the thread's next wait (`DEFER_TASKRUN`): a write
//! abandoned on a hung disk must go on (its linked sums write after its data) as soon as
//! the disk answers, as a lane thread stuck in the same call would, not whenever this
//! thread next writes. [`start`] queues a chain of writes (each
//! linked to the next: a write of a file's data, then of its sums) and submits it at
//! once: an aligned `O_DIRECT` write is issued in that call and completes from the
//! disk's interrupt; a buffered one goes to the kernel's io-wq worker. [`Chain::wait_until`]
//! waits for the chain's completions until a deadline; past it the caller may wait again
//! (every copy of a write late at once, see `volume::finish_first`) or drop the chain,
//! which is then *abandoned*: the caller goes on (the volume is failed, see `copyset`)
//! and its writes' buffers and files stay with the ring until the kernel completes them,
//! however late, so the kernel never reads memory that was freed. A ring whose every slot is held by
//! abandoned writes (a hung disk) makes [`start`] answer `None`: the caller uses the
//! volume's lane as before. A thread that ends with writes in flight leaks their buffers
//! rather than free memory the kernel may still read.
//!
//! `user_data` is the slot index; a slot is freed only when its completion arrives, so a
//! late completion never finds its slot reused.

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::os::fd::AsRawFd as _;
use std::time::Instant;

use io_uring::{IoUring, opcode, squeue, types};

use crate::volume::{Bytes, ChainWrite, Started, VolFile};

/// Slots (writes in flight or abandoned) per thread's ring.
const SLOTS: u32 = 64;

/// What a slot holds.
enum Slot {
    Free,
    /// A write handed to the kernel: its file and bytes are kept until it completes.
    Busy {
        _file: VolFile,
        _data: Bytes,
        /// The completion's result, once it came.
        result: Option<i32>,
        /// Its caller gave up: freed when the completion comes.
        abandoned: bool,
    },
}

/// One thread's ring.
struct Rio {
    ring: IoUring,
    slots: Vec<Slot>,
    free: Vec<u32>,
}

thread_local! {
    /// This thread's ring: `None` before the first use; `Err` when the kernel refused one
    /// (io_uring disabled): never asked again on this thread.
    static RIO: RefCell<Option<Result<Rio, ()>>> = const { RefCell::new(None) };
}

impl Rio {
    fn new() -> io::Result<Rio> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_submit_all()
            .build(SLOTS)?;
        Ok(Rio {
            ring,
            slots: (0..SLOTS).map(|_| Slot::Free).collect(),
            free: (0..SLOTS).rev().collect(),
        })
    }

    /// Takes the completions the ring holds into their slots (freeing abandoned ones).
    fn reap(&mut self) {
        for cqe in self.ring.completion() {
            let i = cqe.user_data() as usize;
            let Some(slot) = self.slots.get_mut(i) else {
                continue;
            };
            if let Slot::Busy {
                result, abandoned, ..
            } = slot
            {
                if *abandoned {
                    *slot = Slot::Free;
                    self.free.push(i as u32);
                } else {
                    *result = Some(cqe.result());
                }
            }
        }
    }

    fn result(&self, i: u32) -> Option<i32> {
        match &self.slots[i as usize] {
            Slot::Busy { result, .. } => *result,
            Slot::Free => Some(-libc::EIO),
        }
    }

    fn release(&mut self, i: u32) {
        self.slots[i as usize] = Slot::Free;
        self.free.push(i);
    }

    /// Gives up on `writes`: a slot whose completion came is freed, the others when theirs
    /// comes.
    fn abandon(&mut self, writes: &[(u32, usize)]) {
        for &(i, _) in writes {
            match &mut self.slots[i as usize] {
                Slot::Busy {
                    result: Some(_), ..
                } => self.release(i),
                Slot::Busy { abandoned, .. } => *abandoned = true,
                Slot::Free => {}
            }
        }
    }
}

impl Drop for Rio {
    fn drop(&mut self) {
        // Writes still in flight keep their memory: the kernel may read it after the ring
        // is closed.
        for slot in self.slots.drain(..) {
            if matches!(slot, Slot::Busy { .. }) {
                std::mem::forget(slot);
            }
        }
    }
}

/// A chain of writes started on this thread's ring: wait for it with
/// [`Chain::wait_until`], on the same thread.
pub struct Chain {
    /// Each write's slot and length.
    writes: Vec<(u32, usize)>,
    /// The ring is this thread's.
    _thread: PhantomData<*const ()>,
}

impl fmt::Debug for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("rio::Chain")
            .field("writes", &self.writes.len())
            .finish()
    }
}

/// Starts `chain` (each write after the one before it succeeded) on this thread's ring;
/// `None` when the thread has no ring (io_uring refused) or not enough free slots.
pub fn start(chain: Vec<ChainWrite>) -> Option<Chain> {
    RIO.with(|cell| {
        let mut cell = cell.borrow_mut();
        let rio = match cell.get_or_insert_with(|| {
            Rio::new().map_err(|e| {
                tracing::debug!("no io_uring for request writes on this thread: {e}");
            })
        }) {
            Ok(rio) => rio,
            Err(()) => return None,
        };
        rio.reap();
        let fits = chain
            .iter()
            .all(|w| u32::try_from((*w.data).as_ref().len()).is_ok());
        if rio.free.len() < chain.len() || chain.is_empty() || !fits {
            return None;
        }
        let last = chain.len() - 1;
        let mut writes = Vec::with_capacity(chain.len());
        for (k, w) in chain.into_iter().enumerate() {
            let i = rio.free.pop()?;
            let bytes: &[u8] = (*w.data).as_ref();
            let (ptr, len) = (bytes.as_ptr(), bytes.len());
            let mut sqe = opcode::Write::new(types::Fd(w.file.as_raw_fd()), ptr, len as u32)
                .offset(w.offset)
                .build()
                .user_data(u64::from(i));
            if k < last {
                sqe = sqe.flags(squeue::Flags::IO_LINK);
            }
            rio.slots[i as usize] = Slot::Busy {
                _file: w.file,
                _data: w.data,
                result: None,
                abandoned: false,
            };
            // SAFETY: the buffer (`ptr`, `len`) and the file belong to the slot, which
            // keeps them until the write's completion comes (or forever, see `Drop`); the
            // queue has room (at most SLOTS entries are ever in flight, the ring has
            // SLOTS submission entries and they are submitted right below).
            unsafe {
                rio.ring
                    .submission()
                    .push(&sqe)
                    .expect("a free slot has a submission entry");
            }
            writes.push((i, len));
        }
        if let Err(e) = rio.ring.submit() {
            // What was not handed over stays queued: the wait submits it.
            tracing::debug!("io_uring submit of request writes: {e}");
        }
        Some(Chain {
            writes,
            _thread: PhantomData,
        })
    })
}

impl Drop for Chain {
    /// A chain dropped unwaited (its caller unwound) is abandoned: its slots are freed when
    /// its completions come.
    fn drop(&mut self) {
        if self.writes.is_empty() {
            return;
        }
        let writes = std::mem::take(&mut self.writes);
        let _ = RIO.try_with(|cell| {
            if let Ok(mut cell) = cell.try_borrow_mut()
                && let Some(Ok(rio)) = cell.as_mut()
            {
                rio.abandon(&writes);
            }
        });
    }
}

impl Chain {
    /// Waits for every write of the chain until `deadline`: `Ok` when all were done in
    /// full, the first error, `Interrupted` for a short write (the caller writes the chain
    /// again another way), or `None` when the deadline came first (the chain is still in
    /// flight: wait again, or drop it to abandon it, see the module documentation).
    fn wait(&mut self, deadline: Instant) -> Option<io::Result<()>> {
        RIO.with(|cell| {
            let mut cell = cell.borrow_mut();
            let Some(Ok(rio)) = cell.as_mut() else {
                return Some(Err(io::Error::from_raw_os_error(libc::EIO)));
            };
            loop {
                rio.reap();
                if self.writes.iter().all(|&(i, _)| rio.result(i).is_some()) {
                    let writes = std::mem::take(&mut self.writes);
                    let mut out = Ok(());
                    for &(i, len) in &writes {
                        let r = rio.result(i).unwrap_or(-libc::EIO);
                        rio.release(i);
                        if out.is_ok() {
                            out = match r {
                                r if r < 0 => Err(io::Error::from_raw_os_error(-r)),
                                r if (r as usize) < len => Err(io::Error::new(
                                    io::ErrorKind::Interrupted,
                                    format!("short write over io_uring: {r} of {len} bytes"),
                                )),
                                _ => Ok(()),
                            };
                        }
                    }
                    return Some(out);
                }
                let now = Instant::now();
                if now >= deadline {
                    return None;
                }
                let left = deadline - now;
                let ts = types::Timespec::new()
                    .sec(left.as_secs())
                    .nsec(left.subsec_nanos());
                let args = types::SubmitArgs::new().timespec(&ts);
                match rio.ring.submitter().submit_with_args(1, &args) {
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::ETIME | libc::EINTR | libc::EAGAIN | libc::EBUSY)
                        ) => {}
                    Err(e) => {
                        tracing::warn!("io_uring wait for request writes: {e}");
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                }
            }
        })
    }
}

impl Started for Chain {
    fn wait_until(&mut self, deadline: Instant) -> Option<io::Result<()>> {
        self.wait(deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn tempdir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("reseedfs-rio-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("tempdir");
        dir
    }

    fn file(dir: &std::path::Path, name: &str) -> VolFile {
        VolFile::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(dir.join(name))
                .expect("open"),
        )
    }

    #[test]
    fn a_chain_writes_every_write_in_order() {
        let dir = tempdir("chain");
        let (a, b) = (file(&dir, "a"), file(&dir, "b"));
        let chain = vec![
            ChainWrite {
                file: a.clone(),
                offset: 4096,
                data: Arc::new(vec![7u8; 8192]),
            },
            ChainWrite {
                file: b.clone(),
                offset: 0,
                data: Arc::new(b"sums".to_vec()),
            },
        ];
        let Some(mut c) = start(chain) else {
            eprintln!("SKIPPED: io_uring refused on this machine");
            assert!(
                std::env::var_os("CI").is_none(),
                "io_uring must work under CI"
            );
            return;
        };
        let r = c.wait(Instant::now() + Duration::from_secs(10));
        assert!(matches!(r, Some(Ok(()))), "{r:?}");
        let got = std::fs::read(dir.join("a")).expect("read a");
        assert_eq!(got.len(), 12288);
        assert!(got[..4096].iter().all(|&x| x == 0));
        assert!(got[4096..].iter().all(|&x| x == 7));
        assert_eq!(std::fs::read(dir.join("b")).expect("read b"), b"sums");
    }

    /// A pipe whose buffer is full (and the bytes in it): a write to it blocks until its
    /// reader drains it, as a write to a hung disk does.
    fn full_pipe() -> (VolFile, std::io::PipeReader, usize) {
        let (r, w) = std::io::pipe().expect("pipe");
        let w = std::fs::File::from(std::os::fd::OwnedFd::from(w));
        rustix::fs::fcntl_setfl(&w, rustix::fs::OFlags::NONBLOCK).expect("nonblock");
        let chunk = [0u8; 4096];
        let mut filled = 0;
        while let Ok(n) = std::io::Write::write(&mut &w, &chunk) {
            filled += n;
        }
        rustix::fs::fcntl_setfl(&w, rustix::fs::OFlags::empty()).expect("blocking");
        (VolFile::new(w), r, filled)
    }

    #[test]
    fn a_write_that_never_completes_is_abandoned_at_the_deadline_and_freed_when_it_does() {
        let (w, mut r, filled) = full_pipe();
        let write = |n: u8| ChainWrite {
            file: w.clone(),
            offset: 0,
            data: Arc::new(vec![n; 100]),
        };
        let Some(mut c) = start(vec![write(1)]) else {
            assert!(
                std::env::var_os("CI").is_none(),
                "io_uring must work under CI"
            );
            return;
        };
        let t = Instant::now();
        let r1 = c.wait(Instant::now() + Duration::from_millis(200));
        assert!(
            r1.is_none(),
            "a blocked write must miss its deadline: {r1:?}"
        );
        let waited = t.elapsed();
        // Not waited for again: abandoned.
        drop(c);
        assert!(waited >= Duration::from_millis(200), "{waited:?}");
        assert!(waited < Duration::from_secs(2), "{waited:?}");
        // Every slot taken by abandoned writes: the ring says no, the caller uses a lane.
        for _ in 1..SLOTS {
            let mut c = start(vec![write(2)]).expect("a free slot");
            assert!(c.wait(Instant::now()).is_none());
        }
        assert!(start(vec![write(3)]).is_none(), "no free slot is left");
        // The "disk" answers at last: the abandoned writes complete and free their slots.
        // It reads what the pipe held and what the abandoned writes wrote, and keeps its end.
        let expected = filled + SLOTS as usize * 100;
        let drained = std::thread::spawn(move || {
            let mut sink = vec![0u8; 1 << 16];
            let mut total = 0;
            while total < expected {
                match std::io::Read::read(&mut r, &mut sink) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
            (total, r)
        });
        let ok = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            start(vec![write(4)]).is_some_and(|mut c| {
                matches!(
                    c.wait(Instant::now() + Duration::from_secs(5)),
                    Some(Ok(()))
                )
            })
        });
        assert!(ok, "the slots of the completed writes were never freed");
        // (The reader's end was open all along: a write to a pipe without one fails.)
        assert_eq!(drained.join().expect("reader").0, expected);
    }

    #[test]
    fn a_chain_dropped_unwaited_gives_its_slots_back() {
        let dir = tempdir("dropped");
        let a = file(&dir, "a");
        let write = || ChainWrite {
            file: a.clone(),
            offset: 0,
            data: Arc::new(vec![5u8; 512]),
        };
        let Some(c) = start(vec![write()]) else {
            assert!(
                std::env::var_os("CI").is_none(),
                "io_uring must work under CI"
            );
            return;
        };
        drop(c);
        // Every slot at once: only when the dropped chain's slot came back.
        let ok = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            start((0..SLOTS).map(|_| write()).collect()).is_some_and(|mut c| {
                matches!(
                    c.wait(Instant::now() + Duration::from_secs(5)),
                    Some(Ok(()))
                )
            })
        });
        assert!(ok, "the dropped chain's slot never came back");
    }

    #[test]
    fn an_error_is_the_chains_answer_and_the_rest_is_not_written() {
        let dir = tempdir("error");
        let b = file(&dir, "b");
        // Opened read-only: the write fails with EBADF, and the linked one is cancelled.
        std::fs::write(dir.join("ro"), b"x").expect("write");
        let ro = VolFile::new(std::fs::File::open(dir.join("ro")).expect("open"));
        let chain = vec![
            ChainWrite {
                file: ro,
                offset: 0,
                data: Arc::new(vec![1u8; 10]),
            },
            ChainWrite {
                file: b,
                offset: 0,
                data: Arc::new(vec![2u8; 10]),
            },
        ];
        let Some(mut c) = start(chain) else {
            assert!(
                std::env::var_os("CI").is_none(),
                "io_uring must work under CI"
            );
            return;
        };
        let r = c.wait(Instant::now() + Duration::from_secs(10));
        let e = r.expect("answered").expect_err("a read-only file refuses");
        assert_eq!(e.raw_os_error(), Some(libc::EBADF), "{e}");
        assert_eq!(std::fs::read(dir.join("b")).expect("read b"), b"");
    }
}
