//! `cargo xtask test`: setup, fmt, clippy (host and eBPF), the test suite, leftover check.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::leftovers::{self, Snapshot};
use crate::util::{display_cmd, fmt_duration, is_ci, target_dir, workspace_root};

/// The eBPF crate: built for bpfel-unknown-none only, never for the host.
pub const EBPF_CRATE: &str = "shadow-ebpf";
/// Its target triple.
pub const EBPF_TARGET: &str = "bpfel-unknown-none";

/// Finished steps and their durations, for the summary.
#[derive(Default)]
struct Steps {
    started: usize,
    done: Vec<(&'static str, Duration)>,
}

impl Steps {
    /// Runs `f` as step `name`, printing its header and elapsed time.
    fn run(
        &mut self,
        name: &'static str,
        what: &str,
        f: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        self.started += 1;
        println!("==> [{}] {name}: {what}", self.started);
        let start = Instant::now();
        let result = f();
        let elapsed = start.elapsed();
        match result {
            Ok(()) => {
                println!("==> {name}: ok ({})", fmt_duration(elapsed));
                self.done.push((name, elapsed));
                Ok(())
            }
            Err(err) => {
                println!("==> {name}: FAILED ({})", fmt_duration(elapsed));
                Err(err.context(format!(
                    "step `{name}` failed after {}",
                    fmt_duration(elapsed)
                )))
            }
        }
    }

