//! The forecaster on real traces (Bitbrains and PlanetLab, from `../shared/data/traces` beside
//! the repository), and the `backtest` command as a user runs it.
//!
//! The traces are required: a missing file fails the test naming the path. To stay fast in
//! debug builds the evaluation uses a subset (the first series, evenly spread origins); the
//! full evaluation is `shadow-agent backtest` (see the README).

use std::{
    path::PathBuf,
    process::{Command, Output},
};

use shadow_agent::forecast::{
    backtest::{self, BacktestConfig, ModelKind, Report},
    data::{self, Resample},
};

fn trace(set: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/traces")
        .join(set)
        .join("usage.csv");
    assert!(
        p.is_file(),
        "trace {} is missing: clone the shared data beside the repository (../shared/data)",
        p.display()
    );
    p
}

fn evaluate(set: &str, metric: &str, window: usize, series: usize, origins: usize) -> Report {
    let d = data::load_csv(&trace(set), metric, Resample::default())
        .unwrap_or_else(|e| panic!("loading {set}/{metric}: {e}"));
    let cfg = BacktestConfig {
        window,
        horizon: 12,
        stride: 12,
        levels: vec![0.8, 0.95],
        max_origins: Some(origins),
        max_series: Some(series),
        threads: 2,
        mase_season: None,
    };
    let r = backtest::run(&d, &[ModelKind::Adaptive, ModelKind::LastValue], &cfg)
        .unwrap_or_else(|e| panic!("backtest {set}/{metric}: {e}"));
    eprintln!("{set} {metric}\n{}", r.table(&cfg.levels));
    r
}

/// Coverage within `tol` of nominal at both levels, and no worse than the last value.
fn check(r: &Report, tol: f64) {
    let ad = r.model("adaptive").expect("adaptive scored");
    let lv = r.model("last_value").expect("last value scored");
    assert!(ad.default);
    assert_eq!(ad.failures, 0, "the default policy failed to fit");
    assert!(
        ad.mase <= lv.mase,
        "default MASE {:.3} is worse than the last value's {:.3}",
        ad.mase,
        lv.mase
    );
    for (key, nominal) in [("80", 0.80), ("95", 0.95)] {
        let c = ad.coverage[key];
        assert!(
            (c - nominal).abs() <= tol,
            "{key}% interval covered {c:.3}, not within {tol} of {nominal}"
        );
    }
    assert!(ad.width95.is_finite() && ad.width95 > 0.0);
}

#[test]
fn bitbrains_cpu_and_memory() {
    check(&evaluate("bitbrains_rnd", "cpu_pct", 576, 40, 20), 0.06);
    check(&evaluate("bitbrains_rnd", "mem_used_kb", 576, 40, 20), 0.06);
}

#[test]
fn planetlab_cpu() {
    let r = evaluate("planetlab", "cpu_pct", 144, 40, 6);
    check(&r, 0.06);
    // A day of samples each: a 2-day window is too short, and says so.
    let d = data::load_csv(&trace("planetlab"), "cpu_pct", Resample::default()).unwrap();
    let long = BacktestConfig {
        window: 576,
        horizon: 12,
        stride: 12,
        levels: vec![0.8],
        max_origins: None,
        max_series: None,
        threads: 1,
        mase_season: None,
    };
    let err = backtest::run(&d, &[ModelKind::LastValue], &long).unwrap_err();
    assert!(err.to_string().contains("needs 588"), "{err}");
}

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shadow-agent"))
        .args(args)
        .output()
        .expect("run shadow-agent")
}

fn scratch(name: &str, text: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("shdt-fc-{}-{name}", std::process::id()));
    std::fs::write(&p, text).expect("write csv");
    p
}

#[test]
fn backtest_command_prints_json_and_rejects_bad_input() {
    // A synthetic daily pattern (period 24) with jitter and a gap, 3 series, one too short.
    let mut csv = String::from("series_id,timestamp_s,cpu_pct,mem_used_kb\n");
    for s in 0..3 {
        let n = if s == 2 { 50 } else { 400 };
        for i in 0..n {
            if i == 100 {
                continue;
            }
            let ts = i * 60 + (i * 7 + s) % 5;
            let v = 20.0 + 10.0 * ((i as f64) * std::f64::consts::TAU / 24.0).sin() + s as f64;
            csv.push_str(&format!("vm{s},{ts},{v:.3},{}\n", 1000 + i));
        }
    }
    let file = scratch("ok.csv", &csv);
    let f = file.to_str().unwrap();
    let out = agent(&[
        "backtest",
        "--data",
        f,
        "--metric",
        "cpu_pct",
        "--window",
        "200",
        "--horizon",
        "6",
        "--levels",
        "80,95",
        "--max-origins",
        "5",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["series"], 2);
    assert_eq!(v["skipped"][0]["id"], "vm2");
    let models = v["models"].as_array().unwrap();
    assert_eq!(models.len(), ModelKind::ALL.len());
    assert_eq!(models.iter().filter(|m| m["default"] == true).count(), 1);
    for m in models {
        for key in ["mase", "smape", "width95", "ms_per_fit"] {
            assert!(m[key].is_number(), "{} has no {key}: {m}", m["name"]);
        }
        assert!(m["coverage"]["80"].is_number() && m["coverage"]["95"].is_number());
    }
    // The seasonal models see the period and beat the last value on a clean season.
    let mase = |name: &str| {
        models.iter().find(|m| m["name"] == name).unwrap()["mase"]
            .as_f64()
            .unwrap()
    };
    assert!(mase("seasonal_naive") < mase("last_value"));
    assert!(mase("adaptive") < mase("last_value"));

    let out = agent(&["backtest", "--data", f, "--metric", "net_kBps"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("net_kBps") && err.contains("series_id,timestamp_s"),
        "{err}"
    );

    let bad = scratch(
        "bad.csv",
        "series_id,timestamp_s,cpu_pct\na,0,1\na,60,n/a\n",
    );
    let out = agent(&[
        "backtest",
        "--data",
        bad.to_str().unwrap(),
        "--metric",
        "cpu_pct",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(":3:") && err.contains("n/a"), "{err}");

    let out = agent(&[
        "backtest",
        "--data",
        "/nonexistent/x.csv",
        "--metric",
        "cpu_pct",
    ]);
    assert_eq!(out.status.code(), Some(2));
    // Prophet is a cargo feature, off by default: a build without it says how to get it.
    #[cfg(not(feature = "prophet"))]
    {
        let out = agent(&[
            "backtest", "--data", f, "--metric", "cpu_pct", "--models", "prophet",
        ]);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("\"prophet\" is not in this build")
                && err.contains("`prophet` cargo feature")
                && err.contains("cargo build --release -p shadow-agent --features prophet"),
            "{err}"
        );
    }
    let out = agent(&[
        "backtest", "--data", f, "--metric", "cpu_pct", "--models", "arima",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown model \"arima\""), "{err}");
    let _ = std::fs::remove_file(file);
    let _ = std::fs::remove_file(bad);
}
