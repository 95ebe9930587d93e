//! The checksum helpers: bytes replaced in place with `CsumDelta` bookkeeping, the stored
//! checksum fixed with `apply_diff` (network order) and with the kernel's
//! `inet_proto_csum_replace_by_diff` arithmetic on `kernel_diff` (words as loaded from
//! packet memory, little-endian); both must equal a full recompute (as ones-complement
//! values: 0x0000 and 0xffff are the same number).
//!
//! Input: byte 0 the header length (even, up to 60: the data before the payload that the
//! checksum also covers), 1 the fill byte, 2 the number of replacements, 2 bytes each
//! (position and whether to replace), then header and payload (seeds: TCP/UDP segments of
//! the shared pcaps).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shadow_common::mask::{apply_diff, fold16, CsumDelta};
use shadow_fuzz::Bytes;

/// Internet checksum of `data` (RFC 1071), computed from scratch.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in data.chunks(2) {
        let w = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum = sum.wrapping_add(w as u32);
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn same(a: u16, b: u16) -> bool {
    a == b || (a == 0 && b == 0xffff) || (a == 0xffff && b == 0)
}

/// The kernel: `*sum = csum_fold(csum_add(diff, ~csum_unfold(*sum)))` on the raw field.
fn kernel_replace_by_diff(field: [u8; 2], diff: u32) -> [u8; 2] {
    let sum = u16::from_le_bytes(field);
    let (s, carry) = diff.overflowing_add(!sum as u32);
    let s = s.wrapping_add(carry as u32);
    let mut f = (s & 0xffff) + (s >> 16);
    f = (f & 0xffff) + (f >> 16);
    (!(f as u16)).to_le_bytes()
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let hlen = (b.u8() as usize % 31) * 2;
    let fill = b.u8();
    let n = b.u8() as usize;
    let picks: Vec<(u8, u8)> = (0..n).map(|_| (b.u8(), b.u8())).collect();
    let rest = b.rest();
    if rest.len() < hlen {
        return;
    }
    let mut seg = rest.to_vec();
    let before = checksum(&seg);
    let plen = seg.len() - hlen;
    let mut d = CsumDelta::default();
    // Positions visited in increasing order, each at most once (as the datapath does).
    let mut replace = vec![false; plen];
    for &(p, on) in &picks {
        if plen > 0 && on & 1 != 0 {
            replace[(p as usize * 7919 + on as usize) % plen] = true;
        }
    }
    if n == 255 {
        replace.iter_mut().for_each(|r| *r = true);
    }
    for (i, r) in replace.iter().enumerate() {
        let old = seg[hlen + i];
        if *r && old != fill {
            d.replace(i as u32, old, fill);
            seg[hlen + i] = fill;
        }
    }
    let after = checksum(&seg);
    let got = apply_diff(before, d.diff());
    assert!(
        same(got, after),
        "apply_diff {got:#06x}, recomputed {after:#06x}"
    );
    let field = before.to_be_bytes();
    let k = u16::from_be_bytes(kernel_replace_by_diff(field, d.kernel_diff()));
    assert!(
        same(k, after),
        "kernel path {k:#06x}, recomputed {after:#06x}"
    );

    // fold16 against folding until it fits, for sums of the data's words.
    let big = u64::from_le_bytes(core::array::from_fn(|i| *rest.get(i).unwrap_or(&0)));
    let mut r = big;
    while r > 0xffff {
        r = (r & 0xffff) + (r >> 16);
    }
    assert_eq!(fold16(big) as u64, r);
});
