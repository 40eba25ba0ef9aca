//! Every event also goes to the Windows Application event log, under the source
//! `reseedfs` and with the same id (1109, 825-828, 1110, 2058, ...), as Exchange's
//! AutoReseed events do: operators filter and forward them with the tools they already
//! use. The JSON event log stays the record of truth; the event log is a copy, and a
//! failure to write it is logged, never fatal.
//!
//! The source needs no registry entry to be written; without one (`reseedfs service
//! install` registers it), Event Viewer shows the text with a note that the message file
//! is missing.

use std::sync::Arc;

use windows_sys::Win32::Foundation::HANDLE;
use windows_sys::Win32::System::EventLog::{
    DeregisterEventSource, RegisterEventSourceW, ReportEventW,
};

use crate::events::{EventSink, NewEvent};
use crate::winrules::{EVENT_SOURCE, event_text, event_type};

/// A registered event source.
struct Source(HANDLE);

// SAFETY: an event source handle may be used from any thread (ReportEventW is
// thread-safe); it is only deregistered on drop.
unsafe impl Send for Source {}
// SAFETY: as above.
unsafe impl Sync for Source {}

impl Drop for Source {
    fn drop(&mut self) {
        // SAFETY: the handle came from RegisterEventSourceW and is deregistered once.
        unsafe {
            DeregisterEventSource(self.0);
        }
    }
}

/// Forwards every event to `inner` and to the Application event log.
pub struct Tee {
    inner: Arc<dyn EventSink>,
    source: Option<Source>,
}

impl Tee {
    /// Tees `inner` into the event log (only `inner` when the source cannot be opened:
    /// said once, in the log).
    pub fn new(inner: Arc<dyn EventSink>) -> Tee {
        let name = super::wide(EVENT_SOURCE);
        // SAFETY: `name` is a NUL-terminated UTF-16 string that outlives the call; a null
        // server name means this machine.
        let h = unsafe { RegisterEventSourceW(std::ptr::null(), name.as_ptr()) };
        let source = if h.is_null() {
            tracing::warn!(
                "cannot open the event source {EVENT_SOURCE}: {}; events go to the JSON log only",
                std::io::Error::last_os_error()
            );
            None
        } else {
            Some(Source(h))
        };
        Tee { inner, source }
    }
}

impl EventSink for Tee {
    fn emit(&self, event: NewEvent) {
        if let Some(source) = &self.source {
            let text = event_text(
                &event.message,
                event.database.as_deref(),
                event.volume.as_deref(),
            );
            let wide = super::wide(&text);
            let strings = [wide.as_ptr()];
            // SAFETY: one NUL-terminated string, alive for the call; no raw data.
            let ok = unsafe {
                ReportEventW(
                    source.0,
                    event_type(event.id.severity()),
                    0,
                    event.id.number(),
                    std::ptr::null_mut(),
                    1,
                    0,
                    strings.as_ptr(),
                    std::ptr::null(),
                )
            };
            if ok == 0 {
                tracing::warn!(
                    "cannot write event {} to the Application event log: {}",
                    event.id.number(),
                    std::io::Error::last_os_error()
                );
            }
        }
        self.inner.emit(event);
    }

    fn persist_failures(&self) -> u64 {
        self.inner.persist_failures()
    }
}
