//! `shadow-agent run` follows its profiled cgroups as a service manager treats them: a
//! restarted service gets a new cgroup (same path, new id) and its CPU keeps being counted,
//! on from the old total; a removed one is reported missing; and a reload of
//! `[profile] cgroups` adds and removes cgroups live, refusing (by name) a path that is no
//! cgroup while keeping the rest.

mod common;

use std::{sync::mpsc::Receiver, time::Duration};

fn config(cgroups: &[&std::path::Path]) -> String {
    let list: Vec<String> = cgroups
        .iter()
        .map(|p| format!("\"{}\"", p.display()))
        .collect();
    format!(
        r#"
[profile]
cgroups = [{}]
interval_ms = 200

[metrics]
listen = "off"
"#,
        list.join(", ")
    )
}

/// CPU seconds of `key` in a status line.
fn cpu(s: &serde_json::Value, key: &str) -> f64 {
    s["cgroups"][key]["cpu_seconds"].as_f64().unwrap_or(-1.0)
}

/// The `"event": "cgroup"` lines of `key` until one shows `new_id` (at most 10 s each).
fn events_until(
    lines: &Receiver<String>,
    key: &str,
    new_id: Option<u64>,
) -> Vec<serde_json::Value> {
    let mut seen = Vec::new();
    loop {
        let ev = common::next_event(lines, "cgroup");
        if ev["cgroup"] != key {
            continue;
        }
        seen.push(ev.clone());
        if ev["new_id"].as_u64() == new_id {
            return seen;
        }
    }
}

/// The agent on `config(cgroups)`, in scratch directory `shdt{tag}-{name}`.
fn start(tag: &str, name: &str, cgroups: &[&std::path::Path]) -> common::ScratchAgent {
    common::ScratchAgent::start(tag, name, None, |_| config(cgroups), |_| {})
}

#[test]
fn profiled_cgroups_follow_restarts_and_reloads() {
    let tag = format!("{:x}", std::process::id() & 0xfffff);
    let (name_a, name_b) = (format!("shdt{tag}-pfa"), format!("shdt{tag}-pfb"));
    // Two services at 0.1 cores each (throttled burners).
    let (cg_a, burner_a) = common::throttled_burner(&name_a);
    let (cg_b, _burner_b) = common::throttled_burner(&name_b);
    let path_a = cg_a.unified_path().to_path_buf();
    let path_b = cg_b.unified_path().to_path_buf();
    let (key_a, key_b) = (path_a.display().to_string(), path_b.display().to_string());

    let agent = start(&tag, "pf", &[&path_a]);
    let (lines, status_file) = (&agent.lines, &agent.status);
    let s = common::wait_status(status_file, "A counted", Duration::from_secs(30), |s| {
        cpu(s, &key_a) > 0.15
    });
    assert!(
        s["cgroups"].get(&key_b).is_none(),
        "B is not profiled yet: {s}"
    );

    // A restart: the cgroup is removed and made again at once, with a new process.
    drop(burner_a);
    cg_a.remove().expect("remove A");
    let before = cpu(&common::status(status_file), &key_a);
    let (cg_a, burner_a) = common::throttled_burner(&name_a);
    let evs = events_until(lines, &key_a, Some(cg_a.id()));
    let last = evs.last().expect("an event");
    assert!(
        last["change"] == "recreated" || last["change"] == "back",
        "{evs:?}"
    );
    // The new cgroup is counted, on from the old total (never back to 0).
    common::wait_status(
        status_file,
        "A counted again after its restart",
        Duration::from_secs(15),
        |s| cpu(s, &key_a) > before + 0.15,
    );

    // Gone for good: reported missing, with an event.
    drop(burner_a);
    cg_a.remove().expect("remove A");
    let evs = events_until(lines, &key_a, None);
    assert_eq!(evs.last().unwrap()["change"], "gone", "{evs:?}");
    common::wait_status(status_file, "A missing", Duration::from_secs(10), |s| {
        s["cgroups"][&key_a]["missing"] == true
    });

    // A reload swaps A for B: B is profiled and forecast from then on, A is forgotten.
    agent.configure(&config(&[&path_b]));
    common::hup(agent.proc.pid());
    let ev = common::next_event(lines, "reload");
    assert_eq!(
        ev["applied"]["profile.cgroups"],
        serde_json::json!({"added": [key_b], "removed": [key_a]}),
        "{ev}"
    );
    assert_eq!(ev["restart_needed"], serde_json::json!([]), "{ev}");
    assert_eq!(ev["errors"], serde_json::json!([]), "{ev}");
    let s = common::wait_status(status_file, "B counted", Duration::from_secs(15), |s| {
        cpu(s, &key_b) > 0.15
    });
    assert!(s["cgroups"].get(&key_a).is_none(), "A still reported: {s}");
    assert!(
        s["forecast"]["series"].get(&key_b).is_some()
            && s["forecast"]["series"].get(&key_a).is_none(),
        "{}",
        s["forecast"]
    );

    // A path that is no cgroup: refused by name, B stays profiled.
    let nope = path_b.with_file_name(format!("shdt{tag}-nope"));
    agent.configure(&config(&[&path_b, &nope]));
    let out = common::reload(status_file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "profile.cgroups: {} is not a cgroup2 directory",
            nope.display()
        )),
        "{stderr}"
    );
    let b_then = cpu(&common::status(status_file), &key_b);
    common::wait_status(
        status_file,
        "B still counted",
        Duration::from_secs(10),
        |s| {
            cpu(s, &key_b) > b_then + 0.05 && s["cgroups"].get(nope.display().to_string()).is_none()
        },
    );

    agent.stop();
}

