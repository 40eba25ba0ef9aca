//! Stop requests from Windows: Ctrl-C, Ctrl-Break and closing the console of a
//! foreground `reseedfs mount`, and the Service Control Manager's stop of the service.
//! Each calls the one registered callback, with 2 (as SIGINT) for Ctrl-C and 15 (as
//! SIGTERM) for the others; the daemon then unmounts as it does on a signal.

use std::io;
use std::sync::Mutex;

use windows_sys::Win32::Foundation::{FALSE, TRUE};
use windows_sys::Win32::System::Console::{
    CTRL_BREAK_EVENT, CTRL_C_EVENT, CTRL_CLOSE_EVENT, CTRL_SHUTDOWN_EVENT, SetConsoleCtrlHandler,
};

type Callback = Box<dyn Fn(i32) + Send>;

/// The callback of the running mount (one per process).
static CALLBACK: Mutex<Option<Callback>> = Mutex::new(None);

/// Ends the delivery of stop requests when closed.
#[derive(Debug)]
pub struct StopHandle(());

impl StopHandle {
    /// No more stop requests reach the mount.
    pub fn close(&self) {
        if let Ok(mut c) = CALLBACK.lock() {
            *c = None;
        }
    }
}

/// Delivers a stop request (`sig` 2 or 15) to the mount, if one listens.
pub fn request_stop(sig: i32) -> bool {
    match CALLBACK.lock() {
        Ok(c) => match c.as_ref() {
            Some(f) => {
                f(sig);
                true
            }
            None => false,
        },
        Err(_) => false,
    }
}

unsafe extern "system" fn console_handler(event: u32) -> windows_sys::core::BOOL {
    let sig = match event {
        CTRL_C_EVENT => 2,
        CTRL_BREAK_EVENT | CTRL_CLOSE_EVENT | CTRL_SHUTDOWN_EVENT => 15,
        _ => return FALSE,
    };
    if request_stop(sig) { TRUE } else { FALSE }
}

/// Registers `f` for every stop request; returns the handle that ends it.
pub fn on_stop(f: impl Fn(i32) + Send + 'static) -> io::Result<StopHandle> {
    *CALLBACK
        .lock()
        .map_err(|_| io::Error::other("the stop callback's lock is poisoned"))? = Some(Box::new(f));
    // SAFETY: `console_handler` is a valid `extern "system"` handler for the whole life of
    // the process (a plain function), and touches only the mutex-guarded callback.
    if unsafe { SetConsoleCtrlHandler(Some(console_handler), TRUE) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(StopHandle(()))
}
