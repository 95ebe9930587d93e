//! TCP sessions that really run in the shadow: per-flow sequence translation.
//!
//! A cloned SYN makes the shadow answer with its own initial sequence number (ISN). Every
//! later client segment acknowledges the *primary's* sequence space, so the datapath keeps,
//! per client→server 5-tuple, the primary's ISN (learned from the primary's SYN-ACK leaving
//! towards the client), the shadow's ISN, its highest sequence sent and its latest TSval
//! (learned from what the shadow transmits, which is then dropped), and rewrites each clone:
//!
//! * the acknowledgement number by `shadow ISN - primary ISN`, clamped to what the shadow
//!   has really sent (a shadow slower than the primary would otherwise get an "ACK of unsent
//!   data", and Linux discards such a segment with its payload, leaving a hole);
//! * the SACK blocks by the same difference;
//! * the timestamp option's TSecr to the shadow's latest TSval, so its PAWS/TSecr checks
//!   (Linux >= 6.x validates TSecr against the SYN-ACK's TSval in SYN-RECV) accept it.
//!
//! The TCP checksum is fixed incrementally through [`CsumDelta`] (offsets relative to the
//! TCP header, which starts on an even byte of the checksummed data). Everything here runs
//! in the kernel unchanged and is unit-tested on the host against a full recompute.

use crate::mask::CsumDelta;

/// Largest TCP header (data offset 15).
pub const MAX_TCP_HDR: usize = 60;
/// Buffer the datapath loads a TCP header into (a power of two for index masking).
pub const TCP_HDR_BUF: usize = 64;
/// Option bytes walked at most.
pub const MAX_OPT_BYTES: usize = 40;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

const OPT_EOL: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_SACK: u8 = 5;
const OPT_TS: u8 = 8;
/// SACK blocks in one option at most (40 option bytes).
pub const MAX_SACK_BLOCKS: usize = 4;

/// `TcpFlow::flags`: the client's SYN was cloned, the session is tracked.
pub const F_SYN: u64 = 1;
/// The primary's ISN is known.
pub const F_PRIMARY: u64 = 2;
/// The shadow's ISN is known (its SYN-ACK was seen): translation is active.
pub const F_SHADOW: u64 = 4;
/// `shadow_tsval` holds a TSval the shadow sent.
pub const F_SHADOW_TS: u64 = 8;
/// The client sent FIN.
pub const F_CLIENT_FIN: u64 = 16;
/// The primary sent FIN.
pub const F_PRIMARY_FIN: u64 = 32;
/// The shadow reset this session (counted once).
pub const F_SHADOW_RST: u64 = 64;

/// Per-session state (`TCP_FLOWS`, keyed by the client→server `FlowKey`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpFlow {
    pub primary_isn: u32,
    pub shadow_isn: u32,
    /// Latest TSval the shadow sent (echoed as TSecr to it).
    pub shadow_tsval: u32,
    /// Highest sequence number the shadow has sent, plus one (its SND.NXT as observed).
    pub shadow_nxt: u32,
    /// Last client segment (ns, `bpf_ktime_get_ns`), for the idle timeout.
    pub last_ns: u64,
    /// `F_*` bits. Several programs on several CPUs set bits: the datapath only ever ORs
    /// into it atomically; every other field has a single writer program.
    pub flags: u64,
    /// Client segments of this session now in the hold loop (atomic adds only). While it is
    /// not 0, new segments queue behind them, so the shadow gets the stream in order.
    pub held: u64,
    /// When the client's SYN was first cloned (ns): the hold of a session the shadow never
    /// establishes ends `TcpHoldConfig::hold_ns` after it.
    pub syn_ns: u64,
    /// When `held` last went from 0 to 1 (ns).
    pub hold_ns: u64,
    /// When the SYN was last sent to the shadow (ns), for the retry pacing.
    pub syn_sent_ns: u64,
    /// The client's ISN (its SYN's sequence number): a SYN with another one on the 5-tuple
    /// of a live session is a new connection (the client reused its port while the shadow
    /// still holds the old session), not a retransmission.
    pub client_isn: u32,
    /// Explicit padding (the map value has no uninitialised bytes).
    pub reserved: u32,
}
const _: () = assert!(core::mem::size_of::<TcpFlow>() == 72);

