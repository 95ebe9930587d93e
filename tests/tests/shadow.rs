//! Shadow Group Manager and Output Discard, end to end with real namespaces, cgroups,
//! programs and processes.
//!
//! ```text
//!  client ns ──veth── primary ns (host ns of the replicas) ──veth── replica ns (shdt-<tag>-0)
//!                       pr: primary's interface                        holds the primary's addresses
//!                       <prefix><tag>0h: host end, TC discard          in the replica's cgroup
//! ```

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use shadow_agent::{
    mirror::{Cidr, Mirror, MirrorSpec, Ports, Proto, Rule},
    shadow::{
        group::{validate, Event},
        Allowlist, CommandSpec, GroupError, GroupSpec, RestartPolicy, ShadowGroup,
    },
    sys::{link, netns},
};
use shadow_tests::harness::{
    chain, spawn_in, unique_tag, wait_for, TestDir, TestNetns, TestVeth, IPV4_PREFIX,
};

struct World {
    _client: TestNetns,
    primary: TestNetns,
    front: TestVeth,
}

impl World {
    fn new() -> World {
        let client = TestNetns::new("c");
        let primary = TestNetns::new("p");
        let front = TestVeth::builder()
            .a_netns(&client)
            .b_netns(&primary)
            .roles("cl", "pr")
            .create();
        World {
            _client: client,
            primary,
            front,
        }
    }

    fn service_addr(&self) -> Ipv4Addr {
        self.front.b().ipv4.expect("ipv4")
    }

    /// The replicas' host ends go into the primary's namespace.
    fn host_ns(&self) -> netns::NetNs {
        self.primary.netns().try_clone().expect("netns handle")
    }
}

fn spec(world: &World, argv: &[&str]) -> GroupSpec {
    GroupSpec {
        addresses: vec![(IpAddr::V4(world.service_addr()), IPV4_PREFIX)],
        ..base_spec(argv)
    }
}

fn base_spec(argv: &[&str]) -> GroupSpec {
    GroupSpec {
        name: unique_tag(),
        prefix: "shdt".into(),
        command: CommandSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..CommandSpec::default()
        },
        replicas_min: 1,
        replicas_max: 2,
        cpu_cores: Some(0.5),
        memory_bytes: Some(256 << 20),
        writable_paths: Vec::new(),
        addresses: Vec::new(),
        allow: Allowlist {
            rules: Vec::new(),
            loopback: true,
        },
        restart: RestartPolicy::default(),
        replica_mac: None,
    }
}

fn start(spec: GroupSpec, world: &World) -> ShadowGroup {
    ShadowGroup::start(spec, Some(world.host_ns()))
        .unwrap_or_else(|e| panic!("starting the shadow group: {}", chain(&e)))
}

fn netns_exists(name: &str) -> bool {
    netns::list().expect("list netns").iter().any(|n| n == name)
}

