//! The allocator's v1 backend and reconcile loop on the real kernel: limits written to a test
//! cgroup and read back from the kernel's files, a CPU-bound process throttled under a low
//! quota and the reactive policy stepping the quota up, a light process under a whole core
//! scaled in by the reactive scale-in, and the original limits restored on drop and after a
//! simulated crash.

use std::process::Command;
use std::time::Duration;

use shadow_agent::allocate::backend::{self, Backend};
use shadow_agent::allocate::scale::Direction;
use shadow_agent::allocate::{
    AllocatorConfig, ForecastInput, Forecasts, Reason, Reconciler, Resource, Signal,
};
use shadow_agent::sys::cgroup::{CgroupLayout, Controller};
use shadow_tests::harness::{chain, host_cgroup_layout, spawn_in, TestCgroup, TestDir};

const MIB: u64 = 1024 * 1024;

/// CPU-heavy tests run one at a time within this binary (two cores, shared).
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn kernel(cg: &TestCgroup, c: Controller, file: &str) -> String {
    cg.read(c, file)
        .unwrap_or_else(|e| panic!("reading {file}: {}", chain(&e)))
        .trim()
        .to_owned()
}

fn require_hybrid() {
    // The v1 backend is what runs live here; a pure-v2 host would take the v2 path instead.
    assert!(
        matches!(host_cgroup_layout(), CgroupLayout::Hybrid { .. }),
        "these tests exercise the v1 backend on a hybrid host; this host is pure cgroup v2"
    );
}

fn backend_of(cg: &TestCgroup) -> Box<dyn Backend + Send> {
    backend::for_cgroup(cg).unwrap_or_else(|e| panic!("v1 backend: {}", chain(&e)))
}

fn config(state: &TestDir) -> AllocatorConfig {
    let mut cfg = AllocatorConfig::new(state.path(), 2.0, 4096.0 * MIB as f64);
    for rails in [cfg.cpu.as_mut(), cfg.memory.as_mut()]
        .into_iter()
        .flatten()
    {
        rails.cooldown_intervals = 0;
    }
    cfg
}

fn confident(upper: f64) -> ForecastInput {
    ForecastInput {
        point: upper * 0.95,
        lower: upper * 0.9,
        upper,
        level: 0.9,
        coverage: Some(0.9),
        horizon_intervals: 6,
        shrink_upper: None,
    }
}

/// The group's v1 CPU quota (us).
fn quota_us(cg: &TestCgroup) -> u64 {
    kernel(cg, Controller::Cpu, "cpu.cfs_quota_us")
        .parse()
        .expect("cpu.cfs_quota_us is a number")
}

/// `n` reconcile steps without forecasts, `pause` apart, none backing off; the quota after
/// each.
fn step_quotas<B: Backend>(
    r: &mut Reconciler<B>,
    cg: &TestCgroup,
    n: usize,
    pause: Duration,
) -> Vec<u64> {
    (0..n)
        .map(|_| {
            std::thread::sleep(pause);
            let rep = r.step(&Forecasts::default()).expect("step");
            assert!(rep.backing_off.is_none());
            quota_us(cg)
        })
        .collect()
}

#[test]
fn v1_limits_are_written_and_read_back_from_the_kernel() {
    require_hybrid();
    let cg = TestCgroup::new("al");
    let b = backend_of(&cg);
    assert_eq!(b.kind(), backend::BackendKind::V1);
    let before = b.read_limits().expect("limits");
    assert_eq!(before.cpu_cores, None, "a new group has no quota");
    assert_eq!(before.memory_bytes, None, "a new group has no memory limit");

    b.set_cpu(Some(0.3), before.cpu_period_us, None)
        .expect("set cpu");
    assert_eq!(kernel(&cg, Controller::Cpu, "cpu.cfs_quota_us"), "30000");
    assert_eq!(kernel(&cg, Controller::Cpu, "cpu.cfs_period_us"), "100000");
    b.set_memory(Some(256 * MIB)).expect("set memory");
    assert_eq!(
        kernel(&cg, Controller::Memory, "memory.limit_in_bytes"),
        (256 * MIB).to_string()
    );
    b.set_cpuset(&"0".parse().unwrap()).expect("set cpuset");
    assert_eq!(kernel(&cg, Controller::Cpuset, "cpuset.cpus"), "0");

    let after = b.read_limits().expect("limits");
    assert_eq!(after.cpu_cores, Some(0.3));
    assert_eq!(after.memory_bytes, Some(256 * MIB));
    assert_eq!(after.cpuset.map(|c| c.to_string()), Some("0".to_owned()));
    let avail = b.available_cpus().expect("available").expect("cpuset");
    assert!(avail.contains(0), "{avail}");

    b.set_cpu(None, before.cpu_period_us, None)
        .expect("unset cpu");
    b.set_memory(None).expect("unset memory");
    assert_eq!(kernel(&cg, Controller::Cpu, "cpu.cfs_quota_us"), "-1");
    let l = b.read_limits().expect("limits");
    assert_eq!((l.cpu_cores, l.memory_bytes), (None, None));
}

