//! `shadow-agent demo` (what `cargo xtask run` shows): a self-contained run on this host.
//!
//! It builds a small world in namespaces it creates and removes:
//!
//! ```text
//!  [client netns]            [primary netns]                      [shadow netns]
//!   cl0 198.18.0.1 ──veth── pr0 198.18.0.2 (python http.server)
//!                              │ TC ingress: shadow_mirror, XDP: shadow_load
//!                             pm0 ─────────────────veth──────────── sh0 198.18.0.2
//!                                                                  (python http.server)
//! ```
//!
//! The primary and the shadow run in cgroups of their own; the profiler accounts their CPU
//! in the kernel. A client in the client namespace sends HTTP requests at a rate that
//! varies over time. Every second it prints what was measured in that second: requests
//! served and their latency (client side), packets seen and cloned by the mirror, packets
//! that arrived in the shadow namespace, new connections counted by XDP, and the primary's
//! CPU from eBPF next to the cgroup's own cpu.stat.
//!
//! The mirror translates TCP sequence numbers, so the shadow's own server holds the mirrored
//! sessions and serves the requests (with credentials masked); the summary compares the two
//! servers' access logs.
//!
//! Every 250 ms the default forecaster ([`Adaptive`], set for a short history) is refitted on
//! the primary's CPU series as it accumulates (eBPF, cores per 250 ms) and forecasts the next
//! second with a 90% interval; the allocator ([`Reconciler`]: the policy, its rails and the
//! audit log, as `run` uses it) sizes the primary's CPU quota from that forecast and from
//! throttling, live on the demo's own cgroup, starting from a static 0.1-core quota. Each row
//! shows the forecast made a second earlier for that second, its band and the quota; every
//! change of the quota is printed under its row. At the end the demo writes its rows
//! (`run.jsonl`), the audit log (`audit.jsonl`) and the HTML report (`report/index.html`,
//! [`crate::report`]) into its output directory and prints where the report is.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;

use crate::{
    allocate::{
        backend::{self, Backend},
        AllocatorConfig, Decision, ForecastInput, Forecasts, Reconciler,
    },
    error::AgentError,
    forecast::{policy::Adaptive, Fitted as _, Forecaster as _},
    mirror::{Mirror, MirrorSpec, Ports, Proto, Rule},
    profile::{HookPreference, Profiler},
    shadow::{Allowlist, CommandSpec, GroupSpec, RestartPolicy, ShadowGroup},
    sys::{
        cgroup::Cgroup,
        link::{self, Veth, VethEnd},
        netns::NetNs,
        process::{self, ChildGuard},
    },
};

const CLIENT_ADDR: [u8; 4] = [198, 18, 0, 1];
const SERVICE_ADDR: [u8; 4] = [198, 18, 0, 2];
const PORT: u16 = 8080;

/// Requests per second asked of the client at `t` seconds into a run of `total` seconds:
/// a slow wave between 20 and 200 req/s with a burst two thirds of the way through.
pub fn target_rate(t: f64, total: f64) -> f64 {
    let period = (total / 2.0).max(10.0);
    let wave = (std::f64::consts::PI * t / period).sin().powi(2);
    let burst = if t > total * 0.66 && t < total * 0.76 {
        80.0
    } else {
        0.0
    };
    20.0 + 180.0 * wave + burst
}

struct World {
    // Field order is drop order: the shadow group and the primary first, then links,
    // namespaces, cgroups.
    group: ShadowGroup,
    primary_srv: ChildGuard,
    _client_link: Veth,
    client: NetNs,
    primary: NetNs,
    primary_cg: Cgroup,
    _docroot: TempDir,
    logs: TempDir,
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn setup_err<E: std::error::Error + Send + Sync + 'static>(
    op: &str,
) -> impl FnOnce(E) -> AgentError + '_ {
    move |e| AgentError::setup(op, e)
}

