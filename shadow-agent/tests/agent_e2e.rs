//! The whole product through its CLI, as an operator runs it: `shadow-agent run` with a
//! config holding a mirror and a shadow group, on a node (a network namespace this test
//! makes) that routes between a client and the primary. A real HTTP server is the primary,
//! the same server is the shadow, curl is the client. The shadow must serve the mirrored
//! requests (TCP sequence translation) with the credentials masked, and nothing it sends
//! may reach the client.
//!
//! ```text
//! client ns ──veth── node ns (agent; mirror on nc; replica host ends) ──veth── primary ns
//!   cl                 nc                       np                              pr
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

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 19, 7, 1);
const NODE_C: Ipv4Addr = Ipv4Addr::new(198, 19, 7, 2);
const NODE_P: Ipv4Addr = Ipv4Addr::new(198, 19, 8, 1);
const PRIMARY: Ipv4Addr = Ipv4Addr::new(198, 19, 8, 2);

fn served(log: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"GET "))
        .map(str::to_string)
        .collect()
}

#[test]
fn run_mirrors_to_a_shadow_that_serves_masked_requests_and_leaks_nothing() {
    let tag = format!("{:x}", std::process::id() & 0xfffff);
    // On the node's interface the client's requests arrive on (a host's NIC).
    e2e(
        &tag,
        'e',
        |nc| format!("interface = \"{nc}\""),
        |nc, _| nc.to_owned(),
        false,
        None,
    );
}

/// The same with the clients' addresses pseudonymised: the shadow's TCP sessions still
/// establish (its replies go to the pseudonym and are matched back to the session), and it
/// logs every request as coming from one pseudonym, never from the client's address.
#[test]
fn run_mirrors_pseudonymised_clients_whose_sessions_still_establish() {
    let tag = format!("{:x}", (std::process::id() & 0xfffff) ^ 3);
    e2e(
        &tag,
        'p',
        |nc| format!("interface = \"{nc}\""),
        |nc, _| nc.to_owned(),
        true,
        None,
    );
}

/// The same with every TC program a filter under the clsact qdisc, as on kernels before 6.6
/// (`SHADOW_TC_MODE=clsact`): the mirror on the primary's interface, `shadow_tcp`,
/// `shadow_mask` and `shadow_learn` on the replica's veth, ordered by priority before the
/// replica's `shadow_discard`, and the TCP hold loop.
#[test]
fn run_mirrors_through_clsact_filters_as_on_kernels_before_tcx() {
    let tag = format!("{:x}", (std::process::id() & 0xfffff) ^ 5);
    e2e(
        &tag,
        'k',
        |nc| format!("interface = \"{nc}\""),
        |nc, _| nc.to_owned(),
        false,
        Some("clsact"),
    );
}

/// The same through the primary's own veth, found by its address, as on a Kubernetes node
/// (`mirror.primary_address`): the requests leave the node through it, so the mirror is on
/// its egress and learns the primary's sequence numbers on its ingress.
#[test]
fn run_mirrors_a_primary_found_by_its_address_on_the_way_out_to_it() {
    let tag = format!("{:x}", (std::process::id() & 0xfffff) ^ 2);
    e2e(
        &tag,
        'a',
        |_| format!("primary_address = \"{PRIMARY}\""),
        |_, np| np.to_owned(),
        false,
        None,
    );
}

