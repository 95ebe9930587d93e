//! `cargo xtask fuzz [--runs N] [--target T]... [--json PATH]`: the long fuzzing campaign
//! (issue 10 item 1): every cargo-fuzz target in turn (or the named ones), each for `runs`
//! executions over its seeds and grown corpus, the same command as the smoke run of `cargo
//! xtask test` with a larger `-runs`, under `nice -n 19` so a busy machine stays usable.
//! Each run's libFuzzer output goes to `target/fuzz-logs/<target>.log`; the executions and
//! seconds are read from its final statistics and printed as a table. A crash stops the
//! campaign with the path of the crashing input.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};
use serde_json::json;

use crate::{
    test::{fuzz_build_cmd, fuzz_run_cmd_with, FUZZ_TARGETS},
    util::{self, display_cmd},
};

/// Default executions per target (the bar).
pub const DEFAULT_RUNS: u64 = 10_000_000;

/// Executions and seconds from libFuzzer's final lines (`-print_final_stats=1` and `Done N
/// runs in S second(s)`).
pub fn parse_stats(log: &str) -> (Option<u64>, Option<u64>) {
    let execs = log.lines().find_map(|l| {
        l.strip_prefix("stat::number_of_executed_units:")
            .and_then(|v| v.trim().parse().ok())
    });
    let secs = log.lines().find_map(|l| {
        let rest = l.strip_prefix("Done ")?;
        let (_, after) = rest.split_once(" runs in ")?;
        after.split_whitespace().next()?.parse().ok()
    });
    (execs, secs)
}

fn nice(cmd: Command) -> Command {
    let mut n = Command::new("nice");
    n.args(["-n", "19"])
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .current_dir(util::workspace_root());
    n
}

pub fn fuzz(runs: u64, targets: &[String], json_out: Option<&Path>) -> Result<()> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let chosen: Vec<&str> = if targets.is_empty() {
        FUZZ_TARGETS.to_vec()
    } else {
        for t in targets {
            if !FUZZ_TARGETS.contains(&t.as_str()) {
                bail!(
                    "--target {t}: not a fuzz target (one of {})",
                    FUZZ_TARGETS.join(", ")
                );
            }
        }
        targets.iter().map(String::as_str).collect()
    };
    let root = util::workspace_root();
    let build = nice(fuzz_build_cmd());
    eprintln!("fuzz: {}", display_cmd(&build));
    let st = nice(fuzz_build_cmd())
        .status()
        .context("running cargo +nightly fuzz build (cargo install cargo-fuzz)")?;
    if !st.success() {
        bail!("building the fuzz targets failed");
    }
    let logs: PathBuf = util::target_dir().join("fuzz-logs");
    fs::create_dir_all(&logs).with_context(|| format!("mkdir {}", logs.display()))?;
    let mut rows = Vec::new();
    for target in chosen {
        fs::create_dir_all(root.join("fuzz/corpus").join(target))
            .context("creating the fuzz corpus directory")?;
        let mut cmd = nice(fuzz_run_cmd_with(target, runs));
        cmd.arg("-print_final_stats=1");
        let log_path = logs.join(format!("{target}.log"));
        let log = fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        eprintln!("fuzz: {} (log: {})", display_cmd(&cmd), log_path.display());
        let start = Instant::now();
        let st = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .status()
            .with_context(|| format!("running {}", display_cmd(&cmd)))?;
        let wall = start.elapsed().as_secs();
        let text = fs::read_to_string(&log_path).unwrap_or_default();
        if !st.success() {
            bail!(
                "fuzz target `{target}` failed ({st}); the crashing input is under \
                 fuzz/artifacts/{target}/ (replay: cargo +nightly fuzz run -s none {target} \
                 <file>). Log tail:\n{}",
                util::tail(&text, 30)
            );
        }
        let (execs, secs) = parse_stats(&text);
        let execs = execs.unwrap_or(0);
        if execs < runs {
            bail!(
                "fuzz target `{target}` ran {execs} of {runs} executions; see {}",
                log_path.display()
            );
        }
        let secs = secs.unwrap_or(wall);
        eprintln!("fuzz: {target}: {execs} executions in {secs} s, no crash");
        rows.push(json!({
            "target": target, "executions": execs, "seconds": secs,
            "execs_per_sec": execs as f64 / secs.max(1) as f64, "crashes": 0,
        }));
    }
    println!(
        "{:<12} {:>12} {:>8} {:>10}  crashes",
        "target", "executions", "seconds", "exec/s"
    );
    for r in &rows {
        println!(
            "{:<12} {:>12} {:>8} {:>10.0}  0",
            r["target"].as_str().unwrap_or(""),
            r["executions"].as_u64().unwrap_or(0),
            r["seconds"].as_u64().unwrap_or(0),
            r["execs_per_sec"].as_f64().unwrap_or(0.0)
        );
    }
    if let Some(p) = json_out {
        fs::write(p, json!({ "runs": runs, "targets": rows }).to_string())
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_stats_are_read() {
        let log = "#1000000 DONE cov: 10\nDone 10000000 runs in 463 second(s)\n\
                   stat::number_of_executed_units: 10000000\nstat::average_exec_per_sec: 21598\n";
        assert_eq!(parse_stats(log), (Some(10_000_000), Some(463)));
        assert_eq!(parse_stats("nothing"), (None, None));
    }

    #[test]
    fn the_run_is_the_smoke_command_under_nice() {
        let mut cmd = nice(fuzz_run_cmd_with("http_mask", 7));
        cmd.arg("-print_final_stats=1");
        assert_eq!(
            display_cmd(&cmd),
            "nice -n 19 cargo +nightly fuzz run -s none http_mask fuzz/corpus/http_mask \
             fuzz/seeds/http_mask -- -runs=7 -max_len=4096 -print_final_stats=1"
        );
    }
}
