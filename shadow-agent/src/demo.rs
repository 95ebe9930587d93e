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
//! The shadow receives the clones but cannot yet hold TCP sessions (in-kernel sequence
//! translation is a later piece of work), so its server sees connection attempts, not
//! requests; the demo says so rather than hiding it.

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
    error::AgentError,
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

/// Run the demo for `duration`, printing one line per second (a JSON object with `json`),
/// and return the summary that it prints last.
pub fn run(duration: Duration, json: bool) -> Result<serde_json::Value, AgentError> {
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

    if !json {
        println!(
            "shadow demo: primary http.server pid {} on 198.18.0.2:{PORT}, shadow replica pid {} in netns {}; mirror {:?} on pr0 -> {shadow_if} (XDP {}), CPU hook {:?}; {} s",
            world.primary_srv.pid(),
            replica.pid().unwrap_or(0),
            replica.names().netns,
            mirror.tc_mode(),
            if mirror.xdp_attached() { "on" } else { "off" },
            profiler.hook(),
            duration.as_secs()
        );
        println!(
            "{:>4} {:>7} {:>6} {:>5} {:>7} {:>7} | {:>7} {:>7} {:>6} {:>7} {:>8} {:>7} | {:>6} {:>6} | {:>9} {:>9} {:>7}",
            "t_s", "target", "req/s", "err", "p50_ms", "p99_ms", "seen", "cloned", "masked", "shd_rx", "shd_drop", "shd_req", "xdp_pk", "syn/s", "cpu_ebpf", "cpu_cg", "shd_cpu"
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
    while !stop.load(Ordering::Relaxed) && started.elapsed() < duration {
        tick += Duration::from_secs(1);
        if let Some(wait) = tick.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
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
        if json {
            println!("{row}");
        } else {
            let u = |k: &str| row[k].as_u64().unwrap_or(0);
            let f = |k: &str| row[k].as_f64().unwrap_or(0.0);
            println!(
                "{:>4.0} {:>7.0} {:>6} {:>5} {:>7.2} {:>7.2} | {:>7} {:>7} {:>6} {:>7} {:>8} {:>7} | {:>6} {:>6} | {:>9.1} {:>9.1} {:>7.1}",
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
            );
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
    });
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
