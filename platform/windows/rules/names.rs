//! Names and paths on Windows.
//!
//! WinFsp hands the adapter whole paths (`\db001\db001.db\file.edb`); the adapter walks
//! them one component at a time through the core's `lookup`, as the kernel does for FUSE,
//! so the core's own rules (fixed top levels, `<db>.db`/`<db>.log`) apply unchanged.
//! Before that, a component must be a name Windows can hold and hand back the same:
//! Unicode (no unpaired surrogate: the core keeps names as UTF-8), none of `\ / : * ? "
//! < > |` or control characters (`:` would name an alternate data stream, which
//! reseedfs does not mirror), no trailing space or dot (Win32 strips them, so the name
//! could not be opened again), not a device name (`CON`, `NUL.txt`, ...), at most 255
//! UTF-16 units.
//!
//! The volume backend's relative paths come from the core and must never leave the
//! volume: [`backend_components`] refuses `..`, a root or a drive prefix, so that every
//! open is one relative step from the volume root's handle.

use std::ffi::OsStr;
use std::io;
use std::path::{Component, Path};

/// The longest name, in UTF-16 units (NTFS's limit).
pub const NAME_MAX_UTF16: usize = 255;

/// Why a name is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Not a name Windows can hold and give back the same (STATUS_OBJECT_NAME_INVALID).
    #[error("not a valid Windows file name")]
    Invalid,
    /// Longer than 255 UTF-16 units (STATUS_NAME_TOO_LONG).
    #[error("longer than {NAME_MAX_UTF16} UTF-16 units")]
    TooLong,
}

const DEVICE_NAMES: [&str; 22] = [
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
    "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

/// Checks one path component given as UTF-16 and returns it as a string.
pub fn check_name(name: &[u16]) -> Result<String, NameError> {
    if name.len() > NAME_MAX_UTF16 {
        return Err(NameError::TooLong);
    }
    let s = String::from_utf16(name).map_err(|_| NameError::Invalid)?;
    if s.is_empty() || s == "." || s == ".." {
        return Err(NameError::Invalid);
    }
    if s.chars()
        .any(|c| c < ' ' || matches!(c, '\\' | '/' | ':' | '*' | '?' | '"' | '<' | '>' | '|'))
    {
        return Err(NameError::Invalid);
    }
    if s.ends_with(' ') || s.ends_with('.') {
        return Err(NameError::Invalid);
    }
    let stem = s.split('.').next().unwrap_or_default().trim_end();
    if DEVICE_NAMES.iter().any(|d| d.eq_ignore_ascii_case(stem)) {
        return Err(NameError::Invalid);
    }
    Ok(s)
}

/// The components of a path WinFsp gives (`\`, `\db001`, `\db001\db001.db\f`), each
/// checked by [`check_name`]; the root is no component. A path that does not start with
/// `\` or has an empty component (`\a\\b`) is invalid; one trailing `\` is allowed (a
/// directory opened as `\db001\`).
pub fn walk(path: &[u16]) -> Result<Vec<String>, NameError> {
    const SEP: u16 = b'\\' as u16;
    let Some((&first, rest)) = path.split_first() else {
        return Err(NameError::Invalid);
    };
    if first != SEP {
        return Err(NameError::Invalid);
    }
    let rest = rest.strip_suffix(&[SEP]).unwrap_or(rest);
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    rest.split(|&c| c == SEP).map(check_name).collect()
}

/// The components of a backend path relative to the volume root, refusing any that
/// could leave it: `..`, a root (`\x`) or a drive or UNC prefix (`C:`, `\\server\share`)
/// give `EINVAL`. `.` components are dropped; an empty path is the root itself.
pub fn backend_components(rel: &Path) -> io::Result<Vec<&OsStr>> {
    let mut out = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(name) => out.push(name),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Vec<u16> {
        s.encode_utf16().collect()
    }

    #[test]
    fn names_windows_holds_pass() {
        for ok in [
            "db001",
            "db001.db",
            "E00.log",
            "priv1.edb",
            "ä ö",
            "a.b.c",
            "CONSOLE",
        ] {
            assert_eq!(check_name(&w(ok)).as_deref(), Ok(ok), "{ok}");
        }
    }

    #[test]
    fn names_windows_cannot_hold_are_refused() {
        for bad in [
            "", ".", "..", "a:b", "a*", "a?", "a\"", "a<", "a>", "a|", "a/b", "a\\b", "tab\t",
            "trail.", "trail ", "CON", "con", "NUL.txt", "com1", "LPT9.log", "aux .x",
        ] {
            assert_eq!(check_name(&w(bad)), Err(NameError::Invalid), "{bad:?}");
        }
        // An unpaired surrogate is no Unicode name.
        assert_eq!(check_name(&[0x61, 0xD800]), Err(NameError::Invalid));
        assert_eq!(
            check_name(&w(&"x".repeat(256))),
            Err(NameError::TooLong),
            "256 units"
        );
        assert!(check_name(&w(&"x".repeat(255))).is_ok());
    }

    #[test]
    fn paths_are_walked_component_by_component() {
        assert_eq!(walk(&w("\\")), Ok(vec![]));
        assert_eq!(walk(&w("\\db001")), Ok(vec!["db001".to_owned()]));
        assert_eq!(walk(&w("\\db001\\")), Ok(vec!["db001".to_owned()]));
        assert_eq!(
            walk(&w("\\db001\\db001.db\\priv1.edb")),
            Ok(vec![
                "db001".to_owned(),
                "db001.db".to_owned(),
                "priv1.edb".to_owned()
            ])
        );
        for bad in [
            "",
            "db001",
            "\\a\\\\b",
            "\\a\\..\\b",
            "\\a\\.",
            "\\a:stream",
        ] {
            assert_eq!(walk(&w(bad)), Err(NameError::Invalid), "{bad:?}");
        }
    }

    #[test]
    fn backend_paths_never_leave_the_volume() {
        assert_eq!(
            backend_components(Path::new("db001.db/./f")).expect("ok"),
            vec![OsStr::new("db001.db"), OsStr::new("f")]
        );
        assert!(backend_components(Path::new("")).expect("root").is_empty());
        for bad in ["../x", "a/../../x", "/etc/passwd"] {
            let e = backend_components(Path::new(bad)).expect_err(bad);
            assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{bad}");
        }
    }
}
