//! The mirror of a primary known by its address, as a pod on a Kubernetes node is: the agent
//! runs in the node's namespace, finds the host end of the pod's veth by the pod's address
//! (`mirror.primary_address`), mirrors on its egress (the pod's ingress) and, when the pod is
//! made again with a veth of another name (a pod restart), finds and follows the new one.
//! Both CNI shapes: a route straight onto the pod's veth (Calico's), and a bridge whose port
//! the pod's veth is (the bridge plugin's `cni0`), found through the bridge's neighbour entry
//! and forwarding database. Real UDP sockets receive in the pod (the primary) and in the
//! shadow namespace (the clones).
//!
//! ```text
//! client ns  cl ──veth── nc  node ns (ip_forward; agent)  [bridge br, GW]
//!                            v0, v1, … ──veth── pe  pod ns (POD, default via GW)
//!                            hs ──veth── ht  shadow ns (POD's address, the shadow MAC)
//! ```

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use common::mirrored::{link_event, send_udp, wait_missing, ShadowSocket, SHADOW_MAC};
use shadow_agent::sys::{
    link::{self, MacAddr, Veth, VethEnd},
    netns::NetNs,
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 19, 45, 1);
const NODE: Ipv4Addr = Ipv4Addr::new(198, 19, 45, 2);
const GW: Ipv4Addr = Ipv4Addr::new(198, 19, 46, 1);
const POD: Ipv4Addr = Ipv4Addr::new(198, 19, 46, 2);
const PORT: u16 = 9999;

struct PodNode {
    // Links before the namespaces: dropped first.
    pod_link: Option<Veth>,
    _front: Veth,
    _back: Veth,
    client: NetNs,
    node: NetNs,
    pod: NetNs,
    shadow: NetNs,
    /// `shdt{tag}{letter}`: the prefix of every interface name.
    prefix: String,
    bridge: Option<String>,
    hs: String,
    /// Host ends made so far.
    made: u32,
}

