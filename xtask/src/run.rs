//! `cargo xtask run [-- ARGS...]`: setup, build the agent (release) and exec it.

use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util::{display_cmd, is_ci, target_dir, workspace_root};

/// The agent's command line: `demo --out <target>/shadow-demo` without ARGS (its report
/// lands beside the build), else `run ARGS...`.
pub fn agent_args(args: &[String]) -> Vec<String> {
    if args.is_empty() {
        vec![
            "demo".to_string(),
            "--out".to_string(),
            target_dir().join("shadow-demo").display().to_string(),
        ]
    } else {
        std::iter::once("run".to_string())
            .chain(args.iter().cloned())
            .collect()
    }
}

pub fn run(no_setup: bool, args: &[String]) -> Result<()> {
    if !no_setup || is_ci() {
        crate::setup::setup()?;
    }
    let mut build = Command::new("cargo");
    build
        .args(["build", "--release", "-p", "shadow-agent"])
        .current_dir(workspace_root());
    let shown = display_cmd(&build);
    println!("==> {shown}");
    let status = build
        .status()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !status.success() {
        bail!("building the agent failed: `{shown}` exited with {status}");
    }

    let agent = target_dir().join("release").join("shadow-agent");
    let mut cmd = Command::new(&agent);
    cmd.args(agent_args(args));
    println!("==> {}", display_cmd(&cmd));
    // exec replaces this process: the agent's exit code and signals are ours.
    let err = cmd.exec();
    Err(err).with_context(|| format!("could not execute {}", agent.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_without_args_run_with_args() {
        let demo = agent_args(&[]);
        assert_eq!(demo[..2], ["demo", "--out"]);
        assert!(demo[2].ends_with("shadow-demo"), "{demo:?}");
        let args = ["--config".to_string(), "a.toml".to_string()];
        assert_eq!(agent_args(&args), ["run", "--config", "a.toml"]);
    }
}
