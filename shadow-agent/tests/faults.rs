//! Faults (issue 10, item 3), each through the real `shadow-agent run` on a forwarding node,
//! with a real HTTP server as the primary and a real client (Python's `http.client`, one
//! connection per request) counting every request before, during and after the fault:
//!
//! - the agent killed with SIGKILL under sustained load: no primary request fails, the
//!   mirror's TCX links vanish with the process (the clones stop, the primary continues),
//!   its replicas die with it (parent-death signal) but their namespace, veth and cgroups
//!   stay; a restarted agent sweeps them and restores the limits its predecessor's
//!   allocator changed, from the original-limits record;
//! - shadow replicas that crash-loop (exit at once / crash after a few mirrored requests):
//!   the primary is untouched, restarts follow the exponential back-off and stop at the
//!   crash-loop limit;
//! - a cgroup control file the allocator cannot write (`cpu.cfs_quota_us` bind-mounted
//!   read-only over itself in the agent's private mount namespace): the allocator backs
//!   off with an error naming the file, the agent keeps running, no other limit changes,
//!   and a second agent still starts.
//!
//! ```text
//! client ns ──veth── node ns (agent; mirror on nc; replica host ends) ──veth── primary ns
//!   cl                 nc                       np                              pr
//! ```

mod common;

use std::{
    io::BufRead as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use shadow_agent::sys::{
    cgroup::{Cgroup, Controller},
    link::{self},
    netns::{self, NetNs},
    process::{self, ChildGuard},
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 19, 9, 1);
const NODE_C: Ipv4Addr = Ipv4Addr::new(198, 19, 9, 2);
const NODE_P: Ipv4Addr = Ipv4Addr::new(198, 19, 10, 1);
const PRIMARY: Ipv4Addr = Ipv4Addr::new(198, 19, 10, 2);
const PAGE: &str = "hello from the primary\n";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Sweeps what a killed agent left of shadow group `name` (replica namespaces, host veth
/// ends in the node namespace, cgroups), should the test fail before a restarted agent
/// does it.
struct SweepGroup(String);

impl Drop for SweepGroup {
    fn drop(&mut self) {
        let _ = shadow_agent::shadow::group::sweep_leftovers("shd", &self.0);
    }
}

/// The client's request loop: one connection per request, every outcome logged as
/// `start_ms ok latency_ms error`, until the stop file exists.
const CLIENT_PY: &str = r#"
import http.client, os, sys, time
host, stop, out, page = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].encode()
f = open(out, "w", buffering=1)
i = 0
while not os.path.exists(stop):
    i += 1
    t0 = time.time()
    ok, err = 0, "-"
    try:
        c = http.client.HTTPConnection(host, 8080, timeout=5)
        c.request("GET", "/index.html?session=fault-secret-%d" % i,
                  headers={"Authorization": "Bearer fault-token"})
        r = c.getresponse()
        body = r.read()
        c.close()
        ok = int(r.status == 200 and body == page)
        if not ok:
            err = "status-%d-len-%d" % (r.status, len(body))
    except Exception as e:
        err = type(e).__name__
    f.write("%d %d %.3f %s\n" % (int(t0 * 1000), ok, (time.time() - t0) * 1000, err))
    time.sleep(0.01)
"#;

/// One logged request.
#[derive(Debug, Clone)]
struct Req {
    t_ms: u64,
    ok: bool,
    latency_ms: f64,
    error: String,
}

fn read_requests(log: &Path) -> Vec<Req> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.split(' ');
            Some(Req {
                t_ms: it.next()?.parse().ok()?,
                ok: it.next()? == "1",
                latency_ms: it.next()?.parse().ok()?,
                error: it.next().unwrap_or("").to_owned(),
            })
        })
        .collect()
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Requests started in [from, to): (count, failed, p50 ms, p99 ms).
fn phase(reqs: &[Req], from: u64, to: u64) -> (usize, usize, f64, f64) {
    let sel: Vec<&Req> = reqs
        .iter()
        .filter(|r| r.t_ms >= from && r.t_ms < to)
        .collect();
    let failed = sel.iter().filter(|r| !r.ok).count();
    let mut lat: Vec<f64> = sel.iter().map(|r| r.latency_ms).collect();
    let p50 = percentile(&mut lat, 0.5);
    let p99 = percentile(&mut lat, 0.99);
    (sel.len(), failed, p50, p99)
}

