//! `cargo xtask bench <target>`: benchmarks. Targets:
//!
//! - `profiler [--json PATH] [--rounds N] [--loops N]`: a context-switch-heavy workload
//!   (`perf bench sched pipe`, Debian's linux-perf) in a scratch cgroup2 group, interleaved
//!   without and with `shadow-agent profile` tracking that group; reports the throughput
//!   ratio and the average ns per sched_switch handler from the kernel's BPF run statistics
//!   (`kernel.bpf_stats_enabled`, `run_time_ns / run_cnt` of `sched_sw_btf`/`sched_sw_raw`
//!   from `bpftool prog show --json`). Targets: ratio >= 0.97, <= 300 ns per handler.
//! - `mirror [--json PATH] [--rounds N] [--seconds S] [--no-xdp]`: Shadow's mirror against
//!   `tc mirred` on one veth topology (`bench_mirror.rs`).
//! - `soak [--duration 30m] [--interval S] [--rate R] [--json PATH]`: the agent's RSS, CPU,
//!   descriptors and BPF map entries over a long mirrored run (`bench_soak.rs`).

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::Subcommand;

use crate::util;

#[derive(Debug, Subcommand)]
pub enum BenchTarget {
    /// sched_switch accounting overhead: throughput ratio and ns per handler.
    Profiler {
        /// Also write the result as JSON to PATH.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Interleaved rounds (each one run without and one with the profiler).
        #[arg(long, default_value_t = 5)]
        rounds: u32,
        /// Messages per `perf bench sched pipe` run.
        #[arg(long, default_value_t = 200_000)]
        loops: u32,
    },
    /// Shadow's mirror (with and without masking) vs `tc mirred`: UDP pps, TCP Gbit/s,
    /// clone delivery (see `bench_mirror.rs`).
    Mirror(crate::bench_mirror::MirrorArgs),
    /// The agent under mirrored load with a shadow and the allocator for `--duration`:
    /// RSS, CPU, descriptors and BPF map entries sampled; fails on unbounded growth (see
    /// `bench_soak.rs`).
    Soak(crate::bench_soak::SoakArgs),
}

pub fn bench(target: BenchTarget) -> Result<()> {
    match target {
        BenchTarget::Profiler {
            json,
            rounds,
            loops,
        } => profiler(json.as_deref(), rounds, loops),
        BenchTarget::Mirror(args) => crate::bench_mirror::mirror(args),
        BenchTarget::Soak(args) => crate::bench_soak::soak(args),
    }
}

const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
const UNIFIED: &str = "/sys/fs/cgroup/unified";

/// Scratch cgroup2 group, removed on drop.
struct Group(PathBuf);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

/// Restores `kernel.bpf_stats_enabled` on drop.
struct StatsGuard(String);

impl Drop for StatsGuard {
    fn drop(&mut self) {
        let _ = fs::write(STATS, &self.0);
    }
}

/// Kills the agent on drop (SIGINT first so it detaches cleanly).
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        for _ in 0..50 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One `perf bench sched pipe` run inside `group`: ops per second.
fn pipe_run(group: &Path, loops: u32) -> Result<f64> {
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec perf bench sched pipe -l {loops}",
        group.display()
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .output()
        .context("running perf bench sched pipe (apt-get install linux-perf)")?;
    if !out.status.success() {
        bail!(
            "perf bench failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_suffix("ops/sec")?.trim().parse().ok())
        .ok_or_else(|| anyhow!("no ops/sec in perf output: {text}"))
}

/// Sum of (run_time_ns, run_cnt) of the loaded sched_switch handlers.
fn handler_stats() -> Result<(u64, u64)> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .context("running bpftool")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("bpftool json")?;
    let mut sum = (0, 0);
    for p in v.as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or("");
        if name == "sched_sw_btf" || name == "sched_sw_raw" {
            sum.0 += p["run_time_ns"].as_u64().unwrap_or(0);
            sum.1 += p["run_cnt"].as_u64().unwrap_or(0);
        }
    }
    Ok(sum)
}

fn start_agent(agent: &Path, group: &Path) -> Result<Agent> {
    let mut child = Command::new(agent)
        .args(["profile", "--json", "--interval-ms", "1000", "--cgroup"])
        .arg(group)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", agent.display()))?;
    // The first line (the hook report) means every program is attached.
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("agent stdout"))?;
    let agent = Agent(child);
    let mut line = String::new();
    let mut reader = BufReader::new(stdout);
    reader.read_line(&mut line).context("reading the agent")?;
    if !line.contains("\"hooks\"") {
        bail!("the agent did not start: {line:?}");
    }
    // Keep reading: the agent stops when its output pipe closes, which would detach the
    // programs being measured.
    std::thread::spawn(move || {
        let mut sink = String::new();
        while reader.read_line(&mut sink).is_ok_and(|n| n > 0) {
            sink.clear();
        }
    });
    Ok(agent)
}

fn profiler(json: Option<&Path>, rounds: u32, loops: u32) -> Result<()> {
    let root = util::workspace_root();
    let status = Command::new("cargo")
        .current_dir(&root)
        .env("SHADOW_REQUIRE_EBPF", "1")
        .args(["build", "-p", "shadow-agent"])
        .status()
        .context("building shadow-agent")?;
    if !status.success() {
        bail!("building shadow-agent failed");
    }
    let agent = util::target_dir().join("debug/shadow-agent");
    let group = Group(PathBuf::from(UNIFIED).join(format!("shdtbench{}", std::process::id())));
    fs::create_dir(&group.0).with_context(|| format!("mkdir {}", group.0.display()))?;
    let old = fs::read_to_string(STATS).context("reading kernel.bpf_stats_enabled")?;
    let _stats = StatsGuard(old.trim().to_owned());
    fs::write(STATS, "1").context("enabling kernel.bpf_stats_enabled")?;

    let (mut without, mut with) = (Vec::new(), Vec::new());
    let (mut run_ns, mut run_cnt) = (0u64, 0u64);
    for round in 0..rounds {
        let base = pipe_run(&group.0, loops)?;
        let a = start_agent(&agent, &group.0)?;
        let prof = pipe_run(&group.0, loops)?;
        let (ns, cnt) = handler_stats()?;
        drop(a);
        run_ns += ns;
        run_cnt += cnt;
        eprintln!("round {round}: {base:.0} ops/s without, {prof:.0} ops/s with the profiler");
        without.push(base);
        with.push(prof);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let ratio = mean(&with) / mean(&without);
    let ns_per = if run_cnt > 0 {
        run_ns as f64 / run_cnt as f64
    } else {
        f64::NAN
    };
    let result = serde_json::json!({
        "throughput_ratio": ratio,
        "ns_per_sched_switch": ns_per,
        "ops_per_sec_without": without,
        "ops_per_sec_with": with,
        "handler_runs": run_cnt,
        "rounds": rounds,
        "loops": loops,
        "targets": {"throughput_ratio_min": 0.97, "ns_per_sched_switch_max": 300},
    });
    println!("{result:#}");
    if let Some(p) = json {
        fs::write(p, result.to_string()).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}
