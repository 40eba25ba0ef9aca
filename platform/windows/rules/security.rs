//! The security descriptor of a file, from its owner and mode.
//!
//! The copies keep POSIX owners and modes (the same on every copy, and the same whichever
//! OS serves the pool). WinFsp asks for a security descriptor; the adapter answers one
//! made from them, as SDDL, so that Windows enforces what the mode says:
//! - owner and group: uid 0 is BUILTIN\Administrators and gid 0 is SYSTEM; any other id
//!   is the "Unix user"/"Unix group" SID Samba and Windows NFS use (`S-1-22-1-<uid>`,
//!   `S-1-22-2-<gid>`), so it never collides with a real account;
//! - one allow entry each for the owner, the group and Everyone, with the rights of the
//!   mode's `rwx` bits; the owner also may read and change the descriptor and the
//!   attributes, and delete; everyone with an entry may read attributes and the
//!   descriptor and synchronize;
//! - `P` (protected): nothing is inherited from the parent, as a mode is not.

/// `FILE_READ_DATA` / `FILE_LIST_DIRECTORY` and `FILE_READ_EA`.
const READ: u32 = 0x0001 | 0x0008;
/// `FILE_WRITE_DATA` / `FILE_ADD_FILE`, `FILE_APPEND_DATA` / `FILE_ADD_SUBDIRECTORY`,
/// `FILE_WRITE_EA`.
const WRITE: u32 = 0x0002 | 0x0004 | 0x0010;
/// `FILE_DELETE_CHILD`: writing a directory includes removing its entries.
const DELETE_CHILD: u32 = 0x0040;
/// `FILE_EXECUTE` / `FILE_TRAVERSE`.
const EXECUTE: u32 = 0x0020;
/// `FILE_READ_ATTRIBUTES`, `READ_CONTROL`, `SYNCHRONIZE`.
const ALWAYS: u32 = 0x0080 | 0x0002_0000 | 0x0010_0000;
/// `FILE_WRITE_ATTRIBUTES`, `DELETE`, `WRITE_DAC`, `WRITE_OWNER`.
const OWNER: u32 = 0x0100 | 0x0001_0000 | 0x0004_0000 | 0x0008_0000;

/// The SID of a file's owner `uid`.
pub fn owner_sid(uid: u32) -> String {
    match uid {
        0 => "S-1-5-32-544".to_owned(),
        uid => format!("S-1-22-1-{uid}"),
    }
}

/// The SID of a file's group `gid`.
pub fn group_sid(gid: u32) -> String {
    match gid {
        0 => "S-1-5-18".to_owned(),
        gid => format!("S-1-22-2-{gid}"),
    }
}

/// The access mask of three `rwx` bits.
fn rights(bits: u32, dir: bool) -> u32 {
    let mut mask = ALWAYS;
    if bits & 4 != 0 {
        mask |= READ;
    }
    if bits & 2 != 0 {
        mask |= WRITE;
        if dir {
            mask |= DELETE_CHILD;
        }
    }
    if bits & 1 != 0 {
        mask |= EXECUTE;
    }
    mask
}

/// The SDDL of a file (`dir`: a directory) owned by `uid`:`gid` with `mode`.
pub fn sddl(uid: u32, gid: u32, mode: u32, dir: bool) -> String {
    let owner = owner_sid(uid);
    let group = group_sid(gid);
    let user = rights(mode >> 6 & 7, dir) | OWNER;
    let grp = rights(mode >> 3 & 7, dir);
    let other = rights(mode & 7, dir);
    format!(
        "O:{owner}G:{group}D:P(A;;0x{user:x};;;{owner})(A;;0x{grp:x};;;{group})(A;;0x{other:x};;;WD)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rights one ACE of `sddl` grants to `sid`.
    fn granted(sddl: &str, sid: &str) -> u32 {
        let ace = sddl
            .split('(')
            .find(|a| a.ends_with(&format!(";;;{sid})")))
            .unwrap_or_else(|| panic!("no entry for {sid} in {sddl}"));
        let hex = ace
            .trim_start_matches("A;;0x")
            .split(';')
            .next()
            .expect("mask");
        u32::from_str_radix(hex, 16).expect("hex")
    }

    #[test]
    fn a_private_root_file_is_for_administrators() {
        let s = sddl(0, 0, 0o600, false);
        assert!(s.starts_with("O:S-1-5-32-544G:S-1-5-18D:P("), "{s}");
        let admins = granted(&s, "S-1-5-32-544");
        assert_eq!(admins & (READ | WRITE), READ | WRITE);
        assert_eq!(admins & EXECUTE, 0);
        assert_eq!(admins & OWNER, OWNER);
        assert_eq!(
            granted(&s, "S-1-5-18"),
            ALWAYS,
            "group: nothing but attributes"
        );
        assert_eq!(granted(&s, "WD"), ALWAYS, "others: nothing but attributes");
    }

    #[test]
    fn a_database_owner_keeps_their_files_and_others_read() {
        let s = sddl(26, 26, 0o644, false);
        assert!(s.starts_with("O:S-1-22-1-26G:S-1-22-2-26D:P"), "{s}");
        assert_eq!(granted(&s, "S-1-22-1-26") & WRITE, WRITE);
        assert_eq!(granted(&s, "S-1-22-2-26") & (READ | WRITE), READ);
        assert_eq!(granted(&s, "WD") & (READ | WRITE), READ);
    }

    #[test]
    fn writing_a_directory_includes_removing_its_entries() {
        let dir = sddl(0, 0, 0o775, true);
        assert_eq!(
            granted(&dir, "S-1-5-18") & (WRITE | DELETE_CHILD | EXECUTE),
            WRITE | DELETE_CHILD | EXECUTE
        );
        assert_eq!(granted(&dir, "WD") & (WRITE | DELETE_CHILD), 0);
        let file = sddl(0, 0, 0o775, false);
        assert_eq!(granted(&file, "S-1-5-18") & DELETE_CHILD, 0);
    }
}
