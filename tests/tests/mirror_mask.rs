//! Masking in the clone, end to end and through `BPF_PROG_TEST_RUN`: real programs, real
//! sockets, captures on both sides.

mod mirror_world;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    process::{Command, Stdio},
    time::Duration,
};

use mirror_world::*;
use shadow_agent::mirror::{
    Fallback, Mirror, MirrorOptions, MirrorSpec, Ports, Proto, Pseudonymise, Rule, RuleMask,
};
use shadow_common::{
    maps::{PROG_MIRROR_MASK, PROG_MIRROR_TC},
    mask::{mask_http, HttpState, MaskSpec, CLONE_MARK, DEFAULT_HEADERS, ST_BROKEN},
    pseudo::{pseudonym_v4, pseudonym_v6, PrfKey},
};
use shadow_tests::harness::{chain, spawn_in, wait_for, TestDir};

// ---------------------------------------------------------------------------------------
// Packets

fn csum_add(mut s: u64, data: &[u8]) -> u64 {
    for (i, &b) in data.iter().enumerate() {
        s += (b as u64) << if i % 2 == 0 { 8 } else { 0 };
    }
    s
}

fn fold(mut s: u64) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The L4 checksum over the IPv4 pseudo-header and `l4` (with its checksum field as is):
/// 0 (or 0xffff) when the stored checksum is right.
fn l4_verify(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> u16 {
    let mut s = csum_add(0, &src.octets());
    s = csum_add(s, &dst.octets());
    s += proto as u64 + l4.len() as u64;
    !fold(csum_add(s, l4))
}

struct Eth {
    dst: [u8; 6],
    src: [u8; 6],
}

/// Ethernet + IPv4 + (UDP | TCP) with correct checksums.
fn frame4(eth: &Eth, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&eth.dst);
    f.extend_from_slice(&eth.src);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = !fold(csum_add(0, &ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut l4 = l4.to_vec();
    let at = if proto == 17 { 6 } else { 16 };
    l4[at..at + 2].copy_from_slice(&[0, 0]);
    let mut c = l4_verify(src, dst, proto, &l4);
    if proto == 17 && c == 0 {
        c = 0xffff;
    }
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&l4);
    f
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

fn tcp(sport: u16, dport: u16, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&1u32.to_be_bytes());
    t.push(0x50);
    t.push(flags);
    t.extend_from_slice(&65535u16.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]);
    t.extend_from_slice(payload);
    t
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Client-to-server TCP payload per source port, in sequence order, from captured IPv4
/// frames (retransmissions counted once).
fn streams(frames: &[Vec<u8>], server: Ipv4Addr, port: u16) -> Vec<(u16, Vec<u8>)> {
    let mut segs: std::collections::BTreeMap<u16, std::collections::BTreeMap<u32, Vec<u8>>> =
        Default::default();
    for f in frames {
        if f.len() < 54 || f[12..14] != [0x08, 0x00] || f[23] != 6 || f[30..34] != server.octets() {
            continue;
        }
        let ihl = (f[14] & 0x0f) as usize * 4;
        let total = u16::from_be_bytes([f[16], f[17]]) as usize;
        let l4 = 14 + ihl;
        if u16::from_be_bytes([f[l4 + 2], f[l4 + 3]]) != port {
            continue;
        }
        let sport = u16::from_be_bytes([f[l4], f[l4 + 1]]);
        let seq = u32::from_be_bytes([f[l4 + 4], f[l4 + 5], f[l4 + 6], f[l4 + 7]]);
        let doff = (f[l4 + 12] >> 4) as usize * 4;
        let end = (14 + total).min(f.len());
        if l4 + doff < end {
            segs.entry(sport)
                .or_default()
                .insert(seq, f[l4 + doff..end].to_vec());
        }
    }
    segs.into_iter()
        .map(|(p, m)| (p, m.into_values().flatten().collect()))
        .collect()
}

/// What the masking must turn a client stream into: the shared parser over the whole
/// stream at once, the "mask" fallback after a parse failure.
fn masked_reference(spec: &MaskSpec, stream: &[u8]) -> Vec<u8> {
    let mut st = HttpState::default();
    stream
        .iter()
        .map(|&b| match mask_http(&mut st, spec, b) {
            Some(r) => r,
            None if st.st == ST_BROKEN => spec.fill,
            None => b,
        })
        .collect()
}

fn attach(world: &World, rules: Vec<Rule>, options: MirrorOptions) -> Mirror {
    let spec = MirrorSpec {
        interface: world.front.b().name.clone(),
        address: None,
        direction: Default::default(),
        shadow_interface: world.back.a().name.clone(),
        shadow_mac: world.back.b().mac.octets(),
        rules,
        xdp: false,
        options,
    };
    world
        .primary
        .run(move || Mirror::attach(spec))
        .unwrap_or_else(|e| panic!("attaching the mirror: {}", chain(&e)))
}

/// The mirror with one HTTP-masking TCP rule for `server` (any port, the "mask" fallback).
fn attach_http(world: &World, server: Ipv4Addr, mask: shadow_agent::mirror::MaskOptions) -> Mirror {
    attach(
        world,
        vec![rule(IpAddr::V4(server), Proto::Tcp, Ports::ANY)],
        MirrorOptions {
            mask,
            rule_masks: vec![RuleMask {
                http: true,
                ..RuleMask::default()
            }],
            ..MirrorOptions::default()
        },
    )
}

/// [`attach_http`] with `fill` as the fill byte, the other mask options default.
fn attach_http_fill(world: &World, server: Ipv4Addr, fill: u8) -> Mirror {
    attach_http(
        world,
        server,
        shadow_agent::mirror::MaskOptions {
            fill,
            ..Default::default()
        },
    )
}

/// The Ethernet header of a frame from the client to the primary.
fn front_eth(world: &World) -> Eth {
    Eth {
        dst: world.front.b().mac.octets(),
        src: world.front.a().mac.octets(),
    }
}

fn ipv4(world: &World) -> (Ipv4Addr, Ipv4Addr) {
    (
        world.front.a().ipv4.expect("client ipv4"),
        world.front.b().ipv4.expect("primary ipv4"),
    )
}

// ---------------------------------------------------------------------------------------
// Tests

#[test]
fn udp_byte_ranges_are_masked_in_the_clone_with_valid_checksums() {
    // A range longer than the datapath's straight-line limit (64 bytes) sends the longer
    // datagrams through the chunked path; the shorter ones clip it and take the other.
    let msgs: Vec<Vec<u8>> = (0..40usize)
        .map(|i| {
            (0..(3 + i * 37 % 1200))
                .map(|j| (j * 7 + i) as u8 | 1)
                .collect()
        })
        .collect();
    udp_ranges(&[(0, 4), (9, 5), (100, 1000)], &msgs);
}

#[test]
fn short_udp_byte_ranges_take_the_straight_line_path_with_valid_checksums() {
    // Every range at most 64 bytes (the straight-line path: one load, sum and store per
    // range): odd and even offsets and lengths, one exactly 64 bytes long, and datagrams
    // that end inside, at the edge of and past each range (each overlaps the first: every
    // datagram counts as masked).
    let ranges = [(1, 3), (7, 64), (80, 1), (150, 63)];
    let lens = [
        2usize, 4, 5, 7, 8, 9, 70, 71, 72, 80, 81, 150, 151, 212, 213, 214, 600,
    ];
    let msgs: Vec<Vec<u8>> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| (0..n).map(|j| (j * 13 + i * 5) as u8 | 1).collect())
        .collect();
    udp_ranges(&ranges, &msgs);
}