    fn summary(&self) -> String {
        self.done
            .iter()
            .map(|(name, d)| format!("{name} {}", fmt_duration(*d)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn cargo(args: &[&str]) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args(args).current_dir(workspace_root());
    cmd
}

/// Runs a command with inherited stdio; a non-zero exit is an error naming the command.
fn run_cmd(mut cmd: Command) -> Result<()> {
    let shown = display_cmd(&cmd);
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` exited with {status}");
    }
    Ok(())
}

fn fmt_cmd() -> Command {
    cargo(&["fmt", "--all", "--", "--check"])
}

/// Userspace clippy: every workspace member but the eBPF crate (`--workspace` ignores
/// default-members, and the eBPF crate cannot build for the host).
fn clippy_cmd() -> Command {
    cargo(&[
        "clippy",
        "--workspace",
        "--exclude",
        EBPF_CRATE,
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])
}

/// The agent's optional models, Prophet and AutoARIMA (cargo features `prophet` and `arima`,
/// off by default, so the workspace steps never compile them): clippy with both on.
fn clippy_features_cmd() -> Command {
    cargo(&[
        "clippy",
        "-p",
        "shadow-agent",
        "--all-targets",
        "--features",
        OPTIONAL_MODELS,
        "--",
        "-D",
        "warnings",
    ])
}

/// The cargo features of the agent's optional models.
const OPTIONAL_MODELS: &str = "prophet,arima";

/// The optional models' unit tests and the backtest's (which has them among its models),
/// in the build with both features; the rest of the forecaster's tests ran in `tests`.
fn test_features_cmd() -> Command {
    cargo(&[
        "test",
        "-p",
        "shadow-agent",
        "--features",
        OPTIONAL_MODELS,
        "--lib",
        "--",
        "forecast::prophet::",
        "forecast::arima::",
        "forecast::backtest::",
    ])
}

/// eBPF clippy, in its own target dir so it does not invalidate the host build.
pub fn ebpf_clippy_cmd() -> Command {
    let mut cmd = cargo(&[
        "+nightly",
        "clippy",
        "-p",
        EBPF_CRATE,
        "--target",
        EBPF_TARGET,
        "-Z",
        "build-std=core",
        "--release",
        "--",
        "-D",
        "warnings",
    ]);
    cmd.env("CARGO_TARGET_DIR", target_dir().join("xtask-ebpf-clippy"));
    cmd
}

/// The cargo-fuzz targets in fuzz/ (see fuzz/Cargo.toml).
pub const FUZZ_TARGETS: [&str; 7] = [
    "parse_flow",
    "http_mask",
    "param_mask",
    "range_mask",
    "checksum",
    "discard",
    "pseudonym",
];
/// Executions per target in the smoke run.
pub const FUZZ_SMOKE_RUNS: u32 = 20_000;

/// Builds the fuzz targets (no sanitizer: the code under test is safe Rust, and the
/// invariants are assertions; overflow checks stay on).
pub(crate) fn fuzz_build_cmd() -> Command {
    cargo(&["+nightly", "fuzz", "build", "-s", "none"])
}

/// A short run of one target: its seeds plus the corpus grown by earlier runs (gitignored).
fn fuzz_run_cmd(target: &str) -> Command {
    fuzz_run_cmd_with(target, u64::from(FUZZ_SMOKE_RUNS))
}

/// `runs` executions of one target over its seeds and grown corpus (also `cargo xtask fuzz`).
pub(crate) fn fuzz_run_cmd_with(target: &str, runs: u64) -> Command {
    let corpus = format!("fuzz/corpus/{target}");
    let seeds = format!("fuzz/seeds/{target}");
    let runs = format!("-runs={runs}");
    cargo(&[
        "+nightly",
        "fuzz",
        "run",
        "-s",
        "none",
        target,
        &corpus,
        &seeds,
        "--",
        &runs,
        "-max_len=4096",
    ])
}

/// The fuzz smoke step: build once, then each target for `FUZZ_SMOKE_RUNS` executions.
fn fuzz_smoke() -> Result<()> {
    run_cmd(fuzz_build_cmd())?;
    for target in FUZZ_TARGETS {
        std::fs::create_dir_all(workspace_root().join("fuzz/corpus").join(target))
            .context("creating the fuzz corpus directory")?;
        let start = Instant::now();
        // libFuzzer's progress lines go to a log, shown only when the target fails: the end
        // of CI's output is for what failed.
        let mut cmd = fuzz_run_cmd(target);
        let out = cmd
            .output()
            .with_context(|| format!("could not start `{}`", display_cmd(&cmd)))?;
        if !out.status.success() {
            print!("{}", String::from_utf8_lossy(&out.stdout));
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
            bail!(
                "fuzz target `{target}` failed ({}): the crashing input is under \
                 fuzz/artifacts/{target}/ (replay it with `cargo +nightly fuzz run -s none \
                 {target} <file>`)",
                out.status
            );
        }
        println!(
            "fuzz: {target}: {FUZZ_SMOKE_RUNS} runs, no crash ({})",
            fmt_duration(start.elapsed())
        );
    }
    Ok(())
}

/// Unit and integration tests (no doc-tests: the crates have none).
fn test_cmd() -> Command {
    cargo(&[
        "test",
        "--workspace",
        "--exclude",
        EBPF_CRATE,
        "--lib",
        "--bins",
        "--tests",
        "--no-fail-fast",
    ])
}

pub fn test(no_setup: bool) -> Result<()> {
    let start = Instant::now();
    let mut steps = Steps::default();
    let result = run_steps(&mut steps, no_setup);
    let total = fmt_duration(start.elapsed());
    match result {
        Ok(()) => {
            println!(
                "xtask test: OK, all {} steps succeeded in {total} ({})",
                steps.done.len(),
                steps.summary()
            );
            Ok(())
        }
        Err(err) => {
            println!(
                "xtask test: FAILED after {total}; steps that succeeded: {}",
                if steps.done.is_empty() {
                    "none".to_string()
                } else {
                    steps.summary()
                }
            );
            Err(err)
        }
    }
}

fn run_steps(steps: &mut Steps, no_setup: bool) -> Result<()> {
    if no_setup && is_ci() {
        println!("xtask test: CI=true, so --no-setup is ignored: nothing may be skipped under CI");
    }
    if !no_setup || is_ci() {
        steps.run(
            "setup",
            "check and install prerequisites",
            crate::setup::setup,
        )?;
    }
    for (name, cmd) in [
        ("fmt", fmt_cmd()),
        ("clippy", clippy_cmd()),
        ("clippy (optional models)", clippy_features_cmd()),
        ("clippy (eBPF)", ebpf_clippy_cmd()),
    ] {
        let shown = display_cmd(&cmd);
        steps.run(name, &shown, || run_cmd(cmd))?;
    }

    let before = Snapshot::take().context("taking the leftover snapshot before the tests")?;
    let cmd = test_cmd();
    let shown = display_cmd(&cmd);
    let mut totals = TestTotals::default();
    let tests = steps.run("tests", &shown, || run_tests(cmd, &mut totals));
    // Its counts go into the same totals: the backtest's tests run a second time, in the
    // build with the optional models.
    let cmd = test_features_cmd();
    let shown = display_cmd(&cmd);
    let tests_optional = steps.run("tests (optional models)", &shown, || {
        run_tests(cmd, &mut totals)
    });
    let fuzz = steps.run(
        "fuzz smoke",
        &format!(
            "{} and {FUZZ_SMOKE_RUNS} runs of each of {}",
            display_cmd(&fuzz_build_cmd()),
            FUZZ_TARGETS.join(", ")
        ),
        fuzz_smoke,
    );
    // Check for leftovers even when tests failed: they often explain the failure.
    let leftover_step = steps.run(
        "leftover check",
        "network namespaces, host links, shdt* cgroups, shadow BPF programs, clsact qdiscs",
        || check_leftovers(&before),
    );
    // The closing line CI reads: every test of the suite, summed over the test binaries.
    println!(
        "tests: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    for name in &totals.failed_names {
        println!("failed test: {name}");
    }
    let mut errors: Vec<anyhow::Error> = [tests, tests_optional, fuzz, leftover_step]
        .into_iter()
        .filter_map(Result::err)
        .collect();
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => {
            let all: Vec<String> = errors.iter().map(|e| format!("{e:#}")).collect();
            Err(anyhow!(all.join("\nerror: ")))
        }
    }
}

/// Test counts summed over every `test result:` line of a cargo test run.
#[derive(Debug, Default, PartialEq, Eq)]
struct TestTotals {
    passed: u64,
    failed: u64,
    ignored: u64,
    /// Names from the `test <name> ... FAILED` lines.
    failed_names: Vec<String>,
}

impl TestTotals {
    /// Adds the counts of a `test result: ok. 3 passed; 0 failed; 1 ignored; ...` line.
    fn add_line(&mut self, line: &str) {
        let line = line.trim();
        if let Some(name) = line
            .strip_prefix("test ")
            .and_then(|l| l.strip_suffix(" ... FAILED"))
        {
            self.failed_names.push(name.to_owned());
            return;
        }
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

/// Runs cargo test, passing its output through while summing the per-binary results.
fn run_tests(mut cmd: Command, totals: &mut TestTotals) -> Result<()> {
    use std::io::{BufRead as _, BufReader};
    let shown = display_cmd(&cmd);
    let passed_before = totals.passed;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{shown}`"))?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        totals.add_line(&line);
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` exited with {status}");
    }
    if totals.passed == passed_before {
        bail!("`{shown}` ran no test");
    }
    Ok(())
}

fn check_leftovers(before: &Snapshot) -> Result<()> {
    let after = Snapshot::take().context("taking the leftover snapshot after the tests")?;
    let left = leftovers::diff(before, &after);
    if left.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = left.iter().map(|l| format!("  - {l}")).collect();
    Err(anyhow!(
        "the test suite left {} thing(s) behind (every test must remove what it creates, even \
         when it fails):\n{}",
        left.len(),
        lines.join("\n")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_the_documented_ones() {
        assert_eq!(display_cmd(&fmt_cmd()), "cargo fmt --all -- --check");
        assert_eq!(
            display_cmd(&clippy_cmd()),
            "cargo clippy --workspace --exclude shadow-ebpf --all-targets -- -D warnings"
        );
        let ebpf = display_cmd(&ebpf_clippy_cmd());
        assert!(ebpf.starts_with("CARGO_TARGET_DIR="), "{ebpf}");
        assert!(ebpf.ends_with(
            "/xtask-ebpf-clippy cargo +nightly clippy -p shadow-ebpf --target \
             bpfel-unknown-none -Z build-std=core --release -- -D warnings"
        ));
        assert_eq!(
            display_cmd(&fuzz_run_cmd("parse_flow")),
            "cargo +nightly fuzz run -s none parse_flow fuzz/corpus/parse_flow \
             fuzz/seeds/parse_flow -- -runs=20000 -max_len=4096"
        );
        assert_eq!(
            display_cmd(&test_cmd()),
            "cargo test --workspace --exclude shadow-ebpf --lib --bins --tests --no-fail-fast"
        );
        assert_eq!(
            display_cmd(&clippy_features_cmd()),
            "cargo clippy -p shadow-agent --all-targets --features prophet,arima -- -D warnings"
        );
        assert_eq!(
            display_cmd(&test_features_cmd()),
            "cargo test -p shadow-agent --features prophet,arima --lib -- forecast::prophet:: \
             forecast::arima:: forecast::backtest::"
        );
    }

    #[test]
    fn fuzz_targets_are_the_ones_fuzz_cargo_toml_declares() {
        let manifest = std::fs::read_to_string(workspace_root().join("fuzz/Cargo.toml")).unwrap();
        let bins: Vec<&str> = manifest
            .split("[[bin]]")
            .skip(1)
            .filter_map(|b| b.lines().find_map(|l| l.strip_prefix("name = ")))
            .map(|n| n.trim_matches('"'))
            .collect();
        assert_eq!(bins, FUZZ_TARGETS);
        for t in FUZZ_TARGETS {
            let seeds = workspace_root().join("fuzz/seeds").join(t);
            assert!(
                seeds.read_dir().unwrap().next().is_some(),
                "no seeds for {t}"
            );
        }
    }

    #[test]
    fn totals_sum_result_lines() {
        let mut t = TestTotals::default();
        t.add_line("test result: ok. 35 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.11s");
        t.add_line("test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1s");
        t.add_line("running 3 tests");
        t.add_line("test forecast_a_cgroup ... FAILED");
        t.add_line("test ok_one ... ok");
        assert_eq!(
            t,
            TestTotals {
                passed: 38,
                failed: 1,
                ignored: 2,
                failed_names: vec!["forecast_a_cgroup".into()],
            }
        );
    }

    #[test]
    fn failing_step_is_named_and_timed() {
        let mut steps = Steps::default();
        steps.run("one", "ok", || Ok(())).unwrap();
        let err = steps
            .run("two", "fails", || run_cmd(Command::new("false")))
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.starts_with("step `two` failed after"), "{msg}");
        assert!(msg.contains("`false` exited with exit status: 1"), "{msg}");
        assert_eq!(steps.done.len(), 1);
        assert!(steps.summary().starts_with("one "));
    }
}