fn build_world() -> Result<World, AgentError> {
    let id = std::process::id() & 0xfffff;
    let tag = format!("shdd{id:x}");
    let client = NetNs::create(&format!("{tag}-cl")).map_err(setup_err("client netns"))?;
    let primary = NetNs::create(&format!("{tag}-pr")).map_err(setup_err("primary netns"))?;
    let client_link = Veth::create(
        VethEnd::in_netns("cl0", &client),
        VethEnd::in_netns("pr0", &primary),
    )
    .map_err(setup_err("client-primary veth"))?;
    let v4 = |a: [u8; 4]| std::net::IpAddr::from(a);
    link::add_address("cl0", Some(&client), v4(CLIENT_ADDR), 24)
        .map_err(setup_err("client address"))?;
    link::add_address("pr0", Some(&primary), v4(SERVICE_ADDR), 24)
        .map_err(setup_err("primary address"))?;
    for (name, ns) in [("cl0", &client), ("pr0", &primary)] {
        link::set_up(name, Some(ns)).map_err(setup_err("link up"))?;
    }
    let primary_cg =
        Cgroup::create(&format!("{tag}-primary")).map_err(setup_err("primary cgroup"))?;

    let docroot = TempDir(std::env::temp_dir().join(format!("{tag}-www")));
    std::fs::create_dir_all(&docroot.0).map_err(|source| AgentError::Io {
        op: format!("creating {}", docroot.0.display()),
        source,
    })?;
    let page: String = (0..200)
        .map(|i| format!("<p>shadow demo line {i}</p>\n"))
        .collect();
    std::fs::write(docroot.0.join("index.html"), page).map_err(|source| AgentError::Io {
        op: "writing the demo page".into(),
        source,
    })?;
    let argv: Vec<String> = [
        "python3",
        "-m",
        "http.server",
        "--bind",
        "198.18.0.2",
        &PORT.to_string(),
        "--directory",
        &docroot.0.to_string_lossy(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let logs = TempDir(std::env::temp_dir().join(format!("{tag}-logs")));
    std::fs::create_dir_all(&logs.0).map_err(|source| AgentError::Io {
        op: format!("creating {}", logs.0.display()),
        source,
    })?;
    let primary_log =
        std::fs::File::create(logs.0.join("primary.log")).map_err(|source| AgentError::Io {
            op: "creating the primary's log".into(),
            source,
        })?;
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdout(std::process::Stdio::null())
        .stderr(primary_log);
    let primary_srv = process::spawn(cmd, Some(&primary), Some(&primary_cg))
        .map_err(setup_err("starting the primary (python3 -m http.server)"))?;
    // The shadow: the same server, as a replica of a shadow group whose host ends live in
    // the primary's namespace (where the mirror runs).
    let spec = GroupSpec {
        name: format!("d{id:x}"),
        prefix: "shd".into(),
        command: CommandSpec {
            argv,
            stderr: Some(logs.0.join("shadow.log")),
            ..CommandSpec::default()
        },
        replicas_min: 1,
        replicas_max: 1,
        cpu_cores: Some(0.5),
        memory_bytes: Some(256 << 20),
        writable_paths: vec![docroot.0.clone()],
        addresses: vec![(v4(SERVICE_ADDR), 24)],
        allow: Allowlist {
            rules: Vec::new(),
            loopback: true,
        },
        restart: RestartPolicy::default(),
        // pr0's: the mirror on pr0 then clones without rewriting the primary's packets.
        replica_mac: link::mac("pr0", Some(&primary)).ok(),
    };
    let host_ns = primary
        .try_clone()
        .map_err(setup_err("primary netns handle"))?;
    let group = ShadowGroup::start(spec, Some(host_ns))?;
    Ok(World {
        group,
        primary_srv,
        _client_link: client_link,
        client,
        primary,
        primary_cg,
        _docroot: docroot,
        logs,
    })
}

/// One GET on a fresh connection; returns the body length.
fn get(addr: SocketAddr) -> std::io::Result<usize> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET /index.html?session=demo-session-42 HTTP/1.1\r\nHost: primary\r\nUser-Agent: shadow-demo\r\nAuthorization: Bearer demo-secret-token\r\nConnection: close\r\n\r\n")?;
    let mut buf = Vec::with_capacity(16 * 1024);
    s.read_to_end(&mut buf)?;
    if !buf.starts_with(b"HTTP/1.0 200") && !buf.starts_with(b"HTTP/1.1 200") {
        return Err(std::io::Error::other("response is not 200 OK"));
    }
    Ok(buf.len())
}

#[derive(Default)]
struct Window {
    ok: u64,
    errors: u64,
    hist: Option<Histogram<u64>>,
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds are valid")
}

/// Requests an http.server access log on `path` records.
fn served(path: &std::path::Path) -> u64 {
    std::fs::read_to_string(path)
        .map(|t| t.lines().filter(|l| l.contains("\"GET ")).count() as u64)
        .unwrap_or(0)
}

/// The request part of the last line of an http.server access log.
fn last_request(path: &std::path::Path) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| {
            t.lines()
                .rev()
                .find(|l| l.contains("\"GET "))
                .and_then(|l| l.split('"').nth(1).map(str::to_string))
        })
        .unwrap_or_default()
}

/// cgroup2 `cpu.stat` usage in microseconds.
fn cgroup_usage_usec(cg: &Cgroup) -> Option<u64> {
    let text = std::fs::read_to_string(cg.unified_path().join("cpu.stat")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse().ok())
}