/// Sends `msgs` as UDP datagrams with full software checksums through a mirror whose rule
/// masks `ranges`; the primary gets them as sent, the shadow with every range byte replaced
/// by the fill and a valid checksum, and every datagram counts as masked.
fn udp_ranges(ranges: &[(u16, u16)], msgs: &[Vec<u8>]) {
    let world = World::new();
    let (client, server) = ipv4(&world);
    let dst = SocketAddr::new(IpAddr::V4(server), 7001);
    let primary_in = bind(&world.primary, dst);
    let shadow_in = bind(&world.shadow, dst);
    let mirror = attach(
        &world,
        vec![rule(
            IpAddr::V4(server),
            Proto::Udp,
            Ports { lo: 7001, hi: 7001 },
        )],
        MirrorOptions {
            rule_masks: vec![RuleMask {
                ranges: ranges.to_vec(),
                ..RuleMask::default()
            }],
            ..MirrorOptions::default()
        },
    );
    // Frames with full software checksums injected on the client's end, so the shadow's
    // stack verifies the clone's UDP checksum (CHECKSUM_NONE all the way).
    let inject = Packet::open(&world.client, &world.front.a().name);
    let cap = Packet::open(&world.shadow, &world.back.b().name);
    let eth = front_eth(&world);
    for m in msgs {
        inject.send(&frame4(&eth, client, server, 17, &udp(40000, 7001, m)));
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(
        drain(&primary_in),
        msgs,
        "the primary must get the originals"
    );
    let masked = |i: usize| {
        ranges
            .iter()
            .any(|&(o, l)| (o as usize..o as usize + l as usize).contains(&i))
    };
    let expect: Vec<Vec<u8>> = msgs
        .iter()
        .map(|m| {
            m.iter()
                .enumerate()
                .map(|(i, &b)| if masked(i) { b'*' } else { b })
                .collect()
        })
        .collect();
    let got = drain(&shadow_in);
    assert!(
        got == expect,
        "the shadow must get the masked datagrams (bad checksums are dropped): got {} of {}, \
         first differing #{:?}",
        got.len(),
        expect.len(),
        got.iter().zip(&expect).position(|(a, b)| a != b)
    );
    let mut seen = 0;
    for f in cap.frames() {
        if f.len() > 42 && f[23] == 17 && f[36..38] == 7001u16.to_be_bytes() {
            let c = l4_verify(client, server, 17, &f[34..]);
            assert!(
                c == 0 || c == 0xffff,
                "bad UDP checksum on the clone: {c:#x}"
            );
            seen += 1;
        }
    }
    assert_eq!(seen, msgs.len());
    let c = mirror.counters().expect("counters");
    assert_eq!(c.masked, msgs.len() as u64, "{c:?}");
    assert_eq!(
        c.mask_failed + c.unparseable + c.fallback_dropped,
        0,
        "{c:?}"
    );
    assert_eq!(
        mirror.masked_per_rule().expect("per rule"),
        [msgs.len() as u64]
    );
}

#[test]
fn http_canaries_never_reach_the_shadow() {
    http_canaries(None);
}

/// With `mirror.mask.replace = "token"`: the same canaries are gone, each masked value is a
/// token of its length, and a secret sent on two connections has one token.
#[test]
fn http_canaries_become_consistent_keyed_tokens() {
    http_canaries(Some(*b"shadow-token-k01"));
}

fn http_canaries(token_key: Option<[u8; 16]>) {
    let world = World::new();
    let (_, server) = ipv4(&world);
    let addr = IpAddr::V4(server);
    let root = TestDir::new("www");
    std::fs::write(root.path().join("index.html"), b"hello").expect("write");
    let log = root.path().join("server.log");
    let mut srv = Command::new("python3");
    srv.args([
        "-m",
        "http.server",
        "--bind",
        &addr.to_string(),
        "8080",
        "--directory",
    ])
    .arg(root.path())
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&log).expect("log"));
    let _server = spawn_in(Some(&world.primary), None, srv);
    let url = format!("http://{addr}:8080/");
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
    let mirror = attach(
        &world,
        vec![rule(addr, Proto::Tcp, Ports { lo: 8080, hi: 8080 })],
        MirrorOptions {
            mask: shadow_agent::mirror::MaskOptions {
                token_key,
                ..Default::default()
            },
            rule_masks: vec![RuleMask {
                http: true,
                fallback: Fallback::Mask,
                ..RuleMask::default()
            }],
            ..MirrorOptions::default()
        },
    );
    let cap_primary = Packet::open(&world.primary, &world.front.b().name);
    let cap_shadow = Packet::open(&world.shadow, &world.back.b().name);

    let canaries = [
        "CANARYauthZ81x",
        "CANARYcookie4Q",
        "CANARYpass77Ws",
        "CANARYtokenK2p",
        "CANARYapikeyR5",
        "CANARYsessN0v",
        "CANARYproxyAu9",
    ];
    let requests: Vec<Vec<String>> = vec![
        vec![
            "-H".into(),
            format!("Authorization: Bearer {}", canaries[0]),
            "-H".into(),
            format!("Cookie: a=1; sid={}", canaries[1]),
            format!("{url}index.html?x=1&password={}&y=2", canaries[2]),
        ],
        vec![
            "-H".into(),
            format!("X-Api-Key: {}", canaries[4]),
            "--data".into(),
            format!("user=bob&token={}&z=3", canaries[3]),
            url.clone(),
        ],
        vec![
            "-H".into(),
            format!("proxy-authorization: Basic {}", canaries[6]),
            format!("{url}?session={}", canaries[5]),
        ],
        // The first request's credentials again, on a connection of its own.
        vec![
            "-H".into(),
            format!("Authorization: Bearer {}", canaries[0]),
            "-H".into(),
            format!("Cookie: a=1; sid={}", canaries[1]),
            format!("{url}index.html?x=1&password={}&y=2", canaries[2]),
        ],
    ];
    for args in &requests {
        let mut c = Command::new("curl");
        c.args(["-s", "-o", "/dev/null", "--max-time", "10"])
            .args(args);
        let mut g = spawn_in(Some(client), None, c);
        let status = g
            .wait_timeout(Duration::from_secs(15))
            .expect("wait")
            .expect("curl finished");
        assert!(status.success(), "curl {args:?}: {status}");
    }
    std::thread::sleep(Duration::from_millis(200));
    let prim = cap_primary.frames();
    let shad = cap_shadow.frames();
    for c in canaries {
        assert!(
            prim.iter().any(|f| contains(f, c.as_bytes())),
            "{c} never reached the primary's interface"
        );
        assert!(
            !shad.iter().any(|f| contains(f, c.as_bytes())),
            "{c} reached the shadow"
        );
    }
    // The server saw the unmasked request.
    let served = std::fs::read_to_string(&log).expect("server log");
    assert!(served.contains(canaries[2]), "server log: {served}");

    // Everything else is byte-identical: each client stream on the shadow side is the
    // primary-side stream masked by the shared parser.
    let mut spec =
        MaskSpec::build(&DEFAULT_HEADERS, &["password", "token", "session"], b'*').expect("spec");
    if let Some(k) = token_key {
        spec = spec.with_tokens(shadow_common::pseudo::PrfKey::from_bytes(k));
    }
    let ps = streams(&prim, server, 8080);
    let ss = streams(&shad, server, 8080);
    assert_eq!(ps.len(), requests.len(), "client connections seen");
    assert_eq!(
        ps.iter().map(|s| s.0).collect::<Vec<_>>(),
        ss.iter().map(|s| s.0).collect::<Vec<_>>(),
        "the same connections on both sides"
    );
    for ((port, p), (_, s)) in ps.iter().zip(&ss) {
        assert!(!p.is_empty());
        assert_eq!(
            String::from_utf8_lossy(s),
            String::from_utf8_lossy(&masked_reference(&spec, p)),
            "connection from port {port}"
        );
    }
    // The repeated credentials look the same on the shadow side both times: the same
    // tokens (or fill), so the shadow sees one session, not two.
    let value = |stream: &[u8], name: &str| -> String {
        let text = String::from_utf8_lossy(stream).into_owned();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .map(|v| v.trim_end_matches('\r').to_owned())
            })
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    let first = &ss[0].1;
    let again = &ss[3].1;
    for name in ["Authorization: ", "Cookie: ", "GET "] {
        assert_eq!(value(first, name), value(again, name), "{name}");
    }
    let auth = value(first, "Authorization: ");
    assert_eq!(auth.len(), format!("Bearer {}", canaries[0]).len());
    if token_key.is_some() {
        assert!(
            !auth.contains('*') && auth.contains(' '),
            "a token keeps its shape: {auth}"
        );
    } else {
        assert!(auth.bytes().all(|b| b == b'*'), "{auth}");
    }
    let c = mirror.counters().expect("counters");
    assert!(c.masked >= requests.len() as u64, "{c:?}");
    assert_eq!(
        c.mask_failed + c.unparseable + c.fallback_dropped,
        0,
        "{c:?}"
    );
}

