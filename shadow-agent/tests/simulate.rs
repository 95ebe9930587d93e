//! `shadow-agent simulate` on the public traces (`../shared/data/traces`, beside the
//! repository): the JSON shape of issue 8, the predictive policy against the baselines, and
//! exit code 2 on bad input. A few series only, so a debug build finishes well within a minute.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

fn trace(set: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
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

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shadow-agent"))
        .args(args)
        .output()
        .expect("run shadow-agent")
}

#[test]
fn bitbrains_cpu_predictive_beats_static_and_matches_vpa() {
    let data = trace("bitbrains_rnd");
    let out = agent(&[
        "simulate",
        "--data",
        data.to_str().expect("utf-8 path"),
        "--metric",
        "cpu_pct",
        "--max-series",
        "4",
        "--threads",
        "2",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "simulate failed: {stderr}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    let policies = json["policies"].as_array().expect("policies array");
    let names: Vec<&str> = policies
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["static", "reactive", "vpa", "predictive"]);
    for p in policies {
        for key in ["slack", "shortage"] {
            let v = p[key].as_f64().unwrap_or(f64::NAN);
            assert!((0.0..=1.0).contains(&v), "{key} of {p}");
        }
        assert!(p["changes"].is_u64(), "changes of {p}");
    }
    let get = |n: &str| &policies[names.iter().position(|x| *x == n).expect("policy")];
    let (st, vpa, pr) = (get("static"), get("vpa"), get("predictive"));
    let f = |p: &serde_json::Value, k: &str| p[k].as_f64().unwrap_or(f64::NAN);
    eprintln!("{json:#}");
    assert!(
        f(pr, "shortage") <= f(vpa, "shortage") + 0.01,
        "predictive shortage {} above the VPA-style policy's {}",
        f(pr, "shortage"),
        f(vpa, "shortage")
    );
    assert!(
        f(pr, "slack") < f(st, "slack"),
        "predictive slack {} not below static's {}",
        f(pr, "slack"),
        f(st, "slack")
    );
}

#[test]
fn bad_input_exits_2() {
    let data = trace("planetlab");
    let out = agent(&[
        "simulate",
        "--data",
        data.to_str().expect("utf-8 path"),
        "--metric",
        "no_such_column",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no_such_column"), "{stderr}");

    let out = agent(&[
        "simulate",
        "--data",
        "/nonexistent/usage.csv",
        "--metric",
        "cpu_pct",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/usage.csv"));
}
