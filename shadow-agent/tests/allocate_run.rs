//! `shadow-agent run` with `[allocate]`, as a process, on the real kernel: a busy process
//! throttled under a 0.1-core quota gets its quota stepped up by the agent, every change is
//! in the audit log, the hand-set quota is back when the agent exits, and after the agent
//! is killed with SIGKILL mid-run the next agent puts the original (not the crashed run's
//! raised value) back.

#[allow(dead_code)] // the shared topology is not used here
mod common;

use std::{
    io::Read as _,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{quota, ORIGINAL_QUOTA};

/// An agent process, killed on drop if still running.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(cfg: &Path, status: &Path, duration: Option<&str>) -> Agent {
    let mut c = Command::new(env!("CARGO_BIN_EXE_shadow-agent"));
    c.args(["run", "--json", "--config"]).arg(cfg);
    if let Some(d) = duration {
        c.args(["--duration", d]);
    }
    Agent(
        c.env("SHADOW_STATUS_FILE", status)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start agent"),
    )
}

/// Waits for the agent to exit (at most `limit`); returns (success, stdout, stderr).
fn finish(mut a: Agent, limit: Duration) -> (bool, String, String) {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = a.0.try_wait().expect("wait") {
            let mut out = String::new();
            let mut err = String::new();
            if let Some(mut o) = a.0.stdout.take() {
                let _ = o.read_to_string(&mut out);
            }
            if let Some(mut e) = a.0.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return (st.success(), out, err);
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not exit in {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn run_steps_a_throttled_quota_up_and_puts_the_original_back_even_after_a_crash() {
    let tag = format!("{:x}", std::process::id() & 0xffffff);
    let name = format!("shdt{tag}-alr");
    let (cg, _burner) = common::throttled_burner(&name);

    let dir = common::RmDir(std::env::temp_dir().join(format!("shdt{tag}-alr")));
    std::fs::create_dir_all(&dir.0).expect("scratch dir");
    let state = dir.0.join("state");
    let status = dir.0.join("status.json");
    let cfg = dir.0.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[profile]\ninterval_ms = 300\n\n[metrics]\nlisten = \"off\"\n{}",
            common::cpu_allocate_toml(&name, false, &state)
        ),
    )
    .expect("config");

    // 1. A bounded run: the throttled burner's quota goes up, then the original is back.
    let (ok, out, err) = finish(start(&cfg, &status, Some("4")), Duration::from_secs(30));
    assert!(ok, "run failed: {err}");
    assert_eq!(
        quota(&cg),
        ORIGINAL_QUOTA,
        "the hand-set quota must be back after the run: {err}"
    );
    let lines: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["allocate"][&name]["step"].is_object()),
        "no allocator step in the run's JSON lines: {out}"
    );
    let entries = common::audit(&state);
    let raised: Vec<f64> = entries
        .iter()
        .filter(|e| e["resource"] == "cpu" && e["applied"] == true)
        .filter_map(|e| e["new"].as_f64())
        .collect();
    assert!(
        raised.len() >= 2 && raised.iter().all(|&c| c > 0.1),
        "the throttled quota was not stepped up: {entries:?}"
    );
    assert!(
        entries.iter().any(|e| e["resource"] == "restore"),
        "the restore on exit is not audited: {entries:?}"
    );

    // 2. Killed mid-run: the raised quota stays (nothing can run at SIGKILL) ...
    let mut a = start(&cfg, &status, None);
    let deadline = Instant::now() + Duration::from_secs(20);
    while quota(&cg) == ORIGINAL_QUOTA {
        assert!(
            Instant::now() < deadline,
            "the agent never raised the quota"
        );
        assert!(a.0.try_wait().expect("wait").is_none(), "the agent exited");
        std::thread::sleep(Duration::from_millis(100));
    }
    a.0.kill().expect("SIGKILL");
    let _ = a.0.wait();
    let left = quota(&cg);
    assert_ne!(left, ORIGINAL_QUOTA, "the crashed run's quota");

    // ... and the next agent restores the original from its records, not the raised value
    // it finds, and leaves the original when it exits.
    let before = common::audit(&state).len();
    let (ok, _, err) = finish(start(&cfg, &status, Some("1")), Duration::from_secs(30));
    assert!(ok, "run after the crash failed: {err}");
    assert_eq!(
        quota(&cg),
        ORIGINAL_QUOTA,
        "after a crash (quota {left} left behind) the next run must restore the original: {err}"
    );
    let after = common::audit(&state);
    assert!(
        after[before..].iter().any(|e| e["resource"] == "restore"),
        "the restore after the crash is not audited: {:?}",
        &after[before..]
    );
}
