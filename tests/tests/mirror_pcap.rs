//! Replays every capture in `../shared/data/pcaps/suricata-verify` through the mirror:
//! the client-to-server packets of each capture are injected on the client's end of the
//! primary's veth (Ethernet re-framed, VLAN tags kept; DLT_NULL captures handled); TCP rules
//! mask as HTTP (TLS and other payloads take the "mask" fallback), DNS rules copy. The primary's interface must receive exactly the injected frames; the
//! shadow must receive, frame for frame, the output of a model of the datapath built on the
//! same shared parser (`shadow_common::mask`), and no value of a masked header that sits
//! whole in one segment may reach it.

mod mirror_world;

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use mirror_world::*;
use shadow_agent::mirror::{
    Cidr, Fallback, Mirror, MirrorOptions, MirrorSpec, Ports, Proto, Rule, RuleMask,
};
use shadow_common::{
    mask::{
        apply_diff, mask_byte, seq_check, CsumDelta, FlowKey, HttpState, MaskSpec, SeqVerdict,
        DEFAULT_HEADERS, F_SEQ_VALID, ST_BROKEN,
    },
    mirror::{parse_flow, IPPROTO_TCP, IPPROTO_UDP},
};
use shadow_tests::harness::chain;

const PCAPS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/data/pcaps/suricata-verify"
);

