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

/// The next `run --json` line (at most `limit` away) whose `allocate.<name>.change` is one of
/// `changes`.
fn wait_change(
    lines: &std::sync::mpsc::Receiver<String>,
    name: &str,
    changes: &[&str],
    limit: Duration,
) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no allocate change {changes:?} of {name} in {limit:?}"));
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let g = &v["allocate"][name];
        if changes.iter().any(|c| g["change"] == *c) {
            return g.clone();
        }
    }
}

/// Waits (at most 20 s) until `cg`'s quota is no longer `from`; the new one.
fn wait_raised(cg: &shadow_agent::sys::cgroup::Cgroup, from: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let q = quota(cg);
        if q != from {
            return q;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never raised the quota from {from}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_managed_group_made_again_keeps_its_new_owners_limits_and_one_gone_is_let_go() {
    use shadow_agent::sys::cgroup::{Cgroup, Controller};
    let tag = format!("{:x}", std::process::id() & 0xffffff);
    let name = format!("shdt{tag}-alm");
    let (cg, burner) = common::throttled_burner(&name);
    let mut a = common::ScratchAgent::start(
        &tag,
        "alm",
        None,
        |dir| {
            format!(
                "[profile]\ninterval_ms = 300\n\n[metrics]\nlisten = \"off\"\n{}",
                common::cpu_allocate_toml(&name, false, &dir.join("state"))
            )
        },
        |_| {},
    );
    let state = a.dir.join("state");
    wait_raised(&cg, ORIGINAL_QUOTA);

    // A restart of the service: its cgroup removed and made again by its owner, with the
    // quota its unit says now (0.2 cores), and the busy process back in it.
    drop(burner);
    cg.remove().expect("remove the group");
    let cg = Cgroup::create(&name).expect("the group again");
    const NEW_QUOTA: &str = "20000";
    cg.write(Controller::Cpu, "cpu.cfs_quota_us", NEW_QUOTA)
        .expect("new quota");
    let mut burn = Command::new("python3");
    burn.args(["-c", "while True: pass"]);
    let burner = shadow_agent::sys::process::spawn(burn, None, Some(&cg)).expect("burner");
    // Gone then back, or made again between two looks: either way a new group.
    let g = wait_change(
        &a.lines,
        &name,
        &["recreated", "back"],
        Duration::from_secs(10),
    );
    assert!(g["missing"].is_null(), "{g}");
    // The old group's original (0.1 cores) is not written into the new one; the new group
    // is throttled, so it is raised again from its own quota ...
    let raised = wait_raised(&cg, NEW_QUOTA);
    assert_ne!(raised, ORIGINAL_QUOTA);
    let entries = common::audit(&state);
    let made_again = entries
        .iter()
        .find(|e| e["resource"] == "recreated")
        .unwrap_or_else(|| panic!("the dropped record is not audited: {entries:?}"));
    assert!(
        made_again["old"].to_string().contains(ORIGINAL_QUOTA),
        "{made_again}"
    );

    // ... and the quota it is given back at exit is the new owner's.
    let (st, err) = common::terminate(&mut a.proc, Duration::from_secs(30));
    assert!(st.success(), "agent failed: {err}");
    assert_eq!(
        quota(&cg),
        NEW_QUOTA,
        "the new owner's quota after the run: {err}"
    );

    // A stop of the service, under a new agent that raised it: the group gone. The agent
    // waits for it without errors, and at exit has nothing to write back.
    let mut b = common::ScratchAgent::start(
        &tag,
        "alm2",
        None,
        |_| std::fs::read_to_string(&a.cfg).expect("config"),
        |_| {},
    );
    wait_raised(&cg, NEW_QUOTA);
    drop(burner);
    cg.remove().expect("remove the group");
    let g = wait_change(&b.lines, &name, &["gone"], Duration::from_secs(10));
    assert_eq!(g["missing"], true, "{g}");
    let (st, err) = common::terminate(&mut b.proc, Duration::from_secs(30));
    assert!(st.success(), "agent failed: {err}");
    assert!(
        !err.contains("restoring the original limits on exit failed"),
        "{err}"
    );
    let records: Vec<_> = std::fs::read_dir(&state)
        .expect("state dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("original-"))
        .collect();
    assert!(records.is_empty(), "a record is left: {records:?}");
    let entries = common::audit(&state);
    let restore = entries
        .iter()
        .rev()
        .find(|e| e["resource"] == "restore")
        .unwrap_or_else(|| panic!("no restore at exit: {entries:?}"));
    assert!(
        restore["note"].as_str().is_some_and(|n| n.contains("gone")),
        "{restore}"
    );
}
