//! The CPU profiler against the kernel's own accounting: a busy process in a test cgroup,
//! eBPF's on-CPU time versus the cgroup2 `cpu.stat` usage.

use std::{process::Command, time::Duration};

use shadow_agent::profile::{CpuHook, HookPreference, Profiler};
use shadow_tests::harness::{chain, spawn_in, TestCgroup};

fn usage_usec(cg: &TestCgroup) -> u64 {
    let text = std::fs::read_to_string(cg.unified_path().join("cpu.stat")).expect("cpu.stat");
    text.lines()
        .find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse().ok())
        .expect("usage_usec")
}

fn burn_and_compare(pref: HookPreference) -> CpuHook {
    let cg = TestCgroup::new("cpu");
    let mut prof =
        Profiler::start(pref).unwrap_or_else(|e| panic!("starting the profiler: {}", chain(&e)));
    prof.track(cg.id()).expect("track");
    let mut burn = Command::new("python3");
    burn.args([
        "-c",
        "import time\nend = time.time() + 1.5\nwhile time.time() < end: pass",
    ]);
    let mut child = spawn_in(None, Some(&cg), burn);
    let status = child
        .wait_timeout(Duration::from_secs(30))
        .expect("wait")
        .expect("burner finished");
    assert!(status.success());
    let ebpf_ns = prof.cgroup(cg.id()).expect("read").expect("tracked").cpu_ns;
    let cg_ns = usage_usec(&cg) * 1000;
    assert!(cg_ns > 500_000_000, "the burner used only {cg_ns} ns");
    let ratio = ebpf_ns as f64 / cg_ns as f64;
    assert!(
        (0.95..=1.05).contains(&ratio),
        "eBPF {ebpf_ns} ns vs cpu.stat {cg_ns} ns (ratio {ratio:.4}) via {:?}",
        prof.hook()
    );
    prof.hook()
}

#[test]
fn cpu_time_matches_cgroup_accounting_with_the_preferred_hook() {
    // This kernel has BTF and accepts tp_btf; a kernel without it would fall back.
    assert_eq!(burn_and_compare(HookPreference::Auto), CpuHook::TpBtf);
}

#[test]
fn raw_tracepoint_fallback_accounts_the_same() {
    assert_eq!(
        burn_and_compare(HookPreference::RawOnly),
        CpuHook::RawTracepoint
    );
}
