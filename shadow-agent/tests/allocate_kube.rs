//! The allocator on a Kubernetes node, as a process: a kubelet-owned container cgroup (laid
//! out as the kubelet's cgroupfs driver makes it) with a throttled busy process, managed
//! through `[allocate.kubernetes]`. There is no cluster on the CI machine, so the API server
//! and the kubelet are `fake_kube_api.py`: HTTPS with a CA of the test's own, a bearer
//! token, the pod list by node, the pod, and the `resize` subresource, which (once told to)
//! writes the accepted CPU limit into the cgroup as the kubelet would. Both run in a network
//! namespace of the test.
//!
//! What must hold: the agent never writes the kubelet's cgroup itself; it asks for a larger
//! CPU limit through the API (the container's name, millicores, the QoS class kept, the
//! token sent); the kubelet's change is what the agent then reads; on exit, and at the next
//! start after a SIGKILL, the container's original resources are patched back.

#[allow(dead_code)] // the shared topology is not used here
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use shadow_agent::sys::{link, netns::NetNs};

const UID: &str = "5f0c2a8e-1b3d-4e6f-8a9b-0c1d2e3f4a5b";
const CID: &str = "9a8b7c6d5e4f30211203f4e5d6c7b8a99a8b7c6d5e4f30211203f4e5d6c7b8a9";
const TOKEN: &str = "shadow-test-token-7f3a";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 signed by it, in `dir`.
fn certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=shadow-test-ca",
    ]);
    openssl(dir, &ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(dir, &csr);
    std::fs::write(
        dir.join("srv.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("extensions");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "srv.crt",
            "-days",
            "1",
            "-extfile",
            "srv.ext",
        ],
    );
}

fn requests(log: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete
        .lines()
        .map(|l| serde_json::from_str(l).expect("request log line"))
        .collect()
}

fn patches(log: &Path) -> Vec<serde_json::Value> {
    requests(log)
        .into_iter()
        .filter(|r| r["method"] == "PATCH")
        .collect()
}

/// The CPU limit a resize patch asks for, in millicores.
fn cpu_limit_m(p: &serde_json::Value) -> Option<f64> {
    let q = p["body"]["spec"]["containers"][0]["resources"]["limits"]["cpu"].as_str()?;
    q.strip_suffix('m')
        .map(|m| m.parse().ok())
        .unwrap_or_else(|| q.parse::<f64>().ok().map(|c| c * 1000.0))
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn config(group: &str, state: &Path, port: &str, dir: &Path) -> String {
    format!(
        "[profile]\ninterval_ms = 300\n\n[metrics]\nlisten = \"off\"\n{}\n\
         [allocate.kubernetes]\napi_server = \"https://127.0.0.1:{port}\"\n\
         token_file = \"{}\"\nca_file = \"{}\"\nnode_name = \"node-a\"\n",
        common::cpu_allocate_toml(group, false, state),
        dir.join("token").display(),
        dir.join("ca.crt").display(),
    )
}

/// `fake_kube_api.py` in `ns`, with its scratch directory (certificates, token, request log).
struct FakeApi {
    _proc: shadow_agent::sys::process::ChildGuard,
    port: String,
    log: PathBuf,
    apply: PathBuf,
    dir: common::RmDir,
}

impl FakeApi {
    fn start(tag: &str, name: &str, ns: &NetNs, quota_file: &Path, extra: &[&str]) -> FakeApi {
        let dir = common::RmDir(std::env::temp_dir().join(format!("shdt{tag}-{name}")));
        std::fs::create_dir_all(&dir.0).expect("scratch dir");
        certificates(&dir.0);
        std::fs::write(dir.0.join("token"), format!("{TOKEN}\n")).expect("token");
        let log = dir.0.join("requests.jsonl");
        let apply = dir.0.join("apply");
        let port_file = dir.0.join("port");
        let mut api = Command::new("python3");
        api.arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fake_kube_api.py"
        ))
        .args([
            "--cert", "srv.crt", "--key", "srv.key", "--token", TOKEN, "--node", "node-a",
        ])
        .args(["--uid", UID, "--cid", CID])
        .arg("--port-file")
        .arg(&port_file)
        .arg("--log")
        .arg(&log)
        .arg("--quota-file")
        .arg(quota_file)
        .arg("--apply-flag")
        .arg(&apply)
        .args(extra)
        .current_dir(&dir.0);
        let proc = shadow_agent::sys::process::spawn(api, Some(ns), None).expect("fake API server");
        wait_for("the fake API server", Duration::from_secs(20), || {
            port_file.exists()
        });
        let port = std::fs::read_to_string(&port_file).expect("port");
        FakeApi {
            _proc: proc,
            port,
            log,
            apply,
            dir,
        }
    }
}

