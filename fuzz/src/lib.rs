//! Helpers shared by the fuzz targets: a byte cursor that turns fuzzer input into choices,
//! a host model of how `shadow_mask` (shadow-ebpf/src/mirror.rs) drives the shared masking
//! state machine over one segment, and small reference implementations written
//! independently of `shadow-common` to compare against.

use shadow_common::mask::{
    in_ranges, mask_http, skip_body, HttpState, MaskRule, MaskSpec, FALLBACK_MASK, MASK_HTTP,
    MASK_RANGES, MAX_SCAN_LIMIT, ST_BODY_SKIP, ST_BROKEN,
};

/// Reads choices from fuzzer bytes; past the end every read is 0 (so every input is valid).
pub struct Bytes<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Bytes { data, pos: 0 }
    }
    pub fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 != 0
    }
    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            self.u8() as usize % n
        }
    }
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        for b in a.iter_mut() {
            *b = self.u8();
        }
        a
    }
    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        let r = self.data.get(self.pos..).unwrap_or(&[]);
        self.pos = self.data.len();
        r
    }
    pub fn exhausted(&self) -> bool {
        self.pos >= self.data.len()
    }
}

/// `shadow-ebpf/src/mirror.rs`: payload bytes per `bpf_loop` chunk and the chunk limit.
pub const CHUNK: u32 = 2048;
pub const MAX_CHUNKS: u32 = MAX_SCAN_LIMIT / CHUNK + 1;

/// What happened to one segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentOutcome {
    /// The clone is sent (false: the "drop" fallback applied).
    pub sent: bool,
    /// The fallback applied to at least one byte.
    pub fell_back: bool,
    /// Bytes changed.
    pub changed: u32,
}

/// Masks one segment's payload in place exactly as `shadow_mask`'s `chunk_cb`/`mask_cb` do
/// (chunks, body skipping at chunk starts, the scan window, the fallback), with `st` the
/// flow's parser state. `http`: the rule parses HTTP (on a TCP packet).
pub fn mask_segment(
    st: &mut HttpState,
    spec: &MaskSpec,
    rule: &MaskRule,
    payload: &mut [u8],
) -> SegmentOutcome {
    let http = rule.flags & MASK_HTTP != 0;
    let plen = payload.len() as u32;
    let limit = spec.scan_limit.min(MAX_SCAN_LIMIT);
    let mut off = 0u32;
    let mut all = false;
    let mut fell_back = false;
    let mut changed = 0u32;
    let mut chunks = 0;
    while chunks < MAX_CHUNKS {
        chunks += 1;
        if off >= plen {
            break;
        }
        if http && rule.flags & MASK_RANGES == 0 && st.st == ST_BODY_SKIP {
            off += skip_body(st, plen - off);
            if off >= plen {
                break;
            }
        }
        if off >= limit && !all {
            if http {
                st.st = ST_BROKEN;
            }
            fell_back = true;
            if rule.fallback != FALLBACK_MASK {
                break;
            }
            all = true;
        }
        let rem = plen - off;
        let mut n = rem.min(CHUNK);
        if !all && off < limit && n > limit - off {
            n = limit - off;
        }
        if n == 0 {
            break;
        }
        for pos in off..off + n {
            let b = payload[pos as usize];
            let mut m = all || (rule.flags & MASK_RANGES != 0 && in_ranges(rule, pos));
            let mut out = spec.fill;
            if http {
                if st.st != ST_BROKEN {
                    if let Some(t) = mask_http(st, spec, b) {
                        m = true;
                        out = t;
                    }
                }
                if st.st == ST_BROKEN {
                    fell_back = true;
                    if rule.fallback == FALLBACK_MASK {
                        m = true;
                    }
                }
            }
            if m && b != out {
                payload[pos as usize] = out;
                changed += 1;
            }
        }
        off += n;
    }
    if off < plen && !all && !(http && st.st == ST_BODY_SKIP) {
        fell_back = true;
        if http {
            st.st = ST_BROKEN;
        }
    }
    SegmentOutcome {
        sent: !(fell_back && rule.fallback != FALLBACK_MASK),
        fell_back,
        changed,
    }
}

/// Splits `0..len` at the given cut points (any order, clamped, duplicates allowed).
pub fn segments(len: usize, cuts: &mut [usize]) -> Vec<(usize, usize)> {
    for c in cuts.iter_mut() {
        *c = (*c).min(len);
    }
    cuts.sort_unstable();
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for &c in cuts.iter() {
        out.push((start, c));
        start = c;
    }
    out.push((start, len));
    out
}

/// Reference: do the first `prefix_len` bits of `a` and `b` agree? (`prefix_len` above 128
/// compares all 128.)
pub fn ref_prefix_eq(a: &[u8; 16], b: &[u8; 16], prefix_len: u8) -> bool {
    let bits = (prefix_len as u32).min(128);
    if bits == 0 {
        return true;
    }
    let x = u128::from_be_bytes(*a) ^ u128::from_be_bytes(*b);
    x >> (128 - bits) == 0
}

/// Lower-cased, percent-decoded (`+` as space) parameter name, decoded the way
/// `shadow_common::mask` documents it: `%XX` with two hex digits is one byte; `%` followed by
/// a non-hex byte is taken literally together with that byte; `%X` followed by a non-hex
/// byte is a NUL (consuming it).
pub fn ref_decode_name(raw: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'%' {
            match raw.get(i + 1) {
                None => break, // escape pending at the end: nothing added yet
                Some(&h) => match hex(h) {
                    None => {
                        out.push(b'%');
                        out.push(h);
                        i += 2;
                        continue;
                    }
                    Some(hi) => match raw.get(i + 2) {
                        None => break,
                        Some(&l) => {
                            out.push(hex(l).map(|lo| hi << 4 | lo).unwrap_or(0));
                            i += 3;
                            continue;
                        }
                    },
                },
            }
        }
        out.push(if b == b'+' { b' ' } else { b });
        i += 1;
    }
    out.iter().map(|c| c.to_ascii_lowercase()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_reference() {
        assert_eq!(ref_decode_name(b"Pass%77ord"), b"password");
        assert_eq!(ref_decode_name(b"pass+word"), b"pass word");
        assert_eq!(ref_decode_name(b"a%zb"), b"a%zb");
        assert_eq!(ref_decode_name(b"a%7zb"), b"a\0b");
    }

    #[test]
    fn segments_cover_everything() {
        assert_eq!(
            segments(5, &mut [3, 9, 1]),
            [(0, 1), (1, 3), (3, 5), (5, 5)]
        );
    }

    #[test]
    fn prefix_reference() {
        let a = [0xffu8; 16];
        let mut b = a;
        b[15] = 0xfe;
        assert!(ref_prefix_eq(&a, &b, 127));
        assert!(!ref_prefix_eq(&a, &b, 128));
        assert!(!ref_prefix_eq(&a, &b, 200));
    }
}
