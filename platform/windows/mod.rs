//! Windows adapters: the WinFsp filesystem over the core ([`winfsp`]), the volume
//! backend ([`volume`]: handles opened relative to the volume root's handle, no reparse
//! point followed), the control channel as a named pipe for Administrators ([`pipe`]),
//! the Windows service ([`service`]), events in the Application event log
//! ([`eventlog`]) and the console's and the service's stop requests ([`stop`]).
//!
//! What needs no Windows API (name rules, path walking, the error mappings, security
//! descriptors from owner and mode) is in `crate::winrules`, compiled and tested on every
//! OS. Each `unsafe` block here says why it is sound; every other module of the crate is
//! free of `unsafe`.
//!
//! This tree is type-checked and linted on Linux (`platform/windows/check.sh`); it has
//! not yet run on Windows (README, "Windows").

pub mod eventlog;
pub mod pipe;
pub mod service;
pub mod stop;
pub mod volume;
pub mod winfsp;

/// The UTF-16 of `s`, NUL-terminated, for the wide-string Windows API.
pub(crate) fn wide(s: impl AsRef<std::ffi::OsStr>) -> Vec<u16> {
    use std::os::windows::ffi::OsStrExt;
    s.as_ref().encode_wide().chain(Some(0)).collect()
}
