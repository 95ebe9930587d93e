use super::*;
use crate::mask::apply_diff;

extern crate std;
use std::vec::Vec;

/// Internet checksum of an IPv4 TCP segment (pseudo-header included).
fn full_csum(src: [u8; 4], dst: [u8; 4], seg: &[u8]) -> u16 {
    let mut s: u64 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from_be_bytes([c[0], 0])
            };
            s += w as u64;
        }
    };
    add(&src);
    add(&dst);
    add(&[0, 6]);
    add(&(seg.len() as u16).to_be_bytes());
    let mut z = seg.to_vec();
    z[16] = 0;
    z[17] = 0;
    add(&z);
    !crate::mask::fold16(s)
}

const SRC: [u8; 4] = [10, 0, 0, 1];
const DST: [u8; 4] = [10, 0, 0, 2];

/// A segment with the given options and payload, checksum filled in.
fn segment(ack: u32, flags: u8, opts: &[u8], payload: &[u8]) -> Vec<u8> {
    assert_eq!(opts.len() % 4, 0);
    let mut s = Vec::new();
    s.extend_from_slice(&40000u16.to_be_bytes());
    s.extend_from_slice(&8080u16.to_be_bytes());
    s.extend_from_slice(&0x1111_2222u32.to_be_bytes());
    s.extend_from_slice(&ack.to_be_bytes());
    s.push((((20 + opts.len()) / 4) as u8) << 4);
    s.push(flags);
    s.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
    s.extend_from_slice(opts);
    s.extend_from_slice(payload);
    let c = full_csum(SRC, DST, &s);
    s[16..18].copy_from_slice(&c.to_be_bytes());
    s
}

fn flow() -> TcpFlow {
    TcpFlow {
        primary_isn: 1000,
        shadow_isn: 0xffff_ff00, // the difference wraps
        shadow_tsval: 0xabcd_0123,
        shadow_nxt: 0xffff_ff00u32.wrapping_add(1 + 5000),
        flags: F_SYN | F_PRIMARY | F_SHADOW | F_SHADOW_TS,
        ..TcpFlow::default()
    }
}

/// Translate `seg` the way the datapath does, and check the incrementally fixed checksum
/// against a full recompute. Returns the translated segment.
fn run(seg: &[u8]) -> Vec<u8> {
    let hlen = ((seg[12] >> 4) as usize) * 4;
    let mut h = [0u8; TCP_HDR_BUF];
    h[..hlen].copy_from_slice(&seg[..hlen]);
    let mut csum = CsumDelta::default();
    translate(&mut h, hlen, &flow(), &mut csum);
    let mut out = seg.to_vec();
    out[..hlen].copy_from_slice(&h[..hlen]);
    let old = u16::from_be_bytes([seg[16], seg[17]]);
    let fixed = apply_diff(old, csum.diff());
    out[16..18].copy_from_slice(&fixed.to_be_bytes());
    assert_eq!(
        fixed,
        full_csum(SRC, DST, &out),
        "incremental checksum differs from a full recompute"
    );
    out
}

fn ack_of(seg: &[u8]) -> u32 {
    u32::from_be_bytes(seg[8..12].try_into().unwrap())
}

#[test]
fn ack_is_shifted_by_the_isn_difference() {
    let seg = segment(1001 + 300, TCP_ACK, &[], b"GET / HTTP/1.1\r\n\r\n");
    let out = run(&seg);
    assert_eq!(ack_of(&out), 0xffff_ff00u32.wrapping_add(301));
    assert_eq!(&out[20..], &seg[20..], "payload untouched");
}

#[test]
fn ack_beyond_what_the_shadow_sent_is_clamped() {
    let seg = segment(1001 + 9000, TCP_ACK, &[], b"x");
    let out = run(&seg);
    assert_eq!(ack_of(&out), flow().shadow_nxt);
}

#[test]
fn timestamps_echo_the_shadows_tsval_at_any_alignment() {
    // NOP NOP TS: TSval at 24 (aligned).
    let mut o = std::vec![1, 1, 8, 10];
    o.extend_from_slice(&7u32.to_be_bytes());
    o.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    let out = run(&segment(1001, TCP_ACK, &o, b"abc"));
    assert_eq!(get32_of(&out, 28), 0xabcd_0123);
    assert_eq!(get32_of(&out, 24), 7, "TSval untouched");
    // NOP TS NOP: TSval at an odd offset.
    let mut o = std::vec![1, 8, 10];
    o.extend_from_slice(&7u32.to_be_bytes());
    o.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    o.push(1);
    let out = run(&segment(1001, TCP_ACK, &o, b"abcd"));
    assert_eq!(get32_of(&out, 27), 0xabcd_0123);
}

fn get32_of(s: &[u8], off: usize) -> u32 {
    u32::from_be_bytes(s[off..off + 4].try_into().unwrap())
}

#[test]
fn sack_blocks_are_shifted() {
    // NOP NOP SACK with two blocks.
    let mut o = std::vec![1, 1, 5, 18];
    for v in [2000u32, 3000, 4000, 4500] {
        o.extend_from_slice(&v.to_be_bytes());
    }
    let out = run(&segment(1001, TCP_ACK, &o, b""));
    let d = 0xffff_ff00u32.wrapping_sub(1000);
    for (i, v) in [2000u32, 3000, 4000, 4500].iter().enumerate() {
        assert_eq!(get32_of(&out, 24 + i * 4), v.wrapping_add(d));
    }
}