#[test]
fn test_run_original_untouched_and_clone_masked() {
    let world = World::new();
    let (client, server) = ipv4(&world);
    let mirror = attach(
        &world,
        vec![rule(IpAddr::V4(server), Proto::Tcp, Ports::ANY)],
        MirrorOptions {
            rule_masks: vec![RuleMask {
                http: true,
                ranges: vec![],
                fallback: Fallback::Drop,
            }],
            ..MirrorOptions::default()
        },
    );
    let eth = front_eth(&world);
    let req = b"GET /?token=SECRETtok HTTP/1.1\r\nHost: x\r\nCookie: SECRETcookie\r\n\r\n";
    let syn = frame4(&eth, client, server, 6, &tcp(41000, 80, 999, 0x02, &[]));
    let data = frame4(&eth, client, server, 6, &tcp(41000, 80, 1000, 0x18, req));
    world.primary.run(|| {
        // The TC ingress program: the original comes out byte for byte (and a clone goes
        // to the shadow interface).
        for f in [&syn, &data] {
            let (rc, out) = mirror.test_run(PROG_MIRROR_TC, f, 0).expect("test run");
            assert_eq!(rc, 0xffff_ffff, "TC_ACT_UNSPEC");
            assert_eq!(&out, f, "the original was modified");
        }
        // The masking program on a clone: the SYN opens the flow state, the request is
        // masked, its TCP checksum still right.
        let (rc, _) = mirror
            .test_run(PROG_MIRROR_MASK, &syn, CLONE_MARK)
            .expect("test run");
        assert_eq!(rc, 0xffff_ffff);
        let (rc, out) = mirror
            .test_run(PROG_MIRROR_MASK, &data, CLONE_MARK)
            .expect("test run");
        assert_eq!(rc, 0xffff_ffff, "the clone passes");
        let payload = &out[54..];
        assert_eq!(
            payload,
            &b"GET /?token=********* HTTP/1.1\r\nHost: x\r\nCookie: ************\r\n\r\n"[..]
        );
        let c = l4_verify(client, server, 6, &out[34..]);
        assert!(
            c == 0 || c == 0xffff,
            "bad TCP checksum on the masked clone: {c:#x}"
        );
        assert_eq!(
            &out[..50],
            &data[..50],
            "headers other than the checksum unchanged"
        );
        assert_eq!(&out[52..54], &data[52..54]);
        // Not a clone (no mark): untouched.
        let (_, out) = mirror
            .test_run(PROG_MIRROR_MASK, &data, 0)
            .expect("test run");
        assert_eq!(out, data);
        // A segment out of sequence with the "drop" fallback: the clone is dropped.
        let late = frame4(&eth, client, server, 6, &tcp(41000, 80, 5000, 0x18, req));
        let (rc, _) = mirror
            .test_run(PROG_MIRROR_MASK, &late, CLONE_MARK)
            .expect("test run");
        assert_eq!(rc, 2, "TC_ACT_SHOT");
        // TLS on an HTTP rule, mid-flow without state: dropped too.
        let tls = frame4(
            &eth,
            client,
            server,
            6,
            &tcp(41001, 443, 7, 0x18, b"\x16\x03\x01\x00\x10SECRETtls"),
        );
        let (rc, _) = mirror
            .test_run(PROG_MIRROR_MASK, &tls, CLONE_MARK)
            .expect("test run");
        assert_eq!(rc, 2, "TC_ACT_SHOT");
    });
    let c = mirror.counters().expect("counters");
    assert_eq!(c.fallback_dropped, 2, "{c:?}");
    assert_eq!(c.mask_failed, 0, "{c:?}");
}