impl PodNode {
    fn new(tag: &str, letter: char, bridged: bool) -> PodNode {
        let ns = |s: &str| NetNs::create(&format!("shdt{tag}-{letter}{s}")).expect("netns");
        let (client, node, pod, shadow) = (ns("c"), ns("n"), ns("p"), ns("s"));
        let prefix = format!("shdt{tag}{letter}");
        let [cl, nc, hs, ht] = ["l", "c", "s", "t"].map(|s| format!("{prefix}{s}"));
        let front = Veth::create(
            VethEnd::in_netns(&cl, &client),
            VethEnd::in_netns(&nc, &node),
        )
        .expect("front veth");
        for (ifname, ns, addr) in [(&cl, &client, CLIENT), (&nc, &node, NODE)] {
            link::add_address(ifname, Some(ns), IpAddr::V4(addr), 24).expect("address");
            link::set_up(ifname, Some(ns)).expect("up");
        }
        link::add_route_v4(&cl, Some(&client), POD, 32, Some(NODE)).expect("client route");
        node.run_in(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "1"))
            .expect("enter node")
            .expect("ip_forward");
        let back = Veth::create(
            VethEnd::in_netns(&hs, &node),
            VethEnd::in_netns(&ht, &shadow),
        )
        .expect("shadow veth");
        link::set_mac(&ht, Some(&shadow), MacAddr(SHADOW_MAC)).expect("shadow MAC");
        link::add_address(&ht, Some(&shadow), IpAddr::V4(POD), 24).expect("shadow address");
        for (ifname, ns) in [(&hs, &node), (&ht, &shadow)] {
            link::set_up(ifname, Some(ns)).expect("up");
        }
        let bridge = bridged.then(|| {
            let br = format!("{prefix}b");
            link::add_bridge(&br, Some(&node)).expect("bridge");
            link::add_address(&br, Some(&node), IpAddr::V4(GW), 24).expect("bridge address");
            link::set_up(&br, Some(&node)).expect("bridge up");
            br
        });
        let mut t = PodNode {
            pod_link: None,
            _front: front,
            _back: back,
            client,
            node,
            pod,
            shadow,
            prefix,
            bridge,
            hs,
            made: 0,
        };
        t.make_pod();
        t
    }

    /// The pod's veth, made (again) as a CNI does: a host end of a new name (`…v0`, `…v1`,
    /// …), a port of the bridge or holding the gateway's address; returns its name.
    fn make_pod(&mut self) -> String {
        let host = format!("{}v{}", self.prefix, self.made);
        let pe = format!("{}e", self.prefix);
        self.made += 1;
        let v = Veth::create(
            VethEnd::in_netns(&host, &self.node),
            VethEnd::in_netns(&pe, &self.pod),
        )
        .expect("pod veth");
        link::add_address(&pe, Some(&self.pod), IpAddr::V4(POD), 24).expect("pod address");
        link::set_up(&pe, Some(&self.pod)).expect("up");
        link::add_default_route_onlink(&pe, Some(&self.pod), IpAddr::V4(GW)).expect("pod route");
        match &self.bridge {
            Some(br) => link::set_master(&host, br, Some(&self.node)).expect("bridge port"),
            None => link::add_address(&host, Some(&self.node), IpAddr::V4(GW), 24)
                .expect("gateway address"),
        }
        link::set_up(&host, Some(&self.node)).expect("up");
        self.pod_link = Some(v);
        host
    }

    /// `n` datagrams of `payload` from the client to the pod, paced.
    fn send(&self, payload: &[u8], n: u64) {
        send_udp(&self.client, (POD, PORT).into(), payload, n);
    }

    /// The pod talks to its gateway (as every pod does soon after it starts): the node
    /// learns its new MAC, and the bridge the port it sits behind.
    fn announce(&self) {
        self.pod
            .run_in(|| {
                let s = UdpSocket::bind("0.0.0.0:0").expect("pod socket");
                for _ in 0..3 {
                    let _ = s.send_to(b"hello", SocketAddr::from((GW, 9)));
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
            .expect("enter the pod netns");
    }

    fn config(&self) -> String {
        format!(
            "[profile]\ninterval_ms = 300\n\n[metrics]\nlisten = \"off\"\n\n[mirror]\n\
             primary_address = \"{POD}\"\nshadow_interface = \"{}\"\nshadow_mac = \"{}\"\n\n\
             [[mirror.rules]]\ndst = \"{POD}/32\"\nports = \"{PORT}\"\nproto = \"udp\"\n",
            self.hs,
            MacAddr(SHADOW_MAC)
        )
    }
}

/// Runs the mirror through a pod restart: datagrams reach the pod and their clones the
/// shadow before; the old veth goes (`gone`, with `reason_has` in the reason, the address
/// in `mirror.missing`); a new one of another name comes (`back`, naming both); clones
/// reach the shadow again. The reason of `gone` contains one of `reasons`.
fn follow_a_restart(mut t: PodNode, tag: &str, reasons: &[&str]) {
    let primary = ShadowSocket::start_on(&t.pod, POD, PORT);
    let shadow = ShadowSocket::start_on(&t.shadow, POD, PORT);
    // The node has talked to the pod (a bridge has its MAC and port) before the agent starts.
    primary.expect_more_by(|| t.send(b"warm", 10), 0, 1, "the pod before the agent");
    let first = format!("{}v0", t.prefix);
    let config = t.config();
    let mut agent = common::ScratchAgent::start(tag, "mpod", Some(&t.node), |_| config, |_| {});
    let s = common::wait_status(
        &agent.status,
        "first status",
        Duration::from_secs(30),
        |s| s["mirror"]["cloned"].is_u64(),
    );
    assert_eq!(s["mirror"]["interface"], first.as_str(), "{s}");
    // check-config says where the address leads now.
    let cfg = agent.cfg.clone();
    let out = t
        .node
        .run_in(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_shadow-agent"))
                .args(["check-config", "--json"])
                .arg(&cfg)
                .output()
                .expect("check-config")
        })
        .expect("enter the node netns");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("check-config JSON");
    assert_eq!(v["primary"]["interface"], first.as_str(), "{v}");
    assert_eq!(v["primary"]["direction"], "egress", "{v}");
    assert_eq!(
        v["primary"]["bridge"].is_string(),
        t.bridge.is_some(),
        "{v}"
    );
    let d = b"datagram";
    let got = shadow
        .expect_more_by(|| t.send(d, 30), 0, 30, "before the restart")
        .len();
    assert!(shadow.since(0).iter().all(|p| p == d));
    let to_pod = primary.count();

    // The pod goes.
    t.pod_link = None;
    let ev = link_event(&agent.lines, None, &["gone"]);
    assert_eq!(ev["interface"], first.as_str(), "{ev}");
    assert_eq!(ev["address"], POD.to_string(), "{ev}");
    assert!(
        ev["reason"]
            .as_str()
            .is_some_and(|r| reasons.iter().any(|x| r.contains(x))),
        "{ev}"
    );
    wait_missing(&agent.status, &POD.to_string());

    // It is made again behind a veth of another name.
    let second = t.make_pod();
    t.announce();
    let ev = link_event(&agent.lines, None, &["back", "moved"]);
    assert_eq!(ev["interface"], second.as_str(), "{ev}");
    assert_eq!(ev["old_interface"], first.as_str(), "{ev}");
    assert_ne!(ev["old_ifindex"], ev["new_ifindex"], "{ev}");
    shadow.expect_more_by(|| t.send(d, 30), got, 30, "after the restart");
    assert!(
        primary.count() > to_pod,
        "the pod still receives its traffic"
    );
    let s = common::status(&agent.status);
    assert_eq!(s["mirror"]["interface"], second.as_str(), "{s}");
    assert!(s["mirror"]["missing"].is_null(), "{s}");
    let (st, err) = common::terminate(&mut agent.proc, Duration::from_secs(30));
    assert!(st.success(), "agent failed: {err}");
}

#[test]
fn a_pods_veth_is_found_by_its_address_and_followed_through_a_restart() {
    let tag = format!("{:x}", std::process::id() & 0xfffff);
    // Calico's shape: the node routes the pod's address straight onto its veth. Without it
    // the node has no route to the address at all.
    follow_a_restart(PodNode::new(&tag, 'r', false), &tag, &["no route"]);
}

#[test]
fn a_pod_behind_a_bridge_is_found_by_its_port_and_followed_through_a_restart() {
    let tag = format!("{:x}", (std::process::id() & 0xfffff) ^ 1);
    let t = PodNode::new(&tag, 'b', true);
    // An address of the node itself is no pod's: refused at start (exit 2), naming the key.
    let bad = t.config().replace(
        &format!("primary_address = \"{POD}\""),
        &format!("primary_address = \"{NODE}\""),
    );
    let mut agent = common::ScratchAgent::start(&tag, "mpodbad", Some(&t.node), |_| bad, |_| {});
    let (st, err) = common::wait_exit(&mut agent.proc, Duration::from_secs(30));
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("mirror.primary_address {NODE}")) && err.contains("this host"),
        "{err}"
    );
    // With the pod's port gone its MAC is in no port's forwarding entry; here, where it was
    // the bridge's only port, the bridge also loses its carrier and with it its neighbour
    // entries (a node's `cni0` with other pods on it keeps them).
    follow_a_restart(t, &tag, &["no port of the bridge", "no neighbour entry"]);
}