fn wait_ready(ns: &NetNs, addr: SocketAddr) -> Result<(), AgentError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let ok = ns
        .run_in(move || loop {
            if get(addr).is_ok() {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        })
        .map_err(setup_err("entering the client netns"))?;
    if ok {
        Ok(())
    } else {
        Err(AgentError::Io {
            op: format!("the primary did not answer on {addr} within 10 s"),
            source: std::io::Error::from(std::io::ErrorKind::TimedOut),
        })
    }
}

/// What `shadow-agent demo` is asked to do.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Length of the client's run.
    pub duration: Duration,
    /// One JSON object per second on stdout instead of the table.
    pub json: bool,
    /// Where the rows (`run.jsonl`), the audit log (`audit.jsonl`), the allocator's state and
    /// the report (`report/index.html`) are written (created if missing).
    pub out: PathBuf,
}

/// Forecaster and allocator steps per printed second (every 250 ms).
pub const SUBTICKS: u32 = 4;
/// Level of the forecast intervals.
pub const LEVEL: f64 = 0.9;
/// The primary's CPU quota (cores) when the demo starts: a static limit, as an operator might
/// have set it, too small for the load's peaks, which the allocator then sizes. Restored when
/// the demo ends. The primary's CPU per request has varied between runs and VMs (0.07 core
/// at 200 requests/s in one CI run, 0.1 in an earlier one): at 0.1 core a fast run never came
/// near the quota, so
/// only a confident forecast could change it, and in one CI run none did within 20 s. At
/// 0.05 core every run measured so far outgrows it on the first ramp.
pub const INITIAL_QUOTA_CORES: f64 = 0.05;
/// The allocator keeps the primary's quota within these (cores).
pub const MIN_QUOTA_CORES: f64 = 0.05;
pub const MAX_QUOTA_CORES: f64 = 1.0;
/// Samples (250 ms each) the forecaster is fitted on at most.
const HISTORY: usize = 240;
/// One-step interval outcomes the empirical coverage is measured over.
const COVERAGE_WINDOW: usize = 40;

/// The default policy set for a short history: it forecasts after about 9 s of samples.
fn demo_forecaster() -> Adaptive {
    Adaptive {
        max_horizon: SUBTICKS as usize,
        select_window: 12,
        calibration: 60,
        min_calibration: 8,
        median_windows: vec![3, 6],
        ..Adaptive::default()
    }
}

/// A forecast of the primary's mean CPU over the next second (cores): the mean of the
/// per-step points and bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
struct SecondForecast {
    point: f64,
    lower: f64,
    upper: f64,
}

/// The forecaster and the allocator on the primary's cgroup.
struct Planner {
    reconciler: Reconciler<Box<dyn Backend + Send>>,
    usage: std::collections::VecDeque<f64>,
    last_cpu: Option<(Instant, u64)>,
    /// The last one-step interval handed out, scored against the next sample.
    pending: Option<(f64, f64)>,
    hits: std::collections::VecDeque<bool>,
    /// The forecast for the coming second, made at the last second boundary.
    next_second: Option<SecondForecast>,
    forecasts: u64,
}

impl Planner {
    /// Sets the initial quota on `cg` and opens the allocator on it (audit log and the record of
    /// the original limits under `out`).
    fn start(cg: &Cgroup, out: &std::path::Path) -> Result<Planner, AgentError> {
        let backend = backend::for_cgroup(cg)?;
        let period = backend.read_limits()?.cpu_period_us;
        backend.set_cpu(Some(INITIAL_QUOTA_CORES), period, None)?;
        let mut cfg = AllocatorConfig::new(out.join("state"), MAX_QUOTA_CORES, f64::MAX);
        cfg.memory = None;
        cfg.audit_log = Some(out.join("audit.jsonl"));
        if let Some(cpu) = cfg.cpu.as_mut() {
            cpu.min = MIN_QUOTA_CORES;
            cpu.max = MAX_QUOTA_CORES;
            cpu.cooldown_intervals = 2;
        }
        let reconciler = Reconciler::new(backend, cfg)?;
        Ok(Planner {
            reconciler,
            usage: std::collections::VecDeque::with_capacity(HISTORY + 1),
            last_cpu: None,
            pending: None,
            hits: std::collections::VecDeque::with_capacity(COVERAGE_WINDOW + 1),
            next_second: None,
            forecasts: 0,
        })
    }

