//! The Debian package, installed for real with dpkg, and what `--version` says.
//!
//! - `platform/linux/debian/build-deb.sh --no-build` packages the binary under test with
//!   cargo-deb. `dpkg -i` installs it: `reseedfs --help` and `--version` (version and commit)
//!   run from /usr/bin, `man reseedfs` and `man reseedfs-<subcommand>` open a page for every
//!   visible subcommand and `man mount.fuse.reseedfs` the helper's, the bash completion
//!   completes, and `mount -t fuse.reseedfs` mounts a pool (three loop-mounted ext4 volumes)
//!   through the installed mount helper.
//! - `dpkg -i` again (an upgrade over itself) while a file is open under the mount: the
//!   daemon keeps running the previous binary, the mount keeps serving, and the postinst
//!   says how to switch.
//! - `dpkg -r` while the file is open: refused by `reseedfs unmount` (the CLI's refusal,
//!   passed on with what to do); the package stays installed and the mount serving. Closed:
//!   `dpkg -r` unmounts, the daemon exits, every file of the package is gone, and a pool
//!   served by another reseedfs binary is left mounted; `dpkg --purge` leaves nothing. The
//!   data written through the mount is on both copies.
//! - The example config parses, and the defaults it shows are the real ones.
//! - `--version` names the commit from git, and `unknown` from a source tarball.
//!
//! The package test needs root, dpkg, cargo-deb (`cargo install cargo-deb --version 3.8.0
//! --locked`), man-db, `/dev/fuse` and loop devices; elsewhere it prints `SKIPPED` (and
//! fails under `CI=true`). It never touches a reseedfs installed on the machine: it skips
//! when one is.

#![cfg(target_os = "linux")]

mod common;

use std::fs;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use clap::CommandFactory as _;
use common::{
    BIN, EXIT_TIMEOUT, FSTYPE, Mounted, describe_output, require_mount_privileges, wait_for,
};
use reseedfs::config::Config;
use reseedfs::testbed::Testbed;

const DB: &str = "db001";
const VOLUME_BYTES: u64 = 256 << 20;
/// The volumes of a second pool, served by the binary under test rather than the package's.
const OTHER_VOLUME_BYTES: u64 = 128 << 20;
const INSTALLED_BIN: &str = "/usr/bin/reseedfs";
const INSTALLED_HELPER: &str = "/usr/sbin/mount.fuse.reseedfs";
const PACKAGE: &str = "reseedfs";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Prints a loud SKIPPED banner, or panics under `CI=true`.
fn skip(test: &str, reason: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: cannot run in CI: {reason}");
    }
    let rule = "=".repeat(70);
    let _ = std::io::stderr()
        .lock()
        .write_all(format!("\n{rule}\nSKIPPED: {test}: {reason}\n{rule}\n").as_bytes());
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn found(tool: &str) -> bool {
    ["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"]
        .iter()
        .any(|d| Path::new(d).join(tool).exists())
        || Command::new(tool).arg("--version").output().is_ok()
}

/// dpkg's status word for the package: `install ok installed`, `deinstall ok config-files`,
/// or `None` when dpkg does not know it.
fn dpkg_status() -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", PACKAGE])
        .output()
        .ok()?;
    let status = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !status.is_empty() && status != "unknown ok not-installed")
        .then_some(status)
}

/// The visible subcommands, from the clap definitions themselves.
fn subcommands() -> Vec<String> {
    reseedfs::cli::Cli::command()
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|s| s.get_name().to_owned())
        .collect()
}

/// Every path the package must install.
fn package_paths() -> Vec<String> {
    let mut paths: Vec<String> = [
        INSTALLED_BIN,
        INSTALLED_HELPER,
        "/usr/lib/systemd/system/reseedfs.service",
        "/etc/reseedfs/reseedfs.toml.example",
        "/usr/share/man/man1/reseedfs.1.gz",
        "/usr/share/man/man8/mount.fuse.reseedfs.8.gz",
        "/usr/share/bash-completion/completions/reseedfs",
        "/usr/share/zsh/vendor-completions/_reseedfs",
        "/usr/share/fish/vendor_completions.d/reseedfs.fish",
        "/usr/share/reseedfs/monitoring/reseedfs-alerts.yml",
        "/usr/share/reseedfs/monitoring/reseedfs-alerts.test.yml",
        "/usr/share/reseedfs/monitoring/reseedfs-dashboard.json",
    ]
    .map(str::to_owned)
    .to_vec();
    for sub in subcommands() {
        paths.push(format!("/usr/share/man/man1/reseedfs-{sub}.1.gz"));
    }
    paths
}

