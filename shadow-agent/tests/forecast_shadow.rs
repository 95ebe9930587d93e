//! The shadow-derived forecast in a real `shadow-agent run`: a primary HTTP server (in a
//! profiled cgroup) behind a node that mirrors its traffic to a shadow replica of the same
//! server, driven by a real client at a rate that rises and falls. The agent must learn the
//! shadow's CPU per cloned packet from the replica's CPU and the mirror's counters, and
//! publish for the primary's cgroup a forecast whose source (direct or shadow-derived) is
//! chosen by the two forecasts' recent errors, with the reason.
//!
//! ```text
//! client ns ──veth── node ns (agent; mirror on nc; replica host end) ──veth── primary ns
//! ```

mod common;

use std::{
    net::Ipv4Addr,
    process::{Command, Stdio},
    time::Duration,
};

use shadow_agent::sys::{cgroup::Cgroup, process};

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 19, 17, 1);
const NODE_C: Ipv4Addr = Ipv4Addr::new(198, 19, 17, 2);
const NODE_P: Ipv4Addr = Ipv4Addr::new(198, 19, 18, 1);
const PRIMARY: Ipv4Addr = Ipv4Addr::new(198, 19, 18, 2);

#[test]
fn run_learns_the_shadows_cost_and_chooses_a_forecast_source() {
    let tag = format!("{:x}", std::process::id() & 0xfffff);
    let dir = std::env::temp_dir().join(format!("shdt{tag}-fcs"));
    std::fs::create_dir_all(&dir).expect("dir");
    let _rm = common::RmDir(dir.clone());
    std::fs::write(dir.join("index.html"), "x".repeat(20_000)).expect("page");

    let common::Routed {
        client,
        node,
        primary,
        nc,
        links: _links,
    } = common::Routed::new(
        &tag,
        'f',
        common::Addrs {
            client: CLIENT,
            node_c: NODE_C,
            node_p: NODE_P,
            primary: PRIMARY,
        },
    );

    let cg = Cgroup::create(&format!("shdt{tag}-fcs")).expect("primary cgroup");
    let mut srv = Command::new("python3");
    srv.args([
        "-m",
        "http.server",
        "--bind",
        &PRIMARY.to_string(),
        "8080",
        "--directory",
    ])
    .arg(&dir)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let _primary_srv = process::spawn(srv, Some(&primary), Some(&cg)).expect("primary server");

    let name = format!("f{}", &tag[..tag.len().min(7)]);
    let status_file = dir.join("status/status.json");
    let config = format!(
        r#"
[mirror]
interface = "{nc}"
[[mirror.rules]]
dst = "{PRIMARY}/32"
ports = "8080"
proto = "tcp"

[shadow]
name = "{name}"
command = ["python3", "-m", "http.server", "--bind", "{PRIMARY}", "8080", "--directory", "{dir}"]
addresses = ["{PRIMARY}/24"]
cpu_cores = 0.5
memory_mb = 128

[profile]
cgroups = ["{cg}"]
interval_ms = 100

[metrics]
listen = "off"

[forecast]
step_intervals = 1
horizon = 3
window = 150
"#,
        dir = dir.display(),
        cg = cg.unified_path().display(),
    );
    let cfg = dir.join("agent.toml");
    std::fs::write(&cfg, &config).expect("config");
    let mut agent_cmd = Command::new(env!("CARGO_BIN_EXE_shadow-agent"));
    agent_cmd
        .args(["run", "--json", "--duration", "22", "--config"])
        .arg(&cfg)
        .env("SHADOW_STATUS_FILE", &status_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut agent = process::spawn(agent_cmd, Some(&node), None).expect("agent");
    let out = agent.child_mut().stdout.take().expect("agent stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the agent printed no status line");
    assert!(first.contains("\"mirror\""), "{first}");

    // A real client whose request rate follows a 4 s wave between about 2 and 40 per second.
    let script = format!(
        "import urllib.request, time, math\n\
         end = time.time() + 19\n\
         while time.time() < end:\n\
         \x20   t = time.time()\n\
         \x20   rate = 21 + 19 * math.sin(t * 2 * math.pi / 4)\n\
         \x20   try:\n\
         \x20       urllib.request.urlopen('http://{PRIMARY}:8080/index.html', timeout=2).read()\n\
         \x20   except Exception:\n\
         \x20       pass\n\
         \x20   time.sleep(max(0.0, 1.0 / rate - (time.time() - t)))\n"
    );
    let mut load = Command::new("python3");
    load.args(["-c", &script]).stdout(Stdio::null());
    let _client = process::spawn(load, Some(&client), None).expect("client");

    let status = agent
        .wait_timeout(Duration::from_secs(60))
        .expect("wait")
        .expect("agent ended");
    let mut stderr = String::new();
    use std::io::Read as _;
    if let Some(mut e) = agent.child_mut().stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let _ = reader.join();
    let last = rx.try_iter().last().unwrap_or_default();
    assert!(status.success(), "agent failed: {stderr}");
    let v: serde_json::Value = serde_json::from_str(&last).expect("status line");
    let f = &v["forecast"];
    // The shadow's cost per cloned packet was learned, positive, with its interval.
    let cost = &f["shadow_cost"];
    let slope = cost["slope"]
        .as_f64()
        .unwrap_or_else(|| panic!("no cost: {f}"));
    assert!(slope > 0.0, "{cost}");
    assert!(cost["slope_lo"].as_f64().unwrap() <= slope, "{cost}");
    assert!(cost["samples"].as_u64().unwrap() >= 50, "{cost}");
    // The primary's forecast names its source and why, from both forecasts' errors.
    let key = cg.unified_path().display().to_string();
    let p = &f["series"][key.as_str()];
    let source = p["source"]
        .as_str()
        .unwrap_or_else(|| panic!("no forecast: {f}"));
    assert!(source == "direct" || source == "shadow_derived", "{p}");
    let reason = p["reason"].as_str().unwrap();
    assert!(
        reason.contains("mean absolute error") && reason.contains("shadow-derived"),
        "{reason}"
    );
    assert_eq!(p["point"].as_array().unwrap().len(), 3, "{p}");
    // The cgroup's own entry in the line carries it in the shape `shadow-agent report` draws.
    let c = &v["cgroups"][key.as_str()]["forecast"];
    assert_eq!(c["point"], p["point"], "{c}");
    assert_eq!(c["intervals"][0]["level"], 0.8, "{c}");
    assert_eq!(c["horizon_s"], 0.1, "{c}");
    eprintln!("source {source}: {reason}\ncost {cost}");
    // The agent withdrew its status file on exit.
    assert!(!status_file.exists());
}
