//! `cargo xtask bench allocate [--json PATH]`: the allocator's live closed loop (issue 8,
//! item 5).
//!
//! A primary whose CPU demand follows a recorded trace (time-compressed: one 5-minute
//! sample per `--interval-ms`) runs as a real CPU burner process in a cgroup under a v1 CPU
//! quota, managed by a real `shadow-agent run` with an `[allocate]` section. Two copies run
//! at the same time in one run, from the same start quota and the same demand:
//!
//! - `shadow`: the allocator as shipped (`predictive = true`: confident forecasts
//!   pre-allocate, otherwise it reacts);
//! - `reactive`: the same agent and rails with `predictive = false` (the reactive policy
//!   alone: it only steps up on throttling / usage near the limit / pressure).
//!
//! Why two cgroups side by side rather than alternating segments: the forecaster needs a
//! continuous history, and both policies must see the same demand at the same wall-clock
//! time (same host noise). Each group gets its own CPU through a v1 cpuset (`cpuset.cpus`),
//! so they do not compete with each other; the CPUs are swapped between series, so a
//! noisier CPU (other work on the host) does not always hurt the same policy.
//!
//! The burner (`xtask __burn-trace`, a hidden subcommand) owes `demand × elapsed` CPU
//! seconds: it spins while it is behind (measured from `/proc/self/schedstat`) and sleeps
//! while it is ahead; work it cannot do because of the quota carries over as a backlog of at
//! most `BACKLOG_INTERVALS` intervals, beyond which it is dropped (requests that timed out)
//! and reported as unserved.
//!
//! Warm-up (`--warmup` intervals): both groups get their whole CPU (quota = period), so
//! both agents watch the same unconstrained demand (what Shadow's profiling of a primary
//! gives it before it manages it; the reactive policy has no use for it and does nothing at
//! its maximum). At the end of the warm-up the bench sets both quotas to the same hand-set
//! value, the median demand of the warm-up, and scoring starts.
//!
//! Reported per policy over the scored intervals: throttled time and periods (`cpu.stat`), mean quota
//! (average CPU allocated), mean usage, slack `mean(max(0, quota − usage) / quota)`, the
//! allocator's applied CPU decisions (from its audit log) and the unserved work; per series
//! also each scored interval's quota, usage and throttled time (`timeline` in the JSON, with
//! the trace's start time to match `--keep-audit DIR`'s copies of the agents' audit logs).
//! Targets: throttled time at least 50% lower with Shadow, at no more average CPU allocated.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::Args;
use serde_json::{json, Value};

use crate::util;

/// Target of issue 8: throttled time at least this much lower with Shadow than reactive.
pub const TARGET_THROTTLED_REDUCTION: f64 = 0.5;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Prefix of the bench's cgroups (the leftover check's prefix, so a leak is caught).
const PREFIX: &str = "shdtba";
/// CFS period of the bench groups: 10 ms, so one compressed interval spans many periods.
const PERIOD_US: u64 = 10_000;
/// Unserved work carried over at most this many intervals.
const BACKLOG_INTERVALS: f64 = 2.0;