/// client, node and primary namespaces; the primary's HTTP server in a cgroup of its own.
/// Fields drop in order: processes, links, namespaces, cgroup, directory.
struct World {
    _primary_srv: ChildGuard,
    _links: common::Links,
    client: NetNs,
    node: NetNs,
    _primary: NetNs,
    cg: Cgroup,
    tag: String,
    nc: String,
    dir: PathBuf,
    _rm: common::RmDir,
}

impl World {
    fn new(what: &str) -> World {
        let tag = format!("{:x}{what}", std::process::id() & 0xffff);
        let dir = std::env::temp_dir().join(format!("shdt{tag}-faults"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let rm = common::RmDir(dir.clone());
        std::fs::write(dir.join("index.html"), PAGE).expect("page");
        let common::Routed {
            client,
            node,
            primary,
            nc,
            links,
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
        // IPv6 off in the node, so the replica's host end (made there by the agent) sends
        // nothing of its own: every packet it transmits is a clone.
        node.run_in(|| {
            std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1")?;
            std::fs::write("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1")
        })
        .expect("enter node")
        .expect("disable_ipv6");
        let cg = Cgroup::create(&format!("shdt{tag}-fa")).expect("primary cgroup");
        cg.write(Controller::Cpu, "cpu.cfs_period_us", "100000")
            .expect("period");
        cg.write(Controller::Cpu, "cpu.cfs_quota_us", "30000")
            .expect("quota");
        cg.write(Controller::Memory, "memory.limit_in_bytes", "268435456")
            .expect("memory limit");
        let mut srv = Command::new("python3");
        srv.args(["-m", "http.server", "--bind", &PRIMARY.to_string(), "8080"])
            .arg("--directory")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let primary_srv = process::spawn(srv, Some(&primary), Some(&cg)).expect("server");
        World {
            _primary_srv: primary_srv,
            _links: links,
            client,
            node,
            _primary: primary,
            cg,
            tag,
            nc,
            dir,
            _rm: rm,
        }
    }

    /// The shadow group's name for this world (short: interface names are <= 15 bytes).
    fn group(&self) -> String {
        format!("f{}", &self.tag[..self.tag.len().min(6)])
    }

    fn quota(&self) -> String {
        self.cg
            .read(Controller::Cpu, "cpu.cfs_quota_us")
            .expect("quota")
            .trim()
            .to_owned()
    }

    fn memory_limit(&self) -> String {
        self.cg
            .read(Controller::Memory, "memory.limit_in_bytes")
            .expect("memory limit")
            .trim()
            .to_owned()
    }

    /// A CPU burner in the primary's cgroup wanting ~0.5 cores (above the 0.3 quota), so
    /// the allocator raises the quota.
    fn burner(&self) -> ChildGuard {
        let mut b = Command::new("python3");
        b.args([
            "-c",
            "import time\nwhile True:\n  e=time.time()+0.03\n  while time.time()<e: pass\n  time.sleep(0.03)",
        ]);
        process::spawn(b, None, Some(&self.cg)).expect("burner")
    }

    /// Starts the client loop once the primary answers; returns it, its log and the stop
    /// file.
    fn client(&self) -> (ChildGuard, PathBuf, PathBuf) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let mut curl = Command::new("curl");
            curl.args(["-sf", "--max-time", "1", "-o", "/dev/null"])
                .arg(format!("http://{PRIMARY}:8080/index.html"));
            let mut c = process::spawn(curl, Some(&self.client), None).expect("curl");
            if c.wait_timeout(Duration::from_secs(5))
                .expect("wait")
                .is_some_and(|s| s.success())
            {
                break;
            }
            assert!(Instant::now() < deadline, "the primary never answered");
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = self.dir.join("client.log");
        let stop = self.dir.join("client.stop");
        let mut c = Command::new("python3");
        c.args(["-c", CLIENT_PY, &PRIMARY.to_string()])
            .arg(&stop)
            .arg(&log)
            .arg(PAGE)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = process::spawn(c, Some(&self.client), None).expect("client");
        (child, log, stop)
    }

    /// tx packets of `ifname` in the node namespace (clones sent to a replica).
    fn node_tx(&self, ifname: &str) -> Option<u64> {
        let out = Command::new("nsenter")
            .arg(format!(
                "--net={}",
                netns::path_of(self.node.name()).display()
            ))
            .args(["cat", "/proc/net/dev"])
            .output()
            .expect("nsenter");
        String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
            let (name, rest) = l.split_once(':')?;
            (name.trim() == ifname).then(|| rest.split_whitespace().nth(9)?.parse().ok())?
        })
    }
}

