//! Query-string and form-body parameter masking against an exact reference: the expected
//! output is computed independently (split at separators, name decoded by
//! `shadow_fuzz::ref_decode_name`, value masked when the name is a spec name), so both
//! leaks and over-masking are found.
//!
//! Input: byte 0 (bit 0 form body instead of query, bit 1 token mode), byte 1 the
//! parameter subset, byte 2 the number of cuts (low 2 bits) and 2 bytes per cut, then the
//! parameter string: raw bytes (seeds: query strings and form bodies of the shared pcaps),
//! or in token mode one token per byte (names, escapes, separators).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shadow_common::mask::{
    HttpState, MaskRule, MaskSpec, FALLBACK_MASK, MASK_HTTP, MAX_SCAN_LIMIT,
};
use shadow_fuzz::{mask_segment, ref_decode_name, segments, Bytes};

const PARAM_POOL: [&str; 6] = ["password", "token", "session", "pass word", "api_key", "p"];
const TOKENS: [&[u8]; 24] = [
    b"password",
    b"token",
    b"session",
    b"pass",
    b"word",
    b"api_key",
    b"p",
    b"+",
    b"%20",
    b"%70",
    b"%50",
    b"%41",
    b"%6f",
    b"=",
    b"&",
    b";",
    b"%",
    b"%z",
    b"%7",
    b"a",
    b"TOKEN",
    b"v4lue",
    b"%3D",
    b"%26",
];

/// Byte ranges of the values the reference masks in `params`.
fn ref_masked_values(params: &[u8], form: bool, spec_names: &[&str]) -> Vec<(usize, usize)> {
    let is_sep = |c: u8| c == b'&' || (!form && c == b';');
    let mut out = Vec::new();
    let mut start = 0;
    while start <= params.len() {
        let end = params[start..]
            .iter()
            .position(|&c| is_sep(c))
            .map_or(params.len(), |p| start + p);
        let elem = &params[start..end];
        // The name ends at the first '=' not inside a percent escape.
        let mut i = 0;
        let mut eq = None;
        while i < elem.len() {
            match elem[i] {
                b'%' => {
                    let hex = elem.get(i + 1).is_some_and(|c| c.is_ascii_hexdigit());
                    i += if hex { 3 } else { 2 };
                }
                b'=' => {
                    eq = Some(i);
                    break;
                }
                _ => i += 1,
            }
        }
        if let Some(eq) = eq {
            let name = ref_decode_name(&elem[..eq]);
            if spec_names.iter().any(|n| n.as_bytes() == &name[..]) {
                out.push((start + eq + 1, end));
            }
        }
        start = end + 1;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let mode = b.u8();
    let form = mode & 1 != 0;
    let pmask = b.u8();
    let names: Vec<&'static str> = (0..6)
        .filter(|i| pmask >> i & 1 != 0)
        .map(|i| PARAM_POOL[i])
        .collect();
    let n_cuts = (b.u8() & 3) as usize;
    let cut_seeds: Vec<u16> = (0..n_cuts).map(|_| b.u16()).collect();
    let mut params: Vec<u8> = if mode & 2 != 0 {
        b.rest()
            .iter()
            .flat_map(|&t| TOKENS[t as usize % TOKENS.len()].iter().copied())
            .collect()
    } else {
        b.rest().to_vec()
    };
    if !form {
        // What cannot appear inside a query string (it ends the request target or the line).
        for c in params.iter_mut() {
            if matches!(*c, b' ' | b'#' | b'\r' | b'\n') {
                *c = b'_';
            }
        }
    }
    let spec = MaskSpec::build_with_limit(&[], &names, b'*', MAX_SCAN_LIMIT).unwrap();
    let (head, tail): (Vec<u8>, &[u8]) = if form {
        (
            format!(
                "POST /f HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\n\
                 Content-Length: {}\r\n\r\n",
                params.len()
            )
            .into_bytes(),
            b"GET /n?password=s HTTP/1.1\r\n\r\n",
        )
    } else {
        (
            b"GET /p?".to_vec(),
            b" HTTP/1.1\r\nHost: h\r\n\r\nGET /n?password=s HTTP/1.1\r\n\r\n",
        )
    };
    let mut input = head.clone();
    input.extend_from_slice(&params);
    input.extend_from_slice(tail);
    if input.len() > MAX_SCAN_LIMIT as usize {
        return;
    }

    let mut expect = input.clone();
    for (s, e) in ref_masked_values(&params, form, &names) {
        expect[head.len() + s..head.len() + e].fill(b'*');
    }
    if names.contains(&"password") {
        // The request after the parameters, to show the parser is back in sync.
        let at = input.len() - tail.len() + tail.windows(3).position(|w| w == b"=s ").unwrap() + 1;
        expect[at] = b'*';
    }

    let rule = MaskRule {
        flags: MASK_HTTP,
        fallback: FALLBACK_MASK,
        ..MaskRule::default()
    };
    let mut cuts: Vec<usize> = cut_seeds
        .iter()
        .map(|&c| c as usize % (input.len() + 1))
        .collect();
    let mut out = input.clone();
    let mut st = HttpState::default();
    for (s, e) in segments(input.len(), &mut cuts) {
        let o = mask_segment(&mut st, &spec, &rule, &mut out[s..e]);
        assert!(
            !o.fell_back,
            "well-formed input fell back: {:?}",
            String::from_utf8_lossy(&input)
        );
    }
    assert_eq!(
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&expect),
        "names {names:?}, input {:?}",
        String::from_utf8_lossy(&input)
    );
    assert_eq!(out, expect);
});
