//! The control channel on Windows: a named pipe (`\\.\pipe\reseedfs-<control socket
//! path>`, see `crate::winrules::pipe_name`) whose security descriptor admits
//! Administrators and SYSTEM only, and no remote client: the counterpart of the Unix
//! socket with mode 0600. One JSON request per connection, as on Unix; each connection
//! is a pipe instance, read and written as a [`File`].

use std::fs::File;
use std::io;
use std::os::windows::io::{FromRawHandle, OwnedHandle};
use std::path::Path;
use std::time::{Duration, Instant};

use windows_sys::Win32::Foundation::{
    ERROR_PIPE_BUSY, ERROR_PIPE_CONNECTED, HLOCAL, INVALID_HANDLE_VALUE, LocalFree,
};
use windows_sys::Win32::Security::Authorization::{
    ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
};
use windows_sys::Win32::Security::{PSECURITY_DESCRIPTOR, SECURITY_ATTRIBUTES};
use windows_sys::Win32::Storage::FileSystem::{FILE_FLAG_FIRST_PIPE_INSTANCE, PIPE_ACCESS_DUPLEX};
use windows_sys::Win32::System::Pipes::{
    ConnectNamedPipe, CreateNamedPipeW, PIPE_READMODE_BYTE, PIPE_REJECT_REMOTE_CLIENTS,
    PIPE_TYPE_BYTE, PIPE_UNLIMITED_INSTANCES, PIPE_WAIT,
};

use crate::winrules::{PIPE_SDDL, pipe_name};

/// One connection: a pipe instance.
pub type Stream = File;

/// The security descriptor of [`PIPE_SDDL`], freed on drop.
struct Descriptor(PSECURITY_DESCRIPTOR);

// SAFETY: the descriptor is immutable after creation and only read by CreateNamedPipeW.
unsafe impl Send for Descriptor {}

impl Drop for Descriptor {
    fn drop(&mut self) {
        // SAFETY: allocated by ConvertStringSecurityDescriptorToSecurityDescriptorW with
        // LocalAlloc, freed once.
        unsafe {
            LocalFree(self.0 as HLOCAL);
        }
    }
}

fn descriptor() -> io::Result<Descriptor> {
    let sddl = super::wide(PIPE_SDDL);
    let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    // SAFETY: `sddl` is NUL-terminated and alive for the call; `sd` receives a LocalAlloc'd
    // descriptor that `Descriptor` frees.
    let ok = unsafe {
        ConvertStringSecurityDescriptorToSecurityDescriptorW(
            sddl.as_ptr(),
            SDDL_REVISION_1,
            &mut sd,
            std::ptr::null_mut(),
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Descriptor(sd))
}

/// A listening pipe: one instance waiting for the next client.
pub struct Listener {
    name: Vec<u16>,
    descriptor: Descriptor,
    next: Option<OwnedHandle>,
}

impl Listener {
    fn instance(&self, first: bool) -> io::Result<OwnedHandle> {
        let attributes = SECURITY_ATTRIBUTES {
            nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
            lpSecurityDescriptor: self.descriptor.0,
            bInheritHandle: 0,
        };
        let first = if first {
            FILE_FLAG_FIRST_PIPE_INSTANCE
        } else {
            0
        };
        // SAFETY: `name` is NUL-terminated; `attributes` and the descriptor it points to
        // outlive the call. The returned handle is owned by the `OwnedHandle`.
        let h = unsafe {
            CreateNamedPipeW(
                self.name.as_ptr(),
                PIPE_ACCESS_DUPLEX | first,
                PIPE_TYPE_BYTE | PIPE_READMODE_BYTE | PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS,
                PIPE_UNLIMITED_INSTANCES,
                64 * 1024,
                64 * 1024,
                0,
                &attributes,
            )
        };
        if h == INVALID_HANDLE_VALUE {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a valid pipe handle just created and owned by nobody else.
        Ok(unsafe { OwnedHandle::from_raw_handle(h) })
    }

    /// Connections, one at a time, as clients arrive (blocking).
    pub fn incoming(mut self) -> impl Iterator<Item = io::Result<Stream>> {
        std::iter::from_fn(move || {
            let pending = match self.next.take() {
                Some(h) => h,
                None => match self.instance(false) {
                    Ok(h) => h,
                    Err(e) => return Some(Err(e)),
                },
            };
            use std::os::windows::io::AsRawHandle;
            // SAFETY: `pending` is a valid pipe instance; no OVERLAPPED: a blocking wait.
            let ok = unsafe { ConnectNamedPipe(pending.as_raw_handle(), std::ptr::null_mut()) };
            let connected = ok != 0
                || io::Error::last_os_error().raw_os_error() == Some(ERROR_PIPE_CONNECTED as i32);
            self.next = self.instance(false).ok();
            Some(if connected {
                Ok(File::from(pending))
            } else {
                Err(io::Error::last_os_error())
            })
        })
    }
}

/// Creates the pipe for the control socket `path`; `AddrInUse` when a daemon already
/// serves it.
pub fn bind(path: &Path) -> io::Result<Listener> {
    let name = pipe_name(path);
    let mut listener = Listener {
        name: super::wide(&name),
        descriptor: descriptor()?,
        next: None,
    };
    listener.next = Some(listener.instance(true).map_err(|e| {
        io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("cannot create the control pipe {name} (is a reseedfs daemon already serving it?): {e}"),
        )
    })?);
    Ok(listener)
}

/// Connects to the daemon's pipe for `path`, waiting up to 2 s while every instance is
/// busy.
pub fn connect(path: &Path) -> io::Result<Stream> {
    let name = pipe_name(path);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&name)
        {
            Err(e)
                if e.raw_os_error() == Some(ERROR_PIPE_BUSY as i32)
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            r => return r,
        }
    }
}
