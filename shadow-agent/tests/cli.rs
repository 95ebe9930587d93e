//! The `shadow-agent` binary as a user runs it: exit codes and messages.

use std::process::{Command, Output};

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shadow-agent"))
        .args(args)
        .output()
        .expect("run shadow-agent")
}

/// The example config every user starts from.
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/agent.example.toml");

fn example_text() -> String {
    std::fs::read_to_string(EXAMPLE).expect("example")
}

fn scratch(name: &str, text: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("shdt-cli-{}-{name}", std::process::id()));
    std::fs::write(&p, text).expect("write config");
    p
}

#[test]
fn the_example_config_is_valid() {
    let example = EXAMPLE;
    let out = agent(&["check-config", example]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// check-config probes the helpers the mirror's programs call (as `run` does before
/// loading them): this kernel (6.18) has them all, XDP's included, so a mirror config with
/// `xdp = true` passes. The refusal itself is run for real in `tests/tests/verifier.rs`.
#[test]
fn a_mirror_with_xdp_passes_the_kernel_probe_on_this_kernel() {
    let text = example_text().replace("xdp = false", "xdp = true");
    assert!(text.contains("xdp = true"));
    let p = scratch("xdp.toml", &text);
    let out = agent(&["check-config", "--json", p.to_str().expect("utf-8")]);
    let _ = std::fs::remove_file(&p);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json");
    assert_eq!(v["valid"], true, "{v}");
}

#[test]
fn a_bad_cidr_exits_2_naming_the_key() {
    let text = example_text().replace("fd00:5d::/64", "10.0.0.0/33");
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
    let example = example_text();
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
    // As in the pod: the API server's service and the node's name in the environment.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shadow-agent"))
        .args(["check-config", cfg])
        .env("KUBERNETES_SERVICE_HOST", "10.96.0.1")
        .env("KUBERNETES_SERVICE_PORT", "443")
        .env("NODE_NAME", "node-a")
        .output()
        .expect("check-config");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(
            "allocate.kubernetes: kubelet-owned groups resized through https://10.96.0.1:443 \
             for the pods of node node-a"
        ),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Away from a node the missing environment is named.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shadow-agent"))
        .args(["check-config", cfg])
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("NODE_NAME")
        .output()
        .expect("check-config");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("allocate.kubernetes.api_server"), "{err}");
}

/// The public trace the progress tests replay (beside the repository, as tests/simulate.rs).
fn planetlab() -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/traces/planetlab/usage.csv");
    assert!(
        p.is_file(),
        "trace {} is missing: clone the shared data beside the repository (../shared/data)",
        p.display()
    );
    p.to_str().expect("utf-8 path").to_owned()
}