#[derive(Debug, Args)]
pub struct AllocateArgs {
    /// Also write the result as JSON to PATH.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Trace: a long CSV (`series_id,timestamp_s,<metric>,...`).
    #[arg(
        long,
        default_value = "/work/shared/data/traces/bitbrains_rnd/usage.csv"
    )]
    pub trace: PathBuf,
    /// Column of the trace (a percentage of the VM's CPU).
    #[arg(long, default_value = "cpu_pct")]
    pub metric: String,
    /// Series to replay (comma-separated ids). Default: the `--count` series with the
    /// highest mean over their first `--intervals` samples (a rule that does not look at how
    /// forecastable a series is).
    #[arg(long, value_delimiter = ',')]
    pub series: Vec<String>,
    /// How many series when `--series` is not given.
    #[arg(long, default_value_t = 2)]
    pub count: usize,
    /// Intervals replayed per series (864: three days of 5-minute samples).
    #[arg(long, default_value_t = 864)]
    pub intervals: usize,
    /// Wall-clock length of one trace interval, and the agent's interval (ms, >= 100).
    #[arg(long, default_value_t = 200)]
    pub interval_ms: u64,
    /// Intervals before scoring starts (the forecaster's history).
    #[arg(long, default_value_t = 288)]
    pub warmup: usize,
    /// The series' peak over the replayed samples becomes this many cores of demand.
    #[arg(long, default_value_t = 0.9)]
    pub peak_cores: f64,
    /// Use this shadow-agent binary instead of building the workspace's (debug) one.
    #[arg(long)]
    pub agent: Option<PathBuf>,
    /// `[allocate] level` of both agents (the forecast interval's level; default: the
    /// agent's own default).
    #[arg(long)]
    pub level: Option<f64>,
    /// `[allocate.cpu] scale_in_below` of both agents (reactive scale-in; default: off).
    #[arg(long, requires = "scale_in_after")]
    pub scale_in_below: Option<f64>,
    /// `[allocate.cpu] scale_in_after_intervals` of both agents.
    #[arg(long, requires = "scale_in_below")]
    pub scale_in_after: Option<u32>,
    /// `[allocate.cpu] shortage_memory_intervals` of both agents (default: the agent's).
    #[arg(long)]
    pub shortage_memory: Option<u32>,
    /// `[allocate] shortage_target` of both agents (the shortage calibration's target rate;
    /// default: off). The reactive agent has no forecast to scale, so it only changes Shadow.
    #[arg(long)]
    pub shortage_target: Option<f64>,
    /// `[allocate.cpu] burst` of both agents: the CFS burst as a fraction of every quota
    /// they write (default: off).
    #[arg(long)]
    pub burst: Option<f64>,
    /// `[allocate] shrink_cover` of both agents: intervals a forecast shrink must cover
    /// (default: the agent's). The reactive agent makes no forecast shrink.
    #[arg(long)]
    pub shrink_cover: Option<usize>,
    /// Copy each agent's audit log to DIR/<series>-<shadow|reactive>.audit.jsonl (the
    /// decisions behind the timeline: forecasts, confidence, rails).
    #[arg(long)]
    pub keep_audit: Option<PathBuf>,
}

/// A cgroup in the v1 controllers and cgroup2, removed on drop (after its processes).
struct BenchGroup {
    name: String,
    dirs: Vec<PathBuf>,
}

impl BenchGroup {
    fn create(name: &str, cpu: usize, quota_us: u64) -> Result<BenchGroup> {
        let mut g = BenchGroup {
            name: name.to_owned(),
            dirs: Vec::new(),
        };
        for c in ["cpu", "cpuacct", "cpuset", "memory", "unified"] {
            let d = Path::new(CGROUP_ROOT).join(c).join(name);
            fs::create_dir(&d).with_context(|| format!("mkdir {}", d.display()))?;
            g.dirs.push(d);
        }
        g.write("cpuset", "cpuset.mems", "0")?;
        g.write("cpuset", "cpuset.cpus", &cpu.to_string())?;
        g.write("cpu", "cpu.cfs_period_us", &PERIOD_US.to_string())?;
        g.write("cpu", "cpu.cfs_quota_us", &quota_us.to_string())?;
        Ok(g)
    }

    fn path(&self, controller: &str, file: &str) -> PathBuf {
        Path::new(CGROUP_ROOT)
            .join(controller)
            .join(&self.name)
            .join(file)
    }

    fn write(&self, controller: &str, file: &str, value: &str) -> Result<()> {
        let p = self.path(controller, file);
        fs::write(&p, value).with_context(|| format!("writing {value:?} to {}", p.display()))
    }

    fn read(&self, controller: &str, file: &str) -> Result<String> {
        let p = self.path(controller, file);
        fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
    }

