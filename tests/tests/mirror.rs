//! The mirror end to end: real programs attached to a veth in a namespace, real sockets,
//! curl against a real HTTP server.
//!
//! ```text
//! client ns  ──veth──  primary ns (mirror on the primary end)  ──veth──  shadow ns
//!   a                    b        pm                                       sh (= b's addresses)
//! ```

use std::{
    net::{SocketAddr, UdpSocket},
    process::{Command, Stdio},
    time::Duration,
};

use shadow_agent::{
    mirror::{Counters, Mirror, MirrorError, MirrorOptions, MirrorSpec, Ports, Proto},
    sys::link,
};
use shadow_tests::harness::{chain, spawn_in, wait_for, TestDir};

mod mirror_world;
use mirror_world::*;

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

/// Frames larger than a page reach the XDP program as multi-buffer frames (`xdp.frags`):
/// its per-rule bytes are the whole frames', and the clones and the primary get them whole.
#[test]
fn xdp_counts_multi_buffer_frames_whole() {
    let world = World::new();
    for (ns, end) in [
        (&world.client, world.front.a()),
        (&world.primary, world.front.b()),
        (&world.primary, world.back.a()),
        (&world.shadow, world.back.b()),
    ] {
        link::set_mtu(&end.name, Some(ns.netns()), 9000)
            .unwrap_or_else(|e| panic!("MTU of {}: {}", end.name, chain(&e)));
    }
    let addr = world.primary_addr(false);
    let dst = SocketAddr::new(addr, 7001);
    let primary_in = bind(&world.primary, dst);
    let shadow_in = bind(&world.shadow, dst);
    let mirror = world.attach(vec![rule(addr, Proto::Udp, Ports { lo: 7001, hi: 7001 })]);
    // Up to the largest datagram a 9000-byte IPv4 MTU carries unfragmented.
    let msgs: Vec<Vec<u8>> = [100usize, 3000, 4096, 5000, 8000, 8972]
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            (0..len)
                .map(|j| (j as u8).wrapping_mul(7) ^ i as u8)
                .collect()
        })
        .collect();
    send_all(&world, dst, &msgs);
    assert_eq!(drain(&primary_in), msgs, "the primary's datagrams");
    assert_eq!(drain(&shadow_in), msgs, "the shadow's datagrams");
    let load = mirror.rule_load().expect("rule load");
    assert_eq!(load[0].packets, msgs.len() as u64, "XDP per-rule packets");
    let wire: u64 = msgs.iter().map(|p| p.len() as u64 + 14 + 20 + 8).sum();
    assert_eq!(
        load[0].bytes, wire,
        "XDP per-rule bytes of multi-buffer frames"
    );
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
        address: None,
        direction: Default::default(),
        shadow_interface: world.back.a().name.clone(),
        shadow_mac: [2, 0, 0, 0, 0, 1],
        rules: vec![],
        xdp: true,
        options: MirrorOptions::default(),
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