#[test]
fn replica_is_isolated_capped_and_removed() {
    let world = World::new();
    let mut group = start(spec(&world, &["sleep", "60"]), &world);
    let (netns_name, host_if, cg_dirs, pid) = {
        let r = group.replica(0).expect("replica 0");
        (
            r.names().netns.clone(),
            r.names().host_if.clone(),
            r.cgroup().dirs().to_vec(),
            r.pid().expect("pid"),
        )
    };
    assert!(netns_exists(&netns_name));
    // The process runs in the replica's network namespace and in its cgroups.
    let own = std::fs::read_link("/proc/self/ns/net").expect("own netns");
    let its = std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("replica netns");
    assert_ne!(own, its);
    let procs = group
        .replica(0)
        .expect("r0")
        .cgroup()
        .procs()
        .expect("procs");
    assert!(procs.contains(&pid), "{pid} not in {procs:?}");
    // The replica holds the primary's service address.
    let r0 = group.replica(0).expect("r0");
    let addr = SocketAddr::new(IpAddr::V4(world.service_addr()), 0);
    r0.netns()
        .run_in(move || UdpSocket::bind(addr))
        .expect("enter replica netns")
        .expect("the service address is local in the replica");
    // The group's caps are in its cgroup.
    let cg = group.cgroup();
    match cg.root().layout() {
        shadow_agent::sys::cgroup::CgroupLayout::Unified => {
            let max = cg
                .read(shadow_agent::sys::cgroup::Controller::Unified, "cpu.max")
                .expect("cpu.max");
            assert_eq!(max.trim(), "50000 100000");
        }
        _ => {
            let q = cg
                .read(
                    shadow_agent::sys::cgroup::Controller::Cpu,
                    "cpu.cfs_quota_us",
                )
                .expect("quota");
            assert_eq!(q.trim(), "50000");
            let m = cg
                .read(
                    shadow_agent::sys::cgroup::Controller::Memory,
                    "memory.limit_in_bytes",
                )
                .expect("limit");
            assert_eq!(m.trim(), (256u64 << 20).to_string());
        }
    }
    let status = group.status();
    assert_eq!(status.len(), 1);
    assert!(status[0].running);
    // Scaling within [min, max].
    assert_eq!(group.scale_to(5).expect("scale"), 2);
    assert_eq!(group.replicas().count(), 2);
    assert_eq!(group.scale_to(0).expect("scale"), 1);
    drop(group);
    assert!(!netns_exists(&netns_name), "replica netns left behind");
    assert!(
        !link::exists(&host_if, Some(world.primary.netns())).expect("link lookup"),
        "host veth end left behind"
    );
    for d in cg_dirs {
        assert!(!d.exists(), "{} left behind", d.display());
    }
    assert!(
        !PathBuf::from(format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map_or(true, |s| s.contains(") Z")),
        "replica process {pid} still running"
    );
}

#[test]
fn writes_under_writable_paths_never_reach_the_host() {
    let world = World::new();
    let dir = TestDir::new("wr");
    std::fs::write(dir.path().join("existing.txt"), b"from the host").expect("seed");
    let script = format!(
        "cat {d}/existing.txt > {d}/copy.txt && echo secret > {d}/out.txt && sleep 60",
        d = dir.path().display()
    );
    let mut s = spec(&world, &["sh", "-c", &script]);
    s.writable_paths = vec![dir.path().to_path_buf()];
    let group = start(s, &world);
    let pid = group.replica(0).expect("r0").pid().expect("pid");
    // Inside the replica's mount namespace the files exist (seen through /proc/PID/root).
    let inside =
        PathBuf::from(format!("/proc/{pid}/root")).join(dir.path().strip_prefix("/").expect("abs"));
    wait_for("the replica's write", Duration::from_secs(10), || {
        std::fs::read_to_string(inside.join("out.txt")).ok()
    });
    assert_eq!(
        std::fs::read_to_string(inside.join("copy.txt")).expect("copy"),
        "from the host",
        "the replica sees the host's files under the overlay"
    );
    assert!(
        !dir.path().join("out.txt").exists(),
        "the write reached the host"
    );
    assert!(
        !dir.path().join("copy.txt").exists(),
        "the write reached the host"
    );
    drop(group);
    assert!(!dir.path().join("out.txt").exists());
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1);
}

/// Run a python snippet in the replica (its netns, cgroup) and return its stdout.
fn python_in_replica(group: &ShadowGroup, code: &str) -> String {
    let r = group.replica(0).expect("r0");
    let mut cmd = Command::new("python3");
    cmd.args(["-c", code])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = shadow_agent::sys::process::spawn(cmd, Some(r.netns()), Some(r.cgroup()))
        .unwrap_or_else(|e| panic!("spawn in replica: {}", chain(&e)));
    child
        .wait_timeout(Duration::from_secs(20))
        .expect("wait")
        .expect("python finished");
    let mut out = String::new();
    use std::io::Read as _;
    child
        .child_mut()
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read");
    out
}

