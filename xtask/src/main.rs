//! `cargo xtask`: developer and CI tasks for Shadow.
//!
//! - `cargo xtask setup`: check the machine and install what is missing (idempotent).
//! - `cargo xtask test [--no-setup]`: setup, fmt, clippy (host and eBPF), the test suite and a
//!   check that the suite left no namespaces, links, cgroups, BPF programs or qdiscs behind.
//! - `cargo xtask fuzz [--runs N]`: every fuzz target for N executions (default 10 million).
//! - `cargo xtask run [-- ARGS...]`: setup, build the agent in release mode and run it
//!   (`shadow-agent demo` without ARGS, `shadow-agent run ARGS...` otherwise).
//!
//! Exit codes: 0 success, 2 a missing prerequisite (see [`prereq::PrereqError`]), 1 anything else.

mod bench;
mod bench_allocate;
mod bench_mirror;
mod bench_soak;
mod bench_tcp;
mod fuzz;
mod leftovers;
mod prereq;
mod run;
mod setup;
mod sysinfo;
mod test;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::prereq::PrereqError;

#[derive(Debug, Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "Developer and CI tasks for Shadow"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check the prerequisites (root, capabilities, kernel, BTF, toolchains, bpf-linker, Debian
    /// packages, bpffs/tracefs mounts) and install whatever is missing.
    Setup,
    /// Setup, then fmt, clippy (host and eBPF), the whole test suite and a leftover check.
    Test {
        /// Skip `setup` (ignored under CI=true, where nothing may be skipped).
        #[arg(long)]
        no_setup: bool,
    },
    /// Setup, build shadow-agent (release) and run `shadow-agent demo`, or
    /// `shadow-agent run ARGS...` when ARGS are given after `--`.
    /// Benchmarks: `bench profiler [--json PATH]`, `bench mirror [--json PATH]`,
    /// `bench allocate [--json PATH]`.
    /// `bench soak [--duration 30m] [--json PATH]`.
    Bench {
        #[command(subcommand)]
        target: bench::BenchTarget,
    },
    /// The trace-following CPU burner of `bench allocate` (internal).
    #[command(name = "__burn-trace", hide = true)]
    BurnTrace {
        #[arg(long)]
        interval_ms: u64,
        #[arg(long)]
        start_unix_ms: u64,
        /// Demand in cores, one interval per line.
        file: std::path::PathBuf,
    },
    /// The long fuzzing campaign: every cargo-fuzz target (or `--target T`, repeatable) for
    /// `--runs` executions each, one at a time under `nice -n 19`.
    Fuzz {
        /// Executions per target.
        #[arg(long, default_value_t = fuzz::DEFAULT_RUNS)]
        runs: u64,
        /// Only these targets (default: all of fuzz/Cargo.toml's).
        #[arg(long = "target")]
        targets: Vec<String>,
        /// Also write the results as JSON to PATH.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    Run {
        /// Skip `setup` (ignored under CI=true).
        #[arg(long)]
        no_setup: bool,
        /// Arguments for `shadow-agent run`, e.g. `-- --config FILE`.
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    // Usage errors exit 1, not clap's 2: exit code 2 means a missing prerequisite.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    util::prepare_child_env();
    let result = match cli.command {
        Command::Setup => setup::setup(),
        Command::Test { no_setup } => test::test(no_setup),
        Command::Run { no_setup, args } => run::run(no_setup, &args),
        Command::Bench { target } => bench::bench(target),
        Command::BurnTrace {
            interval_ms,
            start_unix_ms,
            file,
        } => bench_allocate::burn_trace(&file, interval_ms, start_unix_ms),
        Command::Fuzz {
            runs,
            targets,
            json,
        } => fuzz::fuzz(runs, &targets, json.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if let Some(prereq) = err.downcast_ref::<PrereqError>() {
                eprintln!("error: {prereq}");
                ExitCode::from(2)
            } else {
                eprintln!("error: {err:#}");
                ExitCode::from(1)
            }
        }
    }
}