/// `Mirror::set_rules` while the mirror runs: the TC program selects by the new set at
/// once, and a clone is masked by the rule that selected it (the slot in its mark), so one
/// made just before the change is masked by the old rule, one made after by the new.
#[test]
fn a_clone_is_masked_by_the_rule_set_that_selected_it_across_a_rules_change() {
    use shadow_common::mirror::MAX_RULES;
    let world = World::new();
    let (client, server) = ipv4(&world);
    let udp_rule = |port: u16| rule(IpAddr::V4(server), Proto::Udp, Ports { lo: port, hi: port });
    let mask = |n: u16| RuleMask {
        http: false,
        ranges: vec![(0, n)],
        fallback: Fallback::Mask,
    };
    let mut mirror = attach(
        &world,
        vec![udp_rule(9999)],
        MirrorOptions {
            rule_masks: vec![mask(4)],
            ..MirrorOptions::default()
        },
    );
    let eth = front_eth(&world);
    let payload = b"SECRET-payload";
    let to = |port: u16| frame4(&eth, client, server, 17, &udp(40000, port, payload));
    // Bytes of the UDP payload that differ from what was sent.
    let changed = |out: &[u8]| -> usize {
        out[42..]
            .iter()
            .zip(payload.iter())
            .take_while(|(a, b)| a != b)
            .count()
    };
    mirror
        .set_rules(vec![udp_rule(9998)], vec![mask(6)])
        .expect("set rules");
    world.primary.run(|| {
        // A clone selected by the first set (slot 0) and one by the second (slot MAX_RULES).
        let (rc, out) = mirror
            .test_run(PROG_MIRROR_MASK, &to(9999), CLONE_MARK)
            .expect("test run");
        assert_eq!(rc, 0xffff_ffff);
        assert_eq!(changed(&out), 4, "{out:?}");
        let (rc, out) = mirror
            .test_run(PROG_MIRROR_MASK, &to(9998), CLONE_MARK | MAX_RULES)
            .expect("test run");
        assert_eq!(rc, 0xffff_ffff);
        assert_eq!(changed(&out), 6, "{out:?}");
        assert_eq!(&out[42 + 6..], &payload[6..]);
        let c = l4_verify(client, server, 17, &out[34..]);
        assert!(c == 0 || c == 0xffff, "bad UDP checksum: {c:#x}");
    });
    // The TC program selects by the new set: 9998 is cloned, 9999 no longer.
    let before = mirror.counters().expect("counters");
    world.primary.run(|| {
        for port in [9998, 9999] {
            let (rc, out) = mirror
                .test_run(PROG_MIRROR_TC, &to(port), 0)
                .expect("test run");
            assert_eq!(rc, 0xffff_ffff);
            assert_eq!(out, to(port), "the original was modified");
        }
    });
    let after = mirror.counters().expect("counters");
    assert_eq!(after.matched - before.matched, 1, "{after:?}");
    assert_eq!(after.no_match - before.no_match, 1, "{after:?}");
    // The new set's rule masked twice: the test run with its slot, and the real clone of
    // the 9998 datagram on its way out of the shadow interface (counters of the old set are
    // not counted any more).
    assert_eq!(mirror.masked_per_rule().expect("per rule"), vec![2]);
}

