//! The mirror end to end: real programs attached to a veth in a namespace, real sockets,
//! curl against a real HTTP server.
//!
//! ```text
//! client ns  ──veth──  primary ns (mirror on the primary end)  ──veth──  shadow ns
//!   a                    b        pm                                       sh (= b's addresses)
//! ```

use std::{
    io::ErrorKind,
    net::{IpAddr, SocketAddr, UdpSocket},
    process::{Command, Stdio},
    time::Duration,
};

use shadow_agent::{
    mirror::{Cidr, Counters, Mirror, MirrorError, MirrorSpec, Ports, Proto, Rule},
    sys::link,
};
use shadow_tests::harness::{
    chain, spawn_in, wait_for, TestDir, TestNetns, TestVeth, IPV4_PREFIX, IPV6_PREFIX,
};

struct World {
    client: TestNetns,
    primary: TestNetns,
    shadow: TestNetns,
    /// a: client end, b: primary's interface.
    front: TestVeth,
    /// a: primary's shadow interface, b: the shadow's end (holds the primary's addresses).
    back: TestVeth,
}

impl World {
    fn new() -> World {
        let client = TestNetns::new("c");
        let primary = TestNetns::new("p");
        let shadow = TestNetns::new("s");
        let front = TestVeth::builder()
            .a_netns(&client)
            .b_netns(&primary)
            .roles("cl", "pr")
            .create();
        let back = TestVeth::builder()
            .a_netns(&primary)
            .b_netns(&shadow)
            .roles("pm", "sh")
            .without_addresses()
            .create();
        let sh = back.b().name.clone();
        for (addr, len) in [
            (IpAddr::V4(front.b().ipv4.expect("ipv4")), IPV4_PREFIX),
            (IpAddr::V6(front.b().ipv6.expect("ipv6")), IPV6_PREFIX),
        ] {
            link::add_address(&sh, Some(shadow.netns()), addr, len)
                .unwrap_or_else(|e| panic!("shadow address {addr}: {}", chain(&e)));
        }
        World {
            client,
            primary,
            shadow,
            front,
            back,
        }
    }

    fn primary_addr(&self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.front.b().ipv6.expect("ipv6"))
        } else {
            IpAddr::V4(self.front.b().ipv4.expect("ipv4"))
        }
    }

    fn attach(&self, rules: Vec<Rule>) -> Mirror {
        let spec = MirrorSpec {
            interface: self.front.b().name.clone(),
            shadow_interface: self.back.a().name.clone(),
            shadow_mac: self.back.b().mac.octets(),
            rules,
            xdp: true,
        };
        self.primary
            .run(move || Mirror::attach(spec))
            .unwrap_or_else(|e| panic!("attaching the mirror: {}", chain(&e)))
    }

    /// Packets received by the shadow's end.
    fn shadow_rx(&self) -> u64 {
        let dev = self.back.b().name.clone();
        self.shadow.run(move || {
            let text = std::fs::read_to_string("/proc/thread-self/net/dev").expect("net/dev");
            text.lines()
                .find_map(|l| {
                    let (name, rest) = l.split_once(':')?;
                    (name.trim() == dev).then(|| rest.split_whitespace().nth(1)?.parse().ok())?
                })
                .expect("shadow device in /proc/net/dev")
        })
    }
}

fn rule(addr: IpAddr, proto: Proto, ports: Ports) -> Rule {
    Rule {
        dst: Cidr {
            addr,
            prefix_len: if addr.is_ipv4() { 32 } else { 128 },
        },
        ports,
        proto: Some(proto),
    }
}

fn bind(ns: &TestNetns, addr: SocketAddr) -> UdpSocket {
    let s = ns
        .run(move || UdpSocket::bind(addr))
        .unwrap_or_else(|e| panic!("binding {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    s
}

/// Everything waiting on `s`, until it stays quiet for the read timeout.
fn drain(s: &UdpSocket) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        match s.recv(&mut buf) {
            Ok(n) => out.push(buf[..n].to_vec()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return out
            }
            Err(e) => panic!("recv: {e}"),
        }
    }
}

