//! `cargo xtask bench <target>`: benchmarks. Targets:
//!
//! - `profiler [--json PATH] [--rounds N] [--loops N] [--cpu any,1]`: a context-switch-heavy
//!   workload (`perf bench sched pipe`, Debian's linux-perf) in a scratch cgroup2 group, for
//!   each placement (`any`: where the scheduler puts the two tasks, as perf runs it; a CPU
//!   number: both pinned there, the worst case). Each round runs it bare, with the peer (an
//!   empty tp_btf sched_switch program: what any sched_switch hook costs here), with
//!   `shadow-agent profile` tracking that group, and with that plus
//!   `kernel.bpf_stats_enabled` (order alternating between rounds). Reports the median and
//!   spread of the per-round throughput ratios (stats off, as in production; the stats-on
//!   ratio too) and the average ns per run of each of the agent's programs from the
//!   kernel's BPF run statistics (`run_time_ns / run_cnt` from `bpftool prog show --json`,
//!   only the programs that agent loaded). Targets: ratio >= 0.97, <= 300 ns per
//!   sched_switch handler.
//! - `mirror [--json PATH] [--rounds N] [--seconds S] [--xdp] [--cost-only]`: Shadow's
//!   mirror against `tc mirred` on one veth topology, and each BPF program's ns per run from
//!   the kernel's run statistics in a pass of its own (`bench_mirror.rs`).
//! - `allocate [--json PATH] [--series IDS] [--intervals N] [--interval-ms MS]`: the
//!   allocator's live closed loop, Shadow vs the reactive policy alone on a replayed trace
//!   (`bench_allocate.rs`).
//! - `tcp [--json PATH] [--seconds S] [--rate R]`: TCP sessions in the shadow with nginx and
//!   wrk, keep-alive and new-connection modes, with and without the mirror (`bench_tcp.rs`).
//! - `soak [--duration 30m] [--interval S] [--rate R] [--json PATH]`: the agent's RSS, CPU,
//!   descriptors and BPF map entries over a long mirrored run (`bench_soak.rs`).

use std::{
    collections::BTreeMap,
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
        /// Interleaved rounds (each: one run without the profiler, one with it, one with it
        /// and BPF run statistics on), order alternating between rounds.
        #[arg(long, default_value_t = 15)]
        rounds: u32,
        /// Messages per `perf bench sched pipe` run.
        #[arg(long, default_value_t = 100_000)]
        loops: u32,
        /// Placements to measure, comma-separated: a CPU number pins both pipe tasks there
        /// (`taskset`), `any` leaves them to the scheduler as `perf bench` does by default.
        /// Pinned, every message is two direct task-to-task switches with no idle in
        /// between: the profiler's worst case.
        #[arg(long, default_value = "any,1")]
        cpu: String,
    },
    /// Shadow's mirror (with and without masking) vs `tc mirred`: UDP pps, TCP Gbit/s,
    /// clone delivery (see `bench_mirror.rs`).
    Mirror(crate::bench_mirror::MirrorArgs),
    /// The allocator's live closed loop: throttled time and CPU allocated, Shadow vs the
    /// reactive policy alone, on a time-compressed trace (see `bench_allocate.rs`).
    Allocate(Box<crate::bench_allocate::AllocateArgs>),
    /// TCP sessions in the shadow: nginx primary and shadow, wrk keep-alive and
    /// new-connection load, with and without the mirror (see `bench_tcp.rs`).
    Tcp(crate::bench_tcp::TcpArgs),
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
            cpu,
        } => {
            let placements = cpu
                .split(',')
                .map(|c| match c.trim() {
                    "any" => Ok(None),
                    c => c
                        .parse::<u32>()
                        .map(Some)
                        .with_context(|| format!("--cpu {c:?}: a CPU number or `any`")),
                })
                .collect::<Result<Vec<_>>>()?;
            profiler(json.as_deref(), rounds, loops, &placements)
        }
        BenchTarget::Mirror(args) => crate::bench_mirror::mirror(args),
        BenchTarget::Allocate(args) => crate::bench_allocate::allocate(*args),
        BenchTarget::Tcp(args) => crate::bench_tcp::tcp(args),
        BenchTarget::Soak(args) => crate::bench_soak::soak(args),
    }
}

pub(crate) const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
const UNIFIED: &str = "/sys/fs/cgroup/unified";

/// Scratch cgroup2 group, removed on drop.
struct Group(PathBuf);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

/// Restores `kernel.bpf_stats_enabled` on drop.
pub(crate) struct StatsGuard(pub(crate) String);

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

