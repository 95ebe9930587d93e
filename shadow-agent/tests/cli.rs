//! The `shadow-agent` binary as a user runs it: exit codes and messages.

use std::process::{Command, Output};

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shadow-agent"))
        .args(args)
        .output()
        .expect("run shadow-agent")
}

fn scratch(name: &str, text: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("shdt-cli-{}-{name}", std::process::id()));
    std::fs::write(&p, text).expect("write config");
    p
}

#[test]
fn the_example_config_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/agent.example.toml");
    let out = agent(&["check-config", example]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_bad_cidr_exits_2_naming_the_key() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/agent.example.toml"
    ))
    .expect("example")
    .replace("fd00:5d::/64", "10.0.0.0/33");
    let p = scratch("bad-cidr.toml", &text);
    let out = agent(&["check-config", p.to_str().expect("utf-8")]);
    let _ = std::fs::remove_file(&p);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "mirror.rules[1].dst: \"10.0.0.0/33\" is not a valid CIDR: prefix length exceeds 32"
        ),
        "{err}"
    );
}

#[test]
fn run_with_a_missing_interface_exits_2_and_attaches_nothing() {
    let p = scratch(
        "no-iface.toml",
        "[mirror]\ninterface = \"shdt-absent0\"\nshadow_interface = \"shdt-absent1\"\n\
         shadow_mac = \"02:00:00:00:00:01\"\n[[mirror.rules]]\ndst = \"198.18.0.2\"\n",
    );
    let out = agent(&[
        "run",
        "--config",
        p.to_str().expect("utf-8"),
        "--duration",
        "1",
    ]);
    let _ = std::fs::remove_file(&p);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"shdt-absent0\" (mirror.interface) not found"),
        "{err}"
    );
}

#[test]
fn missing_config_file_is_named() {
    let out = agent(&["check-config", "/nonexistent/shadow.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/shadow.toml"));
}

#[test]
fn verify_reports_every_program_accepted() {
    let out = agent(&["verify", "--json"]);
    let rows: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("verify --json prints JSON");
    assert!(
        out.status.success(),
        "{rows:#}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = rows.as_array().expect("array");
    assert!(rows.iter().all(|r| r["accepted"] == true), "{rows:?}");
    for name in [
        shadow_common::maps::PROG_MIRROR_TC,
        shadow_common::maps::PROG_SCHED_BTF,
        shadow_common::maps::PROG_DISCARD_TC,
        shadow_common::maps::PROG_CONNECT4,
    ] {
        assert!(
            rows.iter().any(|r| r["program"] == name),
            "{name} missing: {rows:?}"
        );
    }
}

#[test]
fn bad_shadow_values_name_their_keys() {
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/agent.example.toml"
    ))
    .expect("example");
    for (from, to, key) in [
        (
            "addresses = [\"198.18.0.2/24\"]",
            "addresses = [\"198.18.0.2/40\"]",
            "shadow.addresses[0]",
        ),
        (
            "command = [\"python3\"",
            "command = [\"python3\", 1",
            "command",
        ),
        (
            "# user = \"nobody\"",
            "user = \"shdt-no-such-user\"",
            "shadow.user",
        ),
        (
            "initial_backoff_ms = 500",
            "initial_backoff_ms = 0",
            "shadow.restart",
        ),
    ] {
        assert!(example.contains(from), "{from}");
        let p = scratch("bad-shadow.toml", &example.replace(from, to));
        let out = agent(&["check-config", p.to_str().expect("utf-8")]);
        let _ = std::fs::remove_file(&p);
        assert_eq!(out.status.code(), Some(2), "{to}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{to}: {err}");
    }
}

#[test]
fn the_daemonset_config_is_valid() {
    let cfg = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/kubernetes/agent.toml"
    );
    let out = agent(&["check-config", cfg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn overlapping_rules_exit_2_naming_both_keys() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/agent.example.toml"
    ))
    .expect("example")
    .replace(
        "dst = \"fd00:5d::/64\"",
        "dst = \"198.18.0.0/24\"\nports = \"8000-8100\"",
    );
    let p = scratch("overlap.toml", &text);
    let out = agent(&["check-config", p.to_str().expect("utf-8")]);
    let _ = std::fs::remove_file(&p);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "mirror.rules[1]: overlaps mirror.rules[0]: both select tcp packets to 198.18.0.2/32 port 8080"
        ),
        "{err}"
    );
}

#[test]
fn run_flags_are_validated_like_config_keys_before_anything_is_attached() {
    // The interface does not exist: each error below is found before it is looked up (and
    // so before anything could be attached).
    let base = [
        "run",
        "--mirror-iface",
        "shdt-absent0",
        "--shadow-iface",
        "shdt-absent1",
        "--shadow-mac",
        "02:00:00:00:00:01",
        "--duration",
        "1",
    ];
    for (extra, want) in [
        (
            &["--mirror-rule", "tcp:10.0.0.0/24:80-81", "--mirror-rule", "any:10.0.0.7:81"][..],
            "--mirror-rule[1]: overlaps --mirror-rule[0]: both select tcp packets to 10.0.0.7/32 port 81",
        ),
        (
            &["--mirror-rule", "tcp:10.0.0.0/33:80"][..],
            "--mirror-rule[0].dst: \"10.0.0.0/33\" is not a valid CIDR",
        ),
        (
            &["--mirror-rule", "udp:10.0.0.1:70000"][..],
            "--mirror-rule[0].ports: \"70000\" is not a valid port",
        ),
        (
            &["--mirror-rule", "tcp:10.0.0.1:80", "--sample-rate", "1.5"][..],
            "--sample-rate: 1.5 is not a fraction",
        ),
        (
            &["--mirror-rule", "tcp:10.0.0.1:80", "--mask-header", ""][..],
            "--mask-header[0]: empty name",
        ),
        (
            &["--mirror-rule", "tcp:10.0.0.1:80", "--cap-pps", "2000000000000"][..],
            "--cap-pps: 2000000000000 is above the maximum",
        ),
    ] {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let out = agent(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(want), "{extra:?}: {err}");
        assert!(!err.contains("not found"), "validated before the interface lookup: {err}");
    }
    // Valid flags get as far as the interface lookup, which names the flag's key.
    let mut args = base.to_vec();
    args.extend_from_slice(&["--mirror-rule", "tcp:10.0.0.0/24:80-81,http"]);
    let out = agent(&args);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"shdt-absent0\" (mirror.interface) not found"),
        "{err}"
    );
}