crate::impl_pod!(TcpFlow);

/// `a` is after `b` in sequence space.
#[inline(always)]
pub fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// Where the interesting options are inside a TCP header (offsets from its first byte;
/// 0 = absent).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpOpts {
    /// Offset of TSval (TSecr follows at +4).
    pub ts: u8,
    /// Offset of the first SACK block.
    pub sack: u8,
    pub sack_blocks: u8,
}

/// State of an options walk, one step at a time ([`opt_step`]): the kernel drives it from
/// `bpf_loop` (an open-coded loop with per-option branches is too much for the verifier).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OptWalk {
    /// Offset of the next option.
    pub i: u8,
    pub _pad: [u8; 4],
    pub opts: TcpOpts,
}

impl OptWalk {
    pub fn new() -> OptWalk {
        OptWalk {
            i: 20,
            ..OptWalk::default()
        }
    }
}

/// One step of the options walk of the TCP header in `h` (`hlen` bytes, 20..=60); false
/// when the walk is over (end of header, EOL, or a malformed option).
#[inline(always)]
pub fn opt_step(h: &[u8; TCP_HDR_BUF], hlen: usize, w: &mut OptWalk) -> bool {
    let end = if hlen > MAX_TCP_HDR {
        MAX_TCP_HDR
    } else {
        hlen
    };
    let i = w.i as usize;
    if i >= end {
        return false;
    }
    let kind = h[i & (TCP_HDR_BUF - 1)];
    if kind == OPT_EOL {
        return false;
    }
    if kind == OPT_NOP {
        w.i += 1;
        return true;
    }
    if i + 1 >= end {
        return false;
    }
    let len = h[(i + 1) & (TCP_HDR_BUF - 1)] as usize;
    if len < 2 || i + len > end {
        return false;
    }
    if kind == OPT_TS && len == 10 {
        w.opts.ts = (i + 2) as u8;
    } else if kind == OPT_SACK && len >= 10 && (len - 2).is_multiple_of(8) {
        w.opts.sack = (i + 2) as u8;
        w.opts.sack_blocks = ((len - 2) / 8) as u8;
    }
    w.i = (i + len) as u8;
    true
}

/// Walk all options (at most `MAX_OPT_BYTES` steps).
pub fn parse_options(h: &[u8; TCP_HDR_BUF], hlen: usize) -> TcpOpts {
    let mut w = OptWalk::new();
    let mut n = 0;
    while n < MAX_OPT_BYTES && opt_step(h, hlen, &mut w) {
        n += 1;
    }
    w.opts
}

#[inline(always)]
pub fn get32(h: &[u8; TCP_HDR_BUF], off: usize) -> u32 {
    let m = TCP_HDR_BUF - 1;
    u32::from_be_bytes([
        h[off & m],
        h[(off + 1) & m],
        h[(off + 2) & m],
        h[(off + 3) & m],
    ])
}

/// Write `v` at `off`, charging the change to `csum`. Returns whether anything changed.
#[inline(always)]
pub fn put32(h: &mut [u8; TCP_HDR_BUF], off: usize, v: u32, csum: &mut CsumDelta) -> bool {
    let m = TCP_HDR_BUF - 1;
    let new = v.to_be_bytes();
    let mut changed = false;
    let mut k = 0;
    while k < 4 {
        let i = (off + k) & m;
        if h[i] != new[k] {
            csum.replace(i as u32, h[i], new[k]);
            h[i] = new[k];
            changed = true;
        }
        k += 1;
    }
    changed
}

/// The shadow-side acknowledgement number for the client's `ack`.
#[inline(always)]
pub fn translate_ack(f: &TcpFlow, ack: u32) -> u32 {
    let a = ack.wrapping_add(f.shadow_isn.wrapping_sub(f.primary_isn));
    if seq_after(a, f.shadow_nxt) {
        f.shadow_nxt
    } else {
        a
    }
}

