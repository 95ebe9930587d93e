//! `shadow-agent run` keeps mirroring when its interfaces are removed and made again under
//! it, as a restarted container or VM does to its veth: the primary's interface and then the
//! configured shadow interface are deleted and created again with the same names, and
//! datagrams sent after each still reach a real socket in the shadow namespace. One removed
//! for good is reported (`gone`, `mirror.missing`) and the agent exits cleanly. Every program
//! the mirror puts on the primary's interface is attached again (XDP counters and TCP
//! sessions are on, so the XDP program and `shadow_isn` are among them; a failed attach
//! would be an `attach_failed` event, not `recreated`).
//!
//! ```text
//! client ns  cl ──veth── nc  node ns (agent; mirror on nc, rule: UDP to NODE:9999)
//!                            hs ──veth── ht  shadow ns (NODE's address, a UDP socket)
//! ```

#[allow(dead_code)] // the shared routed topology is not used here
mod common;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use shadow_agent::sys::{
    link::{self, MacAddr, Veth, VethEnd},
    netns::NetNs,
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 19, 41, 1);
const NODE: Ipv4Addr = Ipv4Addr::new(198, 19, 41, 2);
const SHADOW_MAC: [u8; 6] = [0x02, 0x5d, 0x00, 0x00, 0x41, 0x01];
const DATAGRAMS: u64 = 30;

/// The client's link to the node, addressed and up.
fn front(cl: &str, client: &NetNs, nc: &str, node: &NetNs) -> Veth {
    let v = Veth::create(VethEnd::in_netns(cl, client), VethEnd::in_netns(nc, node))
        .expect("front veth");
    for (ifname, ns, addr) in [(cl, client, CLIENT), (nc, node, NODE)] {
        link::add_address(ifname, Some(ns), IpAddr::V4(addr), 24).expect("address");
        link::set_up(ifname, Some(ns)).expect("up");
    }
    v
}

/// The node's link to the shadow: the shadow end holds the shadow MAC and NODE's address.
fn shadow_link(hs: &str, node: &NetNs, ht: &str, shadow: &NetNs) -> Veth {
    let v = Veth::create(VethEnd::in_netns(hs, node), VethEnd::in_netns(ht, shadow)).expect("veth");
    link::set_mac(ht, Some(shadow), MacAddr(SHADOW_MAC)).expect("shadow MAC");
    link::add_address(ht, Some(shadow), IpAddr::V4(NODE), 24).expect("shadow address");
    for (ifname, ns) in [(hs, node), (ht, shadow)] {
        link::set_up(ifname, Some(ns)).expect("up");
    }
    v
}

/// `DATAGRAMS` datagrams from the client to NODE:9999, paced.
fn burst(client: &NetNs) {
    client
        .run_in(|| {
            let s = UdpSocket::bind("0.0.0.0:0").expect("client socket");
            for i in 0..DATAGRAMS {
                // The first ones may wait for ARP on a link just made: best effort each.
                let _ = s.send_to(
                    format!("datagram {i}").as_bytes(),
                    SocketAddr::from((NODE, 9999)),
                );
                std::thread::sleep(Duration::from_millis(3));
            }
        })
        .expect("enter the client netns");
}