    /// One 250 ms interval: the primary's CPU so far (`cpu_ns`, eBPF) extends the series, the
    /// forecaster is refitted, and the allocator takes one step. Returns the step's decisions
    /// that changed the quota. At a second boundary (`second`), also forecasts the next second.
    fn step(&mut self, cpu_ns: u64, second: bool) -> Vec<Decision> {
        let now = Instant::now();
        if let Some((t0, c0)) = self.last_cpu {
            let dt = now.duration_since(t0).as_secs_f64();
            if dt > 0.0 {
                let cores = cpu_ns.saturating_sub(c0) as f64 / 1e9 / dt;
                if let Some((lo, hi)) = self.pending.take() {
                    self.hits.push_back(lo <= cores && cores <= hi);
                    if self.hits.len() > COVERAGE_WINDOW {
                        self.hits.pop_front();
                    }
                }
                self.usage.push_back(cores);
                if self.usage.len() > HISTORY {
                    self.usage.pop_front();
                }
            }
        }
        self.last_cpu = Some((now, cpu_ns));
        let steps = SUBTICKS as usize;
        let forecast = demo_forecaster()
            .fit(self.usage.make_contiguous())
            .and_then(|f| f.predict(steps, &[LEVEL]))
            .ok();
        let mut input = None;
        if let Some(f) = &forecast {
            if let Some(iv) = f.interval(LEVEL) {
                let max = |v: &[f64]| v.iter().copied().fold(f64::MIN, f64::max);
                let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
                self.pending = Some((iv.lower[0], iv.upper[0]));
                let coverage = (self.hits.len() >= 8).then(|| {
                    self.hits.iter().filter(|h| **h).count() as f64 / self.hits.len() as f64
                });
                // The allocator gets the largest bound over the next second.
                input = Some(ForecastInput {
                    point: max(&f.point),
                    lower: iv.lower.iter().copied().fold(f64::MAX, f64::min),
                    upper: max(&iv.upper),
                    level: LEVEL,
                    coverage,
                    horizon_intervals: SUBTICKS,
                    shrink_upper: None,
                });
                if second {
                    self.forecasts += 1;
                    self.next_second = Some(SecondForecast {
                        point: mean(&f.point),
                        lower: mean(&iv.lower),
                        upper: mean(&iv.upper),
                    });
                }
            }
        }
        if second && input.is_none() {
            self.next_second = None;
        }
        match self.reconciler.step(&Forecasts {
            cpu: input,
            memory: None,
        }) {
            Ok(report) => report
                .decisions
                .into_iter()
                .filter(Decision::changes)
                .collect(),
            // The reconciler backs off by itself; the primary keeps its limits.
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "demo allocator step failed");
                Vec::new()
            }
        }
    }

    /// The primary's CPU quota now (cores; None: unlimited or unreadable).
    fn quota(&self) -> Option<f64> {
        self.reconciler
            .backend()
            .read_limits()
            .ok()
            .and_then(|l| l.cpu_cores)
    }
}