/// Rewrite a client segment's TCP header (`h`, `hlen` bytes) for the shadow: ACK number,
/// SACK blocks, TSecr. Requires `F_PRIMARY | F_SHADOW`. Returns whether a byte changed;
/// the checksum change is accumulated in `csum`.
pub fn translate(
    h: &mut [u8; TCP_HDR_BUF],
    hlen: usize,
    f: &TcpFlow,
    csum: &mut CsumDelta,
) -> bool {
    let o = parse_options(h, hlen);
    translate_with(h, &o, f, csum)
}

/// [`translate`] with the options already located.
#[inline(always)]
pub fn translate_with(
    h: &mut [u8; TCP_HDR_BUF],
    o: &TcpOpts,
    f: &TcpFlow,
    csum: &mut CsumDelta,
) -> bool {
    let mut changed = false;
    if h[13] & TCP_ACK != 0 {
        let ack = get32(h, 8);
        changed |= put32(h, 8, translate_ack(f, ack), csum);
    }
    if o.sack != 0 {
        let delta = f.shadow_isn.wrapping_sub(f.primary_isn);
        let mut b = 0usize;
        while b < MAX_SACK_BLOCKS {
            if b >= o.sack_blocks as usize {
                break;
            }
            let at = o.sack as usize + b * 8;
            let left = get32(h, at).wrapping_add(delta);
            let right = get32(h, at + 4).wrapping_add(delta);
            changed |= put32(h, at, left, csum);
            changed |= put32(h, at + 4, right, csum);
            b += 1;
        }
    }
    if o.ts != 0 && f.flags & F_SHADOW_TS != 0 {
        changed |= put32(h, o.ts as usize + 4, f.shadow_tsval, csum);
    }
    changed
}

/// What a segment the shadow sent taught us.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Learned {
    /// The shadow's SYN-ACK, first time: translation becomes active.
    pub established: bool,
    /// The shadow's RST, first time for this session.
    pub reset: bool,
}

/// Learn from a segment the shadow sent on this session: its SYN-ACK (ISN), how far it has
/// sent (`seq + payload (+ SYN/FIN)`), its TSval (newest wins), its RST.
#[inline(always)]
pub fn learn_shadow(
    f: &mut TcpFlow,
    seq: u32,
    tcp_flags: u8,
    payload: u32,
    tsval: Option<u32>,
) -> Learned {
    let mut l = Learned::default();
    if tcp_flags & TCP_RST != 0 {
        if f.flags & F_SHADOW_RST == 0 {
            f.flags |= F_SHADOW_RST;
            l.reset = true;
        }
        return l;
    }
    if tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
        if f.flags & F_SHADOW == 0 || f.shadow_isn != seq {
            l.established = f.flags & F_SHADOW == 0;
            f.shadow_isn = seq;
            f.shadow_nxt = seq.wrapping_add(1);
            f.flags |= F_SHADOW;
        }
    } else if f.flags & F_SHADOW != 0 {
        let end = seq
            .wrapping_add(payload)
            .wrapping_add((tcp_flags & TCP_FIN != 0) as u32);
        if seq_after(end, f.shadow_nxt) {
            f.shadow_nxt = end;
        }
    }
    if let Some(ts) = tsval {
        if f.flags & F_SHADOW_TS == 0 || seq_after(ts, f.shadow_tsval) {
            f.shadow_tsval = ts;
            f.flags |= F_SHADOW_TS;
        }
    }
    l
}

/// Whether this client segment is the session's last one (its state is freed after it is
/// forwarded): an RST; a FIN after the primary's FIN; the final ACK after both FINs.
#[inline(always)]
pub fn ends_session(f: &TcpFlow, tcp_flags: u8, payload: u32) -> bool {
    if tcp_flags & TCP_RST != 0 {
        return true;
    }
    if f.flags & F_PRIMARY_FIN == 0 {
        return false;
    }
    if tcp_flags & TCP_FIN != 0 {
        return true;
    }
    f.flags & F_CLIENT_FIN != 0 && payload == 0 && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_ACK
}