#[test]
fn udp_sockets_unaffected_without_masks() {
    // A mirror with the masking program attached but no masks sends clones unchanged.
    let world = World::new();
    let (_, server) = ipv4(&world);
    let dst = SocketAddr::new(IpAddr::V4(server), 7002);
    let primary_in = bind(&world.primary, dst);
    let shadow_in = bind(&world.shadow, dst);
    let _m = attach(
        &world,
        vec![rule(IpAddr::V4(server), Proto::Udp, Ports::ANY)],
        MirrorOptions::default(),
    );
    world.client.run(|| {
        let s = UdpSocket::bind("0.0.0.0:0").expect("socket");
        for i in 0..10u8 {
            s.send_to(&[i; 100], dst).expect("send");
        }
    });
    let want: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 100]).collect();
    assert_eq!(drain(&primary_in), want);
    assert_eq!(drain(&shadow_in), want);
}

#[test]
fn bytes_past_the_scan_window_take_the_fallback() {
    let world = World::new();
    let (client, server) = ipv4(&world);
    let mirror = attach_http(
        &world,
        server,
        shadow_agent::mirror::MaskOptions {
            scan_bytes: 32,
            ..Default::default()
        },
    );
    let eth = front_eth(&world);
    let body = "x".repeat(3000);
    let req = format!(
        "POST /up HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}GET /next HTTP/1.1\r\nHost: h\r\n\r\n",
        body.len()
    );
    let (head, rest) = req.as_bytes().split_at(40);
    let syn = frame4(&eth, client, server, 6, &tcp(42000, 80, 0, 0x02, &[]));
    let first = frame4(&eth, client, server, 6, &tcp(42000, 80, 1, 0x18, head));
    world.primary.run(|| {
        mirror
            .test_run(PROG_MIRROR_MASK, &syn, CLONE_MARK)
            .expect("test run");
        // 40 bytes, window 32: the headers end past the window, so the last 8 bytes are
        // masked and the flow can no longer be followed.
        let (rc, out) = mirror
            .test_run(PROG_MIRROR_MASK, &first, CLONE_MARK)
            .expect("test run");
        assert_eq!(rc, 0xffff_ffff);
        assert_eq!(&out[54..54 + 32], &head[..32]);
        assert!(
            out[54 + 32..].iter().all(|&b| b == b'*'),
            "{:?}",
            &out[54..]
        );
        let c = l4_verify(client, server, 6, &out[34..]);
        assert!(c == 0 || c == 0xffff, "bad TCP checksum: {c:#x}");
        // Everything later in the flow is masked whole: its state is broken.
        let second = frame4(
            &eth,
            client,
            server,
            6,
            &tcp(42000, 80, 41, 0x18, &rest[..100]),
        );
        let (_, out) = mirror
            .test_run(PROG_MIRROR_MASK, &second, CLONE_MARK)
            .expect("test run");
        assert!(out[54..].iter().all(|&b| b == b'*'));
    });
    let c = mirror.counters().expect("counters");
    assert_eq!(c.unparseable, 2, "{c:?}");
    assert_eq!(c.mask_failed, 0, "{c:?}");
}

#[test]
fn large_bodies_are_skipped_by_length_past_the_window() {
    let world = World::new();
    let (client, server) = ipv4(&world);
    let mirror = attach_http(
        &world,
        server,
        shadow_agent::mirror::MaskOptions {
            scan_bytes: 64,
            ..Default::default()
        },
    );
    let eth = front_eth(&world);
    let body = "b".repeat(1200);
    let req = format!(
        "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}GET /?token=tok HTTP/1.1\r\n\r\n",
        body.len()
    );
    let syn = frame4(&eth, client, server, 6, &tcp(42001, 80, 0, 0x02, &[]));
    let data = frame4(
        &eth,
        client,
        server,
        6,
        &tcp(42001, 80, 1, 0x18, req.as_bytes()),
    );
    world.primary.run(|| {
        mirror
            .test_run(PROG_MIRROR_MASK, &syn, CLONE_MARK)
            .expect("test run");
        let (rc, out) = mirror
            .test_run(PROG_MIRROR_MASK, &data, CLONE_MARK)
            .expect("test run");
        assert_eq!(rc, 0xffff_ffff);
        // The body is skipped by its length without scanning; the next request starts past
        // the window, is not parsed and is masked whole (the fallback).
        let want = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}{}",
            body.len(),
            "*".repeat("GET /?token=tok HTTP/1.1\r\n\r\n".len())
        );
        assert_eq!(String::from_utf8_lossy(&out[54..]), want);
    });
}