/// A decision as the demo prints it under its row.
fn decision_line(t: f64, d: &Decision, dry_run: bool) -> String {
    let ms = |v: Option<f64>| v.map_or("unlimited".to_string(), |c| format!("{:.0}", c * 1e3));
    let why = match &d.reason {
        crate::allocate::Reason::Forecast => match &d.forecast {
            Some(f) => format!(
                "forecast: upper bound {:.1} ms/s over the next second at {:.0}% + headroom",
                f.upper * 1e3,
                f.level * 100.0
            ),
            None => "forecast".to_string(),
        },
        crate::allocate::Reason::Reactive { signals } => format!(
            "reactive: {}",
            signals
                .iter()
                .map(|s| serde_json::to_value(s)
                    .ok()
                    .and_then(|v| v.get("signal").and_then(|x| x.as_str()).map(str::to_owned))
                    .unwrap_or_else(|| format!("{s:?}")))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => format!("{other:?}").to_lowercase(),
    };
    let rails = if d.rails.is_empty() {
        String::new()
    } else {
        format!(
            "; rails: {}",
            d.rails
                .iter()
                .map(|r| serde_json::to_value(r)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    format!(
        "      allocator t={t:.2}s: {} quota {} -> {} ms/s ({why}{rails}){}",
        d.resource.as_str(),
        ms(d.old),
        ms(d.new),
        if dry_run { " [dry run]" } else { "" }
    )
}

/// Wall clock in ms since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn io_err(op: String) -> impl FnOnce(std::io::Error) -> AgentError {
    move |source| AgentError::Io { op, source }
}

/// Run the demo for `opts.duration`, printing one line per second (a JSON object with
/// `opts.json`), write the report into `opts.out` and return the summary that it prints last.
pub fn run(opts: &DemoOptions) -> Result<serde_json::Value, AgentError> {
    let (duration, json) = (opts.duration, opts.json);
    let out = &opts.out;
    std::fs::create_dir_all(out).map_err(io_err(format!("creating {}", out.display())))?;
    let rows_path = out.join("run.jsonl");
    let audit_path = out.join("audit.jsonl");
    // A fresh, empty audit log per run: the report reads all of it, and the allocator
    // appends to a log it finds.
    std::fs::File::create(&audit_path)
        .map_err(io_err(format!("creating {}", audit_path.display())))?;
    let mut rows_file = std::io::BufWriter::new(
        std::fs::File::create(&rows_path)
            .map_err(io_err(format!("creating {}", rows_path.display())))?,
    );
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(|source| AgentError::Io {
            op: "installing signal handlers".into(),
            source,
        })?;
    }
    let world = build_world()?;
    let addr = SocketAddr::from((SERVICE_ADDR, PORT));
    wait_ready(&world.client, addr)?;

    let replica = world.group.replica(0).ok_or_else(|| AgentError::Io {
        op: "the shadow group has no replica".into(),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })?;
    let shadow_if = replica.names().host_if.clone();
    let spec = MirrorSpec {
        interface: "pr0".into(),
        address: None,
        direction: Default::default(),
        shadow_interface: shadow_if.clone(),
        shadow_mac: replica.replica_mac().octets(),
        rules: vec![Rule {
            dst: crate::mirror::Cidr {
                addr: SERVICE_ADDR.into(),
                prefix_len: 32,
            },
            ports: Ports { lo: PORT, hi: PORT },
            proto: Some(Proto::Tcp),
        }],
        xdp: true,
        // Mask HTTP credentials in what the shadow receives (the client sends a bearer
        // token with every request).
        options: crate::mirror::MirrorOptions {
            rule_masks: vec![crate::mirror::RuleMask {
                http: true,
                ..Default::default()
            }],
            // Sequence translation: the shadow's own TCP sessions run, so it serves the
            // mirrored requests (its replies are learned from, then dropped).
            tcp: crate::mirror::TcpSessions::Translate,
            ..Default::default()
        },
    };
    let mirror = world
        .primary
        .run_in(move || Mirror::attach(spec))
        .map_err(setup_err("entering the primary netns"))??;
    let mut profiler = Profiler::start(HookPreference::Auto)?;
    profiler.track(world.primary_cg.id())?;
    let shadow_cg = replica.cgroup().id();
    profiler.track(shadow_cg)?;
    let mut planner = Planner::start(&world.primary_cg, out)?;
    let primary_name = world.primary_cg.name().to_owned();

    if !json {
        println!(
            "shadow demo: primary http.server pid {} on 198.18.0.2:{PORT}, shadow replica pid {} in netns {}; mirror {:?} on pr0 -> {shadow_if} (XDP {}), CPU hook {:?}; {} s\nforecaster: default adaptive policy refitted every 250 ms on the primary's CPU, {:.0}% interval; allocator: live on the primary's cgroup {primary_name}, quota from {INITIAL_QUOTA_CORES} core (rails {MIN_QUOTA_CORES}..{MAX_QUOTA_CORES}), audit log {}",
            world.primary_srv.pid(),
            replica.pid().unwrap_or(0),
            replica.names().netns,
            mirror.tc_mode(),
            if mirror.xdp_attached() { "on" } else { "off" },
            profiler.hook(),
            duration.as_secs(),
            LEVEL * 100.0,
            audit_path.display()
        );
        println!(
            "{:>4} {:>7} {:>6} {:>5} {:>7} {:>7} | {:>7} {:>7} {:>6} {:>7} {:>8} {:>7} | {:>6} {:>6} | {:>9} {:>9} {:>7} | {:>6} {:>13} {:>7}",
            "t_s", "target", "req/s", "err", "p50_ms", "p99_ms", "seen", "cloned", "masked", "shd_rx", "shd_drop", "shd_req", "xdp_pk", "syn/s", "cpu_ebpf", "cpu_cg", "shd_cpu", "fc_cpu", "fc_band", "quota"
        );
    }

    // Counters before the client starts, so every request it makes is inside the totals.
    let shadow_rx = || {
        link::rx_packets(&replica.names().replica_if, Some(replica.netns()))
            .ok()
            .flatten()
            .unwrap_or(0)
    };
    let rx0 = shadow_rx();
    let shadow_log = world.logs.0.join("shadow.log");
    let mut last = (
        mirror.counters()?,
        mirror.rule_load()?.first().copied().unwrap_or_default(),
        rx0,
        profiler.cgroup(world.primary_cg.id())?.unwrap_or_default(),
        cgroup_usage_usec(&world.primary_cg).unwrap_or(0),
        profiler.cgroup(shadow_cg)?.unwrap_or_default(),
        replica
            .discard()
            .counters()
            .map(|c| c.tx_dropped_packets)
            .unwrap_or(0),
        served(&shadow_log),
    );
    let first = last.clone();

    // The client: open loop at target_rate(t), one connection per request.
    let window = Arc::new(Mutex::new(Window {
        hist: Some(new_hist()),
        ..Window::default()
    }));
    let started = Instant::now();
    let total = duration.as_secs_f64();
    let client = {
        let window = Arc::clone(&window);
        let stop = Arc::clone(&stop);
        let ns = world
            .client
            .try_clone()
            .map_err(setup_err("client netns handle"))?;
        std::thread::spawn(move || {
            ns.run_in(move || {
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) && started.elapsed() < duration {
                    let t = started.elapsed().as_secs_f64();
                    next += Duration::from_secs_f64(1.0 / target_rate(t, total));
                    let t0 = Instant::now();
                    let res = get(addr);
                    let us = t0.elapsed().as_micros() as u64;
                    {
                        let mut w = window.lock().unwrap_or_else(|p| p.into_inner());
                        match res {
                            Ok(_) => {
                                w.ok += 1;
                                if let Some(h) = w.hist.as_mut() {
                                    let _ = h.record(us.max(1));
                                }
                            }
                            Err(_) => w.errors += 1,
                        }
                    }
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    } else {
                        next = Instant::now();
                    }
                }
            })
        })
    };

    let (mut tot_ok, mut tot_err) = (0u64, 0u64);
    let mut tick = started;
    let mut all = new_hist();
    let mut decisions_total = 0u64;
    let (mut fc_seconds, mut fc_hits) = (0u64, 0u64);
    let primary_cpu_ns = |p: &Profiler| -> Result<u64, AgentError> {
        Ok(p.cgroup(world.primary_cg.id())?.unwrap_or_default().cpu_ns)
    };
    planner.step(primary_cpu_ns(&profiler)?, false);
    while !stop.load(Ordering::Relaxed) && started.elapsed() < duration {
        // The forecaster and the allocator every 250 ms; the row once a second.
        let this_second = planner.next_second;
        let mut changed = Vec::new();
        for sub in 1..=SUBTICKS {
            tick += Duration::from_secs(1) / SUBTICKS;
            if let Some(wait) = tick.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let at = started.elapsed().as_secs_f64();
            for d in planner.step(primary_cpu_ns(&profiler)?, sub == SUBTICKS) {
                changed.push((at, d));
            }
        }
        decisions_total += changed.len() as u64;
        let quota = planner.quota();
        let t = started.elapsed().as_secs_f64();
        let (ok, err, hist) = {
            let mut w = window.lock().unwrap_or_else(|p| p.into_inner());
            let h = w.hist.replace(new_hist()).unwrap_or_else(new_hist);
            let r = (w.ok, w.errors, h);
            w.ok = 0;
            w.errors = 0;
            r
        };
        let _ = all.add(&hist);
        tot_ok += ok;
        tot_err += err;
        let now = (
            mirror.counters()?,
            mirror.rule_load()?.first().copied().unwrap_or_default(),
            shadow_rx(),
            profiler.cgroup(world.primary_cg.id())?.unwrap_or_default(),
            cgroup_usage_usec(&world.primary_cg).unwrap_or(0),
            profiler.cgroup(shadow_cg)?.unwrap_or_default(),
            replica
                .discard()
                .counters()
                .map(|c| c.tx_dropped_packets)
                .unwrap_or(0),
            served(&shadow_log),
        );
        let q = |p: f64| {
            if hist.is_empty() {
                0.0
            } else {
                hist.value_at_quantile(p) as f64 / 1000.0
            }
        };
        let row = serde_json::json!({
            "t_s": t.round(),
            "target_rps": target_rate(t - 0.5, total).round(),
            "requests_ok": ok,
            "request_errors": err,
            "latency_p50_ms": q(0.5),
            "latency_p99_ms": q(0.99),
            "mirror_seen": now.0.seen - last.0.seen,
            "mirror_cloned": now.0.cloned - last.0.cloned,
            "mirror_clone_failed": now.0.clone_failed - last.0.clone_failed,
            "mirror_masked": now.0.masked - last.0.masked,
            "shadow_rx_packets": now.2.saturating_sub(last.2),
            "xdp_packets": now.1.packets - last.1.packets,
            "xdp_new_connections": now.1.syns - last.1.syns,
            "primary_cpu_ms_ebpf": (now.3.cpu_ns - last.3.cpu_ns) as f64 / 1e6,
            "primary_cpu_ms_cgroup": (now.4.saturating_sub(last.4)) as f64 / 1e3,
            "shadow_cpu_ms_ebpf": (now.5.cpu_ns - last.5.cpu_ns) as f64 / 1e6,
            "shadow_tx_dropped": now.6.saturating_sub(last.6),
            "shadow_requests": now.7.saturating_sub(last.7),
        });
        let mut row = row;
        let cpu_ms = row["primary_cpu_ms_ebpf"].as_f64().unwrap_or(0.0);
        if let Some(f) = this_second {
            fc_seconds += 1;
            fc_hits += u64::from(f.lower * 1e3 <= cpu_ms && cpu_ms <= f.upper * 1e3);
        }
        let fc_ms = |v: Option<f64>| v.map(|c| c * 1e3);
        row["forecast_cpu_ms"] = fc_ms(this_second.map(|f| f.point)).into();
        row["forecast_cpu_lower_ms"] = fc_ms(this_second.map(|f| f.lower)).into();
        row["forecast_cpu_upper_ms"] = fc_ms(this_second.map(|f| f.upper)).into();
        row["forecast_level"] = LEVEL.into();
        row["cpu_quota_cores"] = quota.into();
        row["decisions"] = changed
            .iter()
            .map(|(at, d)| {
                serde_json::json!({
                    "t_s": at,
                    "resource": d.resource,
                    "old": d.old,
                    "new": d.new,
                    "reason": d.reason,
                    "rails": d.rails,
                })
            })
            .collect::<Vec<_>>()
            .into();
        // The report's view of the primary's cgroup (its name matches the audit log's).
        row["time_ms"] = now_ms().into();
        row["primary_cgroup"] = primary_name.clone().into();
        let mut entry = serde_json::json!({ "limits": { "cpu_cores": quota } });
        if let Some(f) = this_second {
            entry["forecasts"] = serde_json::json!({ "cpu": {
                "point": f.point, "lower": f.lower, "upper": f.upper, "level": LEVEL, "horizon_s": 0.0,
            }});
        }
        row["cgroups"] = serde_json::json!({ primary_name.clone(): entry });
        writeln!(rows_file, "{row}").map_err(io_err(format!("writing {}", rows_path.display())))?;
        if json {
            println!("{row}");
        } else {
            let u = |k: &str| row[k].as_u64().unwrap_or(0);
            let f = |k: &str| row[k].as_f64().unwrap_or(0.0);
            println!(
                "{:>4.0} {:>7.0} {:>6} {:>5} {:>7.2} {:>7.2} | {:>7} {:>7} {:>6} {:>7} {:>8} {:>7} | {:>6} {:>6} | {:>9.1} {:>9.1} {:>7.1} | {:>6} {:>13} {:>7}",
                f("t_s"),
                f("target_rps"),
                ok,
                err,
                q(0.5),
                q(0.99),
                u("mirror_seen"),
                u("mirror_cloned"),
                u("mirror_masked"),
                u("shadow_rx_packets"),
                u("shadow_tx_dropped"),
                u("shadow_requests"),
                u("xdp_packets"),
                u("xdp_new_connections"),
                f("primary_cpu_ms_ebpf"),
                f("primary_cpu_ms_cgroup"),
                f("shadow_cpu_ms_ebpf"),
                this_second.map_or("-".to_string(), |f| format!("{:.1}", f.point * 1e3)),
                this_second.map_or("-".to_string(), |f| format!(
                    "{:.1}-{:.1}",
                    f.lower * 1e3,
                    f.upper * 1e3
                )),
                quota.map_or("max".to_string(), |q| format!("{:.0}", q * 1e3)),
            );
            for (at, d) in &changed {
                println!("{}", decision_line(*at, d, false));
            }
        }
        last = now;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = client.join();

    // Let the shadow finish the last mirrored requests before counting what it served.
    std::thread::sleep(Duration::from_millis(500));
    // The mirror's totals once the last packets are through: a snapshot taken while traffic
    // flows can catch a packet between "matched" and its outcome. The shadow's receive
    // count last, so it covers every clone counted.
    last.0 = mirror.counters()?;
    last.1 = mirror.rule_load()?.first().copied().unwrap_or_default();
    last.2 = shadow_rx();
    let shadow_requests = served(&shadow_log).saturating_sub(first.7);
    let tcp = mirror.tcp_counters()?;
    let cpu_ebpf = (last.3.cpu_ns - first.3.cpu_ns) as f64 / 1e9;
    let cpu_cg = last.4.saturating_sub(first.4) as f64 / 1e6;
    let summary = serde_json::json!({
        "summary": true,
        "seconds": started.elapsed().as_secs_f64(),
        "requests_ok": tot_ok,
        "request_errors": tot_err,
        "latency_p50_ms": if all.is_empty() { 0.0 } else { all.value_at_quantile(0.5) as f64 / 1000.0 },
        "latency_p99_ms": if all.is_empty() { 0.0 } else { all.value_at_quantile(0.99) as f64 / 1000.0 },
        "mirror": serde_json::to_value(&last.0).unwrap_or_default(),
        "mirror_tc_mode": mirror.tc_mode(),
        "shadow_rx_packets": last.2.saturating_sub(first.2),
        "xdp_new_connections": last.1.syns - first.1.syns,
        "shadow_tx_dropped": last.6.saturating_sub(first.6),
        "shadow_requests": shadow_requests,
        "shadow_completion": if tot_ok == 0 { 0.0 } else { shadow_requests as f64 / tot_ok as f64 },
        "tcp": serde_json::to_value(&tcp).unwrap_or_default(),
        "primary_log_line": last_request(&world.logs.0.join("primary.log")),
        "shadow_log_line": last_request(&shadow_log),
        "primary_cpu_seconds_ebpf": cpu_ebpf,
        "primary_cpu_seconds_cgroup": cpu_cg,
        "cpu_hook": profiler.hook(),
        "forecast_seconds": fc_seconds,
        "forecast_hits": fc_hits,
        "forecast_level": LEVEL,
        "forecasts_made": planner.forecasts,
        "quota_changes": decisions_total,
        "audit_log": audit_path,
    });
    writeln!(rows_file, "{summary}")
        .and_then(|()| rows_file.flush())
        .map_err(io_err(format!("writing {}", rows_path.display())))?;
    drop(rows_file);
    // The original quota back (an audit entry too), then the report of this run.
    drop(planner);
    let report = crate::report::generate(&rows_path, Some(&audit_path), &out.join("report"))?;
    let mut summary = summary;
    summary["report"] = report.display().to_string().into();
    summary["run_jsonl"] = rows_path.display().to_string().into();
    if json {
        println!("{summary}");
    } else {
        println!(
            "\nsummary: {tot_ok} requests served ({tot_err} failed), p50 {:.2} ms p99 {:.2} ms; mirror saw {} packets, cloned {} ({} waited in the TCP hold loop before going to the shadow, {} other clone failures, {} restore failures), masked credentials in {} clones; the shadow namespace received {} packets and everything it sent was dropped at its veth ({} packets); XDP counted {} new connections; primary CPU {:.3} s by eBPF ({:?}) vs {:.3} s by cgroup cpu.stat",
            summary["latency_p50_ms"].as_f64().unwrap_or(0.0),
            summary["latency_p99_ms"].as_f64().unwrap_or(0.0),
            last.0.seen - first.0.seen,
            last.0.cloned - first.0.cloned,
            tcp.segments_waiting,
            // The shadow-side program's deliberate drops make bpf_clone_redirect report an
            // error too; the rest are real failures.
            last.0.clone_failed.saturating_sub(
                tcp.segments_waiting + tcp.segments_not_tracked + last.0.fallback_dropped
            ),
            last.0.restore_failed,
            last.0.masked - first.0.masked,
            last.2.saturating_sub(first.2),
            last.6.saturating_sub(first.6),
            last.1.syns - first.1.syns,
            cpu_ebpf,
            profiler.hook(),
            cpu_cg,
        );
        println!(
            "the shadow served {shadow_requests} of the {tot_ok} requests ({:.1}%) in {} TCP sessions it established ({} reset by the shadow), each with its credentials masked:\n  primary log: {}\n  shadow log:  {}",
            summary["shadow_completion"].as_f64().unwrap_or(0.0) * 100.0,
            tcp.established,
            tcp.shadow_resets,
            summary["primary_log_line"].as_str().unwrap_or("-"),
            summary["shadow_log_line"].as_str().unwrap_or("-"),
        );
    }
    if !json {
        println!(
            "forecasts: {fc_seconds} seconds forecast, {fc_hits} within their {:.0}% band; allocator: {decisions_total} quota changes (audit log {})\nreport: {}",
            LEVEL * 100.0,
            audit_path.display(),
            report.display()
        );
    }
    drop(mirror);
    drop(profiler);
    drop(world);
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::target_rate;

    #[test]
    fn rate_stays_in_range_and_varies() {
        let rates: Vec<f64> = (0..120).map(|t| target_rate(t as f64, 120.0)).collect();
        assert!(rates.iter().all(|r| (20.0..=280.0).contains(r)));
        let max = rates.iter().cloned().fold(0.0, f64::max);
        let min = rates.iter().cloned().fold(f64::MAX, f64::min);
        assert!(max - min > 150.0, "{min}..{max}");
    }
}
