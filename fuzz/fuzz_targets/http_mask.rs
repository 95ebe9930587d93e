//! HTTP masking across TCP segments: `mask_http`/`skip_body` driven per segment the way
//! `shadow_mask` drives them (`shadow_fuzz::mask_segment`), the payload cut into segments at
//! fuzzer-chosen points.
//!
//! Input: byte 0 (bit 0 structured, bit 1 "drop" fallback, bit 2 fill `#` instead of `*`,
//! bit 3 keyed tokens instead of the fill byte, bits 4-7 part of the token key),
//! bytes 1-2 the scan limit, byte 3 the masked-header subset, byte 4 the parameter subset,
//! byte 5 the number of cuts (low 3 bits) and 2 bytes per cut, then either the raw payload
//! (seeds: client payloads of the HTTP flows of the shared pcaps) or the bytes that drive
//! a generator of well-formed requests carrying canary values in masked headers, query
//! parameters and form bodies.
//!
//! Invariants: no panic; length preserved; the input is never written; no canary byte
//! survives in a sent segment; raw payloads mask the same however they are cut (when no
//! segment exceeds the scan window; otherwise a superset of the bytes). With tokens: the
//! bytes changed are among those the fill byte would replace, a canary letter or digit
//! becomes one of its class, and the cut-invariance holds for the tokens too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shadow_common::mask::{
    HttpState, MaskRule, MaskSpec, FALLBACK_DROP, FALLBACK_MASK, MASK_HTTP, MAX_SCAN_LIMIT,
};
use shadow_common::pseudo::PrfKey;
use shadow_fuzz::{mask_segment, segments, Bytes};

const HEADER_POOL: [&str; 8] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "x-auth-token",
    "content-type",
    "x-b3",
];
const OTHER_HEADERS: [&str; 6] = [
    "Host",
    "Accept",
    "Cookie2",
    "X-Api-Key-Id",
    "Authorization-X",
    "X-Forwarded-For",
];
const PARAM_POOL: [&str; 6] = ["password", "token", "session", "pass word", "api_key", "p"];
const OTHER_PARAMS: [&str; 6] = ["user", "q", "passwordx", "xpassword", "tokens", "pp"];
/// Canary bytes: never a fill byte, a separator or whitespace.
const CANARY: &[u8] = b"CANRYcanry0123456789-_.~!$'(),@:/";
const PLAIN: &[u8] = b"abcdefghij0123456789-_.";

struct Gen<'a> {
    b: Bytes<'a>,
    out: Vec<u8>,
    /// Byte positions holding canary values.
    canary: Vec<usize>,
    headers: Vec<&'static str>,
    params: Vec<&'static str>,
}

