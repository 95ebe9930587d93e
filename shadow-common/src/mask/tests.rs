extern crate std;
use std::{borrow::ToOwned, format, string::String, vec::Vec};

use super::*;

fn spec() -> MaskSpec {
    MaskSpec::build(
        &DEFAULT_HEADERS,
        &["password", "token", "session", "pass word"],
        b'*',
    )
    .unwrap()
}

/// Masks `segments` in order through one state, applying the fallback "mask" to bytes the
/// parser cannot follow; returns the concatenated output and the final state.
fn run_segments(spec: &MaskSpec, segments: &[&[u8]]) -> (Vec<u8>, HttpState) {
    let mut st = HttpState::default();
    let mut out = Vec::new();
    for seg in segments {
        for &b in seg.iter() {
            let m = mask_byte(&mut st, spec, b);
            out.push(if m || st.st == ST_BROKEN {
                spec.fill
            } else {
                b
            });
        }
    }
    (out, st)
}

fn run(input: &[u8]) -> String {
    String::from_utf8(run_segments(&spec(), &[input]).0).unwrap()
}

/// `input` with every `{...}` replaced by stars of the same length (braces removed), and the
/// plain input with braces removed.
fn expect(marked: &str) -> (String, String) {
    let mut plain = String::new();
    let mut masked = String::new();
    let mut inside = false;
    for c in marked.chars() {
        match c {
            '{' => inside = true,
            '}' => inside = false,
            _ => {
                plain.push(c);
                masked.push(if inside { '*' } else { c });
            }
        }
    }
    (plain, masked)
}

fn check(marked: &str) {
    let (plain, masked) = expect(marked);
    assert_eq!(run(plain.as_bytes()), masked, "input {plain:?}");
    // Split at every byte position across two segments.
    for cut in 0..=plain.len() {
        let (a, b) = plain.as_bytes().split_at(cut);
        let (out, _) = run_segments(&spec(), &[a, b]);
        assert_eq!(String::from_utf8(out).unwrap(), masked, "cut at {cut}");
    }
}

#[test]
fn masks_default_headers_and_query_params() {
    check(
        "GET /a?x=1&password={hunter2}&token={abc%20def}&y=2 HTTP/1.1\r\n\
         Host: example\r\n\
         Authorization: {Bearer canary-1234}\r\n\
         Cookie: {sid=canary; other=2}\r\n\
         Accept: */*\r\n\r\n",
    );
}

#[test]
fn header_names_are_case_insensitive_and_exact() {
    check(
        "GET / HTTP/1.1\r\nAUTHORIZATION: {Basic Zm9v}\r\ncOoKiE:{a=b}\r\nCookie2: keep\r\n\
         X-Api-Key-Id: keep\r\nx-api-key:   {k3y}\r\nSet-Cookie: {s=1}\r\n\
         Proxy-Authorization: {p}\r\n\r\n",
    );
}

#[test]
fn repeated_headers_lf_only_and_obs_fold() {
    check("GET / HTTP/1.1\nCookie: {a=1}\nCookie: {b=2}\nHost: h\n\n");
    check(
        "GET / HTTP/1.1\r\nAuthorization: {first}\r\n {folded-part}\r\n\t{Host-ish: x}\r\n\
         Host: h\r\n not-masked-fold\r\n\r\n",
    );
}

#[test]
fn empty_and_whitespace_values() {
    check("GET / HTTP/1.1\r\nCookie:\r\nAuthorization: \r\nX-Api-Key: \t{v}\r\n\r\n");
}

#[test]
fn query_parameter_edge_cases() {
    // Percent-encoded and '+' names, case variants, empty values, repeated names, fragments.
    check(
        "GET /p?pass%77ord={s1}&PASSWORD={s2}&pass+word={s3}&pass%20word={s4}&password=&\
         token={t}&token={u}&tokenx=keep&xtoken=keep&session={%41%42}#frag=keep HTTP/1.1\r\n\r\n",
    );
    // Malformed escapes never match (and never break the parser).
    check("GET /p?pass%7=keep&pass%zzord=keep&%=1&password={ok} HTTP/1.1\r\n\r\n");
    // No query at all, and a lone '?'.
    check("GET /plain HTTP/1.1\r\n\r\nGET /? HTTP/1.1\r\n\r\n");
}