// ---------------------------------------------------------------------------------------
// The hold loop: client segments that arrive before the shadow can take them.
// ---------------------------------------------------------------------------------------

/// Mark of a segment in the hold loop: `HOLD_MARK | passes << 8 | rule`.
pub const HOLD_MARK: u32 = 0x5400_0000;
pub const HOLD_MARK_MASK: u32 = 0xff00_0000;
/// Passes through the loop a mark can count.
pub const HOLD_MAX_PASSES: u32 = 0xffff;

/// The mark of a segment of `rule` entering the loop for its `passes`-th time (0 = first).
#[inline(always)]
pub fn hold_mark(passes: u32, rule: u32) -> u32 {
    let p = if passes > HOLD_MAX_PASSES {
        HOLD_MAX_PASSES
    } else {
        passes
    };
    HOLD_MARK | p << 8 | (rule & 0xff)
}

/// `Some(passes)` when `mark` is a hold-loop mark.
#[inline(always)]
pub fn hold_passes(mark: u32) -> Option<u32> {
    (mark & HOLD_MARK_MASK == HOLD_MARK).then_some((mark >> 8) & HOLD_MAX_PASSES)
}

/// The hold loop's settings (`TCP_HOLD`, one entry). `ifindex == 0`: no loop, waiting
/// segments are dropped (the behaviour before the loop existed).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpHoldConfig {
    /// The loop veth end held segments are sent into (its rate-limiting qdisc paces them).
    pub ifindex: u32,
    pub _pad: u32,
    /// Longest hold (ns): a session not established in the shadow this long after its SYN
    /// has its held segments dropped; other held segments are released then.
    pub hold_ns: u64,
    /// The client's SYN is sent to the shadow again this often (ns) while the shadow has not
    /// answered (0: never).
    pub syn_retry_ns: u64,
}
const _: () = assert!(core::mem::size_of::<TcpHoldConfig>() == 24);

crate::impl_pod!(TcpHoldConfig);

/// Why a client segment cannot go to the shadow yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// The session is not established in the shadow (its SYN-ACK not seen yet).
    Handshake,
    /// Earlier segments of the session are still held: keep the order.
    Behind,
    /// A closing segment (FIN or RST, or after the client's FIN) acknowledging bytes the
    /// shadow has not sent yet: released once it has, so the shadow's session ends cleanly instead of
    /// retransmitting into the void (and still existing when the client reuses the port).
    Closing,
}

/// Whether a client segment (`tcp_flags`, acknowledgement `ack`) of session `f` must wait.
/// `fresh`: it comes from the primary's path, not from the hold loop.
#[inline(always)]
pub fn must_wait(f: &TcpFlow, tcp_flags: u8, ack: u32, fresh: bool) -> Option<Wait> {
    if f.flags & (F_PRIMARY | F_SHADOW) != F_PRIMARY | F_SHADOW {
        return Some(Wait::Handshake);
    }
    if fresh && f.held != 0 {
        return Some(Wait::Behind);
    }
    // An RST too: ending the shadow's session before it has read what the client sent (and
    // answered it) would lose those requests.
    let closing = tcp_flags & (TCP_FIN | TCP_RST) != 0 || f.flags & F_CLIENT_FIN != 0;
    if closing && tcp_flags & TCP_ACK != 0 {
        let a = ack.wrapping_add(f.shadow_isn.wrapping_sub(f.primary_isn));
        if seq_after(a, f.shadow_nxt) {
            return Some(Wait::Closing);
        }
    }
    None
}

/// The session has seen no client segment for `idle_ns`.
#[inline(always)]
pub fn idle(f: &TcpFlow, now_ns: u64, idle_ns: u64) -> bool {
    idle_ns != 0 && now_ns.saturating_sub(f.last_ns) > idle_ns
}

#[cfg(test)]
mod tests;