/// `shadow-agent run` in the node namespace, its JSON lines on a channel, stderr in a file.
struct Agent {
    child: ChildGuard,
    lines: Receiver<String>,
    stderr: PathBuf,
}

impl Agent {
    fn start(world: &World, config: &str, label: &str, wrap: Option<&[&str]>) -> Agent {
        let cfg = world.dir.join(format!("agent-{label}.toml"));
        std::fs::write(&cfg, config).expect("config");
        let stderr = world.dir.join(format!("agent-{label}.err"));
        let mut cmd = match wrap {
            None => Command::new(env!("CARGO_BIN_EXE_shadow-agent")),
            Some(w) => {
                let mut c = Command::new(w[0]);
                c.args(&w[1..]).arg(env!("CARGO_BIN_EXE_shadow-agent"));
                c
            }
        };
        cmd.args(["run", "--json", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"));
        let mut child = process::spawn(cmd, Some(&world.node), None).expect("agent");
        let out = child.child_mut().stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Agent {
            child,
            lines: rx,
            stderr,
        }
    }

    /// The agent's log so far, without terminal escapes.
    fn log(&self) -> String {
        let raw = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    /// The next status line (panics with the agent's log after `limit`).
    fn next(&self, limit: Duration) -> serde_json::Value {
        match self.lines.recv_timeout(limit) {
            Ok(l) => serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}")),
            Err(RecvTimeoutError::Timeout) => {
                panic!("no status line in {limit:?}; agent log:\n{}", self.log())
            }
            Err(RecvTimeoutError::Disconnected) => {
                panic!("the agent exited; its log:\n{}", self.log())
            }
        }
    }

    /// Status lines until `pred` holds for one (returned), or `limit` passes.
    fn until(
        &self,
        limit: Duration,
        mut pred: impl FnMut(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let v = self.next(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            );
            if pred(&v) {
                return Some(v);
            }
        }
        None
    }

    /// SIGTERM, then the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let st = Command::new("kill")
            .args(["-TERM", &self.child.pid().to_string()])
            .status()
            .expect("kill");
        assert!(st.success());
        self.child
            .wait_timeout(Duration::from_secs(30))
            .expect("wait")
            .unwrap_or_else(|| panic!("the agent did not stop on SIGTERM:\n{}", self.log()))
    }
}

fn mirror_section(world: &World) -> String {
    format!(
        r#"
[mirror]
interface = "{nc}"
tcp_sessions = "translate"
[[mirror.rules]]
dst = "{PRIMARY}/32"
ports = "8080"
proto = "tcp"
mask_http = true
"#,
        nc = world.nc
    )
}

fn allocate_section(world: &World, state: &Path) -> String {
    format!(
        r#"
[allocate]
cgroups = ["{cg}"]
dry_run = false
state_dir = "{state}"

[allocate.cpu]
max = 1.0
"#,
        cg = world.cg.name(),
        state = state.display()
    )
}

fn dirs_of_group(group: &str) -> Vec<PathBuf> {
    ["unified", "cpu", "memory", "pids"]
        .iter()
        .map(|h| {
            Path::new("/sys/fs/cgroup")
                .join(h)
                .join(format!("shd-{group}"))
        })
        .filter(|p| p.exists())
        .collect()
}

fn procs_under(dir: &Path) -> usize {
    let mut n = 0;
    if let Ok(t) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        n += t.lines().count();
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                n += procs_under(&e.path());
            }
        }
    }
    n
}

