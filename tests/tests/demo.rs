//! `cargo xtask run` runs this demo; here it runs briefly and its measured summary is checked.

use std::time::Duration;

use shadow_tests::harness::{chain, require_privileges};

#[test]
fn demo_serves_mirrors_and_measures() {
    require_privileges();
    let s = shadow_agent::demo::run(Duration::from_secs(5), true)
        .unwrap_or_else(|e| panic!("demo failed: {}", chain(&e)));
    let u = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("{k} missing: {s}"));
    let m = |k: &str| {
        s["mirror"][k]
            .as_u64()
            .unwrap_or_else(|| panic!("mirror.{k} missing: {s}"))
    };
    assert!(u("requests_ok") >= 50, "{s}");
    assert_eq!(u("request_errors"), 0, "{s}");
    assert!(m("cloned") > 0, "{s}");
    // Every match is cloned; clones the shadow-side program sends into the hold loop instead
    // (they go to the shadow later) show up as redirect errors, and nothing else fails.
    assert_eq!(m("cloned") + m("clone_failed"), m("matched"), "{s}");
    assert_eq!(
        m("clone_failed"),
        s["tcp"]["segments_waiting"].as_u64().unwrap_or(0),
        "{s}"
    );
    assert_eq!(m("restore_failed"), 0, "{s}");
    // The shadow really serves the mirrored requests (sequence translation, early segments
    // held rather than dropped), none reset.
    let completion = s["shadow_completion"].as_f64().expect("completion");
    assert!(
        completion >= 0.95,
        "the shadow served only {completion:.3} of the requests: {s}"
    );
    assert_eq!(s["tcp"]["shadow_resets"].as_u64(), Some(0), "{s}");
    // Every request the shadow received carries a bearer token: each was masked.
    assert!(m("masked") >= u("shadow_requests"), "{s}");
    assert_eq!(m("mask_failed"), 0, "{s}");
    assert!(u("shadow_rx_packets") >= m("cloned"), "{s}");
    assert!(u("xdp_new_connections") >= u("requests_ok"), "{s}");
    let e = s["primary_cpu_seconds_ebpf"].as_f64().expect("cpu");
    let c = s["primary_cpu_seconds_cgroup"].as_f64().expect("cpu");
    assert!(
        c > 0.0 && (e / c - 1.0).abs() < 0.1,
        "eBPF {e} s vs cgroup {c} s"
    );
}
