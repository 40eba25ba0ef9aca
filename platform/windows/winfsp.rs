//! The WinFsp adapter: `impl FileSystemContext` over the core, as `platform/linux/fuse.rs`
//! is `impl fuser::Filesystem` over it. It converts and decides nothing.
//!
//! - Paths: WinFsp hands whole paths; each is checked (`crate::winrules::names`) and
//!   walked through the core's `lookup`, one component at a time, as the kernel does for
//!   FUSE, so the core's rules apply unchanged. Each lookup counts a reference in the
//!   core; the walk forgets the intermediate ones at once, and a file context keeps its
//!   node's and its parent's until it is closed.
//! - A file context holds the core's handle id, the node, and its parent and name (for
//!   delete-on-close, which WinFsp asks for in `cleanup`).
//! - Security: the descriptor is made from the file's owner and mode
//!   (`crate::winrules::security`); Windows callers act as uid 0 / gid 0.
//! - Errors: the core's errno becomes its NTSTATUS (`crate::winrules::ntstatus`).
//! - Unmount refuses while a file is open under the mount (`EBUSY`), as on Linux: pulling
//!   the filesystem from under a running database is never the right answer.

use std::ffi::{OsStr, OsString, c_void};
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::SystemTime;

use parking_lot::Mutex;
use windows_sys::Win32::Foundation::{HLOCAL, LocalFree};
use windows_sys::Win32::Security::Authorization::{
    ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
};
use windows_sys::Win32::Security::PSECURITY_DESCRIPTOR;
use winfsp::filesystem::{
    DirBuffer, DirInfo, DirMarker, FileInfo, FileSecurity, FileSystemContext, OpenFileInfo,
    VolumeInfo, WideNameInfo,
};
use winfsp::host::{FileSystemHost, FineGuard, VolumeParams};
use winfsp::{FspError, U16CStr};

use crate::fs::{Attr, Caller, Core, Errno, HandleId, Kind, NodeId, SetAttr, SetTime};
use crate::metrics::{Metrics, Op};
use crate::volume::posix;
use crate::winrules::names::{self, NameError};
use crate::winrules::ntstatus::{self, STATUS_END_OF_FILE};
use crate::winrules::security;

const FILE_ATTRIBUTE_READONLY: u32 = 0x0001;
const FILE_ATTRIBUTE_DIRECTORY: u32 = 0x0010;
const FILE_ATTRIBUTE_ARCHIVE: u32 = 0x0020;
const FILE_DIRECTORY_FILE: u32 = 0x0001;
const FILE_READ_DATA: u32 = 0x0001;
const FILE_WRITE_DATA: u32 = 0x0002;
const FILE_APPEND_DATA: u32 = 0x0004;
const GENERIC_READ: u32 = 0x8000_0000;
const GENERIC_WRITE: u32 = 0x4000_0000;
const GENERIC_ALL: u32 = 0x1000_0000;
/// `FspCleanupDelete`.
const CLEANUP_DELETE: u32 = 0x01;
/// 100 ns intervals between 1601-01-01 and 1970-01-01.
const EPOCH_DIFF_100NS: u64 = 116_444_736_000_000_000;
/// Who a Windows caller is to the core (see the module header).
const CALLER: Caller = Caller { uid: 0, gid: 0 };

fn fsp(e: Errno) -> FspError {
    FspError::NTSTATUS(ntstatus::from_errno(e.0))
}

fn name_error(e: NameError) -> FspError {
    FspError::NTSTATUS(ntstatus::from_name_error(e))
}

fn filetime(t: SystemTime) -> u64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => EPOCH_DIFF_100NS + (d.as_nanos() / 100) as u64,
        Err(_) => 0,
    }
}

fn system_time(ft: u64) -> Option<SystemTime> {
    let since = ft.checked_sub(EPOCH_DIFF_100NS)?;
    Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(since.saturating_mul(100)))
}

fn attributes(a: &Attr) -> u32 {
    let mut attrs = if a.kind == Kind::Dir {
        FILE_ATTRIBUTE_DIRECTORY
    } else {
        FILE_ATTRIBUTE_ARCHIVE
    };
    if a.perm & 0o222 == 0 {
        attrs |= FILE_ATTRIBUTE_READONLY;
    }
    attrs
}