/// Sends `per_flow` datagrams `[flow, seq, ...]` from each of `flows` client sockets (one
/// flow per source port), paced.
fn send_flows(world: &World, dst: SocketAddr, flows: u8, per_flow: u8) {
    world.client.run(move || {
        let socks: Vec<UdpSocket> = (0..flows)
            .map(|_| UdpSocket::bind("0.0.0.0:0").expect("client socket"))
            .collect();
        for seq in 0..per_flow {
            for (f, s) in socks.iter().enumerate() {
                s.send_to(&[f as u8, seq, 0xab, 0xcd], dst).expect("send");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    });
}

fn udp_world_with(options: MirrorOptions) -> (World, SocketAddr, UdpSocket, UdpSocket, Mirror) {
    let world = World::new();
    let addr = world.primary_addr(false);
    let dst = SocketAddr::new(addr, 7001);
    let primary_in = bind(&world.primary, dst);
    let shadow_in = bind(&world.shadow, dst);
    let spec = MirrorSpec {
        interface: world.front.b().name.clone(),
        address: None,
        direction: Default::default(),
        shadow_interface: world.back.a().name.clone(),
        shadow_mac: world.back.b().mac.octets(),
        rules: vec![rule(addr, Proto::Udp, Ports { lo: 7000, hi: 7010 })],
        xdp: false,
        options,
    };
    let mirror = world
        .primary
        .run(move || Mirror::attach(spec))
        .unwrap_or_else(|e| panic!("attaching the mirror: {}", chain(&e)));
    (world, dst, primary_in, shadow_in, mirror)
}

#[test]
fn sampling_keeps_whole_flows_and_changes_at_run_time() {
    let (world, dst, primary_in, shadow_in, mut mirror) = udp_world_with(MirrorOptions {
        sample_rate: 0.5,
        hash_seed: 0x5eed,
        ..MirrorOptions::default()
    });
    let (flows, per_flow) = (64u8, 5u8);
    send_flows(&world, dst, flows, per_flow);
    assert_eq!(
        drain(&primary_in).len(),
        flows as usize * per_flow as usize,
        "the primary lost traffic"
    );
    let mut per = [0u32; 256];
    for m in drain(&shadow_in) {
        per[m[0] as usize] += 1;
    }
    let kept = per.iter().filter(|&&n| n > 0).count() as u64;
    for (f, &n) in per.iter().enumerate().take(flows as usize) {
        assert!(
            n == 0 || n == per_flow as u32,
            "flow {f} mirrored partly: {n} of {per_flow}"
        );
    }
    assert!(
        (16..=48).contains(&kept),
        "{kept} of {flows} flows sampled at 0.5"
    );
    let c = mirror.counters().expect("counters");
    assert_eq!(c.cloned, kept * per_flow as u64, "{c:?}");
    assert_eq!(
        c.sampled_out,
        (flows as u64 - kept) * per_flow as u64,
        "{c:?}"
    );
    assert_eq!(c.matched, c.cloned + c.sampled_out, "{c:?}");

    // Off at run time, without reattaching: nothing reaches the shadow.
    mirror.set_sample_rate(0.0).expect("rate 0");
    send_flows(&world, dst, 16, 3);
    assert_eq!(drain(&primary_in).len(), 48);
    assert!(drain(&shadow_in).is_empty(), "rate 0 still mirrors");
    let c2 = mirror.counters().expect("counters");
    assert_eq!(c2.sampled_out - c.sampled_out, 48, "{c2:?}");
    // And back to everything.
    mirror.set_sample_rate(1.0).expect("rate 1");
    send_flows(&world, dst, 16, 3);
    assert_eq!(drain(&primary_in).len(), 48);
    assert_eq!(drain(&shadow_in).len(), 48, "rate 1 drops flows");
    assert!(matches!(
        mirror.set_sample_rate(1.5),
        Err(MirrorError::SampleRate { .. })
    ));
}

/// Sends `n` datagrams of `len` bytes back to back; returns how long it took.
fn blast(world: &World, dst: SocketAddr, n: usize, len: usize) -> Duration {
    world.client.run(move || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("client socket");
        let start = std::time::Instant::now();
        for i in 0..n {
            let mut m = vec![0x5a; len];
            m[..4].copy_from_slice(&(i as u32).to_be_bytes());
            s.send_to(&m, dst).expect("send");
        }
        start.elapsed()
    })
}

#[test]
fn packet_cap_drops_clones_never_originals() {
    let (world, dst, primary_in, shadow_in, mut mirror) = udp_world_with(MirrorOptions {
        cap_pps: 200,
        cap_burst_ms: 50,
        ..MirrorOptions::default()
    });
    let n = 500;
    let took = blast(&world, dst, n, 64);
    assert_eq!(drain(&primary_in).len(), n, "the primary lost traffic");
    let got = drain(&shadow_in).len() as u64;
    let c = mirror.counters().expect("counters");
    // Burst (50 ms at 200/s = 10, +1) plus the rate over the sending time (+1 per CPU).
    let allowed = 11 + (took.as_secs_f64() * 200.0).ceil() as u64 + 2;
    assert!(
        c.cloned <= allowed,
        "{} clones in {took:?}, cap allows {allowed}",
        c.cloned
    );
    assert!(c.cloned >= 11, "{c:?}");
    assert_eq!(got, c.cloned, "clones sent vs received by the shadow");
    assert_eq!(c.cloned + c.capped, c.matched, "{c:?}");
    assert_eq!(c.matched, n as u64);
    // Lifting the cap at run time.
    mirror.set_caps(0, 0, 100).expect("caps");
    blast(&world, dst, 100, 64);
    assert_eq!(drain(&primary_in).len(), 100);
    assert_eq!(
        drain(&shadow_in).len(),
        100,
        "uncapped mirror dropped clones"
    );
}

#[test]
fn byte_cap_limits_cloned_bytes() {
    let (world, dst, primary_in, shadow_in, mirror) = udp_world_with(MirrorOptions {
        cap_bytes_per_sec: 100_000,
        cap_burst_ms: 100,
        ..MirrorOptions::default()
    });
    let (n, len) = (300, 1000);
    let took = blast(&world, dst, n, len);
    assert_eq!(drain(&primary_in).len(), n, "the primary lost traffic");
    let got = drain(&shadow_in).len() as u64;
    let c = mirror.counters().expect("counters");
    let frame = (len + 14 + 20 + 8) as f64;
    // 10 kB burst plus 100 kB/s while sending, in frames, +1 per CPU.
    let allowed = ((10_000.0 + took.as_secs_f64() * 100_000.0) / frame).ceil() as u64 + 3;
    assert!(
        c.cloned <= allowed,
        "{} clones in {took:?}, cap allows {allowed}",
        c.cloned
    );
    assert!(c.cloned >= 9, "{c:?}");
    assert_eq!(got, c.cloned);
    assert_eq!(c.cloned + c.capped, c.matched, "{c:?}");
}
