//! The routed topology the agent-level tests share: a client namespace, a forwarding node
//! namespace (where the agent attaches) and a primary namespace, joined by two veth pairs.
//!
//! ```text
//! client ns ──veth── node ns (ip_forward) ──veth── primary ns
//!   cl                 nc          np                pr
//! ```

#[allow(dead_code)] // used by the mirror tests only
pub mod mirrored;

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use shadow_agent::sys::{
    link::{self, Veth, VethEnd},
    netns::NetNs,
};

/// The four addresses (each /24: client and node's front end share one, node's back end and
/// primary another).
#[allow(dead_code)] // used by the routed tests, not by every one
pub struct Addrs {
    pub client: Ipv4Addr,
    pub node_c: Ipv4Addr,
    pub node_p: Ipv4Addr,
    pub primary: Ipv4Addr,
}

/// The two veth pairs; dropped before the namespaces when bound after them.
#[allow(dead_code)] // used by the routed tests, not by every one
pub struct Links {
    _front: Veth,
    _back: Veth,
}

#[allow(dead_code)] // used by the routed tests, not by every one
pub struct Routed {
    pub client: NetNs,
    pub node: NetNs,
    pub primary: NetNs,
    /// The node's interface towards the client (where the mirror attaches).
    pub nc: String,
    pub links: Links,
}

#[allow(dead_code)] // used by the routed tests, not by every one
impl Routed {
    /// Namespaces `shdt{tag}-{letter}c/n/p`, interfaces `shdt{tag}{letter}l/c/q/r`, addresses,
    /// host routes through the node, and forwarding on in the node.
    pub fn new(tag: &str, letter: char, a: Addrs) -> Routed {
        let client = NetNs::create(&format!("shdt{tag}-{letter}c")).expect("client netns");
        let node = NetNs::create(&format!("shdt{tag}-{letter}n")).expect("node netns");
        let primary = NetNs::create(&format!("shdt{tag}-{letter}p")).expect("primary netns");
        let [cl, nc, np, pr] = ['l', 'c', 'q', 'r'].map(|s| format!("shdt{tag}{letter}{s}"));
        let front = Veth::create(
            VethEnd::in_netns(&cl, &client),
            VethEnd::in_netns(&nc, &node),
        )
        .expect("front veth");
        let back = Veth::create(
            VethEnd::in_netns(&np, &node),
            VethEnd::in_netns(&pr, &primary),
        )
        .expect("back veth");
        for (ifname, ns, addr) in [
            (&cl, &client, a.client),
            (&nc, &node, a.node_c),
            (&np, &node, a.node_p),
            (&pr, &primary, a.primary),
        ] {
            link::add_address(ifname, Some(ns), IpAddr::V4(addr), 24).expect("address");
            link::set_up(ifname, Some(ns)).expect("up");
        }
        link::add_route_v4(&cl, Some(&client), a.primary, 32, Some(a.node_c))
            .expect("client route");
        link::add_route_v4(&pr, Some(&primary), a.client, 32, Some(a.node_p))
            .expect("primary route");
        node.run_in(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "1"))
            .expect("enter node")
            .expect("ip_forward");
        Routed {
            client,
            node,
            primary,
            nc,
            links: Links {
                _front: front,
                _back: back,
            },
        }
    }
}

/// A scratch directory, removed with its contents on drop (also when the test fails).
pub struct RmDir(pub PathBuf);

impl Drop for RmDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The primary every routed test serves: Python's `http.server` on `addr:8080` in `ns`,
/// serving `dir`, with its stderr (the access log) sent to `stderr`.
#[allow(dead_code)] // used by the tests that run a primary, not by every one
pub fn http_primary(
    ns: &NetNs,
    addr: Ipv4Addr,
    dir: &std::path::Path,
    stderr: std::process::Stdio,
) -> shadow_agent::sys::process::ChildGuard {
    let mut srv = std::process::Command::new("python3");
    srv.args([
        "-m",
        "http.server",
        "--bind",
        &addr.to_string(),
        "8080",
        "--directory",
    ])
    .arg(dir)
    .stdout(std::process::Stdio::null())
    .stderr(stderr);
    shadow_agent::sys::process::spawn(srv, Some(ns), None).expect("primary server")
}

