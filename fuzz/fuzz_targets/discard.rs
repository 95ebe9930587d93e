//! The Output Discard allowlist: `allowed`, `AllowRule::matches` and `Dest::is_loopback`
//! against references built on `std::net` and 128-bit prefix arithmetic.
//!
//! Input: 8 bytes `DiscardConfig`, a destination (20 bytes), then up to 16 rules of 24
//! bytes each; half the rules are aimed at the destination's address.
#![no_main]

use std::net::{Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use shadow_common::discard::{allowed, AllowRule, Dest, DiscardConfig, FLAG_ALLOW_LOOPBACK};
use shadow_fuzz::{ref_prefix_eq, Bytes};

fn ref_loopback(d: &Dest) -> bool {
    if d.family == 4 {
        return Ipv4Addr::new(d.addr[0], d.addr[1], d.addr[2], d.addr[3]).is_loopback();
    }
    let a = Ipv6Addr::from(d.addr);
    a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
}

fn ref_matches(r: &AllowRule, d: &Dest) -> bool {
    r.family == d.family
        && (r.proto == 0 || r.proto == d.proto)
        && (r.port_lo..=r.port_hi).contains(&d.port)
        && ref_prefix_eq(&r.addr, &d.addr, r.prefix_len)
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let cfg = DiscardConfig {
        n_allow: b.u32() % 24,
        flags: b.u32(),
    };
    let d = Dest {
        addr: b.array(),
        port: b.u16(),
        family: [4, 6, b.u8()][b.below(3)],
        proto: b.u8(),
    };
    let mut rules = Vec::new();
    while !b.exhausted() && rules.len() < 16 {
        let aim = b.u8();
        let mut addr: [u8; 16] = b.array();
        if aim & 1 != 0 {
            addr = d.addr;
            addr[(aim >> 1) as usize % 16] ^= b.u8() & (aim >> 4);
        }
        let family = if aim & 0x20 != 0 {
            d.family
        } else {
            [4, 6][b.below(2)]
        };
        let r = AllowRule {
            addr,
            family,
            prefix_len: b.u8(),
            proto: b.pick(&[0, 6, 17, d.proto]),
            _pad: 0,
            port_lo: if aim & 0x40 != 0 { d.port } else { b.u16() },
            port_hi: if aim & 0x80 != 0 { d.port } else { b.u16() },
        };
        assert_eq!(r.matches(&d), ref_matches(&r, &d), "{r:?} {d:?}");
        rules.push(r);
    }
    assert_eq!(d.is_loopback(), ref_loopback(&d), "{d:?}");
    let expect = (cfg.flags & FLAG_ALLOW_LOOPBACK != 0 && ref_loopback(&d))
        || rules
            .iter()
            .take(cfg.n_allow as usize)
            .any(|r| ref_matches(r, &d));
    assert_eq!(allowed(&cfg, &rules, &d), expect);
});