/// Datagrams received by a socket on NODE:9999 in the shadow namespace (a thread counts
/// them until dropped).
struct ShadowSocket {
    got: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ShadowSocket {
    fn start(shadow: &NetNs) -> ShadowSocket {
        let got = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let ns = shadow.try_clone().expect("shadow netns handle");
        let (g, s) = (got.clone(), stop.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            ns.run_in(move || {
                let sock = UdpSocket::bind((NODE, 9999)).expect("shadow socket");
                sock.set_read_timeout(Some(Duration::from_millis(100)))
                    .expect("timeout");
                let _ = ready_tx.send(());
                let mut buf = [0u8; 2048];
                while !s.load(Ordering::Relaxed) {
                    if sock.recv_from(&mut buf).is_ok() {
                        g.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
            .expect("enter the shadow netns");
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("shadow socket bound");
        ShadowSocket {
            got,
            stop,
            thread: Some(thread),
        }
    }

    fn got(&self) -> u64 {
        self.got.load(Ordering::Relaxed)
    }

    /// Sends bursts until the socket got `n` more datagrams than `from` (at most 15 s).
    fn expect_more(&self, client: &NetNs, from: u64, n: u64, what: &str) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            burst(client);
            std::thread::sleep(Duration::from_millis(200));
            let now = self.got();
            if now >= from + n {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: the shadow got {} datagrams, expected {n}",
                now - from
            );
        }
    }
}

impl Drop for ShadowSocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The next `"event": "link"` line of `interface` with one of `changes` (at most 15 s).
fn link_event(
    lines: &std::sync::mpsc::Receiver<String>,
    interface: &str,
    changes: &[&str],
) -> serde_json::Value {
    common::wait_line(
        lines,
        &format!("link event {changes:?} of {interface}"),
        Duration::from_secs(15),
        |v| {
            v["event"] == "link"
                && v["interface"] == interface
                && changes.iter().any(|c| v["change"] == *c)
        },
    )
}

#[test]
fn the_mirror_follows_its_interfaces_when_they_are_made_again() {
    let tag = format!("{:x}", std::process::id() & 0xfffff);
    let client = NetNs::create(&format!("shdt{tag}-fc")).expect("client netns");
    let node = NetNs::create(&format!("shdt{tag}-fn")).expect("node netns");
    let shadow = NetNs::create(&format!("shdt{tag}-fs")).expect("shadow netns");
    let [cl, nc, hs, ht] = ['l', 'c', 's', 't'].map(|s| format!("shdt{tag}f{s}"));
    let mut front_link = Some(front(&cl, &client, &nc, &node));
    let mut shadow_veth = Some(shadow_link(&hs, &node, &ht, &shadow));
    let sock = ShadowSocket::start(&shadow);

    let mut agent = common::ScratchAgent::start(
        &tag,
        "mfw",
        Some(&node),
        |_| {
            format!(
                r#"
[profile]
interval_ms = 300

[metrics]
listen = "off"

[mirror]
interface = "{nc}"
shadow_interface = "{hs}"
shadow_mac = "{mac}"
xdp = true
[[mirror.rules]]
dst = "{NODE}/32"
ports = "9999"
proto = "udp"
"#,
                mac = MacAddr(SHADOW_MAC)
            )
        },
        |_| {},
    );
    common::wait_status(
        &agent.status,
        "first status",
        Duration::from_secs(30),
        |s| s["mirror"]["cloned"].is_u64(),
    );
    let got = sock.expect_more(&client, 0, DATAGRAMS, "before any change");

    // The primary's interface removed and made again (same names, new indexes).
    drop(front_link.take());
    front_link = Some(front(&cl, &client, &nc, &node));
    let ev = link_event(&agent.lines, &nc, &["recreated", "back"]);
    assert_eq!(ev["role"], "interface", "{ev}");
    assert_ne!(ev["old_ifindex"], ev["new_ifindex"], "{ev}");
    let got = sock.expect_more(
        &client,
        got,
        DATAGRAMS,
        "after the primary's was made again",
    );

    // The shadow interface removed and made again.
    drop(shadow_veth.take());
    shadow_veth = Some(shadow_link(&hs, &node, &ht, &shadow));
    let ev = link_event(&agent.lines, &hs, &["recreated", "back"]);
    assert_eq!(ev["role"], "shadow_interface", "{ev}");
    sock.expect_more(&client, got, DATAGRAMS, "after the shadow's was made again");

    // The primary's removed for good: reported, and the agent still exits cleanly.
    drop(front_link.take());
    let ev = link_event(&agent.lines, &nc, &["gone"]);
    assert!(ev["new_ifindex"].is_null(), "{ev}");
    let s = common::wait_status(
        &agent.status,
        "mirror.missing",
        Duration::from_secs(10),
        |s| {
            s["mirror"]["missing"]
                .as_array()
                .is_some_and(|m| m.iter().any(|i| i == nc.as_str()))
        },
    );
    assert!(s["mirror"]["cloned"].is_u64(), "{s}");
    let (st, err) = common::terminate(&mut agent.proc, Duration::from_secs(30));
    assert!(st.success(), "agent failed: {err}");
    drop(shadow_veth);
}
