//! The `reseedfs` command: parse the arguments, set up logging, run.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RESEEDFS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,fuser::session=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    #[cfg_attr(not(unix), allow(unused_mut))]
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // Installed as /sbin/mount.fuse.reseedfs, the binary is mount(8)'s helper.
    #[cfg(unix)]
    if reseedfs::cli::mount_helper::invoked_as_helper(args.first()) {
        args.insert(1, "mount-helper".into());
    }
    reseedfs::cli::run(reseedfs::cli::Cli::parse_from(args))
}