/// A network namespace and a container cgroup laid out as the kubelet's cgroupfs driver
/// makes it (`shdt{tag}-{name}/kubepods/burstable/pod<UID>/<CID>`) with a throttled busy
/// process; the cgroup goes first when dropped, then the process, then the namespace.
struct Node {
    cg: shadow_agent::sys::cgroup::Cgroup,
    _burner: shadow_agent::sys::process::ChildGuard,
    quota_file: PathBuf,
    group: String,
    ns: NetNs,
}

impl Node {
    fn new(tag: &str, name: &str) -> Node {
        let ns = NetNs::create(&format!("shdt{tag}-{name}")).expect("netns");
        link::set_up("lo", Some(&ns)).expect("lo up");
        let group = format!("shdt{tag}-{name}/kubepods/burstable/pod{UID}/{CID}");
        let (cg, burner) = common::throttled_burner(&group);
        let quota_file: PathBuf = cg
            .file_path(
                shadow_agent::sys::cgroup::Controller::Cpu,
                "cpu.cfs_quota_us",
            )
            .expect("cpu.cfs_quota_us");
        Node {
            cg,
            _burner: burner,
            quota_file,
            group,
            ns,
        }
    }
}

#[test]
fn a_pods_cpu_limit_is_resized_through_the_api_and_restored_even_after_a_crash() {
    let tag = format!("{:x}", std::process::id() & 0xffffff);
    let node = Node::new(&tag, "k8s");
    let (ns, group, cg) = (&node.ns, &node.group, &node.cg);
    let api = FakeApi::start(&tag, "k8s-api", ns, &node.quota_file, &[]);
    let (dir, log, apply, port) = (&api.dir, api.log.clone(), api.apply.clone(), &api.port);
    let state = dir.0.join("state");
    let agent = common::ScratchAgent::start(
        &tag,
        "k8s-agent",
        Some(ns),
        |_| config(group, &state, port, &dir.0),
        |_| {},
    );

    // 1. The kubelet does not act yet: the agent asks for more CPU through the API and
    //    leaves the cgroup alone.
    wait_for(
        "a resize up through the API",
        Duration::from_secs(30),
        || {
            patches(&log)
                .iter()
                .any(|p| p["code"] == 200 && cpu_limit_m(p).is_some_and(|m| m > 100.0))
        },
    );
    assert_eq!(
        common::quota(cg),
        common::ORIGINAL_QUOTA,
        "the agent wrote the kubelet's cgroup itself"
    );
    for r in requests(&log) {
        assert_eq!(
            r["auth"],
            format!("Bearer {TOKEN}"),
            "request without the token: {r}"
        );
        assert_ne!(r["code"], 422, "the API refused a patch: {r}");
    }
    let first = patches(&log).remove(0);
    assert_eq!(
        first["content_type"],
        "application/strategic-merge-patch+json"
    );
    let c = &first["body"]["spec"]["containers"][0];
    assert_eq!(c["name"], "app", "{first}");
    assert!(
        c["resources"]["requests"].is_null(),
        "a Burstable container's request must stay as it is: {first}"
    );
    // The audit line follows the API's answer.
    wait_for(
        "an applied CPU decision in the audit log",
        Duration::from_secs(10),
        || {
            common::audit(&state)
                .iter()
                .any(|e| e["resource"] == "cpu" && e["applied"] == true)
        },
    );

    // The status lines name the pod and container the group's changes go to.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut named = false;
    while !named && Instant::now() < deadline {
        if let Ok(line) = agent.lines.recv_timeout(Duration::from_millis(500)) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            named = v["allocate"][group.as_str()]["kubernetes"]
                == serde_json::json!({"pod": "shop/web-0", "container": "app"});
        }
    }
    assert!(
        named,
        "no status line names the pod and container of {group}"
    );

    // 2. Now the kubelet applies resizes: the quota the agent reads is the API's.
    std::fs::write(&apply, "").expect("apply flag");
    wait_for(
        "the kubelet's raised quota",
        Duration::from_secs(30),
        || common::quota(cg).parse::<i64>().is_ok_and(|q| q > 10_000),
    );

    // 3. SIGKILL: nothing is restored, the record of the originals stays ...
    let mut agent = agent;
    agent.proc.kill().expect("SIGKILL");
    let raised = common::quota(cg);
    assert_ne!(raised, common::ORIGINAL_QUOTA);
    let n_before = patches(&log).len();

    // ... and the next agent patches the original resources back first, then manages on;
    //    its own exit restores them again.
    let again = common::ScratchAgent::start(
        &tag,
        "k8s-agent2",
        Some(ns),
        |_| config(group, &state, port, &dir.0),
        |_| {},
    );
    wait_for(
        "the restore after the crash",
        Duration::from_secs(30),
        || patches(&log).len() > n_before,
    );
    let restore = patches(&log).remove(n_before);
    let r = &restore["body"]["spec"]["containers"][0]["resources"];
    assert_eq!(
        (r["limits"]["cpu"].as_str(), r["requests"]["cpu"].as_str()),
        (Some("100m"), Some("50m")),
        "the first patch after the crash must put the original resources back: {restore}"
    );
    again.stop();
    let last = patches(&log).pop().expect("a patch");
    assert_eq!(
        cpu_limit_m(&last),
        Some(100.0),
        "the exit must restore the original limit: {last}"
    );
    assert_eq!(common::quota(cg), common::ORIGINAL_QUOTA);
    let entries = common::audit(&state);
    assert!(
        entries.iter().any(|e| e["resource"] == "restore"
            && e["new"].get("pods/shop/web-0/resize").is_some()),
        "the restore through the API is not audited: {entries:?}"
    );
    assert!(
        !state
            .join(format!("original-{}.json", group.replace('/', "%")))
            .exists(),
        "the record of the originals must be gone after the restore"
    );
}