/// A deterministic pseudo-random payload (no canary-like structure, every byte value).
fn noise(n: usize, mut x: u32) -> Vec<u8> {
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[test]
fn unparseable_flows_are_filled_in_bulk_with_valid_checksums() {
    // Not HTTP on an HTTP rule (the "mask" fallback): every payload byte of every segment
    // becomes the fill byte, through the bulk path (segments of one and two 2 KiB chunks, odd lengths,
    // a start past an odd number of parsed bytes), and the TCP checksum stays right.
    let world = World::new();
    let (client, server) = ipv4(&world);
    let mirror = attach_http_fill(&world, server, b'#');
    let eth = front_eth(&world);
    let syn = frame4(&eth, client, server, 6, &tcp(42100, 5201, 0, 0x02, &[]));
    world.primary.run(|| {
        mirror
            .test_run(PROG_MIRROR_MASK, &syn, CLONE_MARK)
            .expect("test run");
        let mut seq = 1u32;
        for (i, len) in [37usize, 1, 2049, 2048, 3001, 3].into_iter().enumerate() {
            let payload = noise(len, 7 + i as u32);
            let f = frame4(
                &eth,
                client,
                server,
                6,
                &tcp(42100, 5201, seq, 0x18, &payload),
            );
            seq += len as u32;
            let (rc, out) = mirror
                .test_run(PROG_MIRROR_MASK, &f, CLONE_MARK)
                .expect("test run");
            assert_eq!(
                rc, 0xffff_ffff,
                "segment {i}: the clone passes (mask fallback)"
            );
            assert_eq!(out.len(), f.len(), "segment {i}: length preserved");
            assert!(
                out[54..].iter().all(|&b| b == b'#'),
                "segment {i}: a payload byte survived"
            );
            assert_eq!(&out[..50], &f[..50], "segment {i}: headers unchanged");
            let c = l4_verify(client, server, 6, &out[34..]);
            assert!(
                c == 0 || c == 0xffff,
                "segment {i}: bad TCP checksum {c:#x}"
            );
        }
    });
    let c = mirror.counters().expect("counters");
    assert_eq!(c.unparseable, 6, "{c:?}");
    assert_eq!(c.masked, 6, "{c:?}");
    assert_eq!(c.mask_failed, 0, "{c:?}");
    // Test-run packets carry no partial checksum: the probe found that, and the checksums
    // above are the bulk fill's own.
    assert_eq!(c.mask_csum_deferred, 0, "{c:?}");
}

#[test]
fn bulk_fill_leaves_the_checksum_to_the_kernel_when_it_completes_it() {
    // A real TCP stream that is not HTTP, on an HTTP rule (the "mask" fallback), from a
    // socket in the client's namespace: its segments reach the mirror as CHECKSUM_PARTIAL
    // (the checksum is computed at transmit), so the bulk fill neither reads nor sums the
    // payload it replaces (`mask_csum_deferred`). Transmit checksumming is off on the shadow
    // interface, so the kernel computes each clone's checksum in software *after* masking:
    // the capture on the shadow's end must hold payloads that are all fill under valid
    // checksums, and the primary must receive every byte as sent.
    let world = World::new();
    let (client, server) = ipv4(&world);
    let pm = world.back.a().name.clone();
    let out = world.primary.run(|| {
        Command::new("ethtool")
            .args(["-K", &pm, "tx", "off"])
            .output()
            .expect("running ethtool")
    });
    assert!(
        out.status.success(),
        "ethtool -K {pm} tx off: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mirror = attach_http_fill(&world, server, b'#');
    let cap = Packet::open(&world.shadow, &world.back.b().name);
    let listener = world
        .primary
        .run(|| std::net::TcpListener::bind((server, 7002)))
        .expect("listening on the primary");
    let reader = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        let (mut s, _) = listener.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut s, &mut v)?;
        Ok(v)
    });
    let data = noise(1 << 20, 5);
    let mut stream = world
        .client
        .run(|| std::net::TcpStream::connect((server, 7002)))
        .expect("connecting from the client");
    std::io::Write::write_all(&mut stream, &data).expect("sending");
    drop(stream);
    let got = reader.join().expect("reader thread").expect("reading");
    assert!(got == data, "the primary must receive the stream as sent");
    std::thread::sleep(Duration::from_millis(200));
    let frames = cap.frames();
    let mut segments = 0;
    for f in &frames {
        if f.len() <= 54 || f[23] != 6 || f[30..34] != server.octets() {
            continue;
        }
        if f[36..38] != 7002u16.to_be_bytes() {
            continue;
        }
        let total = u16::from_be_bytes([f[16], f[17]]) as usize;
        let l4 = &f[34..14 + total];
        let doff = (l4[12] >> 4) as usize * 4;
        if l4.len() == doff {
            continue;
        }
        segments += 1;
        assert!(
            l4[doff..].iter().all(|&b| b == b'#'),
            "a payload byte reached the shadow"
        );
        let c = l4_verify(client, server, 6, l4);
        assert!(c == 0 || c == 0xffff, "bad TCP checksum {c:#x} on a clone");
    }
    let ss = streams(&frames, server, 7002);
    assert_eq!(ss.len(), 1, "one connection on the shadow side");
    assert_eq!(
        ss[0].1.len(),
        data.len(),
        "the whole stream, length preserved"
    );
    assert!(segments > 100, "{segments} data segments captured");
    let c = mirror.counters().expect("counters");
    assert!(c.mask_csum_deferred > 0, "{c:?}");
    assert!(c.mask_csum_deferred <= c.masked, "{c:?}");
    assert_eq!(c.mask_failed, 0, "{c:?}");
}

