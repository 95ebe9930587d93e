//! Flow distribution over the replicas of a shadow group (issue 5 item 3), with the real
//! mirror programs and real replicas: every flow's clones land on one replica, the replicas
//! share the flows, and changing the replica count moves no existing flow.
//!
//! ```text
//!  client ns ──veth── primary ns: mirror (pr ingress), replicas' host ends <prefix><tag>Nh
//!                       └─ replica ns N: a UDP server on the primary's address, logging the
//!                          source port of every datagram to <dir>/<its interface>.log
//! ```

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    path::Path,
    time::Duration,
};

use shadow_agent::{
    mirror::{Cidr, Mirror, MirrorSpec, Ports, Proto, Rule},
    run::scale_group,
    shadow::{Allowlist, CommandSpec, GroupSpec, RestartPolicy, ShadowGroup},
};
use shadow_tests::harness::{
    chain, unique_tag, wait_for, TestDir, TestNetns, TestVeth, IPV4_PREFIX,
};

const PORT: u16 = 9000;

/// The replica: a UDP server on the service address that appends each datagram's source
/// port to a log named after the replica's interface.
const SERVER: &str = r#"
import os, socket, sys
ifname = [n for _, n in socket.if_nameindex() if n != "lo"][0]
log = open(os.path.join(sys.argv[3], ifname + ".log"), "a", buffering=1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
while True:
    _, (_, port) = s.recvfrom(2048)
    log.write("%d\n" % port)
"#;

/// Source ports logged by each replica, by replica index (one entry per datagram).
fn received(dir: &Path, group: &ShadowGroup, n: usize) -> Vec<Vec<u16>> {
    (0..n as u32)
        .map(|i| {
            let name = &group.replica(i).expect("replica").names().replica_if;
            std::fs::read_to_string(dir.join(format!("{name}.log")))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.parse().ok())
                .collect()
        })
        .collect()
}

/// Replica index of each source port; panics if a port reached more than one replica.
fn assignment(got: &[Vec<u16>]) -> BTreeMap<u16, usize> {
    let mut by_port = BTreeMap::new();
    for (r, ports) in got.iter().enumerate() {
        for &p in ports {
            if let Some(prev) = by_port.insert(p, r) {
                assert_eq!(
                    prev, r,
                    "flow from port {p} reached replicas {prev} and {r}"
                );
            }
        }
    }
    by_port
}