/// `sys::link::towards` for IPv6, directly: the host end of a routed pod's veth; the port of
/// a bridge (after the node has talked to the pod, as for IPv4); and why not for an
/// address of the node itself, one behind a gateway and one no route leads to.
#[test]
fn towards_finds_ipv6_pods_and_says_why_not_for_other_addresses() {
    use shadow_agent::sys::link::NotTowards;
    use std::net::Ipv6Addr;
    let tag = format!("{:x}", (std::process::id() & 0xfffff) ^ 4);
    let node = NetNs::create(&format!("shdt{tag}-6n")).expect("node netns");
    let pod = NetNs::create(&format!("shdt{tag}-6p")).expect("pod netns");
    let [host, pe, br, host2, pe2] = ["h", "e", "b", "i", "f"].map(|s| format!("shdt{tag}6{s}"));
    let gw: Ipv6Addr = "fd5d:6::1".parse().unwrap();
    let routed: Ipv6Addr = "fd5d:6::2".parse().unwrap();
    let bridged: Ipv6Addr = "fd5d:7::2".parse().unwrap();
    let _v = Veth::create(
        VethEnd::in_netns(&host, &node),
        VethEnd::in_netns(&pe, &pod),
    )
    .expect("veth");
    link::add_address(&host, Some(&node), IpAddr::V6(gw), 64).expect("address");
    link::add_address(&pe, Some(&pod), IpAddr::V6(routed), 64).expect("address");
    for (i, ns) in [(&host, &node), (&pe, &pod)] {
        link::set_up(i, Some(ns)).expect("up");
    }
    let got = link::towards(IpAddr::V6(routed), Some(&node)).expect("routed pod");
    assert_eq!((got.name.as_str(), got.bridge), (host.as_str(), None));
    assert_eq!(
        link::towards(IpAddr::V6(gw), Some(&node)),
        Err(NotTowards::Local)
    );
    assert_eq!(
        link::towards(IpAddr::V4(POD), Some(&node)),
        Err(NotTowards::NoRoute)
    );
    link::add_default_route_onlink(&host, Some(&node), IpAddr::V6(routed)).expect("default");
    match link::towards("2001:db8::9".parse().unwrap(), Some(&node)) {
        Err(NotTowards::Gateway { gateway, interface }) => {
            assert_eq!((gateway, interface), (IpAddr::V6(routed), host.clone()))
        }
        other => panic!("{other:?}"),
    }

    // A second pod behind a bridge, its address in the bridge's subnet.
    let _w = Veth::create(
        VethEnd::in_netns(&host2, &node),
        VethEnd::in_netns(&pe2, &pod),
    )
    .expect("veth");
    link::add_bridge(&br, Some(&node)).expect("bridge");
    link::add_address(
        &br,
        Some(&node),
        IpAddr::V6("fd5d:7::1".parse().unwrap()),
        64,
    )
    .expect("bridge address");
    link::set_master(&host2, &br, Some(&node)).expect("port");
    link::add_address(&pe2, Some(&pod), IpAddr::V6(bridged), 64).expect("address");
    for (i, ns) in [(&br, &node), (&host2, &node), (&pe2, &pod)] {
        link::set_up(i, Some(ns)).expect("up");
    }
    // Until the node talks to it, nothing says which port it is behind.
    assert_eq!(
        link::towards(IpAddr::V6(bridged), Some(&node)),
        Err(NotTowards::NoNeighbour { bridge: br.clone() })
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let got = loop {
        node.run_in(|| {
            let s = UdpSocket::bind("[::]:0").expect("socket");
            let _ = s.send_to(b"hello", SocketAddr::from((bridged, 9)));
        })
        .expect("enter the node netns");
        std::thread::sleep(Duration::from_millis(200));
        match link::towards(IpAddr::V6(bridged), Some(&node)) {
            Ok(t) => break t,
            Err(e) => assert!(std::time::Instant::now() < deadline, "{e}"),
        }
    };
    assert_eq!(
        (got.name.as_str(), got.bridge.as_deref()),
        (host2.as_str(), Some(br.as_str()))
    );
}

/// An agent started before its pod (a node rebooting: the DaemonSet's pod and the primary
/// start together) waits for it: the address is listed as missing, with the route lookup's
/// reason (here a gateway route, as a node has for an address none of its pods holds yet),
/// and when the pod's veth appears the mirror is attached to it (`found`) and clones flow.
#[test]
fn an_agent_started_before_its_pod_waits_for_it() {
    let tag = format!("{:x}", (std::process::id() & 0xfffff) ^ 6);
    let mut t = PodNode::new(&tag, 'w', false);
    t.pod_link = None;
    let nc = format!("{}c", t.prefix);
    link::add_default_route_onlink(&nc, Some(&t.node), IpAddr::V4(CLIENT)).expect("default");
    let shadow = ShadowSocket::start_on(&t.shadow, POD, PORT);
    let config = t.config();
    let mut agent = common::ScratchAgent::start(&tag, "mpodw", Some(&t.node), |_| config, |_| {});
    let s = wait_missing(&agent.status, &POD.to_string());
    assert!(s["mirror"]["interface"].is_null(), "{s}");
    let host = t.make_pod();
    let primary = ShadowSocket::start_on(&t.pod, POD, PORT);
    let ev = link_event(&agent.lines, None, &["found"]);
    assert_eq!(ev["interface"], host.as_str(), "{ev}");
    assert!(ev["old_interface"].is_null(), "{ev}");
    shadow.expect_more_by(|| t.send(b"datagram", 30), 0, 30, "once the pod is there");
    assert!(primary.count() > 0, "the pod receives its traffic");
    let (st, err) = common::terminate(&mut agent.proc, Duration::from_secs(30));
    assert!(st.success(), "agent failed: {err}");
}