fn inode(p: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(p).ok().map(|m| m.ino())
}

#[test]
fn sigkill_under_load_fails_open_and_a_restarted_agent_cleans_up_and_restores_limits() {
    let world = World::new("k");
    let group = world.group();
    let _sweep = SweepGroup(group.clone());
    let state = world.dir.join("state");
    let shadow_log = world.dir.join("shadow.log");
    let config = format!(
        r#"{mirror}
[shadow]
name = "{group}"
command = ["python3", "-m", "http.server", "--bind", "{PRIMARY}", "8080", "--directory", "{dir}"]
output = "{shadow_log}"
addresses = ["{PRIMARY}/24"]
cpu_cores = 0.5
memory_mb = 128

[profile]
interval_ms = 200

[metrics]
listen = "off"
{alloc}"#,
        mirror = mirror_section(&world),
        dir = world.dir.display(),
        shadow_log = shadow_log.display(),
        alloc = allocate_section(&world, &state),
    );
    let record = state.join(format!("original-{}.json", world.cg.name()));
    let original_quota = world.quota();
    let original_memory = world.memory_limit();
    assert_eq!(original_quota, "30000");

    let (mut client, client_log, stop) = world.client();
    let t_load = now_ms();
    std::thread::sleep(Duration::from_secs(2));
    let mut burner = world.burner();

    // Agent A: mirror, shadow group, allocator. Wait until the allocator has raised the
    // quota (so there is a record) and the mirror has cloned requests to the replica.
    let mut a = Agent::start(&world, &config, "a", None);
    let t_a = now_ms();
    let host_if = format!("shd{group}0h");
    let raised = a.until(Duration::from_secs(40), |v| {
        let cloned = v["mirror"]["cloned"].as_u64().unwrap_or(0);
        cloned > 100 && world.quota() != original_quota && record.exists()
    });
    assert!(
        raised.is_some(),
        "agent A never both mirrored and raised the quota (quota {}, record {}); log:\n{}",
        world.quota(),
        record.exists(),
        a.log()
    );
    let shadow_served_a = std::fs::read_to_string(&shadow_log)
        .unwrap_or_default()
        .matches("\"GET ")
        .count();
    assert!(shadow_served_a > 0, "the shadow served no mirrored request");
    let netns_path = netns::path_of(&format!("shd-{group}-0"));
    let (ns_ino_a, cg_ino_a) = (
        inode(&netns_path),
        inode(&Path::new("/sys/fs/cgroup/unified").join(format!("shd-{group}"))),
    );
    let ifindex_a = link::ifindex(&host_if, Some(&world.node)).expect("replica host end");
    let tx_before = world.node_tx(&host_if).expect("host end counters");
    std::thread::sleep(Duration::from_secs(1));
    let tx_before2 = world.node_tx(&host_if).expect("host end counters");
    assert!(
        tx_before2 > tx_before,
        "no clones reached the replica while agent A ran"
    );

    // SIGKILL.
    let t_kill = now_ms();
    let st = a.child.kill().expect("SIGKILL");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(9),
        "{st:?}"
    );
    let raised_quota = world.quota();
    assert_ne!(raised_quota, original_quota);
    // The TCX links went with the process: nothing more is cloned to the replica's veth
    // (it stays, a leftover) while the primary keeps serving.
    std::thread::sleep(Duration::from_millis(500));
    let tx_after_kill = world
        .node_tx(&host_if)
        .expect("the leftover veth is still there");
    std::thread::sleep(Duration::from_secs(3));
    let tx_later = world
        .node_tx(&host_if)
        .expect("the leftover veth is still there");
    let served_while_dead = read_requests(&client_log)
        .iter()
        .filter(|r| r.t_ms >= t_kill + 500 && r.ok)
        .count();
    assert!(
        tx_later - tx_after_kill == 0,
        "clones still reach the replica after SIGKILL: {} packets",
        tx_later - tx_after_kill
    );
    assert!(
        served_while_dead >= 20,
        "the primary served only {served_while_dead} requests after the kill"
    );
    // Leftovers: the replica namespace, its veth and the group cgroups, the processes gone
    // (parent-death signal); the raised quota and the record stay.
    assert!(
        netns_path.exists(),
        "the replica namespace went with the agent"
    );
    let leftover_dirs = dirs_of_group(&group);
    assert!(!leftover_dirs.is_empty(), "no leftover group cgroup");
    let deadline = Instant::now() + Duration::from_secs(5);
    while leftover_dirs.iter().map(|d| procs_under(d)).sum::<usize>() > 0 {
        assert!(
            Instant::now() < deadline,
            "replica processes outlived the agent"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        world.quota(),
        raised_quota,
        "the quota changed without an agent"
    );
    assert!(record.exists(), "the original-limits record vanished");
    let t_dead_end = now_ms();

    // Agent B, same config, without the burner (so it has no reason to raise again).
    burner.kill().expect("stop burner");
    let mut b = Agent::start(&world, &config, "b", None);
    let first = b.next(Duration::from_secs(40));
    let t_b = now_ms();
    let quota_after_restart = world.quota();
    let log_b = b.log();
    assert!(first["mirror"].is_object(), "{first}");
    assert_eq!(world.memory_limit(), original_memory);
    assert!(
        log_b.contains("restored the limits a previous run left"),
        "{log_b}"
    );
    for what in [
        format!("netns shd-{group}-0"),
        format!("cgroup /sys/fs/cgroup/unified/shd-{group}"),
    ] {
        assert!(
            log_b.contains("removed a leftover of an earlier agent") && log_b.contains(&what),
            "agent B did not report removing {what}; log:\n{log_b}"
        );
    }
    // B's replica is new: another namespace, veth and cgroup under the same names.
    assert_ne!(
        inode(&netns_path),
        ns_ino_a,
        "the old replica namespace is still there"
    );
    assert_ne!(
        inode(&Path::new("/sys/fs/cgroup/unified").join(format!("shd-{group}"))),
        cg_ino_a
    );
    let ifindex_b = link::ifindex(&host_if, Some(&world.node)).expect("B's replica veth");
    assert_ne!(ifindex_a, ifindex_b, "the old replica veth is still there");
    let audit = std::fs::read_to_string(state.join("audit.jsonl")).expect("audit log");
    let restore = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["resource"] == "restore" && e["applied"] == true)
        .unwrap_or_else(|| panic!("no applied restore in the audit log:\n{audit}"));
    assert!(
        restore["new"].to_string().contains("\"30000\""),
        "{restore}"
    );
    // B started from the restored quota: either it still holds it, or B's own first change
    // (PSI's 10 s average still remembers the burner) started from 0.3 cores.
    let entries: Vec<serde_json::Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let restore_at = entries
        .iter()
        .position(|e| e["resource"] == "restore" && e["applied"] == true)
        .expect("restore entry");
    match entries[restore_at..]
        .iter()
        .find(|e| e["resource"] == "cpu" && e["applied"] == true)
    {
        None => assert_eq!(quota_after_restart, original_quota, "{log_b}"),
        Some(first_b) => assert_eq!(first_b["old"], 0.3, "{first_b}\n{log_b}"),
    }
    // B mirrors again.
    let mirrored = b.until(Duration::from_secs(20), |v| {
        v["mirror"]["cloned"].as_u64().unwrap_or(0) > 50
    });
    assert!(mirrored.is_some(), "agent B does not mirror:\n{}", b.log());
    std::thread::sleep(Duration::from_secs(2));
    let t_b_end = now_ms();
    let st = b.terminate();
    assert!(st.success(), "agent B failed:\n{}", b.log());
    std::thread::sleep(Duration::from_secs(1));

    // Stop the client and count every request.
    std::fs::write(&stop, "").expect("stop");
    let _ = client.wait_timeout(Duration::from_secs(10));
    let t_end = now_ms();
    let reqs = read_requests(&client_log);
    let phases = [
        ("before agent A", t_load, t_a),
        ("agent A running", t_a, t_kill),
        ("kill +-1 s", t_kill.saturating_sub(1000), t_kill + 1000),
        ("no agent (after kill)", t_kill, t_dead_end),
        ("agent B starting", t_dead_end, t_b),
        ("agent B running", t_b, t_b_end),
        ("after agent B", t_b_end, t_end),
        ("whole run", 0, u64::MAX),
    ];
    for (name, from, to) in phases {
        let (n, failed, p50, p99) = phase(&reqs, from, to);
        eprintln!(
            "primary {name:>22}: {n:5} requests, {failed} failed, p50 {p50:.2} ms, p99 {p99:.2} ms"
        );
    }
    let failed: Vec<(u64, &str)> = reqs
        .iter()
        .filter(|r| !r.ok)
        .map(|r| (r.t_ms, r.error.as_str()))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} primary requests failed (kill at {t_kill}): {:?}",
        failed.len(),
        reqs.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(phase(&reqs, t_kill.saturating_sub(1000), t_kill + 1000).0 >= 10);
    assert!(reqs.len() >= 300, "only {} requests", reqs.len());

    // B restored the limits on exit and left nothing.
    assert_eq!(world.quota(), original_quota);
    assert_eq!(world.memory_limit(), original_memory);
    assert!(!record.exists());
    assert!(!netns_path.exists());
    assert!(dirs_of_group(&group).is_empty());
    assert!(!link::exists(&host_if, Some(&world.node)).unwrap_or(true));
    eprintln!(
        "SIGKILL: clones to the replica after the kill: {} packets in 3 s (before: {} in 1 s); \
         quota {original_quota} -> {raised_quota} (A) -> {quota_after_restart} (read at B's first report, after its restore); \
         leftovers swept by B: {}",
        tx_later - tx_after_kill,
        tx_before2 - tx_before,
        log_b
            .lines()
            .filter(|l| l.contains("removed a leftover"))
            .count()
    );
}

