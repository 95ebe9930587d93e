//! The running agent's state, published as a file for `shadow-agent status`.
//!
//! `run` rewrites [`STATUS_FILE`] atomically (write, then rename) every interval and removes
//! it on exit. `status` reads it; a file whose agent pid is gone is reported as stale.

use std::path::{Path, PathBuf};

/// Where `run` publishes its state.
pub const STATUS_FILE: &str = "/run/shadow-agent/status.json";

/// Where this `run` publishes: `$SHADOW_STATUS_FILE` if set (several agents on one host, or
/// tests beside a running agent), else [`STATUS_FILE`].
pub fn status_path() -> PathBuf {
    std::env::var_os("SHADOW_STATUS_FILE")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(STATUS_FILE), PathBuf::from)
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("no running agent: {path} does not exist")]
    NotRunning { path: PathBuf },
    #[error("agent {pid} that wrote {path} is no longer running (stale status)")]
    Stale { path: PathBuf, pid: u64 },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid status JSON")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Publish `state` (a JSON object; `agent_pid` and `updated_unix_s` are added).
pub fn publish(path: &Path, mut state: serde_json::Value) -> Result<(), StatusError> {
    let io = |op, source| StatusError::Io {
        op,
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
    }
    state["agent_pid"] = std::process::id().into();
    state["updated_unix_s"] = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
        .into();
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, state.to_string()).map_err(|e| io("writing", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("renaming onto", e))
}

/// Remove the published state (on exit), and the directory when it is empty.
pub fn withdraw(path: &Path) {
    let _ = std::fs::remove_file(path);
    if let Some(dir) = path.parent() {
        let _ = std::fs::remove_dir(dir);
    }
}