#[test]
fn malformed_options_end_the_walk() {
    let mut h = [0u8; TCP_HDR_BUF];
    // Length 0 would loop forever if trusted; length past the header is refused.
    h[20] = 8;
    h[21] = 0;
    assert_eq!(parse_options(&h, 32), TcpOpts::default());
    h[21] = 30;
    assert_eq!(parse_options(&h, 32), TcpOpts::default());
    // 40 NOPs: bounded.
    for b in h.iter_mut().skip(20) {
        *b = 1;
    }
    assert_eq!(parse_options(&h, 60), TcpOpts::default());
}

#[test]
fn learning_from_the_shadow() {
    let mut f = TcpFlow {
        flags: F_SYN | F_PRIMARY,
        primary_isn: 5,
        ..TcpFlow::default()
    };
    let l = learn_shadow(&mut f, 900, TCP_SYN | TCP_ACK, 0, Some(50));
    assert!(l.established && !l.reset);
    assert_eq!((f.shadow_isn, f.shadow_nxt, f.shadow_tsval), (900, 901, 50));
    // A retransmitted SYN-ACK is not a second establishment.
    assert!(!learn_shadow(&mut f, 900, TCP_SYN | TCP_ACK, 0, Some(49)).established);
    assert_eq!(f.shadow_tsval, 50, "older TSval ignored");
    learn_shadow(&mut f, 901, TCP_ACK, 100, Some(60));
    assert_eq!((f.shadow_nxt, f.shadow_tsval), (1001, 60));
    learn_shadow(&mut f, 1001, TCP_ACK | TCP_FIN, 0, None);
    assert_eq!(f.shadow_nxt, 1002);
    // A retransmission does not move it back.
    learn_shadow(&mut f, 901, TCP_ACK, 100, None);
    assert_eq!(f.shadow_nxt, 1002);
    let l = learn_shadow(&mut f, 1002, TCP_RST, 0, None);
    assert!(l.reset);
    assert!(
        !learn_shadow(&mut f, 1002, TCP_RST, 0, None).reset,
        "counted once"
    );
}

#[test]
fn session_end() {
    let mut f = flow();
    assert!(ends_session(&f, TCP_RST, 0));
    assert!(
        !ends_session(&f, TCP_FIN | TCP_ACK, 0),
        "the primary has not closed"
    );
    f.flags |= F_CLIENT_FIN;
    assert!(!ends_session(&f, TCP_ACK, 0));
    f.flags |= F_PRIMARY_FIN;
    assert!(ends_session(&f, TCP_ACK, 0), "final ACK");
    assert!(!ends_session(&f, TCP_ACK, 10));
    f.flags &= !F_CLIENT_FIN;
    assert!(
        ends_session(&f, TCP_FIN | TCP_ACK, 0),
        "server closed first"
    );
    assert!(idle(&f, 10_000, 5_000));
    assert!(!idle(&f, 10_000, 0));
}

#[test]
fn hold_marks_round_trip_and_stay_apart_from_clone_marks() {
    let m = hold_mark(7, 3);
    assert_eq!(hold_passes(m), Some(7));
    assert_eq!(m & 0xff, 3);
    assert_eq!(hold_passes(crate::mask::CLONE_MARK | 3), None);
    assert_ne!(
        m & crate::mask::CLONE_MARK_MASK,
        crate::mask::CLONE_MARK,
        "a held segment must not look like a fresh clone"
    );
    assert_eq!(hold_passes(hold_mark(1 << 20, 0)), Some(HOLD_MAX_PASSES));
}

#[test]
fn what_must_wait() {
    let mut f = flow();
    // Not established in the shadow: every segment waits, fresh or from the loop.
    f.flags = F_SYN | F_PRIMARY;
    assert_eq!(must_wait(&f, TCP_ACK, 0, true), Some(Wait::Handshake));
    assert_eq!(must_wait(&f, TCP_ACK, 0, false), Some(Wait::Handshake));
    f.flags |= F_SHADOW;
    let in_step = f.primary_isn.wrapping_add(1);
    assert_eq!(must_wait(&f, TCP_ACK, in_step, true), None);
    // Earlier segments still held: a fresh one queues behind them; a released one goes.
    f.held = 2;
    assert_eq!(must_wait(&f, TCP_ACK, in_step, true), Some(Wait::Behind));
    assert_eq!(must_wait(&f, TCP_ACK, in_step, false), None);
    f.held = 0;
    // A FIN or RST acknowledging more than the shadow has sent waits; data does not (its
    // ACK is clamped instead), nor does a bare RST.
    let ahead = f.primary_isn.wrapping_add(6000);
    assert_eq!(must_wait(&f, TCP_ACK, ahead, true), None);
    assert_eq!(
        must_wait(&f, TCP_ACK | TCP_FIN, ahead, true),
        Some(Wait::Closing)
    );
    assert_eq!(
        must_wait(&f, TCP_ACK | TCP_RST, ahead, true),
        Some(Wait::Closing)
    );
    assert_eq!(must_wait(&f, TCP_RST, ahead, true), None);
    f.flags |= F_CLIENT_FIN;
    assert_eq!(must_wait(&f, TCP_ACK, ahead, true), Some(Wait::Closing));
    // Once the shadow has sent that far, the FIN goes.
    f.shadow_nxt = f.shadow_isn.wrapping_add(6000);
    assert_eq!(must_wait(&f, TCP_ACK | TCP_FIN, ahead, true), None);
}