/// Parses `after=...` of the "restarted shadow replica" log lines into milliseconds.
fn restart_delays_ms(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains("restarted shadow replica"))
        .filter_map(|l| {
            let v = l.split("after=").nth(1)?.split_whitespace().next()?;
            let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic())?);
            let n: f64 = num.parse().ok()?;
            Some(match unit {
                "ms" => n,
                "s" => n * 1000.0,
                "µs" | "us" => n / 1000.0,
                _ => return None,
            })
        })
        .collect()
}

/// Runs one crash-looping command as the shadow under load; returns the agent's log.
fn crash_loop_case(world: &World, label: &str, command: &str) -> String {
    let group = format!("{}{label}", &world.group()[..6.min(world.group().len())]);
    let _sweep = SweepGroup(group.clone());
    let config = format!(
        r#"{mirror}
[shadow]
name = "{group}"
command = {command}
output = "{out}"
addresses = ["{PRIMARY}/24"]
cpu_cores = 0.5
memory_mb = 128
[shadow.restart]
initial_backoff_ms = 200
max_backoff_ms = 1600
crash_loop_limit = 5
window_s = 60

[profile]
interval_ms = 200

[metrics]
listen = "off"
"#,
        mirror = mirror_section(world),
        out = world.dir.join(format!("shadow-{label}.log")).display(),
    );
    let mut agent = Agent::start(world, &config, label, None);
    let looped = agent.until(Duration::from_secs(40), |v| {
        v["shadow"][0]["restarts"].as_u64() == Some(4) && v["shadow"][0]["running"] == false
    });
    assert!(
        looped.is_some(),
        "{label}: the replica did not reach the crash-loop limit; log:\n{}",
        agent.log()
    );
    // No restart after the limit: the count stays at 4 for the next 3 s, the agent lives.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let v = agent.next(Duration::from_secs(5));
        assert_eq!(v["shadow"][0]["restarts"].as_u64(), Some(4), "{v}");
        assert_eq!(v["shadow"][0]["running"], false, "{v}");
    }
    let st = agent.terminate();
    let log = agent.log();
    assert!(st.success(), "{label}: agent failed:\n{log}");
    assert!(log.contains("crash-looping"), "{log}");
    let delays = restart_delays_ms(&log);
    assert_eq!(delays, vec![200.0, 400.0, 800.0, 1600.0], "{label}: {log}");
    assert!(dirs_of_group(&group).is_empty());
    log
}

