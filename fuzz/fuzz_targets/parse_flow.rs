//! `parse_flow` over arbitrary frames, then rule matching, flow hashing and sampling.
//!
//! Input: `n` (low 2 bits of byte 0: 0..=3 rules), `n` rules of 9 choice bytes, then the
//! Ethernet frame. Seeds (fuzz/seeds/parse_flow) are `0x00` + a frame from the shared pcaps.
//!
//! Invariants: no panic; every offset the flow reports lies inside the frame and names the
//! bytes the flow holds; a longer frame (bytes appended) parses to the same flow; rule
//! matching equals an independent reference; sampling is monotone in the rate.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shadow_common::mirror::{
    first_match, flow_hash, parse_flow, sampled, Flow, MirrorRule, ETH_P_8021AD, ETH_P_8021Q,
    IPPROTO_TCP, IPPROTO_UDP,
};
use shadow_fuzz::{ref_prefix_eq, Bytes};

fn check_offsets(frame: &[u8], f: &Flow) {
    assert!(f.family == 4 || f.family == 6, "{f:?}");
    let l3 = f.l3_off as usize;
    // Ethernet, plus one or two VLAN tags.
    assert!([14, 18, 22].contains(&l3), "{f:?}");
    let et = u16::from_be_bytes([frame[12], frame[13]]);
    assert_eq!(
        l3 == 14,
        et != ETH_P_8021Q && et != ETH_P_8021AD,
        "VLAN handling: {f:?}"
    );
    let ip_len = if f.family == 4 { 20 } else { 40 };
    assert!(l3 + ip_len <= frame.len(), "IP header outside the frame");
    let ip = &frame[l3..];
    assert_eq!(ip[0] >> 4, f.family);
    if f.family == 4 {
        assert!((ip[0] & 0x0f) >= 5);
        assert_eq!(f.proto, ip[9]);
        assert_eq!(&f.src[..4], &ip[12..16]);
        assert_eq!(&f.dst[..4], &ip[16..20]);
        assert_eq!(f.src[4..], [0; 12]);
        assert_eq!(f.dst[4..], [0; 12]);
    } else {
        assert_eq!(&f.src[..], &ip[8..24]);
        assert_eq!(&f.dst[..], &ip[24..40]);
    }
    if f.has_ports {
        assert!(f.proto == IPPROTO_TCP || f.proto == IPPROTO_UDP);
        let l4 = f.l4_off as usize;
        assert!(l4 >= l3 + ip_len, "transport header inside the IP header");
        assert!(l4 + 4 <= frame.len(), "ports outside the frame");
        if f.family == 4 {
            assert_eq!(l4, l3 + (ip[0] & 0x0f) as usize * 4);
        }
        assert_eq!(f.sport, u16::from_be_bytes([frame[l4], frame[l4 + 1]]));
        assert_eq!(f.dport, u16::from_be_bytes([frame[l4 + 2], frame[l4 + 3]]));
        let flags = if f.proto == IPPROTO_TCP {
            frame.get(l4 + 13).copied().unwrap_or(0)
        } else {
            0
        };
        assert_eq!(f.tcp_flags, flags);
    } else {
        assert_eq!(
            (f.sport, f.dport, f.l4_off, f.tcp_flags),
            (0, 0, 0, 0),
            "{f:?}"
        );
    }
}

/// Reference rule matcher, written from the field documentation of `MirrorRule`.
fn ref_matches(r: &MirrorRule, f: &Flow) -> bool {
    let family_ok = r.family == 0 || r.family == f.family;
    let proto_ok = r.proto == 0 || r.proto == f.proto;
    let any_port = r.port_lo == 0 && r.port_hi == u16::MAX;
    let port_ok = any_port || (f.has_ports && (r.port_lo..=r.port_hi).contains(&f.dport));
    let addr_ok = r.family == 0 || ref_prefix_eq(&r.addr, &f.dst, r.prefix_len);
    family_ok && proto_ok && port_ok && addr_ok
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let n = (b.u8() & 3) as usize;
    let mut choices = Vec::with_capacity(n);
    for _ in 0..n {
        choices.push(b.array::<9>());
    }
    let frame = b.rest();
    let orig = frame.to_vec();
    let flow = parse_flow(frame);
    assert_eq!(frame, &orig[..], "parsing never writes");
    let Some(flow) = flow else {
        return;
    };
    check_offsets(frame, &flow);

    // A longer frame (Ethernet padding, say): the same flow (ports and TCP flags cut off by
    // the end of the frame may become known).
    let mut longer = frame.to_vec();
    longer.extend_from_slice(&[0xa5; 64]);
    let again = parse_flow(&longer[..]).expect("a longer frame still parses");
    let mut expect = flow;
    if !flow.has_ports && (flow.proto == IPPROTO_TCP || flow.proto == IPPROTO_UDP) {
        // Ports cut off: appended bytes may complete the transport header.
        expect.sport = again.sport;
        expect.dport = again.dport;
        expect.has_ports = again.has_ports;
        expect.l4_off = again.l4_off;
        expect.tcp_flags = again.tcp_flags;
    } else if flow.has_ports
        && flow.proto == IPPROTO_TCP
        && flow.l4_off as usize + 13 >= frame.len()
    {
        expect.tcp_flags = again.tcp_flags;
    }
    assert_eq!(again, expect, "appending bytes changed the parse");

    // Rules: built from the choice bytes, half of them aimed at the flow's destination.
    let rules: Vec<MirrorRule> = choices
        .iter()
        .map(|c| {
            let mut addr = [0u8; 16];
            if c[0] & 1 != 0 {
                addr = flow.dst;
                addr[(c[1] & 15) as usize] ^= c[2];
            } else {
                addr[..3].copy_from_slice(&c[1..4]);
            }
            let family = [0, 4, 6, c[3]][(c[0] >> 1 & 3) as usize];
            let (port_lo, port_hi) = match c[0] >> 3 & 3 {
                0 => (0, u16::MAX),
                1 => (flow.dport, flow.dport),
                2 => (flow.dport.saturating_sub(c[4] as u16), flow.dport),
                _ => (
                    u16::from_le_bytes([c[4], c[5]]),
                    u16::from_le_bytes([c[6], c[7]]),
                ),
            };
            let proto = [0, IPPROTO_TCP, IPPROTO_UDP, c[5]][(c[0] >> 5 & 3) as usize];
            MirrorRule {
                addr,
                family,
                prefix_len: c[8],
                proto,
                _pad: 0,
                port_lo,
                port_hi,
            }
        })
        .collect();
    for r in &rules {
        assert_eq!(r.matches(&flow), ref_matches(r, &flow), "{r:?} {flow:?}");
    }
    for k in 0..=rules.len() + 1 {
        let expect = rules.iter().take(k).position(|r| ref_matches(r, &flow));
        assert_eq!(first_match(&rules, k, &flow), expect);
    }

    // Hash and sampling: deterministic, monotone in the rate, all and nothing exact.
    let seed = u32::from_le_bytes([data[0], orig.len() as u8, 7, 9]);
    let h = flow_hash(&flow, seed);
    let mut flagged = flow;
    flagged.tcp_flags ^= 0xff;
    assert_eq!(
        h,
        flow_hash(&flagged, seed),
        "the hash ignores the TCP flags"
    );
    let lo = u32::from_le_bytes([orig.first().copied().unwrap_or(0), 1, 2, 0]) % 1_000_001;
    let hi = lo.saturating_add(h % 1000);
    assert!(!sampled(h, lo) || sampled(h, hi), "sampling not monotone");
    assert!(!sampled(h, 0));
    assert!(sampled(h, 1_000_000));
});
