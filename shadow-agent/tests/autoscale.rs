//! Autoscaling through the CLI: `shadow-agent run` with a shadow group of 1 to 2 replicas
//! under a 0.1-CPU group cap and `[shadow.autoscale]`, fed by the mirror from a real HTTP
//! server that curl drives with directory listings (a few ms of CPU each). Under load the
//! group must grow to 2 replicas, then, at its maximum with the budget spent, lower the
//! mirror's sample rate; once the load stops it must raise the rate back to the configured
//! one and shrink to 1 replica. Every decision carries a reason; `status` shows the sample
//! rate and the flows per replica while it runs.

mod common;

use std::{
    net::Ipv4Addr,
    process::{Command, Stdio},
    time::Duration,
};

use shadow_agent::sys::{
    link::{self},
    process,
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 19, 27, 1);
const NODE_C: Ipv4Addr = Ipv4Addr::new(198, 19, 27, 2);
const NODE_P: Ipv4Addr = Ipv4Addr::new(198, 19, 28, 1);
const PRIMARY: Ipv4Addr = Ipv4Addr::new(198, 19, 28, 2);

#[test]
fn run_scales_the_group_up_under_load_lowers_the_sample_at_its_budget_and_recovers_when_idle() {
    let tag = format!("{:x}", std::process::id() & 0xfffff);
    let dir = std::env::temp_dir().join(format!("shdt{tag}-as"));
    std::fs::create_dir_all(&dir).expect("dir");
    let _rm = common::RmDir(dir.clone());
    // A directory listing costs the server a few ms of CPU per request.
    for i in 0..400 {
        std::fs::write(dir.join(format!("file-{i:04}.txt")), "x").expect("file");
    }

    let common::Routed {
        client,
        node,
        primary,
        nc,
        links: _links,
    } = common::Routed::new(
        &tag,
        'a',
        common::Addrs {
            client: CLIENT,
            node_c: NODE_C,
            node_p: NODE_P,
            primary: PRIMARY,
        },
    );

    let _primary_srv = common::http_primary(&primary, PRIMARY, &dir, Stdio::null());

    let name = format!("a{}", &tag[..tag.len().min(6)]);
    let status_file = dir.join("status.json");
    // Any port: the agent's loopback is the node namespace's own.
    let port = 9464 + (std::process::id() % 500) as u16;
    let config = format!(
        r#"
[mirror]
interface = "{nc}"
tcp_sessions = "translate"
[[mirror.rules]]
dst = "{PRIMARY}/32"
ports = "8080"
proto = "tcp"

[shadow]
name = "{name}"
command = ["python3", "-m", "http.server", "--bind", "{PRIMARY}", "8080", "--directory", "{dir}"]
addresses = ["{PRIMARY}/24"]
replicas_min = 1
replicas_max = 2
cpu_cores = 0.1
memory_mb = 256

[shadow.autoscale]
scale_up_cores = 0.02
scale_down_cores = 0.005
scale_up_runq_p99_us = 0
budget_high = 0.7
budget_low = 0.3
sample_step = 0.5
sample_min = 0.1
cooldown_s = 1

[profile]
interval_ms = 500

[metrics]
listen = "127.0.0.1:{port}"
"#,
        dir = dir.display(),
    );
    let cfg = dir.join("agent.toml");
    std::fs::write(&cfg, &config).expect("config");

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shadow-agent"));
    cmd.args(["run", "--json", "--duration", "45", "--status-file"])
        .arg(&status_file)
        .arg("--config")
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut agent = process::spawn(cmd, Some(&node), None).expect("agent");
    let (rx, reader) = common::stdout_lines(&mut agent);
    let first = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the agent printed no status line");
    assert!(first.contains("\"autoscale\""), "{first}");
    std::thread::sleep(Duration::from_secs(2));

    // ~18 s of load: 60 directory listings per second, one connection each.
    let mut curl = Command::new("curl");
    curl.args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}\\n",
        "--max-time",
        "5",
        "--rate",
        "60/s",
    ])
    .arg(format!("http://{PRIMARY}:8080/?i=[1-1080]"))
    .stdout(Stdio::piped());
    let mut c = process::spawn(curl, Some(&client), None).expect("curl");
    // While the load runs, `status` shows the sample rate and the flows per replica.
    std::thread::sleep(Duration::from_secs(8));
    let st = Command::new(env!("CARGO_BIN_EXE_shadow-agent"))
        .args(["status", "--json", "--file"])
        .arg(&status_file)
        .output()
        .expect("status");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let sv: serde_json::Value = serde_json::from_slice(&st.stdout).expect("status JSON");
    assert!(sv["sample_rate"].as_f64().is_some(), "{sv}");
    assert!(
        sv["shadow"][0]["mirrored_flows"].as_u64().unwrap_or(0) > 0,
        "no flows on replica 0: {sv}"
    );
    // The latency of the mirrored requests, measured in the kernel at replica 0's veth.
    let lat = &sv["shadow"][0]["latency"];
    assert!(lat["replies"].as_u64().unwrap_or(0) > 0, "{sv}");
    assert!(lat["p50_ms"].as_f64().unwrap_or(0.0) > 0.0, "{sv}");
    // The decisions and the sample rate are metrics too.
    let mut m = Command::new("curl");
    m.args(["-sf", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{port}/metrics"))
        .stdout(Stdio::piped());
    let mut mc = process::spawn(m, Some(&node), None).expect("curl metrics");
    let metrics =
        std::io::read_to_string(mc.child_mut().stdout.take().expect("stdout")).unwrap_or_default();
    let _ = mc.wait_timeout(Duration::from_secs(10));
    assert!(
        metrics.contains("shadow_autoscale_decisions_total{action=\"scale_up\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("shadow_mirror_sample_rate "), "{metrics}");
    let table = Command::new(env!("CARGO_BIN_EXE_shadow-agent"))
        .args(["status", "--file"])
        .arg(&status_file)
        .output()
        .expect("status");
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    assert!(
        table.contains("sample rate:") && table.contains("flows"),
        "{table}"
    );

    let codes = std::io::read_to_string(c.child_mut().stdout.take().expect("curl stdout"))
        .unwrap_or_default();
    let _ = c.wait_timeout(Duration::from_secs(30));
    let ok = codes.lines().filter(|l| *l == "200").count();
    assert_eq!(
        ok, 1080,
        "the primary failed requests while the group scaled"
    );

    let (status, stderr) = common::wait_exit(&mut agent, Duration::from_secs(60));
    let _ = reader.join();
    assert!(status.success(), "agent failed: {stderr}");
    let lines: Vec<serde_json::Value> = std::iter::once(first)
        .chain(rx.try_iter())
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect();
    let decisions: Vec<(String, u64, f64, String)> = lines
        .iter()
        .map(|l| {
            let a = &l["autoscale"];
            (
                a["action"].as_str().unwrap_or("").to_string(),
                a["replicas"].as_u64().unwrap_or(0),
                a["sample_rate"].as_f64().unwrap_or(-1.0),
                a["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let changes: Vec<_> = decisions.iter().filter(|d| d.0 != "hold").collect();
    for d in &changes {
        println!("{d:?}");
    }
    let pos = |a: &str| changes.iter().position(|d| d.0 == a);
    let up = pos("scale_up").unwrap_or_else(|| panic!("no scale-up: {decisions:?}"));
    assert_eq!(changes[up].1, 2, "{changes:?}");
    assert!(changes[up].3.contains("CPU per replica"), "{changes:?}");
    let lower = pos("lower_sample").unwrap_or_else(|| panic!("no sample reduction: {changes:?}"));
    assert!(
        lower > up,
        "the sample was lowered before reaching max replicas: {changes:?}"
    );
    assert!(changes[lower].2 < 1.0, "{changes:?}");
    assert!(changes[lower].3.contains("replicas_max 2"), "{changes:?}");
    let raise = changes
        .iter()
        .rposition(|d| d.0 == "raise_sample")
        .unwrap_or_else(|| panic!("the sample rate never came back: {changes:?}"));
    let down = changes
        .iter()
        .rposition(|d| d.0 == "scale_down")
        .unwrap_or_else(|| panic!("no scale-down when idle: {changes:?}"));
    assert!(raise > lower && down > raise, "{changes:?}");
    assert!(changes[down].3.contains("scale_down_cores"), "{changes:?}");
    // It ends idle: one replica, the configured sample rate, the mirror following.
    let last = lines.last().expect("lines");
    assert_eq!(last["replicas"].as_u64(), Some(1), "{last}");
    assert_eq!(last["sample_rate"].as_f64(), Some(1.0), "{last}");
    assert_eq!(last["shadow"].as_array().map(Vec::len), Some(1), "{last}");
    // Nothing the agent made is left in the node.
    assert!(link::list(Some(&node))
        .expect("links")
        .iter()
        .all(|l| !l.name.starts_with(&format!("shd{name}"))));
}
