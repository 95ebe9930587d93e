//! `shadow-agent report` from a real run, opened in headless Chromium.
//!
//! The run is real: a primary (an HTTP server plus a CPU burner with a varying duty cycle) in
//! its own cgroup under a low CPU quota, a shadow group with one replica that serves the same
//! address and keeps trying to reach an address outside its allowlist, the mirror cloning the
//! client's requests to it, the profiler measuring both cgroups, the forecaster (the default
//! adaptive policy, tuned for a short history) forecasting the primary's CPU one interval
//! ahead, and the allocator sizing the primary's quota from those forecasts and from
//! throttling, with its audit log. Every interval the test writes one JSON line in the shape
//! `shadow-agent run --json` prints (plus `time_ms`, `forecasts` and `limits`), then renders
//! the report, screenshots it with Chromium and reads back its DOM.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use shadow_agent::{
    allocate::{backend, AllocatorConfig, ForecastInput, Forecasts, Reconciler},
    forecast::{policy::Adaptive, Fitted as _, Forecaster as _},
    mirror::{Cidr, Mirror, MirrorSpec, Ports, Proto, Rule},
    profile::{HookPreference, Profiler},
    shadow::{Allowlist, CommandSpec, GroupSpec, RestartPolicy, ShadowGroup},
    sys::cgroup::Controller,
};
use shadow_tests::harness::{
    chain, require_privileges, spawn_in, unique_tag, wait_for, TestCgroup, TestDir, TestNetns,
    TestVeth, IPV4_PREFIX,
};

const TICKS: usize = 48;
const TICK: Duration = Duration::from_millis(250);
/// A destination outside the replica's allowlist (TEST-NET-3).
const OUTSIDE: &str = "203.0.113.7";

fn chromium() -> PathBuf {
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "headless Chromium is needed to check the report and is not installed \
         (/usr/bin/chromium): run `cargo xtask setup`, which installs Debian's `chromium` \
         package, or `apt-get install -y chromium`"
    );
}

/// Runs Chromium headless on `url` with a fresh profile; returns stdout.
fn run_chromium(profile: &Path, extra: &[&str], url: &str) -> Vec<u8> {
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(extra)
    .arg(url)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("starting chromium");
    // Drain both pipes while it runs: the DOM is larger than a pipe's buffer.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for chromium") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 90 s: {extra:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    assert!(
        status.success(),
        "chromium {extra:?} failed ({status}): {}",
        String::from_utf8_lossy(&stderr)
    );
    stdout
}

