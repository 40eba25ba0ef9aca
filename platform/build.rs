//! Build script: names the commit in `reseedfs --version` (`RESEEDFS_COMMIT`).
//!
//! An operator who reports a problem runs `reseedfs --version`; the version alone does not
//! say which build a package or a hand-built binary came from. The commit comes from, in
//! order: the `RESEEDFS_COMMIT` environment variable (a packager building from a source
//! tarball who knows it), `git rev-parse` when the package root is the top of a git work
//! tree, else `unknown` (a source tarball without `.git`).
//!
//! On a Windows host building for Windows (a real Windows build, not the type-check of
//! `platform/windows/check.sh`, which enables `winfsp-docsrs`), it also links WinFsp's DLL
//! delay-loaded (`winfsp::build::winfsp_link_delayload`): the binary starts without WinFsp
//! installed and `mount` says how to install it.
//!
//! The script reruns only when HEAD moves (a commit, a checkout, a merge): it watches HEAD,
//! its reflog and the branch's ref file, not the sources, so editing code does not rerun it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=platform/build.rs");
    println!("cargo:rerun-if-env-changed=RESEEDFS_COMMIT");
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let commit = match std::env::var("RESEEDFS_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_owned(),
        _ => from_git(&manifest_dir).unwrap_or_else(|| "unknown".to_owned()),
    };
    println!("cargo:rustc-env=RESEEDFS_COMMIT={commit}");
    #[cfg(windows)]
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("windows")
        && std::env::var_os("CARGO_FEATURE_WINFSP_DOCSRS").is_none()
    {
        winfsp::build::winfsp_link_delayload();
    }
}

/// `git -C dir args...`, its trimmed stdout when it succeeds.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    Some(text.trim().to_owned())
}

/// The short commit id of HEAD, when `dir` is the top of a git work tree (a tarball
/// unpacked inside some other repository is not ours: its HEAD would be a lie).
fn from_git(dir: &Path) -> Option<String> {
    let top = git(dir, &["rev-parse", "--show-toplevel"])?;
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same(Path::new(&top), dir) {
        return None;
    }
    let commit = git(dir, &["rev-parse", "--short=12", "HEAD"])?;
    // Rerun when HEAD moves: HEAD itself (checkout), its reflog (every commit, merge and
    // reset in this work tree), and the branch's loose ref. Only files that exist: cargo
    // reruns a script every build while a watched path is missing.
    let mut watched = vec!["HEAD".to_owned(), "logs/HEAD".to_owned()];
    let branch = git(dir, &["rev-parse", "--symbolic-full-name", "HEAD"]);
    watched.extend(branch.filter(|b| b.starts_with("refs/")));
    for path in watched {
        if let Some(p) = git(dir, &["rev-parse", "--git-path", &path]) {
            let p = dir.join(p);
            if p.exists() {
                println!("cargo:rerun-if-changed={}", p.display());
            }
        }
    }
    Some(commit)
}