impl Gen<'_> {
    fn push(&mut self, s: &[u8]) {
        self.out.extend_from_slice(s);
    }
    fn eol(&mut self) {
        if self.b.u8() & 7 == 0 {
            self.push(b"\n");
        } else {
            self.push(b"\r\n");
        }
    }
    fn canary(&mut self, extra: &[u8]) {
        let n = 1 + self.b.below(16);
        for i in 0..n {
            let c = if i > 0 && !extra.is_empty() && self.b.u8() & 3 == 0 {
                self.b.pick(extra)
            } else {
                self.b.pick(CANARY)
            };
            self.canary.push(self.out.len());
            self.out.push(c);
        }
    }
    fn plain(&mut self, max: usize) {
        let n = self.b.below(max + 1);
        for _ in 0..n {
            let c = self.b.pick(PLAIN);
            self.out.push(c);
        }
    }
    fn cased(&mut self, name: &str) {
        for c in name.bytes() {
            let c = if self.b.bool() {
                c.to_ascii_uppercase()
            } else {
                c
            };
            self.out.push(c);
        }
    }
    /// A parameter name from the spec, percent-encoded, cased and `+`-spaced at random.
    fn encoded_name(&mut self, name: &str) {
        for c in name.bytes() {
            let c = if self.b.bool() {
                c.to_ascii_uppercase()
            } else {
                c
            };
            match self.b.u8() & 3 {
                0 => {
                    let s = if self.b.bool() {
                        format!("%{c:02X}")
                    } else {
                        format!("%{c:02x}")
                    };
                    self.push(s.as_bytes());
                }
                _ if c == b' ' => self.out.push(b'+'),
                _ => self.out.push(c),
            }
        }
    }
    /// `k` parameters separated by `seps`.
    fn params(&mut self, seps: &[u8], value_extra: &[u8]) {
        let k = 1 + self.b.below(4);
        for i in 0..k {
            if i > 0 {
                let s = self.b.pick(seps);
                self.out.push(s);
            }
            match self.b.u8() % 4 {
                0 | 1 if !self.params.is_empty() => {
                    let name = self.b.pick(&self.params);
                    self.encoded_name(name);
                    self.out.push(b'=');
                    self.canary(value_extra);
                }
                2 => {} // an empty element
                _ => {
                    let name = self.b.pick(&OTHER_PARAMS);
                    self.cased(name);
                    if self.b.bool() {
                        self.out.push(b'=');
                        self.plain(6);
                    }
                }
            }
        }
    }
    fn request(&mut self) {
        for _ in 0..self.b.below(3) {
            self.eol();
        }
        let method = self.b.pick(&["GET", "POST", "PUT", "DELETE", "M-SEARCH"]);
        self.push(method.as_bytes());
        self.push(b" /");
        self.plain(8);
        if self.b.bool() {
            self.push(b"?");
            self.params(b"&;", b"=%");
            if self.b.u8() & 7 == 0 {
                self.push(b"#frag=");
                self.plain(4);
            }
        }
        self.push(b" HTTP/1.1");
        self.eol();
        let n_headers = self.b.below(6);
        for _ in 0..n_headers {
            let masked = !self.headers.is_empty() && self.b.bool();
            if masked {
                let name = self.b.pick(&self.headers);
                self.cased(name);
            } else {
                let name = self.b.pick(&OTHER_HEADERS);
                self.push(name.as_bytes());
            }
            self.push(b":");
            for _ in 0..self.b.below(3) {
                let w = self.b.pick(b" \t");
                self.out.push(w);
            }
            if masked {
                self.canary(b" =;&%\t");
                if self.b.u8() & 7 == 0 {
                    // obs-fold continuation of the masked value.
                    self.eol();
                    let w = self.b.pick(b" \t");
                    self.out.push(w);
                    self.canary(b" =;");
                }
            } else {
                self.plain(10);
            }
            self.eol();
        }
        let mut body = Vec::new();
        let mut body_canary = Vec::new();
        if method != "GET" && self.b.bool() {
            if self.b.bool() {
                self.push(b"Content-Type: ");
                self.cased("application/x-www-form-urlencoded");
                if self.b.bool() {
                    self.push(b"; charset=utf-8");
                }
                self.eol();
                // Generate the form into `out`, then move it into the body.
                let start = self.out.len();
                let c0 = self.canary.len();
                self.params(b"&", b"=;%");
                body = self.out.split_off(start);
                body_canary = self.canary.split_off(c0);
                for p in body_canary.iter_mut() {
                    *p -= start;
                }
            } else {
                for _ in 0..self.b.below(40) {
                    // Opaque bytes, skipped by length (may look like headers or forms).
                    let c = self.b.pick(b"Cookie: password=x&\r\n ");
                    body.push(c);
                }
            }
            let cl = format!("Content-Length: {}", body.len());
            self.push(cl.as_bytes());
            self.eol();
        }
        self.eol();
        let base = self.out.len();
        self.out.extend_from_slice(&body);
        self.canary.extend(body_canary.iter().map(|p| p + base));
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let mode = b.u8();
    let structured = mode & 1 != 0;
    let fallback = if mode & 2 != 0 {
        FALLBACK_DROP
    } else {
        FALLBACK_MASK
    };
    let fill = if mode & 4 != 0 { b'#' } else { b'*' };
    let scan_limit = (b.u16() as u32 % MAX_SCAN_LIMIT) + 1;
    let hmask = b.u8();
    let pmask = b.u8();
    let headers: Vec<&'static str> = (0..8)
        .filter(|i| hmask >> i & 1 != 0)
        .map(|i| HEADER_POOL[i])
        .collect();
    let params: Vec<&'static str> = (0..6)
        .filter(|i| pmask >> i & 1 != 0)
        .map(|i| PARAM_POOL[i])
        .collect();
    let fill_spec = MaskSpec::build_with_limit(&headers, &params, fill, scan_limit).unwrap();
    let tokens = mode & 8 != 0;
    let spec = if tokens {
        fill_spec.with_tokens(PrfKey {
            k0: u64::from(mode >> 4),
            k1: 0x5eed,
        })
    } else {
        fill_spec
    };
    let n_cuts = (b.u8() & 7) as usize;
    let cut_seeds: Vec<u16> = (0..n_cuts).map(|_| b.u16()).collect();

    let (input, canary) = if structured {
        let mut g = Gen {
            b,
            out: Vec::new(),
            canary: Vec::new(),
            headers,
            params,
        };
        let n = 1 + g.b.below(3);
        for _ in 0..n {
            g.request();
        }
        if g.b.u8() & 3 == 0 {
            // Trailing bytes of anything (no canaries in them).
            let rest = g.b.rest();
            g.out.extend_from_slice(rest);
        }
        (g.out, g.canary)
    } else {
        (b.rest().to_vec(), Vec::new())
    };

    let rule = MaskRule {
        flags: MASK_HTTP,
        fallback,
        ..MaskRule::default()
    };
    let mut cuts: Vec<usize> = cut_seeds
        .iter()
        .map(|&c| c as usize % (input.len() + 1))
        .collect();
    let segs = segments(input.len(), &mut cuts);

    let orig = input.clone();
    let mut out = input.clone();
    let mut sent = vec![true; input.len()];
    let mut st = HttpState::default();
    let mut all_within_window = true;
    for &(s, e) in &segs {
        let o = mask_segment(&mut st, &spec, &rule, &mut out[s..e]);
        if e - s > scan_limit as usize {
            all_within_window = false;
        }
        if !o.sent {
            sent[s..e].iter_mut().for_each(|x| *x = false);
        }
    }
    assert_eq!(input, orig, "the input was written");
    assert_eq!(out.len(), input.len(), "length changed");
    // The same cuts with the fill byte: what must be masked.
    let filled = if tokens {
        let mut f = input.clone();
        let mut fst = HttpState::default();
        for &(s, e) in &segs {
            mask_segment(&mut fst, &fill_spec, &rule, &mut f[s..e]);
        }
        for i in 0..input.len() {
            if out[i] != input[i] {
                assert_eq!(f[i], fill, "a token changed byte {i}, which is not masked");
            }
        }
        f
    } else {
        out.clone()
    };
    for &p in &canary {
        if sent[p] {
            assert_eq!(
                filled[p],
                fill,
                "canary byte {p} survived: {:?}\n-> {:?}",
                String::from_utf8_lossy(&input),
                String::from_utf8_lossy(&filled)
            );
            if tokens && out[p] != fill {
                let (i, o) = (input[p], out[p]);
                let same_class = (i.is_ascii_digit() && o.is_ascii_digit())
                    || (i.is_ascii_lowercase() && o.is_ascii_lowercase())
                    || (i.is_ascii_uppercase() && o.is_ascii_uppercase())
                    || (!i.is_ascii_alphanumeric() && (o == i || o.is_ascii_alphanumeric()));
                assert!(same_class, "canary byte {p} {i:?} became {o:?}");
            }
        }
    }

    // Cut-invariance: one segment with the widest window is the reference.
    let wide = MaskSpec {
        scan_limit: MAX_SCAN_LIMIT,
        ..spec
    };
    if input.len() > MAX_SCAN_LIMIT as usize {
        return;
    }
    let mut reference = input.clone();
    let mut ref_st = HttpState::default();
    let ref_o = mask_segment(&mut ref_st, &wide, &rule, &mut reference);
    let ref_rule_mask = MaskRule {
        fallback: FALLBACK_MASK,
        ..rule
    };
    // The reference with the "mask" fallback shows which bytes the fallback covers.
    let mut ref_masked = input.clone();
    let mut st2 = HttpState::default();
    mask_segment(&mut st2, &wide, &ref_rule_mask, &mut ref_masked);
    for i in 0..input.len() {
        if !sent[i] {
            continue;
        }
        if all_within_window {
            assert_eq!(
                out[i], ref_masked[i],
                "byte {i} differs from the uncut reference"
            );
        } else if ref_masked[i] == fill && !tokens {
            assert_eq!(out[i], fill, "byte {i} masked uncut but not when cut");
        }
    }
    if all_within_window {
        assert_eq!(st, ref_st, "final parser state depends on the cuts");
        if fallback == FALLBACK_MASK {
            assert!(ref_o.sent);
        }
    }
});