#[test]
fn form_bodies_and_pipelining() {
    let body = "user=bob&password={hunter2}&token={t%2Bt}&next=/home";
    let (plain_body, _) = expect(body);
    check(&std::format!(
        "POST /login HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded; charset=utf-8\r\n\
         Content-Length: {}\r\nCookie: {{c}}\r\n\r\n{body}\
         GET /next?session={{s}} HTTP/1.1\r\n\r\n",
        plain_body.len()
    ));
}

#[test]
fn other_bodies_are_skipped_by_length_not_parsed() {
    let body = "Authorization: not-a-header\r\npassword=not-a-form";
    check(&std::format!(
        "POST /x HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}\
         GET / HTTP/1.1\r\nCookie: {{after}}\r\n\r\n",
        body.len()
    ));
    // A type that merely starts like the form type is not a form.
    let body = "password=x";
    check(&std::format!(
        "POST /x HTTP/1.1\r\nContent-Type: application/x-www-form-urlencodedish\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    ));
}

#[test]
fn unparseable_input_breaks_and_falls_back() {
    let s = spec();
    for bad in [
        &b"\x16\x03\x01\x02\x00\x01"[..], // TLS ClientHello
        b"get / HTTP/1.1\r\n\r\n",        // lower-case method
        b"GET / HTTP/1.1\r\nBad Header: x\r\nCookie: secret\r\n\r\n", // space in a name
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nabcde",
        b"POST / HTTP/1.1\r\nContent-Length: 5x\r\n\r\nabcde",
        b"POST / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n",
        b"GET /a\r\n",            // HTTP/0.9
        b"GET / HTTP/1.1\r\n\rX", // CR not followed by LF
    ] {
        let (out, st) = run_segments(&s, &[bad]);
        assert_eq!(st.st, ST_BROKEN, "{:?}", String::from_utf8_lossy(bad));
        // Once broken, nothing after the break point passes.
        let first = out
            .iter()
            .zip(bad)
            .position(|(o, b)| o != b)
            .unwrap_or(out.len());
        assert!(
            out[first..].iter().all(|&b| b == b'*'),
            "{:?}",
            String::from_utf8_lossy(&out)
        );
        assert!(!String::from_utf8_lossy(&out).contains("secret"));
    }
}

#[test]
fn truncated_requests_keep_state_for_the_next_segment() {
    let s = spec();
    let (out, st) = run_segments(&s, &[b"GET / HTTP/1.1\r\nAuthoriz"]);
    assert_eq!(st.st, ST_HNAME);
    assert_eq!(&out[..], b"GET / HTTP/1.1\r\nAuthoriz");
    let (out, _) = run_segments(&s, &[b"GET / HTTP/1.1\r\nAuthoriz", b"ation: canary\r\n"]);
    assert!(out.ends_with(b"ation: ******\r\n"));
}

#[test]
fn splits_across_three_segments_everywhere() {
    let (plain, masked) = expect(
        "GET /q?token={abc} HTTP/1.1\r\nCookie: {k=v}\r\n\r\nPOST / HTTP/1.1\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 14\r\n\r\n\
         password={abcd}",
    );
    let p = plain.as_bytes();
    for i in 0..p.len() {
        for j in i..p.len() {
            let (out, _) = run_segments(&spec(), &[&p[..i], &p[i..j], &p[j..]]);
            assert_eq!(out, masked.as_bytes(), "cuts {i} {j}");
        }
    }
}

#[test]
fn garbage_never_panics_and_length_is_preserved() {
    let s = spec();
    let mut x: u32 = 12345;
    for _ in 0..2000 {
        let mut buf = Vec::new();
        buf.extend_from_slice(b"GET /?a=b HTTP/1.1\r\n");
        for _ in 0..64 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            buf.push(b"ab:= \r\n%&?+Cc0\t#"[(x % 16) as usize]);
        }
        let (out, _) = run_segments(&s, &[&buf]);
        assert_eq!(out.len(), buf.len());
    }
}

#[test]
fn spec_validation() {
    assert_eq!(
        MaskSpec::build(&[""], &[], b'*'),
        Err(SpecError::EmptyName(0))
    );
    assert_eq!(
        MaskSpec::build(&["a b"], &[], b'*'),
        Err(SpecError::BadHeaderName(0))
    );
    assert_eq!(
        MaskSpec::build(&["a"; 14], &[], b'*'),
        Err(SpecError::TooManyHeaders)
    );
    assert_eq!(
        MaskSpec::build(&[], &["p"; 9], b'*'),
        Err(SpecError::TooManyParams)
    );
    assert_eq!(MaskSpec::build(&[], &[], b'\n'), Err(SpecError::BadFill));
    assert_eq!(
        MaskSpec::build_with_limit(&[], &[], b'*', 0),
        Err(SpecError::BadScanLimit)
    );
    let long = "x".repeat(NAME_LEN + 1);
    assert_eq!(
        MaskSpec::build(&[&long], &[], b'*'),
        Err(SpecError::LongName(0))
    );
}

#[test]
fn byte_ranges() {
    let r = MaskRule {
        flags: MASK_RANGES,
        n_ranges: 2,
        ranges: [[2, 3], [10, 1], [0, 100], [0, 100]],
        ..MaskRule::default()
    };
    let hits: Vec<u32> = (0..20).filter(|&i| in_ranges(&r, i)).collect();
    assert_eq!(hits, [2, 3, 4, 10]);
}

#[test]
fn sequence_tracking() {
    let st = HttpState {
        next_seq: 1000,
        ..HttpState::default()
    };
    assert_eq!(seq_check(&st, 1000, 10), SeqVerdict::InOrder);
    assert_eq!(seq_check(&st, 990, 10), SeqVerdict::Old);
    assert_eq!(seq_check(&st, 900, 50), SeqVerdict::Old);
    assert_eq!(seq_check(&st, 995, 10), SeqVerdict::Lost, "partial overlap");
    assert_eq!(seq_check(&st, 1010, 10), SeqVerdict::Lost, "gap");
    let wrap = HttpState {
        next_seq: 5,
        ..HttpState::default()
    };
    assert_eq!(seq_check(&wrap, u32::MAX - 10, 10), SeqVerdict::Old);
    let mut body = HttpState {
        st: ST_BODY_SKIP,
        body_left: 100,
        ..HttpState::default()
    };
    assert_eq!(skip_body(&mut body, 60), 60);
    assert_eq!(skip_body(&mut body, 60), 40);
    assert_eq!(body.st, ST_REQ_START);
    assert_eq!(skip_body(&mut body, 60), 0);
}

fn checksum(data: &[u8]) -> u16 {
    let mut s = 0u64;
    for (i, &b) in data.iter().enumerate() {
        s += (b as u64) << if i % 2 == 0 { 8 } else { 0 };
    }
    !fold16(s)
}

#[test]
fn checksum_delta_matches_a_full_recompute() {
    let mut x: u32 = 777;
    for round in 0..500 {
        let n = 1 + (round * 7) % 300;
        let mut data: Vec<u8> = (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let before = checksum(&data);
        let mut d = CsumDelta::default();
        for i in (0..n).filter(|i| (i * 31 + round) % 5 < 2) {
            d.replace(i as u32, data[i], b'*');
            data[i] = b'*';
        }
        let after = checksum(&data);
        // Equal as ones-complement values (0x0000 and 0xffff are the same number).
        let got = apply_diff(before, d.diff());
        assert!(
            got == after || (got == 0xffff && after == 0) || (got == 0 && after == 0xffff),
            "round {round}: {got:#x} vs {after:#x}"
        );
    }
}

#[test]
fn kernel_diff_is_the_byte_swapped_diff() {
    let mut d = CsumDelta::default();
    d.replace(0, 0x12, 0x2a);
    d.replace(3, 0x34, 0x2a);
    let k = d.kernel_diff();
    let folded = fold16(k as u64);
    assert_eq!(u16::from_be(folded), fold16(d.diff() as u64));
}

#[test]
fn user_listed_framing_headers_are_masked_and_still_read() {
    // Found by fuzz/fuzz_targets/http_mask.rs: a framing header the user lists was never
    // masked (the framing slot matched first).
    let s = MaskSpec::build(&["content-type", "content-length"], &["password"], b'*').unwrap();
    let (out, st) = run_segments(
        &s,
        &[
            b"POST / HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\n\
            Content-Length: 12\r\n\r\npassword=abcGET / HTTP/1.1\r\n\r\n",
        ],
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "POST / HTTP/1.1\r\nContent-Type: *********************************\r\n\
         Content-Length: **\r\n\r\npassword=***GET / HTTP/1.1\r\n\r\n"
    );
    assert_eq!(st.st, ST_REQ_START, "framing still followed");
}

/// The machine-order 32-bit ones-complement sum `bpf_csum_diff(NULL, 0, buf, len4, 0)`
/// returns: little-endian 32-bit words of `data` zero padded to a multiple of 4.
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

#[test]
fn bulk_fill_checksum_matches_per_byte_and_full_recompute() {
    let mut x: u32 = 4242;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    for round in 0..2000u32 {
        let n = 1 + (rnd() % 700) as usize;
        let mut data: Vec<u8> = (0..n).map(|_| rnd() as u8).collect();
        let before = checksum(&data);
        let start = (rnd() as usize) % n;
        let len = 1 + (rnd() as usize) % (n - start);
        let fill = [b'*', b'x', b'#'][round as usize % 3];
        let mut bulk = CsumDelta::default();
        let mut bytewise = CsumDelta::default();
        // A run may be cut into several helper calls (chunks of the scratch buffer).
        let mut at = start;
        while at < start + len {
            let k = (1 + (rnd() as usize) % 64).min(start + len - at);
            bulk.replace_run(at as u32, k as u32, native_sum(&data[at..at + k]), fill);
            at += k;
        }
        for (i, b) in data.iter_mut().enumerate().skip(start).take(len) {
            bytewise.replace(i as u32, *b, fill);
            *b = fill;
        }
        let after = checksum(&data);
        let same = |a: u16, b: u16| a == b || (a | b == 0xffff && (a == 0 || b == 0));
        let got = apply_diff(before, bulk.diff());
        assert!(same(got, after), "round {round}: {got:#x} vs {after:#x}");
        assert!(same(
            fold16(bulk.kernel_diff() as u64),
            fold16(bytewise.kernel_diff() as u64)
        ));
    }
}

/// State right after the headers of a request with a `len`-byte body whose first body byte
/// has sequence number `seq`.
fn in_body(seq: u32, len: u32) -> HttpState {
    let mut st = HttpState {
        next_seq: seq,
        flags: F_SEQ_VALID,
        ..HttpState::default()
    };
    let req = std::format!("PUT /u HTTP/1.1\r\nContent-Length: {len}\r\n\r\n");
    for &b in req.as_bytes() {
        assert!(!mask_byte(&mut st, &spec(), b));
    }
    assert_eq!(st.st, ST_BODY_SKIP);
    st
}

#[test]
fn body_segments_ahead_or_out_of_order_are_skipped_without_state_changes() {
    let base = 0xffff_ff00u32; // the body wraps the sequence space
    let st0 = in_body(base, 1000);
    for (seq_off, len) in [
        (0u32, 1000u32),
        (0, 1),
        (999, 1),
        (500, 200),
        (1000, 0),
        (10, 0),
    ] {
        let mut st = st0;
        assert_eq!(
            body_segment(&mut st, base.wrapping_add(seq_off), len),
            BodyFit::Inside,
            "{seq_off}+{len}"
        );
        assert_eq!(st, st0, "an inside segment leaves the state alone");
    }
    // Before the parser's position (could be a retransmitted header) or beyond the body.
    for (seq_off, len) in [(-1i64, 10u32), (-100, 50), (1001, 5), (5000, 5)] {
        let mut st = st0;
        let seq = (base as i64 + seq_off) as u32;
        assert_eq!(body_segment(&mut st, seq, len), BodyFit::No, "{seq_off}");
        assert_eq!(st, st0);
    }
    // Not in a body at all.
    let mut hdr = HttpState {
        flags: F_SEQ_VALID,
        ..HttpState::default()
    };
    assert_eq!(body_segment(&mut hdr, 0, 10), BodyFit::No);
}

#[test]
fn a_request_after_a_reordered_body_is_still_masked() {
    let spec = spec();
    let body_len = 300u32;
    let next = b"GET /x?token=abc HTTP/1.1\r\nAuthorization: Bearer s3cret\r\n\r\n";
    let base = 1000u32;
    let mut st = in_body(base, body_len);
    // Body in three segments delivered 2, 1, 3; the third carries the body's last 50
    // bytes and the next request.
    let mut seg3 = std::vec![b'z'; 50];
    seg3.extend_from_slice(next);
    let segs: [(u32, Vec<u8>); 3] = [
        (base + 100, std::vec![b'y'; 150]),
        (base, std::vec![b'x'; 100]),
        (base + 250, seg3),
    ];
    let mut out = Vec::new();
    for (i, (seq, payload)) in segs.iter().enumerate() {
        let fit = body_segment(&mut st, *seq, payload.len() as u32);
        if i < 2 {
            assert_eq!(fit, BodyFit::Inside);
            continue;
        }
        assert_eq!(fit, BodyFit::Resync);
        assert_eq!(
            seq_check(&st, *seq, payload.len() as u32),
            SeqVerdict::InOrder
        );
        let skipped = skip_body(&mut st, payload.len() as u32) as usize;
        assert_eq!(skipped, 50);
        out.extend_from_slice(&payload[..skipped]);
        for &b in &payload[skipped..] {
            let m = mask_byte(&mut st, &spec, b);
            out.push(if m || st.st == ST_BROKEN { b'*' } else { b });
        }
    }
    let text = String::from_utf8(out[50..].to_vec()).unwrap();
    assert_eq!(
        text,
        "GET /x?token=*** HTTP/1.1\r\nAuthorization: *************\r\n\r\n"
    );
}

// ---- keyed tokens -----------------------------------------------------------------------

fn token_spec(key: u64) -> MaskSpec {
    spec().with_tokens(crate::pseudo::PrfKey {
        k0: key,
        k1: 0x0123_4567_89ab_cdef,
    })
}

/// Masks through [`mask_http`] with the "mask" fallback (fill byte), segment by segment.
fn run_tokens(spec: &MaskSpec, segments: &[&[u8]]) -> Vec<u8> {
    let mut st = HttpState::default();
    let mut out = Vec::new();
    for seg in segments {
        for &b in seg.iter() {
            let r = mask_http(&mut st, spec, b);
            out.push(match r {
                Some(t) => t,
                None if st.st == ST_BROKEN => spec.fill,
                None => b,
            });
        }
    }
    out
}

/// The value of header `name` in `req` (first occurrence).
fn header<'a>(req: &'a str, name: &str) -> &'a str {
    req.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
        .expect("header")
        .trim_end_matches('\r')
}

