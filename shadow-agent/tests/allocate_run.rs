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

/// `run --json` (300 ms intervals, no metrics) managing the CPU of `group` (a name or a
/// pattern), its state in the scratch directory's `state`.
fn managing(tag: &str, scratch: &str, group: &str) -> common::ScratchAgent {
    common::ScratchAgent::start(
        tag,
        scratch,
        None,
        |dir| {
            format!(
                "[profile]\ninterval_ms = 300\n\n[metrics]\nlisten = \"off\"\n{}",
                common::cpu_allocate_toml(group, false, &dir.join("state"))
            )
        },
        |_| {},
    )
}

/// The original-limits records in `state`.
fn records(state: &Path) -> Vec<std::ffi::OsString> {
    std::fs::read_dir(state)
        .expect("state dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with("original-"))
        .collect()
}

/// `allocate.<name>` of the next `run --json` line (at most 10 s away) whose `change` is one
/// of `changes`.
fn change(
    lines: &std::sync::mpsc::Receiver<String>,
    name: &str,
    changes: &[&str],
) -> serde_json::Value {
    let v = common::wait_line(
        lines,
        &format!("allocate change {changes:?} of {name}"),
        Duration::from_secs(10),
        |v| changes.iter().any(|c| v["allocate"][name]["change"] == *c),
    );
    v["allocate"][name].clone()
}

#[test]
fn a_managed_group_made_again_keeps_its_new_owners_limits_and_one_gone_is_let_go() {
    use shadow_agent::sys::cgroup::{Cgroup, Controller};
    let tag = format!("{:x}", std::process::id() & 0xffffff);
    let name = format!("shdt{tag}-alm");
    let (cg, burner) = common::throttled_burner(&name);
    let mut a = managing(&tag, "alm", &name);
    let state = a.dir.join("state");
    common::wait_quota_change(&cg, ORIGINAL_QUOTA, "before the restart");

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
    let g = change(&a.lines, &name, &["recreated", "back"]);
    assert!(g["missing"].is_null(), "{g}");
    // The old group's original (0.1 cores) is not written into the new one; the new group
    // is throttled, so it is raised again from its own quota ...
    let raised = common::wait_quota_change(&cg, NEW_QUOTA, "the group made again");
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
    common::wait_quota_change(&cg, NEW_QUOTA, "under the second agent");
    drop(burner);
    cg.remove().expect("remove the group");
    let g = change(&b.lines, &name, &["gone"]);
    assert_eq!(g["missing"], true, "{g}");
    let (st, err) = common::terminate(&mut b.proc, Duration::from_secs(30));
    assert!(st.success(), "agent failed: {err}");
    assert!(
        !err.contains("restoring the original limits on exit failed"),
        "{err}"
    );
    let left = records(&state);
    assert!(left.is_empty(), "a record is left: {left:?}");
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

#[test]
fn a_pattern_manages_each_matching_group_from_when_it_appears_until_it_is_gone() {
    let tag = format!("{:x}", std::process::id() & 0xffffff);
    let prefix = format!("shdt{tag}-alp");
    let (a_name, b_name) = (format!("{prefix}-a"), format!("{prefix}-b"));
    let (cg_a, burner_a) = common::throttled_burner(&a_name);
    let pattern = format!("{prefix}-*");
    let mut agent = managing(&tag, "alp", &pattern);
    let state = agent.dir.join("state");

    // Matched at the first tick, and its throttled quota raised.
    let g = change(&agent.lines, &a_name, &["matched"]);
    assert_eq!(g["pattern"], pattern.as_str(), "{g}");
    common::wait_quota_change(&cg_a, ORIGINAL_QUOTA, "the group matched at start");

    // A group that appears later (another instance of a templated service) is managed too.
    let (cg_b, _burner_b) = common::throttled_burner(&b_name);
    change(&agent.lines, &b_name, &["matched"]);
    common::wait_quota_change(&cg_b, ORIGINAL_QUOTA, "the group matched later");

    // One that is gone (its service stopped) is let go, with nothing to write back.
    drop(burner_a);
    cg_a.remove().expect("remove a group");
    change(&agent.lines, &a_name, &["unmatched"]);

    // At exit the one still there has its hand-set quota back, and no record is left.
    let (st, err) = common::terminate(&mut agent.proc, Duration::from_secs(30));
    assert!(st.success(), "agent failed: {err}");
    assert_eq!(quota(&cg_b), ORIGINAL_QUOTA, "{err}");
    let left = records(&state);
    assert!(left.is_empty(), "records left: {left:?}");
    let entries = common::audit(&state);
    for name in [&a_name, &b_name] {
        assert!(
            entries.iter().any(|e| e["cgroup"] == name.as_str()
                && e["resource"] == "cpu"
                && e["applied"] == true),
            "{name} was not raised: {entries:?}"
        );
    }
}
