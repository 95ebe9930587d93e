//! Source-address pseudonyms and the bulk fill of the "mask" fallback.
//!
//! Input: 16 bytes of key, 16 bytes of address, 16 bytes of prefix, a prefix length, a
//! fill byte, a start offset, then a payload.
//!
//! Invariants: `prf_v4`/`prf_v6` equal SipHash-2-4 of their documented inputs; a pseudonym is
//! the same for the same input, lies in the prefix, never has the all-zero (nor, for IPv4,
//! the all-ones) host part; flipping a key bit changes the 64-bit PRF output; the bulk
//! fill (`CsumDelta::replace_run` over chunks, as the datapath cuts them) leaves the length,
//! turns every filled byte into the fill byte (no input byte survives unless it already
//! equals it), never touches the input, and its checksum delta matches a full recompute.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shadow_common::mask::{apply_diff, fold16, CsumDelta};
use shadow_common::pseudo::{prf_v4, prf_v6, pseudonym_v4, pseudonym_v6, siphash24, PrfKey};
use shadow_fuzz::Bytes;

fn checksum(data: &[u8]) -> u16 {
    let mut s = 0u64;
    for (i, &b) in data.iter().enumerate() {
        s += (b as u64) << if i % 2 == 0 { 8 } else { 0 };
    }
    !fold16(s)
}

/// What `bpf_csum_diff(NULL, 0, buf, len4, 0)` returns (little-endian machine).
fn native_sum(data: &[u8]) -> u32 {
    let mut s = 0u64;
    for w in data.chunks(4) {
        let mut b = [0u8; 4];
        b[..w.len()].copy_from_slice(w);
        s += u32::from_le_bytes(b) as u64;
    }
    while s >> 32 != 0 {
        s = (s & 0xffff_ffff) + (s >> 32);
    }
    s as u32
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let kb: [u8; 16] = b.array();
    let key = PrfKey::from_bytes(kb);
    let addr: [u8; 16] = b.array();
    let prefix: [u8; 16] = b.array();
    let len = b.u8();
    let fill = b.u8();
    let start = b.u16() as usize;
    let payload = b.rest();

    // PRFs are SipHash of their documented inputs.
    let a4 = [addr[0], addr[1], addr[2], addr[3]];
    assert_eq!(prf_v4(&key, a4), siphash24(&key, &[4, a4[0], a4[1], a4[2], a4[3]]));
    let mut m6 = vec![6u8];
    m6.extend_from_slice(&addr);
    m6.push(1);
    assert_eq!(prf_v6(&key, addr, 1), siphash24(&key, &m6));
    let mut flipped = kb;
    flipped[(len as usize) % 16] ^= 1 << (fill % 8);
    assert_ne!(
        prf_v4(&PrfKey::from_bytes(flipped), a4),
        prf_v4(&key, a4),
        "a key bit changed nothing"
    );

    // IPv4 pseudonyms.
    let p4 = [prefix[0], prefix[1], prefix[2], prefix[3]];
    let l4 = len.min(30) as u32;
    let got = pseudonym_v4(&key, a4, p4, len);
    assert_eq!(got, pseudonym_v4(&key, a4, p4, len));
    let mask = if l4 == 0 { 0 } else { u32::MAX << (32 - l4) };
    let g = u32::from_be_bytes(got);
    assert_eq!(g & mask, u32::from_be_bytes(p4) & mask, "outside the prefix");
    assert!(g & !mask != 0 && g & !mask != !mask, "network or broadcast host part");

    // IPv6 pseudonyms.
    let got6 = pseudonym_v6(&key, addr, prefix, len);
    assert_eq!(got6, pseudonym_v6(&key, addr, prefix, len));
    assert!(shadow_fuzz::ref_prefix_eq(&got6, &prefix, len.min(126)));
    let l6 = len.min(126) as u32;
    let host = u128::from_be_bytes(got6) & (u128::MAX >> l6);
    assert_ne!(host, 0, "all-zero IPv6 host part");

    // The bulk fill, cut in chunks of at most 2048 bytes from `start`.
    if payload.is_empty() {
        return;
    }
    let original = payload.to_vec();
    let start = start % payload.len();
    let mut out = payload.to_vec();
    let mut d = CsumDelta::default();
    let mut at = start;
    while at < out.len() {
        let n = (out.len() - at).min(2048);
        d.replace_run(at as u32, n as u32, native_sum(&out[at..at + n]), fill);
        for x in &mut out[at..at + n] {
            *x = fill;
        }
        at += n;
    }
    assert_eq!(payload, &original[..], "the input was written");
    assert_eq!(out.len(), payload.len());
    assert_eq!(&out[..start], &payload[..start]);
    assert!(out[start..].iter().all(|&x| x == fill), "a byte survived the fill");
    let want = checksum(&out);
    let got = apply_diff(checksum(payload), d.diff());
    assert!(
        got == want || (got | want == 0xffff && (got == 0 || want == 0)),
        "checksum {got:#x} vs {want:#x}"
    );
});