const TOKEN_REQ: &str = "GET /a?password=hunter2&x=1 HTTP/1.1\r\n\
     Authorization: Bearer eyJhbGci.canary-1234_Z\r\n\
     Cookie: sid=9f8e7d; theme=dark\r\n\
     Accept: */*\r\n\r\n";

#[test]
fn tokens_keep_length_class_and_separators_and_hide_the_value() {
    let spec = token_spec(7);
    let out = String::from_utf8(run_tokens(&spec, &[TOKEN_REQ.as_bytes()])).unwrap();
    assert_eq!(out.len(), TOKEN_REQ.len());
    // Only the masked values changed; the rest is byte-identical.
    let (_, filled) = expect(
        "GET /a?password={hunter2}&x=1 HTTP/1.1\r\n\
         Authorization: {Bearer eyJhbGci.canary-1234_Z}\r\n\
         Cookie: {sid=9f8e7d; theme=dark}\r\n\
         Accept: */*\r\n\r\n",
    );
    for (i, (o, f)) in out.bytes().zip(filled.bytes()).enumerate() {
        if f != b'*' {
            assert_eq!(o, TOKEN_REQ.as_bytes()[i], "byte {i} changed: {out:?}");
        }
    }
    let auth = header(&out, "Authorization");
    let orig = "Bearer eyJhbGci.canary-1234_Z";
    assert_eq!(auth.len(), orig.len());
    for (t, o) in auth.bytes().zip(orig.bytes()) {
        match o {
            b'0'..=b'9' => assert!(t.is_ascii_digit(), "{auth}"),
            b'a'..=b'z' => assert!(t.is_ascii_lowercase(), "{auth}"),
            b'A'..=b'Z' => assert!(t.is_ascii_uppercase(), "{auth}"),
            _ => assert_eq!(t, o, "separator kept: {auth}"),
        }
    }
    assert!(!out.contains("hunter2") && !out.contains("canary") && !out.contains("9f8e7d"));
    assert!(!out.contains("Bearer"), "{auth}");
}