/// The IP packets of a capture (Ethernet or DLT_NULL), with their family.
fn read_pcap(path: &Path) -> Vec<(u16, Vec<u8>)> {
    let d = std::fs::read(path).expect("read pcap");
    assert_eq!(
        &d[..4],
        &[0xd4, 0xc3, 0xb2, 0xa1],
        "{path:?}: little-endian usec pcap"
    );
    let linktype = u32::from_le_bytes(d[20..24].try_into().expect("4 bytes"));
    let mut out = Vec::new();
    let mut off = 24;
    while off + 16 <= d.len() {
        let caplen = u32::from_le_bytes(d[off + 8..off + 12].try_into().expect("4")) as usize;
        let len = u32::from_le_bytes(d[off + 12..off + 16].try_into().expect("4")) as usize;
        let pkt = &d[off + 16..(off + 16 + caplen).min(d.len())];
        off += 16 + caplen;
        if caplen != len {
            continue; // truncated capture
        }
        match linktype {
            1 if pkt.len() > 14 => {
                let et = u16::from_be_bytes([pkt[12], pkt[13]]);
                // VLAN-tagged frames keep their tags: the datapath parses them.
                if matches!(et, 0x0800 | 0x86dd | 0x8100 | 0x88a8) {
                    out.push((et, pkt[14..].to_vec()));
                }
            }
            0 if pkt.len() > 4 => {
                // DLT_NULL: the address family in the capturing host's byte order.
                let af = u32::from_le_bytes(pkt[..4].try_into().expect("4"));
                match af {
                    2 => out.push((0x0800, pkt[4..].to_vec())),
                    24 | 28 | 30 => out.push((0x86dd, pkt[4..].to_vec())),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    out
}

fn frame(dst: [u8; 6], src: [u8; 6], et: u16, ip: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + ip.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&et.to_be_bytes());
    f.extend_from_slice(ip);
    f
}

/// `f` without its VLAN tags: veth hands tags to the stack out of band (VLAN offload), so
/// the TC programs and packet sockets see untagged frames.
fn untag(f: &[u8]) -> Vec<u8> {
    let mut out = f[..12].to_vec();
    let mut off = 12;
    while matches!(u16::from_be_bytes([f[off], f[off + 1]]), 0x8100 | 0x88a8) {
        off += 4;
    }
    out.extend_from_slice(&f[off..]);
    out
}

/// Server endpoints of a capture: the destinations of TCP SYNs, else the lower port of each
/// TCP/UDP conversation.
fn servers(frames: &[Vec<u8>]) -> BTreeSet<(IpAddr, u16, u8)> {
    let mut syn = BTreeSet::new();
    let mut all = BTreeSet::new();
    for f in frames {
        let Some(fl) = parse_flow(&f[..]) else {
            continue;
        };
        if !fl.has_ports {
            continue;
        }
        let addr = |a: [u8; 16]| -> IpAddr {
            if fl.family == 4 {
                IpAddr::from(<[u8; 4]>::try_from(&a[..4]).expect("4"))
            } else {
                IpAddr::from(a)
            }
        };
        if fl.proto == IPPROTO_TCP && fl.tcp_flags & 0x12 == 0x02 {
            syn.insert((addr(fl.dst), fl.dport, fl.proto));
        }
        if fl.dport <= fl.sport {
            all.insert((addr(fl.dst), fl.dport, fl.proto));
        } else {
            all.insert((addr(fl.src), fl.sport, fl.proto));
        }
    }
    // A conversation is client-to-server when it goes to a known server.
    let mut out = syn.clone();
    for s in all {
        if !syn.iter().any(|x| x.0 == s.0 && x.2 == s.2) {
            out.insert(s);
        }
    }
    out
}

/// Every TCP service is masked as HTTP except DNS: TLS and other protocols on an HTTP rule
/// take the fallback.
fn is_http_port(p: u16) -> bool {
    p != 53
}

/// The datapath's masking, modelled on the host with the shared parser: per-flow state from
/// the SYN, in-order segments parsed, anything else under the "mask" fallback.
struct Model {
    spec: MaskSpec,
    flows: HashMap<FlowKey, HttpState>,
}

impl Model {
    fn clone_of(&mut self, f: &[u8], shadow_mac: [u8; 6], http: bool) -> Vec<u8> {
        let mut out = f.to_vec();
        out[..6].copy_from_slice(&shadow_mac);
        if !http {
            return out;
        }
        let fl = parse_flow(f).expect("parsed");
        let l3 = fl.l3_off as usize;
        let l4 = fl.l4_off as usize;
        let end = if fl.family == 4 {
            l3 + u16::from_be_bytes([f[l3 + 2], f[l3 + 3]]) as usize
        } else {
            l3 + 40 + u16::from_be_bytes([f[l3 + 4], f[l3 + 5]]) as usize
        }
        .min(f.len());
        let doff = (f[l4 + 12] >> 4) as usize * 4;
        let poff = l4 + doff;
        let plen = end.saturating_sub(poff) as u32;
        let seq = u32::from_be_bytes(f[l4 + 4..l4 + 8].try_into().expect("4"));
        let key = FlowKey::of(&fl);
        let mut keep = false;
        let mut st;
        if fl.tcp_flags & 0x12 == 0x02 {
            st = HttpState {
                next_seq: seq.wrapping_add(1),
                flags: F_SEQ_VALID,
                ..HttpState::default()
            };
            self.flows.insert(key, st);
            keep = true;
        } else if let Some(s) = self.flows.get(&key) {
            st = *s;
            match seq_check(&st, seq, plen) {
                SeqVerdict::InOrder => keep = true,
                SeqVerdict::Old => st.st = ST_BROKEN,
                SeqVerdict::Lost => {
                    st.st = ST_BROKEN;
                    keep = true;
                }
            }
        } else {
            st = HttpState {
                st: ST_BROKEN,
                flags: F_SEQ_VALID,
                ..HttpState::default()
            };
            keep = plen > 0;
        }
        let mut d = CsumDelta::default();
        let limit = self.spec.scan_limit;
        for i in 0..plen {
            if i >= limit && st.st != shadow_common::mask::ST_BODY_SKIP {
                st.st = ST_BROKEN;
            }
            let b = out[poff + i as usize];
            let m = if st.st == ST_BROKEN {
                true
            } else {
                mask_byte(&mut st, &self.spec, b) || st.st == ST_BROKEN
            };
            if m && b != self.spec.fill {
                d.replace(i, b, self.spec.fill);
                out[poff + i as usize] = self.spec.fill;
            }
        }
        if keep {
            if fl.tcp_flags & 0x05 != 0 {
                self.flows.remove(&key);
            } else {
                if st.st != ST_BROKEN {
                    st.next_seq = st.next_seq.wrapping_add(plen);
                }
                self.flows.insert(key, st);
            }
        } else if fl.tcp_flags & 0x05 != 0 {
            self.flows.remove(&key);
        }
        if d != CsumDelta::default() && d.diff() != 0 {
            let c = u16::from_be_bytes([out[l4 + 16], out[l4 + 17]]);
            let c = apply_diff(c, d.diff());
            out[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
        }
        out
    }
}

/// Values of the masked headers lying whole inside `payload`: (offset, length).
fn header_values(payload: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let text = payload;
    let mut line_start = 0;
    for i in 0..text.len() {
        if text[i] != b'\n' {
            continue;
        }
        let line = &text[line_start..i];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(colon) = line.iter().position(|&c| c == b':') {
            let name = String::from_utf8_lossy(&line[..colon]).to_ascii_lowercase();
            if line_start > 0 && DEFAULT_HEADERS.contains(&name.as_str()) {
                let mut v = colon + 1;
                while v < line.len() && (line[v] == b' ' || line[v] == b'\t') {
                    v += 1;
                }
                if v < line.len() {
                    out.push((line_start + v, line.len() - v));
                }
            }
        }
        line_start = i + 1;
    }
    out
}

#[test]
fn suricata_verify_captures_replay_through_the_mirror() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(PCAPS)
        .unwrap_or_else(|e| panic!("{PCAPS}: {e}"))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "pcap"))
        .collect();
    files.sort();
    assert!(files.len() >= 19, "captures missing: {}", files.len());
    let world = World::new();
    let pr_mac = world.front.b().mac.octets();
    let cl_mac = world.front.a().mac.octets();
    let shadow_mac = world.back.b().mac.octets();
    let inject = Packet::open(&world.client, &world.front.a().name);
    let mut totals = (0usize, 0usize, 0u64, 0usize);
    for path in &files {
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .to_string();
        let pkts = read_pcap(path);
        let all: Vec<Vec<u8>> = pkts
            .iter()
            .map(|(et, ip)| frame(pr_mac, cl_mac, *et, ip))
            .collect();
        let srv = servers(&all);
        assert!(!srv.is_empty(), "{name}: no servers found");
        // Client-to-server frames that fit the veth's MTU.
        let is_to_server = |f: &Vec<u8>| {
            parse_flow(&f[..]).is_some_and(|fl| {
                fl.has_ports
                    && srv.iter().any(|(a, p, pr)| {
                        *pr == fl.proto && *p == fl.dport && {
                            let d: IpAddr = if fl.family == 4 {
                                IpAddr::from(<[u8; 4]>::try_from(&fl.dst[..4]).expect("4"))
                            } else {
                                IpAddr::from(fl.dst)
                            };
                            d == *a
                        }
                    })
            })
        };
        let to_server: Vec<Vec<u8>> = all
            .into_iter()
            .filter(|f| f.len() <= 1514)
            .filter(is_to_server)
            .collect();
        let list: Vec<_> = srv.iter().take(16).cloned().collect();
        let rules: Vec<Rule> = list
            .iter()
            .map(|(a, p, pr)| Rule {
                dst: Cidr {
                    addr: *a,
                    prefix_len: if a.is_ipv4() { 32 } else { 128 },
                },
                ports: Ports { lo: *p, hi: *p },
                proto: Some(if *pr == IPPROTO_UDP {
                    Proto::Udp
                } else {
                    Proto::Tcp
                }),
            })
            .collect();
        let masks: Vec<RuleMask> = list
            .iter()
            .map(|(_, p, pr)| RuleMask {
                http: *pr == IPPROTO_TCP && is_http_port(*p),
                ranges: vec![],
                fallback: Fallback::Mask,
            })
            .collect();
        let http_of = |f: &[u8]| -> Option<bool> {
            let fl = parse_flow(f)?;
            let i = list.iter().position(|(a, p, pr)| {
                let d: IpAddr = if fl.family == 4 {
                    IpAddr::from(<[u8; 4]>::try_from(&fl.dst[..4]).expect("4"))
                } else {
                    IpAddr::from(fl.dst)
                };
                *pr == fl.proto && *p == fl.dport && d == *a
            })?;
            Some(masks[i].http)
        };
        let spec = MirrorSpec {
            interface: world.front.b().name.clone(),
            address: None,
            direction: Default::default(),
            shadow_interface: world.back.a().name.clone(),
            shadow_mac,
            rules,
            xdp: false,
            options: MirrorOptions {
                rule_masks: masks.clone(),
                ..MirrorOptions::default()
            },
        };
        let mirror: Mirror = world
            .primary
            .run(move || Mirror::attach(spec))
            .unwrap_or_else(|e| panic!("{name}: attaching: {}", chain(&e)));
        let cap_p = Packet::open(&world.primary, &world.front.b().name);
        let cap_s = Packet::open(&world.shadow, &world.back.b().name);
        for f in &to_server {
            inject.send(f);
            std::thread::sleep(Duration::from_micros(300));
        }
        std::thread::sleep(Duration::from_millis(100));
        let from_client = |fs: Vec<Vec<u8>>| -> Vec<Vec<u8>> {
            // The client's own ND/MLD chatter aside.
            fs.into_iter()
                .filter(|f| f.len() > 14 && f[6..12] == cl_mac && is_to_server(f))
                .collect()
        };
        let got_p = from_client(cap_p.frames_in());
        let got_s = from_client(cap_s.frames_in());
        let sent: Vec<Vec<u8>> = to_server.iter().map(|f| untag(f)).collect();
        assert!(
            got_p == sent,
            "{name}: the primary received {} frames, {} sent (or other bytes)",
            got_p.len(),
            to_server.len()
        );

        let mut model = Model {
            spec: MaskSpec::build(&DEFAULT_HEADERS, &["password", "token", "session"], b'*')
                .expect("spec"),
            flows: HashMap::new(),
        };
        let want: Vec<Vec<u8>> = sent
            .iter()
            .filter_map(|f| http_of(f).map(|h| model.clone_of(f, shadow_mac, h)))
            .collect();
        assert_eq!(got_s.len(), want.len(), "{name}: clones received");
        for (k, (g, w)) in got_s.iter().zip(&want).enumerate() {
            assert!(
                g == w,
                "{name}: clone #{k} differs from the model at byte {:?}",
                g.iter().zip(w).position(|(a, b)| a != b)
            );
        }
        // Independently of the model: masked header values whole in one segment are gone.
        let mut values = 0;
        for (orig, clone) in sent.iter().zip(&got_s) {
            if http_of(orig) != Some(true) {
                continue;
            }
            let fl = parse_flow(&orig[..]).expect("flow");
            let l4 = fl.l4_off as usize;
            let poff = l4 + (orig[l4 + 12] >> 4) as usize * 4;
            for (o, l) in header_values(&orig[poff..]) {
                values += 1;
                assert!(
                    clone[poff + o..poff + o + l].iter().all(|&b| b == b'*'),
                    "{name}: a header value reached the shadow: {:?}",
                    String::from_utf8_lossy(&orig[poff + o..poff + o + l])
                );
            }
        }
        let c = mirror.counters().expect("counters");
        assert_eq!(c.mask_failed, 0, "{name}: {c:?}");
        totals.0 += to_server.len();
        totals.1 += got_s.len();
        totals.2 += c.masked_bytes;
        totals.3 += values;
        eprintln!(
            "{name}: {} frames, {} clones, {} masked clones ({} bytes), {} unparseable, {} header values checked",
            to_server.len(),
            got_s.len(),
            c.masked,
            c.masked_bytes,
            c.unparseable,
            values
        );
        drop(mirror);
    }
    eprintln!(
        "all captures: {} frames, {} clones, {} bytes masked, {} header values checked",
        totals.0, totals.1, totals.2, totals.3
    );
    assert!(totals.3 > 0, "no masked header seen in any capture");
}