/// On a node without room for the raise, the kubelet marks the resize `Infeasible` and keeps
/// the old limit. The agent reports that as a scale-out event of its own (the node, not its
/// rails, is what ran out), once, and does not ask for the same value again.
#[test]
fn a_resize_the_node_cannot_fit_is_a_scale_out_event_once() {
    let tag = format!("{:x}", std::process::id() & 0xffffff);
    let node = Node::new(&tag, "k8sf");
    let (ns, group, cg) = (&node.ns, &node.group, &node.cg);
    // The node has room for the pod's 100m and no more; the kubelet applies what fits.
    let api = FakeApi::start(
        &tag,
        "k8sf-api",
        ns,
        &node.quota_file,
        &["--capacity-m", "100"],
    );
    std::fs::write(&api.apply, "").expect("apply flag");
    let state = api.dir.0.join("state");
    let agent = common::ScratchAgent::start(
        &tag,
        "k8sf-agent",
        Some(ns),
        |_| {
            config(group, &state, &api.port, &api.dir.0).replace(
                "[allocate.scale]\nenabled = false",
                "[allocate.scale]\nenabled = true",
            )
        },
        |_| {},
    );

    let infeasible = |line: &str| {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        (v["event"] == "scale" && v["cause"] == "resize_infeasible").then_some(v)
    };
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut event = None;
    while event.is_none() && Instant::now() < deadline {
        if let Ok(line) = agent.lines.recv_timeout(Duration::from_millis(500)) {
            event = infeasible(&line);
        }
    }
    let ev = event.unwrap_or_else(|| {
        panic!(
            "no resize_infeasible scale event; requests: {:?}",
            requests(&api.log)
        )
    });
    assert_eq!(ev["direction"], "out", "{ev}");
    assert_eq!(ev["resource"], "cpu", "{ev}");
    assert_eq!(ev["cgroup"], group.as_str(), "{ev}");
    assert_eq!(ev["acted"], false, "{ev}");
    let (need, capacity) = (
        ev["need"].as_f64().expect("need"),
        ev["capacity"].as_f64().expect("capacity"),
    );
    // The limit in force is the kubelet's 100m; the ask is the one the API holds.
    assert!((capacity - 0.1).abs() < 1e-6, "{ev}");
    let asked: Vec<f64> = patches(&api.log)
        .iter()
        .filter_map(cpu_limit_m)
        .filter(|&m| m > 100.0)
        .collect();
    assert!(
        need > capacity && asked.iter().any(|m| (m - need * 1000.0).abs() < 1.0),
        "need {need} is not a limit the agent asked for: {asked:?}"
    );
    let message = ev["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("shop/web-0") && message.contains("Node didn't have enough capacity"),
        "{ev}"
    );
    assert_eq!(
        common::quota(cg),
        common::ORIGINAL_QUOTA,
        "an infeasible resize must leave the limit in force"
    );

    // Once per episode, and the same value is not asked for again while the verdict stands.
    let patches_then = patches(&api.log).len();
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        if let Ok(line) = agent.lines.recv_timeout(Duration::from_millis(300)) {
            assert!(infeasible(&line).is_none(), "a second event: {line}");
        }
    }
    let again: Vec<_> = patches(&api.log)
        .into_iter()
        .skip(patches_then)
        .filter(|p| cpu_limit_m(p).is_some_and(|m| (m - need * 1000.0).abs() < 1.0))
        .collect();
    assert!(again.is_empty(), "asked for {need} again: {again:?}");
    // The failed change is audited with the kubelet's reason.
    assert!(
        common::audit(&state).iter().any(|e| e["resource"] == "cpu"
            && e["error"]
                .as_str()
                .is_some_and(|m| m.contains("Infeasible"))),
        "no audited infeasible change: {:?}",
        common::audit(&state)
    );
    agent.stop();
}
