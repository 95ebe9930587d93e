//! `shadow-agent forecast`: on a recorded trace (`--data`), and live from a short `run` that
//! profiles a cgroup burning CPU (`--cgroup`), with the errors a user sees.

use std::{
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use shadow_agent::sys::{cgroup::Cgroup, process};

fn trace(set: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/traces")
        .join(set)
        .join("usage.csv");
    assert!(p.exists(), "trace {} is missing", p.display());
    p
}

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shadow-agent"))
        .args(args)
        .output()
        .expect("run shadow-agent")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Every step's intervals are nested around the point: lo95 <= lo80 <= point <= hi80 <= hi95.
fn check_steps(v: &serde_json::Value, horizon: usize) {
    let steps = v["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), horizon, "{v}");
    for s in steps {
        let p = s["point"].as_f64().unwrap();
        let i80 = &s["intervals"]["80"];
        let i95 = &s["intervals"]["95"];
        let (l80, h80) = (i80[0].as_f64().unwrap(), i80[1].as_f64().unwrap());
        let (l95, h95) = (i95[0].as_f64().unwrap(), i95[1].as_f64().unwrap());
        assert!(
            l95 <= l80 && l80 <= p && p <= h80 && h80 <= h95,
            "not nested: {s}"
        );
    }
}

fn metrics(port: u16) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect /metrics");
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("response");
    out
}

#[test]
fn forecast_a_recorded_series() {
    let file = trace("bitbrains_rnd");
    let f = file.to_str().unwrap();
    let series = "bitbrains_rnd_2013-8_vm10";
    let out = agent(&[
        "forecast",
        "--data",
        f,
        "--metric",
        "cpu_pct",
        "--series",
        series,
        "--horizon",
        "6",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["series"], series);
    assert_eq!(v["step_s"], 300.0);
    assert_eq!(v["samples"], 576);
    check_steps(&v, 6);
    // The table: a header and one row per step.
    let out = agent(&[
        "forecast",
        "--data",
        f,
        "--metric",
        "mem_used_kb",
        "--series",
        series,
        "--horizon",
        "3",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let t = text(&out.stdout);
    assert_eq!(t.lines().count(), 5, "{t}");
    assert!(t.lines().nth(1).unwrap().contains("hi95"), "{t}");

    // Errors name what is wrong, exit 2.
    for (args, needle) in [
        (vec!["--metric", "cpu_pct"], "choose one with --series"),
        (
            vec!["--metric", "cpu_pct", "--series", "vm-nope"],
            "no series \"vm-nope\"",
        ),
        (
            vec!["--metric", "gpu_pct", "--series", series],
            "no column \"gpu_pct\"",
        ),
        (
            vec!["--metric", "cpu_pct", "--series", series, "--window", "40"],
            "needs at least",
        ),
    ] {
        let mut a = vec!["forecast", "--data", f];
        a.extend(args);
        let out = agent(&a);
        assert_eq!(out.status.code(), Some(2), "{a:?}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains(needle),
            "{a:?}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn forecast_a_cgroup_of_the_running_agent() {
    let tag = format!("{:x}", std::process::id() & 0xffffff);
    let cg = Cgroup::create(&format!("shdt{tag}-fc")).expect("test cgroup");
    let path = cg.unified_path().display().to_string();
    let mut burn = Command::new("python3");
    burn.args([
        "-c",
        "import time\nheld=b'x'*(64<<20)\nend=time.time()+40\nwhile time.time()<end: pass",
    ]);
    let _burner = process::spawn(burn, None, Some(&cg)).expect("burner");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    // The forecast history, kept across the restart at the end.
    let history_dir = std::env::temp_dir().join(format!("shdt{tag}-fc-history"));
    struct RmDir(std::path::PathBuf);
    impl Drop for RmDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _history_dir = RmDir(history_dir.clone());
    let history = history_dir.join("history.json");
    // 100 ms intervals, one interval per step, horizon 3: the policy needs 85 steps.
    let config = format!(
        r#"
[profile]
cgroups = ["{path}"]
interval_ms = 100

[metrics]
listen = "127.0.0.1:{port}"

[forecast]
step_intervals = 1
horizon = 3
window = 120
history_file = "{history}"
"#,
        history = history.display()
    );
    let cfg_path = std::env::temp_dir().join(format!("shdt{tag}-fc.toml"));
    std::fs::write(&cfg_path, config).expect("config");
    // A status file of its own: other agents may run on this host.
    let status_path = std::env::temp_dir().join(format!("shdt{tag}-fc-status/status.json"));
    let status_file = status_path.to_str().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_shadow-agent"))
        .args(["run", "--json", "--duration", "30", "--config"])
        .env("SHADOW_STATUS_FILE", status_file)
        .arg(&cfg_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start agent");
    /// Stops the agent with SIGTERM (so it detaches and withdraws its status) even if the
    /// test fails.
    struct Kill(std::process::Child);
    impl Kill {
        fn stop(&mut self) {
            let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = self.0.wait();
        }
    }
    impl Drop for Kill {
        fn drop(&mut self) {
            self.stop();
        }
    }
    let mut run = Kill(run);

    let deadline = Instant::now() + Duration::from_secs(28);
    let mut warming = None;
    let mut last = None;
    let mut json = None;
    while Instant::now() < deadline {
        let out = agent(&[
            "forecast",
            "--cgroup",
            &path,
            "--json",
            "--status-file",
            status_file,
        ]);
        if out.status.success() {
            json = Some(out);
            break;
        }
        let err = text(&out.stderr);
        if err.contains("warming up") {
            warming = Some(err.clone());
        }
        last = Some((out.status.code(), err));
        std::thread::sleep(Duration::from_millis(300));
    }
    let json = json.unwrap_or_else(|| panic!("no forecast in time; last answer {last:?}"));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    // Before the history was long enough, the answer said so and named the cgroup.
    let warming = warming.expect("a warming-up answer before the first forecast");
    assert!(warming.contains(&path), "{warming}");
    assert_eq!(v["cgroup"], path.as_str());
    assert_eq!(v["unit"], "cores");
    assert_eq!(v["source"], "direct");
    assert!(v["reason"].as_str().unwrap().contains("no mirror"), "{v}");
    check_steps(&v, 3);
    // The burner keeps about one core busy (less on a loaded machine, never more than 2).
    let p = v["steps"][0]["point"].as_f64().unwrap();
    assert!(p > 0.2 && p < 2.2, "point {p} cores: {v}");
    // --horizon, the table, and the errors while the agent runs.
    let out = agent(&[
        "forecast",
        "--cgroup",
        &path,
        "--horizon",
        "2",
        "--status-file",
        status_file,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).lines().count(),
        4,
        "{}",
        text(&out.stdout)
    );
    let out = agent(&[
        "forecast",
        "--cgroup",
        &path,
        "--horizon",
        "9",
        "--status-file",
        status_file,
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("3 steps"),
        "{}",
        text(&out.stderr)
    );
    let other = "/sys/fs/cgroup/unified/shdt-not-tracked";
    let out = agent(&["forecast", "--cgroup", other, "--status-file", status_file]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains(other) && err.contains("not tracked") && err.contains(&path),
        "{err}"
    );
    // /metrics has the highest upper bound over the horizon, per level, at least the point.
    let scrape = metrics(port);
    let upper = |level: &str| -> f64 {
        scrape
            .lines()
            .find(|l| {
                l.starts_with("shadow_forecast_upper_bound{")
                    && l.contains(&format!("cgroup=\"{path}\""))
                    && l.contains("resource=\"cpu\"")
                    && l.contains(&format!("level=\"{level}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no upper bound at {level}% for {path}: {scrape}"))
    };
    assert!(upper("95") >= upper("80") && upper("80") >= p, "{scrape}");
    // Its memory is a series of its own: the burner holds 64 MiB.
    let mem = (0..20)
        .find_map(|_| {
            let out = agent(&[
                "forecast",
                "--cgroup",
                &path,
                "--resource",
                "memory",
                "--json",
                "--status-file",
                status_file,
            ]);
            if out.status.success() {
                return Some(out);
            }
            assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
            std::thread::sleep(Duration::from_millis(200));
            None
        })
        .expect("a memory forecast");
    let m: serde_json::Value = serde_json::from_slice(&mem.stdout).expect("JSON");
    assert_eq!(m["unit"], "bytes", "{m}");
    assert_eq!(m["metric"], "memory", "{m}");
    // No mirror and shadow group in this run: the memory forecast is direct, and says why.
    assert!(m["reason"].as_str().unwrap().contains("no mirror"), "{m}");
    check_steps(&m, 3);
    let mp = m["steps"][0]["point"].as_f64().unwrap();
    assert!(
        mp > 60.0 * 1048576.0 && mp < 1024.0 * 1048576.0,
        "memory point {mp} bytes: {m}"
    );
    let scrape = metrics(port);
    assert!(
        scrape.lines().any(|l| {
            l.starts_with("shadow_forecast_upper_bound{")
                && l.contains(&format!("cgroup=\"{path}\""))
                && l.contains("resource=\"memory\"")
        }),
        "no memory upper bound in /metrics: {scrape}"
    );
    // The status file carries the fitting cost.
    let st = agent(&["status", "--json", "--file", status_file]);
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).expect("status JSON");
    assert!(st["forecast"]["fits"].as_u64().unwrap() >= 1, "{st}");

    run.stop();
    assert!(!status_path.exists(), "the agent left its status file");

    // Restarted, the agent forecasts from its first interval on: the history it wrote at
    // exit is read back (a fresh start would need 85 steps of 100 ms first).
    assert!(
        history.is_file(),
        "no forecast history at {}",
        history.display()
    );
    let again = Command::new(env!("CARGO_BIN_EXE_shadow-agent"))
        .args(["run", "--json", "--duration", "1", "--config"])
        .env("SHADOW_STATUS_FILE", status_file)
        .arg(&cfg_path)
        .output()
        .expect("run again");
    assert!(again.status.success(), "{}", text(&again.stderr));
    let first: serde_json::Value = text(&again.stdout)
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .expect("a status line");
    let f = &first["forecast"];
    assert!(f["restored"]["taken"].as_u64().unwrap() >= 2, "{f}");
    assert_eq!(f["restored"]["discarded"], serde_json::Value::Null, "{f}");
    assert!(
        f["series"][&path]["point"].is_array(),
        "no forecast in the first interval after the restart: {f}"
    );
    let _ = std::fs::remove_file(&cfg_path);
    // No agent: the error names the cgroup and says why.
    let out = agent(&[
        "forecast",
        "--cgroup",
        &path,
        "--status-file",
        "/run/shdt-no-agent/status.json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&path) && err.contains("no running agent"),
        "{err}"
    );
}