#[test]
fn the_same_value_gives_the_same_token_in_every_request_and_segmentation() {
    let spec = token_spec(7);
    let one = run_tokens(&spec, &[TOKEN_REQ.as_bytes()]);
    // Keep-alive: the same request twice in one flow masks the same way both times.
    let twice = [TOKEN_REQ, TOKEN_REQ].concat();
    let two = run_tokens(&spec, &[twice.as_bytes()]);
    assert_eq!(&two[..one.len()], &one[..]);
    assert_eq!(&two[one.len()..], &one[..]);
    // Split at every byte position: the same bytes.
    for cut in 0..=TOKEN_REQ.len() {
        let (a, b) = TOKEN_REQ.as_bytes().split_at(cut);
        assert_eq!(run_tokens(&spec, &[a, b]), one, "cut at {cut}");
    }
}

#[test]
fn different_values_or_keys_give_different_tokens() {
    let spec = token_spec(7);
    let tok = |req: &str, spec: &MaskSpec| {
        let out = String::from_utf8(run_tokens(spec, &[req.as_bytes()])).unwrap();
        header(&out, "Cookie").to_owned()
    };
    let req = |v: &str| format!("GET / HTTP/1.1\r\nCookie: sid={v}\r\n\r\n");
    let a = tok(&req("aaaaaaaaaaaaaaaa"), &spec);
    let b = tok(&req("aaaaaaaaaaaaaaab"), &spec);
    assert_eq!(a.len(), b.len());
    // A common prefix gives a common token prefix (streamed), the rest differs.
    assert_eq!(a[..19], b[..19]);
    assert_ne!(a, b);
    // Another key: another token for the same value.
    assert_ne!(tok(&req("aaaaaaaaaaaaaaaa"), &token_spec(8)), a);
    // Parameters too.
    let q = |v: &str| format!("GET /?token={v} HTTP/1.1\r\n\r\n");
    let oq = |v: &str| String::from_utf8(run_tokens(&spec, &[q(v).as_bytes()])).unwrap();
    assert_eq!(oq("abc123"), oq("abc123"));
    assert_ne!(oq("abc123"), oq("abc124"));
}