#[test]
fn throttled_process_gets_its_quota_stepped_up_and_the_original_back_on_drop() {
    require_hybrid();
    let _serial = heavy();
    let cg = TestCgroup::new("at");
    let state = TestDir::new("as");
    // The hand-set limit: 0.1 core.
    cg.write(Controller::Cpu, "cpu.cfs_quota_us", "10000")
        .expect("quota");
    let mut burner = Command::new("python3");
    burner.args(["-c", "while True: pass"]);
    let _child = spawn_in(None, Some(&cg), burner);

    let mut cfg = config(&state);
    cfg.memory = None;
    let mut r = Reconciler::new(backend_of(&cg), cfg).expect("reconciler");
    let first = r.backend().read_sample().expect("sample");
    r.step(&Forecasts::default()).expect("first step");
    let mut quotas = vec![10_000u64];
    quotas.extend(step_quotas(&mut r, &cg, 6, Duration::from_millis(600)));
    let last = r.backend().read_sample().expect("sample");
    eprintln!(
        "nr_throttled {} -> {}, nr_periods {} -> {}, throttled {} us -> {} us; quota (us) {quotas:?}",
        first.nr_throttled,
        last.nr_throttled,
        first.nr_periods,
        last.nr_periods,
        first.throttled_us,
        last.throttled_us
    );
    assert!(
        last.nr_throttled > first.nr_throttled + 5,
        "the burner under 0.1 core was not throttled: {} -> {}",
        first.nr_throttled,
        last.nr_throttled
    );
    assert!(
        quotas.windows(2).all(|w| w[1] >= w[0]),
        "the quota went down: {quotas:?}"
    );
    // The burner wants a whole core: each throttled interval asks for what it used plus
    // what the quota held back, +100% per interval at most (the max step rail), so it
    // is there within the six steps (25% steps would have reached ~0.38 core).
    let final_quota = *quotas.last().unwrap();
    assert!(
        final_quota >= 80_000,
        "six steps should take 0.1 core to the burner's whole core: {quotas:?}"
    );
    // Every change is audited as reactive; the first cites the throttling and the demand it
    // held back (most of a core, from 0.1 core).
    let audit = r.audit().read_all().expect("audit");
    let cpu: Vec<_> = audit
        .iter()
        .filter(|e| e.resource == "cpu" && e.applied)
        .collect();
    assert!(cpu.len() >= 3, "{audit:?}");
    assert!(
        cpu.iter()
            .all(|e| matches!(&e.reason, Reason::Reactive { .. })),
        "{cpu:?}"
    );
    assert!(
        matches!(&cpu[0].reason, Reason::Reactive { signals } if signals.iter().any(|s| matches!(
            s,
            Signal::Throttled { held_back: Some(h), .. } if *h > 0.3
        ))),
        "{:?}",
        cpu[0]
    );

    drop(r);
    assert_eq!(
        kernel(&cg, Controller::Cpu, "cpu.cfs_quota_us"),
        "10000",
        "the original quota must be restored on drop"
    );
}