#[test]
fn connects_and_sends_outside_the_allowlist_are_refused_and_counted() {
    let world = World::new();
    // A second subnet between the primary namespace (host end) and the replica, with
    // listeners in the primary namespace: destinations "outside" the replica.
    let outside = Ipv4Addr::new(198, 19, 255, 1);
    let inside = Ipv4Addr::new(198, 19, 255, 2);
    let mut s = spec(&world, &["sleep", "60"]);
    s.addresses.push((IpAddr::V4(inside), 30));
    s.allow.rules.push(Rule {
        dst: Cidr {
            addr: IpAddr::V4(outside),
            prefix_len: 32,
        },
        ports: Ports { lo: 7443, hi: 7443 },
        proto: Some(Proto::Tcp),
    });
    let group = start(s, &world);
    let r0 = group.replica(0).expect("r0");
    link::add_address(
        &r0.names().host_if,
        Some(world.primary.netns()),
        IpAddr::V4(outside),
        30,
    )
    .expect("host end address");
    let tcp = world
        .primary
        .run(move || std::net::TcpListener::bind((outside, 7000)))
        .expect("tcp listener");
    tcp.set_nonblocking(true).expect("nonblocking");
    let udp = world
        .primary
        .run(move || UdpSocket::bind((outside, 5353)))
        .expect("udp listener");
    udp.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");

    let code = format!(
        r#"
import socket, errno
def attempt(f):
    try:
        f(); return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
def tcp():
    s = socket.socket(); s.settimeout(2); s.connect(("{o}", 7000))
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x04test\x00\x00\x01\x00\x01", ("{o}", 5353))
def udp_connected():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(("{o}", 5353)); s.send(b"x")
def allowed():
    s = socket.socket(); s.settimeout(1); s.connect(("{o}", 7443))
print(attempt(tcp), attempt(udp), attempt(udp_connected), attempt(allowed))
"#,
        o = outside
    );
    let out = python_in_replica(&group, &code);
    let verdicts: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(verdicts.len(), 4, "{out}");
    assert_eq!(
        verdicts[0], "EPERM",
        "TCP connect outside the allowlist: {out}"
    );
    assert_eq!(
        verdicts[1], "EPERM",
        "UDP send (a DNS query) outside the allowlist: {out}"
    );
    assert_eq!(
        verdicts[2], "EPERM",
        "connected UDP outside the allowlist: {out}"
    );
    // The allowlisted connect passes the cgroup hook; its SYN then dies at the veth.
    assert_ne!(
        verdicts[3], "EPERM",
        "allowlisted destination refused: {out}"
    );

    let mut buf = [0u8; 512];
    assert!(
        tcp.accept().is_err(),
        "the TCP listener outside was reached"
    );
    assert!(
        udp.recv(&mut buf).is_err(),
        "the UDP listener outside was reached"
    );

    let c = r0.discard().counters().expect("counters");
    assert!(c.connect_refused >= 2, "{c:?}");
    assert!(c.sendmsg_refused >= 1, "{c:?}");
    assert!(c.connect_allowed >= 1, "{c:?}");
    let refused = r0.discard().refused().expect("refused");
    let find = |port: u16, proto: &str| {
        refused
            .iter()
            .find(|d| d.addr == IpAddr::V4(outside) && d.port == port && d.proto == proto)
    };
    assert!(find(7000, "tcp").is_some(), "{refused:?}");
    assert!(
        find(5353, "udp").is_some_and(|d| d.attempts >= 2),
        "{refused:?}"
    );
}