#[test]
fn body_segments_out_of_order_do_not_break_the_flow() {
    // A body with Content-Length whose segments arrive out of order (as they can when two
    // CPUs process one flow): they are passed without parsing, and the request after the
    // body is still masked, not taken by the fallback.
    let world = World::new();
    let (client, server) = ipv4(&world);
    let mirror = attach_http(&world, server, Default::default());
    let eth = front_eth(&world);
    let head =
        b"PUT /up HTTP/1.1\r\nAuthorization: Bearer SECRETone\r\nContent-Length: 3000\r\n\r\n";
    let next = b"GET /n?token=SECRETtwo HTTP/1.1\r\nCookie: SECRETthree\r\n\r\n";
    let body = noise(3000, 99);
    let mut tail = body[2500..].to_vec();
    tail.extend_from_slice(next);
    let start = 1 + head.len() as u32;
    let seg = |seq: u32, p: &[u8]| frame4(&eth, client, server, 6, &tcp(42200, 80, seq, 0x18, p));
    let syn = frame4(&eth, client, server, 6, &tcp(42200, 80, 0, 0x02, &[]));
    world.primary.run(|| {
        let run = |f: &Vec<u8>| {
            let (rc, out) = mirror
                .test_run(PROG_MIRROR_MASK, f, CLONE_MARK)
                .expect("test run");
            assert_eq!(rc, 0xffff_ffff, "the clone passes");
            out
        };
        run(&syn);
        let out = run(&seg(1, head));
        assert!(!contains(&out, b"SECRETone"));
        // Body bytes 1000..2500, then 0..1000, then an ACK-only segment ahead of them.
        let b2 = seg(start + 1000, &body[1000..2500]);
        assert_eq!(run(&b2), b2, "body bytes pass unchanged");
        let b1 = seg(start, &body[..1000]);
        assert_eq!(run(&b1), b1);
        let ack = seg(start + 3000, &[]);
        assert_eq!(run(&ack), ack);
        // The end of the body and the next request.
        let out = run(&seg(start + 2500, &tail));
        assert_eq!(&out[54..54 + 500], &body[2500..]);
        assert_eq!(
            String::from_utf8_lossy(&out[54 + 500..]),
            "GET /n?token=********* HTTP/1.1\r\nCookie: ***********\r\n\r\n"
        );
        let c = l4_verify(client, server, 6, &out[34..]);
        assert!(c == 0 || c == 0xffff, "bad TCP checksum: {c:#x}");
    });
    let c = mirror.counters().expect("counters");
    assert_eq!(c.mask_body_passed, 2, "{c:?}");
    assert_eq!(c.unparseable, 0, "{c:?}");
    assert_eq!(c.mask_seq_lost, 0, "{c:?}");
}

// ---------------------------------------------------------------------------------------
// Source-address pseudonymisation

const PSEUDO_KEY: [u8; 16] = *b"shadow-test-key1";

fn pseudo(key: [u8; 16]) -> Pseudonymise {
    Pseudonymise {
        key,
        v4: (Ipv4Addr::new(100, 64, 0, 0), 10),
        v6: ("fd5d::".parse().expect("v6"), 16),
    }
}

fn expected_v4(key: [u8; 16], a: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from(pseudonym_v4(
        &PrfKey::from_bytes(key),
        a.octets(),
        [100, 64, 0, 0],
        10,
    ))
}

/// The IPv6 L4 checksum check: 0 (or 0xffff) when right.
fn l4_verify6(src: &[u8], dst: &[u8], proto: u8, l4: &[u8]) -> u16 {
    let mut s = csum_add(0, src);
    s = csum_add(s, dst);
    s += proto as u64 + l4.len() as u64;
    !fold(csum_add(s, l4))
}

/// Ethernet + IPv6 + (UDP | TCP) with a correct checksum.
fn frame6(eth: &Eth, src: [u8; 16], dst: [u8; 16], proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&eth.dst);
    f.extend_from_slice(&eth.src);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    f.push(proto);
    f.push(64);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    let mut l4 = l4.to_vec();
    let at = if proto == 17 { 6 } else { 16 };
    l4[at..at + 2].copy_from_slice(&[0, 0]);
    let mut c = l4_verify6(&src, &dst, proto, &l4);
    if proto == 17 && c == 0 {
        c = 0xffff;
    }
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&l4);
    f
}

fn attach_pseudo(world: &World, rules: Vec<Rule>, key: [u8; 16], http: bool) -> Mirror {
    attach(
        world,
        rules,
        MirrorOptions {
            rule_masks: vec![RuleMask {
                http,
                ..RuleMask::default()
            }],
            pseudonymise: Some(pseudo(key)),
            ..MirrorOptions::default()
        },
    )
}

#[test]
fn clones_carry_the_keyed_pseudonym_as_source_end_to_end() {
    // UDP datagrams with full software checksums (CHECKSUM_NONE): the shadow's stack
    // verifies the rewritten UDP checksum and delivers to a real socket, whose recvfrom
    // shows the pseudonym; the primary's socket sees the real client.
    let world = World::new();
    let (client, server) = ipv4(&world);
    let dst = SocketAddr::new(IpAddr::V4(server), 7003);
    let primary_in = bind(&world.primary, dst);
    let shadow_in = bind(&world.shadow, dst);
    let mirror = attach_pseudo(
        &world,
        vec![rule(IpAddr::V4(server), Proto::Udp, Ports::ANY)],
        PSEUDO_KEY,
        false,
    );
    let inject = Packet::open(&world.client, &world.front.a().name);
    let cap = Packet::open(&world.shadow, &world.back.b().name);
    let eth = front_eth(&world);
    for i in 0..20u8 {
        inject.send(&frame4(
            &eth,
            client,
            server,
            17,
            &udp(40100, 7003, &[i; 33]),
        ));
        std::thread::sleep(Duration::from_millis(2));
    }
    let want = expected_v4(PSEUDO_KEY, client);
    assert_ne!(want, client);
    let recv_all = |s: &UdpSocket| {
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            out.push((buf[..n].to_vec(), from.ip()));
        }
        out
    };
    let p = recv_all(&primary_in);
    let s = recv_all(&shadow_in);
    assert_eq!(p.len(), 20, "the primary gets every datagram");
    assert!(
        p.iter().all(|(_, from)| *from == IpAddr::V4(client)),
        "{p:?}"
    );
    assert_eq!(
        s.len(),
        20,
        "the shadow gets every clone (bad checksums would be dropped)"
    );
    assert!(s.iter().all(|(_, from)| *from == IpAddr::V4(want)), "{s:?}");
    assert_eq!(
        p.iter().map(|x| &x.0).collect::<Vec<_>>(),
        s.iter().map(|x| &x.0).collect::<Vec<_>>()
    );
    let mut seen = 0;
    for f in cap.frames() {
        if f.len() > 42 && f[12..14] == [8, 0] && f[23] == 17 {
            assert_eq!(f[26..30], want.octets(), "source on the shadow side");
            assert_ne!(f[26..30], client.octets());
            assert_eq!(
                fold(csum_add(0, &f[14..34])),
                0xffff,
                "IPv4 header checksum"
            );
            let c = l4_verify(want, server, 17, &f[34..]);
            assert!(c == 0 || c == 0xffff, "bad UDP checksum: {c:#x}");
            seen += 1;
        }
    }
    assert_eq!(seen, 20);
    let c = mirror.counters().expect("counters");
    assert_eq!(c.pseudonymised, 20, "{c:?}");
    assert_eq!(c.pseudo_failed, 0, "{c:?}");
}

