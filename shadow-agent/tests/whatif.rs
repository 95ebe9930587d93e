//! What-if replicas through the CLI: `shadow-agent whatif` runs a baseline replica (1 CPU)
//! and a candidate under a tight CPU quota (0.03 CPU) beside it, both fed the same mirrored
//! flows of a real HTTP server driven by curl; the latency each replica shows is measured
//! in the kernel at its veth. The candidate's percentiles must come out higher, and its
//! shrink verdict must fail, while the baseline's passes the sanity bounds. A third
//! replica, pinned to CPU 0 by a candidate cpuset, must report that cpuset as the kernel's
//! effective one. Traffic starts once whatif says every replica runs and every mirror
//! clones, and each replica must then have been fed all 800 sessions.
//!
//! ```text
//! client ns ──veth── node ns (whatif: three mirrors on nc, three replica host ends) ──veth── primary ns
//!   cl                 nc                                                 np              pr
//! ```

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

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 19, 17, 1);
const NODE_C: Ipv4Addr = Ipv4Addr::new(198, 19, 17, 2);
const NODE_P: Ipv4Addr = Ipv4Addr::new(198, 19, 18, 1);
const PRIMARY: Ipv4Addr = Ipv4Addr::new(198, 19, 18, 2);

#[test]
fn whatif_shows_a_tight_cpu_quota_as_higher_latency_on_the_same_flows() {
    let tag = format!("{:x}", std::process::id() & 0xfffff);
    let dir = std::env::temp_dir().join(format!("shdt{tag}-wi"));
    std::fs::create_dir_all(&dir).expect("dir");
    let _rm = common::RmDir(dir.clone());
    std::fs::write(dir.join("index.html"), "hello from the primary\n").expect("page");

    let common::Routed {
        client,
        node,
        primary,
        nc,
        links: _links,
    } = common::Routed::new(
        &tag,
        'w',
        common::Addrs {
            client: CLIENT,
            node_c: NODE_C,
            node_p: NODE_P,
            primary: PRIMARY,
        },
    );

    let _primary_srv = common::http_primary(&primary, PRIMARY, &dir, Stdio::null());

    let name = format!("i{}", &tag[..tag.len().min(4)]);
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
output = "{dir}/replicas.log"
cpu_cores = 1.0
memory_mb = 256

[[shadow.whatif]]
name = "tight-cpu"
cpu_cores = 0.03

[[shadow.whatif]]
name = "cpu0"
cpuset = "0"
"#,
        dir = dir.display(),
    );
    let cfg = dir.join("agent.toml");
    std::fs::write(&cfg, &config).expect("config");

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shadow-agent"));
    cmd.args(["whatif", "--json", "--duration", "25", "--config"])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut agent = process::spawn(cmd, Some(&node), None).expect("whatif");

    // The comparison starts once every replica runs and every mirror is attached (each
    // takes seconds in the verifier); whatif says so on stderr. Traffic before that would
    // reach some replicas and not others.
    let err = agent.child_mut().stderr.take().expect("whatif stderr");
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let log = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(err)).map_while(Result::ok) {
            if line.contains("fed the same mirrored flows; comparing") {
                let _ = started_tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    if started_rx.recv_timeout(Duration::from_secs(120)).is_err() {
        let _ = agent.kill();
        panic!(
            "whatif never started its comparison: {}",
            log.join().unwrap_or_default()
        );
    }
    // The replicas hold the MAC of the interface the mirrors clone from, so clones arrive
    // addressed to them as they are and the mirror never writes the primary's packets
    // (candidate 1's replica 0: group `w<name>1`).
    let nc_mac = link::mac(&nc, Some(&node)).expect("nc mac");
    let cand_ns = shadow_agent::sys::netns::NetNs::open(&format!("shd-w{name}1-0"))
        .expect("candidate replica netns");
    let cand_mac = link::mac(&format!("shdw{name}10r"), Some(&cand_ns)).expect("replica mac");
    assert_eq!(
        cand_mac, nc_mac,
        "the replica's MAC is not the mirror interface's"
    );
    drop(cand_ns);

    // 80 requests/s for ~10 s, one connection each, every one answered by the primary.
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
        "80/s",
    ])
    .arg(format!("http://{PRIMARY}:8080/index.html?i=[1-800]"))
    .stdout(Stdio::piped());
    let mut c = process::spawn(curl, Some(&client), None).expect("curl");
    let out = c.child_mut().stdout.take().expect("curl stdout");
    let codes = std::io::read_to_string(out).unwrap_or_default();
    let _ = c.wait_timeout(Duration::from_secs(30));
    let ok = codes.lines().filter(|l| *l == "200").count();
    assert_eq!(ok, 800, "the primary failed requests during the comparison");

    let status = agent
        .wait_timeout(Duration::from_secs(60))
        .expect("wait")
        .expect("whatif ended");
    let mut stdout = String::new();
    use std::io::Read as _;
    if let Some(mut o) = agent.child_mut().stdout.take() {
        let _ = o.read_to_string(&mut stdout);
    }
    let stderr = log.join().unwrap_or_default();
    assert!(status.success(), "whatif failed: {stderr}");
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).expect("report JSON");
    println!("{r:#}");
    let served = std::fs::read_to_string(dir.join("replicas.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"GET "))
        .count();
    println!("requests served by the replicas together: {served}");
    let b = &r["baseline"]["latency"];
    let c = &r["candidates"][0]["latency"];
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    // Every replica was fed the same 800 sessions (the comparison began before the
    // traffic), and the unthrottled ones established nearly all of them.
    for p in [&r["baseline"], &r["candidates"][0], &r["candidates"][1]] {
        assert_eq!(p["tcp"]["sessions"], 800, "{}: {r}", p["name"]);
    }
    for p in [&r["baseline"], &r["candidates"][1]] {
        assert!(
            p["tcp"]["established"].as_u64().unwrap_or(0) >= 780,
            "{}: {r}",
            p["name"]
        );
    }
    // Both replicas answered most of the same 800 mirrored requests.
    assert!(f(b, "replies") >= 600.0, "baseline: {r}");
    assert!(f(c, "replies") >= 50.0, "candidate: {r}");
    assert!(f(b, "p50_ms") > 0.0 && f(b, "p50_ms") < 50.0, "{r}");
    // p50 and p95 (p99 of the baseline can be host noise on a busy machine).
    assert!(
        f(c, "p50_ms") > 2.0 * f(b, "p50_ms") && f(c, "p95_ms") > 2.0 * f(b, "p95_ms"),
        "the throttled candidate is not slower: {r}"
    );
    assert!(f(c, "p99_ms") >= f(b, "p99_ms"), "{r}");
    // The profile is there: the baseline used CPU, the candidate stayed near its quota.
    assert!(
        r["baseline"]["cpu_cores"].as_f64().unwrap_or(0.0) > 0.0,
        "{r}"
    );
    assert!(
        r["candidates"][0]["cpu_cores"].as_f64().unwrap_or(1.0) < 0.05,
        "{r}"
    );
    assert!(
        r["baseline"]["memory_bytes"].as_u64().unwrap_or(0) > 0,
        "{r}"
    );
    assert_eq!(
        r["candidates"][0]["limits"]["cpu_cores"].as_f64(),
        Some(0.03)
    );
    assert_eq!(r["verdicts"][0]["pass"], false, "{r}");
    // The cpuset candidate ran on CPU 0 only (as the kernel reports it), with the
    // baseline's CPU quota, and answered the same flows.
    let pinned = &r["candidates"][1];
    assert_eq!(pinned["name"], "cpu0", "{r}");
    assert_eq!(pinned["effective_cpus"], "0", "{r}");
    assert_eq!(pinned["limits"]["cpu_cores"].as_f64(), Some(1.0), "{r}");
    assert!(f(&pinned["latency"], "replies") >= 600.0, "{r}");
    // Nothing whatif made is left in the node.
    assert!(link::list(Some(&node))
        .expect("links")
        .iter()
        .all(|l| !l.name.starts_with("shdw")));
}
