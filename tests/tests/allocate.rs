//! The allocator's v1 backend and reconcile loop on the real kernel: limits written to a test
//! cgroup and read back from the kernel's files, a CPU-bound process throttled under a low
//! quota and the reactive policy stepping the quota up, and the original limits restored on
//! drop and after a simulated crash.

use std::process::Command;
use std::time::Duration;

use shadow_agent::allocate::backend::{self, Backend};
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
    }
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

    b.set_cpu(Some(0.3), before.cpu_period_us).expect("set cpu");
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

    b.set_cpu(None, before.cpu_period_us).expect("unset cpu");
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
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(600));
        let rep = r.step(&Forecasts::default()).expect("step");
        assert!(rep.backing_off.is_none());
        quotas.push(
            kernel(&cg, Controller::Cpu, "cpu.cfs_quota_us")
                .parse()
                .unwrap(),
        );
    }
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
    let final_quota = *quotas.last().unwrap();
    assert!(
        final_quota >= 30_000,
        "six throttled intervals should step 0.1 core up by 25% each (to ~0.38): {quotas:?}"
    );
    // Every change is audited, with the throttling signal as the reason.
    let audit = r.audit().read_all().expect("audit");
    let cpu: Vec<_> = audit
        .iter()
        .filter(|e| e.resource == "cpu" && e.applied)
        .collect();
    assert!(cpu.len() >= 4, "{audit:?}");
    assert!(cpu.iter().all(|e| matches!(&e.reason,
        Reason::Reactive { signals } if signals.iter().any(|s| matches!(s, Signal::Throttled { .. })))));

    drop(r);
    assert_eq!(
        kernel(&cg, Controller::Cpu, "cpu.cfs_quota_us"),
        "10000",
        "the original quota must be restored on drop"
    );
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
