//! The reconciler against a directory that mimics a pure cgroup v2 hierarchy.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use super::backend::{Backend, V2Backend};
use super::cpuset::CpuSet;
use super::policy::{ForecastInput, Rail, Reason, Resource};
use super::reconcile::{AllocatorConfig, Forecasts, Reconciler};
use super::AllocateError;
use crate::sys::cgroup::CgroupRoot;

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// A mimic cgroup2 root with one group `web`, removed on drop.
struct Mimic {
    root: PathBuf,
}

impl Mimic {
    fn new(tag: &str) -> Mimic {
        static N: AtomicU32 = AtomicU32::new(0);
        let root = std::env::temp_dir().join(format!(
            "shadow-alloc-test-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&root);
        let m = Mimic { root };
        m.put("cgroup.controllers", "cpuset cpu io memory pids\n");
        m.put("cpuset.cpus.effective", "0-3\n");
        m.put("web/cgroup.controllers", "cpuset cpu memory\n");
        m.put("web/cgroup.procs", "");
        m.put("web/cpu.max", "max 100000\n");
        m.put("web/memory.max", "max\n");
        m.put("web/memory.high", "max\n");
        m.put("web/memory.current", "536870912\n");
        m.put("web/cpuset.cpus", "\n");
        m.cpu_stat(0, 0, 0);
        m.put(
            "web/memory.events",
            "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
        );
        for f in ["cpu.pressure", "memory.pressure"] {
            m.put(
                &format!("web/{f}"),
                "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n\
                 full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
            );
        }
        m
    }

    fn put(&self, rel: &str, text: &str) {
        let p = self.root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    fn get(&self, rel: &str) -> String {
        fs::read_to_string(self.root.join(rel))
            .unwrap()
            .trim()
            .to_owned()
    }

    fn cpu_stat(&self, periods: u64, throttled: u64, usage_usec: u64) {
        self.put(
            "web/cpu.stat",
            &format!(
                "usage_usec {usage_usec}\nuser_usec 0\nsystem_usec 0\nnr_periods {periods}\n\
                 nr_throttled {throttled}\nthrottled_usec {}\n",
                throttled * 100
            ),
        );
    }

    fn backend(&self) -> V2Backend {
        let root = CgroupRoot::detect(&self.root).unwrap();
        V2Backend::new(&root, "web").unwrap()
    }

    fn state(&self) -> PathBuf {
        self.root.join("state")
    }

    fn config(&self) -> AllocatorConfig {
        let mut cfg = AllocatorConfig::new(self.state(), 4.0, 16.0 * GIB);
        if let Some(c) = cfg.cpu.as_mut() {
            c.cooldown_intervals = 0;
        }
        if let Some(m) = cfg.memory.as_mut() {
            m.cooldown_intervals = 0;
        }
        cfg
    }
}

impl Drop for Mimic {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
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

fn record_exists(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|d| {
        d.filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with("original-"))
    })
}

#[test]
fn v2_reads_the_mimic_files() {
    let m = Mimic::new("read");
    m.put("web/cpu.max", "150000 100000\n");
    m.put("web/memory.max", "1073741824\n");
    m.put("web/cpuset.cpus", "0-1\n");
    let b = m.backend();
    let l = b.read_limits().unwrap();
    assert_eq!(l.cpu_cores, Some(1.5));
    assert_eq!(l.cpu_period_us, 100_000);
    assert_eq!(l.memory_bytes, Some(1 << 30));
    assert_eq!(l.cpuset.unwrap().to_string(), "0-1");
    assert_eq!(b.available_cpus().unwrap().unwrap().to_string(), "0-3");
    m.cpu_stat(10, 4, 777);
    let s = b.read_sample().unwrap();
    assert_eq!((s.nr_periods, s.nr_throttled, s.throttled_us), (10, 4, 400));
    assert_eq!(s.cpu_usage_us, Some(777));
    assert_eq!(s.memory_usage, Some(1 << 29));
    assert!(s.psi_cpu.is_some() && s.psi_memory.is_some());
}

#[test]
fn reactive_throttling_steps_the_quota_up_and_records_originals() {
    let m = Mimic::new("reactive");
    m.put("web/cpu.max", "50000 100000\n");
    let mut r = Reconciler::new(m.backend(), m.config()).unwrap();
    // First step: no earlier sample, so no throttling growth is known yet.
    let rep = r.step(&Forecasts::default()).unwrap();
    assert!(rep.applied.is_empty(), "{rep:?}");
    assert!(!record_exists(&m.state()));
    // 100 periods, 60 of them throttled (6 ms in all); 50 ms of CPU. At least 100 ms apart,
    // so usage plus the held-back demand (at most 0.56 core) is below one reactive step.
    std::thread::sleep(std::time::Duration::from_millis(100));
    m.cpu_stat(100, 60, 50_000);
    let rep = r.step(&Forecasts::default()).unwrap();
    assert_eq!(rep.applied, vec![Resource::Cpu]);
    assert_eq!(m.get("web/cpu.max"), "62500 100000");
    // The originals were recorded before the change.
    assert!(record_exists(&m.state()));
    let audit = r.audit().read_all().unwrap();
    let e = audit.iter().find(|e| e.resource == "cpu").unwrap();
    assert!(e.applied);
    assert_eq!(e.old, serde_json::json!(0.5));
    assert_eq!(e.new, serde_json::json!(0.625));
    match &e.reason {
        Reason::Reactive { signals } => assert!(!signals.is_empty()),
        other => panic!("{other:?}"),
    }
    // Drop restores the original and removes the record.
    drop(r);
    assert_eq!(m.get("web/cpu.max"), "50000 100000");
    assert!(!record_exists(&m.state()));
}

#[test]
fn confident_forecast_preallocates_and_the_step_is_idempotent() {
    let m = Mimic::new("forecast");
    m.put("web/cpu.max", "100000 100000\n");
    m.put("web/memory.max", "1073741824\n");
    m.put("web/memory.high", "1020054732\n");
    let mut r = Reconciler::new(m.backend(), m.config()).unwrap();
    let f = Forecasts {
        // The bound over a shrink's cover is audited; a growth does not use it.
        cpu: Some(ForecastInput {
            shrink_upper: Some(1.7),
            ..confident(1.6)
        }),
        memory: Some(confident(1.2 * GIB)),
    };
    let rep = r.step(&f).unwrap();
    assert_eq!(rep.applied, vec![Resource::Cpu, Resource::Memory]);
    // 1.6 cores × 1.15 = 1.84.
    assert_eq!(m.get("web/cpu.max"), "184000 100000");
    // 1.2 GiB × 1.15 = 1.38 GiB, page aligned; memory.high at 95% of it.
    let max: u64 = m.get("web/memory.max").parse().unwrap();
    assert_eq!(max % 4096, 0);
    assert!((max as f64 - 1.38 * GIB).abs() < 4096.0, "{max}");
    let high: u64 = m.get("web/memory.high").parse().unwrap();
    assert_eq!(high, (max as f64 * 0.95) as u64);
    let audit = r.audit().read_all().unwrap();
    let e = audit.iter().find(|e| e.resource == "cpu").unwrap();
    assert_eq!(e.reason, Reason::Forecast);
    assert_eq!(e.interval, Some([1.6 * 0.9, 1.6]));
    assert_eq!(e.shrink_upper, Some(1.7));
    assert_eq!(e.level, Some(0.9));
    assert!(e.confidence.unwrap().confident);

    // Same inputs again: actual == desired, nothing is written, nothing audited.
    let before = audit.len();
    for _ in 0..3 {
        let rep = r.step(&f).unwrap();
        assert!(rep.applied.is_empty(), "{rep:?}");
        assert!(rep.decisions.iter().all(|d| !d.changes()));
    }
    assert_eq!(r.audit().read_all().unwrap().len(), before);
    drop(r);
    assert_eq!(m.get("web/cpu.max"), "100000 100000");
    assert_eq!(m.get("web/memory.max"), "1073741824");
    assert_eq!(m.get("web/memory.high"), "1020054732");
}

#[test]
fn a_run_that_changes_nothing_leaves_an_empty_audit_log_to_report_on() {
    let m = Mimic::new("quiet");
    m.put("web/cpu.max", "100000 100000\n");
    let mut r = Reconciler::new(m.backend(), m.config()).unwrap();
    // No forecast and no pressure: nothing to decide.
    for _ in 0..3 {
        let rep = r.step(&Forecasts::default()).unwrap();
        assert!(rep.applied.is_empty(), "{rep:?}");
    }
    let path = r.audit().path().to_owned();
    drop(r);
    assert_eq!(fs::read_to_string(&path).unwrap(), "");
    let decisions = crate::report::read_audit(&path).unwrap();
    assert!(decisions.is_empty());

    // A second start appends to what is there rather than truncating it.
    fs::write(&path, "kept\n").unwrap();
    drop(Reconciler::new(m.backend(), m.config()).unwrap());
    assert_eq!(fs::read_to_string(&path).unwrap(), "kept\n");

    // An audit log that cannot be made is refused at start, naming the path.
    let mut cfg = m.config();
    let bad = m.root.join("web/cpu.max/audit.jsonl");
    cfg.audit_log = Some(bad.clone());
    let err = Reconciler::new(m.backend(), cfg).unwrap_err().to_string();
    assert!(
        err.contains(&*m.root.join("web/cpu.max").to_string_lossy()),
        "{err}"
    );
    assert_eq!(m.get("web/cpu.max"), "100000 100000");
}

#[test]
fn dry_run_writes_nothing_but_audits_what_it_would_do() {
    let m = Mimic::new("dry");
    m.put("web/cpu.max", "100000 100000\n");
    let mut cfg = m.config();
    cfg.dry_run = true;
    let mut r = Reconciler::new(m.backend(), cfg).unwrap();
    let rep = r
        .step(&Forecasts {
            cpu: Some(confident(1.6)),
            memory: None,
        })
        .unwrap();
    assert!(rep.dry_run && rep.applied.is_empty());
    assert!(rep.decisions[0].changes());
    assert_eq!(m.get("web/cpu.max"), "100000 100000");
    assert!(!record_exists(&m.state()));
    let audit = r.audit().read_all().unwrap();
    assert_eq!(audit.len(), 1);
    assert!(audit[0].dry_run && !audit[0].applied);
    assert_eq!(audit[0].new, serde_json::json!(1.84));
}

#[test]
fn originals_survive_a_crash_and_are_restored_at_the_next_start() {
    let m = Mimic::new("crash");
    m.put("web/cpu.max", "50000 100000\n");
    m.put("web/memory.max", "1073741824\n");
    let mut r = Reconciler::new(m.backend(), m.config()).unwrap();
    r.step(&Forecasts {
        cpu: Some(confident(1.0)),
        memory: Some(confident(1.2 * GIB)),
    })
    .unwrap();
    assert_eq!(m.get("web/cpu.max"), "100000 100000"); // capped at +100% per interval
    assert_ne!(m.get("web/memory.max"), "1073741824");
    // A crash: no restore.
    r.abandon();
    assert_eq!(m.get("web/cpu.max"), "100000 100000");
    assert!(record_exists(&m.state()));
    // The next agent finds the record and restores before doing anything else.
    let r2 = Reconciler::new(m.backend(), m.config()).unwrap();
    let rec = r2.recovered().expect("a recovery");
    assert_eq!(rec.restored.len(), 3, "{rec:?}"); // cpu.max, memory.max, memory.high
    assert!(rec.failed.is_empty());
    assert_eq!(m.get("web/cpu.max"), "50000 100000");
    assert_eq!(m.get("web/memory.max"), "1073741824");
    assert_eq!(m.get("web/memory.high"), "max");
    assert!(!record_exists(&m.state()));
    let audit = r2.audit().read_all().unwrap();
    assert!(audit.iter().any(|e| e.resource == "restore" && e.applied));
}

#[test]
fn unwritable_file_backs_off_with_an_error_naming_it() {
    let m = Mimic::new("unwritable");
    m.put("web/memory.max", "1073741824\n");
    // memory.high is a directory: it cannot be opened for writing.
    fs::remove_file(m.root.join("web/memory.high")).unwrap();
    fs::create_dir(m.root.join("web/memory.high")).unwrap();
    let mut cfg = m.config();
    cfg.cpu = None;
    let mut r = Reconciler::new(m.backend(), cfg).unwrap();
    let f = Forecasts {
        cpu: None,
        memory: Some(confident(1.2 * GIB)),
    };
    let err = r.step(&f).unwrap_err();
    let path = m.root.join("web/memory.high");
    match &err {
        AllocateError::Io { op, path: p, .. } => {
            assert_eq!(*op, "open for writing");
            assert_eq!(p, &path);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
    assert_eq!(r.backoff().remaining, 1);
    // The failure is audited with the error.
    let audit = r.audit().read_all().unwrap();
    assert!(audit.iter().any(|e| !e.applied && e.error.is_some()));
    // Repair the file: the next step still backs off and touches nothing.
    fs::remove_dir(&path).unwrap();
    m.put("web/memory.high", "max\n");
    let rep = r.step(&f).unwrap();
    assert!(rep.backing_off.is_some() && rep.applied.is_empty());
    assert_eq!(m.get("web/memory.high"), "max");
    // Then it works again.
    let rep = r.step(&f).unwrap();
    assert_eq!(rep.applied, vec![Resource::Memory]);
    assert_ne!(m.get("web/memory.high"), "max");
}

#[test]
fn missing_file_fails_the_read_and_backs_off_exponentially() {
    let m = Mimic::new("missing");
    fs::remove_file(m.root.join("web/cpu.max")).unwrap();
    let mut r = Reconciler::new(m.backend(), m.config()).unwrap();
    let err = r.step(&Forecasts::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains(&*m.root.join("web/cpu.max").to_string_lossy()),
        "{err}"
    );
    assert_eq!(r.backoff().remaining, 1);
    assert!(r.step(&Forecasts::default()).unwrap().backing_off.is_some());
    // Fails again: twice as long.
    assert!(r.step(&Forecasts::default()).is_err());
    assert_eq!(r.backoff().remaining, 2);
}

#[test]
fn oom_kill_steps_memory_up() {
    let m = Mimic::new("oom");
    m.put("web/memory.max", "1073741824\n");
    let mut cfg = m.config();
    cfg.cpu = None;
    let mut r = Reconciler::new(m.backend(), cfg).unwrap();
    r.step(&Forecasts::default()).unwrap();
    m.put(
        "web/memory.events",
        "low 0\nhigh 3\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n",
    );
    let rep = r.step(&Forecasts::default()).unwrap();
    assert_eq!(rep.applied, vec![Resource::Memory]);
    assert_eq!(m.get("web/memory.max"), (5u64 << 28).to_string()); // 1 GiB × 1.25
}

#[test]
fn psi_full_steps_cpu_up() {
    let m = Mimic::new("psi");
    m.put("web/cpu.max", "100000 100000\n");
    let mut r = Reconciler::new(m.backend(), m.config()).unwrap();
    r.step(&Forecasts::default()).unwrap();
    // 10 s of full stall within a fraction of a second: far above 5%; but no throttling:
    // contention for the host's CPUs, which a larger quota does not relieve.
    m.put(
        "web/cpu.pressure",
        "some avg10=50.00 avg60=0.00 avg300=0.00 total=20000000\n\
         full avg10=30.00 avg60=0.00 avg300=0.00 total=10000000\n",
    );
    m.cpu_stat(100, 0, 0);
    let rep = r.step(&Forecasts::default()).unwrap();
    assert!(rep.applied.is_empty(), "{rep:?}");
    // The same stall with the quota throttling the group (1 period in 100: below the
    // throttle-ratio threshold, so the pressure is what steps it up).
    m.put(
        "web/cpu.pressure",
        "some avg10=50.00 avg60=0.00 avg300=0.00 total=40000000\n\
         full avg10=30.00 avg60=0.00 avg300=0.00 total=20000000\n",
    );
    m.cpu_stat(200, 1, 0);
    let rep = r.step(&Forecasts::default()).unwrap();
    assert_eq!(rep.applied, vec![Resource::Cpu]);
    assert_eq!(m.get("web/cpu.max"), "125000 100000");
}

#[test]
fn cpuset_pins_away_from_the_shadow_cpus() {
    let m = Mimic::new("cpuset");
    m.put("web/cpuset.cpus", "0-3\n");
    let mut cfg = m.config();
    cfg.pin_away_from = Some("2-3".parse::<CpuSet>().unwrap());
    let mut r = Reconciler::new(m.backend(), cfg).unwrap();
    let rep = r.step(&Forecasts::default()).unwrap();
    assert_eq!(rep.applied, vec![Resource::Cpuset]);
    assert_eq!(m.get("web/cpuset.cpus"), "0-1");
    // Idempotent.
    assert!(r.step(&Forecasts::default()).unwrap().applied.is_empty());
    drop(r);
    assert_eq!(m.get("web/cpuset.cpus"), "0-3");

    // Nothing left: refuse, keep, audit the rail.
    let mut cfg = m.config();
    cfg.pin_away_from = Some("0-3".parse::<CpuSet>().unwrap());
    let mut r = Reconciler::new(m.backend(), cfg).unwrap();
    let rep = r.step(&Forecasts::default()).unwrap();
    assert!(rep.applied.is_empty());
    assert_eq!(rep.cpuset.unwrap().rails, vec![Rail::NoFreeCpu]);
    assert_eq!(m.get("web/cpuset.cpus"), "0-3");
}

#[test]
fn placement_of_a_network_heavy_primary_follows_its_nic_and_is_audited() {
    use super::reconcile::NicPlacement;
    let m = Mimic::new("nic");
    m.put("web/cpuset.cpus", "0-3\n");
    m.put("web/cpu.max", "100000 100000\n"); // 1 core
                                             // A fake procfs/sysfs: eth9's IRQ on CPU 1, RPS onto CPU 2.
    m.put(
        "proc/interrupts",
        "           CPU0       CPU1       CPU2       CPU3\n\
         \x20 60:          0       9000          0          0  PCI-MSI 1-edge      eth9-rx-0\n",
    );
    m.put("proc/irq/60/smp_affinity_list", "1\n");
    m.put("sys/class/net/eth9/queues/rx-0/rps_cpus", "4\n");
    m.put("sys/class/net/eth9/statistics/rx_packets", "1000\n");
    let mut cfg = m.config();
    cfg.cpu = None;
    cfg.memory = None;
    cfg.pin_away_from = Some("3".parse::<CpuSet>().unwrap());
    cfg.nic = Some(NicPlacement {
        interface: "eth9".into(),
        proc_root: m.root.join("proc"),
        sys_root: m.root.join("sys"),
        heavy_rx_pps: 10_000.0,
    });
    let mut r = Reconciler::new(m.backend(), cfg.clone()).unwrap();
    // First step: the packet rate is not known yet, so every free CPU.
    let rep = r.step(&Forecasts::default()).unwrap();
    assert_eq!(m.get("web/cpuset.cpus"), "0-2");
    let note = rep.locality.expect("locality recorded");
    assert_eq!(note.serving.to_string(), "1-2");
    assert_eq!(note.why, "not_network_heavy");
    // 1,000,000 packets in a fraction of a second: network-heavy; pinned onto CPUs 1-2.
    std::thread::sleep(std::time::Duration::from_millis(50));
    m.put("sys/class/net/eth9/statistics/rx_packets", "1001000\n");
    let rep = r.step(&Forecasts::default()).unwrap();
    assert_eq!(rep.applied, vec![Resource::Cpuset]);
    assert_eq!(m.get("web/cpuset.cpus"), "1-2");
    assert_eq!(rep.locality.unwrap().choice, "nic_local");
    let audit = r.audit().read_all().unwrap();
    let last = audit.iter().rev().find(|e| e.resource == "cpuset").unwrap();
    let loc = last.locality.as_ref().expect("locality in the audit entry");
    assert_eq!(loc["interface"], "eth9");
    assert_eq!(loc["serving"], "1-2");
    assert_eq!(loc["why"], "nic_local");
    assert_eq!(last.new, serde_json::json!("1-2"));
    drop(r);
    assert_eq!(m.get("web/cpuset.cpus"), "0-3");

    // A missing interface is an error naming it, and nothing is written.
    cfg.nic.as_mut().unwrap().interface = "nope9".into();
    let mut r = Reconciler::new(m.backend(), cfg).unwrap();
    let err = r.step(&Forecasts::default()).unwrap_err();
    assert!(err.to_string().contains("nope9"), "{err}");
    assert_eq!(m.get("web/cpuset.cpus"), "0-3");
}

#[test]
fn kubelet_owned_groups_are_refused_unless_allowed() {
    let m = Mimic::new("kube");
    m.put("kubepods/burstable/pod1/cpu.max", "max 100000\n");
    let root = CgroupRoot::detect(&m.root).unwrap();
    let b = V2Backend::new(&root, "kubepods/burstable/pod1").unwrap();
    let err = Reconciler::new(b.clone(), m.config()).unwrap_err();
    assert!(matches!(err, AllocateError::KubeletOwned { .. }), "{err}");
    let mut cfg = m.config();
    cfg.allow_kubelet_owned = true;
    assert!(Reconciler::new(b, cfg).is_ok());
}

#[test]
fn kubelet_layouts_are_recognised() {
    use crate::allocate::reconcile::kubelet_owned;
    let uid = "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b";
    let owned = [
        "kubepods".to_owned(),
        "kubepods.slice/kubepods-besteffort.slice".to_owned(),
        format!("custom-root/burstable/pod{uid}"),
        format!(
            "k8s.slice/k8s-burstable.slice/k8s-burstable-pod{}.slice",
            uid.replace('-', "_")
        ),
        format!("custom-root/pod{uid}/0123456789abcdef"),
    ];
    for n in &owned {
        assert!(kubelet_owned(n), "{n}");
    }
    let not_owned = [
        "shop/web",
        "pod-web",
        "podcast/worker",
        "shop/pod0f1e2d3c",
        "system.slice/kubelet.service",
    ];
    for n in not_owned {
        assert!(!kubelet_owned(n), "{n}");
    }
    // The refusal names the group's path.
    let m = Mimic::new("kubeuid");
    let name = format!("custom/pod{uid}");
    m.put(&format!("{name}/cpu.max"), "max 100000\n");
    let root = CgroupRoot::detect(&m.root).unwrap();
    let b = V2Backend::new(&root, &name).unwrap();
    let err = Reconciler::new(b, m.config()).unwrap_err();
    assert!(err.to_string().contains(&name), "{err}");
    assert!(err.to_string().contains("allow_kubelet_owned"), "{err}");
}

#[test]
fn config_errors_name_the_key() {
    let m = Mimic::new("cfg");
    let mut cfg = m.config();
    cfg.policy.headroom = -1.0;
    let err = Reconciler::new(m.backend(), cfg).unwrap_err();
    assert!(err.to_string().contains("policy.headroom"), "{err}");
    let mut cfg = m.config();
    if let Some(c) = cfg.cpu.as_mut() {
        c.max = 0.0;
    }
    let err = Reconciler::new(m.backend(), cfg).unwrap_err();
    assert!(err.to_string().contains("cpu.max"), "{err}");
}

#[test]
fn missing_group_is_named() {
    let m = Mimic::new("nogroup");
    let root = CgroupRoot::detect(&m.root).unwrap();
    let err = V2Backend::new(&root, "absent").unwrap_err();
    assert!(
        err.to_string()
            .contains(&*m.root.join("absent").to_string_lossy()),
        "{err}"
    );
}

#[test]
fn a_forecast_shrink_waits_for_a_whatif_pass_and_a_failure_refuses_it() {
    use super::gate::{GateRule, ShrinkOutcome};
    let m = Mimic::new("whatif");
    m.put("web/cpu.max", "200000 100000\n");
    let mut cfg = m.config();
    cfg.memory = None;
    cfg.whatif_gate = Some(GateRule {
        valid_intervals: 100,
        retry_intervals: 100,
    });
    let mut r = Reconciler::new(m.backend(), cfg).unwrap();
    let f = Forecasts {
        cpu: Some(confident(1.0)),
        memory: None,
    };
    // The shrink hold (K = 3), then the what-if gate: nothing written, one request.
    let mut requests = Vec::new();
    for _ in 0..4 {
        let rep = r.step(&f).unwrap();
        assert!(rep.applied.is_empty(), "{rep:?}");
        requests.extend(rep.whatif_requests);
    }
    assert_eq!(m.get("web/cpu.max"), "200000 100000");
    assert_eq!(
        requests.len(),
        2,
        "asked again while no validation ran: {requests:?}"
    );
    let req = requests[0].clone();
    // 2 cores, at most -20% per interval.
    assert_eq!((req.from, req.to, req.cgroup.as_str()), (2.0, 1.6, "web"));
    r.whatif_started(&req);
    let rep = r.step(&f).unwrap();
    assert!(rep.whatif_requests.is_empty() && rep.applied.is_empty());
    assert!(rep.decisions[0].rails.contains(&Rail::WhatifPending));

    r.whatif_outcome(&ShrinkOutcome {
        request: req,
        pass: true,
        reasons: Vec::new(),
        report: None,
    })
    .unwrap();
    let rep = r.step(&f).unwrap();
    assert_eq!(rep.applied, vec![Resource::Cpu], "{rep:?}");
    assert_eq!(m.get("web/cpu.max"), "160000 100000");

    // The next shrink (1.6 -> 1.28) needs its own pass; this one fails.
    let mut req = None;
    for _ in 0..4 {
        let rep = r.step(&f).unwrap();
        assert!(rep.applied.is_empty(), "{rep:?}");
        req = req.or(rep.whatif_requests.into_iter().next());
    }
    let req = req.expect("a second request");
    assert_eq!((req.from, req.to), (1.6, 1.6 * 0.8));
    r.whatif_started(&req);
    r.whatif_outcome(&ShrinkOutcome {
        request: req,
        pass: false,
        reasons: vec!["p95 too high".into()],
        report: None,
    })
    .unwrap();
    for _ in 0..5 {
        let rep = r.step(&f).unwrap();
        assert!(rep.applied.is_empty() && rep.whatif_requests.is_empty());
        assert!(rep.decisions[0].rails.contains(&Rail::WhatifFailed));
    }
    assert_eq!(m.get("web/cpu.max"), "160000 100000");
    // Both verdicts are in the audit log, neither applied.
    let verdicts: Vec<_> = r
        .audit()
        .read_all()
        .unwrap()
        .into_iter()
        .filter(|e| matches!(e.reason, Reason::Whatif { .. }))
        .collect();
    assert_eq!(verdicts.len(), 2);
    assert!(verdicts.iter().all(|e| !e.applied));
    assert!(
        matches!(&verdicts[1].reason, Reason::Whatif { pass: false, reasons, .. } if reasons[0] == "p95 too high")
    );
    // Steps up are never gated.
    let rep = r
        .step(&Forecasts {
            cpu: Some(confident(2.0)),
            memory: None,
        })
        .unwrap();
    assert_eq!(rep.applied, vec![Resource::Cpu]);
}

impl Mimic {
    /// The group removed and made again, as a service manager restarting a service does,
    /// with `cpu_max` set by its owner. The new directory is made before the old one is
    /// removed, so that it cannot get the old one's inode (cgroupfs never reuses ids; a
    /// disk filesystem may).
    fn recreate(&self, cpu_max: &str) {
        let old = self.root.join("web.old");
        fs::rename(self.root.join("web"), &old).unwrap();
        let fresh = Mimic::new("fresh");
        fs::rename(fresh.root.join("web"), self.root.join("web")).unwrap();
        fs::remove_dir_all(&old).unwrap();
        self.put("web/cpu.max", cpu_max);
    }
}

#[test]
fn a_group_made_again_keeps_its_owners_limits_live_and_after_a_crash() {
    let m = Mimic::new("recreated");
    m.put("web/cpu.max", "50000 100000\n");
    let mut cfg = m.config();
    cfg.memory = None;
    let raise = Forecasts {
        cpu: Some(confident(1.0)),
        memory: None,
    };

    // Live: the agent raised the quota, then the service restarted with a new quota.
    let mut r = Reconciler::new(m.backend(), cfg.clone()).unwrap();
    let before = super::backend::incarnation(r.backend());
    r.step(&raise).unwrap();
    assert_eq!(m.get("web/cpu.max"), "100000 100000");
    m.recreate("70000 100000\n");
    assert_ne!(super::backend::incarnation(r.backend()), before);
    r.reincarnate().unwrap();
    assert!(!record_exists(&m.state()));
    let audit = r.audit().read_all().unwrap();
    let e = audit.last().unwrap();
    assert_eq!(e.resource, "recreated");
    assert!(e.old.to_string().contains("50000 100000"), "{e:?}");
    // Nothing to restore now; a later change records the new group's limits first.
    r.step(&raise).unwrap();
    assert_ne!(m.get("web/cpu.max"), "70000 100000");
    assert!(record_exists(&m.state()));
    drop(r);
    assert_eq!(
        m.get("web/cpu.max"),
        "70000 100000",
        "the new owner's quota"
    );

    // After a crash: the record of the old group is not written into the new one.
    let mut r = Reconciler::new(m.backend(), cfg.clone()).unwrap();
    r.step(&raise).unwrap();
    r.abandon();
    m.recreate("30000 100000\n");
    let r = Reconciler::new(m.backend(), cfg.clone()).unwrap();
    let rec = r.recovered().expect("the record was found");
    assert!(rec.restored.is_empty() && rec.failed.is_empty(), "{rec:?}");
    assert!(rec.skipped[0].1.starts_with("recreated"), "{rec:?}");
    assert_eq!(m.get("web/cpu.max"), "30000 100000");
    assert!(!record_exists(&m.state()));
    drop(r);

    // Gone at exit (a stopped service): nothing to write, the record is dropped.
    let mut r = Reconciler::new(m.backend(), cfg).unwrap();
    r.step(&raise).unwrap();
    assert!(record_exists(&m.state()));
    fs::remove_dir_all(m.root.join("web")).unwrap();
    let rep = r.restore().unwrap();
    assert!(
        rep.failed.is_empty() && rep.skipped[0].1.starts_with("gone"),
        "{rep:?}"
    );
    assert!(!record_exists(&m.state()));
    let audit = r.audit().read_all().unwrap();
    assert!(audit
        .last()
        .unwrap()
        .note
        .as_deref()
        .is_some_and(|n| n.contains("gone")));
}

/// `[allocate]` managing the memory of `cgroups` in `m` (CPU and scaling events off, a
/// 200-interval forecast window), with its state in `m.state()`.
fn memory_only_spec(m: &Mimic, cgroups: &str) -> super::live::AllocateSpec {
    toml::from_str::<super::live::RawAllocate>(&format!(
        "cgroups = [\"{cgroups}\"]\ncgroup_root = \"{}\"\nstate_dir = \"{}\"\nwindow = 200\n\
         [cpu]\nenabled = false\n[scale]\nenabled = false\n",
        m.root.display(),
        m.state().display()
    ))
    .unwrap()
    .validate()
    .unwrap()
}

/// Whether a tick's JSON has a memory forecast for `web`.
fn memory_forecast(v: &serde_json::Value) -> bool {
    !v["web"]["forecasts"]["memory"].is_null()
}

/// `web`'s memory usage at interval `i`: a wave around 512 MiB.
fn wave(i: usize) -> u64 {
    ((512.0 + 64.0 * ((i as f64) / 10.0).sin()) * 1048576.0) as u64
}

/// An allocator started again takes the usage history an earlier run left in its state
/// directory (`forecast-history.json`): its forecasts are ready at the first tick, where a
/// fresh start has none. The file is written at exit; a stale one, or one kept at another
/// interval, is not used, and says why.
#[test]
fn a_restarted_allocator_forecasts_from_its_first_tick_with_the_history_it_left() {
    use super::live::{LiveAllocator, HISTORY_FILE};
    let m = Mimic::new("history");
    let spec = memory_only_spec(&m, "web");

    // A fresh start: no forecast at the first tick; then a run long enough to forecast.
    let mut a = LiveAllocator::start(&spec, None).unwrap();
    assert!(a.restore_history(1.0).is_none(), "no file yet");
    let mut first = None;
    for i in 0..150 {
        m.put("web/memory.current", &format!("{}\n", wave(i)));
        let v = a.tick();
        first.get_or_insert(memory_forecast(&v));
    }
    assert_eq!(first, Some(false), "a fresh start has no history");
    assert!(memory_forecast(&a.tick()), "150 intervals are enough");
    drop(a);
    let file = m.state().join(HISTORY_FILE);
    let saved: serde_json::Value = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
    assert_eq!(
        saved["groups"]["web"]["memory"].as_array().unwrap().len(),
        151
    );

    // Started again: ready at once.
    let mut a = LiveAllocator::start(&spec, None).unwrap();
    let r = a.restore_history(1.0).unwrap();
    assert_eq!(
        (r["groups"].as_u64(), r["taken"].as_u64()),
        (Some(1), Some(1)),
        "{r}"
    );
    assert!(memory_forecast(&a.tick()), "forecast at the first tick");
    drop(a);

    // Kept at another interval, or too old: started afresh, with the reason.
    let mut a = LiveAllocator::start(&spec, None).unwrap();
    let r = a.restore_history(10.0).unwrap();
    assert!(
        r["discarded"]
            .as_str()
            .unwrap()
            .contains("intervals of 1 s"),
        "{r}"
    );
    assert!(!memory_forecast(&a.tick()));
    drop(a);
    let mut old = saved.clone();
    old["saved_unix_s"] = (saved["saved_unix_s"].as_f64().unwrap() - 3600.0).into();
    fs::write(&file, old.to_string()).unwrap();
    let mut a = LiveAllocator::start(&spec, None).unwrap();
    let r = a.restore_history(1.0).unwrap();
    assert!(
        r["discarded"].as_str().unwrap().contains("more than 25"),
        "{r}"
    );
    assert!(!memory_forecast(&a.tick()));
}

/// A group a pattern let go (its directory was gone for an interval: a service restarted
/// slowly) has its usage history back when the pattern matches it again, so its forecasts
/// go on at once; and the history file written meanwhile still holds it.
#[test]
fn a_group_a_pattern_let_go_has_its_history_back_when_it_is_back() {
    use super::live::{LiveAllocator, HISTORY_FILE};
    let m = Mimic::new("rematch");
    let spec = memory_only_spec(&m, "we*");
    let mut a = LiveAllocator::start(&spec, None).unwrap();
    a.restore_history(1.0);
    let mut last = serde_json::Value::Null;
    for i in 0..150 {
        m.put("web/memory.current", &format!("{}\n", wave(i)));
        last = a.tick();
    }
    assert!(memory_forecast(&last), "{last}");

    let away = m.root.join("gone-web");
    fs::rename(m.root.join("web"), &away).unwrap();
    assert_eq!(a.tick()["web"]["change"], "unmatched");
    a.save_history().unwrap();
    let saved: serde_json::Value =
        serde_json::from_slice(&fs::read(m.state().join(HISTORY_FILE)).unwrap()).unwrap();
    assert!(
        saved["groups"]["web"]["memory"].as_array().unwrap().len() >= 150,
        "the let-go group's history is kept in the file"
    );

    fs::rename(&away, m.root.join("web")).unwrap();
    let v = a.tick();
    assert_eq!(v["web"]["change"], "matched", "{v}");
    assert!(memory_forecast(&v), "forecast at its first tick back: {v}");
}

#[test]
fn v2_burst_follows_each_quota_written_is_audited_and_restored() {
    let m = Mimic::new("burst");
    m.put("web/cpu.max", "50000 100000\n");
    m.put("web/cpu.max.burst", "20000\n");
    let mut cfg = m.config();
    cfg.memory = None;
    cfg.cpu_burst = Some(0.5);
    let audit = cfg.state_dir.join("audit.jsonl");
    {
        let mut r = Reconciler::new(m.backend(), cfg).unwrap();
        let rep = r
            .step(&Forecasts {
                cpu: Some(confident(0.8)),
                memory: None,
            })
            .unwrap();
        assert_eq!(rep.applied, vec![Resource::Cpu]);
        // 0.8 × 1.15 = 0.92 core, and half of it as burst.
        assert_eq!(m.get("web/cpu.max"), "92000 100000");
        assert_eq!(m.get("web/cpu.max.burst"), "46000");
        let entries = super::state::AuditLog::new(&audit).read_all().unwrap();
        assert_eq!(entries.last().unwrap().burst_us, Some([20_000, 46_000]));
    }
    // Restored on drop, the burst included.
    assert_eq!(m.get("web/cpu.max"), "50000 100000");
    assert_eq!(m.get("web/cpu.max.burst"), "20000");
    assert!(!record_exists(&m.state()));
}

#[test]
fn without_a_burst_file_the_quota_is_written_alone() {
    let m = Mimic::new("noburst");
    m.put("web/cpu.max", "50000 100000\n");
    let b = m.backend();
    assert_eq!(b.read_limits().unwrap().cpu_burst_us, None);
    b.set_cpu(Some(0.3), 100_000, Some(1.0)).unwrap();
    assert_eq!(m.get("web/cpu.max"), "30000 100000");
    assert!(!m.root.join("web/cpu.max.burst").exists());
    assert_eq!(
        b.control_files(Resource::Cpu),
        vec![m.root.join("web/cpu.max")]
    );
}