#[test]
fn everything_a_replica_transmits_is_dropped_at_its_veth() {
    let world = World::new();
    let outside = Ipv4Addr::new(198, 19, 254, 1);
    let inside = Ipv4Addr::new(198, 19, 254, 2);
    let mut s = spec(&world, &["sleep", "60"]);
    s.addresses.push((IpAddr::V4(inside), 30));
    let group = start(s, &world);
    let r0 = group.replica(0).expect("r0");
    link::add_address(
        &r0.names().host_if,
        Some(world.primary.netns()),
        IpAddr::V4(outside),
        30,
    )
    .expect("host end address");
    // A static neighbour so the replica's datagrams themselves go out (not only ARP).
    link::set_neighbor(
        &r0.names().replica_if,
        Some(r0.netns()),
        IpAddr::V4(outside),
        r0.host_mac(),
    )
    .expect("neighbour");
    let udp = world
        .primary
        .run(move || UdpSocket::bind((outside, 9999)))
        .expect("listener");
    udp.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let before = r0.discard().counters().expect("counters");
    // Sent from the replica's network namespace by a process outside its cgroup, so only
    // the veth drop stands between it and the listener.
    let sent = r0
        .netns()
        .run_in(move || {
            let s = UdpSocket::bind((inside, 0)).expect("bind");
            for i in 0..50u8 {
                s.send_to(&[i; 100], (outside, 9999)).expect("send");
            }
            50u64
        })
        .expect("enter replica netns");
    let mut buf = [0u8; 256];
    assert!(
        udp.recv(&mut buf).is_err(),
        "a datagram from the replica got through"
    );
    let after = r0.discard().counters().expect("counters");
    assert!(
        after.tx_dropped_packets - before.tx_dropped_packets >= sent,
        "{before:?} -> {after:?}"
    );
    assert!(after.tx_dropped_bytes - before.tx_dropped_bytes >= sent * (100 + 42));
}