#[test]
fn light_process_gets_its_quota_scaled_in_after_a_streak_and_the_original_back_on_drop() {
    require_hybrid();
    let _serial = heavy();
    let cg = TestCgroup::new("ai");
    let state = TestDir::new("ai");
    // The hand-set limit: a whole core, for a process that needs about 5% of one.
    cg.write(Controller::Cpu, "cpu.cfs_quota_us", "100000")
        .expect("quota");
    let mut light = Command::new("python3");
    light.args([
        "-c",
        "import time\nwhile True:\n t = time.monotonic()\n while time.monotonic() - t < 0.005: pass\n time.sleep(0.095)",
    ]);
    let _child = spawn_in(None, Some(&cg), light);

    let mut cfg = config(&state);
    cfg.memory = None;
    if let Some(cpu) = cfg.cpu.as_mut() {
        cpu.scale_in_below = 0.5;
        cpu.scale_in_after_intervals = 3;
    }
    let mut r = Reconciler::new(backend_of(&cg), cfg).expect("reconciler");
    r.step(&Forecasts::default()).expect("first step");
    let mut quotas = vec![100_000u64];
    quotas.extend(step_quotas(&mut r, &cg, 20, Duration::from_millis(300)));
    eprintln!("quota (us) {quotas:?}");
    // The first three intervals are the streak: nothing changes yet.
    assert_eq!(quotas[..3], [100_000; 3], "{quotas:?}");
    let last = *quotas.last().unwrap();
    assert!(
        last < 40_000,
        "a core for ~5% of one should come down (20% per interval after 3): {quotas:?}"
    );
    let audit = r.audit().read_all().expect("audit");
    let scale_ins: Vec<_> = audit
        .iter()
        .filter(|e| e.resource == "cpu" && e.applied)
        .filter_map(|e| match &e.reason {
            Reason::ScaleIn { peak_usage, .. } => Some((e, *peak_usage)),
            _ => None,
        })
        .collect();
    assert!(scale_ins.len() >= 4, "{audit:?}");
    for (e, peak) in &scale_ins {
        // Never below the recent peak over the middle of the bands (0.7): 30% spare.
        let new = e.new.as_f64().expect("new limit");
        assert!(new >= peak / 0.7 - 1e-6, "{e:?}");
        assert!(*peak < 0.5, "{e:?}");
    }

    drop(r);
    assert_eq!(
        kernel(&cg, Controller::Cpu, "cpu.cfs_quota_us"),
        "100000",
        "the original quota must be restored on drop"
    );
}

/// The group's v1 CFS burst (us).
fn burst_us(cg: &TestCgroup) -> u64 {
    kernel(cg, Controller::Cpu, "cpu.cfs_burst_us")
        .parse()
        .expect("cpu.cfs_burst_us is a number")
}

#[test]
fn a_cfs_burst_follows_the_quota_in_an_order_the_kernel_accepts_and_is_restored() {
    require_hybrid();
    let cg = TestCgroup::new("ab");
    let state = TestDir::new("abs");
    // An operator's quota of 0.5 core with a burst of 0.4 core.
    cg.write(Controller::Cpu, "cpu.cfs_quota_us", "50000")
        .expect("quota");
    cg.write(Controller::Cpu, "cpu.cfs_burst_us", "40000")
        .expect("burst");
    let b = backend_of(&cg);
    assert_eq!(b.read_limits().expect("limits").cpu_burst_us, Some(40_000));
    // The kernel refuses a quota below the burst (EINVAL); the backend lowers the burst first.
    assert!(cg
        .write(Controller::Cpu, "cpu.cfs_quota_us", "30000")
        .is_err());
    b.set_cpu(Some(0.3), 100_000, None)
        .expect("a quota below the burst");
    assert_eq!((quota_us(&cg), burst_us(&cg)), (30_000, 30_000));
    b.set_cpu(Some(0.8), 100_000, Some(0.5))
        .expect("up, half as burst");
    assert_eq!((quota_us(&cg), burst_us(&cg)), (80_000, 40_000));
    b.set_cpu(Some(0.2), 100_000, Some(1.0))
        .expect("down, all as burst");
    assert_eq!((quota_us(&cg), burst_us(&cg)), (20_000, 20_000));
    b.set_cpu(Some(0.5), 100_000, None)
        .expect("back to 0.5, burst kept");
    b.set_cpu(None, 100_000, None).expect("unlimited");
    assert_eq!(kernel(&cg, Controller::Cpu, "cpu.cfs_quota_us"), "-1");
    b.set_cpu(Some(0.5), 100_000, None).expect("0.5 again");
    cg.write(Controller::Cpu, "cpu.cfs_burst_us", "40000")
        .expect("burst");

    // The allocator with `cpu.burst = 1.0`: a forecast shrink to 0.3 core takes the burst
    // down with it, audited; the restore passes through states the kernel accepts (the burst
    // of 0.4 core only fits once the quota of 0.5 is back) and ends at the operator's values.
    let mut cfg = config(&state);
    cfg.memory = None;
    cfg.cpu_burst = Some(1.0);
    if let Some(c) = cfg.cpu.as_mut() {
        c.shrink_hold_intervals = 1;
        c.max_step_down = 0.5;
    }
    let audit = state.path().join("audit.jsonl");
    let mut r = Reconciler::new(backend_of(&cg), cfg).expect("reconciler");
    let rep = r
        .step(&Forecasts {
            cpu: Some(confident(0.26)),
            memory: None,
        })
        .expect("step");
    assert_eq!(rep.applied, vec![Resource::Cpu]);
    // 0.26 × 1.15 = 0.299 core.
    assert_eq!((quota_us(&cg), burst_us(&cg)), (29_900, 29_900));
    let entries = shadow_agent::allocate::AuditLog::new(&audit)
        .read_all()
        .expect("audit");
    assert_eq!(
        entries.last().expect("an entry").burst_us,
        Some([40_000, 29_900])
    );
    let report = r.restore().expect("restore");
    assert!(report.failed.is_empty(), "{report:?}");
    assert_eq!((quota_us(&cg), burst_us(&cg)), (50_000, 40_000));
}

