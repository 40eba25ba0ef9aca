//! `reseedfs demo`: the whole story in a throwaway pool.

use std::process::ExitCode;

/// Arguments of `demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {}

/// Runs the demo.
pub fn run(_args: &DemoArgs) -> anyhow::Result<super::Exit> {
    anyhow::bail!("demo: not built yet")
}

#[allow(dead_code)]
fn _unused(_: ExitCode) {}
