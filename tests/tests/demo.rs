//! `cargo xtask run` runs this demo; here it runs for 20 s (long enough for the forecaster's
//! first fits and the allocator's first changes) and its measured summary, its rows, its audit
//! log and its report are checked.

use std::time::Duration;

use shadow_tests::harness::{chain, require_privileges, TestDir};

#[test]
fn demo_serves_mirrors_measures_forecasts_allocates_and_reports() {
    require_privileges();
    let out = TestDir::new("demo");
    let opts = shadow_agent::demo::DemoOptions {
        duration: Duration::from_secs(20),
        json: true,
        out: out.path().to_owned(),
    };
    let s = shadow_agent::demo::run(&opts).unwrap_or_else(|e| panic!("demo failed: {}", chain(&e)));
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
    check_forecasts_decisions_and_report(&s, out.path());
    let e = s["primary_cpu_seconds_ebpf"].as_f64().expect("cpu");
    let c = s["primary_cpu_seconds_cgroup"].as_f64().expect("cpu");
    assert!(
        c > 0.0 && (e / c - 1.0).abs() < 0.1,
        "eBPF {e} s vs cgroup {c} s"
    );
}

/// The forecasts in the rows, the allocator's decisions in the audit log and the rows, and the
/// report written from them.
fn check_forecasts_decisions_and_report(s: &serde_json::Value, out: &std::path::Path) {
    let rows_text = std::fs::read_to_string(out.join("run.jsonl")).expect("run.jsonl written");
    let rows: Vec<serde_json::Value> = rows_text
        .lines()
        .map(|l| serde_json::from_str(l).expect("run.jsonl holds JSON lines"))
        .collect();
    assert!(rows.len() >= 15, "{} rows", rows.len());
    assert_eq!(rows.last().map(|r| r["summary"] == true), Some(true));
    // Forecast columns: the forecast made a second earlier for each second once the history
    // is long enough, a band around it, and the quota.
    let forecast_rows: Vec<&serde_json::Value> = rows
        .iter()
        .filter(|r| r["forecast_cpu_ms"].is_f64())
        .collect();
    assert!(
        forecast_rows.len() >= 5,
        "only {} rows with a forecast: {rows_text}",
        forecast_rows.len()
    );
    for r in &forecast_rows {
        let (lo, p, hi) = (
            r["forecast_cpu_lower_ms"].as_f64().expect("lower"),
            r["forecast_cpu_ms"].as_f64().expect("point"),
            r["forecast_cpu_upper_ms"].as_f64().expect("upper"),
        );
        assert!(lo <= p && p <= hi && hi > 0.0, "{r}");
        assert!(r["cpu_quota_cores"].is_f64(), "{r}");
    }
    assert_eq!(
        s["forecast_seconds"].as_u64(),
        Some(forecast_rows.len() as u64),
        "{s}"
    );
    // Allocation decisions: quota changes shown in the rows and applied in the audit log.
    let in_rows: usize = rows
        .iter()
        .map(|r| r["decisions"].as_array().map_or(0, Vec::len))
        .sum();
    assert!(in_rows >= 1, "no quota change in the rows: {rows_text}");
    assert_eq!(s["quota_changes"].as_u64(), Some(in_rows as u64), "{s}");
    let audit = std::fs::read_to_string(out.join("audit.jsonl")).expect("audit.jsonl written");
    let applied: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("audit JSON"))
        .filter(|e| e["resource"] == "cpu" && e["applied"] == true)
        .collect();
    assert!(
        !applied.is_empty(),
        "no applied cpu decision in the audit log: {audit}"
    );
    let cgroup = rows[0]["primary_cgroup"].as_str().expect("primary_cgroup");
    assert!(applied.iter().all(|e| e["cgroup"] == cgroup), "{audit}");
    // The report: written where the summary says, with the plots of the primary's cgroup
    // (usage, forecast band, quota with decisions) and the counters.
    let report = std::path::PathBuf::from(s["report"].as_str().expect("report path"));
    assert_eq!(report, out.join("report").join("index.html"));
    let html = std::fs::read_to_string(&report).expect("report written");
    assert!(html.matches("<svg").count() >= 4, "too few plots");
    for must in [
        format!("cgroup {cgroup}"),
        "forecast interval 90%".to_string(),
        "decision applied".to_string(),
        "Mirror: packets per second".to_string(),
        "id=\"counters\"".to_string(),
    ] {
        assert!(html.contains(&must), "the report lacks {must:?}");
    }
}