/// Distinct payloads of many sizes, each starting with its index.
fn payloads(n: usize, tag: u8) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let len = 1 + (i * 97) % 1400;
            let mut p: Vec<u8> = (0..len).map(|j| (j as u8).wrapping_mul(31) ^ tag).collect();
            p[0] = i as u8;
            p
        })
        .collect()
}

fn send_all(world: &World, dst: SocketAddr, msgs: &[Vec<u8>]) {
    let msgs = msgs.to_vec();
    let v6 = dst.is_ipv6();
    world.client.run(move || {
        let any: SocketAddr = if v6 {
            "[::]:0".parse().expect("addr")
        } else {
            "0.0.0.0:0".parse().expect("addr")
        };
        let s = UdpSocket::bind(any).expect("client socket");
        for m in &msgs {
            s.send_to(m, dst).expect("send");
            // Paced so no socket buffer on the way can overflow.
            std::thread::sleep(Duration::from_millis(2));
        }
    });
}

fn udp_mirror(v6: bool) {
    let world = World::new();
    let addr = world.primary_addr(v6);
    let (mirrored, other) = (SocketAddr::new(addr, 7001), SocketAddr::new(addr, 7100));
    let primary_in = bind(&world.primary, mirrored);
    let primary_other = bind(&world.primary, other);
    let shadow_in = bind(&world.shadow, mirrored);
    let shadow_other = bind(&world.shadow, other);

    let mirror = world.attach(vec![rule(addr, Proto::Udp, Ports { lo: 7000, hi: 7010 })]);
    let before = mirror.counters().expect("counters");
    let rx_before = world.shadow_rx();

    let sel = payloads(60, 0xa5);
    let unsel = payloads(25, 0x3c);
    send_all(&world, mirrored, &sel);
    send_all(&world, other, &unsel);

    // The primary receives exactly what was sent, mirrored or not.
    assert_eq!(drain(&primary_in), sel, "primary, mirrored port");
    assert_eq!(drain(&primary_other), unsel, "primary, other port");
    // The shadow receives the selected datagrams byte for byte, and nothing else.
    assert_eq!(drain(&shadow_in), sel, "shadow, mirrored port");
    assert!(
        drain(&shadow_other).is_empty(),
        "unselected traffic reached the shadow"
    );

    let after = mirror.counters().expect("counters");
    let d = |f: fn(&Counters) -> u64| f(&after) - f(&before);
    assert_eq!(d(|c| c.matched), sel.len() as u64, "{after:?}");
    assert_eq!(d(|c| c.cloned), sel.len() as u64, "{after:?}");
    assert_eq!(
        d(|c| c.clone_failed) + d(|c| c.restore_failed) + d(|c| c.rewrite_failed),
        0
    );
    assert!(d(|c| c.no_match) >= unsel.len() as u64, "{after:?}");
    assert_eq!(
        d(|c| c.seen),
        d(|c| c.not_ip) + d(|c| c.no_match) + d(|c| c.disabled) + d(|c| c.matched),
        "every packet is accounted exactly once: {after:?}"
    );
    assert!(world.shadow_rx() - rx_before >= sel.len() as u64);
    let load = mirror.rule_load().expect("rule load");
    assert_eq!(load[0].packets, sel.len() as u64, "XDP per-rule packets");
    let wire: u64 = sel
        .iter()
        .map(|p| p.len() as u64 + if v6 { 14 + 40 + 8 } else { 14 + 20 + 8 })
        .sum();
    assert_eq!(load[0].bytes, wire, "XDP per-rule bytes");

    // Detached on drop: the shadow gets nothing more, the primary everything.
    drop(mirror);
    send_all(&world, mirrored, &sel[..10]);
    assert_eq!(drain(&primary_in), sel[..10].to_vec());
    assert!(
        drain(&shadow_in).is_empty(),
        "mirror still active after drop"
    );
}