/// One `perf bench sched pipe` run inside `group` (pinned to `cpu`): ops per second.
fn pipe_run(group: &Path, loops: u32, cpu: Option<u32>) -> Result<f64> {
    let pin = cpu.map_or(String::new(), |c| format!("taskset -c {c} "));
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec {pin}perf bench sched pipe -l {loops}",
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

/// Ids of every loaded BPF program, and (name, run_time_ns, run_cnt) by id.
pub(crate) fn prog_stats() -> Result<BTreeMap<u64, (String, u64, u64)>> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .context("running bpftool (apt-get install bpftool)")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("bpftool json")?;
    let mut m = BTreeMap::new();
    for p in v.as_array().into_iter().flatten() {
        let Some(id) = p["id"].as_u64() else { continue };
        m.insert(
            id,
            (
                p["name"].as_str().unwrap_or("").to_owned(),
                p["run_time_ns"].as_u64().unwrap_or(0),
                p["run_cnt"].as_u64().unwrap_or(0),
            ),
        );
    }
    Ok(m)
}

fn start_agent(agent: &Path, group: &Path, empty_hook: bool) -> Result<Agent> {
    let mut child = Command::new(agent)
        .args(["profile", "--json", "--interval-ms", "1000", "--cgroup"])
        .arg(group)
        .args(empty_hook.then_some("--empty-hook"))
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

/// Median of `v` (NaN when empty).
fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The `q` quantile of `v` by linear interpolation (NaN when empty).
fn quantile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

fn load_avg() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The runs of a round: the bare workload, with the peer (an empty sched_switch program),
/// with the profiler attached (BPF run statistics off, as in production), and with the
/// statistics on (for the ns per handler, which costs extra on every program run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Run {
    Bare,
    EmptyHook,
    Profiled,
    ProfiledStats,
}
/// The profiler's programs (the `shadow-acct` object), by name.
const ACCT_PROGRAMS: [&str; 17] = [
    "sched_sw_btf",
    "sched_sw_nop",
    "sched_sw_raw",
    "sched_wake_btf",
    "sched_wknew_btf",
    "sched_wakeup_tp",
    "sched_wknew_tp",
    "pgfault_kret",
    "pgfault_btf",
    "pgfault_raw",
    "blk_bio_tp",
    "proc_exec_btf",
    "proc_exec_raw",
    "proc_exit_btf",
    "proc_exit_raw",
    "cg_skb_in",
    "cg_skb_out",
];