fn fill(info: &mut FileInfo, a: &Attr) {
    info.file_attributes = attributes(a);
    info.reparse_tag = 0;
    info.file_size = a.size;
    info.allocation_size = a.blocks * 512;
    info.creation_time = filetime(a.ctime);
    info.last_access_time = filetime(a.atime);
    info.last_write_time = filetime(a.mtime);
    info.change_time = filetime(a.ctime);
    info.index_number = a.node.0;
    info.hard_links = 0;
    info.ea_size = 0;
}

/// The binary (self-relative) security descriptor of `a`.
fn descriptor(a: &Attr) -> io::Result<Vec<u8>> {
    let sddl = security::sddl(a.uid, a.gid, u32::from(a.perm), a.kind == Kind::Dir);
    let wide = super::wide(&sddl);
    let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    let mut len = 0u32;
    // SAFETY: `wide` is NUL-terminated and alive for the call; `sd` receives a LocalAlloc'd
    // descriptor of `len` bytes, copied then freed below.
    let ok = unsafe {
        ConvertStringSecurityDescriptorToSecurityDescriptorW(
            wide.as_ptr(),
            SDDL_REVISION_1,
            &mut sd,
            &mut len,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `sd` points to `len` initialised bytes until freed.
    let bytes = unsafe { std::slice::from_raw_parts(sd.cast::<u8>(), len as usize) }.to_vec();
    // SAFETY: allocated by the call above, freed once.
    unsafe {
        LocalFree(sd as HLOCAL);
    }
    Ok(bytes)
}

/// Copies `sd` into WinFsp's buffer when it fits; returns its size either way.
fn give_descriptor(sd: &[u8], out: Option<&mut [c_void]>) -> u64 {
    if let Some(out) = out {
        if out.len() >= sd.len() {
            // SAFETY: `out` has room for `sd.len()` bytes; the two do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(sd.as_ptr(), out.as_mut_ptr().cast::<u8>(), sd.len());
            }
        }
    }
    sd.len() as u64
}

/// An open file or directory.
pub struct FileContext {
    node: NodeId,
    parent: NodeId,
    name: OsString,
    handle: HandleId,
    dir: bool,
    dir_buffer: DirBuffer,
}

/// The filesystem WinFsp calls.
pub struct Context {
    core: Arc<Core>,
    /// Request latencies, when the metrics endpoint is on.
    metrics: Option<Arc<Metrics>>,
    open: Arc<AtomicUsize>,
    stopped: Arc<AtomicBool>,
}

impl Context {
    /// Runs `f` (one core call), timing it for `op` when metrics are on.
    #[inline]
    fn timed<T>(&self, op: Op, f: impl FnOnce() -> T) -> T {
        crate::volume::serve_requests();
        match &self.metrics {
            None => f(),
            Some(m) => {
                let start = std::time::Instant::now();
                let r = f();
                m.observe(op, start.elapsed());
                r
            }
        }
    }

    /// Walks `path` to its parent: the parent's node (one reference counted) and the last
    /// name (`None` for the root).
    fn walk_parent(&self, path: &U16CStr) -> winfsp::Result<(NodeId, Option<String>)> {
        let mut parts = names::walk(path.as_slice()).map_err(name_error)?;
        let last = parts.pop();
        let mut node = NodeId::ROOT;
        for part in parts {
            let attr = self.core.lookup(node, OsStr::new(&part));
            self.release_node(node);
            node = attr.map_err(fsp)?.node;
        }
        Ok((node, last))
    }

    /// Resolves `path`: its parent, its name and its attributes (the node's and the
    /// parent's references counted once each: [`Context::release_node`] both).
    fn resolve(&self, path: &U16CStr) -> winfsp::Result<(NodeId, OsString, Attr)> {
        let (parent, last) = self.walk_parent(path)?;
        let Some(name) = last else {
            let attr = self.core.getattr(NodeId::ROOT, None).map_err(fsp)?;
            return Ok((parent, OsString::new(), attr));
        };
        match self.core.lookup(parent, OsStr::new(&name)) {
            Ok(attr) => Ok((parent, name.into(), attr)),
            Err(e) => {
                self.release_node(parent);
                Err(fsp(e))
            }
        }
    }

    fn release_node(&self, node: NodeId) {
        if node != NodeId::ROOT {
            self.core.forget(node, 1);
        }
    }

    fn open_attr(
        &self,
        parent: NodeId,
        name: OsString,
        attr: &Attr,
        flags: i32,
    ) -> winfsp::Result<FileContext> {
        let dir = attr.kind == Kind::Dir;
        let handle = if dir {
            self.timed(Op::Opendir, || self.core.opendir(attr.node))
        } else {
            self.timed(Op::Open, || self.core.open(attr.node, flags))
        };
        let handle = match handle {
            Ok(h) => h,
            Err(e) => {
                self.release_node(attr.node);
                self.release_node(parent);
                return Err(fsp(e));
            }
        };
        self.open.fetch_add(1, Ordering::AcqRel);
        Ok(FileContext {
            node: attr.node,
            parent,
            name,
            handle,
            dir,
            dir_buffer: DirBuffer::new(),
        })
    }
}

/// The open flags of a granted access.
fn open_flags(access: u32) -> i32 {
    let read = access & (FILE_READ_DATA | GENERIC_READ | GENERIC_ALL) != 0;
    let write = access & (FILE_WRITE_DATA | FILE_APPEND_DATA | GENERIC_WRITE | GENERIC_ALL) != 0;
    match (read, write) {
        (_, false) => posix::O_RDONLY,
        (false, true) => posix::O_WRONLY,
        (true, true) => posix::O_RDWR,
    }
}

impl FileSystemContext for Context {
    type FileContext = FileContext;

    fn get_security_by_name(
        &self,
        file_name: &U16CStr,
        security_descriptor: Option<&mut [c_void]>,
        _reparse_point_resolver: impl FnOnce(&U16CStr) -> Option<FileSecurity>,
    ) -> winfsp::Result<FileSecurity> {
        let (parent, _, attr) = self.resolve(file_name)?;
        self.release_node(attr.node);
        self.release_node(parent);
        let sd = descriptor(&attr)?;
        Ok(FileSecurity {
            reparse: false,
            sz_security_descriptor: give_descriptor(&sd, security_descriptor),
            attributes: attributes(&attr),
        })
    }

    fn open(
        &self,
        file_name: &U16CStr,
        _create_options: u32,
        granted_access: u32,
        file_info: &mut OpenFileInfo,
    ) -> winfsp::Result<FileContext> {
        let (parent, name, attr) = self.resolve(file_name)?;
        let ctx = self.open_attr(parent, name, &attr, open_flags(granted_access))?;
        fill(file_info.as_mut(), &attr);
        Ok(ctx)
    }

    fn close(&self, context: FileContext) {
        self.core.release(context.handle);
        self.release_node(context.node);
        self.release_node(context.parent);
        self.open.fetch_sub(1, Ordering::AcqRel);
    }

    fn create(
        &self,
        file_name: &U16CStr,
        create_options: u32,
        granted_access: u32,
        _file_attributes: u32,
        _security_descriptor: Option<&[c_void]>,
        _allocation_size: u64,
        _extra_buffer: Option<&[u8]>,
        _extra_buffer_is_reparse_point: bool,
        file_info: &mut OpenFileInfo,
    ) -> winfsp::Result<FileContext> {
        let (parent, last) = self.walk_parent(file_name)?;
        let Some(name) = last else {
            return Err(fsp(Errno(libc::EEXIST)));
        };
        // The new node's reference comes from the core's create/mkdir (as a lookup's).
        let result = if create_options & FILE_DIRECTORY_FILE != 0 {
            self.core
                .mkdir(parent, OsStr::new(&name), 0o755, CALLER)
                .and_then(|attr| {
                    let h = self.core.opendir(attr.node)?;
                    Ok((attr, h, true))
                })
        } else {
            let flags = open_flags(granted_access) | posix::O_CREAT | posix::O_EXCL;
            self.core
                .create(parent, OsStr::new(&name), 0o644, flags, CALLER)
                .map(|(attr, h)| (attr, h, false))
        };
        let (attr, handle, dir) = match result {
            Ok(r) => r,
            Err(e) => {
                self.release_node(parent);
                return Err(fsp(e));
            }
        };
        self.open.fetch_add(1, Ordering::AcqRel);
        fill(file_info.as_mut(), &attr);
        Ok(FileContext {
            node: attr.node,
            parent,
            name: name.into(),
            handle,
            dir,
            dir_buffer: DirBuffer::new(),
        })
    }

    fn cleanup(&self, context: &FileContext, _file_name: Option<&U16CStr>, flags: u32) {
        if flags & CLEANUP_DELETE != 0 {
            if let Err(e) = self.core.remove(context.parent, &context.name, context.dir) {
                tracing::warn!(name = ?context.name, errno = e.0, "delete on close failed");
            }
        }
    }

    fn flush(&self, context: Option<&FileContext>, file_info: &mut FileInfo) -> winfsp::Result<()> {
        let Some(c) = context else {
            return Ok(());
        };
        if !c.dir {
            self.timed(Op::Fsync, || self.core.fsync(c.handle, false))
                .map_err(fsp)?;
        }
        fill(
            file_info,
            &self
                .core
                .getattr(c.node, (!c.dir).then_some(c.handle))
                .map_err(fsp)?,
        );
        Ok(())
    }

    fn get_file_info(&self, context: &FileContext, file_info: &mut FileInfo) -> winfsp::Result<()> {
        fill(
            file_info,
            &self
                .core
                .getattr(context.node, (!context.dir).then_some(context.handle))
                .map_err(fsp)?,
        );
        Ok(())
    }

    fn get_security(
        &self,
        context: &FileContext,
        security_descriptor: Option<&mut [c_void]>,
    ) -> winfsp::Result<u64> {
        let attr = self
            .core
            .getattr(context.node, (!context.dir).then_some(context.handle))
            .map_err(fsp)?;
        Ok(give_descriptor(&descriptor(&attr)?, security_descriptor))
    }

    fn overwrite(
        &self,
        context: &FileContext,
        _file_attributes: u32,
        _replace_file_attributes: bool,
        _allocation_size: u64,
        _extra_buffer: Option<&[u8]>,
        file_info: &mut FileInfo,
    ) -> winfsp::Result<()> {
        let set = SetAttr {
            size: Some(0),
            ..SetAttr::default()
        };
        let attr = self
            .core
            .setattr(context.node, Some(context.handle), set)
            .map_err(fsp)?;
        fill(file_info, &attr);
        Ok(())
    }

    fn read_directory(
        &self,
        context: &FileContext,
        _pattern: Option<&U16CStr>,
        marker: DirMarker,
        buffer: &mut [u8],
    ) -> winfsp::Result<u32> {
        if marker.is_none() {
            let lock = context.dir_buffer.acquire(true, None)?;
            let mut entries = Vec::new();
            self.core
                .readdir(context.handle, 0, |e, _| {
                    entries.push(e.clone());
                    false
                })
                .map_err(fsp)?;
            for e in entries {
                let attr = if e.name == "." || e.name == ".." {
                    self.core.getattr(e.node, None)
                } else {
                    self.core.lookup(context.node, &e.name).inspect(|a| {
                        self.release_node(a.node);
                    })
                };
                // An entry that vanished since the listing is left out.
                let Ok(attr) = attr else { continue };
                let mut info: DirInfo = DirInfo::new();
                fill(info.file_info_mut(), &attr);
                info.set_name(&e.name)?;
                lock.write(&mut info)?;
            }
        }
        Ok(context.dir_buffer.read(marker, buffer))
    }

    fn rename(
        &self,
        _context: &FileContext,
        file_name: &U16CStr,
        new_file_name: &U16CStr,
        replace_if_exists: bool,
    ) -> winfsp::Result<()> {
        let (from_parent, from) = self.walk_parent(file_name)?;
        let (to_parent, to) = self.walk_parent(new_file_name)?;
        let result = match (from, to) {
            (Some(from), Some(to)) => {
                // RENAME_NOREPLACE unless Windows asked to replace.
                let flags = if replace_if_exists { 0 } else { 1 };
                self.core
                    .rename(
                        from_parent,
                        OsStr::new(&from),
                        to_parent,
                        OsStr::new(&to),
                        flags,
                    )
                    .map_err(fsp)
            }
            _ => Err(fsp(Errno(libc::EINVAL))),
        };
        self.release_node(from_parent);
        self.release_node(to_parent);
        result
    }

    fn set_basic_info(
        &self,
        context: &FileContext,
        file_attributes: u32,
        _creation_time: u64,
        last_access_time: u64,
        last_write_time: u64,
        _last_change_time: u64,
        file_info: &mut FileInfo,
    ) -> winfsp::Result<()> {
        let mut set = SetAttr {
            atime: system_time(last_access_time).map(SetTime::At),
            mtime: system_time(last_write_time).map(SetTime::At),
            ..SetAttr::default()
        };
        // INVALID_FILE_ATTRIBUTES (all ones) leaves the attributes as they are.
        if file_attributes != u32::MAX {
            let attr = self
                .core
                .getattr(context.node, (!context.dir).then_some(context.handle))
                .map_err(fsp)?;
            let perm = u32::from(attr.perm);
            let readonly = file_attributes & FILE_ATTRIBUTE_READONLY != 0;
            let mode = if readonly {
                perm & !0o222
            } else {
                perm | 0o200
            };
            if mode != perm {
                set.mode = Some(mode);
            }
        }
        let attr = self
            .core
            .setattr(context.node, Some(context.handle), set)
            .map_err(fsp)?;
        fill(file_info, &attr);
        Ok(())
    }

    fn set_delete(
        &self,
        context: &FileContext,
        _file_name: &U16CStr,
        delete_file: bool,
    ) -> winfsp::Result<()> {
        if delete_file && context.dir {
            let mut entries = 0;
            self.core
                .readdir(context.handle, 2, |_, _| {
                    entries += 1;
                    true
                })
                .map_err(fsp)?;
            if entries > 0 {
                return Err(fsp(Errno(libc::ENOTEMPTY)));
            }
        }
        Ok(())
    }

    fn set_file_size(
        &self,
        context: &FileContext,
        new_size: u64,
        set_allocation_size: bool,
        file_info: &mut FileInfo,
    ) -> winfsp::Result<()> {
        let attr = if set_allocation_size {
            // An allocation hint: the size does not change.
            self.core
                .getattr(context.node, (!context.dir).then_some(context.handle))
                .map_err(fsp)?
        } else {
            let set = SetAttr {
                size: Some(new_size),
                ..SetAttr::default()
            };
            self.core
                .setattr(context.node, Some(context.handle), set)
                .map_err(fsp)?
        };
        fill(file_info, &attr);
        Ok(())
    }

    fn read(&self, context: &FileContext, buffer: &mut [u8], offset: u64) -> winfsp::Result<u32> {
        let n = self
            .timed(Op::Read, || self.core.read(context.handle, offset, buffer))
            .map_err(fsp)?;
        if n == 0 && !buffer.is_empty() {
            return Err(FspError::NTSTATUS(STATUS_END_OF_FILE));
        }
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    fn write(
        &self,
        context: &FileContext,
        buffer: &[u8],
        offset: u64,
        write_to_eof: bool,
        constrained_io: bool,
        file_info: &mut FileInfo,
    ) -> winfsp::Result<u32> {
        let size = self
            .core
            .getattr(context.node, (!context.dir).then_some(context.handle))
            .map_err(fsp)?
            .size;
        let offset = if write_to_eof { size } else { offset };
        let mut data = buffer;
        if constrained_io {
            // Paging I/O never extends the file.
            if offset >= size {
                return Ok(0);
            }
            let room = usize::try_from(size - offset).unwrap_or(usize::MAX);
            data = &data[..data.len().min(room)];
        }
        let n = self
            .timed(Op::Write, || self.core.write(context.handle, offset, data))
            .map_err(fsp)?;
        fill(
            file_info,
            &self
                .core
                .getattr(context.node, (!context.dir).then_some(context.handle))
                .map_err(fsp)?,
        );
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    fn get_volume_info(&self, out_volume_info: &mut VolumeInfo) -> winfsp::Result<()> {
        let s = self.core.statfs(NodeId::ROOT).map_err(fsp)?;
        let frsize = u64::from(s.frsize.max(1));
        out_volume_info.total_size = s.blocks * frsize;
        out_volume_info.free_size = s.bavail * frsize;
        out_volume_info.set_volume_label("reseedfs");
        Ok(())
    }

    fn dispatcher_stopped(&self, _normally: bool) {
        self.stopped.store(true, Ordering::Release);
    }
}

/// A mounted WinFsp filesystem.
pub struct WinFspMount {
    host: Mutex<FileSystemHost<Context>>,
    open: Arc<AtomicUsize>,
    stopped: Arc<AtomicBool>,
    unmounted: AtomicBool,
}

impl std::fmt::Debug for WinFspMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WinFspMount").finish_non_exhaustive()
    }
}

/// Mounts `core` at `mountpoint` (a drive letter `X:` or a directory such as
/// `C:\ExchDBs`) with `threads` dispatcher threads, timing opens, reads, writes and
/// flushes into `metrics` when given. `fsname` (the config file) is logged: WinFsp has
/// no mount source to show it in.
pub fn mount(
    core: Arc<Core>,
    mountpoint: &Path,
    threads: usize,
    fsname: &str,
    metrics: Option<Arc<Metrics>>,
) -> io::Result<WinFspMount> {
    tracing::info!("mounting {fsname} at {} with WinFsp", mountpoint.display());
    prepare_mountpoint(mountpoint)?;
    winfsp::winfsp_init().map_err(|e| {
        io::Error::other(format!(
            "cannot load WinFsp ({e:?}): install WinFsp 2.1 or later (https://winfsp.dev)"
        ))
    })?;
    let mut params = VolumeParams::new();
    params
        .filesystem_name("reseedfs")
        .sector_size(4096)
        .sectors_per_allocation_unit(1)
        .max_component_length(255)
        .case_sensitive_search(true)
        .case_preserved_names(true)
        .unicode_on_disk(true)
        .persistent_acls(true)
        .post_cleanup_when_modified_only(true)
        .file_info_timeout(1000);
    let open = Arc::new(AtomicUsize::new(0));
    let stopped = Arc::new(AtomicBool::new(false));
    let context = Context {
        core,
        metrics,
        open: open.clone(),
        stopped: stopped.clone(),
    };
    let mut host: FileSystemHost<Context, FineGuard> =
        FileSystemHost::new(params, context).map_err(winfsp_error("create the filesystem"))?;
    host.mount(mountpoint.as_os_str())
        .map_err(winfsp_error("mount"))?;
    host.start_with_threads(u32::try_from(threads.max(1)).unwrap_or(1))
        .map_err(winfsp_error("start the dispatcher"))?;
    Ok(WinFspMount {
        host: Mutex::new(host),
        open,
        stopped,
        unmounted: AtomicBool::new(false),
    })
}

/// WinFsp creates a directory mount point itself, so it must not exist: an empty
/// directory (as `init` leaves it, or a previous mount) is removed first; anything else
/// is refused, never removed. A drive letter (`X:`) needs nothing.
fn prepare_mountpoint(mountpoint: &Path) -> io::Result<()> {
    let s = mountpoint.as_os_str().to_string_lossy();
    if s.len() == 2 && s.ends_with(':') {
        return Ok(());
    }
    match std::fs::read_dir(mountpoint) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} is not empty: WinFsp mounts at a directory it creates; move its contents away",
                        mountpoint.display()
                    ),
                ));
            }
            std::fs::remove_dir(mountpoint)
        }
    }
}

/// An error of the WinFsp host while doing `what`.
fn winfsp_error<E: std::fmt::Debug>(what: &'static str) -> impl Fn(E) -> io::Error {
    move |e| io::Error::other(format!("WinFsp: {what}: {e:?}"))
}

impl WinFspMount {
    /// True once the dispatcher stopped (unmounted by us, or the WinFsp driver went away).
    pub fn is_finished(&self) -> bool {
        self.stopped.load(Ordering::Acquire) || self.unmounted.load(Ordering::Acquire)
    }

    /// Refuses with `EBUSY` while a file is open under the mount; else unmounts.
    pub fn try_unmount(&self) -> io::Result<()> {
        if self.is_finished() {
            return Ok(());
        }
        if self.open.load(Ordering::Acquire) != 0 {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        self.stop();
        Ok(())
    }

    fn stop(&self) {
        if !self.unmounted.swap(true, Ordering::AcqRel) {
            let mut host = self.host.lock();
            host.unmount();
            host.stop();
        }
    }

    /// Finishes the mount (after [`WinFspMount::try_unmount`], or to give up).
    pub fn unmount(self) -> io::Result<()> {
        self.stop();
        Ok(())
    }
}
