//! Byte-range masking: `in_ranges` against a reference, and whole segments masked by a
//! ranges rule (with or without HTTP parsing) through `shadow_fuzz::mask_segment`.
//!
//! Input: byte 0 (bit 0 also parse HTTP, bit 1 "drop" fallback), byte 1 `n_ranges`, 16
//! bytes of ranges, 2 bytes scan limit, then the payload (seeds: TCP/UDP payloads of the
//! shared pcaps).
//!
//! Invariants: `in_ranges` equals the reference for every position (including ones past
//! the 16-bit range ends); every in-range byte of a sent segment is the fill byte; without
//! HTTP nothing else changes before the scan window and everything after it is masked (or
//! the segment dropped); length preserved; the input never written.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shadow_common::mask::{
    in_ranges, HttpState, MaskRule, MaskSpec, DEFAULT_HEADERS, FALLBACK_DROP, FALLBACK_MASK,
    MASK_HTTP, MASK_RANGES, MAX_RANGES, MAX_SCAN_LIMIT,
};
use shadow_fuzz::{mask_segment, Bytes};

fn ref_in(rule: &MaskRule, i: u32) -> bool {
    let n = (rule.n_ranges as usize).min(MAX_RANGES);
    rule.ranges[..n]
        .iter()
        .any(|&[off, len]| (off as u32..off as u32 + len as u32).contains(&i))
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let mode = b.u8();
    let http = mode & 1 != 0;
    let fallback = if mode & 2 != 0 {
        FALLBACK_DROP
    } else {
        FALLBACK_MASK
    };
    let n_ranges = b.u8();
    let mut ranges = [[0u16; 2]; MAX_RANGES];
    for r in ranges.iter_mut() {
        *r = [b.u16(), b.u16()];
    }
    let scan_limit = (b.u16() as u32 % MAX_SCAN_LIMIT) + 1;
    let payload = b.rest();
    let rule = MaskRule {
        flags: MASK_RANGES | if http { MASK_HTTP } else { 0 },
        fallback,
        n_ranges,
        ranges,
        ..MaskRule::default()
    };
    for i in 0..payload.len() as u32 + 4 {
        assert_eq!(in_ranges(&rule, i), ref_in(&rule, i), "position {i}");
    }
    for [off, len] in ranges {
        for i in [
            off as u32 + len as u32,
            (off as u32 + len as u32).wrapping_sub(1),
            65535,
            65536,
            131071,
            u32::MAX,
        ] {
            assert_eq!(in_ranges(&rule, i), ref_in(&rule, i), "position {i}");
        }
    }
    if payload.len() > MAX_SCAN_LIMIT as usize {
        return;
    }

    let spec =
        MaskSpec::build_with_limit(&DEFAULT_HEADERS, &["password"], b'*', scan_limit).unwrap();
    let orig = payload.to_vec();
    let mut out = payload.to_vec();
    let mut st = HttpState::default();
    let o = mask_segment(&mut st, &spec, &rule, &mut out);
    assert_eq!(payload, &orig[..]);
    assert_eq!(out.len(), payload.len());
    let beyond = payload.len() > scan_limit as usize;
    if !http {
        assert_eq!(o.sent, !(beyond && fallback == FALLBACK_DROP));
    }
    if !o.sent {
        return;
    }
    for (i, (&o, &p)) in out.iter().zip(payload).enumerate() {
        let i32 = i as u32;
        if ref_in(&rule, i32) || (!http && i32 >= scan_limit) {
            assert_eq!(o, b'*', "byte {i} left unmasked");
        } else if !http {
            assert_eq!(o, p, "byte {i} masked outside the ranges");
        }
    }
});
