//! How an operation reaches a database's copies: reads go to the active copy and fail
//! over; mutations go to every copy that takes them, the answers are reconciled by the
//! outcome rules (module [`super`]), and a failed copy is reported to the [`Store`].

use std::io;
use std::sync::Arc;
use std::time::Instant;

use super::{BackingFile, CopyState, Database, MAX_COPIES, OpenFiles};
use crate::names::CopySlot;
use crate::volume::{
    AlignedBuf, Backend, Call, ChainWrite, DIRECT_ALIGN, VolFile, Volume, finish_first, held_back,
    is_direct_aligned, is_media_error, is_timeout, makes_here, on_this_thread, serving_requests,
    write_direct,
};

/// The largest read that goes `O_DIRECT` to the backing file for an `O_DIRECT` caller.
const DIRECT_READ_MAX: usize = 64 << 10;

/// One copy a fan-out writes to: its index, volume and the handle's file there.
type Target = (usize, Arc<Volume>, Arc<BackingFile>);

impl Database {
    /// Handles an error of copy `i` during `op`. Returns true when the copy was failed (the
    /// caller goes on without it), false when the error belongs to the caller.
    pub fn on_error(&self, i: usize, op: &str, err: &io::Error, another_succeeded: bool) -> bool {
        let Some(store) = self.store.upgrade() else {
            return false;
        };
        let placement = self.copies[i].placement();
        if is_media_error(err) {
            match &placement.volume {
                Some(v) => {
                    v.count_io_error();
                    store.volume_failed(v, op, err)
                }
                None => true,
            }
        } else if another_succeeded {
            store.copy_diverged(self, CopySlot::new(i), op, err);
            true
        } else {
            false
        }
    }

    /// Before a mutation is acknowledged: when it skipped a copy, the copy's failure must
    /// be durable first.
    fn settle(&self) -> io::Result<()> {
        if self.degraded()
            && let Some(store) = self.store.upgrade()
        {
            store.barrier()?;
        }
        Ok(())
    }