/// The allocator's audit log in `state` (`audit.jsonl`), one JSON value per line; empty when
/// there is none yet.
#[allow(dead_code)] // used by the allocator tests only
pub fn audit(state: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(state.join("audit.jsonl")).unwrap_or_default();
    // A line the agent is still writing (no newline yet) is read on the next call.
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect()
}

/// The hand-set quota the allocator tests start from: 0.1 core of a 100 ms period.
#[allow(dead_code)] // used by the allocator tests only
pub const ORIGINAL_QUOTA: &str = "10000";

/// A cgroup `name` under `ORIGINAL_QUOTA` with a busy process in it (throttled), removed on
/// drop with its process (drop the guard first: bind it after the cgroup).
#[allow(dead_code)] // used by the allocator tests only
pub fn throttled_burner(
    name: &str,
) -> (
    shadow_agent::sys::cgroup::Cgroup,
    shadow_agent::sys::process::ChildGuard,
) {
    use shadow_agent::sys::cgroup::{Cgroup, Controller};
    let cg = Cgroup::create(name).expect("test cgroup");
    cg.write(Controller::Cpu, "cpu.cfs_quota_us", ORIGINAL_QUOTA)
        .expect("quota");
    let mut burn = std::process::Command::new("python3");
    burn.args(["-c", "while True: pass"]);
    let burner = shadow_agent::sys::process::spawn(burn, None, Some(&cg)).expect("burner");
    (cg, burner)
}

/// The cgroup's v1 CPU quota as written (`cpu.cfs_quota_us`).
#[allow(dead_code)] // used by the allocator tests only
pub fn quota(cg: &shadow_agent::sys::cgroup::Cgroup) -> String {
    cg.read(
        shadow_agent::sys::cgroup::Controller::Cpu,
        "cpu.cfs_quota_us",
    )
    .expect("cpu.cfs_quota_us")
    .trim()
    .to_owned()
}