/// The `reseedfs mount --detach` daemons serving `config` (started by the mount helper).
fn daemons_for(config: &Path) -> Vec<u32> {
    let want = config.as_os_str().as_encoded_bytes();
    fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| {
                    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
                    args.contains(&&b"--detach"[..]) && args.contains(&want) && alive(*pid)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `pid` runs (a zombie does not).
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next().map(|r| r.trim_start().to_owned()))
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

fn exe_of(pid: u32) -> String {
    fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn mounted(bed: &Testbed) -> bool {
    reseedfs::mountpoint::mount_fstype(&bed.databases_root).as_deref() == Some(FSTYPE)
}

/// Leaves the host as it was, whatever the test did: stops the daemons it started,
/// unmounts, and purges the package it installed.
struct Cleanup<'a> {
    bed: &'a Testbed,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for pid in daemons_for(&self.bed.config_path) {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            let _ = wait_for(EXIT_TIMEOUT, || (!alive(pid)).then_some(()));
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        if reseedfs::mountpoint::is_mount_point(&self.bed.databases_root) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.bed.databases_root)
                .status();
        }
        if dpkg_status().is_some() {
            let _ = Command::new("dpkg").args(["--purge", PACKAGE]).output();
        }
    }
}

/// Builds the package of the binary under test; returns the `.deb`.
fn build_package(dir: &Path) -> PathBuf {
    // The binary under test is target/<profile dir>/reseedfs: package that profile's.
    let profile = match Path::new(BIN)
        .parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
    {
        Some("debug") => "dev",
        Some(other) => other,
        None => "release",
    };
    let out = run(Command::new(repo("platform/linux/debian/build-deb.sh"))
        .args(["--no-build", "--fast", "--profile", profile, "--output"])
        .arg(dir));
    assert!(
        out.status.success(),
        "build-deb.sh failed:\n{}",
        describe_output(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let deb = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    assert!(
        deb.extension().is_some_and(|e| e == "deb") && deb.is_file(),
        "build-deb.sh named no package:\n{}",
        describe_output(&out)
    );
    deb
}

/// What `man` prints for `page`, rendered as text.
fn man(page: &str) -> Output {
    run(Command::new("man")
        .args(["-P", "cat", page])
        .env("MANWIDTH", "100")
        .env_remove("MANPATH"))
}

/// What the installed bash completion offers for the words typed so far.
fn bash_complete(words: &[&str]) -> Vec<String> {
    let script = format!(
        "source /usr/share/bash-completion/completions/reseedfs; \
         COMP_WORDS=({words}); COMP_CWORD={cword}; COMP_LINE=\"{line}\"; COMP_POINT=${{#COMP_LINE}}; \
         _reseedfs reseedfs \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        words = words
            .iter()
            .map(|w| format!("'{w}'"))
            .collect::<Vec<_>>()
            .join(" "),
        cword = words.len() - 1,
        line = words.join(" "),
    );
    let out = run(Command::new("bash").args(["--norc", "-c", &script]));
    assert!(
        out.status.success(),
        "bash completion:\n{}",
        describe_output(&out)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn check_installed_commands() {
    // --help and --version, from the installed binary.
    let help = run(Command::new(INSTALLED_BIN).arg("--help"));
    assert!(help.status.success(), "{}", describe_output(&help));
    for sub in subcommands() {
        assert!(
            String::from_utf8_lossy(&help.stdout).contains(&sub),
            "reseedfs --help lacks {sub}"
        );
    }
    let version = run(Command::new(INSTALLED_BIN).arg("--version"));
    let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
    let under_test = run(Command::new(BIN).arg("--version"));
    assert_eq!(
        version,
        String::from_utf8_lossy(&under_test.stdout).trim(),
        "the installed binary is not the one under test"
    );
    assert!(
        version.starts_with(&format!("reseedfs {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );

    // A page per subcommand, found by man(1) in the installed tree.
    let top = man("reseedfs");
    assert!(
        top.status.success(),
        "man reseedfs:\n{}",
        describe_output(&top)
    );
    assert!(text(&top).contains("reseedfs-status(1)"), "{}", text(&top));
    for sub in subcommands() {
        let page = format!("reseedfs-{sub}");
        let out = man(&page);
        assert!(
            out.status.success(),
            "man {page}:\n{}",
            describe_output(&out)
        );
        let where_ = run(Command::new("man").args(["-w", &page]));
        assert_eq!(
            String::from_utf8_lossy(&where_.stdout).trim(),
            format!("/usr/share/man/man1/{page}.1.gz")
        );
    }
    assert!(text(&man("reseedfs-status")).contains("--json"));
    let helper = man("mount.fuse.reseedfs");
    assert!(helper.status.success(), "{}", describe_output(&helper));
    assert!(text(&helper).contains("metrics=ADDR"), "{}", text(&helper));

    // The bash completion completes subcommands and their options.
    assert_eq!(bash_complete(&["reseedfs", "sta"]), ["status"]);
    let options = bash_complete(&["reseedfs", "status", "--"]);
    for want in ["--config", "--json", "--watch"] {
        assert!(
            options.iter().any(|o| o == want),
            "{want} not offered: {options:?}"
        );
    }
    for (shell, file) in [
        ("zsh", "/usr/share/zsh/vendor-completions/_reseedfs"),
        ("fish", "/usr/share/fish/vendor_completions.d/reseedfs.fish"),
    ] {
        // Syntax-checked where the shell is installed (CI installs neither).
        if found(shell) {
            let out = run(Command::new(shell).arg("-n").arg(file));
            assert!(
                out.status.success(),
                "{shell} -n {file}:\n{}",
                describe_output(&out)
            );
        }
    }
}

#[test]
fn the_package_installs_upgrades_over_itself_and_removes_cleanly() {
    let test = "the_package_installs_upgrades_over_itself_and_removes_cleanly";
    if !require_mount_privileges(test) {
        return;
    }
    for tool in ["dpkg", "dpkg-deb", "man", "bash"] {
        if !found(tool) {
            return skip(test, &format!("{tool} is not installed"));
        }
    }
    if !Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return skip(
            test,
            "cargo-deb is not installed (cargo install cargo-deb --version 3.8.0 --locked)",
        );
    }
    match dpkg_status() {
        Some(status) if status != "deinstall ok config-files" => {
            return skip(
                test,
                &format!("a reseedfs package is installed here ({status}): not touching it"),
            );
        }
        _ => {}
    }
    // A mount helper left by an interrupted tests/service.rs points at the binary under test.
    if fs::read_link(INSTALLED_HELPER).is_ok_and(|t| t == Path::new(BIN)) {
        let _ = fs::remove_file(INSTALLED_HELPER);
    }
    for path in [INSTALLED_BIN, INSTALLED_HELPER] {
        if fs::symlink_metadata(path).is_ok() {
            return skip(
                test,
                &format!("{path} exists and is no package's: not replacing it"),
            );
        }
    }
    let etc_existed = Path::new("/etc/reseedfs").exists();

    let bed = Testbed::loop_volumes(3, VOLUME_BYTES).expect("build three loop volumes");
    let _cleanup = Cleanup { bed: &bed };
    let deb = build_package(&bed.root.join("deb"));
    let listing = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for path in package_paths() {
        assert!(
            String::from_utf8_lossy(&listing.stdout).contains(&format!(".{path}")),
            "{} lacks {path}:\n{}",
            deb.display(),
            text(&listing)
        );
    }

    // Install.
    let install = run(Command::new("dpkg").arg("-i").arg(&deb));
    assert!(
        install.status.success(),
        "dpkg -i:\n{}",
        describe_output(&install)
    );
    assert_eq!(dpkg_status().as_deref(), Some("install ok installed"));
    for path in package_paths() {
        assert!(
            fs::symlink_metadata(&path).is_ok(),
            "dpkg -i installed no {path}"
        );
    }
    assert_eq!(
        fs::read_link(INSTALLED_HELPER).expect("the helper is a symlink"),
        Path::new("../bin/reseedfs")
    );
    check_installed_commands();

    // A pool, mounted by mount(8) through the installed helper.
    let init = run(Command::new(INSTALLED_BIN)
        .arg("init")
        .arg("--volumes")
        .arg(&bed.volumes_root)
        .arg("--databases")
        .arg(&bed.databases_root)
        .args(["--database", DB, "--config"])
        .arg(&bed.config_path)
        .arg("--state-dir")
        .arg(&bed.state_dir)
        .arg("--witness-dir")
        .arg(bed.root.join("witness")));
    assert!(
        init.status.success(),
        "reseedfs init:\n{}",
        describe_output(&init)
    );
    let mount = run(Command::new("mount")
        .args(["-t", "fuse.reseedfs"])
        .arg(&bed.config_path)
        .arg(&bed.databases_root));
    assert!(
        mount.status.success(),
        "mount -t fuse.reseedfs:\n{}",
        describe_output(&mount)
    );
    assert!(mounted(&bed), "mount(8) returned before the mount was up");
    let pids = daemons_for(&bed.config_path);
    assert_eq!(pids.len(), 1, "daemons: {pids:?}");
    let daemon = pids[0];
    assert_eq!(
        exe_of(daemon),
        INSTALLED_BIN,
        "the helper ran another binary"
    );

    let file = bed
        .databases_root
        .join(DB)
        .join(format!("{DB}.db"))
        .join("held.dat");
    let mut held = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&file)
        .unwrap_or_else(|e| panic!("create {}: {e}", file.display()));
    held.write_all(b"written before the upgrade\n")
        .and_then(|()| held.sync_all())
        .expect("write through the installed mount");

    // Upgrade over itself with the file open: nothing is stopped.
    let upgrade = run(Command::new("dpkg").arg("-i").arg(&deb));
    assert!(
        upgrade.status.success(),
        "dpkg -i again:\n{}",
        describe_output(&upgrade)
    );
    let said = text(&upgrade);
    println!("--- dpkg -i over itself ---\n{said}");
    assert!(
        said.contains(&format!(
            "daemon pid {daemon}, config {}",
            bed.config_path.display()
        )) && said.contains("To switch"),
        "the upgrade did not say which daemon runs the previous binary:\n{said}"
    );
    assert!(alive(daemon), "the upgrade stopped the daemon");
    assert!(mounted(&bed), "the upgrade unmounted the databases");
    assert_eq!(exe_of(daemon), format!("{INSTALLED_BIN} (deleted)"));
    held.write_all(b"written after the upgrade\n")
        .and_then(|()| held.sync_all())
        .expect("write after the upgrade");

    // Removal while the file is open: the CLI's refusal, and nothing removed.
    let refused = run(Command::new("dpkg").args(["-r", PACKAGE]));
    let said = text(&refused);
    println!("--- dpkg -r with a file open ---\n{said}");
    assert!(
        !refused.status.success(),
        "dpkg -r went through a busy mount:\n{said}"
    );
    assert!(
        said.contains("busy") && said.contains("stop the database first"),
        "the CLI's refusal is not passed on:\n{said}"
    );
    assert!(
        said.contains("reseedfs was not removed") && said.contains("fuser -vm"),
        "the prerm does not say what to do:\n{said}"
    );
    // dpkg keeps the wish ("deinstall"), the package stays installed and configured.
    let status = dpkg_status().unwrap_or_default();
    assert!(
        status.ends_with(" ok installed"),
        "after the refused dpkg -r: {status}"
    );
    assert!(Path::new(INSTALLED_BIN).exists());
    assert!(
        alive(daemon) && mounted(&bed),
        "the refused removal stopped the mount"
    );
    held.write_all(b"written after the refusal\n")
        .and_then(|()| held.sync_all())
        .expect("write after the refused removal");
    let mut back = String::new();
    held.seek(SeekFrom::Start(0))
        .and_then(|_| held.read_to_string(&mut back))
        .expect("read back");
    assert_eq!(
        back,
        "written before the upgrade\nwritten after the upgrade\nwritten after the refusal\n"
    );

    // Closed: the removal unmounts, the daemon exits, the files go; a pool served by
    // another reseedfs binary (here the one under test) is not the package's, and stays.
    drop(held);
    let other = Mounted::start(
        Testbed::loop_volumes(2, OTHER_VOLUME_BYTES).expect("build two loop volumes"),
        &[DB],
        2,
    );
    let remove = run(Command::new("dpkg").args(["-r", PACKAGE]));
    assert!(
        remove.status.success(),
        "dpkg -r:\n{}",
        describe_output(&remove)
    );
    assert!(
        wait_for(EXIT_TIMEOUT, || (!alive(daemon)).then_some(())).is_some(),
        "the daemon still runs after dpkg -r"
    );
    assert!(!mounted(&bed), "still mounted after dpkg -r");
    assert_eq!(
        dpkg_status().as_deref(),
        Some("deinstall ok config-files"),
        "after dpkg -r"
    );
    for path in package_paths() {
        if path.starts_with("/etc/") {
            continue; // a conffile: kept until purge
        }
        assert!(fs::symlink_metadata(&path).is_err(), "dpkg -r left {path}");
    }
    assert!(
        !Path::new("/usr/share/reseedfs").exists(),
        "dpkg -r left /usr/share/reseedfs"
    );
    assert_eq!(
        other.fstype().as_deref(),
        Some(FSTYPE),
        "dpkg -r unmounted a pool the package does not serve"
    );
    fs::write(other.db_files(DB).join("other.dat"), b"still here")
        .expect("write to the other pool after dpkg -r");
    other.unmount();
    let purge = run(Command::new("dpkg").args(["--purge", PACKAGE]));
    assert!(
        purge.status.success(),
        "dpkg --purge:\n{}",
        describe_output(&purge)
    );
    assert_eq!(
        dpkg_status(),
        None,
        "dpkg still knows reseedfs after --purge"
    );
    if !etc_existed {
        assert!(
            !Path::new("/etc/reseedfs").exists(),
            "--purge left /etc/reseedfs"
        );
    }

    // What was written through the mount is on both copies.
    for k in [1, 2] {
        let copy = bed.volume_path(k).join(format!("{DB}.db")).join("held.dat");
        let data = fs::read_to_string(&copy).unwrap_or_else(|e| panic!("{}: {e}", copy.display()));
        assert!(
            data.ends_with("written after the refusal\n"),
            "{}: {data:?}",
            copy.display()
        );
    }
}

#[test]
fn the_example_config_parses_and_shows_the_defaults() {
    let path = repo("platform/linux/debian/reseedfs.toml.example");
    let example = fs::read_to_string(&path).expect("read the example config");
    let as_shipped = Config::parse(&example, &path).expect("the example config parses");
    // Uncomment every `# key = value` line: what it shows as defaults must be the defaults.
    let uncommented: String = example
        .lines()
        .map(|l| {
            let Some(rest) = l.strip_prefix("# ") else {
                return l.to_owned();
            };
            let is_key = rest.split_once(" = ").is_some_and(|(k, _)| {
                !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            });
            if is_key {
                rest.to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut shown = Config::parse(&uncommented, &path).expect("the uncommented example parses");
    assert!(shown.metrics.is_some() && shown.throttle.max_bytes_per_s.is_some());
    // The examples of keys that are off by default.
    shown.metrics = None;
    shown.throttle.max_bytes_per_s = None;
    shown.throttle.latency_target = None;
    shown.scrub.interval = None;
    assert_eq!(
        shown, as_shipped,
        "the example shows other values than the defaults"
    );
}

#[test]
fn the_version_names_the_commit_and_unknown_without_git() {
    let out = run(Command::new(BIN).arg("--version"));
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let git = Command::new("git")
        .arg("-C")
        .arg(env!("CARGO_MANIFEST_DIR"))
        .args(["rev-parse", "--short=12", "HEAD"])
        .output();
    let commit = match git {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        _ => "unknown".to_owned(),
    };
    assert_eq!(
        version,
        format!("reseedfs {} (commit {commit})", env!("CARGO_PKG_VERSION"))
    );

    // The build script, run where a source tarball would be unpacked (no .git).
    let dir = std::env::temp_dir().join(format!("reseedfs-tarball-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("create the tarball dir");
    let script = dir.join("build-script");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let built = run(Command::new(rustc)
        .args(["--edition", "2024", "-o"])
        .arg(&script)
        .arg(repo("platform/build.rs")));
    assert!(
        built.status.success(),
        "compile platform/build.rs:\n{}",
        describe_output(&built)
    );
    for (env, want) in [(None, "unknown"), (Some("0123abcd"), "0123abcd")] {
        let mut cmd = Command::new(&script);
        cmd.current_dir(&dir).env("CARGO_MANIFEST_DIR", &dir);
        match env {
            Some(v) => cmd.env("RESEEDFS_COMMIT", v),
            None => cmd.env_remove("RESEEDFS_COMMIT"),
        };
        let out = run(&mut cmd);
        assert!(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l == format!("cargo:rustc-env=RESEEDFS_COMMIT={want}")),
            "{env:?}:\n{}",
            describe_output(&out)
        );
    }
    let _ = fs::remove_dir_all(&dir);
}