#[test]
fn pseudonyms_for_tcp_and_ipv6_are_keyed_and_survive_a_restart() {
    let world = World::new();
    let (client, server) = ipv4(&world);
    let server6 = match world.primary_addr(true) {
        IpAddr::V6(a) => a.octets(),
        _ => unreachable!(),
    };
    let client6: [u8; 16] = "2001:db8::77"
        .parse::<std::net::Ipv6Addr>()
        .expect("v6")
        .octets();
    let eth = front_eth(&world);
    let req = b"GET /?token=SECRETtok HTTP/1.1\r\nCookie: SECRETc\r\n\r\n";
    let syn4 = frame4(&eth, client, server, 6, &tcp(41500, 80, 9, 0x02, &[]));
    let data4 = frame4(&eth, client, server, 6, &tcp(41500, 80, 10, 0x18, req));
    let udp6 = frame6(
        &eth,
        client6,
        server6,
        17,
        &udp(5353, 53, b"dns-ish payload"),
    );
    let tcp6 = frame6(&eth, client6, server6, 6, &tcp(41501, 80, 1, 0x10, b"xyz"));
    let rules = || {
        vec![
            rule(IpAddr::V4(server), Proto::Tcp, Ports::ANY),
            rule(IpAddr::V6(server6.into()), Proto::Udp, Ports::ANY),
            rule(IpAddr::V6(server6.into()), Proto::Tcp, Ports::ANY),
        ]
    };
    // One run of the four clones through shadow_mask under `key`.
    let run = |key: [u8; 16]| -> Vec<Vec<u8>> {
        let mirror = attach(
            &world,
            rules(),
            MirrorOptions {
                rule_masks: vec![
                    RuleMask {
                        http: true,
                        ..RuleMask::default()
                    },
                    RuleMask::default(),
                    RuleMask::default(),
                ],
                pseudonymise: Some(pseudo(key)),
                ..MirrorOptions::default()
            },
        );
        let outs = world.primary.run(|| {
            // The original leaves the TC ingress program untouched.
            for f in [&syn4, &data4, &udp6, &tcp6] {
                let (rc, out) = mirror.test_run(PROG_MIRROR_TC, f, 0).expect("test run");
                assert_eq!(rc, 0xffff_ffff);
                assert_eq!(&out, f, "the original was modified");
            }
            let mut outs = Vec::new();
            for (f, rule) in [(&syn4, 0), (&data4, 0), (&udp6, 1), (&tcp6, 2)] {
                let (rc, out) = mirror
                    .test_run(PROG_MIRROR_MASK, f, CLONE_MARK | rule)
                    .expect("test run");
                assert_eq!(rc, 0xffff_ffff, "the clone passes");
                assert_eq!(out.len(), f.len());
                outs.push(out);
            }
            outs
        });
        let c = mirror.counters().expect("counters");
        // 4 test runs of shadow_mask, plus the 4 real clones the test runs of the ingress
        // program sent out of the shadow interface (through shadow_mask on its egress).
        assert_eq!((c.pseudonymised, c.pseudo_failed), (8, 0), "{c:?}");
        outs
    };
    let a = run(PSEUDO_KEY);
    // IPv4 TCP: masked (keyed by the real 5-tuple), then the source rewritten.
    let want4 = expected_v4(PSEUDO_KEY, client);
    for out in &a[..2] {
        assert_eq!(out[26..30], want4.octets());
        assert_eq!(
            fold(csum_add(0, &out[14..34])),
            0xffff,
            "IPv4 header checksum"
        );
        let c = l4_verify(want4, server, 6, &out[34..]);
        assert!(c == 0 || c == 0xffff, "bad TCP checksum: {c:#x}");
    }
    assert_eq!(
        &a[1][54..],
        &b"GET /?token=********* HTTP/1.1\r\nCookie: *******\r\n\r\n"[..]
    );
    // IPv6: UDP and TCP.
    let want6 = pseudonym_v6(
        &PrfKey::from_bytes(PSEUDO_KEY),
        client6,
        "fd5d::".parse::<std::net::Ipv6Addr>().expect("v6").octets(),
        16,
    );
    for (out, proto) in [(&a[2], 17u8), (&a[3], 6u8)] {
        assert_eq!(out[22..38], want6);
        assert_eq!(out[22..24], [0xfd, 0x5d]);
        assert_eq!(out[38..54], server6, "destination unchanged");
        let c = l4_verify6(&want6, &server6, proto, &out[54..]);
        assert!(
            c == 0 || c == 0xffff,
            "bad checksum (proto {proto}): {c:#x}"
        );
    }
    // A restart (a new Mirror, fresh maps) with the same key: the same bytes.
    assert_eq!(run(PSEUDO_KEY), a);
    // Another key: other pseudonyms.
    let b = run(*b"another-key-0002");
    assert_ne!(b[0][26..30], a[0][26..30]);
    assert_ne!(b[2][22..38], a[2][22..38]);
}