#[test]
fn a_profiled_cgroup_counts_its_descendants_except_those_profiled_themselves() {
    let tag = format!("{:x}", std::process::id() & 0xfffff);
    // A pod-like tree: the profiled parent holds no process; its "containers" do. c1 (and
    // later a grandchild made after the start) count as the parent; c2 is profiled itself.
    let parent = shadow_agent::sys::cgroup::Cgroup::create(&format!("shdt{tag}-pfp"))
        .expect("parent cgroup");
    let (_c1, b1) = common::throttled_burner(&format!("shdt{tag}-pfp/c1"));
    let (c2, _b2) = common::throttled_burner(&format!("shdt{tag}-pfp/c2"));
    let (key_p, key_c2) = (
        parent.unified_path().display().to_string(),
        c2.unified_path().display().to_string(),
    );

    let agent = start(&tag, "pfd", &[parent.unified_path(), c2.unified_path()]);
    let status_file = &agent.status;

    // Both burn at 0.1 cores: the parent counts c1's (not c2's), c2 its own.
    let s0 = common::wait_status(status_file, "both counted", Duration::from_secs(30), |s| {
        cpu(s, &key_p) > 0.1 && cpu(s, &key_c2) > 0.1
    });
    std::thread::sleep(Duration::from_secs(3));
    let s1 = common::status(status_file);
    let dt = s1["t_s"].as_f64().unwrap() - s0["t_s"].as_f64().unwrap();
    let rate = |k: &str| (cpu(&s1, k) - cpu(&s0, k)) / dt;
    let (rp, rc2) = (rate(&key_p), rate(&key_c2));
    assert!(
        rc2 > 0.06 && rc2 < 0.14,
        "c2 at {rc2:.3} cores, not its quota's 0.1"
    );
    assert!(
        rp > 0.06 && rp < 0.14,
        "parent at {rp:.3} cores: c1 alone is 0.1 (c2 would make it 0.2)"
    );

    // A cgroup made below c1 after the start counts too (from the next interval).
    drop(b1);
    let (_g, _bg) = common::throttled_burner(&format!("shdt{tag}-pfp/c1/g"));
    let before = cpu(&common::status(status_file), &key_p);
    common::wait_status(
        status_file,
        "grandchild counted",
        Duration::from_secs(15),
        |s| cpu(s, &key_p) > before + 0.2,
    );
    agent.stop();
}

#[test]
fn a_pattern_profiles_each_matching_cgroup_as_it_comes_and_goes() {
    let tag = format!("{:x}", std::process::id() & 0xfffff);
    // Two "pods" matching the pattern (one made after the start), one that does not match.
    let (x1, b1) = common::throttled_burner(&format!("shdt{tag}-pgx1"));
    let (_y, _by) = common::throttled_burner(&format!("shdt{tag}-pgy"));
    let pattern = x1.unified_path().with_file_name(format!("shdt{tag}-pgx*"));
    let key1 = x1.unified_path().display().to_string();
    let key_y = _y.unified_path().display().to_string();

    let agent = start(&tag, "pg", &[&pattern]);
    let (lines, status_file) = (&agent.lines, &agent.status);

    let evs = events_until(lines, &key1, Some(x1.id()));
    assert_eq!(evs.last().unwrap()["change"], "matched", "{evs:?}");
    common::wait_status(status_file, "x1 counted", Duration::from_secs(15), |s| {
        cpu(s, &key1) > 0.1
    });
    // A new match is profiled from the next interval.
    let (x2, _b2) = common::throttled_burner(&format!("shdt{tag}-pgx2"));
    let key2 = x2.unified_path().display().to_string();
    let evs = events_until(lines, &key2, Some(x2.id()));
    assert_eq!(evs.last().unwrap()["change"], "matched", "{evs:?}");
    let s = common::wait_status(status_file, "x2 counted", Duration::from_secs(15), |s| {
        cpu(s, &key2) > 0.1
    });
    assert!(
        s["cgroups"].get(&key_y).is_none(),
        "a non-match is profiled: {s}"
    );
    assert!(
        s["forecast"]["series"].get(&key2).is_some(),
        "{}",
        s["forecast"]
    );

    // A match that ends is dropped with its series (its successor would be a new path).
    drop(b1);
    x1.remove().expect("remove x1");
    let evs = events_until(lines, &key1, None);
    assert_eq!(evs.last().unwrap()["change"], "unmatched", "{evs:?}");
    let s = common::wait_status(status_file, "x1 dropped", Duration::from_secs(10), |s| {
        s["cgroups"].get(&key1).is_none() && s["cgroups"].get(&key2).is_some()
    });
    assert!(
        s["forecast"]["series"].get(&key1).is_none(),
        "{}",
        s["forecast"]
    );

    // A reload without the pattern drops what it matched.
    agent.configure(&config(&[]));
    common::hup(agent.proc.pid());
    let ev = common::next_event(lines, "reload");
    assert_eq!(
        ev["applied"]["profile.cgroups"],
        serde_json::json!({"added": [], "removed": [pattern]}),
        "{ev}"
    );
    common::wait_status(status_file, "x2 dropped", Duration::from_secs(10), |s| {
        s["cgroups"].as_object().is_some_and(|c| c.is_empty())
    });
    agent.stop();
}