/// The realistic leak path: a node namespace routes between the client and the primary
/// (forwarding on, as on a Kubernetes node) and holds the mirror and the replicas' host
/// ends. A replica's replies carry the primary's address, which is not local to the node,
/// so without Output Discard the node would forward them to the client.
#[test]
fn nothing_from_the_shadow_leaves_through_the_node() {
    let client = TestNetns::new("c");
    let node = TestNetns::new("n");
    let primary = TestNetns::new("p");
    let front = TestVeth::builder()
        .a_netns(&client)
        .b_netns(&node)
        .roles("cl", "nc")
        .create();
    let back = TestVeth::builder()
        .a_netns(&node)
        .b_netns(&primary)
        .roles("np", "pr")
        .create();
    let client_ip = front.a().ipv4.expect("ipv4");
    let service = back.b().ipv4.expect("ipv4");
    link::add_route_v4(
        &front.a().name,
        Some(client.netns()),
        service,
        32,
        front.b().ipv4,
    )
    .expect("client route");
    link::add_route_v4(
        &back.b().name,
        Some(primary.netns()),
        client_ip,
        32,
        back.a().ipv4,
    )
    .expect("primary route");
    node.run(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "1"))
        .expect("ip_forward");

    let root = TestDir::new("www");
    std::fs::write(root.path().join("index.html"), b"hello").expect("page");
    let argv = [
        "python3",
        "-m",
        "http.server",
        "--bind",
        &service.to_string(),
        "8080",
        "--directory",
        root.path().to_str().expect("utf-8"),
    ];
    let mut server = Command::new(argv[0]);
    server
        .args(&argv[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _primary = spawn_in(Some(&primary), None, server);

    let mut s = GroupSpec {
        addresses: vec![(IpAddr::V4(service), IPV4_PREFIX)],
        ..base_spec(&argv)
    };
    s.replicas_max = 1;
    let group = ShadowGroup::start(s, Some(node.netns().try_clone().expect("netns")))
        .unwrap_or_else(|e| panic!("starting the shadow group: {}", chain(&e)));
    let r0 = group.replica(0).expect("r0");
    // The replica knows how to answer the client: on-link route and a static neighbour.
    link::add_route_v4(
        &r0.names().replica_if,
        Some(r0.netns()),
        client_ip,
        32,
        None,
    )
    .expect("replica route");
    link::set_neighbor(
        &r0.names().replica_if,
        Some(r0.netns()),
        IpAddr::V4(client_ip),
        r0.host_mac(),
    )
    .expect("neighbour");

    let spec = MirrorSpec {
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
            ports: Ports { lo: 8080, hi: 8080 },
            proto: Some(Proto::Tcp),
        }],
        xdp: false,
        options: Default::default(),
    };
    let mirror = node
        .run(move || Mirror::attach(spec))
        .unwrap_or_else(|e| panic!("mirror: {}", chain(&e)));
    let addr = SocketAddr::new(IpAddr::V4(service), 8080);
    wait_for("the primary", Duration::from_secs(10), || {
        client.run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok())
    });
    // Capture SYN-ACKs leaving the node towards the client while the client connects.
    let nc_index = front.b().ifindex;
    let capture = {
        let ns = node.netns().try_clone().expect("netns");
        std::thread::spawn(move || {
            ns.run_in(move || synacks_out(nc_index, Duration::from_secs(4)))
                .expect("capture")
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let ports: Vec<u16> = client.run(move || {
        (0..10)
            .map(|_| {
                let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
                let port = s.local_addr().expect("local").port();
                std::thread::sleep(Duration::from_millis(100));
                drop(s);
                port
            })
            .collect()
    });
    let seen = capture.join().expect("capture thread");
    for p in &ports {
        let n = seen.iter().filter(|d| **d == *p).count();
        assert_eq!(
            n, 1,
            "connection from port {p}: {n} SYN-ACKs left the node towards the client (only the primary's may)"
        );
    }
    let c = mirror.counters().expect("mirror counters");
    assert!(c.cloned >= 10, "the shadow was not fed: {c:?}");
    let d = r0.discard().counters().expect("discard counters");
    assert!(
        d.tx_dropped_packets >= 10,
        "the shadow's replies were not dropped: {d:?}"
    );
}

/// Destination ports of TCP SYN-ACKs sent out of interface `ifindex` (IPv4) during `dur`.
fn synacks_out(ifindex: u32, dur: Duration) -> Vec<u16> {
    // SAFETY: plain socket calls on a socket this function owns.
    unsafe {
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            (libc::ETH_P_ALL as u16).to_be() as i32,
        );
        assert!(fd >= 0, "AF_PACKET socket");
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = ifindex as i32;
        let rc = libc::bind(
            fd,
            &sll as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        assert_eq!(rc, 0, "bind AF_PACKET");
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        );
        let mut out = Vec::new();
        let end = Instant::now() + dur;
        let mut buf = [0u8; 2048];
        while Instant::now() < end {
            let mut from: libc::sockaddr_ll = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            let n = libc::recvfrom(
                fd,
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                0,
                &mut from as *mut _ as *mut libc::sockaddr,
                &mut len,
            );
            if n <= 0 || from.sll_pkttype != libc::PACKET_OUTGOING {
                continue;
            }
            let p = &buf[..n as usize];
            if p.len() < 54 || p[12..14] != [0x08, 0x00] || p[23] != 6 {
                continue;
            }
            let ihl = ((p[14] & 0x0f) as usize) * 4;
            let l4 = 14 + ihl;
            if p.len() < l4 + 14 {
                continue;
            }
            if p[l4 + 13] & 0x12 == 0x12 {
                out.push(u16::from_be_bytes([p[l4 + 2], p[l4 + 3]]));
            }
        }
        libc::close(fd);
        out
    }
}

#[test]
fn crashing_replica_is_restarted_with_backoff_then_given_up() {
    let world = World::new();
    let mut s = spec(&world, &["sh", "-c", "exit 3"]);
    s.restart = RestartPolicy {
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_secs(1),
        crash_loop_limit: 4,
        window: Duration::from_secs(60),
    };
    let mut group = start(s, &world);
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !group.crash_looping(0) {
        events.extend(group.supervise());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(group.crash_looping(0), "no crash loop detected: {events:?}");
    let backoffs: Vec<Duration> = events
        .iter()
        .filter_map(|e| match e {
            Event::Restarted { after, .. } => Some(*after),
            _ => None,
        })
        .collect();
    assert_eq!(
        backoffs,
        vec![
            Duration::from_millis(50),
            Duration::from_millis(100),
            Duration::from_millis(200)
        ],
        "{events:?}"
    );
    assert!(
        matches!(
            events.last(),
            Some(Event::CrashLoop {
                index: 0,
                crashes: 4
            })
        ),
        "{events:?}"
    );
    assert_eq!(group.status()[0].restarts, 3);
}

#[test]
fn bad_specs_are_refused_before_anything_is_created() {
    let world = World::new();
    let base = spec(&world, &["sleep", "1"]);
    let check = |s: GroupSpec, want: &str| {
        let netns_name = format!("{}-{}-0", s.prefix, s.name);
        let err = match ShadowGroup::start(s, Some(world.host_ns())) {
            Ok(_) => panic!("accepted a bad spec (expected {want})"),
            Err(e) => e,
        };
        let text = chain(&err);
        assert!(text.contains(want), "{text}");
        assert!(!netns_exists(&netns_name));
        err
    };
    let mut s = base.clone();
    s.command.argv = vec!["shdt-no-such-program".into()];
    assert!(matches!(
        check(s, "shadow.command: \"shdt-no-such-program\" was not found"),
        GroupError::Command { .. }
    ));
    let mut s = base.clone();
    s.cpu_cores = Some(1000.0);
    check(s, "shadow.cpu_cores: 1000 is not within");
    let mut s = base.clone();
    s.memory_bytes = Some(u64::MAX / 2);
    check(s, "shadow.memory_mb");
    let mut s = base.clone();
    s.replicas_min = 3;
    s.replicas_max = 2;
    check(s, "shadow.replicas: min 3 and max 2");
    let mut s = base.clone();
    s.name = "Bad-Name".into();
    assert!(validate(&s).is_err());
    let mut s = base;
    s.writable_paths = vec![PathBuf::from("/nonexistent/shdt")];
    check(s, "writable path /nonexistent/shdt does not exist");
}

#[test]
fn leftovers_of_a_killed_agent_are_swept_by_name() {
    let world = World::new();
    let s = spec(&world, &["sleep", "60"]);
    let (prefix, name) = (s.prefix.clone(), s.name.clone());
    let group = ShadowGroup::start(s, None)
        .unwrap_or_else(|e| panic!("starting the shadow group: {}", chain(&e)));
    let r0 = group.replica(0).expect("r0");
    let (netns_name, host_if, dirs, pid) = (
        r0.names().netns.clone(),
        r0.names().host_if.clone(),
        group.cgroup().dirs().to_vec(),
        r0.pid().expect("pid"),
    );
    // What SIGKILL leaves: nothing of the group's own clean-up runs.
    std::mem::forget(group);
    let removed = shadow_agent::shadow::group::sweep_leftovers(&prefix, &name);
    assert!(
        removed.iter().any(|r| r == &format!("netns {netns_name}")),
        "{removed:?}"
    );
    assert!(
        removed.iter().any(|r| r == &format!("link {host_if}")),
        "{removed:?}"
    );
    assert!(!netns_exists(&netns_name));
    assert!(!link::exists(&host_if, None).expect("link lookup"));
    for d in dirs {
        assert!(!d.exists(), "{} left behind: {removed:?}", d.display());
    }
    wait_for(
        "the orphaned replica to die",
        Duration::from_secs(5),
        || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            (stat.is_empty() || stat.contains(") Z")).then_some(())
        },
    );
    // A second sweep finds nothing.
    assert!(shadow_agent::shadow::group::sweep_leftovers(&prefix, &name).is_empty());
}
