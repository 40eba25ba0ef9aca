//! `reseedfs generate man DIR` and `reseedfs generate completions DIR`: the man pages and
//! the shell completions, made from the clap definitions themselves, so that they cannot
//! drift from the command line. The package build (`platform/linux/debian/build-deb.sh`)
//! runs them on the binary it packages; the command is hidden from `--help`.
//!
//! Man pages: `reseedfs.1`, one `reseedfs-<subcommand>.1` per visible subcommand (what
//! `man reseedfs-status` opens), and `mount.fuse.reseedfs.8` for the mount(8) helper.
//! Completions: `reseedfs.bash`, `_reseedfs` (zsh) and `reseedfs.fish`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

use super::{Cli, Exit, VERSION};

/// Arguments of `generate`.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// What to generate.
    #[command(subcommand)]
    pub what: Generate,
}

/// What `generate` writes.
#[derive(Debug, clap::Subcommand)]
pub enum Generate {
    /// Man pages (roff): reseedfs.1, reseedfs-SUBCOMMAND.1, mount.fuse.reseedfs.8.
    Man {
        /// The folder to write them into (created if missing).
        dir: PathBuf,
    },
    /// Shell completions: reseedfs.bash, _reseedfs (zsh), reseedfs.fish.
    Completions {
        /// The folder to write them into (created if missing).
        dir: PathBuf,
    },
}

/// The shells completions are made for.
const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// Runs `generate`.
pub fn run(a: &GenerateArgs) -> anyhow::Result<Exit> {
    let written = match &a.what {
        Generate::Man { dir } => man_pages(dir)?,
        Generate::Completions { dir } => completions(dir)?,
    };
    for path in written {
        println!("{}", path.display());
    }
    Ok(Exit::Ok)
}

fn create_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))
}

/// The command line as an operator sees it: [`Cli`] without its hidden subcommands
/// (`mount-helper`, `generate`), which completions and man pages would otherwise offer.
/// Each subcommand is the real definition; only the top level is assembled here.
fn visible_command() -> clap::Command {
    let full = Cli::command();
    let visible = full.get_subcommands().filter(|s| !s.is_hide_set()).cloned();
    let mut cmd = clap::Command::new("reseedfs").version(VERSION);
    if let Some(about) = full.get_about() {
        cmd = cmd.about(about.clone());
    }
    if let Some(long) = full.get_long_about() {
        cmd = cmd.long_about(long.clone());
    }
    cmd.args(full.get_arguments().cloned())
        .subcommand_required(full.is_subcommand_required_set())
        .subcommands(visible)
}

/// Writes the man pages into `dir`; returns their paths.
pub fn man_pages(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    create_dir(dir)?;
    let mut cmd = visible_command().disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    for sub in cmd.get_subcommands() {
        written.push(write_page(clap_mangen::Man::new(sub.clone()), dir)?);
    }
    // The helper is hidden from `reseedfs --help` (mount(8) runs it), but operators meet it
    // in fstab and `mount -t fuse.reseedfs`: it gets a page of its own, in section 8.
    let mut full = Cli::command();
    full.build();
    let helper = full
        .find_subcommand("mount-helper")
        .context("the mount-helper subcommand is missing")?
        .clone()
        .name("mount.fuse.reseedfs")
        .display_name("mount.fuse.reseedfs")
        .bin_name("mount.fuse.reseedfs");
    written.push(write_page(clap_mangen::Man::new(helper).section("8"), dir)?);
    written.push(write_page(clap_mangen::Man::new(cmd), dir)?);
    Ok(written)
}

fn write_page(man: clap_mangen::Man, dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join(man.get_filename());
    man.generate_to(dir)
        .with_context(|| format!("write the man page {}", path.display()))
}

/// Writes the completion scripts into `dir`; returns their paths.
pub fn completions(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    create_dir(dir)?;
    let mut cmd = visible_command();
    SHELLS
        .iter()
        .map(|&shell| {
            clap_complete::generate_to(shell, &mut cmd, "reseedfs", dir)
                .with_context(|| format!("write the {shell} completions into {}", dir.display()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(what: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("reseedfs-generate-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_man_page_for_every_visible_subcommand_and_the_helper() {
        let dir = scratch("man");
        let written = man_pages(&dir).unwrap();
        let cmd = Cli::command();
        let mut want: Vec<String> = cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| format!("reseedfs-{}.1", s.get_name()))
            .collect();
        want.extend(["reseedfs.1".into(), "mount.fuse.reseedfs.8".into()]);
        for name in &want {
            assert!(dir.join(name).is_file(), "no {name} in {written:?}");
        }
        assert_eq!(written.len(), want.len(), "{written:?}");
        assert!(!dir.join("reseedfs-generate.1").exists());
        assert!(!dir.join("reseedfs-help.1").exists());
        let status = std::fs::read_to_string(dir.join("reseedfs-status.1")).unwrap();
        assert!(status.contains("\\-\\-json"), "{status}");
        let top = std::fs::read_to_string(dir.join("reseedfs.1")).unwrap();
        assert!(top.contains(VERSION), "{top}");
        assert!(top.contains("reseedfs\\-status(1)"), "{top}");
        assert!(!top.contains("mount\\-helper"), "{top}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn completions_for_bash_zsh_and_fish_name_the_subcommands() {
        let dir = scratch("completions");
        let written = completions(&dir).unwrap();
        assert_eq!(written.len(), 3, "{written:?}");
        for name in ["reseedfs.bash", "_reseedfs", "reseedfs.fish"] {
            let text = std::fs::read_to_string(dir.join(name)).unwrap();
            for word in ["status", "reseed", "explain", "config", "what-if-fail"] {
                assert!(text.contains(word), "{name} lacks {word}");
            }
            for hidden in ["mount-helper", "generate"] {
                assert!(!text.contains(hidden), "{name} offers {hidden}");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