#[test]
fn token_bytes_are_always_printable_and_never_line_breaks() {
    let mut r: u64 = 0x9e37_79b9_7f4a_7c15;
    for orig in 0..=255u8 {
        for _ in 0..64 {
            r = r
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let t = token_char(orig, r);
            assert!((0x20..0x7f).contains(&t), "{orig} -> {t}");
            assert!(t != b'\r' && t != b'\n');
            if !orig.is_ascii_graphic() && orig != b' ' {
                assert!(t.is_ascii_alphanumeric(), "{orig} -> {t}");
            }
        }
    }
}

#[test]
fn unparseable_bytes_still_get_the_fill_byte_with_tokens() {
    let spec = token_spec(7);
    let out = run_tokens(&spec, &[b"\x16\x03\x01 TLS hello"]);
    assert!(out.iter().all(|&b| b == b'*'), "{out:?}");
}

#[test]
fn reset_is_the_default_state_apart_from_the_token_words() {
    let mut st = HttpState::default();
    for &b in b"GET /?token=abc HTTP/1.1\r\nContent-Length: 5\r\n" {
        mask_http(&mut st, &token_spec(3), b);
    }
    assert_ne!(st, HttpState::default());
    st.reset();
    st.tok = [0; 4];
    assert_eq!(st, HttpState::default());
}