#[test]
fn a_crash_looping_shadow_never_affects_the_primary() {
    let world = World::new("c");
    let (mut client, client_log, stop) = world.client();
    std::thread::sleep(Duration::from_secs(1));
    let t0 = now_ms();
    // Exits at once.
    crash_loop_case(&world, "x", r#"["sh", "-c", "exit 3"]"#);
    let t1 = now_ms();
    // Serves three mirrored requests, then crashes.
    let script = world.dir.join("crashy.py");
    std::fs::write(
        &script,
        format!(
            "import http.server, os, sys\n\
             n = [0]\n\
             class H(http.server.SimpleHTTPRequestHandler):\n\
             \x20   def do_GET(self):\n\
             \x20       n[0] += 1\n\
             \x20       if n[0] > 3:\n\
             \x20           print('crashing after', n[0] - 1, 'requests', file=sys.stderr, flush=True)\n\
             \x20           os._exit(7)\n\
             \x20       super().do_GET()\n\
             os.chdir({dir:?})\n\
             http.server.HTTPServer(('{PRIMARY}', 8080), H).serve_forever()\n",
            dir = world.dir.display().to_string()
        ),
    )
    .expect("script");
    crash_loop_case(
        &world,
        "r",
        &format!(r#"["python3", "{}"]"#, script.display()),
    );
    let t2 = now_ms();
    let crashes = std::fs::read_to_string(world.dir.join("shadow-r.log")).unwrap_or_default();
    assert_eq!(
        crashes.matches("crashing after 3 requests").count(),
        5,
        "the replica should have served 3 mirrored requests before each of its 5 crashes:\n{crashes}"
    );
    std::thread::sleep(Duration::from_secs(1));
    std::fs::write(&stop, "").expect("stop");
    let _ = client.wait_timeout(Duration::from_secs(10));
    let reqs = read_requests(&client_log);
    for (name, from, to) in [
        ("before", 0, t0),
        ("shadow exits at once", t0, t1),
        ("shadow crashes after 3", t1, t2),
        ("after", t2, u64::MAX),
    ] {
        let (n, failed, p50, p99) = phase(&reqs, from, to);
        eprintln!(
            "primary {name:>22}: {n:5} requests, {failed} failed, p50 {p50:.2} ms, p99 {p99:.2} ms"
        );
        assert_eq!(
            failed,
            0,
            "{name}: failed requests: {:?}",
            reqs.iter()
                .filter(|r| !r.ok && r.t_ms >= from && r.t_ms < to)
                .map(|r| &r.error)
                .collect::<Vec<_>>()
        );
        assert!(n >= 10, "{name}: only {n} requests");
    }
    let failed: Vec<&str> = reqs
        .iter()
        .filter(|r| !r.ok)
        .map(|r| r.error.as_str())
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    let _ = world.tag.len();
}

#[test]
fn an_unwritable_cgroup_file_makes_the_allocator_back_off_naming_the_file() {
    let world = World::new("u");
    let state = world.dir.join("state");
    let quota_file = world
        .cg
        .file_path(Controller::Cpu, "cpu.cfs_quota_us")
        .expect("quota file");
    let config = format!(
        "[profile]\ninterval_ms = 100\n\n[metrics]\nlisten = \"off\"\n{}",
        allocate_section(&world, &state)
    );
    let before = (
        world.quota(),
        world.memory_limit(),
        world
            .cg
            .read(Controller::Cpuset, "cpuset.cpus")
            .expect("cpuset"),
    );
    let _burner = world.burner();
    // The agent in a private mount namespace where the quota file is bind-mounted read-only
    // over itself: reads see the real value, writes fail with EROFS.
    let q = quota_file.display().to_string();
    let script = format!("mount --bind {q} {q} && mount -o remount,bind,ro {q} && exec \"$@\"");
    let wrap = [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
        "sh",
    ];
    let mut agent = Agent::start(&world, &config, "u", Some(&wrap));
    let name = world.cg.name().to_owned();
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        lines.push(agent.next(Duration::from_secs(40)));
    }
    // Still running and reporting after the failures.
    assert!(
        agent.child.try_wait().expect("try_wait").is_none(),
        "{}",
        agent.log()
    );
    let st = agent.terminate();
    let log = agent.log();
    assert!(st.success(), "agent failed:\n{log}");
    let errors: Vec<(usize, String)> = lines
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            v["allocate"][&name]["error"]
                .as_str()
                .map(|e| (i, e.to_owned()))
        })
        .collect();
    assert!(errors.len() >= 2, "fewer than two failed steps:\n{log}");
    for (_, e) in &errors {
        assert!(e.contains(&q), "the error does not name {q}: {e}");
        assert!(e.contains("Read-only file system"), "{e}");
    }
    // Back-off: skipped intervals between attempts double (1, 2, 4, ... up to 32).
    let gaps: Vec<usize> = errors.windows(2).map(|w| w[1].0 - w[0].0).collect();
    assert!(
        gaps.windows(2).all(|g| g[1] >= g[0]) && gaps.last() > gaps.first(),
        "attempts at intervals {:?} do not back off",
        errors.iter().map(|e| e.0).collect::<Vec<_>>()
    );
    let backing = lines
        .iter()
        .filter(|v| !v["allocate"][&name]["step"]["backing_off"].is_null())
        .count();
    assert!(backing >= 5, "{backing} intervals backing off");
    assert!(log.contains("allocator step failed: backing off"), "{log}");
    let audit = std::fs::read_to_string(state.join("audit.jsonl")).expect("audit log");
    let failed_cpu = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["resource"] == "cpu" && e["applied"] == false)
        .filter(|e| e["error"].as_str().is_some_and(|s| s.contains(&q)))
        .count();
    assert!(failed_cpu >= 2, "{audit}");
    let changed = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["resource"] != "restore" && e["applied"] == true)
        .count();
    assert_eq!(changed, 0, "a limit was changed:\n{audit}");
    // No limit of the primary changed.
    let after = (
        world.quota(),
        world.memory_limit(),
        world
            .cg
            .read(Controller::Cpuset, "cpuset.cpus")
            .expect("cpuset"),
    );
    assert_eq!(before, after);

    // The agent restored on exit: the one recorded file it could not write still held its
    // original value, so nothing needed writing and the record is gone.
    let record = state.join(format!("original-{name}.json"));
    assert!(!record.exists(), "the record stayed:\n{log}");

    // Killed with SIGKILL, an agent leaves its record; the next one still starts (the
    // unwritable file holds its original value: nothing to restore) and backs off the same.
    let mut killed = Agent::start(&world, &config, "u2", Some(&wrap));
    let rec_seen = killed.until(Duration::from_secs(20), |_| record.exists());
    assert!(rec_seen.is_some(), "no record:\n{}", killed.log());
    killed.child.kill().expect("SIGKILL");
    assert!(record.exists());
    let mut again = Agent::start(&world, &config, "u3", Some(&wrap));
    let v = again.next(Duration::from_secs(40));
    assert!(v["allocate"][&name].is_object(), "{v}\n{}", again.log());
    let st = again.terminate();
    assert!(st.success(), "the next agent failed:\n{}", again.log());
    assert!(!record.exists(), "{}", again.log());
    assert_eq!(world.quota(), before.0);
    eprintln!(
        "unwritable {q}: {} failed attempts in {} intervals, at intervals {:?}; first error: {}",
        errors.len(),
        lines.len(),
        errors.iter().map(|e| e.0).collect::<Vec<_>>(),
        errors[0].1
    );
}