/// Read the state of the running agent.
pub fn read(path: &Path) -> Result<serde_json::Value, StatusError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StatusError::NotRunning {
                path: path.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(StatusError::Io {
                op: "reading",
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| StatusError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
    let pid = v["agent_pid"].as_u64().unwrap_or(0);
    if pid == 0 || !Path::new(&format!("/proc/{pid}")).exists() {
        return Err(StatusError::Stale {
            path: path.to_path_buf(),
            pid,
        });
    }
    Ok(v)
}

/// A human-readable rendering of the state.
pub fn render(v: &serde_json::Value) -> String {
    let mut out = format!(
        "agent pid {} (updated {:.0} s ago)\n",
        v["agent_pid"],
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
            - v["updated_unix_s"].as_f64().unwrap_or(0.0)
    );
    if let Some(m) = v.get("mirror").filter(|m| !m.is_null()) {
        out.push_str(&format!(
            "mirror: seen {} cloned {} clone_failed {}\n",
            m["seen"], m["cloned"], m["clone_failed"]
        ));
        if let Some(i) = m["interface"].as_str() {
            out.push_str(&format!(
                "mirror: on {i} ({})\n",
                m["tc_mode"].as_str().unwrap_or("?")
            ));
        }
        if let Some(gone) = m["missing"].as_array().filter(|g| !g.is_empty()) {
            let names: Vec<&str> = gone.iter().filter_map(|g| g.as_str()).collect();
            out.push_str(&format!(
                "mirror: interface gone: {} (nothing mirrored through it until it is back)\n",
                names.join(", ")
            ));
        }
    }
    if let Some(cgroups) = v["cgroups"].as_object().filter(|c| !c.is_empty()) {
        out.push_str(
            "cgroup                                                   cpu_cores  memory_mib\n",
        );
        for (path, c) in cgroups {
            if c["missing"] == true {
                out.push_str(&format!(
                    "{path:<56} missing (waiting for it to come back)\n"
                ));
                continue;
            }
            let num = |x: &serde_json::Value, scale: f64| {
                x.as_f64()
                    .map_or("-".to_owned(), |v| format!("{:.3}", v / scale))
            };
            out.push_str(&format!(
                "{path:<56} {:<10} {}\n",
                num(&c["cpu_cores"], 1.0),
                num(&c["memory_bytes"], 1048576.0)
            ));
        }
    }
    let h = &v["allocate_history"];
    if h.is_object() {
        match h["discarded"].as_str() {
            Some(why) => out.push_str(&format!("allocate: usage history not restored: {why}\n")),
            None => out.push_str(&format!(
                "allocate: usage history restored for {} group(s) ({} intervals filled)\n",
                h["taken"], h["gap_intervals"]
            )),
        }
    }
    if let Some(series) = v["forecast"]["series"].as_object() {
        let f = &v["forecast"];
        out.push_str(&format!(
            "forecast: step {} s, {} fits, {:.3}% of one core fitting (`shadow-agent forecast --cgroup PATH` for every step)\n",
            f["step_s"],
            f["fits"],
            f["fit_cpu_share_of_one_core"].as_f64().unwrap_or(0.0) * 100.0
        ));
        let r = &f["restored"];
        if r.is_object() {
            match r["discarded"].as_str() {
                Some(why) => out.push_str(&format!("  history not restored: {why}\n")),
                None => out.push_str(&format!(
                    "  history restored for {} series ({} steps filled)\n",
                    r["taken"], r["gap_steps"]
                )),
            }
        }
        for (path, s) in series {
            match s["point"].as_array().and_then(|p| p.first()) {
                Some(p) => out.push_str(&format!(
                    "  {path}: next step {:.3} {} ({})\n",
                    p.as_f64().unwrap_or(f64::NAN),
                    s["unit"].as_str().unwrap_or(""),
                    s["source"].as_str().unwrap_or("")
                )),
                None => out.push_str(&format!(
                    "  {path}: warming up ({})\n",
                    s["warming_up"].as_str().unwrap_or("")
                )),
            }
        }
    }
    if let Some(groups) = v["allocate"].as_object().filter(|g| !g.is_empty()) {
        out.push_str(
            "managed group                                            cpu_cores  memory_mib\n",
        );
        for (name, g) in groups {
            if g["missing"] == true {
                out.push_str(&format!("{name:<56} missing (no steps until it is back)\n"));
                continue;
            }
            if let Some(e) = g["error"].as_str() {
                out.push_str(&format!("{name:<56} error: {e}\n"));
                continue;
            }
            let num = |x: &serde_json::Value, scale: f64| {
                x.as_f64()
                    .map_or("-".to_owned(), |v| format!("{:.3}", v / scale))
            };
            let mut row = format!(
                "{name:<56} {:<10} {}",
                num(&g["cpu_cores"], 1.0),
                num(&g["memory_bytes"], 1048576.0)
            );
            if let Some(c) = g["change"].as_str() {
                row.push_str(&format!("  ({c})"));
            }
            if let Some(b) = g["step"]["backing_off"].as_object() {
                row.push_str(&format!(
                    "  backing off: {}",
                    b.get("last_error").and_then(|e| e.as_str()).unwrap_or("")
                ));
            }
            out.push_str(&row);
            out.push('\n');
        }
    }
    if let Some(rate) = v["sample_rate"].as_f64() {
        out.push_str(&format!("sample rate: {rate}\n"));
    }
    if let Some(a) = v.get("autoscale").filter(|a| !a.is_null()) {
        out.push_str(&format!(
            "autoscale: {} ({})\n",
            a["action"].as_str().unwrap_or("?"),
            a["reason"].as_str().unwrap_or("")
        ));
    }
    if let Some(a) = v
        .get("autoscale_last_change")
        .filter(|a| !a.is_null() && a["action"].is_string())
    {
        out.push_str(&format!(
            "last change: {} to {} replicas, sample rate {} ({})\n",
            a["action"].as_str().unwrap_or("?"),
            a["replicas"],
            a["sample_rate"],
            a["reason"].as_str().unwrap_or("")
        ));
    }
    if let Some(r) = v.get("last_reload").filter(|r| r["event"] == "reload") {
        out.push_str(&format!(
            "last reload: t={:.0}s, {}\n",
            r["t_s"].as_f64().unwrap_or(0.0),
            crate::reload::describe(r)
        ));
    }
    if let Some(replicas) = v["shadow"].as_array() {
        out.push_str("replica  pid      netns                 cgroup             up_s   restarts  flows    tx_dropped_pkts  tx_dropped_bytes  refused_connects  p50_ms  p99_ms\n");
        for r in replicas {
            let d = &r["discard"];
            out.push_str(&format!(
                "{:<8} {:<8} {:<21} {:<18} {:<6.0} {:<9} {:<8} {:<16} {:<17} {:<17} {:<7} {}\n",
                r["index"],
                r["pid"],
                r["netns"].as_str().unwrap_or(""),
                r["cgroup"].as_str().unwrap_or(""),
                r["uptime_s"].as_f64().unwrap_or(0.0),
                r["restarts"],
                r["mirrored_flows"],
                d["tx_dropped_packets"],
                d["tx_dropped_bytes"],
                d["connect_refused"].as_u64().unwrap_or(0)
                    + d["sendmsg_refused"].as_u64().unwrap_or(0),
                r["latency"]["p50_ms"],
                r["latency"]["p99_ms"],
            ));
        }
    }
    if let Some(refused) = v["refused"].as_array() {
        for (i, per) in refused.iter().enumerate() {
            for d in per.as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "refused by replica {i}: {} port {} {} ({} attempts)\n",
                    d["addr"].as_str().unwrap_or("?"),
                    d["port"],
                    d["proto"].as_str().unwrap_or("?"),
                    d["attempts"]
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_read_withdraw() {
        let dir = std::env::temp_dir().join(format!("shdt-status-{}", std::process::id()));
        let path = dir.join("status.json");
        assert!(matches!(read(&path), Err(StatusError::NotRunning { .. })));
        publish(&path, serde_json::json!({"shadow": [], "mirror": null})).unwrap();
        let v = read(&path).unwrap();
        assert_eq!(v["agent_pid"].as_u64(), Some(u64::from(std::process::id())));
        assert!(render(&v).starts_with("agent pid"));
        // What a run with a group, a mirror and autoscaling publishes shows up in the table.
        let full = serde_json::json!({
            "agent_pid": 1, "updated_unix_s": 0.0, "sample_rate": 0.25,
            "autoscale": {"action": "hold", "reason": "cooldown"},
            "autoscale_last_change": {"action": "lower_sample", "replicas": 3,
                "sample_rate": 0.25, "reason": "at replicas_max 3"},
            "shadow": [{"index": 0, "pid": 42, "netns": "shd-web-0", "cgroup": "shd-web/r0",
                "uptime_s": 3.0, "restarts": 1, "mirrored_flows": 17,
                "latency": {"p50_ms": 1.5, "p99_ms": 9.0},
                "discard": {"tx_dropped_packets": 5, "tx_dropped_bytes": 300,
                    "connect_refused": 2, "sendmsg_refused": 1}}],
            "refused": [[{"addr": "10.0.0.1", "port": 53, "proto": "udp", "attempts": 3}]],
            "cgroups": {"/cg/web": {"cpu_seconds": 9.0, "cpu_cores": 0.25,
                "memory_bytes": 3145728}, "/cg/gone": {"missing": true}},
            "mirror": {"seen": 10, "cloned": 9, "clone_failed": 0, "missing": ["veth1"],
                "interface": "cali0a1b", "tc_mode": "clsact"},
            "allocate": {"web.service": {"cpu_cores": 0.5, "memory_bytes": 2097152,
                "change": "recreated", "step": {"backing_off": null}},
                "old.service": {"missing": true, "change": null}},
            "allocate_history": {"file": "/s/forecast-history.json", "groups": 2, "taken": 1,
                "gap_intervals": 4},
            "forecast": {"step_s": 60, "fits": 3, "fit_cpu_share_of_one_core": 0.0,
                "restored": {"file": "/h.json", "series": 2, "taken": 1, "gap_steps": 3},
                "series": {}},
        });
        let text = render(&full);
        let cg = |p: &str| -> Vec<String> {
            text.lines()
                .find(|l| l.starts_with(p))
                .unwrap_or_else(|| panic!("no row for {p}: {text}"))
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(cg("/cg/web"), ["/cg/web", "0.250", "3.000"]);
        assert_eq!(cg("/cg/gone")[1], "missing");
        assert_eq!(
            cg("web.service"),
            ["web.service", "0.500", "2.000", "(recreated)"]
        );
        assert_eq!(cg("old.service")[1], "missing");
        assert!(text.contains("interface gone: veth1"), "{text}");
        assert!(text.contains("mirror: on cali0a1b (clsact)"), "{text}");
        assert!(
            text.contains("usage history restored for 1 group(s) (4 intervals filled)"),
            "{text}"
        );
        assert!(
            text.contains("history restored for 1 series (3 steps filled)"),
            "{text}"
        );
        assert!(text.contains("sample rate: 0.25"), "{text}");
        assert!(!text.contains("last reload"), "{text}");
        let mut reloaded = full.clone();
        reloaded["last_reload"] = crate::reload::event(
            12.0,
            &crate::reload::Plan {
                sample_rate: Some((1.0, 0.25)),
                ..Default::default()
            },
            &["mirror"],
            &[],
        );
        assert!(
            render(&reloaded).contains(
                "last reload: t=12s, applied: mirror.sample_rate [1.0,0.25]; restart needed: mirror"
            ),
            "{}",
            render(&reloaded)
        );
        assert!(
            text.contains("last change: lower_sample to 3 replicas"),
            "{text}"
        );
        let row = text
            .lines()
            .find(|l| l.starts_with("0 "))
            .expect("replica row");
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cols,
            [
                "0",
                "42",
                "shd-web-0",
                "shd-web/r0",
                "3",
                "1",
                "17",
                "5",
                "300",
                "3",
                "1.5",
                "9.0"
            ]
        );
        assert!(
            text.contains("refused by replica 0: 10.0.0.1 port 53 udp (3 attempts)"),
            "{text}"
        );
        // A file left by a dead agent is stale.
        let mut dead = v.clone();
        dead["agent_pid"] = 0x7fff_fff0u64.into();
        std::fs::write(&path, dead.to_string()).unwrap();
        assert!(matches!(read(&path), Err(StatusError::Stale { .. })));
        withdraw(&path);
        assert!(!dir.exists());
    }
}
