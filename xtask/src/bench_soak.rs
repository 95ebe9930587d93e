//! `cargo xtask bench soak [--duration 30m] [--interval 10] [--rate 40] [--json PATH]`: the
//! agent under sustained mirrored load with a shadow replica and the allocator running,
//! sampled every `--interval` seconds: its RSS, CPU, open descriptors, and the entries of
//! every BPF hash map it holds (found through `/proc/PID/fdinfo`, counted with `bpftool map
//! dump`). Exits 1 when RSS or descriptors grow without bound (see [`verdict`]).
//!
//! Topology (namespaces `shsk<pid>-c|n|p`, removed on every exit path):
//!
//! ```text
//! client ns ──veth── node ns (agent, mirror on nc0, replica host end) ──veth── primary ns
//!  cl0 10.78.0.1      nc0 10.78.0.2 / np0 10.78.1.1                          pr0 10.78.1.2
//! ```
//!
//! The primary is `python3 -m http.server` in a cgroup of its own (`shsk<pid>-app`, 0.5 CPU
//! quota, 512 MiB), which the allocator manages (not a dry run, CPU max 1 core). The client
//! is a Python `http.client` loop, one connection per request, with a bearer token and a
//! `session` parameter (masked in the clones). The agent is the release binary, `run --json
//! --config` inside the node namespace and a private mount namespace whose `/run/netns`
//! and `/run/shadow-agent` are tmpfs, so its replica namespaces and status file cannot
//! meet another agent's on the host.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::{json, Value};

use crate::util;

#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// How long to run: `30m`, `90s`, `1h` or plain seconds.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    pub duration: Duration,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10)]
    pub interval: u64,
    /// Client requests per second (approximate: one connection per request).
    #[arg(long, default_value_t = 40)]
    pub rate: u32,
    /// Also write the samples and the summary as JSON to PATH.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// `30m`, `90s`, `2h`, `45` (seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30m, 90s, 1h or 45"))?;
    if n == 0 {
        return Err("the duration must be positive".into());
    }
    Ok(Duration::from_secs(n * mult))
}

const PREFIX: &str = "shsk";
const CLIENT_ADDR: &str = "10.78.0.1";
const NODE_C: &str = "10.78.0.2";
const NODE_P: &str = "10.78.1.1";
const PRIMARY_ADDR: &str = "10.78.1.2";
const PAGE: &str = "hello from the soaked primary\n";

/// The client's request loop (as in shadow-agent/tests/faults.rs): counts ok and failed
/// requests and the sum of latencies into a one-line file, rewritten every second.
const CLIENT_PY: &str = r#"
import http.client, os, sys, time
host, stop, out, page, rate = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].encode(), float(sys.argv[5])
ok = failed = 0
lat = 0.0
last = 0.0
i = 0
while not os.path.exists(stop):
    i += 1
    t0 = time.time()
    try:
        c = http.client.HTTPConnection(host, 8080, timeout=5)
        c.request("GET", "/index.html?session=soak-secret-%d" % i,
                  headers={"Authorization": "Bearer soak-token"})
        r = c.getresponse()
        good = r.status == 200 and r.read() == page
        c.close()
    except Exception:
        good = False
    t1 = time.time()
    if good:
        ok += 1
        lat += t1 - t0
    else:
        failed += 1
    if t1 - last >= 1.0:
        with open(out + ".tmp", "w") as f:
            f.write("%d %d %.6f\n" % (ok, failed, lat))
        os.replace(out + ".tmp", out)
        last = t1
    time.sleep(max(0.0, 1.0 / rate - (t1 - t0)))
"#;

// ---- guards ---------------------------------------------------------------------------

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {}", util::display_cmd(cmd)))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            util::display_cmd(cmd),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args)).map(|_| ())
}