fn profiler(
    json: Option<&Path>,
    rounds: u32,
    loops: u32,
    placements: &[Option<u32>],
) -> Result<()> {
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
    if placements.is_empty() {
        bail!("--cpu: no placement");
    }
    let agent = util::target_dir().join("debug/shadow-agent");
    let group = Group(PathBuf::from(UNIFIED).join(format!("shdtbench{}", std::process::id())));
    fs::create_dir(&group.0).with_context(|| format!("mkdir {}", group.0.display()))?;
    let old = fs::read_to_string(STATS).context("reading kernel.bpf_stats_enabled")?;
    let _stats = StatsGuard(old.trim().to_owned());
    let load_start = load_avg();
    let mut results = Vec::new();
    for &cpu in placements {
        results.push(placement(&agent, &group.0, rounds, loops, cpu)?);
    }
    // The headline is perf's own placement when measured, else the first one.
    let head = placements.iter().position(Option::is_none).unwrap_or(0);
    let worst = results
        .iter()
        .map(|r| r["throughput_ratio"].as_f64().unwrap_or(f64::NAN))
        .fold(f64::INFINITY, f64::min);
    let result = serde_json::json!({
        "throughput_ratio": results[head]["throughput_ratio"],
        "ns_per_sched_switch": results[head]["ns_per_sched_switch"],
        "placement": results[head]["placement"],
        "throughput_ratio_worst_placement": worst,
        "placements": results,
        "rounds": rounds,
        "loops": loops,
        "load_avg_1m": {"start": load_start, "end": load_avg()},
        "method": "per placement and round: perf bench sched pipe bare, with an empty tp_btf \
                   sched_switch program (the peer: what any sched_switch hook costs), with \
                   `shadow-agent profile` tracking its cgroup, and with that plus \
                   kernel.bpf_stats_enabled=1, order alternating between rounds; \
                   throughput_ratio is the median of the per-round ratios (stats off) for \
                   perf's own placement (`any`) when measured; ns per handler are \
                   run_time_ns/run_cnt of the agent's own programs in the stats-on runs",
        "targets": {"throughput_ratio_min": 0.97, "ns_per_sched_switch_max": 300},
    });
    println!("{result:#}");
    if let Some(p) = json {
        fs::write(p, result.to_string()).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

/// Every round of one placement (`None`: the scheduler's choice; `Some(c)`: pinned to CPU c).
fn placement(
    agent: &Path,
    group: &Path,
    rounds: u32,
    loops: u32,
    cpu: Option<u32>,
) -> Result<serde_json::Value> {
    let name = cpu.map_or_else(|| "any".to_owned(), |c| format!("cpu{c}"));
    let mut ops: [Vec<f64>; 4] = Default::default();
    // Per program name of the profiler's own programs: (run_time_ns, run_cnt).
    let mut hooks: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for round in 0..rounds {
        // Alternate the order so slow drift of the shared machine hits every run alike.
        let mut order = [Run::Bare, Run::EmptyHook, Run::Profiled, Run::ProfiledStats];
        if round % 2 == 1 {
            order.reverse();
        }
        let mut got = [0.0f64; 4];
        for run in order {
            let stats_on = run == Run::ProfiledStats;
            fs::write(STATS, if stats_on { "1" } else { "0" })
                .context("setting kernel.bpf_stats_enabled")?;
            got[run as usize] = if run == Run::Bare {
                pipe_run(group, loops, cpu)?
            } else {
                let before = prog_stats()?;
                let a = start_agent(agent, group, run == Run::EmptyHook)?;
                let n = pipe_run(group, loops, cpu)?;
                if stats_on {
                    // Only the programs this agent loaded: others (other users' profilers
                    // on a shared machine) may carry the same names, or load meanwhile.
                    for (id, (name, ns, cnt)) in prog_stats()? {
                        let ours = !name.is_empty() && ACCT_PROGRAMS.contains(&name.as_str());
                        if ours && !before.contains_key(&id) && cnt > 0 {
                            let e = hooks.entry(name).or_default();
                            e.0 += ns;
                            e.1 += cnt;
                        }
                    }
                }
                drop(a);
                n
            };
        }
        fs::write(STATS, "0").context("setting kernel.bpf_stats_enabled")?;
        eprintln!(
            "{name} round {round}: {:.0} ops/s bare, {:.0} with an empty hook ({:.3}), {:.0} \
             with the profiler ({:.3}), {:.0} with it and BPF stats on ({:.3})",
            got[0],
            got[1],
            got[1] / got[0],
            got[2],
            got[2] / got[0],
            got[3],
            got[3] / got[0]
        );
        for (v, g) in ops.iter_mut().zip(got) {
            v.push(g);
        }
    }
    let [bare, empty, prof, prof_stats] = ops;
    let ratio = |v: &[f64]| -> Vec<f64> { v.iter().zip(&bare).map(|(p, b)| p / b).collect() };
    let ratios = ratio(&prof);
    let ratios_empty = ratio(&empty);
    let vs_empty: Vec<f64> = prof.iter().zip(&empty).map(|(p, e)| p / e).collect();
    let per = |name: &str| {
        hooks
            .get(name)
            .filter(|(_, c)| *c > 0)
            .map_or(f64::NAN, |(ns, c)| *ns as f64 / *c as f64)
    };
    let ns_per = {
        let (ns, cnt) = ["sched_sw_btf", "sched_sw_raw"]
            .iter()
            .filter_map(|n| hooks.get(*n))
            .fold((0, 0), |a, (ns, c)| (a.0 + ns, a.1 + c));
        if cnt > 0 {
            ns as f64 / cnt as f64
        } else {
            f64::NAN
        }
    };
    let ns_per_hook: serde_json::Map<String, serde_json::Value> = hooks
        .iter()
        .map(|(n, (ns, c))| {
            (
                n.clone(),
                serde_json::json!({"ns_per_run": per(n), "runs": c, "run_time_ns": ns}),
            )
        })
        .collect();
    Ok(serde_json::json!({
        "placement": name,
        "throughput_ratio": median(&ratios),
        "ns_per_sched_switch": ns_per,
        "throughput_ratio_empty_hook": median(&ratios_empty),
        "throughput_ratio_vs_empty_hook": median(&vs_empty),
        "throughput_ratio_rounds": ratios,
        "throughput_ratio_p25": quantile(&ratios, 0.25),
        "throughput_ratio_p75": quantile(&ratios, 0.75),
        "throughput_ratio_min": quantile(&ratios, 0.0),
        "throughput_ratio_max": quantile(&ratios, 1.0),
        "throughput_ratio_of_medians": median(&prof) / median(&bare),
        "throughput_ratio_stats_on": median(&ratio(&prof_stats)),
        "ns_per_hook": ns_per_hook,
        "ops_per_sec_bare": bare,
        "ops_per_sec_empty_hook": empty,
        "ops_per_sec_profiled": prof,
        "ops_per_sec_profiled_stats_on": prof_stats,
    }))
}