#[test]
fn crashed_allocator_is_undone_by_the_next_one() {
    require_hybrid();
    let cg = TestCgroup::new("ac");
    let state = TestDir::new("as");
    cg.write(Controller::Cpu, "cpu.cfs_quota_us", "50000")
        .expect("quota");
    cg.write(
        Controller::Memory,
        "memory.limit_in_bytes",
        &(128 * MIB).to_string(),
    )
    .expect("memory");

    let mut r = Reconciler::new(backend_of(&cg), config(&state)).expect("reconciler");
    let rep = r
        .step(&Forecasts {
            cpu: Some(confident(0.8)),
            memory: Some(confident(200.0 * MIB as f64)),
        })
        .expect("step");
    assert_eq!(rep.applied, vec![Resource::Cpu, Resource::Memory]);
    // 0.8 × 1.15 = 0.92 core; memory capped at +50% per interval: 192 MiB.
    assert_eq!(kernel(&cg, Controller::Cpu, "cpu.cfs_quota_us"), "92000");
    assert_eq!(
        kernel(&cg, Controller::Memory, "memory.limit_in_bytes"),
        (192 * MIB).to_string()
    );
    let record = r.record_path().to_owned();
    assert!(record.is_file(), "no record at {}", record.display());

    // Crash: the limits stay, so does the record.
    r.abandon();
    assert_eq!(kernel(&cg, Controller::Cpu, "cpu.cfs_quota_us"), "92000");
    assert!(record.is_file());

    let r2 = Reconciler::new(backend_of(&cg), config(&state)).expect("restart");
    let rec = r2.recovered().expect("the restart found the record");
    assert!(rec.failed.is_empty(), "{rec:?}");
    assert_eq!(kernel(&cg, Controller::Cpu, "cpu.cfs_quota_us"), "50000");
    assert_eq!(
        kernel(&cg, Controller::Memory, "memory.limit_in_bytes"),
        (128 * MIB).to_string()
    );
    assert!(!record.exists());
}

#[test]
fn dry_run_leaves_the_kernel_files_alone() {
    require_hybrid();
    let cg = TestCgroup::new("ad");
    let state = TestDir::new("as");
    cg.write(Controller::Cpu, "cpu.cfs_quota_us", "50000")
        .expect("quota");
    let mut cfg = config(&state);
    cfg.dry_run = true;
    let mut r = Reconciler::new(backend_of(&cg), cfg).expect("reconciler");
    let rep = r
        .step(&Forecasts {
            cpu: Some(confident(0.8)),
            memory: None,
        })
        .expect("step");
    assert!(rep.applied.is_empty());
    assert!(rep.decisions.iter().any(|d| d.changes()));
    assert_eq!(kernel(&cg, Controller::Cpu, "cpu.cfs_quota_us"), "50000");
    let audit = r.audit().read_all().expect("audit");
    assert!(audit
        .iter()
        .any(|e| e.dry_run && !e.applied && e.resource == "cpu"));
}