/// A named network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn add(name: String) -> Result<Netns> {
        ip(&["netns", "add", &name])?;
        let ns = Netns(name);
        ip(&["-n", &ns.0, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `nsenter --net=...`: only the network namespace changes (`ip netns exec` would
    /// remount /sys and hide bpffs).
    fn enter(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.0));
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

/// A child process: SIGTERM, then SIGKILL after 20 s, on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The primary's cgroup: v1 cpu, cpuacct and memory directories plus the cgroup2 one;
/// processes killed and directories removed on drop.
struct AppCgroup {
    name: String,
    dirs: Vec<PathBuf>,
}

impl AppCgroup {
    fn create(name: &str) -> Result<AppCgroup> {
        let mut g = AppCgroup {
            name: name.to_owned(),
            dirs: Vec::new(),
        };
        for h in ["unified", "cpu", "cpuacct", "memory"] {
            let d = Path::new("/sys/fs/cgroup").join(h).join(name);
            if d.is_dir() {
                continue; // co-mounted with an earlier one
            }
            fs::create_dir(&d).with_context(|| format!("mkdir {}", d.display()))?;
            g.dirs.push(d);
        }
        let cpu = Path::new("/sys/fs/cgroup/cpu").join(name);
        fs::write(cpu.join("cpu.cfs_period_us"), "100000").context("cpu.cfs_period_us")?;
        fs::write(cpu.join("cpu.cfs_quota_us"), "50000").context("cpu.cfs_quota_us")?;
        let mem = Path::new("/sys/fs/cgroup/memory").join(name);
        fs::write(mem.join("memory.limit_in_bytes"), "536870912")
            .context("memory.limit_in_bytes")?;
        Ok(g)
    }

    fn add(&self, pid: u32) -> Result<()> {
        for d in &self.dirs {
            fs::write(d.join("cgroup.procs"), pid.to_string())
                .with_context(|| format!("moving {pid} into {}", d.display()))?;
        }
        Ok(())
    }
}

impl Drop for AppCgroup {
    fn drop(&mut self) {
        for d in &self.dirs {
            if let Ok(t) = fs::read_to_string(d.join("cgroup.procs")) {
                for pid in t.split_whitespace() {
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
        let _ = &self.name;
    }
}

/// A directory removed with its contents on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

// ---- sampling -------------------------------------------------------------------------

/// One sample of the agent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub t_s: f64,
    pub rss_kib: u64,
    /// CPU over the last interval, in percent of one core.
    pub cpu_pct: f64,
    pub fds: u64,
    /// Entries per BPF hash map the agent holds (name -> entries).
    pub maps: BTreeMap<String, u64>,
    pub requests_ok: u64,
    pub requests_failed: u64,
    pub cloned: u64,
}

/// `VmRSS` of /proc/PID/status, KiB.
pub fn parse_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// utime + stime (clock ticks) of /proc/PID/stat.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name may hold spaces: fields are counted after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of the whole line; utime is 14, stime 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// `map_id:` of an fdinfo file.
pub fn parse_map_id(fdinfo: &str) -> Option<u32> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("map_id:"))
        .and_then(|v| v.trim().parse().ok())
}

fn map_ids(pid: u32) -> Vec<u32> {
    let mut ids: Vec<u32> = fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| fs::read_to_string(e.path()).ok())
        .filter_map(|t| parse_map_id(&t))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Entries of each hash-type map the agent holds, by map name (`name#id` when a name
/// repeats, e.g. one discard map per replica).
fn map_entries(pid: u32) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for id in map_ids(pid) {
        let Ok(show) =
            run(Command::new("bpftool").args(["map", "show", "id", &id.to_string(), "-j"]))
        else {
            continue;
        };
        let Ok(info) = serde_json::from_str::<Value>(&show) else {
            continue;
        };
        let ty = info["type"].as_str().unwrap_or("");
        if !ty.contains("hash") {
            continue;
        }
        let Ok(dump) =
            run(Command::new("bpftool").args(["map", "dump", "id", &id.to_string(), "-j"]))
        else {
            continue;
        };
        let n = serde_json::from_str::<Value>(&dump)
            .ok()
            .and_then(|v| v.as_array().map(|a| a.len() as u64))
            .unwrap_or(0);
        let name = info["name"].as_str().unwrap_or("?").to_owned();
        let key = if out.contains_key(&name) {
            format!("{name}#{id}")
        } else {
            name
        };
        out.insert(key, n);
    }
    out
}

fn fd_count(pid: u32) -> u64 {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// Least-squares slope of `y` over `x` (units of y per unit of x); 0 with < 2 points.
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

/// Whether the agent grew without bound, judged on the samples after warm-up (the first
/// fifth of the run: the allocator's forecast history fills and allocator buffers settle):
/// - RSS: the second half's slope, extrapolated over an hour, exceeds 8 MiB, *and* its last
///   sample is over 2 MiB above the largest of the first half (a real leak does both; noise
///   of a few pages does neither);
/// - descriptors: the last sample holds more than the smallest after warm-up + 4.
///
/// Returns the reasons it failed (empty: flat).
pub fn verdict(samples: &[Sample]) -> Vec<String> {
    let mut why = Vec::new();
    let warm = samples.len() / 5;
    let s = &samples[warm.min(samples.len())..];
    if s.len() < 4 {
        why.push(format!(
            "only {} samples after warm-up: run longer or sample more often",
            s.len()
        ));
        return why;
    }
    let half = s.len() / 2;
    let (first, second) = s.split_at(half);
    let pts: Vec<(f64, f64)> = second
        .iter()
        .map(|x| (x.t_s, x.rss_kib as f64 / 1024.0))
        .collect();
    let per_hour = slope(&pts) * 3600.0;
    let first_max = first.iter().map(|x| x.rss_kib).max().unwrap_or(0) as f64 / 1024.0;
    let last = s[s.len() - 1].rss_kib as f64 / 1024.0;
    if per_hour > 8.0 && last > first_max + 2.0 {
        why.push(format!(
            "RSS grows: {per_hour:.1} MiB/h over the second half, last {last:.1} MiB vs at most \
             {first_max:.1} MiB in the first half"
        ));
    }
    let min_fd = s.iter().map(|x| x.fds).min().unwrap_or(0);
    let last_fd = s[s.len() - 1].fds;
    if last_fd > min_fd + 4 {
        why.push(format!(
            "descriptors grow: {last_fd} open at the end vs {min_fd} after warm-up"
        ));
    }
    why
}

// ---- the run --------------------------------------------------------------------------

fn agent_config(dir: &Path, app: &str, node_if: &str) -> String {
    format!(
        r#"[mirror]
interface = "{node_if}"
tcp_sessions = "translate"
[[mirror.rules]]
dst = "{PRIMARY_ADDR}/32"
ports = "8080"
proto = "tcp"
mask_http = true

[shadow]
name = "soak"
command = ["python3", "-m", "http.server", "--bind", "{PRIMARY_ADDR}", "8080", "--directory", "{dir}"]
output = "{dir}/shadow.log"
addresses = ["{PRIMARY_ADDR}/24"]
cpu_cores = 0.5
memory_mb = 256

[profile]
interval_ms = 1000

[metrics]
listen = "off"

[allocate]
cgroups = ["{app}"]
dry_run = false
state_dir = "{dir}/state"

[allocate.cpu]
max = 1.0
"#,
        dir = dir.display()
    )
}

fn build_agent() -> Result<PathBuf> {
    let status = Command::new("cargo")
        .current_dir(util::workspace_root())
        .env("SHADOW_REQUIRE_EBPF", "1")
        .args(["build", "--release", "-p", "shadow-agent"])
        .status()
        .context("building shadow-agent")?;
    if !status.success() {
        bail!("building shadow-agent failed");
    }
    Ok(util::target_dir().join("release/shadow-agent"))
}

pub fn soak(args: SoakArgs) -> Result<()> {
    if args.interval == 0 || args.rate == 0 {
        bail!("--interval and --rate must be at least 1");
    }
    for tool in ["ip", "nsenter", "unshare", "bpftool", "python3", "curl"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map_or(true, |s| !s.success())
        {
            bail!("{tool} is missing: run `cargo xtask setup`");
        }
    }
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // SAFETY: the handler only stores to an atomic flag.
        unsafe {
            signal_hook::low_level::register(sig, || INTERRUPTED.store(true, Ordering::Relaxed))
        }
        .context("installing the signal handler")?;
    }
    let agent_bin = build_agent()?;
    let pid = std::process::id();
    let dir = TempDir(std::env::temp_dir().join(format!("{PREFIX}{pid}")));
    fs::create_dir_all(&dir.0)?;
    fs::write(dir.0.join("index.html"), PAGE)?;

    // Namespaces, links, addresses, routes.
    let client = Netns::add(format!("{PREFIX}{pid}-c"))?;
    let node = Netns::add(format!("{PREFIX}{pid}-n"))?;
    let primary = Netns::add(format!("{PREFIX}{pid}-p"))?;
    let (c, n, p) = (&client.0, &node.0, &primary.0);
    ip(&[
        "link", "add", "cl0", "netns", c, "type", "veth", "peer", "name", "nc0", "netns", n,
    ])?;
    ip(&[
        "link", "add", "np0", "netns", n, "type", "veth", "peer", "name", "pr0", "netns", p,
    ])?;
    for (ns, dev, addr) in [
        (c, "cl0", CLIENT_ADDR),
        (n, "nc0", NODE_C),
        (n, "np0", NODE_P),
        (p, "pr0", PRIMARY_ADDR),
    ] {
        ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
        ip(&["-n", ns, "link", "set", dev, "up"])?;
    }
    ip(&[
        "-n",
        c,
        "route",
        "add",
        &format!("{PRIMARY_ADDR}/32"),
        "via",
        NODE_C,
    ])?;
    ip(&[
        "-n",
        p,
        "route",
        "add",
        &format!("{CLIENT_ADDR}/32"),
        "via",
        NODE_P,
    ])?;
    run(node
        .enter()
        .args(["sysctl", "-qw", "net.ipv4.ip_forward=1"]))?;

    // The primary in its cgroup.
    let app = AppCgroup::create(&format!("{PREFIX}{pid}-app"))?;
    let server = Proc(
        primary
            .enter()
            .args([
                "python3",
                "-m",
                "http.server",
                "--bind",
                PRIMARY_ADDR,
                "8080",
            ])
            .arg("--directory")
            .arg(&dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the primary")?,
    );
    app.add(server.0.id())?;
    let up = Instant::now();
    while run(client.enter().args([
        "curl",
        "-sf",
        "--max-time",
        "1",
        "-o",
        "/dev/null",
        &format!("http://{PRIMARY_ADDR}:8080/index.html"),
    ]))
    .is_err()
    {
        if up.elapsed() > Duration::from_secs(15) {
            bail!("the primary did not answer in 15 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    // The agent.
    let cfg = dir.0.join("agent.toml");
    fs::write(&cfg, agent_config(&dir.0, &app.name, "nc0"))?;
    run(Command::new(&agent_bin).arg("check-config").arg(&cfg))?;
    // Kept after the run (the temporary directory is not).
    let err_path = util::target_dir().join("soak-agent.log");
    let mut agent_child = node
        .enter()
        .args([
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mkdir -p /run/netns /run/shadow-agent && mount -t tmpfs shsk /run/netns && \
             mount -t tmpfs shsk /run/shadow-agent && exec \"$@\"",
            "sh",
        ])
        .arg(&agent_bin)
        .args(["run", "--json", "--config"])
        .arg(&cfg)
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(fs::File::create(&err_path)?)
        .spawn()
        .context("starting shadow-agent")?;
    let stdout = agent_child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("agent stdout"))?;
    let mut agent = Proc(agent_child);
    let agent_pid = agent.0.id();
    let last_line: Arc<Mutex<Option<Value>>> = Arc::default();
    let shared = Arc::clone(&last_line);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                *shared.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
            }
        }
    });
    let started = Instant::now();
    while last_line
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_none()
    {
        if started.elapsed() > Duration::from_secs(120) {
            bail!(
                "the agent reported nothing in 120 s: {}",
                util::tail(&fs::read_to_string(&err_path).unwrap_or_default(), 20)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // The load.
    let stop = dir.0.join("client.stop");
    let counts = dir.0.join("client.counts");
    let _client_proc = Proc(
        client
            .enter()
            .args(["python3", "-c", CLIENT_PY, PRIMARY_ADDR])
            .arg(&stop)
            .arg(&counts)
            .arg(PAGE)
            .arg(args.rate.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the client")?,
    );

    eprintln!(
        "soak: agent pid {agent_pid}, {} s, a sample every {} s, ~{} requests/s",
        args.duration.as_secs(),
        args.interval,
        args.rate
    );
    eprintln!(
        "{:>7} {:>9} {:>6} {:>4} {:>9} {:>6} {:>9}  maps (entries)",
        "t_s", "rss_MiB", "cpu%", "fds", "req_ok", "failed", "cloned"
    );
    let tck = 100.0; // USER_HZ on Linux
    let mut samples: Vec<Sample> = Vec::new();
    let t0 = Instant::now();
    let mut prev_cpu: Option<(Instant, u64)> = None;
    let mut next = t0;
    loop {
        if INTERRUPTED.load(Ordering::Relaxed) {
            eprintln!("soak: interrupted; summarising what was sampled");
            break;
        }
        if let Ok(Some(st)) = agent.0.try_wait() {
            bail!(
                "the agent died ({st}): {}",
                util::tail(&fs::read_to_string(&err_path).unwrap_or_default(), 20)
            );
        }
        let now = Instant::now();
        let status = fs::read_to_string(format!("/proc/{agent_pid}/status")).unwrap_or_default();
        let stat = fs::read_to_string(format!("/proc/{agent_pid}/stat")).unwrap_or_default();
        let ticks = parse_cpu_ticks(&stat).unwrap_or(0);
        let cpu_pct = prev_cpu.map_or(0.0, |(t, prev)| {
            (ticks.saturating_sub(prev)) as f64 / tck / now.duration_since(t).as_secs_f64() * 100.0
        });
        prev_cpu = Some((now, ticks));
        let (ok, failed) = fs::read_to_string(&counts)
            .ok()
            .and_then(|t| {
                let mut it = t.split_whitespace();
                Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
            })
            .unwrap_or((0, 0));
        let line = last_line
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_default();
        let s = Sample {
            t_s: t0.elapsed().as_secs_f64(),
            rss_kib: parse_rss_kib(&status).unwrap_or(0),
            cpu_pct,
            fds: fd_count(agent_pid),
            maps: map_entries(agent_pid),
            requests_ok: ok,
            requests_failed: failed,
            cloned: line["mirror"]["cloned"].as_u64().unwrap_or(0),
        };
        eprintln!(
            "{:>7.0} {:>9.1} {:>6.1} {:>4} {:>9} {:>6} {:>9}  {}",
            s.t_s,
            s.rss_kib as f64 / 1024.0,
            s.cpu_pct,
            s.fds,
            s.requests_ok,
            s.requests_failed,
            s.cloned,
            s.maps
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        samples.push(s);
        if t0.elapsed() >= args.duration {
            break;
        }
        next += Duration::from_secs(args.interval);
        while Instant::now() < next && !INTERRUPTED.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    fs::write(&stop, "")?;
    let final_line = last_line
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_default();
    drop(agent); // SIGTERM: the agent detaches, removes its replica and restores limits
    drop(server);

    let why = verdict(&samples);
    let summary = summarize(&samples, &args, &why, &final_line);
    println!("{summary:#}");
    if let Some(p) = &args.json {
        let doc = json!({
            "summary": summary,
            "samples": samples.iter().map(|s| json!({
                "t_s": s.t_s, "rss_kib": s.rss_kib, "cpu_pct": s.cpu_pct, "fds": s.fds,
                "maps": s.maps, "requests_ok": s.requests_ok,
                "requests_failed": s.requests_failed, "cloned": s.cloned,
            })).collect::<Vec<_>>(),
        });
        fs::write(p, doc.to_string()).with_context(|| format!("writing {}", p.display()))?;
    }
    if !why.is_empty() {
        bail!("soak failed: {}", why.join("; "));
    }
    if samples.last().is_some_and(|s| s.requests_failed > 0) {
        bail!(
            "the primary failed {} requests under the soak",
            samples.last().map_or(0, |s| s.requests_failed)
        );
    }
    Ok(())
}

fn summarize(samples: &[Sample], args: &SoakArgs, why: &[String], final_line: &Value) -> Value {
    let mib = |k: u64| k as f64 / 1024.0;
    let first = samples.first().cloned().unwrap_or_default();
    let last = samples.last().cloned().unwrap_or_default();
    let half = samples.len() / 2;
    let mean_cpu = |s: &[Sample]| {
        let v: Vec<f64> = s.iter().skip(1).map(|x| x.cpu_pct).collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let warm = samples.len() / 5;
    let after_warm = &samples[warm.min(samples.len())..];
    let rss_pts: Vec<(f64, f64)> = after_warm.iter().map(|x| (x.t_s, mib(x.rss_kib))).collect();
    let mut maps = serde_json::Map::new();
    for k in last.maps.keys() {
        let series: Vec<u64> = samples
            .iter()
            .filter_map(|s| s.maps.get(k).copied())
            .collect();
        maps.insert(
            k.clone(),
            json!({
                "first": series.first(), "last": series.last(),
                "max": series.iter().max(),
            }),
        );
    }
    json!({
        "duration_s": last.t_s,
        "interval_s": args.interval,
        "samples": samples.len(),
        "rss_mib": {
            "first": mib(first.rss_kib), "last": mib(last.rss_kib),
            "max": mib(samples.iter().map(|s| s.rss_kib).max().unwrap_or(0)),
            "slope_mib_per_hour_after_warmup": slope(&rss_pts) * 3600.0,
        },
        "cpu_pct_of_one_core": {
            "mean_first_half": mean_cpu(&samples[..half]),
            "mean_second_half": mean_cpu(&samples[half..]),
        },
        "fds": {
            "first": first.fds, "last": last.fds,
            "max": samples.iter().map(|s| s.fds).max(),
        },
        "bpf_hash_map_entries": maps,
        "requests": {"ok": last.requests_ok, "failed": last.requests_failed},
        "mirror_cloned": last.cloned,
        "shadow": final_line.get("shadow"),
        "verdict": if why.is_empty() { json!("flat") } else { json!(why) },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("ten").is_err());
    }

    #[test]
    fn proc_parsers() {
        assert_eq!(
            parse_rss_kib("Name:\tx\nVmRSS:\t   12345 kB\nThreads: 3\n"),
            Some(12345)
        );
        let stat = "42 (shadow agent) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(
            parse_map_id("pos:\t0\nflags:\t02000002\nmap_type:\t9\nmap_id:\t77\n"),
            Some(77)
        );
        assert_eq!(parse_map_id("pos:\t0\nflags:\t02\n"), None);
    }

    fn series(rss: impl Fn(usize) -> u64, fds: impl Fn(usize) -> u64) -> Vec<Sample> {
        (0..60)
            .map(|i| Sample {
                t_s: i as f64 * 30.0,
                rss_kib: rss(i),
                fds: fds(i),
                ..Sample::default()
            })
            .collect()
    }

    #[test]
    fn flat_passes_and_growth_fails() {
        // Warm-up growth, then flat with page-level noise.
        let flat = series(
            |i| 20_000 + (i.min(10) as u64) * 500 + (i as u64 % 3) * 8,
            |_| 30,
        );
        assert!(verdict(&flat).is_empty(), "{:?}", verdict(&flat));
        // 200 KiB per 30 s sample: ~23 MiB/h, the end ~4.7 MiB above the first half.
        let leak = series(|i| 20_000 + i as u64 * 200, |_| 30);
        assert_eq!(verdict(&leak).len(), 1, "{:?}", verdict(&leak));
        // One descriptor per sample.
        let fd_leak = series(|_| 20_000, |i| 30 + i as u64);
        assert!(verdict(&fd_leak)[0].contains("descriptors"));
        // Too few samples to judge.
        assert!(!verdict(&flat[..3]).is_empty());
    }

    #[test]
    fn slope_of_a_line() {
        let pts: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 3.0 * i as f64 + 1.0)).collect();
        assert!((slope(&pts) - 3.0).abs() < 1e-9);
        assert_eq!(slope(&pts[..1]), 0.0);
    }

    #[test]
    fn config_is_complete() {
        let c = agent_config(Path::new("/tmp/x"), "shsk1-app", "nc0");
        for k in [
            "[mirror]",
            "[shadow]",
            "[allocate]",
            "dry_run = false",
            "mask_http = true",
        ] {
            assert!(c.contains(k), "{k}");
        }
    }
}