    /// The active copy and its volume; `EIO` when no copy is in sync.
    pub(super) fn active(&self) -> io::Result<(usize, Arc<Volume>)> {
        loop {
            let i = self
                .active_index()
                .ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))?;
            match self.copies[i].in_sync_volume() {
                Some(v) => return Ok((i, v)),
                // Failed since it was read: elect again.
                None => self.elect(),
            }
        }
    }

    /// Runs `f` on the active copy; a media error fails that copy and `f` runs again on
    /// the next one. For reads and lookups.
    pub fn read_op<T>(
        &self,
        op: &str,
        mut f: impl FnMut(usize, &Volume) -> io::Result<T>,
    ) -> io::Result<T> {
        loop {
            let (i, v) = self.active()?;
            match f(i, &v) {
                Ok(t) => return Ok(t),
                Err(e) if is_media_error(&e) => {
                    self.on_error(i, op, &e, false);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Applies a metadata mutation: first on the active copy (whose answer decides), then
    /// on every other copy that takes mutations (in sync or being seeded). Returns the
    /// active copy's result.
    pub fn mutate<T>(
        &self,
        op: &str,
        f: impl Fn(usize, &Volume) -> io::Result<T>,
    ) -> io::Result<T> {
        self.mutate_where(op, |_| true, f)
    }

    /// [`Database::mutate`] on the copies for which `has(i)` holds.
    pub(super) fn mutate_where<T>(
        &self,
        op: &str,
        has: impl Fn(usize) -> bool,
        f: impl Fn(usize, &Volume) -> io::Result<T>,
    ) -> io::Result<T> {
        self.on_every_copy(op, has, f, true)
    }

    /// Opens a file on every copy that takes mutations (see [`Database::mutate`]). An open
    /// that changes nothing (no `O_TRUNC`) is answered even when the failure of a copy it
    /// skipped could not be recorded (see `settle`): reads go on.
    pub(super) fn open_where<T>(
        &self,
        op: &str,
        changes: bool,
        f: impl Fn(usize, &Volume) -> io::Result<T>,
    ) -> io::Result<T> {
        self.on_every_copy(op, |_| true, f, changes)
    }

    fn on_every_copy<T>(
        &self,
        op: &str,
        has: impl Fn(usize) -> bool,
        f: impl Fn(usize, &Volume) -> io::Result<T>,
        changes: bool,
    ) -> io::Result<T> {
        let _namespace = self.namespace_shared();
        let (first, result) = loop {
            let (active, _) = self.active()?;
            let order = std::iter::once(active).chain(
                (0..self.copies.len())
                    .filter(|&i| i != active && self.copies[i].is(CopyState::InSync)),
            );
            let mut target = None;
            for i in order.filter(|&i| has(i)) {
                if let Some(v) = self.copies[i].in_sync_volume() {
                    target = Some((i, v));
                    break;
                }
            }
            let (i, v) = target.ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))?;
            match f(i, &v) {
                Ok(t) => break (i, t),
                Err(e) => {
                    if !self.on_error(i, op, &e, false) {
                        return Err(e);
                    }
                }
            }
        };
        for (i, c) in self.copies.iter().enumerate() {
            if i == first || !has(i) {
                continue;
            }
            let Some(p) = c.writable() else { continue };
            let Some(v) = &p.volume else { continue };
            if let Err(e) = f(i, v) {
                self.on_error(i, op, &e, true);
            }
        }
        self.tap.mutated();
        if changes {
            self.settle()?;
        }
        Ok(result)
    }

    /// Reads from the active copy's file, failing over on media errors. Fills `buf`
    /// unless end of file comes first; returns the bytes read.
    ///
    /// `direct`: the caller opened the file with `O_DIRECT`. Its small aligned reads then
    /// bypass the backing page cache too, as they would on the disk itself: no memory
    /// spent caching what the database caches, and less work per read. Large reads stay
    /// buffered, where the backing readahead makes them faster than the disk alone.
    pub fn read_at(
        &self,
        files: &OpenFiles,
        offset: u64,
        buf: &mut [u8],
        direct: bool,
    ) -> io::Result<usize> {
        let read = |v: &Volume, f: &BackingFile, offset: u64, buf: &mut [u8]| {
            let direct = direct
                && buf.len() <= DIRECT_READ_MAX
                && (offset as usize | buf.len() | buf.as_ptr().addr()) % DIRECT_ALIGN == 0;
            if direct && let Some(d) = f.direct(v) {
                match v.read_at(d, offset, buf) {
                    // The backing filesystem wants a larger alignment than ours; or the
                    // handle was opened write-only.
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EBADF)) => {}
                    r => return r,
                }
            }
            v.read_at(&f.file, offset, buf)
        };
        if !self.sums.enabled() {
            return self.read_backing_op("read", files, |v, f| read(v, f, offset, buf));
        }
        // Checked reads cover whole blocks: a read that starts or ends inside one reads
        // the whole block into a buffer of its own.
        let block = crate::checksum::BLOCK_BYTES;
        let start = offset / block * block;
        let end = (offset + buf.len() as u64).div_ceil(block) * block;
        if start == offset && end == offset + buf.len() as u64 {
            return self.read_checked(files, offset, buf, read);
        }
        let mut whole = vec![0u8; (end - start) as usize];
        let n = self.read_checked(files, start, &mut whole, read)?;
        let skip = (offset - start) as usize;
        let n = n.saturating_sub(skip).min(buf.len());
        buf[..n].copy_from_slice(&whole[skip..skip + n]);
        Ok(n)
    }

    /// Runs `f` on the handle's file of the active copy (or, when the handle has no file
    /// there, of another in-sync copy); a media error fails that copy and `f` runs again.
    pub fn read_file_op<T>(
        &self,
        op: &str,
        files: &OpenFiles,
        mut f: impl FnMut(&Volume, &VolFile) -> io::Result<T>,
    ) -> io::Result<T> {
        self.read_backing_op(op, files, |v, b| f(v, &b.file))
    }

    /// [`Database::read_file_op`] on the handle's [`BackingFile`].
    fn read_backing_op<T>(
        &self,
        op: &str,
        files: &OpenFiles,
        mut f: impl FnMut(&Volume, &BackingFile) -> io::Result<T>,
    ) -> io::Result<T> {
        loop {
            let (active, _) = self.active()?;
            let order = std::iter::once(active).chain(
                (0..self.copies.len())
                    .filter(|&i| i != active && self.copies[i].is(CopyState::InSync)),
            );
            let mut target = None;
            for i in order {
                if let (Some(v), Some(file)) = (
                    self.copies[i].in_sync_volume(),
                    files.get(i, &self.copies[i]),
                ) {
                    target = Some((i, v, file));
                    break;
                }
            }
            let (i, v, file) = target.ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))?;
            match v.timed(|| f(&v, &file)) {
                Ok(t) => return Ok(t),
                Err(e) if is_media_error(&e) => {
                    self.on_error(i, op, &e, false);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes `data` at `offset` to every in-sync copy, all at once; to the copy being
    /// seeded too when `to_seeding` (see [`super::SeedFile`]).
    pub(super) fn write_at(
        &self,
        files: &OpenFiles,
        offset: u64,
        data: &[u8],
        to_seeding: bool,
    ) -> io::Result<usize> {
        let len = data.len();
        // The sums of the blocks the write covers (aligned O_DIRECT writes cover whole
        // blocks, so theirs need no read); each copy's lane writes them after the data.
        let sums = self.sums_for_write(files, offset, data)?;
        if files.is_direct() && is_direct_aligned(offset, len) {
            // An O_DIRECT caller: its data goes O_DIRECT to every copy, from one aligned
            // copy (the same one copy as below, aligned), so that a database caching its
            // own pages is not cached again, once per copy.
            let shared = Arc::new(AlignedBuf::copy_of(data));
            return self
                .fan_out(files, "write", len, to_seeding, false, |i, v, f| {
                    let direct = f.direct(v).cloned();
                    let write = {
                        let (file, direct, data) = (f.file.clone(), direct.clone(), shared.clone());
                        move |be: &dyn Backend| match &direct {
                            Some(d) => write_direct(be, &file, d, offset, data.as_slice()),
                            None => be.write_all_at(&file, offset, data.as_slice()),
                        }
                    };
                    // From this thread when the backend can (io_uring): no lane thread
                    // in between, the same deadline. (Made here at once instead, when
                    // the call is: the sums' buffered write then needs no io_uring
                    // worker either.)
                    if let Some(d) = direct
                        && !makes_here()
                    {
                        let chain = ChainWrite {
                            file: d,
                            offset,
                            data: shared.clone(),
                        };
                        let started = match &sums {
                            Some(sums) => {
                                self.start_summed_write(i, v, f, sums, chain, write.clone())
                            }
                            None => v.start_writes("write", vec![chain], write.clone(), |_| {}),
                        };
                        if let Some(call) = started {
                            return call;
                        }
                    }
                    match &sums {
                        Some(sums) => self.submit_summed_write(i, v, f, sums, write),
                        None => v.submit("write", write),
                    }
                })
                .map(|()| len);
        }
        // One copy of the data, shared by every copy's lane (a call that misses its
        // deadline keeps it until the disk answers), made when a lane is first handed
        // the write: a call made here at once (a database's only copy in sync, see
        // `fan_out`) writes from the request's own buffer.
        let shared = std::cell::OnceCell::new();
        let shared = || shared.get_or_init(|| Arc::<[u8]>::from(data)).clone();
        let chained = len <= CHAINED_WRITE_MAX;
        self.fan_out(files, "write", len, to_seeding, chained, |i, v, f| {
            if makes_here() {
                let write = |be: &dyn Backend| be.write_all_at(&f.file, offset, data);
                return match &sums {
                    Some(sums) => self.make_summed_write_here(i, v, f, sums, write),
                    None => v.make_here("write", write),
                };
            }
            match &sums {
                Some(sums) => {
                    let (file, data) = (f.file.clone(), shared());
                    self.submit_summed_write(i, v, f, sums, move |be| {
                        be.write_all_at(&file, offset, &data)
                    })
                }
                None => v.submit_write(&f.file, offset, shared()),
            }
        })
        .map(|()| len)
    }

    /// After a write that every in-sync copy refused (ENOSPC, EDQUOT, a short write that
    /// could not go on): each copy may hold a different part of it. Makes every other
    /// in-sync copy equal to the active one in `[offset, offset+len)` and in size, before
    /// the error goes back; a copy that cannot be made equal (it refuses the bytes too) is
    /// failed as diverged (3003). Call with the file's resize lock held exclusively (no
    /// write in flight, sizes stable).
    pub(super) fn equalize_after_refused_write(&self, files: &OpenFiles, offset: u64, len: usize) {
        let Ok((active, av)) = self.active() else {
            return;
        };
        let Some(af) = files.get(active, &self.copies[active]) else {
            return;
        };
        let mut want = vec![0u8; len];
        let size = read_full(&av, &af.file, offset, &mut want)
            .and_then(|n| Ok((n, av.fstat(&af.file)?.st_size as u64)));
        let (n, size) = match size {
            Ok(x) => x,
            Err(e) => {
                // The active copy's own error (a media error fails it; the next write
                // or read meets the rest).
                self.on_error(active, "write (reading back a refused write)", &e, false);
                return;
            }
        };
        for (i, c) in self.copies.iter().enumerate() {
            if i == active || !c.is(CopyState::InSync) {
                continue;
            }
            let (Some(v), Some(f)) = (c.in_sync_volume(), files.get(i, c)) else {
                continue;
            };
            let made_equal = (|| -> io::Result<()> {
                let mut have = vec![0u8; n];
                if read_full(&v, &f.file, offset, &mut have)? != n || have != want[..n] {
                    v.write_all_at(&f.file, offset, &want[..n])?;
                }
                if v.fstat(&f.file)?.st_size as u64 != size {
                    v.set_len(&f.file, size)?;
                }
                Ok(())
            })();
            if let Err(e) = made_equal {
                tracing::warn!(
                    "{}: copy on {} cannot be made equal to the active copy after a write                      every copy refused: {e}",
                    self.name,
                    v.name()
                );
                self.on_error(
                    i,
                    "write (making the copies equal after a refused write)",
                    &e,
                    true,
                );
            }
        }
    }

    /// Starts writing `[offset, offset+len)` of the handle's files back to every copy's
    /// disk, without waiting (a sequential writer's run, see `fs::node::WriteRun`). An
    /// error here is left to the next write or `fsync` to report.
    pub fn start_writeback(&self, files: &OpenFiles, offset: u64, len: u64) {
        for (i, c) in self.copies.iter().enumerate() {
            let Some(p) = c.writable() else { continue };
            if let (Some(v), Some(f)) = (&p.volume, files.get(i, c)) {
                v.start_writeback(&f.file, offset, len);
            }
        }
    }

    /// `fsync`/`fdatasync` on every copy that takes writes, in parallel: returns when all
    /// are durable.
    pub(super) fn sync_files(&self, files: &OpenFiles, datasync: bool) -> io::Result<()> {
        let op = if datasync { "fdatasync" } else { "fsync" };
        // The sums are not synced here: where they may lag the data after a crash, the
        // activity log says so (its checkpoint syncs whole volumes), and crash repair sums
        // those extents again.
        self.fan_out(files, op, 0, true, false, |_, v, f| {
            v.submit_sync(&f.file, datasync)
        })
    }

    /// Applies `f` to the open file of every copy that takes mutations (active first):
    /// truncate, fallocate, setattr through a handle. A copy where the handle has no file
    /// (it was unlinked before that copy was laid out) has nothing to change.
    pub fn mutate_files<T>(
        &self,
        op: &str,
        files: &OpenFiles,
        f: impl Fn(&Volume, &VolFile) -> io::Result<T>,
    ) -> io::Result<T> {
        self.mutate_where(
            op,
            |i| files.get(i, &self.copies[i]).is_some(),
            |i, v| match files.get(i, &self.copies[i]) {
                Some(file) => f(v, &file.file),
                None => Err(io::Error::from_raw_os_error(libc::EIO)),
            },
        )
    }

    /// [`Database::mutate_files`] with the copy's index and [`BackingFile`].
    pub(super) fn mutate_backing<T>(
        &self,
        op: &str,
        files: &OpenFiles,
        f: impl Fn(usize, &Volume, &BackingFile) -> io::Result<T>,
    ) -> io::Result<T> {
        self.mutate_where(
            op,
            |i| files.get(i, &self.copies[i]).is_some(),
            |i, v| match files.get(i, &self.copies[i]) {
                Some(file) => f(i, v, &file),
                None => Err(io::Error::from_raw_os_error(libc::EIO)),
            },
        )
    }

    /// Hands `submit(copy, volume, file)` to every in-sync copy's lane at once (and the seeding
    /// copy's when `to_seeding`) where the handle has a file, waits for every answer until
    /// the deadline, then reconciles the outcomes. `len`: the bytes of data written (for
    /// the volumes' counters). `chained`: the calls are cheap enough to be made one after
    /// another by one lane thread (a small buffered write, see [`crate::volume::chain`]).
    fn fan_out<T: Send + 'static>(
        &self,
        files: &OpenFiles,
        op: &'static str,
        len: usize,
        to_seeding: bool,
        chained: bool,
        submit: impl Fn(usize, &Volume, &BackingFile) -> Call<T>,
    ) -> io::Result<T> {
        loop {
            let mut targets: [Option<Target>; MAX_COPIES] = Default::default();
            let mut n = 0;
            let active = self.active_index();
            // Active copy first: its error decides when no copy succeeds. A seeding copy
            // never goes first and never makes a write count as done on its own.
            let order = active
                .into_iter()
                .chain((0..self.copies.len()).filter(|&i| Some(i) != active));
            let mut in_sync = 0;
            for i in order {
                let c = &self.copies[i];
                let take =
                    c.is(CopyState::InSync) || (to_seeding && c.is(CopyState::Seeding) && n > 0);
                if !take || n == targets.len() {
                    continue;
                }
                let Some(p) = c.writable() else { continue };
                let (Some(v), Some(f)) = (p.volume.clone(), files.get(i, c)) else {
                    continue;
                };
                in_sync += usize::from(c.is(CopyState::InSync));
                targets[n] = Some((i, v, f));
                n += 1;
            }
            if in_sync == 0 {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            // Every copy at once, each on its volume's lane; then every answer, each
            // within its volume's deadline (see `finish_first`: when no in-sync copy
            // answers in time, the first to answer at all).
            let started = Instant::now();
            let mut calls: [Option<(&Volume, Call<T>, Instant)>; MAX_COPIES] = Default::default();
            if n == 1 && in_sync == 1 && serving_requests() {
                // The database's only copy in sync, for a request: it would be waited
                // for however long anyway (see `volume::serve_requests`), so the call is
                // made here, without the lane's hand-off and wake-ups.
                if let Some((i, v, f)) = &targets[0] {
                    calls[0] = Some((&**v, on_this_thread(|| submit(*i, v, f)), v.deadline()));
                }
            } else if chained && n > 1 {
                for (slot, t) in targets[..n].iter().enumerate() {
                    if let Some((i, v, f)) = t {
                        calls[slot] = Some((&**v, held_back(|| submit(*i, v, f)), v.deadline()));
                    }
                }
                crate::volume::chain(&mut calls[..n]);
            } else {
                for (slot, t) in targets[..n].iter().enumerate() {
                    if let Some((i, v, f)) = t {
                        calls[slot] = Some((&**v, submit(*i, v, f), v.deadline()));
                    }
                }
            }
            let seeding = |slot: usize| {
                targets[slot]
                    .as_ref()
                    .is_some_and(|(i, _, _)| !self.copies[*i].is(CopyState::InSync))
            };
            let mut results: [Option<io::Result<T>>; MAX_COPIES] = Default::default();
            finish_first(
                &self.name,
                op,
                &mut calls[..n],
                &mut results[..n],
                |slot| !seeding(slot),
                |slot, r| {
                    if let Some((_, v, _)) = &targets[slot] {
                        v.observe(started.elapsed());
                        count_written(v, r, len);
                    }
                },
            );
            let any_ok = (0..n).any(|slot| !seeding(slot) && matches!(results[slot], Some(Ok(_))));
            let mut first_ok = None;
            let mut caller_err = None;
            let mut ask_again = false;
            let mut seeded_alone = Vec::new();
            for (slot, r) in results.into_iter().take(n).enumerate() {
                let Some((i, _, _)) = &targets[slot] else {
                    continue;
                };
                match r {
                    Some(Ok(_)) if seeding(slot) && !any_ok => seeded_alone.push(*i),
                    Some(Ok(t)) if first_ok.is_none() && !seeding(slot) => first_ok = Some(t),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        // A seeding copy never decides: any error of its own fails it.
                        let failed = self.on_error(*i, op, &e, any_ok || seeding(slot));
                        if !failed && is_timeout(&e) && !seeding(slot) {
                            // A late copy kept because it is the last in sync (see
                            // `Store::volume_failed`): asked again, which waits for it.
                            // Writes and syncs are made twice safely (same bytes, same
                            // place, the range still locked).
                            ask_again = true;
                        } else if !failed && caller_err.is_none() {
                            caller_err = Some(e);
                        }
                    }
                    None => {}
                }
            }
            if let Some(t) = first_ok {
                self.settle()?;
                return Ok(t);
            }
            if ask_again {
                continue;
            }
            if let Some(e) = caller_err {
                // The seeding copy took what every in-sync copy refused: it differs now.
                for i in seeded_alone {
                    self.on_error(i, op, &e, true);
                }
                return Err(e);
            }
            // Every target failed with a media error: try again on what is left.
        }
    }
}

/// The largest buffered write whose copies are made one after another by one lane thread
/// ([`crate::volume::chain`]): below it, copying the data into a page cache costs less than a
/// lane's hand-off and wake-up.
const CHAINED_WRITE_MAX: usize = 128 << 10;

/// Counts the data of a mutation that succeeded on `v` (metrics: bytes mirrored).
#[inline]
fn count_written<T>(v: &Volume, r: &io::Result<T>, len: usize) {
    if len > 0 && r.is_ok() {
        v.count_written(len);
    }
}

/// Reads `buf.len()` bytes at `offset` of `f` unless end of file comes first; returns the
/// bytes read.
fn read_full(v: &Volume, f: &VolFile, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match v.read_at(f, offset + done as u64, &mut buf[done..])? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}