/// Runs the agent with `args` on a pseudo-terminal (util-linux `script`), as a person at a
/// terminal would; returns everything the terminal showed (stdout and stderr together).
fn agent_on_a_tty(args: &[&str]) -> (bool, String) {
    let cmd = std::iter::once(env!("CARGO_BIN_EXE_shadow-agent"))
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let out = Command::new("script")
        .args(["-qefc", &cmd, "/dev/null"])
        .output()
        .expect("run `script` (util-linux) to give the agent a terminal");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Long `simulate` and `backtest` runs show a progress bar on a terminal, and none (no
/// control codes at all) under `--json` or when stderr is not a terminal.
#[test]
fn progress_bars_only_for_a_person_at_a_terminal() {
    let data = planetlab();
    let runs: [(&str, Vec<&str>); 2] = [
        (
            "series simulated",
            vec![
                "simulate",
                "--data",
                &data,
                "--metric",
                "cpu_pct",
                "--max-series",
                "3",
                "--threads",
                "1",
            ],
        ),
        (
            "series backtested",
            vec![
                "backtest",
                "--data",
                &data,
                "--metric",
                "cpu_pct",
                "--models",
                "last_value,seasonal_naive",
                "--window",
                "100",
                "--horizon",
                "4",
                "--max-series",
                "3",
                "--threads",
                "1",
            ],
        ),
    ];
    for (label, args) in runs {
        // A pipe (not a terminal): no bar, with or without --json.
        for json in [false, true] {
            let mut a = args.clone();
            if json {
                a.push("--json");
            }
            let out = agent(&a);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{a:?}: {err}");
            assert!(
                !err.contains('\u{1b}') && !err.contains('\r') && !err.contains(label),
                "{a:?} drew a bar into a pipe: {err:?}"
            );
        }
        // A terminal: the bar is drawn (and cleared) ...
        let (ok, shown) = agent_on_a_tty(&args);
        assert!(ok, "{args:?}: {shown}");
        assert!(
            shown.contains(label) && shown.contains('\u{1b}'),
            "{args:?} drew no bar on a terminal: {shown:?}"
        );
        // ... but not under --json, even on a terminal.
        let mut a = args.clone();
        a.push("--json");
        let (ok, shown) = agent_on_a_tty(&a);
        assert!(ok, "{a:?}: {shown}");
        assert!(
            !shown.contains(label) && !shown.contains('\u{1b}'),
            "{a:?} drew a bar under --json: {shown:?}"
        );
    }
}

/// The subcommands `shadow-agent --help` lists (every one, including those added later).
fn subcommands() -> Vec<String> {
    let out = agent(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let section = help
        .split("Commands:")
        .nth(1)
        .and_then(|s| s.split("Options:").next())
        .expect("a Commands: section")
        .to_owned();
    section
        .lines()
        .filter_map(|l| l.strip_prefix("  ")?.split_whitespace().next())
        .filter(|c| *c != "help" && !c.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_subcommand_has_help_with_examples() {
    let subs = subcommands();
    for known in ["run", "demo", "check-config", "profile", "status", "report"] {
        assert!(subs.iter().any(|s| s == known), "{known} not in {subs:?}");
    }
    for sub in &subs {
        let out = agent(&[sub, "--help"]);
        assert_eq!(out.status.code(), Some(0), "{sub} --help");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains("Example") && help.contains(&format!("shadow-agent {sub}")),
            "`shadow-agent {sub} --help` shows no example:\n{help}"
        );
    }
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        vec!["no-such-command"],
        vec!["demo", "--no-such-flag"],
        vec!["--log-level", "loud", "verify"],
        vec!["check-config"],
    ] {
        let out = agent(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}: no message");
    }
}

#[test]
fn check_config_json_for_programs() {
    let example = EXAMPLE;
    let out = agent(&["check-config", example, "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["file"], example, "{v}");
    assert_eq!(v["patterns"], serde_json::json!([]), "{v}");

    // A profile.cgroups pattern: what it matches now is listed (here: two scratch
    // "cgroups", a plain directory that is not one, and nothing for the second pattern).
    let dir = std::env::temp_dir().join(format!("shdt-cli-pat-{}", std::process::id()));
    for d in ["pod-a", "pod-b", "pod-c"] {
        std::fs::create_dir_all(dir.join(d)).expect("dir");
    }
    for d in ["pod-a", "pod-b"] {
        std::fs::write(dir.join(d).join("cgroup.procs"), "").expect("file");
    }
    let p = scratch(
        "json-pattern.toml",
        &format!(
            "[profile]\ncgroups = [\"{}/pod-*\", \"{}/none-*\"]\n",
            dir.display(),
            dir.display()
        ),
    );
    let out = agent(&["check-config", p.to_str().expect("utf-8"), "--json"]);
    let text = agent(&["check-config", p.to_str().expect("utf-8")]);
    let _ = std::fs::remove_file(&p);
    let _ = std::fs::remove_dir_all(&dir);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["patterns"][0]["key"], "profile.cgroups[0]", "{v}");
    assert_eq!(
        v["patterns"][0]["matches"],
        serde_json::json!([dir.join("pod-a"), dir.join("pod-b")]),
        "{v}"
    );
    assert_eq!(v["patterns"][1]["matches"], serde_json::json!([]), "{v}");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("profile.cgroups[0]") && text.contains("matches 2 cgroup(s) now"),
        "{text}"
    );
    assert!(
        text.contains("profile.cgroups[1]") && text.contains("matches no cgroup now"),
        "{text}"
    );

    let p = scratch("json-unknown.toml", "[mirror]\nno_such_key = 1\n");
    let out = agent(&["check-config", p.to_str().expect("utf-8"), "--json"]);
    let _ = std::fs::remove_file(&p);
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["valid"], false, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("no_such_key")),
        "{v}"
    );
}

#[test]
fn report_json_names_the_page() {
    let dir = std::env::temp_dir().join(format!("shdt-cli-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let input = dir.join("in.jsonl");
    let mut lines = String::new();
    for i in 0..5 {
        lines.push_str(&format!(
            "{{\"t_s\":{i},\"cgroups\":{{\"/cg/web\":{{\"cpu_seconds\":{}}}}},\"mirror\":{{\"seen\":{}}}}}\n",
            i as f64 * 0.5,
            i * 10
        ));
    }
    std::fs::write(&input, lines).expect("input");
    let out_dir = dir.join("out");
    let out = agent(&[
        "report",
        "--input",
        input.to_str().expect("utf-8"),
        "--out",
        out_dir.to_str().expect("utf-8"),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let page = out_dir.join("index.html");
    let exists = page.is_file();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(v["report"], page.to_str().expect("utf-8"), "{v}");
    assert!(exists);
}

#[test]
fn overlapping_rules_exit_2_naming_both_keys() {
    let text = example_text().replace(
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

/// `status`, `forecast` and `reload` find the agent where `run` publishes: `$SHADOW_STATUS_FILE`
/// when set (several agents on one host), without being told `--file`.
#[test]
fn status_readers_follow_shadow_status_file_as_run_does() {
    let dir = std::env::temp_dir().join(format!("shdt-cli-{}-status", std::process::id()));
    let file = dir.join("status.json");
    // Published as an agent would, by this (live) process.
    shadow_agent::status::publish(&file, serde_json::json!({"sample_rate": 0.5})).expect("publish");
    let out = Command::new(env!("CARGO_BIN_EXE_shadow-agent"))
        .args(["status", "--json"])
        .env("SHADOW_STATUS_FILE", &file)
        .output()
        .expect("status");
    shadow_agent::status::withdraw(&file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(v["sample_rate"].as_f64(), Some(0.5), "{v}");
    // Gone: every reader says so, naming the file from the environment.
    for args in [
        vec!["status"],
        vec!["reload", "--timeout", "1"],
        vec!["forecast", "--cgroup", "/sys/fs/cgroup/shdt-none"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_shadow-agent"))
            .args(&args)
            .env("SHADOW_STATUS_FILE", &file)
            .output()
            .expect("reader");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(&file.display().to_string()), "{args:?}: {err}");
    }
}

#[test]
fn patterns_in_profile_and_in_allocate_cgroups_stand_for_what_they_match() {
    use shadow_agent::sys::cgroup::Cgroup;
    let tag = format!("{:x}", std::process::id() & 0xffffff);
    let a = Cgroup::create(&format!("shdt{tag}-pat-a")).expect("test cgroup");
    let b = Cgroup::create(&format!("shdt{tag}-pat-b")).expect("test cgroup");
    let unified = a.unified_path().parent().expect("parent").to_owned();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();

    // `profile --cgroup PATTERN`: every cgroup it matches at start.
    let pattern = unified.join(format!("shdt{tag}-pat-*"));
    let out = agent(&[
        "profile",
        "--cgroup",
        pattern.to_str().expect("utf-8"),
        "--interval-ms",
        "200",
        "--duration",
        "1",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let samples = text(&out.stdout);
    for cg in [&a, &b] {
        let path = cg.unified_path().display().to_string();
        assert!(
            samples.contains(&format!("\"{path}\"")),
            "no samples of {path}: {samples}"
        );
    }
    // One that matches nothing is a usage error naming it; nothing is attached.
    let none = unified.join(format!("shdt{tag}-none-*"));
    let out = agent(&[
        "profile",
        "--cgroup",
        none.to_str().expect("utf-8"),
        "--duration",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("matches no cgroup") && err.contains(&*none.to_string_lossy()),
        "{err}"
    );

    // check-config lists what an allocate.cgroups pattern matches, by group name.
    let p = scratch(
        "alloc-pattern.toml",
        &format!("[allocate]\ncgroups = [\"shdt{tag}-pat-*\"]\n"),
    );
    let out = agent(&["check-config", p.to_str().expect("utf-8"), "--json"]);
    let _ = std::fs::remove_file(&p);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["patterns"][0]["key"], "allocate.cgroups[0]", "{v}");
    assert_eq!(
        v["patterns"][0]["matches"],
        serde_json::json!([a.name(), b.name()]),
        "{v}"
    );
}