/// (width, height, non-white pixels, distinct colours) of an 8-bit RGB(A) PNG.
fn png_stats(path: &Path) -> (u32, u32, usize, usize) {
    let file = std::fs::File::open(path).expect("screenshot");
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .expect("PNG header");
    let mut buf = vec![0; reader.output_buffer_size().expect("PNG size")];
    let info = reader.next_frame(&mut buf).expect("PNG frame");
    assert_eq!(info.bit_depth, png::BitDepth::Eight, "{info:?}");
    let step = match info.color_type {
        png::ColorType::Rgba => 4,
        png::ColorType::Rgb => 3,
        other => panic!("unexpected PNG colour type {other:?}"),
    };
    let mut colours = std::collections::HashSet::new();
    let mut non_white = 0;
    for px in buf[..info.buffer_size()].chunks_exact(step) {
        let rgb = (px[0], px[1], px[2]);
        if rgb.0 < 245 || rgb.1 < 245 || rgb.2 < 245 {
            non_white += 1;
        }
        colours.insert(rgb);
    }
    (info.width, info.height, non_white, colours.len())
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// The replica: serves HTTP on the primary's address and tries to reach OUTSIDE every 0.4 s.
fn replica_code(service: Ipv4Addr) -> String {
    format!(
        r#"
import http.server, socket, threading, time
srv = http.server.ThreadingHTTPServer(("{service}", 8080), http.server.SimpleHTTPRequestHandler)
threading.Thread(target=srv.serve_forever, daemon=True).start()
while True:
    try:
        s = socket.socket(); s.settimeout(0.2); s.connect(("{OUTSIDE}", 443))
    except OSError:
        pass
    time.sleep(0.4)
"#
    )
}

/// The primary's burner: busy for a duty cycle that rises and falls over ~12 s.
const BURNER: &str = r#"
import math, time
t0 = time.time()
while time.time() - t0 < 60:
    t = time.time() - t0
    duty = 0.35 + 0.3 * math.sin(t / 2.0)
    end = time.time() + 0.05 * duty
    while time.time() < end:
        pass
    time.sleep(0.05 * (1 - duty))
"#;

fn forecaster() -> Adaptive {
    Adaptive {
        max_horizon: 1,
        select_window: 12,
        calibration: 40,
        min_calibration: 8,
        median_windows: vec![3],
        ..Adaptive::default()
    }
}

#[test]
fn report_of_a_real_run_renders_in_headless_chromium() {
    require_privileges();
    chromium();
    let tag = unique_tag();
    let work = TestDir::new("report");

    // ---- the world: client ns -- primary ns (replica host ends) -- replica ns
    let client = TestNetns::new("c");
    let primary = TestNetns::new("p");
    let front = TestVeth::builder()
        .a_netns(&client)
        .b_netns(&primary)
        .roles("cl", "pr")
        .create();
    let service = front.b().ipv4.expect("ipv4");
    let app = TestCgroup::new("rapp");
    app.write(Controller::Cpu, "cpu.cfs_quota_us", "15000")
        .expect("initial quota 0.15 core");
    let www = TestDir::new("www");
    std::fs::write(www.path().join("index.html"), b"hello").expect("page");
    let mut server = Command::new("python3");
    server
        .args(["-m", "http.server", "--bind", &service.to_string(), "8080"])
        .arg("--directory")
        .arg(www.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _server = spawn_in(Some(&primary), Some(&app), server);
    let mut burner = Command::new("python3");
    burner.args(["-c", BURNER]);
    let _burner = spawn_in(None, Some(&app), burner);

    let code = replica_code(service);
    let spec = GroupSpec {
        name: tag.clone(),
        prefix: "shdt".into(),
        command: CommandSpec {
            argv: vec!["python3".into(), "-c".into(), code],
            ..CommandSpec::default()
        },
        replicas_min: 1,
        replicas_max: 1,
        cpu_cores: Some(0.5),
        memory_bytes: Some(256 << 20),
        writable_paths: Vec::new(),
        addresses: vec![(IpAddr::V4(service), IPV4_PREFIX)],
        allow: Allowlist {
            rules: Vec::new(),
            loopback: true,
        },
        restart: RestartPolicy::default(),
        replica_mac: None,
    };
    let mut group = ShadowGroup::start(spec, Some(primary.netns().try_clone().expect("netns")))
        .unwrap_or_else(|e| panic!("starting the shadow group: {}", chain(&e)));
    let (replica_if, replica_mac, replica_cg, replica_path) = {
        let r0 = group.replica(0).expect("replica 0");
        (
            r0.names().host_if.clone(),
            r0.replica_mac().octets(),
            r0.cgroup().id(),
            r0.cgroup().unified_path().display().to_string(),
        )
    };
    let mirror_spec = MirrorSpec {
        interface: front.b().name.clone(),
        address: None,
        direction: Default::default(),
        shadow_interface: replica_if,
        shadow_mac: replica_mac,
        rules: vec![Rule {
            dst: Cidr {
                addr: IpAddr::V4(service),
                prefix_len: 32,
            },
            ports: Ports { lo: 8080, hi: 8080 },
            proto: Some(Proto::Tcp),
        }],
        xdp: false,
        options: Default::default(),
    };
    let mirror = primary
        .run(move || Mirror::attach(mirror_spec))
        .unwrap_or_else(|e| panic!("mirror: {}", chain(&e)));
    let mut profiler =
        Profiler::start(HookPreference::Auto).unwrap_or_else(|e| panic!("profiler: {}", chain(&e)));
    let app_id = app.cgroup().id();
    let app_path = app.cgroup().unified_path().display().to_string();
    profiler.track(app_id).expect("track the primary");
    profiler.track(replica_cg).expect("track the replica");
    let addr = SocketAddr::new(IpAddr::V4(service), 8080);
    wait_for("the primary's server", Duration::from_secs(10), || {
        client.run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok())
    });

    // ---- the allocator on the primary's quota
    let state = TestDir::new("rstate");
    let mut cfg = AllocatorConfig::new(state.path(), 1.5, 4096.0 * 1024.0 * 1024.0);
    cfg.memory = None;
    if let Some(cpu) = cfg.cpu.as_mut() {
        cpu.cooldown_intervals = 1;
    }
    let mut alloc = Reconciler::new(
        backend::for_cgroup(app.cgroup()).unwrap_or_else(|e| panic!("backend: {}", chain(&e))),
        cfg,
    )
    .unwrap_or_else(|e| panic!("reconciler: {}", chain(&e)));
    let audit = alloc.audit().path().to_owned();

    // ---- the run: a client with a rising and falling request rate, one line per interval
    let stop = AtomicBool::new(false);
    let mut lines = Vec::new();
    let mut usage: Vec<f64> = Vec::new();
    let mut hits: Vec<bool> = Vec::new();
    let mut pending: Option<(f64, f64)> = None;
    let mut forecasts_made = 0;
    std::thread::scope(|s| {
        s.spawn(|| {
            client.run(|| {
                let t0 = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let t = t0.elapsed().as_secs_f64();
                    let rate = 30.0 + 60.0 * (0.5 - 0.5 * (t / 2.0).cos());
                    if let Ok(mut c) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                        let _ = c.set_read_timeout(Some(Duration::from_secs(1)));
                        let _ = c.write_all(b"GET / HTTP/1.0\r\n\r\n");
                        let _ = c.read_to_end(&mut Vec::new());
                    }
                    std::thread::sleep(Duration::from_secs_f64(1.0 / rate));
                }
            })
        });
        let start = Instant::now();
        let mut last_cpu: Option<(f64, f64)> = None;
        for i in 1..=TICKS {
            std::thread::sleep((start + TICK * i as u32).saturating_duration_since(Instant::now()));
            let t = start.elapsed().as_secs_f64();
            let acct = profiler.cgroup(app_id).expect("read").unwrap_or_default();
            let cpu_s = acct.cpu_ns as f64 / 1e9;
            if let Some((t0, c0)) = last_cpu {
                let cores = (cpu_s - c0) / (t - t0);
                if let Some((lo, hi)) = pending.take() {
                    hits.push(lo <= cores && cores <= hi);
                }
                usage.push(cores);
            }
            last_cpu = Some((t, cpu_s));
            // One-step-ahead forecast of the primary's cores, with a 90% interval.
            let mut fc = None;
            if let Ok(fitted) = forecaster().fit(&usage) {
                if let Ok(f) = fitted.predict(1, &[0.9]) {
                    if let Some(iv) = f.interval(0.9) {
                        let (p, lo, hi) = (f.point[0], iv.lower[0].max(0.0), iv.upper[0]);
                        pending = Some((lo, hi));
                        forecasts_made += 1;
                        let coverage = (hits.len() >= 5).then(|| {
                            hits.iter().filter(|h| **h).count() as f64 / hits.len() as f64
                        });
                        fc = Some(ForecastInput {
                            point: p,
                            lower: lo,
                            upper: hi,
                            level: 0.9,
                            coverage,
                            horizon_intervals: 1,
                            shrink_upper: None,
                        });
                    }
                }
            }
            alloc
                .step(&Forecasts {
                    cpu: fc,
                    memory: None,
                })
                .unwrap_or_else(|e| panic!("allocator step: {}", chain(&e)));
            let limits = alloc.backend().read_limits().expect("limits");
            let counters = mirror.counters().expect("mirror counters");
            let replica_acct = profiler
                .cgroup(replica_cg)
                .expect("read")
                .unwrap_or_default();
            let status = group.status();
            let refused: Vec<_> = group
                .replicas()
                .map(|r| serde_json::to_value(r.discard().refused().unwrap_or_default()).unwrap())
                .collect();
            let mut primary_entry = serde_json::json!({
                "cpu_seconds": cpu_s,
                "switches": acct.switches,
                "limits": { "cpu_cores": limits.cpu_cores, "memory_bytes": limits.memory_bytes },
            });
            if let Some(f) = fc {
                let mut cpu = serde_json::to_value(f).expect("forecast JSON");
                cpu["horizon_s"] = TICK.as_secs_f64().into();
                primary_entry["forecasts"] = serde_json::json!({ "cpu": cpu });
            }
            let line = serde_json::json!({
                "t_s": t,
                "time_ms": now_ms(),
                "mirror": counters,
                "cgroups": {
                    app_path.clone(): primary_entry,
                    replica_path.clone(): {
                        "cpu_seconds": replica_acct.cpu_ns as f64 / 1e9,
                        "switches": replica_acct.switches,
                    },
                },
                "shadow": status,
                "refused": refused,
                "cpu_hook": profiler.hook(),
            });
            lines.push(line.to_string());
        }
        stop.store(true, Ordering::Relaxed);
    });
    drop(alloc); // restores the original quota, logging it
    let input = work.path().join("run.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").expect("write the run");

    // The run itself did what the report is to show.
    let last: serde_json::Value = serde_json::from_str(lines.last().expect("lines")).expect("json");
    assert!(
        last["mirror"]["cloned"].as_u64().unwrap_or(0) > 50,
        "{last}"
    );
    assert!(
        last["shadow"][0]["discard"]["connect_refused"]
            .as_u64()
            .unwrap_or(0)
            >= 5,
        "{last}"
    );
    assert!(forecasts_made >= 10, "only {forecasts_made} forecasts");
    let audit_text = std::fs::read_to_string(&audit).expect("audit log");
    assert!(
        audit_text.contains("\"resource\":\"cpu\"") && audit_text.contains("\"applied\":true"),
        "no applied CPU decision in the audit log: {audit_text}"
    );

    // ---- the report
    let out = work.path().join("report");
    let index = shadow_agent::report::generate(&input, Some(&audit), &out)
        .unwrap_or_else(|e| panic!("report: {}", chain(&e)));
    let html = std::fs::read_to_string(&index).expect("index.html");
    assert!(!html.contains("<script"), "the page needs no script");
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "the page loads nothing external"
    );

    let url = format!("file://{}", index.display());
    let profile = TestDir::new("chromium");
    let dom = String::from_utf8(run_chromium(profile.path(), &["--dump-dom"], &url))
        .expect("DOM is UTF-8");
    let svgs = dom.matches("<svg").count();
    // Primary CPU, replica CPU, mirror rates, discarded packets, refused connects.
    assert!(svgs >= 5, "{svgs} <svg> elements in the DOM");
    for must in [
        format!("cgroup {app_path}"),
        format!("cgroup {replica_path}"),
        "id=\"counters\"".to_string(),
        "mirror.cloned".to_string(),
        "forecast interval 90%".to_string(),
        "decision applied".to_string(),
        "Mirror: packets per second".to_string(),
        "refused connects".to_string(),
        OUTSIDE.to_string(),
    ] {
        assert!(dom.contains(&must), "the DOM lacks {must:?}");
    }
    // The replica's section says it has no forecasts rather than drawing any.
    assert!(dom.contains("No cpu forecasts in the input"), "{dom}");

    let shot = work.path().join("report.png");
    let profile2 = TestDir::new("chromium");
    run_chromium(
        profile2.path(),
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1200,2400",
        ],
        &url,
    );
    let (w, h, non_white, colours) = png_stats(&shot);
    eprintln!(
        "report {} ({} bytes); screenshot {w}x{h}: {non_white} non-white pixels, {colours} colours",
        index.display(),
        html.len()
    );
    if let Ok(keep) = std::env::var("SHADOW_REPORT_KEEP") {
        let keep = PathBuf::from(keep);
        std::fs::create_dir_all(&keep).expect("keep dir");
        std::fs::copy(&shot, keep.join("report.png")).expect("keep screenshot");
        std::fs::copy(&index, keep.join("index.html")).expect("keep page");
    }
    assert_eq!((w, h), (1200, 2400));
    let total = (w * h) as usize;
    assert!(
        non_white > total / 30,
        "the screenshot is nearly blank: {non_white} of {total} pixels are not white"
    );
    assert!(colours >= 12, "only {colours} distinct colours");
}