/// The agent's stdout, line by line, on a channel (a thread reads until the agent closes it).
#[allow(dead_code)] // used by the tests that read `run --json`
pub fn stdout_lines(
    agent: &mut shadow_agent::sys::process::ChildGuard,
) -> (
    std::sync::mpsc::Receiver<String>,
    std::thread::JoinHandle<()>,
) {
    let out = agent.child_mut().stdout.take().expect("agent stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (rx, reader)
}

/// The newest status line in the agent's status file (null when there is none yet).
#[allow(dead_code)] // used by the tests that read the status file
pub fn status(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
}

/// Waits (at most `limit`) until `check` holds on the newest status line; its last value.
#[allow(dead_code)] // used by the tests that read the status file
pub fn wait_status(
    path: &std::path::Path,
    what: &str,
    limit: std::time::Duration,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let s = status(path);
        if check(&s) {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {limit:?}: {s}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The first JSON line on `lines` (within `limit`) that `pred` accepts; panics naming `what`
/// when none comes.
#[allow(dead_code)] // used by the tests that read `run --json`
pub fn wait_line(
    lines: &std::sync::mpsc::Receiver<String>,
    what: &str,
    limit: std::time::Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + limit;
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        let Ok(line) = lines.recv_timeout(left) else {
            break;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if pred(&v) {
            return v;
        }
    }
    panic!("{what}: not within {limit:?}");
}

/// The next `"event": kind` line the agent prints on `lines` (at most 10 s).
#[allow(dead_code)] // used by the tests that read `run --json`
pub fn next_event(lines: &std::sync::mpsc::Receiver<String>, kind: &str) -> serde_json::Value {
    wait_line(
        lines,
        &format!("a {kind} event"),
        std::time::Duration::from_secs(10),
        |v| v["event"] == kind,
    )
}

/// Waits (at most 20 s) until `cg`'s quota is no longer `from`; the new one.
#[allow(dead_code)] // used by the allocator tests only
pub fn wait_quota_change(cg: &shadow_agent::sys::cgroup::Cgroup, from: &str, what: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let q = quota(cg);
        if q != from {
            return q;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: the quota stayed {from}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// SIGHUP to `pid` (the agent: reload its configuration).
#[allow(dead_code)] // used by the reload tests
pub fn hup(pid: u32) {
    // SAFETY: plain kill(2) on the agent's pid.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0, "SIGHUP");
}

/// Waits (at most `limit`) for `agent` to exit; its status and stderr (panics if it runs on).
#[allow(dead_code)] // used by the tests that run the agent
pub fn wait_exit(
    agent: &mut shadow_agent::sys::process::ChildGuard,
    limit: std::time::Duration,
) -> (std::process::ExitStatus, String) {
    let st = agent
        .wait_timeout(limit)
        .expect("wait")
        .unwrap_or_else(|| panic!("the agent did not exit within {limit:?}"));
    let mut err = String::new();
    if let Some(mut e) = agent.child_mut().stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    (st, err)
}

/// SIGTERM to `agent`, then [`wait_exit`].
#[allow(dead_code)] // used by the tests that run the agent
pub fn terminate(
    agent: &mut shadow_agent::sys::process::ChildGuard,
    limit: std::time::Duration,
) -> (std::process::ExitStatus, String) {
    // SAFETY: plain kill(2) on the agent's pid.
    assert_eq!(
        unsafe { libc::kill(agent.pid() as i32, libc::SIGTERM) },
        0,
        "SIGTERM"
    );
    wait_exit(agent, limit)
}

/// `[allocate]` managing the CPU quota of `group` alone (no memory, no scaling events, no
/// cooldown, at most 1.5 cores), with its state in `state`.
#[allow(dead_code)] // used by the allocator tests only
pub fn cpu_allocate_toml(group: &str, dry_run: bool, state: &std::path::Path) -> String {
    format!(
        r#"
[allocate]
cgroups = ["{group}"]
dry_run = {dry_run}
state_dir = "{state}"

[allocate.cpu]
cooldown_intervals = 0
max = 1.5

[allocate.memory]
enabled = false

[allocate.scale]
enabled = false
"#,
        state = state.display()
    )
}

/// `shadow-agent run --json --duration 90` on a config in the scratch directory
/// `shdt{tag}-{name}` (removed on drop), its stdout lines on a channel.
#[allow(dead_code)] // used by the tests that run the agent
pub struct ScratchAgent {
    pub proc: shadow_agent::sys::process::ChildGuard,
    pub lines: std::sync::mpsc::Receiver<String>,
    _reader: std::thread::JoinHandle<()>,
    /// The scratch directory.
    pub dir: PathBuf,
    /// The status file the agent publishes (`--status-file`).
    pub status: PathBuf,
    /// The config file (`--config`).
    pub cfg: PathBuf,
    _rm: RmDir,
}

#[allow(dead_code)] // used by the tests that run the agent
impl ScratchAgent {
    /// Writes `config(dir)` (the scratch directory given, for state and key files), lets
    /// `tweak` add to the command (environment, say) and starts the agent, in `ns` if given.
    pub fn start(
        tag: &str,
        name: &str,
        ns: Option<&NetNs>,
        config: impl FnOnce(&std::path::Path) -> String,
        tweak: impl FnOnce(&mut std::process::Command),
    ) -> ScratchAgent {
        let rm = RmDir(std::env::temp_dir().join(format!("shdt{tag}-{name}")));
        std::fs::create_dir_all(&rm.0).expect("scratch dir");
        let (dir, status, cfg) = (
            rm.0.clone(),
            rm.0.join("status.json"),
            rm.0.join("agent.toml"),
        );
        std::fs::write(&cfg, config(&dir)).expect("config");
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_shadow-agent"));
        cmd.args(["run", "--json", "--duration", "90", "--status-file"])
            .arg(&status)
            .arg("--config")
            .arg(&cfg)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        tweak(&mut cmd);
        let mut proc = shadow_agent::sys::process::spawn(cmd, ns, None).expect("agent");
        let (lines, reader) = stdout_lines(&mut proc);
        ScratchAgent {
            proc,
            lines,
            _reader: reader,
            dir,
            status,
            cfg,
            _rm: rm,
        }
    }

    /// Rewrites the config file (for a reload).
    pub fn configure(&self, text: &str) {
        std::fs::write(&self.cfg, text).expect("config");
    }

    /// SIGTERM; asserts a clean exit.
    pub fn stop(mut self) {
        let (st, err) = terminate(&mut self.proc, std::time::Duration::from_secs(30));
        assert!(st.success(), "agent failed: {err}");
    }
}

/// `shadow-agent reload` for the agent publishing `status` (at most 20 s).
#[allow(dead_code)] // used by the reload tests
pub fn reload(status: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_shadow-agent"))
        .args(["reload", "--timeout", "20", "--file"])
        .arg(status)
        .output()
        .expect("shadow-agent reload")
}