#[test]
fn udp_ipv4_is_cloned_byte_for_byte_and_only_when_selected() {
    udp_mirror(false);
}

#[test]
fn udp_ipv6_is_cloned_byte_for_byte_and_only_when_selected() {
    udp_mirror(true);
}

#[test]
fn fails_open_when_the_shadow_side_is_down() {
    let world = World::new();
    let addr = world.primary_addr(false);
    let dst = SocketAddr::new(addr, 7001);
    let primary_in = bind(&world.primary, dst);
    let mirror = world.attach(vec![rule(addr, Proto::Udp, Ports::ANY)]);
    link::set_down(&world.back.a().name, Some(world.primary.netns())).expect("link down");
    let msgs = payloads(40, 0x11);
    send_all(&world, dst, &msgs);
    assert_eq!(drain(&primary_in), msgs, "the primary lost traffic");
    let c = mirror.counters().expect("counters");
    assert_eq!(c.matched, msgs.len() as u64, "{c:?}");
    assert_eq!(c.cloned + c.clone_failed, c.matched, "{c:?}");
    assert_eq!(c.restore_failed, 0);
}

#[test]
fn missing_interface_is_a_clear_error() {
    let world = World::new();
    let spec = MirrorSpec {
        interface: "shdt-nosuch0".into(),
        shadow_interface: world.back.a().name.clone(),
        shadow_mac: [2, 0, 0, 0, 0, 1],
        rules: vec![],
        xdp: true,
    };
    let err = world
        .primary
        .run(move || Mirror::attach(spec))
        .err()
        .expect("error");
    assert!(matches!(err, MirrorError::NoInterface { .. }));
    assert!(
        err.to_string()
            .contains("\"shdt-nosuch0\" (mirror.interface) not found"),
        "{err}"
    );
}

#[test]
fn http_through_the_mirror_is_untouched_for_the_primary() {
    let world = World::new();
    let addr = world.primary_addr(false);
    let root = TestDir::new("www");
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(root.path().join("blob.bin"), &body).expect("write blob");
    let mut server = Command::new("python3");
    server
        .args([
            "-m",
            "http.server",
            "--bind",
            &addr.to_string(),
            "8080",
            "--directory",
        ])
        .arg(root.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _server = spawn_in(Some(&world.primary), None, server);
    let mirror = world.attach(vec![rule(addr, Proto::Tcp, Ports { lo: 8080, hi: 8080 })]);
    let url = format!("http://{addr}:8080/blob.bin");
    let client = &world.client;
    wait_for("the HTTP server", Duration::from_secs(10), || {
        let mut c = Command::new("curl");
        c.args(["-sf", "-o", "/dev/null", &url]);
        let mut g = spawn_in(Some(client), None, c);
        g.wait_timeout(Duration::from_secs(5))
            .ok()
            .flatten()
            .filter(|s| s.success())
    });
    let before = mirror.counters().expect("counters");
    let rx_before = world.shadow_rx();
    for i in 0..10 {
        let out = root.path().join(format!("got{i}"));
        let mut c = Command::new("curl");
        c.args(["-sf", "--max-time", "10", "-o"])
            .arg(&out)
            .arg(&url);
        let mut g = spawn_in(Some(client), None, c);
        let status = g
            .wait_timeout(Duration::from_secs(15))
            .expect("wait")
            .expect("curl finished");
        assert!(status.success(), "curl #{i} failed: {status}");
        assert_eq!(
            std::fs::read(&out).expect("read"),
            body,
            "body #{i} differs"
        );
    }
    let after = mirror.counters().expect("counters");
    let cloned = after.cloned - before.cloned;
    assert!(cloned >= 10 * 3, "only {cloned} packets cloned: {after:?}");
    assert_eq!(after.matched - before.matched, cloned, "{after:?}");
    assert!(world.shadow_rx() - rx_before >= cloned);
    let load = mirror.rule_load().expect("rule load");
    assert!(
        load[0].syns >= 10,
        "XDP saw {} new connections",
        load[0].syns
    );
}