/// Issue 8, scaling events, live: a burner whose demand ramps up in a test cgroup, the
/// allocator of `run` (`LiveAllocator`, dry run, CPU capacity 0.5 cores) and a real HTTP
/// receiver (Python's `http.server`) on loopback. The scale-out event must come while the
/// measured usage is still within the capacity, and reach the receiver as the same JSON.
#[test]
fn scale_out_event_reaches_a_webhook_before_the_shortfall() {
    use std::io::{BufRead as _, BufReader};
    use std::process::Stdio;
    require_hybrid();
    let _serial = heavy();
    let cg = TestCgroup::new("aw");
    let state = TestDir::new("aw");
    let received = state.path().join("received.jsonl");

    // The receiver: logs every POST body as a line, answers 204; prints its port.
    let mut rx = Command::new("python3");
    rx.args([
        "-c",
        r#"
import http.server, sys
out = sys.argv[1]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with open(out, "ab") as f:
            f.write(body + b"\n")
        self.send_response(204)
        self.end_headers()
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#,
    ])
    .arg(&received)
    .stdout(Stdio::piped());
    let mut receiver = spawn_in(None, None, rx);
    let mut port = String::new();
    BufReader::new(receiver.child_mut().stdout.take().expect("receiver stdout"))
        .read_line(&mut port)
        .expect("receiver port");
    let port: u16 = port.trim().parse().expect("a port number");

    // Demand: 0.1 core for 20 s (the forecaster's history), then +0.7 core over 40 s.
    let mut burner = Command::new("python3");
    burner.args([
        "-c",
        r#"
import time
t0 = time.monotonic()
while True:
    t = time.monotonic() - t0
    d = 0.1 if t < 20 else min(0.9, 0.1 + 0.7 * (t - 20) / 40)
    s = time.monotonic()
    while time.monotonic() - s < d * 0.01:
        pass
    time.sleep((1 - d) * 0.01)
"#,
    ]);
    let _burner = spawn_in(None, Some(&cg), burner);

    let toml = format!(
        r#"
cgroups = ["{name}"]
dry_run = true
state_dir = "{state}"
window = 100
lead = 4
[cpu]
max = 0.5
[memory]
enabled = false
[scale]
out_hold_intervals = 2
webhook = "http://127.0.0.1:{port}/scale"
"#,
        name = cg.name(),
        state = state.path().display()
    );
    let spec = toml::from_str::<shadow_agent::allocate::live::RawAllocate>(&toml)
        .expect("toml")
        .validate()
        .expect("valid [allocate]");
    let mut alloc = shadow_agent::allocate::live::LiveAllocator::start(&spec, None).expect("start");
    let mut event = None;
    let mut usage_at_event = None;
    let mut peak_usage: f64 = 0.0;
    for _ in 0..300 {
        std::thread::sleep(Duration::from_millis(250));
        let summary = alloc.tick();
        let cores = summary[cg.name()]["cpu_cores"].as_f64();
        peak_usage = peak_usage.max(cores.unwrap_or(0.0));
        let evs = alloc.take_events();
        if let Some(ev) = evs.into_iter().find(|e| e.direction == Direction::Out) {
            usage_at_event = cores;
            event = Some(ev);
            break;
        }
    }
    let ev = event.unwrap_or_else(|| {
        panic!("no scale-out event; peak usage {peak_usage:.2} cores against a capacity of 0.5")
    });
    eprintln!("scale-out event: {}", serde_json::to_string(&ev).unwrap());
    let usage = usage_at_event.expect("usage at the event");
    assert!(
        usage <= 0.5,
        "the event came after the shortfall: usage {usage:.3} cores > capacity 0.5"
    );
    assert!(ev.need > 0.5 && ev.capacity == 0.5 && !ev.acted, "{ev:?}");
    assert_eq!(ev.resource, Resource::Cpu);
    assert_eq!(ev.lead_intervals, 4);
    assert!(ev.lead_s > 0.5, "{ev:?}");
    // The same event reaches the receiver.
    let mut got = String::new();
    for _ in 0..50 {
        got = std::fs::read_to_string(&received).unwrap_or_default();
        if !got.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let posted: serde_json::Value =
        serde_json::from_str(got.lines().next().expect("a POST received")).expect("JSON body");
    assert_eq!(posted["event"], "scale");
    assert_eq!(posted["direction"], "out");
    assert_eq!(posted["cgroup"], cg.name());
    assert_eq!(posted["need"].as_f64(), Some(ev.need));
    let stats = alloc.webhook().expect("webhook").stats();
    assert_eq!(
        stats.sent.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "{stats:?}"
    );
    // Dry run: the kernel's quota was never touched.
    assert_eq!(kernel(&cg, Controller::Cpu, "cpu.cfs_quota_us"), "-1");
}