/// Runs the agent with `[mirror]` naming the primary by `select(nc)` in a routed topology;
/// `expect(nc, np)` is the interface the mirror must be on. With `pseudo` the clients'
/// addresses are pseudonymised (`[mirror.pseudonymise]`, the default prefix 100.64.0.0/10).
fn e2e(
    tag: &str,
    letter: char,
    select: impl Fn(&str) -> String,
    expect: impl Fn(&str, &str) -> String,
    pseudo: bool,
    tc_mode: Option<&str>,
) {
    let dir = std::env::temp_dir().join(format!("shdt{tag}-e2e{letter}"));
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
        tag,
        letter,
        common::Addrs {
            client: CLIENT,
            node_c: NODE_C,
            node_p: NODE_P,
            primary: PRIMARY,
        },
    );

    let server_argv = |log: &str| {
        format!(
            r#"["python3", "-m", "http.server", "--bind", "{PRIMARY}", "8080", "--directory", "{}"]"#,
            dir.display()
        ) + log
    };
    let primary_log = dir.join("primary.log");
    let _primary_srv = common::http_primary(
        &primary,
        PRIMARY,
        &dir,
        std::fs::File::create(&primary_log).expect("log").into(),
    );

    let shadow_log = dir.join("shadow.log");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let name = format!("{letter}{}", &tag[..tag.len().min(7)]);
    let np = format!("shdt{tag}{letter}q");
    let pseudonymise = if pseudo {
        let key = dir.join("pseudo.key");
        std::fs::write(&key, "00112233445566778899aabbccddeeff\n").expect("key");
        format!("[mirror.pseudonymise]\nkey_file = \"{}\"\n", key.display())
    } else {
        String::new()
    };
    let config = format!(
        r#"
[mirror]
{select}
tcp_sessions = "translate"
[[mirror.rules]]
dst = "{PRIMARY}/32"
ports = "8080"
proto = "tcp"
mask_http = true
{pseudonymise}
[shadow]
name = "{name}"
command = {argv}
output = "{shadow_log}"
addresses = ["{PRIMARY}/24"]
cpu_cores = 0.5
memory_mb = 128

[profile]
interval_ms = 200

[metrics]
listen = "127.0.0.1:{port}"
"#,
        argv = server_argv(""),
        shadow_log = shadow_log.display(),
        select = select(&nc),
    );
    let cfg = dir.join("agent.toml");
    std::fs::write(&cfg, &config).expect("config");
    let check = Command::new(env!("CARGO_BIN_EXE_shadow-agent"))
        .arg("check-config")
        .arg(&cfg)
        .output()
        .expect("check-config");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    // The agent runs in the node's network namespace, as it would on a node.
    let mut agent_cmd = Command::new(env!("CARGO_BIN_EXE_shadow-agent"));
    agent_cmd
        .args(["run", "--json", "--duration", "12", "--config"])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(m) = tc_mode {
        agent_cmd.env("SHADOW_TC_MODE", m);
    }
    let mut agent = process::spawn(agent_cmd, Some(&node), None).expect("agent");

    // The agent prints one JSON line per interval once everything is attached: wait for
    // the first, then drive the primary with curl.
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
    let url = |i: usize| format!("http://{PRIMARY}:8080/index.html?session=e2e-secret-{i}");
    let mut ok = 0;
    for i in 0..20 {
        let mut curl = Command::new("curl");
        curl.args([
            "-sf",
            "--max-time",
            "5",
            "-H",
            "Authorization: Bearer e2e-token-xyz",
        ])
        .arg(url(i))
        .stdout(Stdio::piped());
        let mut c = process::spawn(curl, Some(&client), None).expect("curl");
        let status = c
            .wait_timeout(Duration::from_secs(10))
            .expect("wait")
            .expect("curl ended");
        ok += usize::from(status.success());
    }
    std::thread::sleep(Duration::from_secs(1));
    let (status, stderr) = common::wait_exit(&mut agent, Duration::from_secs(30));
    let _ = reader.join();
    let last_line = rx.try_iter().last().unwrap_or_default();
    assert!(status.success(), "agent failed: {stderr}");
    // The interfaces are left as they were found: no clsact qdisc the agent added stays.
    let qdiscs = Command::new("ip")
        .args(["netns", "exec", node.name(), "tc", "qdisc", "show"])
        .output()
        .expect("tc qdisc show");
    let qdiscs = String::from_utf8_lossy(&qdiscs.stdout);
    assert!(
        !qdiscs.contains("clsact"),
        "a clsact qdisc is left in the node: {qdiscs}"
    );
    assert_eq!(
        ok, 20,
        "the primary failed requests with the mirror attached"
    );

    let primary_served = served(&primary_log);
    let shadow_served = served(&shadow_log);
    assert_eq!(primary_served.len(), 20, "{primary_served:?}");
    assert!(
        shadow_served.len() >= 19,
        "the shadow served {} of 20 mirrored requests: {shadow_served:?}\nagent: {stderr}\nlast status: {last_line}\nshadow log: {}",
        shadow_served.len(),
        std::fs::read_to_string(&shadow_log).unwrap_or_default()
    );
    assert!(primary_served
        .iter()
        .all(|l| l.contains("session=e2e-secret-")));
    for l in &shadow_served {
        assert!(
            !l.contains("e2e-secret"),
            "an unmasked value reached the shadow: {l}"
        );
        assert!(l.contains("session=*"), "{l}");
    }
    // Who the shadow saw as its client: the client, or one pseudonym for all its requests.
    let peers: std::collections::BTreeSet<Ipv4Addr> = shadow_served
        .iter()
        .map(|l| {
            l.split_whitespace()
                .next()
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no client address in {l}"))
        })
        .collect();
    if pseudo {
        let cgnat =
            |a: Ipv4Addr| u32::from(a) >> 22 == u32::from(Ipv4Addr::new(100, 64, 0, 0)) >> 22;
        assert!(
            peers.len() == 1 && peers.iter().all(|p| *p != CLIENT && cgnat(*p)),
            "{peers:?}"
        );
    } else {
        assert_eq!(peers.into_iter().collect::<Vec<_>>(), [CLIENT]);
    }
    // Everything the shadow sent (its replies included) was dropped at its veth, and it reset
    // no session. Had a reply leaked through the forwarding node, the client's connections
    // would have broken (a second SYN-ACK with the shadow's sequence numbers).
    let v: serde_json::Value = serde_json::from_str(&last_line).expect("status line");
    assert_eq!(
        v["mirror"]["interface"],
        expect(&nc, &np).as_str(),
        "{last_line}"
    );
    assert_eq!(
        v["mirror"]["tc_mode"],
        tc_mode.unwrap_or("tcx"),
        "{last_line}"
    );
    let dropped = v["shadow"][0]["discard"]["tx_dropped_packets"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        dropped >= 40,
        "only {dropped} of the shadow's packets dropped: {last_line}"
    );
    // The replica's request->reply latency was timed (its replies matched to the requests,
    // also when they go to a pseudonym).
    assert!(
        v["shadow"][0]["latency"]["replies"].as_u64().unwrap_or(0) >= 10,
        "{last_line}"
    );
    assert_eq!(
        v["mirror"]["tcp_shadow_resets"].as_u64(),
        Some(0),
        "{last_line}"
    );
    assert!(
        v["mirror"]["tcp_established"].as_u64().unwrap_or(0) >= 19,
        "{last_line}"
    );
    // Nothing the agent made is left in the node.
    assert!(link::list(Some(&node))
        .expect("links")
        .iter()
        .all(|l| !l.name.starts_with(&format!("shd{name}"))));
}
