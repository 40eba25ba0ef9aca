//! The Windows adapters' rules that need no Windows API, compiled on every OS (as
//! `crate::winrules`) so that their tests run on Linux, where CI runs:
//!
//! - [`names`]: which names a Windows path may hold, WinFsp's paths walked into the
//!   core's components, and the backend's relative paths checked never to leave a volume;
//! - [`ntstatus`]: the core's errno to NTSTATUS (what WinFsp answers), and Win32 errors
//!   to the core's errno (what the volume backend returns);
//! - [`security`]: the security descriptor (SDDL) of a file from its owner and mode;
//! - the control pipe's name and security, and the event log's entry types (below).
//!
//! The `platform/windows` modules that call the Windows API use these and decide nothing
//! themselves.

pub mod names;
pub mod ntstatus;
pub mod security;

use std::path::Path;

use crate::events::Severity;

/// The event source in the Application event log, as Exchange's events have theirs.
pub const EVENT_SOURCE: &str = "reseedfs";

/// `EVENTLOG_ERROR_TYPE`
pub const EVENTLOG_ERROR_TYPE: u16 = 0x0001;
/// `EVENTLOG_WARNING_TYPE`
pub const EVENTLOG_WARNING_TYPE: u16 = 0x0002;
/// `EVENTLOG_INFORMATION_TYPE`
pub const EVENTLOG_INFORMATION_TYPE: u16 = 0x0004;

/// The event log entry type of an event of `severity`.
pub fn event_type(severity: Severity) -> u16 {
    match severity {
        Severity::Error => EVENTLOG_ERROR_TYPE,
        Severity::Warn => EVENTLOG_WARNING_TYPE,
        Severity::Info => EVENTLOG_INFORMATION_TYPE,
    }
}

/// The text of an event in the event log: the message, then the database and volume, so
/// that an operator filtering the Application log by id sees what the JSON log says.
pub fn event_text(message: &str, database: Option<&str>, volume: Option<&str>) -> String {
    let mut text = message.to_owned();
    if let Some(db) = database {
        text.push_str(&format!("\r\nDatabase: {db}"));
    }
    if let Some(v) = volume {
        text.push_str(&format!("\r\nVolume: {v}"));
    }
    text
}

/// Who may open the control pipe: full access for Administrators (`BA`) and SYSTEM
/// (`SY`), nobody else (`P`: no inherited entries), as the Unix socket's mode 0600 admits
/// root only.
pub const PIPE_SDDL: &str = "D:P(A;;GA;;;BA)(A;;GA;;;SY)";

/// The named pipe that stands for the control socket `path` (`<state_dir>/control.sock`):
/// the daemon and the clients derive it from the same configured path, so that two
/// mounts with their own state_dir have their own pipes. A pipe name may hold anything
/// but `\`, up to 256 characters: separators become `/`, and a long path keeps its end.
pub fn pipe_name(path: &Path) -> String {
    const PREFIX: &str = r"\\.\pipe\reseedfs-";
    let flat: String = path
        .to_string_lossy()
        .chars()
        .map(|c| if c == '\\' { '/' } else { c })
        .collect();
    let room = 256 - PREFIX.len();
    let chars: Vec<char> = flat.chars().collect();
    let tail: String = chars[chars.len().saturating_sub(room)..].iter().collect();
    format!("{PREFIX}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipe_names_follow_the_state_dir() {
        assert_eq!(
            pipe_name(Path::new(r"C:\ProgramData\reseedfs\control.sock")),
            r"\\.\pipe\reseedfs-C:/ProgramData/reseedfs/control.sock"
        );
        assert_ne!(
            pipe_name(Path::new(r"C:\a\control.sock")),
            pipe_name(Path::new(r"C:\b\control.sock"))
        );
        let long = format!(r"C:\{}\control.sock", "x".repeat(400));
        let name = pipe_name(Path::new(&long));
        assert_eq!(name.chars().count(), 256);
        assert!(name.ends_with("x/control.sock"));
        assert!(!name[r"\\.\pipe\".len()..].contains('\\'));
    }

    #[test]
    fn event_types_follow_severity() {
        use crate::events::EventId;
        assert_eq!(
            event_type(EventId::CopyFailed.severity()),
            EVENTLOG_ERROR_TYPE
        );
        assert_eq!(
            event_type(EventId::VolumeSlow.severity()),
            EVENTLOG_WARNING_TYPE
        );
        assert_eq!(
            event_type(EventId::CopyHealthy.severity()),
            EVENTLOG_INFORMATION_TYPE
        );
        assert_eq!(
            event_text("copy failed", Some("db001"), Some("Volume1")),
            "copy failed\r\nDatabase: db001\r\nVolume: Volume1"
        );
    }
}