    fn add(&self, pid: u32) -> Result<()> {
        for c in ["cpu", "cpuacct", "cpuset", "memory", "unified"] {
            self.write(c, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    /// One reading of the group's counters and quota.
    fn sample(&self) -> Result<GroupSample> {
        let quota: i64 = self.read("cpu", "cpu.cfs_quota_us")?.trim().parse()?;
        let period: u64 = self.read("cpu", "cpu.cfs_period_us")?.trim().parse()?;
        let usage_ns: u64 = self.read("cpuacct", "cpuacct.usage")?.trim().parse()?;
        let stat = self.read("cpu", "cpu.stat")?;
        let field = |k: &str| {
            stat.lines()
                .find_map(|l| l.strip_prefix(k)?.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok(GroupSample {
            quota_cores: (quota > 0).then(|| quota as f64 / period as f64),
            usage_ns,
            nr_periods: field("nr_periods "),
            nr_throttled: field("nr_throttled "),
            throttled_ns: field("throttled_time "),
        })
    }
}

impl Drop for BenchGroup {
    fn drop(&mut self) {
        // Processes still inside (an aborted run) are killed first.
        for d in &self.dirs {
            if let Ok(procs) = fs::read_to_string(d.join("cgroup.procs")) {
                for pid in procs.split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
        }
        for d in self.dirs.iter().rev() {
            for _ in 0..50 {
                if fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct GroupSample {
    quota_cores: Option<f64>,
    usage_ns: u64,
    nr_periods: u64,
    nr_throttled: u64,
    throttled_ns: u64,
}

/// Kills a child on drop.
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(Some(_))) {
            return;
        }
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

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Each series' values of `metric`, in file order.
fn load_trace(path: &Path, metric: &str) -> Result<Vec<(String, Vec<f64>)>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let col = |n: &str| {
        header
            .iter()
            .position(|c| c.trim() == n)
            .ok_or_else(|| anyhow!("{}: no column {n:?} in the header", path.display()))
    };
    let (id_col, m_col) = (col("series_id")?, col(metric)?);
    let mut out: Vec<(String, Vec<f64>)> = Vec::new();
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        let (Some(id), Some(v)) = (f.get(id_col), f.get(m_col)) else {
            continue;
        };
        let Ok(v) = v.trim().parse::<f64>() else {
            continue;
        };
        match out.last_mut() {
            Some((last, vals)) if last == id => vals.push(v),
            _ => out.push(((*id).to_owned(), vec![v])),
        }
    }
    Ok(out)
}

/// The agent's config for one group.
fn agent_config(group: &str, state: &Path, predictive: bool, args: &AllocateArgs) -> String {
    let interval_ms = args.interval_ms;
    let mut top = args
        .level
        .map_or(String::new(), |l| format!("level = {l}\n"));
    if let Some(t) = args.shortage_target {
        top.push_str(&format!("shortage_target = {t}\n"));
    }
    if let Some(c) = args.shrink_cover {
        top.push_str(&format!("shrink_cover = {c}\n"));
    }
    let mut cpu = args
        .scale_in_below
        .zip(args.scale_in_after)
        .map_or(String::new(), |(b, n)| {
            format!("scale_in_below = {b}\nscale_in_after_intervals = {n}\n")
        });
    if let Some(w) = args.shortage_memory {
        cpu.push_str(&format!("shortage_memory_intervals = {w}\n"));
    }
    if let Some(b) = args.burst {
        cpu.push_str(&format!("burst = {b}\n"));
    }
    format!(
        r#"# Written by `cargo xtask bench allocate`.
[metrics]
listen = "off"

[profile]
interval_ms = {interval_ms}

[allocate]
cgroups = ["{group}"]
dry_run = false
predictive = {predictive}
state_dir = "{state}"
audit_log = "{state}/audit.jsonl"
{top}
[allocate.cpu]
# The group's cpuset is one CPU.
max = 1.0
{cpu}
[allocate.memory]
enabled = false

[allocate.scale]
enabled = false
"#,
        state = state.display()
    )
}

fn start_agent(agent: &Path, config: &Path) -> Result<Kid> {
    let mut child = Command::new(agent)
        .args(["run", "--json", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", agent.display()))?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("agent stdout"))?;
    let kid = Kid(child);
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    reader.read_line(&mut line).context("reading the agent")?;
    if !line.contains("\"allocate\"") {
        bail!("the agent did not start its allocator: {line:?}");
    }
    // Keep draining: the agent stops when its output pipe closes.
    std::thread::spawn(move || {
        let mut sink = String::new();
        while reader.read_line(&mut sink).is_ok_and(|n| n > 0) {
            sink.clear();
        }
    });
    Ok(kid)
}

/// The score of one policy on one series.
#[derive(Debug, Clone, Default)]
struct Score {
    throttled_s: f64,
    nr_throttled: u64,
    nr_periods: u64,
    quota_sum: f64,
    usage_sum: f64,
    slack_sum: f64,
    n: u64,
    decisions: u64,
    decisions_total: u64,
    unserved_s: f64,
    demanded_s: f64,
    /// Per scored interval: quota (cores), usage (cores), throttled time (ms). Per series
    /// only (a merged score leaves it empty).
    timeline: Vec<[f64; 3]>,
    /// When the trace's interval 0 began (Unix ms): trace interval k runs from here +
    /// k × interval; scored interval j of the timeline from the middle of trace interval
    /// warmup + j to the middle of the next (where the bench samples), to match an audit log.
    trace_start_unix_ms: u64,
}

impl Score {
    fn merge(&mut self, o: &Score) {
        self.throttled_s += o.throttled_s;
        self.nr_throttled += o.nr_throttled;
        self.nr_periods += o.nr_periods;
        self.quota_sum += o.quota_sum;
        self.usage_sum += o.usage_sum;
        self.slack_sum += o.slack_sum;
        self.n += o.n;
        self.decisions += o.decisions;
        self.decisions_total += o.decisions_total;
        self.unserved_s += o.unserved_s;
        self.demanded_s += o.demanded_s;
    }

    fn json(&self, name: &str) -> Value {
        let n = self.n.max(1) as f64;
        json!({
            "name": name,
            "throttled_s": self.throttled_s,
            "nr_throttled": self.nr_throttled,
            "nr_periods": self.nr_periods,
            "throttled_period_ratio": self.nr_throttled as f64 / self.nr_periods.max(1) as f64,
            "mean_quota_cores": self.quota_sum / n,
            "mean_usage_cores": self.usage_sum / n,
            "slack": self.slack_sum / n,
            "decisions": self.decisions,
            "decisions_incl_warmup": self.decisions_total,
            "unserved_cpu_s": self.unserved_s,
            "demanded_cpu_s": self.demanded_s,
            "scored_intervals": self.n,
        })
    }

    /// [`Score::json`] with the per-interval timeline: where in the trace each policy was
    /// throttled, and at what quota.
    fn json_with_timeline(&self, name: &str) -> Value {
        let mut v = self.json(name);
        let col = |i: usize, digits: f64| -> Vec<f64> {
            self.timeline
                .iter()
                .map(|r| (r[i] * digits).round() / digits)
                .collect()
        };
        v["timeline"] = json!({
            "trace_start_unix_ms": self.trace_start_unix_ms,
            "quota_cores": col(0, 1e4),
            "usage_cores": col(1, 1e4),
            "throttled_ms": col(2, 1e3),
        });
        v
    }
}

/// Applied CPU decisions in an audit log: (after `since_ms`, all).
fn count_decisions(audit: &Path, since_ms: u64) -> (u64, u64) {
    let text = fs::read_to_string(audit).unwrap_or_default();
    let mut after = 0;
    let mut all = 0;
    for l in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(l) else {
            continue;
        };
        if v["resource"] == "cpu" && v["applied"] == true {
            all += 1;
            if v["time_ms"].as_u64().unwrap_or(0) >= since_ms {
                after += 1;
            }
        }
    }
    (after, all)
}

/// Replays one series under both policies at once; returns (shadow, reactive) scores.
fn run_series(
    args: &AllocateArgs,
    agent: &Path,
    series: &str,
    demand: &[f64],
    swap_cpus: bool,
) -> Result<(Score, Score)> {
    let pid = std::process::id();
    let scratch = std::env::temp_dir().join(format!("{PREFIX}-{pid}"));
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch).with_context(|| format!("mkdir {}", scratch.display()))?;
    let demand_file = scratch.join("demand.txt");
    fs::write(
        &demand_file,
        demand
            .iter()
            .map(|d| format!("{d:.6}\n"))
            .collect::<String>(),
    )?;
    // The hand-set start quota: the demand's median over the warm-up (the same for both).
    let mut warm: Vec<f64> = demand[..args.warmup.min(demand.len())].to_vec();
    warm.sort_by(f64::total_cmp);
    let start_cores = warm.get(warm.len() / 2).copied().unwrap_or(0.3).max(0.05);
    let start_quota = (start_cores * PERIOD_US as f64).round() as u64;

    let (cpu_shadow, cpu_react) = if swap_cpus { (1, 0) } else { (0, 1) };
    let names = [
        format!("{PREFIX}{pid}shadow"),
        format!("{PREFIX}{pid}react"),
    ];
    // Warm-up: the whole CPU (unconstrained), so both agents watch the same demand; at the
    // end of it both quotas are set to the same hand-set start value.
    let groups = [
        BenchGroup::create(&names[0], cpu_shadow, PERIOD_US)?,
        BenchGroup::create(&names[1], cpu_react, PERIOD_US)?,
    ];
    let mut agents = Vec::new();
    for (i, predictive) in [true, false].into_iter().enumerate() {
        let state = scratch.join(format!("state{i}"));
        fs::create_dir_all(&state)?;
        let cfg = scratch.join(format!("agent{i}.toml"));
        fs::write(&cfg, agent_config(&names[i], &state, predictive, args))?;
        agents.push((start_agent(agent, &cfg)?, state.join("audit.jsonl")));
    }
    // Both burners start at the same instant, after they are placed in their groups.
    let start_ms = unix_ms() + 1500;
    let exe = std::env::current_exe().context("xtask's own path")?;
    let mut burners = Vec::new();
    for g in &groups {
        let child = Command::new(&exe)
            .args(["__burn-trace", "--interval-ms"])
            .arg(args.interval_ms.to_string())
            .arg("--start-unix-ms")
            .arg(start_ms.to_string())
            .arg(&demand_file)
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the burner")?;
        g.add(child.id())?;
        burners.push(Kid(child));
    }
    eprintln!(
        "{series}: {} intervals of {} ms, start quota {start_cores:.2} cores, shadow on CPU \
         {cpu_shadow}, reactive on CPU {cpu_react}",
        demand.len(),
        args.interval_ms
    );
    // Sample both groups in the middle of every interval.
    let interval = Duration::from_millis(args.interval_ms);
    let start = Instant::now() + Duration::from_millis(start_ms.saturating_sub(unix_ms()));
    let mut samples: [Vec<GroupSample>; 2] = [Vec::new(), Vec::new()];
    let mut warm_ms = 0;
    for k in 0..=demand.len() {
        let at = start + interval * k as u32 + interval / 2;
        if let Some(d) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        for (i, g) in groups.iter().enumerate() {
            samples[i].push(g.sample()?);
        }
        if k == args.warmup {
            warm_ms = unix_ms();
            for g in &groups {
                // A burst an agent set is brought within the new quota first (the kernel
                // refuses a quota below the burst); the agent sets its own from then on.
                let burst: u64 = g.read("cpu", "cpu.cfs_burst_us")?.trim().parse()?;
                if burst > start_quota {
                    g.write("cpu", "cpu.cfs_burst_us", &start_quota.to_string())?;
                }
                g.write("cpu", "cpu.cfs_quota_us", &start_quota.to_string())?;
            }
        }
        if k % 144 == 0 {
            eprintln!(
                "  interval {k}: quota shadow {:?}, reactive {:?} (cores)",
                samples[0].last().and_then(|s| s.quota_cores),
                samples[1].last().and_then(|s| s.quota_cores)
            );
        }
    }
    let mut scores = [Score::default(), Score::default()];
    for (i, b) in burners.iter_mut().enumerate() {
        let out = b.0.stdout.take().ok_or_else(|| anyhow!("burner stdout"))?;
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line)?;
        let _ = b.0.wait();
        let v: Value = serde_json::from_str(line.trim())
            .with_context(|| format!("burner summary {line:?}"))?;
        scores[i].unserved_s = v["unserved_s"].as_f64().unwrap_or(f64::NAN);
        scores[i].demanded_s = v["demanded_s"].as_f64().unwrap_or(f64::NAN);
    }
    for (i, s) in scores.iter_mut().enumerate() {
        let v = &samples[i];
        let w = args.warmup.min(v.len() - 1);
        let (a, b) = (&v[w], &v[v.len() - 1]);
        s.throttled_s = b.throttled_ns.saturating_sub(a.throttled_ns) as f64 / 1e9;
        s.nr_throttled = b.nr_throttled.saturating_sub(a.nr_throttled);
        s.nr_periods = b.nr_periods.saturating_sub(a.nr_periods);
        for win in v[w..].windows(2) {
            let u = win[1].usage_ns.saturating_sub(win[0].usage_ns) as f64
                / 1e9
                / interval.as_secs_f64();
            // Unlimited counts as the whole CPU the group is pinned to.
            let q = win[1].quota_cores.unwrap_or(1.0);
            let throttled_ms = win[1].throttled_ns.saturating_sub(win[0].throttled_ns) as f64 / 1e6;
            s.timeline.push([q, u, throttled_ms]);
            s.n += 1;
            s.quota_sum += q;
            s.usage_sum += u;
            if q > 0.0 {
                s.slack_sum += ((q - u) / q).max(0.0);
            }
        }
        s.trace_start_unix_ms = start_ms;
        let (after, all) = count_decisions(&agents[i].1, warm_ms);
        s.decisions = after;
        s.decisions_total = all;
    }
    if let Some(dir) = &args.keep_audit {
        fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
        for ((_, audit), policy) in agents.iter().zip(["shadow", "reactive"]) {
            let to = dir.join(format!("{series}-{policy}.audit.jsonl"));
            fs::copy(audit, &to)
                .with_context(|| format!("copying {} to {}", audit.display(), to.display()))?;
        }
    }
    drop(burners);
    drop(agents);
    drop(groups);
    let _ = fs::remove_dir_all(&scratch);
    Ok((scores[0].clone(), scores[1].clone()))
}

pub fn allocate(args: AllocateArgs) -> Result<()> {
    if args.interval_ms < 100 {
        bail!("--interval-ms must be at least 100 (the agent's shortest interval)");
    }
    if args.warmup >= args.intervals {
        bail!("--warmup must be below --intervals");
    }
    let cpus = fs::read_to_string(Path::new(CGROUP_ROOT).join("cpuset/cpuset.effective_cpus"))
        .context("this bench needs the v1 cpuset controller (hybrid cgroups)")?;
    if !(cpus.trim() == "0-1" || cpus.trim().starts_with("0-")) {
        bail!("this bench pins the two groups on CPUs 0 and 1; the root cpuset has {cpus:?}");
    }
    let agent = match &args.agent {
        Some(a) => a.clone(),
        None => {
            let status = Command::new("cargo")
                .current_dir(util::workspace_root())
                .env("SHADOW_REQUIRE_EBPF", "1")
                .args(["build", "-p", "shadow-agent"])
                .status()
                .context("building shadow-agent")?;
            if !status.success() {
                bail!("building shadow-agent failed");
            }
            util::target_dir().join("debug/shadow-agent")
        }
    };

    let all = load_trace(&args.trace, &args.metric)?;
    let long: Vec<&(String, Vec<f64>)> = all
        .iter()
        .filter(|(_, v)| v.len() >= args.intervals)
        .collect();
    let chosen: Vec<&(String, Vec<f64>)> = if args.series.is_empty() {
        let mut by_mean: Vec<(f64, &(String, Vec<f64>))> = long
            .iter()
            .map(|s| {
                let v = &s.1[..args.intervals];
                (v.iter().sum::<f64>() / v.len() as f64, *s)
            })
            .collect();
        by_mean.sort_by(|a, b| b.0.total_cmp(&a.0));
        by_mean
            .into_iter()
            .take(args.count)
            .map(|(_, s)| s)
            .collect()
    } else {
        args.series
            .iter()
            .map(|id| {
                long.iter().copied().find(|(n, _)| n == id).ok_or_else(|| {
                    anyhow!(
                        "series {id:?} not found in {} with at least {} samples",
                        args.trace.display(),
                        args.intervals
                    )
                })
            })
            .collect::<Result<_>>()?
    };
    if chosen.is_empty() {
        bail!(
            "no series of {} has {} samples",
            args.trace.display(),
            args.intervals
        );
    }

    let mut total = [Score::default(), Score::default()];
    let mut per_series = Vec::new();
    for (i, (id, values)) in chosen.iter().enumerate() {
        let v = &values[..args.intervals];
        let peak = v.iter().copied().fold(0.0, f64::max).max(1e-9);
        let demand: Vec<f64> = v.iter().map(|x| x / peak * args.peak_cores).collect();
        let (shadow, react) = run_series(&args, &agent, id, &demand, i % 2 == 1)?;
        let reduction = 1.0 - shadow.throttled_s / react.throttled_s.max(1e-9);
        eprintln!(
            "{id}: throttled {:.2} s (shadow) vs {:.2} s (reactive), {:.0}% lower; mean quota \
             {:.3} vs {:.3} cores",
            shadow.throttled_s,
            react.throttled_s,
            reduction * 100.0,
            shadow.quota_sum / shadow.n.max(1) as f64,
            react.quota_sum / react.n.max(1) as f64
        );
        per_series.push(json!({
            "series": id,
            "policies": [
                shadow.json_with_timeline("shadow"),
                react.json_with_timeline("reactive")
            ],
            "throttled_reduction": reduction,
        }));
        total[0].merge(&shadow);
        total[1].merge(&react);
    }
    let reduction = 1.0 - total[0].throttled_s / total[1].throttled_s.max(1e-9);
    let alloc_ratio = (total[0].quota_sum / total[0].n.max(1) as f64)
        / (total[1].quota_sum / total[1].n.max(1) as f64).max(1e-9);
    let result = json!({
        "trace": args.trace,
        "metric": args.metric,
        "intervals": args.intervals,
        "interval_ms": args.interval_ms,
        "warmup": args.warmup,
        "peak_cores": args.peak_cores,
        "level": args.level,
        "scale_in_below": args.scale_in_below,
        "scale_in_after_intervals": args.scale_in_after,
        "shortage_memory_intervals": args.shortage_memory,
        "cpu_burst": args.burst,
        "shortage_target": args.shortage_target,
        "shrink_cover": args.shrink_cover,
        "cfs_period_us": PERIOD_US,
        "policies": [total[0].json("shadow"), total[1].json("reactive")],
        "throttled_reduction": reduction,
        "allocated_ratio": alloc_ratio,
        "targets": {
            "throttled_reduction_min": TARGET_THROTTLED_REDUCTION,
            "allocated_ratio_max": 1.0,
        },
        "met": reduction >= TARGET_THROTTLED_REDUCTION && alloc_ratio <= 1.0,
        "series": per_series,
    });
    println!("{result:#}");
    if let Some(p) = &args.json {
        fs::write(p, result.to_string()).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

/// CPU time of this process so far (ns), from `/proc/self/schedstat` (its first field).
fn own_cpu_ns() -> Result<u64> {
    let t = fs::read_to_string("/proc/self/schedstat").context("reading /proc/self/schedstat")?;
    t.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("unexpected /proc/self/schedstat: {t:?}"))
}

/// The burner (`xtask __burn-trace`): owes `demand[k]` cores during interval `k`, spins while
/// behind, sleeps while ahead; a backlog above `BACKLOG_INTERVALS` intervals of work is
/// dropped and counted. Prints `{"demanded_s", "done_s", "unserved_s"}` at the end.
pub fn burn_trace(file: &Path, interval_ms: u64, start_unix_ms: u64) -> Result<()> {
    let demand: Vec<f64> = fs::read_to_string(file)
        .with_context(|| format!("reading {}", file.display()))?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let interval = interval_ms as f64 / 1000.0;
    let wait = start_unix_ms.saturating_sub(unix_ms());
    std::thread::sleep(Duration::from_millis(wait));
    let t0 = Instant::now();
    let cpu0 = own_cpu_ns()?;
    let mut owed_before = 0.0; // CPU seconds owed by the intervals already over
    let mut k_done = 0usize;
    let mut dropped = 0.0;
    loop {
        let now = t0.elapsed().as_secs_f64();
        let k = (now / interval) as usize;
        while k_done < k.min(demand.len()) {
            owed_before += demand[k_done] * interval;
            k_done += 1;
        }
        if k >= demand.len() {
            break;
        }
        let owed = owed_before + demand[k] * (now - k as f64 * interval);
        let done = own_cpu_ns()?.saturating_sub(cpu0) as f64 / 1e9;
        let mut behind = owed - dropped - done;
        let cap = BACKLOG_INTERVALS * interval * demand[k].max(0.05);
        if behind > cap {
            dropped += behind - cap;
            behind = cap;
        }
        if behind > 0.0 {
            // Spin about a millisecond, then look again.
            let until = Instant::now() + Duration::from_millis(1);
            while Instant::now() < until {
                std::hint::spin_loop();
            }
        } else {
            std::thread::sleep(Duration::from_micros(500));
        }
    }
    let done = own_cpu_ns()?.saturating_sub(cpu0) as f64 / 1e9;
    let demanded: f64 = demand.iter().sum::<f64>() * interval;
    println!(
        "{}",
        json!({
            "demanded_s": demanded,
            "done_s": done,
            "unserved_s": (demanded - done).max(0.0),
            "dropped_s": dropped,
        })
    );
    Ok(())
}
