//! `shadow-agent run` for real: a config with a profiled cgroup, a shadow group and the
//! metrics endpoint; scraped over loopback while it runs; `status` reads its state; on exit
//! nothing it made is left.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use shadow_agent::sys::{cgroup::Cgroup, netns, process};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[test]
fn run_serves_metrics_publishes_status_and_cleans_up() {
    let tag = format!("{:x}", std::process::id() & 0xffffff);
    let cg = Cgroup::create(&format!("shdt{tag}-app")).expect("test cgroup");
    let mut burn = Command::new("python3");
    burn.args([
        "-c",
        "import time\nend=time.time()+6\nwhile time.time()<end: pass",
    ]);
    let _burner = process::spawn(burn, None, Some(&cg)).expect("burner");
    let port = free_port();
    let name = format!("r{}", &tag[..tag.len().min(7)]);
    let config = format!(
        r#"
[profile]
cgroups = ["{cg}"]
interval_ms = 200

[metrics]
listen = "127.0.0.1:{port}"

[shadow]
name = "{name}"
command = ["sleep", "30"]
addresses = ["198.19.253.2/30"]
cpu_cores = 0.25
memory_mb = 64
"#,
        cg = cg.unified_path().display()
    );
    let cfg_path = std::env::temp_dir().join(format!("shdt{tag}-run.toml"));
    std::fs::write(&cfg_path, config).expect("config");
    let status_file = std::env::temp_dir().join(format!("shdt{tag}-none.json"));
    let agent = Command::new(env!("CARGO_BIN_EXE_shadow-agent"))
        .args(["run", "--json", "--duration", "4", "--config"])
        .arg(&cfg_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start agent");

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut metrics = None;
    let mut metrics_seen = None;
    while Instant::now() < deadline {
        if let Some(body) = http_get(port, "/metrics") {
            // The first intervals may not have charged the burner's CPU yet: wait for a
            // scrape that shows more than 0.1 s of it.
            let cpu = body
                .lines()
                .find(|l| {
                    l.starts_with("shadow_cgroup_cpu_seconds_total")
                        && l.contains(&format!("shdt{tag}-app"))
                })
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
            if body.contains("shadow_replicas 1") && cpu > 0.1 {
                metrics = Some(body);
                break;
            }
            metrics_seen = Some(body);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let health = http_get(port, "/healthz").unwrap_or_default();
    let status = Command::new(env!("CARGO_BIN_EXE_shadow-agent"))
        .args(["status", "--json"])
        .output()
        .expect("status");
    let table = Command::new(env!("CARGO_BIN_EXE_shadow-agent"))
        .arg("status")
        .output()
        .expect("status");
    let missing = Command::new(env!("CARGO_BIN_EXE_shadow-agent"))
        .args(["status", "--file"])
        .arg(&status_file)
        .output()
        .expect("status");
    let out = agent.wait_with_output().expect("agent exit");
    let _ = std::fs::remove_file(&cfg_path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "agent failed: {stderr}");

    let metrics = metrics.unwrap_or_else(|| {
        panic!("no complete scrape; last one: {metrics_seen:?}; agent stderr: {stderr}")
    });
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    let cpu_line = metrics
        .lines()
        .find(|l| {
            l.starts_with("shadow_cgroup_cpu_seconds_total")
                && l.contains(&format!("shdt{tag}-app"))
        })
        .unwrap_or_else(|| panic!("no CPU series for the test cgroup: {metrics}"));
    let cpu: f64 = cpu_line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("value");
    assert!(cpu > 0.1, "{cpu_line}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("shadow_cgroup_memory_bytes")
                && l.contains(&format!("shdt{tag}-app"))),
        "no memory series for the test cgroup: {metrics}"
    );
    // The status table has a row for the profiled cgroup: its cores and MiB.
    let table = String::from_utf8_lossy(&table.stdout);
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with(&cg.unified_path().display().to_string()))
        .unwrap_or_else(|| panic!("no row for the cgroup: {table}"))
        .split_whitespace()
        .collect();
    assert!(
        row.len() == 3 && row[1].parse::<f64>().is_ok() && row[2].parse::<f64>().is_ok(),
        "{row:?}"
    );
    assert!(
        metrics.contains("shadow_discard_dropped_packets_total{replica="),
        "{metrics}"
    );
    assert!(
        health.starts_with("HTTP/1.1 200") && health.ends_with("ok\n"),
        "{health}"
    );

    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    assert_eq!(v["shadow"][0]["running"], true, "{v}");
    assert_eq!(v["shadow"][0]["netns"], format!("shd-{name}-0"), "{v}");
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no running agent"));

    // Every interval printed one JSON line.
    let lines = String::from_utf8_lossy(&out.stdout).lines().count();
    assert!(lines >= 10, "{lines} lines");
    // Nothing of the shadow group is left.
    assert!(!netns::list()
        .expect("netns")
        .iter()
        .any(|n| n.starts_with(&format!("shd-{name}-"))));
    assert!(!std::path::Path::new(&format!("/sys/fs/cgroup/unified/shd-{name}")).exists());
    assert!(!std::path::Path::new(shadow_agent::status::STATUS_FILE).exists());
}

#[test]
fn a_bad_metrics_address_exits_2_before_attaching() {
    let p = std::env::temp_dir().join(format!("shdt{}-badm.toml", std::process::id()));
    std::fs::write(&p, "[metrics]\nlisten = \"127.0.0.1:99999\"\n").expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_shadow-agent"))
        .args(["check-config"])
        .arg(&p)
        .output()
        .expect("run");
    let _ = std::fs::remove_file(&p);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("metrics.listen"));
}