fn send(socks: &[UdpSocket], to: SocketAddr, times: usize) {
    for _ in 0..times {
        for s in socks {
            s.send_to(b"flow", to).expect("send");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_listening(group: &ShadowGroup, index: u32, service: Ipv4Addr) {
    let r = group.replica(index).expect("replica");
    wait_for(
        &format!("replica {index} listening"),
        Duration::from_secs(15),
        || {
            r.netns()
                .run_in(move || UdpSocket::bind((service, PORT)).is_err())
                .ok()
                .filter(|busy| *busy)
        },
    );
}

fn wait_total(dir: &Path, group: &ShadowGroup, n: usize, total: usize) -> Vec<Vec<u16>> {
    wait_for(
        &format!("{total} datagrams in the replicas"),
        Duration::from_secs(15),
        || {
            let got = received(dir, group, n);
            (got.iter().map(Vec::len).sum::<usize>() >= total).then_some(got)
        },
    )
}

#[test]
fn flows_are_spread_by_hash_and_never_move_when_the_group_scales() {
    let client = TestNetns::new("c");
    let primary = TestNetns::new("p");
    let front = TestVeth::builder()
        .a_netns(&client)
        .b_netns(&primary)
        .roles("cl", "pr")
        .create();
    let service = front.b().ipv4.expect("ipv4");
    let dir = TestDir::new("flowdist");
    std::fs::write(dir.path().join("server.py"), SERVER).expect("server");
    let spec = GroupSpec {
        name: unique_tag(),
        prefix: "shdt".into(),
        command: CommandSpec {
            argv: vec![
                "python3".into(),
                "-u".into(),
                dir.path().join("server.py").display().to_string(),
                service.to_string(),
                PORT.to_string(),
                dir.path().display().to_string(),
            ],
            ..CommandSpec::default()
        },
        replicas_min: 2,
        replicas_max: 3,
        cpu_cores: Some(1.0),
        memory_bytes: Some(512 << 20),
        writable_paths: Vec::new(),
        addresses: vec![(IpAddr::V4(service), IPV4_PREFIX)],
        allow: Allowlist {
            rules: Vec::new(),
            loopback: true,
        },
        restart: RestartPolicy::default(),
        replica_mac: None,
    };
    let mut group = ShadowGroup::start(spec, Some(primary.netns().try_clone().expect("ns")))
        .unwrap_or_else(|e| panic!("starting the shadow group: {}", chain(&e)));
    wait_listening(&group, 0, service);
    wait_listening(&group, 1, service);

    let r0 = group.replica(0).expect("r0");
    let mspec = MirrorSpec {
        interface: front.b().name.clone(),
        address: None,
        direction: Default::default(),
        shadow_interface: r0.names().host_if.clone(),
        shadow_mac: r0.replica_mac().octets(),
        rules: vec![Rule {
            dst: Cidr {
                addr: IpAddr::V4(service),
                prefix_len: 32,
            },
            ports: Ports { lo: PORT, hi: PORT },
            proto: Some(Proto::Udp),
        }],
        xdp: false,
        options: Default::default(),
    };
    let mut mirror = primary
        .run(move || Mirror::attach(mspec))
        .unwrap_or_else(|e| panic!("mirror: {}", chain(&e)));
    mirror
        .set_targets(&group.mirror_targets())
        .unwrap_or_else(|e| panic!("mirror targets: {}", chain(&e)));
    assert_eq!(mirror.targets(), group.mirror_targets());

    let to = SocketAddr::new(IpAddr::V4(service), PORT);
    let open = |n: usize| -> Vec<UdpSocket> {
        client.run(move || {
            (0..n)
                .map(|_| UdpSocket::bind("0.0.0.0:0").expect("bind"))
                .collect()
        })
    };
    let port_of = |s: &UdpSocket| s.local_addr().expect("addr").port();

    // Two replicas, 40 flows of 5 datagrams.
    let old = open(40);
    send(&old, to, 5);
    let got = wait_total(dir.path(), &group, 2, 200);
    let before = assignment(&got);
    for s in &old {
        assert!(
            before.contains_key(&port_of(s)),
            "flow {} reached no replica",
            port_of(s)
        );
    }
    let per: Vec<usize> = (0..2)
        .map(|r| before.values().filter(|v| **v == r).count())
        .collect();
    for (r, n) in per.iter().enumerate() {
        assert!(*n >= 8, "replica {r} got {n} of 40 flows: {per:?}");
        assert_eq!(
            got[r].len(),
            n * 5,
            "replica {r}: every datagram of its flows"
        );
    }
    eprintln!("40 flows over 2 replicas: {per:?}");
    let flows = mirror.flows_per_target().expect("flows per target");
    assert_eq!(flows, vec![per[0] as u64, per[1] as u64]);

    // 2 → 3: the old flows stay where they are, only new flows reach the third replica.
    let reached = scale_group(&mut group, Some(&mut mirror), 3)
        .unwrap_or_else(|e| panic!("scaling: {}", chain(&e)));
    assert_eq!(reached, 3);
    assert_eq!(mirror.targets(), group.mirror_targets());
    wait_listening(&group, 2, service);
    let new = open(40);
    send(&old, to, 5);
    send(&new, to, 5);
    let got = wait_total(dir.path(), &group, 3, 600);
    let after = assignment(&got);
    for s in &old {
        let p = port_of(s);
        assert_eq!(after[&p], before[&p], "old flow {p} moved");
        let n = got[after[&p]].iter().filter(|q| **q == p).count();
        assert_eq!(n, 10, "old flow {p}: {n} of its 10 datagrams");
    }
    let new_ports: BTreeSet<u16> = new.iter().map(port_of).collect();
    let third: BTreeSet<u16> = got[2].iter().copied().collect();
    assert!(
        third.is_subset(&new_ports),
        "only new flows reach the new replica"
    );
    assert!(
        third.len() >= 4,
        "the new replica got {} of 40 new flows",
        third.len()
    );
    for p in &new_ports {
        assert!(after.contains_key(p), "new flow {p} reached no replica");
    }
    eprintln!(
        "after 2 -> 3: new flows on the third replica: {} of 40; per target: {:?}",
        third.len(),
        mirror.flows_per_target().expect("flows per target")
    );
    let c = mirror.counters().expect("counters");
    assert_eq!(c.flows_assigned, 80, "{c:?}");
    assert_eq!(c.target_gone, 0, "{c:?}");

    // 3 → 2: the third replica's flows get no more clones (counted), none moves.
    let reached = scale_group(&mut group, Some(&mut mirror), 2)
        .unwrap_or_else(|e| panic!("scaling down: {}", chain(&e)));
    assert_eq!(reached, 2);
    assert_eq!(mirror.targets(), group.mirror_targets());
    send(&old, to, 1);
    send(&new, to, 1);
    let expect = 600 - got[2].len() + (80 - third.len());
    wait_total(dir.path(), &group, 2, expect);
    std::thread::sleep(Duration::from_millis(300));
    let got2 = received(dir.path(), &group, 2);
    assert_eq!(
        got2.iter().map(Vec::len).sum::<usize>(),
        expect,
        "datagrams of the removed replica's flows went elsewhere"
    );
    let final_ = assignment(&got2);
    for (p, r) in &final_ {
        assert_eq!(after[p], *r, "flow {p} moved");
    }
    let c = wait_for(
        "the removed replica's flows counted",
        Duration::from_secs(5),
        || {
            let c = mirror.counters().expect("counters");
            (c.target_gone >= third.len() as u64).then_some(c)
        },
    );
    assert_eq!(c.target_gone, third.len() as u64, "{c:?}");
    assert_eq!(c.flows_assigned, 80, "{c:?}");
}
